//! The daemon's main loop, in the manner of mini-redis's server: [`run`] takes a resolved
//! [`DaemonConfig`] and a shutdown future, starts a [`Daemon`] and hands it one event at a time: a
//! ring-buffer batch, a tick, a control command, a reload, an interface that came or went. Every
//! batch goes through decode → reassembly/http → replay on this one task (no locks on the
//! per-segment path, no queue between these stages: a batch is processed before the next is read),
//! each record read in place in the ring buffer and released as soon as reassembly has copied what
//! it keeps. The replay engine (a bounded queue per rule) and the metrics server run beside it. It
//! stops when `shutdown` completes or --duration passes, drains what the kernel already emitted,
//! and returns the [`Summary`].

mod daemon;
mod interfaces;
mod publish;
mod ramp;
mod reload;
mod summary;

use std::{future::Future, io, time::Duration};

use tokio::{
    signal::unix::{Signal, SignalKind},
    sync::mpsc,
    task::JoinHandle,
    time::Instant,
};

use self::daemon::Daemon;
pub use self::summary::{DirectionCounts, ExtractionSummary, Summary};
use crate::{
    capture::{CaptureError, SegmentSource, links::LinkWatcher},
    config::DaemonConfig,
    control::server::{Call, ControlError},
    metrics::MetricsError,
    replay::ReplayError,
};

/// How often kernel counters and extraction stats are published, idle flows expired and ramps
/// judged, while records come.
const TICK: Duration = Duration::from_millis(100);
/// The tick while the ring-buffer reader is parked (no record for a while): a quiet node wakes
/// once a second, and the first record brings back [`TICK`].
const QUIET_TICK: Duration = Duration::from_secs(1);
/// How often the egress fence follows its cgroups and reads what was tried, and idle shadow
/// connections are closed.
const SLOW_DUTIES: Duration = Duration::from_secs(1);
/// How long in-flight replays may finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// How long the replays queued under the old rules may finish after a reload.
const RELOAD_GRACE: Duration = Duration::from_secs(30);
/// Ring-buffer records read per batch.
const BATCH: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Replay(#[from] ReplayError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("comparison settings: {0}")]
    Compare(#[from] crate::compare::CompareError),
    #[error(transparent)]
    Egress(#[from] crate::egress::EgressError),
    #[error("{op}: {source}")]
    Io { op: String, source: std::io::Error },
}

impl RunError {
    pub const fn exit_code(&self) -> u8 {
        match self {
            Self::Capture(e) => e.exit_code(),
            Self::Control(e) => e.exit_code(),
            Self::Metrics(_) | Self::Replay(_) | Self::Io { .. } => 1,
            Self::Compare(_) => 2,
            Self::Egress(e) => e.exit_code(),
        }
    }
}

/// A log filter (`--log-level`, `SHADOW_LOG_LEVEL` or `SHADOW_LOG`) that does not parse; the
/// caller names the setting it came from.
#[derive(Debug, thiserror::Error)]
#[error("'{level}' is not a log filter: {reason}")]
pub struct InvalidLogFilter {
    pub level: String,
    pub reason: String,
}

/// Logs go to stderr, as text or as JSON lines, filtered by `level` (`--log-level` /
/// `SHADOW_LOG`). Nothing logged carries a header value or a body: errors name requests by id.
/// Text is coloured only on a terminal (and not with `NO_COLOR` set): journald, `kubectl logs`
/// and log shippers get plain lines.
pub fn init_logging(json: bool, level: &str) -> Result<(), InvalidLogFilter> {
    use std::io::IsTerminal;

    use tracing_subscriber::{EnvFilter, fmt};
    let filter =
        EnvFilter::try_new(level).map_err(|e| InvalidLogFilter { level: level.to_owned(), reason: e.to_string() })?;
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let b = fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).with_ansi(colour);
    let _ = if json { b.json().flatten_event(true).try_init() } else { b.try_init() };
    // aya-log emits through the `log` facade.
    let _ = tracing_log::LogTracer::init();
    Ok(())
}

/// Completes at the first SIGINT or SIGTERM: the daemon's shutdown. Call it inside the runtime.
pub fn shutdown_signal() -> io::Result<impl Future<Output = ()> + Send + 'static> {
    let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {}
        }
    })
}

/// CLOCK_MONOTONIC in ns: the clock of the kernel's `bpf_ktime_get_ns()` timestamps.
pub fn monotonic_ns() -> u64 {
    crate::sys::time::monotonic_ns()
}

fn set_tick(tick: &mut crate::sys::timer::Ticker, period: Duration) -> Result<(), RunError> {
    tick.set_period(period).map_err(|e| RunError::Io { op: "set the tick timer".into(), source: e })
}

/// What the loop waits on; the [`Daemon`] handles what comes.
struct Inputs {
    /// `/verdict` requests from the metrics server, each with the sender of its JSON.
    verdicts: mpsc::Receiver<tokio::sync::oneshot::Sender<String>>,
    /// The kernel's ring buffer, read a batch at a time, each record in place.
    source: SegmentSource,
    /// Commands from the control socket, each with its reply channel.
    calls: mpsc::Receiver<Call>,
    control_task: JoinHandle<()>,
    sighup: Signal,
    /// Netlink link events, when an interface pattern is a glob (pods come and go on a node).
    links: Option<LinkWatcher>,
    /// The loop's beat ([`TICK`], [`QUIET_TICK`] while the ring is quiet), kept by the kernel
    /// (one wakeup a period).
    tick: crate::sys::timer::Ticker,
}

/// Run the daemon until `shutdown` completes (or `cfg.duration` passes); the summary is also
/// logged and, with `cfg.summary_file`, written as JSON.
pub async fn run(cfg: DaemonConfig, shutdown: impl Future<Output = ()>) -> Result<Summary, RunError> {
    let deadline = cfg.duration.map(|d| Instant::now() + d);
    let (mut daemon, mut inputs) = Daemon::start(cfg).await?;
    let stop = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(shutdown, stop);
    loop {
        let Inputs { source, calls, sighup, links, tick, verdicts, .. } = &mut inputs;
        let mut now_ns = None;
        let link_events = async {
            match links.as_mut() {
                Some(w) => w.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // The clock is read once per batch, when its first record is handed over.
            r = source.next_batch(BATCH, |r| daemon.on_record(r, *now_ns.get_or_insert_with(monotonic_ns))) => {
                r.map_err(|e| RunError::Io { op: "read the ring buffer".into(), source: e })?;
                // Records again after a quiet spell: the busy beat, from now.
                set_tick(tick, TICK)?;
            }
            r = tick.tick() => {
                let periods = r.map_err(|e| RunError::Io { op: "read the tick timer".into(), source: e })?;
                if source.parked() {
                    let now_ns = monotonic_ns();
                    source.look(BATCH, |r| daemon.on_record(r, now_ns));
                }
                daemon.on_tick(tick.period().saturating_mul(u32::try_from(periods).unwrap_or(u32::MAX)));
                set_tick(tick, if source.parked() { QUIET_TICK } else { TICK })?;
            }
            Some(call) = calls.recv() => {
                let response = daemon.on_command(&call.command);
                let _ = call.reply.send(response);
            }
            Some(reply) = verdicts.recv() => {
                let _ = reply.send(serde_json::to_string(&daemon.report()).unwrap_or_default());
            }
            _ = sighup.recv() => {
                if let Err(e) = daemon.reload() {
                    tracing::error!("reload (SIGHUP) refused, the running config stays: {}", e.message);
                }
            }
            ev = link_events => match ev {
                Ok(evs) => daemon.on_links(&evs),
                Err(e) => {
                    tracing::error!("netlink link watch failed ({e}); interfaces are no longer followed");
                    *links = None;
                }
            },
            () = &mut shutdown => break,
            () = &mut stop => break,
        }
        daemon.after_event();
    }
    daemon.finish(inputs).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_log_filter_names_the_filter_and_why() {
        let e = init_logging(false, "info,[").expect_err("not a filter");
        assert_eq!(e.level, "info,[");
        assert!(e.to_string().starts_with("'info,[' is not a log filter: "), "{e}");
        assert!(!e.reason.is_empty());
    }
}
