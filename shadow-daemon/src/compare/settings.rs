//! What a rule compares and how it judges: normalisation rules, gates, noise learning and memory
//! bounds, with per-endpoint overrides. One struct read from the rule's `[rule.compare]` table:
//!
//! ```toml
//! [rule.compare]
//! ignore_fields = ["timestamp", "request_id", "trace_id", "generated_at", "etag"]
//! ignore_paths = ["$.items[*].updated", "$.meta.*"]
//! array_order_insensitive = false
//! compare_headers = ["Content-Type", "Cache-Control"]
//! redact_headers = ["X-Api-Key"]           # besides Authorization, Cookie, Set-Cookie, Proxy-Authorization
//! max_body_bytes = 262144                  # decoded bytes compared; larger: status and length only
//! version_header = "X-Version"             # the shadow's build: another value starts a new epoch
//!
//! [rule.compare.gates]
//! min_samples = 100
//! min_body_match_percent = 99.0
//! min_status_match_percent = 99.0
//! min_header_match_percent = 99.0
//! max_5xx_increase_points = 0.1
//! max_p99_ratio = 1.2
//! p99_tolerance_ms = 5.0
//! max_p50_ratio = 1.2
//! p50_tolerance_ms = 0.25
//! latency_confidence = 0.9               # of the latency ratios' intervals
//! p99_confirm = false                     # true: PASS only once the p99's interval is within
//!
//! [rule.compare.noise]
//! min_samples = 20
//! min_differ_percent = 5.0
//!
//! [[rule.compare.endpoint]]
//! match = "GET /api/users/:id"             # an endpoint name exactly as the report shows it
//! ignore_paths = ["$.last_login"]
//! gates = { min_samples = 20 }
//! ```
//!
//! As everywhere in the config, a list given replaces the default (lists are not merged): a rule
//! that sets `ignore_fields` lists the default names too if it wants them. An endpoint override
//! replaces the keys it sets and inherits the others from the rule.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::{CompareError, path::JsonPath};

/// Field names ignored at any depth unless a rule says otherwise: they differ on every response.
pub const DEFAULT_IGNORE_FIELDS: [&str; 4] = ["timestamp", "request_id", "trace_id", "generated_at"];
/// Headers whose values never appear in a report or a diff.
pub const ALWAYS_REDACTED_HEADERS: [&str; 4] = ["authorization", "cookie", "set-cookie", "proxy-authorization"];

/// The latency gates' absolute floors. What they absorb is what more samples cannot: a gap
/// between the two sides that identical builds show in one run and not the next. Measured with
/// the kernel timestamps both sides are timed by (tests/tests/latency_verdict_b.rs: nginx against
/// an identical nginx on the same two-core host, three endpoints, 500 requests each, 20 runs
/// without and 20 with a busy loop on each core), as the shadow's lower bound less the primary's
/// upper bound at 90 %, the gap a FAIL must clear: at the p50 at most 0.019 ms in all 120
/// endpoint runs, at the p99 at most 0.74 ms without the hog and 2.5 ms with it (a shadow woken by
/// the busy daemon waits behind it and the hog for a scheduler tick; the primary's server, woken
/// by the network, is not). So 0.25 ms at the p50 and 5 ms at the p99, twice the worst gap seen:
/// a 10x or +5 ms regression still FAILs on the p50. A shadow on another host adds its network
/// round trip: raise both by it.
pub const DEFAULT_P50_TOLERANCE_MS: f64 = 0.25;
pub const DEFAULT_P99_TOLERANCE_MS: f64 = 5.0;

const MAX_RULE_ENTRIES: usize = 64;
const MAX_ENDPOINT_OVERRIDES: usize = 256;
const MAX_BODY_BYTES_LIMIT: u64 = 16 * 1024 * 1024;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompareSettings {
    /// Object member names removed wherever they appear in a JSON body.
    pub ignore_fields: Vec<String>,
    /// JSON paths removed from both bodies: `$.a.b`, `$.items[*].id`, `$.meta.*`, `$.list[0]`,
    /// `$["odd key"]`. `*` matches any member or element, `[*]` any element.
    pub ignore_paths: Vec<String>,
    /// Compare JSON arrays as multisets (elements sorted by their canonical encoding).
    pub array_order_insensitive: bool,
    /// Response headers compared besides status and body (case-insensitive names).
    pub compare_headers: Vec<String>,
    /// Header names whose values are redacted in diffs, besides [`ALWAYS_REDACTED_HEADERS`].
    pub redact_headers: Vec<String>,
    /// Largest body compared after Content-Encoding decoding; a larger (or truncated) body is
    /// compared by status and length only, and the report says how many were.
    pub max_body_bytes: u64,
    /// A response header naming the shadow's build (`X-Version`): when the shadow answers with
    /// another value than the epoch's, a new epoch starts with that response (everything compared
    /// before is dropped). A response without it is compared and counted, and starts nothing.
    pub version_header: Option<String>,
    pub gates: Gates,
    pub noise: NoiseSettings,
    pub limits: Limits,
    #[serde(rename = "endpoint")]
    pub endpoints: Vec<EndpointOverride>,
}

impl Default for CompareSettings {
    fn default() -> Self {
        Self {
            ignore_fields: DEFAULT_IGNORE_FIELDS.iter().map(|s| (*s).to_owned()).collect(),
            ignore_paths: Vec::new(),
            array_order_insensitive: false,
            compare_headers: Vec::new(),
            redact_headers: Vec::new(),
            max_body_bytes: 256 * 1024,
            version_header: None,
            gates: Gates::default(),
            noise: NoiseSettings::default(),
            limits: Limits::default(),
            endpoints: Vec::new(),
        }
    }
}

/// Go/no-go thresholds, evaluated per endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Gates {
    /// Fewer compared pairs than this: INSUFFICIENT, whatever the rates say.
    pub min_samples: u64,
    pub min_body_match_percent: f64,
    pub min_status_match_percent: f64,
    /// Only meaningful with `compare_headers`; without, every pair matches on headers.
    pub min_header_match_percent: f64,
    /// Shadow error rate (5xx and failed requests) may exceed the primary's 5xx rate by this many
    /// percentage points.
    pub max_5xx_increase_points: f64,
    /// Shadow p99 / primary p99 allowed. The gate decides on the ratio's confidence interval
    /// (see `latency_confidence`): FAIL only when all of it is past the limit; otherwise it holds
    /// (see `p99_confirm`). A `secondary` widens it by the latency spread learned between primary
    /// and secondary.
    pub max_p99_ratio: f64,
    /// A p99 no more than this many milliseconds above the primary's passes whatever the ratio
    /// (so a 40 µs → 60 µs change on a trivial endpoint is not a regression: below a
    /// millisecond, the two sides' p99s differ by measurement, not by the code). 0 = ratio only.
    pub p99_tolerance_ms: f64,
    /// With `p99_confirm`, the p99 gate is three-way like the p50's: PASS only when all of the
    /// interval is within, INSUFFICIENT while it spans the limit. Off by default: a p99 of a few
    /// hundred samples on a shared host spans the limit nearly always (an identical nginx shadow,
    /// 500 samples: intervals like [0.4, 3.8]), so confirming it would hold every healthy
    /// shadow at INSUFFICIENT, which teaches to ignore the verdict as a false FAIL does; a tail
    /// regression the interval shows still FAILs.
    pub p99_confirm: bool,
    /// Shadow p50 / primary p50 allowed, decided on its interval: FAIL when all of it is past the
    /// limit, PASS when all of it is within, INSUFFICIENT in between.
    pub max_p50_ratio: f64,
    /// The p50's absolute floor, as `p99_tolerance_ms` is the p99's.
    pub p50_tolerance_ms: f64,
    /// Confidence of the latency ratios' intervals (0.5 to 0.999). A FAIL (or a PASS) rests on
    /// one end of the interval, so it is wrong at most half of `1 - latency_confidence` of the
    /// time (5 % at the default 0.9, for a shadow exactly at the limit; far less below it).
    /// Higher: fewer wrong verdicts, more INSUFFICIENT, and more samples before the p99 can be
    /// judged at all (368 per side at 0.9, 437 at 0.95, 597 at 0.99).
    pub latency_confidence: f64,
}

impl Default for Gates {
    fn default() -> Self {
        Self {
            min_samples: 100,
            min_body_match_percent: 99.0,
            min_status_match_percent: 99.0,
            min_header_match_percent: 99.0,
            max_5xx_increase_points: 0.1,
            max_p99_ratio: 1.2,
            p99_tolerance_ms: DEFAULT_P99_TOLERANCE_MS,
            max_p50_ratio: 1.2,
            p50_tolerance_ms: DEFAULT_P50_TOLERANCE_MS,
            latency_confidence: 0.9,
            p99_confirm: false,
        }
    }
}

/// Gates an endpoint overrides; unset keys come from the rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatesOverride {
    pub min_samples: Option<u64>,
    pub min_body_match_percent: Option<f64>,
    pub min_status_match_percent: Option<f64>,
    pub min_header_match_percent: Option<f64>,
    pub max_5xx_increase_points: Option<f64>,
    pub max_p99_ratio: Option<f64>,
    pub p99_tolerance_ms: Option<f64>,
    pub max_p50_ratio: Option<f64>,
    pub p50_tolerance_ms: Option<f64>,
    pub latency_confidence: Option<f64>,
    pub p99_confirm: Option<bool>,
}

impl Gates {
    fn with(mut self, o: &GatesOverride) -> Self {
        self.min_samples = o.min_samples.unwrap_or(self.min_samples);
        self.min_body_match_percent = o.min_body_match_percent.unwrap_or(self.min_body_match_percent);
        self.min_status_match_percent = o.min_status_match_percent.unwrap_or(self.min_status_match_percent);
        self.min_header_match_percent = o.min_header_match_percent.unwrap_or(self.min_header_match_percent);
        self.max_5xx_increase_points = o.max_5xx_increase_points.unwrap_or(self.max_5xx_increase_points);
        self.max_p99_ratio = o.max_p99_ratio.unwrap_or(self.max_p99_ratio);
        self.p99_tolerance_ms = o.p99_tolerance_ms.unwrap_or(self.p99_tolerance_ms);
        self.max_p50_ratio = o.max_p50_ratio.unwrap_or(self.max_p50_ratio);
        self.p50_tolerance_ms = o.p50_tolerance_ms.unwrap_or(self.p50_tolerance_ms);
        self.latency_confidence = o.latency_confidence.unwrap_or(self.latency_confidence);
        self.p99_confirm = o.p99_confirm.unwrap_or(self.p99_confirm);
        self
    }

    fn validate(&self, at: &str) -> Result<(), CompareError> {
        let percent = |name: &str, v: f64| {
            if (0.0..=100.0).contains(&v) {
                Ok(())
            } else {
                Err(invalid(format!("{at}.{name}"), format!("{v} is not a percentage between 0 and 100")))
            }
        };
        percent("min_body_match_percent", self.min_body_match_percent)?;
        percent("min_status_match_percent", self.min_status_match_percent)?;
        percent("min_header_match_percent", self.min_header_match_percent)?;
        percent("max_5xx_increase_points", self.max_5xx_increase_points)?;
        for (q, ratio, tolerance) in
            [("p99", self.max_p99_ratio, self.p99_tolerance_ms), ("p50", self.max_p50_ratio, self.p50_tolerance_ms)]
        {
            if !(ratio.is_finite() && ratio >= 1.0) {
                return Err(invalid(
                    format!("{at}.max_{q}_ratio"),
                    format!("{ratio} must be a number >= 1.0 (shadow {q} / primary {q})"),
                ));
            }
            if !(tolerance.is_finite() && tolerance >= 0.0) {
                return Err(invalid(format!("{at}.{q}_tolerance_ms"), format!("{tolerance} must be >= 0")));
            }
        }
        if !(0.5..=0.999).contains(&self.latency_confidence) {
            return Err(invalid(
                format!("{at}.latency_confidence"),
                format!("{} must be between 0.5 and 0.999", self.latency_confidence),
            ));
        }
        Ok(())
    }
}

/// Diffy-style noise learning from a `secondary` (a second instance of the primary's version).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NoiseSettings {
    /// Primary/secondary pairs an endpoint needs before any path is called noise.
    pub min_samples: u64,
    /// A path is noise when primary and secondary differed on it in at least this share of pairs.
    pub min_differ_percent: f64,
}

impl Default for NoiseSettings {
    fn default() -> Self {
        Self { min_samples: 20, min_differ_percent: 5.0 }
    }
}

/// Memory bounds. Every collection the comparator keeps is capped by one of these.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Endpoints tracked; the rest share the `other` endpoint (counted).
    pub max_endpoints: usize,
    /// Last mismatching pairs kept per endpoint for `shadowctl diffs`.
    pub mismatch_samples: usize,
    /// Bytes of each normalised body kept in a mismatch sample.
    pub sample_body_bytes: usize,
    /// Differing paths listed per mismatch sample.
    pub diff_paths: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_endpoints: 200, mismatch_samples: 10, sample_body_bytes: 2048, diff_paths: 16 }
    }
}

/// Settings for one endpoint, matched by its exact name (`GET /api/users/:id`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointOverride {
    #[serde(rename = "match")]
    pub endpoint: String,
    #[serde(default)]
    pub ignore_fields: Option<Vec<String>>,
    #[serde(default)]
    pub ignore_paths: Option<Vec<String>>,
    #[serde(default)]
    pub array_order_insensitive: Option<bool>,
    #[serde(default)]
    pub compare_headers: Option<Vec<String>>,
    #[serde(default)]
    pub gates: GatesOverride,
}

fn invalid(field: String, reason: String) -> CompareError {
    CompareError::InvalidSetting { field, reason }
}

/// Normalisation rules in the form the comparison uses: parsed paths, lower-case header names.
#[derive(Clone, Debug)]
pub(crate) struct NormRules {
    pub ignore_fields: HashSet<String>,
    pub ignore_paths: Vec<JsonPath>,
    pub array_order_insensitive: bool,
    pub compare_headers: Vec<String>,
    pub max_body_bytes: usize,
}

/// Validated settings: rule-level rules and gates, and each override resolved against them.
#[derive(Clone, Debug)]
pub(crate) struct Compiled {
    pub default: Profile,
    pub overrides: Vec<(String, Profile)>,
    pub redact_headers: Vec<String>,
    /// Lower-case name of the rule's `version_header`.
    pub version_header: Option<String>,
    pub noise: NoiseSettings,
    pub limits: Limits,
}

#[derive(Clone, Debug)]
pub(crate) struct Profile {
    pub rules: NormRules,
    pub gates: Gates,
}

impl CompareSettings {
    /// Parse a `[rule.compare]` table given as TOML text and validate it.
    pub fn from_toml(text: &str) -> Result<Self, CompareError> {
        let s: Self =
            toml::from_str(text).map_err(|e| invalid("compare".into(), e.message().trim().replace('\n', " ")))?;
        s.validate()?;
        Ok(s)
    }

    /// Check every value; the error names the field (`compare.endpoint[1].ignore_paths[0]`).
    pub fn validate(&self) -> Result<(), CompareError> {
        self.compile().map(|_| ())
    }

    /// Header names the caller must keep in a [`super::ResponseSample`] for this rule: the ones
    /// the comparison reads (Content-Type, Content-Encoding) and the compared ones.
    pub fn headers_needed(&self) -> Vec<String> {
        let mut v = vec!["content-type".to_owned(), "content-encoding".to_owned()];
        let all = self
            .compare_headers
            .iter()
            .chain(self.endpoints.iter().flat_map(|e| e.compare_headers.iter().flatten()))
            .chain(&self.version_header);
        for h in all {
            let h = h.trim().to_ascii_lowercase();
            if !v.contains(&h) {
                v.push(h);
            }
        }
        v
    }

    pub(crate) fn compile(&self) -> Result<Compiled, CompareError> {
        if self.max_body_bytes == 0 || self.max_body_bytes > MAX_BODY_BYTES_LIMIT {
            return Err(invalid(
                "compare.max_body_bytes".into(),
                format!("{} must be between 1 and {MAX_BODY_BYTES_LIMIT}", self.max_body_bytes),
            ));
        }
        let max_body_bytes = usize::try_from(self.max_body_bytes).unwrap_or(usize::MAX);
        self.gates.validate("compare.gates")?;
        let n = &self.noise;
        if !(n.min_differ_percent > 0.0 && n.min_differ_percent <= 100.0) {
            return Err(invalid(
                "compare.noise.min_differ_percent".into(),
                format!("{} must be a percentage above 0 and at most 100", n.min_differ_percent),
            ));
        }
        if n.min_samples == 0 {
            return Err(invalid("compare.noise.min_samples".into(), "must be at least 1".into()));
        }
        let l = &self.limits;
        let range = |name: &str, v: usize, lo: usize, hi: usize| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(invalid(format!("compare.limits.{name}"), format!("{v} must be between {lo} and {hi}")))
            }
        };
        range("max_endpoints", l.max_endpoints, 1, 10_000)?;
        range("mismatch_samples", l.mismatch_samples, 0, 1_000)?;
        range("sample_body_bytes", l.sample_body_bytes, 0, 1024 * 1024)?;
        range("diff_paths", l.diff_paths, 1, 1_000)?;
        let redact_headers = header_names(&self.redact_headers, "compare.redact_headers")?;
        let version_header = match &self.version_header {
            None => None,
            Some(h) => header_names(std::slice::from_ref(h), "compare.version_header")
                .map_err(|_| invalid("compare.version_header".into(), format!("'{h}' is not a header name")))?
                .pop(),
        };

        let rules = NormRules {
            ignore_fields: field_names(&self.ignore_fields, "compare.ignore_fields")?,
            ignore_paths: json_paths(&self.ignore_paths, "compare.ignore_paths")?,
            array_order_insensitive: self.array_order_insensitive,
            compare_headers: header_names(&self.compare_headers, "compare.compare_headers")?,
            max_body_bytes,
        };
        let default = Profile { rules, gates: self.gates };
        if self.endpoints.len() > MAX_ENDPOINT_OVERRIDES {
            return Err(invalid("compare.endpoint".into(), format!("more than {MAX_ENDPOINT_OVERRIDES} overrides")));
        }
        let mut overrides: Vec<(String, Profile)> = Vec::with_capacity(self.endpoints.len());
        for (i, o) in self.endpoints.iter().enumerate() {
            let at = format!("compare.endpoint[{i}]");
            let name = o.endpoint.trim();
            let well_formed = name.split_once(' ').is_some_and(|(m, p)| {
                !m.is_empty() && m.bytes().all(|b| b.is_ascii_graphic()) && (p.starts_with('/') || p == "*")
            });
            if !well_formed {
                return Err(invalid(
                    format!("{at}.match"),
                    format!("'{}' is not an endpoint like \"GET /api/users/:id\"", o.endpoint),
                ));
            }
            if let Some(j) = overrides.iter().position(|(n, _)| n == name) {
                return Err(invalid(
                    format!("{at}.match"),
                    format!("'{name}' is already matched by compare.endpoint[{j}]"),
                ));
            }
            let mut p = default.clone();
            if let Some(f) = &o.ignore_fields {
                p.rules.ignore_fields = field_names(f, &format!("{at}.ignore_fields"))?;
            }
            if let Some(f) = &o.ignore_paths {
                p.rules.ignore_paths = json_paths(f, &format!("{at}.ignore_paths"))?;
            }
            if let Some(a) = o.array_order_insensitive {
                p.rules.array_order_insensitive = a;
            }
            if let Some(h) = &o.compare_headers {
                p.rules.compare_headers = header_names(h, &format!("{at}.compare_headers"))?;
            }
            p.gates = p.gates.with(&o.gates);
            p.gates.validate(&format!("{at}.gates"))?;
            overrides.push((name.to_owned(), p));
        }
        Ok(Compiled { default, overrides, redact_headers, version_header, noise: self.noise, limits: self.limits })
    }
}

fn bounded<'a>(list: &'a [String], at: &str) -> Result<&'a [String], CompareError> {
    if list.len() > MAX_RULE_ENTRIES {
        return Err(invalid(at.to_owned(), format!("{} entries, at most {MAX_RULE_ENTRIES}", list.len())));
    }
    Ok(list)
}

fn field_names(list: &[String], at: &str) -> Result<HashSet<String>, CompareError> {
    bounded(list, at)?
        .iter()
        .enumerate()
        .map(|(i, f)| {
            if f.is_empty() || f.len() > 256 {
                Err(invalid(format!("{at}[{i}]"), "a field name is 1 to 256 bytes".into()))
            } else {
                Ok(f.clone())
            }
        })
        .collect()
}

fn json_paths(list: &[String], at: &str) -> Result<Vec<JsonPath>, CompareError> {
    bounded(list, at)?
        .iter()
        .enumerate()
        .map(|(i, p)| JsonPath::parse(p).map_err(|e| invalid(format!("{at}[{i}]"), e)))
        .collect()
}

fn header_names(list: &[String], at: &str) -> Result<Vec<String>, CompareError> {
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for (i, h) in bounded(list, at)?.iter().enumerate() {
        let h = h.trim();
        // RFC 9110 token characters.
        let token = !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            return Err(invalid(format!("{at}[{i}]"), format!("'{h}' is not a header name")));
        }
        let h = h.to_ascii_lowercase();
        if !out.contains(&h) {
            out.push(h);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
ignore_fields = ["timestamp", "etag"]
ignore_paths = ["$.items[*].updated", "$.meta.*"]
compare_headers = ["Content-Type"]
max_body_bytes = 1024

[gates]
min_samples = 50
max_p99_ratio = 1.5

[noise]
min_samples = 10

[[endpoint]]
match = "GET /api/users/:id"
ignore_paths = ["$.last_login"]
gates = { min_samples = 5, min_body_match_percent = 90.0 }
"#;

    #[test]
    fn defaults_are_the_documented_ones() {
        let s = CompareSettings::default();
        assert_eq!(s.ignore_fields, ["timestamp", "request_id", "trace_id", "generated_at"]);
        assert_eq!(s.gates.min_samples, 100);
        assert_eq!(s.gates.min_body_match_percent, 99.0);
        assert_eq!(s.gates.max_5xx_increase_points, 0.1);
        assert_eq!(s.gates.max_p99_ratio, 1.2);
        assert_eq!(s.max_body_bytes, 256 * 1024);
        s.validate().expect("defaults are valid");
        assert_eq!(CompareSettings::from_toml("").expect("empty table"), s);
    }

    #[test]
    fn toml_example_parses_and_overrides_inherit() {
        let s = CompareSettings::from_toml(EXAMPLE).expect("example parses");
        let c = s.compile().expect("compiles");
        assert_eq!(c.default.gates.min_samples, 50);
        assert_eq!(c.default.gates.max_p99_ratio, 1.5);
        assert_eq!(c.default.gates.min_body_match_percent, 99.0, "unset gate keeps its default");
        assert_eq!(c.default.rules.compare_headers, ["content-type"]);
        let (name, p) = &c.overrides[0];
        assert_eq!(name, "GET /api/users/:id");
        assert_eq!(p.gates.min_samples, 5);
        assert_eq!(p.gates.min_body_match_percent, 90.0);
        assert_eq!(p.gates.max_p99_ratio, 1.5, "inherited from the rule");
        assert_eq!(p.rules.ignore_paths.len(), 1, "a list replaces the rule's");
        assert!(p.rules.ignore_fields.contains("etag"), "unset keys inherit");
        assert_eq!(c.noise.min_samples, 10);
        assert_eq!(s.headers_needed(), ["content-type", "content-encoding"]);
    }

    #[test]
    fn errors_name_the_field() {
        let err = |t: &str| CompareSettings::from_toml(t).expect_err(t).to_string();
        assert!(err("ignore_feilds = []").contains("ignore_feilds"), "{}", err("ignore_feilds = []"));
        assert!(err("[gates]\nmin_body_match_percent = 150.0").contains("compare.gates.min_body_match_percent"));
        assert!(err("[gates]\nmax_p99_ratio = 0.5").contains("compare.gates.max_p99_ratio"));
        assert!(err("ignore_paths = [\"items\"]").contains("compare.ignore_paths[0]"));
        assert!(err("compare_headers = [\"Bad Header\"]").contains("compare.compare_headers[0]"));
        assert!(err("max_body_bytes = 0").contains("compare.max_body_bytes"));
        assert!(err("[[endpoint]]\nmatch = \"users\"").contains("compare.endpoint[0].match"));
        let dup = "[[endpoint]]\nmatch = \"GET /a\"\n[[endpoint]]\nmatch = \"GET /a\"";
        assert!(err(dup).contains("compare.endpoint[1].match"));
        let g = "[[endpoint]]\nmatch = \"GET /a\"\ngates = { max_p99_ratio = -1.0 }";
        assert!(err(g).contains("compare.endpoint[0].gates.max_p99_ratio"));
        assert!(err("[[endpoint]]\nmatch = \"GET /a\"\nbogus = 1").contains("bogus"));
        assert!(err("[noise]\nmin_differ_percent = 0.0").contains("compare.noise.min_differ_percent"));
        assert!(err("[limits]\nmax_endpoints = 0").contains("compare.limits.max_endpoints"));
    }

    #[test]
    fn every_default_exactly() {
        let g = Gates::default();
        assert_eq!(
            g,
            Gates {
                min_samples: 100,
                min_body_match_percent: 99.0,
                min_status_match_percent: 99.0,
                min_header_match_percent: 99.0,
                max_5xx_increase_points: 0.1,
                max_p99_ratio: 1.2,
                p99_tolerance_ms: 5.0,
                max_p50_ratio: 1.2,
                p50_tolerance_ms: 0.25,
                latency_confidence: 0.9,
                p99_confirm: false,
            }
        );
        assert_eq!(NoiseSettings::default(), NoiseSettings { min_samples: 20, min_differ_percent: 5.0 });
        assert_eq!(
            Limits::default(),
            Limits { max_endpoints: 200, mismatch_samples: 10, sample_body_bytes: 2048, diff_paths: 16 }
        );
        let c = CompareSettings::default().compile().expect("defaults compile");
        assert_eq!(c.default.rules.max_body_bytes, 262_144);
        assert!(!c.default.rules.array_order_insensitive);
        assert!(c.overrides.is_empty() && c.redact_headers.is_empty() && c.default.rules.compare_headers.is_empty());
    }

    /// Each bound accepts its value and refuses one past it, with the field and the reason.
    #[test]
    fn every_bound_holds_at_its_value() {
        let ok = |t: &str| {
            CompareSettings::from_toml(t).unwrap_or_else(|e| panic!("{t}: {e}"));
        };
        let err = |t: &str| CompareSettings::from_toml(t).expect_err(t).to_string();
        ok("max_body_bytes = 1");
        ok("max_body_bytes = 16777216");
        assert_eq!(err("max_body_bytes = 16777217"), "compare.max_body_bytes: 16777217 must be between 1 and 16777216");
        ok("[noise]\nmin_differ_percent = 100.0");
        ok("[noise]\nmin_differ_percent = 0.001");
        assert_eq!(
            err("[noise]\nmin_differ_percent = 100.5"),
            "compare.noise.min_differ_percent: 100.5 must be a percentage above 0 and at most 100"
        );
        ok("[noise]\nmin_samples = 1");
        assert_eq!(err("[noise]\nmin_samples = 0"), "compare.noise.min_samples: must be at least 1");
        for (name, lo, hi) in [
            ("max_endpoints", 1, 10_000),
            ("mismatch_samples", 0, 1_000),
            ("sample_body_bytes", 0, 1_048_576),
            ("diff_paths", 1, 1_000),
        ] {
            ok(&format!("[limits]\n{name} = {lo}"));
            ok(&format!("[limits]\n{name} = {hi}"));
            let past = hi + 1;
            assert_eq!(
                err(&format!("[limits]\n{name} = {past}")),
                format!("compare.limits.{name}: {past} must be between {lo} and {hi}")
            );
            if lo > 0 {
                assert_eq!(
                    err(&format!("[limits]\n{name} = 0")),
                    format!("compare.limits.{name}: 0 must be between {lo} and {hi}")
                );
            }
        }
        for g in [
            "min_body_match_percent",
            "min_status_match_percent",
            "min_header_match_percent",
            "max_5xx_increase_points",
        ] {
            ok(&format!("[gates]\n{g} = 0.0"));
            ok(&format!("[gates]\n{g} = 100.0"));
            for bad in ["100.5", "-0.5"] {
                assert_eq!(
                    err(&format!("[gates]\n{g} = {bad}")),
                    format!("compare.gates.{g}: {bad} is not a percentage between 0 and 100")
                );
            }
        }
        ok("[gates]\nmax_p99_ratio = 1.0");
        assert_eq!(
            err("[gates]\nmax_p99_ratio = 0.99"),
            "compare.gates.max_p99_ratio: 0.99 must be a number >= 1.0 (shadow p99 / primary p99)"
        );
        assert!(err("[gates]\nmax_p99_ratio = inf").starts_with("compare.gates.max_p99_ratio: inf must"));
        ok("[gates]\np99_tolerance_ms = 0.0");
        assert_eq!(err("[gates]\np99_tolerance_ms = -0.5"), "compare.gates.p99_tolerance_ms: -0.5 must be >= 0");
        assert_eq!(err("[gates]\np99_tolerance_ms = inf"), "compare.gates.p99_tolerance_ms: inf must be >= 0");
        ok("[gates]\nmax_p50_ratio = 1.0");
        assert_eq!(
            err("[gates]\nmax_p50_ratio = 0.99"),
            "compare.gates.max_p50_ratio: 0.99 must be a number >= 1.0 (shadow p50 / primary p50)"
        );
        assert!(err("[gates]\nmax_p50_ratio = nan").starts_with("compare.gates.max_p50_ratio: NaN must"));
        ok("[gates]\np50_tolerance_ms = 0.0");
        assert_eq!(err("[gates]\np50_tolerance_ms = -0.5"), "compare.gates.p50_tolerance_ms: -0.5 must be >= 0");
        assert_eq!(err("[gates]\np50_tolerance_ms = inf"), "compare.gates.p50_tolerance_ms: inf must be >= 0");
        ok("[gates]\nlatency_confidence = 0.5");
        ok("[gates]\nlatency_confidence = 0.999");
        for (bad, shown) in [("0.49", "0.49"), ("0.9991", "0.9991"), ("1.0", "1"), ("nan", "NaN")] {
            let want = format!("compare.gates.latency_confidence: {shown} must be between 0.5 and 0.999");
            assert_eq!(err(&format!("[gates]\nlatency_confidence = {bad}")), want);
        }
        assert!(
            err("[[endpoint]]\nmatch = \"GET /a\"\ngates = { latency_confidence = 0.2 }")
                .starts_with("compare.endpoint[0].gates.latency_confidence: 0.2 must")
        );

        let list = |n: usize| (0..n).map(|i| format!("\"f{i}\"")).collect::<Vec<_>>().join(", ");
        ok(&format!("ignore_fields = [{}]", list(64)));
        assert_eq!(err(&format!("ignore_fields = [{}]", list(65))), "compare.ignore_fields: 65 entries, at most 64");
        ok(&format!("ignore_fields = [\"{}\"]", "f".repeat(256)));
        assert_eq!(
            err(&format!("ignore_fields = [\"x\", \"{}\"]", "f".repeat(257))),
            "compare.ignore_fields[1]: a field name is 1 to 256 bytes"
        );
        assert_eq!(err("ignore_fields = [\"\"]"), "compare.ignore_fields[0]: a field name is 1 to 256 bytes");
        let overrides = |n: usize| (0..n).map(|i| format!("[[endpoint]]\nmatch = \"GET /e{i}\"\n")).collect::<String>();
        ok(&overrides(256));
        assert_eq!(err(&overrides(257)), "compare.endpoint: more than 256 overrides");
    }

    /// An endpoint is `METHOD /path` (or `METHOD *`), trimmed, each named once; header names are
    /// RFC 9110 tokens, lower-cased, listed once.
    #[test]
    fn endpoint_names_and_header_names() {
        let err = |t: &str| CompareSettings::from_toml(t).expect_err(t).to_string();
        let one = |m: &str| format!("[[endpoint]]\nmatch = \"{m}\"");
        for good in ["GET /a", "OPTIONS *", " GET /a "] {
            CompareSettings::from_toml(&one(good)).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in ["GET a", "GET  /a", "G\\u0001T /a", "/a", "GET", "GET **"] {
            assert!(err(&one(bad)).starts_with("compare.endpoint[0].match: '"), "{bad}: {}", err(&one(bad)));
        }
        assert_eq!(
            err(&one("GET a")),
            "compare.endpoint[0].match: 'GET a' is not an endpoint like \"GET /api/users/:id\""
        );
        let dup =
            "[[endpoint]]\nmatch = \"GET /a\"\n[[endpoint]]\nmatch = \"GET /b\"\n[[endpoint]]\nmatch = \" GET /b\"";
        assert_eq!(err(dup), "compare.endpoint[2].match: 'GET /b' is already matched by compare.endpoint[1]");

        let s =
            CompareSettings::from_toml("compare_headers = [\" X-A \", \"x-a\", \"!#$%&'*+-.^_`|~9\"]").expect("tokens");
        let c = s.compile().expect("compiles");
        assert_eq!(c.default.rules.compare_headers, ["x-a", "!#$%&'*+-.^_`|~9"]);
        for bad in ["a b", "a:b", "", "é"] {
            assert_eq!(
                err(&format!("redact_headers = [\"ok\", \"{bad}\"]")),
                format!("compare.redact_headers[1]: '{bad}' is not a header name")
            );
        }
        let s = CompareSettings::from_toml(
            "compare_headers = [\" X-A \", \"content-type\"]\n[[endpoint]]\nmatch = \"GET /a\"\ncompare_headers = [\"x-a\", \"X-B\"]\n[[endpoint]]\nmatch = \"GET /b\"",
        )
        .expect("valid");
        assert_eq!(s.headers_needed(), ["content-type", "content-encoding", "x-a", "x-b"]);

        let s = CompareSettings::from_toml("version_header = \" X-Version \"").expect("a header name");
        assert_eq!(s.compile().expect("compiles").version_header.as_deref(), Some("x-version"));
        assert_eq!(s.headers_needed(), ["content-type", "content-encoding", "x-version"]);
        for bad in ["", "X Version", "x:v"] {
            assert_eq!(
                err(&format!("version_header = \"{bad}\"")),
                format!("compare.version_header: '{bad}' is not a header name")
            );
        }
        assert!(err("version_header = 1").starts_with("compare: invalid type"), "{}", err("version_header = 1"));
    }

    /// Every key an endpoint sets replaces the rule's; every key it leaves unset is the rule's.
    #[test]
    fn every_override_key_applies() {
        let s = CompareSettings::from_toml(
            r#"
ignore_fields = ["a"]
ignore_paths = ["$.p"]
compare_headers = ["X-Rule"]
[gates]
min_samples = 7
[[endpoint]]
match = "GET /all"
ignore_fields = ["zz"]
ignore_paths = []
array_order_insensitive = true
compare_headers = ["X-B"]
gates = { min_samples = 1, min_body_match_percent = 1.0, min_status_match_percent = 2.0, min_header_match_percent = 3.0, max_5xx_increase_points = 4.0, max_p99_ratio = 5.0, p99_tolerance_ms = 6.0, max_p50_ratio = 7.0, p50_tolerance_ms = 8.0, latency_confidence = 0.8, p99_confirm = true }
[[endpoint]]
match = "GET /none"
"#,
        )
        .expect("valid");
        let c = s.compile().expect("compiles");
        let (name, all) = &c.overrides[0];
        assert_eq!(name, "GET /all");
        assert_eq!(all.rules.ignore_fields, HashSet::from(["zz".to_owned()]));
        assert!(all.rules.ignore_paths.is_empty());
        assert!(all.rules.array_order_insensitive);
        assert_eq!(all.rules.compare_headers, ["x-b"]);
        assert_eq!(
            all.gates,
            Gates {
                min_samples: 1,
                min_body_match_percent: 1.0,
                min_status_match_percent: 2.0,
                min_header_match_percent: 3.0,
                max_5xx_increase_points: 4.0,
                max_p99_ratio: 5.0,
                p99_tolerance_ms: 6.0,
                max_p50_ratio: 7.0,
                p50_tolerance_ms: 8.0,
                latency_confidence: 0.8,
                p99_confirm: true,
            }
        );
        let (name, none) = &c.overrides[1];
        assert_eq!(name, "GET /none");
        assert_eq!(none.rules.ignore_fields, HashSet::from(["a".to_owned()]));
        assert_eq!(none.rules.ignore_paths.iter().map(JsonPath::as_str).collect::<Vec<_>>(), ["$.p"]);
        assert!(!none.rules.array_order_insensitive);
        assert_eq!(none.rules.compare_headers, ["x-rule"]);
        assert_eq!(none.gates, Gates { min_samples: 7, ..Gates::default() });
        let err = |t: &str| CompareSettings::from_toml(t).expect_err(t).to_string();
        assert_eq!(
            err("[[endpoint]]\nmatch = \"GET /a\"\nignore_fields = [\"\"]"),
            "compare.endpoint[0].ignore_fields[0]: a field name is 1 to 256 bytes"
        );
        assert_eq!(
            err("[[endpoint]]\nmatch = \"GET /a\"\nignore_paths = [\"x\"]"),
            "compare.endpoint[0].ignore_paths[0]: 'x' is not a JSON path (it starts with '$')"
        );
        assert_eq!(
            err("[[endpoint]]\nmatch = \"GET /a\"\ncompare_headers = [\"a b\"]"),
            "compare.endpoint[0].compare_headers[0]: 'a b' is not a header name"
        );
    }
}
