//! Run the real capture (load, attach, drain the ring buffer) on a thread inside a namespace, and
//! collect every segment it decodes: for tier B tests that compare captured bytes with sent bytes.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

use shadow_common::counter;
use shadow_daemon::{
    capture::{Capture, CaptureOptions, KernelRule, ProgramStats, Record},
    config::HookKind,
    segment::{Direction, FlowId, Segment},
};

use crate::topo::NetNs;

pub struct Captured {
    pub segments: Vec<Segment>,
    pub bad_records: usize,
    pub kernel: BTreeMap<&'static str, u64>,
}

pub struct CaptureThread {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Captured>>,
    ctl: mpsc::Sender<Ctl>,
}

enum Ctl {
    /// Apply a sampling rate; the reply comes once the config map holds it.
    SetPpm(u32, mpsc::Sender<()>),
    Stats(mpsc::Sender<(Vec<ProgramStats>, BTreeMap<&'static str, u64>, usize)>),
}

impl CaptureThread {
    /// Load and attach in `ns` on `iface`; returns once attached.
    pub fn start(ns: &NetNs, iface: &str, ports: &[u16], hook: HookKind, sample_ppm: u32) -> Self {
        Self::start_with(ns, iface, ports, hook, sample_ppm, false, false)
    }

    /// `discard`: drop decoded segments as they come (long benchmark runs), keeping only counts.
    /// `baseline`: also attach the do-nothing program (benchmarks).
    pub fn start_with(
        ns: &NetNs,
        iface: &str,
        ports: &[u16],
        hook: HookKind,
        sample_ppm: u32,
        discard: bool,
        baseline: bool,
    ) -> Self {
        Self::start_rules(ns, iface, vec![KernelRule::any_address(ports, sample_ppm)], hook, discard, baseline)
    }

    /// Like [`start_with`](Self::start_with), with the kernel rules given (matches by address).
    pub fn start_rules(
        ns: &NetNs,
        iface: &str,
        rules: Vec<KernelRule>,
        hook: HookKind,
        discard: bool,
        baseline: bool,
    ) -> Self {
        let opts = CaptureOptions {
            interface: iface.into(),
            hook,
            rules,
            ring_buffer_size: 64 * 1024 * 1024,
            verifier_log: std::env::temp_dir().join(format!("shadow-test-verifier-{}.log", std::process::id())),
            allow_shared: false,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let (ctl_tx, ctl_rx) = mpsc::channel::<Ctl>();
        let ns_name = ns.name.clone();
        let stop2 = stop.clone();
        let handle = std::thread::spawn(move || {
            NetNs { name: ns_name }.enter_and_forget();
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let (mut cap, mut src, _log) = match Capture::start(&opts) {
                    Ok(x) => x,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return Captured { segments: vec![], bad_records: 0, kernel: BTreeMap::new() };
                    }
                };
                if baseline && let Err(e) = cap.attach_baseline(&opts.interface, &opts.verifier_log) {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return Captured { segments: vec![], bad_records: 0, kernel: BTreeMap::new() };
                }
                let _ = ready_tx.send(Ok(()));
                let mut segments = Vec::new();
                let mut bad = Vec::new();
                while !stop2.load(Ordering::Relaxed) {
                    match ctl_rx.try_recv() {
                        Ok(Ctl::SetPpm(ppm, done)) => {
                            cap.set_sample_ppm(ppm).expect("set sample rate");
                            let _ = done.send(());
                        }
                        Ok(Ctl::Stats(reply)) => {
                            let k = counter::NAMES.iter().copied().zip(cap.counters().expect("counters")).collect();
                            let _ = reply.send((cap.program_stats(), k, segments.len()));
                        }
                        Err(_) => {}
                    }
                    if discard && segments.len() > 100_000 {
                        segments.clear();
                    }
                    let keep = |r: Record<'_>| match r {
                        Ok(s) => segments.push(s.owned()),
                        Err(e) => bad.push(e),
                    };
                    let _ = tokio::time::timeout(Duration::from_millis(20), src.next_batch(1024, keep)).await;
                }
                src.drain_now(|r| match r {
                    Ok(s) => segments.push(s.owned()),
                    Err(e) => bad.push(e),
                });
                let kernel = counter::NAMES.iter().copied().zip(cap.counters().expect("counters")).collect();
                Captured { segments, bad_records: bad.len(), kernel }
            })
        });
        match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("capture failed to start: {e}"),
            Err(_) => panic!("capture did not start within 30 s"),
        }
        Self { stop, handle: Some(handle), ctl: ctl_tx }
    }

    /// Change the kernel sampling rate live; returns once the kernel's config map holds it.
    pub fn set_sample_ppm(&self, ppm: u32) {
        let (tx, rx) = mpsc::channel();
        self.ctl.send(Ctl::SetPpm(ppm, tx)).expect("capture thread alive");
        rx.recv_timeout(Duration::from_secs(10)).expect("sampling rate applied");
    }

    /// Program run-time stats, kernel counters and segments decoded so far (not discarded).
    pub fn stats(&self) -> (Vec<ProgramStats>, BTreeMap<&'static str, u64>, usize) {
        let (tx, rx) = mpsc::channel();
        self.ctl.send(Ctl::Stats(tx)).expect("capture thread alive");
        rx.recv_timeout(Duration::from_secs(5)).expect("stats reply")
    }

    /// Stop, drain what the ring buffer holds, detach, and return everything captured. Nothing
    /// to wait for: the program copies a segment before the packet goes on, so every segment
    /// whose effect a client has seen (a request answered, a response read) is in the ring.
    pub fn finish(mut self) -> Captured {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().expect("joined once").join().expect("capture thread panicked")
    }
}

impl Drop for CaptureThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Rebuild one direction of one flow from its segments by sequence number, as a test oracle:
/// duplicates are fine, any hole panics. Starts at the lowest sequence number seen (wrap-aware).
pub fn reassemble(segments: &[Segment], flow: &FlowId, dir: Direction) -> Vec<u8> {
    let mut segs: Vec<&Segment> =
        segments.iter().filter(|s| &s.flow == flow && s.direction == dir && !s.payload.is_empty()).collect();
    assert!(segs.iter().all(|s| !s.truncated), "a segment of {flow:?} {dir:?} was truncated");
    let Some(first) = segs.first() else { return Vec::new() };
    let base = segs.iter().map(|s| s.seq.wrapping_sub(first.seq) as i32).min().unwrap_or(0);
    let base = first.seq.wrapping_add(base as u32);
    segs.sort_by_key(|s| s.seq.wrapping_sub(base));
    let mut out = Vec::new();
    for s in segs {
        let off = s.seq.wrapping_sub(base) as usize;
        assert!(off <= out.len(), "hole in {flow:?} {dir:?} at offset {} (next segment at {off})", out.len());
        let skip = out.len() - off;
        if skip < s.payload.len() {
            out.extend_from_slice(&s.payload[skip..]);
        }
    }
    out
}

/// Distinct flows in capture order.
pub fn flows(segments: &[Segment]) -> Vec<FlowId> {
    let mut v: Vec<FlowId> = Vec::new();
    for s in segments {
        if !v.contains(&s.flow) {
            v.push(s.flow);
        }
    }
    v
}
