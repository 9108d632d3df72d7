//! Whether this process may load and attach BPF programs, told before the loader tries.

use super::CaptureError;
use crate::sys;

/// Fail early with one line when the process obviously cannot load BPF, instead of an EPERM from
/// deep inside the loader.
pub(super) fn check_privileges() -> Result<(), CaptureError> {
    if sys::process::effective_uid() == 0 {
        return Ok(());
    }
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |c: u32| eff & (1u64 << c) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_PERFMON");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(CaptureError::Privileges {
            op: "load eBPF programs".into(),
            detail: format!(" (missing {})", missing.join(", ")),
        })
    }
}
