//! shadow's egress fence: cgroup socket-address programs for the processes of a shadow.
//!
//! Attached to the cgroups of one rule's shadow (one loaded instance, with its own maps, per
//! rule). Each `connect` (TCP, connected UDP) and each unconnected UDP `sendmsg` of a process in
//! those cgroups runs one of these before anything leaves: the destination is looked up in the
//! allowlist (its port, then any port), the attempt is counted per (destination, port, protocol,
//! verdict), and in enforce mode a destination not allowed is refused (the call fails with
//! EPERM). Connections the shadow accepts never pass here.
//!
//! Fail closed: a guard whose state cannot be read enforces; an empty allowlist refuses all.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_NOEXIST, bpf_sock_addr},
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{cgroup_sock_addr, map},
    maps::{Array, LpmTrie, PerCpuArray, PerCpuHashMap, lpm_trie::Key},
    programs::SockAddrContext,
};
use shadow_common::{
    egress::{
        ALLOW_KEY_FIXED_BITS, ALLOWED, AllowKey, HOOK_CONNECT, HOOK_SENDMSG, MAX_ALLOW, MAX_SEEN, MODE_ENFORCE,
        OBSERVED, Overflow, REFUSED, Seen, SeenKey, State, VERDICTS,
    },
    family,
};

/// What the rule's shadow may reach.
#[map(name = "EGRESS_ALLOW")]
static EGRESS_ALLOW: LpmTrie<AllowKey, u32> = LpmTrie::with_max_entries(MAX_ALLOW, 0);

/// Every destination tried, by verdict; per CPU, so counting takes no atomic operation.
#[map(name = "EGRESS_SEEN")]
static EGRESS_SEEN: PerCpuHashMap<SeenKey, Seen> = PerCpuHashMap::with_max_entries(MAX_SEEN, 0);

/// The mode, written by the daemon.
#[map(name = "EGRESS_STATE")]
static EGRESS_STATE: Array<State> = Array::with_max_entries(1, 0);

/// Attempts whose tuple did not fit in the seen map, by verdict.
#[map(name = "EGRESS_OVERFLOW")]
static EGRESS_OVERFLOW: PerCpuArray<Overflow> = PerCpuArray::with_max_entries(1, 0);

/// Accept the call.
const PASS: i32 = 1;
/// Refuse it: the kernel fails the syscall with EPERM.
const REFUSE: i32 = 0;

#[cgroup_sock_addr(connect4)]
pub fn shadow_egress_connect4(ctx: SockAddrContext) -> i32 {
    guard(&ctx, false, HOOK_CONNECT)
}

#[cgroup_sock_addr(connect6)]
pub fn shadow_egress_connect6(ctx: SockAddrContext) -> i32 {
    guard(&ctx, true, HOOK_CONNECT)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn shadow_egress_sendmsg4(ctx: SockAddrContext) -> i32 {
    guard(&ctx, false, HOOK_SENDMSG)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn shadow_egress_sendmsg6(ctx: SockAddrContext) -> i32 {
    guard(&ctx, true, HOOK_SENDMSG)
}

#[inline(always)]
fn guard(ctx: &SockAddrContext, v6: bool, hook: u8) -> i32 {
    let sa: *const bpf_sock_addr = ctx.sock_addr;
    // The context's fields are read one 4-byte word at a time, as the verifier requires.
    let (fam, addr) = if v6 {
        let w = unsafe { [(*sa).user_ip6[0], (*sa).user_ip6[1], (*sa).user_ip6[2], (*sa).user_ip6[3]] };
        // Words in network order: their native bytes are the address's bytes.
        let mut a = [0u8; 16];
        let mut i = 0;
        while i < 4 {
            let b = w[i].to_ne_bytes();
            a[4 * i] = b[0];
            a[4 * i + 1] = b[1];
            a[4 * i + 2] = b[2];
            a[4 * i + 3] = b[3];
            i += 1;
        }
        // ::ffff:a.b.c.d from a dual-stack socket goes out as IPv4: judged as IPv4.
        if w[0] == 0 && w[1] == 0 && is_mapped(w[2]) {
            let mut m = [0u8; 16];
            m[..4].copy_from_slice(&a[12..16]);
            (family::IPV4, m)
        } else {
            (family::IPV6, a)
        }
    } else {
        let ip = unsafe { (*sa).user_ip4 };
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&ip.to_ne_bytes());
        (family::IPV4, a)
    };
    // The port's two bytes in network order in the low half of the word.
    let port = u16::from_be(unsafe { (*sa).user_port } as u16);
    let protocol = unsafe { (*sa).protocol } as u8;

    let allowed = lookup(fam, port, addr) || lookup(fam, 0, addr);
    let enforce = match EGRESS_STATE.get(0) {
        Some(s) => s.mode == MODE_ENFORCE,
        None => true,
    };
    let verdict = if allowed {
        ALLOWED
    } else if enforce {
        REFUSED
    } else {
        OBSERVED
    };
    count(SeenKey { addr, port, family: fam, protocol, verdict, hook, _pad: [0; 2] });
    if verdict == REFUSED { REFUSE } else { PASS }
}

/// The third word of an IPv4-mapped IPv6 address (`::ffff:0:0/96`), as read from the context.
#[inline(always)]
fn is_mapped(w2: u32) -> bool {
    w2.to_ne_bytes() == [0, 0, 0xff, 0xff]
}

#[inline(always)]
fn lookup(fam: u8, port: u16, addr: [u8; 16]) -> bool {
    let bits = if fam == family::IPV4 { 32 } else { 128 };
    let key = Key::new(ALLOW_KEY_FIXED_BITS + bits, AllowKey { port, family: fam, _pad: 0, addr });
    EGRESS_ALLOW.get(&key).is_some()
}

#[inline(always)]
fn count(key: SeenKey) {
    let now = unsafe { bpf_ktime_get_ns() };
    if bump(&key, now) {
        return;
    }
    if EGRESS_SEEN.insert(key, first(now), u64::from(BPF_NOEXIST)).is_ok() {
        return;
    }
    // Inserted meanwhile by another CPU, or the map is full.
    if bump(&key, now) {
        return;
    }
    if let Some(o) = EGRESS_OVERFLOW.get_ptr_mut(0) {
        let i = key.verdict as usize;
        if i < VERDICTS {
            // SAFETY: this CPU's map value, live while the program runs.
            unsafe { (*o).attempts[i] += 1 };
        }
    }
}

/// This CPU's first attempt on a tuple: the time and who tried.
#[inline(always)]
fn first(now: u64) -> Seen {
    Seen {
        count: 1,
        first_ns: now,
        last_ns: now,
        pid: (bpf_get_current_pid_tgid() >> 32) as u32,
        _pad: 0,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    }
}

/// One more attempt on a tuple already in the map. Its value on this CPU is zero when another
/// CPU inserted it: then this is this CPU's first attempt.
#[inline(always)]
fn bump(key: &SeenKey, now: u64) -> bool {
    match EGRESS_SEEN.get_ptr_mut(key) {
        Some(s) => {
            // SAFETY: this CPU's map value, live while the program runs.
            unsafe {
                if (*s).count == 0 {
                    *s = first(now);
                } else {
                    (*s).count += 1;
                    (*s).last_ns = now;
                }
            }
            true
        }
        None => false,
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the verifier rejects any path that could get here.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
