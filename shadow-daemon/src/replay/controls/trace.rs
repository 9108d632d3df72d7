//! What a rule decides about the trace context of the requests it replays (see `replay::trace`
//! for the edit itself): isolate or keep, the sampling decision of a restarted context, and the
//! baggage member that marks shadow traffic downstream.

use std::{fmt, str::FromStr};

use super::is_token;

/// What happens to a replayed request's trace headers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TraceMode {
    /// Fresh ids, the production trace linked only in `tracestate`.
    #[default]
    Isolate,
    /// Every trace header as captured (for a shadow whose tracing goes elsewhere anyway).
    Keep,
}

impl FromStr for TraceMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "isolate" => Ok(Self::Isolate),
            "keep" => Ok(Self::Keep),
            _ => Err(format!("'{s}' is not isolate or keep")),
        }
    }
}

/// The sampling decision a restarted trace context carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TraceSampled {
    /// The production's decision, as captured.
    #[default]
    Inherit,
    Always,
    Never,
}

impl TraceSampled {
    pub(crate) fn apply(self, sampled: bool) -> bool {
        match self {
            Self::Inherit => sampled,
            Self::Always => true,
            Self::Never => false,
        }
    }

    /// `flags` with its lowest bit (sampled, in every format that has flags) set as decided.
    pub(crate) fn flags(self, flags: u8) -> u8 {
        if self.apply(flags & 1 == 1) { flags | 1 } else { flags & !1 }
    }
}

impl FromStr for TraceSampled {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "inherit" => Ok(Self::Inherit),
            "always" => Ok(Self::Always),
            "never" => Ok(Self::Never),
            _ => Err(format!("'{s}' is not inherit, always or never")),
        }
    }
}

pub const DEFAULT_SHADOW_BAGGAGE: &str = "shadow=true";

/// The baggage member that marks shadow traffic downstream; `None` (an empty setting) adds none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShadowBaggage(Option<String>);

impl ShadowBaggage {
    pub fn member(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

impl Default for ShadowBaggage {
    fn default() -> Self {
        Self(Some(DEFAULT_SHADOW_BAGGAGE.to_owned()))
    }
}

impl FromStr for ShadowBaggage {
    type Err = String;

    /// `KEY=VALUE` by the W3C Baggage grammar (the key a token, the value baggage octets, no
    /// properties), or empty for no marker.
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t.is_empty() {
            return Ok(Self(None));
        }
        let (k, v) = t.split_once('=').ok_or_else(|| format!("'{s}' is not KEY=VALUE (or empty for no marker)"))?;
        if !is_token(k.as_bytes()) {
            return Err(format!("'{s}': the key must be an HTTP token"));
        }
        if v.is_empty() || !v.bytes().all(is_baggage_octet) {
            return Err(format!(
                "'{s}': the value must be printable ASCII without spaces, '\"', ',', ';' or '\\\\' (percent-encode them)"
            ));
        }
        Ok(Self(Some(t.to_owned())))
    }
}

impl fmt::Display for ShadowBaggage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_deref().unwrap_or(""))
    }
}

/// W3C Baggage `baggage-octet`.
fn is_baggage_octet(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E)
}
