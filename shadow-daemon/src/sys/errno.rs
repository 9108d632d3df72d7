//! Kernel errors told apart by their errno, not by their text.

use std::io;

/// EPERM or EACCES: the process lacks a privilege.
pub(crate) fn is_permission(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES))
}

/// EBUSY or EEXIST: something already holds the place (an XDP program on the interface).
pub(crate) fn is_busy(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EEXIST))
}

/// ENOSYS, EOPNOTSUPP or EINVAL from the BPF syscall: the kernel lacks what we need. A fresh
/// error of the same code (the original stays with aya's error).
pub(crate) fn unsupported(e: &io::Error) -> Option<io::Error> {
    match e.raw_os_error() {
        Some(code @ (libc::ENOSYS | libc::EOPNOTSUPP | libc::EINVAL)) => Some(io::Error::from_raw_os_error(code)),
        _ => None,
    }
}
