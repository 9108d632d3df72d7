//! `shadowctl`, the ops CLI: parse the command line, call the daemon's control socket, render
//! the answer as text (or JSON with `--json`), and exit with a code a script can act on.
//!
//! Exit codes: 0 done; 1 the daemon refused or failed the request (or `report`: FAIL);
//! 2 bad usage or argument (one line naming it); 3 `report` without enough data;
//! 4 the daemon is not running; 5 not permitted to use its socket.

use std::{fmt::Write as _, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use crate::{
    control::{
        Command, ErrorKind, Response, RuleStatus, Status,
        client::{self, ClientError},
    },
    hub::DaemonReport,
    reply::Reply,
};

pub const EXIT_OK: u8 = 0;
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = crate::config::usage::EXIT_USAGE;
pub const EXIT_INSUFFICIENT: u8 = 3;
pub const EXIT_NOT_RUNNING: u8 = 4;
pub const EXIT_NOT_PERMITTED: u8 = 5;

#[derive(Debug, Parser)]
#[command(name = "shadowctl", version = crate::VERSION, about = "Operate a running shadow-daemon through its control socket")]
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
    /// Per-endpoint PASS/FAIL/INSUFFICIENT of primary against shadow, with the failed gates;
    /// exit 0 PASS, 1 FAIL, 3 not enough data.
    Report {
        /// Also write the report as an HTML page to FILE (one page per rule: FILE, or
        /// FILE-stem.RULE.html when several rules compare).
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
        /// Read the report from a summary file the daemon wrote at exit (--summary-file) instead
        /// of asking a running daemon.
        #[arg(long, value_name = "SUMMARY.json")]
        from: Option<PathBuf>,
    },
    /// Recent mismatching primary/shadow pairs.
    Diffs {
        #[arg(long)]
        endpoint: Option<String>,
    },
    /// Start a new comparison epoch (drop everything compared so far), of one rule or of every
    /// comparing rule: for a new shadow build the daemon cannot tell by itself.
    Reset {
        #[arg(long)]
        rule: Option<String>,
    },
    /// Print shadowctl's completion script for a shell, e.g. `shadowctl completions bash >
    /// /usr/share/bash-completion/completions/shadowctl` (no daemon needed).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages of shadow-daemon and shadowctl (section 8, one more per shadowctl
    /// command) into DIR, e.g. /usr/local/share/man/man8 (no daemon needed).
    Man {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Destinations the fenced shadows tried to reach (counts, verdicts, last seen, the process
    /// that tried first), of one rule or of all.
    Egress {
        #[command(subcommand)]
        action: Option<EgressAction>,
        #[arg(long)]
        rule: Option<String>,
    },
    /// The guarded ramps: state, step, rate, time and pairs at the step, each guard's evidence
    /// and the reason that decides now; or start, pause, resume or abort them.
    Ramp {
        #[command(subcommand)]
        action: Option<RampCmd>,
        #[arg(long)]
        rule: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum RampCmd {
    /// Start a ramp that is off, tripped or done: from its baseline and first step.
    Start {
        #[arg(long)]
        rule: Option<String>,
    },
    /// Hold a ramp at its step (the guards still watch and can trip it).
    Pause {
        #[arg(long)]
        rule: Option<String>,
    },
    /// Go on after a pause; after a trip, start again from the first step.
    Resume {
        #[arg(long)]
        rule: Option<String>,
    },
    /// Stop the ramp: the rule's rate goes to 0 and is yours to set with `rate`.
    Abort {
        #[arg(long)]
        rule: Option<String>,
    },
}

impl RampCmd {
    fn split(&self) -> (crate::ramp::RampAction, Option<String>) {
        use crate::ramp::RampAction as A;
        match self {
            Self::Start { rule } => (A::Start, rule.clone()),
            Self::Pause { rule } => (A::Pause, rule.clone()),
            Self::Resume { rule } => (A::Resume, rule.clone()),
            Self::Abort { rule } => (A::Abort, rule.clone()),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum EgressAction {
    /// Take a rule's fence down (its links unpinned, its counts kept) until the next reload or
    /// restart of the daemon.
    Detach {
        #[arg(long)]
        rule: String,
    },
}

fn parse_percent(s: &str) -> Result<f64, String> {
    match s.trim().trim_end_matches('%').parse::<f64>() {
        Ok(v) if (0.0..=100.0).contains(&v) => Ok(v),
        _ => Err(format!("'{s}' is not a percentage (0-100)")),
    }
}

impl Cmd {
    /// The request this command sends to the daemon; `None` for the commands shadowctl answers
    /// by itself (completions, man).
    fn to_command(&self) -> Option<Command> {
        Some(match self {
            Self::Status => Command::Status,
            Self::Rate { percent, rule } => Command::Rate { percent: *percent, rule: rule.clone() },
            Self::Pause { rule } => Command::Pause { rule: rule.clone() },
            Self::Resume { rule } => Command::Resume { rule: rule.clone() },
            Self::Stats => Command::Stats,
            Self::Reload => Command::Reload,
            Self::Report { .. } => Command::Report,
            Self::Diffs { endpoint } => Command::Diffs { endpoint: endpoint.clone() },
            Self::Reset { rule } => Command::Reset { rule: rule.clone() },
            Self::Egress { action: None, rule } => Command::Egress { rule: rule.clone() },
            Self::Egress { action: Some(EgressAction::Detach { rule }), .. } => {
                Command::EgressDetach { rule: rule.clone() }
            }
            Self::Ramp { action: None, rule } => Command::Ramp { rule: rule.clone(), action: None },
            Self::Ramp { action: Some(a), rule } => {
                let (action, own) = a.split();
                Command::Ramp { rule: own.or_else(|| rule.clone()), action: Some(action) }
            }
            Self::Completions { .. } | Self::Man { .. } => return None,
        })
    }
}

/// The completion script of shadowctl for `shell`.
pub fn completions(shell: clap_complete::Shell) -> String {
    use clap::CommandFactory;
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "shadowctl", &mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// The man pages (file name, roff) of shadow-daemon, shadowctl and each shadowctl command,
/// section 8, from the same definitions as the parsers.
pub fn man_pages() -> Result<Vec<(String, Vec<u8>)>, std::io::Error> {
    use clap::CommandFactory;
    let page = |cmd: clap::Command| -> Result<Vec<u8>, std::io::Error> {
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd)
            .section("8")
            .date(env!("SHADOW_REVISION_DATE"))
            .manual("shadow")
            .source(format!("shadow {}", crate::VERSION))
            .render(&mut buf)?;
        Ok(tidy_roff(&buf))
    };
    let mut out = vec![("shadow-daemon.8".to_owned(), page(crate::config::Args::command())?)];
    let ctl = Cli::command();
    out.push(("shadowctl.8".to_owned(), page(ctl.clone())?));
    for sub in ctl.get_subcommands() {
        let name = format!("shadowctl-{}", sub.get_name());
        out.push((format!("{name}.8"), page(sub.clone().name(name.clone()).bin_name(name.replace('-', " ")))?));
    }
    Ok(out)
}

/// A line break (`.br`) next to a paragraph break (a blank line, `.sp`) does nothing: clap_mangen
/// writes them around possible values, and `mandoc -T lint` warns of each. Dropped.
fn tidy_roff(page: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(page);
    let lines: Vec<&str> = text.split('\n').collect();
    let is_break = |l: &str| l.is_empty() || l == ".sp";
    let kept: Vec<&str> = lines
        .iter()
        .enumerate()
        .filter(|&(i, l)| {
            *l != ".br"
                || !(i.checked_sub(1).and_then(|p| lines.get(p)).is_some_and(|p| is_break(p))
                    || lines.get(i + 1).is_some_and(|n| is_break(n)))
        })
        .map(|(_, l)| *l)
        .collect();
    kept.join("\n").into_bytes()
}

fn write_man(dir: &std::path::Path) -> (u8, String, bool) {
    let pages = match man_pages() {
        Ok(p) => p,
        Err(e) => return (EXIT_FAILED, format!("man: {e}"), false),
    };
    if let Err(e) = std::fs::create_dir_all(dir) {
        return (EXIT_FAILED, format!("man: create {}: {e}", dir.display()), false);
    }
    let mut written = String::new();
    for (name, page) in &pages {
        let p = dir.join(name);
        if let Err(e) = std::fs::write(&p, page) {
            return (EXIT_FAILED, format!("man: write {}: {e}", p.display()), false);
        }
        let _ = writeln!(written, "{}", p.display());
    }
    (EXIT_OK, written, true)
}

pub fn main() -> ExitCode {
    let cli = match crate::config::usage::parse::<Cli>() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (code, out, answer) = run_full(&cli);
    if answer {
        print!("{out}");
    } else {
        eprintln!("shadowctl: {}", out.trim_end());
    }
    ExitCode::from(code)
}

/// Execute `cli`; returns the exit code and what to print (stdout on success, one stderr line
/// on failure).
pub fn run(cli: &Cli) -> (u8, String) {
    let (code, text, _) = run_full(cli);
    (code, text)
}

/// [`run`], and whether the text is the answer (stdout; a report's FAIL included) rather than
/// an error line (stderr).
pub fn run_full(cli: &Cli) -> (u8, String, bool) {
    let command = match (&cli.command, cli.command.to_command()) {
        (Cmd::Completions { shell }, _) => return (EXIT_OK, completions(*shell), true),
        (Cmd::Man { out }, _) => return write_man(out),
        (_, Some(c)) => c,
        (_, None) => return (EXIT_USAGE, "this command does not talk to the daemon".to_owned(), false),
    };
    if let Cmd::Report { from: Some(path), html } = &cli.command {
        return match report_from_summary(path) {
            Ok(r) => report_output(&r, cli.json, html.as_deref()),
            Err(e) => (EXIT_FAILED, format!("report: {e}"), false),
        };
    }
    let response = match client::call(&cli.control, command.clone()) {
        Ok(r) => r,
        Err(e) => {
            let code = match e {
                ClientError::NotRunning { .. } => EXIT_NOT_RUNNING,
                ClientError::NotPermitted { .. } => EXIT_NOT_PERMITTED,
                ClientError::Io { .. } | ClientError::Protocol { .. } => EXIT_FAILED,
            };
            return (code, e.to_string(), false);
        }
    };
    if let (Cmd::Report { html, .. }, None) = (&cli.command, &response.error) {
        let data = response.data.clone().unwrap_or(serde_json::Value::Null);
        return match Reply::decode(&Command::Report, data) {
            Ok(Reply::Report(r)) => report_output(&r, cli.json, html.as_deref()),
            Ok(_) => (EXIT_FAILED, "report: the daemon's answer is not a report".to_owned(), false),
            Err(e) => (EXIT_FAILED, format!("report: the daemon's answer is not a report: {e}"), false),
        };
    }
    let (code, text) = render(&command, cli.json, response);
    (code, text, code == EXIT_OK)
}

/// The report in a summary file the daemon wrote at exit.
pub fn report_from_summary(path: &std::path::Path) -> Result<DaemonReport, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: not a JSON summary: {e}", path.display()))?;
    match v.get("compare") {
        Some(c) if !c.is_null() => serde_json::from_value(c.clone())
            .map_err(|e| format!("{}: the summary's report does not read: {e}", path.display())),
        _ => Err(format!("{}: no comparison report in this summary (no rule compared)", path.display())),
    }
}

/// Print (and with `html`, write) a report; the exit code is the verdict's.
fn report_output(r: &DaemonReport, json: bool, html: Option<&std::path::Path>) -> (u8, String, bool) {
    let mut out =
        if json { format!("{}\n", serde_json::to_string_pretty(r).unwrap_or_default()) } else { r.render_text() };
    if let Some(path) = html {
        // The egress findings of each rule on its page.
        let findings = |rule: &str| -> Vec<String> {
            r.egress.iter().filter(|f| f.rule == rule).map(crate::egress::EgressFinding::line).collect()
        };
        let pages: Vec<(PathBuf, String)> = match r.rules.as_slice() {
            [one] => vec![(path.to_path_buf(), one.report.render_html_with(&findings(&one.rule)))],
            many => many
                .iter()
                .map(|rr| {
                    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                    let safe: String =
                        rr.rule.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
                    (
                        path.with_file_name(format!("{stem}.{safe}.html")),
                        rr.report.render_html_with(&findings(&rr.rule)),
                    )
                })
                .collect(),
        };
        for (p, page) in pages {
            if let Err(e) = std::fs::write(&p, page) {
                return (EXIT_FAILED, format!("report: write {}: {e}", p.display()), false);
            }
            if !json {
                out.push_str(&format!("HTML report written to {}\n", p.display()));
            }
        }
    }
    let code = u8::try_from(r.exit_code()).unwrap_or(EXIT_FAILED);
    (code, out, true)
}

fn render(cmd: &Command, json: bool, r: Response) -> (u8, String) {
    if let Some(e) = r.error {
        let code = match e.kind {
            ErrorKind::InvalidArgument | ErrorKind::NoSuchRule | ErrorKind::BadRequest | ErrorKind::Version => {
                EXIT_USAGE
            }
            ErrorKind::Refused => EXIT_NOT_PERMITTED,
            _ => EXIT_FAILED,
        };
        return (code, format!("{}: {}", cmd.as_str(), e.message));
    }
    let data = r.data.unwrap_or(serde_json::Value::Null);
    if json {
        return (EXIT_OK, pretty(&data));
    }
    let text = match Reply::decode(cmd, data.clone()) {
        Err(_) => pretty(&data),
        Ok(Reply::Status(s)) => status_text(&s),
        Ok(Reply::Stats(s)) => format!("{s}\n"),
        Ok(Reply::Report(r)) => r.render_text(),
        Ok(Reply::Diffs(d)) if d.is_empty() => "no mismatching pairs kept\n".to_owned(),
        Ok(Reply::Diffs(d)) => d.iter().map(|x| format!("rule {}:\n{}\n", x.rule, x.sample.render())).collect(),
        Ok(Reply::Reset(e)) if e.is_empty() => "no rule compares: nothing to reset\n".to_owned(),
        Ok(Reply::Reset(e)) => e.iter().map(|x| format!("rule {}: {}\n", x.rule, x.epoch.describe())).collect(),
        Ok(Reply::Egress(e)) => egress_text(&e, unix_now()),
        Ok(Reply::Ramp(r)) => ramp_text(&r.rules),
    };
    (EXIT_OK, text)
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
    for r in s.rules.iter().filter_map(|r| r.ramp.as_ref()) {
        let _ = writeln!(
            out,
            "ramp {}: {} at step {} of {} ({}): {}",
            r.rule,
            r.state,
            r.step + 1,
            r.steps,
            percent(r.rate_percent),
            r.reason
        );
    }
    if !s.counters.is_empty() {
        let _ = writeln!(out);
        let c: Vec<String> = s.counters.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(out, "{}", c.join("  "));
    }
    out
}

/// `shadowctl ramp` as a person reads it: per rule its state and step, what decides now, each
/// guard's evidence against where it trips, and the last transition.
pub fn ramp_text(rules: &[crate::ramp::RampStatus]) -> String {
    let mut out = String::new();
    if rules.is_empty() {
        out.push_str("no rule ramps ([rule.ramp], --ramp)\n");
    }
    for r in rules {
        let _ = writeln!(
            out,
            "rule {}: {}, step {} of {} at {}, {:.0} s at the step, {} {}",
            r.rule,
            r.state,
            r.step + 1,
            r.steps,
            percent(r.rate_percent),
            r.seconds_at_step,
            r.pairs,
            if r.state == crate::ramp::State::Baseline { "primary responses" } else { "pairs" }
        );
        let _ = writeln!(out, "  {}", r.reason);
        if let Some(b) = r.baseline_p99_ms {
            let _ = writeln!(out, "  baseline: the primary's p99 at most {b:.2} ms");
        }
        for g in &r.guards {
            let _ = writeln!(
                out,
                "  {:<9} {} against, {} reverse, of {}: evidence {:.2} (trips at {:.0})",
                g.guard.as_str(),
                g.against,
                g.reverse,
                g.n,
                g.evidence,
                g.trips_at
            );
        }
        if let Some(t) = &r.last_transition {
            let _ = writeln!(out, "  last: {} -> {} ({}): {}", t.from, t.to, t.reason.label(), t.detail);
        }
    }
    out
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// `shadowctl egress` as a person reads it: per rule its fence, then what was tried, most
/// attempts first.
pub fn egress_text(e: &crate::egress::EgressStatus, now_unix: f64) -> String {
    let mut out = String::new();
    if e.rules.is_empty() {
        out.push_str("no rule has an egress fence\n");
    }
    for r in &e.rules {
        let _ = writeln!(
            out,
            "rule {}: {}, on {} cgroup(s){}",
            r.rule,
            r.mode,
            r.attached.len(),
            if r.attached.is_empty() { format!(" (none matches {} yet)", r.cgroups.join(", ")) } else { String::new() }
        );
        for c in &r.attached {
            let _ = writeln!(out, "  cgroup {c}");
        }
        let _ =
            writeln!(out, "  allowed: {}", if r.allow.is_empty() { "nothing".to_owned() } else { r.allow.join(", ") });
        let a = &r.attempts;
        let _ = writeln!(out, "  attempts: {} allowed, {} refused, {} observed", a.allowed, a.refused, a.observed);
        if r.unlisted != crate::egress::AttemptCounts::default() {
            let u = &r.unlisted;
            let _ = writeln!(
                out,
                "  not listed (the kernel's table was full): {} allowed, {} refused, {} observed",
                u.allowed, u.refused, u.observed
            );
        }
        if r.destinations.is_empty() {
            let _ = writeln!(out, "  nothing tried yet");
            continue;
        }
        let head = ["DESTINATION", "PROTO", "CALL", "VERDICT", "ATTEMPTS", "LAST SEEN", "FIRST BY"].map(String::from);
        let rows: Vec<[String; 7]> = r
            .destinations
            .iter()
            .map(|d| {
                [
                    d.destination.clone(),
                    d.protocol.clone(),
                    d.call.clone(),
                    d.verdict.clone(),
                    d.attempts.to_string(),
                    ago(now_unix - d.last_seen_unix),
                    if d.process.is_empty() { "-".into() } else { format!("{} (pid {})", d.process, d.pid) },
                ]
            })
            .collect();
        let mut widths = head.clone().map(|h| h.len());
        for row in &rows {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        for row in std::iter::once(&head).chain(&rows) {
            let line: Vec<String> = row.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
            let _ = writeln!(out, "  {}", line.join("  ").trim_end());
        }
    }
    out
}

/// `4s ago`, `3m ago`, `2h ago`, `5d ago`.
fn ago(secs: f64) -> String {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let s = secs.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::RuleEpoch;

    fn cli(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("shadowctl").chain(args.iter().copied()))
    }

    #[test]
    fn rate_takes_a_percentage_and_names_the_bad_value() {
        let c = cli(&["rate", "12.5", "--rule", "api"]).expect("parse");
        assert_eq!(c.command.to_command(), Some(Command::Rate { percent: 12.5, rule: Some("api".into()) }));
        assert!(matches!(cli(&["rate", "10%"]).expect("10%").command, Cmd::Rate { percent: 10.0, .. }));
        for bad in ["101", "-1", "x", "NaN", "inf"] {
            let e = cli(&["rate", bad]).expect_err(bad);
            assert!(e.to_string().contains(&format!("'{bad}' is not a percentage")), "{e}");
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
        assert_eq!(render(&Command::Status, false, r(ErrorKind::NoSuchRule)).0, EXIT_USAGE);
        assert_eq!(render(&Command::Status, false, r(ErrorKind::InvalidArgument)).0, EXIT_USAGE);
        assert_eq!(render(&Command::Reload, false, r(ErrorKind::Rejected)).0, EXIT_FAILED);
        assert_eq!(render(&Command::Status, false, r(ErrorKind::Refused)).0, EXIT_NOT_PERMITTED);
        let (code, text) = render(&Command::Reload, false, r(ErrorKind::Rejected));
        assert_eq!((code, text.as_str()), (EXIT_FAILED, "reload: why"));
    }

    #[test]
    fn reset_takes_an_optional_rule_and_says_each_new_epoch() {
        let c = cli(&["reset", "--rule", "demo"]).expect("parse");
        assert_eq!(c.command.to_command(), Some(Command::Reset { rule: Some("demo".into()) }));
        assert_eq!(cli(&["reset"]).expect("parse").command.to_command(), Some(Command::Reset { rule: None }));
        assert!(cli(&["reset", "demo"]).is_err(), "the rule is named with --rule");
        assert!(cli(&["reset", "--rule"]).is_err());

        let epoch = crate::compare::EpochInfo {
            number: 2,
            started_unix_ms: 1_796_409_000_250,
            reason: crate::compare::EpochReason::Reset,
            version: None,
            previous_version: None,
            dropped_in_flight: 0,
            version_missing: 0,
        };
        let answer = |v| Response::ok(serde_json::to_value(v).expect("encode"));
        let cmd = Command::Reset { rule: Some("demo".into()) };
        let (code, text) = render(&cmd, false, answer(vec![RuleEpoch { rule: "demo".into(), epoch: epoch.clone() }]));
        assert_eq!((code, text.as_str()), (EXIT_OK, "rule demo: epoch 2 since 2026-12-04T18:30:00.250Z (reset)\n"));
        let (code, text) = render(&Command::Reset { rule: None }, false, answer(Vec::<RuleEpoch>::new()));
        assert_eq!((code, text.as_str()), (EXIT_OK, "no rule compares: nothing to reset\n"));
        let (code, text) =
            render(&cmd, false, Response::error(ErrorKind::NoSuchRule, "no rule named 'demo' (rules: api)"));
        assert_eq!((code, text.as_str()), (EXIT_USAGE, "reset: no rule named 'demo' (rules: api)"));
        let (_, json) = render(&cmd, true, answer(vec![RuleEpoch { rule: "demo".into(), epoch }]));
        let back: Vec<RuleEpoch> = serde_json::from_str(&json).expect("--json is the answer");
        assert_eq!(back[0].epoch.reason, crate::compare::EpochReason::Reset);
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
                ramp: None,
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

    #[test]
    fn report_from_a_summary_file_exits_with_the_verdict_and_writes_html() {
        use crate::{
            compare::{Comparator, CompareSettings, ResponseSample},
            hub::{PairStats, RuleReport},
        };
        let mut c = Comparator::new(&CompareSettings::default()).expect("settings");
        let r = |status| ResponseSample { status, body_complete: true, ..ResponseSample::default() };
        for _ in 0..100 {
            c.observe("GET /a", &r(200), &r(500));
        }
        let report = DaemonReport {
            verdict: c.report().verdict,
            rules: vec![RuleReport { rule: "api".into(), report: c.report() }],
            pairs: PairStats::default(),
            egress: vec![crate::egress::EgressFinding {
                rule: "api".into(),
                destination: "203.0.113.9:443".into(),
                protocol: "tcp".into(),
                verdict: "refused".into(),
                attempts: 3,
                process: "orders (pid 7)".into(),
            }],
        };
        let dir = std::env::temp_dir().join(format!("shadowctl-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let summary = dir.join("summary.json");
        std::fs::write(&summary, serde_json::json!({"interface": "lo", "compare": report}).to_string()).expect("write");
        let html = dir.join("r.html");
        let (s, h) = (summary.to_str().unwrap_or_default(), html.to_str().unwrap_or_default());
        let (code, out, answer) = run_full(&cli(&["report", "--from", s, "--html", h]).expect("parse"));
        assert_eq!((code, answer), (EXIT_FAILED, true), "{out}");
        assert!(
            out.contains("GET /a") && out.contains("FAIL") && out.contains("overall verdict: FAIL (exit 1)"),
            "{out}"
        );
        let page = std::fs::read_to_string(&html).expect("html written");
        assert!(page.contains("<html"));
        let finding =
            "rule api: the shadow tried to reach 203.0.113.9:443 (tcp) 3 time(s): refused, first by orders (pid 7)";
        assert!(page.contains(&format!("<li>{finding}</li>")), "the rule's egress finding on its page");
        assert!(out.contains(&format!("  {finding}\n")), "and in the text: {out}");
        let (code, out, _) = run_full(&cli(&["report", "--json", "--from", s]).expect("parse"));
        let back: DaemonReport = serde_json::from_str(&out).expect("--json is the report");
        assert_eq!((code, back), (EXIT_FAILED, report));

        std::fs::write(&summary, r#"{"interface":"lo","compare":null}"#).expect("write");
        let (code, out, answer) = run_full(&cli(&["report", "--from", s]).expect("parse"));
        assert_eq!((code, answer), (EXIT_FAILED, false));
        assert!(out.contains("no comparison report") && out.lines().count() == 1, "{out}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn egress_commands_parse_and_the_table_reads_well() {
        assert_eq!(cli(&["egress"]).expect("egress").command.to_command(), Some(Command::Egress { rule: None }));
        assert_eq!(
            cli(&["egress", "--rule", "orders"]).expect("egress").command.to_command(),
            Some(Command::Egress { rule: Some("orders".into()) })
        );
        assert_eq!(
            cli(&["egress", "detach", "--rule", "orders"]).expect("detach").command.to_command(),
            Some(Command::EgressDetach { rule: "orders".into() })
        );
        assert!(cli(&["egress", "detach"]).is_err(), "detach names its rule");
        use crate::egress::{AttemptCounts, DestinationSeen, EgressStatus, RuleEgress};
        let row = |d: &str, p: &str, v: &str, n: u64, last: f64, who: &str| DestinationSeen {
            destination: d.into(),
            protocol: p.into(),
            call: if p == "udp" { "sendmsg" } else { "connect" }.into(),
            verdict: v.into(),
            attempts: n,
            first_seen_unix: 0.0,
            last_seen_unix: last,
            pid: 42,
            process: who.into(),
        };
        let s = EgressStatus {
            rules: vec![
                RuleEgress {
                    rule: "orders".into(),
                    mode: "enforce".into(),
                    cgroups: vec!["/sys/fs/cgroup/x.service".into()],
                    attached: vec!["/sys/fs/cgroup/x.service".into()],
                    allow: vec!["10.0.0.0/8:5432".into()],
                    attempts: AttemptCounts { allowed: 7, refused: 3, observed: 0 },
                    destinations: vec![
                        row("10.0.0.5:5432", "tcp", "allowed", 7, 996.0, "orders"),
                        row("203.0.113.9:443", "tcp", "refused", 3, 700.0, ""),
                    ],
                    unlisted: AttemptCounts::default(),
                },
                RuleEgress {
                    rule: "web".into(),
                    mode: "observe".into(),
                    cgroups: vec!["/sys/fs/cgroup/kubepods.slice/*/pod*".into()],
                    unlisted: AttemptCounts { allowed: 0, refused: 0, observed: 4 },
                    ..Default::default()
                },
            ],
        };
        let text = egress_text(&s, 1000.0);
        let want = "rule orders: enforce, on 1 cgroup(s)
  cgroup /sys/fs/cgroup/x.service
  allowed: 10.0.0.0/8:5432
  attempts: 7 allowed, 3 refused, 0 observed
  DESTINATION      PROTO  CALL     VERDICT  ATTEMPTS  LAST SEEN  FIRST BY
  10.0.0.5:5432    tcp    connect  allowed  7         4s ago     orders (pid 42)
  203.0.113.9:443  tcp    connect  refused  3         5m ago     -
rule web: observe, on 0 cgroup(s) (none matches /sys/fs/cgroup/kubepods.slice/*/pod* yet)
  allowed: nothing
  attempts: 0 allowed, 0 refused, 0 observed
  not listed (the kernel's table was full): 0 allowed, 0 refused, 4 observed
  nothing tried yet
";
        assert_eq!(text, want);
        assert_eq!(egress_text(&EgressStatus::default(), 0.0), "no rule has an egress fence\n");
        assert_eq!(
            [ago(59.4), ago(3599.0), ago(7200.0), ago(200_000.0), ago(-3.0)],
            ["59s ago", "59m ago", "2h ago", "2d ago", "0s ago"]
        );
    }

    #[test]
    fn ramp_commands_parse_and_read_well() {
        use crate::ramp::RampAction;
        assert_eq!(
            cli(&["ramp"]).expect("ramp").command.to_command(),
            Some(Command::Ramp { rule: None, action: None })
        );
        assert_eq!(
            cli(&["ramp", "--rule", "api"]).expect("ramp").command.to_command(),
            Some(Command::Ramp { rule: Some("api".into()), action: None })
        );
        for (word, action) in [
            ("start", RampAction::Start),
            ("pause", RampAction::Pause),
            ("resume", RampAction::Resume),
            ("abort", RampAction::Abort),
        ] {
            assert_eq!(
                cli(&["ramp", word, "--rule", "api"]).expect("action").command.to_command(),
                Some(Command::Ramp { rule: Some("api".into()), action: Some(action) })
            );
            assert_eq!(
                cli(&["ramp", word]).expect("action").command.to_command(),
                Some(Command::Ramp { rule: None, action: Some(action) }),
                "without --rule: every ramp"
            );
        }
        assert!(cli(&["ramp", "faster"]).is_err());
        use crate::ramp::{Guard, GuardStatus, RampStatus, State};
        let s = RampStatus {
            rule: "api".into(),
            state: State::Holding,
            step: 2,
            steps: 6,
            rate_percent: 10.0,
            seconds_at_step: 310.4,
            pairs: 57,
            reason: "57/200 pairs at step 3 after 310 s".into(),
            baseline_p99_ms: Some(41.868),
            guards: vec![GuardStatus {
                guard: Guard::Latency,
                n: 57,
                against: 4,
                reverse: 3,
                evidence: 0.5,
                trips_at: 480.0,
            }],
            last_transition: None,
        };
        let text = ramp_text(&[s]);
        assert_eq!(
            text,
            "rule api: holding, step 3 of 6 at 10%, 310 s at the step, 57 pairs\n  57/200 pairs at step 3 after 310 s\n  \
             baseline: the primary's p99 at most 41.87 ms\n  latency   4 against, 3 reverse, of 57: evidence 0.50 (trips at 480)\n"
        );
        assert_eq!(ramp_text(&[]), "no rule ramps ([rule.ramp], --ramp)\n");
    }
}
