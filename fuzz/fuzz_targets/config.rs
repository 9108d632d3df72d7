//! The configuration: a TOML config file's text through the parser and validation `--config`
//! uses, or a command line (arguments separated by NUL bytes) through clap and `resolve`.
//!
//! Checked: no panic; an error names what is wrong (the file, `config NAME: ...`; a flag, `--x`;
//! a variable, `SHADOW_X`) and prints as one line; what is accepted is a valid configuration
//! (at least one rule, every rule with a service, unique names, no service in two rules, rates
//! within 100 %, comparison settings that validate), and reading the same text twice gives the
//! same rules.
#![no_main]

use std::{collections::HashSet, ffi::OsString};

use clap::FromArgMatches;
use libfuzzer_sys::fuzz_target;
use shadow_common::PPM_ALL;
use shadow_daemon::config::{
    Args, Rule, read_config_text,
    usage::{clap_line, command, single_line},
};

const NAME: &str = "/etc/shadow/shadow.toml";

/// What the binaries print for an error: one line, nothing that moves the terminal.
fn printed_one_line(e: &str) -> bool {
    let printed = single_line(e);
    !printed.is_empty() && !printed.chars().any(char::is_control)
}

fn check_rules<'a>(rules: impl Iterator<Item = &'a Rule>) {
    let mut names = HashSet::new();
    let mut services = HashSet::new();
    let mut n = 0;
    for r in rules {
        n += 1;
        assert!(names.insert(r.name.clone()), "duplicate rule name {}", r.name);
        assert!(!r.services().is_empty(), "rule {} has no service", r.name);
        assert!(r.ports.iter().all(|&p| p != 0), "rule {} has port 0", r.name);
        for s in r.services() {
            assert!(services.insert(s.to_string()), "service {s} in two rules");
        }
        assert!(r.sample_ppm <= PPM_ALL);
        assert!(r.controls.concurrency >= 1 && r.controls.queue_capacity >= 1);
        if let Some(c) = &r.compare {
            assert!(r.shadow.is_some(), "rule {} compares without a shadow", r.name);
            assert!(c.validate().is_ok(), "rule {}: accepted compare settings do not validate", r.name);
        }
    }
    assert!(n >= 1, "a configuration without a rule");
}

fn config_file(text: &str) {
    match read_config_text(NAME, text) {
        Ok(read) => {
            if let Some(i) = &read.interface {
                assert!(!i.trim().is_empty());
            }
            assert!(read.rules.iter().all(|(_, ppm)| ppm.is_none_or(|p| p <= PPM_ALL)));
            check_rules(read.rules.iter().map(|(r, _)| r));
            let again = read_config_text(NAME, text).expect("the same text is accepted twice");
            assert_eq!(again, read, "the same text reads as the same configuration");
        }
        Err(e) => {
            let e = e.to_string();
            assert!(e.starts_with(&format!("config {NAME}: ")), "the error names the file: {e}");
            assert!(printed_one_line(&e), "one line: {e:?}");
        }
    }
}

fn command_line(data: &[u8]) {
    let mut argv: Vec<OsString> = vec!["shadow-daemon".into()];
    for a in data.split(|&b| b == 0) {
        let a = String::from_utf8_lossy(a).into_owned();
        // The file is the other mode's; here it would be read from the fuzzing machine.
        if a.contains("config") {
            return;
        }
        argv.push(a.into());
    }
    let mut cmd = command::<Args>();
    match cmd.try_get_matches_from_mut(&argv).and_then(|m| Args::from_arg_matches(&m)) {
        Err(e) => {
            // --help and --version are printed as clap renders them; everything else is one line.
            let e = e.format(&mut cmd);
            let line = clap_line(&e, &cmd, &argv);
            assert!(e.exit_code() == 0 || printed_one_line(&line), "one line: {line:?}");
        }
        Ok(args) => match args.resolve() {
            Ok(cfg) => {
                assert!(cfg.source.is_none(), "no file, nothing to read again");
                check_rules(cfg.rules.iter());
                assert!(!cfg.interfaces.is_empty());
            }
            Err(e) => {
                let e = e.to_string();
                assert!(["--", "SHADOW_", "config "].iter().any(|p| e.starts_with(p)), "names what is wrong: {e:?}");
                assert!(printed_one_line(&e), "one line: {e:?}");
            }
        },
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode & 1 == 0 {
        if let Ok(text) = std::str::from_utf8(rest) {
            config_file(text);
        }
    } else {
        command_line(rest);
    }
});
