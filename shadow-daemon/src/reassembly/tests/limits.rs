//! Bounds: idle expiry, the memory cap, the flow limit and the per-flow cost.

use super::{super::*, support::*};

#[test]
fn idle_flows_expire_and_drop_what_is_in_progress() {
    let mut ex = Extractor::new(small_cfg());
    let mut c = Conn::new(true, 40020, 3, 3);
    let s = c.client(&POST[..30]);
    let now = s.ts_ns;
    let mut ev = feed(&mut ex, [s]);
    ex.tick(now + 1_000_000_000, &mut ev);
    assert_eq!(ex.stats().flows_active, 1);
    ex.tick(now + ex.config().idle_timeout_ns, &mut ev);
    assert_eq!(ex.stats().flows_active, 0);
    assert_eq!(ex.stats().flows_expired, 1);
    assert_eq!(req_drops(&ex, DropReason::Timeout), 1);
    assert_eq!(ex.stats().memory_bytes, 0);
}

#[test]
fn memory_cap_evicts_least_recently_used_flows() {
    let cap = 200 * 1024;
    let cfg = ExtractorConfig { memory_cap_bytes: cap, ..small_cfg() };
    let mut ex = Extractor::new(cfg);
    let big = format!("POST /big HTTP/1.1\r\nContent-Length: {}\r\n\r\n", 1 << 20);
    let mut out = Vec::new();
    for port in 0..40u16 {
        let mut c = Conn::new(port % 2 == 0, 20000 + port, 1, 1);
        ex.push(c.client(big.as_bytes()), c.ts, &mut out);
        for _ in 0..4 {
            ex.push(c.client(&[b'x'; 8192]), c.ts, &mut out);
            assert!(ex.stats().memory_bytes <= cap as u64);
        }
    }
    let st = ex.stats();
    assert!(st.flows_evicted > 0);
    assert_eq!(st.requests.dropped(DropReason::Evicted), st.flows_evicted);
    assert!(st.reconciles());
}

#[test]
fn flow_limit_evicts_oldest_flow() {
    let cfg = ExtractorConfig { max_flows: 3, ..small_cfg() };
    let mut ex = Extractor::new(cfg);
    let mut conns: Vec<Conn> = (0..4).map(|i| Conn::new(i % 2 == 1, 30000 + i, 1, 1)).collect();
    let mut out = Vec::new();
    for c in &mut conns[..3] {
        ex.push(c.client(&GET[..10]), c.ts, &mut out);
    }
    ex.push(conns[0].client(&GET[10..]), 10_000_000, &mut out);
    ex.push(conns[3].client(GET), 10_000_001, &mut out);
    let st = ex.stats();
    assert_eq!(st.flows_active, 3);
    assert_eq!(st.flows_evicted, 1);
    assert_eq!(st.requests.dropped(DropReason::Evicted), 1, "the least recently used, not flow 0");
    assert_eq!(raws(&out), vec![GET.to_vec(), GET.to_vec()]);
}

#[test]
fn idle_flow_costs_at_most_512_bytes() {
    assert!(Extractor::idle_flow_bytes() <= 512, "idle flow costs {} bytes", Extractor::idle_flow_bytes());
    both_families(|v6| {
        let mut ex = Extractor::new(small_cfg());
        let mut c = Conn::new(v6, 40021, 1, 1);
        let segs = [c.client(GET), c.server(OK), c.client(POST), c.server(OK)];
        let _ = feed(&mut ex, segs);
        assert_eq!(ex.stats().flows_active, 1);
        assert_eq!(ex.stats().buffered_bytes, 0);
        assert!(
            ex.stats().memory_bytes <= 512,
            "after an exchange an idle flow holds {} bytes",
            ex.stats().memory_bytes
        );
    });
}
