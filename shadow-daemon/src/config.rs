//! Command line (every flag also from a `SHADOW_*` environment variable) and its validation.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, ValueEnum};
use shadow_common::PPM_ALL;

/// Which kernel hook captures traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HookKind {
    /// TC ingress and egress (TCX on Linux >= 6.6): requests and responses.
    Tc,
    /// XDP on ingress only: for physical NICs where the service's traffic arrives; sees requests
    /// (and responses only if they also arrive on this interface).
    Xdp,
}

#[derive(Debug, Parser, Clone)]
#[command(
    name = "shadow-daemon",
    version,
    about = "Mirror live HTTP traffic of a service to a shadow version of it, passively, from the kernel (eBPF)."
)]
pub struct Args {
    /// Network interface to capture on (the one the service's traffic crosses; `lo` for local).
    #[arg(long, short = 'i', env = "SHADOW_INTERFACE")]
    pub interface: Option<String>,

    /// Service port(s) whose traffic is mirrored, comma separated.
    #[arg(long, short = 'p', env = "SHADOW_PORT", value_delimiter = ',', value_parser = parse_port)]
    pub port: Vec<u16>,

    /// Shadow target HOST:PORT that receives the mirrored requests (omit to capture only).
    #[arg(long, env = "SHADOW_SHADOW")]
    pub shadow: Option<String>,

    /// Percentage of requests to mirror, 0 to 100 (fractions allowed, e.g. 0.5).
    #[arg(long, env = "SHADOW_SAMPLE_RATE", default_value = "100", value_parser = parse_percent)]
    pub sample_rate: u32,

    /// Kernel hook: tc (ingress+egress) or xdp (ingress only).
    #[arg(long, env = "SHADOW_HOOK", value_enum, default_value_t = HookKind::Tc)]
    pub hook: HookKind,

    /// Methods replayed besides the safe default (GET, HEAD, OPTIONS), comma separated.
    #[arg(long, env = "SHADOW_ALLOW_METHOD", value_delimiter = ',')]
    pub allow_method: Vec<String>,

    /// Address of the metrics endpoint (/metrics, /healthz, /readyz).
    #[arg(long, env = "SHADOW_METRICS_ADDR", default_value = "127.0.0.1:9477")]
    pub metrics_addr: SocketAddr,

    /// Unix socket of the control API used by shadowctl.
    #[arg(long, env = "SHADOW_CONTROL", default_value = "/run/shadow/control.sock")]
    pub control: PathBuf,

    /// TOML file with several rules (service port, shadow target, controls).
    #[arg(long, env = "SHADOW_CONFIG")]
    pub config: Option<PathBuf>,

    /// Ring buffer size in bytes (a power of two, at least one page).
    #[arg(long, env = "SHADOW_RING_BUFFER_SIZE", default_value_t = 32 * 1024 * 1024, value_parser = parse_ring_size)]
    pub ring_buffer_size: u32,

    /// Where the kernel verifier's log is written if the programs are rejected.
    #[arg(long, env = "SHADOW_VERIFIER_LOG", default_value = "/tmp/shadow-verifier.log")]
    pub verifier_log: PathBuf,

    /// Write a JSON summary of everything counted to this file when the daemon exits.
    #[arg(long, env = "SHADOW_SUMMARY_FILE")]
    pub summary_file: Option<PathBuf>,

    /// Exit by itself after this many seconds (for demos and tests; default: run until signalled).
    #[arg(long, env = "SHADOW_DURATION")]
    pub duration: Option<f64>,
}

fn parse_port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(0) => Err("port 0 is not a service port".into()),
        Ok(p) => Ok(p),
        Err(_) => Err(format!("'{s}' is not a TCP port (1-65535)")),
    }
}

/// Percent (0..=100, fractions allowed) to parts per million, rounded to the nearest ppm.
pub fn percent_to_ppm(percent: f64) -> Result<u32, String> {
    if !percent.is_finite() || !(0.0..=100.0).contains(&percent) {
        return Err(format!("{percent} is not a percentage between 0 and 100"));
    }
    Ok(((percent * 10_000.0).round() as u32).min(PPM_ALL))
}

/// Parts per million back to percent, for display.
pub fn ppm_to_percent(ppm: u32) -> f64 {
    f64::from(ppm) / 10_000.0
}

fn parse_percent(s: &str) -> Result<u32, String> {
    let t = s.trim().trim_end_matches('%');
    let v: f64 = t.parse().map_err(|_| format!("'{s}' is not a number"))?;
    percent_to_ppm(v)
}

fn parse_ring_size(s: &str) -> Result<u32, String> {
    let v: u32 = s.trim().parse().map_err(|_| format!("'{s}' is not a byte count"))?;
    if v < 4096 || !v.is_power_of_two() {
        return Err(format!("{v} is not a power of two of at least 4096"));
    }
    Ok(v)
}

/// A usage or configuration problem: one line naming the flag, field or file; exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl Args {
    /// Cross-flag checks clap cannot express.
    pub fn validate(&self) -> Result<(), UsageError> {
        if self.config.is_none() {
            if self.interface.as_deref().is_none_or(str::is_empty) {
                return Err(UsageError("--interface is required (or give --config FILE)".into()));
            }
            if self.port.is_empty() {
                return Err(UsageError("--port is required (or give --config FILE)".into()));
            }
        }
        if let Some(d) = self.duration
            && (!d.is_finite() || d <= 0.0)
        {
            return Err(UsageError(format!("--duration {d}: must be a positive number of seconds")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_to_ppm_edges_and_fractions() {
        assert_eq!(percent_to_ppm(0.0), Ok(0));
        assert_eq!(percent_to_ppm(100.0), Ok(PPM_ALL));
        assert_eq!(percent_to_ppm(50.0), Ok(500_000));
        assert_eq!(percent_to_ppm(0.5), Ok(5_000));
        assert_eq!(percent_to_ppm(0.0001), Ok(1));
        assert_eq!(percent_to_ppm(12.34567), Ok(123_457));
        assert!(percent_to_ppm(-1.0).is_err());
        assert!(percent_to_ppm(100.01).is_err());
        assert!(percent_to_ppm(f64::NAN).is_err());
        assert_eq!(ppm_to_percent(5_000), 0.5);
    }

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("shadow-daemon").chain(args.iter().copied()))
    }

    #[test]
    fn flags_parse_and_validate() {
        let a = parse(&["--interface", "eth0", "--port", "80,8080", "--sample-rate", "25%"]).unwrap();
        assert_eq!(a.port, vec![80, 8080]);
        assert_eq!(a.sample_rate, 250_000);
        assert_eq!(a.hook, HookKind::Tc);
        a.validate().unwrap();
    }

    #[test]
    fn bad_flags_name_the_flag() {
        let e = parse(&["--interface", "eth0", "--port", "0"]).unwrap_err().to_string();
        assert!(e.contains("--port"), "{e}");
        let e = parse(&["--interface", "eth0", "--port", "80", "--sample-rate", "150"]).unwrap_err().to_string();
        assert!(e.contains("--sample-rate"), "{e}");
        let e = parse(&["--interface", "eth0", "--port", "80", "--hook", "kprobe"]).unwrap_err().to_string();
        assert!(e.contains("--hook"), "{e}");
        let e = parse(&["--interface", "eth0", "--port", "80", "--ring-buffer-size", "5000"]).unwrap_err().to_string();
        assert!(e.contains("--ring-buffer-size"), "{e}");
        let e = parse(&["--port", "80"]).unwrap().validate().unwrap_err().to_string();
        assert!(e.contains("--interface"), "{e}");
        let e = parse(&["--interface", "lo"]).unwrap().validate().unwrap_err().to_string();
        assert!(e.contains("--port"), "{e}");
    }
}
