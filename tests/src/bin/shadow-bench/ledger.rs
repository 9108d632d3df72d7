//! The cost ledger: one table of what each stage costs per packet, record or request, built from
//! the JSON files the other parts wrote to the results directory (capture.json, micro.json,
//! profile.json, mirror.json), and the goals marked met or not with their figures.

use std::path::Path;

use serde::Serialize;
use serde_json::Value;

const RUN: &str = "SHADOW_BIN_DIR=$PWD/target/release target/release/shadow-bench --out bench/results";

#[derive(Serialize)]
struct Row {
    stage: String,
    cost: String,
    unit: String,
    allocations: String,
    reproduce: String,
    how: String,
}

#[derive(Serialize)]
struct Goal {
    goal: String,
    figure: String,
    met: Option<bool>,
}

#[derive(Serialize)]
struct Ledger {
    date: String,
    command: String,
    rows: Vec<Row>,
    goals: Vec<Goal>,
}

fn read(out: &Path, name: &str) -> Value {
    std::fs::read_to_string(out.join(name)).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or(Value::Null)
}

fn f(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn arm<'a>(mirror: &'a Value, group: &str, key: &str) -> &'a Value {
    mirror["arms"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["group"] == group && x["key"] == key))
        .unwrap_or(&Value::Null)
}

fn med(v: &Value) -> Option<f64> {
    f(&v["median"])
}

fn spread(v: &Value, d: usize) -> String {
    match (med(v), f(&v["min"]), f(&v["max"])) {
        (Some(m), Some(a), Some(b)) => format!("{m:.d$} ({a:.d$}-{b:.d$})"),
        _ => "-".into(),
    }
}

fn goal(goals: &mut Vec<Goal>, goal: &str, figure: String, met: Option<bool>) {
    goals.push(Goal { goal: goal.into(), figure, met });
}

pub(crate) fn write_ledger(out: &Path, date: &str, command: &str) {
    let capture = read(out, "capture.json");
    let micro = read(out, "micro.json");
    let profile = read(out, "profile.json");
    let mirror = read(out, "mirror.json");
    let timing = read(out, "timing.json");
    let egress = read(out, "egress.json");
    let mut rows = Vec::new();

    // Kernel.
    if let Some(phases) = capture["attached_cost"].as_array() {
        let names = [
            ("non-matching", "kernel: packet not ours (other TCP port)"),
            ("sampled 100%", "kernel: service-port packet, request sampled (lookup, ring record, payload copy)"),
            ("sampled 0%", "kernel: service-port packet, not sampled (lookup and decision)"),
        ];
        for (needle, stage) in names {
            if let Some(p) = phases.iter().find(|p| p["phase"].as_str().is_some_and(|s| s.contains(needle))) {
                rows.push(Row {
                    stage: stage.into(),
                    cost: format!("{:.0}", f(&p["net_ns_per_packet"]).unwrap_or(f64::NAN)),
                    unit: "ns / packet (net of a no-op program)".into(),
                    allocations: "-".into(),
                    reproduce: format!("{RUN} --only capture"),
                    how: format!(
                        "TC ingress+egress on a veth, run_time_ns/run_cnt, {} packets, {:.0} ns measured - {:.0} ns no-op",
                        p["packets"],
                        f(&p["ns_per_packet"]).unwrap_or(f64::NAN),
                        f(&p["baseline_ns_per_packet"]).unwrap_or(f64::NAN)
                    ),
                });
            }
        }
    }
    // Egress fence.
    if let Some(cases) = egress["cases"].as_array() {
        for c in cases {
            rows.push(Row {
                stage: format!("kernel: egress fence, {}", c["call"].as_str().unwrap_or("?")),
                cost: spread(&c["program_ns_per_call"], 0),
                unit: "ns / call (gross, with the accounting's clock reads)".into(),
                allocations: "-".into(),
                reproduce: format!("{RUN} --only egress"),
                how: format!(
                    "{} run_time_ns/run_cnt over {} rounds of {} calls, {} allowlist entries; wall time per call fenced {} ns vs unfenced {} ns ({}x)",
                    c["program"].as_str().unwrap_or("?"),
                    egress["rounds"],
                    egress["calls_per_round"],
                    egress["allow_entries"],
                    spread(&c["fenced_ns_per_call"], 0),
                    spread(&c["unfenced_ns_per_call"], 0),
                    spread(&c["ratio"], 3)
                ),
            });
        }
    }
    // Ring buffer.
    if let Some(steps) = capture["drain"].as_array() {
        let best = steps
            .iter()
            .filter(|s| s["ringbuf_full"].as_u64() == Some(0))
            .max_by(|a, b| f(&a["drained_per_s"]).unwrap_or(0.0).total_cmp(&f(&b["drained_per_s"]).unwrap_or(0.0)));
        if let Some(s) = best {
            rows.push(Row {
                stage: "ring-buffer read + decode into a Segment".into(),
                cost: format!("{:.0}", f(&s["reader_cpu_ns_per_record"]).unwrap_or(f64::NAN)),
                unit: "ns CPU / record".into(),
                allocations: format!("{:.2}", f(&s["allocations_per_record"]).unwrap_or(f64::NAN)),
                reproduce: format!("{RUN} --only capture"),
                how: format!(
                    "the daemon's reader (AsyncFd + segment::decode_ref, in place: no copy, no allocation) on its own thread, CPU of that thread at {:.0} records/s offered by BPF_PROG_TEST_RUN (~100 B requests), no ringbuf_full ({:.0}-{:.0} ns over the steps of capture.md); highest drained rate without drops {:.0}/s",
                    f(&s["offered_per_s"]).unwrap_or(0.0),
                    steps.iter().filter_map(|x| f(&x["reader_cpu_ns_per_record"])).fold(f64::INFINITY, f64::min),
                    steps.iter().filter_map(|x| f(&x["reader_cpu_ns_per_record"])).fold(0.0, f64::max),
                    f(&capture["max_drain_without_drops_per_s"]).unwrap_or(0.0)
                ),
            });
        }
    }
    // User-space stages in process.
    if let Some(stages) = micro["stages"].as_array() {
        for s in stages {
            rows.push(Row {
                stage: s["stage"].as_str().unwrap_or("").into(),
                cost: spread(&s["ns_per_request"], 0),
                unit: "ns / request, median (min-max)".into(),
                allocations: format!(
                    "{:.1} ({:.0} B)",
                    f(&s["allocations_per_request"]).unwrap_or(f64::NAN),
                    f(&s["allocated_bytes_per_request"]).unwrap_or(f64::NAN)
                ),
                reproduce: format!("{RUN} --only micro"),
                how: match (f(&s["socket_bytes_out_per_request"]), f(&s["socket_bytes_in_per_request"])) {
                    (Some(o), Some(i)) => format!(
                        "{}; socket bytes per request: {o:.0} written to the shadow, {i:.0} read from it",
                        s["how"].as_str().unwrap_or("")
                    ),
                    _ => s["how"].as_str().unwrap_or("").into(),
                },
            });
        }
    }
    // Syscalls of the live daemon.
    if let Some(per) = f(&profile["syscalls_per_mirrored_request"]) {
        let top: Vec<String> = profile["top_syscalls"]
            .as_array()
            .map(|a| {
                a.iter().map(|x| format!("{} {:.2}", x[0].as_str().unwrap_or(""), f(&x[1]).unwrap_or(0.0))).collect()
            })
            .unwrap_or_default();
        rows.push(Row {
            stage: "whole daemon: syscalls per mirrored request".into(),
            cost: format!("{per:.2}"),
            unit: "syscalls / mirrored request".into(),
            allocations: "-".into(),
            reproduce: format!("{RUN} --only profile"),
            how: format!(
                "strace -c -f -p DAEMON for {:.1} s under {}; {} captured and {} replayed meanwhile ({:.2} syscalls per captured request); per mirrored request, top: {} (strace-daemon.txt; {})",
                f(&profile["strace_secs"]).unwrap_or(0.0),
                profile["load"].as_str().unwrap_or(""),
                profile["strace_captured"],
                profile["strace_replayed"],
                f(&profile["syscalls_per_captured_request"]).unwrap_or(f64::NAN),
                top.join(", "),
                profile["note"].as_str().unwrap_or("")
            ),
        });
    }
    // The whole daemon with nothing to capture.
    let idle = &capture["capacity"]["idle"];
    if let Some(cpu) = f(&idle["cpu_ms_per_s"]) {
        rows.push(Row {
            stage: "whole daemon idle: attached, no traffic".into(),
            cost: format!("{cpu:.2}"),
            unit: "ms CPU / s".into(),
            allocations: "-".into(),
            reproduce: format!("{RUN} --only capture"),
            how: format!(
                "CPU of the release daemon's threads (schedstat) over {:.1} s with nothing on the wire, before the capacity ladder's first step; {:.0} wake-ups/s (its 100 ms tick, and looks at the ring buffer for records the kernel did not wake it for: every {} ms while records come, backing off to {} ms; before 2026-12-02 every 2 ms always: 326 wake-ups/s and 21.7 ms CPU/s measured by hand)",
                f(&idle["secs"]).unwrap_or(0.0),
                f(&idle["wakeups_per_s"]).unwrap_or(f64::NAN),
                shadow_common::RING_POLL_INTERVAL_MS,
                shadow_common::RING_IDLE_POLL_MS
            ),
        });
    }
    // The whole daemon under real load.
    for (group, key, what, field) in [
        (
            "fixed rate",
            "capture",
            "whole daemon: CPU per captured request, not replayed (capture only)",
            "cpu_us_per_captured",
        ),
        (
            "fixed rate",
            "healthy",
            "whole daemon: CPU per mirrored request (healthy shadow, 100 %)",
            "cpu_us_per_mirrored",
        ),
        (
            "saturating",
            "capture",
            "whole daemon at saturation: CPU per captured request, not replayed",
            "cpu_us_per_captured",
        ),
        ("saturating", "healthy", "whole daemon at saturation: CPU per mirrored request", "cpu_us_per_mirrored"),
        (
            "saturating",
            "capture-threads2",
            "the same, capture only at saturation, with two runtime threads (--threads 2)",
            "cpu_us_per_captured",
        ),
        (
            "fixed rate",
            "healthy-before",
            "the same, fixed rate, run as before pipelines and one thread (--threads 2 --pipeline 1)",
            "cpu_us_per_mirrored",
        ),
        (
            "saturating",
            "healthy-before",
            "the same, at saturation, run as before (--threads 2 --pipeline 1)",
            "cpu_us_per_mirrored",
        ),
        // `--alt-daemon` / `--alt-args`: another build or other flags, side by side (named by
        // its --alt-label).
        ("saturating", "capture-alt", "the other way, capture only, at saturation", "cpu_us_per_captured"),
        ("saturating", "healthy-alt", "the other way, healthy shadow, at saturation", "cpu_us_per_mirrored"),
        ("saturating", "healthy10-alt", "the other way, 10 % sampling, at saturation", "cpu_us_per_mirrored"),
    ] {
        let a = arm(&mirror, group, key);
        if a.is_null() {
            continue;
        }
        let what =
            if key.ends_with("-alt") { format!("{what}: {}", a["arm"].as_str().unwrap_or("")) } else { what.into() };
        rows.push(Row {
            stage: what,
            cost: spread(&a[field], 2),
            unit: "µs CPU / request, median (min-max) over rounds".into(),
            allocations: "-".into(),
            reproduce: format!("{RUN} --only mirror"),
            how: format!(
                "utime+stime of the release daemon over the load ({}), peak RSS {:.0} MiB, ringbuf_full {}{}",
                if group == "fixed rate" {
                    mirror["fixed_load"].as_str().unwrap_or("")
                } else {
                    mirror["saturating_load"].as_str().unwrap_or("")
                },
                f(&a["peak_rss_mib"]).unwrap_or(0.0),
                a["ringbuf_full"],
                if a["requests_per_write"].is_null() {
                    String::new()
                } else {
                    format!(", {} requests per write to the shadow", spread(&a["requests_per_write"], 1))
                }
            ),
        });
    }

    // The floor under the replay: a bare client doing only its writes and reads (mirror.rs).
    for (key, mode) in
        [("floor", "epoll-ts"), ("floor-epoll", "epoll"), ("floor-uring", "uring"), ("floor-tokio", "tokio")]
    {
        let a = arm(&mirror, "saturating", key);
        if a.is_null() {
            continue;
        }
        rows.push(Row {
            stage: a["arm"].as_str().unwrap_or(key).into(),
            cost: spread(&a["floor_cpu_us_per_request"], 2),
            unit: "µs CPU / request, median (min-max) over rounds".into(),
            allocations: "-".into(),
            reproduce: format!("{RUN} --only mirror --arms none,{key}"),
            how: format!(
                "getrusage of `shadow-floor --mode {mode}` (16 keep-alive connections, one request in flight on each, closed loop) against the healthy shadow while {} loads the primary, in the daemon's rounds; {} requests/s, {} syscalls and {} wake-ups per request",
                mirror["saturating_load"].as_str().unwrap_or(""),
                spread(&a["floor_rps"], 0),
                spread(&a["floor_syscalls_per_request"], 2),
                a["floor_wakeups_per_1k"]["median"].as_f64().map_or("-".into(), |w| format!("{:.2}", w / 1000.0)),
            ),
        });
    }

    // Goals.
    let mut goals = Vec::new();
    let worst = f(&egress["worst_program_ns"]);
    goal(
        &mut goals,
        "Egress fence < 1 µs per connect",
        worst.map_or("-".into(), |w| format!("{w:.0} ns per call, the worst median of connect and send")),
        worst.map(|w| w < 1000.0),
    );
    let sat_m = spread(&arm(&mirror, "saturating", "healthy")["cpu_us_per_mirrored"], 2);
    let a = &arm(&mirror, "fixed rate", "healthy")["cpu_us_per_mirrored"];
    let cpu_m = med(a);
    goal(
        &mut goals,
        "Daemon CPU <= 4 µs per mirrored 1 KiB request",
        format!(
            "{} µs at the fixed rate, healthy shadow ({sat_m} µs at saturation; in the same rounds a bare client doing only the replay's writes and reads, timed alike, costs {} µs per request: the floor)",
            spread(a, 2),
            spread(&arm(&mirror, "saturating", "floor")["floor_cpu_us_per_request"], 2)
        ),
        cpu_m.map(|c| c <= 4.0),
    );
    let sat_c = spread(&arm(&mirror, "saturating", "capture")["cpu_us_per_captured"], 2);
    let a = &arm(&mirror, "fixed rate", "capture")["cpu_us_per_captured"];
    let cpu_c = med(a);
    goal(
        &mut goals,
        "Daemon CPU <= 1 µs per captured-but-not-replayed request",
        format!("{} µs at the fixed rate, capture only ({sat_c} µs at saturation)", spread(a, 2)),
        cpu_c.map(|c| c <= 1.0),
    );
    for (key, label) in [("capture", "Capture only"), ("slow", "Slow shadow")] {
        let a = arm(&mirror, "saturating", key);
        let tp = med(&a["throughput_ratio"]);
        let p99 = med(&a["p99_ratio"]);
        goal(
            &mut goals,
            &format!("{label} at saturation: >= 0.95x throughput and <= 1.2x p99 of no mirror"),
            format!("{}x throughput, {}x p99", spread(&a["throughput_ratio"], 2), spread(&a["p99_ratio"], 2)),
            tp.zip(p99).map(|(t, p)| t >= 0.95 && p <= 1.2),
        );
    }
    let a = &arm(&mirror, "saturating", "healthy10")["throughput_ratio"];
    let tp10 = med(a);
    goal(
        &mut goals,
        "Healthy shadow at 10 % sampling, saturation: >= 0.95x throughput",
        format!("{}x", spread(a, 2)),
        tp10.map(|t| t >= 0.95),
    );
    let a = &arm(&mirror, "fixed rate", "healthy")["p99_ratio"];
    let p99f = med(a);
    goal(
        &mut goals,
        "Fixed rate at half of saturation, healthy shadow, 100 %: p99 <= 1.1x",
        format!(
            "{}x ({})",
            spread(a, 2),
            if mirror["open_loop"] == true {
                "oha, open loop"
            } else {
                "hey, closed loop: coordinated omission applies"
            }
        ),
        p99f.map(|p| p <= 1.1),
    );
    let big = arm(&mirror, "64 KiB POST", "healthy");
    let mirrored = med(&big["mirrored_fraction"]);
    let queue_full = big["drops"]["queue_full"].as_u64().unwrap_or(0);
    goal(
        &mut goals,
        "64 KiB bodies: everything the primary serves at its ceiling is mirrored, no queue_full",
        format!(
            "{} of served requests mirrored at {} Gbit/s; queue_full {queue_full}, ringbuf_full {}, drops {}",
            spread(&big["mirrored_fraction"], 3),
            spread(&big["mirrored_gbit_s"], 2),
            big["ringbuf_full"],
            big["drops"]
        ),
        mirrored.map(|m| m >= 0.999 && queue_full == 0),
    );
    let cap = &capture["capacity"];
    let ladder_full: Option<u64> =
        cap["steps"].as_array().map(|s| s.iter().filter_map(|x| x["ringbuf_full"].as_u64()).sum());
    let sat_full = arm(&mirror, "saturating", "capture")["ringbuf_full"].as_u64();
    goal(
        &mut goals,
        "Capture with ringbuf_full = 0 up to the rate nginx itself can serve",
        format!(
            "nginx alone {:.0} req/s; highest ladder step without ringbuf_full {:.0} req/s; ringbuf_full over the ladder {}, over the saturating capture-only rounds {}",
            f(&cap["nginx_alone_rps"]).unwrap_or(0.0),
            f(&cap["max_rps_without_ringbuf_full"]).unwrap_or(0.0),
            ladder_full.map_or("-".into(), |v| v.to_string()),
            sat_full.map_or("-".into(), |v| v.to_string())
        ),
        match (ladder_full, sat_full) {
            (Some(a), Some(b)) => Some(a == 0 && b == 0),
            _ => None,
        },
    );

    // Issue 22's own goals: the idle daemon, the kernel's cost for packets not ours, wake-ups,
    // and the other build (`--alt-daemon`, e.g. `cargo xtask bench --against REV`) beside this
    // one in the same rounds.
    let idle = &capture["capacity"]["idle"];
    let (icpu, iwake) = (f(&idle["cpu_ms_per_s"]), f(&idle["wakeups_per_s"]));
    let idle_alt = &capture["capacity"]["idle_alt"];
    let alt_idle = if idle_alt.is_array() {
        format!(
            "; {}: {:.2} ms/s, {:.1} wake-ups/s",
            idle_alt[0].as_str().unwrap_or("the other build"),
            f(&idle_alt[1]["cpu_ms_per_s"]).unwrap_or(f64::NAN),
            f(&idle_alt[1]["wakeups_per_s"]).unwrap_or(f64::NAN)
        )
    } else {
        String::new()
    };
    goal(
        &mut goals,
        "Idle daemon (attached, no traffic): <= 1 ms CPU per second, <= ~10 wake-ups a second",
        format!("{:.2} ms/s, {:.1} wake-ups/s{alt_idle}", icpu.unwrap_or(f64::NAN), iwake.unwrap_or(f64::NAN)),
        icpu.zip(iwake).map(|(c, w)| c <= 1.0 && w <= 10.0),
    );
    let (rss, ring) = (f(&idle["rss_mib"]), f(&idle["ring_rss_mib"]));
    goal(
        &mut goals,
        "Idle RSS <= ring size + 16 MiB",
        format!(
            "{:.0} MiB resident, {:.0} MiB of it the ring buffer's mapping: {:.1} MiB beyond it",
            rss.unwrap_or(f64::NAN),
            ring.unwrap_or(f64::NAN),
            rss.zip(ring).map_or(f64::NAN, |(r, g)| r - g)
        ),
        rss.zip(ring).map(|(r, g)| r - g <= 16.0),
    );
    let not_ours = capture["attached_cost"].as_array().and_then(|a| {
        a.iter()
            .find(|p| p["phase"].as_str().is_some_and(|s| s.contains("non-matching")))
            .and_then(|p| f(&p["net_ns_per_packet"]))
    });
    goal(
        &mut goals,
        "eBPF cost per packet not ours <= 20 ns, net of an empty program",
        not_ours.map_or("-".into(), |n| format!("{n:.0} ns")),
        not_ours.map(|n| n <= 20.0),
    );
    for group in ["saturating", "fixed rate"] {
        let a = arm(&mirror, group, "healthy");
        goal(
            &mut goals,
            &format!("Wake-ups per 1000 mirrored requests ({group}, healthy shadow, 100 %): reported"),
            format!(
                "{} per 1000 captured requests, {} of them mirrored",
                spread(&a["wakeups_per_1k_captured"], 0),
                spread(&a["mirrored_fraction"], 3)
            ),
            None,
        );
    }
    let alt_rows: Vec<String> = mirror["arms"]
        .as_array()
        .map(|arms| {
            arms.iter()
                .filter(|x| x["key"].as_str().is_some_and(|k| k.ends_with("-alt")))
                .map(|x| {
                    let base = arm(
                        &mirror,
                        x["group"].as_str().unwrap_or(""),
                        x["key"].as_str().unwrap_or("").trim_end_matches("-alt"),
                    );
                    let cpu = |v: &Value| {
                        if v["cpu_us_per_mirrored"]["median"].is_number() {
                            spread(&v["cpu_us_per_mirrored"], 2)
                        } else {
                            spread(&v["cpu_us_per_captured"], 2)
                        }
                    };
                    format!(
                        "{}: {} µs, {}x throughput, {} mirrored, {} wake-ups/1k (this build: {} µs, {}x, {}, {})",
                        x["arm"].as_str().unwrap_or(""),
                        cpu(x),
                        spread(&x["throughput_ratio"], 2),
                        spread(&x["mirrored_fraction"], 3),
                        spread(&x["wakeups_per_1k_captured"], 0),
                        cpu(base),
                        spread(&base["throughput_ratio"], 2),
                        spread(&base["mirrored_fraction"], 3),
                        spread(&base["wakeups_per_1k_captured"], 0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    if !alt_rows.is_empty() {
        goal(
            &mut goals,
            "The other build in the same rounds (CPU per mirrored, else per captured request)",
            alt_rows.join("; "),
            None,
        );
    }

    let ledger = Ledger { date: date.into(), command: command.into(), rows, goals };
    let _ = std::fs::write(out.join("ledger.json"), serde_json::to_string_pretty(&ledger).unwrap_or_default());
    let mut md = format!(
        "# Cost ledger\n\nBuilt {} from the results of `{}` (capture.json {}, micro.json {}, profile.json {}, mirror.json {}); \
         raw figures in ledger.json. Each row says how to reproduce it.\n\n",
        ledger.date,
        ledger.command,
        capture["date"].as_str().unwrap_or("missing"),
        micro["date"].as_str().unwrap_or("missing"),
        profile["date"].as_str().unwrap_or("missing"),
        mirror["date"].as_str().unwrap_or("missing"),
    );
    if let Some(parts) = timing["parts_s"].as_object() {
        md.push_str(&format!(
            "The whole run (`{}`, {}) took {:.0} s: {}.\n\n",
            timing["command"].as_str().unwrap_or(""),
            timing["date"].as_str().unwrap_or(""),
            f(&timing["total_s"]).unwrap_or(f64::NAN),
            parts
                .iter()
                .map(|(k, v)| format!("{k} {:.0} s", v.as_f64().unwrap_or(f64::NAN)))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    md.push_str(
        "| stage | cost | unit | allocations / unit (bytes) | reproduce | how |\n|---|---:|---|---:|---|---|\n",
    );
    for r in &ledger.rows {
        md.push_str(&format!(
            "| {} | **{}** | {} | {} | `{}` | {} |\n",
            r.stage, r.cost, r.unit, r.allocations, r.reproduce, r.how
        ));
    }
    md.push_str(&format!(
        "\nWhere the daemon's time goes under load: perf-daemon.txt{} (`perf record -g -p` of the release daemon, {}).\n\
         The in-process rows (`--only micro`) run the daemon's library code with this binary's counting allocator; \
         `cargo bench -p shadow-daemon --bench extract` and `--bench replay` (divan, not run by `cargo xtask bench`) \
         measure the same stages as throughput. The kernel rows run in softirq context on the sending CPU and are not in the daemon's CPU figures; the whole-daemon \
         rows are everything the daemon process itself spends.\n\n## Goals\n\nMet or not by the median over rounds; \
         the figures are median (min-max), so a goal whose spread straddles its bound is within this machine's noise.\n\n\
         | goal | figure | met |\n|---|---|---|\n",
        if profile["flame_graph"].is_string() { " and the flame graph perf-daemon.svg" } else { "" },
        profile["load"].as_str().unwrap_or("")
    ));
    for g in &ledger.goals {
        md.push_str(&format!(
            "| {} | {} | {} |\n",
            g.goal,
            g.figure,
            match g.met {
                Some(true) => "**met**",
                Some(false) => "**not met**",
                None if g.goal.ends_with(": reported") || g.goal.starts_with("The other build") =>
                    "(a figure, not a goal)",
                None => "not measured",
            }
        ));
    }
    let _ = std::fs::write(out.join("ledger.md"), md);
    println!("wrote {}/ledger.md and ledger.json", out.display());
}
