//! shadow-daemon: mirror live HTTP traffic to a shadow service, passively, from the kernel.
//!
//! Modules, in data-flow order; none imports one that imports it back:
//! - `capture`: load and attach the eBPF programs, the ring-buffer reader (aya's user, with
//!   `egress`), the hook kind;
//! - `segment`: ring-buffer records decoded into TCP segments;
//! - `reassembly`: per-flow byte streams, gaps, the memory cap (pure, no I/O);
//! - `http`: HTTP/1.x framing (the one used by extraction and by the replay client alike),
//!   message assembly, request/response pairing, path normalisation and patterns (pure);
//! - `message`: the extracted requests and responses handed from `http` to `replay`;
//! - `replay`: lanes (one per rule with a shadow) with a bounded queue each, safety controls,
//!   pooled keep-alive connections to the shadow;
//! - `metrics`: the request ledger, latency, Prometheus registry and HTTP endpoint (a sink: it
//!   knows no stage, only `http`'s path normal form for endpoint names);
//! - `compare`: primary against shadow per endpoint, noise, gates, verdict, report (pure);
//! - `correlate`: the requests waiting for the primary's answer; primary latency per endpoint,
//!   and the halves of each comparison handed to `hub` (replay speaks only to it);
//! - `hub`: where the primary's and the shadow's responses meet and are compared, per daemon;
//! - `rule`, `service`: a rule's key (`RuleId`, the same in every stage), and what a rule
//!   matches (a port, on any address or an address prefix);
//! - `control`, `operate`: the control socket's protocol and server, and the rule rates and
//!   pauses it applies to the capture;
//! - `reply`: the typed answers to control commands, built by `run` and read by `ctl`;
//! - `ctl`: `shadowctl`, the client;
//! - `egress`: the fence on the shadow's cgroups: its allowlist, its kernel object pinned to
//!   outlive the daemon, and what the shadow tried to reach;
//! - `config`: flags, environment and TOML into a `DaemonConfig` (knows every stage's settings);
//! - `run`: `run(config, shutdown)`, the loop, and the `Daemon` that joins the stages, with one
//!   method per event (a batch, a tick, a control command, a reload).
//! - `label`: metric label values as enums, each label defined once (a leaf);
//! - `sys`: every libc call, behind safe functions (a leaf: it knows no other module).
//!
//! Capture, reassembly and extraction run on one task, a ring-buffer batch at a time: nothing
//! queues between them, so their memory is the reassembly cap. Replay is the only stage behind a
//! queue, bounded per lane in requests and bytes; what does not fit is dropped and counted, so a
//! slow shadow never slows capture.

/// `--version` of both binaries: the crate version and the source revision it was built from
/// (the git commit, or the build's `SHADOW_REVISION`, as `shadow_build_info` says).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("SHADOW_REVISION"), ")");

pub mod capture;
pub mod compare;
pub mod config;
pub mod control;
pub mod correlate;
pub mod ctl;
pub mod egress;
pub mod http;
pub mod hub;
pub mod label;
pub mod message;
pub mod metrics;
pub mod operate;
pub mod ramp;
pub mod reassembly;
pub mod replay;
pub mod reply;
pub mod rule;
pub mod run;
pub mod segment;
pub mod service;
mod sys;
/// The replay's socket timestamp calls, for the bench's floor client: a bare replay timed as the
/// daemon times the shadow.
#[cfg(feature = "test-util")]
pub mod timestamp {
    pub use crate::sys::timestamp::{enable_receive_timestamps, enable_transmit_timestamps, recv_timed, transmit_time};
}
pub mod trace_link;
