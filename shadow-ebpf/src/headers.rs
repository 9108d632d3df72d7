//! Minimal wire headers and the one bounds-checked accessor used for direct packet access.

use core::mem::size_of;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const IPPROTO_TCP: u8 = 6;

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    /// Network byte order.
    pub proto: u16,
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub ver_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub protocol: u8,
    pub check: u16,
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
}

#[repr(C)]
pub struct Ipv6Hdr {
    pub ver_tc_flow: u32,
    pub payload_len: u16,
    pub next_hdr: u8,
    pub hop_limit: u8,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

/// Generic IPv6 extension header prefix (hop-by-hop, routing, destination options).
#[repr(C)]
pub struct Ipv6ExtHdr {
    pub next_hdr: u8,
    /// Length in 8-octet units, not counting the first 8 octets.
    pub hdr_ext_len: u8,
}

#[repr(C)]
pub struct TcpHdr {
    pub source: u16,
    pub dest: u16,
    pub seq: u32,
    pub ack_seq: u32,
    /// High nibble: data offset in 32-bit words.
    pub doff_res: u8,
    pub flags: u8,
    pub window: u16,
    pub check: u16,
    pub urg_ptr: u16,
}

const _: () = assert!(size_of::<Ipv4Hdr>() == 20);
const _: () = assert!(size_of::<Ipv6Hdr>() == 40);
const _: () = assert!(size_of::<TcpHdr>() == 20);

/// A pointer to a `T` at `offset` from `start`, or `None` when it would reach past `end`.
/// The shape of the comparison is what the verifier needs to see for direct packet access.
#[inline(always)]
pub fn ptr_at<T>(start: usize, end: usize, offset: usize) -> Option<*const T> {
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}
