//! The mirror benchmark: what mirroring costs the primary (nginx in a namespace serving a 1 KiB
//! file to ~1 KiB requests from another namespace).
//!
//! Three groups of arms, each run in rounds (at least 3) in which every arm of the group runs
//! once, the order changing from round to round (forward, reversed, rotated) so that drift of the
//! machine (neighbours, thermal, page cache) does not land on one arm:
//! - saturating: wrk, closed loop, as fast as nginx answers;
//! - fixed rate: oha, open loop at half of the no-mirror saturation median, latency counted from
//!   when each request was due (no coordinated omission);
//! - 64 KiB POST bodies: wrk at saturation, mirrored Gbit/s and loss.
//!
//! Each arm is reported as medians over rounds with min-max spread; ratios are medians of the
//! ratio to the no-mirror arm of the same round. Daemon arms add the daemon's CPU per captured
//! and per mirrored request (utime+stime from /proc), peak RSS and `ringbuf_full`.

use std::{path::Path, time::Duration};

use serde::Serialize;
use shadow_tests::{Proc, Scratch, server::Options, topo::TwoHosts, wait_for};

use crate::load::{self, BIG_BODY, Daemon, DaemonSpec, Load, PORT};

const HEALTHY_SHADOW: u16 = 9090;
const SLOW_SHADOW: u16 = 9091;
/// wrk's connections in the saturating arms.
const WRK_CONNS: u32 = 16;

#[derive(Clone, Copy)]
struct ArmSpec {
    key: &'static str,
    name: &'static str,
    nginx_mirror: Option<u16>,
    daemon: Option<DaemonSpec>,
    /// Also run in the fixed-rate group (every arm runs at saturation). The arms that only
    /// compare ways of running the daemon stay out of it, to keep the bench short.
    fixed: bool,
    /// No daemon: the bare replay client (`shadow-floor --mode MODE`) against the healthy
    /// shadow while wrk loads the primary, for the least a replay costs next to the daemon's.
    floor: Option<&'static str>,
    /// Run only when `--arms` names it (trials that would lengthen every full run).
    named_only: bool,
}

const fn daemon_with(shadow: Option<u16>, sample_rate: u32, extra: &'static [&'static str]) -> Option<DaemonSpec> {
    Some(DaemonSpec { shadow, sample_rate, allow_post: false, extra, bin: None })
}

const fn daemon(shadow: Option<u16>, sample_rate: u32) -> Option<DaemonSpec> {
    daemon_with(shadow, sample_rate, &[])
}

/// What an arm is unless it says otherwise: no mirror, no daemon, no floor, saturating only,
/// in every run.
const ARM: ArmSpec =
    ArmSpec { key: "", name: "", nginx_mirror: None, daemon: None, fixed: false, floor: None, named_only: false };

const ARMS: &[ArmSpec] = &[
    ArmSpec { key: "none", name: "no mirror", nginx_mirror: None, daemon: None, fixed: true, ..ARM },
    ArmSpec {
        key: "capture",
        name: "shadow-daemon, capture only (no replay)",
        nginx_mirror: None,
        daemon: daemon(None, 100),
        fixed: true,
        ..ARM
    },
    // One runtime thread (the default) against two, where the daemon only captures.
    ArmSpec {
        key: "capture-threads2",
        name: "shadow-daemon, capture only, --threads 2",
        nginx_mirror: None,
        daemon: daemon_with(None, 100, &["--threads", "2"]),
        fixed: false,
        ..ARM
    },
    ArmSpec {
        key: "healthy",
        name: "shadow-daemon, healthy shadow, 100 %",
        nginx_mirror: None,
        daemon: daemon(Some(HEALTHY_SHADOW), 100),
        fixed: true,
        ..ARM
    },
    // The replay engine as it was before pipelines and one thread, side by side with the default.
    ArmSpec {
        key: "healthy-before",
        name: "shadow-daemon, healthy shadow, 100 %, --threads 2 --pipeline 1",
        nginx_mirror: None,
        daemon: daemon_with(Some(HEALTHY_SHADOW), 100, &["--threads", "2", "--pipeline", "1"]),
        fixed: false,
        ..ARM
    },
    ArmSpec {
        key: "slow",
        name: "shadow-daemon, shadow answering after 1 s, 100 %",
        nginx_mirror: None,
        daemon: daemon(Some(SLOW_SHADOW), 100),
        fixed: true,
        ..ARM
    },
    ArmSpec {
        key: "healthy10",
        name: "shadow-daemon, healthy shadow, 10 %",
        nginx_mirror: None,
        daemon: daemon(Some(HEALTHY_SHADOW), 10),
        fixed: true,
        ..ARM
    },
    ArmSpec {
        key: "nginx-healthy",
        name: "nginx mirror (in path), healthy shadow",
        nginx_mirror: Some(HEALTHY_SHADOW),
        daemon: None,
        fixed: true,
        ..ARM
    },
    ArmSpec {
        key: "nginx-slow",
        name: "nginx mirror (in path), shadow after 1 s",
        nginx_mirror: Some(SLOW_SHADOW),
        daemon: None,
        fixed: true,
        ..ARM
    },
    // The floor: what the daemon's replay does per request and nothing else, with the daemon's
    // own timestamp calls (the daemon's CPU per mirrored request is set against it).
    ArmSpec {
        key: "floor",
        name: "floor: bare replay client, epoll, timed as the daemon times",
        floor: Some("epoll-ts"),
        ..ARM
    },
    ArmSpec {
        key: "floor-epoll",
        name: "floor: bare replay client, epoll, untimed",
        floor: Some("epoll"),
        named_only: true,
        ..ARM
    },
    ArmSpec {
        key: "floor-uring",
        name: "floor: bare replay client, io_uring, untimed",
        floor: Some("uring"),
        named_only: true,
        ..ARM
    },
    ArmSpec {
        key: "floor-tokio",
        name: "floor: bare replay client, tokio tasks, untimed",
        floor: Some("tokio"),
        named_only: true,
        ..ARM
    },
];

/// Another build of the daemon, or this one with other flags, run side by side with the default
/// (`--alt-daemon PATH`, `--alt-args "FLAGS"`, `--alt-label TEXT`): capture only and healthy
/// shadow at 100 % and 10 %, at saturation, next to the same arms run the default way. For A/B of a change (an
/// allocator, a constant, a flag's default).
#[derive(Clone, Debug)]
pub(crate) struct Alt {
    /// None: `SHADOW_BIN_DIR`'s daemon.
    pub bin: Option<String>,
    pub args: Vec<String>,
    pub label: String,
}

fn arms(alt: Option<&Alt>) -> Vec<ArmSpec> {
    let mut v = ARMS.to_vec();
    if let Some(a) = alt {
        // The bench runs once per process: leaking a few strings gives the arms 'static names.
        let bin: Option<&'static str> = a.bin.clone().map(|b| &*Box::leak(b.into_boxed_str()));
        let extra: &'static [&'static str] =
            Box::leak(a.args.iter().map(|x| &*Box::leak(x.clone().into_boxed_str())).collect::<Vec<&str>>().into());
        let name = |what: &str| -> &'static str { Box::leak(format!("{what} [{}]", a.label).into_boxed_str()) };
        v.push(ArmSpec {
            key: "capture-alt",
            name: name("shadow-daemon, capture only"),
            nginx_mirror: None,
            daemon: Some(DaemonSpec { bin, extra, ..daemon(None, 100).expect("daemon") }),
            fixed: false,
            ..ARM
        });
        v.push(ArmSpec {
            key: "healthy-alt",
            name: name("shadow-daemon, healthy shadow, 100 %"),
            nginx_mirror: None,
            daemon: Some(DaemonSpec { bin, extra, ..daemon(Some(HEALTHY_SHADOW), 100).expect("daemon") }),
            fixed: false,
            ..ARM
        });
        v.push(ArmSpec {
            key: "healthy10-alt",
            name: name("shadow-daemon, healthy shadow, 10 %"),
            nginx_mirror: None,
            daemon: Some(DaemonSpec { bin, extra, ..daemon(Some(HEALTHY_SHADOW), 10).expect("daemon") }),
            fixed: false,
            ..ARM
        });
    }
    v
}

const BIG_ARMS: &[ArmSpec] = &[
    ArmSpec { key: "none", name: "64 KiB POST: no mirror", nginx_mirror: None, daemon: None, fixed: false, ..ARM },
    ArmSpec {
        key: "healthy",
        name: "64 KiB POST: shadow-daemon, healthy shadow, 100 % (POST allowed)",
        nginx_mirror: None,
        daemon: Some(DaemonSpec {
            shadow: Some(HEALTHY_SHADOW),
            sample_rate: 100,
            allow_post: true,
            extra: &[],
            bin: None,
        }),
        fixed: false,
        ..ARM
    },
];

/// One arm run once.
#[derive(Serialize, Clone, Debug, Default)]
pub(crate) struct Sample {
    pub round: usize,
    /// Position of the arm in its round (0 = first).
    pub position: usize,
    pub requests: u64,
    pub errors: u64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub secs: f64,
    pub captured: Option<u64>,
    pub replayed: Option<u64>,
    pub daemon_cpu_s: Option<f64>,
    pub peak_rss_mib: Option<f64>,
    pub ringbuf_full: Option<u64>,
    pub drops: Option<serde_json::Value>,
    /// Requests per write to the shadow (pipelines: `(writes + pipelined) / writes`).
    pub requests_per_write: Option<f64>,
    /// The daemon's wake-ups (voluntary context switches of its threads) over the load.
    pub wakeups: Option<u64>,
    /// A floor arm: what the bare replay client measured.
    pub floor: Option<load::FloorRun>,
}

/// Median and spread over rounds.
#[derive(Serialize, Clone, Copy, Debug, Default)]
pub(crate) struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub(crate) fn of(v: impl IntoIterator<Item = f64>) -> Option<Self> {
        let mut v: Vec<f64> = v.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Some(Self { median, min: v[0], max: v[n - 1] })
    }

    fn fmt(o: Option<Self>, digits: usize) -> String {
        o.map_or("-".into(), |s| format!("{:.d$} ({:.d$}-{:.d$})", s.median, s.min, s.max, d = digits))
    }
}

#[derive(Serialize, Clone, Debug, Default)]
pub(crate) struct ArmSummary {
    pub group: String,
    pub key: String,
    pub arm: String,
    pub rps: Option<Spread>,
    pub p50_ms: Option<Spread>,
    pub p99_ms: Option<Spread>,
    /// Per round: this arm's requests/s over the no-mirror arm's in the same round.
    pub throughput_ratio: Option<Spread>,
    pub p99_ratio: Option<Spread>,
    pub errors: u64,
    pub captured_fraction: Option<Spread>,
    pub mirrored_fraction: Option<Spread>,
    /// Daemon CPU over requests captured whole.
    pub cpu_us_per_captured: Option<Spread>,
    /// Daemon CPU over requests replayed to the shadow.
    pub cpu_us_per_mirrored: Option<Spread>,
    pub peak_rss_mib: Option<f64>,
    pub ringbuf_full: Option<u64>,
    /// Dropped requests by reason, summed over rounds.
    pub drops: Option<serde_json::Value>,
    /// 64 KiB arm: request bytes replayed to the shadow per second.
    pub mirrored_gbit_s: Option<Spread>,
    /// Requests per write to the shadow (1: every request alone).
    pub requests_per_write: Option<Spread>,
    /// The daemon's wake-ups per 1000 requests captured.
    pub wakeups_per_1k_captured: Option<Spread>,
    /// Floor arms: the bare client's requests/s, CPU per request, syscalls per request (where
    /// it counts them) and wake-ups per 1000 requests.
    pub floor_rps: Option<Spread>,
    pub floor_cpu_us_per_request: Option<Spread>,
    pub floor_syscalls_per_request: Option<Spread>,
    pub floor_wakeups_per_1k: Option<Spread>,
    pub samples: Vec<Sample>,
}

#[derive(Serialize)]
pub(crate) struct MirrorResults {
    pub date: String,
    pub command: String,
    pub rounds: usize,
    pub secs_per_arm: u32,
    pub request_bytes: usize,
    pub big_request_bytes: usize,
    pub saturating_load: String,
    pub fixed_load: String,
    pub big_load: String,
    /// The fixed rate: half the median no-mirror saturating throughput.
    pub fixed_rate: f64,
    /// Whether the fixed-rate arms ran with oha (open loop) or fell back to hey (closed loop).
    pub open_loop: bool,
    pub load_average_before: String,
    pub load_average_after: String,
    pub arms: Vec<ArmSummary>,
}

/// Arm order in round `r`: forward, reversed, then rotations, so no arm always runs first or
/// right after the same neighbour.
fn order(n: usize, r: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    if r % 2 == 1 {
        v.reverse();
    }
    v.rotate_left((r / 2 * (n / 2 + 1)) % n);
    v
}

enum Kind {
    Saturating,
    Fixed { rate: f64, oha: Option<std::path::PathBuf> },
    Big,
}

struct Bed {
    t: TwoHosts,
    scratch: Scratch,
    url: String,
    big_url: String,
    pad: String,
    /// What the floor client writes: wrk's request as the daemon replays it (tagged).
    floor_request: String,
    _healthy: Proc,
    _slow: Proc,
}

impl Bed {
    fn new() -> Self {
        let t = TwoHosts::new("mb");
        let scratch = Scratch::new("mb");
        // Requests of about 1 KiB on the wire: wrk's request line and headers plus this pad.
        let pad = "p".repeat(1024 - 120);
        let url = format!("http://{}:{PORT}/item", t.server_v4);
        let big_url = format!("http://{}:{PORT}/upload", t.server_v4);
        let healthy = load::nginx(&t.server, &scratch.path("shadow-nginx"), HEALTHY_SHADOW, None);
        let slow = Options::new()
            .delay(Duration::from_secs(1))
            .response_bytes(1024)
            .spawn(&t.server, &format!("127.0.0.1:{SLOW_SHADOW}"));
        let floor_request = format!(
            "GET /item HTTP/1.1\r\nHost: {}:{PORT}\r\nX-Pad: {pad}\r\nX-Shadow-Request: true\r\nbaggage: shadow=true\r\n\r\n",
            t.server_v4
        );
        Self { t, scratch, url, big_url, pad, floor_request, _healthy: healthy, _slow: slow }
    }

    fn run(&self, spec: &ArmSpec, kind: &Kind, secs: u32, round: usize, position: usize) -> Sample {
        let tag: String = format!("{}-{}-{round}", spec.key, position)
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        let primary =
            load::nginx(&self.t.server, &self.scratch.path(&format!("primary-{tag}")), PORT, spec.nginx_mirror);
        let daemon = spec.daemon.map(|d| Daemon::start(&self.t, &self.scratch, d, &tag));
        let cpu0 = daemon.as_ref().map(|d| load::cpu_and_rss(d.pid()).0);
        let wake0 = daemon.as_ref().map(|d| load::wakeups(d.pid()));
        let floor =
            spec.floor.map(|mode| load::Floor::start(&self.t.server, mode, HEALTHY_SHADOW, secs, &self.floor_request));
        let w: Load = match kind {
            Kind::Saturating => load::wrk(&self.t.client, &self.url, secs, WRK_CONNS, &self.pad, None),
            Kind::Big => {
                load::wrk(&self.t.client, &self.big_url, secs, WRK_CONNS, "b", Some((BIG_BODY, &self.scratch)))
            }
            Kind::Fixed { rate, oha: Some(o) } => load::oha(o, &self.t.client, &self.url, secs, *rate, &self.pad),
            Kind::Fixed { rate, oha: None } => {
                load::hey(&self.t.client, &self.url, secs, 32, (*rate / 32.0).max(1.0) as u32, &self.pad)
            }
        };
        let mut s = Sample {
            round,
            position,
            requests: w.requests,
            errors: w.errors,
            rps: w.rps,
            p50_ms: w.p50_ms,
            p99_ms: w.p99_ms,
            secs: w.secs,
            floor: floor.map(load::Floor::finish),
            ..Default::default()
        };
        if let Some(d) = daemon {
            let (cpu1, rss) = load::cpu_and_rss(d.pid());
            s.wakeups = Some(load::wakeups(d.pid()).saturating_sub(wake0.unwrap_or(0)));
            // Let the last replays finish before the daemon is told to stop.
            std::thread::sleep(Duration::from_millis(300));
            let summary = d.stop(spec.name);
            let m = &summary["mirror"]["requests"];
            s.captured = m["captured"].as_u64();
            s.replayed = m["replayed"].as_u64();
            s.daemon_cpu_s = Some(cpu1 - cpu0.unwrap_or(0.0));
            s.peak_rss_mib = Some(rss);
            s.ringbuf_full = summary["kernel"]["ringbuf_full"].as_u64();
            let writes = summary["mirror"]["replay_writes"].as_u64().unwrap_or(0);
            let behind = summary["mirror"]["replay_pipelined"].as_u64().unwrap_or(0);
            s.requests_per_write = (writes > 0).then(|| (writes + behind) as f64 / writes as f64);
            let drops: serde_json::Map<String, serde_json::Value> = m["dropped"]
                .as_object()
                .map(|o| {
                    o.iter().filter(|(_, v)| v.as_u64().unwrap_or(0) > 0).map(|(k, v)| (k.clone(), v.clone())).collect()
                })
                .unwrap_or_default();
            s.drops = Some(serde_json::Value::Object(drops));
        }
        let mut primary = primary;
        primary.terminate(Duration::from_secs(10));
        wait_for("primary to stop", Duration::from_secs(10), || !self.t.server.listening(PORT));
        println!(
            "  round {round} #{position} {:<58} {:>8.0} req/s  p50 {:>8.3} ms  p99 {:>8.3} ms  err {}{}",
            spec.name,
            s.rps,
            s.p50_ms,
            s.p99_ms,
            s.errors,
            match (s.captured, s.replayed, s.daemon_cpu_s, &s.floor) {
                (_, _, _, Some(f)) => format!(
                    "  floor: {} requests  cpu {:.2}s  {:.2} us/request  syscalls {}  wake-ups {}",
                    f.requests,
                    f.cpu_s,
                    f.cpu_s * 1e6 / f.requests.max(1) as f64,
                    f.syscalls.map_or("-".into(), |n| n.to_string()),
                    f.wakeups
                ),
                (Some(c), Some(r), Some(cpu), None) => format!(
                    "  captured {c}/{} replayed {r}  cpu {cpu:.2}s  wake-ups {}  rss {:.0} MiB  ringbuf_full {}  per write {}  drops {}",
                    s.requests,
                    s.wakeups.unwrap_or(0),
                    s.peak_rss_mib.unwrap_or(0.0),
                    s.ringbuf_full.unwrap_or(0),
                    s.requests_per_write.map_or("-".into(), |p| format!("{p:.1}")),
                    s.drops.as_ref().map_or(String::new(), |d| d.to_string())
                ),
                _ => String::new(),
            }
        );
        s
    }

    /// Every arm of `arms` once per round, in a different order each round.
    fn rounds(
        &self,
        group: &str,
        arms: &[ArmSpec],
        kind: &Kind,
        secs: u32,
        rounds: usize,
        request_bytes: usize,
    ) -> Vec<ArmSummary> {
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); arms.len()];
        for r in 0..rounds {
            println!("{group}: round {} of {rounds}", r + 1);
            for (pos, i) in order(arms.len(), r).into_iter().enumerate() {
                samples[i].push(self.run(&arms[i], kind, secs, r, pos));
            }
        }
        let base = &samples[0];
        arms.iter().zip(samples.iter()).map(|(spec, ss)| summarise(group, spec, ss, base, request_bytes)).collect()
    }
}

fn summarise(group: &str, spec: &ArmSpec, ss: &[Sample], base: &[Sample], request_bytes: usize) -> ArmSummary {
    let paired = |f: &dyn Fn(&Sample) -> f64| {
        Spread::of(ss.iter().filter_map(|s| base.iter().find(|b| b.round == s.round).map(|b| f(s) / f(b))))
    };
    let per = |num: &dyn Fn(&Sample) -> Option<f64>, den: &dyn Fn(&Sample) -> Option<u64>| {
        Spread::of(ss.iter().filter_map(|s| match (num(s), den(s)) {
            (Some(n), Some(d)) if d > 0 => Some(n / d as f64),
            _ => None,
        }))
    };
    let is_daemon = spec.daemon.is_some();
    let mut drops = serde_json::Map::new();
    for s in ss {
        if let Some(serde_json::Value::Object(o)) = &s.drops {
            for (k, v) in o {
                let prev = drops.get(k).and_then(|p| p.as_u64()).unwrap_or(0);
                drops.insert(k.clone(), (prev + v.as_u64().unwrap_or(0)).into());
            }
        }
    }
    let replays = spec.daemon.is_some_and(|d| d.shadow.is_some());
    let floor = |f: &dyn Fn(&load::FloorRun) -> Option<f64>| {
        Spread::of(ss.iter().filter_map(|s| s.floor.as_ref().filter(|r| r.requests > 0).and_then(f)))
    };
    ArmSummary {
        group: group.into(),
        key: spec.key.into(),
        arm: spec.name.into(),
        rps: Spread::of(ss.iter().map(|s| s.rps)),
        p50_ms: Spread::of(ss.iter().map(|s| s.p50_ms)),
        p99_ms: Spread::of(ss.iter().map(|s| s.p99_ms)),
        throughput_ratio: paired(&|s| s.rps),
        p99_ratio: paired(&|s| s.p99_ms),
        errors: ss.iter().map(|s| s.errors).sum(),
        captured_fraction: if is_daemon { per(&|s| s.captured.map(|c| c as f64), &|s| Some(s.requests)) } else { None },
        mirrored_fraction: if replays { per(&|s| s.replayed.map(|c| c as f64), &|s| Some(s.requests)) } else { None },
        cpu_us_per_captured: if is_daemon { per(&|s| s.daemon_cpu_s.map(|c| c * 1e6), &|s| s.captured) } else { None },
        cpu_us_per_mirrored: if replays { per(&|s| s.daemon_cpu_s.map(|c| c * 1e6), &|s| s.replayed) } else { None },
        peak_rss_mib: ss.iter().filter_map(|s| s.peak_rss_mib).reduce(f64::max),
        ringbuf_full: if is_daemon { Some(ss.iter().filter_map(|s| s.ringbuf_full).sum()) } else { None },
        drops: is_daemon.then_some(serde_json::Value::Object(drops)),
        requests_per_write: if replays { Spread::of(ss.iter().filter_map(|s| s.requests_per_write)) } else { None },
        wakeups_per_1k_captured: if is_daemon {
            per(&|s| s.wakeups.map(|w| w as f64 * 1000.0), &|s| s.captured)
        } else {
            None
        },
        mirrored_gbit_s: if replays && group == "64 KiB POST" {
            Spread::of(
                ss.iter().filter_map(|s| s.replayed.map(|r| r as f64 * request_bytes as f64 * 8.0 / s.secs / 1e9)),
            )
        } else {
            None
        },
        floor_rps: floor(&|f| Some(f.requests as f64 / f.secs)),
        floor_cpu_us_per_request: floor(&|f| Some(f.cpu_s * 1e6 / f.requests as f64)),
        floor_syscalls_per_request: floor(&|f| f.syscalls.map(|n| n as f64 / f.requests as f64)),
        floor_wakeups_per_1k: floor(&|f| Some(f.wakeups as f64 * 1000.0 / f.requests as f64)),
        samples: ss.to_vec(),
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The keys `--arms` takes: every arm's (with `alt`'s), and `big` for the 64 KiB group.
pub(crate) fn arm_keys(alt: Option<&Alt>) -> Vec<&'static str> {
    arms(alt).iter().map(|a| a.key).chain(["big"]).collect()
}

/// `only`: the keys of the arms to run (`--arms none,healthy,healthy-alt`, for a quick look at
/// a change; `none`, the baseline of every ratio, always runs, and the 64 KiB group only with
/// `big`); `None`, every arm.
pub(crate) fn mirror_bench(
    quick: bool,
    date: String,
    command: String,
    alt: Option<&Alt>,
    only: Option<&[String]>,
) -> MirrorResults {
    let secs = if quick { 2 } else { 4 };
    let rounds = if quick { 3 } else { 5 };
    let load_average_before = loadavg();
    let bed = Bed::new();
    let request_bytes =
        format!("GET /item HTTP/1.1\r\nHost: {}:{PORT}\r\nX-Pad: {}\r\n\r\n", bed.t.server_v4, bed.pad).len();
    let big_request_bytes = format!(
        "POST /upload HTTP/1.1\r\nHost: {}:{PORT}\r\nX-Pad: b\r\nContent-Type: application/octet-stream\r\nContent-Length: {BIG_BODY}\r\n\r\n",
        bed.t.server_v4
    )
    .len()
        + BIG_BODY;

    let chosen = |a: &ArmSpec| a.key == "none" || only.map_or(!a.named_only, |o| o.iter().any(|k| k == a.key));
    let all: Vec<ArmSpec> = arms(alt).into_iter().filter(|a| chosen(a)).collect();
    let fixed_arms: Vec<ArmSpec> = all.iter().copied().filter(|a| a.fixed).collect();
    let mut arms = bed.rounds("saturating", &all, &Kind::Saturating, secs, rounds, request_bytes);
    let sat_rps = arms[0].rps.map_or(1000.0, |s| s.median);
    let fixed_rate = (sat_rps / 2.0).round();
    let oha = load::oha_bin();
    if oha.is_none() {
        eprintln!(
            "shadow-bench: oha not found: fixed-rate arms fall back to hey (closed loop, coordinated omission applies)"
        );
    }
    let open_loop = oha.is_some();
    arms.extend(bed.rounds(
        "fixed rate",
        &fixed_arms,
        &Kind::Fixed { rate: fixed_rate, oha },
        secs,
        rounds,
        request_bytes,
    ));
    if only.is_none_or(|o| o.iter().any(|k| k == "big")) {
        arms.extend(bed.rounds("64 KiB POST", BIG_ARMS, &Kind::Big, secs, rounds, big_request_bytes));
    }
    MirrorResults {
        date,
        command,
        rounds,
        secs_per_arm: secs,
        request_bytes,
        big_request_bytes,
        saturating_load: format!("wrk -t2 -c{WRK_CONNS} -d{secs}s --latency (closed loop), GET /item (1 KiB file)"),
        fixed_load: if open_loop {
            format!("oha -z {secs}s -q {fixed_rate:.0} -c 64 --latency-correction (open loop), GET /item")
        } else {
            format!(
                "hey -z {secs}s -c 32 -q {:.0} (closed loop per worker: coordinated omission applies), GET /item",
                fixed_rate / 32.0
            )
        },
        big_load: format!(
            "wrk -t2 -c{WRK_CONNS} -d{secs}s, POST /upload with a {BIG_BODY}-byte body (nginx reads and discards it, 200)"
        ),
        fixed_rate,
        open_loop,
        load_average_before,
        load_average_after: loadavg(),
        arms,
    }
}

pub(crate) fn write_mirror(out: &Path, r: &MirrorResults) {
    let _ = std::fs::write(out.join("mirror.json"), serde_json::to_string_pretty(r).unwrap_or_default());
    let mut md = format!(
        "# Mirror cost to the primary\n\nMeasured {} by `{}`; raw figures (every round) in mirror.json. Load average (1, 5, 15 min) \
         before: {}, after: {} on 2 vCPUs.\n\n\
         nginx (1 worker) is the primary, in one namespace with the shadows and the daemon; the load generator runs in another \
         namespace over a veth. Requests of {} bytes (64 KiB arm: {} bytes). {} rounds per group, {} s per arm, every arm once per \
         round, order forward / reversed / rotated. Figures are **median (min-max)** over rounds; ratios are per round, to that \
         round's no-mirror arm, then the median.\n\n\
         - saturating: {}\n- fixed rate: {}\n- 64 KiB: {}\n\n",
        r.date,
        r.command,
        r.load_average_before,
        r.load_average_after,
        r.request_bytes,
        r.big_request_bytes,
        r.rounds,
        r.secs_per_arm,
        r.saturating_load,
        r.fixed_load,
        r.big_load
    );
    if !r.open_loop {
        md.push_str("**oha was not available: the fixed-rate arms ran with hey, closed loop per worker, so a stall hides the requests it delayed (coordinated omission).**\n\n");
    }
    for group in ["saturating", "fixed rate", "64 KiB POST"] {
        md.push_str(&format!("## {group}\n\n"));
        md.push_str("| arm | req/s | throughput ratio | p50 ms | p99 ms | p99 ratio | errors | captured | mirrored | daemon CPU µs / captured | daemon CPU µs / mirrored | requests / write | wake-ups / 1k captured | peak RSS MiB | ringbuf_full | drops |\n");
        md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
        for a in r.arms.iter().filter(|a| a.group == group) {
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                a.arm,
                Spread::fmt(a.rps, 0),
                Spread::fmt(a.throughput_ratio, 2),
                Spread::fmt(a.p50_ms, 2),
                Spread::fmt(a.p99_ms, 2),
                Spread::fmt(a.p99_ratio, 2),
                a.errors,
                Spread::fmt(a.captured_fraction, 3),
                Spread::fmt(a.mirrored_fraction, 3),
                Spread::fmt(a.cpu_us_per_captured, 2),
                Spread::fmt(a.cpu_us_per_mirrored, 2),
                Spread::fmt(a.requests_per_write, 1),
                Spread::fmt(a.wakeups_per_1k_captured, 0),
                a.peak_rss_mib.map_or("-".into(), |m| format!("{m:.0}")),
                a.ringbuf_full.map_or("-".into(), |m| m.to_string()),
                a.drops.as_ref().map_or("-".into(), |d| d.to_string()),
            ));
        }
        if r.arms.iter().any(|a| a.group == group && a.floor_cpu_us_per_request.is_some()) {
            md.push_str(
                "\nThe floor: `shadow-floor`, a bare client doing only what the replay does per request (write it, read the \
                 response whole; 16 keep-alive connections, one request in flight on each, closed loop) against the same \
                 healthy shadow while wrk loads the primary, in the same rounds. Its CPU is getrusage's, user and system.\n\n\
                 | arm | client req/s | CPU µs / request | syscalls / request | wake-ups / request |\n|---|---:|---:|---:|---:|\n",
            );
            for a in r.arms.iter().filter(|a| a.group == group && a.floor_cpu_us_per_request.is_some()) {
                md.push_str(&format!(
                    "| {} | {} | {} | {} | {} |\n",
                    a.arm,
                    Spread::fmt(a.floor_rps, 0),
                    Spread::fmt(a.floor_cpu_us_per_request, 2),
                    Spread::fmt(a.floor_syscalls_per_request, 2),
                    a.floor_wakeups_per_1k.map_or("-".into(), |w| format!("{:.2}", w.median / 1000.0)),
                ));
            }
        }
        if group == "64 KiB POST" {
            for a in r.arms.iter().filter(|a| a.group == group && a.mirrored_gbit_s.is_some()) {
                md.push_str(&format!(
                    "\nMirrored to the shadow: **{} Gbit/s** of request bytes.\n",
                    Spread::fmt(a.mirrored_gbit_s, 2)
                ));
            }
        }
        md.push('\n');
    }
    md.push_str(&format!(
        "The fixed rate is half the median no-mirror saturating throughput: {:.0} requests/s. The machine's 2 vCPUs are shared by \
         nginx, the load generator, the shadow and the daemon: the daemon's CPU and the shadow's are taken from the cores the \
         primary uses. Daemon CPU is utime+stime of the daemon process over the load (the eBPF programs run in the kernel on the \
         sending thread and are not in it: see ledger.md).\n",
        r.fixed_rate
    ));
    let _ = std::fs::write(out.join("mirror.md"), md);
    println!("wrote {}/mirror.md and mirror.json", out.display());
}

#[derive(Serialize, Clone, Debug)]
pub(crate) struct CapacityStep {
    /// What was asked for: a fixed rate (hey) or saturation (wrk).
    pub load: String,
    /// Requests/s the primary served in this step.
    pub rps: f64,
    pub requests: u64,
    /// Requests the daemon extracted whole (capture only: every one is counted as `no_target`).
    pub captured: u64,
    pub ringbuf_full: u64,
    pub daemon_cpu_s: f64,
}

#[derive(Serialize, Clone, Debug)]
pub(crate) struct Capacity {
    pub request_bytes: usize,
    /// nginx alone, saturated by wrk: the most this machine serves.
    pub nginx_alone_rps: f64,
    pub steps: Vec<CapacityStep>,
    /// Highest served rate of a step with `ringbuf_full` = 0 and every request captured.
    pub max_rps_without_ringbuf_full: f64,
    /// The daemon attached with no traffic at all, before the first step's load.
    pub idle: Idle,
    /// The same for `--alt-daemon`'s build, measured right after (None without one).
    pub idle_alt: Option<(String, Idle)>,
}

/// What the daemon costs a node whose service has no traffic: it still polls the ring buffer.
#[derive(Serialize, Clone, Debug)]
pub(crate) struct Idle {
    pub secs: f64,
    pub cpu_ms_per_s: f64,
    pub wakeups_per_s: f64,
    /// Resident memory at the end (VmRSS), and the part of it that is the ring buffer's mapping
    /// (its pages, shared with the kernel): the goal counts what lies beyond the ring.
    pub rss_mib: f64,
    pub ring_rss_mib: f64,
}

/// The daemon of `spec` attached with no traffic, measured over `secs`.
fn idle(t: &TwoHosts, scratch: &Scratch, spec: DaemonSpec, tag: &str, secs: u64) -> Idle {
    let d = Daemon::start(t, scratch, spec, tag);
    let start = std::time::Instant::now();
    let cpu0 = load::cpu_ns(d.pid());
    let wake0 = load::wakeups(d.pid());
    std::thread::sleep(Duration::from_secs(secs));
    let elapsed = start.elapsed().as_secs_f64();
    let cpu1 = load::cpu_ns(d.pid());
    let wake1 = load::wakeups(d.pid());
    let (rss_mib, ring_rss_mib) = rss_and_ring(d.pid());
    let _ = d.stop(&format!("idle {tag}"));
    Idle {
        secs: elapsed,
        cpu_ms_per_s: cpu1.saturating_sub(cpu0) as f64 / 1e6 / elapsed,
        wakeups_per_s: wake1.saturating_sub(wake0) as f64 / elapsed,
        rss_mib,
        ring_rss_mib,
    }
}

/// VmRSS, and the resident part of the eBPF maps mapped into the process (the ring buffer), MiB.
fn rss_and_ring(pid: u32) -> (f64, f64) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let (mut total, mut ring, mut in_map) = (0u64, 0u64, false);
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            in_map = line.contains("bpf-map");
        } else if let Some(kb) = line.strip_prefix("Rss:") {
            let kb: u64 = kb.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
            total += kb;
            if in_map {
                ring += kb;
            }
        }
    }
    (total as f64 / 1024.0, ring as f64 / 1024.0)
}

/// How fast can traffic go before the ring buffer overflows? nginx alone under wrk gives the
/// machine's ceiling; then the release daemon (capture and extraction, no replay, default 32 MiB
/// ring) is attached and the load stepped up at fixed rates (oha, or hey without it) to saturation (wrk), each step
/// with a fresh daemon whose summary gives `ringbuf_full` and the requests it captured.
pub(crate) fn capacity_ladder(quick: bool, alt: Option<&Alt>) -> Capacity {
    let secs = if quick { 3 } else { 5 };
    let t = TwoHosts::new("cap");
    let scratch = Scratch::new("cap");
    let pad = "p".repeat(1024 - 120);
    let url = format!("http://{}:{PORT}/item", t.server_v4);
    let request_bytes = format!("GET /item HTTP/1.1\r\nHost: {}:{PORT}\r\nX-Pad: {pad}\r\n\r\n", t.server_v4).len();
    let _primary = load::nginx(&t.server, &scratch.path("primary"), PORT, None);
    let alone = load::wrk(&t.client, &url, secs, WRK_CONNS, &pad, None);
    println!("capacity: nginx alone (wrk -t2 -c{WRK_CONNS})          {:>9.0} req/s", alone.rps);
    let mut steps = Vec::new();
    let fractions: &[f64] = if quick { &[0.5] } else { &[0.25, 0.5, 0.75] };
    let oha = load::oha_bin();
    let mut loads: Vec<(String, Option<f64>)> = fractions
        .iter()
        .map(|f| {
            let rate = (alone.rps * f).round();
            let how =
                if oha.is_some() { format!("oha -q {rate:.0}") } else { format!("hey -c16 -q{:.0}", rate / 16.0) };
            (format!("{how} ({:.0}% of nginx alone)", f * 100.0), Some(rate))
        })
        .collect();
    loads.push((format!("wrk -t2 -c{WRK_CONNS} (saturating)"), None));
    let spec = DaemonSpec { shadow: None, sample_rate: 100, allow_post: false, extra: &[], bin: None };
    // Attached, nothing on the wire: what a node with a quiet service pays.
    let secs_idle = if quick { 2 } else { 4 };
    let idle = idle(&t, &scratch, spec, "idle", secs_idle);
    println!(
        "capacity: daemon idle for {:.1} s: {:.2} ms CPU/s, {:.1} wake-ups/s, RSS {:.0} MiB ({:.0} of it the ring)",
        idle.secs, idle.cpu_ms_per_s, idle.wakeups_per_s, idle.rss_mib, idle.ring_rss_mib
    );
    let idle_alt = alt.and_then(|a| {
        let bin: &'static str = Box::leak(a.bin.clone()?.into_boxed_str());
        let i = self::idle(&t, &scratch, DaemonSpec { bin: Some(bin), ..spec }, "idle-alt", secs_idle);
        println!(
            "capacity: [{}] idle: {:.2} ms CPU/s, {:.1} wake-ups/s, RSS {:.0} MiB ({:.0} of it the ring)",
            a.label, i.cpu_ms_per_s, i.wakeups_per_s, i.rss_mib, i.ring_rss_mib
        );
        Some((a.label.clone(), i))
    });
    for (i, (name, rate)) in loads.into_iter().enumerate() {
        let d = Daemon::start(&t, &scratch, spec, &format!("cap{i}"));
        let (cpu0, _) = load::cpu_and_rss(d.pid());
        let w = match (rate, &oha) {
            (Some(r), Some(o)) => load::oha(o, &t.client, &url, secs, r, &pad),
            (Some(r), None) => load::hey(&t.client, &url, secs, 16, (r / 16.0).max(1.0) as u32, &pad),
            (None, _) => load::wrk(&t.client, &url, secs, WRK_CONNS, &pad, None),
        };
        let (cpu1, _) = load::cpu_and_rss(d.pid());
        let s = d.stop(&format!("capacity step {name}"));
        let step = CapacityStep {
            load: name,
            rps: w.rps,
            requests: w.requests,
            captured: s["mirror"]["requests"]["captured"].as_u64().unwrap_or(0),
            ringbuf_full: s["kernel"]["ringbuf_full"].as_u64().unwrap_or(u64::MAX),
            daemon_cpu_s: cpu1 - cpu0,
        };
        println!(
            "capacity: {:<42} {:>9.0} req/s  captured {}/{}  ringbuf_full {}  daemon cpu {:.2}s",
            step.load, step.rps, step.captured, step.requests, step.ringbuf_full, step.daemon_cpu_s
        );
        steps.push(step);
    }
    let max_rps_without_ringbuf_full =
        steps.iter().filter(|s| s.ringbuf_full == 0 && s.captured >= s.requests).map(|s| s.rps).fold(0.0, f64::max);
    Capacity { request_bytes, nginx_alone_rps: alone.rps, steps, max_rps_without_ringbuf_full, idle, idle_alt }
}
