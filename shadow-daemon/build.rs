//! Builds the eBPF object (shadow-ebpf) with the nightly toolchain and bpf-linker, so that the daemon
//! can embed it. Missing prerequisites give one line pointing at `cargo xtask setup`. Also names
//! the build: `SHADOW_REVISION` for `--version` and `shadow_build_info`.

use std::{env, fs, path::PathBuf, process::Command};

const SKIP_ENV: &str = "SHADOW_SKIP_EBPF";
/// The revision a build says it is: given (a Docker build, where there is no .git), or the git
/// commit of the workspace.
const REVISION_ENV: &str = "SHADOW_REVISION";
/// The date of that revision, YYYY-MM-DD (given, or the commit's): the man pages' date.
const DATE_ENV: &str = "SHADOW_REVISION_DATE";

fn main() {
    println!("cargo:rerun-if-env-changed={SKIP_ENV}");
    println!("cargo:rerun-if-env-changed=PATH");
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    revision(&manifest_dir);
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = out_dir.join("shadow");

    if env::var(SKIP_ENV).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        // For fast `cargo check`/clippy/unit tests: an empty object; loading it fails with a
        // message that names SHADOW_SKIP_EBPF.
        fs::write(&object, b"").expect("write empty eBPF object placeholder");
        fs::write(out_dir.join("shadow-egress"), b"").expect("write empty egress object placeholder");
        println!("cargo:rustc-cfg=shadow_skip_ebpf");
        println!("cargo::rustc-check-cfg=cfg(shadow_skip_ebpf)");
        return;
    }
    println!("cargo::rustc-check-cfg=cfg(shadow_skip_ebpf)");

    if let Err(missing) = prerequisites() {
        println!(
            "cargo::error={missing}: run `cargo xtask setup` first (or set {SKIP_ENV}=1 to build without the eBPF object)"
        );
        return;
    }

    let workspace = manifest_dir.parent().expect("shadow-daemon lives in the workspace");
    let ebpf_dir = workspace.join("shadow-ebpf");
    let common_dir = workspace.join("shadow-common");
    println!("cargo:rerun-if-changed={}", common_dir.display());
    let ebpf_dir_str = ebpf_dir.to_str().expect("workspace path is UTF-8");
    let package = aya_build::Package { name: "shadow-ebpf", root_dir: ebpf_dir_str, ..Default::default() };
    if let Err(e) = aya_build::build_ebpf([package], aya_build::Toolchain::Nightly) {
        println!("cargo::error=building the eBPF object failed: {e:#}");
    }
}

/// `SHADOW_REVISION` for the crate: the variable if set, else the workspace's git commit (12 hex
/// digits), else `unknown`. Rebuilt when the variable or the checked-out commit changes.
fn revision(manifest_dir: &std::path::Path) {
    println!("cargo:rerun-if-env-changed={REVISION_ENV}");
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(manifest_dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    let given = env::var(REVISION_ENV).ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    let rev = match given {
        Some(r) => r,
        None => {
            if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
                // HEAD names the branch; the branch's ref (loose or packed) names the commit.
                for f in ["HEAD", "packed-refs"] {
                    println!("cargo:rerun-if-changed={dir}/{f}");
                }
                if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
                    println!("cargo:rerun-if-changed={dir}/{r}");
                }
            }
            git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into())
        }
    };
    // A label value and a --version line: printable, no spaces, bounded.
    let rev: String = rev.chars().filter(|c| c.is_ascii_graphic()).take(64).collect();
    println!("cargo:rustc-env={REVISION_ENV}={rev}");
    // The man pages' date: the commit's (YYYY-MM-DD), or the variable's, or none.
    println!("cargo:rerun-if-env-changed={DATE_ENV}");
    let date = env::var(DATE_ENV)
        .ok()
        .or_else(|| git(&["log", "-1", "--format=%cs"]))
        .filter(|d| d.len() == 10 && d.bytes().all(|b| b.is_ascii_digit() || b == b'-'))
        .unwrap_or_default();
    println!("cargo:rustc-env={DATE_ENV}={date}");
}

/// The eBPF build needs bpf-linker on PATH (linked against the nightly's LLVM) and the nightly's
/// rust-src for `-Z build-std=core`.
fn prerequisites() -> Result<(), String> {
    let linker_ok = Command::new("bpf-linker").arg("--version").output().is_ok_and(|o| o.status.success());
    if !linker_ok {
        return Err("bpf-linker is not installed or does not run".into());
    }
    let sysroot = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    match sysroot {
        None => Err("the nightly toolchain is not installed".into()),
        Some(s) if !s.join("lib/rustlib/src/rust/library/core").is_dir() => {
            Err("the nightly toolchain has no rust-src component".into())
        }
        Some(_) => Ok(()),
    }
}
