//! The replays of one lane, driven inside the lane's dispatcher task rather than as one spawned
//! task each.
//!
//! A spawned task per request costs a task allocation, a trip through the scheduler, usually a
//! wake-up of the other worker thread, and one more wake-up of the dispatcher when it ends (to
//! return the concurrency permit and reap the handle). Here the dispatcher owns at most
//! `concurrency` replay futures in fixed slots; each slot has its own waker that queues the slot
//! and wakes the dispatcher, so a wake-up polls only the replays that can progress, and a burst of
//! responses is handled in one wake-up of one task.
//!
//! What a task gave us is kept: at most `concurrency` replays at once (one per slot), a panicking
//! replay is contained (logged, its slot freed, its ticket settled by its drop as `shutdown`),
//! and dropping the slots abandons every replay in flight, as aborting the tasks did.

use std::{
    future::Future,
    mem,
    panic::{AssertUnwindSafe, catch_unwind},
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Wake, Waker},
};

use super::lock;

pub(crate) type Replay = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Rounds of "poll what is ready, take new work" in one poll of the dispatcher; past them it
/// yields to the runtime (it has been woken already if anything is still ready).
const ROUNDS_PER_POLL: usize = 4;

/// Slots woken since the dispatcher last looked, and the dispatcher's waker.
#[derive(Default)]
struct ReadyList {
    slots: Vec<usize>,
    waker: Option<Waker>,
}

struct SlotWaker {
    slot: usize,
    /// Already in the ready list: further wakes until the next poll are no-ops.
    queued: AtomicBool,
    ready: Arc<Mutex<ReadyList>>,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.queued.swap(true, Ordering::AcqRel) {
            return;
        }
        let waker = {
            let mut r = lock(&self.ready);
            r.slots.push(self.slot);
            r.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// What [`Slots::poll_work`] stopped for.
pub(crate) enum Work {
    /// The job source said there will be no more jobs (`next_job` returned `Ready(None)`).
    Drained,
    /// Drained, and the last replay has finished.
    Idle,
}

pub(crate) struct Slots {
    replays: Vec<Option<Replay>>,
    wakers: Vec<(Arc<SlotWaker>, Waker)>,
    free: Vec<usize>,
    cap: usize,
    ready: Arc<Mutex<ReadyList>>,
    /// The ready list swapped out, kept to reuse its allocation.
    polling: Vec<usize>,
}

impl Slots {
    /// At most `cap` replays at once. Slots (and their wakers) are made on first use, so a large
    /// cap costs nothing while idle.
    pub fn new(cap: usize) -> Self {
        let cap = cap.max(1);
        let hint = cap.min(1024);
        Self {
            replays: Vec::with_capacity(hint),
            wakers: Vec::with_capacity(hint),
            free: Vec::with_capacity(hint),
            cap,
            ready: Arc::new(Mutex::new(ReadyList { slots: Vec::with_capacity(hint), waker: None })),
            polling: Vec::with_capacity(hint),
        }
    }

    /// No replay in flight.
    pub fn is_empty(&self) -> bool {
        self.replays.len() == self.free.len()
    }

    /// Drive the replays that were woken, and start new ones from `next_job` while a slot is
    /// free (each is polled at once, so its request is written in this same poll). Returns
    /// `Ready(Drained)` when `next_job` reports the end; replays in flight then keep running on
    /// later calls with `drained` set, which no longer asks for jobs, and which return
    /// `Ready(Idle)` once none is left.
    pub fn poll_work<J>(
        &mut self,
        cx: &mut Context<'_>,
        drained: bool,
        mut next_job: impl FnMut(&mut Context<'_>) -> Poll<Option<J>>,
        mut start: impl FnMut(J) -> Replay,
        on_panic: impl Fn(),
    ) -> Poll<Work> {
        {
            // Before looking at the list: a wake from now on finds the waker and reschedules us.
            let mut r = lock(&self.ready);
            if !r.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                r.waker = Some(cx.waker().clone());
            }
        }
        for _ in 0..ROUNDS_PER_POLL {
            let mut progressed = false;
            let mut polling = mem::take(&mut self.polling);
            mem::swap(&mut lock(&self.ready).slots, &mut polling);
            for &slot in &polling {
                progressed = true;
                self.poll_slot(slot, &on_panic);
            }
            polling.clear();
            self.polling = polling;

            while !drained && self.has_room() {
                match next_job(cx) {
                    Poll::Ready(Some(job)) => {
                        progressed = true;
                        let slot = self.occupy(start(job));
                        self.poll_slot(slot, &on_panic);
                    }
                    Poll::Ready(None) => return Poll::Ready(Work::Drained),
                    Poll::Pending => break,
                }
            }
            if !progressed {
                break;
            }
        }
        if drained && self.is_empty() {
            return Poll::Ready(Work::Idle);
        }
        // Anything still ready has woken the task again (the waker was registered above).
        Poll::Pending
    }

    fn has_room(&self) -> bool {
        !self.free.is_empty() || self.replays.len() < self.cap
    }

    fn occupy(&mut self, replay: Replay) -> usize {
        if let Some(slot) = self.free.pop() {
            self.replays[slot] = Some(replay);
            return slot;
        }
        let slot = self.replays.len();
        let w = Arc::new(SlotWaker { slot, queued: AtomicBool::new(false), ready: self.ready.clone() });
        self.wakers.push((w.clone(), Waker::from(w)));
        self.replays.push(Some(replay));
        slot
    }

    fn poll_slot(&mut self, slot: usize, on_panic: &impl Fn()) {
        let (flag, waker) = &self.wakers[slot];
        // Cleared before the poll: a wake during or after it queues the slot again.
        flag.queued.store(false, Ordering::Release);
        // A stale entry (the slot finished after it was queued) finds the slot empty or reused;
        // polling a reused slot once too often is harmless.
        let Some(replay) = self.replays[slot].as_mut() else { return };
        let mut cx = Context::from_waker(waker);
        let done = match catch_unwind(AssertUnwindSafe(|| replay.as_mut().poll(&mut cx))) {
            Ok(Poll::Pending) => false,
            Ok(Poll::Ready(())) => true,
            Err(_) => {
                on_panic();
                true
            }
        };
        if done {
            // Dropping the replay settles whatever it still held (ticket, bytes, connection).
            self.replays[slot] = None;
            self.free.push(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    #[tokio::test]
    async fn runs_at_most_cap_at_once_and_contains_panics() {
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let finished = Arc::new(AtomicUsize::new(0));
        let panics = AtomicUsize::new(0);
        let mut jobs: std::collections::VecDeque<u32> = (0..20).collect();
        let mut slots = Slots::new(3);
        let mut drained = false;
        std::future::poll_fn(|cx| {
            loop {
                let r = slots.poll_work(
                    cx,
                    drained,
                    |_| Poll::Ready(jobs.pop_front()),
                    |j| {
                        let (running, most, finished) = (running.clone(), most.clone(), finished.clone());
                        Box::pin(async move {
                            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            tokio::time::sleep(std::time::Duration::from_millis(u64::from(j % 3))).await;
                            running.fetch_sub(1, Ordering::SeqCst);
                            assert!(j != 7, "job 7 panics");
                            finished.fetch_add(1, Ordering::SeqCst);
                        })
                    },
                    || {
                        panics.fetch_add(1, Ordering::SeqCst);
                    },
                );
                match r {
                    Poll::Ready(Work::Drained) => drained = true,
                    Poll::Ready(Work::Idle) => return Poll::Ready(()),
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await;
        assert_eq!(most.load(Ordering::SeqCst), 3);
        assert_eq!(finished.load(Ordering::SeqCst), 19);
        assert_eq!(panics.load(Ordering::SeqCst), 1);
    }
}
