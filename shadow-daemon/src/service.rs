//! Which traffic a rule covers: a service port, on every server address or on one address
//! prefix (`8080`, `10.42.0.0/16:8080`, `10.42.0.7:8080`, `[fd00::/64]:8080`). Two services
//! that share a port on one node are two matches told apart by address; a request belongs to
//! the most specific match of its server address and port, in the kernel (an LPM trie) and in
//! user space (replay routing) alike.

use std::{fmt, net::IpAddr, str::FromStr};

/// An address prefix with its host bits cleared (ipnet's, truncated).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpNet(ipnet::IpNet);

impl IpNet {
    /// `prefix` is clamped to the family's length; host bits are cleared.
    pub fn new(addr: IpAddr, prefix: u8) -> Self {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        // In range once clamped: `new` cannot fail, the fallback is never taken.
        let net = ipnet::IpNet::new(addr, prefix.min(max)).unwrap_or_else(|_| ipnet::IpNet::from(addr));
        Self(net.trunc())
    }

    pub fn addr(&self) -> IpAddr {
        self.0.addr()
    }

    pub fn prefix(&self) -> u8 {
        self.0.prefix_len()
    }

    /// `ip` is of the same family and within the prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip)
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr(), self.prefix())
    }
}

impl FromStr for IpNet {
    type Err = String;

    /// `ADDR` (a single host) or `ADDR/PREFIX`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| format!("'{a}' is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(v) if v <= max => v,
                _ => return Err(format!("'/{p}' is not a prefix length of 0..={max}")),
            },
        };
        Ok(Self::new(addr, prefix))
    }
}

/// A service a rule covers: a port, on any server address (`net` None) or within a prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceMatch {
    pub net: Option<IpNet>,
    pub port: u16,
}

impl ServiceMatch {
    pub const fn any_address(port: u16) -> Self {
        Self { net: None, port }
    }

    pub fn matches(&self, server: IpAddr, port: u16) -> bool {
        self.port == port && self.net.is_none_or(|n| n.contains(server))
    }

    /// Prefix bits that had to match: the most specific match wins.
    pub fn specificity(&self) -> u8 {
        self.net.map_or(0, |n| n.prefix())
    }
}

impl fmt::Display for ServiceMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.net {
            None => write!(f, "{}", self.port),
            Some(n) if n.addr().is_ipv6() => write!(f, "[{n}]:{}", self.port),
            Some(n) => write!(f, "{n}:{}", self.port),
        }
    }
}

impl FromStr for ServiceMatch {
    type Err = String;

    /// `PORT`, `ADDR[/PREFIX]:PORT`, or `[V6ADDR[/PREFIX]]:PORT`.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let parse_port = |p: &str| match p.parse::<u16>() {
            Ok(v) if v > 0 => Ok(v),
            _ => Err(format!("'{p}' is not a port (1-65535)")),
        };
        if let Some(rest) = s.strip_prefix('[') {
            let (net, port) = rest.split_once("]:").ok_or_else(|| format!("'{s}': expected [IPV6/PREFIX]:PORT"))?;
            let net: IpNet = net.parse()?;
            if !net.addr().is_ipv6() {
                return Err(format!("'{s}': brackets are for IPv6 addresses"));
            }
            return Ok(Self { net: Some(net), port: parse_port(port)? });
        }
        match s.rsplit_once(':') {
            None => Ok(Self::any_address(parse_port(s)?)),
            Some((net, port)) => {
                let net: IpNet = net.parse().map_err(|e| {
                    let hint = if net.contains(':') { " (IPv6 goes in brackets: [fd00::/64]:8080)" } else { "" };
                    format!("'{s}': {e}{hint}")
                })?;
                if net.addr().is_ipv6() {
                    return Err(format!("'{s}': write IPv6 in brackets: [{net}]:{port}"));
                }
                Ok(Self { net: Some(net), port: parse_port(port)? })
            }
        }
    }
}

/// Of `candidates` (match, value), the value of the most specific match for (server, port).
pub fn most_specific<'a, T>(
    candidates: impl IntoIterator<Item = (&'a ServiceMatch, T)>,
    server: IpAddr,
    port: u16,
) -> Option<T> {
    candidates.into_iter().filter(|(m, _)| m.matches(server, port)).max_by_key(|(m, _)| m.specificity()).map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> ServiceMatch {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_ports_hosts_prefixes_and_v6_in_brackets() {
        assert_eq!(m("8080"), ServiceMatch::any_address(8080));
        assert_eq!(m("10.42.7.9/16:8080").to_string(), "10.42.0.0/16:8080");
        assert_eq!(m("10.42.7.9:80").to_string(), "10.42.7.9/32:80");
        assert_eq!(m("[fd00::1234/64]:8080").to_string(), "[fd00::/64]:8080");
        assert_eq!(m("[fd00::1]:443").to_string(), "[fd00::1/128]:443");
        for bad in [
            "0",
            "70000",
            "x",
            "10.0.0.0/33:80",
            "fd00::/64:80",
            "[10.0.0.1]:80",
            "10.0.0.1:",
            "[fd00::1]80",
            "300.1.1.1:80",
        ] {
            assert!(bad.parse::<ServiceMatch>().is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["8080", "10.42.0.0/16:8080", "[fd00::/64]:8080", "0.0.0.0/0:1"] {
            assert_eq!(m(&m(s).to_string()), m(s));
        }
    }

    #[test]
    fn contains_respects_prefix_and_family() {
        let n: IpNet = "10.42.0.0/16".parse().unwrap();
        assert!(n.contains("10.42.255.1".parse().unwrap()));
        assert!(!n.contains("10.43.0.1".parse().unwrap()));
        assert!(!n.contains("::ffff:10.42.0.1".parse().unwrap()), "no family mixing");
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        let v6: IpNet = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fdff::1".parse().unwrap()));
        assert!(!v6.contains("fe00::1".parse().unwrap()));
    }

    #[test]
    fn the_most_specific_match_wins_and_ports_must_equal() {
        let rules = [m("8080"), m("10.42.0.0/16:8080"), m("10.42.1.0/24:8080"), m("10.42.1.0/24:9090")];
        let pick = |ip: &str, port| most_specific(rules.iter().zip(0..), ip.parse().unwrap(), port);
        assert_eq!(pick("10.42.1.5", 8080), Some(2));
        assert_eq!(pick("10.42.2.5", 8080), Some(1));
        assert_eq!(pick("10.1.1.1", 8080), Some(0));
        assert_eq!(pick("fd00::1", 8080), Some(0), "any address covers both families");
        assert_eq!(pick("10.42.1.5", 9090), Some(3));
        assert_eq!(pick("10.42.2.5", 9090), None);
        assert_eq!(pick("10.42.1.5", 80), None);
    }
}
