//! Socket options and TCP's own accounting.

use std::os::fd::{AsRawFd, BorrowedFd};

/// Set option `name` at `level` of the socket `fd` to `value`; whether the kernel took it.
pub(super) fn set_option<T: Copy>(fd: BorrowedFd<'_>, level: libc::c_int, name: libc::c_int, value: &T) -> bool {
    // SAFETY: `fd` is an open socket for the call; `value` is a live, plain-data value of the
    // size passed, which setsockopt only reads.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    rc == 0
}

/// Request bytes of this TCP connection the peer acknowledged (TCP_INFO `tcpi_bytes_acked`,
/// less the SYN's one). None if the kernel does not say (before 4.1 the struct ends before the
/// field).
pub(crate) fn bytes_acked(fd: BorrowedFd<'_>) -> Option<u64> {
    // SAFETY: tcp_info is plain data, for which all-zero is valid.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt on an open socket writes at most `len` bytes into `info`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    // Kernels before 4.1 end the struct before the field (shorter `len`).
    let needed = std::mem::offset_of!(libc::tcp_info, tcpi_bytes_acked) + size_of::<u64>();
    if rc != 0 || (len as usize) < needed {
        return None;
    }
    Some(info.tcpi_bytes_acked.saturating_sub(1))
}

/// SO_RCVBUF: the socket's receive buffer (sockets a listener accepts inherit it); whether the
/// kernel took it.
#[cfg(test)]
pub(crate) fn set_receive_buffer(fd: BorrowedFd<'_>, bytes: i32) -> bool {
    set_option(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &(bytes as libc::c_int))
}

/// SO_LINGER with a zero timeout: closing the socket then resets the connection.
#[cfg(test)]
pub(crate) fn set_linger_reset(fd: BorrowedFd<'_>) -> bool {
    set_option(fd, libc::SOL_SOCKET, libc::SO_LINGER, &libc::linger { l_onoff: 1, l_linger: 0 })
}
