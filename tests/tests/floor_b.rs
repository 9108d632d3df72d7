//! Tier B, the bench's floor client (`shadow-floor`, tests/src/bin/shadow-floor.rs): the bare
//! replay the daemon's CPU is set against must do the work it claims, in every mode. Against a
//! test server counting what it receives, inside a namespace of the test's own: every response it
//! counts was asked for and read whole, it reopens a connection the shadow closes, it counts the
//! syscalls it says it counts, and a shadow answering 500 ends it with an error rather than a
//! figure.

use std::{net::SocketAddr, process::Output};

use shadow_tests::{require_kernel, server::Options, topo::NetNs, workspace_bin};

const CONNS: usize = 4;
const ADDR: &str = "127.0.0.1:9090";
const REQUEST: &str = "GET /item HTTP/1.1\r\nHost: shadow\r\nX-Shadow-Request: true\r\n\r\n";

fn floor(ns: &NetNs, mode: &str) -> Output {
    ns.command(workspace_bin("shadow-floor").to_str().expect("utf-8"))
        .args(["--mode", mode, "--target", ADDR, "--secs", "1", "--conns", &CONNS.to_string(), "--request", REQUEST])
        .output()
        .expect("run shadow-floor")
}

fn figures(out: &Output, mode: &str) -> serde_json::Value {
    assert!(
        out.status.success(),
        "shadow-floor --mode {mode}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON line")
}

#[test]
fn every_mode_counts_only_whole_answered_requests() {
    if !require_kernel("floor_b") {
        return;
    }
    let ns = NetNs::new("floor");
    let server = Options::new().response_bytes(1024).start(&ns, ADDR.parse::<SocketAddr>().expect("addr"));
    for mode in ["epoll", "epoll-ts", "uring", "tokio"] {
        let before = server.requests();
        let f = figures(&floor(&ns, mode), mode);
        let requests = f["requests"].as_u64().expect("requests") as usize;
        let received = server.requests() - before;
        assert!(requests > 0, "{mode}: no request answered in a second: {f}");
        // Each counted response answered a request the server read; at most one request per
        // connection was left unanswered when the client stopped.
        assert!(
            requests <= received && received <= requests + CONNS,
            "{mode}: counted {requests}, the server read {received}"
        );
        assert_eq!(f["reopened"], 0, "{mode}: {f}");
        assert_eq!(f["mode"], mode);
        assert!(f["cpu_s"].as_f64().is_some_and(|c| c > 0.0), "{mode}: {f}");
        match mode {
            // A send and a read per request, and the waits.
            "epoll" => {
                let s = f["syscalls"].as_u64().expect("epoll counts its syscalls") as usize;
                assert!(s > 2 * requests, "{mode}: {s} syscalls for {requests} requests");
            }
            // At least one io_uring_enter, and fewer than the operations (two per request).
            "uring" => {
                let s = f["syscalls"].as_u64().expect("uring counts its syscalls") as usize;
                assert!(s >= 1 && s < 2 * requests, "{mode}: {s} syscalls for {requests} requests");
            }
            _ => assert!(f["syscalls"].is_null(), "{mode}: its syscalls are made by a library: {f}"),
        }
    }
}

#[test]
fn a_connection_the_shadow_closes_is_reopened() {
    if !require_kernel("floor_b") {
        return;
    }
    let ns = NetNs::new("floor");
    let _server = Options::new().close_after(5).start(&ns, ADDR.parse::<SocketAddr>().expect("addr"));
    for mode in ["epoll", "uring", "tokio"] {
        let f = figures(&floor(&ns, mode), mode);
        assert!(f["reopened"].as_u64().is_some_and(|r| r > 0), "{mode}: {f}");
        assert!(f["requests"].as_u64().is_some_and(|r| r >= 5), "{mode}: {f}");
    }
}

#[test]
fn a_failing_shadow_ends_the_run_with_an_error() {
    if !require_kernel("floor_b") {
        return;
    }
    let ns = NetNs::new("floor");
    let _server = Options::new()
        .mode(shadow_tests::server::Mode::ServerError)
        .start(&ns, ADDR.parse::<SocketAddr>().expect("addr"));
    for mode in ["epoll", "uring", "tokio"] {
        let out = floor(&ns, mode);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && out.stdout.is_empty(), "{mode}: {err}");
        assert!(err.contains("answered Some(500), not 200"), "{mode}: {err}");
    }
}
