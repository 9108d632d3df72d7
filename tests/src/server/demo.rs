//! The demo's sample service (`shadow-testserver --mode demo --version v1|v2`): v1 plays the
//! primary, v2 the shadow with four injected changes, three of them regressions compare must
//! catch and one it must not flag.
//!
//!   GET /api/users/{id}    same in v1 and v2                                  PASS
//!   GET /api/search?q=..   same body; v2 takes 10x longer (20 ms vs 2 ms)     FAIL p99_ratio
//!   GET /api/orders/{id}   v2 writes the currency in lower case               FAIL body_match
//!   GET /api/pay/{id}      v2 answers 500 when id % 5 == 0                    FAIL shadow_5xx
//!   GET /api/time          differs on every response, but only in `timestamp` and `request_id`,
//!                          fields compare ignores by default                  PASS
//!
//! Everything else is deterministic.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    /// `--version v1|v2`.
    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "v1" => Ok(Self::V1),
            "v2" => Ok(Self::V2),
            other => Err(format!("{other}: expected v1 or v2")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
        }
    }
}

/// What the service answers to one request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) body: String,
    /// How long the service "works" before answering.
    pub(crate) delay: Duration,
}

/// Values that change on every response: only ever written to fields compare ignores.
pub(crate) struct Volatile {
    timestamp_ms: u128,
    request_id: String,
}

pub(crate) fn volatile(n: u64) -> Volatile {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    // Unique per response and unpredictable enough to differ between v1 and v2.
    let mixed = (now.as_nanos() as u64 ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    Volatile { timestamp_ms: now.as_millis(), request_id: format!("req-{mixed:016x}") }
}

pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        _ => "Unknown",
    }
}

const NAMES: [&str; 8] = ["ada", "grace", "alan", "edsger", "barbara", "donald", "frances", "ken"];

/// The whole behaviour of both versions: a pure function of the request (and, for /api/time,
/// of the volatile values). With an `instance` name (`--instance NAME`), users answers carry
/// `"served_by":"NAME"`, a field that differs between two instances of the same version and that
/// compare does not ignore by default (noise learning).
pub(crate) fn respond(version: Version, instance: Option<&str>, method: &str, target: &str, v: &Volatile) -> Response {
    let ok = |body: String| Response { status: 200, body, delay: Duration::ZERO };
    let not_found = || Response { status: 404, body: r#"{"error":"not found"}"#.into(), delay: Duration::ZERO };
    if method != "GET" && method != "HEAD" {
        return Response { status: 405, body: r#"{"error":"method not allowed"}"#.into(), delay: Duration::ZERO };
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let id = |prefix: &str| path.strip_prefix(prefix).and_then(|s| s.parse::<u64>().ok());
    if let Some(id) = id("/api/users/") {
        let name = NAMES[(id % NAMES.len() as u64) as usize];
        let served_by = instance.map(|i| format!(r#","served_by":"{i}""#)).unwrap_or_default();
        return ok(format!(r#"{{"id":{id},"name":"{name}","email":"{name}{id}@example.com"{served_by}}}"#));
    }
    if path == "/api/search" {
        let q = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("q="))
            .unwrap_or("")
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(64)
            .collect::<String>();
        let hits: Vec<String> =
            (0..q.len() % 4 + 1).map(|i| format!(r#"{{"rank":{},"title":"{q} result {}"}}"#, i + 1, i + 1)).collect();
        let delay = match version {
            Version::V1 => Duration::from_millis(2),
            Version::V2 => Duration::from_millis(20),
        };
        return Response { status: 200, body: format!(r#"{{"q":"{q}","hits":[{}]}}"#, hits.join(",")), delay };
    }
    if let Some(id) = id("/api/orders/") {
        let currency = match version {
            Version::V1 => "EUR",
            Version::V2 => "eur",
        };
        let total = (id % 97 + 1) * 125;
        return ok(format!(
            r#"{{"id":{id},"items":{},"total_cents":{total},"currency":"{currency}","status":"shipped"}}"#,
            id % 5 + 1
        ));
    }
    if let Some(id) = id("/api/pay/") {
        if version == Version::V2 && id % 5 == 0 {
            return Response {
                status: 500,
                body: r#"{"error":"payment backend unavailable"}"#.into(),
                delay: Duration::ZERO,
            };
        }
        return ok(format!(r#"{{"id":{id},"paid":true,"amount_cents":{}}}"#, (id % 50 + 1) * 100));
    }
    if path == "/api/time" {
        return ok(format!(r#"{{"timestamp":{},"request_id":"{}","status":"ok"}}"#, v.timestamp_ms, v.request_id));
    }
    not_found()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol(n: u64) -> Volatile {
        Volatile { timestamp_ms: 1_700_000_000_000 + u128::from(n), request_id: format!("req-{n}") }
    }

    fn both(target: &str) -> (Response, Response) {
        (respond(Version::V1, None, "GET", target, &vol(1)), respond(Version::V2, None, "GET", target, &vol(2)))
    }

    fn json(r: &Response) -> serde_json::Value {
        serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{}: {e}", r.body))
    }

    #[test]
    fn users_are_identical() {
        for id in [0, 1, 7, 123_456] {
            let (a, b) = both(&format!("/api/users/{id}"));
            assert_eq!(a, b);
            assert_eq!(a.status, 200);
            assert_eq!(json(&a)["id"], id);
        }
    }

    #[test]
    fn search_is_the_same_body_ten_times_slower() {
        let (a, b) = both("/api/search?q=shoes&page=2");
        assert_eq!((a.status, &a.body), (b.status, &b.body));
        assert_eq!(json(&a)["q"], "shoes");
        assert_eq!(b.delay, a.delay * 10);
        assert!(!a.delay.is_zero());
        let (a, _) = both("/api/search?q=%22%3Cx%3E");
        assert_eq!(json(&a)["q"], "223Cx3E", "only alphanumerics reach the JSON");
    }

    #[test]
    fn orders_differ_in_one_field() {
        let (a, b) = both("/api/orders/42");
        let (mut ja, mut jb) = (json(&a), json(&b));
        assert_eq!((ja["currency"].take(), jb["currency"].take()), ("EUR".into(), "eur".into()));
        assert_eq!(ja, jb, "nothing else differs");
    }

    #[test]
    fn pay_fails_in_v2_for_one_id_in_five() {
        let mut failed = 0;
        for id in 0..100u64 {
            let (a, b) = both(&format!("/api/pay/{id}"));
            assert_eq!(a.status, 200);
            if id % 5 == 0 {
                assert_eq!(b.status, 500);
                failed += 1;
            } else {
                assert_eq!(a, b);
            }
        }
        assert_eq!(failed, 20);
    }

    #[test]
    fn time_differs_only_in_fields_compare_ignores() {
        let (a, b) = both("/api/time");
        assert_ne!(a.body, b.body);
        let ignored = shadow_daemon::compare::settings::DEFAULT_IGNORE_FIELDS;
        let (mut ja, mut jb) = (json(&a), json(&b));
        for k in ["timestamp", "request_id"] {
            assert!(ignored.contains(&k), "{k} is not in compare's default ignore list {ignored:?}");
            assert_ne!(ja[k], jb[k]);
            ja[k].take();
            jb[k].take();
        }
        assert_eq!(ja, jb);
        let (x, y) = (volatile(1), volatile(2));
        assert_ne!(x.request_id, y.request_id, "request ids are unique per response");
    }

    #[test]
    fn bad_input_is_answered_the_same_by_both() {
        for t in ["/", "/api/users/x", "/api/users/", "/api/orders/-1", "/api/pay/1/2", "/nope?q", "\u{0}"] {
            let (a, b) = both(t);
            assert_eq!(a, b, "{t:?}");
            assert_eq!(a.status, 404, "{t:?}");
        }
        let r = respond(Version::V2, None, "POST", "/api/pay/5", &vol(0));
        assert_eq!(r.status, 405);
    }
}
