//! The link between a replayed request's production trace and the shadow's new one: made by
//! replay's trace edit (`replay::trace`), carried with the shadow's answer to the comparison,
//! shown in the diffs. Also the id text writers both use. A leaf: pure data.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::label::TraceFormat;

/// An id as text, held inline (a link travels with every compared request).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct IdText {
    len: u8,
    buf: [u8; IdText::CAP],
}

impl IdText {
    pub(crate) const CAP: usize = 80;

    /// `text` if it is printable ASCII; longer than the capacity, its start.
    pub(crate) fn new(text: &[u8]) -> Option<Self> {
        if text.is_empty() || !text.iter().all(|b| b.is_ascii_graphic()) {
            return None;
        }
        let n = text.len().min(Self::CAP);
        let mut buf = [0; Self::CAP];
        buf[..n].copy_from_slice(&text[..n]);
        Some(Self { len: n as u8, buf })
    }

    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl fmt::Debug for IdText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The production trace a replayed request came from and the shadow's new one, in the format
/// the request carried (the first in [`TraceFormat`] order): what an operator opens side by side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceLink {
    pub format: TraceFormat,
    pub(crate) production: IdText,
    /// The shadow's new trace id (its text in `format` is made when shown).
    pub(crate) trace: [u8; 16],
}

impl TraceLink {
    pub fn production(&self) -> &str {
        self.production.as_str()
    }

    /// The shadow's trace id as `format` writes it.
    pub fn shadow(&self) -> String {
        let mut v = Vec::with_capacity(40);
        shadow_id(self.format, &self.trace, self.production().len(), &mut v);
        String::from_utf8(v).unwrap_or_default()
    }

    /// A link as the trace edit makes it (for tests elsewhere).
    #[cfg(test)]
    pub(crate) fn new(format: TraceFormat, production: &str, trace: [u8; 16]) -> Self {
        let production = IdText::new(production.as_bytes()).unwrap_or(IdText { len: 0, buf: [0; IdText::CAP] });
        Self { format, production, trace }
    }

    /// As a diff keeps it.
    pub fn ids(&self) -> TraceIds {
        TraceIds { format: self.format, production: self.production().to_owned(), shadow: self.shadow() }
    }
}

/// [`TraceLink`] as `shadowctl diffs` and the reports show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceIds {
    pub format: TraceFormat,
    pub production: String,
    pub shadow: String,
}

/// The shadow's new trace id in `format`'s text (`len`: the production id's length, for the
/// formats with two).
pub(crate) fn shadow_id(format: TraceFormat, trace: &[u8; 16], len: usize, out: &mut Vec<u8>) {
    match format {
        TraceFormat::B3 | TraceFormat::B3Multi => put_trace(out, trace, len),
        TraceFormat::Jaeger => put_trace(out, trace, if len > 16 { 32 } else { 16 }),
        TraceFormat::Datadog => put_dec(out, low64(trace)),
        TraceFormat::XRay => put_xray_root(out, trace),
        _ => put_hex(out, trace),
    }
}

pub(crate) const HEX: &[u8; 16] = b"0123456789abcdef";

pub(crate) fn put_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 15)]);
    }
}

/// The trace id as `len` hex digits: 32, or the low 64 bits as 16.
pub(crate) fn put_trace(out: &mut Vec<u8>, trace: &[u8; 16], len: usize) {
    put_hex(out, if len == 32 { &trace[..] } else { &trace[8..] });
}

/// The low 64 bits of a trace id: what the 64-bit formats carry.
pub(crate) fn low64(trace: &[u8; 16]) -> u64 {
    u64::from_be_bytes([trace[8], trace[9], trace[10], trace[11], trace[12], trace[13], trace[14], trace[15]])
}

pub(crate) fn put_dec(out: &mut Vec<u8>, n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

pub(crate) fn put_xray_root(out: &mut Vec<u8>, trace: &[u8; 16]) {
    out.extend_from_slice(b"1-");
    put_hex(out, &trace[..4]);
    out.push(b'-');
    put_hex(out, &trace[4..]);
}
