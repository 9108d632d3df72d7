//! JSON paths: the patterns rules ignore (`$.items[*].updated`), the concrete paths a diff walks
//! (`$.items[3].updated`), and their templates (`$.items[*].updated`), which is what noise
//! learning and mismatch signatures count, so that array positions do not multiply paths.

use std::fmt::Write as _;

/// Longest path text kept; deeper or longer paths are cut (and end in `…`).
pub(crate) const MAX_PATH_LEN: usize = 256;
const MAX_PATTERN_SEGMENTS: usize = 64;

/// One step of a concrete path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
    /// `.*` or `['*']`-less `*`: any member or element.
    AnyChild,
    /// `[*]`: any element.
    AnyIndex,
}

/// A path pattern from a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonPath {
    source: String,
    segments: Vec<Segment>,
}

impl JsonPath {
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let rest = t.strip_prefix('$').ok_or_else(|| format!("'{s}' is not a JSON path (it starts with '$')"))?;
        let b = rest.as_bytes();
        let mut segments = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if segments.len() >= MAX_PATTERN_SEGMENTS {
                return Err(format!("'{s}': more than {MAX_PATTERN_SEGMENTS} segments"));
            }
            match b[i] {
                b'.' => {
                    let start = i + 1;
                    let end = b[start..].iter().position(|&c| c == b'.' || c == b'[').map_or(b.len(), |p| start + p);
                    let name = &rest[start..end];
                    if name.is_empty() {
                        return Err(format!("'{s}': empty member name at byte {}", start + 1));
                    }
                    segments.push(if name == "*" { Segment::AnyChild } else { Segment::Key(name.to_owned()) });
                    i = end;
                }
                b'[' => {
                    let close = b[i..].iter().position(|&c| c == b']').map(|p| i + p);
                    let quoted = matches!(b.get(i + 1), Some(b'"' | b'\''));
                    if quoted {
                        // ["name"] / ['name']: the name may hold '.', '[' and ']'.
                        let q = b[i + 1];
                        let start = i + 2;
                        let end = b[start..]
                            .iter()
                            .position(|&c| c == q)
                            .map(|p| start + p)
                            .ok_or_else(|| format!("'{s}': unterminated quoted name"))?;
                        if b.get(end + 1) != Some(&b']') {
                            return Err(format!("'{s}': expected ']' after the quoted name"));
                        }
                        segments.push(Segment::Key(rest[start..end].to_owned()));
                        i = end + 2;
                        continue;
                    }
                    let close = close.ok_or_else(|| format!("'{s}': '[' without ']'"))?;
                    let inner = &rest[i + 1..close];
                    segments.push(match inner {
                        "*" => Segment::AnyIndex,
                        n => Segment::Index(
                            n.parse().map_err(|_| format!("'{s}': [{n}] is not an index, [*] or [\"name\"]"))?,
                        ),
                    });
                    i = close + 1;
                }
                _ => return Err(format!("'{s}': expected '.' or '[' at byte {}", i + 2)),
            }
        }
        Ok(Self { source: t.to_owned(), segments })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the pattern names exactly this node (its subtree goes with it).
    pub(crate) fn matches(&self, path: &[Step<'_>]) -> bool {
        self.segments.len() == path.len()
            && self.segments.iter().zip(path).all(|(seg, step)| match (seg, step) {
                (Segment::AnyChild, _) => true,
                (Segment::AnyIndex, Step::Index(_)) => true,
                (Segment::Key(k), Step::Key(s)) => k == s,
                (Segment::Index(n), Step::Index(i)) => n == i,
                _ => false,
            })
    }
}

/// `$.a["odd key"][3]`, or with `template`, `$.a["odd key"][*]`; cut at [`MAX_PATH_LEN`].
pub(crate) fn render(path: &[Step<'_>], template: bool) -> String {
    let mut out = String::from("$");
    for step in path {
        match step {
            Step::Key(k) if is_plain(k) => {
                out.push('.');
                out.push_str(k);
            }
            Step::Key(k) => {
                out.push('[');
                // A JSON string literal: escaped, so the path reads back unambiguously.
                out.push_str(&serde_json::Value::String((*k).to_owned()).to_string());
                out.push(']');
            }
            Step::Index(_) if template => out.push_str("[*]"),
            Step::Index(i) => {
                let _ = write!(out, "[{i}]");
            }
        }
        if out.len() > MAX_PATH_LEN {
            break;
        }
    }
    if out.len() > MAX_PATH_LEN {
        let mut cut = MAX_PATH_LEN;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

fn is_plain(k: &str) -> bool {
    !k.is_empty() && k.len() <= 64 && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_parse_and_match() {
        let p = |s: &str| JsonPath::parse(s).unwrap_or_else(|e| panic!("{e}"));
        use Step::{Index as I, Key as K};
        assert!(p("$.items[*].updated").matches(&[K("items"), I(3), K("updated")]));
        assert!(!p("$.items[*].updated").matches(&[K("items"), K("x"), K("updated")]), "[*] is only for arrays");
        assert!(p("$.meta.*").matches(&[K("meta"), K("anything")]));
        assert!(p("$.meta.*").matches(&[K("meta"), I(0)]));
        assert!(!p("$.meta.*").matches(&[K("meta")]), "the pattern names children, not meta itself");
        assert!(!p("$.meta.*").matches(&[K("meta"), K("a"), K("b")]));
        assert!(p("$.list[0]").matches(&[K("list"), I(0)]));
        assert!(!p("$.list[0]").matches(&[K("list"), I(1)]));
        assert!(p("$[\"a.b\"].c").matches(&[K("a.b"), K("c")]));
        assert!(p("$['x[y]']").matches(&[K("x[y]")]));
        assert!(p("$").matches(&[]));
        for bad in ["items", "$.", "$..a", "$.a[", "$.a[x]", "$[\"a]", "$a", "$.a[\"b\"x"] {
            assert!(JsonPath::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn render_templates_and_escapes() {
        use Step::{Index as I, Key as K};
        assert_eq!(render(&[K("items"), I(3), K("id")], false), "$.items[3].id");
        assert_eq!(render(&[K("items"), I(3), K("id")], true), "$.items[*].id");
        assert_eq!(render(&[K("a b\"")], false), "$[\"a b\\\"\"]");
        let long = "k".repeat(100);
        let deep: Vec<Step<'_>> = (0..50).map(|_| K(&long)).collect();
        assert!(render(&deep, false).len() <= MAX_PATH_LEN + '…'.len_utf8());
    }
}
