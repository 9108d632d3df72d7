//! Where a rule's requests go: the shadow's address as configured.

use std::fmt;

/// A shadow service address, `HOST:PORT`. The host may be a name: it is resolved at every new
/// connection, so a shadow that does not resolve yet at start-up is only a counted error.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ShadowTarget {
    /// Host name or IP literal, IPv6 without brackets.
    pub host: String,
    pub port: u16,
}

impl ShadowTarget {
    /// `host:port` as a Host header / authority (IPv6 in brackets).
    pub fn authority(&self) -> String {
        self.to_string()
    }

    fn is_ipv6(&self) -> bool {
        self.host.contains(':')
    }
}

impl fmt::Display for ShadowTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_ipv6() {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl std::str::FromStr for ShadowTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("'{s}' is not HOST:PORT");
        let t = s.trim();
        let (host, port) = t.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        if port == 0 {
            return Err(format!("'{s}': port 0 is not a service port"));
        }
        let host = if let Some(inner) = host.strip_prefix('[') {
            let inner = inner.strip_suffix(']').ok_or_else(bad)?;
            inner.parse::<std::net::Ipv6Addr>().map_err(|_| format!("'{s}': '{inner}' is not an IPv6 address"))?;
            inner
        } else {
            if host.contains(':') {
                return Err(format!("'{s}' is not HOST:PORT (write an IPv6 address in brackets: [::1]:8080)"));
            }
            if !is_host_name(host) {
                return Err(format!("'{s}': '{host}' is not a host name or IP address"));
            }
            host
        };
        Ok(Self { host: host.to_owned(), port })
    }
}

/// Letters, digits, '-', '_' and '.', 1..=253 bytes, no empty label: loose enough for every DNS
/// name in use (including underscores some internal zones have), strict enough to refuse
/// whitespace, URLs and paths.
fn is_host_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| !l.is_empty() && l.len() <= 63)
        && h.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_target_parses_names_ipv4_and_bracketed_ipv6() {
        assert_eq!(
            "shadow.svc:8080".parse::<ShadowTarget>(),
            Ok(ShadowTarget { host: "shadow.svc".into(), port: 8080 })
        );
        assert_eq!("127.0.0.1:9".parse::<ShadowTarget>().map(|t| t.to_string()), Ok("127.0.0.1:9".into()));
        let v6: ShadowTarget = "[::1]:8080".parse().unwrap();
        assert_eq!(v6.host, "::1");
        assert_eq!(v6.authority(), "[::1]:8080");
        for bad in
            ["x", "x:", ":80", "x:0", "x:65536", "::1:80", "[::1:80", "[zz]:80", "http://x:80", "a b:80", "a..b:1"]
        {
            assert!(bad.parse::<ShadowTarget>().is_err(), "{bad} accepted");
        }
        assert!("x".parse::<ShadowTarget>().unwrap_err().contains("'x' is not HOST:PORT"));
    }
}
