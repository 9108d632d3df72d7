//! `shadowctl`: operate a running shadow-daemon through its control socket.

fn main() -> std::process::ExitCode {
    shadow_daemon::ctl::main()
}
