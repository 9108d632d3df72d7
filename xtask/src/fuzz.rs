//! `cargo xtask fuzz --seconds N [TARGET..]`: every cargo-fuzz target of fuzz/ (or those named)
//! for N seconds each, with the nightly and libFuzzer, from the checked-in seeds
//! (fuzz/seeds/TARGET, read only) and a working corpus kept between runs (fuzz/corpus/TARGET).
//! Prints the executions each target reached (libFuzzer's final stats) and fails if any target
//! crashed, leaked, timed out or ran out of memory; the input that did it is in
//! fuzz/artifacts/TARGET/, to replay with `cargo +nightly fuzz run TARGET FILE`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use super::{output, run, workspace_root};

/// cargo-fuzz, pinned (it builds with the stable toolchain; the fuzz targets with the nightly).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

#[derive(clap::Args)]
pub(crate) struct FuzzArgs {
    /// Time per target, in seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Targets to run (default: every target in fuzz/Cargo.toml).
    targets: Vec<String>,
}

/// Install cargo-fuzz unless a `cargo fuzz` already runs (part of `cargo xtask setup`).
pub(crate) fn install_cargo_fuzz() -> Result<()> {
    if output(Command::new("cargo").args(["fuzz", "--version"])).is_some() {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION} from crates.io (a minute or two)");
    run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked", "--version", CARGO_FUZZ_VERSION]))?;
    if output(Command::new("cargo").args(["fuzz", "--version"])).is_none() {
        bail!("cargo-fuzz was installed but `cargo fuzz` does not run (is ~/.cargo/bin on PATH?)");
    }
    Ok(())
}

/// The targets declared in fuzz/Cargo.toml, in order.
fn targets(fuzz_dir: &Path) -> Result<Vec<String>> {
    let manifest = fs::read_to_string(fuzz_dir.join("Cargo.toml")).context("read fuzz/Cargo.toml")?;
    let mut names = Vec::new();
    let mut in_bin = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin && let Some(v) = line.strip_prefix("name").map(str::trim).and_then(|l| l.strip_prefix('=')) {
            names.push(v.trim().trim_matches('"').to_owned());
        }
    }
    if names.is_empty() {
        bail!("no [[bin]] target in fuzz/Cargo.toml");
    }
    Ok(names)
}

/// What one target's run came to, from libFuzzer's output.
struct Outcome {
    target: String,
    ok: bool,
    executions: Option<u64>,
    seconds: u64,
    coverage: Option<u64>,
    corpus: Option<u64>,
    artifact: Option<String>,
    log: PathBuf,
}

/// `stat::number_of_executed_units: N` (-print_final_stats=1), else the `Done N runs` line.
fn executions(log: &str) -> Option<u64> {
    let stat = log.lines().find_map(|l| l.strip_prefix("stat::number_of_executed_units:"));
    let done = || log.lines().find_map(|l| l.strip_prefix("Done ")?.split_whitespace().next());
    stat.or_else(done).and_then(|n| n.trim().parse().ok())
}

/// `cov: N` and `corp: N/..` of the last status line.
fn last_status(log: &str, key: &str) -> Option<u64> {
    let line = log.lines().rev().find(|l| l.starts_with('#') && l.contains(key))?;
    let rest = &line[line.find(key)? + key.len()..];
    rest.trim_start().split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

fn fuzz_one(root: &Path, target: &str, seconds: u64) -> Result<Outcome> {
    let fuzz_dir = root.join("fuzz");
    let corpus = fuzz_dir.join("corpus").join(target);
    let seeds = fuzz_dir.join("seeds").join(target);
    let logs = fuzz_dir.join("target/logs");
    fs::create_dir_all(&corpus).with_context(|| format!("create {}", corpus.display()))?;
    fs::create_dir_all(&logs).with_context(|| format!("create {}", logs.display()))?;
    let log = logs.join(format!("{target}.log"));
    let file = fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
    eprintln!("xtask: fuzzing {target} for {seconds} s (log: {})", log.display());
    let mut cmd = fuzz_cargo(root);
    cmd.args(["run", target]).arg(&corpus);
    if seeds.is_dir() {
        cmd.arg(&seeds);
    }
    // A hang is a failure after 10 s, not after libFuzzer's default 20 minutes.
    cmd.arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .args(["-print_final_stats=1", "-timeout=10", "-rss_limit_mb=2048"])
        .stdout(file.try_clone().context("log file")?)
        .stderr(file);
    let status = cmd.status().with_context(|| format!("spawn {cmd:?}"))?;
    let text = fs::read_to_string(&log).unwrap_or_default();
    let artifact = text.lines().find_map(|l| l.split("Test unit written to ").nth(1)).map(|a| a.trim().to_owned());
    Ok(Outcome {
        target: target.to_owned(),
        ok: status.success() && artifact.is_none(),
        executions: executions(&text),
        seconds,
        coverage: last_status(&text, "cov:"),
        corpus: last_status(&text, "corp:"),
        artifact,
        log,
    })
}

/// `cargo +nightly fuzz` in the workspace, without the eBPF object (no target uses it).
fn fuzz_cargo(root: &Path) -> Command {
    let mut c = Command::new("rustup");
    c.args(["run", "nightly", "cargo", "fuzz"]).current_dir(root).env("SHADOW_SKIP_EBPF", "1");
    c
}

pub(crate) fn fuzz(args: &FuzzArgs) -> Result<()> {
    if args.seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    install_cargo_fuzz()?;
    let root = workspace_root();
    let all = targets(&root.join("fuzz"))?;
    let chosen = if args.targets.is_empty() { all.clone() } else { args.targets.clone() };
    if let Some(t) = chosen.iter().find(|t| !all.contains(t)) {
        bail!("no fuzz target '{t}' (targets: {})", all.join(", "));
    }
    // One build for all, so that a compile error shows once and the timed runs only fuzz.
    run(fuzz_cargo(&root).arg("build"))?;
    let mut outcomes = Vec::new();
    for t in &chosen {
        outcomes.push(fuzz_one(&root, t, args.seconds)?);
    }
    println!("{:<10} {:>12} {:>9} {:>7} {:>7}  result", "target", "executions", "exec/s", "cov", "corpus");
    let dash = || "-".to_owned();
    for o in &outcomes {
        let execs = o.executions.map_or_else(dash, |n| n.to_string());
        let rate = o.executions.map_or_else(dash, |n| (n / o.seconds).to_string());
        let cov = o.coverage.map_or_else(dash, |n| n.to_string());
        let corpus = o.corpus.map_or_else(dash, |n| n.to_string());
        let result = match (&o.artifact, o.ok) {
            (_, true) => "ok".to_owned(),
            (Some(a), false) => format!("FAILED: {a}"),
            (None, false) => format!("FAILED: see {}", o.log.display()),
        };
        println!("{:<10} {execs:>12} {rate:>9} {cov:>7} {corpus:>7}  {result}", o.target);
    }
    let failed: Vec<&str> = outcomes.iter().filter(|o| !o.ok).map(|o| o.target.as_str()).collect();
    if !failed.is_empty() {
        for o in outcomes.iter().filter(|o| !o.ok) {
            let text = fs::read_to_string(&o.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("--- {} (last lines of {}) ---", o.target, o.log.display());
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
        bail!("fuzz target(s) failed: {}", failed.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_final_stats() {
        let log = "#2\tINITED cov: 10 ft: 11 corp: 3/40b exec/s: 0 rss: 30Mb\n\
                   #524288\tpulse  cov: 812 ft: 2301 corp: 377/20Kb lim: 4096 exec/s: 8738 rss: 412Mb\n\
                   #530001\tDONE   cov: 815 ft: 2310 corp: 380/21Kb lim: 4096 exec/s: 8833 rss: 412Mb\n\
                   Done 530001 runs in 60 second(s)\n\
                   stat::number_of_executed_units: 530001\n\
                   stat::peak_rss_mb:              412\n";
        assert_eq!(executions(log), Some(530_001));
        assert_eq!(last_status(log, "cov:"), Some(815));
        assert_eq!(last_status(log, "corp:"), Some(380));
        assert_eq!(executions("Done 7 runs in 1 second(s)\n"), Some(7));
        assert_eq!(executions("==1== ERROR: libFuzzer: deadly signal\n"), None);
    }

    #[test]
    fn lists_the_targets_of_the_fuzz_crate() {
        let t = targets(&workspace_root().join("fuzz")).expect("fuzz/Cargo.toml");
        for want in ["extract", "config", "control"] {
            assert!(t.iter().any(|n| n == want), "{want} in {t:?}");
        }
    }
}
