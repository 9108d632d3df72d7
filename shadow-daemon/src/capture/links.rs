//! Which interfaces to capture on, and when they come and go: name patterns (`eth0`, `veth*`,
//! `lxc*`, `cali*`), the interfaces present now, and a netlink watcher that reports links
//! created and deleted (a pod starting or ending on a node).

use std::io;

use crate::sys::{
    self,
    netlink::{LinkSocket, Received},
};

/// One `--interface` item: a name, or a glob with `*` (any run of characters) and `?` (one);
/// every other character is itself (globset, with the rest escaped).
#[derive(Clone, Debug)]
pub struct InterfacePattern {
    text: String,
    glob: Option<globset::GlobMatcher>,
}

impl PartialEq for InterfacePattern {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for InterfacePattern {}

impl InterfacePattern {
    /// Interface names are at most 15 bytes (IFNAMSIZ - 1) of printable ASCII without `/`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty interface name".into());
        }
        if s.len() > 15 && !s.contains(['*', '?']) {
            return Err(format!("'{s}' is longer than an interface name can be (15 bytes)"));
        }
        if !s.bytes().all(|b| b.is_ascii_graphic() && b != b'/') {
            return Err(format!("'{s}' is not an interface name or pattern"));
        }
        let glob = if s.contains(['*', '?']) {
            // Only `*` and `?` are wild in an interface pattern: `[`, `{` and `\` are characters
            // of a name, escaped for globset.
            let mut g = String::with_capacity(s.len() * 2);
            for c in s.chars() {
                if matches!(c, '*' | '?') {
                    g.push(c);
                } else {
                    g.push_str(&globset::escape(c.encode_utf8(&mut [0; 4])));
                }
            }
            let built = globset::GlobBuilder::new(&g)
                .backslash_escape(false)
                .build()
                .map_err(|e| format!("'{s}': {}", e.kind()))?;
            Some(built.compile_matcher())
        } else {
            None
        };
        Ok(Self { text: s.to_string(), glob })
    }

    /// A comma-separated list, as `--interface eth0,veth*` takes it.
    pub fn parse_list(s: &str) -> Result<Vec<Self>, String> {
        s.split(',')
            .filter(|p| !p.trim().is_empty())
            .map(Self::parse)
            .collect::<Result<Vec<_>, _>>()
            .and_then(|v| if v.is_empty() { Err("no interface given".into()) } else { Ok(v) })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn is_glob(&self) -> bool {
        self.glob.is_some()
    }

    pub fn matches(&self, name: &str) -> bool {
        match &self.glob {
            Some(g) => g.is_match(name),
            None => self.text == name,
        }
    }
}

impl std::fmt::Display for InterfacePattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Does any of `patterns` match `name`?
pub fn any_matches(patterns: &[InterfacePattern], name: &str) -> bool {
    patterns.iter().any(|p| p.matches(name))
}

/// The interfaces of this network namespace now: (index, name).
pub fn list_interfaces() -> io::Result<Vec<(u32, String)>> {
    sys::net::interfaces()
}

/// A link change the kernel announced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// Created, renamed, or changed (flags): (index, current name).
    New {
        index: u32,
        name: String,
    },
    Deleted {
        index: u32,
        name: String,
    },
    /// Messages were lost (the socket overran): the caller must re-list the interfaces.
    Resync,
}

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;
const RTA_HDRLEN: usize = 4;
const IFLA_IFNAME: u16 = 3;

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Parse one datagram of rtnetlink messages. Malformed parts end the parse of that datagram
/// (what came before it is kept): the kernel is the only sender, but nothing is trusted.
pub fn parse_link_messages(buf: &[u8]) -> Vec<LinkEvent> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + NLMSG_HDRLEN <= buf.len() {
        let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
        let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        if len < NLMSG_HDRLEN || off + len > buf.len() {
            break;
        }
        let msg = &buf[off + NLMSG_HDRLEN..off + len];
        if (ty == RTM_NEWLINK || ty == RTM_DELLINK) && msg.len() >= IFINFOMSG_LEN {
            let index = i32::from_ne_bytes([msg[4], msg[5], msg[6], msg[7]]);
            if let (Ok(index), Some(name)) = (u32::try_from(index), ifname(&msg[IFINFOMSG_LEN..])) {
                out.push(if ty == RTM_NEWLINK {
                    LinkEvent::New { index, name }
                } else {
                    LinkEvent::Deleted { index, name }
                });
            }
        }
        off += align4(len);
    }
    out
}

fn ifname(mut attrs: &[u8]) -> Option<String> {
    while attrs.len() >= RTA_HDRLEN {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let ty = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < RTA_HDRLEN || len > attrs.len() {
            return None;
        }
        if ty == IFLA_IFNAME {
            let v = &attrs[RTA_HDRLEN..len];
            let v = v.split(|&b| b == 0).next().unwrap_or_default();
            return std::str::from_utf8(v).ok().filter(|s| !s.is_empty()).map(str::to_string);
        }
        attrs = attrs.get(align4(len)..).unwrap_or_default();
    }
    None
}

/// Subscribed to the kernel's link notifications (RTMGRP_LINK) in this network namespace.
pub struct LinkWatcher {
    socket: LinkSocket,
    buf: Vec<u8>,
}

impl LinkWatcher {
    /// Must run inside a tokio runtime.
    pub fn new() -> io::Result<Self> {
        Ok(Self { socket: LinkSocket::open()?, buf: vec![0u8; 64 * 1024] })
    }

    /// Wait for the next batch of link events.
    pub async fn next(&mut self) -> io::Result<Vec<LinkEvent>> {
        loop {
            let n = match self.socket.recv(&mut self.buf).await? {
                Received::Datagram(n) => n,
                Received::Overrun => return Ok(vec![LinkEvent::Resync]),
            };
            let events = parse_link_messages(&self.buf[..n]);
            if !events.is_empty() {
                return Ok(events);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_names() {
        let p = |s| InterfacePattern::parse(s).expect("pattern");
        assert!(p("veth*").matches("veth1a2b"));
        assert!(p("veth*").matches("veth"));
        assert!(!p("veth*").matches("eth0"));
        assert!(p("eth0").matches("eth0"));
        assert!(!p("eth0").matches("eth01"));
        assert!(p("e?h*").matches("eth12"));
        assert!(p("*0").matches("eth0"));
        assert!(p("*a*b*").matches("xxaxxbxx"));
        assert!(!p("*a*b*").matches("xxbxxaxx"));
        assert!(p("*").matches("anything"));
        assert!(!p("lxc?").matches("lxc"));
        // Only `*` and `?` are wild: brackets, braces and backslashes are a name's own.
        assert!(p("e[0]*").matches("e[0]x"));
        assert!(!p("e[0]*").matches("e0x"));
        assert!(p("{a,b}?").matches("{a,b}1"));
        assert!(!p("{a,b}?").matches("a1"));
        assert!(p("x\\*").matches("x\\1"));
        assert!(p("eth0") == InterfacePattern::parse(" eth0 ").expect("pattern"));
        assert!(!p("eth0").is_glob() && p("eth?").is_glob());
    }

    #[test]
    fn pattern_lists_parse_and_bad_names_are_named() {
        let v = InterfacePattern::parse_list("eth0, veth*,lxc*").expect("list");
        assert_eq!(v.iter().map(|p| p.as_str()).collect::<Vec<_>>(), ["eth0", "veth*", "lxc*"]);
        assert!(any_matches(&v, "lxc9"));
        assert!(!any_matches(&v, "cali1"));
        for bad in ["", " , ", "a/b", "sixteen-bytes-xx", "bad name"] {
            assert!(InterfacePattern::parse_list(bad).is_err(), "{bad:?}");
        }
    }

    fn msg(ty: u16, index: i32, name: Option<&[u8]>) -> Vec<u8> {
        let mut body = vec![0u8; IFINFOMSG_LEN];
        body[4..8].copy_from_slice(&index.to_ne_bytes());
        // An attribute before the name, to walk past.
        body.extend_from_slice(&8u16.to_ne_bytes());
        body.extend_from_slice(&4u16.to_ne_bytes()); // IFLA_MTU
        body.extend_from_slice(&1500u32.to_ne_bytes());
        if let Some(n) = name {
            let len = RTA_HDRLEN + n.len() + 1;
            body.extend_from_slice(&(len as u16).to_ne_bytes());
            body.extend_from_slice(&IFLA_IFNAME.to_ne_bytes());
            body.extend_from_slice(n);
            body.push(0);
            body.resize(align4(body.len()), 0);
        }
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&[0u8; 10]);
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn link_messages_parse_and_garbage_is_bounded() {
        let mut d = msg(RTM_NEWLINK, 7, Some(b"veth7"));
        d.extend(msg(RTM_DELLINK, 5, Some(b"lxc5")));
        d.extend(msg(RTM_NEWLINK, 9, None)); // no name: ignored
        d.extend(msg(20, 3, Some(b"addr"))); // RTM_NEWADDR: ignored
        assert_eq!(
            parse_link_messages(&d),
            vec![
                LinkEvent::New { index: 7, name: "veth7".into() },
                LinkEvent::Deleted { index: 5, name: "lxc5".into() }
            ]
        );
        // Every truncation of the datagram parses without panicking and keeps a prefix.
        for cut in 0..d.len() {
            let got = parse_link_messages(&d[..cut]);
            assert!(got.len() <= 2);
        }
        // A length field pointing past the end stops the parse.
        let mut bad = msg(RTM_NEWLINK, 1, Some(b"x"));
        bad[0..4].copy_from_slice(&9999u32.to_ne_bytes());
        assert!(parse_link_messages(&bad).is_empty());
        let mut zero = msg(RTM_NEWLINK, 1, Some(b"x"));
        zero[0..4].copy_from_slice(&0u32.to_ne_bytes());
        assert!(parse_link_messages(&zero).is_empty());
    }

    #[test]
    fn lists_this_namespaces_interfaces() {
        let l = list_interfaces().expect("if_nameindex");
        assert!(l.iter().any(|(_, n)| n == "lo"), "{l:?}");
    }
}
