//! Every rule's fence, kept in step with the config (start, reload), with the cgroups (new ones
//! fenced as they appear, gone ones forgotten) and with the operator (`shadowctl egress
//! detach`); and what was tried, for the logs (the first time a destination is refused), the
//! metric, `shadowctl egress` and the report.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use shadow_common::egress::{ALLOWED, SeenKey};

use super::{
    EgressConfig, EgressError,
    cgroups::Cgroup,
    guard::{Guard, remove_pins},
    view::{self, Clocks, DestinationSeen, EgressFinding, EgressStatus, Labels, RuleEgress},
};
use crate::sys::fs::{BPF_FS_MAGIC, CGROUP2_SUPER_MAGIC, cgroup2_mounts, fs_magic};

/// The series of `shadow_egress_attempts_total`: (rule, destination, verdict) -> attempts.
pub type Series = Vec<(String, String, String, u64)>;

pub struct Fence {
    /// `<pin dir>/egress`: one directory per fenced rule.
    root: PathBuf,
    rules: BTreeMap<String, Fenced>,
    /// Pinned fences of rules this config does not name, already reported.
    foreign: BTreeSet<String>,
}

struct Fenced {
    cfg: EgressConfig,
    guard: Guard,
    /// Cgroup id -> path, fenced now.
    attached: BTreeMap<u64, PathBuf>,
    /// Taken down by the operator: not fenced again until a reload or restart.
    detached: bool,
    /// Tuples already logged.
    logged: BTreeSet<SeenKey>,
    /// Patterns already said to match nothing (said again once they matched).
    said_empty: BTreeSet<String>,
    labels: Labels,
}

impl Fence {
    /// The fences of `rules` (name, fence if any), adopting what an earlier run pinned under
    /// `pin_dir`; fences pinned for rules that no longer have one are taken down. `None` when
    /// no rule fences and nothing is pinned.
    pub fn start(pin_dir: &Path, rules: &[(String, Option<EgressConfig>)]) -> Result<Option<Self>, EgressError> {
        let root = pin_dir.join("egress");
        let any = rules.iter().any(|(_, c)| c.is_some());
        if !any && !root.exists() {
            return Ok(None);
        }
        if any {
            check_pin_dir(pin_dir)?;
            for (_, c) in rules {
                for p in c.iter().flat_map(|c| &c.cgroups) {
                    check_cgroup_base(&p.base(), p.as_str())?;
                }
            }
            fs::create_dir_all(&root)
                .map_err(|e| EgressError::Setting(format!("--pin-dir: cannot create {}: {e}", root.display())))?;
        }
        let mut fence = Self { root, rules: BTreeMap::new(), foreign: BTreeSet::new() };
        fence.apply(rules)?;
        Ok(Some(fence))
    }

    /// Make the fences the config's: new ones set, changed ones updated, removed ones (and any
    /// pinned by an earlier run for a rule that has none now) taken down.
    pub fn apply(&mut self, rules: &[(String, Option<EgressConfig>)]) -> Result<(), EgressError> {
        let wanted: BTreeMap<&str, &EgressConfig> =
            rules.iter().filter_map(|(n, c)| c.as_ref().map(|c| (n.as_str(), c))).collect();
        if !wanted.is_empty() {
            for p in wanted.values().flat_map(|c| &c.cgroups) {
                check_cgroup_base(&p.base(), p.as_str())?;
            }
        }
        for (name, cfg) in &wanted {
            match self.rules.get_mut(*name) {
                Some(f) => {
                    f.guard.configure(&cfg.allow, cfg.mode)?;
                    f.cfg = (*cfg).clone();
                    f.detached = false;
                }
                None => {
                    let adopted = self.root.join(name).join("links").exists();
                    let mut guard = Guard::open(name, &self.root)?;
                    guard.configure(&cfg.allow, cfg.mode)?;
                    // What the fence saw before this daemon started is not news: one line
                    // for it, and each destination logged only when it is new.
                    let mut logged = BTreeSet::new();
                    if adopted {
                        let (tuples, _) = guard.read();
                        logged.extend(tuples.iter().map(|(k, _)| *k).filter(|k| k.verdict != ALLOWED));
                        tracing::info!(
                            "egress fence of rule {name}: adopted the fence pinned by an earlier run ({} destination(s) outside the allowlist tried so far: shadowctl egress)",
                            logged
                                .iter()
                                .map(|k| (k.addr, k.port, k.family, k.protocol))
                                .collect::<BTreeSet<_>>()
                                .len()
                        );
                    }
                    if cfg.allow.is_empty() && cfg.mode == super::EgressMode::Enforce {
                        tracing::warn!(
                            "egress fence of rule {name}: the allowlist is empty: every connection the shadow opens is refused (DNS too)"
                        );
                    }
                    self.rules.insert(
                        (*name).to_owned(),
                        Fenced {
                            cfg: (*cfg).clone(),
                            guard,
                            attached: BTreeMap::new(),
                            detached: false,
                            logged,
                            said_empty: BTreeSet::new(),
                            labels: Labels::default(),
                        },
                    );
                }
            }
        }
        let gone: Vec<String> = self.rules.keys().filter(|n| !wanted.contains_key(n.as_str())).cloned().collect();
        for name in gone {
            if let Some(f) = self.rules.remove(&name) {
                f.guard.remove()?;
                tracing::info!("egress fence of rule {name}: removed (no longer in the config)");
            }
        }
        // Pinned by an earlier run: for a rule of this config that has no fence now, the fence
        // was taken out of the config, so it comes down. A rule this config does not have may be
        // another daemon's (or renamed): its fence stays, said once, and a person removes it.
        if let Ok(entries) = fs::read_dir(&self.root) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if self.rules.contains_key(&name) {
                    continue;
                }
                if rules.iter().any(|(n, _)| *n == name) {
                    remove_pins(&e.path()).map_err(|err| EgressError::Kernel {
                        rule: name.clone(),
                        op: format!("remove {}", e.path().display()),
                        reason: err.to_string(),
                    })?;
                    tracing::info!(
                        "egress fence of rule {name}: pinned by an earlier run, no longer in the config: removed"
                    );
                } else if self.foreign.insert(name.clone()) {
                    tracing::warn!(
                        "egress fence pinned at {} belongs to no rule of this config (another daemon's, or a renamed rule): left on; remove the directory to take it down",
                        e.path().display()
                    );
                }
            }
        }
        self.follow_cgroups();
        Ok(())
    }

    /// Fence the cgroups that match now; forget those gone (or no longer matched). A pattern
    /// that cannot be read leaves its rule's fence as it is.
    pub fn follow_cgroups(&mut self) {
        for (name, f) in &mut self.rules {
            if f.detached {
                continue;
            }
            let mut now: BTreeMap<u64, PathBuf> = BTreeMap::new();
            let mut readable = true;
            for p in &f.cfg.cgroups {
                match p.expand() {
                    Ok(found) => {
                        if found.is_empty() {
                            if f.said_empty.insert(p.as_str().to_owned()) {
                                tracing::warn!(
                                    "egress fence of rule {name}: no cgroup matches {p} yet; fenced when one appears"
                                );
                            }
                        } else {
                            f.said_empty.remove(p.as_str());
                        }
                        now.extend(found.into_iter().map(|Cgroup { id, path }| (id, path)));
                    }
                    Err(e) => {
                        tracing::warn!(
                            "egress fence of rule {name}: cannot read the cgroups of {p} ({e}); the fence stays as it is"
                        );
                        readable = false;
                    }
                }
            }
            if !readable {
                continue;
            }
            let pinned = f.guard.pinned();
            for (id, path) in &now {
                let have = pinned.get(id);
                if have.is_some_and(|h| h.len() == shadow_common::egress::PROGRAMS.len()) {
                    if f.attached.insert(*id, path.clone()).is_none() {
                        tracing::info!("egress fence of rule {name}: on {} (pinned earlier)", path.display());
                    }
                    continue;
                }
                let cg = Cgroup { id: *id, path: path.clone() };
                match f.guard.attach(&cg, have) {
                    Ok(()) => {
                        f.attached.insert(*id, path.clone());
                        tracing::info!(
                            "egress fence of rule {name}: on {} ({} mode, {} allowed destination(s))",
                            path.display(),
                            f.cfg.mode,
                            f.cfg.allow.len()
                        );
                    }
                    Err(e) => tracing::error!("{e}"),
                }
            }
            for id in pinned.keys().filter(|id| !now.contains_key(id)) {
                let path = f.attached.remove(id);
                match f.guard.detach(*id) {
                    Ok(()) => tracing::info!(
                        "egress fence of rule {name}: cgroup {} is gone or no longer matched: forgotten",
                        path.map_or_else(|| format!("id {id}"), |p| p.display().to_string())
                    ),
                    Err(e) => tracing::error!("{e}"),
                }
            }
            f.attached.retain(|id, _| now.contains_key(id));
        }
    }

    /// Read what was tried: log each destination outside the allowlist the first time it is
    /// seen, and give the metric's series.
    pub fn poll(&mut self, clocks: Clocks) -> Series {
        let mut series = Vec::new();
        for (name, f) in &mut self.rules {
            let (tuples, unlisted) = f.guard.read();
            for (k, s) in &tuples {
                if k.verdict != ALLOWED && f.logged.insert(*k) {
                    let who = view::comm(&s.comm);
                    let who = if who.is_empty() { String::new() } else { format!("{who} (pid {}) ", s.pid) };
                    let (call, what) = (
                        if k.hook == shadow_common::egress::HOOK_CONNECT { "connect" } else { "sendmsg" },
                        if k.verdict == shadow_common::egress::REFUSED {
                            "refused"
                        } else {
                            "let through (observe mode: it would be refused)"
                        },
                    );
                    tracing::warn!(
                        "egress fence of rule {name}: the shadow's {who}tried to reach {} ({} {call}), not in its allowlist: {what}; counted in shadowctl egress",
                        view::destination(k),
                        view::protocol(k.protocol),
                    );
                }
            }
            let rows = view::destinations(&tuples, clocks);
            for ((dest, verdict), n) in f.labels.series(&rows, &unlisted) {
                series.push((name.clone(), dest, verdict, n));
            }
        }
        series
    }

    /// Benchmarks: the run-time accounting of every fence's programs.
    #[cfg(any(test, feature = "test-util"))]
    pub fn program_stats(&self) -> Vec<crate::capture::ProgramStats> {
        self.rules.values().flat_map(|f| f.guard.program_stats()).collect()
    }

    /// No rule is fenced (every fence was removed by a reload).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// `shadowctl egress [--rule NAME]`.
    pub fn status(&self, rule: Option<&str>, clocks: Clocks) -> Result<EgressStatus, String> {
        let mut rules = Vec::new();
        for (name, f) in self.select(rule)? {
            let (tuples, unlisted) = f.guard.read();
            let destinations: Vec<DestinationSeen> = view::destinations(&tuples, clocks);
            rules.push(RuleEgress {
                rule: name.clone(),
                mode: if f.detached { "detached".to_owned() } else { f.cfg.mode.to_string() },
                cgroups: f.cfg.cgroups.iter().map(ToString::to_string).collect(),
                attached: f.attached.values().map(|p| p.display().to_string()).collect(),
                allow: f.cfg.allow.iter().map(ToString::to_string).collect(),
                attempts: view::totals(&tuples, &unlisted),
                destinations,
                unlisted,
            });
        }
        Ok(EgressStatus { rules })
    }

    /// `shadowctl egress detach [--rule NAME]`: take the fence down (links unpinned, counts
    /// kept) until the next reload or restart.
    pub fn detach(&mut self, rule: Option<&str>, clocks: Clocks) -> Result<EgressStatus, String> {
        let names: Vec<String> = self.select(rule)?.map(|(n, _)| n.clone()).collect();
        for name in &names {
            if let Some(f) = self.rules.get_mut(name) {
                for id in f.guard.pinned().into_keys() {
                    f.guard.detach(id).map_err(|e| e.to_string())?;
                }
                f.attached.clear();
                f.detached = true;
                tracing::warn!(
                    "egress fence of rule {name}: detached by the operator (until the next reload or restart)"
                );
            }
        }
        self.status(rule, clocks)
    }

    /// The destinations outside every rule's allowlist, for the report.
    pub fn findings(&self, clocks: Clocks) -> Vec<EgressFinding> {
        let mut out = Vec::new();
        for (name, f) in &self.rules {
            let (tuples, _) = f.guard.read();
            out.extend(view::findings(name, &view::destinations(&tuples, clocks)));
        }
        out
    }

    fn select<'a>(&'a self, rule: Option<&str>) -> Result<impl Iterator<Item = (&'a String, &'a Fenced)>, String> {
        if let Some(r) = rule
            && !self.rules.contains_key(r)
        {
            let known: Vec<&str> = self.rules.keys().map(String::as_str).collect();
            return Err(format!(
                "rule {r} has no egress fence (fenced: {})",
                if known.is_empty() { "none".to_owned() } else { known.join(", ") }
            ));
        }
        let rule = rule.map(str::to_owned);
        Ok(self.rules.iter().filter(move |(n, _)| rule.as_ref().is_none_or(|r| r == *n)))
    }
}

/// Pins need a BPF filesystem: at the pin directory, or at its nearest existing parent (where
/// it will be created).
fn check_pin_dir(pin_dir: &Path) -> Result<(), EgressError> {
    let mut p = pin_dir;
    while !p.exists() {
        p = p.parent().unwrap_or(Path::new("/"));
    }
    match fs_magic(p) {
        Ok(BPF_FS_MAGIC) => Ok(()),
        Ok(_) => Err(EgressError::Setting(format!(
            "--pin-dir {}: {} is not a BPF filesystem; the egress fence pins its links there to outlive the daemon (mount one: mount -t bpf bpf /sys/fs/bpf)",
            pin_dir.display(),
            p.display()
        ))),
        Err(e) => Err(EgressError::Setting(format!("--pin-dir {}: {e}", pin_dir.display()))),
    }
}

/// A pattern's literal part must lead into cgroup v2 (where it exists already).
fn check_cgroup_base(base: &Path, pattern: &str) -> Result<(), EgressError> {
    let mut p = base;
    while !p.exists() {
        p = p.parent().unwrap_or(Path::new("/"));
    }
    match fs_magic(p) {
        Ok(CGROUP2_SUPER_MAGIC) => Ok(()),
        Ok(_) => {
            let mounts: Vec<String> = cgroup2_mounts().iter().map(|m| m.display().to_string()).collect();
            let hint = if mounts.is_empty() {
                "this host has no cgroup v2 mounted".to_owned()
            } else {
                format!("cgroup v2 is mounted at {}", mounts.join(", "))
            };
            Err(EgressError::Setting(format!(
                "egress cgroup {pattern}: {} is not on a cgroup v2 filesystem ({hint})",
                p.display()
            )))
        }
        Err(e) => Err(EgressError::Setting(format!("egress cgroup {pattern}: {}: {e}", p.display()))),
    }
}
