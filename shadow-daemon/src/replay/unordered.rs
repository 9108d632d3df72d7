//! The contract of [`super::slots::Slots`] on futures-util's `FuturesUnordered`, for measuring
//! the two side by side on the replay bench (`--features futures-unordered`).

use std::{
    panic::AssertUnwindSafe,
    task::{Context, Poll},
};

use futures_util::{FutureExt, StreamExt, future::CatchUnwind, stream::FuturesUnordered};

use super::slots::{Replay, Work};

/// Same bound as the hand-written slots: rounds of "poll what is ready, take new work" per poll.
const ROUNDS_PER_POLL: usize = 4;

pub(crate) struct Slots {
    set: FuturesUnordered<CatchUnwind<AssertUnwindSafe<Replay>>>,
    cap: usize,
}

impl Slots {
    pub fn new(cap: usize) -> Self {
        Self { set: FuturesUnordered::new(), cap: cap.max(1) }
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    pub fn poll_work<J>(
        &mut self,
        cx: &mut Context<'_>,
        drained: bool,
        mut next_job: impl FnMut(&mut Context<'_>) -> Poll<Option<J>>,
        mut start: impl FnMut(J) -> Replay,
        on_panic: impl Fn(),
    ) -> Poll<Work> {
        for _ in 0..ROUNDS_PER_POLL {
            let mut progressed = false;
            while !drained && self.set.len() < self.cap {
                match next_job(cx) {
                    Poll::Ready(Some(job)) => {
                        progressed = true;
                        self.set.push(AssertUnwindSafe(start(job)).catch_unwind());
                    }
                    Poll::Ready(None) => {
                        // Start what was pushed before reporting the end.
                        self.drive(cx, &on_panic);
                        return Poll::Ready(Work::Drained);
                    }
                    Poll::Pending => break,
                }
            }
            progressed |= self.drive(cx, &on_panic);
            if drained && self.set.is_empty() {
                return Poll::Ready(Work::Idle);
            }
            if !progressed {
                break;
            }
        }
        if drained && self.set.is_empty() {
            return Poll::Ready(Work::Idle);
        }
        Poll::Pending
    }

    /// Poll the set until nothing more is ready; whether any replay finished.
    fn drive(&mut self, cx: &mut Context<'_>, on_panic: &impl Fn()) -> bool {
        let mut finished = false;
        while let Poll::Ready(Some(r)) = self.set.poll_next_unpin(cx) {
            finished = true;
            if r.is_err() {
                on_panic();
            }
        }
        finished
    }
}
