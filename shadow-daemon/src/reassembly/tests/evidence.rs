//! Under TC a request waits for the primary's answer: replayed only when answered, and not with a
//! framing refusal; every other end is a named drop.

use super::{super::*, support::*};
use crate::http::MAX_PENDING;

fn holding() -> ExtractorConfig {
    ExtractorConfig { await_response: true, ..small_cfg() }
}

const NOT_FOUND: &[u8] = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";

#[test]
fn a_request_goes_out_when_its_answer_starts_and_pairs_with_it() {
    both_families(|v6| {
        let mut ex = Extractor::new(holding());
        let mut c = Conn::new(v6, 41100, 1, 1);
        let ev = feed(&mut ex, [c.client(GET)]);
        assert!(ev.is_empty(), "held until the primary answers");
        assert_eq!(ex.held_requests(), 1);
        assert_eq!(ex.stats().requests.in_progress, 1);
        let ev = feed(&mut ex, [c.server(OK)]);
        assert_eq!(raws(&ev), vec![GET.to_vec()]);
        let r = responses(&ev);
        assert_eq!((r.len(), r[0].request_id), (1, requests(&ev)[0].id));
        assert!(matches!(ev[0], HttpEvent::Request(_)), "the request first, then its response");
        assert_eq!(ex.held_requests(), 0);
        let st = ex.stats();
        assert_eq!((st.requests.extracted, st.requests.in_progress), (1, 0));
        assert!(st.reconciles());
    });
}

#[test]
fn framing_refusals_are_not_replayed_and_other_statuses_are() {
    for (status, replayed) in [(400, false), (413, false), (414, false), (431, false), (404, true), (500, true)] {
        let mut ex = Extractor::new(holding());
        let mut c = Conn::new(false, 41101, 1, 1);
        let resp = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
        let ev = feed(&mut ex, [c.client(GET), c.server(resp.as_bytes())]);
        let st = ex.stats();
        if replayed {
            assert_eq!(raws(&ev), vec![GET.to_vec()], "{status}");
            assert_eq!(responses(&ev).len(), 1);
        } else {
            assert!(ev.is_empty(), "{status}: neither the request nor its answer goes out");
            assert_eq!(st.requests.dropped(DropReason::Refused), 1, "{status}");
            assert_eq!(st.responses.dropped(DropReason::Refused), 1, "{status}");
        }
        assert_eq!(ex.held_requests(), 0);
        assert!(st.reconciles());
    }
}

#[test]
fn a_request_never_answered_is_dropped_when_the_connection_ends() {
    for end in ["fin", "rst", "evicted", "idle"] {
        let mut ex = Extractor::new(holding());
        let mut c = Conn::new(false, 41102, 1, 1);
        let mut ev = feed(&mut ex, [c.client(GET)]);
        let now = c.ts;
        let reason = match end {
            "fin" => {
                ev.extend(feed(&mut ex, [c.client_fin(), c.server_fin()]));
                DropReason::Unanswered
            }
            "rst" => {
                ev.extend(feed(&mut ex, [c.server_rst()]));
                DropReason::Unanswered
            }
            "evicted" => {
                // A flood of other flows past the flow limit evicts this one.
                let mut ex2 = Extractor::new(ExtractorConfig { max_flows: 1, ..holding() });
                let mut c1 = Conn::new(false, 41103, 1, 1);
                let mut c2 = Conn::new(false, 41104, 1, 1);
                let ev2 = feed(&mut ex2, [c1.client(GET), c2.client(GET)]);
                assert!(ev2.is_empty());
                assert_eq!(ex2.stats().requests.dropped(DropReason::Evicted), 1);
                assert_eq!(ex2.held_requests(), 1);
                assert!(ex2.stats().reconciles());
                continue;
            }
            _ => {
                ex.tick(now + holding().idle_timeout_ns, &mut ev);
                DropReason::Unanswered
            }
        };
        assert!(ev.is_empty(), "{end}");
        let st = ex.stats();
        assert_eq!(st.requests.dropped(reason), 1, "{end}");
        assert_eq!((st.requests.in_progress, st.requests.extracted), (0, 0), "{end}");
        assert_eq!(ex.held_requests(), 0);
        assert_eq!(st.memory_bytes, 0, "{end}: nothing left accounted");
        assert!(st.reconciles());
    }
}

#[test]
fn an_answer_before_the_request_is_complete_refuses_it() {
    let mut ex = Extractor::new(holding());
    let mut c = Conn::new(false, 41105, 1, 1);
    let head = b"POST /up HTTP/1.1\r\nContent-Length: 10\r\n\r\n";
    let segs = [
        c.client(head),
        c.server(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n"),
        c.client(b"0123456789"),
        c.server(NOT_FOUND),
        c.client(GET),
        c.server(OK),
    ];
    let ev = feed(&mut ex, segs);
    // The 401 came while the body was still on its way: the primary did not serve the POST as
    // sent. The GET after it is answered in turn.
    assert_eq!(raws(&ev), vec![GET.to_vec()]);
    assert_eq!(ex.stats().requests.dropped(DropReason::Refused), 1);
    assert!(ex.stats().reconciles());
}

#[test]
fn pipelined_requests_go_out_in_order_as_each_is_answered() {
    let mut ex = Extractor::new(holding());
    let mut c = Conn::new(true, 41106, 1, 1);
    let two = [GET, POST].concat();
    let ev = feed(&mut ex, [c.client(&two)]);
    assert!(ev.is_empty());
    assert_eq!(ex.held_requests(), 2);
    let ev = feed(&mut ex, [c.server(OK)]);
    assert_eq!(raws(&ev), vec![GET.to_vec()]);
    let ev = feed(&mut ex, [c.server(b"HTTP/1.1 400 Bad\r\nContent-Length: 0\r\n\r\n")]);
    assert!(ev.is_empty(), "the second was refused");
    assert_eq!(ex.stats().requests.dropped(DropReason::Refused), 1);
    assert!(ex.stats().reconciles());
}

#[test]
fn held_requests_count_against_the_cap_and_are_bounded_per_connection() {
    let mut ex = Extractor::new(holding());
    let mut c = Conn::new(false, 41107, 1, 1);
    let base = {
        let mut probe = Extractor::new(holding());
        let mut pc = Conn::new(false, 41108, 1, 1);
        let _ = feed(&mut probe, [pc.client(b"GET /x HTTP/1.1\r\n")]);
        probe.stats().memory_bytes
    };
    let many: Vec<u8> = (0..MAX_PENDING + 8).flat_map(|_| GET.iter().copied()).collect();
    let ev = feed(&mut ex, [c.client(&many)]);
    assert!(ev.is_empty());
    let st = ex.stats();
    assert_eq!(ex.held_requests(), MAX_PENDING, "no more held than the pending queue holds");
    assert_eq!(st.requests.dropped(DropReason::Unanswered), 8, "the oldest, pushed out unanswered");
    assert!(
        st.memory_bytes >= base + (MAX_PENDING * GET.len()) as u64,
        "held bytes are accounted: {} < {} + {}",
        st.memory_bytes,
        base,
        MAX_PENDING * GET.len()
    );
    assert_eq!(st.buffered_bytes, (MAX_PENDING * GET.len()) as u64);
    assert!(st.reconciles());
    let mut ev = Vec::new();
    ex.clear(DropReason::Timeout, &mut ev);
    assert_eq!(ex.stats().memory_bytes, 0);
    assert_eq!(ex.stats().buffered_bytes, 0);
    assert_eq!(ex.stats().requests.dropped(DropReason::Unanswered), 8 + MAX_PENDING as u64);
}

#[test]
fn an_unpaired_answer_is_early_only_for_a_request_it_acknowledges() {
    // A request's head is in, its body not yet; then a response no pending request owns,
    // acknowledging the request stream up to the request's first byte, or one byte past it.
    for (past, refused) in [(0u32, 0u64), (1, 1)] {
        let mut ex = Extractor::new(holding());
        let mut c = Conn::new(false, 41110, 1, 1);
        let _ = feed(&mut ex, [c.client(GET), c.server(OK)]);
        let start = c.c_seq;
        let _ = feed(&mut ex, [c.client(b"POST /e HTTP/1.1\r\nContent-Length: 5\r\n\r\n")]);
        let mut early = c.server(NOT_FOUND);
        early.ack = start.wrapping_add(past);
        let _ = feed(&mut ex, [early]);
        let _ = feed(&mut ex, [c.client(b"hello")]);
        let st = ex.stats();
        assert_eq!(st.requests.dropped(DropReason::Refused), refused, "{past} past its start");
        assert_eq!(ex.held_requests() as u64, 1 - refused, "{past} past its start");
    }
}
