//! Crafted Ethernet frames for BPF_PROG_TEST_RUN (kernel tier A) and the cost benchmark.

use std::net::IpAddr;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_ARP: u16 = 0x0806;

/// Description of one TCP segment to put on the wire.
#[derive(Clone, Debug)]
pub struct Tcp<'a> {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub payload: &'a [u8],
    /// IPv6 extension headers to insert before TCP: (next-header type, total length in bytes).
    pub ipv6_ext: &'a [(u8, usize)],
    /// IPv4 fragment offset/MF field (host order), 0 for an unfragmented datagram.
    pub frag: u16,
    /// Extra bytes after the IP datagram (Ethernet padding), not counted in the IP length.
    pub trailer: usize,
}

impl<'a> Tcp<'a> {
    pub fn new(src: &str, sport: u16, dst: &str, dport: u16, payload: &'a [u8]) -> Self {
        Self {
            src: src.parse().expect("src address"),
            dst: dst.parse().expect("dst address"),
            sport,
            dport,
            seq: 1000,
            ack: 1,
            flags: 0x18, // PSH|ACK
            payload,
            ipv6_ext: &[],
            frag: 0,
            trailer: 0,
        }
    }
}

fn eth(proto: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(128);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 2]);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&proto.to_be_bytes());
    f
}

fn tcp_header(t: &Tcp<'_>) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[0..2].copy_from_slice(&t.sport.to_be_bytes());
    h[2..4].copy_from_slice(&t.dport.to_be_bytes());
    h[4..8].copy_from_slice(&t.seq.to_be_bytes());
    h[8..12].copy_from_slice(&t.ack.to_be_bytes());
    h[12] = 5 << 4;
    h[13] = t.flags;
    h[14..16].copy_from_slice(&65535u16.to_be_bytes());
    h
}

/// An Ethernet frame carrying `t`.
pub fn tcp(t: &Tcp<'_>) -> Vec<u8> {
    let l4 = tcp_header(t);
    let mut f = match (t.src, t.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut f = eth(ETH_P_IP);
            let tot = (20 + 20 + t.payload.len()) as u16;
            f.extend_from_slice(&[0x45, 0]);
            f.extend_from_slice(&tot.to_be_bytes());
            f.extend_from_slice(&[0, 1]);
            f.extend_from_slice(&t.frag.to_be_bytes());
            f.extend_from_slice(&[64, 6, 0, 0]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
            f
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut f = eth(ETH_P_IPV6);
            let ext_len: usize = t.ipv6_ext.iter().map(|(_, l)| l).sum();
            let plen = (ext_len + 20 + t.payload.len()) as u16;
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&plen.to_be_bytes());
            f.push(t.ipv6_ext.first().map_or(6, |(n, _)| *n));
            f.push(64);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
            for (i, (_, len)) in t.ipv6_ext.iter().enumerate() {
                let next = t.ipv6_ext.get(i + 1).map_or(6, |(n, _)| *n);
                assert!(len % 8 == 0 && *len >= 8, "extension header length must be a multiple of 8");
                f.push(next);
                f.push((len / 8 - 1) as u8);
                f.extend(std::iter::repeat_n(0u8, len - 2));
            }
            f
        }
        _ => panic!("mixed address families"),
    };
    f.extend_from_slice(&l4);
    f.extend_from_slice(t.payload);
    f.extend(std::iter::repeat_n(0u8, t.trailer));
    f
}

/// A UDP datagram to `dport` (must be ignored whatever the port).
pub fn udp(src: &str, dst: &str, dport: u16, payload: &[u8]) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src.parse().expect("src"), dst.parse().expect("dst")) else {
        panic!("udp() takes IPv4 addresses");
    };
    let mut f = eth(ETH_P_IP);
    let tot = (20 + 8 + payload.len()) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&tot.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0, 0, 64, 17, 0, 0]);
    f.extend_from_slice(&s.octets());
    f.extend_from_slice(&d.octets());
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

/// A frame of another ethertype (ARP), padded to the Ethernet minimum.
pub fn arp() -> Vec<u8> {
    let mut f = eth(ETH_P_ARP);
    f.extend(std::iter::repeat_n(0u8, 46));
    f
}
