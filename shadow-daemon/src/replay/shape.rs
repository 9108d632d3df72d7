//! The traffic's shape: the shadow gets one request at a time per captured connection, as the
//! primary's clients sent them.
//!
//! Why: requests are released when the primary's answer is seen, and the daemon reads the ring
//! buffer in batches (every few milliseconds); a client that sends one request after another
//! on a fast primary puts dozens of them in one batch. Replayed as they come, those dozens reach
//! the shadow at once, on as many connections as the lane's concurrency allows: a burst the
//! primary never saw, which the shadow answers one after another, so its latency measures the
//! burst, not the request (on an identical nginx, a p99 three to four times the primary's).
//! Here a request waits while the one before it from the same captured connection is still being
//! replayed, and goes when that one is done: the shadow sees the clients' concurrency, one
//! request per connection at a time, and so the same load as the primary.
//!
//! Bounded: the requests waiting here (out of the lane's queue) count against the queue's
//! capacity; past it a request is dropped as `queue_full`, as it would have been at the queue.
//! A replay that ends in any way (answered, failed, abandoned at shutdown) frees its connection,
//! through a [`Done`] guard dropped with the replay.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, PoisonError},
    task::Waker,
};

use crate::segment::FlowId;

/// Connections whose replay just ended, and how to wake the dispatcher that waits for them.
#[derive(Debug, Default)]
struct Finished {
    flows: Vec<FlowId>,
    waker: Option<Waker>,
}

/// The captured connections with a request being replayed, and the requests waiting behind it.
#[derive(Debug)]
pub(crate) struct FlowGate<J> {
    busy: HashMap<FlowId, VecDeque<J>>,
    /// Requests whose connection is free again, to start next (in the order they were freed).
    ready: VecDeque<(FlowId, J)>,
    /// Requests held here (waiting behind another, or ready).
    held: usize,
    cap: usize,
    finished: Arc<Mutex<Finished>>,
    /// The freed connections taken from `finished`, swapped with its list so that neither
    /// gives up its allocation: no allocation per replay.
    freed: Vec<FlowId>,
}

/// What [`FlowGate::admit`] did with a request.
#[derive(Debug)]
pub(crate) enum Admit<J> {
    /// Its connection is free: start it now (its [`Done`] frees the connection again).
    Start(J, Done),
    /// Waiting behind the one being replayed from its connection.
    Waiting,
    /// Too many waiting: not taken (drop it as `queue_full`).
    Full(J),
}

/// Frees a captured connection for its next request when dropped (with its replay).
#[derive(Debug)]
pub(crate) struct Done {
    flow: FlowId,
    finished: Arc<Mutex<Finished>>,
}

impl Drop for Done {
    fn drop(&mut self) {
        let waker = {
            let mut f = self.finished.lock().unwrap_or_else(PoisonError::into_inner);
            f.flows.push(self.flow);
            f.waker.take()
        };
        // The dispatcher may have nothing else to wake it for the request waiting behind this one.
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<J> FlowGate<J> {
    /// At most `cap` requests held here.
    pub(super) fn new(cap: usize) -> Self {
        Self {
            busy: HashMap::new(),
            ready: VecDeque::new(),
            held: 0,
            cap,
            finished: Arc::new(Mutex::new(Finished::default())),
            freed: Vec::new(),
        }
    }

    /// Requests held here (waiting, or ready to start).
    pub(super) fn held(&self) -> usize {
        self.held
    }

    fn done(&self, flow: FlowId) -> Done {
        Done { flow, finished: self.finished.clone() }
    }

    /// A request of `flow` taken from the queue.
    pub(super) fn admit(&mut self, flow: FlowId, job: J) -> Admit<J> {
        match self.busy.get_mut(&flow) {
            None => {
                self.busy.insert(flow, VecDeque::new());
                Admit::Start(job, self.done(flow))
            }
            Some(_) if self.held >= self.cap => Admit::Full(job),
            Some(waiting) => {
                waiting.push_back(job);
                self.held += 1;
                Admit::Waiting
            }
        }
    }

    /// The next request whose connection was freed, if any; `waker` is woken when one is.
    pub(super) fn next_ready(&mut self, waker: &Waker) -> Option<(J, Done)> {
        {
            let mut f = self.finished.lock().unwrap_or_else(PoisonError::into_inner);
            if !f.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
                f.waker = Some(waker.clone());
            }
            std::mem::swap(&mut f.flows, &mut self.freed);
        }
        for flow in self.freed.drain(..) {
            let next = self.busy.get_mut(&flow).and_then(VecDeque::pop_front);
            match next {
                // The connection stays busy with its next request.
                Some(job) => self.ready.push_back((flow, job)),
                None => {
                    self.busy.remove(&flow);
                }
            }
        }
        let (flow, job) = self.ready.pop_front()?;
        self.held -= 1;
        Some((job, self.done(flow)))
    }

    /// Every request held here, for shutdown (their tickets settle as they are dropped).
    pub(super) fn clear(&mut self) {
        self.busy.clear();
        self.ready.clear();
        self.held = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::SocketAddr,
        sync::atomic::{AtomicUsize, Ordering},
        task::Wake,
    };

    use super::*;

    fn flow(port: u16) -> FlowId {
        FlowId { client: SocketAddr::from(([10, 0, 0, 1], port)), server: SocketAddr::from(([10, 0, 0, 2], 80)) }
    }

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn start(a: Admit<u32>) -> (u32, Done) {
        match a {
            Admit::Start(j, d) => (j, d),
            other => panic!("not started: {other:?}"),
        }
    }

    #[test]
    fn one_request_at_a_time_per_connection_in_order() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut g = FlowGate::new(10);
        let (a1, done_a1) = start(g.admit(flow(1), 1));
        let (b1, done_b1) = start(g.admit(flow(2), 10));
        assert_eq!((a1, b1), (1, 10), "different connections go at once");
        assert!(matches!(g.admit(flow(1), 2), Admit::Waiting));
        assert!(matches!(g.admit(flow(1), 3), Admit::Waiting));
        assert_eq!(g.held(), 2);
        assert!(g.next_ready(&waker).is_none(), "nothing freed yet");
        drop(done_b1);
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "a freed connection wakes the dispatcher");
        assert!(g.next_ready(&waker).is_none(), "connection 2 had nothing waiting");
        // Connection 2 is free: its next request goes at once.
        let (b2, _done_b2) = start(g.admit(flow(2), 11));
        assert_eq!(b2, 11);
        drop(done_a1);
        let (a2, done_a2) = g.next_ready(&waker).expect("the next of connection 1");
        assert_eq!((a2, g.held()), (2, 1));
        assert!(g.next_ready(&waker).is_none(), "one at a time");
        assert!(matches!(g.admit(flow(1), 4), Admit::Waiting), "still busy with 2");
        drop(done_a2);
        let (a3, done_a3) = g.next_ready(&waker).expect("3 after 2");
        assert_eq!(a3, 3);
        drop(done_a3);
        let (a4, done_a4) = g.next_ready(&waker).expect("4 after 3");
        assert_eq!((a4, g.held()), (4, 0));
        drop(done_a4);
        assert!(g.next_ready(&waker).is_none());
        assert!(matches!(g.admit(flow(1), 5), Admit::Start(5, _)), "the connection is free again");
    }

    #[test]
    fn waiting_requests_are_bounded() {
        let mut g = FlowGate::new(2);
        let (_, _d) = start(g.admit(flow(1), 1));
        assert!(matches!(g.admit(flow(1), 2), Admit::Waiting));
        assert!(matches!(g.admit(flow(1), 3), Admit::Waiting));
        assert!(matches!(g.admit(flow(1), 4), Admit::Full(4)), "the third waiting one is over the cap");
        // A request of a free connection is never refused: it does not wait.
        assert!(matches!(g.admit(flow(2), 5), Admit::Start(5, _)));
        g.clear();
        assert_eq!(g.held(), 0);
    }
}
