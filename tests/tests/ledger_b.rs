//! Kernel tier B, the request ledger when the daemon stops with work in flight: requests the
//! shadow never answers are in flight while the daemon runs (and the scrape says so), and settle
//! as `shutdown` drops when it stops, so that the summary still reconciles and says exactly what
//! became of each.

use std::time::Duration;

use shadow_tests::{
    metric, require_kernel,
    rig::{OpsRig, get_many},
    server::Options,
    wait_for,
};

const PORT: u16 = 8080;
const SHADOW: &str = "127.0.0.1:9090";
const REQUESTS: u64 = 4;

/// captured == replayed + sum(dropped) + in_flight, from the numbers alone (not the daemon's own
/// verdict, which is what is checked against it).
fn balances(requests: &serde_json::Value) -> bool {
    let n = |k: &str| requests[k].as_u64().unwrap_or_else(|| panic!("no {k} in {requests}"));
    let dropped: u64 =
        requests["dropped"].as_object().expect("dropped by reason").values().map(|v| v.as_u64().expect("count")).sum();
    n("captured") == n("replayed") + dropped + n("in_flight")
}

#[test]
fn stopping_with_requests_in_flight_settles_them_as_shutdown_drops() {
    if !require_kernel("stopping_with_requests_in_flight") {
        return;
    }
    let mut r = OpsRig::new("lg");
    r.server(&format!("[::]:{PORT}"), "primary");
    // A shadow that reads and records each request, then answers only after ten minutes: every
    // replay stays in flight until the daemon stops.
    r.serve(SHADOW, Options::new().delay(Duration::from_secs(600)).record(r.scratch.path("shadow")));
    // The request timeout outlasts the test, so no replay ends as a shadow error first.
    r.write_config(&format!(
        "[[rule]]\nname = \"api\"\nport = {PORT}\nshadow = \"{SHADOW}\"\nsample_rate = 100\nrequest_timeout = \"600s\"\n"
    ));
    let iface = r.t.server_if.clone();
    r.start_daemon(&iface, &[]);

    let api = std::net::SocketAddr::new(r.t.server_v4.parse().expect("v4"), PORT);
    get_many(&r.t, api, "/slow", REQUESTS as usize);
    // In flight for certain: the daemon has admitted every request and the shadow has read the
    // first (requests that came together go in one pipeline, and the shadow reads the next only
    // after answering the one before, in ten minutes).
    wait_for("the shadow to receive a replay", Duration::from_secs(30), || !r.recorded("shadow").is_empty());
    let mut text = String::new();
    wait_for("every request captured and in flight", Duration::from_secs(30), || {
        text = r.scrape();
        metric(&text, "shadow_requests_captured_total") == Some(REQUESTS as f64)
            && metric(&text, "shadow_requests_in_flight") == Some(REQUESTS as f64)
    });
    assert_eq!(metric(&text, "shadow_requests_replayed_total"), Some(0.0), "{text}");
    for reason in ["shutdown", "shadow_error", "queue_full", "method_not_allowed"] {
        let series = format!("shadow_requests_dropped_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(&text, &series), Some(0.0), "{series} while running");
    }

    let code = r.stop_daemon();
    assert_eq!(code, Some(0), "daemon exit code; log:\n{}", r.daemon_log());
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(r.scratch.path("summary.json")).expect("summary file written at exit"),
    )
    .expect("summary json");
    let m = &summary["mirror"];
    let q = &m["requests"];
    assert_eq!(q["captured"], REQUESTS, "{m}");
    assert_eq!(q["replayed"], 0, "{m}");
    assert_eq!(q["in_flight"], 0, "nothing is left in flight once the daemon stopped: {m}");
    assert_eq!(q["dropped"]["shutdown"], REQUESTS, "each unanswered replay settles as shutdown: {m}");
    assert_eq!(q["dropped"]["shadow_error"], 0, "{m}");
    let others: u64 = q["dropped"]
        .as_object()
        .expect("dropped by reason")
        .iter()
        .filter(|(k, _)| *k != "shutdown")
        .map(|(_, v)| v.as_u64().expect("count"))
        .sum();
    assert_eq!(others, 0, "no other drop reason: {m}");
    assert!(balances(q), "{m}");
    assert_eq!(m["reconciles"], true, "{m}");
    assert_eq!(summary["extraction"]["requests_extracted"], REQUESTS, "{summary}");

    // The same check on these numbers with one request taken out of the outcomes (captured and
    // never ended) must fail: the comparison above can tell an imbalance.
    let mut missing = q.clone();
    missing["dropped"]["shutdown"] = serde_json::json!(REQUESTS - 1);
    assert!(!balances(&missing), "{missing}");
}
