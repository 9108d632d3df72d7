//! The daemon binary's usage errors, as a process: exit code 2 and one line naming the flag, never
//! a panic. These fail before anything is attached, so they need no root.

use std::process::Command;

fn daemon(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shadow-daemon"))
        .args(args)
        .env_remove("SHADOW_CONFIG")
        .output()
        .expect("run shadow-daemon");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_duration_too_large_for_a_duration_is_a_usage_error() {
    for d in ["1e20", "inf", "-1", "0"] {
        let (code, err) = daemon(&["-i", "lo", "-p", "80", &format!("--duration={d}")]);
        assert_eq!(code, Some(2), "--duration {d}: {err}");
        assert!(err.contains("--duration"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}
