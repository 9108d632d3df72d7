//! systemd's service readiness protocol (sd_notify(3)): one datagram of `KEY=VALUE` lines to the
//! socket named by `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace). With
//! `Type=notify` the unit is "started" when the daemon says `READY=1` (after capture attached),
//! not when the process exists; `RELOADING=1` and `STOPPING=1` mark reloads and the shutdown.
//! Without the variable (not under systemd) nothing is sent.

use std::{io, os::unix::net::UnixDatagram};

/// The variable systemd sets for a `Type=notify` service.
pub(crate) const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Send `state` to the service manager. `Ok(false)`: not asked for (no `$NOTIFY_SOCKET`).
pub(crate) fn notify(state: &str) -> io::Result<bool> {
    let Some(path) = std::env::var_os(NOTIFY_SOCKET).filter(|p| !p.is_empty()) else {
        return Ok(false);
    };
    let sock = UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), &path)?;
    }
    Ok(true)
}

/// `MONOTONIC_USEC=` now, which systemd wants beside `RELOADING=1`.
pub(crate) fn monotonic_usec() -> String {
    format!("MONOTONIC_USEC={}", super::time::monotonic_ns() / 1_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_reaches_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("shadow-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).expect("bind");
        // SAFETY: the variable is process-wide; this test is the only code in the test binary
        // that sets or reads NOTIFY_SOCKET (the daemon's notify calls do not run in unit tests).
        unsafe { std::env::set_var(NOTIFY_SOCKET, &path) };
        assert!(notify("READY=1\nSTATUS=attached").expect("sent"));
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=attached");
        // SAFETY: as above.
        unsafe { std::env::remove_var(NOTIFY_SOCKET) };
        assert!(!notify("READY=1").expect("nothing to send"), "no socket, no datagram");
        assert!(monotonic_usec().starts_with("MONOTONIC_USEC="));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
