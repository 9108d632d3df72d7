//! Crafted TCP conversations put on a veth with an AF_PACKET socket, for tier B tests of what
//! the kernel has no qdisc to do here (no netem): reordered, overlapping, retransmitted and lost
//! segments. Frames sent on one end of a veth pair arrive at the other end's ingress, where the
//! daemon's TC program sees them; it classifies by port (destination = service port: request,
//! source = service port: response), so both directions of a connection go in through the same
//! ingress.
//!
//! The frames are addressed to a MAC and IP addresses that are not the receiving namespace's, so
//! its stack drops them after the TC hook (PACKET_OTHERHOST) and never answers with a RST.

use std::{
    ffi::CString,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use crate::{frames, topo::NetNs};

pub const SYN: u8 = 0x02;
pub const FIN: u8 = 0x01;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

/// An AF_PACKET socket bound to one interface of a namespace; frames sent on it leave that
/// interface as they are.
pub struct Injector {
    fd: OwnedFd,
    ifindex: i32,
}

impl Injector {
    /// Open on `iface` inside `ns` (the socket is created in the namespace, then usable from any
    /// thread).
    pub fn open(ns: &NetNs, iface: &str) -> Self {
        let name = ns.name.clone();
        let iface = iface.to_string();
        std::thread::spawn(move || {
            NetNs { name }.enter_and_forget();
            let c = CString::new(iface.clone()).expect("interface name");
            // SAFETY: `c` is a NUL-terminated string that outlives the call.
            let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) } as i32;
            assert!(ifindex > 0, "no interface {iface}");
            let proto = (libc::ETH_P_ALL as u16).to_be() as i32;
            // SAFETY: no pointers; the result is checked below.
            let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto) };
            assert!(raw >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
            // SAFETY: `raw` is a new, valid fd that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            let addr = sockaddr_ll(ifindex);
            // SAFETY: `addr` is a sockaddr_ll that lives across the call, its size passed with it.
            let rc = unsafe {
                libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), size_of::<libc::sockaddr_ll>() as libc::socklen_t)
            };
            assert_eq!(rc, 0, "bind AF_PACKET to {iface}: {}", std::io::Error::last_os_error());
            Self { fd, ifindex }
        })
        .join()
        .expect("injector thread")
    }

    /// Put one Ethernet frame on the wire (in call order: one socket, one queue).
    pub fn send(&self, frame: &[u8]) {
        let addr = sockaddr_ll(self.ifindex);
        // SAFETY: the buffer and address are valid for the call.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert_eq!(n, frame.len() as isize, "send frame: {}", std::io::Error::last_os_error());
    }

    pub fn send_all<'a>(&self, frames: impl IntoIterator<Item = &'a Vec<u8>>) {
        for f in frames {
            self.send(f);
        }
    }
}

fn sockaddr_ll(ifindex: i32) -> libc::sockaddr_ll {
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut a: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    a.sll_family = libc::AF_PACKET as u16;
    a.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    a.sll_ifindex = ifindex;
    a.sll_halen = 6;
    a
}

/// One crafted TCP connection: both directions' sequence numbers, so that every frame carries
/// the seq and ack a real pair of stacks would have used. Offsets are stream offsets (0 = the
/// first payload byte after the SYN).
#[derive(Clone, Debug)]
pub struct Conv {
    pub client: IpAddr,
    pub server: IpAddr,
    pub cport: u16,
    pub sport: u16,
    pub c_isn: u32,
    pub s_isn: u32,
    /// Stream bytes the client has sent so far (FIN included once sent).
    pub c_len: u32,
    /// Stream bytes the server has sent so far (FIN included once sent).
    pub s_len: u32,
}

impl Conv {
    pub fn new(client: &str, cport: u16, server: &str, sport: u16, c_isn: u32, s_isn: u32) -> Self {
        Self {
            client: client.parse().expect("client address"),
            server: server.parse().expect("server address"),
            cport,
            sport,
            c_isn,
            s_isn,
            c_len: 0,
            s_len: 0,
        }
    }

    fn frame(&self, from_client: bool, seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let (src, sport, dst, dport) = if from_client {
            (self.client, self.cport, self.server, self.sport)
        } else {
            (self.server, self.sport, self.client, self.cport)
        };
        frames::tcp(&frames::Tcp {
            src,
            dst,
            sport,
            dport,
            seq,
            ack,
            flags,
            payload,
            ipv6_ext: &[],
            frag: 0,
            trailer: 0,
        })
    }

    /// The three-way handshake: SYN, SYN-ACK, ACK.
    pub fn handshake(&self) -> Vec<Vec<u8>> {
        vec![
            self.frame(true, self.c_isn, 0, SYN, &[]),
            self.frame(false, self.s_isn, self.c_isn.wrapping_add(1), SYN | ACK, &[]),
            self.frame(true, self.c_isn.wrapping_add(1), self.s_isn.wrapping_add(1), ACK, &[]),
        ]
    }

    /// A client segment carrying `data` at stream offset `off`, acknowledging everything the
    /// server has sent so far. Does not move `c_len` (see [`Conv::request`]).
    pub fn client_at(&self, off: u32, data: &[u8]) -> Vec<u8> {
        let seq = self.c_isn.wrapping_add(1).wrapping_add(off);
        self.frame(true, seq, self.s_isn.wrapping_add(1).wrapping_add(self.s_len), PSH | ACK, data)
    }

    /// The client sends `bytes` next, cut into segments at the given offsets (relative to
    /// `bytes`); returns the segments in order and moves `c_len` past them.
    pub fn request(&mut self, bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut bounds = vec![0];
        bounds.extend(cuts.iter().copied().filter(|&c| c > 0 && c < bytes.len()));
        bounds.push(bytes.len());
        let segs = bounds.windows(2).map(|w| self.client_at(self.c_len + w[0] as u32, &bytes[w[0]..w[1]])).collect();
        self.c_len += bytes.len() as u32;
        segs
    }

    /// The server answers with `bytes` in one segment, acknowledging everything the client has
    /// sent so far.
    pub fn response(&mut self, bytes: &[u8]) -> Vec<u8> {
        let seq = self.s_isn.wrapping_add(1).wrapping_add(self.s_len);
        let f = self.frame(false, seq, self.c_isn.wrapping_add(1).wrapping_add(self.c_len), PSH | ACK, bytes);
        self.s_len += bytes.len() as u32;
        f
    }

    /// The client closes: FIN at its next sequence number.
    pub fn client_fin(&mut self) -> Vec<u8> {
        let f = self.client_at(self.c_len, &[]);
        self.c_len += 1;
        set_flags(f, FIN | ACK)
    }

    /// The server closes: FIN at its next sequence number, acknowledging the client's bytes
    /// and FIN.
    pub fn server_fin(&mut self) -> Vec<u8> {
        let seq = self.s_isn.wrapping_add(1).wrapping_add(self.s_len);
        let f = self.frame(false, seq, self.c_isn.wrapping_add(1).wrapping_add(self.c_len), FIN | ACK, &[]);
        self.s_len += 1;
        f
    }

    /// The client's last ACK of the server's FIN.
    pub fn client_ack(&self) -> Vec<u8> {
        set_flags(self.client_at(self.c_len, &[]), ACK)
    }

    /// The client resets the connection.
    pub fn client_rst(&self) -> Vec<u8> {
        set_flags(self.client_at(self.c_len, &[]), RST | ACK)
    }
}

/// `frame` with its TCP flags replaced.
fn set_flags(mut frame: Vec<u8>, flags: u8) -> Vec<u8> {
    let l4 = match u16::from_be_bytes([frame[12], frame[13]]) {
        frames::ETH_P_IP => 14 + usize::from(frame[14] & 0x0f) * 4,
        _ => 14 + 40,
    };
    frame[l4 + 13] = flags;
    frame
}
