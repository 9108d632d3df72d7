//! The Grafana dashboard (deploy/grafana/shadow-dashboard.json) against a real Prometheus
//! scraping the release daemon: every panel query the dashboard runs is valid PromQL, names only
//! metrics the daemon exports or the shipped rules record, and returns data once the daemon has
//! mirrored, compared and ramped (a query's trailing `> 0` filter aside, which hides idle series).

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use shadow_tests::{
    prom::PromServer,
    require_kernel, require_tool,
    rig::{OpsRig, get_many},
    wait_for,
};

const PORT: u16 = 8080;

/// Every (panel title, expression) of the dashboard, with Grafana's variables as a query over the
/// last minutes would have them.
fn queries() -> Vec<(String, String)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/shadow-dashboard.json");
    let text = std::fs::read_to_string(&path).expect("dashboard");
    let d: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert_eq!(d["uid"], "shadow-overview");
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().expect("title").to_owned();
        assert!(p["description"].as_str().is_some_and(|s| !s.is_empty()), "{title}: says what it shows");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            let e = t["expr"].as_str().expect("expr").replace("$__rate_interval", "1m").replace("$rule", ".*");
            out.push((title.clone(), e));
        }
    }
    out
}

/// The metric names an expression reads: raw families (`shadow_...`) and recorded names.
fn names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("shadow") {
        let start = i + at;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_' || b[end] == b':') {
            end += 1;
        }
        // A label value (`side="shadow"`) is not a name.
        let quoted = start > 0 && b[start - 1] == b'"';
        if !quoted && end > start + "shadow".len() {
            out.insert(expr[start..end].to_owned());
        }
        i = end.max(start + 1);
    }
    out
}

#[test]
fn every_panel_query_is_valid_and_answers_from_a_real_daemon() {
    if !require_kernel("dashboard_queries") || !require_tool("dashboard_queries", "prometheus") {
        return;
    }
    let queries = queries();
    assert!(queries.len() >= 20, "{}", queries.len());
    let mut r = OpsRig::new("db1");
    r.server(&format!("[::]:{PORT}"), "primary");
    r.server("127.0.0.1:9090", "shadow");
    r.write_config(&format!(
        "[[rule]]\nname = \"api\"\nport = {PORT}\nshadow = \"127.0.0.1:9090\"\n\n\
         [rule.ramp]\nsteps = [50, 100]\nstep_seconds = 1\nmin_pairs = 20\nbaseline_seconds = 1\nbaseline_responses = 20\n"
    ));
    let iface = r.t.server_if.clone();
    let state = r.scratch.path("state");
    r.start_daemon(&iface, &["--state-dir", state.to_str().expect("utf-8")]);
    let api = SocketAddr::new(r.t.server_v4.parse().expect("v4"), PORT);
    let prom = PromServer::start(&r.t.server, 19090, &[r.metrics_addr()]);
    // Mirror and compare until the ramp has left its baseline and pairs were compared.
    let mut sent = 0;
    for _ in 0..40 {
        get_many(&r.t, api, "/api", 50);
        sent += 50;
        r.wait_quiet(sent);
        if r.metric("shadow_ramp_state{rule=\"api\",state=\"baseline\"}") == 0.0
            && r.scrape().lines().any(|l| l.starts_with("shadow_comparisons_total{") && !l.ends_with(" 0"))
        {
            break;
        }
    }
    // Prometheus has scraped what the daemon counted, and the rules recorded the verdicts.
    let captured = r.metric("shadow_requests_captured_total");
    wait_for("prometheus to scrape the daemon and record the verdicts", Duration::from_secs(60), || {
        prom.query("shadow_requests_captured_total").first().is_some_and(|s| s.1 == captured)
            && !prom.query("shadow_10m:endpoint_verdict").is_empty()
    });
    let exported = r.scrape();
    let rules = std::fs::read_to_string(shadow_tests::prom::rules_dir().join("shadow-rules.yml")).expect("rules");
    for (title, expr) in &queries {
        for name in names(expr) {
            let known = if name.contains(':') {
                rules.contains(&format!("- record: {name}\n"))
            } else {
                exported.lines().any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
                    || exported.contains(&format!("{name}_bucket{{"))
            };
            assert!(known, "{title}: {name} is neither exported nor recorded ({expr})");
        }
        // Valid PromQL (query panics on an API error) that answers once the idle filter is off.
        prom.query(expr);
        let unfiltered = expr.strip_suffix(" > 0").unwrap_or(expr);
        let mut got = Vec::new();
        wait_for(&format!("{title}: {unfiltered}"), Duration::from_secs(30), || {
            got = prom.query(unfiltered);
            !got.is_empty()
        });
    }
    // Four of the panels' queries as Prometheus draws them (its graph page in headless
    // Chromium): each graph drawn. `SHADOW_DASHBOARD_SHOT=FILE` keeps the picture (docs/).
    if !require_tool("dashboard_queries", "chromium") {
        return;
    }
    // More traffic first, so that the graphs have a few seconds of it to draw.
    for _ in 0..20 {
        get_many(&r.t, api, "/api", 25);
        sent += 25;
        r.wait_quiet(sent);
    }
    let picks = ["Requests: captured, replayed, dropped", "Comparisons by outcome", "p99 and p50 per side"];
    let mut url = format!("http://{}/classic/graph?", prom.addr);
    for (i, title) in picks.iter().enumerate() {
        let (_, expr) = queries.iter().find(|(t, _)| t == title).unwrap_or_else(|| panic!("no panel {title}"));
        url.push_str(&format!("g{i}.expr={}&g{i}.tab=0&g{i}.range_input=30s&", shadow_tests::prom::url_encode(expr)));
    }
    let browse = |args: &[&str]| {
        let profile = format!("--user-data-dir={}", r.scratch.path("chromium").display());
        let out =
            r.t.server
                .command("timeout")
                .args([
                    "120",
                    "chromium",
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--no-first-run",
                    "--hide-scrollbars",
                ])
                .arg(profile)
                .args(["--virtual-time-budget=10000", "--window-size=1200,2250"])
                .args(args)
                .arg(&url)
                .output()
                .expect("chromium");
        assert!(out.status.success(), "chromium: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dom = browse(&["--dump-dom"]);
    std::fs::write(r.scratch.path("dashboard.html"), &dom).expect("keep the page");
    assert_eq!(dom.matches("class=\"graph_area\"").count(), picks.len(), "one graph per query");
    assert!(!dom.contains("No datapoints found"), "every graph has data (scratch dashboard.html)");
    let shot = r.scratch.path("dashboard.png");
    browse(&[&format!("--screenshot={}", shot.display())]);
    assert!(std::fs::metadata(&shot).is_ok_and(|m| m.len() > 10_000), "a picture was taken");
    if let Some(keep) = std::env::var_os("SHADOW_DASHBOARD_SHOT") {
        std::fs::copy(&shot, keep).expect("copy the picture");
    }
}
