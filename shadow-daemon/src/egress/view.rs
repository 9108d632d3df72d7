//! What the fence saw, as operators read it: the kernel's per-CPU tuples merged into one row per
//! (destination, protocol, call, verdict), the status `shadowctl egress` prints, the findings of
//! the report, and the series of `shadow_egress_attempts_total` with bounded cardinality.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use serde::{Deserialize, Serialize};
use shadow_common::{
    egress::{ALLOWED, HOOK_CONNECT, OBSERVED, REFUSED, Seen, SeenKey},
    family,
};

/// Destinations named in `shadow_egress_attempts_total` per rule; later ones are `other`.
pub(super) const MAX_DESTINATION_LABELS: usize = 64;
/// The label of the destinations past [`MAX_DESTINATION_LABELS`] and of attempts the kernel
/// could not list.
pub(super) const OTHER: &str = "other";

/// `shadowctl egress`'s answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EgressStatus {
    pub rules: Vec<RuleEgress>,
}

/// One rule's fence.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RuleEgress {
    pub rule: String,
    /// enforce or observe.
    pub mode: String,
    /// The cgroups configured (paths and globs).
    pub cgroups: Vec<String>,
    /// The cgroups fenced now.
    pub attached: Vec<String>,
    pub allow: Vec<String>,
    /// Every attempt, by verdict (the unlisted ones included).
    pub attempts: AttemptCounts,
    /// Every destination tried, most attempts first.
    pub destinations: Vec<DestinationSeen>,
    /// Attempts whose destination the kernel had no room to list (decided all the same).
    pub unlisted: AttemptCounts,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptCounts {
    pub allowed: u64,
    pub refused: u64,
    /// Not allowed, let through (observe mode).
    pub observed: u64,
}

impl AttemptCounts {
    fn add(&mut self, verdict: u8, n: u64) {
        let slot = match verdict {
            ALLOWED => &mut self.allowed,
            REFUSED => &mut self.refused,
            _ => &mut self.observed,
        };
        *slot = slot.saturating_add(n);
    }

    /// Attempts outside the allowlist (refused, or let through in observe mode).
    pub const fn outside(&self) -> u64 {
        self.refused.saturating_add(self.observed)
    }
}

/// One destination tried.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DestinationSeen {
    /// `10.0.0.9:443`, `[fd00::1]:53`.
    pub destination: String,
    /// tcp, udp, icmp, ... (`ip<N>` for others).
    pub protocol: String,
    /// connect, or sendmsg (unconnected UDP).
    pub call: String,
    /// allowed, refused or observed.
    pub verdict: String,
    pub attempts: u64,
    /// Wall-clock seconds since the epoch.
    pub first_seen_unix: f64,
    pub last_seen_unix: f64,
    /// The process that tried first, when the kernel told.
    pub pid: u32,
    pub process: String,
}

impl DestinationSeen {
    /// The metric's destination label: `10.0.0.9:443/tcp`.
    pub fn label(&self) -> String {
        format!("{}/{}", self.destination, self.protocol)
    }
}

/// A destination outside the allowlist, for the report: what an operator must see before
/// promoting the shadow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EgressFinding {
    pub rule: String,
    pub destination: String,
    pub protocol: String,
    /// refused (enforce) or observed (let through).
    pub verdict: String,
    pub attempts: u64,
    pub process: String,
}

impl EgressFinding {
    pub fn line(&self) -> String {
        let what = if self.verdict == "refused" { "refused" } else { "NOT refused (observe mode)" };
        let who = if self.process.is_empty() { String::new() } else { format!(", first by {}", self.process) };
        format!(
            "rule {}: the shadow tried to reach {} ({}) {} time(s): {what}{who}",
            self.rule, self.destination, self.protocol, self.attempts
        )
    }
}

/// The kernel's per-CPU values of each tuple, summed: counts added, the earliest first attempt
/// (and its process), the latest last one. CPUs that never saw the tuple (count 0) are skipped.
pub(super) fn merge_cpus<'a>(values: impl IntoIterator<Item = &'a Seen>) -> Option<Seen> {
    let mut out: Option<Seen> = None;
    for v in values.into_iter().filter(|v| v.count > 0) {
        match &mut out {
            None => out = Some(*v),
            Some(o) => {
                o.count = o.count.saturating_add(v.count);
                if v.first_ns < o.first_ns {
                    o.first_ns = v.first_ns;
                    o.pid = v.pid;
                    o.comm = v.comm;
                }
                o.last_ns = o.last_ns.max(v.last_ns);
            }
        }
    }
    out
}

/// How to turn the kernel's CLOCK_MONOTONIC into wall-clock time: both clocks read now.
#[derive(Clone, Copy, Debug)]
pub struct Clocks {
    pub monotonic_ns: u64,
    pub unix_s: f64,
}

impl Clocks {
    #[allow(clippy::cast_precision_loss)]
    pub fn unix_of(&self, ns: u64) -> f64 {
        self.unix_s - self.monotonic_ns.saturating_sub(ns) as f64 / 1e9
    }
}

/// One row per tuple, most attempts first (then by destination, for a stable order).
pub(super) fn destinations(tuples: &[(SeenKey, Seen)], clocks: Clocks) -> Vec<DestinationSeen> {
    let mut rows: Vec<DestinationSeen> = tuples
        .iter()
        .map(|(k, s)| DestinationSeen {
            destination: destination(k),
            protocol: protocol(k.protocol),
            call: if k.hook == HOOK_CONNECT { "connect" } else { "sendmsg" }.to_owned(),
            verdict: verdict(k.verdict).to_owned(),
            attempts: s.count,
            first_seen_unix: clocks.unix_of(s.first_ns),
            last_seen_unix: clocks.unix_of(s.last_ns),
            pid: s.pid,
            process: comm(&s.comm),
        })
        .collect();
    rows.sort_by(|a, b| {
        b.attempts
            .cmp(&a.attempts)
            .then_with(|| (&a.destination, &a.protocol, &a.verdict).cmp(&(&b.destination, &b.protocol, &b.verdict)))
    });
    rows
}

/// Totals by verdict over listed tuples and the unlisted ones.
pub(super) fn totals(tuples: &[(SeenKey, Seen)], unlisted: &AttemptCounts) -> AttemptCounts {
    let mut t = *unlisted;
    for (k, s) in tuples {
        t.add(k.verdict, s.count);
    }
    t
}

/// The unlisted attempts by verdict, from the kernel's per-CPU overflow counters.
pub(super) fn unlisted<'a>(per_cpu: impl IntoIterator<Item = &'a [u64; 3]>) -> AttemptCounts {
    let mut t = AttemptCounts::default();
    for o in per_cpu {
        for (v, n) in (0u8..).zip(o) {
            t.add(v, *n);
        }
    }
    t
}

/// The rule's destinations outside the allowlist, most attempts first.
pub(super) fn findings(rule: &str, rows: &[DestinationSeen]) -> Vec<EgressFinding> {
    rows.iter()
        .filter(|r| r.verdict != "allowed")
        .map(|r| EgressFinding {
            rule: rule.to_owned(),
            destination: r.destination.clone(),
            protocol: r.protocol.clone(),
            verdict: r.verdict.clone(),
            attempts: r.attempts,
            process: if r.process.is_empty() { String::new() } else { format!("{} (pid {})", r.process, r.pid) },
        })
        .collect()
}

/// The label slots of one rule: destinations named in the metric in the order they were first
/// seen, at most [`MAX_DESTINATION_LABELS`]; the rest are `other`. Kept across scrapes so a
/// series never changes its name.
#[derive(Clone, Debug, Default)]
pub(super) struct Labels {
    named: Vec<String>,
}

impl Labels {
    /// The series `(destination, verdict) -> attempts` of one rule now; `rows` sorted by first
    /// seen decide who takes the free slots.
    pub(super) fn series(
        &mut self,
        rows: &[DestinationSeen],
        unlisted: &AttemptCounts,
    ) -> BTreeMap<(String, String), u64> {
        let mut by_first: Vec<&DestinationSeen> = rows.iter().collect();
        by_first.sort_by(|a, b| a.first_seen_unix.total_cmp(&b.first_seen_unix));
        let mut out: BTreeMap<(String, String), u64> = BTreeMap::new();
        for r in by_first {
            let label = r.label();
            if !self.named.contains(&label) && self.named.len() < MAX_DESTINATION_LABELS {
                self.named.push(label.clone());
            }
            let label = if self.named.contains(&label) { label } else { OTHER.to_owned() };
            let c = out.entry((label, r.verdict.clone())).or_default();
            *c = c.saturating_add(r.attempts);
        }
        for (verdict, n) in
            [("allowed", unlisted.allowed), ("refused", unlisted.refused), ("observed", unlisted.observed)]
        {
            if n > 0 {
                let c = out.entry((OTHER.to_owned(), verdict.to_owned())).or_default();
                *c = c.saturating_add(n);
            }
        }
        out
    }
}

pub(super) const fn verdict(v: u8) -> &'static str {
    match v {
        ALLOWED => "allowed",
        REFUSED => "refused",
        OBSERVED => "observed",
        _ => "unknown",
    }
}

pub(super) fn protocol(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        136 => "udplite".into(),
        n => format!("ip{n}"),
    }
}

/// `10.0.0.9:443`, `[fd00::1]:443`.
pub(super) fn destination(k: &SeenKey) -> String {
    if k.family == family::IPV4 {
        let a = Ipv4Addr::new(k.addr[0], k.addr[1], k.addr[2], k.addr[3]);
        format!("{a}:{}", k.port)
    } else {
        format!("[{}]:{}", IpAddr::V6(Ipv6Addr::from(k.addr)), k.port)
    }
}

/// The kernel's command name: up to the first NUL, printable ASCII only.
pub(super) fn comm(c: &[u8; 16]) -> String {
    c.iter().take_while(|b| **b != 0).map(|b| if b.is_ascii_graphic() { char::from(*b) } else { '?' }).collect()
}

#[cfg(test)]
mod tests {
    use shadow_common::egress::HOOK_SENDMSG;

    use super::*;

    fn key(addr: [u8; 4], port: u16, protocol: u8, verdict: u8) -> SeenKey {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&addr);
        SeenKey { addr: a, port, family: family::IPV4, protocol, verdict, hook: HOOK_CONNECT, _pad: [0; 2] }
    }

    fn seen(count: u64, first: u64, last: u64, pid: u32, name: &[u8]) -> Seen {
        let mut comm = [0u8; 16];
        comm[..name.len()].copy_from_slice(name);
        Seen { count, first_ns: first, last_ns: last, pid, _pad: 0, comm }
    }

    #[test]
    fn cpus_merge_into_one_count_with_the_first_attempt_s_process() {
        let cpus = [
            seen(0, 0, 0, 0, b""),
            seen(3, 500, 900, 11, b"late"),
            seen(2, 100, 400, 7, b"curl"),
            seen(0, 0, 0, 0, b""),
        ];
        let m = merge_cpus(&cpus).expect("seen");
        assert_eq!((m.count, m.first_ns, m.last_ns, m.pid), (5, 100, 900, 7));
        assert_eq!(comm(&m.comm), "curl");
        assert!(merge_cpus(&[seen(0, 0, 0, 0, b"")]).is_none());
        assert!(merge_cpus(&[]).is_none());
    }

    #[test]
    fn rows_name_destination_protocol_call_and_verdict() {
        let mut v6 = key([0; 4], 53, 17, OBSERVED);
        v6.family = family::IPV6;
        v6.addr = "fd00::1".parse::<Ipv6Addr>().expect("v6").octets();
        v6.hook = HOOK_SENDMSG;
        let tuples = [
            (key([10, 0, 0, 9], 443, 6, REFUSED), seen(4, 2_000_000_000, 3_000_000_000, 42, b"orders")),
            (key([127, 0, 0, 1], 9091, 6, ALLOWED), seen(9, 1_000_000_000, 4_000_000_000, 42, b"orders")),
            (v6, seen(1, 5_000_000_000, 5_000_000_000, 43, b"dig\x01")),
        ];
        let clocks = Clocks { monotonic_ns: 10_000_000_000, unix_s: 1_000_000.0 };
        let rows = destinations(&tuples, clocks);
        let got: Vec<(String, &str, &str, &str, u64)> = rows
            .iter()
            .map(|r| (r.destination.clone(), r.protocol.as_str(), r.call.as_str(), r.verdict.as_str(), r.attempts))
            .collect();
        assert_eq!(
            got,
            [
                ("127.0.0.1:9091".to_owned(), "tcp", "connect", "allowed", 9),
                ("10.0.0.9:443".to_owned(), "tcp", "connect", "refused", 4),
                ("[fd00::1]:53".to_owned(), "udp", "sendmsg", "observed", 1),
            ]
        );
        assert!((rows[1].first_seen_unix - 999_992.0).abs() < 1e-6);
        assert!((rows[1].last_seen_unix - 999_993.0).abs() < 1e-6);
        assert_eq!(rows[2].process, "dig?");
        assert_eq!(rows[1].label(), "10.0.0.9:443/tcp");

        let unl = AttemptCounts { allowed: 0, refused: 2, observed: 0 };
        assert_eq!(totals(&tuples, &unl), AttemptCounts { allowed: 9, refused: 6, observed: 1 });
        assert_eq!(totals(&tuples, &unl).outside(), 7);
        let f = findings("orders", &rows);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].process, "orders (pid 42)");
        assert_eq!(
            f[0].line(),
            "rule orders: the shadow tried to reach 10.0.0.9:443 (tcp) 4 time(s): refused, first by orders (pid 42)"
        );
        assert!(f[1].line().contains("NOT refused (observe mode)"), "{}", f[1].line());
    }

    #[test]
    fn unlisted_attempts_add_up_by_verdict_over_cpus() {
        let u = unlisted(&[[1, 2, 3], [10, 20, 30]]);
        assert_eq!(u, AttemptCounts { allowed: 11, refused: 22, observed: 33 });
    }

    #[test]
    fn metric_labels_are_capped_stable_and_keep_every_attempt() {
        let clocks = Clocks { monotonic_ns: 1_000_000, unix_s: 0.0 };
        let n = MAX_DESTINATION_LABELS + 6;
        let tuples: Vec<(SeenKey, Seen)> = (0..n)
            .map(|i| {
                let port = u16::try_from(1000 + i).expect("port");
                (key([10, 0, 0, 1], port, 6, REFUSED), seen(2, 1000 + i as u64, 2000, 1, b"x"))
            })
            .collect();
        let rows = destinations(&tuples, clocks);
        let mut labels = Labels::default();
        let unl = AttemptCounts { allowed: 0, refused: 5, observed: 0 };
        let s = labels.series(&rows, &unl);
        assert_eq!(s.len(), MAX_DESTINATION_LABELS + 1);
        assert_eq!(s[&(OTHER.to_owned(), "refused".to_owned())], 6 * 2 + 5);
        assert_eq!(s.values().sum::<u64>(), (n as u64) * 2 + 5, "nothing lost in the cap");
        // The first seen hold the names.
        assert!(s.contains_key(&("10.0.0.1:1000/tcp".to_owned(), "refused".to_owned())));
        assert!(!s.contains_key(&(format!("10.0.0.1:{}/tcp", 1000 + n - 1), "refused".to_owned())));
        // A later scrape where an early destination is counted more keeps the same names.
        let again = labels.series(&rows, &unl);
        assert_eq!(again.keys().collect::<Vec<_>>(), s.keys().collect::<Vec<_>>());
    }

    #[test]
    fn comm_stops_at_nul_and_hides_unprintables() {
        let mut c = [0u8; 16];
        c[..5].copy_from_slice(b"py\tth");
        assert_eq!(comm(&c), "py?th");
        assert_eq!(comm(&[b'a'; 16]), "aaaaaaaaaaaaaaaa");
    }
}
