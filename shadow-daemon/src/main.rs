//! shadow-daemon: parse the command line, then hand over to `shadow_daemon::run`.

use std::process::ExitCode;

use clap::Parser;
use shadow_daemon::{config::Args, run};

fn main() -> ExitCode {
    let args = Args::parse();
    run::init_logging();
    if let Err(e) = args.validate() {
        eprintln!("shadow-daemon: {e}");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shadow-daemon: start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    // On a worker, not on this thread: a future driven by `block_on` is woken through a futex from
    // the worker that polls the I/O driver, a thread switch for every ring-buffer wake-up.
    let outcome = rt.block_on(async { tokio::spawn(run::run(args)).await });
    match outcome {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("shadow-daemon: {e}");
            ExitCode::from(e.exit_code())
        }
        // A panic ends the process as it would have on this thread.
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => {
            eprintln!("shadow-daemon: the main task failed: {e}");
            ExitCode::from(1)
        }
    }
}
