//! A real Prometheus server (Debian's `prometheus`) inside a test's network namespace, loaded with
//! the rules of deploy/prometheus/, and the metric contract those rules read
//! (deploy/prometheus/README.md): an exposition builder for fixtures, served by [`serve_metrics`].
//!
//! For the daemon's tests: start [`PromServer`] in the daemon's namespace with the daemon's metrics
//! address as a target, wait with [`PromServer::wait_for_samples`], then compare [`verdicts`]
//! with `shadowctl report --json` through [`agree_with_report`].

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::{Read, Write},
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use shadow_daemon::compare::{EndpointReport, Report, Verdict};

use crate::{
    Proc, Scratch,
    server::{Options, Server},
    topo::NetNs,
};

/// Largest ratio between consecutive latency bucket bounds (README: r).
pub const BUCKET_RATIO: f64 = 1.0914;
/// hdrhistogram's relative error in compare's p99 (2 significant figures).
pub const HDR_ERROR: f64 = 1.01;

/// The contract's latency bucket bounds in seconds: `1e-4 * 2^(k/8)`, k = 0..=146, rounded to 4
/// significant digits (then `+Inf`).
pub fn latency_buckets() -> Vec<f64> {
    (0..=146)
        .map(|k| {
            let v = 1e-4 * 2f64.powf(f64::from(k) / 8.0);
            format!("{v:.3e}").parse().expect("a formatted float parses")
        })
        .collect()
}

/// An `le` label value as prometheus-client prints it (shortest round trip, `1.0` not `1`).
pub fn le_label(bound: f64) -> String {
    format!("{bound:?}")
}

/// Whether the rules' p99_ratio gate may legitimately disagree with compare's for an endpoint
/// whose compare point ratio is `compare_ratio`: both point p99s within one bucket each (r² on the
/// ratio) and hdrhistogram's 1 %, around the `limit`. For the informational
/// `shadow:endpoint_p99:ratio` only: the gates decide on bounds (see [`latency_verdicts_may_differ`]).
pub fn p99_verdicts_may_differ(compare_ratio: f64, limit: f64) -> bool {
    let band = BUCKET_RATIO * BUCKET_RATIO * HDR_ERROR;
    compare_ratio > limit / band && compare_ratio < limit * band
}

/// Whether a latency decision of compare could come out the other way with each bound moved to
/// where the rules may read it: the rules read a rank's value to its Prometheus bucket's far edge
/// (at most a factor r outwards of the observation) where compare reads it to its hdrhistogram
/// bucket (within 1 %), so a rules bound lies in [b / (r·1.01), b · r·1.01] of compare's `b`.
/// `test(s, p)` is the decision on a shadow bound and a primary bound.
fn unstable(s: f64, p: f64, test: impl Fn(f64, f64) -> bool) -> bool {
    let f = BUCKET_RATIO * HDR_ERROR;
    let base = test(s, p);
    [(s / f, p / f), (s / f, p * f), (s * f, p / f), (s * f, p * f)].iter().any(|&(s, p)| test(s, p) != base)
}

/// Whether the rules may legitimately reach another verdict than compare for this endpoint:
/// a latency gate whose FAIL (p50 and p99) or PASS (p50) test is [`unstable`] within the bucket
/// factor, or whose bounds exist on one side of the 368 / 6 sample threshold only. The rules' ranks
/// are compare's or one rank outwards (README.md, "Ranks"; [`rule_ranks`]), which only widens.
pub fn latency_verdicts_may_differ(e: &EndpointReport) -> bool {
    let g = &e.gates;
    let l = &e.summary.latency;
    let gates = [
        (&l.p50_interval, g.max_p50_ratio, g.p50_tolerance_ms, true),
        (&l.p99_interval, g.max_p99_ratio, g.p99_tolerance_ms, g.p99_confirm),
    ];
    gates.into_iter().any(|(i, ratio, tol, three_way)| {
        let Some(i) = i else { return false };
        let (Some((p_lo, p_hi)), Some((s_lo, s_hi))) = (i.primary.both(), i.shadow.both()) else { return false };
        let limit = |p: f64| (p * ratio).max(p + tol);
        unstable(s_lo, p_hi, |s, p| s > limit(p)) || (three_way && unstable(s_hi, p_lo, |s, p| s <= limit(p)))
    })
}

/// The ranks the rules compute for `n` samples and quantile `q` (shadow-rules.yml,
/// `shadow:endpoint_latency_rank:*`, with its settings: z for latency_confidence 0.9, ranks scaled
/// past 10 000 samples), in the rules' order of operations; None until both ranks exist.
pub fn rule_ranks(n: u64, q: f64) -> Option<(u64, u64)> {
    const Z: f64 = 1.959963984540054;
    const TAIL: f64 = (1.0 - 0.9) / 4.0;
    const EXACT_RANKS_MAX: f64 = 10_000.0;
    let n = n as f64;
    if q.max(1.0 - q).powf(n) > TAIL {
        return None;
    }
    let m = n.min(EXACT_RANKS_MAX);
    let s = Z * (m * q * (1.0 - q)).sqrt();
    let skew = (Z.powi(2) - 1.0) / 6.0 * (1.0 - 2.0 * q);
    let scale = (n / EXACT_RANKS_MAX).max(1.0);
    let l = (((m * q - s + skew - 0.5).floor() + 1.0) * scale).floor().max(1.0);
    let u = ((m * q + s + skew + 0.5).ceil() * scale).ceil().min(n);
    Some((l as u64, u as u64))
}

/// One endpoint's comparison counters on one node, as the daemon exports them.
#[derive(Clone, Debug, Default)]
pub struct EndpointCounts {
    pub rule: String,
    pub endpoint: String,
    /// `compare::Outcome::as_str()` → pairs.
    pub outcomes: BTreeMap<String, u64>,
    /// Class (`2xx`, `5xx`, ...) → responses, per side.
    pub primary: BTreeMap<String, u64>,
    pub shadow: BTreeMap<String, u64>,
    /// Observed latencies in seconds, per side.
    pub primary_latencies: Vec<f64>,
    pub shadow_latencies: Vec<f64>,
}

impl EndpointCounts {
    pub fn new(rule: &str, endpoint: &str) -> Self {
        Self { rule: rule.into(), endpoint: endpoint.into(), ..Self::default() }
    }

    /// Add `n` pairs with this outcome, primary and shadow classes (`error`: the shadow failed)
    /// and latencies (the shadow's ignored when it failed, as compare records them).
    pub fn pairs(mut self, n: u64, outcome: &str, classes: (&str, &str), latency: (f64, f64)) -> Self {
        *self.outcomes.entry(outcome.into()).or_default() += n;
        *self.primary.entry(classes.0.into()).or_default() += n;
        *self.shadow.entry(classes.1.into()).or_default() += n;
        for _ in 0..n {
            self.primary_latencies.push(latency.0);
            if classes.1 != "error" {
                self.shadow_latencies.push(latency.1);
            }
        }
        self
    }
}

const OUTCOMES: [&str; 7] = [
    "match",
    "match_length_only",
    "status_mismatch",
    "body_mismatch",
    "length_mismatch",
    "header_mismatch",
    "shadow_failed",
];
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];

/// The exposition text of the contract for these endpoints, zeros included, as the daemon emits it.
pub fn exposition(endpoints: &[EndpointCounts]) -> String {
    let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
    let mut o = String::new();
    o.push_str("# HELP shadow_comparisons_total Compared primary/shadow pairs by outcome.\n");
    o.push_str("# TYPE shadow_comparisons_total counter\n");
    for e in endpoints {
        for oc in OUTCOMES {
            let n = e.outcomes.get(oc).copied().unwrap_or(0);
            let _ = writeln!(
                o,
                "shadow_comparisons_total{{rule=\"{}\",endpoint=\"{}\",outcome=\"{oc}\"}} {n}",
                esc(&e.rule),
                esc(&e.endpoint)
            );
        }
    }
    o.push_str("# HELP shadow_compared_responses_total Responses of compared pairs by side and class.\n");
    o.push_str("# TYPE shadow_compared_responses_total counter\n");
    for e in endpoints {
        for (side, classes) in [("primary", &e.primary), ("shadow", &e.shadow)] {
            for c in CLASSES.iter().filter(|c| side == "shadow" || **c != "error") {
                let n = classes.get(*c).copied().unwrap_or(0);
                let _ = writeln!(
                    o,
                    "shadow_compared_responses_total{{rule=\"{}\",endpoint=\"{}\",side=\"{side}\",class=\"{c}\"}} {n}",
                    esc(&e.rule),
                    esc(&e.endpoint)
                );
            }
        }
    }
    o.push_str("# HELP shadow_compared_latency_seconds Latencies of compared pairs.\n");
    o.push_str("# TYPE shadow_compared_latency_seconds histogram\n");
    let bounds = latency_buckets();
    for e in endpoints {
        for (side, lat) in [("primary", &e.primary_latencies), ("shadow", &e.shadow_latencies)] {
            let labels = format!("rule=\"{}\",endpoint=\"{}\",side=\"{side}\"", esc(&e.rule), esc(&e.endpoint));
            for b in &bounds {
                let n = lat.iter().filter(|v| **v <= *b).count();
                let _ = writeln!(o, "shadow_compared_latency_seconds_bucket{{{labels},le=\"{}\"}} {n}", le_label(*b));
            }
            let _ = writeln!(o, "shadow_compared_latency_seconds_bucket{{{labels},le=\"+Inf\"}} {}", lat.len());
            let _ = writeln!(o, "shadow_compared_latency_seconds_sum{{{labels}}} {:?}", lat.iter().sum::<f64>());
            let _ = writeln!(o, "shadow_compared_latency_seconds_count{{{labels}}} {}", lat.len());
        }
    }
    o
}

/// A node's metrics endpoint: the test server inside `ns` answering every request with `text`
/// and closing (as an exporter may: Prometheus opens a new connection), for as long as a test
/// with a Prometheus runs; stops on drop.
pub fn serve_metrics(ns: &NetNs, addr: SocketAddr, text: String) -> Server {
    Options::new().body(text.into_bytes()).keep_alive(false).lifetime(Duration::from_secs(600)).start(ns, addr)
}

/// `GET path` over HTTP/1.0 from inside namespace `ns_name`: (status, body), or None when the
/// connection or the exchange failed. Any HTTP version in the status line (Go answers 1.0 with 1.0).
pub fn get(ns_name: &str, addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let name = ns_name.to_string();
    let path = path.to_string();
    std::thread::spawn(move || {
        NetNs { name }.enter_and_forget();
        let timeout = Duration::from_secs(5);
        let mut s = std::net::TcpStream::connect_timeout(&addr, timeout).ok()?;
        s.set_read_timeout(Some(timeout)).ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.split(' ').nth(1)?.parse().ok()?;
        Some((status, body.to_string()))
    })
    .join()
    .ok()
    .flatten()
}

/// Percent-encode a query-string value (RFC 3986 unreserved characters kept).
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One sample of an instant query: its labels (with `__name__` when it has one) and value.
pub type Sample = (BTreeMap<String, String>, f64);

/// Debian's `prometheus` running inside a namespace with the rules of deploy/prometheus/,
/// scraping its targets and evaluating rules every second. Killed on drop.
pub struct PromServer {
    pub addr: SocketAddr,
    ns_name: String,
    process: Proc,
    scratch: Scratch,
}

impl PromServer {
    /// Start it on `127.0.0.1:port` inside `ns`, scraping `targets` (`host:port`, job `shadow`),
    /// and wait until `/-/ready` answers.
    pub fn start(ns: &NetNs, port: u16, targets: &[SocketAddr]) -> Self {
        Self::start_with(ns, port, targets, |t| t)
    }

    /// Like [`start`](Self::start), with the shipped rule files passed through `edit` first:
    /// how a fleet whose config overrides a gate carries the same change into its rules.
    pub fn start_with(ns: &NetNs, port: u16, targets: &[SocketAddr], edit: impl Fn(String) -> String) -> Self {
        Self::start_full(ns, port, targets, edit, &[])
    }

    /// Like [`start`](Self::start), with native histograms on (`--enable-feature=native-histograms`):
    /// Prometheus then asks for the protobuf exposition first.
    pub fn start_native(ns: &NetNs, port: u16, targets: &[SocketAddr]) -> Self {
        Self::start_full(ns, port, targets, |t| t, &["--enable-feature=native-histograms"])
    }

    fn start_full(
        ns: &NetNs,
        port: u16,
        targets: &[SocketAddr],
        edit: impl Fn(String) -> String,
        flags: &[&str],
    ) -> Self {
        let scratch = Scratch::new("prom");
        let dir = scratch.path("rules");
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        for entry in fs::read_dir(rules_dir()).unwrap_or_else(|e| panic!("read {}: {e}", rules_dir().display())) {
            let p = entry.expect("rules dir entry").path();
            if p.extension().is_some_and(|e| e == "yml") {
                let text = fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
                fs::write(dir.join(p.file_name().expect("file name")), edit(text)).expect("write rules");
            }
        }
        let rules = dir.join("*.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - '{}'\n\
             scrape_configs:\n  - job_name: shadow\n    static_configs:\n      - targets: [{}]\n",
            rules.display(),
            targets.join(", ")
        );
        let config_path = scratch.path("prometheus.yml");
        fs::write(&config_path, config).unwrap_or_else(|e| panic!("write {}: {e}", config_path.display()));
        let log = fs::File::create(scratch.path("prometheus.log")).expect("prometheus log");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
        let proc = Proc::spawn(
            "prometheus",
            ns.command("prometheus")
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!("--storage.tsdb.path={}", scratch.path("data").display()))
                .arg(format!("--web.listen-address={addr}"))
                .args(flags)
                .stdout(Stdio::null())
                .stderr(log),
        );
        let mut server = Self { addr, ns_name: ns.name.clone(), process: proc, scratch };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if get(&server.ns_name, addr, "/-/ready").is_some_and(|(s, _)| s == 200) {
                return server;
            }
            if let Ok(Some(st)) = server.process.child.try_wait() {
                panic!("prometheus exited ({st}) before ready: {}", server.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("prometheus not ready after 60 s: {}", server.log())
    }

    /// Prometheus's own log so far (for failure messages).
    pub fn log(&self) -> String {
        fs::read_to_string(self.scratch.path("prometheus.log")).unwrap_or_default()
    }

    /// An instant query at the server's now; panics on an API error.
    pub fn query(&self, q: &str) -> Vec<Sample> {
        let path = format!("/api/v1/query?query={}", url_encode(q));
        let (status, body) =
            get(&self.ns_name, self.addr, &path).unwrap_or_else(|| panic!("query {q}: no answer from prometheus"));
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("query {q}: {e}: {body}"));
        assert!(status == 200 && v["status"] == "success", "query {q}: HTTP {status}: {body}");
        v["data"]["result"]
            .as_array()
            .unwrap_or_else(|| panic!("query {q}: not a vector: {body}"))
            .iter()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()
                    .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect())
                    .unwrap_or_default();
                let value = r["value"][1].as_str().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN);
                (labels, value)
            })
            .collect()
    }

    /// `query` keyed by (rule, endpoint).
    pub fn by_endpoint(&self, q: &str) -> BTreeMap<(String, String), f64> {
        self.query(q).into_iter().map(|(l, v)| (key(&l), v)).collect()
    }

    /// Wait until the rules have seen exactly these per-endpoint sample totals (every target
    /// scraped, the rules evaluated on them). Returns when `shadow:endpoint_samples:total` equals
    /// `expected`, and the rules downstream have been evaluated on them (see `wait_settled`).
    pub fn wait_for_samples(&self, expected: &BTreeMap<(String, String), u64>, timeout: Duration) {
        let want: BTreeMap<(String, String), f64> = expected.iter().map(|(k, v)| (k.clone(), *v as f64)).collect();
        let mut last = BTreeMap::new();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            last = self.by_endpoint("shadow:endpoint_samples:total");
            if last == want {
                return self.wait_settled(deadline);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("timed out after {timeout:?}: shadow:endpoint_samples:total is {last:?}, want {want:?}\n{}", self.log());
    }
}

impl PromServer {
    /// After the totals are complete: wait until the last recorded series (the verdicts) were
    /// evaluated `SETTLE_EVALUATIONS` intervals later, so every rule downstream of the totals has
    /// been computed on complete data, whatever lag a chain of rules has (observed: a verdict one
    /// evaluation behind the totals it derives from). The inputs are constant, so it then holds.
    fn wait_settled(&self, deadline: Instant) {
        let newest = |q: &str| self.query(q).first().map_or(f64::NAN, |s| s.1);
        let complete_at = newest("max(timestamp(shadow:endpoint_samples:total))");
        while Instant::now() < deadline {
            let verdicts_at = newest("min(timestamp(shadow:endpoint_verdict))");
            if verdicts_at >= complete_at + SETTLE_EVALUATIONS {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("rules not evaluated {SETTLE_EVALUATIONS} times after the totals were complete\n{}", self.log());
    }
}

/// Evaluations (of 1 s) to wait after complete inputs: more than the depth of the rule chain.
const SETTLE_EVALUATIONS: f64 = 8.0;

fn key(l: &BTreeMap<String, String>) -> (String, String) {
    let get = |k: &str| l.get(k).cloned().unwrap_or_default();
    (get("rule"), get("endpoint"))
}

/// deploy/prometheus/ of this repository.
pub fn rules_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
}

/// The per-endpoint verdicts the rules computed (`shadow:endpoint_verdict`), keyed by
/// (rule, endpoint).
pub fn verdicts(server: &PromServer) -> BTreeMap<(String, String), Verdict> {
    server
        .by_endpoint("shadow:endpoint_verdict")
        .into_iter()
        .map(|(k, v)| (k, verdict_of(v).unwrap_or_else(|| panic!("shadow:endpoint_verdict {v} is no verdict"))))
        .collect()
}

/// The failing gates per (rule, endpoint), sorted (`shadow:endpoint_gate_failing == 1`).
pub fn failing_gates(server: &PromServer) -> BTreeMap<(String, String), Vec<String>> {
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for (l, _) in server.query("shadow:endpoint_gate_failing == 1") {
        out.entry(key(&l)).or_default().push(l.get("gate").cloned().unwrap_or_default());
    }
    out.values_mut().for_each(|g| g.sort());
    out
}

/// The rules' encoding: 0 PASS, 1 FAIL, 2 INSUFFICIENT.
pub fn verdict_of(v: f64) -> Option<Verdict> {
    [Verdict::Pass, Verdict::Fail, Verdict::Insufficient]
        .into_iter()
        .zip([0.0, 1.0, 2.0])
        .find_map(|(verdict, code)| (v == code).then_some(verdict))
}

/// Whether the rules' verdicts for `rule` are the ones `shadowctl report --json` gave (one
/// daemon's report, or the only node of a test): the same endpoints, the same verdict each,
/// except where [`latency_verdicts_may_differ`] says a latency gate may legitimately differ.
/// Err lists every disagreement.
pub fn agree_with_report(
    prom: &BTreeMap<(String, String), Verdict>,
    rule: &str,
    report: &Report,
) -> Result<(), String> {
    let mut problems = Vec::new();
    let ours: BTreeMap<&str, Verdict> =
        prom.iter().filter(|((r, _), _)| r == rule).map(|((_, e), v)| (e.as_str(), *v)).collect();
    for e in &report.endpoints {
        let name = e.summary.endpoint.as_str();
        let theirs = e.verdict.verdict();
        match ours.get(name) {
            None => problems.push(format!("{name}: no verdict from the rules (report: {})", theirs.as_str())),
            Some(v) if *v == theirs => {}
            Some(v) => {
                if !latency_verdicts_may_differ(e) {
                    problems.push(format!(
                        "{name}: rules {} but report {} ({})",
                        v.as_str(),
                        theirs.as_str(),
                        e.verdict.reason()
                    ));
                }
            }
        }
    }
    for name in ours.keys() {
        if !report.endpoints.iter().any(|e| e.summary.endpoint == *name) {
            problems.push(format!("{name}: the rules judge it, the report does not know it"));
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("\n")) }
}

/// The counters the cumulative gates read; the windowed gates read their increase.
const GATE_COUNTERS: [&str; 4] = [
    "shadow_comparisons_total",
    "shadow_compared_responses_total",
    "shadow_compared_latency_seconds_bucket",
    "shadow_compared_latency_seconds_count",
];

/// The line that opens the generated windowed group in shadow-rules.yml.
pub const WINDOW_MARKER: &str =
    "  # ---- generated from shadow-gates by tests/tests/fleet_rules_b.rs: do not edit ----";

/// The windowed copy of the `shadow-gates` group of `rules` (shadow-rules.yml's text): the same
/// rules over the last `window` (`10m`), recorded as `shadow_<window>:...`, each counter read as
/// its rounded increase over the window (`round(increase(c[10m]))`: whole pairs, counter resets
/// handled), comments dropped. A gate that fails over the window but passed since the start
/// (a regression that just began) shows here first; one that recovered passes here first.
pub fn windowed_gates(rules: &str, window: &str) -> String {
    let start = rules.find("  - name: shadow-gates\n").expect("the shadow-gates group");
    let rest = &rules[start..];
    let end =
        [WINDOW_MARKER, "  - name: shadow-alerts"].iter().filter_map(|m| rest.find(m)).min().expect("the group's end");
    let mut out = format!("{WINDOW_MARKER}\n");
    out.push_str(&format!(
        "  # The gates above over the last {window} only (shadow_{window}:*): what a rollout gate reads, not\n  \
         # everything since each daemon started; INSUFFICIENT below the same sample floor.\n"
    ));
    for line in rest[..end].lines() {
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if line == "  - name: shadow-gates" {
            out.push_str(&format!("  - name: shadow-gates-{window}\n"));
            continue;
        }
        let line = line.replace("shadow:", &format!("shadow_{window}:"));
        out.push_str(&wrap_counters(&line, window));
        out.push('\n');
    }
    out.push('\n');
    out
}

fn wrap_counters(line: &str, window: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some((at, name)) =
        GATE_COUNTERS.iter().filter_map(|n| rest.find(n).map(|i| (i, *n))).min_by_key(|(i, _)| *i)
    {
        out.push_str(&rest[..at]);
        let after = &rest[at + name.len()..];
        let selector_len = if after.starts_with('{') { after.find('}').map_or(0, |i| i + 1) } else { 0 };
        out.push_str(&format!("round(increase({name}{}[{window}]))", &after[..selector_len]));
        rest = &after[selector_len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use shadow_daemon::compare::quantile_ranks;

    use super::*;

    /// The rules' ranks against compare's (interval.rs `ranks`, confidence 0.9) for every n from 6
    /// to 20 000: equal or one rank outwards, never inwards, and existing from the same n. Also
    /// counts how often they differ (README.md, "Ranks").
    #[test]
    fn rule_ranks_against_compares() {
        for (q, differ_at_most) in [(0.5, 100), (0.99, 600)] {
            let mut differ = 0;
            for n in 6..=20_000u64 {
                let exact = quantile_ranks(n, q, 0.9);
                let ours = rule_ranks(n, q);
                let (Some(l), Some(u)) = exact else {
                    assert_eq!(ours, None, "n {n} q {q}: no exact ranks {exact:?}");
                    continue;
                };
                let (rl, ru) = ours.unwrap_or_else(|| panic!("n {n} q {q}: exact {exact:?}, the rules none"));
                assert!(rl == l || rl + 1 == l, "n {n} q {q}: lower {rl} against {l}");
                assert!(ru == u || ru == u + 1, "n {n} q {q}: upper {ru} against {u}");
                differ += usize::from(rl != l || ru != u);
            }
            eprintln!("q {q}: the rules' ranks differ from compare's at {differ} of 19995 sample counts");
            assert!(differ <= differ_at_most, "q {q}: {differ} of 19995 sample counts differ");
        }
        assert_eq!((rule_ranks(367, 0.99), rule_ranks(368, 0.99)), (None, Some((360, 368))));
        assert_eq!((rule_ranks(5, 0.5), rule_ranks(6, 0.5)), (None, Some((1, 6))));
    }

    /// The band at its edges: a p99 FAIL test of compare exactly at the limit is unstable, one
    /// bucket factor (and 1 %) past it is not.
    #[test]
    fn unstable_at_the_band_edges() {
        let fail = |s: f64, p: f64| s > (p * 1.2).max(p + 5.0);
        let f = BUCKET_RATIO * HDR_ERROR;
        assert!(unstable(60.0, 50.0, fail), "60 at the limit 60");
        assert!(!unstable(60.0 * f * f * 1.001, 50.0, fail), "past the band: FAIL whatever the buckets");
        assert!(unstable(60.0 * f * f * 0.999, 50.0, fail), "just inside the band");
        assert!(!unstable(60.0 / (f * f * 1.001), 50.0, fail), "below the band: holds whatever the buckets");
    }
}
