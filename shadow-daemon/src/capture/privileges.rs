//! Whether this process may load and attach BPF programs, told before the loader tries.

use super::CaptureError;
use crate::sys;

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Fail early with one line when the process obviously cannot load BPF, instead of an EPERM from
/// deep inside the loader. Root is checked too: uid 0 in a container or a unit that drops
/// capabilities has none of them, and "run as root" would be no help.
pub(super) fn check_privileges() -> Result<(), CaptureError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let missing = missing_capabilities(eff);
    if missing.is_empty() {
        return Ok(());
    }
    let root = sys::process::effective_uid() == 0;
    let detail = if root {
        format!(
            " (running as root without {}: the container or unit drops them; add them to its capabilities)",
            missing.join(", ")
        )
    } else {
        format!(" (missing {})", missing.join(", "))
    };
    Err(CaptureError::Privileges { op: "load eBPF programs".into(), detail })
}

/// The capabilities loading and attaching needs that the effective set `eff` lacks
/// (CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON, as on kernels before 5.8).
fn missing_capabilities(eff: u64) -> Vec<&'static str> {
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
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_missing_capability_is_named() {
        let bit = |c: u32| 1u64 << c;
        assert_eq!(missing_capabilities(u64::MAX), Vec::<&str>::new(), "full root");
        assert_eq!(missing_capabilities(0), ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"]);
        assert_eq!(missing_capabilities(bit(CAP_BPF) | bit(CAP_NET_ADMIN) | bit(CAP_PERFMON)), Vec::<&str>::new());
        assert_eq!(
            missing_capabilities(bit(CAP_SYS_ADMIN) | bit(CAP_NET_ADMIN)),
            Vec::<&str>::new(),
            "SYS_ADMIN stands in"
        );
        assert_eq!(missing_capabilities(bit(CAP_BPF) | bit(CAP_PERFMON)), ["CAP_NET_ADMIN"]);
        assert_eq!(missing_capabilities(bit(CAP_NET_ADMIN) | bit(CAP_PERFMON)), ["CAP_BPF"]);
        assert_eq!(missing_capabilities(bit(CAP_NET_ADMIN) | bit(CAP_BPF)), ["CAP_PERFMON"]);
    }
}
