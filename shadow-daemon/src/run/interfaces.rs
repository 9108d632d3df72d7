//! Which interfaces the capture is attached to, followed as they come and go (a glob such as
//! `veth*` on a Kubernetes node), and the events counted for `shadow_interface_events_total`.

use crate::{
    capture::{
        Capture, CaptureError, HookKind,
        links::{InterfacePattern, LinkEvent, any_matches, list_interfaces},
    },
    metrics::ops::InterfaceEvents,
};

pub(super) struct Interfaces {
    pub(super) patterns: Vec<InterfacePattern>,
    hook: HookKind,
    pub(super) events: InterfaceEvents,
}

impl Interfaces {
    pub(super) fn new(patterns: Vec<InterfacePattern>, hook: HookKind) -> Self {
        Self { patterns, hook, events: InterfaceEvents::default() }
    }

    /// Attach to every present interface that matches and is not attached, and detach from
    /// attached ones that no longer match or exist. `strict`: an attach failure is an error
    /// (at start), rather than logged and counted (later).
    pub(super) fn attach_present(&mut self, capture: &mut Capture, strict: bool) -> Result<(), CaptureError> {
        let present: Vec<String> = match list_interfaces() {
            Ok(l) => l.into_iter().map(|(_, n)| n).collect(),
            Err(e) => {
                tracing::warn!("list network interfaces: {e}");
                return Ok(());
            }
        };
        for name in capture.interfaces() {
            if !present.contains(&name) || !any_matches(&self.patterns, &name) {
                self.detach(capture, &name);
            }
        }
        for name in present.iter().filter(|n| any_matches(&self.patterns, n)) {
            if capture.interfaces().contains(name) {
                continue;
            }
            match capture.attach_interface(name, self.hook) {
                Ok(()) => {
                    self.events.attached += 1;
                    tracing::info!("attached to {name}");
                }
                Err(e) if strict => return Err(e),
                Err(e) => {
                    self.events.attach_failed += 1;
                    tracing::warn!("attach to {name}: {e}");
                }
            }
        }
        Ok(())
    }

    fn detach(&mut self, capture: &mut Capture, name: &str) {
        if capture.detach_interface(name) {
            self.events.detached += 1;
            tracing::info!("detached from {name}");
        }
    }

    /// Netlink told us about links: attach new matches, forget deleted ones.
    pub(super) fn follow(&mut self, capture: &mut Capture, evs: &[LinkEvent]) {
        for ev in evs {
            match ev {
                LinkEvent::New { name, .. } => {
                    if any_matches(&self.patterns, name) && !capture.interfaces().contains(name) {
                        match capture.attach_interface(name, self.hook) {
                            Ok(()) => {
                                self.events.attached += 1;
                                tracing::info!("attached to {name} (new interface)");
                            }
                            Err(e) => {
                                self.events.attach_failed += 1;
                                tracing::warn!("attach to new interface {name}: {e}");
                            }
                        }
                    }
                }
                LinkEvent::Deleted { name, .. } => self.detach(capture, name),
                LinkEvent::Resync => {
                    let _ = self.attach_present(capture, false);
                }
            }
        }
    }
}
