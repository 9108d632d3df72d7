use proptest::prelude::*;

use super::*;
use crate::replay::{
    controls::{HeaderName, ReplayControls, ShadowTarget},
    edit::{edit_request_into, tests::captured},
};

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TP_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TP_PARENT: &str = "00f067aa0ba902b7";

fn target() -> ShadowTarget {
    "shadow.internal:8081".parse().unwrap()
}

fn controls(mode: TraceMode, sampled: TraceSampled) -> ReplayControls {
    ReplayControls { trace: mode, trace_sampled: sampled, ..ReplayControls::default() }
}

/// A request with these header lines, edited: its header lines (name, value) and the outcome.
fn run_with(c: &ReplayControls, headers: &[(&str, &str)]) -> (Vec<(String, String)>, TraceOutcome, String) {
    let mut raw = b"GET /a HTTP/1.1\r\nHost: a\r\n".to_vec();
    for (n, v) in headers {
        raw.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    raw.extend_from_slice(b"\r\nbody");
    let mut out = Vec::new();
    let outcome = edit_request_into(&captured(&raw), c, &target(), &mut out).expect("edits");
    let text = String::from_utf8(out).expect("ascii");
    assert!(text.ends_with("\r\n\r\nbody"), "{text}");
    let head = &text[..text.find("\r\n\r\n").unwrap()];
    let lines = head
        .split("\r\n")
        .skip(1)
        .map(|l| {
            let (n, v) = l.split_once(':').expect("a header line");
            (n.to_owned(), v.trim().to_owned())
        })
        .collect();
    (lines, outcome, text)
}

fn run(headers: &[(&str, &str)]) -> (Vec<(String, String)>, TraceOutcome, String) {
    run_with(&ReplayControls::default(), headers)
}

fn values<'a>(lines: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    lines.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
}

fn one<'a>(lines: &'a [(String, String)], name: &str) -> &'a str {
    match values(lines, name).as_slice() {
        [v] => v,
        other => panic!("{name}: {other:?} in {lines:?}"),
    }
}

fn happened(o: &TraceOutcome) -> Vec<(TraceFormat, TraceAction)> {
    o.report.iter().collect()
}

/// The new traceparent's ids.
fn w3c_ids(tp: &str) -> (String, String, String) {
    let p: Vec<&str> = tp.split('-').collect();
    assert_eq!(p.len(), 4, "{tp}");
    assert_eq!(p[0], "00");
    assert!(is_lower_hex_id(p[1].as_bytes(), &[32]) && is_lower_hex_id(p[2].as_bytes(), &[16]), "{tp}");
    (p[1].to_owned(), p[2].to_owned(), p[3].to_owned())
}

#[test]
fn traceparent_restarts_with_its_flags_and_tracestate_links_back() {
    let (lines, o, text) = run(&[("traceparent", TP), ("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")]);
    let (trace, parent, flags) = w3c_ids(one(&lines, "traceparent"));
    assert_ne!((trace.as_str(), parent.as_str()), (TP_TRACE, TP_PARENT));
    assert_eq!(flags, "01", "the production's sampling decision carries over");
    assert_eq!(one(&lines, "tracestate"), format!("shadow={TP_TRACE}-{TP_PARENT}"), "the only member");
    assert_eq!(text.matches(TP_TRACE).count(), 1, "the production id only in the link: {text}");
    assert!(!text.contains("congo") && !text.contains("rojo"));
    assert_eq!(
        happened(&o),
        [
            (TraceFormat::TraceParent, TraceAction::Restarted),
            (TraceFormat::TraceState, TraceAction::Restarted),
            (TraceFormat::Baggage, TraceAction::Marked)
        ]
    );
    let link = o.link.expect("a link");
    assert_eq!((link.format, link.production(), link.shadow()), (TraceFormat::TraceParent, TP_TRACE, trace.clone()));
    // Another request: other ids.
    let (again, _, _) = run(&[("traceparent", TP)]);
    assert_ne!(w3c_ids(one(&again, "traceparent")).0, trace);
}

#[test]
fn a_missing_tracestate_is_added_and_extra_ones_go() {
    let (lines, _, _) = run(&[("traceparent", TP)]);
    assert_eq!(one(&lines, "tracestate"), format!("shadow={TP_TRACE}-{TP_PARENT}"));
    let (lines, _, _) = run(&[("tracestate", "a=1"), ("TraceParent", TP), ("Tracestate", "b=2")]);
    assert_eq!(
        values(&lines, "tracestate"),
        [format!("shadow={TP_TRACE}-{TP_PARENT}")],
        "the first replaced, in place"
    );
    assert_eq!(lines[1].0, "tracestate", "where the first was");
    // Two traceparents: the first valid one is the context; the other goes.
    let other = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    let (lines, o, text) = run(&[("traceparent", TP), ("traceparent", other)]);
    assert_eq!(values(&lines, "traceparent").len(), 1);
    assert!(!text.contains("0af7651916cd43dd8448eb211c80319c"));
    assert!(o.report.has(TraceFormat::TraceParent, TraceAction::Removed));
    assert!(o.report.has(TraceFormat::TraceParent, TraceAction::Restarted));
}

#[test]
fn sampling_is_inherited_or_set() {
    for (flags, sampled, want) in [
        ("00", TraceSampled::Inherit, "00"),
        ("01", TraceSampled::Inherit, "01"),
        ("03", TraceSampled::Inherit, "03"),
        ("00", TraceSampled::Always, "01"),
        ("02", TraceSampled::Always, "03"),
        ("01", TraceSampled::Never, "00"),
        ("03", TraceSampled::Never, "02"),
    ] {
        let tp = format!("00-{TP_TRACE}-{TP_PARENT}-{flags}");
        let (lines, _, _) = run_with(&controls(TraceMode::Isolate, sampled), &[("traceparent", &tp)]);
        assert_eq!(w3c_ids(one(&lines, "traceparent")).2, want, "{flags} {sampled:?}");
    }
}

#[test]
fn traceparents_not_understood_are_removed_with_their_tracestate() {
    let cases = [
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        "",
    ];
    for tp in cases {
        let (lines, o, text) = run(&[("traceparent", tp), ("tracestate", "x=1")]);
        assert!(values(&lines, "traceparent").is_empty() && values(&lines, "tracestate").is_empty(), "{tp}: {text}");
        assert_eq!(
            happened(&o),
            [
                (TraceFormat::TraceParent, TraceAction::Removed),
                (TraceFormat::TraceState, TraceAction::Removed),
                (TraceFormat::Baggage, TraceAction::Marked)
            ],
            "{tp}"
        );
        assert_eq!(o.link, None);
    }
    // A later version may carry more after a '-': read as version 00, written as 00.
    let (lines, _, _) = run(&[("traceparent", &format!("cc-{TP_TRACE}-{TP_PARENT}-01-what-the-future-holds"))]);
    assert_eq!(w3c_ids(one(&lines, "traceparent")).2, "01");
}

#[test]
fn every_format_of_a_request_gets_one_new_trace_id() {
    let headers = [
        ("traceparent", TP),
        ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90"),
        ("X-B3-TraceId", "463ac35c9f6413ad"),
        ("X-B3-SpanId", "a2fb4a1d1a96d312"),
        ("X-B3-ParentSpanId", "0020000000000001"),
        ("X-B3-Sampled", "1"),
        ("uber-trace-id", "abc123:def456:0:1"),
        ("x-datadog-trace-id", "1234567890123456789"),
        ("x-datadog-parent-id", "987654321"),
        ("x-datadog-tags", "_dd.p.dm=-1,_dd.p.tid=640cfd8d00000000"),
        ("X-Amzn-Trace-Id", "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"),
        ("X-Cloud-Trace-Context", "105445aa7843bc8bf206b12000100000/1;o=1"),
    ];
    let (lines, o, text) = run(&headers);
    for (_, v) in &headers[1..] {
        // Every production id is gone (tracestate holds the W3C one).
        let ids = v.split(|c: char| !c.is_ascii_alphanumeric());
        for id in ids.filter(|s| s.len() >= 6 && s.bytes().any(|b| b.is_ascii_digit())) {
            assert!(!text.contains(id), "{id} still in {text}");
        }
    }
    let (trace, span, _) = w3c_ids(one(&lines, "traceparent"));
    let low = &trace[16..];
    let b3: Vec<&str> = one(&lines, "b3").split('-').collect();
    assert_eq!((b3[0], b3[1], b3[2]), (trace.as_str(), span.as_str(), "1"), "same trace and span ids");
    assert!(is_lower_hex_id(b3[3].as_bytes(), &[16]) && b3[3] != "05e3ac9a4f6e3b90");
    assert_eq!(one(&lines, "X-B3-TraceId"), low, "a 64-bit id: the low half");
    assert_eq!(one(&lines, "X-B3-SpanId"), span);
    assert_eq!(one(&lines, "X-B3-ParentSpanId"), b3[3]);
    assert_eq!(one(&lines, "X-B3-Sampled"), "1");
    assert_eq!(one(&lines, "uber-trace-id"), format!("{low}:{span}:0:1"), "no parent stays 0");
    let low_dec = u64::from_str_radix(low, 16).unwrap().to_string();
    assert_eq!(one(&lines, "x-datadog-trace-id"), low_dec);
    assert_eq!(one(&lines, "x-datadog-parent-id"), u64::from_str_radix(&span, 16).unwrap().to_string());
    assert_eq!(one(&lines, "x-datadog-tags"), format!("_dd.p.dm=-1,_dd.p.tid={}", &trace[..16]));
    assert_eq!(
        one(&lines, "X-Amzn-Trace-Id"),
        format!("Root=1-{}-{};Parent={span};Sampled=1", &trace[..8], &trace[8..])
    );
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let epoch = u64::from_str_radix(&trace[..8], 16).unwrap();
    assert!(now.abs_diff(epoch) < 600, "X-Ray's root starts with the time: {epoch} vs {now}");
    assert_eq!(
        one(&lines, "X-Cloud-Trace-Context"),
        format!("{trace}/{};o=1", u64::from_str_radix(&span, 16).unwrap())
    );
    let restarted: Vec<TraceFormat> =
        happened(&o).into_iter().filter(|(_, a)| *a == TraceAction::Restarted).map(|(f, _)| f).collect();
    assert_eq!(restarted, TraceFormat::ALL[..TraceFormat::COUNT - 2].to_vec(), "all but sw8 and baggage");
    assert_eq!(o.link.map(|l| l.format), Some(TraceFormat::TraceParent), "the W3C one is linked");
}

#[test]
fn b3_single_keeps_its_shape() {
    let (lines, o, _) = run(&[("B3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1")]);
    let v = one(&lines, "b3");
    let p: Vec<&str> = v.split('-').collect();
    assert!(p.len() == 2 && is_lower_hex_id(p[0].as_bytes(), &[32]) && is_lower_hex_id(p[1].as_bytes(), &[16]), "{v}");
    let link = o.link.expect("b3 is linked when alone");
    assert_eq!(
        (link.format, link.production(), link.shadow()),
        (TraceFormat::B3, "80f198ee56343ba864fe8b2a57d3eff7", p[0].to_owned())
    );
    let (lines, o, _) = run(&[("b3", "64fe8b2a57d3eff7-e457b5a2e4d86bd1-d")]);
    let p: Vec<String> = one(&lines, "b3").split('-').map(str::to_owned).collect();
    assert_eq!((p[0].len(), p[2].as_str()), (16, "d"), "a 64-bit trace id stays 64-bit; debug stays");
    assert_eq!(o.link.expect("link").shadow(), p[0]);
    // A decision alone has no ids: as is (or as decided).
    let (lines, o, _) = run(&[("b3", "0")]);
    assert_eq!(one(&lines, "b3"), "0");
    assert_eq!(o.link, None);
    let (lines, _, _) = run_with(&controls(TraceMode::Isolate, TraceSampled::Always), &[("b3", "0")]);
    assert_eq!(one(&lines, "b3"), "1");
    let (lines, _, _) =
        run_with(&controls(TraceMode::Isolate, TraceSampled::Never), &[("b3", "64fe8b2a57d3eff7-e457b5a2e4d86bd1-d")]);
    assert!(one(&lines, "b3").ends_with("-0"));
    for bad in [
        "64fe8b2a57d3eff7",
        "64FE8B2A57D3EFF7-e457b5a2e4d86bd1",
        "64fe8b2a57d3eff7-e457b5a2e4d86bd",
        "0000000000000000-e457b5a2e4d86bd1",
        "64fe8b2a57d3eff7-0000000000000000",
        "64fe8b2a57d3eff7-e457b5a2e4d86bd1-2",
        "64fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b9",
        "64fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90-x",
        "64fe8b2a57d3eff764fe8b2a57d3-e457b5a2e4d86bd1",
    ] {
        let (lines, o, _) = run(&[("b3", bad)]);
        assert!(values(&lines, "b3").is_empty(), "{bad}");
        assert!(o.report.has(TraceFormat::B3, TraceAction::Removed), "{bad}");
    }
}

#[test]
fn b3_multi_headers_are_each_checked() {
    let (lines, o, text) = run(&[
        ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
        ("x-b3-spanid", "e457b5a2e4d86bd1"),
        ("x-b3-sampled", "true"),
    ]);
    assert_eq!(one(&lines, "x-b3-traceid").len(), 32);
    assert_eq!(one(&lines, "x-b3-sampled"), "true", "inherit leaves the decision as written");
    assert!(!text.contains("80f198ee56343ba864fe8b2a57d3eff7") && !text.contains("e457b5a2e4d86bd1"));
    assert_eq!(
        o.link.map(|l| (l.format, l.shadow())),
        Some((TraceFormat::B3Multi, one(&lines, "x-b3-traceid").to_owned()))
    );
    let (lines, _, _) = run_with(&controls(TraceMode::Isolate, TraceSampled::Never), &[("X-B3-Sampled", "1")]);
    assert_eq!(one(&lines, "X-B3-Sampled"), "0");
    let (lines, o, _) =
        run(&[("X-B3-TraceId", "80f198ee"), ("X-B3-SpanId", "E457B5A2E4D86BD1"), ("X-B3-ParentSpanId", "")]);
    assert!(values(&lines, "x-b3-traceid").is_empty() && values(&lines, "x-b3-spanid").is_empty());
    assert!(values(&lines, "x-b3-parentspanid").is_empty());
    assert_eq!(happened(&o)[0], (TraceFormat::B3Multi, TraceAction::Removed));
}

#[test]
fn jaeger_keeps_its_separators_and_widths() {
    let (lines, o, _) = run(&[("uber-trace-id", "5e2c1f0a9b8d7c6e5f4a3b2c1d0e9f8a%3Ae457b5a2e4d86bd1%3A1%3A0")]);
    let v = one(&lines, "uber-trace-id");
    let p: Vec<&str> = v.split("%3A").collect();
    assert_eq!(p.len(), 4, "{v}");
    assert_eq!((p[0].len(), p[1].len(), p[2].len(), p[3]), (32, 16, 16, "0"), "a parent is replaced, flags kept");
    assert_ne!(p[2], "1");
    assert_eq!(o.link.expect("link").production(), "5e2c1f0a9b8d7c6e5f4a3b2c1d0e9f8a");
    let (lines, _, _) = run_with(&controls(TraceMode::Isolate, TraceSampled::Always), &[("Uber-Trace-Id", "1:2:0:2")]);
    let p: Vec<&str> = one(&lines, "uber-trace-id").split(':').collect();
    assert_eq!((p[0].len(), p[2], p[3]), (16, "0", "3"), "decimal flags, sampled bit set");
    for bad in ["1:2:0", "0:2:0:1", "1:0:0:1", "1:2:0:256", "1:2:0:x", "g:2:0:1", "1:2:0:1:5", "1-2-0-1", ""] {
        let (lines, o, _) = run(&[("uber-trace-id", bad)]);
        assert!(
            values(&lines, "uber-trace-id").is_empty() && o.report.has(TraceFormat::Jaeger, TraceAction::Removed),
            "{bad}"
        );
    }
}

#[test]
fn datadog_ids_and_the_high_half_tag() {
    let (lines, o, _) = run(&[("x-datadog-trace-id", "18446744073709551615"), ("x-datadog-tags", "_dd.p.dm=-4")]);
    assert_ne!(one(&lines, "x-datadog-trace-id"), "18446744073709551615");
    assert!(decimal_id(one(&lines, "x-datadog-trace-id").as_bytes()).is_some());
    assert_eq!(one(&lines, "x-datadog-tags"), "_dd.p.dm=-4", "no trace id in it: kept");
    assert_eq!(o.link.expect("link").production(), "18446744073709551615");
    for (name, bad) in [
        ("x-datadog-trace-id", "0"),
        ("x-datadog-trace-id", "18446744073709551616"),
        ("x-datadog-trace-id", "-1"),
        ("x-datadog-parent-id", "12a"),
        ("x-datadog-tags", "_dd.p.tid=640CFD8D00000000"),
        ("x-datadog-tags", "a=b,_dd.p.tid=640cfd8d"),
    ] {
        let (lines, o, _) = run(&[(name, bad)]);
        assert!(values(&lines, name).is_empty() && o.report.has(TraceFormat::Datadog, TraceAction::Removed), "{bad}");
    }
}

#[test]
fn xray_replaces_root_and_parent_and_drops_what_names_the_production_request() {
    let (lines, o, _) = run_with(
        &controls(TraceMode::Isolate, TraceSampled::Never),
        &[(
            "X-Amzn-Trace-Id",
            "Self=1-67891234-12456789abcdef012345678;Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1;Lineage=a87bd80c:1|68fd508a:5;CustomerData=abc",
        )],
    );
    let v = one(&lines, "X-Amzn-Trace-Id");
    let f: Vec<&str> = v.split(';').collect();
    assert_eq!(f.len(), 4, "{v}");
    assert!(
        f[0].starts_with("Root=1-") && f[1].starts_with("Parent=") && f[2] == "Sampled=0" && f[3] == "CustomerData=abc",
        "{v}"
    );
    assert_eq!(o.link.expect("link").production(), "1-5759e988-bd862e3fe1be46a994272793");
    assert_eq!(o.link.expect("link").shadow(), &f[0]["Root=".len()..]);
    for bad in [
        "Root=1-5759e988-bd862e3fe1be46a99427279",
        "Root=2-5759e988-bd862e3fe1be46a994272793",
        "Parent=53995c3f42cd8ad8",
        "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad",
        "Root=1-5759e988-bd862e3fe1be46a994272793;Root=1-5759e988-bd862e3fe1be46a994272794",
        "Root=1-5759e988-bd862e3fe1be46a994272793;junk",
    ] {
        let (lines, o, _) = run(&[("x-amzn-trace-id", bad)]);
        assert!(
            values(&lines, "x-amzn-trace-id").is_empty() && o.report.has(TraceFormat::XRay, TraceAction::Removed),
            "{bad}"
        );
    }
}

#[test]
fn cloud_trace_context_forms() {
    for (v, shape) in [
        ("105445aa7843bc8bf206b12000100000", 0),
        ("105445AA7843BC8BF206B12000100000/123", 1),
        ("105445aa7843bc8bf206b12000100000/1;o=0", 2),
    ] {
        let (lines, _, _) = run(&[("X-Cloud-Trace-Context", v)]);
        let out = one(&lines, "x-cloud-trace-context");
        assert_eq!(out.matches('/').count(), usize::from(shape > 0), "{out}");
        assert_eq!(out.ends_with(";o=0"), shape == 2, "{out}");
        assert!(!out.to_ascii_lowercase().contains("105445aa7843bc8bf206b12000100000"));
    }
    for bad in [
        "105445aa7843bc8bf206b1200010000",
        "00000000000000000000000000000000/1",
        "105445aa7843bc8bf206b12000100000/",
        "105445aa7843bc8bf206b12000100000/1;x=1",
        "105445aa7843bc8bf206b12000100000/1a",
    ] {
        let (lines, o, _) = run(&[("x-cloud-trace-context", bad)]);
        assert!(
            values(&lines, "x-cloud-trace-context").is_empty()
                && o.report.has(TraceFormat::CloudTrace, TraceAction::Removed),
            "{bad}"
        );
    }
}

#[test]
fn sw8_replaces_trace_and_segment_and_keeps_the_rest() {
    let mut trace_b64 = Vec::new();
    base64_encode(b"a1b2c3d4e5f6.37.16790432512150001", &mut trace_b64);
    let trace_b64 = String::from_utf8(trace_b64).unwrap();
    let v = format!("1-{trace_b64}-NWU4ZjFhLjEuMTY3OTA=-3-b3JkZXJz-aW5zdGFuY2U=-L2FwaS9vcmRlcnM=-MTAuMC4wLjE6ODA4MA==");
    let (lines, o, text) = run(&[("sw8", &v)]);
    let out = one(&lines, "sw8");
    let f: Vec<&str> = out.split('-').collect();
    assert_eq!(f.len(), 8, "{out}");
    assert_eq!(f[0], "1");
    assert!(f[3..].join("-") == "3-b3JkZXJz-aW5zdGFuY2U=-L2FwaS9vcmRlcnM=-MTAuMC4wLjE6ODA4MA==", "{out}");
    assert!(!text.contains(&trace_b64) && !text.contains("NWU4ZjFhLjEuMTY3OTA="));
    let mut buf = [0u8; 64];
    let new_trace = std::str::from_utf8(base64_decode(f[1].as_bytes(), &mut buf).expect("base64")).unwrap().to_owned();
    let link = o.link.expect("link");
    assert_eq!((link.production(), link.shadow()), ("a1b2c3d4e5f6.37.16790432512150001", new_trace));
    for bad in [
        "1-abc-def-3-a-b-c",
        "2-YQ==-Yg==-3-a-b-c-d",
        "1-YQ==-Yg==-x-a-b-c-d",
        "1-Y*==-Yg==-3-a-b-c-d",
        "1-YQ==-Yg==-3-a-b-c-d-e",
    ] {
        let (lines, o, _) = run(&[("sw8", bad)]);
        assert!(values(&lines, "sw8").is_empty() && o.report.has(TraceFormat::Sw8, TraceAction::Removed), "{bad}");
    }
}

#[test]
fn keep_leaves_every_trace_header_as_captured() {
    let headers = [
        ("traceparent", TP),
        ("tracestate", "congo=t61rcWkgMzE"),
        ("b3", "not even valid"),
        ("X-B3-TraceId", "463ac35c9f6413ad"),
        ("uber-trace-id", "abc123:def456:0:1"),
        ("x-datadog-trace-id", "1234567890123456789"),
        ("X-Amzn-Trace-Id", "Root=1-5759e988-bd862e3fe1be46a994272793"),
        ("X-Cloud-Trace-Context", "105445aa7843bc8bf206b12000100000/1;o=1"),
        ("sw8", "1-YQ==-Yg==-3-a-b-c-d"),
        ("baggage", "userId=alice"),
    ];
    let (lines, o, _) = run_with(&controls(TraceMode::Keep, TraceSampled::Always), &headers);
    for (n, v) in headers.iter().take(headers.len() - 1) {
        assert_eq!(one(&lines, n), *v, "{n}");
    }
    assert_eq!(one(&lines, "baggage"), "userId=alice,shadow=true", "the marker in both modes");
    assert_eq!(o.link, None);
    let kept: Vec<TraceFormat> =
        happened(&o).into_iter().filter(|(_, a)| *a == TraceAction::Kept).map(|(f, _)| f).collect();
    assert_eq!(kept, TraceFormat::ALL[..TraceFormat::COUNT - 1].to_vec());
}

#[test]
fn the_marker_follows_the_original_members() {
    let (lines, o, _) = run(&[("baggage", "userId=alice, isProduction=false;p=1"), ("Baggage", "  k=v  ")]);
    assert_eq!(
        values(&lines, "baggage"),
        ["userId=alice, isProduction=false;p=1", "k=v,shadow=true"],
        "on the last line"
    );
    assert!(o.report.has(TraceFormat::Baggage, TraceAction::Marked));
    let (lines, _, text) = run(&[("baggage", "")]);
    assert_eq!(one(&lines, "baggage"), "shadow=true");
    assert!(text.contains("baggage: shadow=true\r\n"), "{text}");
    let c = ReplayControls { shadow_baggage: "env=shadow".parse().unwrap(), ..ReplayControls::default() };
    assert_eq!(one(&run_with(&c, &[]).0, "baggage"), "env=shadow");
    let off = ReplayControls { shadow_baggage: "".parse().unwrap(), ..ReplayControls::default() };
    let (lines, o, _) = run_with(&off, &[("baggage", "a=1")]);
    assert_eq!(one(&lines, "baggage"), "a=1");
    assert!(o.report.is_empty());
    // Removed by the rule: the marker comes alone, on a line of its own.
    let rm =
        ReplayControls { remove_headers: vec![HeaderName::parse("baggage").unwrap()], ..ReplayControls::default() };
    assert_eq!(one(&run_with(&rm, &[("baggage", "secret=1")]).0, "baggage"), "shadow=true");
}

#[test]
fn the_marker_is_not_added_past_the_w3c_limits() {
    let members = |n: usize| (0..n).map(|i| format!("k{i}=v")).collect::<Vec<_>>().join(",");
    let (lines, o, _) = run(&[("baggage", &members(63))]);
    assert_eq!(one(&lines, "baggage"), format!("{},shadow=true", members(63)), "the 64th member");
    assert!(o.report.has(TraceFormat::Baggage, TraceAction::Marked));
    let (lines, o, _) = run(&[("baggage", &members(64))]);
    assert_eq!(one(&lines, "baggage"), members(64), "a 65th would pass the limit");
    assert_eq!(happened(&o), [(TraceFormat::Baggage, TraceAction::BaggageFull)]);
    // Bytes: the marker and its comma fit exactly, or not at all.
    let fill = |total: usize| format!("k={}", "v".repeat(total - 2));
    let room = BAGGAGE_MAX_BYTES - ",shadow=true".len();
    let (lines, _, _) = run(&[("baggage", &fill(room))]);
    assert_eq!(one(&lines, "baggage").len(), BAGGAGE_MAX_BYTES);
    let (lines, o, _) = run(&[("baggage", &fill(room + 1))]);
    assert_eq!(one(&lines, "baggage").len(), room + 1);
    assert!(o.report.has(TraceFormat::Baggage, TraceAction::BaggageFull));
    // Several lines count together (with the commas that join them).
    let (_, o, _) = run(&[("baggage", &members(40)), ("baggage", &members(24))]);
    assert!(o.report.has(TraceFormat::Baggage, TraceAction::BaggageFull));
}

#[test]
fn marker_settings_follow_the_baggage_grammar() {
    assert_eq!("".parse::<ShadowBaggage>().unwrap().member(), None);
    assert_eq!(ShadowBaggage::default().member(), Some("shadow=true"));
    assert_eq!("traffic=shadow%20v2".parse::<ShadowBaggage>().unwrap().member(), Some("traffic=shadow%20v2"));
    for bad in ["shadow", "=true", "a b=1", "k=v,x=y", "k=v;p", "k=\"v\"", "k=", "k=v w"] {
        assert!(bad.parse::<ShadowBaggage>().is_err(), "{bad}");
    }
    assert_eq!("isolate".parse(), Ok(TraceMode::Isolate));
    assert!("off".parse::<TraceMode>().unwrap_err().contains("isolate or keep"));
    assert_eq!(" never ".parse(), Ok(TraceSampled::Never));
    assert!("yes".parse::<TraceSampled>().is_err());
}

#[test]
fn id_text_helpers() {
    let mut v = Vec::new();
    put_dec(&mut v, u64::MAX);
    v.push(b' ');
    put_dec(&mut v, 0);
    assert_eq!(v, b"18446744073709551615 0");
    for input in [&b""[..], b"f", b"fo", b"foo", b"foob", b"fooba", b"foobar"] {
        let mut e = Vec::new();
        base64_encode(input, &mut e);
        let mut buf = [0u8; 8];
        assert_eq!(base64_decode(&e, &mut buf), Some(input), "{}", String::from_utf8_lossy(&e));
    }
    let mut e = Vec::new();
    base64_encode(b"foobar!", &mut e);
    assert_eq!(e, b"Zm9vYmFyIQ==");
    assert_eq!(base64_decode(b"Zm9v*", &mut [0u8; 8]), None);
    assert_eq!(base64_decode(b"Zm9vYmFy", &mut [0u8; 5]), None, "too long for the buffer");
    assert_eq!(decimal_id(b"01"), Some(1));
    assert_eq!(decimal_id(b"000000000000000000001"), None, "21 digits");
    assert_eq!(TraceHeader::of(b"X-AMZN-TRACE-ID"), Some(TraceHeader::XRay));
    assert_eq!(TraceHeader::of(b"x-b3-flags"), None);
}

/// A W3C-grammar list member (`key=value`), as the baggage and tracestate grammars allow.
fn member() -> impl Strategy<Value = String> {
    ("[a-z][a-z0-9_*/-]{0,8}", "[!#-+--:<-\\[\\]-~]{1,12}").prop_map(|(k, v)| format!("{k}={v}"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// Whatever the W3C context and baggage of a request: the production trace id appears only
    /// in the tracestate link, the new traceparent is valid and keeps the flags, and the baggage
    /// members are byte-identical with the marker after them.
    #[test]
    fn no_production_id_survives_and_baggage_survives_intact(
        trace in "[0-9a-f]{32}",
        parent in "[0-9a-f]{16}",
        flags in "[0-9a-f]{2}",
        states in prop::collection::vec(member(), 0..4),
        bag in prop::collection::vec(member(), 0..6),
        upper in any::<bool>(),
    ) {
        prop_assume!(trace.bytes().any(|b| b != b'0') && parent.bytes().any(|b| b != b'0'));
        let tp = format!("00-{trace}-{parent}-{flags}");
        let state = states.join(",");
        let baggage = bag.join(",");
        let mut headers = vec![(if upper { "TRACEPARENT" } else { "traceparent" }, tp.as_str())];
        if !states.is_empty() { headers.push(("tracestate", state.as_str())); }
        if !bag.is_empty() { headers.push(("baggage", baggage.as_str())); }
        let (lines, o, text) = run(&headers);
        let (new_trace, _, new_flags) = w3c_ids(one(&lines, "traceparent"));
        prop_assert_ne!(&new_trace, &trace);
        prop_assert_eq!(&new_flags, &flags);
        prop_assert_eq!(one(&lines, "tracestate"), format!("shadow={trace}-{parent}"));
        prop_assert_eq!(text.matches(trace.as_str()).count(), 1);
        let want_bag = if bag.is_empty() { "shadow=true".to_owned() } else { format!("{baggage},shadow=true") };
        prop_assert_eq!(one(&lines, "baggage"), want_bag);
        prop_assert_eq!(o.link.map(|l| l.production().to_owned()), Some(trace.clone()));
    }
}
