//! The trace context of replayed requests: shadow requests never join production traces.
//!
//! A captured request carries its production trace context. Replayed unchanged, every span the
//! shadow (and whatever it calls) records lands inside the production trace, with the
//! production's sampling decision, and poisons its error rates and latencies. In `isolate` mode
//! (the default) the header-edit pass ([`super::edit`]) restarts the context of every format it
//! knows: fresh trace and span ids of the same format, one new trace id shared by all formats
//! of a request, the original sampling decision (or `--trace-sampled`), and the link back to the
//! production trace only in `tracestate` (`shadow=<trace id>-<parent id>`). A trace header whose
//! value is not understood is removed, never replayed with its production ids. `keep` leaves them
//! all as captured. In both modes the W3C `baggage` gets the shadow marker (`shadow=true`), which
//! the OpenTelemetry SDKs propagate downstream by default, so the services behind the shadow can
//! tell shadow traffic too.
//!
//! Everything works on one header value at a time, checked when the edit pass scans the head
//! and written straight into the edit buffer: no allocation.

use std::time::{SystemTime, UNIX_EPOCH};

pub use super::controls::{ShadowBaggage, TraceMode, TraceSampled};
use crate::trace_link::{HEX, IdText, low64, put_dec, put_hex, put_trace, put_xray_root};
pub use crate::{
    label::{TraceAction, TraceFormat},
    trace_link::{TraceIds, TraceLink},
};

/// The W3C Baggage limits a marker must not push a request past.
pub const BAGGAGE_MAX_MEMBERS: usize = 64;
pub const BAGGAGE_MAX_BYTES: usize = 8192;

/// The headers this module reads, by name (any case).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TraceHeader {
    TraceParent,
    TraceState,
    B3,
    B3TraceId,
    B3SpanId,
    B3ParentSpanId,
    B3Sampled,
    Jaeger,
    DatadogTraceId,
    DatadogParentId,
    DatadogTags,
    XRay,
    CloudTrace,
    Sw8,
    Baggage,
}

const NAMES: [(&[u8], TraceHeader); 15] = [
    (b"traceparent", TraceHeader::TraceParent),
    (b"tracestate", TraceHeader::TraceState),
    (b"baggage", TraceHeader::Baggage),
    (b"b3", TraceHeader::B3),
    (b"x-b3-traceid", TraceHeader::B3TraceId),
    (b"x-b3-spanid", TraceHeader::B3SpanId),
    (b"x-b3-parentspanid", TraceHeader::B3ParentSpanId),
    (b"x-b3-sampled", TraceHeader::B3Sampled),
    (b"uber-trace-id", TraceHeader::Jaeger),
    (b"x-datadog-trace-id", TraceHeader::DatadogTraceId),
    (b"x-datadog-parent-id", TraceHeader::DatadogParentId),
    (b"x-datadog-tags", TraceHeader::DatadogTags),
    (b"x-amzn-trace-id", TraceHeader::XRay),
    (b"x-cloud-trace-context", TraceHeader::CloudTrace),
    (b"sw8", TraceHeader::Sw8),
];

impl TraceHeader {
    /// The header named `name` (any case), if it is one of these.
    pub(super) fn of(name: &[u8]) -> Option<Self> {
        NAMES.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, k)| *k)
    }

    fn format(self) -> TraceFormat {
        match self {
            Self::TraceParent => TraceFormat::TraceParent,
            Self::TraceState => TraceFormat::TraceState,
            Self::B3 => TraceFormat::B3,
            Self::B3TraceId | Self::B3SpanId | Self::B3ParentSpanId | Self::B3Sampled => TraceFormat::B3Multi,
            Self::Jaeger => TraceFormat::Jaeger,
            Self::DatadogTraceId | Self::DatadogParentId | Self::DatadogTags => TraceFormat::Datadog,
            Self::XRay => TraceFormat::XRay,
            Self::CloudTrace => TraceFormat::CloudTrace,
            Self::Sw8 => TraceFormat::Sw8,
            Self::Baggage => TraceFormat::Baggage,
        }
    }
}

/// What was done to one request's trace context: the (format, action) pairs that happened,
/// each once per request whatever the number of header lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceReport {
    bits: [u8; TraceFormat::COUNT],
}

impl TraceReport {
    fn note(&mut self, format: TraceFormat, action: TraceAction) {
        self.bits[format.index()] |= 1 << action.index();
    }

    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|b| *b == 0)
    }

    pub fn has(&self, format: TraceFormat, action: TraceAction) -> bool {
        self.bits[format.index()] & (1 << action.index()) != 0
    }

    /// Every (format, action) that happened (per request: only the formats that occurred are
    /// looked at).
    pub fn iter(&self) -> impl Iterator<Item = (TraceFormat, TraceAction)> + '_ {
        self.bits.iter().zip(TraceFormat::ALL).filter(|(bits, _)| **bits != 0).flat_map(|(bits, f)| {
            TraceAction::ALL.into_iter().filter(move |a| bits & (1 << a.index()) != 0).map(move |a| (f, a))
        })
    }
}

/// What the edit did to one request's trace context.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceOutcome {
    pub report: TraceReport,
    pub link: Option<TraceLink>,
}

/// The new ids of one replayed request, shared by all its formats.
#[derive(Clone, Copy, Debug)]
struct Fresh {
    /// 128 bits; the 64-bit formats take the low half. With an X-Ray header, the first four
    /// bytes are the time in seconds (X-Ray's root id starts with it), so the formats agree.
    trace: [u8; 16],
    span: [u8; 8],
    /// The new parent of the shadow's caller span, where a format carries one.
    parent: [u8; 8],
    /// SkyWalking's segment id.
    segment: [u8; 16],
}

impl Fresh {
    fn draw(epoch: Option<u32>) -> Self {
        let mut trace = fastrand::u128(..).to_be_bytes();
        if let Some(e) = epoch {
            trace[..4].copy_from_slice(&e.to_be_bytes());
        }
        // Never zero, in either half (a zero id is invalid in every format).
        trace[15] |= u8::from(trace[8..].iter().all(|b| *b == 0));
        let nonzero = || fastrand::u64(1..).to_be_bytes();
        Self { trace, span: nonzero(), parent: nonzero(), segment: fastrand::u128(1..).to_be_bytes() }
    }
}

/// What the edit pass does with one header line this module claims.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LineVerdict {
    Keep,
    Remove,
    /// Written by [`TraceEdit::rewrite`] once the ids are drawn.
    Rewrite(TraceHeader),
}

/// One request's pass over its trace headers: [`line`](Self::line) for each header line in order,
/// then [`finish`](Self::finish), then [`rewrite`](Self::rewrite) for each line it asked to
/// rewrite and [`append`](Self::append) before the blank line.
pub(super) struct TraceEdit<'c> {
    mode: TraceMode,
    sampled: TraceSampled,
    marker: Option<&'c str>,
    outcome: TraceOutcome,
    /// The restarted `traceparent`'s original ids: the link `tracestate` carries.
    w3c: Option<([u8; 16], [u8; 8])>,
    /// The first link found, by format precedence: format and production id.
    origin: Option<(TraceFormat, IdText)>,
    rewrites: usize,
    xray: bool,
    tracestate_lines: usize,
    tracestate_written: bool,
    baggage: Baggage,
    fresh: Option<Fresh>,
}

#[derive(Default)]
struct Baggage {
    members: usize,
    bytes: usize,
    /// The last baggage line (the caller's index): the marker goes at its end.
    last: Option<usize>,
    /// Whether the marker is added (decided by `finish`).
    add: bool,
}

impl<'c> TraceEdit<'c> {
    pub(super) fn new(mode: TraceMode, sampled: TraceSampled, marker: Option<&'c str>) -> Self {
        Self {
            mode,
            sampled,
            marker,
            outcome: TraceOutcome::default(),
            w3c: None,
            origin: None,
            rewrites: 0,
            xray: false,
            tracestate_lines: 0,
            tracestate_written: false,
            baggage: Baggage::default(),
            fresh: None,
        }
    }

    /// A header line of `kind` with `value`, that no other edit claims; `index` is the caller's
    /// name for the line (for [`baggage_line`](Self::baggage_line)).
    pub(super) fn line(&mut self, kind: TraceHeader, value: &[u8], index: usize) -> LineVerdict {
        if kind == TraceHeader::Baggage {
            let b = &mut self.baggage;
            b.members += value.split(|c| *c == b',').filter(|m| !m.trim_ascii().is_empty()).count();
            b.bytes += value.len() + usize::from(b.last.is_some());
            b.last = Some(index);
            return LineVerdict::Keep;
        }
        let format = kind.format();
        if self.mode == TraceMode::Keep {
            if kind != TraceHeader::B3Sampled {
                self.outcome.report.note(format, TraceAction::Kept);
            }
            return LineVerdict::Keep;
        }
        let origin = match kind {
            TraceHeader::TraceState => {
                // Decided once every line is seen: the link if a traceparent restarts.
                self.tracestate_lines += 1;
                return LineVerdict::Rewrite(kind);
            }
            TraceHeader::B3Sampled => {
                // Not an id: rewritten only to carry a configured decision.
                return match (self.sampled, sampled01(value)) {
                    (TraceSampled::Inherit, _) | (_, None) => LineVerdict::Keep,
                    _ => LineVerdict::Rewrite(kind),
                };
            }
            TraceHeader::DatadogTags => match datadog_tid(value) {
                Tid::Absent => return LineVerdict::Keep,
                Tid::Invalid => None,
                Tid::At(_) => Some(None),
            },
            _ => self.check(kind, value),
        };
        match origin {
            None => {
                self.outcome.report.note(format, TraceAction::Removed);
                LineVerdict::Remove
            }
            Some(id) => {
                self.rewrites += 1;
                self.outcome.report.note(format, TraceAction::Restarted);
                if let Some(id) = id
                    && self.origin.is_none_or(|(f, _)| format < f)
                {
                    self.origin = Some((format, id));
                }
                LineVerdict::Rewrite(kind)
            }
        }
    }

    /// Whether `value` is a valid header of `kind`; if so, its production trace id as the link
    /// shows it (`Some(None)`: valid, but no trace id in this header).
    fn check(&mut self, kind: TraceHeader, value: &[u8]) -> Option<Option<IdText>> {
        let trace_id = |t: &[u8]| Some(IdText::new(t));
        match kind {
            TraceHeader::TraceParent => {
                let p = traceparent(value)?;
                // The first valid one is the request's context; another is removed, as a context
                // the link would not describe.
                if self.w3c.is_some() {
                    return None;
                }
                self.w3c = Some((p.trace, p.parent));
                trace_id(&value[3..35])
            }
            TraceHeader::B3 => match b3(value)? {
                B3::SamplingOnly => Some(None),
                B3::Ids { trace, .. } => trace_id(trace),
            },
            TraceHeader::B3TraceId => {
                is_lower_hex_id(value, &[16, 32]).then_some(())?;
                trace_id(value)
            }
            TraceHeader::B3SpanId | TraceHeader::B3ParentSpanId => is_lower_hex_id(value, &[16]).then_some(None),
            TraceHeader::Jaeger => trace_id(jaeger(value)?.trace),
            TraceHeader::DatadogTraceId => {
                decimal_id(value)?;
                trace_id(value)
            }
            TraceHeader::DatadogParentId => decimal_id(value).map(|_| None),
            TraceHeader::XRay => {
                let root = xray(value)?;
                self.xray = true;
                trace_id(root)
            }
            TraceHeader::CloudTrace => trace_id(cloud(value)?.trace),
            TraceHeader::Sw8 => {
                let s = sw8(value)?;
                let mut decoded = [0u8; 3 * IdText::CAP / 4 + 3];
                Some(base64_decode(s.trace, &mut decoded).and_then(IdText::new).or_else(|| IdText::new(s.trace)))
            }
            TraceHeader::TraceState | TraceHeader::B3Sampled | TraceHeader::DatadogTags | TraceHeader::Baggage => {
                Some(None)
            }
        }
    }

    /// After every line: the ids are drawn, `tracestate` and the marker decided, and the link
    /// made. Returns the bytes the edits may add, to size the buffer once.
    pub(super) fn finish(&mut self) -> usize {
        let mut extra = 0;
        if self.rewrites > 0 || self.tracestate_lines > 0 {
            let epoch = self.xray.then(|| {
                let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
                u32::try_from(secs).unwrap_or(u32::MAX)
            });
            let fresh = Fresh::draw(epoch);
            self.fresh = Some(fresh);
            // Values grow by at most this much (sw8's base64 ids; X-Ray drops fields).
            extra += self.rewrites * 96;
            if let Some((format, production)) = self.origin {
                self.outcome.link = Some(TraceLink { format, production, trace: fresh.trace });
            }
            // The link replaces the first tracestate (or is added); without a restarted
            // traceparent there is nothing to link, and every tracestate goes.
            if self.w3c.is_some() {
                self.outcome.report.note(TraceFormat::TraceState, TraceAction::Restarted);
            } else if self.tracestate_lines > 0 {
                self.outcome.report.note(TraceFormat::TraceState, TraceAction::Removed);
            }
            extra += 80;
        }
        if let Some(m) = self.marker {
            let b = &mut self.baggage;
            let sep = usize::from(b.last.is_some());
            if b.members < BAGGAGE_MAX_MEMBERS && b.bytes + sep + m.len() <= BAGGAGE_MAX_BYTES {
                b.add = true;
                self.outcome.report.note(TraceFormat::Baggage, TraceAction::Marked);
                extra += m.len() + "baggage: \r\n".len();
            } else {
                self.outcome.report.note(TraceFormat::Baggage, TraceAction::BaggageFull);
            }
        }
        extra
    }

    /// The caller's index of the baggage line the marker is appended to, if any.
    pub(super) fn baggage_line(&self) -> Option<usize> {
        self.baggage.last.filter(|_| self.baggage.add)
    }

    /// The marker, appended to the value `value` (the baggage line's) in `out`.
    pub(super) fn append_marker(&self, value: &[u8], out: &mut Vec<u8>) {
        if let Some(m) = self.marker {
            if !value.trim_ascii().is_empty() {
                out.push(b',');
            }
            out.extend_from_slice(m.as_bytes());
        }
    }

    /// The new value of a line [`line`](Self::line) asked to rewrite, appended to `out`; false
    /// when the line goes instead (a `tracestate` with no restarted `traceparent`, or after the
    /// first).
    pub(super) fn rewrite(&mut self, kind: TraceHeader, value: &[u8], out: &mut Vec<u8>) -> bool {
        let sampled = self.sampled;
        // The one rewrite without ids: a decision.
        if kind == TraceHeader::B3Sampled {
            return sampled01(value).is_some_and(|s| {
                out.push(if sampled.apply(s) { b'1' } else { b'0' });
                true
            });
        }
        let Some(f) = self.fresh else { return false };
        match kind {
            TraceHeader::TraceState => {
                let Some((trace, parent)) = self.w3c.filter(|_| !self.tracestate_written) else { return false };
                self.tracestate_written = true;
                link_member(&trace, &parent, out);
                true
            }
            TraceHeader::TraceParent => traceparent(value).is_some_and(|p| {
                out.extend_from_slice(b"00-");
                put_hex(out, &f.trace);
                out.push(b'-');
                put_hex(out, &f.span);
                out.push(b'-');
                put_hex(out, &[sampled.flags(p.flags)]);
                true
            }),
            TraceHeader::B3 => match b3(value) {
                None => false,
                Some(B3::SamplingOnly) => {
                    out.extend_from_slice(&b3_sampling(value, sampled));
                    true
                }
                Some(B3::Ids { trace, sampling, parent, .. }) => {
                    put_trace(out, &f.trace, trace.len());
                    out.push(b'-');
                    put_hex(out, &f.span);
                    if let Some(s) = sampling {
                        out.push(b'-');
                        out.extend_from_slice(&b3_sampling(s, sampled));
                    }
                    if parent.is_some() {
                        out.push(b'-');
                        put_hex(out, &f.parent);
                    }
                    true
                }
            },
            TraceHeader::B3TraceId => {
                put_trace(out, &f.trace, value.len());
                true
            }
            TraceHeader::B3SpanId => {
                put_hex(out, &f.span);
                true
            }
            TraceHeader::B3ParentSpanId => {
                put_hex(out, &f.parent);
                true
            }
            TraceHeader::Jaeger => jaeger(value).is_some_and(|j| {
                put_trace(out, &f.trace, if j.trace.len() > 16 { 32 } else { 16 });
                out.extend_from_slice(j.sep);
                put_hex(out, &f.span);
                out.extend_from_slice(j.sep);
                if j.parent.iter().all(|b| *b == b'0') {
                    out.extend_from_slice(j.parent);
                } else {
                    put_hex(out, &f.parent);
                }
                out.extend_from_slice(j.sep);
                put_dec(out, u64::from(sampled.flags(j.flags)));
                true
            }),
            TraceHeader::DatadogTraceId => {
                put_dec(out, low64(&f.trace));
                true
            }
            TraceHeader::DatadogParentId => {
                put_dec(out, u64::from_be_bytes(f.span));
                true
            }
            TraceHeader::DatadogTags => match datadog_tid(value) {
                Tid::At(at) => {
                    out.extend_from_slice(&value[..at]);
                    put_hex(out, &f.trace[..8]);
                    out.extend_from_slice(&value[at + 16..]);
                    true
                }
                _ => false,
            },
            TraceHeader::XRay => xray(value).is_some() && write_xray(value, &f, sampled, out),
            TraceHeader::CloudTrace => cloud(value).is_some_and(|c| {
                put_hex(out, &f.trace);
                if c.span {
                    out.push(b'/');
                    put_dec(out, u64::from_be_bytes(f.span));
                }
                if let Some(o) = c.options {
                    out.extend_from_slice(b";o=");
                    put_dec(out, u64::from(sampled.flags(o)));
                }
                true
            }),
            TraceHeader::Sw8 => sw8(value).is_some_and(|s| {
                out.push(if sampled.apply(s.sample) { b'1' } else { b'0' });
                out.push(b'-');
                let mut hex = [0u8; 32];
                base64_encode(hex32(&f.trace, &mut hex), out);
                out.push(b'-');
                base64_encode(hex32(&f.segment, &mut hex), out);
                out.extend_from_slice(s.rest);
                true
            }),
            TraceHeader::B3Sampled | TraceHeader::Baggage => false,
        }
    }

    /// Lines added before the blank line: `tracestate` (the link, when the request had none) and
    /// `baggage` (the marker, when the request had none), each ended by `eol`.
    pub(super) fn append(&mut self, eol: &[u8], out: &mut Vec<u8>) {
        if let Some((trace, parent)) = self.w3c.filter(|_| !self.tracestate_written && self.fresh.is_some()) {
            self.tracestate_written = true;
            out.extend_from_slice(b"tracestate: ");
            link_member(&trace, &parent, out);
            out.extend_from_slice(eol);
        }
        if let Some(m) = self.marker.filter(|_| self.baggage.add && self.baggage.last.is_none()) {
            out.extend_from_slice(b"baggage: ");
            out.extend_from_slice(m.as_bytes());
            out.extend_from_slice(eol);
        }
    }

    pub(super) fn outcome(&self) -> TraceOutcome {
        self.outcome
    }
}

/// `shadow=<trace id>-<parent id>`: the production context, as the only `tracestate` member.
fn link_member(trace: &[u8; 16], parent: &[u8; 8], out: &mut Vec<u8>) {
    out.extend_from_slice(b"shadow=");
    put_hex(out, trace);
    out.push(b'-');
    put_hex(out, parent);
}

fn hex32<'b>(bytes: &[u8; 16], buf: &'b mut [u8; 32]) -> &'b [u8] {
    for (i, b) in bytes.iter().enumerate() {
        buf[2 * i] = HEX[usize::from(b >> 4)];
        buf[2 * i + 1] = HEX[usize::from(b & 15)];
    }
    &buf[..]
}

fn is_lower_hex(s: &[u8]) -> bool {
    s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Lower-case hex of one of `lens`, not all zero.
fn is_lower_hex_id(s: &[u8], lens: &[usize]) -> bool {
    lens.contains(&s.len()) && is_lower_hex(s) && s.iter().any(|b| *b != b'0')
}

fn hex_bytes<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (digit(s[2 * i])? << 4) | digit(s[2 * i + 1])?;
    }
    Some(out)
}

/// A decimal u64 above zero, 1 to 20 digits.
fn decimal_id(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = std::str::from_utf8(s).ok()?.parse::<u64>().ok()?;
    (n > 0).then_some(n)
}

/// A W3C `traceparent`.
struct TraceParent {
    trace: [u8; 16],
    parent: [u8; 8],
    flags: u8,
}

/// `version-traceid-parentid-flags`, lower-case hex; version `ff` is invalid, version `00` is
/// exactly 55 characters, a later version may carry more after a `-` (W3C Trace Context,
/// "Versioning of traceparent"). Ids not all zero.
fn traceparent(v: &[u8]) -> Option<TraceParent> {
    if v.len() < 55 || !is_lower_hex(&v[..2]) || &v[..2] == b"ff" {
        return None;
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    match (&v[..2], v.get(55)) {
        (_, None) => {}
        (b"00", Some(_)) => return None,
        (_, Some(b)) if *b != b'-' => return None,
        _ => {}
    }
    let (t, p, f) = (&v[3..35], &v[36..52], &v[53..55]);
    if !(is_lower_hex_id(t, &[32]) && is_lower_hex_id(p, &[16]) && is_lower_hex(f)) {
        return None;
    }
    Some(TraceParent { trace: hex_bytes(t)?, parent: hex_bytes(p)?, flags: hex_bytes::<1>(f)?[0] })
}

enum B3<'a> {
    /// `0`, `1` or `d`: a decision without ids.
    SamplingOnly,
    Ids {
        trace: &'a [u8],
        sampling: Option<&'a [u8]>,
        parent: Option<&'a [u8]>,
    },
}

/// B3 single: `{TraceId}-{SpanId}[-{SamplingState}[-{ParentSpanId}]]` or `{SamplingState}`.
fn b3(v: &[u8]) -> Option<B3<'_>> {
    let is_sampling = |s: &[u8]| matches!(s, b"0" | b"1" | b"d");
    let mut parts = v.split(|b| *b == b'-');
    let first = parts.next()?;
    let Some(span) = parts.next() else {
        return is_sampling(first).then_some(B3::SamplingOnly);
    };
    let (sampling, parent) = (parts.next(), parts.next());
    let ok = parts.next().is_none()
        && is_lower_hex_id(first, &[16, 32])
        && is_lower_hex_id(span, &[16])
        && sampling.is_none_or(is_sampling)
        && parent.is_none_or(|p| is_lower_hex_id(p, &[16]));
    ok.then_some(B3::Ids { trace: first, sampling, parent })
}

/// A B3 sampling state under the configured decision (`d`, debug, stays unless `never`).
fn b3_sampling(s: &[u8], sampled: TraceSampled) -> [u8; 1] {
    match (s, sampled) {
        (_, TraceSampled::Never) => *b"0",
        (b"d", _) => *b"d",
        (_, TraceSampled::Always) => *b"1",
        (b"1", TraceSampled::Inherit) => *b"1",
        _ => *b"0",
    }
}

/// `X-B3-Sampled`: `1`/`0` (or the older `true`/`false`).
fn sampled01(v: &[u8]) -> Option<bool> {
    match v {
        b"1" | b"true" => Some(true),
        b"0" | b"false" => Some(false),
        _ => None,
    }
}

struct Jaeger<'a> {
    trace: &'a [u8],
    parent: &'a [u8],
    flags: u8,
    /// `:` or its percent-encoding as the request wrote it.
    sep: &'a [u8],
}

/// `{trace-id}:{span-id}:{parent-span-id}:{flags}`: hex ids of up to 32, 16 and 16 digits (any
/// case, leading zeros may be left out, the parent 0 when there is none), decimal flags.
fn jaeger(v: &[u8]) -> Option<Jaeger<'_>> {
    let sep: &[u8] = if v.contains(&b':') {
        b":"
    } else if v.windows(3).any(|w| w.eq_ignore_ascii_case(b"%3a")) {
        &v[v.windows(3).position(|w| w.eq_ignore_ascii_case(b"%3a"))?..][..3]
    } else {
        return None;
    };
    let mut parts = [&b""[..]; 4];
    let mut rest = v;
    for (i, part) in parts.iter_mut().enumerate() {
        let at = rest.windows(sep.len()).position(|w| w == sep);
        match (i, at) {
            (3, None) => *part = rest,
            (3, Some(_)) | (_, None) => return None,
            (_, Some(at)) => {
                *part = &rest[..at];
                rest = &rest[at + sep.len()..];
            }
        }
    }
    let [trace, span, parent, flags] = parts;
    let hex = |s: &[u8], max: usize| !s.is_empty() && s.len() <= max && s.iter().all(u8::is_ascii_hexdigit);
    let nonzero = |s: &[u8]| s.iter().any(|b| *b != b'0');
    let ok = hex(trace, 32) && nonzero(trace) && hex(span, 16) && nonzero(span) && hex(parent, 16);
    let flags = (ok && !flags.is_empty() && flags.len() <= 3 && flags.iter().all(u8::is_ascii_digit))
        .then(|| std::str::from_utf8(flags).ok()?.parse::<u8>().ok())??;
    Some(Jaeger { trace, parent, flags, sep })
}

enum Tid {
    Absent,
    Invalid,
    /// Where the 16 hex digits of `_dd.p.tid` start.
    At(usize),
}

/// Datadog's `_dd.p.tid` tag (the high 64 bits of a 128-bit trace id) in `x-datadog-tags`.
fn datadog_tid(v: &[u8]) -> Tid {
    const KEY: &[u8] = b"_dd.p.tid=";
    let mut start = 0;
    for tag in v.split(|b| *b == b',') {
        let at = start;
        start += tag.len() + 1;
        if let Some(val) = tag.strip_prefix(KEY) {
            return if is_lower_hex_id(val, &[16]) { Tid::At(at + KEY.len()) } else { Tid::Invalid };
        }
    }
    Tid::Absent
}

/// X-Ray: `Root=1-{8 hex}-{24 hex}[;Parent={16 hex}][;Sampled=..][;Key=Value...]`: the root
/// (trace) id text, if the whole value is fields of that shape with one valid root.
fn xray(v: &[u8]) -> Option<&[u8]> {
    let mut root = None;
    for field in v.split(|b| *b == b';') {
        let field = field.trim_ascii();
        let (k, val) = split_once(field, b'=')?;
        match k {
            b"Root" => {
                let ok = root.is_none()
                    && val.len() == 35
                    && val.starts_with(b"1-")
                    && val[10] == b'-'
                    && is_lower_hex(&val[2..10])
                    && is_lower_hex_id(&val[11..], &[24]);
                root = Some(ok.then_some(val)?);
            }
            b"Parent" if !is_lower_hex_id(val, &[16]) => return None,
            _ if k.is_empty() => return None,
            _ => {}
        }
    }
    root
}

/// The X-Ray header with new Root and Parent, `Sampled` as decided, `Self` and `Lineage` (ids
/// and loop counts of the production request) left out, other fields kept in order.
fn write_xray(v: &[u8], f: &Fresh, sampled: TraceSampled, out: &mut Vec<u8>) -> bool {
    let mut first = true;
    for field in v.split(|b| *b == b';') {
        let field = field.trim_ascii();
        let Some((k, val)) = split_once(field, b'=') else { return false };
        if matches!(k, b"Self" | b"Lineage") {
            continue;
        }
        if !first {
            out.push(b';');
        }
        first = false;
        match (k, sampled01(val)) {
            (b"Root", _) => {
                out.extend_from_slice(b"Root=");
                put_xray_root(out, &f.trace);
            }
            (b"Parent", _) => {
                out.extend_from_slice(b"Parent=");
                put_hex(out, &f.span);
            }
            (b"Sampled", Some(s)) => {
                out.extend_from_slice(b"Sampled=");
                out.push(if sampled.apply(s) { b'1' } else { b'0' });
            }
            _ => out.extend_from_slice(field),
        }
    }
    true
}

fn split_once(s: &[u8], c: u8) -> Option<(&[u8], &[u8])> {
    let at = s.iter().position(|b| *b == c)?;
    Some((&s[..at], &s[at + 1..]))
}

struct Cloud<'a> {
    trace: &'a [u8],
    span: bool,
    options: Option<u8>,
}

/// `TRACE_ID[/SPAN_ID][;o=OPTIONS]`: 32 hex digits (any case, not all zero), a decimal span id,
/// decimal options (bit 0: sampled).
fn cloud(v: &[u8]) -> Option<Cloud<'_>> {
    let (ids, options) = match v.iter().position(|b| *b == b';') {
        Some(at) => (&v[..at], Some(v[at + 1..].strip_prefix(b"o=")?)),
        None => (v, None),
    };
    let (trace, span) = match split_once(ids, b'/') {
        Some((t, s)) => (t, Some(s)),
        None => (ids, None),
    };
    let ok = trace.len() == 32 && trace.iter().all(u8::is_ascii_hexdigit) && trace.iter().any(|b| *b != b'0');
    if !ok || span.is_some_and(|s| s.is_empty() || s.len() > 20 || !s.iter().all(u8::is_ascii_digit)) {
        return None;
    }
    let options = match options {
        Some(o) if !o.is_empty() && o.len() <= 3 && o.iter().all(u8::is_ascii_digit) => {
            Some(std::str::from_utf8(o).ok()?.parse::<u8>().ok()?)
        }
        Some(_) => return None,
        None => None,
    };
    Some(Cloud { trace, span: span.is_some(), options })
}

struct Sw8<'a> {
    sample: bool,
    trace: &'a [u8],
    /// From the `-` before the span id to the end, kept as is.
    rest: &'a [u8],
}

/// SkyWalking `sw8`: `sample-traceId-segmentId-spanId-service-instance-endpoint-address`, eight
/// fields, the ids and names base64.
fn sw8(v: &[u8]) -> Option<Sw8<'_>> {
    let b64 =
        |s: &[u8]| !s.is_empty() && s.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
    let mut parts = v.split(|b| *b == b'-');
    let mut fields = [&b""[..]; 8];
    for f in &mut fields {
        *f = parts.next()?;
    }
    if parts.next().is_some() {
        return None;
    }
    let [sample, trace, segment, span, service, instance, endpoint, address] = fields;
    let sample = match sample {
        b"1" => true,
        b"0" => false,
        _ => return None,
    };
    let ok = b64(trace)
        && b64(segment)
        && !span.is_empty()
        && span.iter().all(u8::is_ascii_digit)
        && [service, instance, endpoint, address].iter().all(|f| b64(f));
    // "s-" then the two ids and the '-' after each: the rest starts at the '-' before the span id.
    let rest_at = 2 + trace.len() + 1 + segment.len();
    ok.then_some(Sw8 { sample, trace, rest: &v[rest_at..] })
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
fn base64_encode(input: &[u8], out: &mut Vec<u8>) {
    for chunk in input.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize]);
            } else {
                out.push(b'=');
            }
        }
    }
}

/// Standard base64 (padding optional) into `buf`; `None` if not base64 or too long for it.
fn base64_decode<'b>(input: &[u8], buf: &'b mut [u8]) -> Option<&'b [u8]> {
    let input = input.strip_suffix(b"==").or_else(|| input.strip_suffix(b"=")).unwrap_or(input);
    let mut n = 0;
    let (mut acc, mut bits) = (0u32, 0);
    for c in input {
        let v = B64.iter().position(|b| b == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            *buf.get_mut(n)? = (acc >> bits) as u8;
            n += 1;
        }
    }
    Some(&buf[..n])
}

#[cfg(test)]
mod tests;
