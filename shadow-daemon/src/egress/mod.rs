//! The egress fence: per rule, cgroup socket-address programs on the shadow's cgroups that
//! count every destination the shadow tries to reach and, in enforce mode, refuse what its
//! allowlist does not name (issue: a shadow must not send the second confirmation e-mail).
//!
//! `allow` (the allowlist's entries) and `cgroups` (paths and globs, expanded as cgroups come and
//! go) are pure; `guard` is one rule's kernel object, pinned under the pin directory so that the
//! fence outlives the daemon (fail closed) and a restarted daemon adopts it; `fence` keeps every
//! rule's guard in step with the config and the cgroups, and tells what was tried.

pub mod allow;
pub mod cgroups;
mod fence;
mod guard;
mod view;

use std::{fmt, str::FromStr};

pub use self::{
    allow::AllowEntry,
    cgroups::CgroupPattern,
    fence::{Fence, Series},
    view::{AttemptCounts, Clocks, DestinationSeen, EgressFinding, EgressStatus, RuleEgress},
};

/// What the fence does with a destination its allowlist does not name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EgressMode {
    /// Refuse it (EPERM) and count it.
    #[default]
    Enforce,
    /// Let it through and count it: to learn what a shadow reaches before enforcing.
    Observe,
}

impl EgressMode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Observe => "observe",
        }
    }
}

impl FromStr for EgressMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "enforce" => Ok(Self::Enforce),
            "observe" => Ok(Self::Observe),
            other => Err(format!("'{other}' is not a mode (enforce or observe)")),
        }
    }
}

impl fmt::Display for EgressMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rule's fence as configured (`[rule.egress]`, `--egress-*`). A rule without cgroups has no
/// fence.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EgressConfig {
    pub cgroups: Vec<CgroupPattern>,
    pub allow: Vec<AllowEntry>,
    pub mode: EgressMode,
}

#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// The pin directory is not on a BPF filesystem, or a cgroup path not on cgroup v2: the
    /// setting is wrong for this host.
    #[error("{0}")]
    Setting(String),
    /// Loading, attaching or pinning failed.
    #[error("egress fence of rule {rule}: {op}: {reason}")]
    Kernel { rule: String, op: String, reason: String },
}

impl EgressError {
    pub const fn exit_code(&self) -> u8 {
        match self {
            Self::Setting(_) => 2,
            Self::Kernel { .. } => 1,
        }
    }
}
