//! The `shadow-testserver` binary's command line, defined once: [`FLAGS`] is each flag's name,
//! how its value sets the [`Options`] ([`parse`], for the binary's `main`) and how the options
//! give it back ([`Options::spawn`], for the tests, the demo and the bench that run the binary).
//!
//! shadow-testserver --listen ADDR [--record DIR] [--delay-ms N] [--response-bytes N]
//!                   [--max-conns N] [--close-after N] [--body-file PATH] [--keep-alive on|off]
//!                   [--mode ok|head-body|garbage|reset|endless|never-reads|resets-at-once|closes-at-once]
//!                   [--mode demo --version v1|v2 [--instance NAME]]

use std::{net::TcpListener, process::Stdio, time::Duration};

use super::{Body, Mode, Options, demo::Version, serve_forever};
use crate::{Proc, topo::NetNs, wait_for, workspace_bin};

pub const NAME: &str = "shadow-testserver";

/// What the command line says, before `--mode` and `--version` are put together.
struct Cli {
    listen: String,
    opts: Options,
    mode: String,
    version: Option<Version>,
}

/// One flag: its name, how its value sets the options, and its value for given options (None:
/// the default, left out).
struct Flag {
    name: &'static str,
    set: fn(&mut Cli, String) -> Result<(), String>,
    get: fn(&Options) -> Option<String>,
}

const FLAGS: [Flag; 11] = [
    Flag {
        name: "--listen",
        set: |c, v| {
            c.listen = v;
            Ok(())
        },
        // Given to `spawn` on its own.
        get: |_| None,
    },
    Flag {
        name: "--record",
        set: |c, v| {
            c.opts.record = Some(v.into());
            Ok(())
        },
        get: |o| o.record.as_ref().map(|d| d.display().to_string()),
    },
    Flag {
        name: "--delay-ms",
        set: |c, v| {
            c.opts.delay = Duration::from_millis(number(&v)?);
            Ok(())
        },
        get: |o| (!o.delay.is_zero()).then(|| o.delay.as_millis().to_string()),
    },
    Flag {
        name: "--response-bytes",
        set: |c, v| {
            c.opts.response_bytes = number(&v)?;
            Ok(())
        },
        get: |o| (o.response_bytes != Options::default().response_bytes).then(|| o.response_bytes.to_string()),
    },
    Flag {
        name: "--max-conns",
        set: |c, v| {
            c.opts.max_conns = number(&v)?;
            Ok(())
        },
        get: |o| (o.max_conns != Options::default().max_conns).then(|| o.max_conns.to_string()),
    },
    Flag {
        name: "--close-after",
        set: |c, v| {
            c.opts.close_after = number(&v)?;
            Ok(())
        },
        get: |o| (o.close_after != 0).then(|| o.close_after.to_string()),
    },
    Flag {
        name: "--body-file",
        set: |c, v| {
            c.opts.body = Some(Body::File(v.into()));
            Ok(())
        },
        get: |o| match &o.body {
            Some(Body::File(p)) => Some(p.display().to_string()),
            _ => None,
        },
    },
    Flag {
        name: "--keep-alive",
        set: |c, v| {
            c.opts.keep_alive = match v.as_str() {
                "on" => true,
                "off" => false,
                _ => return Err(format!("{v}: expected on or off")),
            };
            Ok(())
        },
        get: |o| (!o.keep_alive).then(|| "off".into()),
    },
    Flag {
        name: "--mode",
        set: |c, v| {
            c.mode = v;
            Ok(())
        },
        get: |o| (o.mode != Mode::Ok).then(|| o.mode.as_str().into()),
    },
    Flag {
        name: "--version",
        set: |c, v| {
            c.version = Some(Version::parse(&v)?);
            Ok(())
        },
        get: |o| match o.mode {
            Mode::Demo(v) => Some(v.as_str().into()),
            _ => None,
        },
    },
    Flag {
        name: "--instance",
        set: |c, v| {
            c.opts.instance = Some(v);
            Ok(())
        },
        get: |o| o.instance.clone(),
    },
];

fn number<T: std::str::FromStr>(v: &str) -> Result<T, String> {
    v.parse().map_err(|_| format!("{v}: not a number"))
}

/// The listen address and the options of a command line (without the program name).
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<(String, Options), String> {
    let mut cli = Cli { listen: "127.0.0.1:0".into(), opts: Options::new(), mode: "ok".into(), version: None };
    let mut args = args.into_iter();
    while let Some(a) = args.next() {
        let flag = FLAGS.iter().find(|f| f.name == a).ok_or_else(|| format!("unknown argument {a}"))?;
        let value = args.next().ok_or_else(|| format!("{a} needs a value"))?;
        (flag.set)(&mut cli, value).map_err(|e| format!("{a}: {e}"))?;
    }
    cli.opts.mode = Mode::parse(&cli.mode, cli.version)?;
    Ok((cli.listen, cli.opts))
}

/// The command line that makes the binary serve `opts` on `listen`.
fn args(listen: &str, opts: &Options) -> Vec<String> {
    assert!(
        opts.gate.is_none() && !matches!(opts.body, Some(Body::Bytes(_))),
        "a gate and a body in memory are for a server on threads"
    );
    let mut out = vec!["--listen".to_string(), listen.to_string()];
    for f in &FLAGS {
        if let Some(v) = (f.get)(opts) {
            out.extend([f.name.to_string(), v]);
        }
    }
    out
}

impl Options {
    /// Run the `shadow-testserver` binary serving these options on `listen` inside `ns`; returns
    /// once it listens. The process is killed when the [`Proc`] is dropped.
    pub fn spawn(&self, ns: &NetNs, listen: &str) -> Proc {
        let port: u16 = listen.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port in listen address");
        let p = Proc::spawn(
            &format!("{NAME} on {listen}"),
            ns.command(workspace_bin(NAME).to_str().expect("utf-8"))
                .args(args(listen, self))
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        wait_for(&format!("{NAME} on {listen}"), Duration::from_secs(10), || ns.listening(port));
        p
    }
}

/// The binary: parse the command line, listen, serve until killed; exit 2 on a bad one.
pub fn main() {
    let (listen, opts) = parse(std::env::args().skip(1)).unwrap_or_else(|e| die(&e));
    let listener = TcpListener::bind(&listen).unwrap_or_else(|e| die(&format!("--listen {listen}: {e}")));
    eprintln!("{NAME} listening on {}", listener.local_addr().map(|a| a.to_string()).unwrap_or_default());
    if let Err(e) = serve_forever(listener, opts) {
        die(&e);
    }
}

fn die(msg: &str) -> ! {
    eprintln!("{NAME}: {msg}");
    std::process::exit(2);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(opts: Options) -> Options {
        let (listen, back) = parse(args("[::]:8080", &opts)).unwrap_or_else(|e| panic!("{opts:?}: {e}"));
        assert_eq!(listen, "[::]:8080");
        back
    }

    #[test]
    fn every_flag_reads_back_what_it_wrote() {
        let opts = Options::new()
            .mode(Mode::Demo(Version::V2))
            .instance("a")
            .record("/tmp/r")
            .delay(Duration::from_millis(3))
            .response_bytes(7)
            .max_conns(4096)
            .close_after(3)
            .body_file("/tmp/b")
            .keep_alive(false);
        assert_eq!(format!("{:?}", round_trip(opts.clone())), format!("{opts:?}"));
        for (_, mode) in Mode::NAMED {
            assert_eq!(round_trip(Options::new().mode(mode)).mode, mode);
        }
        assert_eq!(format!("{:?}", round_trip(Options::new())), format!("{:?}", Options::new()));
        assert_eq!(args("a:1", &Options::new()), ["--listen", "a:1"], "defaults are left out");
    }

    #[test]
    fn bad_command_lines_are_named() {
        let p = |a: &[&str]| parse(a.iter().map(|s| s.to_string())).map(|_| ()).unwrap_err();
        assert_eq!(p(&["--nope"]), "unknown argument --nope");
        assert_eq!(p(&["--delay-ms"]), "--delay-ms needs a value");
        assert_eq!(p(&["--delay-ms", "x"]), "--delay-ms: x: not a number");
        assert_eq!(p(&["--mode", "demo"]), "--mode demo needs --version v1|v2");
        assert!(p(&["--mode", "odd"]).starts_with("--mode odd: expected ok, head-body,"));
    }
}
