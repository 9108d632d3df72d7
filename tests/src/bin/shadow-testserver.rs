//! The HTTP/1.1 server for shadow's tests, demo and benchmarks ([`shadow_tests::server`]): plays
//! the primary service, a healthy or faulty shadow, or the demo's sample service, and can record
//! every request it receives byte for byte.
//!
//! shadow-testserver --listen ADDR [--record DIR] [--delay-ms N] [--response-bytes N]
//!                   [--max-conns N] [--close-after N] [--body-file PATH]
//!                   [--mode ok|head-body|garbage|reset|endless|never-reads|resets-at-once|closes-at-once]
//!                   [--mode demo --version v1|v2 [--instance NAME]]

use std::{net::TcpListener, path::PathBuf, time::Duration};

use shadow_tests::server::{self, Mode, Options, demo::Version};

fn main() {
    let mut listen = String::from("127.0.0.1:0");
    let mut opts = Options::default();
    let (mut mode, mut version) = (String::from("ok"), None);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| die(&format!("{a} needs a value")));
        let number = |v: String| -> usize { v.parse().unwrap_or_else(|_| die(&format!("{a}: not a number"))) };
        match a.as_str() {
            "--listen" => listen = val(),
            "--record" => opts.record = Some(PathBuf::from(val())),
            "--delay-ms" => opts.delay = Duration::from_millis(number(val()) as u64),
            "--response-bytes" => opts.response_bytes = number(val()),
            "--max-conns" => opts.max_conns = number(val()),
            "--close-after" => opts.close_after = number(val()),
            "--body-file" => {
                let path = val();
                let bytes = std::fs::read(&path).unwrap_or_else(|e| die(&format!("--body-file {path}: {e}")));
                opts.body = Some(std::sync::Arc::new(bytes));
            }
            "--mode" => mode = val(),
            "--version" => version = Some(Version::parse(&val()).unwrap_or_else(|e| die(&e))),
            "--instance" => opts.instance = Some(val()),
            other => die(&format!("unknown argument {other}")),
        }
    }
    opts.mode = Mode::parse(&mode, version).unwrap_or_else(|e| die(&e));
    let listener = TcpListener::bind(&listen).unwrap_or_else(|e| die(&format!("--listen {listen}: {e}")));
    eprintln!("shadow-testserver listening on {}", listener.local_addr().map(|a| a.to_string()).unwrap_or_default());
    if let Err(e) = server::serve_forever(listener, opts) {
        die(&e);
    }
}

fn die(msg: &str) -> ! {
    eprintln!("shadow-testserver: {msg}");
    std::process::exit(2);
}
