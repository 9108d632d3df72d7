//! `shadowctl`, the ops CLI: parse the command line, call the daemon's control socket, render
//! the answer as text (or JSON with `--json`), and exit with a code a script can act on.
//!
//! Exit codes: 0 done; 1 the daemon refused or failed the request (or `report`: FAIL);
//! 2 bad usage or argument (one line naming it); 3 `report` without enough data;
//! 4 the daemon is not running; 5 not permitted to use its socket.

use std::{fmt::Write as _, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use crate::control::{
    Command, ErrorKind, Response, RuleStatus, Status,
    client::{self, ClientError},
};

pub const EXIT_OK: u8 = 0;
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_INSUFFICIENT: u8 = 3;
pub const EXIT_NOT_RUNNING: u8 = 4;
pub const EXIT_NOT_PERMITTED: u8 = 5;

#[derive(Debug, Parser)]
#[command(name = "shadowctl", version, about = "Operate a running shadow-daemon through its control socket")]
pub struct Cli {
    /// The daemon's control socket (the daemon's --control).
    #[arg(long, env = "SHADOW_CONTROL", default_value = "/run/shadow/control.sock", global = true)]
    pub control: PathBuf,
    /// Print the daemon's answer as JSON.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Version, uptime, hook, interfaces, rules with their rates, key counters.
    Status,
    /// Set the sampling rate (percent of requests), of one rule or of all; applies from the next request.
    Rate {
        #[arg(value_parser = parse_percent, allow_negative_numbers = true)]
        percent: f64,
        #[arg(long)]
        rule: Option<String>,
    },
    /// Sample nothing (programs stay attached, counters keep counting), one rule or all.
    Pause {
        #[arg(long)]
        rule: Option<String>,
    },
    /// Sample again at the rate set before the pause.
    Resume {
        #[arg(long)]
        rule: Option<String>,
    },
    /// Counters, drop reasons and latency percentiles.
    Stats,
    /// Re-read the config file (as SIGHUP does); an invalid file is refused and the old one runs on.
    Reload,
    /// Per-endpoint report.
    Report,
    /// Recent mismatching primary/shadow pairs.
    Diffs {
        #[arg(long)]
        endpoint: Option<String>,
    },
}

fn parse_percent(s: &str) -> Result<f64, String> {
    match s.trim().trim_end_matches('%').parse::<f64>() {
        Ok(v) if (0.0..=100.0).contains(&v) => Ok(v),
        _ => Err(format!("'{s}' is not a percentage (0-100)")),
    }
}

impl Cmd {
    fn to_command(&self) -> Command {
        match self {
            Self::Status => Command::Status,
            Self::Rate { percent, rule } => Command::Rate { percent: *percent, rule: rule.clone() },
            Self::Pause { rule } => Command::Pause { rule: rule.clone() },
            Self::Resume { rule } => Command::Resume { rule: rule.clone() },
            Self::Stats => Command::Stats,
            Self::Reload => Command::Reload,
            Self::Report => Command::Report,
            Self::Diffs { endpoint } => Command::Diffs { endpoint: endpoint.clone() },
        }
    }
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind as K;
            if matches!(e.kind(), K::DisplayHelp | K::DisplayVersion | K::DisplayHelpOnMissingArgumentOrSubcommand) {
                let _ = e.print();
                return ExitCode::from(if e.kind() == K::DisplayHelpOnMissingArgumentOrSubcommand {
                    EXIT_USAGE
                } else {
                    EXIT_OK
                });
            }
            eprintln!("shadowctl: {} (see shadowctl --help)", one_line(&e.to_string()));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let (code, out) = run(&cli);
    match code {
        EXIT_OK | EXIT_INSUFFICIENT => print!("{out}"),
        EXIT_FAILED if matches!(cli.command, Cmd::Report) => print!("{out}"),
        _ => eprintln!("shadowctl: {}", out.trim_end()),
    }
    ExitCode::from(code)
}

/// The first line of a clap error, without its "error: " prefix.
fn one_line(s: &str) -> String {
    s.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim_start_matches("error: ").trim().to_string()
}

/// Execute `cli`; returns the exit code and what to print (stdout on success, one stderr line
/// on failure).
pub fn run(cli: &Cli) -> (u8, String) {
    let response = match client::call(&cli.control, cli.command.to_command()) {
        Ok(r) => r,
        Err(e) => {
            let code = match e {
                ClientError::NotRunning { .. } => EXIT_NOT_RUNNING,
                ClientError::NotPermitted { .. } => EXIT_NOT_PERMITTED,
                ClientError::Io { .. } | ClientError::Protocol { .. } => EXIT_FAILED,
            };
            return (code, e.to_string());
        }
    };
    render(&cli.command, cli.json, response)
}

fn render(cmd: &Cmd, json: bool, r: Response) -> (u8, String) {
    if let Some(e) = r.error {
        let code = match e.kind {
            ErrorKind::InvalidArgument | ErrorKind::NoSuchRule | ErrorKind::BadRequest | ErrorKind::Version => {
                EXIT_USAGE
            }
            ErrorKind::Refused => EXIT_NOT_PERMITTED,
            _ => EXIT_FAILED,
        };
        return (code, format!("{}: {}", cmd_name(cmd), e.message));
    }
    let data = r.data.unwrap_or(serde_json::Value::Null);
    if json {
        return (EXIT_OK, format!("{}\n", serde_json::to_string_pretty(&data).unwrap_or_default()));
    }
    let text = match cmd {
        Cmd::Status | Cmd::Rate { .. } | Cmd::Pause { .. } | Cmd::Resume { .. } | Cmd::Reload => {
            match serde_json::from_value::<Status>(data.clone()) {
                Ok(s) => status_text(&s),
                Err(_) => pretty(&data),
            }
        }
        Cmd::Stats | Cmd::Report => match serde_json::from_value::<crate::metrics::Summary>(data.clone()) {
            Ok(s) => format!("{s}\n"),
            Err(_) => pretty(&data),
        },
        Cmd::Diffs { .. } => pretty(&data),
    };
    (EXIT_OK, text)
}

fn cmd_name(cmd: &Cmd) -> &'static str {
    cmd_command_name(&cmd.to_command())
}

fn cmd_command_name(c: &Command) -> &'static str {
    c.as_str()
}

fn pretty(v: &serde_json::Value) -> String {
    format!("{}\n", serde_json::to_string_pretty(v).unwrap_or_default())
}

fn percent(v: f64) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}%")
}

/// Status as a person reads it: one header line, the rules as a table, the key counters.
pub fn status_text(s: &Status) -> String {
    let mut out = String::new();
    let up = s.uptime_secs as u64;
    let _ = writeln!(
        out,
        "shadow-daemon {}, up {}h{:02}m{:02}s, hook {}, interfaces {}",
        s.version,
        up / 3600,
        up / 60 % 60,
        up % 60,
        s.hook,
        s.interfaces.join(",")
    );
    let _ = writeln!(
        out,
        "attached: {}",
        if s.attached.is_empty() { "(nothing)".to_string() } else { s.attached.join(", ") }
    );
    let _ = writeln!(out, "ring buffer: {} MiB", s.ring_buffer_bytes / (1024 * 1024));
    let _ = writeln!(out);
    let rows: Vec<[String; 6]> = s
        .rules
        .iter()
        .map(|r: &RuleStatus| {
            [
                r.name.clone(),
                r.matches.join(","),
                r.shadow.clone().unwrap_or_else(|| "(none: capture only)".into()),
                percent(r.sample_percent),
                percent(r.kernel_percent),
                if r.paused { "paused".into() } else { "active".into() },
            ]
        })
        .collect();
    let head = ["RULE", "MATCH", "SHADOW", "RATE", "IN KERNEL", "STATE"].map(String::from);
    let mut widths = head.clone().map(|h| h.len());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    for r in std::iter::once(&head).chain(&rows) {
        let line: Vec<String> = r.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    if !s.counters.is_empty() {
        let _ = writeln!(out);
        let c: Vec<String> = s.counters.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(out, "{}", c.join("  "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("shadowctl").chain(args.iter().copied()))
    }

    #[test]
    fn rate_takes_a_percentage_and_names_the_bad_value() {
        let c = cli(&["rate", "12.5", "--rule", "api"]).expect("parse");
        assert_eq!(c.command.to_command(), Command::Rate { percent: 12.5, rule: Some("api".into()) });
        assert!(matches!(cli(&["rate", "10%"]).expect("10%").command, Cmd::Rate { percent: 10.0, .. }));
        for bad in ["101", "-1", "x", "NaN", "inf"] {
            let e = cli(&["rate", bad]).expect_err(bad);
            assert!(one_line(&e.to_string()).contains(&format!("'{bad}' is not a percentage")), "{e}");
        }
    }

    #[test]
    fn json_and_control_are_accepted_after_the_command() {
        let c = cli(&["status", "--json", "--control", "/tmp/x.sock"]).expect("parse");
        assert!(c.json);
        assert_eq!(c.control, PathBuf::from("/tmp/x.sock"));
    }

    #[test]
    fn a_missing_socket_is_exit_4_with_one_line() {
        let c = cli(&["--control", "/nonexistent/shadow/control.sock", "status"]).expect("parse");
        let (code, msg) = run(&c);
        assert_eq!(code, EXIT_NOT_RUNNING);
        assert_eq!(msg.lines().count(), 1);
        assert!(msg.contains("not running"), "{msg}");
    }

    #[test]
    fn daemon_errors_map_to_exit_codes() {
        let r = |k| Response::error(k, "why");
        assert_eq!(render(&Cmd::Status, false, r(ErrorKind::NoSuchRule)).0, EXIT_USAGE);
        assert_eq!(render(&Cmd::Status, false, r(ErrorKind::InvalidArgument)).0, EXIT_USAGE);
        assert_eq!(render(&Cmd::Reload, false, r(ErrorKind::Rejected)).0, EXIT_FAILED);
        assert_eq!(render(&Cmd::Status, false, r(ErrorKind::Refused)).0, EXIT_NOT_PERMITTED);
        let (code, text) = render(&Cmd::Reload, false, r(ErrorKind::Rejected));
        assert_eq!((code, text.as_str()), (EXIT_FAILED, "reload: why"));
    }

    #[test]
    fn status_renders_rules_as_a_table() {
        let s = Status {
            version: "0.1.0".into(),
            uptime_secs: 3725.0,
            hook: "tc".into(),
            interfaces: vec!["eth0".into(), "veth*".into()],
            attached: vec!["tc ingress on eth0".into()],
            ring_buffer_bytes: 32 << 20,
            rules: vec![RuleStatus {
                name: "api".into(),
                matches: vec!["10.42.0.0/16:8080".into()],
                shadow: Some("10.0.3.7:8080".into()),
                sample_percent: 12.5,
                kernel_percent: 0.0,
                paused: true,
            }],
            counters: [("requests_captured".to_string(), 7u64)].into_iter().collect(),
        };
        let t = status_text(&s);
        assert!(t.contains("up 1h02m05s"), "{t}");
        assert!(t.contains("interfaces eth0,veth*"), "{t}");
        let row = t.lines().find(|l| l.starts_with("api")).expect("rule row");
        for want in ["10.42.0.0/16:8080", "10.0.3.7:8080", "12.5%", "0%", "paused"] {
            assert!(row.contains(want), "{want} in {row}");
        }
        assert!(t.contains("requests_captured 7"));
    }
}
