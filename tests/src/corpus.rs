//! The request-framing conformance corpus (`tests/corpus/framing.toml`), read by the extraction
//! unit tests in shadow-daemon and by the tier B test against nginx: one file, included in both
//! by path, so both run exactly the same cases.

use std::collections::BTreeMap;

/// The corpus, built in.
pub const TEXT: &str = include_str!("../corpus/framing.toml");

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Corpus {
    case: Vec<Case>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    #[serde(default)]
    pub why: String,
    steps: Vec<Vec<String>>,
    replay: Vec<String>,
    /// Requests dropped by extraction, by reason label.
    #[serde(default)]
    pub dropped: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// The client writes these bytes as one segment.
    Client(Vec<u8>),
    /// The primary answers (unit tests model nginx with these).
    Server(Vec<u8>),
    ClientFin,
    ServerFin,
    ServerRst,
}

/// Every case, checked: a malformed corpus fails loudly, naming the case.
pub fn load() -> Vec<Case> {
    let c: Corpus = toml::from_str(TEXT).unwrap_or_else(|e| panic!("tests/corpus/framing.toml: {e}"));
    for case in &c.case {
        let _ = case.steps();
    }
    c.case
}

impl Case {
    pub fn steps(&self) -> Vec<Step> {
        self.steps
            .iter()
            .map(|s| match s.as_slice() {
                [k, b] if k == "c" => Step::Client(expand(b)),
                [k, b] if k == "s" => Step::Server(expand(b)),
                [k] if k == "cfin" => Step::ClientFin,
                [k] if k == "sfin" => Step::ServerFin,
                [k] if k == "srst" => Step::ServerRst,
                other => panic!("corpus case {}: bad step {other:?}", self.name),
            })
            .collect()
    }

    pub fn replay(&self) -> Vec<Vec<u8>> {
        self.replay.iter().map(|r| expand(r)).collect()
    }

    /// The bytes the client sends, in order.
    pub fn client_segments(&self) -> Vec<Vec<u8>> {
        self.steps()
            .into_iter()
            .filter_map(|s| match s {
                Step::Client(b) => Some(b),
                _ => None,
            })
            .collect()
    }
}

/// `<<N*TEXT>>` is TEXT repeated N times; everything else is taken as written.
pub fn expand(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find("<<") {
        out.extend_from_slice(&rest.as_bytes()[..open]);
        let after = &rest[open + 2..];
        let close = after.find(">>").unwrap_or_else(|| panic!("unclosed <<...>> in {s:?}"));
        let (n, text) = after[..close].split_once('*').unwrap_or_else(|| panic!("<<N*TEXT>> expected in {s:?}"));
        let n: usize = n.parse().unwrap_or_else(|_| panic!("repeat count {n:?} in {s:?}"));
        out.extend(std::iter::repeat_n(text.as_bytes(), n).flatten());
        rest = &after[close + 2..];
    }
    out.extend_from_slice(rest.as_bytes());
    out
}
