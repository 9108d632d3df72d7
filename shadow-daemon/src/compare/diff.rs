//! What differs between two normalised responses: a bounded list of differing JSON paths (with
//! both values, cut), the templates of all of them (up to a cap) for noise and signatures, the
//! configured headers, and the readable rendering `shadowctl diffs` prints, with sensitive header
//! values redacted before they are ever stored.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    Outcome,
    normalize::{Body, LengthOnlyReason, canonical, sorted},
    path::{self, Step},
    settings::ALWAYS_REDACTED_HEADERS,
};
use crate::trace_link::TraceIds;

/// Distinct path templates one comparison collects; past this the difference is "incomplete"
/// and no amount of learned noise can excuse it.
pub(crate) const MAX_TEMPLATES: usize = 64;
/// Characters of a value shown in a diff.
const MAX_VALUE_CHARS: usize = 120;
/// Path template of a whole body that differs as bytes (or JSON against non-JSON).
pub(crate) const WHOLE_BODY: &str = "$";
/// Prefix of a header's template (`header:content-type`), never a JSON path.
pub(crate) const HEADER_PREFIX: &str = "header:";

/// One differing JSON node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PathDiff {
    pub path: String,
    pub primary: String,
    pub shadow: String,
}

/// One differing compared header; values already redacted where sensitive.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeaderDiff {
    pub name: String,
    pub primary: Option<String>,
    pub shadow: Option<String>,
}

/// How two bodies compare.
#[derive(Debug, PartialEq)]
pub(crate) enum BodyComparison {
    Equal,
    Differ(BodyDiff),
    /// At least one side could only be compared by length; `equal` is whether the lengths are.
    LengthOnly {
        reason: LengthOnlyReason,
        equal: bool,
    },
}

#[derive(Debug, Default, PartialEq)]
pub(crate) struct BodyDiff {
    /// The first differences, at most the `shown` cap given.
    pub shown: Vec<PathDiff>,
    /// Differing nodes found in all (more than `shown` when it is capped).
    pub total: u64,
    /// Distinct templates of every difference, while `complete`.
    pub templates: Vec<String>,
    /// False when the templates reached [`MAX_TEMPLATES`] before the walk ended.
    pub complete: bool,
}

pub(crate) fn compare_bodies(p: &Body, s: &Body, p_len: u64, s_len: u64, shown: usize) -> BodyComparison {
    match (p, s) {
        (Body::LengthOnly(reason), _) | (_, Body::LengthOnly(reason)) => {
            BodyComparison::LengthOnly { reason: *reason, equal: p_len == s_len }
        }
        (Body::Json(a), Body::Json(b)) => {
            if a == b {
                return BodyComparison::Equal;
            }
            let mut c = Collector { diff: BodyDiff { complete: true, ..BodyDiff::default() }, shown_cap: shown };
            let mut at = Vec::new();
            walk(a, b, &mut at, &mut c);
            BodyComparison::Differ(c.diff)
        }
        (Body::Bytes(a), Body::Bytes(b)) if a == b => BodyComparison::Equal,
        _ => {
            let diff = PathDiff { path: WHOLE_BODY.into(), primary: describe(p), shadow: describe(s) };
            BodyComparison::Differ(BodyDiff {
                shown: if shown > 0 { vec![diff] } else { Vec::new() },
                total: 1,
                templates: vec![WHOLE_BODY.into()],
                complete: true,
            })
        }
    }
}

struct Collector {
    diff: BodyDiff,
    shown_cap: usize,
}

impl Collector {
    /// Whether the walk can stop: nothing more could be recorded.
    fn full(&self) -> bool {
        !self.diff.complete
    }

    fn record(&mut self, at: &[Step<'_>], p: Option<&Value>, s: Option<&Value>) {
        self.diff.total += 1;
        if self.diff.shown.len() < self.shown_cap {
            self.diff.shown.push(PathDiff { path: path::render(at, false), primary: preview(p), shadow: preview(s) });
        }
        let t = path::render(at, true);
        if !self.diff.templates.contains(&t) {
            if self.diff.templates.len() >= MAX_TEMPLATES {
                self.diff.complete = false;
            } else {
                self.diff.templates.push(t);
            }
        }
    }
}

fn walk<'a>(p: &'a Value, s: &'a Value, at: &mut Vec<Step<'a>>, c: &mut Collector) {
    if c.full() {
        return;
    }
    match (p, s) {
        (Value::Object(a), Value::Object(b)) => {
            let (ka, kb) = (sorted(a), sorted(b));
            let (mut i, mut j) = (0, 0);
            // Both sides' keys merged in order; the walk ends at `(None, None)` below.
            while !c.full() {
                let next_a = ka.get(i).map(|x| x.0);
                let next_b = kb.get(j).map(|x| x.0);
                match (next_a, next_b) {
                    (Some(x), Some(y)) if x == y => {
                        at.push(Step::Key(x));
                        walk(ka[i].1, kb[j].1, at, c);
                        at.pop();
                        i += 1;
                        j += 1;
                    }
                    (Some(x), y) if y.is_none_or(|y| x < y) => {
                        at.push(Step::Key(x));
                        c.record(at, Some(ka[i].1), None);
                        at.pop();
                        i += 1;
                    }
                    (_, Some(y)) => {
                        at.push(Step::Key(y));
                        c.record(at, None, Some(kb[j].1));
                        at.pop();
                        j += 1;
                    }
                    (_, None) => break,
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                if c.full() {
                    return;
                }
                at.push(Step::Index(i));
                walk(x, y, at, c);
                at.pop();
            }
            // Extra elements all share one template: a few are shown, the rest counted.
            let (longer, p_side) = if a.len() > b.len() { (a, true) } else { (b, false) };
            let common = a.len().min(b.len());
            for (i, v) in longer.iter().enumerate().skip(common) {
                if c.diff.shown.len() >= c.shown_cap && i > common {
                    c.diff.total += (longer.len() - i) as u64;
                    break;
                }
                at.push(Step::Index(i));
                if p_side {
                    c.record(at, Some(v), None)
                } else {
                    c.record(at, None, Some(v))
                }
                at.pop();
            }
        }
        (x, y) if x == y => {}
        (x, y) => c.record(at, Some(x), Some(y)),
    }
}

fn preview(v: Option<&Value>) -> String {
    match v {
        None => "(absent)".into(),
        Some(v) => cut(&canonical(v), MAX_VALUE_CHARS),
    }
}

fn describe(b: &Body) -> String {
    match b {
        Body::Json(v) => format!("JSON {}", cut(&canonical(v), MAX_VALUE_CHARS)),
        Body::Bytes(bytes) => {
            format!("{} bytes: {}", bytes.len(), cut(&String::from_utf8_lossy(bytes), MAX_VALUE_CHARS))
        }
        Body::LengthOnly(r) => format!("({})", r.as_str()),
    }
}

/// At most `max` characters, with `…` when cut.
pub(crate) fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_owned(),
        Some((i, _)) => format!("{}…", &s[..i]),
    }
}

/// The values of header `name` (lower case), joined as a list, trimmed.
fn header_value(headers: &[(String, Vec<u8>)], name: &str) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    for (n, v) in headers {
        if n.eq_ignore_ascii_case(name) {
            let v = v.trim_ascii();
            match &mut out {
                None => out = Some(v.to_vec()),
                Some(o) => {
                    o.extend_from_slice(b", ");
                    o.extend_from_slice(v);
                }
            }
        }
    }
    out
}

/// The compared headers that differ, values redacted where sensitive.
pub(crate) fn compare_headers(
    p: &[(String, Vec<u8>)],
    s: &[(String, Vec<u8>)],
    names: &[String],
    redact: &[String],
) -> Vec<HeaderDiff> {
    names
        .iter()
        .filter_map(|name| {
            let (a, b) = (header_value(p, name), header_value(s, name));
            (a != b).then(|| HeaderDiff {
                name: name.clone(),
                primary: a.map(|v| shown_value(name, &v, redact)),
                shadow: b.map(|v| shown_value(name, &v, redact)),
            })
        })
        .collect()
}

pub(crate) fn is_sensitive(name: &str, redact: &[String]) -> bool {
    ALWAYS_REDACTED_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name))
        || redact.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// A header value as a diff may show it.
pub(crate) fn shown_value(name: &str, value: &[u8], redact: &[String]) -> String {
    if is_sensitive(name, redact) {
        format!("<redacted, {} bytes>", value.len())
    } else {
        cut(&String::from_utf8_lossy(value), MAX_VALUE_CHARS)
    }
}

/// Whether a shadow response has a latency of its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Timing {
    #[default]
    Timed,
    Untimed,
    NoResponse,
}

impl Timing {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timed => "timed",
            Self::Untimed => "untimed",
            Self::NoResponse => "no response",
        }
    }
}

/// A kept mismatching pair, as `shadowctl diffs` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MismatchSample {
    pub endpoint: String,
    /// The endpoint's pair number (1 = its first compared pair).
    pub seq: u64,
    pub outcome: Outcome,
    pub primary_status: u16,
    pub shadow_status: u16,
    /// None when not measured; never 0 for "not measured".
    pub primary_latency_ms: Option<f64>,
    /// None when not measured: see `shadow_timing` for why.
    pub shadow_latency_ms: Option<f64>,
    /// Whether the shadow's response was timed (`timed`), read behind another of a pipeline
    /// without a time of its own (`untimed`), or never came (`no_response`).
    #[serde(default)]
    pub shadow_timing: Timing,
    pub headers: Vec<HeaderDiff>,
    pub body: Vec<PathDiff>,
    /// Differing JSON nodes in all; more than `body` lists when the list is capped.
    pub body_differences: u64,
    /// Templates of the differing paths and headers (what noise learning speaks of).
    pub paths: Vec<String>,
    /// False when more paths differed than `paths` could hold (noise can then never excuse it).
    pub paths_complete: bool,
    /// Set when the bodies could only be compared by length.
    pub note: Option<String>,
    /// Normalised bodies, cut to the configured size.
    pub primary_body: String,
    pub shadow_body: String,
    /// The production trace of the request and the shadow's new one (its trace context was
    /// restarted), to open side by side in a tracing UI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceIds>,
}

impl MismatchSample {
    /// A readable diff: statuses, then each differing header and path with `-` primary and
    /// `+` shadow lines, then both normalised bodies.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "=== {} (pair #{}): {}", self.endpoint, self.seq, self.outcome.as_str());
        let mark = if self.primary_status == self.shadow_status { "" } else { "   <- differs" };
        let _ = writeln!(o, "  status: primary {} shadow {}{mark}", self.primary_status, self.shadow_status);
        let shown =
            |ms: Option<f64>, untimed: Timing| ms.map_or_else(|| untimed.as_str().to_owned(), |v| format!("{v:.3} ms"));
        let shadow_untimed = if self.shadow_timing == Timing::Timed { Timing::Untimed } else { self.shadow_timing };
        let _ = writeln!(
            o,
            "  latency: primary {} shadow {}",
            shown(self.primary_latency_ms, Timing::Untimed),
            shown(self.shadow_latency_ms, shadow_untimed)
        );
        if let Some(t) = &self.trace {
            let _ = writeln!(o, "  trace ({}): production {} shadow {}", t.format, t.production, t.shadow);
        }
        if let Some(n) = &self.note {
            let _ = writeln!(o, "  note: {n}");
        }
        let absent = |v: &Option<String>| v.clone().unwrap_or_else(|| "(absent)".into());
        for h in &self.headers {
            let _ = writeln!(o, "  header {}\n    - {}\n    + {}", h.name, absent(&h.primary), absent(&h.shadow));
        }
        for d in &self.body {
            let _ = writeln!(o, "  {}\n    - {}\n    + {}", d.path, d.primary, d.shadow);
        }
        let more = self.body_differences.saturating_sub(self.body.len() as u64);
        if more > 0 {
            let _ = writeln!(o, "  ... and {more} more differing nodes");
        }
        let _ = writeln!(o, "  primary body: {}", self.primary_body);
        let _ = writeln!(o, "  shadow body:  {}", self.shadow_body);
        o
    }
}

/// A normalised body as a sample keeps it.
pub(crate) fn body_text(b: &Body, max: usize) -> String {
    match b {
        Body::Json(v) => cut(&canonical(v), max),
        Body::Bytes(bytes) => cut(&String::from_utf8_lossy(&bytes[..bytes.len().min(max.saturating_mul(4))]), max),
        Body::LengthOnly(r) => format!("(not kept: {})", r.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn j(s: &str) -> Body {
        Body::Json(serde_json::from_str(s).expect("json"))
    }

    fn differ(a: &str, b: &str) -> BodyDiff {
        match compare_bodies(&j(a), &j(b), 0, 0, 16) {
            BodyComparison::Differ(d) => d,
            other => panic!("expected a difference, got {other:?}"),
        }
    }

    #[test]
    fn json_diff_lists_paths_with_both_values() {
        let d = differ(
            r#"{"user":{"email":"a@x","tags":[1,2]},"gone":1}"#,
            r#"{"user":{"email":"b@x","tags":[1,3,4]},"new":true}"#,
        );
        let shown: Vec<(&str, &str, &str)> =
            d.shown.iter().map(|x| (x.path.as_str(), x.primary.as_str(), x.shadow.as_str())).collect();
        assert_eq!(
            shown,
            [
                ("$.gone", "1", "(absent)"),
                ("$.new", "(absent)", "true"),
                ("$.user.email", "\"a@x\"", "\"b@x\""),
                ("$.user.tags[1]", "2", "3"),
                ("$.user.tags[2]", "(absent)", "4"),
            ]
        );
        assert_eq!(d.templates, ["$.gone", "$.new", "$.user.email", "$.user.tags[*]"]);
        assert!(d.complete);
        assert_eq!(compare_bodies(&j(r#"{"a":[1]}"#), &j(r#"{"a":[1]}"#), 0, 0, 16), BodyComparison::Equal);
    }

    #[test]
    fn diff_is_bounded() {
        let a: Value = (0..10_000).map(|i| (format!("k{i}"), Value::from(i))).collect::<serde_json::Map<_, _>>().into();
        let b: Value =
            (0..10_000).map(|i| (format!("k{i}"), Value::from(-i))).collect::<serde_json::Map<_, _>>().into();
        let BodyComparison::Differ(d) = compare_bodies(&Body::Json(a), &Body::Json(b), 0, 0, 16) else {
            panic!("differ")
        };
        assert_eq!(d.shown.len(), 16);
        assert_eq!(d.templates.len(), MAX_TEMPLATES);
        assert!(!d.complete, "more distinct paths than kept: the difference is marked incomplete");
        let long = differ(&format!("[\"{}\"]", "x".repeat(10_000)), "[\"y\"]");
        assert!(long.shown[0].primary.chars().count() <= MAX_VALUE_CHARS + 1);
        let extra = differ("[]", &format!("[{}]", vec!["1"; 100_000].join(",")));
        assert_eq!(extra.total, 100_000);
        assert_eq!(extra.templates, ["$[*]"]);
        assert_eq!(extra.shown.len(), 16);
    }

    /// The walk stops once the templates are full: what it counted until then, and the
    /// extra elements of an array are counted past the shown cap, their template kept.
    #[test]
    fn counts_when_capped() {
        let a: Value =
            (0..1000).map(|i| (format!("k{i:04}"), Value::from(i))).collect::<serde_json::Map<_, _>>().into();
        let b: Value =
            (0..1000).map(|i| (format!("k{i:04}"), Value::from(-i - 1))).collect::<serde_json::Map<_, _>>().into();
        let BodyComparison::Differ(d) = compare_bodies(&Body::Json(a), &Body::Json(b), 0, 0, 4) else {
            panic!("differ")
        };
        assert_eq!(
            (d.total, d.shown.len(), d.templates.len(), d.complete),
            (MAX_TEMPLATES as u64 + 1, 4, MAX_TEMPLATES, false)
        );
        let BodyComparison::Differ(d) = compare_bodies(&j(r#"{"a":1,"b":[1]}"#), &j(r#"{"a":2,"b":[1,2,3]}"#), 0, 0, 1)
        else {
            panic!("differ")
        };
        assert_eq!(d.total, 3);
        assert_eq!(d.shown.iter().map(|x| x.path.as_str()).collect::<Vec<_>>(), ["$.a"]);
        assert_eq!(d.templates, ["$.a", "$.b[*]"]);
        let d = differ("[1,2,3]", "[1]");
        assert_eq!(
            d.shown.iter().map(|x| (x.path.as_str(), x.shadow.as_str())).collect::<Vec<_>>(),
            [("$[1]", "(absent)"), ("$[2]", "(absent)")]
        );
    }

    /// Members on one side only are merged in key order, trailing ones too, and the walk stops
    /// recording once the templates are full.
    #[test]
    fn members_on_one_side_only() {
        let d = differ(r#"{"a":1,"m":1,"y":1,"z":1}"#, r#"{"b":1,"m":1}"#);
        let shown: Vec<(&str, &str, &str)> =
            d.shown.iter().map(|x| (x.path.as_str(), x.primary.as_str(), x.shadow.as_str())).collect();
        assert_eq!(
            shown,
            [("$.a", "1", "(absent)"), ("$.b", "(absent)", "1"), ("$.y", "1", "(absent)"), ("$.z", "1", "(absent)")]
        );
        let d = differ(r#"{"m":1}"#, r#"{"a":1,"m":1,"n":2,"o":3}"#);
        assert_eq!(d.templates, ["$.a", "$.n", "$.o"]);
        let a: Value = (0..100).map(|i| (format!("k{i:03}"), Value::from(i))).collect::<serde_json::Map<_, _>>().into();
        let BodyComparison::Differ(d) = compare_bodies(&Body::Json(a), &j("{}"), 0, 0, 4) else { panic!("differ") };
        assert_eq!((d.total, d.complete), (MAX_TEMPLATES as u64 + 1, false), "no record past the full templates");
    }

    /// What a whole-body difference shows of each side, and the cut of long values.
    #[test]
    fn whole_body_differences_say_what_each_side_was() {
        let html = Body::Bytes(Bytes::from_static(b"<p>\xff</p>"));
        let BodyComparison::Differ(d) = compare_bodies(&j(r#"{"b":1,"a":[true]}"#), &html, 2, 8, 4) else {
            panic!("differ")
        };
        assert_eq!(
            d.shown,
            [PathDiff {
                path: "$".into(),
                primary: r#"JSON {"a":[true],"b":1}"#.into(),
                shadow: "8 bytes: <p>\u{fffd}</p>".into()
            }]
        );
        assert_eq!((d.total, d.complete), (1, true));
        let BodyComparison::Differ(d) = compare_bodies(&j("{}"), &html, 2, 8, 0) else { panic!("differ") };
        assert!(d.shown.is_empty(), "nothing shown when 0 may be");
        assert_eq!(d.total, 1);
        assert_eq!(describe(&Body::LengthOnly(LengthOnlyReason::Truncated)), "(truncated)");
        assert_eq!(
            (cut("abc", 3), cut("abcd", 3), cut("ééé", 2)),
            ("abc".to_owned(), "abc…".to_owned(), "éé…".to_owned())
        );
        assert_eq!(body_text(&j(r#"{"b":1,"a":2}"#), 5), "{\"a\":…");
        assert_eq!(body_text(&Body::Bytes(Bytes::from_static("héllo world".as_bytes())), 3), "hél…");
        assert_eq!(body_text(&Body::LengthOnly(LengthOnlyReason::OverCap), 3), "(not kept: over_cap)");
    }

    /// A header sent several times is compared as its values joined, each trimmed.
    #[test]
    fn repeated_headers_are_joined() {
        let h =
            |v: &[(&str, &str)]| v.iter().map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec())).collect::<Vec<_>>();
        let p = h(&[("Vary", " a "), ("X", "1"), ("vary", "b")]);
        let names = ["vary".to_owned()];
        assert!(compare_headers(&p, &h(&[("VARY", "a, b")]), &names, &[]).is_empty());
        let d = compare_headers(&p, &h(&[("vary", "a")]), &names, &[]);
        assert_eq!(d, [HeaderDiff { name: "vary".into(), primary: Some("a, b".into()), shadow: Some("a".into()) }]);
        let long = "v".repeat(200);
        let d = compare_headers(&h(&[("vary", &long)]), &[], &names, &[]);
        assert_eq!(d[0].primary.as_deref().map(|v| v.chars().count()), Some(MAX_VALUE_CHARS + 1));
    }

    #[test]
    fn bytes_and_mixed_bodies_differ_as_a_whole() {
        let a = Body::Bytes(Bytes::from_static(b"<html>a</html>"));
        let b = Body::Bytes(Bytes::from_static(b"<html>b</html>"));
        assert_eq!(compare_bodies(&a, &a.clone(), 14, 14, 4), BodyComparison::Equal);
        let BodyComparison::Differ(d) = compare_bodies(&a, &b, 14, 14, 4) else { panic!("differ") };
        assert_eq!(d.templates, [WHOLE_BODY]);
        let BodyComparison::Differ(d) = compare_bodies(&j("{}"), &a, 2, 14, 4) else { panic!("differ") };
        assert_eq!(d.templates, [WHOLE_BODY]);
        let lo = Body::LengthOnly(LengthOnlyReason::OverCap);
        assert_eq!(
            compare_bodies(&lo, &a, 14, 14, 4),
            BodyComparison::LengthOnly { reason: LengthOnlyReason::OverCap, equal: true }
        );
        assert_eq!(
            compare_bodies(&a, &lo, 14, 15, 4),
            BodyComparison::LengthOnly { reason: LengthOnlyReason::OverCap, equal: false }
        );
    }

    #[test]
    fn headers_compare_configured_names_only_and_redact() {
        let h =
            |v: &[(&str, &str)]| v.iter().map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec())).collect::<Vec<_>>();
        let p = h(&[("Content-Type", "application/json"), ("Date", "x"), ("Set-Cookie", "s=1"), ("X-Key", "k1")]);
        let s = h(&[("content-type", " application/json "), ("Date", "y"), ("Set-Cookie", "s=2"), ("X-Key", "k2")]);
        let names = ["content-type", "set-cookie", "x-key", "vary"].map(String::from);
        let d = compare_headers(&p, &s, &names, &["X-KEY".to_owned()]);
        assert_eq!(d.len(), 2, "equal after trimming, Date not configured, Vary absent on both: {d:?}");
        assert_eq!(d[0].name, "set-cookie");
        assert_eq!(d[0].primary.as_deref(), Some("<redacted, 3 bytes>"));
        assert_eq!(d[1].shadow.as_deref(), Some("<redacted, 2 bytes>"));
        let d = compare_headers(&p, &h(&[]), &["content-type".to_owned()], &[]);
        assert_eq!(d[0].primary.as_deref(), Some("application/json"));
        assert_eq!(d[0].shadow, None);
        assert!(is_sensitive("Authorization", &[]) && is_sensitive("proxy-authorization", &[]));
        assert!(!is_sensitive("content-type", &[]));
    }

    #[test]
    fn render_marks_both_sides() {
        let m = MismatchSample {
            endpoint: "GET /u/:id".into(),
            seq: 7,
            outcome: Outcome::BodyMismatch,
            primary_status: 200,
            shadow_status: 500,
            primary_latency_ms: Some(1.5),
            shadow_latency_ms: Some(2.0),
            shadow_timing: Timing::Timed,
            headers: vec![HeaderDiff {
                name: "cookie".into(),
                primary: Some("<redacted, 3 bytes>".into()),
                shadow: None,
            }],
            body: vec![PathDiff { path: "$.a".into(), primary: "1".into(), shadow: "2".into() }],
            body_differences: 3,
            paths: vec!["$.a".into()],
            paths_complete: true,
            note: None,
            primary_body: "{\"a\":1}".into(),
            shadow_body: "{\"a\":2}".into(),
            trace: None,
        };
        let r = m.render();
        assert_eq!(
            r,
            "=== GET /u/:id (pair #7): body_mismatch\n  status: primary 200 shadow 500   <- differs\n  latency: primary \
             1.500 ms shadow 2.000 ms\n  header cookie\n    - <redacted, 3 bytes>\n    + (absent)\n  $.a\n    - 1\n    + \
             2\n  ... and 2 more differing nodes\n  primary body: {\"a\":1}\n  shadow body:  {\"a\":2}\n"
        );
        let same = MismatchSample {
            shadow_status: 200,
            note: Some("why".into()),
            body_differences: 1,
            headers: Vec::new(),
            ..m.clone()
        };
        let r2 = same.render();
        // A restarted trace context: both ids, before the note.
        let traced = MismatchSample {
            trace: Some(TraceIds {
                format: crate::label::TraceFormat::TraceParent,
                production: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                shadow: "0af7651916cd43dd8448eb211c80319c".into(),
            }),
            ..same.clone()
        };
        assert!(
            traced.render().contains(
                "  trace (traceparent): production 4bf92f3577b34da6a3ce929d0e0e4736 shadow \
                 0af7651916cd43dd8448eb211c80319c\n  note: why\n"
            ),
            "{}",
            traced.render()
        );
        let back: MismatchSample = serde_json::from_value(serde_json::to_value(&traced).expect("json")).expect("reads");
        assert_eq!(back, traced);
        assert!(serde_json::to_value(&same).expect("json").get("trace").is_none(), "absent when not restarted");
        assert!(r2.contains("  status: primary 200 shadow 200\n  latency:"), "{r2}");
        assert!(r2.contains("  note: why\n  $.a\n") && !r2.contains("more differing"), "{r2}");
        // A side without a time of its own says so, never "0.000 ms".
        let latency_line = |m: &MismatchSample| m.render().lines().nth(2).unwrap_or_default().to_owned();
        let untimed = MismatchSample { shadow_latency_ms: None, shadow_timing: Timing::Untimed, ..m.clone() };
        assert_eq!(latency_line(&untimed), "  latency: primary 1.500 ms shadow untimed");
        let failed = MismatchSample { shadow_latency_ms: None, shadow_timing: Timing::NoResponse, ..m.clone() };
        assert_eq!(latency_line(&failed), "  latency: primary 1.500 ms shadow no response");
        let odd = MismatchSample { primary_latency_ms: None, shadow_latency_ms: None, ..m.clone() };
        assert_eq!(latency_line(&odd), "  latency: primary untimed shadow untimed", "no time is never shown as one");
        let json = serde_json::to_value(&untimed).expect("json");
        assert_eq!((&json["shadow_latency_ms"], &json["shadow_timing"]), (&serde_json::Value::Null, &"untimed".into()));
        assert_eq!(
            [Timing::Timed, Timing::Untimed, Timing::NoResponse].map(Timing::as_str),
            ["timed", "untimed", "no response"]
        );
        for want in [
            "GET /u/:id (pair #7): body_mismatch",
            "primary 200 shadow 500   <- differs",
            "$.a\n    - 1\n    + 2",
            "2 more",
            "+ (absent)",
        ] {
            assert!(r.contains(want), "{want:?} missing in:\n{r}");
        }
    }
}
