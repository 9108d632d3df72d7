//! Noise learning as Diffy does it: the primary and a `secondary` (a second instance of the same
//! version) answer the same request; whatever differs between them is not the shadow's doing.
//! Per endpoint, each path template that differed is counted against the primary/secondary pairs
//! seen; once an endpoint has enough pairs, a path that differed in at least the configured share
//! is noise and is not held against the shadow. The learned set is recomputed from counts, so a
//! path that stops differing stops being noise, and the report lists what was learned.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::settings::NoiseSettings;

/// Distinct path templates an endpoint keeps (differences and noise together).
pub(crate) const MAX_PATHS: usize = 256;

/// Path templates (`$.items[*].id`, `header:etag`, `$`) interned to small ids, at most
/// [`MAX_PATHS`] per endpoint; a template past the cap has no id (counted).
#[derive(Debug, Default)]
pub(crate) struct PathTable {
    ids: HashMap<String, u16>,
    names: Vec<String>,
    pub overflow: u64,
}

impl PathTable {
    pub(super) fn intern(&mut self, template: &str) -> Option<u16> {
        if let Some(id) = self.ids.get(template) {
            return Some(*id);
        }
        if self.names.len() >= MAX_PATHS {
            self.overflow += 1;
            return None;
        }
        let id = u16::try_from(self.names.len()).ok()?;
        self.names.push(template.to_owned());
        self.ids.insert(template.to_owned(), id);
        Some(id)
    }

    pub(super) fn get(&self, template: &str) -> Option<u16> {
        self.ids.get(template).copied()
    }

    pub(super) fn name(&self, id: u16) -> &str {
        self.names.get(usize::from(id)).map_or("", String::as_str)
    }

    pub(super) fn approx_bytes(&self) -> usize {
        self.names.iter().map(|n| 2 * n.len() + 64).sum()
    }
}

/// What a primary/secondary comparison found, for learning.
pub(crate) enum SecondaryDiff<'a> {
    /// Bodies and compared headers equal.
    Same,
    /// These templates differed (all of them when `complete`).
    Differ { templates: &'a [String] },
    /// Only lengths could be compared: says nothing about which fields vary.
    Unusable,
}

#[derive(Debug, Default)]
pub(crate) struct NoiseLearner {
    samples: u64,
    unusable: u64,
    differed: HashMap<u16, u64>,
}

impl NoiseLearner {
    pub(super) fn observe(&mut self, paths: &mut PathTable, diff: SecondaryDiff<'_>) {
        match diff {
            SecondaryDiff::Unusable => self.unusable += 1,
            SecondaryDiff::Same => self.samples += 1,
            SecondaryDiff::Differ { templates } => {
                self.samples += 1;
                for t in templates {
                    // A template past the table's cap cannot become noise: safe side.
                    if let Some(id) = paths.intern(t) {
                        *self.differed.entry(id).or_insert(0) += 1;
                    }
                }
            }
        }
    }

    pub(super) fn is_noise(&self, id: u16, s: &NoiseSettings) -> bool {
        self.samples >= s.min_samples
            && self.differed.get(&id).is_some_and(|&n| n as f64 * 100.0 >= s.min_differ_percent * self.samples as f64)
    }

    /// Learned paths with the share of pairs they differed in, most frequent first.
    pub(super) fn report(&self, paths: &PathTable, s: &NoiseSettings) -> NoiseReport {
        let mut learned: Vec<LearnedPath> = self
            .differed
            .iter()
            .filter(|(id, _)| self.is_noise(**id, s))
            .map(|(id, n)| LearnedPath {
                path: paths.name(*id).to_owned(),
                differed_percent: *n as f64 * 100.0 / self.samples as f64,
            })
            .collect();
        learned.sort_by(|a, b| b.differed_percent.total_cmp(&a.differed_percent).then_with(|| a.path.cmp(&b.path)));
        NoiseReport { samples: self.samples, unusable: self.unusable, learned }
    }

    pub(super) fn approx_bytes(&self) -> usize {
        self.differed.len() * 32
    }
}

/// Noise learning's state for the report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NoiseReport {
    /// Primary/secondary pairs compared.
    pub samples: u64,
    /// Pairs compared by length only, not used for learning.
    pub unusable: u64,
    pub learned: Vec<LearnedPath>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LearnedPath {
    pub path: String,
    pub differed_percent: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_becomes_noise_after_enough_samples_and_share() {
        let s = NoiseSettings { min_samples: 10, min_differ_percent: 20.0 };
        let mut paths = PathTable::default();
        let mut n = NoiseLearner::default();
        let ts = ["$.ts".to_owned()];
        let both = ["$.ts".to_owned(), "$.rare".to_owned()];
        for i in 0..9 {
            n.observe(&mut paths, SecondaryDiff::Differ { templates: if i == 0 { &both } else { &ts } });
        }
        let ts_id = paths.intern("$.ts").expect("id");
        let rare_id = paths.intern("$.rare").expect("id");
        assert!(!n.is_noise(ts_id, &s), "9 samples are fewer than min_samples");
        n.observe(&mut paths, SecondaryDiff::Same);
        assert!(n.is_noise(ts_id, &s), "differed in 9 of 10");
        assert!(!n.is_noise(rare_id, &s), "differed in 1 of 10, under 20 %");
        n.observe(&mut paths, SecondaryDiff::Unusable);
        let r = n.report(&paths, &s);
        assert_eq!((r.samples, r.unusable), (10, 1));
        assert_eq!(r.learned, [LearnedPath { path: "$.ts".into(), differed_percent: 90.0 }]);
        for _ in 0..40 {
            n.observe(&mut paths, SecondaryDiff::Same);
        }
        assert!(!n.is_noise(ts_id, &s), "9 of 50 is under 20 %: no longer noise");
    }

    /// A path is noise from exactly `min_samples` pairs and exactly `min_differ_percent` of them.
    #[test]
    fn noise_at_exactly_its_thresholds() {
        let s = NoiseSettings { min_samples: 4, min_differ_percent: 25.0 };
        let mut paths = PathTable::default();
        let mut n = NoiseLearner::default();
        let ts = ["$.ts".to_owned()];
        n.observe(&mut paths, SecondaryDiff::Differ { templates: &ts });
        for _ in 0..2 {
            n.observe(&mut paths, SecondaryDiff::Same);
        }
        let id = paths.get("$.ts").expect("interned");
        assert!(!n.is_noise(id, &s), "3 pairs of 4 needed");
        n.observe(&mut paths, SecondaryDiff::Same);
        assert!(n.is_noise(id, &s), "1 of 4 is 25 %: noise");
        assert_eq!(n.report(&paths, &s).learned, [LearnedPath { path: "$.ts".into(), differed_percent: 25.0 }]);
        n.observe(&mut paths, SecondaryDiff::Same);
        assert!(!n.is_noise(id, &s), "1 of 5 is 20 %");
        assert!(n.report(&paths, &s).learned.is_empty());
        assert_eq!((paths.name(id), paths.name(7)), ("$.ts", ""));
    }

    /// The report lists the most frequent first, then by path.
    #[test]
    fn learned_paths_in_order() {
        let s = NoiseSettings { min_samples: 1, min_differ_percent: 10.0 };
        let mut paths = PathTable::default();
        let mut n = NoiseLearner::default();
        let all = ["$.b".to_owned(), "$.a".to_owned(), "$.c".to_owned()];
        n.observe(&mut paths, SecondaryDiff::Differ { templates: &all });
        n.observe(&mut paths, SecondaryDiff::Differ { templates: &all[2..] });
        let r = n.report(&paths, &s);
        let got: Vec<(&str, f64)> = r.learned.iter().map(|l| (l.path.as_str(), l.differed_percent)).collect();
        assert_eq!(got, [("$.c", 100.0), ("$.a", 50.0), ("$.b", 50.0)]);
    }

    #[test]
    fn path_table_is_bounded() {
        let mut t = PathTable::default();
        for i in 0..MAX_PATHS + 10 {
            let id = t.intern(&format!("$.k{i}"));
            assert_eq!(id.is_some(), i < MAX_PATHS);
        }
        assert_eq!(t.overflow, 10);
        assert_eq!(t.intern("$.k0"), Some(0), "known templates keep their id");
    }

    /// Memory, exactly: a template twice (map key and name) and 64; a learned count 32.
    #[test]
    fn approx_bytes_exactly() {
        let mut t = PathTable::default();
        let mut n = NoiseLearner::default();
        assert_eq!((t.approx_bytes(), n.approx_bytes()), (0, 0));
        let ts = ["$.a".to_owned(), "header:etag".to_owned()];
        n.observe(&mut t, SecondaryDiff::Differ { templates: &ts });
        n.observe(&mut t, SecondaryDiff::Differ { templates: &ts[..1] });
        assert_eq!(t.approx_bytes(), (2 * 3 + 64) + (2 * 11 + 64));
        assert_eq!(n.approx_bytes(), 2 * 32);
    }
}
