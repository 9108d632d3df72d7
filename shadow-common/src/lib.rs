//! Types shared by the kernel programs (shadow-ebpf) and the daemon.
//!
//! Everything here crosses the kernel/user boundary through a map or the ring buffer, so every struct
//! is `#[repr(C)]`, `Copy`, has explicit padding and integer flags instead of `bool`, and its size is
//! asserted at compile time: a layout change must be a deliberate `RECORD_VERSION` bump.
#![no_std]

use core::mem::size_of;

/// Version of [`SegmentHeader`]; the daemon refuses records of another version.
pub const RECORD_VERSION: u8 = 1;

/// Largest TCP payload copied into one ring-buffer record. GRO/GSO segments on lo and veth are at
/// most 64 KiB including headers, so every segment of a normal kernel fits; a larger one (BIG TCP)
/// is emitted header-only with [`record_flags::TRUNCATED`].
pub const MAX_CAPTURE: usize = 65536;

/// Reservation buckets for payload bytes: the kernel only reserves constant sizes, so a record's
/// payload area is the smallest bucket that holds the segment. `captured_len` tells the real size.
pub const CAPTURE_BUCKETS: [usize; 5] = [512, 2048, 8192, 32768, MAX_CAPTURE];

/// Pending bytes in the ring buffer past which the kernel wakes the reader at once. Below it,
/// records are submitted without a wakeup (an IPI per packet is the dominant cost otherwise) and
/// the reader picks them up on its next poll, at most [`RING_POLL_INTERVAL_MS`] later while
/// traffic flows; a parked reader is woken by the first record (see [`WAKE_PARKED`]).
pub const RING_WAKEUP_BYTES: u64 = 128 * 1024;
/// How often the daemon drains the ring buffer without a wakeup while records keep coming. Every
/// wake-up of the daemon costs tens of microseconds of CPU here (a VM), more than the records it
/// drains at moderate rates: 8 ms rather than 2 (bench/results/ab/poll). Under load the kernel's
/// wakeup at [`RING_WAKEUP_BYTES`] comes first, so this only sets how long a trickle waits.
pub const RING_POLL_INTERVAL_MS: u64 = 8;
/// The longest the daemon waits between looks at the ring buffer: every look that finds nothing
/// doubles the wait from [`RING_POLL_INTERVAL_MS`] up to this, so a node whose service is quiet
/// wakes the daemon about 30 times a second for it instead of 500, and the first records after a quiet
/// spell wait at most this long (their timestamps are the kernel's, so no latency is skewed).
pub const RING_IDLE_POLL_MS: u64 = 32;

/// The reader is parked (the one entry of `SHADOW_WAKE` is non-zero): a look at the idle
/// interval found nothing, so the daemon stopped polling and waits for the kernel's wakeup. The
/// next record submitted wakes it at once (and clears the mark), whatever is pending: a quiet
/// node costs no polls, and the first request after a quiet spell waits for no timer.
pub const WAKE_PARKED: u32 = 1;

/// Names of programs and maps in the eBPF object.
pub mod names {
    /// TC, attached to ingress and (but on loopback) egress.
    pub const PROG_TC: &str = "shadow_tc";
    pub const PROG_XDP: &str = "shadow_xdp";
    /// Benchmark baseline only: returns at once.
    pub const PROG_TC_NOOP: &str = "shadow_tc_noop";
    pub const MAP_EVENTS: &str = "SHADOW_EVENTS";
    pub const MAP_CONFIG: &str = "SHADOW_CONFIG";
    pub const MAP_COUNTERS: &str = "SHADOW_COUNTERS";
    pub const MAP_FLOWS: &str = "SHADOW_FLOWS";
    pub const MAP_SERVICES: &str = "SHADOW_SERVICES";
    pub const MAP_RULES: &str = "SHADOW_RULES";
    pub const MAP_WAKE: &str = "SHADOW_WAKE";
}

/// Address family of a record or flow key.
pub mod family {
    pub const IPV4: u8 = 4;
    pub const IPV6: u8 = 6;
}

/// Direction of a segment relative to the service.
pub mod direction {
    /// Client to service port: request bytes.
    pub const REQUEST: u8 = 0;
    /// Service port to client: response bytes.
    pub const RESPONSE: u8 = 1;
}

/// Bits of [`SegmentHeader::flags`].
pub mod record_flags {
    /// The segment's payload was larger than what could be copied; `captured_len` is 0 and the
    /// daemon must treat the stream as damaged from here.
    pub const TRUNCATED: u16 = 1 << 0;
    /// This segment began a request line and the kernel drew the sampling decision on it.
    pub const REQUEST_START: u16 = 1 << 1;
    /// Captured by the XDP program (ingress only) rather than TC.
    pub const FROM_XDP: u16 = 1 << 2;
}

/// TCP flag bits as they appear in [`SegmentHeader::tcp_flags`] (byte 13 of the TCP header).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// Header of every ring-buffer record; the captured payload follows it directly.
///
/// Addresses are in network byte order as on the wire (IPv4 in the first 4 bytes), ports, sequence
/// numbers and lengths in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub version: u8,
    pub family: u8,
    pub direction: u8,
    pub tcp_flags: u8,
    pub flags: u16,
    pub _pad0: u16,
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    /// TCP payload length of the segment as seen on the wire.
    pub payload_len: u32,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC when the program ran.
    pub ts_ns: u64,
    /// Payload bytes that follow this header in the record (== payload_len unless truncated).
    pub captured_len: u32,
    pub ifindex: u32,
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
}

pub const SEGMENT_HEADER_LEN: usize = size_of::<SegmentHeader>();
const _: () = assert!(SEGMENT_HEADER_LEN == 72);
const _: () = assert!(SEGMENT_HEADER_LEN.is_multiple_of(8));

/// Size of the port bitmap in [`Config`]: one bit per TCP port.
pub const PORT_BITMAP_BYTES: usize = 65536 / 8;

/// The single entry of the config array map, written by the daemon, read per packet.
///
/// Ports are a bitmap so that the per-packet check is one array lookup and a bit test, whatever the
/// number of service ports.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Config {
    /// 0: capture nothing (programs stay attached, counters still count packets).
    pub enabled: u32,
    pub _pad: u32,
    /// Every port some rule matches: the first filter, before any map lookup that costs more.
    pub ports: [u8; PORT_BITMAP_BYTES],
}
const _: () = assert!(size_of::<Config>() == 8 + PORT_BITMAP_BYTES);

pub const PPM_ALL: u32 = 1_000_000;

impl Config {
    pub const fn new() -> Self {
        Self { enabled: 0, _pad: 0, ports: [0; PORT_BITMAP_BYTES] }
    }

    pub const fn set_port(&mut self, port: u16) {
        self.ports[(port >> 3) as usize] |= 1 << (port & 7);
    }

    #[inline(always)]
    pub const fn has_port(&self, port: u16) -> bool {
        self.ports[(port >> 3) as usize] & (1 << (port & 7)) != 0
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::new()
    }
}

/// Most rules the kernel holds (entries of the rules array).
pub const MAX_RULES: u32 = 64;
/// Most (address prefix, port) entries of the service trie.
pub const MAX_SERVICES: u32 = 1024;
/// Bits of a [`ServiceKey`] before the address (port, family, padding): always matched whole.
pub const SERVICE_KEY_FIXED_BITS: u32 = 32;
/// Bits of a full-length [`ServiceKey`] lookup.
pub const SERVICE_KEY_BITS: u32 = SERVICE_KEY_FIXED_BITS + 128;

/// Data of the service LPM-trie key: which rule a request to (server address, port) belongs to
/// is the longest address prefix registered for that port and family. An entry for "any address"
/// has prefix length [`SERVICE_KEY_FIXED_BITS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// Service port, network byte order (the trie compares bytes in order).
    pub port_be: [u8; 2],
    pub family: u8,
    pub _pad: u8,
    /// Server address, as in [`SegmentHeader`] (IPv4 in the first 4 bytes).
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<ServiceKey>() == 20);

/// A rule as the kernel sees it: entry `rule id` of the rules array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleState {
    /// Per-request sampling rate in parts per million (0..=1_000_000); 0 while paused.
    pub sample_ppm: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<RuleState>() == 8);

/// Key of the kernel's per-connection sampling map: always the client side first, so both
/// directions of a connection find the same entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub client_addr: [u8; 16],
    pub server_addr: [u8; 16],
    pub client_port: u16,
    pub server_port: u16,
    pub family: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<FlowKey>() == 40);

/// Value of the sampling map: the decision drawn on the connection's latest request line.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowState {
    /// 1: the current request (and its response) is captured.
    pub sampled: u32,
    /// Sequence number of the segment the decision was drawn on: a retransmission of that
    /// segment is the same request and keeps its decision instead of drawing (and counting) anew.
    pub start_seq: u32,
    /// Acknowledgment number of that segment: the response-stream position the client had
    /// received. A later segment that looks like a request start but acknowledges the same
    /// position was sent before any answer arrived: the same request written in pieces, its
    /// body, or a pipelined one. It keeps the decision (and is not flagged as a start), so a
    /// request is never cut by a fresh draw and a body never starts a capture.
    pub start_ack: u32,
    /// 1 once the server began a final (non-1xx) response since that decision (TC, which sees
    /// responses): a new request needs one, so an interim `100 Continue` never lets a body
    /// segment pass for the next request.
    pub answered: u32,
}
const _: () = assert!(size_of::<FlowState>() == 16);

/// Does a server segment begin a final response (`HTTP/1.x` and a status other than 1xx)?
#[inline(always)]
pub fn starts_final_response(buf: &[u8; 12], n: usize) -> bool {
    n >= 10
        && buf[0] == b'H'
        && buf[1] == b'T'
        && buf[2] == b'T'
        && buf[3] == b'P'
        && buf[4] == b'/'
        && buf[5] == b'1'
        && buf[6] == b'.'
        && buf[8] == b' '
        && buf[9] >= b'2'
        && buf[9] <= b'5'
}

/// What the first bytes of a client segment say about a request start. One definition for the
/// eBPF program and the daemon's tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartClass {
    No,
    /// A method token (RFC 9110 tchar) and a space, after at most [`MAX_LEADING_EMPTY`] CR/LF
    /// bytes (empty lines RFC 9112 §2.2 tells servers to ignore); or a TLS record, which the
    /// daemon recognises and counts as unsupported (the HTTP/2 preface is a token, `PRI`).
    Yes,
    /// The segment ends before the token does: too short to classify, so taken as a start and
    /// left for user space, which sees the following segments, to judge.
    Short,
}

/// Bytes looked at: leading empty lines, the longest registered method (17) and its space.
pub const CLASSIFY_BYTES: usize = 24;
/// CR/LF bytes skipped before a method token.
pub const MAX_LEADING_EMPTY: usize = 4;

/// RFC 9110 §5.6.2 tchar.
#[inline(always)]
pub const fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~'
        )
}

/// Classify a segment by its first `n` payload bytes (`n` <= [`CLASSIFY_BYTES`]; `n` is less only
/// when the payload is shorter).
#[inline(always)]
pub fn classify_start(buf: &[u8; CLASSIFY_BYTES], n: usize) -> StartClass {
    if n == 0 {
        return StartClass::No;
    }
    // TLS handshake record: content type 22, version major 3.
    if buf[0] == 0x16 {
        return if n < 2 {
            StartClass::Short
        } else if buf[1] == 0x03 {
            StartClass::Yes
        } else {
            StartClass::No
        };
    }
    let mut token = 0usize;
    let mut i = 0usize;
    while i < CLASSIFY_BYTES {
        if i >= n {
            return StartClass::Short;
        }
        let b = buf[i];
        if token == 0 && i < MAX_LEADING_EMPTY && (b == b'\r' || b == b'\n') {
            i += 1;
            continue;
        }
        if is_tchar(b) {
            token += 1;
        } else {
            return if b == b' ' && token > 0 { StartClass::Yes } else { StartClass::No };
        }
        i += 1;
    }
    StartClass::No
}

/// [`classify_start`] on a whole payload.
pub fn classify_payload(payload: &[u8]) -> StartClass {
    let mut buf = [0u8; CLASSIFY_BYTES];
    let n = payload.len().min(CLASSIFY_BYTES);
    buf[..n].copy_from_slice(&payload[..n]);
    classify_start(&buf, n)
}

/// Indices into the per-CPU counter array ([`Counters`]).
pub mod counter {
    /// Every packet the programs ran on.
    pub const PACKETS_SEEN: usize = 0;
    /// TCP segments to or from a service port (while enabled).
    pub const SERVICE_PORT_SEGMENTS: usize = 1;
    pub const REQUESTS_SAMPLED: usize = 2;
    pub const REQUESTS_SKIPPED: usize = 3;
    pub const SEGMENTS_EMITTED: usize = 4;
    /// Payload bytes copied into the ring buffer.
    pub const BYTES_EMITTED: usize = 5;
    /// Records lost because the ring buffer had no room (the daemon sees a sequence gap).
    pub const RINGBUF_FULL: usize = 6;
    /// `bpf_skb_load_bytes` / `bpf_xdp_load_bytes` failed; the record was discarded.
    pub const COPY_FAILED: usize = 7;
    /// Segments larger than [`crate::MAX_CAPTURE`], emitted header-only.
    pub const TRUNCATED: usize = 8;
    /// IPv6 packets whose extension headers we do not walk (fragment, AH, too many).
    pub const UNSUPPORTED_IPV6_EXT: usize = 9;
    /// Service-port segments not emitted because their request was not sampled (or no request
    /// line was seen yet on the connection).
    pub const SEGMENTS_NOT_SAMPLED: usize = 10;
    /// IPv4 fragments on a service port (not captured).
    pub const IPV4_FRAGMENTS: usize = 11;
    /// Retransmitted request-start segments of a connection with a decision: the request was
    /// counted once, on its first copy, and keeps that decision.
    pub const REQUEST_START_RETRANSMITS: usize = 12;
    /// Request starts on a service port whose server address matches no rule: another
    /// service's traffic, not captured.
    pub const REQUESTS_NO_RULE: usize = 13;
    /// Segments that look like a request start but acknowledge the same response position as
    /// the connection's last start (a request written in pieces, a body, pipelining): they keep
    /// the decision and are not counted as requests.
    pub const REQUEST_START_CONTINUED: usize = 14;
    /// Request starts whose segment was too short to classify whole (it ended inside the
    /// method token or the empty lines before it): taken as a start, for user space to judge.
    /// Included in `requests_sampled` / `requests_skipped`.
    pub const REQUEST_STARTS_SHORT: usize = 15;
    /// Sampled request starts whose record the ring buffer had no room for (also in
    /// `ringbuf_full`): requests that crossed the wire and never reached the daemon.
    pub const REQUEST_STARTS_LOST: usize = 16;
    pub const COUNT: usize = 17;

    /// Metric-friendly names, index-aligned with the constants above.
    pub const NAMES: [&str; COUNT] = [
        "packets_seen",
        "service_port_segments",
        "requests_sampled",
        "requests_skipped",
        "segments_emitted",
        "bytes_emitted",
        "ringbuf_full",
        "copy_failed",
        "truncated",
        "unsupported_ipv6_ext",
        "segments_not_sampled",
        "ipv4_fragments",
        "request_start_retransmits",
        "requests_no_rule",
        "request_start_continued",
        "request_starts_short",
        "request_starts_lost",
    ];
}

/// The per-CPU counter block: one lookup per packet, then plain increments.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub values: [u64; counter::COUNT],
}
const _: () = assert!(size_of::<Counters>() == 8 * counter::COUNT);

/// The egress fence (a second eBPF object, one instance per rule that fences its shadow): cgroup
/// socket-address programs that see every `connect` and unconnected UDP `sendmsg` of the
/// processes in the rule's cgroups, look the destination up in an allowlist, count the attempt
/// and, in enforce mode, refuse it (the caller gets EPERM; nothing leaves).
pub mod egress {
    use core::mem::size_of;

    pub const PROG_CONNECT4: &str = "shadow_egress_connect4";
    pub const PROG_CONNECT6: &str = "shadow_egress_connect6";
    pub const PROG_SENDMSG4: &str = "shadow_egress_sendmsg4";
    pub const PROG_SENDMSG6: &str = "shadow_egress_sendmsg6";
    /// The four programs, as `(program, hook)`: the hook names the link pinned for it.
    pub const PROGRAMS: [(&str, &str); 4] = [
        (PROG_CONNECT4, "connect4"),
        (PROG_CONNECT6, "connect6"),
        (PROG_SENDMSG4, "sendmsg4"),
        (PROG_SENDMSG6, "sendmsg6"),
    ];
    /// LPM trie: [`AllowKey`] -> 1.
    pub const MAP_ALLOW: &str = "EGRESS_ALLOW";
    /// Per-CPU hash: [`SeenKey`] -> [`Seen`], every destination tried, by verdict.
    pub const MAP_SEEN: &str = "EGRESS_SEEN";
    /// Array of one [`State`]: the mode.
    pub const MAP_STATE: &str = "EGRESS_STATE";
    /// Per-CPU array of one [`Overflow`].
    pub const MAP_OVERFLOW: &str = "EGRESS_OVERFLOW";
    /// The maps, pinned with the links so that a restarted daemon adopts the guard.
    pub const MAPS: [&str; 4] = [MAP_ALLOW, MAP_SEEN, MAP_STATE, MAP_OVERFLOW];

    /// Allowlist entries per guard.
    pub const MAX_ALLOW: u32 = 1024;
    /// Distinct (destination, port, protocol, verdict) tuples counted per guard; further ones
    /// are counted in [`State::overflow`].
    pub const MAX_SEEN: u32 = 4096;

    /// Modes of [`State::mode`].
    pub const MODE_OBSERVE: u32 = 0;
    pub const MODE_ENFORCE: u32 = 1;

    /// Verdicts of [`SeenKey::verdict`].
    pub const ALLOWED: u8 = 0;
    /// Not allowed, refused (enforce).
    pub const REFUSED: u8 = 1;
    /// Not allowed, let through (observe).
    pub const OBSERVED: u8 = 2;
    pub const VERDICTS: usize = 3;

    /// Hooks of [`SeenKey::hook`].
    pub const HOOK_CONNECT: u8 = 0;
    pub const HOOK_SENDMSG: u8 = 1;

    /// Bits of an [`AllowKey`] before the address (port, family, padding): always matched whole.
    pub const ALLOW_KEY_FIXED_BITS: u32 = 32;

    /// An allowlist entry: `port` 0 is any port. The programs look up the destination's port
    /// first, then port 0. IPv4 addresses are in the first 4 bytes of `addr` (network order),
    /// IPv4-mapped IPv6 destinations are looked up as IPv4.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct AllowKey {
        /// Host byte order.
        pub port: u16,
        pub family: u8,
        pub _pad: u8,
        pub addr: [u8; 16],
    }
    const _: () = assert!(size_of::<AllowKey>() == 20);

    /// What was tried: destination, protocol (IPPROTO_*), hook and verdict.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub struct SeenKey {
        pub addr: [u8; 16],
        /// Host byte order.
        pub port: u16,
        pub family: u8,
        pub protocol: u8,
        pub verdict: u8,
        pub hook: u8,
        pub _pad: [u8; 2],
    }
    const _: () = assert!(size_of::<SeenKey>() == 24);

    /// How often and when, and who tried first.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Seen {
        pub count: u64,
        /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the first and the latest attempt.
        pub first_ns: u64,
        pub last_ns: u64,
        /// The thread group (process id) of the first attempt.
        pub pid: u32,
        pub _pad: u32,
        /// Its command name (NUL padded).
        pub comm: [u8; 16],
    }
    const _: () = assert!(size_of::<Seen>() == 48);

    /// The guard's state, written by the daemon.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct State {
        /// [`MODE_ENFORCE`] or [`MODE_OBSERVE`]; a guard whose state cannot be read enforces.
        pub mode: u32,
        pub _pad: u32,
    }
    const _: () = assert!(size_of::<State>() == 8);

    /// Attempts, by verdict, whose tuple did not fit in the seen map (decided all the same).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Overflow {
        pub attempts: [u64; VERDICTS],
    }
    const _: () = assert!(size_of::<Overflow>() == 24);
}

#[cfg(feature = "user")]
mod user {
    use super::*;

    // Each is repr(C), Copy, made only of integers and integer arrays with explicit padding (the
    // sizes are asserted above), so every bit pattern is a valid value.
    macro_rules! pod {
        ($($t:ty),*) => {$(
            // SAFETY: see above: repr(C), integers only, no implicit padding.
            unsafe impl aya::Pod for $t {}
        )*};
    }
    pod!(SegmentHeader, Config, FlowKey, FlowState, Counters, ServiceKey, RuleState);
    pod!(egress::AllowKey, egress::SeenKey, egress::Seen, egress::State, egress::Overflow);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_bitmap_round_trips_every_port() {
        let mut cfg = Config::new();
        for p in [0u16, 1, 7, 8, 80, 443, 8080, 65535] {
            assert!(!cfg.has_port(p));
            cfg.set_port(p);
            assert!(cfg.has_port(p));
        }
        assert!(!cfg.has_port(81));
        assert!(!cfg.has_port(65534));
    }

    #[test]
    fn counter_names_are_unique_and_complete() {
        for (i, a) in counter::NAMES.iter().enumerate() {
            assert!(!a.is_empty());
            for b in &counter::NAMES[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn buckets_ascend_and_end_at_max_capture() {
        assert!(CAPTURE_BUCKETS.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(CAPTURE_BUCKETS[CAPTURE_BUCKETS.len() - 1], MAX_CAPTURE);
        assert!(CAPTURE_BUCKETS.iter().all(|b| (SEGMENT_HEADER_LEN + b).is_multiple_of(8)));
    }
}
