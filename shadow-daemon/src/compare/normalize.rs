//! Bodies as they are compared: Content-Encoding decoded (never inflated past the cap), JSON
//! parsed, ignore rules applied, numbers and array order made canonical. What cannot be decoded
//! within the cap is compared by length only, with the reason kept.

use std::io::Read;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{path::Step, settings::NormRules};

/// At most this many stacked codings (`Content-Encoding: gzip, gzip`) are undone.
const MAX_CODINGS: usize = 2;
/// Integers that f64 represents exactly: `2.0` and `2` are the same number below this.
const EXACT_F64_INT: f64 = 9_007_199_254_740_992.0;

/// Why a body was compared by length only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LengthOnlyReason {
    /// The capture (or the shadow read) did not hold the whole body.
    Truncated,
    /// Larger than `max_body_bytes` once decoded (a decompression bomb is this, unallocated).
    OverCap,
    /// A Content-Encoding other than gzip, deflate and identity.
    UnsupportedEncoding,
}

impl LengthOnlyReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Truncated => "truncated",
            Self::OverCap => "over_cap",
            Self::UnsupportedEncoding => "unsupported_encoding",
        }
    }
}

/// A body ready for comparison.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Body {
    Json(Value),
    Bytes(Bytes),
    LengthOnly(LengthOnlyReason),
}

/// What the comparison needs of a response's body.
pub(crate) struct RawBody<'a> {
    pub bytes: &'a Bytes,
    pub complete: bool,
    pub content_type: Option<&'a [u8]>,
    pub content_encoding: Option<&'a [u8]>,
}

pub(crate) fn normalize(raw: &RawBody<'_>, rules: &NormRules) -> Body {
    if !raw.complete {
        return Body::LengthOnly(LengthOnlyReason::Truncated);
    }
    let decoded = match decode(raw.content_encoding, raw.bytes, rules.max_body_bytes) {
        Ok(d) => d,
        Err(Undecodable::OverCap) => return Body::LengthOnly(LengthOnlyReason::OverCap),
        Err(Undecodable::Unsupported) => {
            return Body::LengthOnly(LengthOnlyReason::UnsupportedEncoding);
        }
        // A body that says gzip and is not: compared as the raw bytes it is, never parsed, so a
        // shadow that sends a body its clients cannot decode mismatches a primary that does not.
        Err(Undecodable::Corrupt) => return Body::Bytes(raw.bytes.clone()),
    };
    if looks_like_json(raw.content_type, &decoded) {
        // serde_json refuses nesting past 128 levels: such a body is compared byte-wise.
        if let Ok(mut v) = serde_json::from_slice::<Value>(&decoded) {
            let mut at = Vec::new();
            apply_rules(&mut v, &mut at, rules);
            return Body::Json(v);
        }
    }
    Body::Bytes(decoded)
}

#[derive(Debug, PartialEq)]
pub(crate) enum Undecodable {
    OverCap,
    Unsupported,
    Corrupt,
}

/// Undo the Content-Encoding codings, last applied first, producing at most `cap` bytes.
pub(crate) fn decode(encoding: Option<&[u8]>, body: &Bytes, cap: usize) -> Result<Bytes, Undecodable> {
    let codings: Vec<&[u8]> = encoding
        .map(|e| e.split(|&b| b == b',').map(|c| c.trim_ascii()).filter(|c| !c.is_empty()).collect())
        .unwrap_or_default();
    let codings: Vec<&[u8]> = codings.into_iter().filter(|c| !c.eq_ignore_ascii_case(b"identity")).collect();
    if codings.len() > MAX_CODINGS {
        return Err(Undecodable::Unsupported);
    }
    if codings.is_empty() {
        return if body.len() > cap { Err(Undecodable::OverCap) } else { Ok(body.clone()) };
    }
    let mut cur = body.clone();
    for c in codings.iter().rev() {
        cur = if c.eq_ignore_ascii_case(b"gzip") || c.eq_ignore_ascii_case(b"x-gzip") {
            inflate(flate2::read::MultiGzDecoder::new(&cur[..]), cap)?
        } else if c.eq_ignore_ascii_case(b"deflate") {
            // RFC 9110 deflate is zlib-wrapped; some servers send raw deflate anyway.
            match inflate(flate2::read::ZlibDecoder::new(&cur[..]), cap) {
                Err(Undecodable::Corrupt) => inflate(flate2::read::DeflateDecoder::new(&cur[..]), cap)?,
                other => other?,
            }
        } else {
            return Err(Undecodable::Unsupported);
        };
    }
    Ok(cur)
}

/// Read a decoder to its end, refusing (without allocating) anything past `cap` bytes.
fn inflate(decoder: impl Read, cap: usize) -> Result<Bytes, Undecodable> {
    let mut out = Vec::new();
    let limit = u64::try_from(cap).unwrap_or(u64::MAX).saturating_add(1);
    decoder.take(limit).read_to_end(&mut out).map_err(|_| Undecodable::Corrupt)?;
    if out.len() > cap {
        return Err(Undecodable::OverCap);
    }
    Ok(Bytes::from(out))
}

/// JSON when a Content-Type says so (`application/json`, `application/problem+json`), or when
/// there is none and the body opens like a JSON document.
fn looks_like_json(content_type: Option<&[u8]>, body: &[u8]) -> bool {
    match content_type {
        Some(ct) => {
            let media = ct.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
            let lower = media.to_ascii_lowercase();
            lower.ends_with(b"/json") || lower.ends_with(b"+json")
        }
        None => matches!(body.trim_ascii_start().first(), Some(b'{' | b'[')),
    }
}

/// One step of the walk's position, owned (the walk mutates the map it came from).
enum At {
    Key(String),
    Index(usize),
}

/// Remove ignored members, blank ignored elements, make numbers canonical and, when asked, sort
/// arrays. Depth is bounded by the parser's recursion limit.
fn apply_rules(v: &mut Value, at: &mut Vec<At>, rules: &NormRules) {
    if rules.ignore_paths.is_empty() {
        // No path can match: the same rules without tracking where we are (no key copied).
        return apply_field_rules(v, rules);
    }
    match v {
        Value::Object(map) => {
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                at.push(At::Key(k));
                let on_path = matches_any(at, rules);
                let Some(At::Key(k)) = at.pop() else { continue };
                if on_path || rules.ignore_fields.contains(&k) {
                    map.remove(&k);
                } else if let Some(child) = map.get_mut(&k) {
                    at.push(At::Key(k));
                    apply_rules(child, at, rules);
                    at.pop();
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                at.push(At::Index(i));
                if matches_any(at, rules) {
                    // Blanked, not removed, so the elements after it keep their positions.
                    *item = Value::Null;
                } else {
                    apply_rules(item, at, rules);
                }
                at.pop();
            }
            if rules.array_order_insensitive {
                sort_canonically(items);
            }
        }
        Value::Number(_) => canonical_number(v),
        Value::Null | Value::Bool(_) | Value::String(_) => {}
    }
}

/// [`apply_rules`] when `rules` has no paths: ignored members by name, canonical numbers, array
/// order.
fn apply_field_rules(v: &mut Value, rules: &NormRules) {
    match v {
        Value::Object(map) => {
            if !rules.ignore_fields.is_empty() {
                map.retain(|k, _| !rules.ignore_fields.contains(k));
            }
            for child in map.values_mut() {
                apply_field_rules(child, rules);
            }
        }
        Value::Array(items) => {
            for item in items.iter_mut() {
                apply_field_rules(item, rules);
            }
            if rules.array_order_insensitive {
                sort_canonically(items);
            }
        }
        Value::Number(_) => canonical_number(v),
        Value::Null | Value::Bool(_) | Value::String(_) => {}
    }
}

/// Elements in the order of their canonical texts: arrays compared as multisets.
fn sort_canonically(items: &mut Vec<Value>) {
    if items.len() > 1 {
        let mut keyed: Vec<(String, Value)> = items.drain(..).map(|x| (canonical(&x), x)).collect();
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        items.extend(keyed.into_iter().map(|(_, x)| x));
    }
}

/// `2.0` as `2` (below 2^53, where f64 is exact): a number is compared by value.
fn canonical_number(v: &mut Value) {
    if let Value::Number(n) = v
        && let Some(f) = n.as_f64().filter(|f| n.is_f64() && f.fract() == 0.0 && f.abs() < EXACT_F64_INT)
    {
        *n = serde_json::Number::from(f as i64);
    }
}

fn matches_any(at: &[At], rules: &NormRules) -> bool {
    if rules.ignore_paths.is_empty() {
        return false;
    }
    let steps: Vec<Step<'_>> = at
        .iter()
        .map(|s| match s {
            At::Key(k) => Step::Key(k),
            At::Index(i) => Step::Index(*i),
        })
        .collect();
    rules.ignore_paths.iter().any(|p| p.matches(&steps))
}

/// The canonical text of a value: members sorted by key, no whitespace. Two normalised values
/// are equal exactly when their canonical texts are.
pub(crate) fn canonical(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            out.push('{');
            for (i, (k, child)) in sorted(map).into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(child, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, child) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(child, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Members in key order, whatever order the map keeps (serde_json's `preserve_order` feature
/// may be on elsewhere in the build).
pub(crate) fn sorted(map: &Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut m: Vec<_> = map.iter().collect();
    m.sort_by(|a, b| a.0.cmp(b.0));
    m
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use proptest::prelude::*;

    use super::*;
    use crate::compare::CompareSettings;

    fn rules(toml: &str) -> NormRules {
        CompareSettings::from_toml(toml).expect("settings").compile().expect("compile").default.rules
    }

    fn json(rules: &NormRules, text: &str) -> Value {
        let b = Bytes::copy_from_slice(text.as_bytes());
        match normalize(
            &RawBody { bytes: &b, complete: true, content_type: Some(b"application/json"), content_encoding: None },
            rules,
        ) {
            Body::Json(v) => v,
            other => panic!("not JSON: {other:?}"),
        }
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).expect("gzip");
        e.finish().expect("gzip")
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).expect("zlib");
        e.finish().expect("zlib")
    }

    #[test]
    fn ignore_fields_apply_at_any_depth() {
        let r = rules("");
        let v =
            json(&r, r#"{"a":{"b":[{"timestamp":1,"x":2}],"request_id":"r"},"trace_id":"t","generated_at":0,"y":3}"#);
        assert_eq!(canonical(&v), r#"{"a":{"b":[{"x":2}]},"y":3}"#);
    }

    #[test]
    fn wildcard_paths_remove_only_what_they_name() {
        let r = rules(r#"ignore_paths = ["$.items[*].updated", "$.meta.*", "$.list[1]", "$[\"odd.key\"]"]"#);
        let v = json(
            &r,
            r#"{"items":[{"id":1,"updated":"x"},{"id":2,"updated":"y"}],"meta":{"a":1,"b":{"c":2}},
                "list":[1,2,3],"odd.key":1,"updated":"kept"}"#,
        );
        assert_eq!(canonical(&v), r#"{"items":[{"id":1},{"id":2}],"list":[1,null,3],"meta":{},"updated":"kept"}"#);
    }

    #[test]
    fn array_order_is_significant_unless_configured() {
        let ordered = rules("");
        assert_ne!(json(&ordered, "[3,1,2]"), json(&ordered, "[1,2,3]"));
        let any = rules("array_order_insensitive = true");
        assert_eq!(json(&any, r#"[{"b":1,"a":[2,1]},3,"x"]"#), json(&any, r#"["x",3,{"a":[1,2],"b":1}]"#));
        assert_ne!(json(&any, "[1,1,2]"), json(&any, "[1,2,2]"), "a multiset, not a set");
    }

    #[test]
    fn numbers_compare_by_value() {
        let r = rules("");
        assert_eq!(json(&r, r#"{"n":2.0,"m":-0.0}"#), json(&r, r#"{"n":2,"m":0}"#));
        assert_ne!(json(&r, r#"{"n":2.5}"#), json(&r, r#"{"n":2}"#));
    }

    /// Below 2^53 a float with no fraction is the integer; from 2^53 on a float may stand for a
    /// neighbouring integer (9007199254740993.0 reads as 2^53), so it stays a float.
    #[test]
    fn whole_floats_are_integers_only_where_exact() {
        let r = rules("");
        assert_eq!(
            json(&r, "[9007199254740990.0, -4503599627370496.0]"),
            json(&r, "[9007199254740990, -4503599627370496]")
        );
        let two53 = json(&r, "[9007199254740992.0]");
        assert_eq!(two53[0].as_f64(), Some(EXACT_F64_INT));
        assert!(two53[0].is_f64(), "2^53 stays a float: {two53}");
        assert_ne!(two53, json(&r, "[9007199254740992]"));
        assert_ne!(json(&r, "[-9007199254740992.0]"), json(&r, "[-9007199254740992]"));
        assert_eq!(canonical(&json(&r, "[1e2, 0.5, 18446744073709551615]")), "[100,0.5,18446744073709551615]");
    }

    /// Decoding refuses a body one byte past the cap and keeps one of exactly the cap.
    #[test]
    fn decoded_size_at_exactly_the_cap() {
        let data = vec![b'a'; 1000];
        let gz = Bytes::from(gzip(&data));
        assert_eq!(decode(Some(b"gzip"), &gz, 1000).map(|b| b.len()), Ok(1000));
        assert_eq!(decode(Some(b"gzip"), &gz, 999), Err(Undecodable::OverCap));
        assert_eq!(decode(Some(b"identity, gzip"), &gz, 1000).map(|b| b.len()), Ok(1000));
        assert_eq!(decode(Some(b" , identity"), &gz, 1 << 20), Ok(gz.clone()), "no coding but identity");
    }

    /// JSON by media type (any case, parameters ignored, `+json` suffixes), or by the first
    /// character when there is no Content-Type.
    #[test]
    fn which_bodies_are_parsed_as_json() {
        let r = rules("");
        let b = Bytes::from_static(b" {\"a\": 1}");
        let kind = |ct: Option<&'static [u8]>| match normalize(
            &RawBody { bytes: &b, complete: true, content_type: ct, content_encoding: None },
            &r,
        ) {
            Body::Json(_) => "json",
            Body::Bytes(_) => "bytes",
            Body::LengthOnly(_) => "length",
        };
        assert_eq!(kind(Some(b"application/json")), "json");
        assert_eq!(kind(Some(b" Application/JSON ; charset=utf-8")), "json");
        assert_eq!(kind(Some(b"application/problem+json")), "json");
        assert_eq!(kind(Some(b"text/plain")), "bytes");
        assert_eq!(kind(Some(b"application/jsonx")), "bytes");
        assert_eq!(kind(None), "json");
        let a = Bytes::from_static(b"[1]");
        let x = Bytes::from_static(b"x[1]");
        let raw = |bytes| RawBody { bytes, complete: true, content_type: None, content_encoding: None };
        assert!(matches!(normalize(&raw(&a), &r), Body::Json(_)));
        assert!(matches!(normalize(&raw(&x), &r), Body::Bytes(_)));
    }

    #[test]
    fn gzip_and_deflate_decode_to_the_same_body() {
        let r = rules("");
        let text = br#"{"id":7,"name":"ada"}"#;
        let plain = Bytes::from_static(text);
        let gz = Bytes::from(gzip(text));
        let zl = Bytes::from(zlib(text));
        let raw_deflate = {
            let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(text).expect("deflate");
            Bytes::from(e.finish().expect("deflate"))
        };
        let body = |b: &Bytes, enc: Option<&'static [u8]>| {
            normalize(
                &RawBody { bytes: b, complete: true, content_type: Some(b"application/json"), content_encoding: enc },
                &r,
            )
        };
        let want = body(&plain, None);
        assert!(matches!(want, Body::Json(_)));
        assert_eq!(body(&gz, Some(b"gzip")), want);
        assert_eq!(body(&gz, Some(b"X-Gzip")), want);
        assert_eq!(body(&zl, Some(b"deflate")), want);
        assert_eq!(body(&raw_deflate, Some(b"deflate")), want);
        let double = Bytes::from(gzip(&zlib(text)));
        assert_eq!(body(&double, Some(b"deflate, gzip")), want);
        assert_eq!(body(&gz, Some(b"br")), Body::LengthOnly(LengthOnlyReason::UnsupportedEncoding));
        assert_eq!(body(&gz, Some(b"gzip, gzip, gzip")), Body::LengthOnly(LengthOnlyReason::UnsupportedEncoding));
        // Not gzip at all: compared as the bytes it is.
        assert_eq!(body(&plain, Some(b"gzip")), Body::Bytes(plain.clone()));
    }

    #[test]
    fn decompression_bomb_is_over_cap_and_never_allocated() {
        // 64 MiB of zeros compress to about 64 KiB; with a 1 KiB cap, decoding stops after 1 KiB + 1.
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            e.write_all(&zeros).expect("gzip");
        }
        let bomb = Bytes::from(e.finish().expect("gzip"));
        assert!(bomb.len() < 1 << 20);
        assert_eq!(decode(Some(b"gzip"), &bomb, 1024), Err(Undecodable::OverCap));
        let r = rules("max_body_bytes = 1024");
        let raw = RawBody { bytes: &bomb, complete: true, content_type: None, content_encoding: Some(b"gzip") };
        assert_eq!(normalize(&raw, &r), Body::LengthOnly(LengthOnlyReason::OverCap));
        let plain = Bytes::from(vec![b'a'; 1025]);
        assert_eq!(decode(None, &plain, 1024), Err(Undecodable::OverCap));
        assert_eq!(decode(None, &plain, 1025).map(|b| b.len()), Ok(1025));
    }

    #[test]
    fn truncated_bodies_are_length_only_and_non_json_is_bytes() {
        let r = rules("");
        let b = Bytes::from_static(b"{\"a\":1}");
        let raw = RawBody { bytes: &b, complete: false, content_type: None, content_encoding: None };
        assert_eq!(normalize(&raw, &r), Body::LengthOnly(LengthOnlyReason::Truncated));
        let raw = RawBody { bytes: &b, complete: true, content_type: Some(b"text/plain"), content_encoding: None };
        assert_eq!(normalize(&raw, &r), Body::Bytes(b.clone()));
        let deep = Bytes::from(format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)));
        let raw =
            RawBody { bytes: &deep, complete: true, content_type: Some(b"application/json"), content_encoding: None };
        assert!(matches!(normalize(&raw, &r), Body::Bytes(_)), "too deep for the parser: compared byte-wise");
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            "[a-z]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("[a-z_]{1,8}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// The same value written with its object members in reverse order.
    fn reversed_text(v: &Value) -> String {
        match v {
            Value::Object(m) => {
                let mut parts: Vec<String> = sorted(m)
                    .into_iter()
                    .map(|(k, c)| format!("{}:{}", Value::String(k.clone()), reversed_text(c)))
                    .collect();
                parts.reverse();
                format!("{{{}}}", parts.join(", "))
            }
            Value::Array(a) => format!("[{}]", a.iter().map(reversed_text).collect::<Vec<_>>().join(" , ")),
            s => s.to_string(),
        }
    }

    proptest! {
        #[test]
        fn canonical_form_is_idempotent_and_ignores_key_order(v in arb_json(), any_order in any::<bool>()) {
            let r = rules(if any_order { "array_order_insensitive = true" } else { "" });
            let once = json(&r, &v.to_string());
            let twice = json(&r, &canonical(&once));
            prop_assert_eq!(canonical(&once), canonical(&twice));
            let shuffled = json(&r, &reversed_text(&v));
            prop_assert_eq!(canonical(&once), canonical(&shuffled));
        }
    }
}
