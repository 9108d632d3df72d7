//! What one rule decides about the requests it replays: which are refused (method, path rules,
//! body size, rate), where they go and how they are edited. The parts live beside this file:
//! [`target`] (the shadow's address), [`headers`] (header edits), [`trace`] (the trace-context
//! settings), [`paths`] (allow/deny by path, on `http`'s patterns), [`rate`] (the per-rule rate, governor's GCRA).

mod headers;
mod paths;
mod rate;
mod target;
mod trace;

use std::time::Duration;

pub use self::{
    headers::{HeaderField, HeaderName, HostMode, is_token},
    rate::RateLimit,
    target::ShadowTarget,
    trace::{DEFAULT_SHADOW_BAGGAGE, ShadowBaggage, TraceMode, TraceSampled},
};
pub use crate::http::{PathPattern, normalize_path, request_path};
use crate::metrics::RequestDrop;

/// Methods replayed when nothing widens the list: the ones RFC 9110 defines as safe and that real
/// services treat as read-only. Anything that may change state needs an explicit opt-in.
pub const DEFAULT_METHODS: [&str; 3] = ["GET", "HEAD", "OPTIONS"];
pub const DEFAULT_TAG_HEADER: &str = "X-Shadow-Request: true";
pub const DEFAULT_MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Generous for a shadow in the same cluster while still failing fast when it is down; includes
/// name resolution.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_CONCURRENCY: usize = 64;
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;
/// Request bytes held per rule; with the body cap alone, a full queue of large bodies could hold
/// gigabytes.
pub const DEFAULT_QUEUE_BYTES: u64 = 64 * 1024 * 1024;
pub const DEFAULT_POOL_SIZE: usize = 64;
/// Shadow response bodies read before the connection is closed, unless the comparison keeps more
/// (the larger of the two applies): enough for any API response worth comparing, and a bound on
/// what a shadow streaming forever costs per request.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 1024 * 1024;
/// Default requests written together on one connection (the `pipeline` control): one, so the
/// shadow sees the traffic's shape (one request at a time per connection, as the primary's
/// clients sent them) and every response is timed alone. Pipelining merges requests of different
/// client connections into bursts the primary never saw, which moves the shadow's latency; it is
/// an opt-in for mirroring where only throughput matters (see [`super::pipeline`]).
pub const DEFAULT_PIPELINE: usize = 1;
/// The depth the bench and the pipeline tests use when they turn pipelining on.
pub const OPT_IN_PIPELINE: usize = 16;

/// Upper bounds that keep a typo from turning into a resource problem.
pub const MAX_CONCURRENCY: usize = 10_000;
pub const MAX_QUEUE_CAPACITY: usize = 1_000_000;
pub const MAX_BODY_BYTES_LIMIT: u64 = 1024 * 1024 * 1024;
/// Most requests written together on one connection.
pub const MAX_PIPELINE: usize = 64;

/// Methods replayed: exact, case-sensitive comparison, as methods are in HTTP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MethodAllowlist(Vec<String>);

impl MethodAllowlist {
    /// The safe default plus `extra` (already-validated tokens, upper-cased by the parser).
    pub fn with_extra(extra: &[String]) -> Self {
        let mut v: Vec<String> = DEFAULT_METHODS.iter().map(|m| (*m).to_owned()).collect();
        for m in extra {
            if !v.contains(m) {
                v.push(m.clone());
            }
        }
        Self(v)
    }

    /// A configured method: a token, upper-cased because every registered method is upper case
    /// and `post` in a config file can only mean POST.
    pub fn parse_method(s: &str) -> Result<String, String> {
        let t = s.trim();
        if !is_token(t.as_bytes()) {
            return Err(format!("'{s}' is not an HTTP method"));
        }
        Ok(t.to_ascii_uppercase())
    }

    pub fn allows(&self, method: &[u8]) -> bool {
        self.0.iter().any(|m| m.as_bytes() == method)
    }

    pub fn methods(&self) -> &[String] {
        &self.0
    }
}

impl Default for MethodAllowlist {
    fn default() -> Self {
        Self::with_extra(&[])
    }
}

/// Everything one rule decides about the requests it replays. `Default` is the safe setting.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplayControls {
    pub methods: MethodAllowlist,
    /// Marks every replayed request so the shadow (and its logs) can tell it from real traffic;
    /// replaces a header of the same name the client sent.
    pub tag_header: HeaderField,
    pub host: HostMode,
    pub remove_headers: Vec<HeaderName>,
    /// Set (replacing any header of that name) on every replayed request.
    pub set_headers: Vec<HeaderField>,
    /// Whether replayed requests get a fresh trace context (`isolate`) or keep the production
    /// one (see `replay::trace`).
    pub trace: TraceMode,
    /// The sampling decision a restarted trace context carries.
    pub trace_sampled: TraceSampled,
    /// The baggage member marking shadow traffic downstream (in both trace modes).
    pub shadow_baggage: ShadowBaggage,
    /// Empty: every path is allowed (subject to `deny_paths`).
    pub allow_paths: Vec<PathPattern>,
    /// Checked before `allow_paths`: deny wins.
    pub deny_paths: Vec<PathPattern>,
    /// Requests per second sent to the shadow; `None`: no limit.
    pub replay_rate: Option<f64>,
    /// Largest body (bytes on the wire after the head, chunk framing included) that is replayed.
    pub max_body_bytes: u64,
    /// From the first request byte written to the last response byte read.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Requests being replayed at once, and so also connections open to the shadow.
    pub concurrency: usize,
    /// Requests waiting for a replay slot; beyond it they are dropped (`queue_full`).
    pub queue_capacity: usize,
    /// Request bytes held (queued and being replayed); beyond it requests are dropped
    /// (`queue_full`), so memory is bounded in bytes as well as in requests.
    pub queue_bytes: u64,
    /// Idle keep-alive connections kept for reuse.
    pub pool_size: usize,
    /// Most requests written together on one connection when they wait together (HTTP/1.1
    /// pipelining of idempotent requests, see `replay::pipeline`); 1: one request per write.
    pub pipeline: usize,
    /// Shadow response body bytes read (on the wire after the head, chunk framing included);
    /// past them the connection is closed (`shadow_response_too_large`). `None`: the default,
    /// see [`response_cap`](Self::response_cap).
    pub max_response_bytes: Option<u64>,
}

impl Default for ReplayControls {
    fn default() -> Self {
        Self {
            methods: MethodAllowlist::default(),
            tag_header: HeaderField::parse(DEFAULT_TAG_HEADER).unwrap_or_else(|_| unreachable!("constant is valid")),
            host: HostMode::Keep,
            remove_headers: Vec::new(),
            set_headers: Vec::new(),
            trace: TraceMode::default(),
            trace_sampled: TraceSampled::default(),
            shadow_baggage: ShadowBaggage::default(),
            allow_paths: Vec::new(),
            deny_paths: Vec::new(),
            replay_rate: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            concurrency: DEFAULT_CONCURRENCY,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            pool_size: DEFAULT_POOL_SIZE,
            pipeline: DEFAULT_PIPELINE,
            max_response_bytes: None,
        }
    }
}

impl ReplayControls {
    /// The response body cap: as configured, else [`DEFAULT_MAX_RESPONSE_BYTES`] or the body the
    /// comparison keeps (`kept`), whichever is larger.
    pub fn response_cap(&self, kept: Option<usize>) -> u64 {
        self.max_response_bytes
            .unwrap_or_else(|| DEFAULT_MAX_RESPONSE_BYTES.max(kept.map_or(0, |k| u64::try_from(k).unwrap_or(u64::MAX))))
    }

    /// The drop reason for a request these controls refuse, checked cheapest first; the rate
    /// limit comes last so that refused requests do not spend tokens.
    pub(crate) fn refuse(&self, method: &[u8], target: &[u8], body_len: usize) -> Option<RequestDrop> {
        if !self.methods.allows(method) {
            return Some(RequestDrop::MethodNotAllowed);
        }
        if let Some(r) = paths::refuse(&self.allow_paths, &self.deny_paths, target) {
            return Some(r);
        }
        if body_len as u64 > self.max_body_bytes {
            return Some(RequestDrop::BodyTooLarge);
        }
        None
    }
}

#[cfg(test)]
mod tests_edges;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_allowlist_is_safe_by_default_and_exact() {
        let m = MethodAllowlist::default();
        for ok in [&b"GET"[..], b"HEAD", b"OPTIONS"] {
            assert!(m.allows(ok));
        }
        for no in [&b"POST"[..], b"get", b"DELETE", b"", b"GETX"] {
            assert!(!m.allows(no));
        }
        let w = MethodAllowlist::with_extra(&[MethodAllowlist::parse_method("post").unwrap()]);
        assert!(w.allows(b"POST") && w.allows(b"GET") && !w.allows(b"PUT"));
        assert!(MethodAllowlist::parse_method("GE T").is_err());
    }

    #[test]
    fn response_cap_defaults_to_the_larger_of_a_mebibyte_and_the_kept_body() {
        let c = ReplayControls::default();
        assert_eq!(c.response_cap(None), DEFAULT_MAX_RESPONSE_BYTES);
        assert_eq!(c.response_cap(Some(4096)), DEFAULT_MAX_RESPONSE_BYTES);
        assert_eq!(c.response_cap(Some(8 << 20)), 8 << 20);
        let set = ReplayControls { max_response_bytes: Some(1000), ..Default::default() };
        assert_eq!(set.response_cap(Some(8 << 20)), 1000, "a configured cap is the cap");
    }

    #[test]
    fn refuse_checks_method_then_path_then_body() {
        let c = ReplayControls {
            deny_paths: vec![PathPattern::parse("/admin").unwrap()],
            allow_paths: vec![PathPattern::parse("/api/").unwrap(), PathPattern::parse("/admin").unwrap()],
            max_body_bytes: 4,
            ..Default::default()
        };
        let refuse =
            |method: &[u8], target: &[u8], body_len| c.refuse(method, target, body_len).map(RequestDrop::as_str);
        assert_eq!(refuse(b"POST", b"/api/x", 0), Some("method_not_allowed"));
        assert_eq!(refuse(b"GET", b"/admin/x", 0), Some("path_denied"));
        assert_eq!(refuse(b"GET", b"/api/../admin", 0), Some("path_denied"));
        assert_eq!(refuse(b"GET", b"/other", 0), Some("path_not_allowed"));
        assert_eq!(refuse(b"GET", b"/api/x", 5), Some("body_too_large"));
        assert_eq!(refuse(b"GET", b"/api/x?q=/admin", 4), None);
    }
}
