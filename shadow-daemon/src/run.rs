//! The daemon's main loop: capture → decode → (reassembly → http → replay) with counters, until a
//! signal or --duration.

use std::{collections::BTreeMap, time::Duration};

use serde::Serialize;
use shadow_common::counter;
use tokio::{signal::unix::SignalKind, time::Instant};

use crate::{
    capture::{Capture, CaptureError, CaptureOptions},
    config::{Args, UsageError},
    segment::{Direction, Segment},
};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Usage(#[from] UsageError),
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error("{op}: {source}")]
    Io { op: String, source: std::io::Error },
}

impl RunError {
    pub const fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            Self::Capture(e) => e.exit_code(),
            Self::Io { .. } => 1,
        }
    }
}

pub fn init_logging() {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_env("SHADOW_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
    // aya-log emits through the `log` facade.
    let _ = tracing_log::LogTracer::init();
}

/// Per-direction counts of what reached user space.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DirectionCounts {
    pub segments: u64,
    pub payload_bytes: u64,
    pub truncated: u64,
    pub fin: u64,
    pub rst: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub interface: String,
    pub attached: Vec<String>,
    pub sample_percent: f64,
    pub request: DirectionCounts,
    pub response: DirectionCounts,
    pub flows: u64,
    pub bad_records: BTreeMap<&'static str, u64>,
    pub kernel: BTreeMap<&'static str, u64>,
}

impl Summary {
    fn count(&mut self, s: &Segment) {
        let d = match s.direction {
            Direction::Request => &mut self.request,
            Direction::Response => &mut self.response,
        };
        d.segments += 1;
        d.payload_bytes += s.payload.len() as u64;
        d.truncated += u64::from(s.truncated);
        d.fin += u64::from(s.fin());
        d.rst += u64::from(s.rst());
    }
}

pub async fn run(args: Args) -> Result<(), RunError> {
    let interface = args.interface.clone().unwrap_or_default();
    let opts = CaptureOptions {
        interface: interface.clone(),
        ports: args.port.clone(),
        hook: args.hook,
        sample_ppm: args.sample_rate,
        ring_buffer_size: args.ring_buffer_size,
        verifier_log: args.verifier_log.clone(),
    };
    let (capture, mut source, kernel_log) = Capture::start(&opts)?;
    tracing::info!(
        "capturing ports {:?} ({}), sampling {}% of requests",
        args.port,
        capture.attached().join(", "),
        crate::config::ppm_to_percent(capture.sample_ppm())
    );
    if let Some(l) = kernel_log {
        tokio::spawn(l.run());
    }

    let mut summary = Summary {
        interface,
        attached: capture.attached().to_vec(),
        sample_percent: crate::config::ppm_to_percent(capture.sample_ppm()),
        ..Default::default()
    };
    let mut flows = std::collections::HashSet::new();
    let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())
        .map_err(|e| RunError::Io { op: "install the SIGTERM handler".into(), source: e })?;
    let deadline = args.duration.map(|d| Instant::now() + Duration::from_secs_f64(d));
    let mut batch = Vec::with_capacity(256);
    let mut bad = Vec::new();

    loop {
        let stop = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = source.next_batch(&mut batch, &mut bad, 256) => {
                r.map_err(|e| RunError::Io { op: "read the ring buffer".into(), source: e })?;
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
            _ = stop => break,
        }
        for s in batch.drain(..) {
            if flows.len() < 1_000_000 {
                flows.insert(s.flow);
            }
            summary.count(&s);
        }
        for e in bad.drain(..) {
            *summary.bad_records.entry(e.reason()).or_default() += 1;
        }
    }
    // Whatever the kernel emitted before we stopped still gets counted.
    source.drain_now(&mut batch, &mut bad);
    for s in batch.drain(..) {
        flows.insert(s.flow);
        summary.count(&s);
    }
    for e in bad.drain(..) {
        *summary.bad_records.entry(e.reason()).or_default() += 1;
    }
    summary.flows = flows.len() as u64;
    let kernel = capture.counters()?;
    summary.kernel = counter::NAMES.iter().copied().zip(kernel).collect();
    drop(capture); // detach before reporting
    let json = serde_json::to_string_pretty(&summary).unwrap_or_default();
    if let Some(path) = &args.summary_file {
        std::fs::write(path, &json)
            .map_err(|e| RunError::Io { op: format!("write summary to {}", path.display()), source: e })?;
    }
    tracing::info!("stopped; summary:\n{json}");
    Ok(())
}
