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
    match rt.block_on(run::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shadow-daemon: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
