//! Kernel tier B: namespaces created here, a real HTTP server and real clients, the capture
//! attached to the server's veth; what was captured must equal what crossed the wire, byte for byte.

use std::{net::SocketAddr, process::Stdio};

use shadow_common::{PPM_ALL, counter};
use shadow_daemon::{
    config::HookKind,
    segment::{Direction, FlowId},
};
use shadow_tests::{
    Proc, Scratch,
    capture_thread::{CaptureThread, Captured, flows, reassemble},
    client::{Conn, request},
    require_kernel, require_tool,
    server::Options,
    topo::{NetNs, TwoHosts},
};

const PORT: u16 = 8080;

/// A test server on [`PORT`] answering `response_bytes`, recording to scratch/server.
fn start_server(t: &TwoHosts, scratch: &Scratch, response_bytes: usize) -> Proc {
    Options::new()
        .response_bytes(response_bytes)
        .record(scratch.path("server"))
        .spawn(&t.server, &format!("[::]:{PORT}"))
}

/// Send `request` on a fresh connection from inside `ns` and read one response framed by
/// Content-Length. Returns (client address, response bytes).
fn exchange_in(ns: &NetNs, server: SocketAddr, request: Vec<u8>) -> (SocketAddr, Vec<u8>) {
    let ns_name = ns.name.clone();
    std::thread::spawn(move || {
        NetNs { name: ns_name }.enter_and_forget();
        let mut c = Conn::connect(server).expect("connect");
        let resp = c.exchange_raw(&request).expect("exchange");
        (c.local_addr(), resp)
    })
    .join()
    .expect("client thread")
}

fn post(target: &str, body_len: usize) -> Vec<u8> {
    request(if body_len == 0 { "GET" } else { "POST" }, target, body_len)
}

fn flow_of(c: &Captured, client: SocketAddr) -> FlowId {
    *flows(&c.segments)
        .iter()
        .find(|f| f.client.port() == client.port() && f.client.ip() == client.ip())
        .unwrap_or_else(|| panic!("no captured flow from {client}"))
}

#[test]
fn tc_captures_requests_and_responses_byte_for_byte_v4_and_v6() {
    if !require_kernel("tc_captures_requests_and_responses_byte_for_byte") {
        return;
    }
    let t = TwoHosts::new("b1");
    let scratch = Scratch::new("b1");
    let _server = start_server(&t, &scratch, 300);
    let cap = CaptureThread::start(&t.server, &t.server_if, &[PORT], HookKind::Tc, PPM_ALL);

    let mut sent = Vec::new();
    for server_ip in [&t.server_v4, &t.server_v6] {
        let server: SocketAddr = SocketAddr::new(server_ip.parse().expect("ip"), PORT);
        for body in [0usize, 1024, 1024 * 1024] {
            let req = post(&format!("/upload/{body}"), body);
            let (client, resp) = exchange_in(&t.client, server, req.clone());
            sent.push((client, req, resp));
        }
    }
    let c = cap.finish();
    assert_eq!(c.bad_records, 0);
    for (client, req, resp) in &sent {
        let flow = flow_of(&c, *client);
        let got_req = reassemble(&c.segments, &flow, Direction::Request);
        assert_eq!(got_req.len(), req.len(), "{client}: captured request length");
        assert!(got_req == *req, "{client}: captured request bytes differ from what the client sent");
        let got_resp = reassemble(&c.segments, &flow, Direction::Response);
        assert!(got_resp == *resp, "{client}: captured response bytes differ from what the client received");
    }
    assert_eq!(c.kernel["requests_sampled"], sent.len() as u64);
    assert_eq!(c.kernel["copy_failed"], 0);
    assert_eq!(c.kernel["ringbuf_full"], 0);
    assert_eq!(c.kernel["truncated"], 0);
    // GRO on veth hands the program segments larger than one MSS: the 1 MiB bodies prove the big
    // reservation buckets work on real traffic.
    let max_seg = c.segments.iter().map(|s| s.payload.len()).max().unwrap_or(0);
    eprintln!("largest captured segment: {max_seg} bytes");
    assert!(max_seg > 8192, "expected GSO/GRO segments beyond one MSS on veth, largest was {max_seg}");
}

#[test]
fn curl_requests_match_what_the_server_received() {
    if !require_kernel("curl_requests_match_what_the_server_received") || !require_tool("curl_requests", "curl") {
        return;
    }
    let t = TwoHosts::new("b2");
    let scratch = Scratch::new("b2");
    let _server = start_server(&t, &scratch, 1000);
    let cap = CaptureThread::start(&t.server, &t.server_if, &[PORT], HookKind::Tc, PPM_ALL);

    let body = scratch.path("body.bin");
    std::fs::write(&body, (0..1024 * 1024).map(|i| (i % 253) as u8).collect::<Vec<u8>>()).expect("write body");
    let url4 = format!("http://{}:{PORT}", t.server_v4);
    let url6 = format!("http://[{}]:{PORT}", t.server_v6);
    let runs: Vec<Vec<String>> = vec![
        vec![format!("{url4}/hello?x=1")],
        vec!["--data-binary".into(), format!("@{}", body.display()), format!("{url4}/upload")],
        vec![format!("{url6}/v6")],
        // Keep-alive reuse: three requests on one connection.
        vec![format!("{url4}/a"), format!("{url4}/b"), format!("{url4}/c")],
    ];
    for args in &runs {
        let mut cmd = t.client.command("curl");
        cmd.args(["-sS", "--max-time", "20"]).args(args).stdout(Stdio::null());
        let st = cmd.status().expect("run curl");
        assert!(st.success(), "curl {args:?} failed");
    }
    let c = cap.finish();
    assert_eq!(c.bad_records, 0);

    // The server recorded every connection's raw request bytes: raw-N.bin in accept order, which
    // is also capture order since the runs are sequential.
    let conns = flows(&c.segments);
    assert_eq!(conns.len(), runs.len(), "one connection per curl run");
    for (i, flow) in conns.iter().enumerate() {
        let server_got = std::fs::read(scratch.path(&format!("server/raw-{i}.bin"))).expect("server recording");
        let captured = reassemble(&c.segments, flow, Direction::Request);
        assert_eq!(captured.len(), server_got.len(), "connection {i}: request stream length");
        assert!(captured == server_got, "connection {i}: captured request stream differs from what the server read");
        let resp = reassemble(&c.segments, flow, Direction::Response);
        assert!(resp.starts_with(b"HTTP/1.1 "), "connection {i}: response captured with its direction");
    }
    assert_eq!(c.kernel["requests_sampled"], 6);
}

#[test]
fn xdp_captures_ingress_requests_byte_for_byte() {
    if !require_kernel("xdp_captures_ingress_requests_byte_for_byte") {
        return;
    }
    let t = TwoHosts::new("b3");
    let scratch = Scratch::new("b3");
    let _server = start_server(&t, &scratch, 100);
    let cap = CaptureThread::start(&t.server, &t.server_if, &[PORT], HookKind::Xdp, PPM_ALL);
    let mut sent = Vec::new();
    for server_ip in [&t.server_v4, &t.server_v6] {
        let server = SocketAddr::new(server_ip.parse().expect("ip"), PORT);
        for body in [0usize, 1024, 256 * 1024] {
            let req = post("/xdp", body);
            let (client, _) = exchange_in(&t.client, server, req.clone());
            sent.push((client, req));
        }
    }
    let c = cap.finish();
    for (client, req) in &sent {
        let flow = flow_of(&c, *client);
        let got = reassemble(&c.segments, &flow, Direction::Request);
        assert!(got == *req, "{client}: XDP-captured request differs ({} vs {} bytes)", got.len(), req.len());
        assert!(
            c.segments.iter().filter(|s| s.flow == flow).all(|s| s.direction == Direction::Request),
            "XDP on the server's interface sees only ingress: requests"
        );
    }
    assert_eq!(c.kernel["copy_failed"], 0);
}

#[test]
fn sampling_rate_applies_per_request_on_real_traffic() {
    if !require_kernel("sampling_rate_applies_per_request_on_real_traffic") {
        return;
    }
    let t = TwoHosts::new("b4");
    let scratch = Scratch::new("b4");
    let _server = start_server(&t, &scratch, 10);
    let cap = CaptureThread::start(&t.server, &t.server_if, &[PORT], HookKind::Tc, 0);
    let server = SocketAddr::new(t.server_v4.parse().expect("ip"), PORT);
    for _ in 0..5 {
        exchange_in(&t.client, server, post("/zero", 0));
    }
    cap.set_sample_ppm(PPM_ALL);
    let mut sampled = Vec::new();
    for _ in 0..5 {
        sampled.push(exchange_in(&t.client, server, post("/all", 100)).0);
    }
    let c = cap.finish();
    assert_eq!(c.kernel["requests_skipped"], 5);
    assert_eq!(c.kernel["requests_sampled"], 5);
    let captured = flows(&c.segments);
    assert_eq!(captured.len(), 5, "only the connections after the rate change were captured");
    for cl in sampled {
        flow_of(&c, cl);
    }
    assert!(c.kernel[counter::NAMES[counter::SEGMENTS_NOT_SAMPLED]] > 0);
}
