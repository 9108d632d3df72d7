//! The kernel's own times of a socket's packets: when a received packet arrived
//! (SO_TIMESTAMPNS) and when a written byte left (SO_TIMESTAMPING, from the error queue).
//! With test-util, `shadow_daemon::timestamp` gives them to the bench's floor client.
#![cfg_attr(not(feature = "test-util"), allow(unreachable_pub))]

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
    time::{Duration, SystemTime},
};

use super::socket::set_option;

/// `SO_TIMESTAMPING` and its control message (asm-generic; the same value on every architecture
/// the daemon builds for).
const SO_TIMESTAMPING: libc::c_int = 37;
const SCM_TIMESTAMPING: libc::c_int = SO_TIMESTAMPING;
/// `sock_extended_err.ee_info` of a timestamp taken when the packet left for the device.
const SCM_TSTAMP_SND: u32 = 0;
/// Transmit timestamps kept waiting at most, per connection, before the oldest are read away.
const MAX_TX_STAMPS_READ: usize = 64;

/// Ask for the kernel's receive time of every packet read from the socket (SO_TIMESTAMPNS);
/// whether the kernel took it.
pub fn enable_receive_timestamps(fd: BorrowedFd<'_>) -> bool {
    set_option(fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, &(1 as libc::c_int))
}

/// Ask the kernel for the software transmit time of each write's last byte, keyed by its byte
/// offset (OPT_ID, counted from the bytes written: OPT_ID_TCP on kernels that have it), without
/// the payload looped back (OPT_TSONLY). Whether the socket will report them.
pub fn enable_transmit_timestamps(fd: BorrowedFd<'_>) -> bool {
    let base = libc::SOF_TIMESTAMPING_TX_SOFTWARE
        | libc::SOF_TIMESTAMPING_SOFTWARE
        | libc::SOF_TIMESTAMPING_OPT_ID
        | libc::SOF_TIMESTAMPING_OPT_TSONLY;
    [base | libc::SOF_TIMESTAMPING_OPT_ID_TCP, base]
        .into_iter()
        .any(|flags| set_option(fd, libc::SOL_SOCKET, SO_TIMESTAMPING, &flags))
}

/// Read what the socket holds into `buf`'s spare capacity without waiting, `buf` growing by
/// what was read; with the kernel's receive time of that data when the socket reports one (see
/// [`enable_receive_timestamps`]).
pub fn recv_timed(fd: BorrowedFd<'_>, buf: &mut Vec<u8>) -> io::Result<(usize, Option<SystemTime>)> {
    let spare = buf.spare_capacity_mut();
    let mut iov = libc::iovec { iov_base: spare.as_mut_ptr().cast(), iov_len: spare.len() };
    // Room for an SCM_TIMESTAMPNS message (a cmsghdr and a timespec) and an
    // SCM_TIMESTAMPING one (three timespecs), which a socket with transmit timestamps
    // may also be given, aligned.
    let mut control = [0u64; 16];
    let mut msg = header(&mut control);
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    // SAFETY: iov points into buf's spare capacity of iov_len bytes; control is ours.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: recvmsg initialised the first n bytes of the spare capacity.
    unsafe { buf.set_len(buf.len() + n) };
    Ok((n, receive_time(&msg)))
}

/// The transmit time of the byte at offset `key` from the socket's error queue, reading away
/// the timestamps queued before it (non-blocking; at most [`MAX_TX_STAMPS_READ`]).
pub fn transmit_time(fd: BorrowedFd<'_>, key: u32) -> Option<SystemTime> {
    for _ in 0..MAX_TX_STAMPS_READ {
        let mut control = [0u64; 16];
        let mut msg = header(&mut control);
        // SAFETY: no data buffer (OPT_TSONLY queues none); control is ours, of msg_controllen.
        let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
        if n < 0 {
            return None;
        }
        if let Some((k, at)) = transmit_stamp(&msg)
            && k == key
        {
            return Some(at);
        }
    }
    None
}

/// A message header with no data buffer and `control` for its control messages.
fn header(control: &mut [u64; 16]) -> libc::msghdr {
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(control) as _;
    msg
}

/// The key and software time of a transmit timestamp read from the error queue.
fn transmit_stamp(msg: &libc::msghdr) -> Option<(u32, SystemTime)> {
    let (mut key, mut at) = (None, None);
    // SAFETY: walking the control buffer recvmsg filled, with the kernel's own CMSG macros;
    // each payload is read unaligned at the size the kernel wrote for its type.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            let (level, kind) = ((*c).cmsg_level, (*c).cmsg_type);
            if level == libc::SOL_SOCKET && kind == SCM_TIMESTAMPING {
                let ts: [libc::timespec; 3] = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                let d = Duration::new(u64::try_from(ts[0].tv_sec).ok()?, u32::try_from(ts[0].tv_nsec).ok()?);
                at = SystemTime::UNIX_EPOCH.checked_add(d).filter(|_| !d.is_zero());
            } else if (level == libc::SOL_IP && kind == libc::IP_RECVERR)
                || (level == libc::SOL_IPV6 && kind == libc::IPV6_RECVERR)
            {
                let e: libc::sock_extended_err = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                if e.ee_origin == libc::SO_EE_ORIGIN_TIMESTAMPING && e.ee_info == SCM_TSTAMP_SND {
                    key = Some(e.ee_data);
                }
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    Some((key?, at?))
}

/// The kernel receive time in a received message's control data (SCM_TIMESTAMPNS).
fn receive_time(msg: &libc::msghdr) -> Option<SystemTime> {
    // SAFETY: walking the control buffer recvmsg filled, with the kernel's own CMSG macros.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                let d = Duration::new(u64::try_from(ts.tv_sec).ok()?, u32::try_from(ts.tv_nsec).ok()?);
                return SystemTime::UNIX_EPOCH.checked_add(d);
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    None
}
