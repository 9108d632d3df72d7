//! Network namespaces and a two-host topology (client ns ↔ veth ↔ server ns), removed on drop.

use std::{fs::File, os::fd::AsRawFd, process::Command};

use crate::{sh, unique};

/// A network namespace created by the test (`ip netns add`), deleted on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(tag: &str) -> Self {
        let name = format!("shd-{tag}-{}-{}", std::process::id(), unique());
        sh(&["ip", "netns", "add", &name]);
        let ns = Self { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Run a command inside the namespace to completion (panics on failure).
    pub fn exec(&self, cmd: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(cmd);
        sh(&full)
    }

    /// Whether a TCP socket listens on `port` inside the namespace.
    pub fn listening(&self, port: u16) -> bool {
        self.exec(&["ss", "-Hltn", &format!("sport = :{port}")]).contains(&format!(":{port}"))
    }

    /// A `Command` that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Move the calling thread into this namespace (network namespaces are per thread). Use it in
    /// a dedicated thread: the thread never comes back to the original namespace.
    pub fn enter_current_thread(&self) {
        enter_netns(&self.name);
    }
}

/// Move the calling thread into the named network namespace (for threads that only have the
/// name, not the [`NetNs`] that owns it).
pub fn enter_netns(name: &str) {
    let path = format!("/run/netns/{name}");
    let f = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: setns on a valid namespace fd; affects only this thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns into {name}: {}", std::io::Error::last_os_error());
}

impl NetNs {
    /// `GET path` over HTTP/1.0 to `addr` from inside the namespace; the response body, or None
    /// if the connection or the exchange failed (a server not up yet).
    pub fn http_get(&self, addr: std::net::SocketAddr, path: &str) -> Option<String> {
        use std::io::{Read, Write};
        let name = self.name.clone();
        let path = path.to_string();
        std::thread::spawn(move || {
            NetNs { name }.enter_and_forget();
            let timeout = std::time::Duration::from_secs(5);
            let mut s = std::net::TcpStream::connect_timeout(&addr, timeout).ok()?;
            s.set_read_timeout(Some(timeout)).ok()?;
            s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).ok()?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).ok()?;
            let text = String::from_utf8_lossy(&buf).into_owned();
            let (head, body) = text.split_once("\r\n\r\n")?;
            // Either version: hyper answers an HTTP/1.0 request in 1.0.
            (head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200")).then(|| body.to_string())
        })
        .join()
        .ok()
        .flatten()
    }

    /// Enter the namespace on this thread without taking ownership (no delete on drop).
    pub fn enter_and_forget(self) {
        self.enter_current_thread();
        std::mem::forget(self);
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace also removes the veth ends inside it.
        let _ = Command::new("ip").args(["netns", "delete", &self.name]).status();
    }
}

/// Two hosts on one link: `client` (…1) and `server` (…2), IPv4 and IPv6.
pub struct TwoHosts {
    pub client: NetNs,
    pub server: NetNs,
    /// The server's veth: where the daemon attaches (requests ingress, responses egress).
    pub server_if: String,
    pub client_if: String,
    pub client_v4: String,
    pub server_v4: String,
    pub client_v6: String,
    pub server_v6: String,
}

impl TwoHosts {
    pub fn new(tag: &str) -> Self {
        let client = NetNs::new(&format!("{tag}c"));
        let server = NetNs::new(&format!("{tag}s"));
        let id = (std::process::id() % 100) * 100 + (unique() % 100);
        let client_if = format!("shc{id}");
        let server_if = format!("shs{id}");
        let subnet = (unique() % 200) + 20;
        let client_v4 = format!("10.213.{subnet}.1");
        let server_v4 = format!("10.213.{subnet}.2");
        let client_v6 = format!("fd00:5ad0:{subnet:x}::1");
        let server_v6 = format!("fd00:5ad0:{subnet:x}::2");
        sh(&[
            "ip",
            "link",
            "add",
            &client_if,
            "netns",
            &client.name,
            "type",
            "veth",
            "peer",
            "name",
            &server_if,
            "netns",
            &server.name,
        ]);
        for (ns, ifname, v4, v6) in
            [(&client, &client_if, &client_v4, &client_v6), (&server, &server_if, &server_v4, &server_v6)]
        {
            ns.exec(&["ip", "addr", "add", &format!("{v4}/24"), "dev", ifname]);
            ns.exec(&["ip", "-6", "addr", "add", &format!("{v6}/64"), "dev", ifname, "nodad"]);
            ns.exec(&["ip", "link", "set", ifname, "up"]);
        }
        Self { client, server, server_if, client_if, client_v4, server_v4, client_v6, server_v6 }
    }
}
