//! What can go wrong with the kernel side, and how aya's load errors are told apart: by their
//! variants and the errno inside them, never by text.

use std::{io, path::PathBuf};

use aya::{EbpfError, maps::MapError, programs::ProgramError};

use crate::sys::errno;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("this binary was built with SHADOW_SKIP_EBPF=1 and has no eBPF object: rebuild without it")]
    NoObject,
    #[error("insufficient privileges to {op}: run as root, or grant CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON{detail}")]
    Privileges { op: String, detail: String },
    #[error("unknown interface '{0}' (see `ip link`)")]
    UnknownInterface(String),
    #[error("BPF is not available on this kernel ({op}: {source}); Linux >= 5.15 with BTF is required")]
    BpfUnavailable { op: String, source: io::Error },
    #[error("the kernel verifier rejected {program}: {reason}; verifier log saved to {}", log.display())]
    Verifier { program: &'static str, reason: String, log: PathBuf },
    #[error(
        "interface '{interface}' already has an XDP program attached; detach it (`ip link set dev {interface} xdp off`) or use --hook tc"
    )]
    XdpBusy { interface: String },
    #[error("{op}: {source}")]
    Program { op: String, source: Box<ProgramError> },
    #[error("{op}: {source}")]
    Map { op: String, source: Box<MapError> },
    #[error("{op}: {source}")]
    Load { op: String, source: Box<EbpfError> },
    #[error("{op}: {source}")]
    Io { op: String, source: io::Error },
    #[error("{0}")]
    Rules(String),
    #[error(
        "interface '{interface}' already has a shadow capture (program {program} id {id}, {hook}) on port(s) {ports}: every request would be replayed twice; stop that daemon, or pass --allow-shared-capture"
    )]
    SharedCapture { interface: String, program: String, id: u32, hook: &'static str, ports: String },
}

impl CaptureError {
    /// Exit code for the binary: 2 for what the user asked wrongly, 1 for the environment.
    pub const fn exit_code(&self) -> u8 {
        match self {
            Self::UnknownInterface(_) | Self::XdpBusy { .. } | Self::Rules(_) | Self::SharedCapture { .. } => 2,
            _ => 1,
        }
    }
}

fn io_of_map_error(e: &MapError) -> Option<&io::Error> {
    match e {
        MapError::CreateError { io_error, .. } => Some(io_error),
        MapError::SyscallError(s) => Some(&s.io_error),
        _ => None,
    }
}

/// What follows the privileges message: the kernel's error, and the seccomp filter when one is in
/// force (with the capabilities granted, a filter without bpf(2) is the likelier cause).
pub(super) fn permission_detail(io: &io::Error) -> String {
    let filter = if crate::sys::process::seccomp_filtered() {
        "; this process runs under a seccomp filter, which must allow bpf(2) (deploy/seccomp/shadow.json does)"
    } else {
        ""
    };
    format!(" ({io}){filter}")
}

pub(super) fn classify_load_error(op: &str, e: EbpfError) -> CaptureError {
    let io = match &e {
        EbpfError::MapError(m) => io_of_map_error(m),
        _ => None,
    };
    if let Some(io) = io {
        if errno::is_permission(io) {
            return CaptureError::Privileges { op: op.into(), detail: permission_detail(io) };
        }
        if let Some(source) = errno::unsupported(io) {
            return CaptureError::BpfUnavailable { op: op.into(), source };
        }
    }
    CaptureError::Load { op: op.into(), source: Box::new(e) }
}
