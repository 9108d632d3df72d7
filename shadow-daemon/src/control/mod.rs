//! The control API: a Unix socket the daemon serves and `shadowctl` speaks to.
//!
//! Protocol, version 1: JSON lines. The client writes one request object per line and reads one
//! response object per line; a connection may carry several requests in turn. A line is at most
//! [`MAX_LINE`] bytes and must arrive within [`READ_TIMEOUT`]. Requests:
//!
//! ```text
//! {"v":1,"cmd":"status"}                   {"v":1,"cmd":"stats"}
//! {"v":1,"cmd":"rate","percent":10}        {"v":1,"cmd":"rate","percent":10,"rule":"api"}
//! {"v":1,"cmd":"pause"} / {"v":1,"cmd":"pause","rule":"api"}   (resume likewise)
//! {"v":1,"cmd":"reload"}                   {"v":1,"cmd":"report"}
//! {"v":1,"cmd":"diffs","endpoint":"GET /api/users/:id"}
//! {"v":1,"cmd":"reset"} / {"v":1,"cmd":"reset","rule":"api"}
//! ```
//!
//! Responses: `{"v":1,"ok":true,"data":...}` or `{"v":1,"ok":false,"error":{"kind":...,"message":...}}`.
//! Anything else on the socket (not JSON, unknown command, wrong version, too long, too slow)
//! gets an error response, never a crash; the server counts it.

pub mod client;
pub mod server;

use serde::{Deserialize, Serialize};

pub use crate::label::ControlErrorKind as ErrorKind;

/// Protocol version spoken by this build.
pub const VERSION: u32 = 1;
/// Longest request or response line accepted by the server (requests) and the client (responses
/// may be larger: a report with many endpoints).
pub const MAX_LINE: usize = 64 * 1024;
/// Longest response line the client reads.
pub const MAX_RESPONSE_LINE: usize = 16 * 1024 * 1024;
/// How long the server waits for a request line before answering `timeout` and closing.
pub const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Connections served at once; more are answered `busy` and closed.
pub const MAX_CONNECTIONS: usize = 16;

/// A command, as `shadowctl` sends it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    Status,
    /// Set the sampling rate of one rule, or of every rule.
    Rate {
        percent: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rule: Option<String>,
    },
    Pause {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rule: Option<String>,
    },
    Resume {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rule: Option<String>,
    },
    Stats,
    Reload,
    Report,
    Diffs {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        endpoint: Option<String>,
    },
    /// Start a new comparison epoch of one rule, or of every comparing rule.
    Reset {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rule: Option<String>,
    },
    /// What the fenced shadows tried to reach.
    Egress {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rule: Option<String>,
    },
    /// Take a rule's fence down until the next reload or restart.
    EgressDetach {
        rule: String,
    },
    /// The ramps (of one rule, or all), and an operator's action on them.
    Ramp {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rule: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        action: Option<crate::ramp::RampAction>,
    },
}

impl Command {
    /// The fields a request of this command may carry besides `v` and `cmd`.
    pub fn fields(&self) -> &'static [&'static str] {
        match self {
            Self::Rate { .. } => &["percent", "rule"],
            Self::Pause { .. } | Self::Resume { .. } | Self::Reset { .. } | Self::Egress { .. } => &["rule"],
            Self::EgressDetach { .. } => &["rule"],
            Self::Ramp { .. } => &["rule", "action"],
            Self::Diffs { .. } => &["endpoint"],
            Self::Status | Self::Stats | Self::Reload | Self::Report => &[],
        }
    }

    /// Stable label (metrics, logs).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Rate { .. } => "rate",
            Self::Pause { .. } => "pause",
            Self::Resume { .. } => "resume",
            Self::Stats => "stats",
            Self::Reload => "reload",
            Self::Report => "report",
            Self::Diffs { .. } => "diffs",
            Self::Reset { .. } => "reset",
            Self::Egress { .. } => "egress",
            Self::EgressDetach { .. } => "egress_detach",
            Self::Ramp { .. } => "ramp",
        }
    }
}

/// A request line: the version beside the command.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub v: u32,
    #[serde(flatten)]
    pub command: Command,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub kind: ErrorKind,
    pub message: String,
}

impl ErrorBody {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }
}

/// A response line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub v: u32,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

impl Response {
    pub fn ok(data: serde_json::Value) -> Self {
        Self { v: VERSION, ok: true, data: Some(data), error: None }
    }

    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { v: VERSION, ok: false, data: None, error: Some(ErrorBody::new(kind, message)) }
    }
}

/// Parse one request line; every failure is an error response to send back.
pub fn parse_request(line: &[u8]) -> Result<Request, Response> {
    let v: serde_json::Value = serde_json::from_slice(line)
        .map_err(|e| Response::error(ErrorKind::BadRequest, format!("not a JSON object: {e}")))?;
    let serde_json::Value::Object(mut fields) = v else {
        return Err(Response::error(ErrorKind::BadRequest, "not a JSON object"));
    };
    match fields.remove("v").as_ref().and_then(serde_json::Value::as_u64) {
        Some(n) if n == u64::from(VERSION) => {}
        Some(n) => {
            return Err(Response::error(
                ErrorKind::Version,
                format!("protocol version {n}; this daemon speaks {VERSION}"),
            ));
        }
        None => return Err(Response::error(ErrorKind::BadRequest, "missing protocol version \"v\"")),
    }
    // The command alone, so that its own field checks (deny_unknown_fields) see every field.
    let keys: Vec<String> = fields.keys().cloned().collect();
    let command: Command = serde_json::from_value(serde_json::Value::Object(fields))
        .map_err(|e| Response::error(ErrorKind::BadRequest, e.to_string()))?;
    // serde lets internally tagged unit variants ignore extra fields: check them here.
    if let Some(k) = keys.iter().find(|k| *k != "cmd" && !command.fields().contains(&k.as_str())) {
        return Err(Response::error(ErrorKind::BadRequest, format!("unknown field `{k}` for {}", command.as_str())));
    }
    Ok(Request { v: VERSION, command })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_read_as_documented() {
        for (line, cmd) in [
            (r#"{"v":1,"cmd":"status"}"#, Command::Status),
            (r#"{"v":1,"cmd":"rate","percent":10}"#, Command::Rate { percent: 10.0, rule: None }),
            (
                r#"{"v":1,"cmd":"rate","percent":2.5,"rule":"api"}"#,
                Command::Rate { percent: 2.5, rule: Some("api".into()) },
            ),
            (r#"{"v":1,"cmd":"pause"}"#, Command::Pause { rule: None }),
            (r#"{"v":1,"cmd":"resume","rule":"web"}"#, Command::Resume { rule: Some("web".into()) }),
            (r#"{"v":1,"cmd":"stats"}"#, Command::Stats),
            (r#"{"v":1,"cmd":"reload"}"#, Command::Reload),
            (r#"{"v":1,"cmd":"report"}"#, Command::Report),
            (r#"{"v":1,"cmd":"diffs","endpoint":"GET /x"}"#, Command::Diffs { endpoint: Some("GET /x".into()) }),
            (r#"{"v":1,"cmd":"reset"}"#, Command::Reset { rule: None }),
            (r#"{"v":1,"cmd":"reset","rule":"api"}"#, Command::Reset { rule: Some("api".into()) }),
        ] {
            let r = parse_request(line.as_bytes()).unwrap_or_else(|e| panic!("{line}: {e:?}"));
            assert_eq!(r.command, cmd);
            let back = serde_json::to_vec(&r).expect("serialise");
            assert_eq!(parse_request(&back).expect("reparse"), r);
        }
    }

    #[test]
    fn garbage_gets_a_named_error() {
        let kind = |line: &[u8]| parse_request(line).expect_err("must fail").error.expect("error body").kind;
        assert_eq!(kind(b"hello"), ErrorKind::BadRequest);
        assert_eq!(kind(b"\xff\xfe"), ErrorKind::BadRequest);
        assert_eq!(kind(br#"{"cmd":"status"}"#), ErrorKind::BadRequest);
        assert_eq!(kind(br#"{"v":2,"cmd":"status"}"#), ErrorKind::Version);
        assert_eq!(kind(br#"{"v":1,"cmd":"format_disk"}"#), ErrorKind::BadRequest);
        assert_eq!(kind(br#"{"v":1,"cmd":"rate"}"#), ErrorKind::BadRequest);
        assert_eq!(kind(br#"{"v":1,"cmd":"rate","percent":"x"}"#), ErrorKind::BadRequest);
        assert_eq!(kind(br#"{"v":1,"cmd":"status","extra":1}"#), ErrorKind::BadRequest);
        assert_eq!(kind(b"[1,2,3]"), ErrorKind::BadRequest);
        assert_eq!(kind(br#"{"v":1,"cmd":"reset","endpoint":"GET /x"}"#), ErrorKind::BadRequest);
        assert_eq!(kind(br#"{"v":1,"cmd":"reset","rule":7}"#), ErrorKind::BadRequest);
    }

    #[test]
    fn error_kinds_have_distinct_labels() {
        let mut labels: Vec<&str> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), ErrorKind::ALL.len());
        for k in ErrorKind::ALL {
            assert_eq!(serde_json::to_value(k).expect("ser"), serde_json::Value::String(k.as_str().into()));
        }
    }
}

/// `status`, and the answer to `rate`, `pause`, `resume` and `reload` (the state after them).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub uptime_secs: f64,
    pub hook: String,
    /// What the daemon was told to attach to (names and globs).
    pub interfaces: Vec<String>,
    /// What it is attached to now, e.g. `tc ingress on eth0`.
    pub attached: Vec<String>,
    pub ring_buffer_bytes: u64,
    pub rules: Vec<RuleStatus>,
    /// Key counters: requests captured/replayed/dropped/in flight, kernel drops, ...
    pub counters: std::collections::BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RuleStatus {
    pub name: String,
    /// Services the rule covers: `8080`, `10.42.0.0/16:8080`, ...
    pub matches: Vec<String>,
    pub shadow: Option<String>,
    /// The rate set for the rule (kept while paused).
    pub sample_percent: f64,
    /// The rate the kernel applies now, read back from its map (0 while paused).
    pub kernel_percent: f64,
    pub paused: bool,
    /// The rule's ramp, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ramp: Option<crate::ramp::RampStatus>,
}
