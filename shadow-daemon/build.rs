//! Builds the eBPF object (shadow-ebpf) with the nightly toolchain and bpf-linker, so that the daemon
//! can embed it. Missing prerequisites give one line pointing at `cargo xtask setup`.

use std::{env, fs, path::PathBuf, process::Command};

const SKIP_ENV: &str = "SHADOW_SKIP_EBPF";

fn main() {
    println!("cargo:rerun-if-env-changed={SKIP_ENV}");
    println!("cargo:rerun-if-env-changed=PATH");
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = out_dir.join("shadow");

    if env::var(SKIP_ENV).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        // For fast `cargo check`/clippy/unit tests: an empty object; loading it fails with a
        // message that names SHADOW_SKIP_EBPF.
        fs::write(&object, b"").expect("write empty eBPF object placeholder");
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
