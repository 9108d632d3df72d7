//! The fleet-wide gates of deploy/prometheus/: `promtool check rules`, the promtool unit tests of
//! tests/prometheus/ (and that they fail on a broken rule), and, as root, a real Prometheus in a
//! network namespace that scrapes two "nodes" exporting the metric contract and must reach the
//! verdicts compare reaches on the same pairs.

use std::{
    collections::BTreeMap,
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use bytes::Bytes;
use shadow_daemon::compare::{Comparator, CompareSettings, Outcome, ResponseSample, ShadowFailure, Verdict};
use shadow_tests::{
    Scratch,
    prom::{self, EndpointCounts, PromServer},
    require_kernel, require_tool,
    server::Server,
    topo::NetNs,
    wait_for,
};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_str().is_some_and(|s| s.ends_with(suffix)))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no *{suffix} in {}", dir.display());
    v
}

/// Run promtool with `args` in `dir`: (success, stdout + stderr).
fn promtool(dir: &Path, args: &[&str], paths: &[PathBuf]) -> (bool, String) {
    let out = Command::new("promtool").current_dir(dir).args(args).args(paths).output().expect("spawn promtool");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// The windowed gates (group `shadow-gates-10m`) are the cumulative ones over the last 10
/// minutes, generated: `SHADOW_WRITE_RULES=1` rewrites them in place after a change.
#[test]
fn the_windowed_gates_are_the_cumulative_ones_over_ten_minutes() {
    let path = prom::rules_dir().join("shadow-rules.yml");
    let text = fs::read_to_string(&path).expect("rules");
    let want = prom::windowed_gates(&text, "10m");
    let alerts = text.find("  - name: shadow-alerts").expect("alerts group");
    let start = text.find(prom::WINDOW_MARKER).unwrap_or(alerts);
    if std::env::var_os("SHADOW_WRITE_RULES").is_some() {
        fs::write(&path, format!("{}{want}{}", &text[..start], &text[alerts..])).expect("write rules");
        return;
    }
    assert_eq!(
        &text[start..alerts],
        want,
        "shadow-rules.yml's windowed group is stale: SHADOW_WRITE_RULES=1 cargo test -p shadow-tests --test fleet_rules_b the_windowed"
    );
    // Every counter is read over the window, every recorded name is the window's.
    assert!(!want.contains("shadow:"), "{want}");
    assert_eq!(
        want.matches("increase(").count(),
        text[..start]
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .map(|l| l.matches("shadow_compar").count())
            .sum::<usize>()
    );
}

#[test]
fn rules_pass_promtool_check() {
    if !require_tool("rules_pass_promtool_check", "promtool") {
        return;
    }
    let rules = files(&prom::rules_dir(), ".yml");
    let (ok, text) = promtool(&repo(), &["check", "rules"], &rules);
    assert!(ok, "promtool check rules: {text}");
    assert!(text.contains("SUCCESS"), "{text}");
}

#[test]
fn rules_pass_their_unit_tests() {
    if !require_tool("rules_pass_their_unit_tests", "promtool") {
        return;
    }
    let dir = repo().join("tests/prometheus");
    let (ok, text) = promtool(&dir, &["test", "rules"], &files(&dir, ".test.yml"));
    assert!(ok, "promtool test rules: {text}");
}

/// The unit tests are not vacuous: the same tests against rules with one limit changed (the body
/// match gate at 94 % instead of 99 %) must fail, naming the body gate's series.
#[test]
fn unit_tests_fail_on_a_broken_rule() {
    if !require_tool("unit_tests_fail_on_a_broken_rule", "promtool") {
        return;
    }
    let scratch = Scratch::new("promtool");
    let (rules_to, tests_to) = (scratch.path("deploy/prometheus"), scratch.path("tests/prometheus"));
    fs::create_dir_all(&rules_to).expect("mkdir");
    fs::create_dir_all(&tests_to).expect("mkdir");
    let good = "shadow:endpoint_body_match:ratio < bool (0.99 - 1e-11)";
    for f in files(&prom::rules_dir(), ".yml") {
        let text = fs::read_to_string(&f).expect("read rules");
        let broken = text.replace(good, "shadow:endpoint_body_match:ratio < bool 0.94");
        fs::write(rules_to.join(f.file_name().expect("name")), broken).expect("write");
    }
    let tests = files(&repo().join("tests/prometheus"), ".test.yml");
    for f in &tests {
        fs::copy(f, tests_to.join(f.file_name().expect("name"))).expect("copy");
    }
    let copied = files(&tests_to, ".test.yml");
    let (ok, text) = promtool(&tests_to, &["test", "rules"], &copied);
    assert!(!ok, "promtool passed rules with a broken body gate:\n{text}");
    assert!(text.contains("shadow:endpoint_gate_failing"), "{text}");
}

/// One compared pair: the endpoint, the node that saw it, the primary's status and latency (ms)
/// and the shadow's (None: the shadow request failed), and whether the bodies differ.
struct Pair {
    endpoint: &'static str,
    node: usize,
    primary: (u16, f64),
    shadow: Option<(u16, f64)>,
    body_differs: bool,
}

/// Pair `i` of an endpoint: primary status and ms, the shadow's, whether the bodies differ.
type PairOf = (u16, f64, Option<(u16, f64)>, bool);

fn sample(status: u16, ms: f64, body: &str) -> ResponseSample {
    ResponseSample {
        status,
        headers: vec![("content-type".into(), b"application/json".to_vec())],
        body: Bytes::from(body.to_owned()),
        body_complete: true,
        body_len: body.len() as u64,
        latency: Some(Duration::from_secs_f64(ms / 1000.0)),
    }
}

fn class(status: u16) -> String {
    format!("{}xx", (status / 100).clamp(1, 5))
}

/// The pairs of the namespace test. Per endpoint, far from every limit (README, "How close"):
/// users PASS, search FAIL p50 and p99 (10x), orders FAIL body (20 %), pay FAIL status + body +
/// shadow 5xx (20 % answered 500), time PASS only when both nodes are summed (200 + 200 timed
/// samples: the p99's bounds need 368 a side), new INSUFFICIENT (40), down FAIL (the shadow never
/// answers). A PASS needs 400 pairs: fewer than 368 timed samples leave the p99 undecided.
fn pairs() -> Vec<Pair> {
    let mut v = Vec::new();
    let mut add = |endpoint, n: usize, f: &dyn Fn(usize) -> PairOf| {
        for i in 0..n {
            let (ps, pl, shadow, body_differs) = f(i);
            v.push(Pair { endpoint, node: i % 2, primary: (ps, pl), shadow, body_differs });
        }
    };
    let jitter = |i: usize| (i % 10) as f64 * 0.1;
    add("GET /api/users/:id", 400, &|i| (200, 5.0 + jitter(i), Some((200, 5.0 + jitter(i))), false));
    add("GET /api/search", 400, &|i| (200, 2.0 + jitter(i), Some((200, 20.0 + 10.0 * jitter(i))), false));
    add("GET /api/orders/:id", 150, &|i| (200, 3.0 + jitter(i), Some((200, 3.0 + jitter(i))), i % 5 == 0));
    add("GET /api/pay/:id", 150, &|i| {
        let s = if i % 5 == 0 { 500 } else { 200 };
        (200, 4.0 + jitter(i), Some((s, 4.0 + jitter(i))), s == 500)
    });
    add("GET /api/time", 400, &|i| (200, 1.0 + jitter(i), Some((200, 1.0 + jitter(i))), false));
    add("GET /api/new", 40, &|i| (200, 1.0 + jitter(i), Some((200, 1.0 + jitter(i))), false));
    // The shadow never answers: nothing to compare (status, body, header fail) and 100 % errors.
    add("GET /api/down", 120, &|i| (200, 2.0 + jitter(i), None, false));
    v
}

#[test]
fn real_prometheus_reaches_compares_verdicts() {
    if !require_kernel("real_prometheus_reaches_compares_verdicts")
        || !require_tool("real_prometheus_reaches_compares_verdicts", "prometheus")
    {
        return;
    }
    const RULE: &str = "api";
    // compare judges the pairs as one daemon would; the same pairs, split over two nodes, are
    // exported as the contract says, with the outcome compare returned for each pair.
    let mut comparator = Comparator::new(&CompareSettings::default()).expect("default settings");
    let mut nodes: [BTreeMap<&str, EndpointCounts>; 2] = [BTreeMap::new(), BTreeMap::new()];
    for p in pairs() {
        let primary = sample(p.primary.0, p.primary.1, r#"{"id":1,"name":"a"}"#);
        let (outcome, shadow_class, shadow_ms) = match p.shadow {
            Some((status, ms)) => {
                let body = if p.body_differs { r#"{"id":1,"name":"b"}"# } else { r#"{"id":1,"name":"a"}"# };
                let o = comparator.observe(p.endpoint, &primary, &sample(status, ms, body));
                (o, class(status), ms)
            }
            None => {
                (comparator.observe_shadow_failure(p.endpoint, &primary, ShadowFailure::Timeout), "error".into(), 0.0)
            }
        };
        let e = nodes[p.node].entry(p.endpoint).or_insert_with(|| EndpointCounts::new(RULE, p.endpoint));
        *e = std::mem::take(e).pairs(
            1,
            outcome.as_str(),
            (&class(p.primary.0), &shadow_class),
            (p.primary.1 / 1000.0, shadow_ms / 1000.0),
        );
        if outcome == Outcome::ShadowFailed {
            assert_eq!(shadow_class, "error");
        }
    }
    let report = comparator.report();
    let expected_total: BTreeMap<(String, String), u64> =
        report.endpoints.iter().map(|e| ((RULE.to_owned(), e.summary.endpoint.clone()), e.summary.samples)).collect();

    let ns = NetNs::new("prom");
    let targets: Vec<SocketAddr> =
        ["127.0.0.1:9101", "127.0.0.1:9102"].iter().map(|a| a.parse().expect("addr")).collect();
    let _servers: Vec<Server> = nodes
        .iter()
        .zip(&targets)
        .map(|(n, addr)| {
            let list: Vec<EndpointCounts> = n.values().cloned().collect();
            prom::serve_metrics(&ns, *addr, prom::exposition(&list))
        })
        .collect();
    let server = PromServer::start(&ns, 9090, &targets);
    server.wait_for_samples(&expected_total, Duration::from_secs(60));

    // The rules against what we know each endpoint is.
    let k = |e: &str| (RULE.to_owned(), e.to_owned());
    let verdicts = prom::verdicts(&server);
    let want: BTreeMap<(String, String), Verdict> = [
        ("GET /api/users/:id", Verdict::Pass),
        ("GET /api/search", Verdict::Fail),
        ("GET /api/orders/:id", Verdict::Fail),
        ("GET /api/pay/:id", Verdict::Fail),
        ("GET /api/time", Verdict::Pass),
        ("GET /api/new", Verdict::Insufficient),
        ("GET /api/down", Verdict::Fail),
    ]
    .into_iter()
    .map(|(e, v)| (k(e), v))
    .collect();
    assert_eq!(verdicts, want, "{}", server.log());
    let gates = prom::failing_gates(&server);
    let g = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let want_gates: BTreeMap<(String, String), Vec<String>> = [
        ("GET /api/search", g(&["p50_ratio", "p99_ratio"])),
        ("GET /api/orders/:id", g(&["body_match"])),
        ("GET /api/pay/:id", g(&["body_match", "shadow_5xx", "status_match"])),
        ("GET /api/down", g(&["body_match", "header_match", "shadow_5xx", "status_match"])),
    ]
    .into_iter()
    .map(|(e, v)| (k(e), v))
    .collect();
    assert_eq!(gates, want_gates);

    // The same verdict as compare on the same pairs, endpoint by endpoint and overall.
    prom::agree_with_report(&verdicts, RULE, &report).unwrap_or_else(|e| panic!("rules and compare disagree:\n{e}"));
    assert_eq!(report.verdict, Verdict::Fail);
    let overall = server.by_endpoint("shadow:verdict");
    assert_eq!(overall, BTreeMap::from([((RULE.to_owned(), String::new()), 1.0)]));
    let fleet = server.query("shadow:fleet_verdict");
    assert_eq!(fleet.iter().map(|s| s.1).collect::<Vec<_>>(), [1.0]);

    // The histogram contract: the p99 ratio Prometheus estimates is compare's within r².
    let ratios = server.by_endpoint("shadow:endpoint_p99:ratio");
    for e in &report.endpoints {
        let Some(theirs) = e.summary.latency.p99_ratio else {
            continue;
        };
        let ours = ratios.get(&k(&e.summary.endpoint)).copied().unwrap_or(f64::NAN);
        let band = prom::BUCKET_RATIO * prom::BUCKET_RATIO * prom::HDR_ERROR;
        assert!(
            ours >= theirs / band && ours <= theirs * band,
            "{}: p99 ratio {ours} from the buckets, {theirs} from compare",
            e.summary.endpoint
        );
    }

    // The alert, pending (for: 1m): one per failing gate of a failing endpoint.
    let alerts = || {
        let mut v: Vec<(String, String)> = server
            .query(r#"ALERTS{alertname="ShadowEndpointRegression"}"#)
            .into_iter()
            .map(|(l, _)| (l.get("endpoint").cloned().unwrap_or_default(), l.get("gate").cloned().unwrap_or_default()))
            .collect();
        v.sort();
        v
    };
    let mut want_alerts: Vec<(String, String)> =
        want_gates.iter().flat_map(|((_, e), gs)| gs.iter().map(move |g| (e.clone(), g.clone()))).collect();
    want_alerts.sort();
    wait_for("the regression alerts", Duration::from_secs(30), || alerts() == want_alerts);
}
