//! Safety controls of one replay rule: which requests may reach the shadow, how their headers are
//! edited on the way, and how fast. Parsers here are shared by the command line and the TOML file,
//! so a value means the same wherever it is written.

use std::{fmt, time::Duration};

use tokio::time::Instant;

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

/// Upper bounds that keep a typo from turning into a resource problem.
pub const MAX_CONCURRENCY: usize = 10_000;
pub const MAX_QUEUE_CAPACITY: usize = 1_000_000;
pub const MAX_BODY_BYTES_LIMIT: u64 = 1024 * 1024 * 1024;
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// A shadow service address, `HOST:PORT`. The host may be a name: it is resolved at every new
/// connection, so a shadow that does not resolve yet at start-up is only a counted error.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ShadowTarget {
    /// Host name or IP literal, IPv6 without brackets.
    pub host: String,
    pub port: u16,
}

impl ShadowTarget {
    /// `host:port` as a Host header / authority (IPv6 in brackets).
    pub fn authority(&self) -> String {
        self.to_string()
    }

    fn is_ipv6(&self) -> bool {
        self.host.contains(':')
    }
}

impl fmt::Display for ShadowTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_ipv6() {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl std::str::FromStr for ShadowTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("'{s}' is not HOST:PORT");
        let t = s.trim();
        let (host, port) = t.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        if port == 0 {
            return Err(format!("'{s}': port 0 is not a service port"));
        }
        let host = if let Some(inner) = host.strip_prefix('[') {
            let inner = inner.strip_suffix(']').ok_or_else(bad)?;
            inner.parse::<std::net::Ipv6Addr>().map_err(|_| format!("'{s}': '{inner}' is not an IPv6 address"))?;
            inner
        } else {
            if host.contains(':') {
                return Err(format!("'{s}' is not HOST:PORT (write an IPv6 address in brackets: [::1]:8080)"));
            }
            if !is_host_name(host) {
                return Err(format!("'{s}': '{host}' is not a host name or IP address"));
            }
            host
        };
        Ok(Self { host: host.to_owned(), port })
    }
}

/// Letters, digits, '-', '_' and '.', 1..=253 bytes, no empty label: loose enough for every DNS
/// name in use (including underscores some internal zones have), strict enough to refuse
/// whitespace, URLs and paths.
fn is_host_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| !l.is_empty() && l.len() <= 63)
        && h.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// RFC 9110 `token`: what a method or header name may be made of.
pub fn is_token(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter().all(|&b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// A header name as configured (a token), compared case-insensitively as HTTP requires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderName(String);

impl HeaderName {
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if !is_token(t.as_bytes()) {
            return Err(format!("'{s}' is not a header name"));
        }
        Ok(Self(t.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, wire_name: &[u8]) -> bool {
        wire_name.eq_ignore_ascii_case(self.0.as_bytes())
    }
}

impl fmt::Display for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `Name: value`, for headers that are set on every replayed request. The value may be a secret
/// (a shadow-only credential), so `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct HeaderField {
    pub name: HeaderName,
    pub value: String,
}

impl HeaderField {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (name, value) = s.split_once(':').ok_or_else(|| "expected 'Name: value'".to_owned())?;
        let name = HeaderName::parse(name).map_err(|e| format!("{e} (expected 'Name: value')"))?;
        let value = value.trim_matches([' ', '\t']);
        // Field values may carry any visible byte, space and tab; CR, LF and the other controls
        // would let a value inject header lines into the replayed request.
        if let Some(c) = value.bytes().find(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(format!("header {name}: the value contains the control byte 0x{c:02x}"));
        }
        Ok(Self { name, value: value.to_owned() })
    }
}

impl fmt::Debug for HeaderField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: <{} bytes>", self.name, self.value.len())
    }
}

/// What the replayed request's Host header says.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum HostMode {
    /// The original Host, so a shadow behind the same virtual-host routing behaves as the primary.
    #[default]
    Keep,
    /// The shadow target's HOST:PORT (added if the request had none).
    Target,
    /// The original host name with this suffix appended before any `:port`
    /// (`api.example:8080` → `api.example-shadow:8080`). IP literals and absent Host headers are
    /// left as they are: a suffix would only make them invalid.
    Suffix(String),
}

impl std::str::FromStr for HostMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "keep" => Ok(Self::Keep),
            "target" => Ok(Self::Target),
            t => match t.strip_prefix("suffix:") {
                Some(sfx)
                    if !sfx.is_empty()
                        && sfx.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) =>
                {
                    Ok(Self::Suffix(sfx.to_owned()))
                }
                Some(_) => Err(format!("'{s}': the suffix must be letters, digits, '-', '_' or '.'")),
                None => Err(format!("'{s}' is not keep, target or suffix:SUFFIX")),
            },
        }
    }
}

/// A path filter. Without `*` it is a prefix of the path; with `*` it is a glob over the whole
/// path, where `*` matches within one segment (no '/') and `**` matches across segments.
/// Either way the query string is not part of the path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathPattern {
    source: String,
    kind: PatternKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum PatternKind {
    Prefix,
    Glob(Vec<GlobToken>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum GlobToken {
    Literal(Vec<u8>),
    /// `*`: any run of bytes without '/'.
    Segment,
    /// `**`: any run of bytes.
    Any,
}

impl PathPattern {
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if !t.starts_with('/') {
            return Err(format!("'{s}' is not a path pattern (it must start with '/')"));
        }
        if t.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'?') {
            return Err(format!("'{s}': a path pattern has no spaces, controls or query string"));
        }
        if !t.contains('*') {
            return Ok(Self { source: t.to_owned(), kind: PatternKind::Prefix });
        }
        let mut tokens = Vec::new();
        let mut lit = Vec::new();
        let b = t.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'*' {
                if !lit.is_empty() {
                    tokens.push(GlobToken::Literal(std::mem::take(&mut lit)));
                }
                let double = b.get(i + 1) == Some(&b'*');
                if double && b.get(i + 2) == Some(&b'*') {
                    return Err(format!("'{s}': use * (one segment) or ** (any depth), not ***"));
                }
                tokens.push(if double { GlobToken::Any } else { GlobToken::Segment });
                i += if double { 2 } else { 1 };
            } else {
                lit.push(b[i]);
                i += 1;
            }
        }
        if !lit.is_empty() {
            tokens.push(GlobToken::Literal(lit));
        }
        Ok(Self { source: t.to_owned(), kind: PatternKind::Glob(tokens) })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// `path` is a normalized path (see [`normalize_path`]).
    pub fn matches(&self, path: &[u8]) -> bool {
        match &self.kind {
            PatternKind::Prefix => path.starts_with(self.source.as_bytes()),
            PatternKind::Glob(tokens) => glob_match(tokens, path),
        }
    }
}

/// Set-of-positions matching: linear in the path per token, so no pattern can make matching
/// exponential, whatever the number of stars.
fn glob_match(tokens: &[GlobToken], path: &[u8]) -> bool {
    let n = path.len();
    let mut reach = vec![false; n + 1];
    reach[0] = true;
    let mut next = vec![false; n + 1];
    for tok in tokens {
        next.iter_mut().for_each(|r| *r = false);
        match tok {
            GlobToken::Literal(lit) => {
                for i in 0..=n {
                    if reach[i] && path.get(i..i + lit.len()) == Some(lit.as_slice()) {
                        next[i + lit.len()] = true;
                    }
                }
            }
            GlobToken::Any => {
                let mut on = false;
                for i in 0..=n {
                    on |= reach[i];
                    next[i] = on;
                }
            }
            GlobToken::Segment => {
                let mut on = false;
                for i in 0..=n {
                    on |= reach[i];
                    next[i] = on;
                    if path.get(i) == Some(&b'/') {
                        on = false;
                    }
                }
            }
        }
        std::mem::swap(&mut reach, &mut next);
    }
    reach[n]
}

/// The path of a request target as the filters see it: the query and fragment cut off, the
/// path of an absolute-form target, percent-encoded unreserved characters decoded, `//` merged
/// and `.`/`..` segments resolved. Without this, `/%61dmin` or `/x/../admin` would slip past a
/// deny rule for `/admin` while the primary serves them as `/admin`.
pub fn normalize_path(target: &[u8]) -> Vec<u8> {
    let path = request_path(target);
    let mut decoded = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        if path[i] == b'%'
            && let (Some(h), Some(l)) =
                (path.get(i + 1).and_then(|&c| hex_val(c)), path.get(i + 2).and_then(|&c| hex_val(c)))
        {
            let c = (h << 4) | l;
            if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                decoded.push(c);
                i += 3;
                continue;
            }
        }
        decoded.push(path[i]);
        i += 1;
    }
    let mut segments: Vec<&[u8]> = Vec::new();
    for seg in decoded.split(|&b| b == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let trailing =
        decoded.len() > 1 && (decoded.ends_with(b"/") || decoded.ends_with(b"/.") || decoded.ends_with(b"/.."));
    let mut out = Vec::with_capacity(decoded.len() + 1);
    for s in &segments {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    if out.is_empty() || trailing {
        out.push(b'/');
    }
    out
}

fn hex_val(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// The path component of a request target (origin-form or absolute-form), without query or
/// fragment. `*` and authority-form targets are returned as they are.
pub fn request_path(target: &[u8]) -> &[u8] {
    let end = target.iter().position(|&b| b == b'?' || b == b'#').unwrap_or(target.len());
    let t = &target[..end];
    if t.first() == Some(&b'/') {
        return t;
    }
    if let Some(scheme_end) = t.windows(3).position(|w| w == b"://") {
        let rest = &t[scheme_end + 3..];
        return match rest.iter().position(|&b| b == b'/') {
            Some(p) => &rest[p..],
            None => b"/",
        };
    }
    t
}

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
}

impl Default for ReplayControls {
    fn default() -> Self {
        Self {
            methods: MethodAllowlist::default(),
            tag_header: HeaderField::parse(DEFAULT_TAG_HEADER).unwrap_or_else(|_| unreachable!("constant is valid")),
            host: HostMode::Keep,
            remove_headers: Vec::new(),
            set_headers: Vec::new(),
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
        }
    }
}

impl ReplayControls {
    /// The drop reason for a request these controls refuse, checked cheapest first; the rate
    /// limit comes last so that refused requests do not spend tokens.
    pub(crate) fn refuse(&self, method: &[u8], target: &[u8], body_len: usize) -> Option<&'static str> {
        if !self.methods.allows(method) {
            return Some(crate::metrics::reason::METHOD_NOT_ALLOWED);
        }
        if !self.deny_paths.is_empty() || !self.allow_paths.is_empty() {
            let path = normalize_path(target);
            if self.deny_paths.iter().any(|p| p.matches(&path)) {
                return Some(crate::metrics::reason::PATH_DENIED);
            }
            if !self.allow_paths.is_empty() && !self.allow_paths.iter().any(|p| p.matches(&path)) {
                return Some(crate::metrics::reason::PATH_NOT_ALLOWED);
            }
        }
        if body_len as u64 > self.max_body_bytes {
            return Some(crate::metrics::reason::BODY_TOO_LARGE);
        }
        None
    }
}

/// Parse a request rate: positive requests per second.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("'{s}' is not a number of requests per second"))?;
    if !v.is_finite() || v <= 0.0 || v > 10_000_000.0 {
        return Err(format!("{v} is not a rate between 0 (exclusive) and 10000000 requests/s (omit it for no limit)"));
    }
    Ok(v)
}

/// Parse a duration: seconds (`5`, `0.25`, `5s`) or milliseconds (`250ms`), above 0 and at most an
/// hour.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else {
        (t, 1.0)
    };
    let v: f64 = num.trim().parse().map_err(|_| format!("'{s}' is not a duration (e.g. 5, 0.5s, 250ms)"))?;
    let secs = v * scale;
    if !secs.is_finite() || secs <= 0.0 || secs > MAX_TIMEOUT.as_secs_f64() {
        return Err(format!("'{s}' is not a duration above 0 and at most {}s", MAX_TIMEOUT.as_secs()));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parse a byte count: a plain number or with a binary suffix (`KiB`, `MiB`, `GiB`), at most 1 GiB.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let (num, mult) =
        [("gib", 1u64 << 30), ("mib", 1 << 20), ("kib", 1 << 10), ("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10)]
            .iter()
            .find_map(|(sfx, m)| lower.strip_suffix(sfx).map(|n| (n.trim().to_owned(), *m)))
            .unwrap_or((lower.clone(), 1));
    let v: u64 = num.parse().map_err(|_| format!("'{s}' is not a byte count (e.g. 1048576, 512KiB, 10MiB)"))?;
    let v =
        v.checked_mul(mult).filter(|v| *v <= MAX_BODY_BYTES_LIMIT).ok_or_else(|| format!("'{s}' is more than 1GiB"))?;
    Ok(v)
}

/// Parse a count between `min` and `max` inclusive.
pub fn parse_count(s: &str, min: usize, max: usize) -> Result<usize, String> {
    let v: usize = s.trim().parse().map_err(|_| format!("'{s}' is not a whole number"))?;
    if !(min..=max).contains(&v) {
        return Err(format!("{v} is not between {min} and {max}"));
    }
    Ok(v)
}

/// Requests-per-second cap. The burst is one second's worth (at least one request), so a steady
/// rate below the cap is never limited and a spike is cut to the configured rate within a second.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, now: Instant) -> Self {
        let burst = rate.max(1.0);
        Self { rate, burst, tokens: burst, last: now }
    }

    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_target_parses_names_ipv4_and_bracketed_ipv6() {
        assert_eq!(
            "shadow.svc:8080".parse::<ShadowTarget>(),
            Ok(ShadowTarget { host: "shadow.svc".into(), port: 8080 })
        );
        assert_eq!("127.0.0.1:9".parse::<ShadowTarget>().map(|t| t.to_string()), Ok("127.0.0.1:9".into()));
        let v6: ShadowTarget = "[::1]:8080".parse().unwrap();
        assert_eq!(v6.host, "::1");
        assert_eq!(v6.authority(), "[::1]:8080");
        for bad in
            ["x", "x:", ":80", "x:0", "x:65536", "::1:80", "[::1:80", "[zz]:80", "http://x:80", "a b:80", "a..b:1"]
        {
            assert!(bad.parse::<ShadowTarget>().is_err(), "{bad} accepted");
        }
        assert!("x".parse::<ShadowTarget>().unwrap_err().contains("'x' is not HOST:PORT"));
    }

    #[test]
    fn header_field_refuses_injection_and_hides_its_value() {
        let h = HeaderField::parse("X-Token:  s3cret \t").unwrap();
        assert_eq!(h.name.as_str(), "X-Token");
        assert_eq!(h.value, "s3cret");
        assert!(!format!("{h:?}").contains("s3cret"));
        assert!(HeaderField::parse("X-A: b\r\nEvil: 1").is_err());
        assert!(HeaderField::parse("X A: b").is_err());
        assert!(HeaderField::parse("no colon").is_err());
        assert_eq!(HeaderField::parse("X-Empty:").unwrap().value, "");
    }

    #[test]
    fn host_mode_parses() {
        assert_eq!("keep".parse(), Ok(HostMode::Keep));
        assert_eq!("target".parse(), Ok(HostMode::Target));
        assert_eq!("suffix:-shadow".parse(), Ok(HostMode::Suffix("-shadow".into())));
        assert!("suffix:".parse::<HostMode>().is_err());
        assert!("suffix:a b".parse::<HostMode>().is_err());
        assert!("other".parse::<HostMode>().is_err());
    }

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
    fn prefix_and_glob_patterns() {
        let p = PathPattern::parse("/api/").unwrap();
        assert!(p.matches(b"/api/users") && p.matches(b"/api/") && !p.matches(b"/apix") && !p.matches(b"/api"));
        let g = PathPattern::parse("/users/*/orders").unwrap();
        assert!(g.matches(b"/users/42/orders"));
        assert!(!g.matches(b"/users/42/x/orders"));
        assert!(!g.matches(b"/users/42/orders/1"));
        let gg = PathPattern::parse("/static/**").unwrap();
        assert!(gg.matches(b"/static/a/b/c.js") && gg.matches(b"/static/") && !gg.matches(b"/statics"));
        let mid = PathPattern::parse("/**/admin*").unwrap();
        assert!(mid.matches(b"/x/y/admin") && mid.matches(b"/x/administrator") && !mid.matches(b"/x/admin/y"));
        let many = PathPattern::parse("/*a*a*a*a*a*a*a*a*b").unwrap();
        let long = format!("/{}", "a".repeat(5000));
        assert!(!many.matches(long.as_bytes()), "must not match, and must finish quickly");
        assert!(PathPattern::parse("api").is_err());
        assert!(PathPattern::parse("/a?b=1").is_err());
        assert!(PathPattern::parse("/a/***").is_err());
    }

    #[test]
    fn paths_are_normalized_before_filtering() {
        assert_eq!(normalize_path(b"/a/b?x=1#f"), b"/a/b");
        assert_eq!(normalize_path(b"/%61dmin"), b"/admin");
        assert_eq!(normalize_path(b"/x/../admin/"), b"/admin/");
        assert_eq!(normalize_path(b"//admin"), b"/admin");
        assert_eq!(normalize_path(b"/a/./b/."), b"/a/b/");
        assert_eq!(normalize_path(b"/../../"), b"/");
        assert_eq!(normalize_path(b"/a%2Fb"), b"/a%2Fb", "an encoded slash is not a separator");
        assert_eq!(normalize_path(b"http://h:1/p/q?z"), b"/p/q");
        assert_eq!(normalize_path(b"http://h:1"), b"/");
        assert_eq!(normalize_path(b""), b"/");
    }

    #[test]
    fn refuse_checks_method_then_path_then_body() {
        let c = ReplayControls {
            deny_paths: vec![PathPattern::parse("/admin").unwrap()],
            allow_paths: vec![PathPattern::parse("/api/").unwrap(), PathPattern::parse("/admin").unwrap()],
            max_body_bytes: 4,
            ..Default::default()
        };
        assert_eq!(c.refuse(b"POST", b"/api/x", 0), Some("method_not_allowed"));
        assert_eq!(c.refuse(b"GET", b"/admin/x", 0), Some("path_denied"));
        assert_eq!(c.refuse(b"GET", b"/api/../admin", 0), Some("path_denied"));
        assert_eq!(c.refuse(b"GET", b"/other", 0), Some("path_not_allowed"));
        assert_eq!(c.refuse(b"GET", b"/api/x", 5), Some("body_too_large"));
        assert_eq!(c.refuse(b"GET", b"/api/x?q=/admin", 4), None);
    }

    #[test]
    fn token_bucket_caps_the_rate_and_refills() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, t0);
        let first: usize = (0..100).filter(|_| b.try_take(t0)).count();
        assert_eq!(first, 10, "burst is one second's worth");
        assert!(!b.try_take(t0 + Duration::from_millis(50)));
        assert!(b.try_take(t0 + Duration::from_millis(100)));
        // Over 10 simulated seconds at 1000 attempts/s, about rate*10 pass (plus nothing left over).
        let mut b = TokenBucket::new(10.0, t0);
        let passed = (0..10_000).filter(|i| b.try_take(t0 + Duration::from_millis(*i))).count();
        assert!((100..=110).contains(&passed), "{passed}");
        // Below one request per second still lets one through, then waits.
        let mut b = TokenBucket::new(0.5, t0);
        assert!(b.try_take(t0));
        assert!(!b.try_take(t0 + Duration::from_secs(1)));
        assert!(b.try_take(t0 + Duration::from_secs(2)));
        // A clock that goes backwards never mints tokens.
        let mut b = TokenBucket::new(1.0, t0 + Duration::from_secs(5));
        assert!(b.try_take(t0 + Duration::from_secs(5)));
        assert!(!b.try_take(t0));
    }

    #[test]
    fn value_parsers() {
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("0.5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["0", "-1", "x", "4000", "nan"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_bytes("10MiB"), Ok(10 << 20));
        assert_eq!(parse_bytes("512 KiB"), Ok(512 << 10));
        assert_eq!(parse_bytes("0"), Ok(0));
        assert!(parse_bytes("2GiB").is_err() && parse_bytes("x").is_err() && parse_bytes("-1").is_err());
        assert_eq!(parse_rate("2.5"), Ok(2.5));
        assert!(parse_rate("0").is_err() && parse_rate("inf").is_err());
        assert_eq!(parse_count("3", 1, 5), Ok(3));
        assert!(parse_count("0", 1, 5).is_err());
    }
}
