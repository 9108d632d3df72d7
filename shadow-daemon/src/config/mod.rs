//! Command line (every flag also from a `SHADOW_*` environment variable), the TOML config file
//! for several rules, and their validation into one resolved [`DaemonConfig`].
//!
//! Two ways to say what is mirrored where, never mixed:
//! - flags only: one rule, `--port` to `--shadow`, with the control flags;
//! - `--config FILE`: the rules (and optionally the interface) come from the file, see
//!   [`EXAMPLE_CONFIG`]; rule and control flags are then refused rather than silently merged.
//!
//! Daemon-level settings (hook, sample rate, metrics address, control socket, ring buffer, ...)
//! always come from flags or `SHADOW_*` variables. Rule settings (what a rule matches, where it
//! sends, its controls) are defined once in [`settings`], as flags and as TOML keys alike;
//! [`file`] reads the TOML; [`units`] has the value parsers both use.

use std::{
    net::SocketAddr,
    ops::Deref,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{
    Parser,
    builder::{PossibleValuesParser, TypedValueParser},
};
use shadow_common::PPM_ALL;

use self::file::{FileConfig, parse_config};
pub use self::{
    settings::{ControlArgs, EgressArgs, FileRule, FileRuleArgs, RampArgs, RuleArgs, Setting},
    units::{MAX_TIMEOUT, parse_byte_size, parse_bytes, parse_count, parse_duration, parse_rate, parse_seconds},
};
// The hook is the capture layer's; the CLI only names it.
pub use crate::capture::HookKind;
#[cfg(test)]
use crate::replay::controls::{HeaderField, HostMode, ShadowTarget};
use crate::{
    capture::links::InterfacePattern, metrics::DEFAULT_MAX_ENDPOINTS, replay::controls::ReplayControls, rule::RuleId,
};

mod file;
mod settings;
mod units;
pub mod usage;

/// `--metrics-addr`: a socket address, or an IPv6 address and a port joined by a bare colon (what
/// a Kubernetes `$(NODE_IP):9477` gives on an IPv6 node; the last group is the port).
fn parse_metrics_addr(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    s.rsplit_once(':')
        .and_then(|(ip, port)| Some(SocketAddr::new(ip.parse::<std::net::Ipv6Addr>().ok()?.into(), port.parse().ok()?)))
        .ok_or_else(|| format!("'{s}' is not IP:PORT or [IPv6]:PORT"))
}

fn parse_hook(s: &str) -> HookKind {
    match s {
        "xdp" => HookKind::Xdp,
        _ => HookKind::Tc,
    }
}

#[derive(Debug, Parser, Clone, PartialEq)]
#[command(
    name = "shadow-daemon",
    version = crate::VERSION,
    about = "Mirror live HTTP traffic of a service to a shadow version of it, passively, from the kernel (eBPF)."
)]
pub struct Args {
    /// Network interface(s) to capture on, comma separated; names or globs with `*` and `?`
    /// (`eth0,veth*`, `lxc*`): interfaces that appear later and match are attached too.
    #[arg(long, short = 'i', env = "SHADOW_INTERFACE")]
    pub interface: Option<String>,

    /// What the one rule of the flags matches and where it sends (not with --config).
    #[command(flatten)]
    pub rule: RuleArgs,

    /// Percentage of requests to mirror, 0 to 100 (fractions allowed, e.g. 0.5); with --config,
    /// the rate of every rule that sets no `sample_rate` of its own. Live: `shadowctl rate`.
    #[arg(long, env = "SHADOW_SAMPLE_RATE", default_value = "100", value_parser = parse_percent)]
    pub sample_rate: u32,

    /// Kernel hook: tc (ingress+egress) or xdp (ingress only).
    #[arg(long, env = "SHADOW_HOOK", default_value = "tc", value_parser = PossibleValuesParser::new(["tc", "xdp"]).map(|s| parse_hook(&s)))]
    pub hook: HookKind,

    /// Address of the metrics endpoint (/metrics, /healthz, /readyz): IP:PORT, [IPv6]:PORT, or
    /// an IPv6 address and port without brackets (as `$(NODE_IP):9477` expands on an IPv6 node).
    #[arg(long, env = "SHADOW_METRICS_ADDR", default_value = "127.0.0.1:9477", value_parser = parse_metrics_addr)]
    pub metrics_addr: SocketAddr,

    /// Unix socket of the control API that `shadowctl` uses (created 0600; the directory is
    /// created if missing).
    #[arg(long, env = "SHADOW_CONTROL", default_value = "/run/shadow/control.sock")]
    pub control: PathBuf,

    /// Log line format: text (for people) or json (one object per line, for log pipelines).
    #[arg(long, env = "SHADOW_LOG_FORMAT", default_value = "text", value_parser = PossibleValuesParser::new(["text", "json"]))]
    pub log_format: String,

    /// Log level or filter (error, warn, info, debug, trace, or tracing's `target=level` list)
    /// [default: SHADOW_LOG, else info].
    #[arg(long, env = "SHADOW_LOG_LEVEL")]
    pub log_level: Option<String>,

    /// Attach even where another shadow daemon already captures one of these ports on the same
    /// interface (every request would then be replayed by both).
    #[arg(long, env = "SHADOW_ALLOW_SHARED_CAPTURE")]
    pub allow_shared_capture: bool,

    /// TOML file with several rules (service port, shadow target, controls).
    #[arg(long, env = "SHADOW_CONFIG")]
    pub config: Option<PathBuf>,

    /// Ring buffer size in bytes (a power of two, at least one page).
    #[arg(long, env = "SHADOW_RING_BUFFER_SIZE", default_value_t = 32 * 1024 * 1024, value_parser = parse_ring_size)]
    pub ring_buffer_size: u32,

    /// Where the kernel verifier's log is written if the programs are rejected.
    #[arg(long, env = "SHADOW_VERIFIER_LOG", default_value = "/tmp/shadow-verifier.log")]
    pub verifier_log: PathBuf,

    /// Write a JSON summary of everything counted to this file when the daemon exits.
    #[arg(long, env = "SHADOW_SUMMARY_FILE")]
    pub summary_file: Option<PathBuf>,

    /// Exit by itself after this many seconds (for demos and tests; default: run until signalled).
    #[arg(long, env = "SHADOW_DURATION", value_name = "SECONDS", value_parser = parse_seconds)]
    pub duration: Option<Duration>,

    /// The controls of the one rule of the flags (not with --config).
    #[command(flatten)]
    pub controls: ControlArgs,

    /// The egress fence of the one rule of the flags (not with --config: `[rule.egress]`).
    #[command(flatten)]
    pub egress: EgressArgs,

    /// The guarded ramp of the one rule of the flags (not with --config: `[rule.ramp]`).
    #[command(flatten)]
    pub ramp: RampArgs,

    /// Where state that must outlive the daemon is kept (the ramps' steps), created 0700.
    #[arg(long, env = "SHADOW_STATE_DIR", default_value = "/var/lib/shadow")]
    pub state_dir: PathBuf,

    /// Directory on a BPF filesystem where the egress fence pins its programs' links and maps,
    /// so that the fence outlives the daemon (created if missing).
    #[arg(long, env = "SHADOW_PIN_DIR", default_value = "/sys/fs/bpf/shadow")]
    pub pin_dir: PathBuf,

    /// Endpoints (method + path template) with their own latency series; the rest are `other`.
    #[arg(long, env = "SHADOW_MAX_ENDPOINTS", value_name = "N", default_value_t = DEFAULT_MAX_ENDPOINTS, value_parser = parse_max_endpoints)]
    pub max_endpoints: usize,

    /// Cap on the memory held by stream reassembly (buffered bytes and flow state; 64MiB, 64Mi,
    /// 1.5GiB or 100MB); past it the idlest flows are evicted and counted.
    #[arg(long, env = "SHADOW_MEMORY_CAP", value_name = "BYTES", default_value = "64MiB", value_parser = parse_memory_cap)]
    pub memory_cap: u64,

    /// Threads the daemon runs on (capture, extraction, replay and comparison). One keeps it to
    /// one core at most and costs least per request; more serve a busier node.
    #[arg(long, env = "SHADOW_THREADS", value_name = "N", default_value_t = 1, value_parser = parse_threads)]
    pub threads: usize,
}

fn parse_threads(s: &str) -> Result<usize, String> {
    parse_count(s, 1, 64)
}

fn parse_memory_cap(s: &str) -> Result<u64, String> {
    let v = parse_byte_size(s)?;
    if v < 1024 * 1024 {
        return Err(format!("{v} bytes is below the 1 MiB minimum"));
    }
    Ok(v)
}

fn parse_max_endpoints(s: &str) -> Result<usize, String> {
    parse_count(s, 1, 10_000)
}

/// Percent (0..=100, fractions allowed) to parts per million, rounded to the nearest ppm.
pub fn percent_to_ppm(percent: f64) -> Result<u32, String> {
    if !percent.is_finite() || !(0.0..=100.0).contains(&percent) {
        return Err(format!("{percent} is not a percentage between 0 and 100"));
    }
    Ok(((percent * 10_000.0).round() as u32).min(PPM_ALL))
}

/// Parts per million back to percent, for display.
pub fn ppm_to_percent(ppm: u32) -> f64 {
    f64::from(ppm) / 10_000.0
}

pub(crate) fn parse_percent(s: &str) -> Result<u32, String> {
    let t = s.trim().trim_end_matches('%');
    let v: f64 = t.parse().map_err(|_| format!("'{s}' is not a number"))?;
    percent_to_ppm(v)
}

fn parse_ring_size(s: &str) -> Result<u32, String> {
    let v: u32 = s.trim().parse().map_err(|_| format!("'{s}' is not a byte count"))?;
    if v < 4096 || !v.is_power_of_two() {
        return Err(format!("{v} is not a power of two of at least 4096"));
    }
    Ok(v)
}

impl Deref for Args {
    type Target = RuleArgs;

    /// The flags' rule settings read as the arguments' own (`args.port`).
    fn deref(&self) -> &RuleArgs {
        &self.rule
    }
}

/// A usage or configuration problem: one line naming the flag, field or file; exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl Args {
    /// Cross-flag checks clap cannot express.
    pub fn validate(&self) -> Result<(), UsageError> {
        if self.config.is_none() {
            if self.interface.as_deref().is_none_or(str::is_empty) {
                return Err(UsageError("--interface is required (or give --config FILE)".into()));
            }
            if self.port.is_empty() {
                return Err(UsageError("--port is required (or give --config FILE)".into()));
            }
        }
        Ok(())
    }
}

/// Everything the daemon needs, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct DaemonConfig {
    /// As given (names and globs, comma separated).
    pub interface: String,
    pub interfaces: Vec<InterfacePattern>,
    pub allow_shared: bool,
    /// The arguments this came from, when a config file is involved: `reload` resolves them
    /// again to read the file anew.
    pub source: Option<Box<Args>>,
    pub hook: HookKind,
    /// Default per-request sampling rate in parts per million (each rule has its own).
    pub sample_ppm: u32,
    /// At least one; no port is in two rules.
    pub rules: RuleSet,
    pub metrics_addr: SocketAddr,
    pub control: PathBuf,
    pub ring_buffer_size: u32,
    pub verifier_log: PathBuf,
    pub summary_file: Option<PathBuf>,
    pub duration: Option<Duration>,
    pub max_endpoints: usize,
    /// Reassembly memory cap in bytes.
    pub memory_cap: u64,
    /// Runtime threads (1: everything on one thread).
    pub threads: usize,
    /// Where the egress fence pins (a BPF filesystem).
    pub pin_dir: PathBuf,
    /// Where the ramps keep their state.
    pub state_dir: PathBuf,
}

impl DaemonConfig {
    /// Every service port of every rule, sorted: what the kernel filters on.
    pub fn ports(&self) -> Vec<u16> {
        let mut p: Vec<u16> = self.rules.iter().flat_map(|r| r.ports.iter().copied()).collect();
        p.sort_unstable();
        p.dedup();
        p
    }
}

/// Service ports whose requests go to one shadow target under one set of controls, and how its
/// answers are compared: one rule, as the file or the flags say it.
pub use crate::replay::Rule;

/// The daemon's rules, built once here: at least one, every name unique, no service in two
/// rules. A rule's [`RuleId`] is its position, the same in every stage that keeps something per
/// rule; read it as a slice of [`Rule`]s.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleSet(Vec<Rule>);

impl RuleSet {
    /// The rules in the order given (their ids), as the file or the flags validated them.
    fn new(rules: Vec<Rule>) -> Self {
        Self(rules)
    }

    /// Every rule with its id.
    pub fn with_ids(&self) -> impl Iterator<Item = (RuleId, &Rule)> {
        RuleId::all(self.0.len()).zip(&self.0)
    }

    pub fn get(&self, id: RuleId) -> Option<&Rule> {
        self.0.get(id.index())
    }

    /// The rule named `name`.
    pub fn id_of(&self, name: &str) -> Option<RuleId> {
        self.with_ids().find(|(_, r)| r.name == name).map(|(id, _)| id)
    }
}

impl std::ops::Deref for RuleSet {
    type Target = [Rule];

    fn deref(&self) -> &[Rule] {
        &self.0
    }
}

/// A documented config file; `--config` reads files of this shape. Keys are the flags' names
/// with `_` for `-`; a list key also takes a single string.
pub const EXAMPLE_CONFIG: &str = include_str!("../../../deploy/shadow.example.toml");

impl Args {
    /// Validate everything and produce the daemon's configuration. A problem is one line naming
    /// the flag, or the file and field; the caller exits with code 2.
    pub fn resolve(self) -> Result<DaemonConfig, UsageError> {
        self.validate()?;
        let (interface, rules) = match &self.config {
            Some(path) => {
                let egress = self.egress.given().into_iter().map(EgressArgs::flag);
                let egress = egress.chain(self.ramp.given().into_iter().map(RampArgs::flag));
                if let Some(flag) =
                    self.rule.given().into_iter().chain(self.controls.given()).map(flag_of).chain(egress).next()
                {
                    return Err(UsageError(format!(
                        "{flag} cannot be combined with --config: set it in the file ([defaults] or a [[rule]])"
                    )));
                }
                let file = load_config_file(path)?;
                let interface = match (self.interface.clone().filter(|i| !i.is_empty()), file.interface) {
                    (Some(i), _) => i,
                    (None, Some(i)) => {
                        InterfacePattern::parse_list(&i)
                            .map_err(|e| UsageError(format!("config {}: interface: {e}", path.display())))?;
                        i
                    }
                    (None, None) => {
                        return Err(UsageError(format!(
                            "--interface is required (give it, or set `interface` in config {})",
                            path.display()
                        )));
                    }
                };
                let rules = file
                    .rules
                    .into_iter()
                    .zip(file.rates)
                    .map(|(mut r, ppm)| {
                        r.sample_ppm = ppm.unwrap_or(self.sample_rate);
                        r
                    })
                    .collect();
                (interface, rules)
            }
            None => {
                let interface = self.interface.clone().unwrap_or_default();
                let mut rule = self.flag_rule()?;
                rule.sample_ppm = self.sample_rate;
                (interface, vec![rule])
            }
        };
        let interfaces = InterfacePattern::parse_list(&interface)
            .map_err(|e| UsageError(format!("{}: {e}", flag_of("interface"))))?;
        let source = self.config.is_some().then(|| Box::new(self.clone()));
        Ok(DaemonConfig {
            interface,
            interfaces,
            allow_shared: self.allow_shared_capture,
            source,
            hook: self.hook,
            sample_ppm: self.sample_rate,
            rules: RuleSet::new(rules),
            metrics_addr: self.metrics_addr,
            control: self.control,
            ring_buffer_size: self.ring_buffer_size,
            verifier_log: self.verifier_log,
            summary_file: self.summary_file,
            duration: self.duration,
            max_endpoints: self.max_endpoints,
            threads: self.threads,
            memory_cap: self.memory_cap,
            pin_dir: self.pin_dir,
            state_dir: self.state_dir,
        })
    }

    /// The one rule the flags describe.
    fn flag_rule(&self) -> Result<Rule, UsageError> {
        let name = |k: &str| flag_of(k);
        let mut controls = ReplayControls::default();
        self.controls.clone().apply(&mut controls, &name)?;
        let mut rule = self.rule.clone().into_rule(controls, &name)?;
        rule.egress = self.egress.clone().into_fence(&|k| usage::setting_name(&EgressArgs::flag(k)))?;
        rule.ramp = self.ramp.clone().into_ramp(&|k| usage::setting_name(&RampArgs::flag(k)))?;
        if rule.ramp.is_some() && rule.compare.is_none() {
            return Err(UsageError(format!(
                "{}: a ramp judges compared pairs: give the rule a shadow (--shadow)",
                usage::setting_name("--ramp")
            )));
        }
        Ok(rule)
    }
}

/// `--replay-rate` for the key `replay_rate` (`SHADOW_REPLAY_RATE` when the value came from it).
fn flag_of(key: &str) -> String {
    usage::setting_name(&format!("--{}", key.replace('_', "-")))
}

/// What a config file says, as [`read_config_text`] gives it: the interface it names, if any,
/// and its rules with their own rates (`None`: `--sample-rate`).
#[cfg(any(test, feature = "test-util"))]
#[derive(Debug, PartialEq)]
pub struct ConfigText {
    pub interface: Option<String>,
    pub rules: Vec<(Rule, Option<u32>)>,
}

/// A config file's text read as `--config` reads the file (`name`: how errors refer to it).
/// For the fuzzer and tests.
#[cfg(any(test, feature = "test-util"))]
pub fn read_config_text(name: &str, text: &str) -> Result<ConfigText, UsageError> {
    let f = parse_config(name, text)?;
    Ok(ConfigText { interface: f.interface, rules: f.rules.into_iter().zip(f.rates).collect() })
}

fn load_config_file(path: &Path) -> Result<FileConfig, UsageError> {
    let text = std::fs::read_to_string(path).map_err(|e| UsageError(format!("config {}: {e}", path.display())))?;
    parse_config(&path.display().to_string(), &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_to_ppm_edges_and_fractions() {
        assert_eq!(percent_to_ppm(0.0), Ok(0));
        assert_eq!(percent_to_ppm(100.0), Ok(PPM_ALL));
        assert_eq!(percent_to_ppm(50.0), Ok(500_000));
        assert_eq!(percent_to_ppm(0.5), Ok(5_000));
        assert_eq!(percent_to_ppm(0.0001), Ok(1));
        assert_eq!(percent_to_ppm(12.34567), Ok(123_457));
        assert!(percent_to_ppm(-1.0).is_err());
        assert!(percent_to_ppm(100.01).is_err());
        assert!(percent_to_ppm(f64::NAN).is_err());
        assert_eq!(ppm_to_percent(5_000), 0.5);
    }

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("shadow-daemon").chain(args.iter().copied()))
    }

    #[test]
    fn flags_parse_and_validate() {
        let a = parse(&["--interface", "eth0", "--port", "80,8080", "--sample-rate", "25%"]).unwrap();
        assert_eq!(a.port, vec![80, 8080]);
        assert_eq!(a.sample_rate, 250_000);
        assert_eq!(a.hook, HookKind::Tc);
        a.validate().unwrap();
    }

    #[test]
    fn bad_flags_name_the_flag() {
        let e = parse(&["--interface", "eth0", "--port", "0"]).unwrap_err().to_string();
        assert!(e.contains("--port"), "{e}");
        let e = parse(&["--interface", "eth0", "--port", "80", "--sample-rate", "150"]).unwrap_err().to_string();
        assert!(e.contains("--sample-rate"), "{e}");
        let e = parse(&["--interface", "eth0", "--port", "80", "--hook", "kprobe"]).unwrap_err().to_string();
        assert!(e.contains("--hook"), "{e}");
        let e = parse(&["--interface", "eth0", "--port", "80", "--ring-buffer-size", "5000"]).unwrap_err().to_string();
        assert!(e.contains("--ring-buffer-size"), "{e}");
        let e = parse(&["--port", "80"]).unwrap().validate().unwrap_err().to_string();
        assert!(e.contains("--interface"), "{e}");
        let e = parse(&["--interface", "lo"]).unwrap().validate().unwrap_err().to_string();
        assert!(e.contains("--port"), "{e}");
    }

    fn resolve(args: &[&str]) -> Result<DaemonConfig, String> {
        parse(args).map_err(|e| e.to_string())?.resolve().map_err(|e| e.to_string())
    }

    #[test]
    fn flags_resolve_to_one_rule_with_safe_defaults() {
        let c = resolve(&["-i", "lo", "-p", "8080,80,8080", "--shadow", "localhost:9090"]).unwrap();
        assert_eq!(c.interface, "lo");
        assert_eq!(c.ports(), vec![80, 8080]);
        assert_eq!(c.rules.len(), 1);
        let r = &c.rules[0];
        assert_eq!(r.shadow, Some(ShadowTarget { host: "localhost".into(), port: 9090 }));
        assert_eq!(r.controls, ReplayControls::default());
        assert!(r.controls.methods.allows(b"GET") && !r.controls.methods.allows(b"POST"));
        assert_eq!(c.max_endpoints, DEFAULT_MAX_ENDPOINTS);
        assert_eq!(c.duration, None);
        let capture_only = resolve(&["-i", "lo", "-p", "80"]).unwrap();
        assert_eq!(capture_only.rules[0].shadow, None);
    }

    #[test]
    fn control_flags_resolve() {
        let c = resolve(&[
            "-i",
            "eth0",
            "-p",
            "80",
            "--shadow",
            "[::1]:81",
            "--allow-method",
            "post,PUT",
            "--tag-header",
            "X-Mirror: 1",
            "--host-mode",
            "suffix:-shadow",
            "--remove-header",
            "Authorization,Cookie",
            "--set-header",
            "X-A: 1",
            "--set-header",
            "X-B: a, b",
            "--allow-path",
            "/api/,/v2/*/x",
            "--deny-path",
            "/api/admin",
            "--replay-rate",
            "50",
            "--max-body-bytes",
            "1MiB",
            "--request-timeout",
            "1500ms",
            "--connect-timeout",
            "1",
            "--concurrency",
            "8",
            "--queue-capacity",
            "16",
            "--queue-bytes",
            "2MiB",
            "--pool-size",
            "4",
            "--max-endpoints",
            "50",
            "--duration",
            "2.5",
        ])
        .unwrap();
        let k = &c.rules[0].controls;
        assert!(k.methods.allows(b"POST") && k.methods.allows(b"PUT") && k.methods.allows(b"GET"));
        assert_eq!(k.tag_header, HeaderField::parse("X-Mirror: 1").unwrap());
        assert_eq!(k.host, HostMode::Suffix("-shadow".into()));
        assert_eq!(k.remove_headers.len(), 2);
        assert_eq!(k.set_headers[1].value, "a, b", "commas stay inside a set header value");
        assert_eq!(k.allow_paths.len(), 2);
        assert_eq!(k.deny_paths[0].as_str(), "/api/admin");
        assert_eq!(k.replay_rate, Some(50.0));
        assert_eq!(k.max_body_bytes, 1 << 20);
        assert_eq!(k.request_timeout, Duration::from_millis(1500));
        assert_eq!(k.connect_timeout, Duration::from_secs(1));
        assert_eq!((k.concurrency, k.queue_capacity, k.pool_size, k.queue_bytes), (8, 16, 4, 2 << 20));
        assert_eq!(c.max_endpoints, 50);
        assert_eq!(c.duration, Some(Duration::from_millis(2500)));
    }

    #[test]
    fn bad_control_flags_name_the_flag() {
        let base = ["-i", "lo", "-p", "80"];
        for (extra, flag) in [
            (&["--replay-rate", "0"][..], "--replay-rate"),
            (&["--host-mode", "elsewhere"], "--host-mode"),
            (&["--set-header", "no colon"], "--set-header"),
            (&["--set-header", "X-A: 1\r"], "--set-header"),
            (&["--remove-header", "a b"], "--remove-header"),
            (&["--allow-path", "api"], "--allow-path"),
            (&["--deny-path", "/a?b"], "--deny-path"),
            (&["--concurrency", "0"], "--concurrency"),
            (&["--queue-capacity", "0"], "--queue-capacity"),
            (&["--request-timeout", "0"], "--request-timeout"),
            (&["--connect-timeout", "forever"], "--connect-timeout"),
            (&["--max-body-bytes", "2GiB"], "--max-body-bytes"),
            (&["--tag-header", "bad"], "--tag-header"),
            (&["--max-endpoints", "0"], "--max-endpoints"),
            (&["--shadow", "nohostport"], "--shadow"),
            (&["--shadow", "x:0"], "--shadow"),
            (&["--allow-method", "G T"], "--allow-method"),
        ] {
            let args: Vec<&str> = base.iter().chain(extra).copied().collect();
            let e = resolve(&args).unwrap_err();
            assert!(e.contains(flag), "{extra:?}: {e}");
            assert!(!e.trim().is_empty());
        }
        let e = resolve(&["-i", "lo", "-p", "80", "--shadow", "x"]).unwrap_err();
        assert_eq!(e, "--shadow: 'x' is not HOST:PORT");
        let e = resolve(&["-i", "lo", "-p", "80", "--set-header", "Authorization: Bearer s3cret\u{7}"]).unwrap_err();
        assert!(e.starts_with("--set-header: ") && !e.contains("s3cret"), "a header value is never echoed: {e}");
        let e = file("[[rule]]\nport = 80\nset_header = \"X-Token: s3cret\\u0000\"\n").unwrap_err();
        assert!(e.contains("rule[0].set_header") && !e.contains("s3cret"), "{e}");
    }

    #[test]
    fn caps_on_memory_take_gib_and_durations_are_bounded() {
        let c = resolve(&["-i", "lo", "-p", "80", "--memory-cap", "2GiB", "--queue-bytes", "2GiB"]).unwrap();
        assert_eq!((c.memory_cap, c.rules[0].controls.queue_bytes), (2 << 30, 2 << 30));
        let f = file("[[rule]]\nport = 80\nqueue_bytes = \"4GiB\"\n").unwrap();
        assert_eq!(f.rules[0].controls.queue_bytes, 4 << 30);
        let e = resolve(&["-i", "lo", "-p", "80", "--max-body-bytes", "2GiB"]).unwrap_err();
        assert!(e.contains("--max-body-bytes") && e.contains("1GiB"), "a body is still capped at 1 GiB: {e}");
        for d in ["1e20", "inf", "0", "-2", "x"] {
            let d = &format!("--duration={d}");
            let e = parse(&["-i", "lo", "-p", "80", d]).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{d}");
            assert!(e.to_string().contains("--duration"), "{d}: {e}");
        }
    }

    #[test]
    fn config_and_rule_flags_are_not_mixed() {
        for (flag, value) in [("--port", "80"), ("--shadow", "a:1"), ("--replay-rate", "5"), ("--pool-size", "1")] {
            let e = resolve(&["--config", "/nonexistent.toml", flag, value]).unwrap_err();
            assert!(e.starts_with(flag) && e.contains("--config"), "{e}");
        }
        let e = resolve(&["--config", "/nonexistent/shadow.toml"]).unwrap_err();
        assert!(e.starts_with("config /nonexistent/shadow.toml: "), "{e}");
    }

    fn file(text: &str) -> Result<FileConfig, String> {
        parse_config("/etc/shadow.toml", text).map_err(|e| e.to_string())
    }

    #[test]
    fn example_config_parses() {
        let c = file(EXAMPLE_CONFIG).unwrap();
        assert_eq!(c.interface.as_deref(), Some("eth0"));
        assert_eq!(c.rules.len(), 3);
        let a = &c.rules[0];
        assert_eq!(a.ports, vec![8080, 8443]);
        assert_eq!(a.shadow.as_ref().map(|t| t.port), Some(8080));
        assert!(a.controls.methods.allows(b"POST") && !a.controls.methods.allows(b"DELETE"));
        assert_eq!(a.controls.host, HostMode::Suffix("-shadow".into()));
        assert_eq!(a.controls.remove_headers.len(), 2, "inherited from [defaults]");
        assert_eq!(a.controls.replay_rate, Some(200.0));
        assert!(a.controls.deny_paths[1].matches(b"/api/v1/eu/payments"));
        let b = &c.rules[1];
        assert_eq!(b.ports, vec![9090]);
        assert_eq!(b.controls.host, HostMode::Target);
        assert!(!b.controls.methods.allows(b"POST"), "rule[0]'s methods do not leak");
        assert_eq!(b.controls.replay_rate, None);
        assert_eq!(c.rules[2].shadow, None);
        assert_eq!(c.rules[2].controls.max_body_bytes, 10 << 20);
    }

    #[test]
    fn example_config_resolves_from_a_file() {
        let path = std::env::temp_dir().join(format!("shadow-config-test-{}.toml", std::process::id()));
        std::fs::write(&path, EXAMPLE_CONFIG).unwrap();
        let p = path.to_str().unwrap();
        let c = resolve(&["--config", p, "--sample-rate", "10"]).unwrap();
        assert_eq!(c.interface, "eth0");
        assert_eq!(c.ports(), vec![7070, 8080, 8443, 9090]);
        assert_eq!(c.sample_ppm, 100_000);
        let c = resolve(&["--config", p, "--interface", "lo"]).unwrap();
        assert_eq!(c.interface, "lo", "the flag wins over the file");
        std::fs::write(&path, "[[rule]]\nport = 80\n").unwrap();
        let e = resolve(&["--config", p]).unwrap_err();
        assert!(e.starts_with("--interface is required") && e.contains(p), "{e}");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn metrics_addresses_in_every_form_a_node_ip_takes() {
        let ok = |s: &str| parse_metrics_addr(s).unwrap().to_string();
        assert_eq!(ok("0.0.0.0:9477"), "0.0.0.0:9477");
        assert_eq!(ok("10.0.3.7:9477"), "10.0.3.7:9477");
        assert_eq!(ok("[fd00::7]:9477"), "[fd00::7]:9477");
        assert_eq!(ok("fd00::7:9477"), "[fd00::7]:9477", "$(NODE_IP):9477 on an IPv6 node");
        assert_eq!(ok("::1:9477"), "[::1]:9477");
        for bad in ["10.0.3.7", "10.0.3.7:", "node:9477", "fd00::7", "10.0.3.7:99999", ""] {
            let e = parse_metrics_addr(bad).unwrap_err();
            assert!(e.contains("IP:PORT"), "{bad}: {e}");
        }
        let a = Args::try_parse_from([
            "shadow-daemon",
            "--interface",
            "lo",
            "--port",
            "80",
            "--metrics-addr",
            "fd00::7:9477",
        ]);
        assert_eq!(a.unwrap().metrics_addr.to_string(), "[fd00::7]:9477");
    }

    #[test]
    fn config_errors_name_file_and_field() {
        let cases: [(&str, &str); 16] = [
            (
                "[[rule]]\nport = 80\n[[rule]]\nport = 81\nshadow = \"x\"\n",
                "config /etc/shadow.toml: rule[1].shadow: 'x' is not HOST:PORT",
            ),
            ("[[rule]]\nport = 80\nshadow = 5\n", "rule[0].shadow: expected \"HOST:PORT\", found integer"),
            ("[[rule]]\nport = 0\n", "rule[0].port: 0 is not a TCP port"),
            ("[[rule]]\nport = \"80\"\n", "rule[0].port: expected a port number, found string"),
            ("[[rule]]\nshadow = \"a:1\"\n", "rule[0].port: missing"),
            ("[[rule]]\nport = [80, 81]\n[[rule]]\nport = 81\n", "rule[1].port: port 81 is already in rule[0]"),
            ("[[rule]]\nport = 80\nshadw = \"a:1\"\n", "rule[0].shadw: unknown key"),
            ("[defaults]\nreplay_rate = -1\n[[rule]]\nport = 80\n", "defaults.replay_rate: "),
            ("[defaults]\nport = 80\n[[rule]]\nport = 80\n", "defaults.port: unknown key (it belongs in a [[rule]])"),
            ("[[rule]]\nport = 80\nhost_mode = \"sideways\"\n", "rule[0].host_mode: 'sideways' is not keep"),
            ("[[rule]]\nport = 80\nset_header = [\"X-A: 1\", 2]\n", "rule[0].set_header: expected a list of strings"),
            (
                "[[rule]]\nport = 80\nrequest_timeout = true\n",
                "rule[0].request_timeout: expected a duration, found boolean",
            ),
            ("[[rule]]\nport = 80\nconcurrency = 0\n", "rule[0].concurrency: 0 is not between 1 and"),
            ("interface = \"lo\"\n", "config /etc/shadow.toml: rule: no [[rule]]"),
            ("hook = \"xdp\"\n[[rule]]\nport = 80\n", "config /etc/shadow.toml: hook: unknown key"),
            ("[[rule]]\nport = 80\nshadow = \"a:1\n", "config /etc/shadow.toml: line 3, column"),
        ];
        for (text, want) in cases {
            let e = file(text).unwrap_err();
            assert!(e.contains(want), "{text:?}\n  got:  {e}\n  want: {want}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn numbers_and_strings_both_work_in_the_file() {
        let c = file(
            "[[rule]]\nport = 80\nrequest_timeout = 2\nconnect_timeout = 0.5\nmax_body_bytes = 1024\nreplay_rate = \"2.5\"\nallow_method = \"put\"\n",
        )
        .unwrap();
        let k = &c.rules[0].controls;
        assert_eq!(k.request_timeout, Duration::from_secs(2));
        assert_eq!(k.connect_timeout, Duration::from_millis(500));
        assert_eq!(k.max_body_bytes, 1024);
        assert_eq!(k.replay_rate, Some(2.5));
        assert!(k.methods.allows(b"PUT"));
    }

    #[test]
    fn comparison_is_on_by_default_for_rules_with_a_shadow_and_read_from_rule_compare() {
        let c = file(concat!(
            "[defaults.compare]\nmax_body_bytes = 1000\n",
            "[[rule]]\nport = 80\nshadow = \"a:1\"\n",
            "[[rule]]\nport = 81\nshadow = \"a:2\"\n[rule.compare]\nignore_fields = [\"x\"]\n",
            "[rule.compare.gates]\nmin_samples = 5\n",
            "[[rule]]\nport = 82\nshadow = \"a:3\"\ncompare = false\n",
            "[[rule]]\nport = 83\n",
        ))
        .unwrap();
        let cmp: Vec<_> = c.rules.iter().map(|r| r.compare.clone()).collect();
        assert_eq!(cmp[0].as_ref().map(|s| s.max_body_bytes), Some(1000), "[defaults.compare]");
        let own = cmp[1].as_ref().expect("rule[1] compares");
        assert_eq!((own.ignore_fields.as_slice(), own.gates.min_samples), (&["x".to_owned()][..], 5));
        assert_eq!(
            own.max_body_bytes,
            crate::compare::CompareSettings::default().max_body_bytes,
            "a rule's table replaces the defaults'"
        );
        assert_eq!(cmp[2], None, "compare = false");
        assert_eq!(cmp[3], None, "no shadow, nothing to compare");
        let c = file("[[rule]]\nport = 80\nshadow = \"a:1\"\n").unwrap();
        assert_eq!(c.rules[0].compare, Some(crate::compare::CompareSettings::default()));

        for (text, want) in [
            (
                "[[rule]]\nport = 80\nshadow = \"a:1\"\n[rule.compare]\nmax_body_bytes = 0\n",
                "config /etc/shadow.toml: rule[0].compare.max_body_bytes: 0 must be between",
            ),
            (
                "[[rule]]\nport = 80\nshadow = \"a:1\"\n[rule.compare]\nignore_feilds = []\n",
                "rule[0].compare.ignore_feilds: unknown field",
            ),
            (
                "[[rule]]\nport = 80\nshadow = \"a:1\"\n[rule.compare.gates]\nmax_p99_ratio = 0.5\n",
                "rule[0].compare.gates.max_p99_ratio: 0.5 must be",
            ),
            (
                "[[rule]]\nport = 80\nshadow = \"a:1\"\ncompare = 3\n",
                "rule[0].compare: expected a [compare] table, true or false",
            ),
            ("[defaults.compare]\nmax_body_bytes = -1\n[[rule]]\nport = 80\n", "defaults.compare.max_body_bytes: "),
        ] {
            let e = file(text).unwrap_err();
            assert!(e.contains(want), "{text:?}\n  got:  {e}\n  want: {want}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }
}

#[cfg(test)]
mod rule_keys_tests {
    use super::{file::parse_config, *};

    fn file(text: &str) -> Result<FileConfig, String> {
        parse_config("/etc/shadow.toml", text).map_err(|e| e.to_string())
    }

    #[test]
    fn rules_have_names_matches_and_their_own_rates() {
        let f = file(
            "[[rule]]\nname = \"api\"\nmatch = [\"10.42.0.0/16:8080\", \"[fd00::/64]:8080\"]\nsample_rate = 2.5\n\n\
             [[rule]]\nport = 8080\n\n[[rule]]\nname = \"web\"\nmatch = \"10.42.1.0/24:8080\"\n",
        )
        .unwrap();
        assert_eq!(f.rules.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["api", "rule1", "web"]);
        assert_eq!(
            f.rules[0].services().iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["10.42.0.0/16:8080", "[fd00::/64]:8080"]
        );
        assert_eq!(f.rates, vec![Some(25_000), None, None]);
        // The default rate comes from --sample-rate.
        let dir = std::env::temp_dir().join(format!("shadow-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rules.toml");
        std::fs::write(&path, "[[rule]]\nport = 80\n[[rule]]\nport = 81\nsample_rate = 50\n").unwrap();
        let a = Args::try_parse_from([
            "shadow-daemon",
            "-i",
            "eth0,veth*",
            "--config",
            path.to_str().unwrap(),
            "--sample-rate",
            "10",
        ])
        .unwrap();
        let c = a.clone().resolve().unwrap();
        assert_eq!(c.rules.iter().map(|r| r.sample_ppm).collect::<Vec<_>>(), vec![100_000, 500_000]);
        assert_eq!(c.interfaces.iter().map(|p| p.as_str()).collect::<Vec<_>>(), ["eth0", "veth*"]);
        assert_eq!(c.source.as_deref(), Some(&a), "a file-based config can be resolved again on reload");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn rule_key_errors_name_the_field() {
        for (text, want) in [
            ("[[rule]]\nname = \"a b\"\nport = 80\n", "rule[0].name: expected a name"),
            (
                "[[rule]]\nname = \"x\"\nport = 80\n[[rule]]\nname = \"x\"\nport = 81\n",
                "rule[1].name: 'x' is already the name of rule[0]",
            ),
            (
                "[[rule]]\nmatch = [\"10.0.0.0/33:80\"]\n",
                "rule[0].match: '10.0.0.0/33:80': '/33' is not a prefix length",
            ),
            ("[[rule]]\nmatch = [80]\n", "rule[0].match: expected ADDR[/PREFIX]:PORT strings, found integer"),
            (
                "[[rule]]\nmatch = \"10.0.0.0/8:80\"\n[[rule]]\nmatch = \"10.1.0.0/8:80\"\n",
                "rule[1].match: 10.0.0.0/8:80 is already in rule[0]",
            ),
            ("[[rule]]\nport = 80\nsample_rate = 101\n", "rule[0].sample_rate: 101 is not a percentage"),
            ("[[rule]]\nport = 80\nsample_rate = true\n", "rule[0].sample_rate: expected a percentage, found boolean"),
            ("[[rule]]\nname = \"x\"\n", "rule[0].port: missing: every rule needs its service port(s) or a match"),
        ] {
            let e = file(text).unwrap_err();
            assert!(e.contains(want), "{text:?}\n  got:  {e}\n  want: {want}");
        }
        // Same port, different addresses: two services, allowed.
        file("[[rule]]\nport = 80\n[[rule]]\nmatch = \"10.0.0.0/8:80\"\n").unwrap();
    }

    #[test]
    fn a_rule_is_found_by_its_id_or_name() {
        let rules = parse_config("/etc/shadow.toml", "[[rule]]\nname = \"api\"\nport = 80\n\n[[rule]]\nport = 81\n")
            .expect("file")
            .rules;
        let set = RuleSet::new(rules);
        let ids: Vec<(RuleId, &str)> = set.with_ids().map(|(id, r)| (id, r.name.as_str())).collect();
        assert_eq!(ids, [(RuleId::new(0), "api"), (RuleId::new(1), "rule1")]);
        assert_eq!(set.id_of("rule1"), Some(RuleId::new(1)));
        assert_eq!(set.id_of("web"), None);
        assert_eq!(set.get(RuleId::new(0)).map(|r| r.name.as_str()), Some("api"));
        assert!(set.get(RuleId::new(2)).is_none());
        assert_eq!(set.len(), 2, "read as a slice");
    }

    #[test]
    fn egress_fences_come_from_three_lines_of_a_rule_or_from_flags() {
        let f = file(
            "[[rule]]\nname = \"orders\"\nport = 80\n[rule.egress]\n\
             cgroups = [\"/sys/fs/cgroup/system.slice/orders-v2.service\", \"/sys/fs/cgroup/kubepods.slice/*/pod*\"]\n\
             allow = [\"127.0.0.1/32:9091\", \"10.0.0.0/8:5432\", \"[fd00::/8]:443\", \"10.0.0.0/8:5432\"]\n\n\
             [[rule]]\nport = 81\n[rule.egress]\ncgroups = \"/sys/fs/cgroup/web.service\"\nmode = \"observe\"\n\n\
             [[rule]]\nport = 82\n",
        )
        .unwrap();
        let e = f.rules[0].egress.as_ref().expect("fenced");
        assert_eq!(
            e.cgroups.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["/sys/fs/cgroup/system.slice/orders-v2.service", "/sys/fs/cgroup/kubepods.slice/*/pod*"]
        );
        assert_eq!(
            e.allow.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["10.0.0.0/8:5432", "127.0.0.1/32:9091", "[fd00::/8]:443"],
            "sorted, duplicates once"
        );
        assert_eq!(e.mode, crate::egress::EgressMode::Enforce, "enforce unless said");
        let web = f.rules[1].egress.as_ref().expect("fenced");
        assert!(web.allow.is_empty());
        assert_eq!(web.mode, crate::egress::EgressMode::Observe);
        assert!(f.rules[2].egress.is_none());

        let c = Args::try_parse_from([
            "shadow-daemon",
            "-i",
            "lo",
            "-p",
            "80",
            "--egress-cgroup",
            "/sys/fs/cgroup/a.service,/sys/fs/cgroup/b.service",
            "--egress-allow",
            "10.96.0.10/32:53,[::1]:9091",
            "--egress-mode",
            "observe",
        ])
        .unwrap()
        .resolve()
        .unwrap();
        let e = c.rules[0].egress.as_ref().expect("fenced by flags");
        assert_eq!(e.cgroups.len(), 2);
        assert_eq!(e.allow.iter().map(ToString::to_string).collect::<Vec<_>>(), ["10.96.0.10/32:53", "[::1/128]:9091"]);
        assert_eq!(e.mode, crate::egress::EgressMode::Observe);
        assert_eq!(c.pin_dir, std::path::Path::new("/sys/fs/bpf/shadow"));
        let plain = Args::try_parse_from(["shadow-daemon", "-i", "lo", "-p", "80"]).unwrap().resolve().unwrap();
        assert!(plain.rules[0].egress.is_none(), "no fence unless asked");
    }

    #[test]
    fn egress_errors_name_the_flag_or_the_field() {
        for (text, want) in [
            ("[[rule]]\nport = 80\n[rule.egress]\nallow = \"10.0.0.0/8\"\n", "rule[0].egress.cgroups: missing"),
            ("[[rule]]\nport = 80\n[rule.egress]\n", "rule[0].egress.cgroups: missing"),
            ("[[rule]]\nport = 80\negress = true\n", "rule[0].egress: expected a [rule.egress] table, found boolean"),
            (
                "[[rule]]\nport = 80\n[rule.egress]\ncgroups = \"/x\"\nallow = [\"10.1.2.3/8\"]\n",
                "rule[0].egress.allow: '10.1.2.3/8' has bits set past its /8 prefix: did you mean 10.0.0.0/8?",
            ),
            (
                "[[rule]]\nport = 80\n[rule.egress]\ncgroups = \"/x\"\nallow = [5432]\n",
                "rule[0].egress.allow: expected CIDR[:PORT] strings, found integer",
            ),
            (
                "[[rule]]\nport = 80\n[rule.egress]\ncgroups = \"x.service\"\n",
                "rule[0].egress.cgroups: 'x.service' is not an absolute",
            ),
            (
                "[[rule]]\nport = 80\n[rule.egress]\ncgroups = \"/x\"\nmode = \"block\"\n",
                "rule[0].egress.mode: 'block' is not a mode",
            ),
            (
                "[[rule]]\nport = 80\n[rule.egress]\ncgroups = \"/x\"\nallowed = []\n",
                "rule[0].egress.allowed: unknown key (known: cgroups, allow, mode)",
            ),
            ("[defaults]\negress = 1\n[[rule]]\nport = 80\n", "defaults.egress: unknown key"),
        ] {
            let e = file(text).unwrap_err();
            assert!(e.contains(want), "{text:?}\n  got:  {e}\n  want: {want}");
        }
        let flags = |extra: &[&str]| {
            let mut a = vec!["shadow-daemon", "-i", "lo", "-p", "80"];
            a.extend_from_slice(extra);
            Args::try_parse_from(a).map_err(|e| e.to_string()).and_then(|a| a.resolve().map_err(|e| e.to_string()))
        };
        let e = flags(&["--egress-allow", "10.0.0.0/8"]).unwrap_err();
        assert!(e.contains("--egress-cgroup: missing"), "{e}");
        let e = flags(&["--egress-cgroup", "relative/x"]).unwrap_err();
        assert!(e.contains("--egress-cgroup") && e.contains("not an absolute"), "{e}");
        let e = flags(&["--egress-cgroup", "/x", "--egress-mode", "block"]).unwrap_err();
        assert!(e.contains("--egress-mode") && e.contains("'block' is not a mode"), "{e}");
        // With --config, the fence is the file's.
        let e = Args::try_parse_from(["shadow-daemon", "--config", "/x.toml", "--egress-cgroup", "/x"])
            .unwrap()
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--egress-cgroup cannot be combined with --config"), "{e}");
    }

    #[test]
    fn ramps_come_from_a_block_or_from_flags() {
        let f = file(
            "[[rule]]\nname = \"api\"\nport = 80\nshadow = \"10.0.0.9:80\"\n[rule.ramp]\nsteps = [1, 5, 10.5, 100]\n\
             step_seconds = 60\nmin_pairs = 50\nalpha = 0.01\nerror_excess_percent = 2\nlatency_ratio = 1.5\n\
             latency_floor = \"10ms\"\nharm_ratio = 1.3\nshed_percent = 0.5\nbaseline_seconds = 30\nbaseline_responses = 500\n\n\
             [[rule]]\nport = 81\nshadow = \"10.0.0.9:81\"\n",
        )
        .unwrap();
        let r = f.rules[0].ramp.as_ref().expect("ramped");
        assert_eq!(r.steps_ppm, [10_000, 50_000, 105_000, 1_000_000]);
        assert_eq!(
            (r.step, r.min_pairs, r.baseline, r.baseline_responses),
            (Duration::from_secs(60), 50, Duration::from_secs(30), 500)
        );
        assert_eq!((r.alpha, r.error_excess, r.latency_ratio, r.harm_ratio, r.shed), (0.01, 0.02, 1.5, 1.3, 0.005));
        assert_eq!(r.latency_floor, Duration::from_millis(10));
        assert!(f.rules[1].ramp.is_none());

        let c = Args::try_parse_from([
            "shadow-daemon",
            "-i",
            "lo",
            "-p",
            "80",
            "--shadow",
            "10.0.0.9:80",
            "--ramp",
            "1,5,100",
            "--ramp-step-seconds",
            "120",
            "--ramp-min-pairs",
            "300",
            "--state-dir",
            "/tmp/st",
        ])
        .unwrap()
        .resolve()
        .unwrap();
        let r = c.rules[0].ramp.as_ref().expect("ramped by flags");
        assert_eq!(r.steps_ppm, [10_000, 50_000, 1_000_000]);
        assert_eq!((r.step, r.min_pairs), (Duration::from_secs(120), 300));
        assert_eq!(r.latency_ratio, 1.2, "defaults for the rest");
        assert_eq!(c.state_dir, std::path::Path::new("/tmp/st"));
        let plain = Args::try_parse_from(["shadow-daemon", "-i", "lo", "-p", "80"]).unwrap().resolve().unwrap();
        assert!(plain.rules[0].ramp.is_none());
        assert_eq!(plain.state_dir, std::path::Path::new("/var/lib/shadow"));
    }

    #[test]
    fn ramp_errors_name_the_flag_or_the_field() {
        let rule = "[[rule]]\nport = 80\nshadow = \"10.0.0.9:80\"\n";
        for (tail, want) in [
            ("[rule.ramp]\nstep_seconds = 5\n", "rule[0].ramp.steps: missing"),
            ("[rule.ramp]\nsteps = [10, 5]\n", "rule[0].ramp.steps: steps must increase"),
            ("[rule.ramp]\nsteps = [0, 5]\n", "rule[0].ramp.steps: a step of 0 %"),
            ("[rule.ramp]\nsteps = [5, 101]\n", "rule[0].ramp.steps:"),
            ("[rule.ramp]\nsteps = [5]\nmin_pairs = 3\n", "rule[0].ramp.min_pairs: 3 is not between 20 and"),
            (
                "[rule.ramp]\nsteps = [5]\nlatency_ratio = 0.9\n",
                "rule[0].ramp.latency_ratio: '0.9' is not a ratio above 1",
            ),
            ("[rule.ramp]\nsteps = [5]\nalpha = 0.9\n", "rule[0].ramp.alpha: '0.9' is not a probability"),
            ("[rule.ramp]\nsteps = [5]\nstep = 5\n", "rule[0].ramp.step: unknown key (known: steps, step_seconds"),
            ("ramp = [1, 5]\n", "rule[0].ramp: expected a [rule.ramp] table, found array"),
        ] {
            let text = format!("{rule}{tail}");
            let e = file(&text).unwrap_err();
            assert!(e.contains(want), "{text:?}\n  got:  {e}\n  want: {want}");
        }
        let e = file("[[rule]]\nport = 80\n[rule.ramp]\nsteps = [5]\n").unwrap_err();
        assert!(e.contains("rule[0].ramp: a ramp judges compared pairs"), "{e}");
        let flags = |extra: &[&str]| {
            let mut a = vec!["shadow-daemon", "-i", "lo", "-p", "80"];
            a.extend_from_slice(extra);
            Args::try_parse_from(a).map_err(|e| e.to_string()).and_then(|a| a.resolve().map_err(|e| e.to_string()))
        };
        let e = flags(&["--ramp", "1,5"]).unwrap_err();
        assert!(e.contains("--ramp: a ramp judges compared pairs: give the rule a shadow"), "{e}");
        let e = flags(&["--shadow", "10.0.0.9:80", "--ramp-min-pairs", "100"]).unwrap_err();
        assert!(e.contains("--ramp: missing"), "{e}");
        let e = flags(&["--shadow", "10.0.0.9:80", "--ramp", "5,1"]).unwrap_err();
        assert!(e.contains("--ramp: steps must increase"), "{e}");
        let e = Args::try_parse_from(["shadow-daemon", "--config", "/x.toml", "--ramp", "1,5"])
            .unwrap()
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--ramp cannot be combined with --config"), "{e}");
    }
}
