//! Tier B: comparison end to end. The demo service as v1 (primary) and v2 (shadow, with injected
//! regressions), the release daemon capturing v1's traffic and comparing v2's answers; shadowctl
//! against the live daemon, the summary after SIGTERM, and a real Prometheus on the daemon's
//! metrics judging as shadowctl does. Run as root (`SHADOW_REQUIRE_KERNEL=1`).

use std::time::Duration;

use shadow_daemon::{
    compare::{EpochReason, Verdict},
    hub::DaemonReport,
};
use shadow_tests::{
    comparing::{CompareRig, ENDPOINTS, PER_ENDPOINT, RULE, compared_pairs},
    prom::{PromServer, agree_with_report, verdicts},
    require_kernel, require_tool,
};

fn verdict_of(r: &DaemonReport, endpoint: &str) -> Option<Verdict> {
    r.rules.first()?.report.endpoints.iter().find(|e| e.summary.endpoint == endpoint).map(|e| e.verdict.verdict())
}

#[test]
fn live_report_diffs_summary_and_prometheus_agree_on_the_demo_regressions() {
    if !require_kernel("compare_b")
        || !require_tool("compare_b", "promtool")
        || !require_tool("compare_b", "prometheus")
    {
        return;
    }
    let mut rig = CompareRig::start("cmpb").unwrap_or_else(|e| panic!("{e}"));
    let sent = rig.send_traffic().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sent, PER_ENDPOINT * ENDPOINTS.len() as u64);
    let scrape = rig.wait_compared(sent, Duration::from_secs(60));
    assert_eq!(compared_pairs(&scrape), sent as f64, "every replayed request compared once");

    // The metrics contract passes promtool, with the zero series of every endpoint.
    let mfile = rig.scratch.path("metrics.txt");
    std::fs::write(&mfile, &scrape).expect("write metrics");
    let check = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("promtool check metrics < {}", mfile.display()))
        .output()
        .expect("promtool");
    assert!(check.status.success(), "promtool: {}", String::from_utf8_lossy(&check.stderr));
    for series in [
        r#"shadow_comparisons_total{rule="demo",endpoint="GET /api/users/:id",outcome="header_mismatch"} 0"#,
        r#"shadow_compared_responses_total{rule="demo",endpoint="GET /api/pay/:id",side="shadow",class="error"} 0"#,
        r#"shadow_compare_unpaired_total{reason="memory_bound"} 0"#,
    ] {
        assert!(scrape.lines().any(|l| l == series), "{series} missing");
    }

    // shadowctl report: text, exit 1, each endpoint's verdict.
    let (code, out, err) = rig.shadowctl(&["report"]);
    assert_eq!(code, 1, "FAIL is exit 1\n{out}{err}");
    assert!(out.contains("overall verdict: FAIL (exit 1)"), "{out}");
    let row = |name: &str| out.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} in\n{out}"));
    // 2 ms -> 20 ms: the whole distribution moved, the p50's interval is past its limit.
    assert!(row("GET /api/search").contains("FAIL p50_ratio"), "{out}");
    assert!(row("GET /api/orders/:id").contains("FAIL body_match"), "{out}");
    assert!(row("GET /api/pay/:id").contains("shadow_5xx"), "{out}");
    assert!(row("GET /api/users/:id").ends_with("PASS"), "{out}");
    assert!(row("GET /api/time").ends_with("PASS"), "{out}");

    let (code, json, _) = rig.shadowctl(&["report", "--json"]);
    assert_eq!(code, 1);
    let live: DaemonReport = serde_json::from_str(&json).unwrap_or_else(|e| panic!("--json: {e}\n{json}"));
    for (name, want) in ENDPOINTS {
        assert_eq!(verdict_of(&live, name), Some(want), "{name}\n{out}");
    }
    assert_eq!(live.rules[0].report.endpoints.len(), ENDPOINTS.len());
    assert_eq!(live.verdict, Verdict::Fail);
    let epoch = live.rules[0].report.epoch.as_ref().expect("the report says its epoch");
    assert_eq!((epoch.number, epoch.reason), (1, EpochReason::Start));

    let html = rig.scratch.path("report.html");
    let (code, _, _) = rig.shadowctl(&["report", "--html", html.to_str().unwrap_or_default()]);
    assert_eq!(code, 1);
    let page = std::fs::read_to_string(&html).expect("html written");
    assert!(page.contains("<html") && page.contains("GET /api/orders/:id"), "{page:.300}");

    // diffs: the changed field of orders, and nothing for users.
    let (code, d, err) = rig.shadowctl(&["diffs", "--endpoint", "GET /api/orders/:id"]);
    assert_eq!(code, 0, "{err}");
    assert!(d.contains("body_mismatch") && d.contains("currency") && d.contains("EUR") && d.contains("eur"), "{d}");
    let (_, d, _) = rig.shadowctl(&["diffs", "--endpoint", "GET /api/users/:id"]);
    assert!(d.contains("no mismatching pairs"), "{d}");

    // A real Prometheus scraping the daemon, with the shipped rules unchanged (the demo rule uses
    // the default gates), judges every endpoint as shadowctl does.
    let prom = PromServer::start(&rig.t.server, 9099, &[rig.metrics]);
    let samples = ENDPOINTS.iter().map(|(e, _)| ((RULE.to_owned(), (*e).to_owned()), PER_ENDPOINT)).collect();
    prom.wait_for_samples(&samples, Duration::from_secs(60));
    let from_rules = verdicts(&prom);
    if let Err(e) = agree_with_report(&from_rules, RULE, &live.rules[0].report) {
        panic!("Prometheus rules and shadowctl disagree:\n{e}");
    }
    drop(prom);

    // SIGTERM: the summary carries the final report; shadowctl reads it back.
    assert_eq!(rig.daemon.terminate(Duration::from_secs(10)), Some(0), "{}", rig.daemon_log());
    let summary = rig.summary.to_str().unwrap_or_default().to_owned();
    let (code, out, err) = rig.shadowctl(&["report", "--from", &summary]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("GET /api/orders/:id") && out.contains("overall verdict: FAIL"), "{out}");
    let (_, json, _) = rig.shadowctl(&["report", "--json", "--from", &summary]);
    let saved: DaemonReport = serde_json::from_str(&json).expect("--from --json");
    for (name, want) in ENDPOINTS {
        assert_eq!(verdict_of(&saved, name), Some(want), "{name} in the summary");
    }
}

/// `shadowctl reset --rule demo` after the demo's traffic: a new epoch (reason reset) whose report
/// has no pair, whose per-endpoint series left `/metrics`, and whose start is exported; an
/// unknown rule resets nothing.
#[test]
fn a_reset_starts_the_rules_next_epoch_from_zero() {
    if !require_kernel("compare_b") {
        return;
    }
    let rig = CompareRig::start("cmpr").unwrap_or_else(|e| panic!("{e}"));
    let sent = rig.send_traffic().unwrap_or_else(|e| panic!("{e}"));
    rig.wait_compared(sent, Duration::from_secs(60));
    let report = |rig: &CompareRig| {
        let (code, json, err) = rig.shadowctl(&["report", "--json"]);
        let r: DaemonReport = serde_json::from_str(&json).unwrap_or_else(|e| panic!("--json: {e}\n{json}{err}"));
        (code, r)
    };
    let (_, before) = report(&rig);
    assert_eq!(before.rules[0].report.overall.samples, sent);

    let (code, out, err) = rig.shadowctl(&["reset", "--rule", "nope"]);
    assert_eq!(code, 2, "an unknown rule is a usage error\n{out}{err}");
    assert!(err.contains("no rule named 'nope'") && err.lines().count() == 1, "{err}");
    assert_eq!(report(&rig).1.rules[0].report.overall.samples, sent, "nothing was reset");

    let (code, out, err) = rig.shadowctl(&["reset", "--rule", RULE]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with(&format!("rule {RULE}: epoch 2 since ")) && out.contains("(reset)"), "{out}");
    let (code, after) = report(&rig);
    assert_eq!(code, 3, "no pair yet: INSUFFICIENT");
    let r = &after.rules[0].report;
    assert_eq!((r.overall.samples, r.endpoints.len()), (0, 0), "the reset dropped every pair");
    let epoch = r.epoch.as_ref().expect("an epoch");
    assert_eq!((epoch.number, epoch.reason), (2, EpochReason::Reset));
    let (_, text, _) = rig.shadowctl(&["report"]);
    assert!(text.contains("epoch 2 since ") && text.contains("(reset)"), "{text}");

    let scrape = rig.t.server.http_get(rig.metrics, "/metrics").expect("/metrics");
    assert_eq!(compared_pairs(&scrape), 0.0, "the rule's comparison series restart from zero");
    let line = format!("shadow_compare_epochs_total{{rule=\"{RULE}\",reason=\"reset\"}} 1");
    assert!(scrape.lines().any(|l| l == line), "{line} missing");
    let start = format!("shadow_compare_epoch_start_seconds{{rule=\"{RULE}\"}} ");
    let at: f64 =
        scrape.lines().find_map(|l| l.strip_prefix(&start)?.parse().ok()).unwrap_or_else(|| panic!("{start} missing"));
    assert!((at * 1000.0 - epoch.started_unix_ms as f64).abs() < 1.0, "{at} against {}", epoch.started_unix_ms);
}
