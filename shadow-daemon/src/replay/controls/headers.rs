//! Header edits a rule makes on every replayed request: names removed, fields set, the tag, and
//! what the Host header says.

use std::fmt;

/// RFC 9110 `token`: what a method or header name may be made of.
pub fn is_token(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter().all(|&b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// A header name as configured (a token), compared case-insensitively as HTTP requires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderName(String);

impl HeaderName {
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if !is_token(t.as_bytes()) {
            return Err(format!("'{s}' is not a header name"));
        }
        Ok(Self(t.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, wire_name: &[u8]) -> bool {
        wire_name.eq_ignore_ascii_case(self.0.as_bytes())
    }
}

impl fmt::Display for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `Name: value`, for headers that are set on every replayed request. The value may be a secret
/// (a shadow-only credential), so `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct HeaderField {
    pub name: HeaderName,
    pub value: String,
}

impl HeaderField {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (name, value) = s.split_once(':').ok_or_else(|| "expected 'Name: value'".to_owned())?;
        let name = HeaderName::parse(name).map_err(|e| format!("{e} (expected 'Name: value')"))?;
        let value = value.trim_matches([' ', '\t']);
        // Field values may carry any visible byte, space and tab; CR, LF and the other controls
        // would let a value inject header lines into the replayed request.
        if let Some(c) = value.bytes().find(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(format!("header {name}: the value contains the control byte 0x{c:02x}"));
        }
        Ok(Self { name, value: value.to_owned() })
    }
}

impl fmt::Debug for HeaderField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: <{} bytes>", self.name, self.value.len())
    }
}

/// What the replayed request's Host header says.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum HostMode {
    /// The original Host, so a shadow behind the same virtual-host routing behaves as the primary.
    #[default]
    Keep,
    /// The shadow target's HOST:PORT (added if the request had none).
    Target,
    /// The original host name with this suffix appended before any `:port`
    /// (`api.example:8080` → `api.example-shadow:8080`). IP literals and absent Host headers are
    /// left as they are: a suffix would only make them invalid.
    Suffix(String),
}

impl std::str::FromStr for HostMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "keep" => Ok(Self::Keep),
            "target" => Ok(Self::Target),
            t => match t.strip_prefix("suffix:") {
                Some(sfx)
                    if !sfx.is_empty()
                        && sfx.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) =>
                {
                    Ok(Self::Suffix(sfx.to_owned()))
                }
                Some(_) => Err(format!("'{s}': the suffix must be letters, digits, '-', '_' or '.'")),
                None => Err(format!("'{s}' is not keep, target or suffix:SUFFIX")),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_field_refuses_injection_and_hides_its_value() {
        let h = HeaderField::parse("X-Token:  s3cret \t").unwrap();
        assert_eq!(h.name.as_str(), "X-Token");
        assert_eq!(h.value, "s3cret");
        assert!(!format!("{h:?}").contains("s3cret"));
        assert!(HeaderField::parse("X-A: b\r\nEvil: 1").is_err());
        assert!(HeaderField::parse("X A: b").is_err());
        assert!(HeaderField::parse("no colon").is_err());
        assert_eq!(HeaderField::parse("X-Empty:").unwrap().value, "");
    }

    #[test]
    fn host_mode_parses() {
        assert_eq!("keep".parse(), Ok(HostMode::Keep));
        assert_eq!("target".parse(), Ok(HostMode::Target));
        assert_eq!("suffix:-shadow".parse(), Ok(HostMode::Suffix("-shadow".into())));
        assert!("suffix:".parse::<HostMode>().is_err());
        assert!("suffix:a b".parse::<HostMode>().is_err());
        assert!("other".parse::<HostMode>().is_err());
    }
}
