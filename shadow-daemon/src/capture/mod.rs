//! The kernel side, seen from user space: load the eBPF object, attach it, write its config, read
//! its counters and drain its ring buffer. The only module that uses aya.

pub mod links;

use std::{
    collections::BTreeMap,
    fs,
    io::{self, ErrorKind},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{
        Array, MapData, MapError, PerCpuArray, RingBuf,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode, tc::SchedClassifierLinkId, xdp::XdpLinkId},
};
use shadow_common::{
    Config, Counters, FlowKey, FlowState, MAX_RULES, MAX_SERVICES, PPM_ALL, RuleState, SERVICE_KEY_FIXED_BITS,
    ServiceKey, counter, family, names,
};
use tokio::io::unix::AsyncFd;

use crate::{
    segment::{self, DecodeError, Segment},
    service::ServiceMatch,
    sys::{self, errno},
};

/// Which kernel hook captures traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookKind {
    /// TC ingress and egress (TCX on Linux >= 6.6): requests and responses.
    Tc,
    /// XDP on ingress only: for physical NICs where the service's traffic arrives; sees requests
    /// (and responses only if they also arrive on this interface).
    Xdp,
}

/// The eBPF object built by build.rs from shadow-ebpf (empty when built with SHADOW_SKIP_EBPF=1).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/shadow"));

/// What to capture and where.
#[derive(Clone, Debug)]
pub struct CaptureOptions {
    pub interface: String,
    pub hook: HookKind,
    /// Rule ids are positions in this list (at most [`MAX_RULES`]).
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

/// One rule as the kernel sees it: the services it covers and its sampling rate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelRule {
    pub services: Vec<ServiceMatch>,
    /// Parts per million of requests sampled (0 while paused).
    pub sample_ppm: u32,
}

impl KernelRule {
    /// `ports` on every address.
    pub fn any_address(ports: &[u16], sample_ppm: u32) -> Self {
        Self { services: ports.iter().map(|&p| ServiceMatch::any_address(p)).collect(), sample_ppm }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("this binary was built with SHADOW_SKIP_EBPF=1 and has no eBPF object: rebuild without it")]
    NoObject,
    #[error("insufficient privileges to {op}: run as root, or grant CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON{detail}")]
    Privileges { op: String, detail: String },
    #[error("unknown interface '{0}' (see `ip link`)")]
    UnknownInterface(String),
    #[error("BPF is not available on this kernel ({op}: {source}); Linux >= 5.15 with BTF is required")]
    BpfUnavailable { op: String, source: io::Error },
    #[error("the kernel verifier rejected {program}: {reason}; verifier log saved to {}", log.display())]
    Verifier { program: &'static str, reason: String, log: PathBuf },
    #[error(
        "interface '{interface}' already has an XDP program attached; detach it (`ip link set dev {interface} xdp off`) or use --hook tc"
    )]
    XdpBusy { interface: String },
    #[error("{op}: {source}")]
    Program { op: String, source: Box<ProgramError> },
    #[error("{op}: {source}")]
    Map { op: String, source: Box<MapError> },
    #[error("{op}: {source}")]
    Load { op: String, source: Box<EbpfError> },
    #[error("{op}: {source}")]
    Io { op: String, source: io::Error },
    #[error("{0}")]
    Rules(String),
    #[error(
        "interface '{interface}' already has a shadow capture (program {program} id {id}, {hook}) on port(s) {ports}: every request would be replayed twice; stop that daemon, or pass --allow-shared-capture"
    )]
    SharedCapture { interface: String, program: String, id: u32, hook: &'static str, ports: String },
}

impl CaptureError {
    /// Exit code for the binary: 2 for what the user asked wrongly, 1 for the environment.
    pub const fn exit_code(&self) -> u8 {
        match self {
            Self::UnknownInterface(_) | Self::XdpBusy { .. } | Self::Rules(_) | Self::SharedCapture { .. } => 2,
            _ => 1,
        }
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

/// One program's run-time accounting as the kernel keeps it.
#[derive(Clone, Debug)]
pub struct ProgramStats {
    pub name: &'static str,
    pub id: u32,
    pub run_time: Duration,
    pub run_count: u64,
}

/// Turn on the kernel's per-program run-time accounting while the returned fd is open
/// (BPF_ENABLE_STATS; same effect as sysctl kernel.bpf_stats_enabled=1, but scoped).
pub fn enable_kernel_stats() -> Result<std::os::fd::OwnedFd, CaptureError> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map_err(|e| CaptureError::Io { op: "enable BPF run-time stats".into(), source: e.io_error })
}

/// Reads records from the ring buffer when the kernel signals them (epoll, no busy polling).
pub struct SegmentSource {
    ring: AsyncFd<RingBuf<MapData>>,
    poll: PollInterval,
}

/// How long the ring-buffer reader waits for the kernel's wakeup before it looks anyway:
/// [`shadow_common::RING_POLL_INTERVAL_MS`] while looks find records, doubled after every look
/// that finds none, up to [`shadow_common::RING_IDLE_POLL_MS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollInterval {
    ms: u64,
}

impl Default for PollInterval {
    fn default() -> Self {
        Self { ms: shadow_common::RING_POLL_INTERVAL_MS }
    }
}

impl PollInterval {
    pub fn get(self) -> Duration {
        Duration::from_millis(self.ms)
    }

    /// After a look at the ring that drained `records`.
    pub fn looked(&mut self, records: usize) {
        self.ms = if records > 0 {
            shadow_common::RING_POLL_INTERVAL_MS
        } else {
            self.ms.saturating_mul(2).min(shadow_common::RING_IDLE_POLL_MS)
        };
    }
}

/// Forwards aya-log records from the programs to the daemon's log.
pub struct KernelLog {
    logger: AsyncFd<Logger>,
}

type Logger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// aya's ring readers, which own their map's fd for as long as they live (what tokio's
/// `AsyncFd` requires of what it watches).
trait OwnsFd: AsRawFd {}
impl OwnsFd for RingBuf<MapData> {}
impl OwnsFd for Logger {}

/// Watch `inner` for readability on the runtime's reactor. Must run inside a tokio runtime.
fn register_readable<T: OwnsFd>(inner: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: every `OwnsFd` type (aya's RingBuf and EbpfLogger) owns its map fd: it stays open,
    // and the same, for as long as the AsyncFd owns the value.
    unsafe { AsyncFd::register_with_interest(inner, tokio::io::Interest::READABLE) }.map_err(io::Error::from)
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
        for name in [names::PROG_TC_INGRESS, names::PROG_TC_EGRESS] {
            let prog: &mut SchedClassifier = program(&mut capture.ebpf, name)?;
            load_program(name, &opts.verifier_log, || prog.load())?;
        }
        let prog: &mut Xdp = program(&mut capture.ebpf, names::PROG_XDP)?;
        load_program(names::PROG_XDP, &opts.verifier_log, || prog.load())?;
        Ok(capture)
    }

    /// Attach the loaded programs to `opts.interface` with `opts.hook`.
    pub fn attach(&mut self, opts: &CaptureOptions) -> Result<(), CaptureError> {
        self.attach_interface(&opts.interface, opts.hook)
    }

    /// Attach to one more interface (a no-op if already attached there). All or nothing: if
    /// the second hook fails, the first is detached again.
    pub fn attach_interface(&mut self, iface: &str, hook: HookKind) -> Result<(), CaptureError> {
        if self.links.contains_key(iface) {
            return Ok(());
        }
        let loopback = interface_is_loopback(iface)?;
        let mut links = Vec::new();
        let r = match hook {
            HookKind::Tc => self.attach_tc(TcAttachType::Ingress, iface).map(|l| links.push(l)).and_then(|()| {
                // On loopback every packet passes egress and then ingress of the same device:
                // ingress alone sees each segment exactly once.
                if loopback { Ok(()) } else { self.attach_tc(TcAttachType::Egress, iface).map(|l| links.push(l)) }
            }),
            HookKind::Xdp => self.attach_xdp(iface).map(|l| links.push(l)),
        };
        if let Err(e) = r {
            for l in links {
                self.detach_link(l);
            }
            return Err(e);
        }
        self.links.insert(iface.to_string(), links);
        Ok(())
    }

    /// Detach from `iface` (an interface that is gone has lost its links with it: nothing to
    /// fail). Returns whether it was attached.
    pub fn detach_interface(&mut self, iface: &str) -> bool {
        let Some(links) = self.links.remove(iface) else {
            return false;
        };
        for l in links {
            self.detach_link(l);
        }
        true
    }

    fn detach_link(&mut self, l: Attached) {
        let detached = match l {
            Attached::Tc { program: name, id, .. } => {
                program::<SchedClassifier>(&mut self.ebpf, name).is_ok_and(|p| p.detach(id).is_ok())
            }
            Attached::Xdp { id } => program::<Xdp>(&mut self.ebpf, names::PROG_XDP).is_ok_and(|p| p.detach(id).is_ok()),
        };
        if !detached {
            tracing::debug!("detach: the link was already gone with its interface");
        }
    }

    /// Interfaces attached now, sorted.
    pub fn interfaces(&self) -> Vec<String> {
        self.links.keys().cloned().collect()
    }

    /// Benchmarks only: attach the do-nothing program to tc ingress and egress of `iface` too, so
    /// its run-time stats give the per-packet floor every program pays.
    pub fn attach_baseline(&mut self, iface: &str, verifier_log: &Path) -> Result<(), CaptureError> {
        let prog: &mut SchedClassifier = program(&mut self.ebpf, names::PROG_TC_NOOP)?;
        load_program(names::PROG_TC_NOOP, verifier_log, || prog.load())?;
        for kind in [TcAttachType::Ingress, TcAttachType::Egress] {
            let prog: &mut SchedClassifier = program(&mut self.ebpf, names::PROG_TC_NOOP)?;
            prog.attach(iface, kind)
                .map_err(|e| classify_attach_error(format!("attach baseline to {iface}"), iface, e))?;
        }
        Ok(())
    }

    /// The async reader of the ring buffer (once). Must run inside a tokio runtime.
    pub fn take_source(&mut self) -> Result<SegmentSource, CaptureError> {
        let events = self.take_ring()?;
        let ring = register_readable(events)
            .map_err(|e| CaptureError::Io { op: "register the ring buffer with epoll".into(), source: e })?;
        Ok(SegmentSource { ring, poll: PollInterval::default() })
    }

    /// The raw ring buffer (once), for synchronous readers such as the kernel tests.
    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>, CaptureError> {
        self.events.take().ok_or_else(|| CaptureError::Io {
            op: format!("take {}", names::MAP_EVENTS),
            source: io::Error::new(ErrorKind::AlreadyExists, "the ring buffer was already taken"),
        })
    }

    /// The kernel log forwarder (once), if the object has a log map. Needs a tokio runtime.
    pub fn take_kernel_log(&mut self) -> Option<KernelLog> {
        let l = self.logger.take()?;
        match register_readable(l) {
            Ok(fd) => Some(KernelLog { logger: fd }),
            Err(e) => {
                tracing::warn!("kernel log forwarding disabled: {e}");
                None
            }
        }
    }

    /// Run one of the loaded programs on a crafted frame with BPF_PROG_TEST_RUN; returns the
    /// program's verdict. For the kernel tests and the per-packet cost benchmark.
    pub fn test_run(&mut self, name: &'static str, frame: &[u8], repeat: u32) -> Result<(u32, Duration), CaptureError> {
        use aya::programs::{TestRun, TestRunOptions};
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.repeat = repeat.max(1);
        let r = if name == names::PROG_XDP {
            let prog: &mut Xdp = program(&mut self.ebpf, name)?;
            prog.test_run(opts)
        } else {
            let prog: &mut SchedClassifier = program(&mut self.ebpf, name)?;
            prog.test_run(opts)
        };
        let r =
            r.map_err(|e| CaptureError::Program { op: format!("BPF_PROG_TEST_RUN {name}"), source: Box::new(e) })?;
        Ok((r.return_value, r.duration))
    }

    /// Entries in the kernel's per-connection sampling map, (all, sampled) (walks the map: not
    /// for hot paths).
    pub fn tracked_flows(&self) -> Result<(usize, usize), CaptureError> {
        let map = self.ebpf.map(names::MAP_FLOWS).ok_or_else(|| CaptureError::Io {
            op: format!("find map {}", names::MAP_FLOWS),
            source: io::Error::new(ErrorKind::NotFound, "missing"),
        })?;
        let flows: aya::maps::HashMap<&MapData, FlowKey, FlowState> = aya::maps::HashMap::try_from(map)
            .map_err(|e| CaptureError::Map { op: format!("open map {}", names::MAP_FLOWS), source: Box::new(e) })?;
        let states: Vec<FlowState> = flows.iter().filter_map(Result::ok).map(|(_, v)| v).collect();
        Ok((states.len(), states.iter().filter(|s| s.sampled != 0).count()))
    }

    /// The kernel's own accounting per program: (name, id, run_time, run_count). The counts move
    /// only while BPF stats are enabled (see [`enable_kernel_stats`]).
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        let mut out = Vec::new();
        for name in [names::PROG_TC_INGRESS, names::PROG_TC_EGRESS, names::PROG_XDP, names::PROG_TC_NOOP] {
            if let Some(p) = self.ebpf.program(name)
                && let Ok(info) = p.info()
            {
                out.push(ProgramStats { name, id: info.id(), run_time: info.run_time(), run_count: info.run_count() });
            }
        }
        out
    }

    /// Human-readable list of what is attached, e.g. `tc ingress on eth0`.
    pub fn attached(&self) -> Vec<String> {
        self.links
            .iter()
            .flat_map(|(iface, links)| {
                links.iter().map(move |l| match l {
                    Attached::Tc { what, .. } => format!("tc {what} on {iface}"),
                    Attached::Xdp { .. } => format!("xdp on {iface}"),
                })
            })
            .collect()
    }

    fn attach_tc(&mut self, kind: TcAttachType, iface: &str) -> Result<Attached, CaptureError> {
        let (name, what) = match kind {
            TcAttachType::Egress => (names::PROG_TC_EGRESS, "egress"),
            _ => (names::PROG_TC_INGRESS, "ingress"),
        };
        let tcx = aya::util::KernelVersion::current().is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0));
        if tcx && !self.allow_shared {
            self.refuse_shared(iface, kind, what)?;
        }
        let prog: &mut SchedClassifier = program(&mut self.ebpf, name)?;
        if !tcx {
            // Before TCX, classifiers hang off the clsact qdisc; it may already exist.
            if let Err(e) = aya::programs::tc::qdisc_add_clsact(iface) {
                tracing::debug!("clsact on {iface}: {e} (already present?)");
            }
        }
        let id = prog
            .attach(iface, kind)
            .map_err(|e| classify_attach_error(format!("attach tc {what} to {iface}"), iface, e))?;
        Ok(Attached::Tc { program: name, what, id })
    }

    /// Refuse to attach where another shadow capture (a program of ours, loaded by another
    /// process) covers one of our ports. TCX lists what is attached; reading the other
    /// program's config needs CAP_SYS_ADMIN, and without it the check is skipped with a warning.
    fn refuse_shared(&self, iface: &str, kind: TcAttachType, hook: &'static str) -> Result<(), CaptureError> {
        let ours = |n: &str| n.starts_with("shadow_tc_ingre") || n.starts_with("shadow_tc_egres");
        let infos = match SchedClassifier::query_tcx(iface, kind) {
            Ok((_, infos)) => infos,
            Err(e) => {
                tracing::warn!(
                    "{iface}: cannot list the programs attached to tc {hook} ({e}); not checking for another shadow capture"
                );
                return Ok(());
            }
        };
        for info in infos {
            let name = info.name_as_str().unwrap_or_default().to_string();
            if !ours(&name) {
                continue;
            }
            let theirs = other_config(&info);
            let shared: Vec<u16> = match &theirs {
                Some(t) => (0..=u16::MAX).filter(|&p| t.has_port(p) && self.config.has_port(p)).collect(),
                None => Vec::new(),
            };
            if theirs.is_none() || !shared.is_empty() {
                // Unreadable: assume the worst rather than replay twice.
                let ports = match theirs {
                    None => "unknown".to_string(),
                    Some(_) => shared.iter().map(u16::to_string).collect::<Vec<_>>().join(","),
                };
                return Err(CaptureError::SharedCapture {
                    interface: iface.into(),
                    program: name,
                    id: info.id(),
                    hook,
                    ports,
                });
            }
        }
        Ok(())
    }

    fn attach_xdp(&mut self, iface: &str) -> Result<Attached, CaptureError> {
        let prog: &mut Xdp = program(&mut self.ebpf, names::PROG_XDP)?;
        let id = prog
            .attach(iface, XdpMode::Default)
            .map_err(|e| classify_attach_error(format!("attach xdp to {iface}"), iface, e))?;
        Ok(Attached::Xdp { id })
    }

    fn write_config(&mut self) -> Result<(), CaptureError> {
        self.config_map
            .set(0, self.config, 0)
            .map_err(|e| CaptureError::Map { op: format!("write {}", names::MAP_CONFIG), source: Box::new(e) })
    }

    /// Install `rules` (ids are positions) in place of the current ones, live: the services
    /// trie gains the new entries before it loses the stale ones, and the port bitmap covers the
    /// union meanwhile, so a request of a service present before and after never goes unmatched.
    pub fn set_rules(&mut self, rules: &[KernelRule]) -> Result<(), CaptureError> {
        let wanted = service_entries(rules)?;
        for (id, r) in rules.iter().enumerate() {
            self.write_rule(id as u32, r.sample_ppm)?;
        }
        let mut union = self.config;
        for r in rules {
            for s in &r.services {
                union.set_port(s.port);
            }
        }
        self.config = union;
        self.write_config()?;
        for (k, id) in &wanted {
            if self.services.get(k) != Some(id) {
                self.services_map.insert(&Key::new(k.0, k.1.0), id, 0).map_err(|e| CaptureError::Map {
                    op: format!("insert into {}", names::MAP_SERVICES),
                    source: Box::new(e),
                })?;
            }
        }
        for k in self.services.keys() {
            if !wanted.contains_key(k) {
                self.services_map.remove(&Key::new(k.0, k.1.0)).map_err(|e| CaptureError::Map {
                    op: format!("remove from {}", names::MAP_SERVICES),
                    source: Box::new(e),
                })?;
            }
        }
        for id in rules.len()..self.rules.len() {
            self.write_rule(id as u32, 0)?;
        }
        let mut exact = Config::new();
        exact.enabled = self.config.enabled;
        for r in rules {
            for s in &r.services {
                exact.set_port(s.port);
            }
        }
        self.config = exact;
        self.write_config()?;
        self.services = wanted;
        self.rules = rules.to_vec();
        Ok(())
    }

    fn write_rule(&mut self, id: u32, ppm: u32) -> Result<(), CaptureError> {
        self.rules_map.set(id, RuleState { sample_ppm: ppm.min(PPM_ALL), _pad: 0 }, 0).map_err(|e| CaptureError::Map {
            op: format!("write rule {id} to {}", names::MAP_RULES),
            source: Box::new(e),
        })
    }

    /// Change one rule's sampling rate; applies from its next request line, no restart, other
    /// rules untouched.
    pub fn set_rule_ppm(&mut self, id: usize, ppm: u32) -> Result<(), CaptureError> {
        if id >= self.rules.len() {
            return Err(CaptureError::Rules(format!("no rule {id} (there are {})", self.rules.len())));
        }
        self.write_rule(id as u32, ppm)?;
        self.rules[id].sample_ppm = ppm.min(PPM_ALL);
        Ok(())
    }

    /// A rule's sampling rate as the kernel's map holds it (read back, not remembered).
    pub fn rule_ppm(&self, id: usize) -> Result<u32, CaptureError> {
        self.rules_map.get(&(id as u32), 0).map(|r| r.sample_ppm).map_err(|e| CaptureError::Map {
            op: format!("read rule {id} from {}", names::MAP_RULES),
            source: Box::new(e),
        })
    }

    /// Every rule to the same rate.
    pub fn set_sample_ppm(&mut self, ppm: u32) -> Result<(), CaptureError> {
        for id in 0..self.rules.len() {
            self.set_rule_ppm(id, ppm)?;
        }
        Ok(())
    }

    /// The first rule's rate (the daemon-wide rate when there is one rule).
    pub fn sample_ppm(&self) -> u32 {
        self.rules.first().map_or(0, |r| r.sample_ppm)
    }

    pub fn rules(&self) -> &[KernelRule] {
        &self.rules
    }

    /// Pause (false) or resume (true) capture; the programs stay attached either way.
    pub fn set_enabled(&mut self, enabled: bool) -> Result<(), CaptureError> {
        self.config.enabled = u32::from(enabled);
        self.write_config()
    }

    pub fn enabled(&self) -> bool {
        self.config.enabled != 0
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

impl SegmentSource {
    /// Wait until the kernel has records, then drain up to `max` of them into `out`. Records that
    /// do not decode are counted by reason in `bad` (they never reach reassembly).
    ///
    /// The kernel wakes us only once [`shadow_common::RING_WAKEUP_BYTES`] are pending, so we also
    /// look every [`shadow_common::RING_POLL_INTERVAL_MS`] while records come ([`PollInterval`]:
    /// less often after looks that find nothing): a trickle of records waits at most that.
    pub async fn next_batch(
        &mut self,
        out: &mut Vec<Segment>,
        bad: &mut Vec<DecodeError>,
        max: usize,
    ) -> io::Result<()> {
        loop {
            let n = match tokio::time::timeout(self.poll.get(), self.ring.readable_mut()).await {
                Ok(guard) => {
                    let mut guard = guard?;
                    let n = drain(guard.get_inner_mut(), out, bad, max);
                    if n < max {
                        // Drained: wait for the next wakeup.
                        guard.clear_ready();
                    }
                    n
                }
                Err(_elapsed) => drain(self.ring.get_mut(), out, bad, max),
            };
            self.poll.looked(n);
            if n > 0 {
                return Ok(());
            }
        }
    }

    /// Drain whatever is buffered now without waiting (used at shutdown).
    pub fn drain_now(&mut self, out: &mut Vec<Segment>, bad: &mut Vec<DecodeError>) {
        drain(self.ring.get_mut(), out, bad, usize::MAX);
    }
}

fn drain(ring: &mut RingBuf<MapData>, out: &mut Vec<Segment>, bad: &mut Vec<DecodeError>, max: usize) -> usize {
    let mut n = 0;
    while n < max {
        let Some(item) = ring.next() else { break };
        match segment::decode(&item) {
            Ok(s) => out.push(s),
            Err(e) => bad.push(e),
        }
        n += 1;
    }
    n
}

impl KernelLog {
    /// Forward kernel log records as they arrive; runs until the daemon stops.
    pub async fn run(mut self) {
        loop {
            match self.logger.readable_mut().await {
                Ok(mut guard) => {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                Err(e) => {
                    tracing::warn!("kernel log forwarding stopped: {e}");
                    return;
                }
            }
        }
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

fn io_of_map_error(e: &MapError) -> Option<&io::Error> {
    match e {
        MapError::CreateError { io_error, .. } => Some(io_error),
        MapError::SyscallError(s) => Some(&s.io_error),
        _ => None,
    }
}

fn classify_load_error(op: &str, e: EbpfError) -> CaptureError {
    let io = match &e {
        EbpfError::MapError(m) => io_of_map_error(m),
        _ => None,
    };
    if let Some(io) = io {
        if errno::is_permission(io) {
            return CaptureError::Privileges { op: op.into(), detail: format!(" ({io})") };
        }
        if let Some(source) = errno::unsupported(io) {
            return CaptureError::BpfUnavailable { op: op.into(), source };
        }
    }
    CaptureError::Load { op: op.into(), source: Box::new(e) }
}

fn classify_attach_error(op: String, iface: &str, e: ProgramError) -> CaptureError {
    let io = match &e {
        ProgramError::SyscallError(s) => Some(&s.io_error),
        _ => None,
    };
    if let ProgramError::UnknownInterface { name } = &e {
        return CaptureError::UnknownInterface(name.clone());
    }
    if let Some(io) = io {
        if errno::is_permission(io) {
            return CaptureError::Privileges { op, detail: format!(" ({io})") };
        }
        if op.starts_with("attach xdp") && errno::is_busy(io) {
            return CaptureError::XdpBusy { interface: iface.into() };
        }
    }
    CaptureError::Program { op, source: Box::new(e) }
}

/// Fail early with one line when the process obviously cannot load BPF, instead of an EPERM from
/// deep inside the loader.
fn check_privileges() -> Result<(), CaptureError> {
    if sys::process::effective_uid() == 0 {
        return Ok(());
    }
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |c: u32| eff & (1u64 << c) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_PERFMON");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(CaptureError::Privileges {
            op: "load eBPF programs".into(),
            detail: format!(" (missing {})", missing.join(", ")),
        })
    }
}

/// Whether `iface` exists and is a loopback device.
/// Does `iface` exist in this network namespace? (`UnknownInterface` if not.)
pub fn check_interface(iface: &str) -> Result<(), CaptureError> {
    interface_is_loopback(iface).map(|_| ())
}

fn interface_is_loopback(iface: &str) -> Result<bool, CaptureError> {
    if sys::net::interface_index(iface).is_none() {
        return Err(CaptureError::UnknownInterface(iface.into()));
    }
    const IFF_LOOPBACK: u32 = 0x8;
    let flags = fs::read_to_string(format!("/sys/class/net/{iface}/flags"))
        .ok()
        .and_then(|s| u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok())
        .unwrap_or(0);
    Ok(flags & IFF_LOOPBACK != 0)
}

impl AsRawFd for SegmentSource {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.ring.as_raw_fd()
    }
}

/// [`ServiceKey`] ordered by its bytes, for the map of installed trie entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ServiceKeyOrd(ServiceKey);

impl ServiceKeyOrd {
    fn bytes(&self) -> ([u8; 2], u8, [u8; 16]) {
        (self.0.port_be, self.0.family, self.0.addr)
    }
}

impl PartialOrd for ServiceKeyOrd {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ServiceKeyOrd {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.bytes().cmp(&other.bytes())
    }
}

/// The trie entries for `rules`: (prefix length, key) → rule id. An "any address" match is one
/// entry per family. The same service in two rules is refused: which rule owns it would be a
/// guess.
fn service_entries(rules: &[KernelRule]) -> Result<BTreeMap<(u32, ServiceKeyOrd), u32>, CaptureError> {
    if rules.len() > MAX_RULES as usize {
        return Err(CaptureError::Rules(format!("{} rules; the kernel holds at most {MAX_RULES}", rules.len())));
    }
    let mut out = BTreeMap::new();
    for (id, r) in rules.iter().enumerate() {
        for s in &r.services {
            let keys: Vec<(u32, ServiceKey)> = match s.net {
                None => [family::IPV4, family::IPV6]
                    .into_iter()
                    .map(|f| {
                        (
                            SERVICE_KEY_FIXED_BITS,
                            ServiceKey { port_be: s.port.to_be_bytes(), family: f, _pad: 0, addr: [0; 16] },
                        )
                    })
                    .collect(),
                Some(n) => {
                    let (f, addr) = match n.addr() {
                        std::net::IpAddr::V4(a) => {
                            let mut b = [0u8; 16];
                            b[..4].copy_from_slice(&a.octets());
                            (family::IPV4, b)
                        }
                        std::net::IpAddr::V6(a) => (family::IPV6, a.octets()),
                    };
                    vec![(
                        SERVICE_KEY_FIXED_BITS + u32::from(n.prefix()),
                        ServiceKey { port_be: s.port.to_be_bytes(), family: f, _pad: 0, addr },
                    )]
                }
            };
            for (bits, k) in keys {
                if let Some(other) = out.insert((bits, ServiceKeyOrd(k)), id as u32) {
                    return Err(CaptureError::Rules(format!(
                        "service {s} is in rule {other} and rule {id}: a service belongs to one rule"
                    )));
                }
            }
        }
    }
    if out.len() > MAX_SERVICES as usize {
        return Err(CaptureError::Rules(format!("{} services; the kernel holds at most {MAX_SERVICES}", out.len())));
    }
    Ok(out)
}

/// One attachment of a program to an interface.
enum Attached {
    Tc { program: &'static str, what: &'static str, id: SchedClassifierLinkId },
    Xdp { id: XdpLinkId },
}

/// The config map of another process's shadow program, if it can be read.
fn other_config(info: &aya::programs::ProgramInfo) -> Option<Config> {
    for id in info.map_ids().ok()??.into_iter() {
        let Ok(data) = MapData::from_id(id) else { continue };
        if data.info().ok().and_then(|i| i.name_as_str().map(|n| n == names::MAP_CONFIG)) != Some(true) {
            continue;
        }
        let map: Array<MapData, Config> = Array::try_from(aya::maps::Map::Array(data)).ok()?;
        return map.get(&0, 0).ok();
    }
    None
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::PollInterval;

    #[test]
    fn poll_interval_doubles_on_empty_looks_up_to_the_idle_cap_and_resets_on_records() {
        let mut p = PollInterval::default();
        assert_eq!(p.get(), Duration::from_millis(shadow_common::RING_POLL_INTERVAL_MS));
        let mut seen = Vec::new();
        for _ in 0..6 {
            p.looked(0);
            seen.push(p.get().as_millis());
        }
        assert_eq!(seen, [16, 32, 32, 32, 32, 32]);
        assert_eq!(shadow_common::RING_IDLE_POLL_MS, 32);
        p.looked(1);
        assert_eq!(p.get(), Duration::from_millis(8));
        // Records keep it at the base, however many.
        p.looked(500);
        assert_eq!(p.get(), Duration::from_millis(8));
        p.looked(0);
        assert_eq!(p.get(), Duration::from_millis(16));
    }
}
