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
                        return Err(format!("'{s}': empty member name at byte {}", start + 2));
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

    /// A rule's path that cannot be read says what and where (1-based byte of the pattern).
    #[test]
    fn refused_patterns_say_why_exactly() {
        let err = |s: &str| JsonPath::parse(s).expect_err(s);
        assert_eq!(err("items"), "'items' is not a JSON path (it starts with '$')");
        assert_eq!(err("$."), "'$.': empty member name at byte 3");
        assert_eq!(err("$.a..b"), "'$.a..b': empty member name at byte 5");
        assert_eq!(err("$a"), "'$a': expected '.' or '[' at byte 2");
        assert_eq!(err("$[0]x"), "'$[0]x': expected '.' or '[' at byte 5");
        assert_eq!(err("$.a["), "'$.a[': '[' without ']'");
        assert_eq!(err("$.a[x]"), "'$.a[x]': [x] is not an index, [*] or [\"name\"]");
        assert_eq!(err("$[\"a]"), "'$[\"a]': unterminated quoted name");
        assert_eq!(err("$.a[\"b\"x"), "'$.a[\"b\"x': expected ']' after the quoted name");
        let segments = |n: usize| format!("${}", ".k".repeat(n));
        assert!(JsonPath::parse(&segments(MAX_PATTERN_SEGMENTS)).is_ok());
        assert_eq!(err(&segments(MAX_PATTERN_SEGMENTS + 1)), format!("'{}': more than 64 segments", segments(65)));
        let p = JsonPath::parse(" $.a[2]['x.y'][*] ").expect("valid");
        assert_eq!(p.as_str(), "$.a[2]['x.y'][*]");
        assert_eq!(
            p.segments,
            [Segment::Key("a".into()), Segment::Index(2), Segment::Key("x.y".into()), Segment::AnyIndex]
        );
    }

    /// Plain keys (1 to 64 of `[A-Za-z0-9_-]`) render as `.key`, others quoted; a long path is
    /// cut at exactly [`MAX_PATH_LEN`] bytes (back to a character boundary) and marked.
    #[test]
    fn render_plain_keys_and_the_cut_at_its_bound() {
        use Step::Key as K;
        let k64 = "k".repeat(64);
        let k65 = "k".repeat(65);
        assert_eq!(render(&[K(&k64)], false), format!("$.{k64}"));
        assert_eq!(render(&[K(&k65)], false), format!("$[\"{k65}\"]"));
        assert_eq!(render(&[K("a_b-9Z"), K(""), K("a.b")], false), "$.a_b-9Z[\"\"][\"a.b\"]");
        // 1 + 3 * 65 + 60 = 256 bytes: not cut.
        let k59 = "k".repeat(59);
        let exact = [K(&k64), K(&k64), K(&k64), K(&k59)];
        let full = format!("$.{k64}.{k64}.{k64}.{k59}");
        assert_eq!(full.len(), MAX_PATH_LEN);
        assert_eq!(render(&exact, false), full);
        // One step more: cut at 256 bytes, marked.
        let longer = [K(&k64), K(&k64), K(&k64), K(&k59), K("x")];
        assert_eq!(render(&longer, false), format!("{full}…"));
        // Byte 256 inside a 2-byte character: cut before it.
        let k63 = "k".repeat(63);
        let e = "é".repeat(40);
        let wide = [K(&k64), K(&k64), K(&k63), K(&e)];
        assert_eq!(render(&wide, false), format!("$.{k64}.{k64}.{k63}[\"{}…", "é".repeat(29)));
    }
}
