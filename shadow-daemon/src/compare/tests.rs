//! The comparator end to end: pairs in, report, verdict and diffs out.

use std::{io::Write, time::Duration};

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::Value;

use super::*;

fn json_resp(status: u16, body: &str, latency_ms: u64) -> ResponseSample {
    ResponseSample {
        status,
        headers: vec![("Content-Type".into(), b"application/json".to_vec())],
        body: Bytes::copy_from_slice(body.as_bytes()),
        body_complete: true,
        body_len: body.len() as u64,
        latency: Some(Duration::from_millis(latency_ms)),
    }
}

fn comparator(toml: &str) -> Comparator {
    Comparator::new(&CompareSettings::from_toml(toml).expect("settings")).expect("comparator")
}

fn endpoint<'r>(r: &'r Report, name: &str) -> &'r EndpointReport {
    r.endpoints.iter().find(|e| e.summary.endpoint == name).unwrap_or_else(|| panic!("{name} not in the report"))
}

#[test]
fn outcomes_of_single_pairs() {
    let mut c = comparator("");
    let e = "GET /api/users/:id";
    let p = json_resp(200, r#"{"id":1,"name":"ada","timestamp":"t1"}"#, 5);
    assert_eq!(c.observe(e, &p, &json_resp(200, r#"{"name":"ada","id":1,"timestamp":"t2"}"#, 5)), Outcome::Match);
    assert_eq!(c.observe(e, &p, &json_resp(200, r#"{"id":1,"name":"bob"}"#, 5)), Outcome::BodyMismatch);
    assert_eq!(c.observe(e, &p, &json_resp(404, r#"{"id":1,"name":"ada"}"#, 5)), Outcome::StatusMismatch);
    assert_eq!(c.observe_shadow_failure(e, &p, ShadowFailure::Timeout), Outcome::ShadowFailed);
    let mut counts: Vec<(String, &str, u64)> =
        c.outcome_counts().map(|(n, o, k)| (n.to_owned(), o.as_str(), k)).collect();
    counts.sort();
    assert_eq!(
        counts,
        [
            (e.to_owned(), "body_mismatch", 1),
            (e.to_owned(), "match", 1),
            (e.to_owned(), "shadow_failed", 1),
            (e.to_owned(), "status_mismatch", 1)
        ]
    );
    let r = c.report();
    let s = &endpoint(&r, e).summary;
    assert_eq!((s.samples, s.shadow_failures, s.status_matches, s.body_matches), (4, 1, 2, 2));
    assert_eq!(s.body_match_percent, Some(200.0 / 3.0), "of the 3 pairs the shadow answered");
    assert_eq!(s.shadow_error_percent, 25.0);
}

#[test]
fn encoded_bodies_compare_decoded() {
    let mut c = comparator("");
    let text = br#"{"a":[1,2,3]}"#;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(text).expect("gzip");
    let gz = gz.finish().expect("gzip");
    let mut shadow = json_resp(200, "", 1);
    shadow.body = Bytes::from(gz.clone());
    shadow.body_len = gz.len() as u64;
    shadow.headers.push(("content-encoding".into(), b"gzip".to_vec()));
    let primary = json_resp(200, std::str::from_utf8(text).expect("utf8"), 1);
    assert_eq!(c.observe("GET /a", &primary, &shadow), Outcome::Match);
}

#[test]
fn length_only_comparisons_are_counted_and_said() {
    let mut c = comparator("max_body_bytes = 16");
    let e = "GET /big";
    let big = "x".repeat(100);
    let p = json_resp(200, &big, 1);
    assert_eq!(c.observe(e, &p, &json_resp(200, &"y".repeat(100), 1)), Outcome::MatchLengthOnly);
    assert_eq!(c.observe(e, &p, &json_resp(200, &"y".repeat(101), 1)), Outcome::LengthMismatch);
    let mut truncated = json_resp(200, "{\"a\":", 1);
    truncated.body_complete = false;
    truncated.body_len = 5000;
    assert_eq!(c.observe("GET /cut", &truncated, &truncated.clone()), Outcome::MatchLengthOnly);
    let r = c.report();
    let s = &endpoint(&r, e).summary;
    assert_eq!((s.length_only, s.body_matches), (2, 1));
    assert!(r.render_text().contains("3 of 3 bodies compared by status and length only"), "{}", r.render_text());
    let d = c.diffs(Some(e));
    assert_eq!(d.len(), 1);
    assert!(d[0].note.as_deref().is_some_and(|n| n.contains("over_cap") && n.contains("101")), "{:?}", d[0].note);
}

#[test]
fn noise_learned_from_a_secondary_is_excused_even_retroactively() {
    let mut c = comparator("[noise]\nmin_samples = 5\nmin_differ_percent = 50.0");
    let e = "GET /feed";
    let body =
        |nonce: u32, title: &str| format!(r#"{{"nonce":{nonce},"items":[{{"title":"{title}","rank":{nonce}}}]}}"#);
    // Before any noise is known, a nonce difference is a mismatch.
    assert_eq!(
        c.observe(e, &json_resp(200, &body(1, "a"), 1), &json_resp(200, &body(2, "a"), 1)),
        Outcome::BodyMismatch
    );
    for i in 0..5 {
        c.observe_secondary(e, &json_resp(200, &body(i, "a"), 1), &json_resp(200, &body(i + 100, "a"), 1));
    }
    let r = c.report();
    let s = &endpoint(&r, e).summary;
    let learned: Vec<&str> = s.noise.learned.iter().map(|l| l.path.as_str()).collect();
    assert_eq!(learned, ["$.items[*].rank", "$.nonce"]);
    assert_eq!(s.body_matches, 1, "the earlier pair differed only in noise: now a match");
    assert!(c.diffs(Some(e)).is_empty(), "its kept sample is no longer shown as a mismatch");
    // Noise excused, and a field that never differed between primary and secondary still counts.
    assert_eq!(c.observe(e, &json_resp(200, &body(3, "a"), 1), &json_resp(200, &body(4, "a"), 1)), Outcome::Match);
    assert_eq!(
        c.observe(e, &json_resp(200, &body(3, "a"), 1), &json_resp(200, &body(4, "b"), 1)),
        Outcome::BodyMismatch
    );
    let d = c.diffs(Some(e));
    assert_eq!(d.len(), 1);
    assert!(d[0].paths.contains(&"$.items[*].title".to_owned()));
    assert!(c.report().render_text().contains("noise learned for GET /feed from 5 secondary pairs: "));
    // Another endpoint learned nothing.
    assert_eq!(
        c.observe("GET /other", &json_resp(200, &body(1, "a"), 1), &json_resp(200, &body(2, "a"), 1)),
        Outcome::BodyMismatch
    );
}

#[test]
fn headers_compared_and_redacted_in_diffs() {
    let mut c = comparator(
        "compare_headers = [\"Content-Type\", \"Set-Cookie\", \"X-Api-Key\"]\nredact_headers = [\"x-api-key\"]",
    );
    let p = json_resp(200, "{}", 1);
    let mut s = p.clone();
    s.headers = vec![
        ("content-type".into(), b"application/json".to_vec()),
        ("Set-Cookie".into(), b"session=SECRET1".to_vec()),
        ("X-Api-Key".into(), b"SECRET2".to_vec()),
    ];
    assert_eq!(c.observe("GET /h", &p, &s), Outcome::HeaderMismatch);
    let d = c.diffs(None);
    let text = d[0].render();
    assert!(!text.contains("SECRET"), "sensitive values leaked:\n{text}");
    assert!(text.contains("header set-cookie\n    - (absent)\n    + <redacted, 15 bytes>"), "{text}");
    let json = serde_json::to_string(&d).expect("json");
    assert!(!json.contains("SECRET"));
    let r = c.report();
    assert_eq!(endpoint(&r, "GET /h").summary.header_match_percent, Some(0.0));
    assert_eq!(endpoint(&r, "GET /h").summary.body_match_percent, Some(100.0));
}

#[test]
fn endpoint_overrides_apply_to_their_endpoint_only() {
    let mut c = comparator(
        r#"
[[endpoint]]
match = "GET /users/:id"
ignore_paths = ["$.last_login"]
gates = { min_samples = 1 }
"#,
    );
    let p = json_resp(200, r#"{"last_login":1}"#, 1);
    let s = json_resp(200, r#"{"last_login":2}"#, 1);
    assert_eq!(c.observe("GET /users/:id", &p, &s), Outcome::Match);
    assert_eq!(c.observe("GET /orders/:id", &p, &s), Outcome::BodyMismatch);
    let r = c.report();
    // One pair meets the override's min_samples, and is too few to judge latency on (intended
    // since the interval judge: a latency is never passed on fewer samples than its ranks need).
    let EndpointVerdict::Insufficient { samples: 1, needed: 1, failing_so_far, undecided } =
        &endpoint(&r, "GET /users/:id").verdict
    else {
        panic!("{:?}", endpoint(&r, "GET /users/:id").verdict)
    };
    assert!(failing_so_far.is_empty());
    let gates: Vec<(Gate, UndecidedReason)> = undecided.iter().map(|u| (u.gate, u.reason)).collect();
    assert_eq!(
        gates,
        [(Gate::P50Ratio, UndecidedReason::TooFewSamples), (Gate::P99Ratio, UndecidedReason::TooFewSamples)]
    );
    assert_eq!(endpoint(&r, "GET /users/:id").gates.min_samples, 1);
    assert!(matches!(
        endpoint(&r, "GET /orders/:id").verdict,
        EndpointVerdict::Insufficient { samples: 1, needed: 100, .. }
    ));
}

#[test]
fn verdicts_from_traffic() {
    let healthy = |c: &mut Comparator, e: &str, n: u64| {
        for i in 0..n {
            let b = format!(r#"{{"id":{i}}}"#);
            c.observe(e, &json_resp(200, &b, 10 + i % 10), &json_resp(200, &b, 10 + i % 10));
        }
    };
    // 440 pairs: enough for the p99's ranks at 90 % (368).
    let mut c = comparator("");
    healthy(&mut c, "GET /a", 440);
    let r = c.report();
    assert_eq!((r.verdict, r.exit_code()), (Verdict::Pass, 0));

    healthy(&mut c, "GET /b", 99);
    assert_eq!((c.report().verdict, c.report().exit_code()), (Verdict::Insufficient, 3));

    // 2 % of /c's bodies differ: FAIL, which beats /b's INSUFFICIENT.
    healthy(&mut c, "GET /c", 98);
    for _ in 0..2 {
        c.observe("GET /c", &json_resp(200, "{\"v\":1}", 10), &json_resp(200, "{\"v\":2}", 10));
    }
    let r = c.report();
    assert_eq!((r.verdict, r.exit_code()), (Verdict::Fail, 1));
    let EndpointVerdict::Fail { failed } = &endpoint(&r, "GET /c").verdict else { panic!("FAIL") };
    assert_eq!(failed.iter().map(|f| f.gate).collect::<Vec<_>>(), [Gate::BodyMatch]);
    let text = r.render_text();
    assert!(text.contains("FAIL body_match 98.00% < 99.00%"), "{text}");
    assert!(text.contains("INSUFFICIENT 99 of 100 samples"), "{text}");
    assert!(text.contains("verdict: FAIL (exit 1)"), "{text}");

    // A shadow twice as slow fails both latency gates; one that errors fails the 5xx gate.
    let mut c = comparator("");
    for i in 0..440 {
        let b = format!(r#"{{"id":{i}}}"#);
        c.observe("GET /slow", &json_resp(200, &b, 10), &json_resp(200, &b, 20));
        let shadow = if i % 50 == 0 { json_resp(503, &b, 10) } else { json_resp(200, &b, 10) };
        c.observe("GET /err", &json_resp(200, &b, 10), &shadow);
    }
    let r = c.report();
    let gates = |name: &str| match &endpoint(&r, name).verdict {
        EndpointVerdict::Fail { failed } => failed.iter().map(|f| f.gate).collect::<Vec<_>>(),
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(gates("GET /slow"), [Gate::P50Ratio, Gate::P99Ratio]);
    assert_eq!(gates("GET /err"), [Gate::StatusMatch, Gate::Shadow5xx], "same body, other status");
    assert_eq!(comparator("").report().verdict, Verdict::Insufficient, "no data");
}

#[test]
fn report_round_trips_through_json() {
    let mut c = comparator("");
    c.observe("GET /a", &json_resp(200, "{\"a\":1}", 3), &json_resp(200, "{\"a\":2}", 4));
    c.observe_shadow_failure("GET /b", &json_resp(500, "{}", 3), ShadowFailure::Connect);
    c.record_unpaired("GET /b", UnpairedReason::PrimaryMissing);
    for i in 0..10 {
        c.observe_secondary("GET /a", &json_resp(200, &format!("{{\"n\":{i}}}"), 1), &json_resp(200, "{\"n\":-1}", 1));
    }
    let r = c.report();
    assert_eq!(endpoint(&r, "GET /b").summary.unpaired.primary_missing, 1);
    let json = serde_json::to_string_pretty(&r).expect("serialise");
    let back: Report = serde_json::from_str(&json).expect("deserialise");
    assert_eq!(back, r);
    assert_eq!(back.render_text(), r.render_text());
    assert_eq!(back.render_html(), r.render_html());
    // A report saved before the latency intervals existed still reads and renders (no interval:
    // the ratio alone, no latency line).
    let mut old: Value = serde_json::from_str(&json).expect("json");
    for e in old["endpoints"].as_array_mut().expect("endpoints") {
        for k in ["p50_interval", "p99_interval", "shadow_untimed"] {
            e["latency"].as_object_mut().expect("latency").remove(k);
        }
    }
    let old: Report = serde_json::from_value(old).expect("an older report");
    assert!(
        old.render_html().contains("<td>1.34</td><td>1.34</td><td class=\"insufficient\">"),
        "{}",
        old.render_html()
    );
    assert!(!old.render_text().contains("latency GET /a"));
    let v: Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v["verdict"], "INSUFFICIENT");
    assert_eq!(v["endpoints"][0]["verdict"]["verdict"], "INSUFFICIENT");
    assert_eq!(v["endpoints"][0]["samples"], 1, "summary fields sit at the endpoint's top level");
}

#[test]
fn hostile_endpoint_names_are_escaped_in_html() {
    let mut c = comparator("");
    let evil = "GET /<script>alert(\"x\")</script>&<img src=x onerror=alert(1)>";
    c.observe(evil, &json_resp(200, "{}", 1), &json_resp(200, "{}", 2));
    let html = c.report().render_html();
    assert!(!html.contains("<script>"), "raw markup from the wire in the page");
    assert!(!html.contains("<img"));
    assert!(
        html.contains("GET /&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&lt;img src=x onerror=alert(1)&gt;")
    );
    assert!(!html.contains("http://") && !html.contains("https://"), "nothing fetched from the network");
    assert!(html.contains(html::PRIMARY_COLOUR) && html.contains(html::SHADOW_COLOUR));
    // No secondary pairs: nothing learned, and the page says nothing about noise.
    assert!(!html.contains("Noise learned"), "{html}");
    // Latencies of 1 and 2 ms: ticks every 0.5 ms up to 2.5, no further.
    assert!(html.contains("class=\"tick\">2.5</text>"), "{html}");
    assert!(!html.contains("class=\"tick\">3</text>"), "{html}");
}

#[test]
fn memory_is_bounded_and_counted() {
    let mut c = comparator("[limits]\nmax_endpoints = 3\nmismatch_samples = 2\nsample_body_bytes = 64");
    let big = format!("{{\"v\":\"{}\"}}", "x".repeat(10_000));
    for i in 0..50 {
        c.observe(&format!("GET /e{i}"), &json_resp(200, &big, 1), &json_resp(200, "{\"v\":1}", 1));
    }
    let r = c.report();
    let names: Vec<&str> = r.endpoints.iter().map(|e| e.summary.endpoint.as_str()).collect();
    assert_eq!(names.len(), 4, "3 endpoints and 'other': {names:?}");
    assert!(names.contains(&OTHER_ENDPOINT));
    assert_eq!(r.overflow_pairs, 47);
    assert_eq!(endpoint(&r, OTHER_ENDPOINT).summary.mismatch_samples_evicted, 45);
    let d = c.diffs(Some(OTHER_ENDPOINT));
    assert_eq!(d.len(), 2);
    assert!(d[0].primary_body.chars().count() <= 65, "sample bodies are cut");
    assert!(c.approx_bytes() < 512 * 1024, "{} bytes", c.approx_bytes());
    let long = "GET /".to_owned() + &"é".repeat(1000);
    let mut c = comparator("");
    c.observe(&long, &json_resp(200, "{}", 1), &json_resp(200, "{}", 1));
    assert!(c.report().endpoints[0].summary.endpoint.len() <= 4 * (MAX_ENDPOINT_NAME + 1));
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        "[a-z]{0,6}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,8}", inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// JSON pointers of every leaf (scalars and empty containers).
fn leaves(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) if !m.is_empty() => m.iter().for_each(|(k, c)| leaves(c, format!("{at}/{k}"), out)),
        Value::Array(a) if !a.is_empty() => a.iter().enumerate().for_each(|(i, c)| leaves(c, format!("{at}/{i}"), out)),
        _ => out.push(at),
    }
}

proptest! {
    #[test]
    fn a_body_always_matches_itself(v in arb_json(), any_order in any::<bool>()) {
        let mut c = comparator(if any_order { "array_order_insensitive = true" } else { "" });
        let r = json_resp(200, &v.to_string(), 1);
        prop_assert_eq!(c.observe("GET /p", &r, &r.clone()), Outcome::Match);
    }

    #[test]
    fn one_changed_leaf_never_matches(v in arb_json(), pick in any::<prop::sample::Index>(), any_order in any::<bool>()) {
        let mut c = comparator(if any_order { "ignore_fields = []\narray_order_insensitive = true" } else { "ignore_fields = []" });
        let mut paths = Vec::new();
        leaves(&v, String::new(), &mut paths);
        let mut changed = v.clone();
        let target = changed.pointer_mut(&paths[pick.index(paths.len())]).expect("leaf exists");
        // Outside the generated alphabet, so it differs from whatever was there.
        *target = Value::String("CHANGED".into());
        let outcome = c.observe("GET /p", &json_resp(200, &v.to_string(), 1), &json_resp(200, &changed.to_string(), 1));
        prop_assert_eq!(outcome, Outcome::BodyMismatch);
    }
}

/// A body over `max_body_bytes` is compared by length even when both sides send the same bytes:
/// the fast path for byte-equal bodies says what parsing would have said (over the cap: length
/// only), never a plain match. At exactly the cap the body is parsed, and equal.
#[test]
fn byte_equal_bodies_over_the_cap_are_compared_by_length() {
    let mut c = comparator("max_body_bytes = 16");
    let over = format!("[\"{}\"]", "x".repeat(13));
    assert_eq!(over.len(), 17);
    let at_cap = format!("[\"{}\"]", "x".repeat(12));
    assert_eq!(at_cap.len(), 16);
    assert_eq!(c.observe("GET /over", &json_resp(200, &over, 1), &json_resp(200, &over, 1)), Outcome::MatchLengthOnly);
    assert_eq!(c.observe("GET /at", &json_resp(200, &at_cap, 1), &json_resp(200, &at_cap, 1)), Outcome::Match);
    let r = c.report();
    let s = &endpoint(&r, "GET /over").summary;
    assert_eq!((s.samples, s.length_only, s.body_matches), (1, 1, 1));
    let s = &endpoint(&r, "GET /at").summary;
    assert_eq!((s.samples, s.length_only, s.body_matches), (1, 0, 1));
}

/// Every count of an endpoint's summary and of the overall one, from a known mix of pairs.
#[test]
fn report_counts_every_field_exactly() {
    let mut c = comparator("max_body_bytes = 8\n[limits]\nmismatch_samples = 2");
    let e = "GET /mix";
    // Primary 200, shadow 200: a match.
    c.observe(e, &json_resp(200, "{}", 1), &json_resp(200, "{}", 1));
    // Primary 500, shadow 500: both 5xx, status equal.
    c.observe(e, &json_resp(500, "{}", 1), &json_resp(500, "{}", 1));
    // Primary 499 (not 5xx), shadow 502.
    c.observe(e, &json_resp(499, "{}", 1), &json_resp(502, "{}", 1));
    // Shadow failures: the primary's 5xx still counts (503), a 499 does not. Three mismatch
    // samples for a ring of 2: one evicted.
    c.observe_shadow_failure(e, &json_resp(503, "{}", 1), ShadowFailure::Timeout);
    c.observe_shadow_failure(e, &json_resp(499, "{}", 1), ShadowFailure::Connect);
    c.record_unpaired(e, UnpairedReason::MemoryBound);
    let o = "GET /other";
    c.observe_shadow_failure(o, &json_resp(200, "{}", 1), ShadowFailure::InvalidResponse);
    let big = "[1,2,3,4,5]";
    assert_eq!(c.observe(o, &json_resp(200, big, 1), &json_resp(200, big, 1)), Outcome::MatchLengthOnly);
    c.record_unpaired(o, UnpairedReason::PrimaryMissing);
    let r = c.report();
    let s = &endpoint(&r, e).summary;
    assert_eq!(s.endpoint, e);
    assert_eq!(
        (s.samples, s.shadow_failures, s.status_matches, s.body_matches, s.header_matches, s.length_only),
        (5, 2, 2, 3, 3, 0)
    );
    assert_eq!((s.primary_5xx, s.shadow_5xx, s.mismatch_samples_evicted), (2, 2, 1));
    assert_eq!(s.unpaired, Unpaired { primary_missing: 0, memory_bound: 1 });
    assert_eq!(s.primary_5xx_percent, 40.0);
    assert_eq!(s.shadow_error_percent, 80.0, "2 shadow 5xx and 2 failures of 5 pairs");
    let s = &endpoint(&r, o).summary;
    assert_eq!(
        (s.samples, s.shadow_failures, s.status_matches, s.body_matches, s.header_matches, s.length_only),
        (2, 1, 1, 1, 1, 1)
    );
    let all = &r.overall;
    assert_eq!(all.endpoint, "(all endpoints)");
    assert_eq!(
        (all.samples, all.shadow_failures, all.status_matches, all.body_matches, all.header_matches, all.length_only),
        (7, 3, 3, 4, 4, 1)
    );
    assert_eq!((all.primary_5xx, all.shadow_5xx, all.mismatch_samples_evicted), (2, 2, 1));
    assert_eq!(all.unpaired, Unpaired { primary_missing: 1, memory_bound: 1 });
    assert_eq!(
        r.endpoints.iter().map(|e| e.summary.endpoint.as_str()).collect::<Vec<_>>(),
        ["GET /mix", "GET /other"],
        "sorted by name"
    );
}

/// `endpoint_key` says what the next `observe` would use: its own name while under the cap,
/// `other` from exactly the cap on (and a known endpoint keeps its name).
#[test]
fn endpoint_key_at_exactly_the_cap() {
    let mut c = comparator("[limits]\nmax_endpoints = 2");
    let p = json_resp(200, "{}", 1);
    assert_eq!(c.endpoint_key("GET /a"), "GET /a");
    c.observe("GET /a", &p, &p);
    assert_eq!(c.endpoint_key("GET /b"), "GET /b", "1 endpoint of 2");
    c.observe("GET /b", &p, &p);
    assert_eq!(c.endpoint_key("GET /c"), OTHER_ENDPOINT, "2 endpoints of 2");
    assert_eq!(c.endpoint_key("GET /a"), "GET /a");
    c.observe("GET /c", &p, &p);
    let r = c.report();
    assert_eq!(
        r.endpoints.iter().map(|e| e.summary.endpoint.as_str()).collect::<Vec<_>>(),
        ["GET /a", "GET /b", "other"]
    );
    assert_eq!(r.overflow_pairs, 1);
}

/// A header that the secondary showed to be noise excuses a pair that differs only in it: a
/// match when observed, not a header mismatch.
#[test]
fn header_noise_learned_from_a_secondary_excuses_the_header() {
    let mut c = comparator("compare_headers = [\"X-Request-Id\"]\n[noise]\nmin_samples = 3\nmin_differ_percent = 50.0");
    let e = "GET /h";
    let with_id = |id: &str| {
        let mut r = json_resp(200, "{}", 1);
        r.headers.push(("X-Request-Id".into(), id.as_bytes().to_vec()));
        r
    };
    assert_eq!(c.observe(e, &with_id("a"), &with_id("b")), Outcome::HeaderMismatch);
    for i in 0..3 {
        c.observe_secondary(e, &with_id(&format!("p{i}")), &with_id(&format!("s{i}")));
    }
    assert_eq!(c.observe(e, &with_id("c"), &with_id("d")), Outcome::Match);
    assert_eq!(c.observe(e, &with_id("c"), &with_id("c")), Outcome::Match);
    let r = c.report();
    let s = &endpoint(&r, e).summary;
    assert_eq!((s.samples, s.header_matches), (3, 3), "the first pair excused since");
}

/// A kept mismatch sample carries what differed: the shown paths with both values, how many
/// nodes differed, both latencies in milliseconds, and why a shadow failed.
#[test]
fn mismatch_samples_keep_the_differences_and_latencies() {
    let mut c = comparator("");
    let e = "GET /s";
    let p = json_resp(200, r#"{"a":1,"b":2,"c":3}"#, 5);
    let s = json_resp(200, r#"{"a":1,"b":20,"c":30}"#, 1250);
    assert_eq!(c.observe(e, &p, &s), Outcome::BodyMismatch);
    c.observe_shadow_failure(e, &p, ShadowFailure::Timeout);
    c.observe_shadow_failure(e, &p, ShadowFailure::Connect);
    c.observe_shadow_failure(e, &p, ShadowFailure::InvalidResponse);
    let d = c.diffs(Some(e));
    assert_eq!(d.len(), 4);
    assert_eq!(d[0].seq, 1);
    assert_eq!(d[0].body_differences, 2);
    assert_eq!(
        d[0].body,
        [
            PathDiff { path: "$.b".into(), primary: "2".into(), shadow: "20".into() },
            PathDiff { path: "$.c".into(), primary: "3".into(), shadow: "30".into() },
        ]
    );
    assert_eq!(
        (d[0].primary_latency_ms, d[0].shadow_latency_ms, d[0].shadow_timing),
        (Some(5.0), Some(1250.0), Timing::Timed)
    );
    let notes: Vec<&str> = d[1..].iter().map(|m| m.note.as_deref().unwrap_or_default()).collect();
    assert_eq!(
        notes,
        ["shadow request failed: timeout", "shadow request failed: connect", "shadow request failed: invalid_response"]
    );
    assert_eq!(
        (d[1].primary_latency_ms, d[1].shadow_latency_ms, d[1].shadow_timing, d[1].shadow_status),
        (Some(5.0), None, Timing::NoResponse, 0)
    );
}

/// The comparator's memory estimate, exactly: its own size, and per endpoint the name's bytes,
/// 48 for the map entry, and the endpoint's stats. The report says the same number.
#[test]
fn approx_bytes_counts_each_endpoint_and_its_name() {
    let mut c = comparator("");
    assert_eq!(c.approx_bytes(), std::mem::size_of::<Comparator>());
    let p = json_resp(200, r#"{"a":1}"#, 3);
    let s = json_resp(200, r#"{"a":2}"#, 4);
    c.observe("GET /a", &p, &s);
    let stats = c.endpoints["GET /a"].approx_bytes();
    assert_eq!(c.approx_bytes(), std::mem::size_of::<Comparator>() + "GET /a".len() + 48 + stats);
    assert_eq!(c.report().approx_bytes, c.approx_bytes() as u64);
    // The same matching pair under a name 11 bytes longer costs 11 bytes more (no sample kept,
    // so the name is counted once).
    let (mut short, mut long) = (comparator(""), comparator(""));
    short.observe("GET /a", &p, &p);
    long.observe("GET /a/0123456789", &p, &p);
    assert_eq!(long.approx_bytes() - short.approx_bytes(), 11);
}

/// The text report, exactly: per endpoint and overall, the rates, length-only count, 5xx of
/// both sides, p99s and their ratio, verdicts with reasons, then the notes (endpoint cap,
/// length-only share, learned noise).
#[test]
fn render_text_exactly() {
    let mut c = comparator(
        "max_body_bytes = 8\n[limits]\nmax_endpoints = 3\n[noise]\nmin_samples = 2\nmin_differ_percent = 50.0",
    );
    c.observe("GET /a", &json_resp(200, r#"{"v":1}"#, 10), &json_resp(200, r#"{"v":1}"#, 20));
    c.observe("GET /a", &json_resp(500, r#"{"v":1}"#, 10), &json_resp(200, r#"{"v":2}"#, 20));
    c.observe("GET /a", &json_resp(200, "[1,2,3,4,5]", 10), &json_resp(200, "[1,2,3,4,5]", 30));
    c.observe_shadow_failure("GET /a", &json_resp(200, "{}", 10), ShadowFailure::Timeout);
    for i in 0..2 {
        c.observe_secondary("GET /a", &json_resp(200, &format!("{{\"n\":{i}}}"), 1), &json_resp(200, "{\"n\":-1}", 1));
    }
    c.observe_shadow_failure("GET /b", &json_resp(503, "{}", 4), ShadowFailure::Connect);
    c.observe("GET /c", &json_resp(200, "{}", 4), &json_resp(200, "{}", 4));
    c.record_unpaired("GET /d", UnpairedReason::PrimaryMissing);
    let want = [
        "ENDPOINT                              SAMPLES  STATUS    BODY    LEN     5XX P/S %        P50 P/S ms  RATIO        P99 P/S ms  RATIO  VERDICT",
        "GET /a                                      4   66.67   66.67      1   25.00/25.00         10.0/20.1   2.00         10.0/30.1   2.99  INSUFFICIENT 4 of 100 samples",
        "GET /b                                      1       -       -      0 100.00/100.00             4.0/-      -             4.0/-      -  INSUFFICIENT 1 of 100 samples",
        "GET /c                                      1  100.00  100.00      0     0.00/0.00           4.0/4.0   1.00           4.0/4.0   1.00  INSUFFICIENT 1 of 100 samples",
        "other                                       0       -       -      0     0.00/0.00               -/-      -               -/-      -  INSUFFICIENT 0 of 100 samples",
        "(all endpoints)                             6   75.00   75.00      1   33.33/33.33         10.0/20.1   2.00         10.0/30.1   2.99  ",
        "",
        "verdict: INSUFFICIENT (exit 3)",
        "epoch 1 since 1970-01-01T00:00:00.000Z (start)",
        "1 pairs beyond the endpoint cap are counted under 'other'",
        "1 of 6 bodies compared by status and length only",
        "latency GET /a: shadow/primary at 90% p50 (3 of 6 timed samples) p99 (3 of 368 timed samples); secondary/primary p50 (2 of 6 timed samples) p99 (2 of 368 timed samples)",
        "latency GET /b: shadow/primary at 90% p50 (0 of 6 timed samples) p99 (0 of 368 timed samples)",
        "latency GET /c: shadow/primary at 90% p50 (1 of 6 timed samples) p99 (1 of 368 timed samples)",
        "latency other: shadow/primary at 90% p50 (0 of 6 timed samples) p99 (0 of 368 timed samples)",
        "noise learned for GET /a from 2 secondary pairs: $.n (100%)",
    ]
    .map(|l| format!("{l}\n"))
    .concat();
    assert_eq!(c.report().render_text(), want);
    assert!(c.report().render_html().contains("<p>1 pairs past the endpoint cap are counted under 'other'.</p>"));
    let r = c.report();
    let l = &endpoint(&r, "GET /a").summary.latency;
    assert_eq!((l.primary.count, l.shadow.count), (4, 3));
    assert_eq!(l.p50_ratio, Some(l.shadow.p50_ms / l.primary.p50_ms));
    assert_eq!(l.p95_ratio, Some(l.shadow.p95_ms / l.primary.p95_ms));
    assert!((l.p50_ratio.unwrap_or_default() - 2.0).abs() < 0.01, "20 ms against 10 ms: {l:?}");
    assert!((l.p95_ratio.unwrap_or_default() - 3.0).abs() < 0.01, "30 ms against 10 ms: {l:?}");
    let l = &endpoint(&r, "GET /b").summary.latency;
    assert_eq!((l.p50_ratio, l.p95_ratio, l.p99_ratio), (None, None, None), "no shadow latency: no ratio");
}

/// A passing endpoint's row: its name cut to the column, the verdict alone; and no notes when
/// there is nothing to note.
#[test]
fn render_text_of_a_pass() {
    let mut c = comparator("");
    let long = format!("GET /{}", "a".repeat(60));
    for _ in 0..437 {
        c.observe(&long, &json_resp(200, "{}", 10), &json_resp(200, "{}", 10));
    }
    let text = c.report().render_text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 7, "{text}");
    assert_eq!(
        lines[1],
        format!(
            "GET /{}… {:>8} {:>7} {:>7} {:>6} {:>13} {:>17} {:>6} {:>17} {:>6}  PASS",
            "a".repeat(30),
            437,
            "100.00",
            "100.00",
            0,
            "0.00/0.00",
            "10.0/10.0",
            "1.00",
            "10.0/10.0",
            "1.00"
        )
    );
    assert!(lines[2].starts_with("(all endpoints)      "), "{text}");
    // Every sample in one 10 ms bucket (9 984-10 047 µs): the bounds are its two edges.
    assert_eq!(
        &lines[3..],
        [
            "",
            "verdict: PASS (exit 0)",
            "epoch 1 since 1970-01-01T00:00:00.000Z (start)",
            &format!("latency GET /{}: shadow/primary at 90% p50 [0.99, 1.01] p99 [0.99, 1.01]", "a".repeat(60))
        ]
    );
}

/// The HTML page's values: verdict, counts, each table row, the sections, the latency curves
/// (points at each percentile), axis ticks, legends and learned noise.
#[test]
fn html_report_values() {
    let mut c = comparator("max_body_bytes = 8\n[noise]\nmin_samples = 2\nmin_differ_percent = 50.0");
    c.observe("GET /a", &json_resp(200, r#"{"v":1}"#, 10), &json_resp(200, r#"{"v":1}"#, 20));
    c.observe("GET /a", &json_resp(500, r#"{"v":1}"#, 10), &json_resp(200, r#"{"v":2}"#, 20));
    c.observe("GET /a", &json_resp(200, "[1,2,3,4,5]", 10), &json_resp(200, "[1,2,3,4,5]", 30));
    c.observe_shadow_failure("GET /b", &json_resp(503, "{}", 4), ShadowFailure::Connect);
    for i in 0..2 {
        c.observe_secondary("GET /a", &json_resp(200, &format!("{{\"n\":{i}}}"), 1), &json_resp(200, "{\"n\":-1}", 1));
    }
    c.observe_secondary("GET /b", &json_resp(200, "{}", 1), &json_resp(200, "{}", 1));
    let html = c.report().render_html();
    for want in [
        "<title>shadow report: INSUFFICIENT</title>",
        "<h1>shadow report: <span class=\"badge insufficient\" id=\"verdict\">INSUFFICIENT</span></h1><p>2 endpoints, 4 compared pairs; exit code 3.</p>",
        "<tr><td class=\"name\">GET /a</td><td>3</td><td>66.67%</td><td>66.67%</td><td>1</td><td>33.33% / 0.00%</td><td>10.05 / 20.09</td><td>10.05 / 30.08</td><td>10.05 / 30.08</td><td>2.00 (3 of 6 timed samples)</td><td>2.99 (3 of 368 timed samples)</td><td class=\"insufficient\">INSUFFICIENT</td><td class=\"why\">3 of 100 samples</td></tr>",
        "<tr><td class=\"name\">GET /b</td><td>1</td><td>-</td><td>-</td><td>0</td><td>100.00% / 100.00%</td><td>4.01 / -</td><td>4.01 / -</td><td>4.01 / -</td><td>- (0 of 6 timed samples)</td><td>- (0 of 368 timed samples)</td><td class=\"insufficient\">INSUFFICIENT</td><td class=\"why\">1 of 100 samples</td></tr>",
        "<p class=\"latency\">Latency gates: shadow/primary at 90% p50 (3 of 6 timed samples) p99 (3 of 368 timed samples); secondary/primary p50 (2 of 6 timed samples) p99 (2 of 368 timed samples).</p>",
        "<section class=\"endpoint\" id=\"endpoint-0\" data-endpoint=\"GET /a\"><h2>GET /a <span class=\"badge insufficient\">INSUFFICIENT</span></h2>",
        "<polyline class=\"primary\" points=\"70.0,207.6 75.8,207.2 82.2,207.2 89.5,207.2 98.0,207.2 107.9,207.2 120.1,207.2 135.9,207.2 158.1,207.2 196.0,207.2 233.9,207.2 261.9,207.2 322.0,207.2 359.9,207.2 448.0,207.2 574.0,207.2 700.0,207.2\" fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"3\" stroke-linejoin=\"round\"></polyline>",
        "<polyline class=\"shadow\" points=\"70.0,145.2 75.8,144.4 82.2,144.4 89.5,144.4 98.0,144.4 107.9,144.4 120.1,144.4 135.9,82.0 158.1,82.0 196.0,82.0 233.9,82.0 261.9,82.0 322.0,82.0 359.9,82.0 448.0,82.0 574.0,82.0 700.0,82.0\" fill=\"none\" stroke=\"#ff7f0e\" stroke-width=\"3\" stroke-linejoin=\"round\"></polyline>",
        "<text x=\"64\" y=\"86.5\" text-anchor=\"end\" class=\"tick\">30</text><line x1=\"70\" x2=\"700\" y1=\"20.0\" y2=\"20.0\" stroke=\"#dddddd\"></line><text x=\"64\" y=\"24.0\" text-anchor=\"end\" class=\"tick\">40</text>",
        "<line x1=\"322.0\" x2=\"322.0\" y1=\"20\" y2=\"270\" stroke=\"#eeeeee\"></line><text x=\"322.0\" y=\"286\" text-anchor=\"middle\" class=\"tick\">p99</text>",
        "class=\"legend\">primary (p99 10.05 ms)</text>",
        "class=\"legend\">shadow (p99 30.08 ms)</text>",
        "class=\"legend\">shadow: no data</text>",
        "<p>Noise learned from 2 primary/secondary pairs: <code>$.n</code> (100%)</p>",
        "<p>Noise learned from 1 primary/secondary pairs: none.</p></section></body></html>\n",
    ] {
        assert!(html.contains(want), "{want}\nmissing in\n{html}");
    }
    assert!(html.starts_with("<!DOCTYPE html><html lang=\"en\">"));
    assert!(!html.contains("past the endpoint cap"));
    // The y axis ends at the first tick at or above the highest point (40 for 30.08 ms).
    assert!(!html.contains("class=\"tick\">50</text>"), "{html}");
    // The legend's swatches sit 14 px right of the plot's left edge (70).
    assert!(html.contains("<rect x=\"84\" y=\"26\" width=\"18\" height=\"10\""), "{html}");
}

/// The secondary's latency, timed as the shadow's is, is the noise floor: a shadow 3x the
/// primary passes when the secondary is 3x too, and fails without a secondary. The report
/// carries the primary/secondary interval.
#[test]
fn a_secondary_latency_spread_widens_the_latency_gates() {
    let timed = |ms: u64| json_resp(200, "{}", ms);
    let run = |with_secondary: bool| {
        let mut c = comparator("");
        for _ in 0..437 {
            c.observe("GET /a", &timed(1), &timed(3));
            if with_secondary {
                c.observe_secondary("GET /a", &timed(1), &timed(3));
            }
        }
        c.report()
    };
    let r = run(true);
    let e = endpoint(&r, "GET /a");
    assert_eq!(e.verdict, EndpointVerdict::Pass);
    let p50 = e.summary.latency.p50_interval.as_ref().expect("interval");
    // 1 ms: the bucket 1000-1003 µs; 3 ms: 2992-3007 µs.
    assert_eq!(p50.secondary, Some(QuantileBounds { samples: 437, lower_ms: Some(2.992), upper_ms: Some(3.007) }));
    assert_eq!(p50.noise, Some([2.992 / 1.003, 3.007 / 1.0]));
    assert_eq!(p50.ratio, p50.noise, "the shadow is timed like the secondary");
    assert!(r.render_text().contains(
        "latency GET /a: shadow/primary at 90% p50 [2.98, 3.01] p99 [2.98, 3.01]; secondary/primary p50 [2.98, 3.01] p99 [2.98, 3.01]\n"
    ));
    let r = run(false);
    let EndpointVerdict::Fail { failed } = &endpoint(&r, "GET /a").verdict else { panic!("FAIL") };
    // The p50 fails; the p99 (3 ms against 1 ms) is within its 5 ms floor.
    assert_eq!(failed.iter().map(|f| f.gate).collect::<Vec<_>>(), [Gate::P50Ratio]);
    assert_eq!(failed[0].interval, Some([2.992 / 1.003, 3.007 / 1.0]));
    assert_eq!(failed[0].limit, 1.2);
    assert!(endpoint(&r, "GET /a").summary.latency.p50_interval.as_ref().is_some_and(|i| i.noise.is_none()));
    // An untimed secondary teaches no latency.
    let mut c = comparator("");
    c.observe_secondary("GET /a", &timed(1), &ResponseSample { latency: None, ..timed(3) });
    let r = c.report();
    assert_eq!(endpoint(&r, "GET /a").summary.latency.p50_interval.as_ref().and_then(|i| i.secondary), None);
}

/// Shadow responses without a time of their own are compared, counted as untimed, and shown
/// as "untimed", never as 0 ms: in the report's row and latency line, the HTML and the diffs.
#[test]
fn untimed_shadow_responses_say_so() {
    let mut c = comparator("");
    let untimed = |body: &str| ResponseSample { latency: None, ..json_resp(200, body, 0) };
    c.observe("GET /u", &json_resp(200, "{\"a\":1}", 2), &untimed("{\"a\":1}"));
    c.observe("GET /u", &json_resp(200, "{\"a\":1}", 2), &untimed("{\"a\":2}"));
    c.observe("GET /t", &json_resp(200, "{\"a\":1}", 2), &json_resp(200, "{\"a\":1}", 3));
    c.observe("GET /t", &json_resp(200, "{\"a\":1}", 2), &untimed("{\"a\":1}"));
    let r = c.report();
    let u = &endpoint(&r, "GET /u").summary.latency;
    assert_eq!((u.primary.count, u.shadow.count, u.shadow_untimed), (2, 0, 2));
    assert_eq!((endpoint(&r, "GET /t").summary.latency.shadow_untimed, r.overall.latency.shadow_untimed), (1, 3));
    let text = r.render_text();
    let row = text.lines().find(|l| l.starts_with("GET /u")).unwrap_or_default();
    assert!(
        row.ends_with("       2.0/untimed      -       2.0/untimed      -  INSUFFICIENT 2 of 100 samples"),
        "{text}"
    );
    assert!(text.contains("latency GET /u: shadow/primary at 90% p50 (0 of 6 timed samples) p99 (0 of 368 timed samples); 2 shadow responses untimed\n"), "{text}");
    let html = r.render_html();
    assert!(html.contains("<td>2.01 / untimed</td>"), "{html}");
    assert!(html.contains("; 2 shadow responses untimed.</p>"), "{html}");
    let d = c.diffs(Some("GET /u"));
    assert_eq!(d.len(), 1);
    assert_eq!((d[0].shadow_latency_ms, d[0].shadow_timing), (None, Timing::Untimed));
    assert!(d[0].render().contains("  latency: primary 2.000 ms shadow untimed\n"), "{}", d[0].render());
    let json: Value = serde_json::to_value(&d[0]).expect("json");
    assert_eq!((&json["shadow_latency_ms"], &json["shadow_timing"]), (&Value::Null, &Value::from("untimed")));
}
