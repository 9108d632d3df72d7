//! Helpers for the fault suite: what a process holds in the kernel (BPF programs and links, from
//! its fdinfo), what is attached to an interface (TCX query, the link API), a process's memory,
//! the open-files limit, and waiting on /metrics.

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use aya::programs::{SchedClassifier, tc::TcAttachType};

use crate::{metric, topo::NetNs};

/// BPF program ids and link ids held by the file descriptors of process `pid` (from
/// /proc/PID/fdinfo: a program fd shows `prog_id`, a link fd `link_id` and its `prog_id`).
pub fn bpf_objects_of(pid: u32) -> (BTreeSet<u32>, BTreeSet<u32>) {
    let (mut progs, mut links) = (BTreeSet::new(), BTreeSet::new());
    let dir = format!("/proc/{pid}/fdinfo");
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {dir}: {e}")).flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else { continue };
        for line in text.lines() {
            let Some((k, v)) = line.split_once(':') else { continue };
            let Ok(v) = v.trim().parse::<u32>() else { continue };
            match k {
                "prog_id" => {
                    progs.insert(v);
                }
                "link_id" => {
                    links.insert(v);
                }
                _ => {}
            }
        }
    }
    (progs, links)
}

/// Ids of every BPF program loaded on the machine now.
pub fn loaded_program_ids() -> BTreeSet<u32> {
    aya::programs::loaded_programs().filter_map(Result::ok).map(|p| p.id()).collect()
}

/// Ids of every BPF link on the machine now (the link API: BPF_LINK_GET_NEXT_ID).
pub fn loaded_link_ids() -> BTreeSet<u32> {
    aya::programs::loaded_links().filter_map(Result::ok).map(|l| l.id()).collect()
}

/// (hook, program id, program name) of every program attached through TCX to `iface` in `ns`,
/// ingress and egress, as the kernel lists them.
pub fn tcx_attached(ns: &NetNs, iface: &str) -> Vec<(&'static str, u32, String)> {
    let (name, iface) = (ns.name.clone(), iface.to_string());
    std::thread::spawn(move || {
        NetNs { name }.enter_and_forget();
        let mut out = Vec::new();
        for (hook, kind) in [("ingress", TcAttachType::Ingress), ("egress", TcAttachType::Egress)] {
            let (_, infos) =
                SchedClassifier::query_tcx(&iface, kind).unwrap_or_else(|e| panic!("query tcx {hook} of {iface}: {e}"));
            for i in infos {
                out.push((hook, i.id(), i.name_as_str().unwrap_or_default().to_string()));
            }
        }
        out
    })
    .join()
    .expect("tcx query thread")
}

/// Ids of the shadow programs attached through TCX to `iface` in `ns` (another shadow on the
/// host, on another interface or namespace, is not listed).
pub fn shadow_tcx_programs(ns: &NetNs, iface: &str) -> Vec<u32> {
    tcx_attached(ns, iface)
        .into_iter()
        .filter(|(_, _, name)| name.starts_with("shadow_tc"))
        .map(|(_, id, _)| id)
        .collect()
}

/// (VmRSS, VmHWM) of process `pid`, in bytes: resident now, and its peak.
pub fn rss_bytes(pid: u32) -> (u64, u64) {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .unwrap_or_else(|| panic!("no {name} in {path}"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Raise this process's soft RLIMIT_NOFILE to at least `want` (children inherit it); panics if
/// the hard limit does not allow it.
pub fn raise_nofile(want: u64) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid pointer to an rlimit.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0, "getrlimit");
    if lim.rlim_cur >= want {
        return;
    }
    assert!(lim.rlim_max >= want, "RLIMIT_NOFILE hard limit {} is below the {want} this test needs", lim.rlim_max);
    lim.rlim_cur = want;
    // SAFETY: valid pointer to an rlimit.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    assert_eq!(rc, 0, "setrlimit NOFILE {want}: {}", std::io::Error::last_os_error());
}

/// Poll the daemon's /metrics (inside `ns`) every 20 ms until `ok` holds for a scrape, or panic
/// after `timeout` naming `what` and showing the request and extraction series of the last one.
pub fn wait_metrics(
    ns: &NetNs,
    addr: SocketAddr,
    what: &str,
    timeout: Duration,
    mut ok: impl FnMut(&Scrape) -> bool,
) -> Scrape {
    let deadline = std::time::Instant::now() + timeout;
    let mut last = Scrape(String::new());
    while std::time::Instant::now() < deadline {
        if let Some(text) = ns.http_get(addr, "/metrics") {
            let s = Scrape(text);
            if ok(&s) {
                return s;
            }
            last = s;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out after {timeout:?} waiting for {what}; last scrape:\n{}", last.interesting());
}

/// One /metrics scrape.
#[derive(Clone, Debug)]
pub struct Scrape(pub String);

impl Scrape {
    /// The value of `series` (exact name and labels), 0 when absent.
    pub fn get(&self, series: &str) -> f64 {
        metric(&self.0, series).unwrap_or(0.0)
    }

    pub fn captured(&self) -> f64 {
        self.get("shadow_requests_captured_total")
    }

    pub fn replayed(&self) -> f64 {
        self.get("shadow_requests_replayed_total")
    }

    pub fn in_flight(&self) -> f64 {
        metric(&self.0, "shadow_requests_in_flight").unwrap_or(f64::MAX)
    }

    /// Of those in flight, the ones extraction holds (waiting for the primary's answer, which
    /// may have been lost: they end at the flow idle timeout, or when the daemon stops).
    pub fn extracting(&self) -> f64 {
        metric(&self.0, "shadow_requests_extracting").unwrap_or(f64::MAX)
    }

    pub fn dropped(&self, reason: &str) -> f64 {
        self.get(&format!("shadow_requests_dropped_total{{reason=\"{reason}\"}}"))
    }

    /// Requests dropped, every reason.
    pub fn dropped_total(&self) -> f64 {
        self.samples("shadow_requests_dropped_total{").map(|(_, v)| v).sum()
    }

    pub fn kernel(&self, counter: &str) -> f64 {
        self.get(&format!("shadow_kernel_{counter}_total"))
    }

    /// (series, value) of every sample whose series starts with `prefix`.
    pub fn samples<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, f64)> + 'a {
        self.0.lines().filter(move |l| l.starts_with(prefix)).filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k, v.parse().ok()?))
        })
    }

    /// Non-zero samples whose series starts with `prefix`, as "series value" lines.
    pub fn nonzero(&self, prefix: &str) -> Vec<String> {
        self.samples(prefix).filter(|(_, v)| *v != 0.0).map(|(k, v)| format!("{k} {v}")).collect()
    }

    /// The request ledger, kernel and extraction series, for failure messages.
    pub fn interesting(&self) -> String {
        let mut v = Vec::new();
        for p in ["shadow_requests", "shadow_kernel", "shadow_extraction_events", "shadow_flows", "shadow_buffered"] {
            v.extend(self.nonzero(p));
        }
        v.join("\n")
    }
}
