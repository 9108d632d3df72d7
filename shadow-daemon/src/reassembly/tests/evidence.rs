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

// Early answers: the primary answers before it has the whole request (an upload endpoint that
// does not need the body, `return 200` in nginx). A 2xx/3xx is a served request if the
// connection then goes on in step; anything else, or a connection out of step, is not.

const UPLOAD_HEAD: &[u8] = b"PUT /up HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n";
const UPLOAD_BODY: &[u8] = b"0123456789";
const EARLY_OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

fn upload() -> Vec<u8> {
    [UPLOAD_HEAD, UPLOAD_BODY].concat()
}

/// A connection where the upload's head is in and the primary answered `early` at once.
fn answered_early(ex: &mut Extractor, port: u16, early: &[u8]) -> (Conn, Vec<HttpEvent>) {
    let mut c = Conn::new(false, port, 1, 1);
    let ev = feed(ex, [c.client(UPLOAD_HEAD), c.server(early), c.client(UPLOAD_BODY)]);
    (c, ev)
}

#[test]
fn an_early_2xx_then_the_next_answer_in_step_replays_the_request_first() {
    for (early, port) in
        [(EARLY_OK, 41120u16), (b"HTTP/1.1 302 Found\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n", 41121)]
    {
        let mut ex = Extractor::new(holding());
        let (mut c, ev) = answered_early(&mut ex, port, early);
        assert!(ev.is_empty(), "held until the connection proves to go on in step");
        assert_eq!(ex.held_requests(), 1);
        assert_eq!(ex.stats().requests.in_progress, 1, "held: in progress, not lost");
        assert!(ex.stats().buffered_bytes >= upload().len() as u64, "held bytes count against the cap");
        let ev = feed(&mut ex, [c.client(GET), c.server(OK)]);
        assert_eq!(raws(&ev), vec![upload(), GET.to_vec()], "in connection order, the upload first");
        let r = responses(&ev);
        assert_eq!((r.len(), r[0].request_id), (1, requests(&ev)[1].id), "the next answer pairs with the next request");
        let st = ex.stats();
        assert_eq!((st.requests.extracted, st.requests.dropped_total(), st.requests.in_progress), (2, 0, 0));
        assert_eq!(ex.held_requests(), 0);
        assert!(st.reconciles());
    }
}

#[test]
fn an_early_2xx_then_a_clean_close_replays_the_request() {
    let mut ex = Extractor::new(holding());
    let (mut c, _) = answered_early(&mut ex, 41122, EARLY_OK);
    let ev = feed(&mut ex, [c.client_fin()]);
    assert!(ev.is_empty(), "the server may still answer something hidden in the body");
    let ev = feed(&mut ex, [c.server_fin()]);
    assert_eq!(raws(&ev), vec![upload()]);
    let st = ex.stats();
    assert_eq!((st.requests.extracted, st.requests.dropped_total(), st.requests.in_progress), (1, 0, 0));
    assert_eq!((ex.held_requests(), st.memory_bytes), (0, 0));
    assert!(st.reconciles());
}

#[test]
fn the_body_of_an_early_answered_request_that_hid_a_request_is_never_replayed() {
    // Smuggling: the primary answered the POST at once, did not read what followed as its body
    // but as a request, and answered that too. We framed those bytes as the POST's body: one
    // answer more than the requests we framed, so the POST is not replayed, whatever comes
    // after (a clean close, a next request in step).
    let hidden = b"GET /admin HTTP/1.1\r\nHost: a\r\n\r\n";
    let head = format!("POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n", hidden.len());
    for then in ["close", "next"] {
        let mut ex = Extractor::new(holding());
        let mut c = Conn::new(false, 41123, 1, 1);
        let mut ev =
            feed(&mut ex, [c.client(head.as_bytes()), c.server(EARLY_OK), c.client(hidden), c.server(NOT_FOUND)]);
        match then {
            "close" => ev.extend(feed(&mut ex, [c.client_fin(), c.server_fin()])),
            _ => ev.extend(feed(&mut ex, [c.client(GET), c.server(OK)])),
        }
        let st = ex.stats();
        assert!(requests(&ev).iter().all(|r| !r.raw.starts_with(b"POST")), "{then}: the POST went out");
        assert_eq!(st.requests.dropped(DropReason::Refused), 1, "{then}");
        assert_eq!(ex.held_requests(), 0, "{then}");
        assert!(st.reconciles());
    }
}

#[test]
fn an_early_2xx_out_of_step_is_dropped_under_the_reason_that_ended_it() {
    let cases: [(&str, DropReason); 6] = [
        ("unpaired", DropReason::Refused),
        ("rst", DropReason::Refused),
        ("gap", DropReason::Gap),
        ("request_parse_error", DropReason::Desync),
        ("idle", DropReason::Timeout),
        ("evicted", DropReason::Evicted),
    ];
    for (how, reason) in cases {
        let mut ex = Extractor::new(holding());
        let (mut c, mut ev) = answered_early(&mut ex, 41124, EARLY_OK);
        match how {
            "unpaired" => ev.extend(feed(&mut ex, [c.server(NOT_FOUND)])),
            "rst" => ev.extend(feed(&mut ex, [c.client_fin(), c.server_rst()])),
            "gap" => {
                // The next request's start never arrives; the server acknowledges past it.
                c.skip_client(10);
                ev.extend(feed(&mut ex, [c.client(b"Host: a\r\n\r\n"), c.server(OK)]));
            }
            "request_parse_error" => ev.extend(feed(&mut ex, [c.client(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")])),
            "idle" => ex.tick(c.ts + holding().idle_timeout_ns, &mut ev),
            _ => ex.clear(DropReason::Evicted, &mut ev),
        }
        let st = ex.stats();
        assert!(requests(&ev).iter().all(|r| !r.raw.starts_with(b"PUT")), "{how}: the upload went out");
        assert_eq!(st.requests.dropped(reason), 1, "{how}: {:?}", st.requests.dropped);
        assert_eq!(ex.held_requests(), 0, "{how}");
        assert!(st.reconciles(), "{how}");
    }
}

#[test]
fn an_early_error_stays_refused_even_when_the_client_then_stops_sending() {
    let too_large: &[u8] = b"HTTP/1.1 413 Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
    for (early, cut) in [(too_large, true), (NOT_FOUND, false)] {
        let mut ex = Extractor::new(holding());
        let mut c = Conn::new(false, 41125, 1, 1);
        let mut ev = feed(&mut ex, [c.client(UPLOAD_HEAD), c.server(early)]);
        if cut {
            // The client gives up on the body once refused, and the server resets.
            ev.extend(feed(&mut ex, [c.client(b"0123"), c.server_rst()]));
        } else {
            ev.extend(feed(&mut ex, [c.client(UPLOAD_BODY), c.client(GET), c.server(OK)]));
        }
        let st = ex.stats();
        assert!(requests(&ev).iter().all(|r| !r.raw.starts_with(b"PUT")));
        assert_eq!(st.requests.dropped(DropReason::Refused), 1, "{:?}", st.requests.dropped);
        assert!(st.reconciles());
    }
}

#[test]
fn an_early_2xx_is_served_only_when_it_is_provably_this_requests_answer() {
    // (what came before, replayed): an older request still unanswered, or another early answer
    // to the same request, make the answer unattributable.
    for (case, replayed) in [("alone", true), ("older_pending", false), ("two_early", false)] {
        let mut ex = Extractor::new(holding());
        let mut c = Conn::new(false, 41126, 1, 1);
        let mut segs = Vec::new();
        if case == "older_pending" {
            // A GET answered, but its answer not captured: its entry still waits, and the
            // answer below, though it starts where the upload's first segment acknowledged, is
            // not provably the upload's.
            segs.push(c.client(GET));
            c.skip_server(OK.len());
        }
        segs.push(c.client(UPLOAD_HEAD));
        segs.push(c.server(EARLY_OK));
        if case == "two_early" {
            segs.push(c.server(EARLY_OK));
        }
        segs.push(c.client(UPLOAD_BODY));
        segs.push(c.client_fin());
        segs.push(c.server_fin());
        let ev = feed(&mut ex, segs);
        let out = requests(&ev).iter().any(|r| r.raw.starts_with(b"PUT"));
        assert_eq!(out, replayed, "{case}");
        assert!(ex.stats().reconciles());
    }
}

#[test]
fn interim_answers_before_the_body_are_no_answer_and_an_early_2xx_after_them_still_counts() {
    let cont = b"HTTP/1.1 100 Continue\r\n\r\n";
    // 100 Continue, the body, the final answer: the normal case, paired as usual.
    let mut ex = Extractor::new(holding());
    let mut c = Conn::new(false, 41127, 1, 1);
    let ev = feed(&mut ex, [c.client(UPLOAD_HEAD), c.server(cont), c.client(UPLOAD_BODY), c.server(OK)]);
    assert_eq!(raws(&ev), vec![upload()]);
    assert_eq!(responses(&ev).len(), 1);
    assert_eq!(ex.stats().responses.dropped_total(), 0);
    // 100 Continue, then 200 before the body: the 200 is the first answer since the request
    // began, so the request is served once the connection goes on in step.
    let mut ex = Extractor::new(holding());
    let mut c = Conn::new(false, 41128, 1, 1);
    let ev = feed(&mut ex, [c.client(UPLOAD_HEAD), c.server(cont), c.server(EARLY_OK), c.client(UPLOAD_BODY)]);
    assert!(ev.is_empty());
    let ev = feed(&mut ex, [c.client(GET), c.server(OK)]);
    assert_eq!(raws(&ev), vec![upload(), GET.to_vec()]);
    assert!(ex.stats().reconciles());
}

#[test]
fn two_early_answered_requests_in_a_row_only_the_last_can_be_proven() {
    let mut ex = Extractor::new(holding());
    let (mut c, _) = answered_early(&mut ex, 41129, EARLY_OK);
    // The second upload's early answer is one answer more than the first's step allows.
    let ev =
        feed(&mut ex, [c.client(UPLOAD_HEAD), c.server(EARLY_OK), c.client(UPLOAD_BODY), c.client(GET), c.server(OK)]);
    assert_eq!(raws(&ev), vec![upload(), GET.to_vec()], "the second upload, then the GET");
    assert_eq!(ex.stats().requests.dropped(DropReason::Refused), 1, "the first");
    assert!(ex.stats().reconciles());
}
