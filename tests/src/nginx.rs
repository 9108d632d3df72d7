//! nginx as a real primary, for the tier B tests and the bench: one config template, the server
//! block's locations given by the caller.
//!
//! Everything nginx writes (pid, logs, temp files, `nginx.conf` itself) stays in the caller's
//! directory, so no two runs share a path and nothing is left outside the scratch directory.

use std::{path::Path, process::Stdio, time::Duration};

use crate::{Proc, topo::NetNs, wait_for};

/// One nginx process's configuration.
#[derive(Clone, Debug)]
pub struct Nginx {
    pub port: u16,
    /// Listen on `[::]:PORT` as well as on IPv4.
    pub ipv6: bool,
    pub worker_connections: u32,
    /// The bench's settings: critical errors only, no access log, a keep-alive connection never
    /// closed by request count. Otherwise every request goes to `access.log` (see [`access_log`]).
    pub quiet: bool,
    /// The body of the `server` block after its `listen` lines: locations and their settings.
    pub server: String,
}

impl Nginx {
    /// A primary on `port` (IPv4 and IPv6) answering every request `200 primary ok`.
    pub fn new(port: u16) -> Self {
        Self {
            port,
            ipv6: true,
            worker_connections: 256,
            quiet: false,
            server: "location / { return 200 \"primary ok\\n\"; }".into(),
        }
    }

    /// The configuration text, with every path under `dir`.
    pub fn conf(&self, dir: &Path) -> String {
        let d = dir.display();
        let port = self.port;
        let (level, logging) = if self.quiet {
            (" crit", "access_log off;\n  keepalive_requests 1000000;".to_string())
        } else {
            ("", format!("access_log {d}/access.log;"))
        };
        let ipv6 = if self.ipv6 { format!("\n    listen [::]:{port};") } else { String::new() };
        format!(
            "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log{level};\nevents {{ worker_connections {}; }}\n\
             http {{\n  {logging}\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               server {{\n    listen {port};{ipv6}\n    {}\n  }}\n}}\n",
            self.worker_connections, self.server
        )
    }

    /// Write `dir/nginx.conf` and run nginx with it inside `ns`; returns once it listens.
    pub fn start(&self, ns: &NetNs, dir: &Path) -> Proc {
        std::fs::create_dir_all(dir).expect("nginx dir");
        let path = dir.join("nginx.conf");
        std::fs::write(&path, self.conf(dir)).expect("nginx.conf");
        let p = Proc::spawn(
            "nginx",
            ns.command("nginx").args(["-c", path.to_str().expect("utf-8")]).stdout(Stdio::null()).stderr(Stdio::null()),
        );
        wait_for(&format!("nginx on {}", self.port), Duration::from_secs(10), || ns.listening(self.port));
        p
    }
}

/// The lines of the access log of an nginx started in `dir` (empty if there is none yet).
pub fn access_log(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("access.log")).unwrap_or_default().lines().map(str::to_string).collect()
}
