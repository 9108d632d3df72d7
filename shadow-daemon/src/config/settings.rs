//! Every rule setting, defined once: a field of [`RuleArgs`] (what a rule matches and where it
//! sends) or of [`ControlArgs`] (what it does to the requests), written in [`settings!`] with its
//! help text, flag, environment variable and how it lands in the rule. The same field is the
//! flag (`--replay-rate`, `SHADOW_REPLAY_RATE`, parsed by clap) and the TOML key
//! (`replay_rate`, deserialized by serde with `deny_unknown_fields`), through one [`Setting`]
//! parser per kind of value and one validation, [`ControlArgs::apply`] / [`RuleArgs::apply`].
//!
//! Adding a control is adding one entry to the `settings!` invocation below.

use std::{fmt, marker::PhantomData, time::Duration};

use serde::de::{self, Deserializer, SeqAccess, Visitor};

use super::{
    UsageError, parse_percent,
    units::{parse_byte_size, parse_bytes, parse_count, parse_duration, parse_rate},
};
use crate::{
    egress::{AllowEntry, CgroupPattern, EgressConfig, EgressMode},
    http::PathPattern,
    ramp::RampConfig,
    replay::{
        Rule,
        controls::{
            HeaderField, HeaderName, HostMode, MAX_CONCURRENCY, MAX_PIPELINE, MAX_QUEUE_CAPACITY, MethodAllowlist,
            ReplayControls, ShadowBaggage, ShadowTarget, TraceMode, TraceSampled,
        },
    },
    service::ServiceMatch,
};

/// A kind of setting value: how it is parsed from text (a flag, a variable, a TOML string) and
/// what a TOML value of the wrong type is told it should have been.
pub trait Setting: Sized + Clone + Send + Sync + 'static {
    /// "expected {EXPECTED}, found boolean".
    const EXPECTED: &'static str;
    /// TOML numbers are taken as their decimal text (`5` like `"5"`).
    const NUMBERS: bool = true;
    /// TOML strings are taken (false for port numbers, which are integers in the file).
    const STRINGS: bool = true;
    /// What a list of these is called when an item has the wrong type ("expected {LIST_OF},
    /// found integer"); `None`: "expected a list of strings, found a integer in it".
    const LIST_OF: Option<&'static str> = None;
    fn parse(s: &str) -> Result<Self, String>;
}

/// [`Setting::parse`] as a clap value parser.
pub(super) fn parse<T: Setting>(s: &str) -> Result<T, String> {
    T::parse(s)
}

/// A setting kept as text until [`ControlArgs::apply`] validates it: for values whose errors must
/// not be echoed by clap (a header value may be a credential) and whose flag errors read
/// `--flag: problem`. The file checks its TOML type as `T`'s.
#[derive(Clone, PartialEq, Eq)]
pub struct Raw<T>(String, PhantomData<T>);

impl<T: Setting> Raw<T> {
    pub fn parse(&self) -> Result<T, String> {
        T::parse(&self.0)
    }
}

impl<T> fmt::Debug for Raw<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // May hold a secret header value.
        f.write_str("Raw(..)")
    }
}

impl<T> std::str::FromStr for Raw<T> {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(Self(s.to_owned(), PhantomData))
    }
}

/// What `settings!` needs of a field type: `Option<T>` or `Vec<T>`, set or not.
pub(super) trait Given {
    type Value;
    fn given(&self) -> bool;
    fn value(self) -> Option<Self::Value>;
}

impl<T> Given for Option<T> {
    type Value = T;

    fn given(&self) -> bool {
        self.is_some()
    }

    fn value(self) -> Option<T> {
        self
    }
}

impl<T> Given for Vec<T> {
    type Value = Self;

    fn given(&self) -> bool {
        !self.is_empty()
    }

    fn value(self) -> Option<Self> {
        (!self.is_empty()).then_some(self)
    }
}

/// Declares a settings struct: its fields (each with its clap and serde attributes) and, per
/// field, the statement that puts the field's value into the target (`|target, value| ...`;
/// `?` on a `Result<_, String>` names the setting in the error). `field as "key"` names a key
/// that is not a Rust identifier (with the matching `#[serde(rename)]`); `#[arg(skip)]` makes a
/// file-only key.
macro_rules! settings {
    (@key $field:ident) => {
        stringify!($field)
    };
    (@key $field:ident $key:literal) => {
        $key
    };
    (
        $(#[$smeta:meta])*
        pub struct $name:ident => $target:ty {
            $(
                $(#[$fmeta:meta])*
                $field:ident $(as $key:literal)? : $ty:ty => |$t:ident, $v:ident| $apply:expr;
            )*
        }
    ) => {
        $(#[$smeta])*
        #[derive(Clone, Debug, Default, PartialEq, clap::Args, serde::Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct $name {
            $(
                $(#[$fmeta])*
                pub $field: $ty,
            )*
        }

        impl $name {
            /// The TOML keys, which are the flags' names with `_` for `-`.
            pub const KEYS: &'static [&'static str] = &[$(settings!(@key $field $($key)?)),*];

            /// The keys of the settings given (by flag, variable or file).
            pub fn given(&self) -> Vec<&'static str> {
                let mut g = Vec::new();
                $(
                    if Given::given(&self.$field) {
                        g.push(settings!(@key $field $($key)?));
                    }
                )*
                g
            }

            /// The one validation of these settings, over `target`: every value given is checked
            /// and put in place; `name(key)` says where a key came from (`--flag`, or the file
            /// and field) in the error.
            #[allow(clippy::redundant_closure_call)]
            pub fn apply(self, target: &mut $target, name: &dyn Fn(&str) -> String) -> Result<(), UsageError> {
                $(
                    if let Some($v) = Given::value(self.$field) {
                        (|$t: &mut $target| -> Result<(), String> {
                            $apply;
                            Ok(())
                        })(target)
                        .map_err(|e| UsageError(format!("{}: {e}", name(settings!(@key $field $($key)?)))))?;
                    }
                )*
                Ok(())
            }
        }
    };
}

settings! {
    /// What a rule matches and where its requests go.
    pub struct RuleArgs => Rule {
        /// Service port(s) whose traffic is mirrored, comma separated.
        #[arg(long, short = 'p', env = "SHADOW_PORT", value_delimiter = ',', value_parser = parse::<u16>)]
        #[serde(deserialize_with = "list")]
        port: Vec<u16> => |r, v| {
            let mut v = v;
            v.sort_unstable();
            v.dedup();
            r.ports = v
        };

        /// Shadow target HOST:PORT that receives the mirrored requests (omit to capture only).
        #[arg(long, env = "SHADOW_SHADOW", value_name = "SHADOW")]
        #[serde(deserialize_with = "one")]
        shadow: Option<Raw<ShadowTarget>> => |r, v| r.shadow = Some(v.parse()?);

        /// A second instance of the current version, HOST:PORT: every replayed request also goes
        /// there, and the response fields where it and the primary already differ are learned as
        /// noise and not compared (needs a shadow and comparison on).
        #[arg(long, env = "SHADOW_SECONDARY", value_name = "SECONDARY")]
        #[serde(deserialize_with = "one")]
        secondary: Option<Raw<ShadowTarget>> => |r, v| r.secondary = Some(v.parse()?);
    }
}

settings! {
    /// Keys only a config file has, since only a file has several rules.
    pub struct FileRuleArgs => FileRule {
        /// How shadowctl and the metrics call the rule [default: rule<N>, its position].
        #[arg(skip)]
        #[serde(deserialize_with = "one")]
        name: Option<RuleName> => |r, v| r.rule.name = v.0;

        /// Services by address prefix and port (`10.42.0.0/16:8080`, `[fd00::/64]:8080`), besides
        /// or instead of `port`.
        #[arg(skip)]
        #[serde(rename = "match", deserialize_with = "list")]
        matches as "match": Vec<ServiceMatch> => |r, v| r.rule.matches = v;

        /// The rule's own sampling rate, in percent [default: --sample-rate].
        #[arg(skip)]
        #[serde(deserialize_with = "one")]
        sample_rate: Option<Percent> => |r, v| r.sample_ppm = Some(v.0);
    }
}

/// A rule of the file as its own keys leave it.
#[derive(Debug)]
pub struct FileRule {
    pub rule: Rule,
    /// `None`: the daemon's --sample-rate applies.
    pub sample_ppm: Option<u32>,
}

settings! {
    /// What a rule does to the requests it replays; see [`ReplayControls`] for the defaults.
    pub struct ControlArgs => ReplayControls {
        /// Methods replayed besides the safe default (GET, HEAD, OPTIONS), comma separated.
        #[arg(long, env = "SHADOW_ALLOW_METHOD", value_name = "ALLOW_METHOD", value_delimiter = ',')]
        #[serde(deserialize_with = "list")]
        allow_method: Vec<Raw<Method>> => |c, v| {
            let methods = v.iter().map(|m| m.parse().map(|m: Method| m.0)).collect::<Result<Vec<_>, _>>()?;
            c.methods = MethodAllowlist::with_extra(&methods)
        };

        /// Header added to every replayed request, replacing one of that name
        /// [default: "X-Shadow-Request: true"].
        // Validated in `apply`, whose errors never repeat a value (clap's would), and hidden from
        // --help, since a set header may carry a credential.
        #[arg(long, env = "SHADOW_TAG_HEADER", value_name = "NAME: VALUE", hide_env_values = true)]
        #[serde(deserialize_with = "one")]
        tag_header: Option<Raw<HeaderField>> => |c, v| c.tag_header = v.parse()?;

        /// Host header sent to the shadow: keep (the original), target (the shadow's HOST:PORT) or
        /// suffix:SUFFIX (appended to the original host name, before any port) [default: keep].
        #[arg(long, env = "SHADOW_HOST_MODE", value_name = "keep|target|suffix:SUFFIX", value_parser = parse::<HostMode>)]
        #[serde(deserialize_with = "one")]
        host_mode: Option<HostMode> => |c, v| c.host = v;

        /// Trace context of replayed requests: isolate (fresh trace and span ids in every trace
        /// header shadow knows, the production trace linked only in tracestate; headers not
        /// understood are removed) or keep (as captured) [default: isolate].
        #[arg(long, env = "SHADOW_TRACE", value_name = "isolate|keep", value_parser = parse::<TraceMode>)]
        #[serde(deserialize_with = "one")]
        trace: Option<TraceMode> => |c, v| c.trace = v;

        /// Sampling decision of a restarted trace context: inherit (the production's), always or
        /// never [default: inherit].
        #[arg(long, env = "SHADOW_TRACE_SAMPLED", value_name = "inherit|always|never", value_parser = parse::<TraceSampled>)]
        #[serde(deserialize_with = "one")]
        trace_sampled: Option<TraceSampled> => |c, v| c.trace_sampled = v;

        /// W3C baggage member added to every replayed request (after its own members), so the
        /// services behind the shadow see shadow traffic; empty for none [default: shadow=true].
        #[arg(long, env = "SHADOW_SHADOW_BAGGAGE", value_name = "KEY=VALUE", value_parser = parse::<ShadowBaggage>)]
        #[serde(deserialize_with = "one")]
        shadow_baggage: Option<ShadowBaggage> => |c, v| c.shadow_baggage = v;

        /// Headers removed before replaying (e.g. Authorization,Cookie), comma separated.
        #[arg(long, env = "SHADOW_REMOVE_HEADER", value_name = "NAME", value_delimiter = ',', value_parser = parse::<HeaderName>)]
        #[serde(deserialize_with = "list")]
        remove_header: Vec<HeaderName> => |c, v| c.remove_headers = v;

        /// Header set on every replayed request, replacing one of that name; repeat the flag for
        /// several (in SHADOW_SET_HEADER, one per line).
        #[arg(long, env = "SHADOW_SET_HEADER", value_name = "NAME: VALUE", value_delimiter = '\n', hide_env_values = true)]
        #[serde(deserialize_with = "list")]
        set_header: Vec<Raw<HeaderField>> => |c, v| {
            c.set_headers = v.iter().map(Raw::parse).collect::<Result<_, _>>()?
        };

        /// Only paths matching one of these are replayed, comma separated. A pattern without `*` is a
        /// path prefix; with `*` it is a glob over the whole path (`*` within a segment, `**` across
        /// segments). The query string is ignored; the path is normalized first (dot segments,
        /// duplicate slashes, percent-encoded unreserved characters).
        #[arg(long, env = "SHADOW_ALLOW_PATH", value_name = "PATTERN", value_delimiter = ',', value_parser = parse::<PathPattern>)]
        #[serde(deserialize_with = "list")]
        allow_path: Vec<PathPattern> => |c, v| c.allow_paths = v;

        /// Paths never replayed (same patterns as --allow-path); checked first, deny wins.
        #[arg(long, env = "SHADOW_DENY_PATH", value_name = "PATTERN", value_delimiter = ',', value_parser = parse::<PathPattern>)]
        #[serde(deserialize_with = "list")]
        deny_path: Vec<PathPattern> => |c, v| c.deny_paths = v;

        /// Most requests per second replayed to the shadow, independent of --sample-rate
        /// [default: no limit].
        #[arg(long, env = "SHADOW_REPLAY_RATE", value_name = "RPS", value_parser = parse::<Rate>)]
        #[serde(deserialize_with = "one")]
        replay_rate: Option<Rate> => |c, v| c.replay_rate = Some(v.0);

        /// Largest request body replayed (bytes after the head, chunk framing included; 512KiB,
        /// 10Mi or 1MB) [default: 10MiB].
        #[arg(long, env = "SHADOW_MAX_BODY_BYTES", value_name = "BYTES", value_parser = parse::<BodyBytes>)]
        #[serde(deserialize_with = "one")]
        max_body_bytes: Option<BodyBytes> => |c, v| c.max_body_bytes = v.0;

        /// Time for the shadow to answer completely, from the request written (e.g. 5, 2.5s, 500ms)
        /// [default: 5s].
        #[arg(long, env = "SHADOW_REQUEST_TIMEOUT", value_name = "DURATION", value_parser = parse::<Timeout>)]
        #[serde(deserialize_with = "one")]
        request_timeout: Option<Timeout> => |c, v| c.request_timeout = v.0;

        /// Time to resolve and connect to the shadow [default: 2s].
        #[arg(long, env = "SHADOW_CONNECT_TIMEOUT", value_name = "DURATION", value_parser = parse::<Timeout>)]
        #[serde(deserialize_with = "one")]
        connect_timeout: Option<Timeout> => |c, v| c.connect_timeout = v.0;

        /// Replays at once, each one request or one pipeline of up to --pipeline requests (and so
        /// connections open to the shadow) [default: 64].
        #[arg(long, env = "SHADOW_CONCURRENCY", value_name = "N", value_parser = parse::<Count<1, MAX_CONCURRENCY>>)]
        #[serde(deserialize_with = "one")]
        concurrency: Option<Count<1, MAX_CONCURRENCY>> => |c, v| c.concurrency = v.0;

        /// Requests waiting for a replay slot; beyond this they are dropped and counted [default: 1024].
        #[arg(long, env = "SHADOW_QUEUE_CAPACITY", value_name = "N", value_parser = parse::<Count<1, MAX_QUEUE_CAPACITY>>)]
        #[serde(deserialize_with = "one")]
        queue_capacity: Option<Count<1, MAX_QUEUE_CAPACITY>> => |c, v| c.queue_capacity = v.0;

        /// Request bytes held for replay (queued and in flight) per rule; beyond this requests are
        /// dropped and counted as queue_full [default: 64MiB].
        #[arg(long, env = "SHADOW_QUEUE_BYTES", value_name = "BYTES", value_parser = parse::<ByteSize>)]
        #[serde(deserialize_with = "one")]
        queue_bytes: Option<ByteSize> => |c, v| c.queue_bytes = v.0;

        /// Largest shadow response body read (bytes after the head, chunk framing included;
        /// 512KiB, 1Mi or 1MB); past it the connection is closed and the request counted as
        /// shadow_response_too_large [default: 1MiB, or the comparison's body cap if larger].
        #[arg(long, env = "SHADOW_MAX_RESPONSE_BYTES", value_name = "BYTES", value_parser = parse::<BodyBytes>)]
        #[serde(deserialize_with = "one")]
        max_response_bytes: Option<BodyBytes> => |c, v| c.max_response_bytes = Some(v.0);

        /// Idle keep-alive connections kept per shadow target [default: 64].
        #[arg(long, env = "SHADOW_POOL_SIZE", value_name = "N", value_parser = parse::<Count<0, MAX_CONCURRENCY>>)]
        #[serde(deserialize_with = "one")]
        pool_size: Option<Count<0, MAX_CONCURRENCY>> => |c, v| c.pool_size = v.0;

        /// Most requests written together on one connection to the shadow when they are waiting
        /// together (HTTP/1.1 pipelining, idempotent requests only; only the first of each write
        /// is timed; bursts the primary never saw, so for throughput, not latency comparison);
        /// 1 is off [default: 1].
        #[arg(long, env = "SHADOW_PIPELINE", value_name = "N", value_parser = parse::<Count<1, MAX_PIPELINE>>)]
        #[serde(deserialize_with = "one")]
        pipeline: Option<Count<1, MAX_PIPELINE>> => |c, v| c.pipeline = v.0;
    }
}

settings! {
    /// A rule's egress fence (`[rule.egress]`): the shadow's cgroups, what they may reach, and
    /// whether the rest is refused or only counted.
    pub struct EgressArgs => EgressConfig {
        /// cgroup v2 directories of the shadow whose outgoing connections are fenced, comma
        /// separated; globs within a component (`/sys/fs/cgroup/kubepods.slice/*/pod<uid>*`) also
        /// fence cgroups that appear later.
        #[arg(long = "egress-cgroup", env = "SHADOW_EGRESS_CGROUP", value_name = "PATH", value_delimiter = ',', value_parser = parse::<CgroupPattern>)]
        #[serde(deserialize_with = "list")]
        cgroups: Vec<CgroupPattern> => |e, v| e.cgroups = v;

        /// Destinations the fenced shadow may reach, CIDR[:PORT] (IPv6 with a port in brackets:
        /// `[fd00::/8]:443`), comma separated; nothing else is reachable (DNS included).
        #[arg(long = "egress-allow", env = "SHADOW_EGRESS_ALLOW", value_name = "CIDR[:PORT]", value_delimiter = ',', value_parser = parse::<AllowEntry>)]
        #[serde(deserialize_with = "list")]
        allow: Vec<AllowEntry> => |e, v| {
            let mut v = v;
            v.sort_unstable();
            v.dedup();
            let max = shadow_common::egress::MAX_ALLOW as usize;
            if v.len() > max {
                return Err(format!("{} entries; at most {max}", v.len()));
            }
            e.allow = v
        };

        /// What happens to a destination not allowed: enforce (refused, the call fails with
        /// EPERM) or observe (let through); counted either way [default: enforce].
        #[arg(long = "egress-mode", env = "SHADOW_EGRESS_MODE", value_name = "enforce|observe", value_parser = parse::<EgressMode>)]
        #[serde(deserialize_with = "one")]
        mode: Option<EgressMode> => |e, v| e.mode = v;
    }
}

settings! {
    /// A rule's guarded ramp (`[rule.ramp]`): the rates it steps through, how long each step
    /// lasts and how many pairs it needs, and the guards' limits.
    pub struct RampArgs => RampConfig {
        /// Ramp the rule's sampling rate through these percentages, comma separated
        /// (`1,5,10,25,50,100`), after a baseline of the primary; each step advances when its
        /// time and pairs are met and no guard finds harm; a guard that does sets the rate to 0.
        #[arg(long = "ramp", env = "SHADOW_RAMP", value_name = "PERCENT,...", value_delimiter = ',', value_parser = parse::<Percent>)]
        #[serde(deserialize_with = "list")]
        steps: Vec<Percent> => |c, v| c.steps_ppm = v.into_iter().map(|p| p.0).collect();

        /// Least time at each step, in seconds [default: 300].
        #[arg(long = "ramp-step-seconds", env = "SHADOW_RAMP_STEP_SECONDS", value_name = "SECONDS", value_parser = parse::<Count<1, 604_800>>)]
        #[serde(deserialize_with = "one")]
        step_seconds: Option<Count<1, 604_800>> => |c, v| c.step = Duration::from_secs(v.0 as u64);

        /// Compared pairs each step needs before the next [default: 200].
        #[arg(long = "ramp-min-pairs", env = "SHADOW_RAMP_MIN_PAIRS", value_name = "N", value_parser = parse::<Count<20, 100_000_000>>)]
        #[serde(deserialize_with = "one")]
        min_pairs: Option<Count<20, 100_000_000>> => |c, v| c.min_pairs = v.0 as u64;

        /// Least time measuring the primary before the first step, in seconds [default: 60].
        #[arg(long = "ramp-baseline-seconds", env = "SHADOW_RAMP_BASELINE_SECONDS", value_name = "SECONDS", value_parser = parse::<Count<1, 604_800>>)]
        #[serde(deserialize_with = "one")]
        baseline_seconds: Option<Count<1, 604_800>> => |c, v| c.baseline = Duration::from_secs(v.0 as u64);

        /// Primary responses the baseline needs [default: 2000].
        #[arg(long = "ramp-baseline-responses", env = "SHADOW_RAMP_BASELINE_RESPONSES", value_name = "N", value_parser = parse::<Count<20, 100_000_000>>)]
        #[serde(deserialize_with = "one")]
        baseline_responses: Option<Count<20, 100_000_000>> => |c, v| c.baseline_responses = v.0 as u64;

        /// The chance that a healthy shadow trips the ramp at all, over every guard and step
        /// [default: 0.05].
        #[arg(long = "ramp-alpha", env = "SHADOW_RAMP_ALPHA", value_name = "P", value_parser = parse::<Alpha>)]
        #[serde(deserialize_with = "one")]
        alpha: Option<Alpha> => |c, v| c.alpha = v.0;

        /// Errors guard: the shadow's error rate allowed beyond the primary's on the same
        /// requests, in percentage points [default: 1].
        #[arg(long = "ramp-error-excess-percent", env = "SHADOW_RAMP_ERROR_EXCESS_PERCENT", value_name = "PERCENT", value_parser = parse::<Percent>)]
        #[serde(deserialize_with = "one")]
        error_excess_percent: Option<Percent> => |c, v| c.error_excess = f64::from(v.0) / 1e6;

        /// Latency guard: the shadow/primary ratio per pair allowed at the p95 [default: 1.2].
        #[arg(long = "ramp-latency-ratio", env = "SHADOW_RAMP_LATENCY_RATIO", value_name = "RATIO", value_parser = parse::<Ratio>)]
        #[serde(deserialize_with = "one")]
        latency_ratio: Option<Ratio> => |c, v| c.latency_ratio = v.0;

        /// Latency and harm guards: an absolute floor on top of the ratio, so that noise under
        /// it never counts (a duration: 5ms) [default: 5ms].
        #[arg(long = "ramp-latency-floor", env = "SHADOW_RAMP_LATENCY_FLOOR", value_name = "DURATION", value_parser = parse::<Timeout>)]
        #[serde(deserialize_with = "one")]
        latency_floor: Option<Timeout> => |c, v| c.latency_floor = v.0;

        /// Do-no-harm guard: the primary's p99 allowed, as a ratio of its p99 before the ramp
        /// [default: 1.2].
        #[arg(long = "ramp-harm-ratio", env = "SHADOW_RAMP_HARM_RATIO", value_name = "RATIO", value_parser = parse::<Ratio>)]
        #[serde(deserialize_with = "one")]
        harm_ratio: Option<Ratio> => |c, v| c.harm_ratio = v.0;

        /// Shedding guard: the share of the rule's requests the daemon may shed (queue_full,
        /// shadow_backoff), in percent [default: 1].
        #[arg(long = "ramp-shed-percent", env = "SHADOW_RAMP_SHED_PERCENT", value_name = "PERCENT", value_parser = parse::<Percent>)]
        #[serde(deserialize_with = "one")]
        shed_percent: Option<Percent> => |c, v| c.shed = f64::from(v.0) / 1e6;
    }
}

impl RampArgs {
    /// The ramp these settings describe, or none when nothing was given; `name(key)` says where
    /// a key came from. A ramp needs its steps.
    pub fn into_ramp(self, name: &dyn Fn(&str) -> String) -> Result<Option<RampConfig>, UsageError> {
        if self.given().is_empty() {
            return Ok(None);
        }
        let mut cfg = RampConfig::default();
        let steps_given = !self.steps.is_empty();
        self.apply(&mut cfg, name)?;
        if !steps_given {
            return Err(UsageError(format!(
                "{}: missing: a ramp needs its steps (percent, e.g. 1,5,10,25,50,100)",
                name("steps")
            )));
        }
        cfg.validate().map_err(|e| UsageError(format!("{}: {e}", name("steps"))))?;
        Ok(Some(cfg))
    }

    /// The flag of a key: `--ramp` for `steps`, `--ramp-min-pairs` for `min_pairs`.
    pub fn flag(key: &str) -> String {
        if key == "steps" { "--ramp".to_owned() } else { format!("--ramp-{}", key.replace('_', "-")) }
    }
}

impl EgressArgs {
    /// The fence these settings describe, or none when nothing was given; `name(key)` says where
    /// a key came from. A fence needs its cgroups.
    pub fn into_fence(self, name: &dyn Fn(&str) -> String) -> Result<Option<EgressConfig>, UsageError> {
        if self.given().is_empty() {
            return Ok(None);
        }
        let mut cfg = EgressConfig::default();
        self.apply(&mut cfg, name)?;
        if cfg.cgroups.is_empty() {
            return Err(UsageError(format!(
                "{}: missing: an egress fence needs the shadow's cgroup(s)",
                name("cgroups")
            )));
        }
        Ok(Some(cfg))
    }

    /// The flag of a key: `--egress-cgroup` for `cgroups`.
    pub fn flag(key: &str) -> String {
        let k = if key == "cgroups" { "cgroup" } else { key };
        format!("--egress-{k}")
    }
}

impl RuleArgs {
    /// The rule these settings describe over `controls`.
    pub fn into_rule(self, controls: ReplayControls, name: &dyn Fn(&str) -> String) -> Result<Rule, UsageError> {
        let mut rule = Rule::new(Vec::new(), None, controls);
        self.apply(&mut rule, name)?;
        // Comparing is what a shadow is for: on by default, with the default (modest) body cap.
        rule.compare = rule.shadow.is_some().then(crate::compare::CompareSettings::default);
        Ok(rule)
    }
}

// The kinds of values. Each is parsed by the same function for flags and file.

/// A method to replay besides the safe default (upper-cased).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Method(pub String);

/// Requests per second, above 0.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate(pub f64);

/// A body size: at most 1 GiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyBytes(pub u64);

/// A cap on memory: any byte count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

/// A timeout: above 0, at most an hour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeout(pub Duration);

/// A rule's name: it appears in metric labels and on command lines, so it stays plain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleName(pub String);

/// A sampling rate in percent, held in parts per million.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Percent(pub u32);

/// A ratio above 1 (a latency limit), at most 100.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ratio(pub f64);

/// A probability in (0, 0.5].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Alpha(pub f64);

/// A count between `MIN` and `MAX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Count<const MIN: usize, const MAX: usize>(pub usize);

impl Setting for u16 {
    const EXPECTED: &'static str = "a port number";
    const STRINGS: bool = false;

    fn parse(s: &str) -> Result<Self, String> {
        match s.trim().parse::<u16>() {
            Ok(0) => Err("0 is not a TCP port (1-65535)".into()),
            Ok(p) => Ok(p),
            Err(_) => Err(format!("{s} is not a TCP port (1-65535)")),
        }
    }
}

/// `Setting` for a value kind: `text` ones refuse TOML numbers.
macro_rules! setting {
    ($ty:ty, $expected:literal, text, $parse:expr) => {
        impl Setting for $ty {
            const EXPECTED: &'static str = $expected;
            const NUMBERS: bool = false;

            fn parse(s: &str) -> Result<Self, String> {
                ($parse)(s)
            }
        }
    };
    ($ty:ty, $expected:literal, $parse:expr) => {
        impl Setting for $ty {
            const EXPECTED: &'static str = $expected;

            fn parse(s: &str) -> Result<Self, String> {
                ($parse)(s)
            }
        }
    };
}

setting!(ShadowTarget, "\"HOST:PORT\"", text, str::parse);
setting!(Method, "an HTTP method", text, |s| MethodAllowlist::parse_method(s).map(Method));
setting!(HeaderField, "\"Name: value\"", text, HeaderField::parse);
setting!(HeaderName, "a header name", text, HeaderName::parse);
setting!(HostMode, "keep, target or suffix:SUFFIX", text, str::parse);
setting!(TraceMode, "isolate or keep", text, str::parse);
setting!(TraceSampled, "inherit, always or never", text, str::parse);
setting!(ShadowBaggage, "\"KEY=VALUE\" (or \"\")", text, str::parse);
setting!(PathPattern, "a path pattern", text, PathPattern::parse);
setting!(EgressMode, "enforce or observe", text, str::parse);

impl Setting for CgroupPattern {
    const EXPECTED: &'static str = "a cgroup v2 path";
    const NUMBERS: bool = false;
    const LIST_OF: Option<&'static str> = Some("cgroup v2 path strings");

    fn parse(s: &str) -> Result<Self, String> {
        s.parse()
    }
}

impl Setting for AllowEntry {
    const EXPECTED: &'static str = "CIDR[:PORT]";
    const NUMBERS: bool = false;
    const LIST_OF: Option<&'static str> = Some("CIDR[:PORT] strings");

    fn parse(s: &str) -> Result<Self, String> {
        s.parse()
    }
}
setting!(Rate, "requests per second", |s| parse_rate(s).map(Rate));
setting!(BodyBytes, "a byte count", |s| parse_bytes(s).map(BodyBytes));
setting!(ByteSize, "a byte count", |s| parse_byte_size(s).map(ByteSize));
setting!(Timeout, "a duration", |s| parse_duration(s).map(Timeout));
impl Setting for Percent {
    const EXPECTED: &'static str = "a percentage";
    const LIST_OF: Option<&'static str> = Some("percentages");

    fn parse(s: &str) -> Result<Self, String> {
        parse_percent(s).map(Percent)
    }
}
setting!(Ratio, "a ratio above 1", |s: &str| match s.trim().parse::<f64>() {
    Ok(v) if v.is_finite() && v > 1.0 && v <= 100.0 => Ok(Ratio(v)),
    _ => Err(format!("'{s}' is not a ratio above 1 and at most 100 (e.g. 1.2)")),
});
setting!(Alpha, "a probability", |s: &str| match s.trim().parse::<f64>() {
    Ok(v) if v.is_finite() && v > 0.0 && v <= 0.5 => Ok(Alpha(v)),
    _ => Err(format!("'{s}' is not a probability above 0 and at most 0.5 (e.g. 0.05)")),
});
setting!(RuleName, "a name", text, |s: &str| {
    let n = s.trim();
    let plain = n.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if n.is_empty() || n.len() > 64 || !plain {
        return Err("expected a name of letters, digits, '-', '_' or '.' (at most 64)".to_owned());
    }
    Ok(RuleName(n.to_owned()))
});

impl Setting for ServiceMatch {
    const EXPECTED: &'static str = "ADDR[/PREFIX]:PORT";
    const NUMBERS: bool = false;
    const LIST_OF: Option<&'static str> = Some("ADDR[/PREFIX]:PORT strings");

    fn parse(s: &str) -> Result<Self, String> {
        s.parse()
    }
}

impl<const MIN: usize, const MAX: usize> Setting for Count<MIN, MAX> {
    const EXPECTED: &'static str = "a number";

    fn parse(s: &str) -> Result<Self, String> {
        parse_count(s, MIN, MAX).map(Count)
    }
}

/// A TOML value as a setting's text: strings as they are, numbers as their decimal text, the
/// rest refused with what was expected.
trait FromText: Sized {
    const EXPECTED: &'static str;
    const NUMBERS: bool;
    const STRINGS: bool;
    const LIST_OF: Option<&'static str>;
    fn from_text(s: &str) -> Result<Self, String>;
}

impl<T: Setting> FromText for T {
    const EXPECTED: &'static str = T::EXPECTED;
    const NUMBERS: bool = T::NUMBERS;
    const STRINGS: bool = T::STRINGS;
    const LIST_OF: Option<&'static str> = T::LIST_OF;

    fn from_text(s: &str) -> Result<Self, String> {
        T::parse(s)
    }
}

impl<T: Setting> FromText for Raw<T> {
    const EXPECTED: &'static str = T::EXPECTED;
    const NUMBERS: bool = T::NUMBERS;
    const STRINGS: bool = T::STRINGS;
    const LIST_OF: Option<&'static str> = T::LIST_OF;

    fn from_text(s: &str) -> Result<Self, String> {
        Ok(Self(s.to_owned(), PhantomData))
    }
}

struct TextVisitor<T>(PhantomData<T>);

impl<T: FromText> TextVisitor<T> {
    fn refuse<E: de::Error>(found: &str) -> E {
        E::custom(format!("expected {}, found {found}", T::EXPECTED))
    }

    fn number<E: de::Error>(text: String, found: &str) -> Result<T, E> {
        if T::NUMBERS { T::from_text(&text).map_err(E::custom) } else { Err(Self::refuse(found)) }
    }
}

impl<'de, T: FromText> Visitor<'de> for TextVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(T::EXPECTED)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        if T::STRINGS { T::from_text(v).map_err(E::custom) } else { Err(Self::refuse("string")) }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        Self::number(v.to_string(), "integer")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        Self::number(v.to_string(), "integer")
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        Self::number(v.to_string(), "float")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<T, E> {
        Err(Self::refuse("boolean"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<T, A::Error> {
        Err(Self::refuse("array"))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<T, A::Error> {
        Err(Self::refuse("table"))
    }
}

/// One value: `key = "..."` (or a number).
fn one<'de, D: Deserializer<'de>, T: FromText>(d: D) -> Result<Option<T>, D::Error> {
    d.deserialize_any(TextVisitor::<T>(PhantomData)).map(Some)
}

/// A list: `key = ["a", "b"]`, or one value alone.
fn list<'de, D: Deserializer<'de>, T: FromText>(d: D) -> Result<Vec<T>, D::Error> {
    struct ListVisitor<T>(PhantomData<T>);

    impl<'de, T: FromText> Visitor<'de> for ListVisitor<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::new();
            while let Some(item) = seq.next_element_seed(Item::<T>(PhantomData))? {
                out.push(item);
            }
            Ok(out)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<T>, E> {
            TextVisitor::<T>(PhantomData).visit_str(v).map(|x| vec![x])
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Vec<T>, E> {
            TextVisitor::<T>(PhantomData).visit_i64(v).map(|x| vec![x])
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Vec<T>, E> {
            TextVisitor::<T>(PhantomData).visit_f64(v).map(|x| vec![x])
        }

        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Vec<T>, E> {
            Err(list_refused(T::STRINGS, "boolean"))
        }

        fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<Vec<T>, A::Error> {
            Err(list_refused(T::STRINGS, "table"))
        }
    }

    /// A list element: of the list's own type, or the list is refused as a whole.
    struct Item<T>(PhantomData<T>);

    impl<'de, T: FromText> de::DeserializeSeed<'de> for Item<T> {
        type Value = T;

        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
            d.deserialize_any(ItemVisitor::<T>(PhantomData))
        }
    }

    struct ItemVisitor<T>(PhantomData<T>);

    impl<T: FromText> ItemVisitor<T> {
        fn refuse<E: de::Error>(found: &str) -> E {
            if let Some(list) = T::LIST_OF {
                return E::custom(format!("expected {list}, found {found}"));
            }
            let what = if T::STRINGS { "strings" } else { "numbers" };
            E::custom(format!("expected a list of {what}, found a {found} in it"))
        }
    }

    impl<'de, T: FromText> Visitor<'de> for ItemVisitor<T> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(T::EXPECTED)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            if T::STRINGS { T::from_text(v).map_err(E::custom) } else { Err(Self::refuse("string")) }
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
            if T::NUMBERS || !T::STRINGS {
                T::from_text(&v.to_string()).map_err(E::custom)
            } else {
                Err(Self::refuse("integer"))
            }
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
            if T::NUMBERS { T::from_text(&v.to_string()).map_err(E::custom) } else { Err(Self::refuse("float")) }
        }

        fn visit_bool<E: de::Error>(self, _: bool) -> Result<T, E> {
            Err(Self::refuse("boolean"))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<T, A::Error> {
            Err(Self::refuse("array"))
        }

        fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<T, A::Error> {
            Err(Self::refuse("table"))
        }
    }

    d.deserialize_any(ListVisitor::<T>(PhantomData))
}

fn list_refused<E: de::Error>(strings: bool, found: &str) -> E {
    let what = if strings { "a string or a list of strings" } else { "a number or a list of numbers" };
    E::custom(format!("expected {what}, found {found}"))
}
