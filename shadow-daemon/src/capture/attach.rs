//! Attaching the loaded programs to interfaces (TC ingress and egress, or XDP), detaching them,
//! and refusing to attach where another shadow capture already covers our ports.

use aya::{
    maps::{Array, MapData},
    programs::{ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode, tc::SchedClassifierLinkId, xdp::XdpLinkId},
};
use shadow_common::{Config, names};

use super::{Capture, CaptureError, program};
use crate::sys::{self, errno};

/// Which kernel hook captures traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookKind {
    /// TC ingress and egress (TCX on Linux >= 6.6): requests and responses.
    Tc,
    /// XDP on ingress only: for physical NICs where the service's traffic arrives; sees requests
    /// (and responses only if they also arrive on this interface).
    Xdp,
}

impl HookKind {
    /// The name `--hook` takes.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tc => "tc",
            Self::Xdp => "xdp",
        }
    }
}

/// What one attach is for, as its error names it ("attach tc ingress to eth0").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum AttachPoint {
    /// A capture program on one TC direction (`ingress` or `egress`).
    Tc(&'static str),
    Xdp,
    /// The do-nothing program of the benchmarks, on TC.
    #[cfg(any(test, feature = "test-util"))]
    Baseline,
}

impl AttachPoint {
    pub(super) const fn hook(self) -> HookKind {
        match self {
            Self::Tc(_) => HookKind::Tc,
            Self::Xdp => HookKind::Xdp,
            #[cfg(any(test, feature = "test-util"))]
            Self::Baseline => HookKind::Tc,
        }
    }

    /// The operation, for error messages.
    pub(super) fn op(self, iface: &str) -> String {
        match self {
            Self::Tc(what) => format!("attach tc {what} to {iface}"),
            Self::Xdp => format!("attach xdp to {iface}"),
            #[cfg(any(test, feature = "test-util"))]
            Self::Baseline => format!("attach baseline to {iface}"),
        }
    }
}

/// One attachment of a program to an interface.
pub(super) enum Attached {
    /// The TC program (one for both directions) on ingress or egress.
    Tc {
        what: &'static str,
        id: SchedClassifierLinkId,
    },
    Xdp {
        id: XdpLinkId,
    },
}

impl Capture {
    /// Attach the loaded programs to `opts.interface` with `opts.hook`.
    pub fn attach(&mut self, opts: &super::CaptureOptions) -> Result<(), CaptureError> {
        self.attach_interface(&opts.interface, opts.hook)
    }

    /// Attach to one more interface (a no-op if already attached there). All or nothing: if
    /// the second hook fails, the first is detached again.
    pub fn attach_interface(&mut self, iface: &str, hook: HookKind) -> Result<(), CaptureError> {
        if self.links.contains_key(iface) {
            return Ok(());
        }
        let loopback = interface_is_loopback(iface)?;
        let mut links = Vec::new();
        let r = match hook {
            HookKind::Tc => self.attach_tc(TcAttachType::Ingress, iface).map(|l| links.push(l)).and_then(|()| {
                // On loopback every packet passes egress and then ingress of the same device:
                // ingress alone sees each segment exactly once.
                if loopback { Ok(()) } else { self.attach_tc(TcAttachType::Egress, iface).map(|l| links.push(l)) }
            }),
            HookKind::Xdp => self.attach_xdp(iface).map(|l| links.push(l)),
        };
        if let Err(e) = r {
            for l in links {
                self.detach_link(l);
            }
            return Err(e);
        }
        self.links.insert(iface.to_string(), links);
        Ok(())
    }

    /// Detach from `iface` (an interface that is gone has lost its links with it: nothing to
    /// fail). Returns whether it was attached.
    pub fn detach_interface(&mut self, iface: &str) -> bool {
        let Some(links) = self.links.remove(iface) else {
            return false;
        };
        for l in links {
            self.detach_link(l);
        }
        true
    }

    fn detach_link(&mut self, l: Attached) {
        let detached = match l {
            Attached::Tc { id, .. } => {
                program::<SchedClassifier>(&mut self.ebpf, names::PROG_TC).is_ok_and(|p| p.detach(id).is_ok())
            }
            Attached::Xdp { id } => program::<Xdp>(&mut self.ebpf, names::PROG_XDP).is_ok_and(|p| p.detach(id).is_ok()),
        };
        if !detached {
            tracing::debug!("detach: the link was already gone with its interface");
        }
    }

    /// Interfaces attached now, sorted.
    pub fn interfaces(&self) -> Vec<String> {
        self.links.keys().cloned().collect()
    }

    /// Human-readable list of what is attached, e.g. `tc ingress on eth0`.
    pub fn attached(&self) -> Vec<String> {
        self.links
            .iter()
            .flat_map(|(iface, links)| {
                links.iter().map(move |l| match l {
                    Attached::Tc { what, .. } => format!("tc {what} on {iface}"),
                    Attached::Xdp { .. } => format!("xdp on {iface}"),
                })
            })
            .collect()
    }

    fn attach_tc(&mut self, kind: TcAttachType, iface: &str) -> Result<Attached, CaptureError> {
        let what = if kind == TcAttachType::Egress { "egress" } else { "ingress" };
        let tcx = aya::util::KernelVersion::current().is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0));
        if tcx && !self.allow_shared {
            self.refuse_shared(iface, kind, what)?;
        }
        let prog: &mut SchedClassifier = program(&mut self.ebpf, names::PROG_TC)?;
        if !tcx {
            // Before TCX, classifiers hang off the clsact qdisc; it may already exist.
            if let Err(e) = aya::programs::tc::qdisc_add_clsact(iface) {
                tracing::debug!("clsact on {iface}: {e} (already present?)");
            }
        }
        let id = prog.attach(iface, kind).map_err(|e| classify_attach_error(AttachPoint::Tc(what), iface, e))?;
        Ok(Attached::Tc { what, id })
    }

    /// Refuse to attach where another shadow capture (a program of ours, loaded by another
    /// process) covers one of our ports. TCX lists what is attached; reading the other
    /// program's config needs CAP_SYS_ADMIN, and without it the check is skipped with a warning.
    fn refuse_shared(&self, iface: &str, kind: TcAttachType, hook: &'static str) -> Result<(), CaptureError> {
        // Ours: the TC program, or the one per direction of builds before it (kernel names are
        // cut at 15 characters).
        let ours =
            |n: &str| n == names::PROG_TC || n.starts_with("shadow_tc_ingre") || n.starts_with("shadow_tc_egres");
        let infos = match SchedClassifier::query_tcx(iface, kind) {
            Ok((_, infos)) => infos,
            Err(e) => {
                tracing::warn!(
                    "{iface}: cannot list the programs attached to tc {hook} ({e}); not checking for another shadow capture"
                );
                return Ok(());
            }
        };
        for info in infos {
            let name = info.name_as_str().unwrap_or_default().to_string();
            if !ours(&name) {
                continue;
            }
            let theirs = other_config(&info);
            let shared: Vec<u16> = match &theirs {
                Some(t) => (0..=u16::MAX).filter(|&p| t.has_port(p) && self.config.has_port(p)).collect(),
                None => Vec::new(),
            };
            if theirs.is_none() || !shared.is_empty() {
                // Unreadable: assume the worst rather than replay twice.
                let ports = match theirs {
                    None => "unknown".to_string(),
                    Some(_) => shared.iter().map(u16::to_string).collect::<Vec<_>>().join(","),
                };
                return Err(CaptureError::SharedCapture {
                    interface: iface.into(),
                    program: name,
                    id: info.id(),
                    hook,
                    ports,
                });
            }
        }
        Ok(())
    }

    fn attach_xdp(&mut self, iface: &str) -> Result<Attached, CaptureError> {
        let prog: &mut Xdp = program(&mut self.ebpf, names::PROG_XDP)?;
        let id = prog.attach(iface, XdpMode::Default).map_err(|e| classify_attach_error(AttachPoint::Xdp, iface, e))?;
        Ok(Attached::Xdp { id })
    }
}

/// An attach to `point` of `iface` failed: which of our errors that is, by the hook it was for
/// and the errno the kernel gave.
pub(super) fn classify_attach_error(point: AttachPoint, iface: &str, e: ProgramError) -> CaptureError {
    if let ProgramError::UnknownInterface { name } = &e {
        return CaptureError::UnknownInterface(name.clone());
    }
    if let ProgramError::SyscallError(s) = &e {
        let io = &s.io_error;
        if errno::is_permission(io) {
            return CaptureError::Privileges { op: point.op(iface), detail: super::error::permission_detail(io) };
        }
        if point.hook() == HookKind::Xdp && errno::is_busy(io) {
            return CaptureError::XdpBusy { interface: iface.into() };
        }
    }
    CaptureError::Program { op: point.op(iface), source: Box::new(e) }
}

/// The config map of another process's shadow program, if it can be read.
fn other_config(info: &aya::programs::ProgramInfo) -> Option<Config> {
    for id in info.map_ids().ok()??.into_iter() {
        let Ok(data) = MapData::from_id(id) else { continue };
        if data.info().ok().and_then(|i| i.name_as_str().map(|n| n == names::MAP_CONFIG)) != Some(true) {
            continue;
        }
        let map: Array<MapData, Config> = Array::try_from(aya::maps::Map::Array(data)).ok()?;
        return map.get(&0, 0).ok();
    }
    None
}

/// Does `iface` exist in this network namespace? (`UnknownInterface` if not.)
pub fn check_interface(iface: &str) -> Result<(), CaptureError> {
    interface_is_loopback(iface).map(|_| ())
}

/// Whether `iface` exists and is a loopback device.
pub(super) fn interface_is_loopback(iface: &str) -> Result<bool, CaptureError> {
    if sys::net::interface_index(iface).is_none() {
        return Err(CaptureError::UnknownInterface(iface.into()));
    }
    const IFF_LOOPBACK: u32 = 0x8;
    let flags = std::fs::read_to_string(format!("/sys/class/net/{iface}/flags"))
        .ok()
        .and_then(|s| u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok())
        .unwrap_or(0);
    Ok(flags & IFF_LOOPBACK != 0)
}

#[cfg(test)]
mod tests {
    use std::io;

    use aya::sys::SyscallError;

    use super::*;

    /// Linux's errno values (asm-generic).
    const EPERM: i32 = 1;
    const EBUSY: i32 = 16;

    fn failed(errno: i32) -> ProgramError {
        ProgramError::SyscallError(SyscallError {
            call: "bpf_link_create",
            io_error: io::Error::from_raw_os_error(errno),
        })
    }

    #[test]
    fn attach_errors_are_told_by_their_hook_and_errno() {
        let busy_xdp = classify_attach_error(AttachPoint::Xdp, "eth0", failed(EBUSY));
        assert!(matches!(&busy_xdp, CaptureError::XdpBusy { interface } if interface == "eth0"), "{busy_xdp:?}");
        // Busy TC is no XDP conflict: the error as aya gave it, with the operation.
        let busy_tc = classify_attach_error(AttachPoint::Tc("egress"), "eth0", failed(EBUSY));
        assert!(
            matches!(&busy_tc, CaptureError::Program { op, .. } if op == "attach tc egress to eth0"),
            "{busy_tc:?}"
        );
        let denied = classify_attach_error(AttachPoint::Baseline, "lo", failed(EPERM));
        assert!(matches!(&denied, CaptureError::Privileges { op, .. } if op == "attach baseline to lo"), "{denied:?}");
        let gone = classify_attach_error(
            AttachPoint::Tc("ingress"),
            "veth9",
            ProgramError::UnknownInterface { name: "veth9".into() },
        );
        assert!(matches!(&gone, CaptureError::UnknownInterface(n) if n == "veth9"), "{gone:?}");
        assert_eq!([HookKind::Tc.as_str(), HookKind::Xdp.as_str()], ["tc", "xdp"]);
    }
}
