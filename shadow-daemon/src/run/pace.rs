//! One loop turn per burst: while the daemon is busy, the runtime's thread wakes at most once
//! per `--turn-interval`, and everything that became ready meanwhile (ring-buffer records, the
//! shadow's responses, timers, control calls) is handled in that one turn.
//!
//! The ring buffer already wakes the daemon once per batch of records rather than per record
//! (the programs ask for a wake-up only past a fill threshold; the reader looks on its own beat
//! otherwise). Replay did not: each shadow response made its socket readable and woke the
//! thread, so a batch of requests written together came back as a wake-up per response, each
//! costing a context switch and a trip through the scheduler. Here the runtime calls
//! [`Pace::parking`] just before it blocks for events and [`Pace::woke`] when it wakes (tokio's
//! `on_thread_park` and `on_thread_unpark`): when the last wait was shorter than the interval
//! (events come faster than that), the thread first waits out the rest of the interval since it
//! woke, and then collects everything that arrived in one wait. After a wait at least as long
//! as the interval (a quiet spell), the next event is handled at once: pacing costs nothing on
//! an idle node and adds no delay at low rates.
//!
//! What it costs: while busy, work found ready waits up to one interval. A captured request
//! leaves for the shadow up to that much later (the ring's own beat is 8 ms); the shadow's
//! latency does not change, because both of its ends are the kernel's timestamps (the request's
//! transmit time, the response's receive time), not when the daemon got around to reading. As
//! whenever a response's head and body are read together, its first-byte time is that of the
//! later packet. Only on one runtime thread (the default): with several, a worker waiting would
//! hold back the tasks the others hand it.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

/// The default interval: a burst of shadow responses (loopback or a pod on the node answers a
/// batch within a few hundred microseconds) comes back in one or two turns, and a flow under
/// the one-at-a-time gate still gets thousands of exchanges a second.
pub const DEFAULT_TURN_INTERVAL: Duration = Duration::from_micros(500);

/// The pacing state of one runtime thread, on the monotonic clock (ns). The hooks take `&self`
/// (tokio wants `Fn + Send + Sync`); they run on that thread alone, so relaxed atomics suffice.
#[derive(Debug)]
pub struct Pace {
    interval_ns: u64,
    /// When the thread last woke.
    woke_at: AtomicU64,
    /// When it last began to wait for events (after its pause, if it paused).
    waiting_since: AtomicU64,
    /// The last wait was shorter than the interval: events come fast, pace the next turn.
    busy: AtomicU64,
}

impl Pace {
    /// Turns at most every `interval` while busy; zero: never pause.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval_ns: u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX),
            woke_at: AtomicU64::new(0),
            waiting_since: AtomicU64::new(0),
            busy: AtomicU64::new(0),
        }
    }

    /// The thread woke at `now`: whether the wait it ends was short is what paces the next.
    pub fn woke(&self, now: u64) {
        let waited = now.saturating_sub(self.waiting_since.load(Ordering::Relaxed));
        self.busy.store(u64::from(waited < self.interval_ns), Ordering::Relaxed);
        self.woke_at.store(now, Ordering::Relaxed);
    }

    /// The thread is about to wait for events at `now`: how long to pause first (so that the
    /// next turn begins no sooner than one interval after this one began), if at all.
    pub fn parking(&self, now: u64) -> Option<Duration> {
        let turn = now.saturating_sub(self.woke_at.load(Ordering::Relaxed));
        let pause = if self.busy.load(Ordering::Relaxed) == 1 && turn < self.interval_ns {
            Some(self.interval_ns - turn)
        } else {
            None
        };
        // The wait is measured from after the pause: a wait that returns at once (events came
        // during the pause) is a short one, and keeps the pace.
        self.waiting_since.store(now + pause.unwrap_or(0), Ordering::Relaxed);
        pause.map(Duration::from_nanos)
    }

    /// Install on a current-thread runtime's builder: the hooks read the monotonic clock and
    /// pause with a sleep. Nothing is installed for a zero interval.
    pub fn install(interval: Duration, builder: &mut tokio::runtime::Builder) {
        if interval.is_zero() {
            return;
        }
        let pace = std::sync::Arc::new(Self::new(interval));
        let p = pace.clone();
        builder.on_thread_unpark(move || p.woke(crate::sys::time::monotonic_ns()));
        builder.on_thread_park(move || {
            if let Some(d) = pace.parking(crate::sys::time::monotonic_ns()) {
                std::thread::sleep(d);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: u64 = 1_000;

    #[test]
    fn a_wake_after_a_quiet_spell_is_handled_at_once_and_never_paused() {
        let p = Pace::new(Duration::from_micros(500));
        // Waiting since 0, woken 10 ms later: a quiet spell.
        assert_eq!(p.parking(0), None);
        p.woke(10_000 * US);
        assert_eq!(p.parking(10_050 * US), None, "not busy: no pause");
        // A wait of exactly one interval is not a short one.
        p.woke(10_550 * US);
        assert_eq!(p.parking(10_560 * US), None);
    }

    #[test]
    fn while_events_come_fast_turns_begin_one_interval_apart() {
        let p = Pace::new(Duration::from_micros(500));
        assert_eq!(p.parking(0), None);
        // Woken 100 µs into the wait: events come faster than the interval.
        p.woke(100 * US);
        // The turn took 30 µs: pause for the rest of the interval since it began.
        assert_eq!(p.parking(130 * US), Some(Duration::from_micros(470)));
        // The wait after the pause returned at once (events arrived meanwhile): still busy.
        p.woke(600 * US + 5 * US);
        assert_eq!(p.parking(700 * US), Some(Duration::from_micros(405)));
        // A turn longer than the interval: the next may begin at once.
        p.woke(1_105 * US);
        assert_eq!(p.parking(1_105 * US + 500 * US), None);
        assert_eq!(p.parking(1_105 * US + 900 * US), None);
    }

    #[test]
    fn the_wait_is_measured_from_the_end_of_the_pause() {
        let p = Pace::new(Duration::from_micros(500));
        assert_eq!(p.parking(0), None);
        p.woke(200 * US);
        assert_eq!(p.parking(250 * US), Some(Duration::from_micros(450)));
        // 700 µs: the pause ended; woken 499 µs after it: short, still paced.
        p.woke(700 * US + 499 * US);
        assert!(p.parking(1_200 * US).is_some());
        // Woken 500 µs after the pause ended: a quiet spell, the next turn is not paced.
        let p = Pace::new(Duration::from_micros(500));
        assert_eq!(p.parking(0), None);
        p.woke(200 * US);
        assert_eq!(p.parking(250 * US), Some(Duration::from_micros(450)));
        p.woke(700 * US + 500 * US);
        assert_eq!(p.parking(1_210 * US), None);
    }

    #[test]
    fn a_zero_interval_never_pauses() {
        let p = Pace::new(Duration::ZERO);
        assert_eq!(p.parking(0), None);
        p.woke(1);
        assert_eq!(p.parking(2), None);
    }
}
