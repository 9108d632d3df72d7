//! The kernel side, seen from user space: load the eBPF object, attach it, write its config, read
//! its counters and drain its ring buffer. With `egress::guard` (the fence's own object), the only
//! module that uses aya.
//!
//! By concern: `attach` (hooks on interfaces), `rules` (the rule and config maps), `ring` (the
//! ring-buffer readers), `privileges`, `error`; `links` follows interfaces as they come and go;
//! `test_util` holds the kernel tests' and benchmarks' hooks (`test-util` feature).

mod attach;
mod error;
pub mod links;
mod privileges;
mod ring;
mod rules;
#[cfg(any(test, feature = "test-util"))]
mod test_util;

use std::{
    collections::BTreeMap,
    fs,
    io::{self, ErrorKind},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, MapError, PerCpuArray, RingBuf, lpm_trie::LpmTrie},
    programs::{ProgramError, SchedClassifier, Xdp},
};
use shadow_common::{Config, Counters, RuleState, ServiceKey, counter, names};

#[cfg(any(test, feature = "test-util"))]
pub use self::test_util::{ProgramStats, enable_kernel_stats};
use self::{
    attach::{Attached, interface_is_loopback},
    error::classify_load_error,
    privileges::check_privileges,
    rules::ServiceKeyOrd,
};
pub use self::{
    attach::{HookKind, check_interface},
    error::CaptureError,
    ring::{KernelLog, PollInterval, Record, SegmentSource},
    rules::KernelRule,
};
use crate::sys::errno;

/// The eBPF object built by build.rs from shadow-ebpf (empty when built with SHADOW_SKIP_EBPF=1).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/shadow"));

/// What to capture and where.
#[derive(Clone, Debug)]
pub struct CaptureOptions {
    pub interface: String,
    pub hook: HookKind,
    /// Rule ids are positions in this list (at most [`shadow_common::MAX_RULES`]).
    pub rules: Vec<KernelRule>,
    pub ring_buffer_size: u32,
    pub verifier_log: PathBuf,
    /// Attach even where another shadow capture already covers one of our ports (it would
    /// replay every request a second time).
    pub allow_shared: bool,
}

impl CaptureOptions {
    /// Every port some rule covers, sorted, each once.
    pub fn ports(&self) -> Vec<u16> {
        let mut p: Vec<u16> = self.rules.iter().flat_map(|r| r.services.iter().map(|s| s.port)).collect();
        p.sort_unstable();
        p.dedup();
        p
    }
}

/// A loaded and attached capture. Dropping it detaches the programs (the links are owned here).
pub struct Capture {
    ebpf: Ebpf,
    config_map: Array<MapData, Config>,
    counters_map: PerCpuArray<MapData, Counters>,
    services_map: LpmTrie<MapData, ServiceKey, u32>,
    rules_map: Array<MapData, RuleState>,
    config: Config,
    /// What the services trie holds now: (prefix length, key) → rule id.
    services: BTreeMap<(u32, ServiceKeyOrd), u32>,
    rules: Vec<KernelRule>,
    /// What is attached where: interface → its links.
    links: BTreeMap<String, Vec<Attached>>,
    allow_shared: bool,
    events: Option<RingBuf<MapData>>,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

impl Capture {
    /// Load, configure and attach, and hand out the ring-buffer reader. The config (ports, rate,
    /// enabled) is written before the first attach, so no packet is ever seen with an empty config.
    /// Must run inside a tokio runtime (the reader registers with its reactor).
    pub fn start(opts: &CaptureOptions) -> Result<(Self, SegmentSource, Option<KernelLog>), CaptureError> {
        // A typo in --interface should not wait for the verifier (load checks privileges).
        interface_is_loopback(&opts.interface)?;
        let mut capture = Self::load(opts)?;
        capture.attach(opts)?;
        let source = capture.take_source()?;
        let log = capture.take_kernel_log();
        Ok((capture, source, log))
    }

    /// Load the object, create the maps and write the config; nothing is attached yet.
    pub fn load(opts: &CaptureOptions) -> Result<Self, CaptureError> {
        if EBPF_OBJECT.is_empty() {
            return Err(CaptureError::NoObject);
        }
        check_privileges()?;

        let mut ebpf = EbpfLoader::new()
            .map_max_entries(names::MAP_EVENTS, opts.ring_buffer_size)
            .load(EBPF_OBJECT)
            .map_err(|e| classify_load_error("load the eBPF object", e))?;

        // The log ring exists only if the object has log statements; without it we lose nothing
        // but the rare-path messages.
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!("kernel log forwarding disabled: {e}");
                None
            }
        };

        let config_map: Array<MapData, Config> = take_map(&mut ebpf, names::MAP_CONFIG)?;
        let counters_map: PerCpuArray<MapData, Counters> = take_map(&mut ebpf, names::MAP_COUNTERS)?;
        let events: RingBuf<MapData> = take_map(&mut ebpf, names::MAP_EVENTS)?;
        let services_map: LpmTrie<MapData, ServiceKey, u32> = take_map(&mut ebpf, names::MAP_SERVICES)?;
        let rules_map: Array<MapData, RuleState> = take_map(&mut ebpf, names::MAP_RULES)?;

        let mut config = Config::new();
        config.enabled = 1;
        let mut capture = Self {
            ebpf,
            config_map,
            counters_map,
            services_map,
            rules_map,
            config,
            services: BTreeMap::new(),
            rules: Vec::new(),
            links: BTreeMap::new(),
            allow_shared: opts.allow_shared,
            events: Some(events),
            logger,
        };
        capture.set_rules(&opts.rules)?;
        // Only the hook's program: the kernel's verifier takes seconds per program on a small node,
        // and the TC one serves both directions.
        match opts.hook {
            HookKind::Tc => {
                let prog: &mut SchedClassifier = program(&mut capture.ebpf, names::PROG_TC)?;
                load_program(names::PROG_TC, &opts.verifier_log, || prog.load())?;
            }
            HookKind::Xdp => {
                let prog: &mut Xdp = program(&mut capture.ebpf, names::PROG_XDP)?;
                load_program(names::PROG_XDP, &opts.verifier_log, || prog.load())?;
            }
        }
        Ok(capture)
    }

    /// The kernel counters summed over CPUs, index-aligned with `shadow_common::counter::NAMES`.
    pub fn counters(&self) -> Result<[u64; counter::COUNT], CaptureError> {
        let per_cpu = self
            .counters_map
            .get(&0, 0)
            .map_err(|e| CaptureError::Map { op: format!("read {}", names::MAP_COUNTERS), source: Box::new(e) })?;
        let mut sum = [0u64; counter::COUNT];
        for c in per_cpu.iter() {
            for (s, v) in sum.iter_mut().zip(c.values.iter()) {
                *s = s.wrapping_add(*v);
            }
        }
        Ok(sum)
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, CaptureError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let prog = ebpf.program_mut(name).ok_or_else(|| CaptureError::Io {
        op: format!("find program {name} in the eBPF object"),
        source: io::Error::new(ErrorKind::NotFound, "missing"),
    })?;
    prog.try_into().map_err(|e| CaptureError::Program { op: format!("program {name}"), source: Box::new(e) })
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, CaptureError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or_else(|| CaptureError::Io {
        op: format!("find map {name} in the eBPF object"),
        source: io::Error::new(ErrorKind::NotFound, "missing"),
    })?;
    T::try_from(map).map_err(|e| CaptureError::Map { op: format!("open map {name}"), source: Box::new(e) })
}

fn load_program(
    name: &'static str,
    verifier_log: &Path,
    load: impl FnOnce() -> Result<(), ProgramError>,
) -> Result<(), CaptureError> {
    match load() {
        Ok(()) => Ok(()),
        Err(ProgramError::LoadError { io_error, verifier_log: log }) => {
            if errno::is_permission(&io_error) {
                return Err(CaptureError::Privileges { op: format!("load {name}"), detail: String::new() });
            }
            let text = log.to_string();
            if let Err(e) = fs::write(verifier_log, &text) {
                tracing::error!("could not save the verifier log to {}: {e}", verifier_log.display());
            }
            Err(CaptureError::Verifier { program: name, reason: io_error.to_string(), log: verifier_log.to_path_buf() })
        }
        Err(e) => Err(CaptureError::Program { op: format!("load {name}"), source: Box::new(e) }),
    }
}
