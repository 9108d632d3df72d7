//! `cargo xtask mutants [--shard K/N] [-- CARGO-MUTANTS ARGS]`: mutation testing of the daemon's
//! pure modules with its unit and property tests, without root.
//!
//! What is mutated is [`PURE_MODULES`] (or the `--file` globs given); with which tests and
//! profile, and what is excluded (with the reason), lives in `.cargo/mutants.toml`. This task
//! adds what a config file cannot say: the eBPF build is skipped (the unit tests never load the
//! object), the builds go to their own target directory (`target/xtask-mutants`, so a run neither
//! waits on nor invalidates the developer's own builds), one job at a time (every mutant rebuilds
//! the daemon's test binary; two at once only fight over two cores), and a score per module.
//!
//! A whole run rebuilds the daemon once per mutant (about two thousand): hours on two cores. Split
//! it with `--shard K/N` (K from 0) or narrow it with `--file GLOB`, e.g. `cargo xtask mutants
//! --file 'shadow-daemon/src/reassembly/*.rs'`; `-- --list` counts without running anything.

use std::{collections::BTreeMap, fs, path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::{cargo, output, workspace_root};

/// The daemon's pure modules: no I/O, no kernel, tested exhaustively by unit and property tests.
pub(crate) const PURE_MODULES: &[&str] = &[
    "shadow-daemon/src/http/*.rs",
    "shadow-daemon/src/reassembly/*.rs",
    "shadow-daemon/src/segment.rs",
    "shadow-daemon/src/replay/edit.rs",
    "shadow-daemon/src/replay/trace.rs",
    "shadow-daemon/src/trace_link.rs",
    "shadow-daemon/src/egress/allow.rs",
    "shadow-daemon/src/egress/view.rs",
    "shadow-daemon/src/ramp/evidence.rs",
    "shadow-daemon/src/ramp/feed.rs",
    "shadow-daemon/src/ramp/mod.rs",
    "shadow-daemon/src/replay/controls/*.rs",
    "shadow-daemon/src/metrics/ledger.rs",
    "shadow-daemon/src/compare/*.rs",
];

#[derive(Args)]
pub(crate) struct MutantsArgs {
    /// Run one shard of the mutants: K/N with K from 0 (consecutive slices, as cargo-mutants
    /// cuts them).
    #[arg(long, value_name = "K/N", value_parser = parse_shard)]
    shard: Option<(u32, u32)>,
    /// Mutate only the files matching these globs (repeatable) instead of every pure module.
    #[arg(long = "file", value_name = "GLOB")]
    files: Vec<String>,
    /// Run nothing: print the scores of earlier runs' `mutants.out` directories, added up
    /// (repeatable; for a module run in parts, e.g. shard by shard).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["shard", "files", "extra"])]
    report: Vec<PathBuf>,
    /// Passed on to cargo-mutants, e.g. `--list`, `--re REGEX`, `--iterate`.
    #[arg(last = true)]
    extra: Vec<String>,
}

fn parse_shard(s: &str) -> Result<(u32, u32), String> {
    let err = || format!("--shard {s}: expected K/N with 0 <= K < N");
    let (k, n) = s.split_once('/').ok_or_else(err)?;
    let (k, n) = (k.parse::<u32>().map_err(|_| err())?, n.parse::<u32>().map_err(|_| err())?);
    if k >= n {
        return Err(err());
    }
    Ok((k, n))
}

/// cargo-mutants from crates.io, when it is not installed yet (part of `cargo xtask setup`).
pub(crate) fn install() -> Result<()> {
    if output(Command::new("cargo").args(["mutants", "--version"])).is_some() {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-mutants from crates.io (a few minutes on 2 cores)");
    crate::run(Command::new("cargo").args(["install", "--locked", "cargo-mutants"]))
}

pub(crate) fn mutants(args: MutantsArgs) -> Result<()> {
    if !args.report.is_empty() {
        print!("{}", Scores::read_chain(&args.report)?.table());
        return Ok(());
    }
    install()?;
    let root = workspace_root();
    let target = root.join("target/xtask-mutants");
    // One output directory per shard, so that the shards of one run can go side by side.
    let out = match args.shard {
        Some((k, n)) => target.join(format!("shard-{k}-of-{n}")),
        None => target.join("all"),
    };
    fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
    let mut cmd = cargo();
    cmd.args(["mutants", "--jobs", "1", "--output"])
        .arg(&out)
        .env("SHADOW_SKIP_EBPF", "1")
        .env("CARGO_TARGET_DIR", &target);
    if let Some((k, n)) = args.shard {
        cmd.arg("--shard").arg(format!("{k}/{n}"));
    }
    let files: Vec<&str> =
        if args.files.is_empty() { PURE_MODULES.to_vec() } else { args.files.iter().map(String::as_str).collect() };
    for f in files {
        cmd.arg("--file").arg(f);
    }
    cmd.args(&args.extra);
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status().context("spawn cargo mutants")?;
    if args.extra.iter().any(|a| a == "--list" || a == "--list-files") {
        return if status.success() { Ok(()) } else { bail!("cargo mutants failed: {status}") };
    }
    let dir = out.join("mutants.out");
    if !dir.join("caught.txt").exists() {
        bail!("cargo mutants failed before testing any mutant: {status}");
    }
    print!("{}", Scores::read_chain(std::slice::from_ref(&dir))?.table());
    eprintln!("xtask: every mutant's outcome and log: {}", dir.display());
    // cargo-mutants: 0 every mutant caught (or unviable), 2 some missed, 3 some timed out (and
    // none missed), 4 the tests fail without any mutation.
    match status.code() {
        Some(0) => Ok(()),
        Some(3) => {
            eprintln!("xtask: timeouts (detected, see Scores::table): {}", dir.join("timeout.txt").display());
            Ok(())
        }
        Some(2) => bail!("mutants survived: {}", dir.join("missed.txt").display()),
        _ => bail!("cargo mutants failed: {status}"),
    }
}

/// The last outcome of each mutant, from cargo-mutants' `caught.txt`, `missed.txt`,
/// `timeout.txt` and `unviable.txt` (one mutant a line: `path:line:col: what`).
///
/// An `--iterate` run lists what earlier runs caught *or found unviable* in
/// `previously_caught.txt` without telling which: those entries only fill in mutants no run read
/// before has an outcome for, so reading every run of a chain, oldest first, counts each mutant
/// once with the outcome it last had.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Scores(BTreeMap<String, usize>);

const OUTCOMES: [&str; 4] = ["caught", "missed", "timeout", "unviable"];

impl Scores {
    /// The runs of one `--iterate` chain (or of separate file sets), oldest first.
    fn read_chain(dirs: &[PathBuf]) -> Result<Self> {
        let mut total = Self::default();
        for dir in dirs {
            let mut files = Vec::new();
            for name in OUTCOMES {
                let path: PathBuf = dir.join(format!("{name}.txt"));
                files.push(fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?);
            }
            let earlier = fs::read_to_string(dir.join("previously_caught.txt")).unwrap_or_default();
            total.add(&files, &earlier);
        }
        Ok(total)
    }

    /// One run's outcome files over what earlier runs recorded; its carried-over entries only
    /// fill in mutants without an outcome yet.
    fn add(&mut self, files: &[String], earlier: &str) {
        let lines = |t: &str| t.lines().filter(|l| !l.trim().is_empty()).map(str::to_owned).collect::<Vec<_>>();
        for l in lines(earlier) {
            self.0.entry(l).or_insert(0);
        }
        for (i, text) in files.iter().enumerate() {
            self.0.extend(lines(text).into_iter().map(|l| (l, i)));
        }
    }

    /// Per module: caught, missed, timeout, unviable.
    fn counts(&self) -> BTreeMap<String, [u32; 4]> {
        let mut m = BTreeMap::<String, [u32; 4]>::new();
        for (mutant, outcome) in &self.0 {
            let path = mutant.split(':').next().unwrap_or(mutant);
            m.entry(module(path)).or_default()[*outcome] += 1;
        }
        m
    }

    /// One line per module and a total: caught, missed, timeout, unviable, and the share of the
    /// viable mutants the tests detect. A timeout counts as detected: the tests did not pass (in
    /// the runs here they fail first, then a loop the mutant broke never ends), and a test run
    /// that hangs fails CI as surely as one that fails.
    fn table(&self) -> String {
        let mut s = format!(
            "{:<32} {:>7} {:>7} {:>8} {:>9} {:>8}\n",
            "module", "caught", "missed", "timeout", "unviable", "score"
        );
        let mut total = [0u32; 4];
        let mut row = |name: &str, c: [u32; 4]| {
            let viable = c[0] + c[1] + c[2];
            let score = if viable == 0 {
                "-".to_string()
            } else {
                format!("{:.1} %", 100.0 * (c[0] + c[2]) as f64 / viable as f64)
            };
            s.push_str(&format!("{name:<32} {:>7} {:>7} {:>8} {:>9} {score:>8}\n", c[0], c[1], c[2], c[3]));
        };
        for (name, c) in self.counts() {
            row(&name, c);
            for (t, v) in total.iter_mut().zip(c) {
                *t += v;
            }
        }
        row("total", total);
        s
    }
}

/// The module a mutated file belongs to, as docs/testing.md reports scores: a directory module by its
/// directory (`shadow-daemon/src/http/head.rs` is `http/`), a file module by its file.
fn module(path: &str) -> String {
    let rel = path.strip_prefix("shadow-daemon/src/").unwrap_or(path);
    match rel.split_once('/') {
        Some(("replay", rest)) => match rest.split_once('/') {
            Some((dir, _)) => format!("replay/{dir}/"),
            None => format!("replay/{rest}"),
        },
        Some((dir, _)) if dir != "metrics" => format!("{dir}/"),
        _ => rel.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_group_as_the_readme_reports_them() {
        assert_eq!(module("shadow-daemon/src/http/head.rs"), "http/");
        assert_eq!(module("shadow-daemon/src/reassembly/stream.rs"), "reassembly/");
        assert_eq!(module("shadow-daemon/src/segment.rs"), "segment.rs");
        assert_eq!(module("shadow-daemon/src/replay/edit.rs"), "replay/edit.rs");
        assert_eq!(module("shadow-daemon/src/replay/controls/rate.rs"), "replay/controls/");
        assert_eq!(module("shadow-daemon/src/metrics/ledger.rs"), "metrics/ledger.rs");
        assert_eq!(module("shadow-daemon/src/compare/diff.rs"), "compare/");
    }

    #[test]
    fn scores_count_each_mutant_once_with_its_last_outcome() {
        let files = [
            "shadow-daemon/src/segment.rs:58:9: replace Segment::fin -> bool with true\n\
             shadow-daemon/src/http/mod.rs:320:5: replace seq_lt -> bool with true\n"
                .to_string(),
            "shadow-daemon/src/segment.rs:61:9: replace Segment::rst -> bool with false\n".to_string(),
            "shadow-daemon/src/http/mod.rs:321:5: replace seq_lt -> bool with false\n".to_string(),
            "shadow-daemon/src/segment.rs:100:5: replace decode_header with Ok(Default::default())\n".to_string(),
        ];
        let mut s = Scores::default();
        s.add(&files, "");
        assert_eq!(s.counts()["segment.rs"], [1, 1, 0, 1]);
        assert_eq!(s.counts()["http/"], [1, 0, 1, 0]);
        let table = s.table();
        assert!(
            table.contains("segment.rs                             1       1        0         1   50.0 %"),
            "{table}"
        );
        assert!(
            table.contains("total                                  2       1        1         1   75.0 %"),
            "{table}"
        );
        // An --iterate run: the missed mutant is caught now; what earlier runs caught or found
        // unviable is carried over without changing their outcome; a new one is counted.
        let later = [
            "shadow-daemon/src/segment.rs:61:9: replace Segment::rst -> bool with false\n".to_string(),
            String::new(),
            String::new(),
            String::new(),
        ];
        let carried = "shadow-daemon/src/segment.rs:58:9: replace Segment::fin -> bool with true\n\
                       shadow-daemon/src/segment.rs:100:5: replace decode_header with Ok(Default::default())\n\
                       shadow-daemon/src/segment.rs:64:9: replace Segment::syn -> bool with true\n";
        s.add(&later, carried);
        assert_eq!(s.counts()["segment.rs"], [3, 0, 0, 1]);
    }

    #[test]
    fn shard_is_k_of_n_with_k_below_n() {
        assert_eq!(parse_shard("0/4"), Ok((0, 4)));
        assert_eq!(parse_shard("3/4"), Ok((3, 4)));
        assert!(parse_shard("4/4").is_err());
        assert!(parse_shard("1-4").is_err());
        assert!(parse_shard("a/4").is_err());
    }
}
