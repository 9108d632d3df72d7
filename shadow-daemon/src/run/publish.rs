//! Extraction results and kernel counters into the metrics, at every tick and once at the end.

use std::collections::BTreeMap;

use shadow_common::counter;

use crate::{
    http::DropReason,
    metrics::{Counted, EventReason, Metrics},
    reassembly::ExtractorStats,
    segment::{Direction, RecordDrop},
};

/// Carries extraction results into the metrics: request drops go into the replay ledger one by
/// one (so captured = replayed + dropped + in flight holds), the rest as absolute gauges/counters.
pub(super) struct Publisher {
    /// Request-direction drops already recorded in the ledger, by reason.
    pub(super) ledger_seen: [u64; DropReason::COUNT],
}

impl Publisher {
    /// `bad_records`: ring-buffer records that did not decode, by reason; they never reach
    /// reassembly and are published beside its drops (direction label `records`).
    /// The ledger's view of extraction: new request drops, and the requests held (in progress,
    /// or waiting for the primary's answer), which are captured and in flight. Cheap (one lock):
    /// called after every batch, once its requests are routed, so that the held figure is
    /// fresh when the next ones are admitted.
    pub(super) fn sync_ledger(&mut self, metrics: &Metrics, st: &ExtractorStats) {
        let mut new = Vec::new();
        for (reason, dir, n) in st.drops() {
            if dir != Direction::Request {
                continue;
            }
            // Extraction's counters only grow.
            let seen = &mut self.ledger_seen[reason.index()];
            let since = n.saturating_sub(*seen);
            *seen = n;
            if since != 0 {
                new.push((reason, since));
            }
        }
        metrics.record_extraction(&new, st.requests.in_progress);
    }

    pub(super) fn publish(
        &mut self,
        metrics: &Metrics,
        st: &ExtractorStats,
        bad_records: &BTreeMap<RecordDrop, u64>,
        kernel: Option<&[u64; counter::COUNT]>,
    ) {
        self.sync_ledger(metrics, st);
        let mut stats: Vec<(EventReason, Counted, u64)> =
            st.drops().map(|(r, d, n)| (EventReason::Dropped(r), messages(d), n)).collect();
        stats.extend(st.segment_drops().map(|(r, d, n)| (EventReason::Dropped(r), segments(d), n)));
        stats.extend(bad_records.iter().map(|(&r, &n)| (EventReason::Record(r), Counted::Records, n)));
        metrics.set_extraction_stats(&stats);
        metrics.set_flows(st.flows_active);
        metrics.set_buffered_bytes(st.buffered_bytes);
        if let Some(k) = kernel {
            let named: Vec<(&'static str, u64)> = counter::NAMES.iter().copied().zip(k.iter().copied()).collect();
            metrics.set_kernel_counters(&named);
            metrics.set_ring_buffer_dropped(k[counter::RINGBUF_FULL]);
        }
    }
}

/// The `direction` of a message drop.
const fn messages(d: Direction) -> Counted {
    match d {
        Direction::Request => Counted::Requests,
        Direction::Response => Counted::Responses,
    }
}

/// The `direction` of a segment drop.
const fn segments(d: Direction) -> Counted {
    match d {
        Direction::Request => Counted::RequestSegments,
        Direction::Response => Counted::ResponseSegments,
    }
}

#[cfg(test)]
mod tests {
    //! The ledger sees what extraction holds: a request begun and not handed over is captured
    //! and in flight, and it ends under a named reason at the idle timeout, driven by the tick
    //! alone.

    use super::*;
    use crate::reassembly::{
        Extractor, ExtractorConfig, HttpEvent,
        tests::support::{Conn, GET, OK, feed, small_cfg},
    };

    fn holding() -> ExtractorConfig {
        ExtractorConfig { await_response: true, ..small_cfg() }
    }

    /// Extraction's results into the ledger as the run loop does: handed-over requests admitted
    /// (and settled at once: replay is not under test), then the report.
    fn publish(p: &mut Publisher, m: &Metrics, ex: &Extractor, ev: Vec<HttpEvent>) {
        for e in ev {
            if let HttpEvent::Request(_) = e {
                m.admit().replayed();
            }
        }
        p.publish(m, ex.stats(), &BTreeMap::new(), None);
    }

    #[test]
    fn a_request_held_in_extraction_is_captured_and_in_flight_until_its_timeout() {
        // Three ways a request stays in extraction with no more traffic coming: its answer and
        // the connection's close were processed before it (they reached the ring buffer first),
        // so it waits on a flow of its own; its head is cut short; it was answered early and
        // the connection stays open.
        for case in ["answer_first", "partial_head", "early_answer"] {
            let m = Metrics::new(4);
            let mut p = Publisher { ledger_seen: [0; DropReason::COUNT] };
            let mut ex = Extractor::new(holding());
            let mut c = Conn::new(false, 41200, 1, 1);
            let ev = match case {
                "answer_first" => {
                    let mut late = c.clone();
                    let req = late.client(GET);
                    c.c_seq = late.c_seq;
                    let mut ev = feed(&mut ex, [c.server(OK), c.client_fin(), c.server_fin()]);
                    ev.extend(feed(&mut ex, [req]));
                    // The flow's last segment is the late request: its clock counts from there.
                    c.ts = late.ts;
                    ev
                }
                "partial_head" => feed(&mut ex, [c.client(b"GET /slow HTTP/1.1\r\nHost: a\r\n")]),
                _ => feed(
                    &mut ex,
                    [
                        c.client(b"PUT /u HTTP/1.1\r\nContent-Length: 3\r\n\r\n"),
                        c.server(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
                        c.client(b"abc"),
                    ],
                ),
            };
            assert!(ev.is_empty(), "{case}");
            assert_eq!(ex.stats().requests.in_progress, 1, "{case}");
            assert_eq!(ex.stats().flows_active, 1, "{case}");
            publish(&mut p, &m, &ex, ev);
            let r = m.requests();
            assert_eq!((r.captured, r.in_flight, r.dropped_total()), (1, 1, 0), "{case}: {r:?}");
            assert!(r.reconciles(), "{case}");

            // No segment comes any more: the tick alone ends it, at the idle timeout.
            let mut ev = Vec::new();
            ex.tick(c.ts + holding().idle_timeout_ns - 1, &mut ev);
            assert_eq!(ex.stats().requests.in_progress, 1, "{case}: not before the timeout");
            ex.tick(c.ts + holding().idle_timeout_ns, &mut ev);
            let st = ex.stats();
            assert_eq!((st.requests.in_progress, st.flows_active, st.buffered_bytes), (0, 0, 0), "{case}");
            publish(&mut p, &m, &ex, ev);
            let r = m.requests();
            assert_eq!((r.captured, r.in_flight, r.replayed, r.dropped_total()), (1, 0, 0, 1), "{case}: {r:?}");
            let reason = if case == "partial_head" { DropReason::Timeout } else { DropReason::Unanswered };
            let reason = if case == "early_answer" { DropReason::Timeout } else { reason };
            assert_eq!(r.dropped[reason], 1, "{case}: {r:?}");
            assert!(r.reconciles(), "{case}");
        }
    }

    #[test]
    fn captured_never_goes_down_and_reconciles_at_every_step() {
        let m = Metrics::new(4);
        let mut p = Publisher { ledger_seen: [0; DropReason::COUNT] };
        let mut ex = Extractor::new(holding());
        let mut last = 0;
        let mut step = |ex: &Extractor, ev: Vec<HttpEvent>, p: &mut Publisher| {
            // Admissions happen before the report, as in the run loop; check between them too.
            for e in ev {
                if let HttpEvent::Request(_) = e {
                    let t = m.admit();
                    let r = m.requests();
                    assert!(r.captured >= last && r.reconciles(), "{r:?}");
                    last = r.captured;
                    t.replayed();
                }
            }
            p.sync_ledger(&m, ex.stats());
            let r = m.requests();
            assert!(r.captured >= last && r.reconciles(), "{r:?}");
            last = r.captured;
        };
        let mut c = Conn::new(false, 41201, 1, 1);
        for _ in 0..3 {
            let ev = feed(&mut ex, [c.client(GET)]);
            step(&ex, ev, &mut p);
            let ev = feed(&mut ex, [c.server(OK)]);
            step(&ex, ev, &mut p);
        }
        // Begun and answered between two reports: admitted without having been reported.
        let ev = feed(&mut ex, [c.client(GET), c.server(OK), c.client(b"GET /x HTTP/1.1\r\n")]);
        step(&ex, ev, &mut p);
        let r = m.requests();
        assert_eq!((r.captured, r.replayed, r.in_flight), (5, 4, 1), "{r:?}");
    }

    #[test]
    fn each_sync_adds_only_the_drops_since_the_last_one() {
        let m = Metrics::new(4);
        let mut p = Publisher { ledger_seen: [0; DropReason::COUNT] };
        let mut st = ExtractorStats::default();
        let mut sync = |st: &ExtractorStats| {
            p.sync_ledger(&m, st);
            let r = m.requests();
            assert!(r.reconciles(), "{r:?}");
            let n = |d: DropReason| r.dropped.get(d.as_str()).copied().unwrap_or(0);
            (r.captured, n(DropReason::Gap), n(DropReason::Timeout))
        };
        st.requests.dropped[DropReason::Gap.index()] = 2;
        assert_eq!(sync(&st), (2, 2, 0));
        st.requests.dropped[DropReason::Gap.index()] = 5;
        st.requests.dropped[DropReason::Timeout.index()] = 1;
        assert_eq!(sync(&st), (6, 5, 1), "3 more gaps and a timeout, not 5 + 2");
        assert_eq!(sync(&st), (6, 5, 1), "nothing new: nothing added");
        // Response-side drops are the extraction's own business, not requests of the ledger.
        st.responses.dropped[DropReason::Gap.index()] = 7;
        assert_eq!(sync(&st), (6, 5, 1));
    }
}
