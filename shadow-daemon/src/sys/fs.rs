//! Which filesystem a path is on: the egress fence needs its cgroups on cgroup v2 and its pins
//! on a BPF filesystem.

use std::{ffi::CString, io, os::unix::ffi::OsStrExt, path::Path};

/// `statfs(2)` magic of cgroup v2.
pub(crate) const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
/// `statfs(2)` magic of bpffs.
pub(crate) const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The filesystem magic of the filesystem `path` is on.
pub(crate) fn fs_magic(path: &Path) -> io::Result<i64> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a zeroed statfs is a valid value of this plain C struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path, `st` a writable statfs that outlives the call.
    let rc = unsafe { libc::statfs(c.as_ptr(), &raw mut st) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    Ok(i64::from(st.f_type as i64))
}

/// Where cgroup v2 is mounted, from /proc/self/mountinfo (hybrid hosts mount it beside v1,
/// e.g. at /sys/fs/cgroup/unified).
pub(crate) fn cgroup2_mounts() -> Vec<std::path::PathBuf> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            // "id parent major:minor root mountpoint options ... - fstype source superoptions"
            let (left, right) = l.split_once(" - ")?;
            (right.split(' ').next() == Some("cgroup2")).then(|| left.split(' ').nth(4).map(unescape))?
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> std::path::PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    std::path::PathBuf::from(std::ffi::OsStr::from_bytes(&out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape(r"/sys/fs/cgroup/unified"), Path::new("/sys/fs/cgroup/unified"));
        assert_eq!(unescape(r"/mnt/a\040b"), Path::new("/mnt/a b"));
    }

    #[test]
    fn proc_is_not_cgroup2_nor_bpffs() {
        let m = fs_magic(Path::new("/proc")).expect("statfs /proc");
        assert_ne!(m, CGROUP2_SUPER_MAGIC);
        assert_ne!(m, BPF_FS_MAGIC);
        assert!(fs_magic(Path::new("/nonexistent/shadow")).is_err());
    }
}
