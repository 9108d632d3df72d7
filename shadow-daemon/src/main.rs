//! shadow-daemon: parse the command line, resolve it into a configuration (usage errors exit 2
//! here, before anything starts), then hand over to `shadow_daemon::run::run` with SIGINT/SIGTERM
//! as the shutdown.

use std::process::ExitCode;

use shadow_daemon::{
    config::{
        Args,
        usage::{self, EXIT_USAGE, single_line},
    },
    run,
};

fn main() -> ExitCode {
    let args = match usage::parse::<Args>() {
        Ok(a) => a,
        Err(code) => return code,
    };
    let from_shadow_log = args.log_level.is_none() && std::env::var_os("SHADOW_LOG").is_some();
    let level = args.log_level.clone().or_else(|| std::env::var("SHADOW_LOG").ok()).unwrap_or_else(|| "info".into());
    if let Err(e) = run::init_logging(args.log_format == "json", &level) {
        // Named as the operator gave it: the flag, SHADOW_LOG_LEVEL, or SHADOW_LOG.
        let source = if from_shadow_log { "SHADOW_LOG".into() } else { usage::setting_name("--log-level") };
        eprintln!("shadow-daemon: {}", single_line(&format!("{source}: {e}")));
        return ExitCode::from(EXIT_USAGE);
    }
    let cfg = match args.resolve() {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("shadow-daemon: {}", single_line(&e.to_string()));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // One thread by default: the daemon then never takes more than one core of the node, and
    // nothing is handed between threads (a wake-up of an idle worker for every task woken cost
    // about a quarter of the daemon's CPU per mirrored request, measured with the bench's mirror
    // arms: 7.4-9.6 µs on one thread against 11.7-14.9 µs on two).
    let mut builder = match cfg.threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shadow-daemon: start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    // With several threads, on a worker, not on this thread: a future driven by `block_on` is
    // woken through a futex from the worker that polls the I/O driver, a thread switch for every
    // ring-buffer wake-up. With one, the task runs on this thread, which drives the I/O itself.
    let outcome = rt.block_on(async {
        let shutdown = match run::shutdown_signal() {
            Ok(s) => s,
            Err(e) => return Err(e),
        };
        Ok(tokio::spawn(run::run(cfg, shutdown)).await)
    });
    match outcome {
        Err(e) => {
            eprintln!("shadow-daemon: install the SIGINT/SIGTERM handlers: {e}");
            ExitCode::from(1)
        }
        Ok(Ok(Ok(_summary))) => ExitCode::SUCCESS,
        Ok(Ok(Err(e))) => {
            eprintln!("shadow-daemon: {e}");
            ExitCode::from(e.exit_code())
        }
        // A panic ends the process as it would have on this thread.
        Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Ok(Err(e)) => {
            eprintln!("shadow-daemon: the main task failed: {e}");
            ExitCode::from(1)
        }
    }
}
