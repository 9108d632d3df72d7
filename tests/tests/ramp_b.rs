//! Kernel tier B, the guarded ramp: the release `shadow-daemon` ramps a rule's rate over real
//! servers in a namespace, read back with the release `shadowctl`. A healthy shadow ramps to the
//! last step (the kernel's rate matching the ramp's at every look), a restart resumes the same
//! step, a shadow that starts answering 500 is tripped and then receives nothing, and a step
//! without traffic holds and says why.

use std::{net::SocketAddr, time::Duration};

use shadow_tests::{
    require_kernel,
    rig::{OpsRig, get_many},
    server::Mode,
    wait_for,
};

const PORT: u16 = 8080;

/// One rule `api` mirrored to a recording shadow on 9090, ramped over 10, 50 and 100 % with
/// one-second steps of 20 pairs after a one-second baseline of 20 responses.
fn ramp_rig(tag: &str) -> (OpsRig, SocketAddr) {
    let mut r = OpsRig::new(tag);
    r.server(&format!("[::]:{PORT}"), "primary");
    r.server("127.0.0.1:9090", "shadow");
    r.write_config(&format!(
        "[[rule]]\nname = \"api\"\nport = {PORT}\nshadow = \"127.0.0.1:9090\"\n\n\
         [rule.ramp]\nsteps = [10, 50, 100]\nstep_seconds = 1\nmin_pairs = 20\nbaseline_seconds = 1\nbaseline_responses = 20\n"
    ));
    start(&mut r);
    let api = SocketAddr::new(r.t.server_v4.parse().expect("v4"), PORT);
    (r, api)
}

fn start(r: &mut OpsRig) {
    let iface = r.t.server_if.clone();
    let state = r.scratch.path("state");
    r.start_daemon(&iface, &["--state-dir", state.to_str().expect("utf-8")]);
}

/// The rule's ramp (from `status --json`, where its kernel rate is read back from the kernel's
/// map), checked against `shadowctl ramp --json` and the kernel: the rate the kernel applies is
/// the ramp's at every look.
fn look(r: &OpsRig) -> serde_json::Value {
    let st = r.ctl(&["status", "--json"]).json();
    let rule = &st["rules"][0];
    let ramp = rule["ramp"].clone();
    assert_eq!(ramp["rule"], "api", "{st}");
    assert_eq!(rule["kernel_percent"], ramp["rate_percent"], "the kernel samples at the ramp's rate: {st}");
    ramp
}

fn state(v: &serde_json::Value) -> &str {
    v["state"].as_str().unwrap_or_default()
}

/// Send traffic in rounds of `n` until `done` says so (at most `rounds`); every request is
/// settled by the daemon before the next look. Returns the requests sent.
fn drive(
    r: &OpsRig,
    api: SocketAddr,
    sent: &mut u64,
    n: usize,
    rounds: usize,
    mut done: impl FnMut(&serde_json::Value) -> bool,
) -> serde_json::Value {
    for _ in 0..rounds {
        let v = look(r);
        if done(&v) {
            return v;
        }
        get_many(&r.t, api, "/api", n);
        *sent += n as u64;
        r.wait_quiet(*sent);
    }
    let v = look(r);
    assert!(done(&v), "not reached in {rounds} rounds of {n} requests: {v}\n{}", r.daemon_log());
    v
}

#[test]
fn a_healthy_shadow_ramps_to_the_last_step_and_a_restart_resumes_its_step() {
    if !require_kernel("a_healthy_shadow_ramps_to_the_last_step") {
        return;
    }
    let (mut r, api) = ramp_rig("rp1");
    let mut sent = 0;
    let v = look(&r);
    assert_eq!(state(&v), "baseline", "{v}");
    assert_eq!(v["rate_percent"], 100.0, "the baseline captures at the last step's rate: {v}");

    // The baseline replays nothing: the primary is timed alone.
    get_many(&r.t, api, "/api", 30);
    sent += 30;
    r.wait_quiet(sent);
    assert_eq!(r.recorded("shadow").len(), 0, "nothing reaches the shadow during the baseline");
    assert_eq!(r.metric("shadow_requests_dropped_total{reason=\"ramp_baseline\"}"), 30.0);

    // An operator's rate is refused while the ramp owns it, with a one-line reason.
    let o = r.ctl(&["rate", "5", "--rule", "api"]);
    assert_eq!(o.code, 1, "{o:?}");
    assert_eq!(o.stderr.trim().lines().count(), 1, "{o:?}");
    assert!(o.stderr.contains("its ramp sets the rate") && o.stderr.contains("ramp abort"), "{o:?}");

    // Step 2 (50 %): pause there, restart the daemon, and find it at the same step.
    let v = drive(&r, api, &mut sent, 40, 60, |v| v["step"] == 1 && state(v) == "advancing");
    assert_eq!(v["rate_percent"], 50.0, "{v}");
    let text = r.ctl(&["ramp"]).stdout;
    assert!(text.starts_with("rule api: advancing, step 2 of 3 at 50%"), "{text}");
    for guard in ["errors", "latency", "harm", "shedding"] {
        assert!(text.contains(&format!("\n  {guard} ")), "{guard} in\n{text}");
    }
    eprintln!("shadowctl ramp at step 2:\n{text}");
    let p = r.ctl(&["ramp", "pause", "--rule", "api", "--json"]).json();
    assert_eq!(p["rules"][0]["state"], "paused", "{p}");
    assert_eq!(r.stop_daemon(), Some(0), "{}", r.daemon_log());
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(r.scratch.path("summary.json")).expect("summary")).expect("json");
    assert_eq!((&summary["ramps"][0]["rule"], &summary["ramps"][0]["state"]), (&"api".into(), &"paused".into()));
    start(&mut r);
    sent = 0; // a new daemon counts from zero
    let v = look(&r);
    assert_eq!((state(&v), &v["step"], &v["rate_percent"]), ("paused", &1.into(), &50.0.into()), "{v}");
    assert!(v["last_transition"]["reason"] == "restore", "{v}");
    assert!(
        r.daemon_log().contains(
            "ramp api: paused -> paused (restore) at step 2: taken up from the saved state: paused at step 2 of 3"
        ),
        "{}",
        r.daemon_log()
    );

    // Paused: traffic and time (past the step's second) do not advance it.
    get_many(&r.t, api, "/api", 80);
    sent += 80;
    r.wait_quiet(sent);
    wait_for("the paused step's time", Duration::from_secs(10), || look(&r)["seconds_at_step"].as_f64() >= Some(1.5));
    let v = look(&r);
    assert_eq!((state(&v), &v["step"]), ("paused", &1.into()), "{v}");
    assert!(v["pairs"].as_u64() >= Some(20), "enough pairs to advance, were it not paused: {v}");
    let t = r.ctl(&["ramp", "resume", "--rule", "api"]);
    assert_eq!(t.code, 0, "{t:?}");
    assert!(t.stdout.contains("rule api: advancing, step 2 of 3 at 50%"), "{}", t.stdout);

    // On to the last step, held there.
    let v = drive(&r, api, &mut sent, 40, 60, |v| state(v) == "done");
    assert_eq!((&v["step"], &v["rate_percent"]), (&2.into(), &100.0.into()), "{v}");
    let text = r.scrape();
    for want in [
        "shadow_ramp_rate_percent{rule=\"api\"} 100",
        "shadow_ramp_state{rule=\"api\",state=\"done\"} 1",
        "shadow_ramp_state{rule=\"api\",state=\"tripped\"} 0",
    ] {
        assert!(text.contains(want), "{want} in\n{text}");
    }
    assert!(
        r.metric("shadow_ramp_transitions_total{rule=\"api\",from=\"advancing\",to=\"done\",reason=\"step\"}") == 1.0
    );
    assert!(r.ctl(&["rate", "5", "--rule", "api"]).code == 1, "a done ramp still owns the rate");

    // /verdict on the metrics address: the report's JSON, 200 whatever the verdict, what Argo's
    // web provider reads with jsonPath {$.verdict}.
    let body = r.t.server.http_get(r.metrics_addr(), "/verdict").expect("/verdict answers 200");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let report: serde_json::Value = serde_json::from_str(&r.ctl(&["report", "--json"]).stdout).expect("report json");
    assert!(matches!(v["verdict"].as_str(), Some("PASS" | "FAIL" | "INSUFFICIENT")), "{v}");
    assert_eq!(v["verdict"], report["verdict"], "{v}");
    assert_eq!(v["rules"][0]["rule"], "api", "{v}");

    // Abort hands the rate back (at 0).
    let a = r.ctl(&["ramp", "abort", "--rule", "api", "--json"]).json();
    assert_eq!((&a["rules"][0]["state"], &a["rules"][0]["rate_percent"]), (&"off".into(), &0.0.into()), "{a}");
    let st = r.ctl(&["rate", "5", "--rule", "api", "--json"]).json();
    assert_eq!(st["rules"][0]["kernel_percent"], 5.0, "{st}");
}

#[test]
fn a_shadow_that_starts_failing_is_tripped_and_then_receives_nothing() {
    if !require_kernel("a_shadow_that_starts_failing_is_tripped") {
        return;
    }
    let (mut r, api) = ramp_rig("rp2");
    let mut sent = 0;
    // No traffic: the baseline holds, then (given its responses) the first step holds, and each
    // says why.
    // (A quiet daemon judges once a second: the reason follows within one.)
    wait_for("a second of baseline, judged", Duration::from_secs(10), || {
        let v = look(&r);
        v["seconds_at_step"].as_f64() >= Some(1.2) && v["reason"].as_str().is_some_and(|s| s.contains("responses"))
    });
    let v = look(&r);
    assert_eq!(state(&v), "baseline", "{v}");
    assert!(v["reason"].as_str().is_some_and(|s| s.contains("0/20 responses")), "{v}");
    drive(&r, api, &mut sent, 30, 3, |v| state(v) == "advancing");
    wait_for("the first step to hold", Duration::from_secs(10), || state(&look(&r)) == "holding");
    let v = look(&r);
    assert!(v["reason"].as_str().is_some_and(|s| s.contains("/20 pairs at step 1")), "{v}");

    // Into step 2, then the shadow breaks: every answer a 500.
    drive(&r, api, &mut sent, 40, 60, |v| v["step"] == 1);
    let mut old = r.servers.remove(1);
    old.terminate(Duration::from_secs(5));
    wait_for("the old shadow to stop", Duration::from_secs(10), || !r.t.server.listening(9090));
    let broken = r.recording("broken").mode(Mode::ServerError);
    r.serve("127.0.0.1:9090", broken);
    let broke = std::time::Instant::now();
    let v = drive(&r, api, &mut sent, 40, 30, |v| state(v) == "tripped");
    eprintln!(
        "tripped {:.2} s after the shadow broke, {} requests to the broken shadow: {}",
        broke.elapsed().as_secs_f64(),
        r.recorded("broken").len(),
        v["reason"]
    );
    assert_eq!(v["rate_percent"], 0.0, "{v}");
    let reason = v["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("errors tripped at step 2 (50%)"), "{v}");
    let log = r.daemon_log();
    let line: Vec<&str> =
        log.lines().filter(|l| l.contains("ramp api:") && l.contains("-> tripped (errors)")).collect();
    assert_eq!(line.len(), 1, "one line for the trip:\n{log}");
    let t = r.ctl(&["ramp"]);
    assert!(t.stdout.contains("rule api: tripped") && t.stdout.contains("errors tripped at step 2"), "{}", t.stdout);
    assert_eq!(
        r.metric("shadow_ramp_transitions_total{rule=\"api\",from=\"advancing\",to=\"tripped\",reason=\"errors\"}"),
        1.0
    );

    // Tripped: the kernel samples nothing, the shadow receives nothing more.
    let received = r.recorded("broken").len();
    get_many(&r.t, api, "/api", 100);
    sent += 100;
    r.wait_quiet(sent);
    assert_eq!(r.recorded("broken").len(), received, "nothing after the trip");
    assert_eq!(state(&look(&r)), "tripped", "a trip stays until an operator acts");

    // A restart keeps it tripped; resume starts again at the first step.
    assert_eq!(r.stop_daemon(), Some(0));
    start(&mut r);
    let v = look(&r);
    assert_eq!((state(&v), &v["rate_percent"]), ("tripped", &0.0.into()), "{v}");
    let v = r.ctl(&["ramp", "resume", "--json"]).json();
    assert_eq!(
        (&v["rules"][0]["state"], &v["rules"][0]["step"], &v["rules"][0]["rate_percent"]),
        (&"advancing".into(), &0.into(), &10.0.into()),
        "{v}"
    );
}
