//! One rule: what the config says of it ([`Rule`]) and its key ([`RuleId`]), its position in the
//! config's rule list, the same in every stage that keeps something per rule (the kernel's rule
//! map, replay's lanes, the comparison, the operators' view). Names are for people; stages find
//! a rule by its id.

use std::fmt;

use crate::{
    compare::CompareSettings,
    replay::controls::{ReplayControls, ShadowTarget},
    service::ServiceMatch,
};

/// A rule's position in the config's rules (at most `capture::MAX_RULES`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleId(usize);

impl RuleId {
    pub const fn new(index: usize) -> Self {
        Self(index)
    }

    /// The position, to index a per-rule list.
    pub const fn index(self) -> usize {
        self.0
    }

    /// Every id of a list of `n` rules, in order.
    pub fn all(n: usize) -> impl Iterator<Item = Self> {
        (0..n).map(Self)
    }
}

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rule #{}", self.0)
    }
}

/// One rule as the config file (or the command line) says it: what it matches, how much the
/// kernel samples, where its requests go and under which controls, and how the shadow's
/// answers are compared. Built once by `config`; each stage keeps its own view of it under the
/// rule's [`RuleId`] (the kernel's rule entry, replay's lane, the comparison's settings).
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// How operators and metrics call the rule (unique).
    pub name: String,
    /// Ports on every server address.
    pub ports: Vec<u16>,
    /// Services by address prefix and port, besides `ports`.
    pub matches: Vec<ServiceMatch>,
    /// `None`: capture only (requests are counted as dropped, `no_target`).
    pub shadow: Option<ShadowTarget>,
    pub controls: ReplayControls,
    /// Requests sampled by the kernel, parts per million.
    pub sample_ppm: u32,
    /// Compare the shadow's responses with the primary's (`[rule.compare]`); `None`: off.
    pub compare: Option<CompareSettings>,
    /// A second instance of the current version: each replayed request also goes there, and
    /// what differs between it and the primary is learned as noise (not compared).
    pub secondary: Option<ShadowTarget>,
}

impl Rule {
    /// A rule named `default` on `ports`, sampling everything.
    pub fn new(ports: Vec<u16>, shadow: Option<ShadowTarget>, controls: ReplayControls) -> Self {
        Self {
            name: "default".into(),
            ports,
            matches: Vec::new(),
            shadow,
            controls,
            sample_ppm: shadow_common::PPM_ALL,
            compare: None,
            secondary: None,
        }
    }

    /// Everything the rule covers: `ports` on any address, then `matches`.
    pub fn services(&self) -> Vec<ServiceMatch> {
        self.ports.iter().map(|&p| ServiceMatch::any_address(p)).chain(self.matches.iter().copied()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_positions() {
        let ids: Vec<RuleId> = RuleId::all(3).collect();
        assert_eq!(ids, [RuleId::new(0), RuleId::new(1), RuleId::new(2)]);
        assert_eq!(ids[2].index(), 2);
        assert_eq!(ids[1].to_string(), "rule #1");
        assert!(RuleId::all(0).next().is_none());
    }
}
