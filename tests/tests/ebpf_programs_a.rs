//! Kernel tier A: the real eBPF object, driven by BPF_PROG_TEST_RUN with crafted frames.
//! Needs root; with SHADOW_REQUIRE_KERNEL=1 a missing prerequisite fails instead of skipping.

use aya::maps::{MapData, RingBuf};
use shadow_common::{PPM_ALL, counter, names, tcp_flags};
use shadow_daemon::{
    capture::{Capture, CaptureOptions, KernelRule},
    config::HookKind,
    rule::RuleId,
    segment::{self, Direction, Segment},
};
use shadow_tests::{
    frames::{self, Tcp},
    require_kernel,
};

const PORT: u16 = 8080;
/// TC_ACT_UNSPEC (-1): "continue" for cls_bpf and "next" for TCX.
const TC_CONTINUE: u32 = u32::MAX;
const XDP_PASS: u32 = 2;

struct Rig {
    cap: Capture,
    ring: RingBuf<MapData>,
}

impl Rig {
    fn new(ppm: u32) -> Self {
        Self::with_rules(vec![KernelRule::any_address(&[PORT, 9443], ppm)])
    }

    fn with_rules(rules: Vec<KernelRule>) -> Self {
        let opts = CaptureOptions {
            interface: "lo".into(),
            hook: HookKind::Tc,
            rules,
            ring_buffer_size: 4 * 1024 * 1024,
            verifier_log: std::env::temp_dir().join("shadow-kernel-a-verifier.log"),
            allow_shared: false,
        };
        let mut cap = Capture::load(&opts).unwrap_or_else(|e| panic!("load: {e}"));
        let ring = cap.take_ring().expect("ring");
        Self { cap, ring }
    }

    /// Run the TC program on `frame` (as on ingress), assert the "continue" verdict, return what it emitted.
    fn tc(&mut self, frame: &[u8]) -> Vec<Segment> {
        let (verdict, _) = self.cap.test_run(names::PROG_TC, frame, 1).expect("test_run tc");
        assert_eq!(verdict, TC_CONTINUE, "TC program must always return TC_ACT_UNSPEC");
        self.drain()
    }

    fn tc_egress(&mut self, frame: &[u8]) -> Vec<Segment> {
        let (verdict, _) = self.cap.test_run(names::PROG_TC, frame, 1).expect("test_run tc egress");
        assert_eq!(verdict, TC_CONTINUE);
        self.drain()
    }

    /// The server begins a final response on connection (client port `cport`): under TC that is
    /// what lets the client's next request start a new decision.
    fn answer(&mut self, c: &str, cport: u16, s: &str) -> Vec<Segment> {
        self.tc_egress(&frames::tcp(&Tcp::new(s, PORT, c, cport, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")))
    }

    fn xdp(&mut self, frame: &[u8]) -> Vec<Segment> {
        let (verdict, _) = self.cap.test_run(names::PROG_XDP, frame, 1).expect("test_run xdp");
        assert_eq!(verdict, XDP_PASS, "XDP program must always return XDP_PASS");
        self.drain()
    }

    fn drain(&mut self) -> Vec<Segment> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            out.push(segment::decode(&item).expect("record decodes"));
        }
        out
    }

    fn counter(&self, idx: usize) -> u64 {
        self.cap.counters().expect("counters")[idx]
    }
}

const GET: &[u8] = b"GET /users/42 HTTP/1.1\r\nHost: svc\r\nUser-Agent: t\r\n\r\n";

#[test]
fn other_ports_and_protocols_are_ignored() {
    if !require_kernel("other_ports_and_protocols_are_ignored") {
        return;
    }
    let mut r = Rig::new(PPM_ALL);
    let frames = [
        frames::udp("10.0.0.1", "10.0.0.2", PORT, b"GET / HTTP/1.1\r\n\r\n"),
        frames::arp(),
        frames::tcp(&Tcp::new("10.0.0.1", 40000, "10.0.0.2", 9090, GET)),
        frames::tcp(&Tcp::new("10.0.0.2", 9090, "10.0.0.1", 40000, b"HTTP/1.1 200 OK\r\n\r\n")),
        frames::tcp(&Tcp::new("fd00::1", 40000, "fd00::2", 8081, GET)),
    ];
    for f in &frames {
        assert!(r.tc(f).is_empty(), "nothing may be emitted for a non-service frame");
        assert!(r.xdp(f).is_empty());
    }
    assert_eq!(r.counter(counter::PACKETS_SEEN), 10);
    assert_eq!(r.counter(counter::SERVICE_PORT_SEGMENTS), 0);
    assert_eq!(r.counter(counter::SEGMENTS_EMITTED), 0);
}

#[test]
fn service_port_segments_are_emitted_exactly_ipv4_and_ipv6() {
    if !require_kernel("service_port_segments_are_emitted_exactly_ipv4_and_ipv6") {
        return;
    }
    let mut r = Rig::new(PPM_ALL);
    for (c, s) in [("10.1.2.3", "10.9.8.7"), ("fd00:1::3", "fd00:9::7")] {
        let mut t = Tcp::new(c, 41000, s, PORT, GET);
        t.seq = 0xdead_beef;
        t.ack = 77;
        let got = r.tc(&frames::tcp(&t));
        assert_eq!(got.len(), 1, "one record per service-port segment");
        let g = &got[0];
        assert_eq!(g.direction, Direction::Request);
        assert_eq!(&g.payload[..], GET, "payload bytes exact");
        assert_eq!(g.wire_len as usize, GET.len());
        assert_eq!((g.seq, g.ack), (0xdead_beef, 77));
        assert_eq!(g.flow.client, format!("{}:41000", bracket(c)).parse().unwrap());
        assert_eq!(g.flow.server, format!("{}:{PORT}", bracket(s)).parse().unwrap());
        assert!(g.request_start && !g.truncated);
        assert!(g.ts_ns > 0);

        // The response comes from the service port: same flow, direction response.
        let resp = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let mut t = Tcp::new(s, PORT, c, 41000, resp);
        t.seq = 5000;
        let got = r.tc_egress(&frames::tcp(&t));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].direction, Direction::Response);
        assert_eq!(&got[0].payload[..], resp);
        assert_eq!(got[0].flow, g.flow, "both directions name the same flow");
        assert!(!got[0].request_start);
    }
    // A second service port from the same config map.
    let got = r.tc(&frames::tcp(&Tcp::new("10.1.2.3", 41001, "10.9.8.7", 9443, GET)));
    assert_eq!(got.len(), 1);
}

fn bracket(a: &str) -> String {
    if a.contains(':') { format!("[{a}]") } else { a.to_string() }
}

#[test]
fn payload_sizes_across_reservation_buckets_are_copied_whole() {
    if !require_kernel("payload_sizes_across_reservation_buckets_are_copied_whole") {
        return;
    }
    let mut r = Rig::new(PPM_ALL);
    // BPF_PROG_TEST_RUN on skbs takes at most about one page, so the largest buckets are covered
    // by the tier B tests with real GRO segments.
    for (i, n) in [1usize, 7, 511, 512, 513, 2047, 2048, 2049, 3000].into_iter().enumerate() {
        let mut payload: Vec<u8> = b"POST /u HTTP/1.1\r\n".to_vec();
        payload.extend((0..n.saturating_sub(payload.len())).map(|i| (i % 251) as u8));
        payload.truncate(n.max(1));
        let t = Tcp::new("10.0.0.1", 42000 + i as u16, "10.0.0.2", PORT, &payload);
        // A request line must start the flow for it to be sampled; short ones are continuations
        // of a request started here first.
        let start = Tcp::new("10.0.0.1", 42000 + i as u16, "10.0.0.2", PORT, GET);
        r.tc(&frames::tcp(&start));
        let got = r.tc(&frames::tcp(&t));
        assert_eq!(got.len(), 1, "size {n}");
        assert_eq!(&got[0].payload[..], &payload[..], "size {n}: bytes exact");
        assert_eq!(got[0].wire_len as usize, payload.len());
    }
    assert_eq!(r.counter(counter::COPY_FAILED), 0);
    assert_eq!(r.counter(counter::TRUNCATED), 0);
}

#[test]
fn ethernet_padding_is_not_captured_as_payload() {
    if !require_kernel("ethernet_padding_is_not_captured_as_payload") {
        return;
    }
    let mut r = Rig::new(PPM_ALL);
    r.tc(&frames::tcp(&Tcp::new("10.0.0.1", 43000, "10.0.0.2", PORT, GET)));
    // A 3-byte continuation padded to the 60-byte Ethernet minimum.
    let mut t = Tcp::new("10.0.0.1", 43000, "10.0.0.2", PORT, b"abc");
    t.trailer = 3;
    let got = r.tc(&frames::tcp(&t));
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].payload[..], b"abc");
}

#[test]
fn ipv6_extension_headers_are_walked_or_counted() {
    if !require_kernel("ipv6_extension_headers_are_walked_or_counted") {
        return;
    }
    let mut r = Rig::new(PPM_ALL);
    let mut t = Tcp::new("fd00::1", 44000, "fd00::2", PORT, GET);
    t.ipv6_ext = &[(0, 8), (60, 16)]; // hop-by-hop, destination options
    let got = r.tc(&frames::tcp(&t));
    assert_eq!(got.len(), 1, "TCP behind hop-by-hop and dest-opts headers is captured");
    assert_eq!(&got[0].payload[..], GET);

    let mut t = Tcp::new("fd00::1", 44001, "fd00::2", PORT, GET);
    t.ipv6_ext = &[(44, 8)]; // fragment header: not walked
    assert!(r.tc(&frames::tcp(&t)).is_empty());
    assert_eq!(r.counter(counter::UNSUPPORTED_IPV6_EXT), 1);
}

#[test]
fn ipv4_fragments_are_counted_not_captured() {
    if !require_kernel("ipv4_fragments_are_counted_not_captured") {
        return;
    }
    let mut r = Rig::new(PPM_ALL);
    let mut t = Tcp::new("10.0.0.1", 45000, "10.0.0.2", PORT, GET);
    t.frag = 0x2000; // more fragments
    assert!(r.tc(&frames::tcp(&t)).is_empty());
    assert_eq!(r.counter(counter::IPV4_FRAGMENTS), 1);
}

#[test]
fn sampling_zero_and_full() {
    if !require_kernel("sampling_zero_and_full") {
        return;
    }
    let mut r = Rig::new(0);
    for i in 0..50u16 {
        assert!(r.tc(&frames::tcp(&Tcp::new("10.0.0.1", 46000 + i, "10.0.0.2", PORT, GET))).is_empty());
    }
    assert_eq!(r.counter(counter::REQUESTS_SKIPPED), 50);
    assert_eq!(r.counter(counter::REQUESTS_SAMPLED), 0);
    // Unsampled connections keep an entry too (its acknowledgment tells the next request from
    // this one's later segments), marked unsampled.
    assert_eq!(r.cap.tracked_flows().unwrap(), (50, 0));

    let mut r = Rig::new(PPM_ALL);
    for i in 0..50u16 {
        assert_eq!(r.tc(&frames::tcp(&Tcp::new("10.0.0.1", 46000 + i, "10.0.0.2", PORT, GET))).len(), 1);
    }
    assert_eq!(r.counter(counter::REQUESTS_SAMPLED), 50);
    assert_eq!(r.counter(counter::REQUESTS_SKIPPED), 0);
}

/// Events on the ring's epoll set within `ms` (edge-triggered, as tokio watches it: only a
/// kernel wakeup makes one, not records merely waiting).
fn ring_wakeups(ep: &std::os::fd::OwnedFd, ms: i32) -> i32 {
    use std::os::fd::AsRawFd;
    let mut ev = [libc::epoll_event { events: 0, u64: 0 }; 4];
    // SAFETY: ep is an epoll fd; ev has room for 4 events.
    unsafe { libc::epoll_wait(ep.as_raw_fd(), ev.as_mut_ptr(), 4, ms) }
}

#[test]
fn a_parked_reader_is_woken_by_the_first_record_which_clears_the_mark() {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    if !require_kernel("a_parked_reader_is_woken_by_the_first_record_which_clears_the_mark") {
        return;
    }
    let mut r = Rig::new(PPM_ALL);
    // SAFETY: a new epoll fd, checked, then owned.
    let raw = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(raw >= 0, "epoll_create1");
    // SAFETY: raw is a descriptor this test alone holds.
    let ep = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut ev = libc::epoll_event { events: (libc::EPOLLIN | libc::EPOLLET) as u32, u64: 1 };
    // SAFETY: both fds are open for the call; ev is a valid event.
    let added = unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, r.ring.as_raw_fd(), &mut ev) };
    assert_eq!(added, 0);
    let frame = |port: u16| frames::tcp(&Tcp::new("10.0.0.1", port, "10.0.0.2", PORT, GET));
    // Not parked, far below the wakeup threshold: the record waits for the reader's next look,
    // and nobody is woken.
    assert!(!r.cap.reader_parked().unwrap());
    let (verdict, _) = r.cap.test_run(names::PROG_TC, &frame(47000), 1).expect("test_run");
    assert_eq!(verdict, TC_CONTINUE);
    assert_eq!(ring_wakeups(&ep, 100), 0, "a record below the threshold woke an unparked reader");
    assert_eq!(r.drain().len(), 1);
    // Parked: the next record wakes the reader at once and clears the mark.
    r.cap.set_reader_parked(true).unwrap();
    assert!(r.cap.reader_parked().unwrap());
    let (verdict, _) = r.cap.test_run(names::PROG_TC, &frame(47001), 1).expect("test_run");
    assert_eq!(verdict, TC_CONTINUE);
    assert!(!r.cap.reader_parked().unwrap(), "the record left the mark set");
    assert_eq!(ring_wakeups(&ep, 10_000), 1, "a parked reader was not woken by the first record");
    // The mark is gone: the records after it wake nobody until the reader parks again.
    let (verdict, _) = r.cap.test_run(names::PROG_TC, &frame(47002), 1).expect("test_run");
    assert_eq!(verdict, TC_CONTINUE);
    assert_eq!(ring_wakeups(&ep, 100), 0, "a second record woke the reader");
    assert_eq!(r.drain().len(), 2);
    // A packet that emits nothing (another port) leaves the mark for the next record.
    r.cap.set_reader_parked(true).unwrap();
    let (verdict, _) = r
        .cap
        .test_run(names::PROG_TC, &frames::tcp(&Tcp::new("10.0.0.1", 47003, "10.0.0.2", 5001, GET)), 1)
        .expect("test_run");
    assert_eq!(verdict, TC_CONTINUE);
    assert!(r.cap.reader_parked().unwrap());
}

#[test]
fn sampling_half_is_within_statistical_bound() {
    if !require_kernel("sampling_half_is_within_statistical_bound") {
        return;
    }
    let mut r = Rig::new(PPM_ALL / 2);
    let n = 4000u32;
    let mut emitted = 0u32;
    for i in 0..n {
        let t = Tcp::new("10.0.0.1", (20000 + i) as u16, "10.0.0.2", PORT, GET);
        emitted += r.tc(&frames::tcp(&t)).len() as u32;
    }
    // Binomial(4000, 0.5): sd = 31.6; six sd either side fails only on a broken sampler.
    let lo = n / 2 - 190;
    let hi = n / 2 + 190;
    assert!((lo..=hi).contains(&emitted), "sampled {emitted} of {n} at 50 %");
    assert_eq!(r.counter(counter::REQUESTS_SAMPLED), u64::from(emitted));
    assert_eq!(r.counter(counter::REQUESTS_SKIPPED), u64::from(n - emitted));
}

#[test]
fn continuation_and_response_follow_the_request_decision_and_rate_changes_apply_live() {
    if !require_kernel("continuation_and_response_follow_the_request_decision") {
        return;
    }
    let mut r = Rig::new(PPM_ALL);
    let (c, s) = ("10.0.0.1", "10.0.0.2");
    let head = b"POST /upload HTTP/1.1\r\nContent-Length: 10\r\n\r\n";
    let mut t = Tcp::new(c, 47000, s, PORT, head);
    t.seq = 100;
    assert_eq!(r.tc(&frames::tcp(&t)).len(), 1);
    let mut t = Tcp::new(c, 47000, s, PORT, b"0123456789");
    t.seq = 100 + head.len() as u32;
    let got = r.tc(&frames::tcp(&t));
    assert_eq!(got.len(), 1, "a continuation follows its request's decision");
    assert!(!got[0].request_start);
    assert_eq!(r.tc_egress(&frames::tcp(&Tcp::new(s, PORT, c, 47000, b"HTTP/1.1 201 Created\r\n\r\n"))).len(), 1);

    // Rate to 0 through the config map, no reload: the next request on the same connection (the
    // client has the response: its acknowledgment moved) is skipped, and so are its
    // continuation and its response.
    r.cap.set_sample_ppm(0).expect("set rate");
    let mut t = Tcp::new(c, 47000, s, PORT, head);
    t.seq = 1000;
    t.ack = 5000;
    assert!(r.tc(&frames::tcp(&t)).is_empty());
    let mut t = Tcp::new(c, 47000, s, PORT, b"0123456789");
    t.seq = 1000 + head.len() as u32;
    t.ack = 5000;
    assert!(r.tc(&frames::tcp(&t)).is_empty());
    assert!(r.tc_egress(&frames::tcp(&Tcp::new(s, PORT, c, 47000, b"HTTP/1.1 201 Created\r\n\r\n"))).is_empty());
    assert_eq!(r.counter(counter::SEGMENTS_NOT_SAMPLED), 3);

    // And back to 100 %: the next request (further along the stream) is captured again.
    r.cap.set_sample_ppm(PPM_ALL).expect("set rate");
    let mut t = Tcp::new(c, 47000, s, PORT, GET);
    t.seq = 1000 + head.len() as u32 + 10;
    t.ack = 6000;
    assert_eq!(r.tc(&frames::tcp(&t)).len(), 1);

    // A connection never seen starting a request is not captured mid-stream.
    assert!(r.tc(&frames::tcp(&Tcp::new(c, 47999, s, PORT, b"{\"middle\": \"of a body\"}"))).is_empty());
}

#[test]
fn a_retransmitted_request_start_keeps_its_decision_and_is_counted_once() {
    if !require_kernel("a_retransmitted_request_start_keeps_its_decision") {
        return;
    }
    let mut r = Rig::new(PPM_ALL);
    let (c, s) = ("10.0.0.1", "10.0.0.2");
    let first = Tcp::new(c, 47100, s, PORT, GET);
    assert_eq!(r.tc(&frames::tcp(&first)).len(), 1);
    // The same segment again (a retransmission): emitted, as every copy is (user space keeps
    // the first), but the same request: neither a new draw nor a second count.
    r.cap.set_sample_ppm(0).expect("set rate");
    assert_eq!(r.tc(&frames::tcp(&first)).len(), 1, "the retransmission keeps the sampled decision");
    assert_eq!(r.counter(counter::REQUESTS_SAMPLED), 1);
    assert_eq!(r.counter(counter::REQUESTS_SKIPPED), 0);
    assert_eq!(r.counter(counter::REQUEST_START_RETRANSMITS), 1);
    // The next request on the connection, after the answer, draws anew (rate now 0).
    assert_eq!(r.answer(c, 47100, s).len(), 1, "the answer follows the sampled decision");
    let mut next = Tcp::new(c, 47100, s, PORT, GET);
    next.seq = first.seq.wrapping_add(GET.len() as u32);
    next.ack = first.ack.wrapping_add(100);
    assert!(r.tc(&frames::tcp(&next)).is_empty());
    assert_eq!(r.counter(counter::REQUESTS_SKIPPED), 1);
    assert_eq!(r.counter(counter::REQUEST_START_RETRANSMITS), 1);
}

#[test]
fn fin_and_rst_of_sampled_flows_are_emitted_pure_acks_are_not() {
    if !require_kernel("fin_and_rst_of_sampled_flows_are_emitted") {
        return;
    }
    let mut r = Rig::new(PPM_ALL);
    let (c, s) = ("10.0.0.1", "10.0.0.2");
    assert_eq!(r.tc(&frames::tcp(&Tcp::new(c, 48000, s, PORT, GET))).len(), 1);
    let mut ack = Tcp::new(c, 48000, s, PORT, b"");
    ack.flags = tcp_flags::ACK;
    assert!(r.tc(&frames::tcp(&ack)).is_empty(), "pure ACKs carry nothing to reassemble");
    let mut fin = Tcp::new(c, 48000, s, PORT, b"");
    fin.flags = tcp_flags::ACK | tcp_flags::FIN;
    let got = r.tc(&frames::tcp(&fin));
    assert_eq!(got.len(), 1);
    assert!(got[0].fin() && got[0].payload.is_empty());
    let mut rst = Tcp::new(s, PORT, c, 48000, b"");
    rst.flags = tcp_flags::RST;
    let got = r.tc_egress(&frames::tcp(&rst));
    assert_eq!(got.len(), 1);
    assert!(got[0].rst());
}

#[test]
fn disabled_config_captures_nothing() {
    if !require_kernel("disabled_config_captures_nothing") {
        return;
    }
    let mut r = Rig::new(PPM_ALL);
    r.cap.set_enabled(false).expect("disable");
    assert!(r.tc(&frames::tcp(&Tcp::new("10.0.0.1", 49000, "10.0.0.2", PORT, GET))).is_empty());
    assert_eq!(r.counter(counter::PACKETS_SEEN), 1);
    assert_eq!(r.counter(counter::REQUESTS_SAMPLED), 0);
    r.cap.set_enabled(true).expect("enable");
    assert_eq!(r.tc(&frames::tcp(&Tcp::new("10.0.0.1", 49000, "10.0.0.2", PORT, GET))).len(), 1);
}

#[test]
fn xdp_program_captures_ingress_requests() {
    if !require_kernel("xdp_program_captures_ingress_requests") {
        return;
    }
    let mut r = Rig::new(PPM_ALL);
    let got = r.xdp(&frames::tcp(&Tcp::new("10.0.0.1", 50000, "10.0.0.2", PORT, GET)));
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].payload[..], GET);
    assert_eq!(got[0].direction, Direction::Request);
    let got = r.xdp(&frames::tcp(&Tcp::new("fd00::1", 50001, "fd00::2", PORT, GET)));
    assert_eq!(got.len(), 1);
}

#[test]
fn every_malformed_frame_still_gets_the_continue_verdict() {
    if !require_kernel("every_malformed_frame_still_gets_the_continue_verdict") {
        return;
    }
    let mut r = Rig::new(PPM_ALL);
    let good = frames::tcp(&Tcp::new("10.0.0.1", 51000, "10.0.0.2", PORT, GET));
    let mut cases: Vec<Vec<u8>> = Vec::new();
    // Every truncation of a valid frame, from a bare Ethernet header up.
    for n in 14..good.len() {
        cases.push(good[..n].to_vec());
    }
    // IHL below 5, TCP data offset below 5, absurd IP total length.
    let mut bad_ihl = good.clone();
    bad_ihl[14] = 0x43;
    cases.push(bad_ihl);
    let mut bad_doff = good.clone();
    bad_doff[14 + 20 + 12] = 0x20;
    cases.push(bad_doff);
    let mut long_tot = good.clone();
    long_tot[16] = 0xff;
    long_tot[17] = 0xff;
    cases.push(long_tot);
    let v6 = frames::tcp(&Tcp::new("fd00::1", 51001, "fd00::2", PORT, GET));
    for n in 14..v6.len() {
        cases.push(v6[..n].to_vec());
    }
    let mut tc_ran = 0;
    for f in &cases {
        // XDP takes any frame: the verdict must be XDP_PASS and whatever is emitted must decode.
        r.xdp(f);
        // For skbs the kernel itself refuses frames whose IP header is cut short (EINVAL before
        // the program runs); every frame it accepts must get the continue verdict.
        match r.cap.test_run(names::PROG_TC, f, 1) {
            Ok((verdict, _)) => {
                assert_eq!(verdict, TC_CONTINUE, "frame of {} bytes", f.len());
                r.drain();
                tc_ran += 1;
            }
            Err(e) => {
                let refused_by_kernel = f.len() < 14 + 40 && format!("{e:?}").contains("code: 22");
                assert!(refused_by_kernel, "frame of {} bytes: {e:?}", f.len());
            }
        }
    }
    assert!(tc_ran > cases.len() / 2, "the TC program ran on only {tc_ran} of {} frames", cases.len());
}

fn rule(services: &[&str], ppm: u32) -> KernelRule {
    KernelRule { services: services.iter().map(|s| s.parse().expect("service match")).collect(), sample_ppm: ppm }
}

#[test]
fn rules_tell_services_on_one_port_apart_by_address_and_rates_change_per_rule() {
    if !require_kernel("rules_tell_services_on_one_port_apart_by_address") {
        return;
    }
    let mut r = Rig::with_rules(vec![
        rule(&["10.0.0.2:8080", "[fd00::2]:8080"], PPM_ALL),
        rule(&["10.0.1.0/24:8080"], 0),
        // Less specific than rule 1 for 10.0.1.x, the only match for the rest of 10.0.0.0/16.
        rule(&["10.0.0.0/16:8080"], PPM_ALL),
    ]);
    let get = |dst: &str, port: u16| {
        frames::tcp(&Tcp::new(if dst.contains(':') { "fd00::1" } else { "10.9.0.1" }, port, dst, PORT, GET))
    };
    assert_eq!(r.tc(&get("10.0.0.2", 40001)).len(), 1, "rule 0 samples everything");
    assert_eq!(r.tc(&get("fd00::2", 40002)).len(), 1, "rule 0 covers its IPv6 address too");
    assert!(r.tc(&get("10.0.1.7", 40003)).is_empty(), "rule 1 (the most specific for 10.0.1.7) samples nothing");
    assert_eq!(r.tc(&get("10.0.2.7", 40004)).len(), 1, "rule 2 covers the rest of 10.0.0.0/16");
    assert!(r.tc(&get("10.1.0.1", 40005)).is_empty(), "no rule covers 10.1.0.1");
    assert!(r.tc(&get("fd00::3", 40006)).is_empty(), "no rule covers fd00::3");
    assert_eq!(r.counter(counter::REQUESTS_SAMPLED), 3);
    assert_eq!(r.counter(counter::REQUESTS_SKIPPED), 1);
    assert_eq!(r.counter(counter::REQUESTS_NO_RULE), 2);

    // Rule 1 up to 100 %, live: its next request is sampled; the others keep their rates.
    r.cap.set_rule_ppm(RuleId::new(1), PPM_ALL).expect("set rule 1");
    r.cap.set_rule_ppm(RuleId::new(0), 0).expect("set rule 0");
    assert_eq!(r.cap.rule_ppm(RuleId::new(1)).expect("read back"), PPM_ALL);
    assert_eq!(r.cap.rule_ppm(RuleId::new(0)).expect("read back"), 0);
    assert_eq!(r.cap.rule_ppm(RuleId::new(2)).expect("read back"), PPM_ALL);
    assert_eq!(r.tc(&get("10.0.1.7", 40007)).len(), 1);
    assert!(r.tc(&get("10.0.0.2", 40008)).is_empty());
    assert_eq!(r.tc(&get("10.0.2.7", 40009)).len(), 1);
    assert!(r.cap.set_rule_ppm(RuleId::new(3), 0).is_err(), "no rule 3");
}

#[test]
fn rules_are_replaced_live_and_a_service_in_two_rules_is_refused() {
    if !require_kernel("rules_are_replaced_live") {
        return;
    }
    let mut r = Rig::with_rules(vec![rule(&["8080"], PPM_ALL)]);
    let to = |dst: &str, port: u16, sport: u16| frames::tcp(&Tcp::new("10.9.0.1", sport, dst, port, GET));
    assert_eq!(r.tc(&to("10.0.0.2", PORT, 41001)).len(), 1);
    r.cap
        .set_rules(&[rule(&["10.0.0.0/24:9443"], PPM_ALL), rule(&["10.0.5.0/24:8080"], PPM_ALL)])
        .expect("replace rules");
    assert!(r.tc(&to("10.0.0.2", PORT, 41002)).is_empty(), "the old any-address rule is gone");
    assert_eq!(r.tc(&to("10.0.0.2", 9443, 41003)).len(), 1);
    assert_eq!(r.tc(&to("10.0.5.9", PORT, 41004)).len(), 1);
    assert_eq!(r.counter(counter::REQUESTS_NO_RULE), 1);
    assert_eq!(r.cap.rule_ppm(RuleId::new(0)).expect("rule 0"), PPM_ALL);

    let err =
        r.cap.set_rules(&[rule(&["10.0.0.0/24:8080"], 0), rule(&["10.0.0.9/24:8080"], 0)]).expect_err("duplicate");
    assert!(err.to_string().contains("10.0.0.0/24:8080"), "{err}");
    assert_eq!(err.exit_code(), 2);
    // The refused set changed nothing.
    assert_eq!(r.tc(&to("10.0.5.9", PORT, 41005)).len(), 1);
}

/// One request start per line of this table must be recognised, by the token grammar and not a
/// list: methods outside the common ten, empty lines before the request line, and segments too
/// short to classify (captured, for user space to judge).
#[test]
fn request_starts_by_token_grammar_short_segments_and_leading_empty_lines() {
    if !require_kernel("request_starts_by_token_grammar") {
        return;
    }
    let mut r = Rig::new(PPM_ALL);
    let (c, s) = ("10.0.0.1", "10.0.0.2");
    let starts: &[(&[u8], bool)] = &[
        (b"REPORT /cal HTTP/1.1\r\n\r\n", false),
        (b"PURGE /x HTTP/1.1\r\n\r\n", false),
        (b"SEARCH / HTTP/1.1\r\n\r\n", false),
        (b"QUERY /q HTTP/1.1\r\n\r\n", false),
        (b"LINK /l HTTP/1.1\r\n\r\n", false),
        (b"UNLINK /l HTTP/1.1\r\n\r\n", false),
        (b"M-SEARCH * HTTP/1.1\r\n\r\n", false),
        (b"SOURCE /s HTTP/1.0\r\n\r\n", false),
        (b"UPDATEREDIRECTREF /r HTTP/1.1\r\n\r\n", false),
        (b"\r\nGET / HTTP/1.1\r\n\r\n", false),
        (b"\r\n\r\nGET / HTTP/1.1\r\n\r\n", false),
        (b"G", true),
        (b"GET", true),
        (b"\r\n", true),
        (b"\r\nPOS", true),
        (b"\x16", true),
    ];
    for (i, (bytes, short)) in starts.iter().enumerate() {
        let t = Tcp::new(c, 49000 + i as u16, s, PORT, bytes);
        let got = r.tc(&frames::tcp(&t));
        assert_eq!(got.len(), 1, "{:?}", String::from_utf8_lossy(bytes));
        assert!(got[0].request_start, "{:?}", String::from_utf8_lossy(bytes));
        let _ = short;
    }
    let shorts = starts.iter().filter(|(_, s)| *s).count() as u64;
    assert_eq!(r.counter(counter::REQUESTS_SAMPLED), starts.len() as u64);
    assert_eq!(r.counter(counter::REQUEST_STARTS_SHORT), shorts);

    let not_starts: &[&[u8]] = &[
        b"{\"json\": 1}",
        b" GET / HTTP/1.1\r\n\r\n",
        b"\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\n",
        b"GET\t/ HTTP/1.1\r\n",
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZ / HTTP/1.1\r\n",
        b"\x00\x01garbage",
        b"(GET) / HTTP/1.1\r\n",
    ];
    for (i, bytes) in not_starts.iter().enumerate() {
        let t = Tcp::new(c, 49500 + i as u16, s, PORT, bytes);
        assert!(r.tc(&frames::tcp(&t)).is_empty(), "{:?}", String::from_utf8_lossy(bytes));
    }
    assert_eq!(r.counter(counter::REQUESTS_SAMPLED), starts.len() as u64, "no start counted for those");
}

/// A request written a few bytes per segment is one request: its first piece draws the decision,
/// the rest (same acknowledgment: no answer yet) follow it without being flagged or counted, and
/// the next request (the answer acknowledged) draws anew. What crossed the wire adds up:
/// requests = sampled + skipped.
#[test]
fn a_request_in_tiny_segments_is_one_decision_and_requests_add_up() {
    if !require_kernel("a_request_in_tiny_segments_is_one_decision") {
        return;
    }
    let mut r = Rig::new(PPM_ALL);
    let (c, s) = ("10.0.0.1", "10.0.0.2");
    let req = b"GET /tiny HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut seq = 1000u32;
    let mut ack = 7000u32;
    let requests = 6u32;
    for n in 0..requests {
        if n == 3 {
            r.cap.set_sample_ppm(0).expect("set rate");
        }
        let size = 1 + (n as usize % 6);
        let mut flagged = 0;
        let mut captured = 0;
        for piece in req.chunks(size) {
            let mut t = Tcp::new(c, 49900, s, PORT, piece);
            t.seq = seq;
            t.ack = ack;
            seq = seq.wrapping_add(piece.len() as u32);
            let got = r.tc(&frames::tcp(&t));
            captured += got.len();
            flagged += got.iter().filter(|g| g.request_start).count();
        }
        let want = if n < 3 { req.chunks(size).count() } else { 0 };
        assert_eq!((captured, flagged), (want, usize::from(n < 3)), "request {n} in {size}-byte pieces");
        // The answer goes out, and the next request acknowledges it.
        r.answer(c, 49900, s);
        ack = ack.wrapping_add(40);
    }
    assert_eq!(r.counter(counter::REQUESTS_SAMPLED) + r.counter(counter::REQUESTS_SKIPPED), u64::from(requests));
    assert_eq!(r.counter(counter::REQUESTS_SAMPLED), 3);
    assert!(r.counter(counter::REQUEST_START_CONTINUED) > 0);
}

/// Under TC a new request needs the server to have begun a final answer since the last one: an
/// interim `100 Continue` moves the client's acknowledgment but is not an answer, so the body
/// that follows it (whatever it looks like) continues the request. XDP sees no answers and goes
/// by the acknowledgment alone.
#[test]
fn an_interim_response_does_not_end_a_request_but_a_final_one_does() {
    if !require_kernel("an_interim_response_does_not_end_a_request") {
        return;
    }
    let mut r = Rig::new(PPM_ALL);
    let (c, s) = ("10.0.0.1", "10.0.0.2");
    let head = b"PUT /f HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 25\r\n\r\n";
    let mut t = Tcp::new(c, 49950, s, PORT, head);
    t.seq = 100;
    t.ack = 1000;
    assert!(r.tc(&frames::tcp(&t))[0].request_start);
    let cont = b"HTTP/1.1 100 Continue\r\n\r\n";
    let mut i = Tcp::new(s, PORT, c, 49950, cont);
    i.seq = 1000;
    r.tc_egress(&frames::tcp(&i));
    // The body, after the 100 (acknowledging it), reads like a request line.
    let mut b = Tcp::new(c, 49950, s, PORT, b"GET /admin HTTP/1.1\r\n\r\n");
    b.seq = 100 + head.len() as u32;
    b.ack = 1000 + cont.len() as u32;
    let got = r.tc(&frames::tcp(&b));
    assert_eq!(got.len(), 1, "captured as part of the sampled PUT");
    assert!(!got[0].request_start, "an interim answer does not end a request");
    assert_eq!(r.counter(counter::REQUESTS_SAMPLED), 1);
    // A final answer, then the next request: a new decision.
    let fin = b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n";
    let mut f = Tcp::new(s, PORT, c, 49950, fin);
    f.seq = 1000 + cont.len() as u32;
    r.tc_egress(&frames::tcp(&f));
    let mut n = Tcp::new(c, 49950, s, PORT, GET);
    n.seq = b.seq + 25;
    n.ack = f.seq + fin.len() as u32;
    assert!(r.tc(&frames::tcp(&n))[0].request_start);
    assert_eq!(r.counter(counter::REQUESTS_SAMPLED), 2);
}

/// A reused client port: the SYN of the new connection clears what was decided for the old one,
/// so its first request is a new decision even though the old connection's last request was never
/// answered (without the SYN it would pass for that request's continuation).
#[test]
fn a_syn_on_a_reused_port_pair_starts_afresh() {
    if !require_kernel("a_syn_on_a_reused_port_pair_starts_afresh") {
        return;
    }
    let mut r = Rig::new(PPM_ALL);
    let (c, s) = ("10.0.0.1", "10.0.0.2");
    let mut old = Tcp::new(c, 49960, s, PORT, GET);
    old.seq = 100;
    old.ack = 500;
    assert!(r.tc(&frames::tcp(&old))[0].request_start);
    let mut syn = Tcp::new(c, 49960, s, PORT, b"");
    syn.flags = tcp_flags::SYN;
    syn.seq = 90_000;
    assert!(r.tc(&frames::tcp(&syn)).is_empty(), "a SYN carries nothing to capture");
    let mut new = Tcp::new(c, 49960, s, PORT, GET);
    new.seq = 90_001;
    new.ack = 7_000;
    assert!(r.tc(&frames::tcp(&new))[0].request_start, "the new connection's first request");
    assert_eq!(r.counter(counter::REQUESTS_SAMPLED), 2);
    assert_eq!(r.counter(counter::REQUEST_START_CONTINUED), 0);
}
