//! The rtnetlink socket that hears of links created and deleted in this network namespace.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
};

use tokio::io::{Interest, unix::AsyncFd};

/// rtnetlink's multicast group of link notifications.
const RTMGRP_LINK: u32 = 1;

/// What one receive got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Received {
    /// A datagram of this many bytes.
    Datagram(usize),
    /// Messages were lost (the socket overran, ENOBUFS).
    Overrun,
}

/// Subscribed to the kernel's link notifications (RTMGRP_LINK).
pub(crate) struct LinkSocket {
    fd: AsyncFd<OwnedFd>,
}

impl LinkSocket {
    /// Open, bind and register with the runtime's reactor. Must run inside a tokio runtime.
    pub(crate) fn open() -> io::Result<Self> {
        // SAFETY: socket has no memory preconditions; the descriptor is owned right after.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor just opened, owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_nl is plain data, for which all-zero is valid.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = RTMGRP_LINK;
        // SAFETY: bind reads a sockaddr_nl of the size passed, alive for the call.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: an OwnedFd keeps its descriptor open, and the same, for as long as the AsyncFd
        // owns it.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(io::Error::from)?;
        Ok(Self { fd })
    }

    /// Wait for the next datagram and receive it into `buf`.
    pub(crate) async fn recv(&mut self, buf: &mut [u8]) -> io::Result<Received> {
        loop {
            let mut guard = self.fd.readable().await?;
            match super::socket::recv(guard.get_inner().as_fd(), buf, 0) {
                Ok(n) => return Ok(Received::Datagram(n)),
                Err(e) => match e.raw_os_error() {
                    Some(libc::EAGAIN) => guard.clear_ready(),
                    Some(libc::ENOBUFS) => return Ok(Received::Overrun),
                    Some(libc::EINTR) => {}
                    _ => return Err(e),
                },
            }
        }
    }
}
