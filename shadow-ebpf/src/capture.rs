//! Per-packet logic shared by the TC and XDP entry points: filter, sample, copy.
//!
//! Hot path for a packet that is not ours: one per-CPU counter lookup, header parsing through
//! direct packet access, one array lookup for the config, a bit test. Everything else (flow map,
//! ring buffer, payload copies) happens only for service-port segments.

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_prandom_u32, bpf_ktime_get_ns,
        generated::{bpf_skb_load_bytes, bpf_xdp_load_bytes},
    },
    maps::lpm_trie::Key,
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::warn;
use shadow_common::{
    CAPTURE_BUCKETS, CLASSIFY_BYTES, Config, Counters, FlowKey, FlowState, MAX_CAPTURE, PPM_ALL, RECORD_VERSION,
    RING_WAKEUP_BYTES as WAKEUP_BYTES, SERVICE_KEY_BITS, SegmentHeader, ServiceKey, StartClass, classify_start,
    counter, direction, family, record_flags, starts_final_response, tcp_flags,
};

use crate::{
    SHADOW_CONFIG, SHADOW_COUNTERS, SHADOW_EVENTS, SHADOW_FLOWS, SHADOW_RULES, SHADOW_SERVICES, SHADOW_WAKE,
    headers::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6, EthHdr, IPPROTO_TCP, Ipv4Hdr, Ipv6ExtHdr, Ipv6Hdr, TcpHdr, ptr_at},
};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// TC, ingress or egress (the same program on both).
    Tc,
    Xdp,
}

/// What the two program types must provide: bounds for direct access, the packet's full length
/// (including non-linear data) and a copy helper that also reads non-linear data.
pub trait Packet: EbpfContext {
    fn start(&self) -> usize;
    fn end(&self) -> usize;
    fn total_len(&self) -> usize;
    fn ifindex(&self) -> u32;
    /// Copy `len` bytes at `offset` (from the start of the L2 header) to `dst`; 0 on success.
    unsafe fn copy_out(&self, offset: u32, dst: *mut u8, len: u32) -> i64;
}

impl Packet for TcContext {
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }
    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }
    #[inline(always)]
    fn total_len(&self) -> usize {
        self.len() as usize
    }
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        unsafe { (*self.skb.skb).ifindex }
    }
    #[inline(always)]
    unsafe fn copy_out(&self, offset: u32, dst: *mut u8, len: u32) -> i64 {
        unsafe { bpf_skb_load_bytes(self.skb.skb.cast(), offset, dst.cast(), len) }
    }
}

impl Packet for XdpContext {
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }
    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }
    #[inline(always)]
    fn total_len(&self) -> usize {
        // Linear part only: fragments of multi-buffer XDP are reached through bpf_xdp_load_bytes,
        // and the IP length bounds the payload.
        usize::MAX
    }
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        self.ingress_ifindex() as u32
    }
    #[inline(always)]
    unsafe fn copy_out(&self, offset: u32, dst: *mut u8, len: u32) -> i64 {
        unsafe { bpf_xdp_load_bytes(self.ctx, offset, dst.cast(), len) }
    }
}

#[inline(always)]
fn bump(c: *mut Counters, idx: usize, by: u64) {
    // SAFETY: `c` comes from a successful per-CPU array lookup and idx is a constant < COUNT.
    unsafe {
        if let Some(v) = (*c).values.get_mut(idx) {
            *v = v.wrapping_add(by);
        }
    }
}

/// Run the capture logic for one packet. Never fails: every problem becomes a counter.
#[inline(always)]
pub fn process<P: Packet>(ctx: &P, hook: Hook) {
    let Some(counters) = SHADOW_COUNTERS.get_ptr_mut(0) else {
        return;
    };
    bump(counters, counter::PACKETS_SEEN, 1);
    let _ = try_process(ctx, hook, counters);
}

/// Where the headers are, found with the minimum of reads: enough to check the ports.
struct Located {
    family: u8,
    /// Offset of the IP header.
    l3: usize,
    /// Offset of the TCP header.
    l4: usize,
    /// Datagram length from the start of the IP header (usize::MAX when the IP length is 0: BIG TCP).
    ip_payload: usize,
}

#[inline(always)]
fn try_process<P: Packet>(ctx: &P, hook: Hook, counters: *mut Counters) -> Option<()> {
    let start = ctx.start();
    let end = ctx.end();
    let eth: *const EthHdr = ptr_at(start, end, 0)?;
    let proto = unsafe { (*eth).proto };
    let loc = if proto == ETH_P_IP.to_be() {
        locate_ipv4(start, end, counters)?
    } else if proto == ETH_P_IPV6.to_be() {
        locate_ipv6(start, end, counters)?
    } else {
        return None;
    };
    let tcp: *const TcpHdr = ptr_at(start, end, loc.l4)?;
    let (sport, dport) = unsafe { (u16::from_be((*tcp).source), u16::from_be((*tcp).dest)) };

    // Everything above is all a packet that is not ours costs, besides this lookup and bit test.
    let cfg: &Config = SHADOW_CONFIG.get(0)?;
    let dir = if cfg.has_port(dport) {
        direction::REQUEST
    } else if cfg.has_port(sport) {
        direction::RESPONSE
    } else {
        return None;
    };
    if cfg.enabled == 0 {
        return None;
    }
    bump(counters, counter::SERVICE_PORT_SEGMENTS, 1);

    let (seq, ack, doff_res, flags) =
        unsafe { (u32::from_be((*tcp).seq), u32::from_be((*tcp).ack_seq), (*tcp).doff_res, (*tcp).flags) };
    let doff = ((doff_res >> 4) as usize) * 4;
    if doff < 20 {
        return None;
    }
    let payload_off = loc.l4 + doff;
    // The payload length from the IP header, bounded by what the packet really holds (Ethernet
    // padding can make a frame longer than its IP datagram; GRO makes it longer than one MSS).
    let mut payload_len = loc.ip_payload.saturating_sub(payload_off - loc.l3);
    let avail = ctx.total_len().saturating_sub(payload_off);
    if payload_len > avail {
        payload_len = avail;
    }

    // Pure ACKs (about half of a service's packets) carry nothing to reassemble: stop before the
    // address copies and the flow-map lookup.
    if payload_len == 0 && flags & (tcp_flags::FIN | tcp_flags::RST | tcp_flags::SYN) == 0 {
        return None;
    }

    let (saddr, daddr) = read_addrs(start, end, &loc)?;
    let key = if dir == direction::REQUEST {
        FlowKey {
            client_addr: saddr,
            server_addr: daddr,
            client_port: sport,
            server_port: dport,
            family: loc.family,
            _pad: [0; 3],
        }
    } else {
        FlowKey {
            client_addr: daddr,
            server_addr: saddr,
            client_port: dport,
            server_port: sport,
            family: loc.family,
            _pad: [0; 3],
        }
    };

    if flags & tcp_flags::SYN != 0 {
        // A new connection on these addresses and ports (a reused client port): nothing decided
        // for an earlier one applies, so its first request is a new decision whatever the old
        // state says.
        if dir == direction::REQUEST {
            let _ = SHADOW_FLOWS.remove(key);
        }
        if payload_len == 0 {
            return None;
        }
    }

    let mut rflags: u16 = if hook == Hook::Xdp { record_flags::FROM_XDP } else { 0 };
    let class =
        if dir == direction::REQUEST { classify(ctx, start, end, payload_off, payload_len) } else { StartClass::No };
    let sampled = if class != StartClass::No {
        let (sampled, new) = decide(&key, seq, ack, hook != Hook::Xdp, counters)?;
        if new {
            rflags |= record_flags::REQUEST_START;
            if class == StartClass::Short {
                bump(counters, counter::REQUEST_STARTS_SHORT, 1);
            }
        }
        sampled
    } else {
        match SHADOW_FLOWS.get_ptr_mut(key) {
            Some(state) => {
                if dir == direction::RESPONSE
                    && unsafe { (*state).answered } == 0
                    && final_response(ctx, start, end, payload_off, payload_len)
                {
                    unsafe { (*state).answered = 1 };
                }
                unsafe { (*state).sampled != 0 }
            }
            None => false,
        }
    };
    if !sampled {
        bump(counters, counter::SEGMENTS_NOT_SAMPLED, 1);
        return None;
    }

    let mut hdr = SegmentHeader {
        version: RECORD_VERSION,
        family: loc.family,
        direction: dir,
        tcp_flags: flags,
        flags: rflags,
        _pad0: 0,
        src_port: sport,
        dst_port: dport,
        seq,
        ack,
        payload_len: payload_len as u32,
        ts_ns: unsafe { bpf_ktime_get_ns() },
        captured_len: 0,
        ifindex: ctx.ifindex(),
        src_addr: saddr,
        dst_addr: daddr,
    };
    emit(ctx, &mut hdr, payload_off, payload_len, counters);
    Some(())
}

#[inline(always)]
fn locate_ipv4(start: usize, end: usize, counters: *mut Counters) -> Option<Located> {
    let ip: *const Ipv4Hdr = ptr_at(start, end, ETH_HLEN)?;
    let (ver_ihl, tot_len, frag_off, protocol) =
        unsafe { ((*ip).ver_ihl, (*ip).tot_len, (*ip).frag_off, (*ip).protocol) };
    if protocol != IPPROTO_TCP {
        return None;
    }
    let ihl = ((ver_ihl & 0x0f) as usize) * 4;
    if ihl < 20 {
        return None;
    }
    // More-fragments set or a non-zero offset: no whole TCP segment here.
    if frag_off & 0x3fffu16.to_be() != 0 {
        bump(counters, counter::IPV4_FRAGMENTS, 1);
        return None;
    }
    let tot = u16::from_be(tot_len) as usize;
    // tot_len 0 happens with BIG TCP (GSO beyond 64 KiB): then the packet length decides.
    let ip_payload = if tot == 0 { usize::MAX } else { tot };
    Some(Located { family: family::IPV4, l3: ETH_HLEN, l4: ETH_HLEN + ihl, ip_payload })
}

const IPV6_EXT_HOP: u8 = 0;
const IPV6_EXT_ROUTING: u8 = 43;
const IPV6_EXT_DSTOPTS: u8 = 60;
const IPV6_MAX_EXT: usize = 4;

#[inline(always)]
fn locate_ipv6(start: usize, end: usize, counters: *mut Counters) -> Option<Located> {
    let ip: *const Ipv6Hdr = ptr_at(start, end, ETH_HLEN)?;
    let (plen, mut next) = unsafe { ((*ip).payload_len, (*ip).next_hdr) };
    let l3 = ETH_HLEN;
    let mut l4 = ETH_HLEN + 40;
    // Walk the extension headers we can skip safely; anything else that is not TCP is ignored,
    // and the ones we will not walk (fragment, AH, too deep) are counted.
    for _ in 0..IPV6_MAX_EXT {
        if next != IPV6_EXT_HOP && next != IPV6_EXT_ROUTING && next != IPV6_EXT_DSTOPTS {
            break;
        }
        let ext: *const Ipv6ExtHdr = ptr_at(start, end, l4)?;
        let (n, len) = unsafe { ((*ext).next_hdr, (*ext).hdr_ext_len) };
        next = n;
        l4 += (len as usize + 1) * 8;
    }
    if next != IPPROTO_TCP {
        if next == 44 || next == 51 || next == IPV6_EXT_HOP || next == IPV6_EXT_ROUTING || next == IPV6_EXT_DSTOPTS {
            bump(counters, counter::UNSUPPORTED_IPV6_EXT, 1);
        }
        return None;
    }
    let plen = u16::from_be(plen) as usize;
    // payload_len 0: jumbogram / BIG TCP, bounded by the packet length instead. The IPv6 payload
    // length counts from the end of the fixed header.
    let ip_payload = if plen == 0 { usize::MAX } else { plen + 40 };
    Some(Located { family: family::IPV6, l3, l4, ip_payload })
}

/// Source and destination addresses as 16-byte arrays (IPv4 in the first 4 bytes). Built from
/// u32 words so that no memset/memcpy subprogram is called.
#[inline(always)]
fn read_addrs(start: usize, end: usize, loc: &Located) -> Option<([u8; 16], [u8; 16])> {
    if loc.family == family::IPV4 {
        let ip: *const Ipv4Hdr = ptr_at(start, end, loc.l3)?;
        let (s, d) = unsafe { (u32::from_ne_bytes((*ip).saddr), u32::from_ne_bytes((*ip).daddr)) };
        Some((words([s, 0, 0, 0]), words([d, 0, 0, 0])))
    } else {
        let ip: *const Ipv6Words = ptr_at(start, end, loc.l3)?;
        let (s, d) = unsafe { ((*ip).saddr, (*ip).daddr) };
        Some((words(s), words(d)))
    }
}

#[repr(C)]
struct Ipv6Words {
    _head: [u32; 2],
    saddr: [u32; 4],
    daddr: [u32; 4],
}

#[inline(always)]
fn words(w: [u32; 4]) -> [u8; 16] {
    // SAFETY: same size, any bit pattern is valid for both.
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(w) }
}

/// Does the segment begin a request? By the token grammar, not a list of methods.
#[inline(always)]
fn classify<P: Packet>(ctx: &P, start: usize, end: usize, off: usize, payload_len: usize) -> StartClass {
    if payload_len == 0 {
        return StartClass::No;
    }
    let mut buf = [0u8; CLASSIFY_BYTES];
    let n = if payload_len < CLASSIFY_BYTES { payload_len } else { CLASSIFY_BYTES };
    match ptr_at::<[u8; CLASSIFY_BYTES]>(start, end, off) {
        Some(p) => buf = unsafe { *p },
        None => {
            // Short packet, or payload outside the linear area (GRO): read what there is.
            let len = n as u32;
            if len == 0 || len > CLASSIFY_BYTES as u32 {
                return StartClass::No;
            }
            if unsafe { ctx.copy_out(off as u32, buf.as_mut_ptr(), len) } != 0 {
                return StartClass::No;
            }
        }
    }
    classify_start(&buf, n)
}

/// Does this server segment begin a final response? Read only until the flow has one.
#[inline(always)]
fn final_response<P: Packet>(ctx: &P, start: usize, end: usize, off: usize, payload_len: usize) -> bool {
    if payload_len < 10 {
        return false;
    }
    let mut buf = [0u8; 12];
    let n = if payload_len < 12 { payload_len } else { 12 };
    match ptr_at::<[u8; 12]>(start, end, off) {
        Some(p) => buf = unsafe { *p },
        None => {
            let len = n as u32;
            if len == 0 || len > 12 {
                return false;
            }
            if unsafe { ctx.copy_out(off as u32, buf.as_mut_ptr(), len) } != 0 {
                return false;
            }
        }
    }
    starts_final_response(&buf, n)
}

/// The sampling rate of the rule the connection's server (address, port) belongs to; None when
/// no rule covers it (another service on a shared port).
#[inline(always)]
fn rule_ppm(key: &FlowKey) -> Option<u32> {
    let lookup = Key::new(
        SERVICE_KEY_BITS,
        ServiceKey { port_be: key.server_port.to_be_bytes(), family: key.family, _pad: 0, addr: key.server_addr },
    );
    let rule = *SHADOW_SERVICES.get(&lookup)?;
    SHADOW_RULES.get(rule).map(|r| r.sample_ppm)
}

/// Draw the sampling decision for a new request on this connection and remember it; the second
/// value says whether this segment starts a new request. A retransmitted copy of the segment the
/// last decision was drawn on, or a segment sent before any answer to it arrived (same
/// acknowledgment; and with `need_answer`, under TC, before the server began a final response),
/// keeps that decision. None: the request belongs to no rule (counted, not captured).
#[inline(always)]
fn decide(key: &FlowKey, seq: u32, ack: u32, need_answer: bool, counters: *mut Counters) -> Option<(bool, bool)> {
    let state = SHADOW_FLOWS.get_ptr_mut(key);
    if let Some(st) = state {
        let (s_seq, s_ack, s_sampled, answered) =
            unsafe { ((*st).start_seq, (*st).start_ack, (*st).sampled != 0, (*st).answered != 0) };
        if s_seq == seq {
            bump(counters, counter::REQUEST_START_RETRANSMITS, 1);
            return Some((s_sampled, false));
        }
        if s_ack == ack || (need_answer && !answered) {
            bump(counters, counter::REQUEST_START_CONTINUED, 1);
            return Some((s_sampled, false));
        }
    }
    let Some(ppm) = rule_ppm(key) else {
        bump(counters, counter::REQUESTS_NO_RULE, 1);
        return None;
    };
    let sampled = if ppm >= PPM_ALL {
        true
    } else if ppm == 0 {
        false
    } else {
        (unsafe { bpf_get_prandom_u32() }) % PPM_ALL < ppm
    };
    bump(counters, if sampled { counter::REQUESTS_SAMPLED } else { counter::REQUESTS_SKIPPED }, 1);
    let flag = sampled as u32;
    match state {
        Some(st) => unsafe {
            (*st).sampled = flag;
            (*st).start_seq = seq;
            (*st).start_ack = ack;
            (*st).answered = 0;
        },
        None => {
            // Unsampled connections get an entry too: its acknowledgment is what tells the next
            // request from this one's later segments (LRU map: bounded, oldest go first).
            let _ =
                SHADOW_FLOWS.insert(key, FlowState { sampled: flag, start_seq: seq, start_ack: ack, answered: 0 }, 0);
        }
    }
    Some((sampled, true))
}

#[repr(C)]
struct Record<const N: usize> {
    hdr: SegmentHeader,
    data: [u8; N],
}

#[inline(always)]
fn emit<P: Packet>(ctx: &P, hdr: &mut SegmentHeader, off: usize, len: usize, counters: *mut Counters) {
    if len == 0 {
        emit_sized::<P, 0>(ctx, hdr, off, 0, counters);
    } else if len > MAX_CAPTURE {
        // Never silently cut: the daemon sees the flag and drops the request in progress.
        hdr.flags |= record_flags::TRUNCATED;
        bump(counters, counter::TRUNCATED, 1);
        emit_sized::<P, 0>(ctx, hdr, off, 0, counters);
    } else if len <= CAPTURE_BUCKETS[0] {
        emit_sized::<P, { CAPTURE_BUCKETS[0] }>(ctx, hdr, off, len, counters);
    } else if len <= CAPTURE_BUCKETS[1] {
        emit_sized::<P, { CAPTURE_BUCKETS[1] }>(ctx, hdr, off, len, counters);
    } else if len <= CAPTURE_BUCKETS[2] {
        emit_sized::<P, { CAPTURE_BUCKETS[2] }>(ctx, hdr, off, len, counters);
    } else if len <= CAPTURE_BUCKETS[3] {
        emit_sized::<P, { CAPTURE_BUCKETS[3] }>(ctx, hdr, off, len, counters);
    } else {
        emit_sized::<P, { CAPTURE_BUCKETS[4] }>(ctx, hdr, off, len, counters);
    }
}

#[inline(always)]
fn emit_sized<P: Packet, const N: usize>(
    ctx: &P,
    hdr: &mut SegmentHeader,
    off: usize,
    len: usize,
    counters: *mut Counters,
) {
    let Some(mut entry) = SHADOW_EVENTS.reserve::<Record<N>>(0) else {
        bump(counters, counter::RINGBUF_FULL, 1);
        if hdr.flags & record_flags::REQUEST_START != 0 {
            bump(counters, counter::REQUEST_STARTS_LOST, 1);
        }
        return;
    };
    let rec = entry.as_mut_ptr();
    if N > 0 {
        // Re-check in this branch so the verifier sees 0 < len <= N next to the helper call.
        let n = len as u32;
        if n == 0 || n > N as u32 {
            entry.discard(0);
            return;
        }
        let ret = unsafe { ctx.copy_out(off as u32, (*rec).data.as_mut_ptr(), n) };
        if ret != 0 {
            entry.discard(0);
            bump(counters, counter::COPY_FAILED, 1);
            warn!(ctx, "shadow: payload copy of {} bytes failed: {}", n, ret);
            return;
        }
        hdr.captured_len = n;
        bump(counters, counter::BYTES_EMITTED, n as u64);
    }
    unsafe { (*rec).hdr = *hdr };
    // Waking the reader on every record costs an IPI per packet (microseconds in a VM). Let
    // records accumulate and wake only past a threshold; the daemon polls every few ms while
    // records come, and parks when they stop: then the first record wakes it.
    let wake = if SHADOW_EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= WAKEUP_BYTES || take_parked() {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(wake as u64);
    bump(counters, counter::SEGMENTS_EMITTED, 1);
}

/// Whether the daemon's reader is parked; clears the mark, so that only the first record after a
/// quiet spell pays for a wakeup. Two CPUs may both see it set: one wakeup too many, no harm.
#[inline(always)]
fn take_parked() -> bool {
    let Some(p) = SHADOW_WAKE.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: an array map's value, valid for the program's run; plain u32 loads and stores.
    unsafe {
        if core::ptr::read_volatile(p) == 0 {
            return false;
        }
        core::ptr::write_volatile(p, 0);
    }
    true
}
