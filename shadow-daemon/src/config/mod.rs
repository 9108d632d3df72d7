//! Command line (every flag also from a `SHADOW_*` environment variable), the TOML config file
//! for several rules, and their validation into one resolved [`DaemonConfig`].
//!
//! Two ways to say what is mirrored where, never mixed:
//! - flags only: one rule, `--port` to `--shadow`, with the control flags;
//! - `--config FILE`: the rules (and optionally the interface) come from the file, see
//!   [`EXAMPLE_CONFIG`]; rule and control flags are then refused rather than silently merged.
//!
//! Daemon-level settings (hook, sample rate, metrics address, control socket, ring buffer, ...)
//! always come from flags or `SHADOW_*` variables.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{
    Parser,
    builder::{PossibleValuesParser, TypedValueParser},
};
use shadow_common::PPM_ALL;

pub use self::units::{
    MAX_TIMEOUT, parse_byte_size, parse_bytes, parse_count, parse_duration, parse_rate, parse_seconds,
};
// The hook is the capture layer's; the CLI only names it.
pub use crate::capture::HookKind;
use crate::{
    http::PathPattern,
    metrics::DEFAULT_MAX_ENDPOINTS,
    replay::controls::{
        HeaderField, HeaderName, HostMode, MAX_CONCURRENCY, MAX_QUEUE_CAPACITY, MethodAllowlist, ReplayControls,
        ShadowTarget,
    },
};

mod units;

fn parse_hook(s: &str) -> HookKind {
    match s {
        "xdp" => HookKind::Xdp,
        _ => HookKind::Tc,
    }
}

#[derive(Debug, Parser, Clone)]
#[command(
    name = "shadow-daemon",
    version,
    about = "Mirror live HTTP traffic of a service to a shadow version of it, passively, from the kernel (eBPF)."
)]
pub struct Args {
    /// Network interface to capture on (the one the service's traffic crosses; `lo` for local).
    #[arg(long, short = 'i', env = "SHADOW_INTERFACE")]
    pub interface: Option<String>,

    /// Service port(s) whose traffic is mirrored, comma separated.
    #[arg(long, short = 'p', env = "SHADOW_PORT", value_delimiter = ',', value_parser = parse_port)]
    pub port: Vec<u16>,

    /// Shadow target HOST:PORT that receives the mirrored requests (omit to capture only).
    #[arg(long, env = "SHADOW_SHADOW")]
    pub shadow: Option<String>,

    /// Percentage of requests to mirror, 0 to 100 (fractions allowed, e.g. 0.5).
    #[arg(long, env = "SHADOW_SAMPLE_RATE", default_value = "100", value_parser = parse_percent)]
    pub sample_rate: u32,

    /// Kernel hook: tc (ingress+egress) or xdp (ingress only).
    #[arg(long, env = "SHADOW_HOOK", default_value = "tc", value_parser = PossibleValuesParser::new(["tc", "xdp"]).map(|s| parse_hook(&s)))]
    pub hook: HookKind,

    /// Methods replayed besides the safe default (GET, HEAD, OPTIONS), comma separated.
    #[arg(long, env = "SHADOW_ALLOW_METHOD", value_delimiter = ',')]
    pub allow_method: Vec<String>,

    /// Address of the metrics endpoint (/metrics, /healthz, /readyz).
    #[arg(long, env = "SHADOW_METRICS_ADDR", default_value = "127.0.0.1:9477")]
    pub metrics_addr: SocketAddr,

    /// Unix socket for the shadowctl control API (reserved: the control API is not implemented
    /// yet; the flag is accepted so deployments can set it now).
    #[arg(long, env = "SHADOW_CONTROL", default_value = "/run/shadow/control.sock")]
    pub control: PathBuf,

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

    /// Header added to every replayed request, replacing one of that name
    /// [default: "X-Shadow-Request: true"].
    // Header values are validated in `resolve`, whose errors never repeat a value (clap's would),
    // and hidden from --help, since a set header may carry a credential.
    #[arg(long, env = "SHADOW_TAG_HEADER", value_name = "NAME: VALUE", hide_env_values = true)]
    pub tag_header: Option<String>,

    /// Host header sent to the shadow: keep (the original), target (the shadow's HOST:PORT) or
    /// suffix:SUFFIX (appended to the original host name, before any port) [default: keep].
    #[arg(long, env = "SHADOW_HOST_MODE", value_name = "keep|target|suffix:SUFFIX", value_parser = parse_host_mode)]
    pub host_mode: Option<HostMode>,

    /// Headers removed before replaying (e.g. Authorization,Cookie), comma separated.
    #[arg(long, env = "SHADOW_REMOVE_HEADER", value_name = "NAME", value_delimiter = ',', value_parser = HeaderName::parse)]
    pub remove_header: Vec<HeaderName>,

    /// Header set on every replayed request, replacing one of that name; repeat the flag for
    /// several (in SHADOW_SET_HEADER, one per line).
    #[arg(long, env = "SHADOW_SET_HEADER", value_name = "NAME: VALUE", value_delimiter = '\n', hide_env_values = true)]
    pub set_header: Vec<String>,

    /// Only paths matching one of these are replayed, comma separated. A pattern without `*` is a
    /// path prefix; with `*` it is a glob over the whole path (`*` within a segment, `**` across
    /// segments). The query string is ignored; the path is normalized first (dot segments,
    /// duplicate slashes, percent-encoded unreserved characters).
    #[arg(long, env = "SHADOW_ALLOW_PATH", value_name = "PATTERN", value_delimiter = ',', value_parser = PathPattern::parse)]
    pub allow_path: Vec<PathPattern>,

    /// Paths never replayed (same patterns as --allow-path); checked first, deny wins.
    #[arg(long, env = "SHADOW_DENY_PATH", value_name = "PATTERN", value_delimiter = ',', value_parser = PathPattern::parse)]
    pub deny_path: Vec<PathPattern>,

    /// Most requests per second replayed to the shadow, independent of --sample-rate
    /// [default: no limit].
    #[arg(long, env = "SHADOW_REPLAY_RATE", value_name = "RPS", value_parser = parse_rate)]
    pub replay_rate: Option<f64>,

    /// Largest request body replayed (bytes after the head, chunk framing included; KiB/MiB
    /// suffixes allowed) [default: 10MiB].
    #[arg(long, env = "SHADOW_MAX_BODY_BYTES", value_name = "BYTES", value_parser = parse_bytes)]
    pub max_body_bytes: Option<u64>,

    /// Time for the shadow to answer completely, from the request written (e.g. 5, 2.5s, 500ms)
    /// [default: 5s].
    #[arg(long, env = "SHADOW_REQUEST_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub request_timeout: Option<Duration>,

    /// Time to resolve and connect to the shadow [default: 2s].
    #[arg(long, env = "SHADOW_CONNECT_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub connect_timeout: Option<Duration>,

    /// Requests replayed at once (and so connections open to the shadow) [default: 64].
    #[arg(long, env = "SHADOW_CONCURRENCY", value_name = "N", value_parser = parse_concurrency)]
    pub concurrency: Option<usize>,

    /// Requests waiting for a replay slot; beyond this they are dropped and counted [default: 1024].
    #[arg(long, env = "SHADOW_QUEUE_CAPACITY", value_name = "N", value_parser = parse_queue_capacity)]
    pub queue_capacity: Option<usize>,

    /// Request bytes held for replay (queued and in flight) per rule; beyond this requests are
    /// dropped and counted as queue_full [default: 64MiB].
    #[arg(long, env = "SHADOW_QUEUE_BYTES", value_name = "BYTES", value_parser = parse_byte_size)]
    pub queue_bytes: Option<u64>,

    /// Idle keep-alive connections kept per shadow target [default: 64].
    #[arg(long, env = "SHADOW_POOL_SIZE", value_name = "N", value_parser = parse_pool_size)]
    pub pool_size: Option<usize>,

    /// Endpoints (method + path template) with their own latency series; the rest are `other`.
    #[arg(long, env = "SHADOW_MAX_ENDPOINTS", value_name = "N", default_value_t = DEFAULT_MAX_ENDPOINTS, value_parser = parse_max_endpoints)]
    pub max_endpoints: usize,

    /// Cap on the memory held by stream reassembly (buffered bytes and flow state, KiB/MiB/GiB
    /// suffixes accepted); past it the idlest flows are evicted and counted.
    #[arg(long, env = "SHADOW_MEMORY_CAP", value_name = "BYTES", default_value = "64MiB", value_parser = parse_memory_cap)]
    pub memory_cap: u64,
}

fn parse_memory_cap(s: &str) -> Result<u64, String> {
    let v = parse_byte_size(s)?;
    if v < 1024 * 1024 {
        return Err(format!("{v} bytes is below the 1 MiB minimum"));
    }
    Ok(v)
}

fn parse_host_mode(s: &str) -> Result<HostMode, String> {
    s.parse()
}

fn parse_concurrency(s: &str) -> Result<usize, String> {
    parse_count(s, 1, MAX_CONCURRENCY)
}

fn parse_queue_capacity(s: &str) -> Result<usize, String> {
    parse_count(s, 1, MAX_QUEUE_CAPACITY)
}

fn parse_pool_size(s: &str) -> Result<usize, String> {
    parse_count(s, 0, MAX_CONCURRENCY)
}

fn parse_max_endpoints(s: &str) -> Result<usize, String> {
    parse_count(s, 1, 10_000)
}

fn parse_port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(0) => Err("port 0 is not a service port".into()),
        Ok(p) => Ok(p),
        Err(_) => Err(format!("'{s}' is not a TCP port (1-65535)")),
    }
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

fn parse_percent(s: &str) -> Result<u32, String> {
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
    pub interface: String,
    pub hook: HookKind,
    /// Kernel per-request sampling rate in parts per million.
    pub sample_ppm: u32,
    /// At least one; no port is in two rules.
    pub rules: Vec<Rule>,
    pub metrics_addr: SocketAddr,
    pub control: PathBuf,
    pub ring_buffer_size: u32,
    pub verifier_log: PathBuf,
    pub summary_file: Option<PathBuf>,
    pub duration: Option<Duration>,
    pub max_endpoints: usize,
    /// Reassembly memory cap in bytes.
    pub memory_cap: u64,
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

/// Service ports whose requests go to one shadow target under one set of controls: a rule is
/// what the replay stage calls a lane, and is handed to it as it is.
pub use crate::replay::Lane as Rule;

/// A documented config file; `--config` reads files of this shape. Keys are the flags' names
/// with `_` for `-`; a list key also takes a single string.
pub const EXAMPLE_CONFIG: &str = include_str!("../../../deploy/shadow.example.toml");

/// Flags that only make sense without --config (the file has its own rules).
const RULE_FLAGS: [&str; 17] = [
    "--port",
    "--shadow",
    "--allow-method",
    "--tag-header",
    "--host-mode",
    "--remove-header",
    "--set-header",
    "--allow-path",
    "--deny-path",
    "--replay-rate",
    "--max-body-bytes",
    "--request-timeout",
    "--connect-timeout",
    "--concurrency",
    "--queue-capacity",
    "--queue-bytes",
    "--pool-size",
];

impl Args {
    fn rule_flags_given(&self) -> Vec<&'static str> {
        let given = [
            !self.port.is_empty(),
            self.shadow.is_some(),
            !self.allow_method.is_empty(),
            self.tag_header.is_some(),
            self.host_mode.is_some(),
            !self.remove_header.is_empty(),
            !self.set_header.is_empty(),
            !self.allow_path.is_empty(),
            !self.deny_path.is_empty(),
            self.replay_rate.is_some(),
            self.max_body_bytes.is_some(),
            self.request_timeout.is_some(),
            self.connect_timeout.is_some(),
            self.concurrency.is_some(),
            self.queue_capacity.is_some(),
            self.queue_bytes.is_some(),
            self.pool_size.is_some(),
        ];
        RULE_FLAGS.iter().zip(given).filter(|(_, g)| *g).map(|(f, _)| *f).collect()
    }

    /// Validate everything and produce the daemon's configuration. A problem is one line naming
    /// the flag, or the file and field; the caller exits with code 2.
    pub fn resolve(self) -> Result<DaemonConfig, UsageError> {
        self.validate()?;
        let (interface, rules) = match &self.config {
            Some(path) => {
                if let Some(flag) = self.rule_flags_given().first() {
                    return Err(UsageError(format!(
                        "{flag} cannot be combined with --config: set it in the file ([defaults] or a [[rule]])"
                    )));
                }
                let file = load_config_file(path)?;
                let interface = match (self.interface.clone().filter(|i| !i.is_empty()), file.interface) {
                    (Some(i), _) | (None, Some(i)) => i,
                    (None, None) => {
                        return Err(UsageError(format!(
                            "--interface is required (give it, or set `interface` in config {})",
                            path.display()
                        )));
                    }
                };
                (interface, file.rules)
            }
            None => {
                let interface = self.interface.clone().unwrap_or_default();
                (interface, vec![self.flag_rule()?])
            }
        };
        Ok(DaemonConfig {
            interface,
            hook: self.hook,
            sample_ppm: self.sample_rate,
            rules,
            metrics_addr: self.metrics_addr,
            control: self.control,
            ring_buffer_size: self.ring_buffer_size,
            verifier_log: self.verifier_log,
            summary_file: self.summary_file,
            duration: self.duration,
            max_endpoints: self.max_endpoints,
            memory_cap: self.memory_cap,
        })
    }

    /// The one rule the flags describe.
    fn flag_rule(&self) -> Result<Rule, UsageError> {
        let shadow = match &self.shadow {
            Some(s) => Some(s.parse::<ShadowTarget>().map_err(|e| UsageError(format!("--shadow: {e}")))?),
            None => None,
        };
        let mut methods = Vec::with_capacity(self.allow_method.len());
        for m in &self.allow_method {
            methods.push(MethodAllowlist::parse_method(m).map_err(|e| UsageError(format!("--allow-method: {e}")))?);
        }
        let tag_header = match &self.tag_header {
            Some(t) => Some(HeaderField::parse(t).map_err(|e| UsageError(format!("--tag-header: {e}")))?),
            None => None,
        };
        let set_headers = self
            .set_header
            .iter()
            .map(|h| HeaderField::parse(h).map_err(|e| UsageError(format!("--set-header: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let d = ReplayControls::default();
        let controls = ReplayControls {
            methods: MethodAllowlist::with_extra(&methods),
            tag_header: tag_header.unwrap_or(d.tag_header),
            host: self.host_mode.clone().unwrap_or(d.host),
            remove_headers: self.remove_header.clone(),
            set_headers,
            allow_paths: self.allow_path.clone(),
            deny_paths: self.deny_path.clone(),
            replay_rate: self.replay_rate,
            max_body_bytes: self.max_body_bytes.unwrap_or(d.max_body_bytes),
            request_timeout: self.request_timeout.unwrap_or(d.request_timeout),
            connect_timeout: self.connect_timeout.unwrap_or(d.connect_timeout),
            concurrency: self.concurrency.unwrap_or(d.concurrency),
            queue_capacity: self.queue_capacity.unwrap_or(d.queue_capacity),
            queue_bytes: self.queue_bytes.unwrap_or(d.queue_bytes),
            pool_size: self.pool_size.unwrap_or(d.pool_size),
        };
        let mut ports = self.port.clone();
        ports.sort_unstable();
        ports.dedup();
        Ok(Rule { ports, shadow, controls })
    }
}

/// What a config file says.
#[derive(Debug)]
struct FileConfig {
    interface: Option<String>,
    rules: Vec<Rule>,
}

fn load_config_file(path: &Path) -> Result<FileConfig, UsageError> {
    let text = std::fs::read_to_string(path).map_err(|e| UsageError(format!("config {}: {e}", path.display())))?;
    parse_config(&path.display().to_string(), &text)
}

const CONTROL_KEYS: [&str; 15] = [
    "allow_method",
    "tag_header",
    "host_mode",
    "remove_header",
    "set_header",
    "allow_path",
    "deny_path",
    "replay_rate",
    "max_body_bytes",
    "request_timeout",
    "connect_timeout",
    "concurrency",
    "queue_capacity",
    "queue_bytes",
    "pool_size",
];

/// Parse a config file's text; `name` is how errors refer to the file.
fn parse_config(name: &str, text: &str) -> Result<FileConfig, UsageError> {
    let fail = |field: &str, msg: String| UsageError(format!("config {name}: {field}: {msg}"));
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let at = e.span().map(|s| {
            let before = &text[..s.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.len() - before.rfind('\n').map_or(0, |p| p + 1) + 1;
            format!("line {line}, column {col}: ")
        });
        UsageError(format!("config {name}: {}{}", at.unwrap_or_default(), e.message().trim().replace('\n', " ")))
    })?;

    let mut interface = None;
    let mut defaults = ReplayControls::default();
    let mut rule_values: Option<&Vec<toml::Value>> = None;
    // [defaults] first, whatever its place in the file, since rules start from it.
    if let Some(v) = table.get("defaults") {
        let t = v.as_table().ok_or_else(|| fail("defaults", format!("expected a table, found {}", v.type_str())))?;
        for (k, v) in t {
            if !CONTROL_KEYS.contains(&k.as_str()) {
                let hint = if k == "port" || k == "shadow" { " (it belongs in a [[rule]])" } else { "" };
                return Err(fail(&format!("defaults.{k}"), format!("unknown key{hint}")));
            }
            apply_control(&mut defaults, k, v).map_err(|e| fail(&format!("defaults.{k}"), e))?;
        }
    }
    for (k, v) in &table {
        match k.as_str() {
            "defaults" => {}
            "interface" => {
                let i = v
                    .as_str()
                    .filter(|i| !i.trim().is_empty())
                    .ok_or_else(|| fail("interface", "expected an interface name".into()))?;
                interface = Some(i.trim().to_owned());
            }
            "rule" => {
                rule_values = Some(v.as_array().ok_or_else(|| fail("rule", "expected [[rule]] tables".into()))?);
            }
            _ => return Err(fail(k, "unknown key (expected interface, [defaults] or [[rule]])".into())),
        }
    }
    let rule_values =
        rule_values.filter(|r| !r.is_empty()).ok_or_else(|| fail("rule", "no [[rule]]: add at least one".into()))?;

    let mut rules: Vec<Rule> = Vec::with_capacity(rule_values.len());
    for (i, rv) in rule_values.iter().enumerate() {
        let field = |k: &str| format!("rule[{i}].{k}");
        let t = rv.as_table().ok_or_else(|| fail(&format!("rule[{i}]"), "expected a table".into()))?;
        let mut rule = Rule { ports: Vec::new(), shadow: None, controls: defaults.clone() };
        for (k, v) in t {
            match k.as_str() {
                "port" => rule.ports = parse_ports(v).map_err(|e| fail(&field(k), e))?,
                "shadow" => {
                    let s = v
                        .as_str()
                        .ok_or_else(|| fail(&field(k), format!("expected \"HOST:PORT\", found {}", v.type_str())))?;
                    rule.shadow = Some(s.parse().map_err(|e| fail(&field(k), e))?);
                }
                k if CONTROL_KEYS.contains(&k) => {
                    apply_control(&mut rule.controls, k, v).map_err(|e| fail(&field(k), e))?
                }
                _ => return Err(fail(&field(k), "unknown key".into())),
            }
        }
        if rule.ports.is_empty() {
            return Err(fail(&field("port"), "missing: every rule needs its service port(s)".into()));
        }
        for &p in &rule.ports {
            if let Some(j) = rules.iter().position(|r| r.ports.contains(&p)) {
                return Err(fail(&field("port"), format!("port {p} is already in rule[{j}]")));
            }
        }
        rules.push(rule);
    }
    Ok(FileConfig { interface, rules })
}

fn parse_ports(v: &toml::Value) -> Result<Vec<u16>, String> {
    let one = |v: &toml::Value| match v.as_integer() {
        Some(p) if (1..=65535).contains(&p) => Ok(p as u16),
        Some(p) => Err(format!("{p} is not a TCP port (1-65535)")),
        None => Err(format!("expected a port number, found {}", v.type_str())),
    };
    let mut ports = match v {
        toml::Value::Array(a) => a.iter().map(one).collect::<Result<Vec<_>, _>>()?,
        v => vec![one(v)?],
    };
    ports.sort_unstable();
    ports.dedup();
    Ok(ports)
}

/// A string, or for numbers given as TOML numbers, their decimal text, so `5` and `"5s"` go
/// through the same parser.
fn scalar_text(v: &toml::Value, expected: &str) -> Result<String, String> {
    match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        other => Err(format!("expected {expected}, found {}", other.type_str())),
    }
}

fn string_list(v: &toml::Value) -> Result<Vec<&str>, String> {
    match v {
        toml::Value::String(s) => Ok(vec![s.as_str()]),
        toml::Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().ok_or_else(|| format!("expected a list of strings, found a {} in it", x.type_str())))
            .collect(),
        other => Err(format!("expected a string or a list of strings, found {}", other.type_str())),
    }
}

fn apply_control(c: &mut ReplayControls, key: &str, v: &toml::Value) -> Result<(), String> {
    fn each<T>(v: &toml::Value, parse: impl Fn(&str) -> Result<T, String>) -> Result<Vec<T>, String> {
        string_list(v)?.into_iter().map(parse).collect()
    }
    match key {
        "allow_method" => c.methods = MethodAllowlist::with_extra(&each(v, MethodAllowlist::parse_method)?),
        "tag_header" => c.tag_header = HeaderField::parse(v.as_str().ok_or("expected \"Name: value\"")?)?,
        "host_mode" => c.host = v.as_str().ok_or("expected keep, target or suffix:SUFFIX")?.parse()?,
        "remove_header" => c.remove_headers = each(v, HeaderName::parse)?,
        "set_header" => c.set_headers = each(v, HeaderField::parse)?,
        "allow_path" => c.allow_paths = each(v, PathPattern::parse)?,
        "deny_path" => c.deny_paths = each(v, PathPattern::parse)?,
        "replay_rate" => c.replay_rate = Some(parse_rate(&scalar_text(v, "requests per second")?)?),
        "max_body_bytes" => c.max_body_bytes = parse_bytes(&scalar_text(v, "a byte count")?)?,
        "request_timeout" => c.request_timeout = parse_duration(&scalar_text(v, "a duration")?)?,
        "connect_timeout" => c.connect_timeout = parse_duration(&scalar_text(v, "a duration")?)?,
        "concurrency" => c.concurrency = parse_concurrency(&scalar_text(v, "a number")?)?,
        "queue_capacity" => c.queue_capacity = parse_queue_capacity(&scalar_text(v, "a number")?)?,
        "queue_bytes" => c.queue_bytes = parse_byte_size(&scalar_text(v, "a byte count")?)?,
        "pool_size" => c.pool_size = parse_pool_size(&scalar_text(v, "a number")?)?,
        _ => return Err("unknown key".into()),
    }
    Ok(())
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
}
