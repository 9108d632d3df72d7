//! The daemon's end of the control socket: bind it safely, check each peer, read bounded request
//! lines, and hand every valid request to the daemon's loop, which owns the state it changes.

use std::{
    io,
    os::unix::fs::{FileTypeExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{Semaphore, mpsc, oneshot},
};

use super::{Command, ErrorKind, MAX_CONNECTIONS, MAX_LINE, READ_TIMEOUT, Response, parse_request};
use crate::sys;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {}: another shadow-daemon is serving it (stop it, or pass --control with another path)", path.display())]
    InUse { path: PathBuf },
    #[error("control socket {}: {op}: {source}", path.display())]
    Io { op: &'static str, path: PathBuf, source: io::Error },
}

impl ControlError {
    /// 2 when the user must choose another path, 1 for the environment.
    pub const fn exit_code(&self) -> u8 {
        match self {
            Self::InUse { .. } => 2,
            Self::Io { .. } => 1,
        }
    }
}

/// A request for the daemon's loop, with the way back to the client.
#[derive(Debug)]
pub struct Call {
    pub command: Command,
    pub reply: oneshot::Sender<Response>,
}

/// What the server counted, for `/metrics`: requests by command, errors by kind.
#[derive(Debug, Default)]
pub struct ControlStats {
    pub requests: AtomicU64,
    errors: [AtomicU64; ErrorKind::COUNT],
}

impl ControlStats {
    fn error(&self, kind: ErrorKind) {
        self.errors[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Errors answered so far, by kind label (every kind listed).
    pub fn errors(&self) -> Vec<(ErrorKind, u64)> {
        ErrorKind::ALL.into_iter().zip(&self.errors).map(|(k, n)| (k, n.load(Ordering::Relaxed))).collect()
    }
}

/// The bound socket. Dropping it removes the socket file.
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
    stats: Arc<ControlStats>,
}

impl ControlServer {
    /// Create the parent directory if missing, refuse a path another daemon still serves,
    /// replace a stale socket file, bind, and restrict the socket to its owner (0600).
    pub async fn bind(path: &Path) -> Result<Self, ControlError> {
        let io_err = |op: &'static str| move |source| ControlError::Io { op, path: path.to_path_buf(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_err("create its directory"))?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => {
                if UnixStream::connect(path).await.is_ok() {
                    return Err(ControlError::InUse { path: path.to_path_buf() });
                }
                std::fs::remove_file(path).map_err(io_err("remove the stale socket"))?;
            }
            Ok(_) => {
                return Err(ControlError::Io {
                    op: "refuse to replace",
                    path: path.to_path_buf(),
                    source: io::Error::new(io::ErrorKind::AlreadyExists, "a file that is not a socket is in the way"),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("inspect")(e)),
        }
        // Bind under a umask that leaves no window with a world-connectable socket.
        let bound = sys::process::with_umask(0o177, || UnixListener::bind(path));
        let listener = bound.map_err(io_err("bind"))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err("set mode 0600"))?;
        Ok(Self { listener, path: path.to_path_buf(), stats: Arc::new(ControlStats::default()) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn stats(&self) -> Arc<ControlStats> {
        self.stats.clone()
    }

    /// Serve until `calls` closes (the daemon stopped). Never returns an error: a failing
    /// connection is that connection's problem.
    pub async fn serve(self, calls: mpsc::Sender<Call>) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let own_uid = sys::process::effective_uid();
        loop {
            let stream = tokio::select! {
                r = self.listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!("control socket accept: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = calls.closed() => return,
            };
            let stats = self.stats.clone();
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                stats.error(ErrorKind::Busy);
                tokio::spawn(answer_and_close(
                    stream,
                    Response::error(ErrorKind::Busy, "too many control connections"),
                ));
                continue;
            };
            let allowed = stream.peer_cred().is_ok_and(|c| c.uid() == 0 || c.uid() == own_uid);
            if !allowed {
                stats.error(ErrorKind::Refused);
                let who = stream.peer_cred().map_or("unknown".to_string(), |c| c.uid().to_string());
                tracing::warn!("control socket: refused a peer with uid {who}");
                tokio::spawn(answer_and_close(
                    stream,
                    Response::error(ErrorKind::Refused, "only root or the daemon's own user may control it"),
                ));
                continue;
            }
            let calls = calls.clone();
            tokio::spawn(async move {
                serve_connection(stream, calls, &stats).await;
                drop(permit);
            });
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn answer_and_close(mut stream: UnixStream, response: Response) {
    let _ = write_response(&mut stream, &response).await;
    let _ = stream.shutdown().await;
    // Keep our end open until the peer is done (bounded): closed at once, a client still writing
    // its request would get EPIPE instead of reading this answer.
    let mut sink = [0u8; 1024];
    let _ =
        tokio::time::timeout(READ_TIMEOUT, async { while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {} })
            .await;
}

async fn write_response<W: AsyncWriteExt + Unpin>(w: &mut W, r: &Response) -> io::Result<()> {
    let mut line = serde_json::to_vec(r).map_err(io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    w.flush().await
}

async fn serve_connection(stream: UnixStream, calls: mpsc::Sender<Call>, stats: &ControlStats) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        // One byte past the limit tells a too-long line from one exactly at it.
        let limit = (MAX_LINE + 1) as u64;
        let read = tokio::time::timeout(READ_TIMEOUT, (&mut reader).take(limit).read_until(b'\n', &mut line)).await;
        let response = match read {
            Err(_elapsed) => {
                stats.error(ErrorKind::Timeout);
                let _ = write_response(
                    &mut write,
                    &Response::error(ErrorKind::Timeout, "no complete request line in time"),
                )
                .await;
                return;
            }
            Ok(Err(_)) | Ok(Ok(0)) => return,
            Ok(Ok(_)) if !line.ends_with(b"\n") => {
                let (kind, msg) = if line.len() > MAX_LINE {
                    (ErrorKind::TooLarge, format!("request line longer than {MAX_LINE} bytes"))
                } else {
                    (ErrorKind::BadRequest, "request line not terminated by a newline".to_string())
                };
                stats.error(kind);
                let _ = write_response(&mut write, &Response::error(kind, msg)).await;
                return;
            }
            Ok(Ok(_)) => match parse_request(line.trim_ascii()) {
                Err(r) => {
                    if let Some(e) = &r.error {
                        stats.error(e.kind);
                    }
                    r
                }
                Ok(req) => {
                    stats.requests.fetch_add(1, Ordering::Relaxed);
                    let (tx, rx) = oneshot::channel();
                    if calls.send(Call { command: req.command, reply: tx }).await.is_err() {
                        return;
                    }
                    match rx.await {
                        Ok(r) => {
                            if let Some(e) = &r.error {
                                stats.error(e.kind);
                            }
                            r
                        }
                        Err(_) => Response::error(ErrorKind::Internal, "the daemon is stopping"),
                    }
                }
            },
        };
        if write_response(&mut write, &response).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::control::{Request, VERSION};

    fn tmp(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("shadow-ctl-{tag}-{}", std::process::id())).join("sub/control.sock")
    }

    /// A daemon loop that answers `status` with a fixed object and everything else `rejected`.
    fn fake_daemon(mut rx: mpsc::Receiver<Call>) -> tokio::task::JoinHandle<u64> {
        tokio::spawn(async move {
            let mut n = 0;
            while let Some(c) = rx.recv().await {
                n += 1;
                let r = match c.command {
                    Command::Status => Response::ok(serde_json::json!({"fake": true})),
                    other => Response::error(ErrorKind::Rejected, format!("no {}", other.as_str())),
                };
                let _ = c.reply.send(r);
            }
            n
        })
    }

    async fn exchange(path: &Path, raw: &[u8]) -> Vec<Response> {
        let mut s = UnixStream::connect(path).await.expect("connect");
        s.write_all(raw).await.expect("write");
        s.shutdown().await.expect("shutdown write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"))).collect()
    }

    #[tokio::test]
    async fn serves_requests_answers_garbage_and_counts_it() {
        let path = tmp("serve");
        let server = ControlServer::bind(&path).await.expect("bind");
        let mode = std::fs::metadata(&path).expect("socket").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "socket mode");
        let stats = server.stats();
        let (tx, rx) = mpsc::channel(4);
        let daemon = fake_daemon(rx);
        let srv = tokio::spawn(server.serve(tx));

        let status = serde_json::to_string(&Request { v: VERSION, command: Command::Status }).expect("ser");
        let rs = exchange(&path, format!("{status}\n{status}\ngarbage\n").as_bytes()).await;
        assert_eq!(rs.len(), 3, "{rs:?}");
        assert!(rs[0].ok && rs[1].ok);
        assert_eq!(rs[0].data, Some(serde_json::json!({"fake": true})));
        assert_eq!(rs[2].error.as_ref().map(|e| e.kind), Some(ErrorKind::BadRequest));

        let rs = exchange(&path, b"{\"v\":1,\"cmd\":\"reload\"}\n").await;
        assert_eq!(rs[0].error.as_ref().map(|e| e.kind), Some(ErrorKind::Rejected));

        let mut huge = vec![b'x'; MAX_LINE + 10];
        huge.push(b'\n');
        let rs = exchange(&path, &huge).await;
        assert_eq!(rs.len(), 1);
        assert_eq!(rs[0].error.as_ref().map(|e| e.kind), Some(ErrorKind::TooLarge));

        let rs = exchange(&path, b"{\"v\":1,\"cmd\":\"status\"}").await;
        assert_eq!(rs[0].error.as_ref().map(|e| e.kind), Some(ErrorKind::BadRequest), "unterminated line");

        let errors: std::collections::BTreeMap<_, _> = stats.errors().into_iter().collect();
        assert_eq!(errors[&ErrorKind::BadRequest], 2);
        assert_eq!(errors[&ErrorKind::TooLarge], 1);
        assert_eq!(errors[&ErrorKind::Rejected], 1);
        assert_eq!(stats.requests.load(Ordering::Relaxed), 3);

        srv.abort();
        let _ = srv.await;
        assert_eq!(daemon.await.expect("daemon"), 3);
        assert!(!path.exists(), "the socket file is removed when the server goes");
    }

    #[tokio::test]
    async fn a_path_in_use_is_refused_and_a_stale_socket_replaced() {
        let path = tmp("inuse");
        let first = ControlServer::bind(&path).await.expect("bind");
        let err = ControlServer::bind(&path).await.err().expect("second bind must fail");
        assert!(matches!(err, ControlError::InUse { .. }), "{err}");
        assert_eq!(err.exit_code(), 2);
        // A socket file nobody serves (a daemon killed with SIGKILL) is replaced.
        let stale_listener = std::os::unix::net::UnixListener::bind(path.with_file_name("stale.sock")).expect("stale");
        drop(stale_listener);
        let stale = path.with_file_name("stale.sock");
        assert!(stale.exists());
        let s = ControlServer::bind(&stale).await.expect("replace stale");
        drop(s);
        drop(first);
        // A regular file in the way is not deleted.
        std::fs::write(&path, b"precious").expect("write");
        assert!(ControlServer::bind(&path).await.is_err());
        assert_eq!(std::fs::read(&path).expect("still there"), b"precious");
        let _ = std::fs::remove_file(&path);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_gets_a_timeout() {
        let path = tmp("slow");
        let server = ControlServer::bind(&path).await.expect("bind");
        let stats = server.stats();
        let (tx, rx) = mpsc::channel(4);
        let _daemon = fake_daemon(rx);
        let srv = tokio::spawn(server.serve(tx));
        let mut s = UnixStream::connect(&path).await.expect("connect");
        s.write_all(b"{\"v\":1,").await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        let r: Response = serde_json::from_str(out.trim()).expect("response");
        assert_eq!(r.error.map(|e| e.kind), Some(ErrorKind::Timeout));
        assert!(stats.errors().contains(&(ErrorKind::Timeout, 1)));
        srv.abort();
    }
}
