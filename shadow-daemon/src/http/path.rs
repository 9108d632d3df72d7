//! Request paths as filters and endpoint names see them: the path of a target, its normal form
//! (so `/%61dmin` and `/x/../admin` are `/admin`), and the prefix/glob patterns rules match it
//! with. Pure, like the rest of `http`: the replay controls and the metrics' endpoint names both
//! build on it.

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
            let c = h * 16 + l;
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
    // A lone "/" counts as trailing too: it comes out as "/" either way.
    let trailing = decoded.ends_with(b"/") || decoded.ends_with(b"/.") || decoded.ends_with(b"/..");
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_pattern_has_no_space_control_delete_or_query() {
        for bad in ["/a b", "/a\tb", "/a\x01b", "/a\x7fb", "/a?", "/a b*", "/a\x7f*"] {
            let err = PathPattern::parse(bad).expect_err(bad);
            assert!(err.ends_with("a path pattern has no spaces, controls or query string"), "{bad:?}: {err}");
        }
        // The printable bytes next to them are path bytes, and so is anything past ASCII.
        for ok in ["/a!b", "/a~b", "/a>b", "/a@b", "/caf\u{e9}", " /trimmed "] {
            assert!(PathPattern::parse(ok).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn paths_are_normalized_before_filtering() {
        assert_eq!(normalize_path(b"/a/b?x=1#f"), b"/a/b");
        assert_eq!(normalize_path(b"/%61dmin"), b"/admin");
        // Each hex digit in its place: both nibbles, both cases, letters and digits.
        assert_eq!(normalize_path(b"/%7e%7E%2d%5F%30%39%41%5a%6A%7a"), b"/~~-_09AZjz");
        assert_eq!(normalize_path(b"/%20%2f%25%7F%G1%4"), b"/%20%2f%25%7F%G1%4", "not unreserved, or not hex: kept");
        assert_eq!(normalize_path(b"/x/../admin/"), b"/admin/");
        assert_eq!(normalize_path(b"//admin"), b"/admin");
        assert_eq!(normalize_path(b"/a/./b/."), b"/a/b/");
        assert_eq!(normalize_path(b"/../../"), b"/");
        assert_eq!(normalize_path(b"/a%2Fb"), b"/a%2Fb", "an encoded slash is not a separator");
        assert_eq!(normalize_path(b"http://h:1/p/q?z"), b"/p/q");
        assert_eq!(normalize_path(b"http://h:1"), b"/");
        assert_eq!(normalize_path(b""), b"/");
        assert_eq!(normalize_path(b"/"), b"/");
        assert_eq!(normalize_path(b"*"), b"/*");
        assert_eq!(normalize_path(b"/a/.."), b"/");
        assert_eq!(normalize_path(b"/a/b/.."), b"/a/");
    }
}
