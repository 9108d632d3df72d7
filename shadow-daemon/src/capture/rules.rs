//! What the kernel is told to capture: the rules (services and sampling rates) in the services
//! trie and the rules array, and the config map (port bitmap, enabled), changed live.

use std::collections::BTreeMap;

use aya::maps::lpm_trie::Key;
use shadow_common::{
    Config, MAX_RULES, MAX_SERVICES, PPM_ALL, RuleState, SERVICE_KEY_FIXED_BITS, ServiceKey, family, names,
};

use super::{Capture, CaptureError};
use crate::{rule::RuleId, service::ServiceMatch};

/// One rule as the kernel sees it: the services it covers and its sampling rate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelRule {
    pub services: Vec<ServiceMatch>,
    /// Parts per million of requests sampled (0 while paused).
    pub sample_ppm: u32,
}

impl KernelRule {
    /// `ports` on every address.
    pub fn any_address(ports: &[u16], sample_ppm: u32) -> Self {
        Self { services: ports.iter().map(|&p| ServiceMatch::any_address(p)).collect(), sample_ppm }
    }
}

impl Capture {
    pub(super) fn write_config(&mut self) -> Result<(), CaptureError> {
        self.config_map
            .set(0, self.config, 0)
            .map_err(|e| CaptureError::Map { op: format!("write {}", names::MAP_CONFIG), source: Box::new(e) })
    }

    /// Install `rules` (ids are positions) in place of the current ones, live: the services
    /// trie gains the new entries before it loses the stale ones, and the port bitmap covers the
    /// union meanwhile, so a request of a service present before and after never goes unmatched.
    pub fn set_rules(&mut self, rules: &[KernelRule]) -> Result<(), CaptureError> {
        let wanted = service_entries(rules)?;
        for (id, r) in rules.iter().enumerate() {
            self.write_rule(id as u32, r.sample_ppm)?;
        }
        let mut union = self.config;
        for r in rules {
            for s in &r.services {
                union.set_port(s.port);
            }
        }
        self.config = union;
        self.write_config()?;
        for (k, id) in &wanted {
            if self.services.get(k) != Some(id) {
                self.services_map.insert(&Key::new(k.0, k.1.0), id, 0).map_err(|e| CaptureError::Map {
                    op: format!("insert into {}", names::MAP_SERVICES),
                    source: Box::new(e),
                })?;
            }
        }
        for k in self.services.keys() {
            if !wanted.contains_key(k) {
                self.services_map.remove(&Key::new(k.0, k.1.0)).map_err(|e| CaptureError::Map {
                    op: format!("remove from {}", names::MAP_SERVICES),
                    source: Box::new(e),
                })?;
            }
        }
        for id in rules.len()..self.rules.len() {
            self.write_rule(id as u32, 0)?;
        }
        let mut exact = Config::new();
        exact.enabled = self.config.enabled;
        for r in rules {
            for s in &r.services {
                exact.set_port(s.port);
            }
        }
        self.config = exact;
        self.write_config()?;
        self.services = wanted;
        self.rules = rules.to_vec();
        Ok(())
    }

    fn write_rule(&mut self, id: u32, ppm: u32) -> Result<(), CaptureError> {
        self.rules_map.set(id, RuleState { sample_ppm: ppm.min(PPM_ALL), _pad: 0 }, 0).map_err(|e| CaptureError::Map {
            op: format!("write rule {id} to {}", names::MAP_RULES),
            source: Box::new(e),
        })
    }

    /// Change one rule's sampling rate; applies from its next request line, no restart, other
    /// rules untouched.
    pub fn set_rule_ppm(&mut self, id: RuleId, ppm: u32) -> Result<(), CaptureError> {
        let (true, Ok(key)) = (id.index() < self.rules.len(), u32::try_from(id.index())) else {
            return Err(CaptureError::Rules(format!("no {id} (there are {})", self.rules.len())));
        };
        self.write_rule(key, ppm)?;
        self.rules[id.index()].sample_ppm = ppm.min(PPM_ALL);
        Ok(())
    }

    /// A rule's sampling rate as the kernel's map holds it (read back, not remembered).
    pub fn rule_ppm(&self, id: RuleId) -> Result<u32, CaptureError> {
        let key = u32::try_from(id.index()).map_err(|_| CaptureError::Rules(format!("no {id}")))?;
        self.rules_map
            .get(&key, 0)
            .map(|r| r.sample_ppm)
            .map_err(|e| CaptureError::Map { op: format!("read {id} from {}", names::MAP_RULES), source: Box::new(e) })
    }

    /// Every rule to the same rate.
    pub fn set_sample_ppm(&mut self, ppm: u32) -> Result<(), CaptureError> {
        for id in RuleId::all(self.rules.len()) {
            self.set_rule_ppm(id, ppm)?;
        }
        Ok(())
    }

    /// The first rule's rate (the daemon-wide rate when there is one rule).
    pub fn sample_ppm(&self) -> u32 {
        self.rules.first().map_or(0, |r| r.sample_ppm)
    }

    pub fn rules(&self) -> &[KernelRule] {
        &self.rules
    }

    /// Pause (false) or resume (true) capture; the programs stay attached either way.
    pub fn set_enabled(&mut self, enabled: bool) -> Result<(), CaptureError> {
        self.config.enabled = u32::from(enabled);
        self.write_config()
    }

    pub fn enabled(&self) -> bool {
        self.config.enabled != 0
    }
}

/// [`ServiceKey`] ordered by its bytes, for the map of installed trie entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ServiceKeyOrd(ServiceKey);

impl ServiceKeyOrd {
    fn bytes(&self) -> ([u8; 2], u8, [u8; 16]) {
        (self.0.port_be, self.0.family, self.0.addr)
    }
}

impl PartialOrd for ServiceKeyOrd {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ServiceKeyOrd {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.bytes().cmp(&other.bytes())
    }
}

/// The trie entries for `rules`: (prefix length, key) → rule id. An "any address" match is one
/// entry per family. The same service in two rules is refused: which rule owns it would be a
/// guess.
fn service_entries(rules: &[KernelRule]) -> Result<BTreeMap<(u32, ServiceKeyOrd), u32>, CaptureError> {
    if rules.len() > MAX_RULES as usize {
        return Err(CaptureError::Rules(format!("{} rules; the kernel holds at most {MAX_RULES}", rules.len())));
    }
    let mut out = BTreeMap::new();
    for (id, r) in rules.iter().enumerate() {
        for s in &r.services {
            let keys: Vec<(u32, ServiceKey)> = match s.net {
                None => [family::IPV4, family::IPV6]
                    .into_iter()
                    .map(|f| {
                        (
                            SERVICE_KEY_FIXED_BITS,
                            ServiceKey { port_be: s.port.to_be_bytes(), family: f, _pad: 0, addr: [0; 16] },
                        )
                    })
                    .collect(),
                Some(n) => {
                    let (f, addr) = match n.addr() {
                        std::net::IpAddr::V4(a) => {
                            let mut b = [0u8; 16];
                            b[..4].copy_from_slice(&a.octets());
                            (family::IPV4, b)
                        }
                        std::net::IpAddr::V6(a) => (family::IPV6, a.octets()),
                    };
                    vec![(
                        SERVICE_KEY_FIXED_BITS + u32::from(n.prefix()),
                        ServiceKey { port_be: s.port.to_be_bytes(), family: f, _pad: 0, addr },
                    )]
                }
            };
            for (bits, k) in keys {
                if let Some(other) = out.insert((bits, ServiceKeyOrd(k)), id as u32) {
                    return Err(CaptureError::Rules(format!(
                        "service {s} is in rule {other} and rule {id}: a service belongs to one rule"
                    )));
                }
            }
        }
    }
    if out.len() > MAX_SERVICES as usize {
        return Err(CaptureError::Rules(format!("{} services; the kernel holds at most {MAX_SERVICES}", out.len())));
    }
    Ok(out)
}
