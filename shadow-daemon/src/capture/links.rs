//! Which interfaces to capture on, and when they come and go: name patterns (`eth0`, `veth*`,
//! `lxc*`, `cali*`), the interfaces present now, and a netlink watcher that reports links
//! created and deleted (a pod starting or ending on a node).

use std::io;

use netlink_packet_core::{NLMSG_ALIGNTO, NetlinkBuffer, NlasIterator, parse_string};
use netlink_packet_route::link::LinkHeader;

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

/// Parse one datagram of rtnetlink messages with `netlink-packet-core`'s checked views: each
/// message's length, then `RTM_NEWLINK`/`RTM_DELLINK`'s header (`netlink-packet-route`'s) and
/// its attributes walked without decoding, only the name read. The rest of a link message
/// (statistics, per-family and per-kind nests) is not decoded, so a kernel newer than the crate
/// cannot make a link's event unreadable. Anything malformed (the kernel is the only sender, but
/// nothing is trusted) ends the datagram with [`LinkEvent::Resync`]: what came before is kept,
/// and the caller re-lists rather than guess what was lost.
pub fn parse_link_messages(buf: &[u8]) -> Vec<LinkEvent> {
    let mut out = Vec::new();
    let mut rest = buf;
    while !rest.is_empty() {
        let Ok(msg) = NetlinkBuffer::new_checked(rest) else {
            out.push(LinkEvent::Resync);
            break;
        };
        let ty = msg.message_type();
        if ty == libc::RTM_NEWLINK || ty == libc::RTM_DELLINK {
            match link_event(ty, msg.payload()) {
                Ok(Some(e)) => out.push(e),
                Ok(None) => {}
                Err(()) => {
                    out.push(LinkEvent::Resync);
                    break;
                }
            }
        }
        let next = (msg.length() as usize).next_multiple_of(usize::from(NLMSG_ALIGNTO));
        rest = rest.get(next..).unwrap_or_default();
    }
    out
}

/// One link message's event: `None` for a link without a name (none the kernel sends).
fn link_event(ty: u16, payload: &[u8]) -> Result<Option<LinkEvent>, ()> {
    let header = LinkHeader::parse(payload).map_err(|_| ())?;
    let attrs = payload.get(LINK_HEADER_LEN..).ok_or(())?;
    let mut name = None;
    for nla in NlasIterator::new(attrs) {
        let nla = nla.map_err(|_| ())?;
        if nla.kind() == libc::IFLA_IFNAME {
            name = Some(parse_string(nla.value()).map_err(|_| ())?);
        }
    }
    let (index, Some(name)) = (header.index, name.filter(|n| !n.is_empty())) else { return Ok(None) };
    Ok(Some(if ty == libc::RTM_NEWLINK { LinkEvent::New { index, name } } else { LinkEvent::Deleted { index, name } }))
}

/// `struct ifinfomsg`.
const LINK_HEADER_LEN: usize = 16;

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
        assert!(p("eth0") != p("eth1") && p("eth*") != p("eth?"), "patterns are equal by their text");
        assert_eq!(p(" veth* ").to_string(), "veth*", "shown as written, trimmed");
        // IFNAMSIZ - 1 bytes is a name; one more is not (unless it is a pattern).
        assert!(InterfacePattern::parse("fifteen-bytes-x").is_ok());
        assert!(InterfacePattern::parse("sixteen-bytes-xx").is_err());
        assert!(InterfacePattern::parse("sixteen-bytes-x*").is_ok());
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

    /// A link message as the kernel frames it, through netlink-packet-route's own emitter:
    /// an MTU before the name, to walk past.
    fn msg(kind: &str, index: u32, name: Option<&str>) -> Vec<u8> {
        use netlink_packet_core::NetlinkMessage;
        use netlink_packet_route::{
            RouteNetlinkMessage,
            link::{LinkAttribute, LinkMessage},
        };
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.attributes.push(LinkAttribute::Mtu(1500));
        if let Some(n) = name {
            link.attributes.push(LinkAttribute::IfName(n.into()));
        }
        let payload = match kind {
            "new" => RouteNetlinkMessage::NewLink(link),
            "del" => RouteNetlinkMessage::DelLink(link),
            _ => RouteNetlinkMessage::SetLink(link),
        };
        let mut m = NetlinkMessage::from(payload);
        m.finalize();
        let mut out = vec![0u8; m.buffer_len()];
        m.serialize(&mut out);
        out
    }

    #[test]
    fn link_messages_parse_and_garbage_asks_for_a_relisting() {
        let parts = [
            (msg("new", 7, Some("veth7")), Some(LinkEvent::New { index: 7, name: "veth7".into() })),
            (msg("del", 5, Some("lxc5")), Some(LinkEvent::Deleted { index: 5, name: "lxc5".into() })),
            (msg("new", 9, None), None),         // no name: nothing to follow
            (msg("set", 3, Some("eth3")), None), // RTM_SETLINK: not a notification
            (
                msg("new", 11, Some("a-name-of-15-by")),
                Some(LinkEvent::New { index: 11, name: "a-name-of-15-by".into() }),
            ),
        ];
        let d: Vec<u8> = parts.iter().flat_map(|(m, _)| m.clone()).collect();
        let want: Vec<LinkEvent> = parts.iter().filter_map(|(_, e)| e.clone()).collect();
        assert_eq!(parse_link_messages(&d), want);
        assert_eq!(want.len(), 3);
        assert!(parse_link_messages(&[]).is_empty());
        // Every truncation parses without panicking: the events of the whole messages before
        // the cut, in order, then a re-listing when the cut is inside a message.
        for cut in 1..d.len() {
            let (mut end, mut events, mut boundary) = (0, Vec::new(), false);
            for (m, e) in &parts {
                end += m.len();
                if end > cut {
                    break;
                }
                events.extend(e.clone());
                boundary = end == cut;
            }
            if !boundary {
                events.push(LinkEvent::Resync);
            }
            assert_eq!(parse_link_messages(&d[..cut]), events, "cut at {cut}");
        }
        // A length field pointing past the end, or below a header's, stops with a re-listing.
        for len in [9999u32, 0, 15] {
            let mut bad = msg("new", 1, Some("x"));
            bad[0..4].copy_from_slice(&len.to_ne_bytes());
            assert_eq!(parse_link_messages(&bad), vec![LinkEvent::Resync], "length {len}");
        }
        // A name attribute longer than its message, and a name that is not UTF-8.
        let mut bad = msg("new", 1, Some("eth1"));
        let at = bad.len() - 8; // the name attribute: 4 header bytes, "eth1\0" padded to 8
        bad[at - 4..at - 2].copy_from_slice(&200u16.to_ne_bytes());
        assert_eq!(parse_link_messages(&bad), vec![LinkEvent::Resync]);
        let mut bad = msg("new", 1, Some("eth1"));
        let at = bad.len() - 8;
        bad[at] = 0xff;
        assert_eq!(parse_link_messages(&bad), vec![LinkEvent::Resync]);
        // A link header cut short inside a message of consistent length.
        let mut short = vec![0u8; 16 + 8];
        short[0..4].copy_from_slice(&24u32.to_ne_bytes());
        short[4..6].copy_from_slice(&libc::RTM_NEWLINK.to_ne_bytes());
        assert_eq!(parse_link_messages(&short), vec![LinkEvent::Resync]);
    }

    #[test]
    fn lists_this_namespaces_interfaces() {
        let l = list_interfaces().expect("if_nameindex");
        assert!(l.iter().any(|(_, n)| n == "lo"), "{l:?}");
    }
}
