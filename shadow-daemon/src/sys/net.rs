//! Network interfaces by name and index.

use std::{ffi::CStr, io};

/// The index of interface `name` in this network namespace; None if there is none (or the name
/// cannot be one: it holds a NUL).
pub(crate) fn interface_index(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: c is a valid NUL-terminated string, alive for the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
}

/// The interfaces of this network namespace now: (index, name).
pub(crate) fn interfaces() -> io::Result<Vec<(u32, String)>> {
    // SAFETY: if_nameindex has no preconditions; it returns an array terminated by a zero
    // entry (or null on failure), freed below.
    let head = unsafe { libc::if_nameindex() };
    if head.is_null() {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut p = head;
    // SAFETY: walk until the terminating entry; names are NUL-terminated C strings owned by the
    // array, copied out before it is freed once.
    unsafe {
        while (*p).if_index != 0 && !(*p).if_name.is_null() {
            out.push(((*p).if_index, CStr::from_ptr((*p).if_name).to_string_lossy().into_owned()));
            p = p.add(1);
        }
        libc::if_freenameindex(head);
    }
    Ok(out)
}
