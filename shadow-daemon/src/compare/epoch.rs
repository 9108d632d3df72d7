//! A rule's comparison belongs to one shadow build: its epoch. A new epoch starts when the
//! rule's shadow target changes, on `shadowctl reset`, or when the shadow answers with another
//! build (the rule's `version_header`); everything compared before is dropped then. Pure: the
//! caller passes the time and decides what a stale pair is (see `hub`).

use serde::{Deserialize, Serialize};

use crate::label::EpochReason;

/// Longest version header value kept and compared: a longer one is compared by its first bytes.
pub const MAX_VERSION_BYTES: usize = 128;

/// One rule's current epoch, as the report shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochInfo {
    /// 1 for the first epoch of the rule; one more at each start.
    pub number: u64,
    /// Unix time of the start, in milliseconds.
    pub started_unix_ms: u64,
    pub reason: EpochReason,
    /// The shadow's build as its `version_header` said in this epoch (the first value seen; the
    /// new one when the reason is `version`). None: no header configured, or none seen yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The value before, when the reason is `version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_version: Option<String>,
    /// Pairs whose shadow request went out in an earlier epoch and that came back in this one:
    /// dropped, never counted here (`shadow_compare_unpaired_total{reason="epoch"}`).
    #[serde(default)]
    pub dropped_in_flight: u64,
    /// Shadow responses of this epoch without the version header: compared and counted, and
    /// they start no epoch.
    #[serde(default)]
    pub version_missing: u64,
}

impl EpochInfo {
    /// One line: `epoch 3 since 2026-12-04T18:40:00Z (version: v1 -> v2)`.
    pub fn describe(&self) -> String {
        let why = match (self.reason, &self.previous_version, &self.version) {
            (EpochReason::Version, Some(old), Some(new)) => format!("version: {old} -> {new}"),
            (EpochReason::Version, None, Some(new)) => format!("version: {new}"),
            (r, ..) => r.as_str().to_owned(),
        };
        let mut s = format!("epoch {} since {} ({why})", self.number, rfc3339_utc(self.started_unix_ms));
        if self.reason != EpochReason::Version
            && let Some(v) = &self.version
        {
            s.push_str(&format!(", shadow version {v}"));
        }
        if self.dropped_in_flight > 0 {
            s.push_str(&format!(", {} pairs of the epoch before dropped", self.dropped_in_flight));
        }
        if self.version_missing > 0 {
            s.push_str(&format!(", {} shadow responses without the version header", self.version_missing));
        }
        s
    }
}

/// What a shadow response's version header says about the epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionSeen {
    /// The epoch's value, or the first value (now recorded), or no header configured.
    Same,
    /// No such header in the response: counted in the epoch.
    Missing,
    /// Another value: a new epoch starts with this response.
    Changed,
}

/// The epoch and the raw version value it compares against.
#[derive(Clone, Debug)]
pub(crate) struct Epoch {
    pub info: EpochInfo,
    /// The recorded version value, cut to [`MAX_VERSION_BYTES`]; empty until one is seen.
    version: Vec<u8>,
}

impl Epoch {
    pub(super) fn first() -> Self {
        Self {
            info: EpochInfo {
                number: 1,
                started_unix_ms: 0,
                reason: EpochReason::Start,
                version: None,
                previous_version: None,
                dropped_in_flight: 0,
                version_missing: 0,
            },
            version: Vec::new(),
        }
    }

    /// The epoch after this one. A reason other than `version` forgets the value (the next
    /// response records it again: a new target is a new build until it says otherwise).
    pub(super) fn next(&self, number: u64, reason: EpochReason, started_unix_ms: u64) -> Self {
        let mut e = Self::first();
        e.info.number = number;
        e.info.reason = reason;
        e.info.started_unix_ms = started_unix_ms;
        e
    }

    /// Compare a response's version header value with the epoch's: bytes only, no allocation
    /// unless a value is recorded.
    pub(super) fn check(&mut self, value: Option<&[u8]>) -> VersionSeen {
        let Some(v) = value else {
            self.info.version_missing += 1;
            return VersionSeen::Missing;
        };
        let v = &v[..v.len().min(MAX_VERSION_BYTES)];
        if self.info.version.is_none() {
            self.record(v);
            VersionSeen::Same
        } else if self.version == v {
            VersionSeen::Same
        } else {
            VersionSeen::Changed
        }
    }

    /// Record `value` as the epoch's build.
    pub(super) fn record(&mut self, value: &[u8]) {
        let v = &value[..value.len().min(MAX_VERSION_BYTES)];
        self.version = v.to_vec();
        self.info.version = Some(String::from_utf8_lossy(v).into_owned());
    }

    /// The version epoch after this one, started by a response carrying `value`.
    pub(super) fn next_version(&self, value: &[u8], started_unix_ms: u64) -> Self {
        let mut e = self.next(self.info.number + 1, EpochReason::Version, started_unix_ms);
        e.record(value);
        e.info.previous_version = self.info.version.clone();
        e
    }
}

/// `2026-12-04T18:40:00.123Z` from Unix milliseconds (proleptic Gregorian, UTC).
pub fn rfc3339_utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        unix_ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_value_is_recorded_a_missing_one_counted_another_one_changes() {
        let mut e = Epoch::first();
        assert_eq!(e.check(None), VersionSeen::Missing);
        assert_eq!(e.info.version, None, "nothing recorded from a missing header");
        assert_eq!(e.check(Some(b"v1")), VersionSeen::Same);
        assert_eq!(e.info.version.as_deref(), Some("v1"));
        assert_eq!(e.check(Some(b"v1")), VersionSeen::Same);
        assert_eq!(e.check(None), VersionSeen::Missing);
        assert_eq!(e.info.version_missing, 2);
        assert_eq!(e.check(Some(b"v2")), VersionSeen::Changed);
        assert_eq!(e.info.version.as_deref(), Some("v1"), "the caller starts the next epoch");
        let n = e.next_version(b"v2", 5_000);
        assert_eq!((n.info.number, n.info.reason, n.info.started_unix_ms), (2, EpochReason::Version, 5_000));
        assert_eq!((n.info.version.as_deref(), n.info.previous_version.as_deref()), (Some("v2"), Some("v1")));
        assert_eq!(n.info.version_missing, 0);
        assert!(n.info.describe().contains("(version: v1 -> v2)"), "{}", n.info.describe());
    }

    #[test]
    fn a_long_value_is_compared_and_kept_by_its_first_bytes() {
        let mut e = Epoch::first();
        let long = vec![b'a'; MAX_VERSION_BYTES + 50];
        assert_eq!(e.check(Some(&long)), VersionSeen::Same);
        assert_eq!(e.info.version.as_ref().map(String::len), Some(MAX_VERSION_BYTES));
        let mut other = long.clone();
        other[MAX_VERSION_BYTES + 10] = b'b';
        assert_eq!(e.check(Some(&other)), VersionSeen::Same, "past the kept bytes");
        other[0] = b'b';
        assert_eq!(e.check(Some(&other)), VersionSeen::Changed);
    }

    #[test]
    fn another_reason_forgets_the_version() {
        let mut e = Epoch::first();
        e.check(Some(b"v1"));
        let n = e.next(2, EpochReason::Reset, 1);
        assert_eq!((n.info.version.clone(), n.info.reason), (None, EpochReason::Reset));
        assert_eq!(n.info.describe(), "epoch 2 since 1970-01-01T00:00:00.001Z (reset)");
    }

    #[test]
    fn times_read_as_utc_dates() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_utc(1_796_409_000_250), "2026-12-04T18:30:00.250Z");
    }
}
