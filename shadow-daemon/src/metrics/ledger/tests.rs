//! The ledger on its own: every outcome moves exactly the counts it should, labels are the
//! contract the metrics publish, and reconciliation is shown to fail when a request is captured
//! and never ends, not only to hold when everything is right.

use super::*;
use crate::metrics::{Metrics, TextFormat};

fn counts(l: &Arc<Mutex<Ledger>>) -> RequestCounts {
    lock(l).counts()
}

fn dropped(pairs: &[(&str, u64)]) -> DropCounts {
    DropCounts(pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect())
}

#[test]
fn labels_are_the_published_reason_names() {
    let labels: Vec<&str> = RequestDrop::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(
        labels,
        [
            "no_target",
            "method_not_allowed",
            "path_denied",
            "path_not_allowed",
            "body_too_large",
            "rate_limited",
            "queue_full",
            "shadow_error",
            "shadow_backoff",
            "shadow_response_too_large",
            "invalid_capture",
            "shutdown",
            "ramp_baseline"
        ]
    );
    for r in RequestDrop::ALL {
        assert_eq!(r.to_string(), r.as_str());
    }
    crate::label::check(RequestDrop::LABELS);
}

#[test]
fn a_new_ledger_lists_every_replay_reason_at_zero() {
    let c = counts(&Ledger::shared());
    assert_eq!((c.captured, c.replayed, c.in_flight), (0, 0, 0));
    assert_eq!(c.dropped.len(), RequestDrop::ALL.len());
    assert!(c.dropped.values().all(|v| *v == 0), "{c:?}");
    assert_eq!(c.dropped[RequestDrop::Shutdown], 0);
}

#[test]
fn each_outcome_moves_exactly_its_counts() {
    let l = Ledger::shared();
    let a = Ledger::admit(&l);
    let b = Ledger::admit(&l);
    let c = Ledger::admit(&l);
    let d = Ledger::admit(&l);
    let n = counts(&l);
    assert_eq!((n.captured, n.replayed, n.in_flight, n.dropped_total()), (4, 0, 4, 0));

    a.replayed();
    b.replayed();
    let n = counts(&l);
    assert_eq!((n.captured, n.replayed, n.in_flight, n.dropped_total()), (4, 2, 2, 0));

    c.dropped(RequestDrop::QueueFull);
    let n = counts(&l);
    assert_eq!((n.captured, n.replayed, n.in_flight, n.dropped_total()), (4, 2, 1, 1));
    assert_eq!(n.dropped[RequestDrop::QueueFull], 1);
    assert_eq!(n.dropped[RequestDrop::Shutdown], 0, "a settled ticket does not count again when dropped");

    drop(d);
    let n = counts(&l);
    assert_eq!((n.captured, n.replayed, n.in_flight, n.dropped_total()), (4, 2, 0, 2));
    assert_eq!(n.dropped["shutdown"], 1, "an unsettled ticket settles as shutdown");

    // The extraction stage's drops are captured and dropped at once, under its own labels.
    lock(&l).captured_and_dropped(DropReason::Gap);
    lock(&l).captured_and_dropped(DropReason::Gap);
    lock(&l).captured_and_dropped(DropReason::ParseError);
    let n = counts(&l);
    assert_eq!((n.captured, n.replayed, n.in_flight, n.dropped_total()), (7, 2, 0, 5));
    assert_eq!((n.dropped["gap"], n.dropped["parse_error"]), (2, 1));
    assert_eq!(n.dropped.len(), RequestDrop::ALL.len() + 2);
    assert!(n.reconciles());
}

#[test]
fn drop_counts_index_by_label_and_by_reason() {
    let d = dropped(&[("gap", 3), ("queue_full", 5)]);
    assert_eq!(d["gap"], 3);
    assert_eq!(d[RequestDrop::QueueFull], 5);
    assert_eq!(d[DropReason::Gap], 3);
    assert_eq!(d.len(), 2);
    let listed: Vec<(String, u64)> = (&d).into_iter().map(|(k, v)| (k.clone(), *v)).collect();
    assert_eq!(listed, [("gap".to_owned(), 3), ("queue_full".to_owned(), 5)]);
    let c = RequestCounts { captured: 0, replayed: 0, in_flight: 0, dropped: d };
    assert_eq!(c.dropped_total(), 8);
}

#[test]
fn reconciliation_holds_only_when_every_request_has_one_place() {
    let c = |captured, replayed, in_flight, d: &[(&str, u64)]| RequestCounts {
        captured,
        replayed,
        in_flight,
        dropped: dropped(d),
    };
    // 9 = 2 replayed + (3 + 1) dropped + 3 in flight: every term counts, each once.
    assert!(c(9, 2, 3, &[("gap", 3), ("shutdown", 1)]).reconciles());
    assert!(c(0, 0, 0, &[]).reconciles());
    // A request captured and never ended: neither replayed, dropped nor in flight.
    assert!(!c(10, 2, 3, &[("gap", 3), ("shutdown", 1)]).reconciles());
    // An outcome without a capture (counted twice).
    assert!(!c(8, 2, 3, &[("gap", 3), ("shutdown", 1)]).reconciles());
    // Each term on its own is part of the sum.
    assert!(!c(9, 0, 3, &[("gap", 3), ("shutdown", 1)]).reconciles());
    assert!(!c(9, 2, 0, &[("gap", 3), ("shutdown", 1)]).reconciles());
    assert!(!c(9, 2, 3, &[("gap", 3)]).reconciles());
}

#[test]
fn an_imbalance_in_the_running_ledger_is_reported() {
    let m = Metrics::new(4);
    let t = m.admit();
    m.record_extraction_drop(DropReason::Gap);
    let s = m.summary();
    assert!(s.reconciles, "{s:?}");
    assert!(!s.to_string().contains("DOES NOT RECONCILE"));

    // A request counted as captured that never ends: no ticket, no drop.
    lock(&m.ledger).captured += 1;
    let s = m.summary();
    assert_eq!((s.requests.captured, s.requests.replayed, s.requests.in_flight), (3, 0, 1));
    assert_eq!(s.requests.dropped_total(), 1);
    assert!(!s.requests.reconciles());
    assert!(!s.reconciles, "the summary reports the imbalance");
    let text = s.to_string();
    assert!(
        text.starts_with("requests: captured 3  replayed 0  dropped 1  in flight 1  (DOES NOT RECONCILE)\n"),
        "{text}"
    );
    // The scrape publishes the same numbers, so a fleet-wide check sees the gap too.
    let prom = m.encode(TextFormat::Prometheus).unwrap();
    assert!(prom.contains("\nshadow_requests_captured_total 3\n"), "{prom}");
    assert!(prom.contains("\nshadow_requests_in_flight 1\n"), "{prom}");

    // Settling the ticket does not mend it: the missing request stays missing.
    t.replayed();
    let s = m.summary();
    assert_eq!((s.requests.captured, s.requests.replayed, s.requests.in_flight), (3, 1, 0));
    assert!(!s.reconciles);
}
