//! One rule's fence in the kernel: the egress object loaded with its maps pinned under
//! `<pin dir>/<rule>/`, and one pinned link per (cgroup, hook) under `<pin dir>/<rule>/links/`
//! named `<cgroup id>-<hook>`. Pins are what keep the fence on when the daemon dies; a daemon
//! that starts again opens the same maps (the links in place keep running the programs they
//! were made with) and links only cgroups that have none. Removing a link's pin detaches it.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, MapData, PerCpuArray, PerCpuHashMap,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{CgroupAttachMode, CgroupSockAddr, links::FdLink},
};
use shadow_common::egress::{
    AllowKey, MAP_ALLOW, MAP_OVERFLOW, MAP_SEEN, MAP_STATE, MAPS, MODE_ENFORCE, MODE_OBSERVE, Overflow, PROGRAMS, Seen,
    SeenKey, State,
};

use super::{AllowEntry, EgressError, EgressMode, cgroups::Cgroup, view};

/// The egress object built by build.rs from shadow-ebpf (empty with SHADOW_SKIP_EBPF=1).
pub(super) static EGRESS_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/shadow-egress"));

pub(super) struct Guard {
    rule: String,
    dir: PathBuf,
    ebpf: Ebpf,
    allow: LpmTrie<MapData, AllowKey, u32>,
    seen: PerCpuHashMap<MapData, SeenKey, Seen>,
    state: Array<MapData, State>,
    overflow: PerCpuArray<MapData, Overflow>,
}

impl Guard {
    /// Load the rule's fence, opening its pinned maps when an earlier run left them.
    pub(super) fn open(rule: &str, root: &Path) -> Result<Self, EgressError> {
        let fail = |op: &str, reason: String| EgressError::Kernel { rule: rule.to_owned(), op: op.to_owned(), reason };
        if EGRESS_OBJECT.is_empty() {
            return Err(fail("load", "this build has no eBPF object (built with SHADOW_SKIP_EBPF=1)".into()));
        }
        let dir = root.join(rule);
        fs::create_dir_all(dir.join("links")).map_err(|e| fail(&format!("create {}", dir.display()), e.to_string()))?;
        let mut loader = EbpfLoader::new();
        for m in MAPS {
            loader.map_pin_path(m, dir.join(m));
        }
        let mut ebpf = loader.load(EGRESS_OBJECT).map_err(|e| fail("load the egress object", chain(&e)))?;
        for (name, _) in PROGRAMS {
            let p: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or_else(|| fail("load", format!("program {name} missing from the object")))?
                .try_into()
                .map_err(|e| fail(name, chain(&e)))?;
            p.load().map_err(|e| fail(&format!("load {name} (verifier)"), chain(&e)))?;
        }
        let mut take = |name: &str| ebpf.take_map(name).ok_or_else(|| fail("load", format!("map {name} missing")));
        let (allow, seen, state, overflow) = (take(MAP_ALLOW)?, take(MAP_SEEN)?, take(MAP_STATE)?, take(MAP_OVERFLOW)?);
        Ok(Self {
            rule: rule.to_owned(),
            allow: LpmTrie::try_from(allow).map_err(|e| fail(MAP_ALLOW, chain(&e)))?,
            seen: PerCpuHashMap::try_from(seen).map_err(|e| fail(MAP_SEEN, chain(&e)))?,
            state: Array::try_from(state).map_err(|e| fail(MAP_STATE, chain(&e)))?,
            overflow: PerCpuArray::try_from(overflow).map_err(|e| fail(MAP_OVERFLOW, chain(&e)))?,
            dir,
            ebpf,
        })
    }

    fn fail(&self, op: &str, reason: String) -> EgressError {
        EgressError::Kernel { rule: self.rule.clone(), op: op.to_owned(), reason }
    }

    /// Make the allowlist and the mode the config's. New entries go in before old ones leave,
    /// so a destination allowed before and after is never refused in between.
    pub(super) fn configure(&mut self, allow: &[AllowEntry], mode: EgressMode) -> Result<(), EgressError> {
        let want: BTreeMap<(u32, [u8; 20]), Key<AllowKey>> = allow
            .iter()
            .map(|e| {
                let (bits, k) = e.key();
                ((bits, key_bytes(&k)), Key::new(bits, k))
            })
            .collect();
        for k in want.values() {
            self.allow.insert(k, 1, 0).map_err(|e| self.fail("write the allowlist", chain(&e)))?;
        }
        let have: Vec<Key<AllowKey>> = self.allow.keys().filter_map(Result::ok).collect();
        for k in have {
            if !want.contains_key(&(k.prefix_len(), key_bytes(&k.data()))) {
                self.allow.remove(&k).map_err(|e| self.fail("trim the allowlist", chain(&e)))?;
            }
        }
        let mode = match mode {
            EgressMode::Enforce => MODE_ENFORCE,
            EgressMode::Observe => MODE_OBSERVE,
        };
        self.state.set(0, State { mode, _pad: 0 }, 0).map_err(|e| self.fail("set the mode", chain(&e)))
    }

    /// The cgroup ids with a pinned link, with the hooks pinned.
    pub(super) fn pinned(&self) -> BTreeMap<u64, BTreeSet<String>> {
        let mut out: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
        let Ok(entries) = fs::read_dir(self.dir.join("links")) else {
            return out;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some((id, hook)) = name.to_str().and_then(|n| n.split_once('-')) else { continue };
            if let Ok(id) = id.parse::<u64>() {
                out.entry(id).or_default().insert(hook.to_owned());
            }
        }
        out
    }

    /// Link every hook not linked yet to `cg`, and pin the links.
    pub(super) fn attach(&mut self, cg: &Cgroup, have: Option<&BTreeSet<String>>) -> Result<(), EgressError> {
        let dir =
            fs::File::open(&cg.path).map_err(|e| self.fail(&format!("open {}", cg.path.display()), e.to_string()))?;
        let links = self.dir.join("links");
        for (name, hook) in PROGRAMS {
            if have.is_some_and(|h| h.contains(hook)) {
                continue;
            }
            let fail = |op: String, reason: String| EgressError::Kernel { rule: self.rule.clone(), op, reason };
            let p: &mut CgroupSockAddr = self
                .ebpf
                .program_mut(name)
                .ok_or_else(|| fail("attach".into(), format!("program {name} missing")))?
                .try_into()
                .map_err(|e| fail((*name).into(), chain(&e)))?;
            let at = format!("attach {hook} to {}", cg.path.display());
            let id = p.attach(&dir, CgroupAttachMode::Single).map_err(|e| fail(at.clone(), chain(&e)))?;
            let link = p.take_link(id).map_err(|e| fail(at.clone(), chain(&e)))?;
            let link = FdLink::try_from(link)
                .map_err(|e| fail(at.clone(), format!("not a bpf link (kernel older than 5.7?): {}", chain(&e))))?;
            link.pin(links.join(format!("{}-{hook}", cg.id)))
                .map_err(|e| fail(format!("pin {hook} link"), chain(&e)))?;
        }
        Ok(())
    }

    /// Unpin (and so detach) every link of cgroup `id`.
    pub(super) fn detach(&self, id: u64) -> Result<(), EgressError> {
        for (_, hook) in PROGRAMS {
            let p = self.dir.join("links").join(format!("{id}-{hook}"));
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.fail(&format!("unpin {}", p.display()), e.to_string())),
            }
        }
        Ok(())
    }

    /// Every tuple the kernel counted (CPUs merged) and the attempts it could not list.
    pub(super) fn read(&self) -> (Vec<(SeenKey, Seen)>, view::AttemptCounts) {
        let tuples = self
            .seen
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(k, per_cpu)| view::merge_cpus(per_cpu.iter()).map(|s| (k, s)))
            .collect();
        let unlisted = self
            .overflow
            .get(&0, 0)
            .map(|per_cpu| view::unlisted(per_cpu.iter().map(|o| &o.attempts)))
            .unwrap_or_default();
        (tuples, unlisted)
    }

    /// The kernel's run-time accounting of this guard's programs (with BPF stats enabled).
    #[cfg(any(test, feature = "test-util"))]
    pub(super) fn program_stats(&self) -> Vec<crate::capture::ProgramStats> {
        PROGRAMS
            .iter()
            .filter_map(|(name, _)| {
                let info = self.ebpf.program(name)?.info().ok()?;
                Some(crate::capture::ProgramStats {
                    name,
                    id: info.id(),
                    run_time: info.run_time(),
                    run_count: info.run_count(),
                })
            })
            .collect()
    }

    /// Take the fence down: every link, the maps' pins, the directory.
    pub(super) fn remove(self) -> Result<(), EgressError> {
        remove_pins(&self.dir).map_err(|e| self.fail(&format!("remove {}", self.dir.display()), e.to_string()))
    }
}

/// Remove a rule's pin directory (links first: the fence goes down at once).
pub(super) fn remove_pins(dir: &Path) -> std::io::Result<()> {
    match fs::remove_dir_all(dir.join("links")) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn key_bytes(k: &AllowKey) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[..2].copy_from_slice(&k.port.to_ne_bytes());
    b[2] = k.family;
    b[3] = k._pad;
    b[4..].copy_from_slice(&k.addr);
    b
}

/// An error with its causes, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
