//! Hooks for the kernel tests and the benchmarks (the `test-util` feature): run a program on a
//! crafted frame, read the kernel's per-program accounting, walk the flow map, attach the
//! do-nothing baseline, take the raw ring.

use std::{
    io::{self, ErrorKind},
    os::fd::OwnedFd,
    path::Path,
    time::Duration,
};

use aya::{
    maps::{MapData, RingBuf},
    programs::{SchedClassifier, TcAttachType, Xdp},
};
use shadow_common::{FlowKey, FlowState, names};

use super::{
    Capture, CaptureError,
    attach::{AttachPoint, classify_attach_error},
    load_program, program,
};

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
pub fn enable_kernel_stats() -> Result<OwnedFd, CaptureError> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map_err(|e| CaptureError::Io { op: "enable BPF run-time stats".into(), source: e.io_error })
}

impl Capture {
    /// Benchmarks only: attach the do-nothing program to tc ingress and egress of `iface` too, so
    /// its run-time stats give the per-packet floor every program pays.
    pub fn attach_baseline(&mut self, iface: &str, verifier_log: &Path) -> Result<(), CaptureError> {
        let prog: &mut SchedClassifier = program(&mut self.ebpf, names::PROG_TC_NOOP)?;
        load_program(names::PROG_TC_NOOP, verifier_log, || prog.load())?;
        for kind in [TcAttachType::Ingress, TcAttachType::Egress] {
            let prog: &mut SchedClassifier = program(&mut self.ebpf, names::PROG_TC_NOOP)?;
            prog.attach(iface, kind).map_err(|e| classify_attach_error(AttachPoint::Baseline, iface, e))?;
        }
        Ok(())
    }

    /// The raw ring buffer (once), for synchronous readers such as the kernel tests.
    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>, CaptureError> {
        self.take_events()
    }

    /// The reader's parked mark in the kernel (see [`shadow_common::WAKE_PARKED`]): set it as a
    /// parked reader does, or read whether a record has cleared it.
    pub fn set_reader_parked(&mut self, parked: bool) -> Result<(), CaptureError> {
        let mut wake = self.wake_map()?;
        wake.set(0, if parked { shadow_common::WAKE_PARKED } else { 0 }, 0)
            .map_err(|e| CaptureError::Map { op: format!("write {}", names::MAP_WAKE), source: Box::new(e) })
    }

    pub fn reader_parked(&mut self) -> Result<bool, CaptureError> {
        let wake = self.wake_map()?;
        let v = wake
            .get(&0, 0)
            .map_err(|e| CaptureError::Map { op: format!("read {}", names::MAP_WAKE), source: Box::new(e) })?;
        Ok(v != 0)
    }

    fn wake_map(&mut self) -> Result<aya::maps::Array<&mut MapData, u32>, CaptureError> {
        let map = self.ebpf.map_mut(names::MAP_WAKE).ok_or_else(|| CaptureError::Io {
            op: format!("find map {}", names::MAP_WAKE),
            source: io::Error::new(ErrorKind::NotFound, "missing"),
        })?;
        aya::maps::Array::try_from(map)
            .map_err(|e| CaptureError::Map { op: format!("open map {}", names::MAP_WAKE), source: Box::new(e) })
    }

    /// Run one of the capture programs on a crafted frame with BPF_PROG_TEST_RUN; returns the
    /// program's verdict. For the kernel tests and the per-packet cost benchmark. A program the
    /// hook did not need (XDP under TC, say) is loaded first, sharing the maps.
    pub fn test_run(&mut self, name: &'static str, frame: &[u8], repeat: u32) -> Result<(u32, Duration), CaptureError> {
        use aya::programs::{TestRun, TestRunOptions};
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.repeat = repeat.max(1);
        let log = std::env::temp_dir().join("shadow-test-run-verifier.log");
        let r = if name == names::PROG_XDP {
            let prog: &mut Xdp = program(&mut self.ebpf, name)?;
            if prog.fd().is_err() {
                load_program(name, &log, || prog.load())?;
            }
            prog.test_run(opts)
        } else {
            let prog: &mut SchedClassifier = program(&mut self.ebpf, name)?;
            if prog.fd().is_err() {
                load_program(name, &log, || prog.load())?;
            }
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
        for name in [names::PROG_TC, names::PROG_XDP, names::PROG_TC_NOOP] {
            if let Some(p) = self.ebpf.program(name)
                && let Ok(info) = p.info()
            {
                out.push(ProgramStats { name, id: info.id(), run_time: info.run_time(), run_count: info.run_count() });
            }
        }
        out
    }
}
