//! `/metrics`, `/healthz`, `/readyz` and `/verdict` over hyper's HTTP/1.1 server, held small: one
//! request per connection, an 8 KiB head read within a few seconds, a few connections at a time.
//! It answers scrapers, probes and rollout gates, nothing else, and a misbehaving client can only
//! waste one of a few slots for a few seconds.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::TcpListener,
    sync::{Semaphore, mpsc, oneshot, watch},
    task::JoinHandle,
};

use super::{Exposition, Metrics, MetricsError};

/// hyper's smallest read buffer, and so the largest request head it takes (431 beyond).
const MAX_REQUEST_HEAD: usize = 8 * 1024;
const MAX_CONNECTIONS: usize = 16;
/// The whole exchange, head to last byte written; also the head's own read timeout.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

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
        let task = tokio::spawn(accept_loop(listener, Arc::new(Endpoints { metrics, verdicts }), stopped));
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
const VERDICT_WAIT: Duration = Duration::from_secs(4);

/// What the routes read.
struct Endpoints {
    metrics: Arc<Metrics>,
    verdicts: Option<VerdictSource>,
}

async fn accept_loop(listener: TcpListener, endpoints: Arc<Endpoints>, mut stopped: watch::Receiver<bool>) {
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
        let endpoints = endpoints.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req| {
                let endpoints = endpoints.clone();
                async move { Ok::<_, Infallible>(route(req, &endpoints).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(IO_TIMEOUT)
                .max_buf_size(MAX_REQUEST_HEAD)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(IO_TIMEOUT, conn).await;
        });
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    reply(status, "text/plain; charset=utf-8", body)
}

async fn route(req: Request<Incoming>, endpoints: &Endpoints) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let known = matches!(path, "/metrics" | "/healthz" | "/readyz" | "/verdict");
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        if !known {
            return text(StatusCode::NOT_FOUND, "not found\n");
        }
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    // HEAD: hyper sends the head of the GET answer (its Content-Length too) without the body.
    match path {
        "/metrics" => {
            let accept = req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok());
            let format = Exposition::negotiate(accept);
            match endpoints.metrics.encode_as(format) {
                Ok(body) => reply(StatusCode::OK, format.content_type(), body),
                Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8", format!("{e}\n")),
            }
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if endpoints.metrics.is_ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready: capture is not attached\n"),
        "/verdict" => verdict(endpoints.verdicts.as_ref()).await,
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `/verdict`: the comparison report as JSON (what `shadowctl report --json` prints), 200 for
/// any verdict: a gate reads the verdict from the body.
async fn verdict(verdicts: Option<&VerdictSource>) -> Response<Full<Bytes>> {
    let Some(v) = verdicts else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    let (tx, rx) = oneshot::channel();
    if v.send(tx).await.is_err() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "the daemon is stopping\n");
    }
    match tokio::time::timeout(VERDICT_WAIT, rx).await {
        Ok(Ok(body)) => reply(StatusCode::OK, "application/json", body),
        _ => text(StatusCode::SERVICE_UNAVAILABLE, "the daemon did not answer in time\n"),
    }
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
    };

    use super::*;

    /// One raw exchange: what the server wrote until it closed, head and body split.
    async fn exchange(addr: SocketAddr, request: &[u8]) -> (String, Vec<u8>) {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await.unwrap().unwrap();
        let split = out.windows(4).position(|w| w == b"\r\n\r\n").expect("a whole head") + 4;
        (String::from_utf8(out[..split].to_vec()).unwrap().to_ascii_lowercase(), out[split..].to_vec())
    }

    async fn server(verdicts: Option<VerdictSource>) -> (MetricsServer, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new(10));
        let s =
            MetricsServer::bind_with_verdict("127.0.0.1:0".parse().unwrap(), metrics.clone(), verdicts).await.unwrap();
        (s, metrics)
    }

    fn get(path: &str, accept: Option<&str>) -> Vec<u8> {
        let accept = accept.map(|a| format!("Accept: {a}\r\n")).unwrap_or_default();
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n{accept}\r\n").into_bytes()
    }

    #[tokio::test]
    async fn metrics_in_the_format_the_scraper_asks_for() {
        let (s, m) = server(None).await;
        m.admit().replayed();
        let (head, body) = exchange(s.local_addr(), &get("/metrics", None)).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(head.contains("content-type: text/plain; version=0.0.4"), "{head}");
        assert!(head.contains("connection: close"), "{head}");
        let body = String::from_utf8(body).unwrap();
        assert!(body.contains("# TYPE shadow_requests_replayed_total counter\nshadow_requests_replayed_total 1\n"));
        assert!(!body.contains("# EOF"));

        let (head, body) =
            exchange(s.local_addr(), &get("/metrics", Some("application/openmetrics-text;version=1.0.0"))).await;
        assert!(head.contains("content-type: application/openmetrics-text; version=1.0.0"), "{head}");
        assert!(String::from_utf8(body).unwrap().ends_with("# EOF\n"));

        // What Prometheus sends with native histograms on: protobuf preferred.
        let prom = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.6,\
                    application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        let (head, body) = exchange(s.local_addr(), &get("/metrics", Some(prom))).await;
        assert!(
            head.contains("content-type: application/vnd.google.protobuf; proto=io.prometheus.client.metricfamily")
        );
        assert_eq!(body, m.encode_as(Exposition::Protobuf).unwrap());

        // HEAD: the GET's head, no body.
        let (head, body) = exchange(s.local_addr(), b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(head.starts_with("http/1.1 200") && head.contains("content-length: "), "{head}");
        assert!(body.is_empty());
        s.shutdown().await;
    }

    #[tokio::test]
    async fn probes_methods_and_unknown_paths() {
        let (s, m) = server(None).await;
        let a = s.local_addr();
        assert!(exchange(a, &get("/healthz", None)).await.0.starts_with("http/1.1 200"));
        assert!(exchange(a, &get("/readyz", None)).await.0.starts_with("http/1.1 503"));
        m.set_ready(true);
        let (head, body) = exchange(a, &get("/readyz?verbose", None)).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert_eq!(body, b"ready\n");
        let (head, _) = exchange(a, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").await;
        assert!(head.starts_with("http/1.1 405") && head.contains("allow: get, head"), "{head}");
        assert!(
            exchange(a, b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
                .await
                .0
                .starts_with("http/1.1 404")
        );
        assert!(exchange(a, &get("/nothing", None)).await.0.starts_with("http/1.1 404"));
        // No verdict source: the route does not exist.
        assert!(exchange(a, &get("/verdict", None)).await.0.starts_with("http/1.1 404"));
        s.shutdown().await;
    }

    #[tokio::test]
    async fn a_head_over_the_cap_or_garbage_is_refused() {
        let (s, _) = server(None).await;
        let mut big = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: ".to_vec();
        big.resize(MAX_REQUEST_HEAD + 1024, b'a');
        big.extend_from_slice(b"\r\n\r\n");
        assert!(exchange(s.local_addr(), &big).await.0.starts_with("http/1.1 431"));
        assert!(exchange(s.local_addr(), b"\x16\x03\x01garbage\r\n\r\n").await.0.starts_with("http/1.1 400"));
        s.shutdown().await;
    }

    #[tokio::test]
    async fn verdict_asks_the_loop_and_says_when_it_does_not_answer() {
        let (tx, mut rx) = mpsc::channel::<oneshot::Sender<String>>(1);
        let (s, _) = server(Some(tx)).await;
        let answer = tokio::spawn(async move {
            let reply = rx.recv().await.unwrap();
            let _ = reply.send("{\"verdict\":\"PASS\"}".into());
            // The next ask is dropped unanswered.
            drop(rx.recv().await);
        });
        let (head, body) = exchange(s.local_addr(), &get("/verdict", None)).await;
        assert!(head.starts_with("http/1.1 200") && head.contains("application/json"), "{head}");
        assert_eq!(body, b"{\"verdict\":\"PASS\"}");
        assert!(exchange(s.local_addr(), &get("/verdict", None)).await.0.starts_with("http/1.1 503"));
        answer.await.unwrap();
        s.shutdown().await;
    }

    #[tokio::test]
    async fn connections_over_the_cap_are_closed_at_once() {
        let (s, _) = server(None).await;
        // Fill every slot with a client that never sends its head.
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(TcpStream::connect(s.local_addr()).await.unwrap());
        }
        // The accept loop takes them in order: one more is closed without an answer...
        let mut extra = TcpStream::connect(s.local_addr()).await.unwrap();
        extra.write_all(&get("/healthz", None)).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), extra.read_to_end(&mut out)).await.unwrap();
        assert!(out.is_empty(), "over the cap: closed, not answered");
        // ...and a slot freed is a slot served.
        drop(idle.pop());
        let addr = s.local_addr();
        let head = tokio::time::timeout(Duration::from_secs(10), async move {
            loop {
                let mut c = TcpStream::connect(addr).await.unwrap();
                c.write_all(&get("/healthz", None)).await.unwrap();
                let mut out = Vec::new();
                let _ = c.read_to_end(&mut out).await;
                if !out.is_empty() {
                    break String::from_utf8_lossy(&out).into_owned();
                }
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the freed slot serves within 10 s");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        s.shutdown().await;
    }
}
