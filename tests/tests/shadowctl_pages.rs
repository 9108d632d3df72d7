//! `shadowctl completions SHELL` and `shadowctl man --out DIR` from the release binary, as the
//! Dockerfile and the unit's instructions install them: the bash script passes `bash -n` and
//! completes every command, and every man page (the daemon's, shadowctl's, one per command)
//! passes `mandoc -T lint` without a warning.

use std::{collections::BTreeSet, process::Command};

use shadow_tests::{Scratch, require_tool, workspace_bin};

fn shadowctl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(workspace_bin("shadowctl")).args(args).output().expect("run shadowctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// shadowctl's commands, from its own help.
fn commands() -> BTreeSet<String> {
    let (ok, help, err) = shadowctl(&["--help"]);
    assert!(ok, "{err}");
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect()
}

#[test]
fn completions_parse_and_name_every_command() {
    let cmds = commands();
    assert!(cmds.contains("ramp") && cmds.contains("egress") && cmds.contains("status"), "{cmds:?}");
    for shell in ["bash", "zsh", "fish"] {
        let (ok, script, err) = shadowctl(&["completions", shell]);
        assert!(ok && err.is_empty(), "{shell}: {err}");
        for c in &cmds {
            assert!(script.contains(c.as_str()), "{shell} completion lacks {c}");
        }
    }
    let (ok, _, err) = shadowctl(&["completions", "tcsh"]);
    assert!(!ok && err.contains("tcsh"), "an unknown shell is refused, naming it: {err}");
    if !require_tool("completions_parse", "bash") {
        return;
    }
    let scratch = Scratch::new("pages-bash");
    let path = scratch.path("shadowctl.bash");
    std::fs::write(&path, shadowctl(&["completions", "bash"]).1).expect("write");
    let out = Command::new("bash").arg("-n").arg(&path).output().expect("bash -n");
    assert!(out.status.success(), "bash -n: {}", String::from_utf8_lossy(&out.stderr));
    // Sourced, it completes `shadowctl ra` to the commands starting with "ra".
    let probe = format!(
        "source {}; COMP_WORDS=(shadowctl ra); COMP_CWORD=1; COMP_LINE='shadowctl ra'; COMP_POINT=12; \
         _shadowctl shadowctl ra shadowctl; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        path.display()
    );
    let out = Command::new("bash").arg("-c").arg(&probe).output().expect("bash");
    let got: BTreeSet<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
    let want: BTreeSet<String> = cmds.iter().filter(|c| c.starts_with("ra")).cloned().collect();
    assert_eq!(got, want, "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn man_pages_pass_mandoc_lint() {
    if !require_tool("man_pages_pass_mandoc_lint", "mandoc") {
        return;
    }
    let scratch = Scratch::new("pages-man");
    let dir = scratch.path("man8");
    let (ok, listed, err) = shadowctl(&["man", "--out", dir.to_str().expect("utf-8")]);
    assert!(ok, "{err}");
    let mut want: BTreeSet<String> = commands().iter().map(|c| format!("shadowctl-{c}.8")).collect();
    want.insert("shadowctl.8".into());
    want.insert("shadow-daemon.8".into());
    let written: BTreeSet<String> = std::fs::read_dir(&dir)
        .expect("pages")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(written, want, "one page per command");
    assert_eq!(listed.lines().count(), want.len(), "each page written is listed: {listed}");
    for page in &written {
        let p = dir.join(page);
        let out = Command::new("mandoc").args(["-T", "lint", "-W", "warning"]).arg(&p).output().expect("mandoc");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && text.trim().is_empty(), "mandoc -T lint {page}:\n{text}");
    }
    // The pages say what the commands do: the ramp's actions, the daemon's flags.
    let ramp = std::fs::read_to_string(dir.join("shadowctl-ramp.8")).expect("ramp page");
    for action in ["start", "pause", "resume", "abort"] {
        assert!(ramp.contains(action), "shadowctl-ramp.8 lacks {action}");
    }
    let daemon = std::fs::read_to_string(dir.join("shadow-daemon.8")).expect("daemon page");
    for flag in ["ramp", "state\\-dir", "egress\\-cgroup"] {
        assert!(daemon.contains(flag), "shadow-daemon.8 lacks {flag}");
    }
}
