//! `/metrics`, `/healthz`, `/readyz` and `/verdict` over a deliberately small HTTP/1.1 server:
//! one request per connection, bounded head, bounded time, bounded number of connections. It
//! answers scrapers, probes and rollout gates, nothing else, and a misbehaving client can only
//! waste one of a few slots for a few seconds.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc, oneshot, watch},
    task::JoinHandle,
};

use super::{Metrics, MetricsError, TextFormat};

const MAX_REQUEST_HEAD: usize = 8 * 1024;
const MAX_CONNECTIONS: usize = 16;
const IO_TIMEOUT: Duration = Duration::from_secs(5);
const LINGER: Duration = Duration::from_secs(1);

/// The running endpoint; stops when [`shutdown`](Self::shutdown) is called or it is dropped.
#[derive(Debug)]
pub struct MetricsServer {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Bind `addr` and serve in the background of the current tokio runtime.
    pub async fn bind(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<Self, MetricsError> {
        Self::bind_with_verdict(addr, metrics, None).await
    }

    /// As [`bind`](Self::bind), also serving `/verdict`: each request asks `verdicts` for the
    /// comparison report as JSON (the daemon's loop answers it).
    pub async fn bind_with_verdict(
        addr: SocketAddr,
        metrics: Arc<Metrics>,
        verdicts: Option<VerdictSource>,
    ) -> Result<Self, MetricsError> {
        let listener = TcpListener::bind(addr).await.map_err(|source| MetricsError::Bind { addr, source })?;
        let local_addr = listener.local_addr().map_err(MetricsError::LocalAddr)?;
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, metrics, verdicts, stopped));
        tracing::info!("metrics on http://{local_addr}/metrics");
        Ok(Self { local_addr, stop, task: Some(task) })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stop accepting and wait for the accept loop to end (open connections finish on their own,
    /// within their timeout).
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Where `/verdict` asks for the report: a request carries the sender its JSON comes back on.
pub type VerdictSource = mpsc::Sender<oneshot::Sender<String>>;

/// How long `/verdict` waits for the daemon's loop.
const VERDICT_WAIT: Duration = Duration::from_secs(5);

async fn accept_loop(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    verdicts: Option<VerdictSource>,
    mut stopped: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopped.changed() => return,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("metrics endpoint: accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Over the cap the connection is closed at once: probes retry, and a flood of idle
        // clients cannot pile up tasks.
        let Ok(permit) = slots.clone().try_acquire_owned() else { continue };
        let metrics = metrics.clone();
        let verdicts = verdicts.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(IO_TIMEOUT, serve_one(stream, &metrics, verdicts.as_ref())).await;
        });
    }
}

struct Reply {
    status: &'static str,
    content_type: &'static str,
    body: String,
    allow: bool,
}

impl Reply {
    fn text(status: &'static str, body: &str) -> Self {
        Self { status, content_type: "text/plain; charset=utf-8", body: body.to_owned(), allow: false }
    }
}

async fn serve_one(mut stream: TcpStream, metrics: &Metrics, verdicts: Option<&VerdictSource>) {
    let mut buf = Vec::with_capacity(1024);
    let reply = loop {
        let mut chunk = [0u8; 1024];
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => match route(&req, metrics) {
                Route::Now(r) => break r,
                Route::Verdict => break verdict(verdicts).await,
            },
            Ok(httparse::Status::Partial) if buf.len() < MAX_REQUEST_HEAD => {}
            Ok(httparse::Status::Partial) => {
                break Reply::text("431 Request Header Fields Too Large", "request head too large\n");
            }
            Err(_) => break Reply::text("400 Bad Request", "bad request\n"),
        }
    };
    let head_only = buf.starts_with(b"HEAD ");
    let mut out = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        reply.status,
        reply.content_type,
        reply.body.len()
    );
    if reply.allow {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(&reply.body);
    }
    if stream.write_all(out.as_bytes()).await.is_err() {
        return;
    }
    // Lingering close: closing with unread request bytes would send an RST that can destroy the
    // reply before the client reads it, so read (bounded) until the client closes.
    if stream.shutdown().await.is_ok() {
        let mut sink = [0u8; 4096];
        for _ in 0..16 {
            match tokio::time::timeout(LINGER, stream.read(&mut sink)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => break,
            }
        }
    }
}

/// What a request needs: an answer now, or the daemon's report.
enum Route {
    Now(Reply),
    Verdict,
}

/// `/verdict`: the comparison report as JSON (what `shadowctl report --json` prints), 200 for
/// any verdict: a gate reads the verdict from the body.
async fn verdict(verdicts: Option<&VerdictSource>) -> Reply {
    let Some(v) = verdicts else {
        return Reply::text("404 Not Found", "not found\n");
    };
    let (tx, rx) = oneshot::channel();
    if v.send(tx).await.is_err() {
        return Reply::text("503 Service Unavailable", "the daemon is stopping\n");
    }
    match tokio::time::timeout(VERDICT_WAIT, rx).await {
        Ok(Ok(body)) => Reply { status: "200 OK", content_type: "application/json", body, allow: false },
        _ => Reply::text("503 Service Unavailable", "the daemon did not answer in time\n"),
    }
}

fn route(req: &httparse::Request<'_, '_>, metrics: &Metrics) -> Route {
    let path = req.path.unwrap_or("/");
    let path = path.split('?').next().unwrap_or(path);
    let known = matches!(path, "/metrics" | "/healthz" | "/readyz" | "/verdict");
    if !matches!(req.method, Some("GET" | "HEAD")) {
        if known {
            let mut r = Reply::text("405 Method Not Allowed", "method not allowed\n");
            r.allow = true;
            return Route::Now(r);
        }
        return Route::Now(Reply::text("404 Not Found", "not found\n"));
    }
    if path == "/verdict" {
        return Route::Verdict;
    }
    Route::Now(match path {
        "/metrics" => {
            // Scrapers that can read OpenMetrics say so; everything else gets the classic format.
            let accept_om = req.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("accept")
                    && String::from_utf8_lossy(h.value).contains("application/openmetrics-text")
            });
            let format = if accept_om { TextFormat::OpenMetrics } else { TextFormat::Prometheus };
            match metrics.encode(format) {
                Ok(body) => Reply { status: "200 OK", content_type: format.content_type(), body, allow: false },
                Err(e) => Reply::text("500 Internal Server Error", &format!("{e}\n")),
            }
        }
        "/healthz" => Reply::text("200 OK", "ok\n"),
        "/readyz" if metrics.is_ready() => Reply::text("200 OK", "ready\n"),
        "/readyz" => Reply::text("503 Service Unavailable", "not ready: capture is not attached\n"),
        _ => Reply::text("404 Not Found", "not found\n"),
    })
}
