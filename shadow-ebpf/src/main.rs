//! shadow's kernel programs: copy sampled TCP segments of the service ports into a ring buffer.
//!
//! Passive by construction: every entry point returns the continue verdict (TC_ACT_UNSPEC, which
//! TCX treats as "next", or XDP_PASS) on every path, success or failure. Nothing here writes to a
//! packet.
#![no_std]
#![no_main]

mod capture;
mod headers;

use aya_ebpf::{
    bindings::{TC_ACT_UNSPEC, xdp_action::XDP_PASS},
    macros::{classifier, map, xdp},
    maps::{Array, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
    programs::{TcContext, XdpContext},
};
use shadow_common::{Config, Counters, FlowKey, FlowState, MAX_RULES, MAX_SERVICES, RuleState, ServiceKey};

use crate::capture::{Hook, process};

/// Default ring buffer size; the daemon sets the real one (`--ring-buffer-size`) before loading.
#[map(name = "SHADOW_EVENTS")]
static SHADOW_EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

#[map(name = "SHADOW_CONFIG")]
static SHADOW_CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map(name = "SHADOW_COUNTERS")]
static SHADOW_COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(1, 0);

/// (port, family, server address prefix) → rule id: the longest prefix decides which rule a
/// request belongs to. Looked up only on a request start of a service port.
#[map(name = "SHADOW_SERVICES")]
static SHADOW_SERVICES: LpmTrie<ServiceKey, u32> = LpmTrie::with_max_entries(MAX_SERVICES, 0);

/// Rule id → the rule's sampling rate.
#[map(name = "SHADOW_RULES")]
static SHADOW_RULES: Array<RuleState> = Array::with_max_entries(MAX_RULES, 0);

/// Per-connection sampling decision; LRU so that abandoned connections age out by themselves.
#[map(name = "SHADOW_FLOWS")]
static SHADOW_FLOWS: LruHashMap<FlowKey, FlowState> = LruHashMap::with_max_entries(65536, 0);

/// Non-zero while the daemon's reader is parked (see `shadow_common::WAKE_PARKED`): the next
/// record wakes it and clears this.
#[map(name = "SHADOW_WAKE")]
static SHADOW_WAKE: Array<u32> = Array::with_max_entries(1, 0);

/// One program for both directions of TC: what a segment is (request or response) comes from
/// its ports and the rules, not from the hook it passes, so the daemon loads (and the kernel
/// verifies) it once and attaches it to ingress and egress.
#[classifier]
pub fn shadow_tc(ctx: TcContext) -> i32 {
    process(&ctx, Hook::Tc);
    TC_ACT_UNSPEC
}

/// Does nothing. Never attached by the daemon: the benchmark attaches it beside the real programs
/// to measure the floor (dispatch plus the kernel's own run-time accounting) that every program
/// pays, so the reported cost is ours alone.
#[classifier]
pub fn shadow_tc_noop(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[xdp]
pub fn shadow_xdp(ctx: XdpContext) -> u32 {
    process(&ctx, Hook::Xdp);
    XDP_PASS
}

// Only for the BPF target: a host build (clippy over the workspace) gets std's through the
// aya-ebpf dependencies, and a second one would be a duplicate lang item.
#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the verifier rejects any path that could get here.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
