//! A periodic timer the kernel keeps (timerfd): one wakeup per period, read through epoll.
//!
//! tokio's timer wheel wakes its driver at the start of a coarser slot before a deadline more
//! than 64 ms away, and again at the deadline: a 100 ms interval costs two wakeups a period. The
//! daemon's tick is the one timer that runs while nothing happens, so it is the kernel's.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

use tokio::io::{Interest, unix::AsyncFd};

/// A CLOCK_MONOTONIC timerfd firing every `period`, watched by the runtime's reactor.
pub(crate) struct Ticker {
    fd: AsyncFd<OwnedFd>,
    period: Duration,
}

impl Ticker {
    /// Start a timer that first fires one `period` from now. Must run inside a tokio runtime.
    pub(crate) fn every(period: Duration) -> io::Result<Self> {
        // SAFETY: plain syscall; the returned descriptor is checked, then owned.
        let raw = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a new descriptor this function alone holds.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        arm(&fd, period)?;
        // SAFETY: the AsyncFd owns the OwnedFd, which stays open, and the same, as long as it lives.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(io::Error::from)?;
        Ok(Self { fd, period })
    }

    pub(crate) fn period(&self) -> Duration {
        self.period
    }

    /// Fire every `period` from now on, the first one `period` from now (nothing if that is the
    /// period already).
    pub(crate) fn set_period(&mut self, period: Duration) -> io::Result<()> {
        if period != self.period {
            arm(self.fd.get_ref(), period)?;
            self.period = period;
        }
        Ok(())
    }

    /// Wait for the next expiry; how many periods passed since the last wait (at least one).
    pub(crate) async fn tick(&mut self) -> io::Result<u64> {
        loop {
            let mut guard = self.fd.readable().await?;
            let mut n = 0u64;
            // SAFETY: reading the 8-byte expiry count into a u64.
            let r = unsafe { libc::read(self.fd.as_raw_fd(), (&raw mut n).cast(), std::mem::size_of::<u64>()) };
            if r == std::mem::size_of::<u64>() as isize {
                return Ok(n.max(1));
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock {
                return Err(e);
            }
            guard.clear_ready();
        }
    }
}

/// Set `fd` to fire every `period`, first one `period` from now.
fn arm(fd: &OwnedFd, period: Duration) -> io::Result<()> {
    if period.is_zero() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "a ticker needs a period above zero"));
    }
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(period.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(period.subsec_nanos() as i32),
    };
    let spec = libc::itimerspec { it_interval: ts, it_value: ts };
    // SAFETY: fd is a timerfd; spec is a valid itimerspec; the old value is not asked for.
    if unsafe { libc::timerfd_settime(fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::Ticker;

    /// Whole periods of `period_ms` in `elapsed`.
    fn start_periods(elapsed: Duration, period_ms: u64) -> u64 {
        u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX) / period_ms
    }

    #[tokio::test(flavor = "current_thread")]
    async fn fires_every_period_and_counts_missed_ones() {
        // Never early, and never more periods than have passed; how many passed depends on when
        // this thread ran (a busy machine may count two where one was due).
        let periods_in = |since: Instant, period: u64| start_periods(since.elapsed(), period);
        let start = Instant::now();
        let mut t = Ticker::every(Duration::from_millis(5)).expect("timerfd");
        let n = t.tick().await.expect("tick");
        assert!(start.elapsed() >= Duration::from_millis(5));
        assert!((1..=periods_in(start, 5)).contains(&n), "{n} periods");
        // Not waited on for a while: the periods that passed are counted in the next wait.
        let start = Instant::now();
        std::thread::sleep(Duration::from_millis(30));
        let n = t.tick().await.expect("tick");
        assert!((5..=periods_in(start, 5) + 1).contains(&n), "{n} periods");
        assert!(Ticker::every(Duration::ZERO).is_err());
        // A longer period: the next expiry is that far from now, not from the last one.
        let start = Instant::now();
        t.set_period(Duration::from_millis(40)).expect("rearm");
        assert_eq!(t.period(), Duration::from_millis(40));
        let n = t.tick().await.expect("tick");
        assert!(start.elapsed() >= Duration::from_millis(40));
        assert!((1..=periods_in(start, 40)).contains(&n), "{n} periods");
        assert!(t.set_period(Duration::ZERO).is_err());
        assert_eq!(t.period(), Duration::from_millis(40));
    }
}
