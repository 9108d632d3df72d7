//! Native histograms end to end: Debian's Prometheus with `--enable-feature=native-histograms`
//! scrapes the release daemon, negotiates the protobuf exposition, and stores
//! `shadow_compared_latency_seconds` as one native series per endpoint and side (instead of 147
//! bounds, `+Inf`, `_sum` and `_count`), with the same counts as the daemon's classic buckets and
//! quantiles within one classic bucket of them. Counters come through the protobuf too.

use std::{net::SocketAddr, time::Duration};

use shadow_tests::{
    metric,
    prom::PromServer,
    require_kernel, require_tool,
    rig::{OpsRig, get_many},
    wait_for,
};

const PORT: u16 = 8080;
/// The classic and native buckets' growth factor, 2^(1/8), with the classic bounds' rounding.
const FACTOR: f64 = 1.0914;

/// The classic buckets of one series in the daemon's text: (upper bound, cumulative count).
fn classic(text: &str, labels: &str) -> Vec<(f64, f64)> {
    let prefix = format!("shadow_compared_latency_seconds_bucket{{{labels},le=\"");
    text.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (le, value) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, value.trim().parse().ok()?))
        })
        .collect()
}

/// The bounds of the classic bucket that holds the rank `q * count`.
fn classic_bucket_of(buckets: &[(f64, f64)], q: f64) -> (f64, f64) {
    let count = buckets.last().map_or(0.0, |b| b.1);
    let rank = q * count;
    let mut lower = 0.0;
    for &(le, cum) in buckets {
        if cum >= rank {
            return (lower, le);
        }
        lower = le;
    }
    (lower, f64::INFINITY)
}

#[test]
fn prometheus_stores_compared_latency_as_native_histograms() {
    if !require_kernel("native_histograms") || !require_tool("native_histograms", "prometheus") {
        return;
    }
    let mut r = OpsRig::new("nh1");
    r.server(&format!("[::]:{PORT}"), "primary");
    r.server("127.0.0.1:9090", "shadow");
    r.write_config(&format!("[[rule]]\nname = \"api\"\nport = {PORT}\nshadow = \"127.0.0.1:9090\"\n"));
    let iface = r.t.server_if.clone();
    r.start_daemon(&iface, &[]);
    let api = SocketAddr::new(r.t.server_v4.parse().expect("v4"), PORT);
    let prom = PromServer::start_native(&r.t.server, 19091, &[r.metrics_addr()]);

    let mut sent = 0;
    for _ in 0..10 {
        get_many(&r.t, api, "/api", 50);
        sent += 50;
        r.wait_quiet(sent);
    }
    let labels = |side: &str| format!("rule=\"api\",endpoint=\"GET /api/:id\",side=\"{side}\"");
    // Compared pairs settle after their shadow answers: wait until both sides have counts that
    // Prometheus holds too, read from the same scrape of the daemon.
    let mut text = String::new();
    let mut last = String::new();
    let settled = (0..600).any(|_| {
        text = r.scrape();
        let stored = prom.query("histogram_count(shadow_compared_latency_seconds{rule=\"api\"})");
        let want = ["primary", "shadow"]
            .map(|side| metric(&text, &format!("shadow_compared_latency_seconds_count{{{}}}", labels(side))));
        last = format!("daemon {want:?}, prometheus {stored:?}");
        let ok = want.iter().all(|w| w.is_some_and(|n| n > 0.0))
            && stored.len() == 2
            && stored.iter().all(|(l, v)| {
                let i = usize::from(l.get("side").map(String::as_str) == Some("shadow"));
                want[i] == Some(*v)
            });
        if !ok {
            std::thread::sleep(Duration::from_millis(100));
        }
        ok
    });
    assert!(settled, "prometheus never held the daemon's compared counts as native histograms: {last}\n{}", prom.log());
    // One native series per side: no _bucket, _sum or _count series were stored.
    let series = prom.query("count by (__name__) ({__name__=~\"shadow_compared_latency_seconds.*\"})");
    assert_eq!(series.len(), 1, "{series:?}");
    assert_eq!(series[0].0.get("__name__").map(String::as_str), Some("shadow_compared_latency_seconds"));
    assert_eq!(series[0].1, 2.0, "one series per side");
    // The native quantiles fall within one bucket factor of the classic bucket that holds the rank.
    for side in ["primary", "shadow"] {
        let buckets = classic(&text, &labels(side));
        assert_eq!(buckets.len(), 148, "147 bounds and +Inf for {side}");
        for q in [0.5, 0.9, 0.99] {
            let native = prom.query(&format!(
                "histogram_quantile({q}, shadow_compared_latency_seconds{{rule=\"api\",side=\"{side}\"}})"
            ));
            assert_eq!(native.len(), 1, "{native:?}");
            let (lo, hi) = classic_bucket_of(&buckets, q);
            let v = native[0].1;
            assert!(v >= lo / FACTOR && v <= hi * FACTOR, "{side} q{q}: native {v}, classic bucket ({lo}, {hi}]");
        }
    }
    // Counters came through the protobuf exposition as they are in the text.
    let captured = metric(&r.scrape(), "shadow_requests_captured_total").expect("captured");
    wait_for("prometheus to scrape the settled ledger", Duration::from_secs(30), || {
        prom.query("shadow_requests_captured_total").first().is_some_and(|s| s.1 == captured)
    });
    assert_eq!(captured, sent as f64);
}
