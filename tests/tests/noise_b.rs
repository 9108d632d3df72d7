//! Kernel tier B, noise cancellation with a secondary: two instances of the current version
//! differ in a field compare does not ignore by default (`served_by`); with a `secondary` the
//! daemon learns it as noise and the endpoint passes, without one the same difference fails it.

use std::{net::SocketAddr, time::Duration};

use shadow_tests::{
    Proc, require_kernel,
    rig::{OpsRig, get_many},
    server::{Mode, Options, demo::Version},
    wait_for,
};

// Enough for every latency gate to be judged (the p99 needs 368 samples a side at the default
// confidence; with fewer the endpoint is INSUFFICIENT, whatever the gate's limit).
const REQUESTS: u64 = 400;

/// The demo service, v1, as instance `instance` (its `served_by`).
fn demo_service(r: &OpsRig, listen: &str, instance: &str) -> Proc {
    Options::new().mode(Mode::Demo(Version::V1)).instance(instance).spawn(&r.t.server, listen)
}

fn endpoint<'a>(report: &'a serde_json::Value, rule: &str) -> &'a serde_json::Value {
    report["rules"]
        .as_array()
        .and_then(|rules| rules.iter().find(|x| x["rule"] == rule))
        .map(|x| &x["report"]["endpoints"][0])
        .unwrap_or_else(|| panic!("no rule {rule} in {report}"))
}

#[test]
fn a_secondary_teaches_the_noise_and_without_one_the_same_difference_fails() {
    if !require_kernel("a_secondary_teaches_the_noise") {
        return;
    }
    let mut r = OpsRig::new("n1");
    // Rule "learned": primary a, shadow c, secondary b. Rule "plain": primary a2, shadow c2.
    let _services = [
        demo_service(&r, "[::]:8081", "a"),
        demo_service(&r, "127.0.0.1:9091", "c"),
        demo_service(&r, "127.0.0.1:9092", "b"),
        demo_service(&r, "[::]:8082", "a2"),
        demo_service(&r, "127.0.0.1:9093", "c2"),
    ];
    // Latency is not what this test is about: its gate is opened wide.
    let gates = "[rule.compare.gates]\nmax_p99_ratio = 1000.0\np99_tolerance_ms = 1000.0\n";
    r.write_config(&format!(
        "[[rule]]\nname = \"learned\"\nport = 8081\nshadow = \"127.0.0.1:9091\"\nsecondary = \"127.0.0.1:9092\"\nconcurrency = 1\n{gates}\n\
         [[rule]]\nname = \"plain\"\nport = 8082\nshadow = \"127.0.0.1:9093\"\nconcurrency = 1\n{gates}"
    ));
    let iface = r.t.server_if.clone();
    r.start_daemon(&iface, &[]);
    let v4: std::net::IpAddr = r.t.server_v4.parse().expect("v4");
    get_many(&r.t, SocketAddr::new(v4, 8081), "/api/users", REQUESTS as usize);
    get_many(&r.t, SocketAddr::new(v4, 8082), "/api/users", REQUESTS as usize);
    r.wait_quiet(2 * REQUESTS);
    let mut report = serde_json::Value::Null;
    wait_for("every pair compared", Duration::from_secs(30), || {
        let o = r.ctl(&["report", "--json"]);
        report = serde_json::from_str(&o.stdout).unwrap_or_default();
        report["rules"].as_array().is_some_and(|rules| {
            rules.len() == 2 && rules.iter().all(|x| x["report"]["endpoints"][0]["samples"] == REQUESTS)
        })
    });
    let learned = endpoint(&report, "learned");
    let plain = endpoint(&report, "plain");
    assert_eq!(learned["verdict"]["verdict"], "PASS", "{learned}");
    assert_eq!(learned["body_match_percent"], 100.0, "noise-only differences are matches: {learned}");
    let paths: Vec<&str> = learned["noise"]["learned"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["path"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(paths, ["$.served_by"], "the report lists the learned field, and only it: {learned}");
    assert_eq!(plain["verdict"]["verdict"], "FAIL", "without a secondary the difference is a regression: {plain}");
    assert_eq!(plain["body_match_percent"], 0.0, "{plain}");
    assert!(plain["noise"]["learned"].as_array().is_none_or(Vec::is_empty), "{plain}");
    // Every secondary response is accounted for in /metrics.
    let m = r.scrape();
    assert_eq!(
        shadow_tests::metric(&m, "shadow_compare_secondary_total{reason=\"learned\"}"),
        Some(REQUESTS as f64),
        "{m}"
    );
    assert_eq!(r.stop_daemon(), Some(0));
}
