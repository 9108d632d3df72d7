//! Usage errors as the binaries print them: one line on stderr naming the flag, variable, field or
//! file, exit code 2. clap's own rendering spreads an error over several lines (tips, usage, "For
//! more information"); [`parse`] folds it into one, for `shadow-daemon` and `shadowctl` alike,
//! and leaves `--help` and `--version` as clap prints them.

use std::{ffi::OsString, process::ExitCode, sync::OnceLock};

use clap::{
    Parser,
    error::{ContextKind, ContextValue, ErrorKind},
    parser::ValueSource,
};

/// The exit code of a usage or configuration error.
pub const EXIT_USAGE: u8 = 2;

/// Parse the process's arguments (and `SHADOW_*` variables) into `P`. `--help` and `--version`
/// are printed and end in `Err(0)`; any other problem is printed as one line, `NAME: problem`,
/// and ends in `Err(2)`.
pub fn parse<P: Parser>() -> Result<P, ExitCode> {
    parse_from::<P>(std::env::args_os().collect())
}

fn parse_from<P: Parser>(argv: Vec<OsString>) -> Result<P, ExitCode> {
    let mut cmd = command::<P>();
    let name = cmd.get_name().to_owned();
    let parsed = cmd.try_get_matches_from_mut(argv.iter()).and_then(|mut m| {
        remember_env_sources(&cmd, &m);
        P::from_arg_matches_mut(&mut m)
    });
    match parsed {
        Ok(p) => Ok(p),
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            Err(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{name}: {}", clap_line(&e.format(&mut cmd), &cmd, &argv));
            Err(ExitCode::from(EXIT_USAGE))
        }
    }
}

/// `P`'s command, with every option that takes a value taking a negative number as one:
/// `--sample-rate -1` is an invalid value of `--sample-rate`, not an unknown flag `-1`.
pub fn command<P: Parser>() -> clap::Command {
    P::command().mut_args(|a| if a.get_action().takes_values() { a.allow_negative_numbers(true) } else { a })
}

/// The flags whose values came from their variable, as (`--flag`, `SHADOW_FLAG`): what the
/// checks after clap's name in their errors. Set once, by [`parse`].
static FROM_ENV: OnceLock<Vec<(String, String)>> = OnceLock::new();

fn remember_env_sources(cmd: &clap::Command, m: &clap::ArgMatches) {
    let from_env = cmd
        .get_arguments()
        .filter(|a| m.value_source(a.get_id().as_str()) == Some(ValueSource::EnvVariable))
        .filter_map(|a| Some((format!("--{}", a.get_long()?), a.get_env()?.to_string_lossy().into_owned())))
        .collect();
    let _ = FROM_ENV.set(from_env);
}

/// How an error names the setting of `flag` (`--shadow`): its variable when the value came from
/// there (`SHADOW_SHADOW`), else the flag.
pub fn setting_name(flag: &str) -> String {
    FROM_ENV
        .get()
        .and_then(|v| v.iter().find(|(f, _)| f == flag))
        .map_or_else(|| flag.to_owned(), |(_, var)| var.clone())
}

/// One line for a clap error: its message with the tips, value lists and missing arguments
/// folded in, the usage block dropped, the help hint as `(see NAME --help)`, and the variable
/// named when the bad value came from one (`SHADOW_PORT: invalid value '0' for '--port <PORT>'`).
pub fn clap_line(e: &clap::Error, cmd: &clap::Command, argv: &[OsString]) -> String {
    let name = cmd.get_name();
    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        let subs: Vec<&str> = cmd.get_subcommands().map(clap::Command::get_name).filter(|s| *s != "help").collect();
        return format!("a command is required: {} (see {name} --help)", subs.join(", "));
    }
    let rendered = e.render().to_string();
    // What follows the message: "\n\nUsage: ..." and "\n\nFor more information, try '--help'."
    let end = ["\n\nUsage:", "\n\nFor more information"].iter().filter_map(|m| rendered.find(m)).min();
    let message = &rendered[..end.unwrap_or(rendered.len())];
    let message = message.trim().strip_prefix("error:").unwrap_or(message).trim();
    let mut line = String::new();
    // clap indents what it puts on lines of their own (tips, value lists, missing arguments); a
    // line break without that indent is inside a value, and single_line() escapes it.
    for (i, part) in message.split("\n  ").map(str::trim).filter(|p| !p.is_empty()).enumerate() {
        if i == 0 {
            line.push_str(part);
        } else if let Some(tip) = part.strip_prefix("tip:") {
            line.push(';');
            line.push_str(tip);
        } else if line.ends_with(':') || part.starts_with('[') {
            // The list a line announces ("not provided:"), or "[possible values: ...]".
            line.push(' ');
            line.push_str(part);
        } else {
            line.push_str(", ");
            line.push_str(part);
        }
    }
    if let Some(var) = env_source(e, cmd, argv) {
        line = format!("{var}: {line}");
    }
    format!("{} (see {name} --help)", single_line(&line))
}

/// The `SHADOW_*` variable a rejected value came from: the argument's variable is set and the
/// command line does not give the flag.
fn env_source(e: &clap::Error, cmd: &clap::Command, argv: &[OsString]) -> Option<String> {
    let Some(ContextValue::String(invalid)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    let flag = invalid.split([' ', '=']).next()?;
    let args = cmd.get_arguments().chain(cmd.get_subcommands().flat_map(clap::Command::get_arguments));
    let arg = args.into_iter().find(|a| a.get_long().is_some_and(|l| flag == format!("--{l}")))?;
    let var = arg.get_env()?;
    std::env::var_os(var)?;
    let long = format!("--{}", arg.get_long()?);
    let short = arg.get_short().map(|s| format!("-{s}"));
    let on_command_line = argv.iter().skip(1).filter_map(|a| a.to_str()).any(|a| {
        a == long
            || a.strip_prefix(long.as_str()).is_some_and(|rest| rest.starts_with('='))
            || short.as_deref().is_some_and(|s| a.starts_with(s) && !a.starts_with("--"))
    });
    (!on_command_line).then(|| var.to_string_lossy().into_owned())
}

/// `s` on one line: control characters (a line break in a value echoed back, an escape
/// sequence) written as escapes (`\n`, `\u{1b}`), so that nothing can break the line or the
/// terminal and the value still shows what it was.
pub fn single_line(s: &str) -> String {
    s.trim().chars().map(|c| if c.is_control() { c.escape_debug().to_string() } else { c.to_string() }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::Args, ctl::Cli};

    fn line<P: Parser>(args: &[&str]) -> String {
        let argv: Vec<OsString> = std::iter::once("x").chain(args.iter().copied()).map(OsString::from).collect();
        let mut cmd = command::<P>();
        let e = cmd.try_get_matches_from_mut(argv.iter()).expect_err("must fail");
        clap_line(&e.format(&mut cmd), &cmd, &argv)
    }

    #[test]
    fn clap_errors_are_one_line_naming_the_flag() {
        for (args, want) in [
            (&["--prot", "80"][..], "unexpected argument '--prot' found; a similar argument exists: '--port'"),
            (&["-i", "lo", "--port", "0"], "invalid value '0' for '--port <PORT>': 0 is not a TCP port"),
            (&["-i", "lo", "--port"], "a value is required for '--port <PORT>' but none was supplied"),
            (
                &["-i", "lo", "--hook", "kprobe"],
                "invalid value 'kprobe' for '--hook <HOOK>' [possible values: tc, xdp]",
            ),
            (&["-i", "lo", "--memory-cap", "1KiB"], "'--memory-cap <BYTES>': 1024 bytes is below the 1 MiB minimum"),
            (&["-i", "lo", "stray"], "unexpected argument 'stray' found"),
            (&["-i", "lo", "-p", "80", "--sample-rate", "-1"], "invalid value '-1' for '--sample-rate <SAMPLE_RATE>'"),
        ] {
            let l = line::<Args>(args);
            assert!(l.contains(want), "{args:?}\n  got:  {l}\n  want: {want}");
            assert!(l.ends_with("(see shadow-daemon --help)") && !l.contains('\n'), "{l}");
        }
        for (args, want) in [
            (&["rate"][..], "the following required arguments were not provided: <PERCENT>"),
            (&["rate", "101"], "invalid value '101' for '<PERCENT>': '101' is not a percentage (0-100)"),
            (&["stauts"], "unrecognized subcommand 'stauts'; some similar subcommands exist: 'pause', 'status'"),
            (&["status", "--rule", "x"], "unexpected argument '--rule' found"),
            (&[], "a command is required: status, rate, pause, resume, stats, reload, report, diffs"),
        ] {
            let l = line::<Cli>(args);
            assert!(l.contains(want), "{args:?}\n  got:  {l}\n  want: {want}");
            assert!(l.ends_with("(see shadowctl --help)") && !l.contains('\n'), "{l}");
        }
    }

    #[test]
    fn a_value_with_line_breaks_stays_on_one_line() {
        let l = line::<Args>(&["-i", "lo", "--port", "8\n0"]);
        assert!(l.contains("invalid value '8\\n0' for '--port <PORT>'"), "{l}");
        assert_eq!(single_line(" a\n b\r\tc\u{1b}[2J "), "a\\n b\\r\\tc\\u{1b}[2J");
    }

    #[test]
    fn a_control_character_in_a_value_is_escaped_in_the_line() {
        // Found by the config fuzz target: the interface error echoed the value raw.
        let e = Args::try_parse_from(["shadow-daemon", "-i", "l\u{1f}\nx", "-p", "80"])
            .expect("parse")
            .resolve()
            .expect_err("not an interface name");
        let l = single_line(&e.to_string());
        assert!(l.starts_with("--interface: 'l\\u{1f}\\nx'"), "{l}");
        assert!(!l.chars().any(char::is_control), "{l:?}");
    }
}
