//! A rule's key ([`RuleId`]): its position in the config's rule list, the same in every stage
//! that keeps something per rule (the kernel's rule map, replay's lanes, the comparison, the
//! operators' view). Names are for people; stages find a rule by its id. What the config says of
//! a rule is `config::Rule` (defined beside replay, its first user).

use std::fmt;

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
