//! This process's identity and file-creation mask.

/// The effective user id.
pub(crate) fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Run `f` with the file-creation mask set to `mask`, and put the old one back after: so a file
/// `f` creates never exists with looser permissions, not even for a moment. The mask is the
/// process's: no other thread should create files meanwhile.
pub(crate) fn with_umask<R>(mask: u32, f: impl FnOnce() -> R) -> R {
    // SAFETY: umask only changes this process's file-creation mask; it cannot fail.
    let old = unsafe { libc::umask(mask) };
    let r = f();
    // SAFETY: as above, restoring the mask read before.
    unsafe { libc::umask(old) };
    r
}

/// Whether this process runs under a seccomp filter (`Seccomp: 2` in /proc/self/status): then a
/// refused bpf(2) may be the filter's doing, not missing capabilities.
pub(crate) fn seccomp_filtered() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| s.lines().any(|l| l.strip_prefix("Seccomp:").is_some_and(|v| v.trim() == "2")))
}
