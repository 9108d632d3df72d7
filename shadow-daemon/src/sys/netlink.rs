//! The rtnetlink socket that hears of links created and deleted in this network namespace
//! (`netlink-sys`'s socket, registered with tokio's reactor).

use std::io;

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use tokio::io::{Interest, unix::AsyncFd};

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
    fd: AsyncFd<Socket>,
}

impl LinkSocket {
    /// Open, bind and register with the runtime's reactor. Must run inside a tokio runtime.
    pub(crate) fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.set_non_blocking(true)?;
        socket.bind(&SocketAddr::new(0, libc::RTMGRP_LINK as u32))?;
        // SAFETY: netlink-sys's Socket owns its descriptor and closes it only when dropped, so it
        // stays open, and the same, for as long as the AsyncFd owns the Socket.
        let fd = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }.map_err(io::Error::from)?;
        Ok(Self { fd })
    }

    /// Wait for the next datagram and receive it into `buf`. A datagram longer than `buf` is
    /// an overrun too (its tail is lost): the caller re-lists.
    pub(crate) async fn recv(&mut self, buf: &mut [u8]) -> io::Result<Received> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.get_inner().recv(&mut &mut buf[..], libc::MSG_TRUNC) {
                Ok(n) if n > buf.len() => return Ok(Received::Overrun),
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
