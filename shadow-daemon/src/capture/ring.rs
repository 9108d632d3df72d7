//! Reading the kernel's ring buffers: the segment records (woken by epoll, with a poll that
//! backs off while the ring is idle) and the programs' log records.

use std::{
    io::{self, ErrorKind},
    os::fd::AsRawFd,
    time::Duration,
};

use aya::maps::{Array, MapData, RingBuf};
use shadow_common::names;
use tokio::io::{Interest, unix::AsyncFd};

use super::{Capture, CaptureError};
use crate::segment::{self, DecodeError, SegmentRef};

type Logger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// Reads records from the ring buffer when the kernel signals them (epoll, no busy polling).
pub struct SegmentSource {
    ring: AsyncFd<RingBuf<MapData>>,
    /// Where the reader tells the programs it is parked (see [`shadow_common::WAKE_PARKED`]).
    wake: Array<MapData, u32>,
    poll: PollInterval,
}

/// How long the ring-buffer reader waits for the kernel's wakeup before it looks anyway:
/// [`shadow_common::RING_POLL_INTERVAL_MS`] while looks find records, doubled after every look
/// that finds none, up to [`shadow_common::RING_IDLE_POLL_MS`]; after a look at that interval
/// finds none too, it parks: no more looks, the programs wake it with the next record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollInterval {
    ms: u64,
    parked: bool,
    /// Marking the reader parked in the kernel failed once: poll at the idle interval instead.
    can_park: bool,
}

impl Default for PollInterval {
    fn default() -> Self {
        Self { ms: shadow_common::RING_POLL_INTERVAL_MS, parked: false, can_park: true }
    }
}

impl PollInterval {
    /// How long to wait for the kernel's wakeup before looking anyway; `None`: parked, wait for
    /// the wakeup alone.
    pub fn get(self) -> Option<Duration> {
        (!self.parked).then(|| Duration::from_millis(self.ms))
    }

    pub fn parked(self) -> bool {
        self.parked
    }

    /// After a look at the ring that drained `records`; `true` when the reader parks now (the
    /// caller marks it in the kernel, then looks once more for what came before the mark).
    pub fn looked(&mut self, records: usize) -> bool {
        if records > 0 {
            self.ms = shadow_common::RING_POLL_INTERVAL_MS;
            self.parked = false;
            return false;
        }
        if self.parked {
            return false;
        }
        if self.ms >= shadow_common::RING_IDLE_POLL_MS && self.can_park {
            self.parked = true;
            return true;
        }
        self.ms = self.ms.saturating_mul(2).min(shadow_common::RING_IDLE_POLL_MS);
        false
    }

    /// The kernel was not told: keep polling at the idle interval, for good.
    pub fn cannot_park(&mut self) {
        self.parked = false;
        self.can_park = false;
        self.ms = shadow_common::RING_IDLE_POLL_MS;
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
        let wake: Array<MapData, u32> = super::take_map(&mut self.ebpf, names::MAP_WAKE)?;
        let ring = register_readable(events)
            .map_err(|e| CaptureError::Io { op: "register the ring buffer with epoll".into(), source: e })?;
        Ok(SegmentSource { ring, wake, poll: PollInterval::default() })
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

/// What a drain hands over, one record at a time: a segment read in place in the ring buffer
/// (valid only for the call: the record is released right after), or why the record did not
/// decode (it never reaches reassembly).
pub type Record<'a> = Result<SegmentRef<'a>, DecodeError>;

impl SegmentSource {
    /// Wait until the kernel has records, then hand up to `max` of them to `each`, in place,
    /// in ring order; returns how many.
    ///
    /// The kernel wakes us only once [`shadow_common::RING_WAKEUP_BYTES`] are pending, so we also
    /// look every [`shadow_common::RING_POLL_INTERVAL_MS`] while records come ([`PollInterval`]:
    /// less often after looks that find nothing, then not at all: parked, the next record wakes
    /// us). A trickle of records waits at most the interval; the first after a quiet spell not
    /// at all.
    ///
    /// Cancel-safe: records are handed over synchronously, between awaits.
    pub async fn next_batch(&mut self, max: usize, mut each: impl FnMut(Record<'_>)) -> io::Result<usize> {
        loop {
            let ready = match self.poll.get() {
                Some(wait) => tokio::time::timeout(wait, self.ring.readable_mut()).await.ok(),
                None => Some(self.ring.readable_mut().await),
            };
            let n = match ready {
                Some(guard) => {
                    let mut guard = guard?;
                    let n = drain(guard.get_inner_mut(), max, &mut each);
                    if n < max {
                        // Drained: wait for the next wakeup.
                        guard.clear_ready();
                    }
                    n
                }
                None => drain(self.ring.get_mut(), max, &mut each),
            };
            if n > 0 {
                self.poll.looked(n);
                return Ok(n);
            }
            if self.poll.looked(0) {
                self.park();
                // What was submitted before the programs saw the mark woke nobody.
                let n = self.look(max, &mut each);
                if n > 0 {
                    return Ok(n);
                }
            }
        }
    }

    /// Mark the reader parked in the kernel (or, if that fails, poll at the idle interval).
    fn park(&mut self) {
        if let Err(e) = self.wake.set(0, shadow_common::WAKE_PARKED, 0) {
            tracing::warn!(
                "cannot tell the capture programs the reader waits ({e}); polling every {} ms instead",
                shadow_common::RING_IDLE_POLL_MS
            );
            self.poll.cannot_park();
        }
    }

    /// Whether the reader is parked (waiting for the kernel's wakeup alone).
    pub fn parked(&self) -> bool {
        self.poll.parked()
    }

    /// Hand up to `max` records to `each` now without waiting, and follow what was found
    /// (records end a park). The loop's tick looks while parked: a record whose program read the
    /// mark just before the reader set it woke nobody, and waits for this look at most.
    pub fn look(&mut self, max: usize, each: impl FnMut(Record<'_>)) -> usize {
        let n = drain(self.ring.get_mut(), max, each);
        if n > 0 {
            self.poll.looked(n);
        }
        n
    }

    /// Hand whatever is buffered now to `each` without waiting (used at shutdown).
    pub fn drain_now(&mut self, each: impl FnMut(Record<'_>)) -> usize {
        drain(self.ring.get_mut(), usize::MAX, each)
    }
}

/// Up to `max` records, each decoded in place and handed to `each` while the ring still holds
/// it: no copy and no allocation per record here.
fn drain(ring: &mut RingBuf<MapData>, max: usize, mut each: impl FnMut(Record<'_>)) -> usize {
    let mut n = 0;
    while n < max {
        let Some(item) = ring.next() else { break };
        each(segment::decode_ref(&item));
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

    fn ms(p: PollInterval) -> Option<u128> {
        p.get().map(|d| d.as_millis())
    }

    #[test]
    fn poll_interval_doubles_on_empty_looks_up_to_the_idle_cap_then_parks_and_records_reset_it() {
        let mut p = PollInterval::default();
        assert_eq!(p.get(), Some(Duration::from_millis(shadow_common::RING_POLL_INTERVAL_MS)));
        assert_eq!(shadow_common::RING_IDLE_POLL_MS, 32);
        let mut seen = Vec::new();
        let mut parks = Vec::new();
        for _ in 0..5 {
            parks.push(p.looked(0));
            seen.push(ms(p));
        }
        // 8, 16, 32 ms looks find nothing: parked after the third, told once.
        assert_eq!(seen, [Some(16), Some(32), None, None, None]);
        assert_eq!(parks, [false, false, true, false, false]);
        assert!(p.parked());
        p.looked(1);
        assert!(!p.parked());
        assert_eq!(ms(p), Some(8));
        // Records keep it at the base, however many.
        p.looked(500);
        assert_eq!(ms(p), Some(8));
        assert!(!p.looked(0));
        assert_eq!(ms(p), Some(16));
    }

    #[test]
    fn a_reader_that_cannot_park_polls_at_the_idle_interval_for_good() {
        let mut p = PollInterval::default();
        while !p.looked(0) {}
        p.cannot_park();
        assert_eq!(ms(p), Some(32));
        for _ in 0..4 {
            assert!(!p.looked(0));
            assert_eq!(ms(p), Some(32));
        }
        p.looked(3);
        assert_eq!(ms(p), Some(8));
        let parks: Vec<bool> = (0..4).map(|_| p.looked(0)).collect();
        assert_eq!(parks, [false; 4]);
        assert_eq!(ms(p), Some(32));
    }
}
