//! Reading the kernel's ring buffers: the segment records (woken by epoll, with a poll that
//! backs off while the ring is idle) and the programs' log records.

use std::{
    io::{self, ErrorKind},
    os::fd::AsRawFd,
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use shadow_common::names;
use tokio::io::{Interest, unix::AsyncFd};

use super::{Capture, CaptureError};
use crate::segment::{self, DecodeError, Segment};

type Logger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// Reads records from the ring buffer when the kernel signals them (epoll, no busy polling).
pub struct SegmentSource {
    ring: AsyncFd<RingBuf<MapData>>,
    poll: PollInterval,
}

/// How long the ring-buffer reader waits for the kernel's wakeup before it looks anyway:
/// [`shadow_common::RING_POLL_INTERVAL_MS`] while looks find records, doubled after every look
/// that finds none, up to [`shadow_common::RING_IDLE_POLL_MS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollInterval {
    ms: u64,
}

impl Default for PollInterval {
    fn default() -> Self {
        Self { ms: shadow_common::RING_POLL_INTERVAL_MS }
    }
}

impl PollInterval {
    pub fn get(self) -> Duration {
        Duration::from_millis(self.ms)
    }

    /// After a look at the ring that drained `records`.
    pub fn looked(&mut self, records: usize) {
        self.ms = if records > 0 {
            shadow_common::RING_POLL_INTERVAL_MS
        } else {
            self.ms.saturating_mul(2).min(shadow_common::RING_IDLE_POLL_MS)
        };
    }
}

/// Forwards aya-log records from the programs to the daemon's log.
pub struct KernelLog {
    logger: AsyncFd<Logger>,
}

/// aya's ring readers, which own their map's fd for as long as they live (what tokio's
/// `AsyncFd` requires of what it watches).
trait OwnsFd: AsRawFd {}
impl OwnsFd for RingBuf<MapData> {}
impl OwnsFd for Logger {}

/// Watch `inner` for readability on the runtime's reactor. Must run inside a tokio runtime.
fn register_readable<T: OwnsFd>(inner: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: every `OwnsFd` type (aya's RingBuf and EbpfLogger) owns its map fd: it stays open,
    // and the same, for as long as the AsyncFd owns the value.
    unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }.map_err(io::Error::from)
}

impl Capture {
    /// The async reader of the ring buffer (once). Must run inside a tokio runtime.
    pub fn take_source(&mut self) -> Result<SegmentSource, CaptureError> {
        let events = self.take_events()?;
        let ring = register_readable(events)
            .map_err(|e| CaptureError::Io { op: "register the ring buffer with epoll".into(), source: e })?;
        Ok(SegmentSource { ring, poll: PollInterval::default() })
    }

    /// The ring buffer itself (once).
    pub(super) fn take_events(&mut self) -> Result<RingBuf<MapData>, CaptureError> {
        self.events.take().ok_or_else(|| CaptureError::Io {
            op: format!("take {}", names::MAP_EVENTS),
            source: io::Error::new(ErrorKind::AlreadyExists, "the ring buffer was already taken"),
        })
    }

    /// The kernel log forwarder (once), if the object has a log map. Needs a tokio runtime.
    pub fn take_kernel_log(&mut self) -> Option<KernelLog> {
        let l = self.logger.take()?;
        match register_readable(l) {
            Ok(fd) => Some(KernelLog { logger: fd }),
            Err(e) => {
                tracing::warn!("kernel log forwarding disabled: {e}");
                None
            }
        }
    }
}

impl SegmentSource {
    /// Wait until the kernel has records, then drain up to `max` of them into `out`. Records that
    /// do not decode are counted by reason in `bad` (they never reach reassembly).
    ///
    /// The kernel wakes us only once [`shadow_common::RING_WAKEUP_BYTES`] are pending, so we also
    /// look every [`shadow_common::RING_POLL_INTERVAL_MS`] while records come ([`PollInterval`]:
    /// less often after looks that find nothing): a trickle of records waits at most that.
    pub async fn next_batch(
        &mut self,
        out: &mut Vec<Segment>,
        bad: &mut Vec<DecodeError>,
        max: usize,
    ) -> io::Result<()> {
        loop {
            let n = match tokio::time::timeout(self.poll.get(), self.ring.readable_mut()).await {
                Ok(guard) => {
                    let mut guard = guard?;
                    let n = drain(guard.get_inner_mut(), out, bad, max);
                    if n < max {
                        // Drained: wait for the next wakeup.
                        guard.clear_ready();
                    }
                    n
                }
                Err(_elapsed) => drain(self.ring.get_mut(), out, bad, max),
            };
            self.poll.looked(n);
            if n > 0 {
                return Ok(());
            }
        }
    }

    /// Drain whatever is buffered now without waiting (used at shutdown).
    pub fn drain_now(&mut self, out: &mut Vec<Segment>, bad: &mut Vec<DecodeError>) {
        drain(self.ring.get_mut(), out, bad, usize::MAX);
    }
}

fn drain(ring: &mut RingBuf<MapData>, out: &mut Vec<Segment>, bad: &mut Vec<DecodeError>, max: usize) -> usize {
    let mut n = 0;
    while n < max {
        let Some(item) = ring.next() else { break };
        match segment::decode(&item) {
            Ok(s) => out.push(s),
            Err(e) => bad.push(e),
        }
        n += 1;
    }
    n
}

impl KernelLog {
    /// Forward kernel log records as they arrive; runs until the daemon stops.
    pub async fn run(mut self) {
        loop {
            match self.logger.readable_mut().await {
                Ok(mut guard) => {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                Err(e) => {
                    tracing::warn!("kernel log forwarding stopped: {e}");
                    return;
                }
            }
        }
    }
}

impl AsRawFd for SegmentSource {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.ring.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::PollInterval;

    #[test]
    fn poll_interval_doubles_on_empty_looks_up_to_the_idle_cap_and_resets_on_records() {
        let mut p = PollInterval::default();
        assert_eq!(p.get(), Duration::from_millis(shadow_common::RING_POLL_INTERVAL_MS));
        let mut seen = Vec::new();
        for _ in 0..6 {
            p.looked(0);
            seen.push(p.get().as_millis());
        }
        assert_eq!(seen, [16, 32, 32, 32, 32, 32]);
        assert_eq!(shadow_common::RING_IDLE_POLL_MS, 32);
        p.looked(1);
        assert_eq!(p.get(), Duration::from_millis(8));
        // Records keep it at the base, however many.
        p.looked(500);
        assert_eq!(p.get(), Duration::from_millis(8));
        p.looked(0);
        assert_eq!(p.get(), Duration::from_millis(16));
    }
}
