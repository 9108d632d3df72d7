//! `shadowctl`'s end of the socket: synchronous, one request, one response.

use std::{
    io::{self, BufRead, BufReader, Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use super::{Command, ErrorKind, MAX_RESPONSE_LINE, Request, Response, VERSION};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("shadow-daemon is not running (no control socket at {})", path.display())]
    NotRunning { path: PathBuf },
    #[error("not permitted to use the control socket {} (run as root or as the daemon's user)", path.display())]
    NotPermitted { path: PathBuf },
    #[error("control socket {}: {op}: {source}", path.display())]
    Io { op: &'static str, path: PathBuf, source: io::Error },
    #[error("control socket {}: {0}", path.display())]
    Protocol { path: PathBuf, message: String },
}

/// How long shadowctl waits for the daemon's answer (a report over many endpoints included).
const TIMEOUT: Duration = Duration::from_secs(30);

/// Send `command`, return the daemon's response. A refusal by the daemon's peer check is
/// [`ClientError::NotPermitted`], like a socket the file mode keeps us from.
pub fn call(path: &Path, command: Command) -> Result<Response, ClientError> {
    let p = || path.to_path_buf();
    let mut s = UnixStream::connect(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ClientError::NotRunning { path: p() },
        io::ErrorKind::PermissionDenied => ClientError::NotPermitted { path: p() },
        _ => ClientError::Io { op: "connect", path: p(), source: e },
    })?;
    let io_err = |op| move |source| ClientError::Io { op, path: path.to_path_buf(), source };
    s.set_read_timeout(Some(TIMEOUT)).map_err(io_err("set timeout"))?;
    s.set_write_timeout(Some(TIMEOUT)).map_err(io_err("set timeout"))?;
    let mut line = serde_json::to_vec(&Request { v: VERSION, command })
        .map_err(|e| ClientError::Protocol { path: p(), message: e.to_string() })?;
    line.push(b'\n');
    // A refusing daemon may answer and close before the request is written: read its answer
    // even when the write fails, and report the write error only if there is none.
    let sent = s.write_all(&line);
    let mut reader = BufReader::new(s).take(MAX_RESPONSE_LINE as u64);
    let mut answer = Vec::new();
    let read = reader.read_until(b'\n', &mut answer);
    if answer.is_empty() {
        sent.map_err(io_err("send"))?;
    }
    read.map_err(io_err("read the answer"))?;
    if answer.is_empty() {
        return Err(ClientError::Protocol {
            path: p(),
            message: "the daemon closed the connection without an answer".into(),
        });
    }
    let r: Response = serde_json::from_slice(&answer)
        .map_err(|e| ClientError::Protocol { path: p(), message: format!("unreadable answer: {e}") })?;
    if r.error.as_ref().is_some_and(|e| e.kind == ErrorKind::Refused) {
        return Err(ClientError::NotPermitted { path: p() });
    }
    Ok(r)
}
