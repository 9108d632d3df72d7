//! What a fenced shadow may reach: `CIDR[:PORT]` entries (`10.0.0.0/8:5432`, `127.0.0.1/32:9091`,
//! `[fd00::/8]:443`, `fd00::/8`, a plain address for one host), and their keys in the kernel's
//! allowlist trie. Strict: an address with bits set past its prefix is refused (it is almost
//! always a typo for a wider or narrower net), and so is port 0.

use std::{fmt, net::IpAddr, str::FromStr};

use shadow_common::{
    egress::{ALLOW_KEY_FIXED_BITS, AllowKey},
    family,
};

/// One allowed destination: a net and, optionally, one port (any port when `None`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AllowEntry {
    pub net: IpAddr,
    pub prefix: u8,
    pub port: Option<u16>,
}

impl AllowEntry {
    /// The trie key and its prefix length in bits (the fixed port/family part included).
    pub fn key(&self) -> (u32, AllowKey) {
        let mut addr = [0u8; 16];
        let fam = match self.net {
            IpAddr::V4(a) => {
                addr[..4].copy_from_slice(&a.octets());
                family::IPV4
            }
            IpAddr::V6(a) => {
                addr = a.octets();
                family::IPV6
            }
        };
        let key = AllowKey { port: self.port.unwrap_or(0), family: fam, _pad: 0, addr };
        (ALLOW_KEY_FIXED_BITS + u32::from(self.prefix), key)
    }

    /// Does this entry allow `addr:port`? (What the kernel decides, for tests and reports.)
    pub fn allows(&self, addr: IpAddr, port: u16) -> bool {
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        ipnet::IpNet::new(self.net, self.prefix).is_ok_and(|n| n.contains(&addr))
    }
}

/// `addr` with every bit past `prefix` (in range for its family) cleared.
fn masked(addr: IpAddr, prefix: u8) -> IpAddr {
    ipnet::IpNet::new(addr, prefix).map_or(addr, |n| n.trunc().addr())
}

impl FromStr for AllowEntry {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let bad = || format!("'{t}' is not CIDR[:PORT] (e.g. 10.0.0.0/8:5432, 127.0.0.1/32, [fd00::/8]:443)");
        let (net, port) = if let Some(rest) = t.strip_prefix('[') {
            let (net, after) = rest.split_once(']').ok_or_else(bad)?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(bad)?),
            };
            (net, port)
        } else if t.matches(':').count() > 1 {
            // A bare IPv6 net: no port (a port needs the brackets).
            (t, None)
        } else {
            match t.split_once(':') {
                Some((n, p)) => (n, Some(p)),
                None => (t, None),
            }
        };
        let (addr, prefix) = match net.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (net, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(format!("'{t}': the prefix length must be 0-{max}")),
            },
        };
        let port = match port {
            None => None,
            Some(p) => match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(format!("'{t}': the port must be 1-65535")),
                Ok(p) => Some(p),
            },
        };
        let net = masked(addr, prefix);
        if net != addr {
            let entry = Self { net, prefix, port };
            return Err(format!("'{t}' has bits set past its /{prefix} prefix: did you mean {entry}?"));
        }
        Ok(Self { net, prefix, port })
    }
}

impl fmt::Display for AllowEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.net, self.port) {
            (IpAddr::V4(a), None) => write!(f, "{a}/{}", self.prefix),
            (IpAddr::V4(a), Some(p)) => write!(f, "{a}/{}:{p}", self.prefix),
            (IpAddr::V6(a), None) => write!(f, "{a}/{}", self.prefix),
            (IpAddr::V6(a), Some(p)) => write!(f, "[{a}/{}]:{p}", self.prefix),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(s: &str) -> AllowEntry {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn every_written_form_parses_and_prints_back() {
        for (text, shown) in [
            ("10.0.0.0/8:5432", "10.0.0.0/8:5432"),
            ("127.0.0.1/32:9091", "127.0.0.1/32:9091"),
            ("10.96.0.10/32:53", "10.96.0.10/32:53"),
            ("127.0.0.1", "127.0.0.1/32"),
            ("127.0.0.1:80", "127.0.0.1/32:80"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("fd00::/8", "fd00::/8"),
            ("[fd00::/8]:443", "[fd00::/8]:443"),
            ("[::1]:9091", "[::1/128]:9091"),
            ("::1", "::1/128"),
            ("[::/0]", "::/0"),
            (" 10.1.0.0/16 ", "10.1.0.0/16"),
            // Prefixes that end inside a byte, with that byte's kept bits set.
            ("10.128.0.0/9", "10.128.0.0/9"),
            ("10.192.0.0/10:80", "10.192.0.0/10:80"),
            ("fd80::/9", "fd80::/9"),
        ] {
            assert_eq!(entry(text).to_string(), shown, "{text}");
            assert_eq!(entry(shown), entry(text), "{shown} reads back");
        }
    }

    #[test]
    fn mistakes_are_refused_with_what_was_meant() {
        for (text, says) in [
            ("10.1.2.3/8", "did you mean 10.0.0.0/8?"),
            ("10.1.2.3/8:443", "did you mean 10.0.0.0/8:443?"),
            ("fd00::1/8", "did you mean fd00::/8?"),
            ("10.192.0.0/9", "did you mean 10.128.0.0/9?"),
            ("10.130.0.0/9", "did you mean 10.128.0.0/9?"),
            ("fdc0::/9", "did you mean fd80::/9?"),
            ("10.0.0.0/33", "prefix length must be 0-32"),
            ("fd00::/129", "prefix length must be 0-128"),
            ("10.0.0.0/8:0", "port must be 1-65535"),
            ("10.0.0.0/8:65536", "port must be 1-65535"),
            ("10.0.0.0/8:", "port must be 1-65535"),
            ("[fd00::/8]443", "is not CIDR[:PORT]"),
            ("[fd00::/8", "is not CIDR[:PORT]"),
            ("example.com:443", "is not CIDR[:PORT]"),
            ("", "is not CIDR[:PORT]"),
            ("10.0.0.0/x", "prefix length"),
        ] {
            let e = text.parse::<AllowEntry>().expect_err(text);
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn keys_carry_the_port_the_family_and_the_prefix_bits() {
        let (bits, k) = entry("10.0.0.0/8:5432").key();
        assert_eq!(bits, 32 + 8);
        assert_eq!((k.port, k.family), (5432, family::IPV4));
        assert_eq!(k.addr[..4], [10, 0, 0, 0]);
        assert!(k.addr[4..].iter().all(|b| *b == 0));
        let (bits, k) = entry("fd00::/8").key();
        assert_eq!(bits, 32 + 8);
        assert_eq!((k.port, k.family, k.addr[0]), (0, family::IPV6, 0xfd));
        let (bits, _) = entry("::1").key();
        assert_eq!(bits, 32 + 128);
    }

    #[test]
    fn allows_matches_the_prefix_bit_by_bit_and_the_port() {
        let e = entry("10.0.0.0/9:443");
        let v4 = |s: &str| IpAddr::V4(s.parse().expect("v4"));
        assert!(e.allows(v4("10.127.255.255"), 443));
        assert!(!e.allows(v4("10.128.0.0"), 443), "bit 9 differs");
        assert!(!e.allows(v4("10.0.0.1"), 444));
        assert!(!e.allows(IpAddr::V6("::ffff:10.0.0.1".parse().expect("v6")), 443), "families apart");
        let any = entry("192.168.1.0/24");
        assert!(any.allows(v4("192.168.1.200"), 1));
        assert!(!any.allows(v4("192.168.2.1"), 1));
        assert!(entry("0.0.0.0/0").allows(v4("8.8.8.8"), 53));
        let e6 = entry("[fd00::/15]:53");
        assert!(e6.allows(IpAddr::V6("fd01::1".parse().expect("v6")), 53));
        assert!(!e6.allows(IpAddr::V6("fd02::1".parse().expect("v6")), 53));
    }
}
