//! The deployment files a platform team applies (deploy/): the Kubernetes manifests validate
//! against the API schemas (offline), the Dockerfile passes hadolint, the systemd unit passes
//! `systemd-analyze verify`, and every flag and `SHADOW_*` variable they set is one the release
//! daemon accepts, with the shipped TOML read by the daemon's own parser. No root needed.
//!
//! The linters come from `cargo xtask setup`: kubernetes-validate and hadolint in the venv at
//! ~/.cache/shadow/venv (found there first, else on PATH), systemd-analyze from Debian. A missing
//! tool skips the test, or fails it with SHADOW_REQUIRE_KERNEL=1.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use clap::Parser;
use serde_json::Value;
use shadow_daemon::config::Args;
use shadow_tests::{Scratch, require_tool, workspace_bin};

/// Kubernetes versions whose schemas the manifests must satisfy: an old supported one and the
/// newest kubernetes-validate ships.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

/// `SHADOW_*` variables the daemon reads that are not flags (so not in `--help`).
const NON_FLAG_ENV: [&str; 1] = ["SHADOW_LOG"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ lives in the workspace").to_path_buf()
}

fn deploy(rel: &str) -> PathBuf {
    repo().join("deploy").join(rel)
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The tool from the venv `cargo xtask setup` fills, else its bare name (looked up on PATH).
fn venv_tool(name: &str) -> String {
    let p = venv_bin(name);
    if p.exists() { p.to_string_lossy().into_owned() } else { name.to_string() }
}

fn venv_bin(name: &str) -> PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_default();
    Path::new(&home).join(".cache/shadow/venv/bin").join(name)
}

/// Run `cmd` to completion: (success, stdout, stderr).
fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn kubernetes_manifests() -> Vec<PathBuf> {
    let dir = deploy("kubernetes");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "expected the Namespace, ServiceAccount, ConfigMap and DaemonSet in {}", dir.display());
    files
}

/// Every YAML document of every manifest, as JSON, parsed by PyYAML from the same venv as
/// kubernetes-validate (the workspace has no YAML parser of its own).
fn kubernetes_documents(test: &str) -> Option<Vec<Value>> {
    yaml_documents(test, &kubernetes_manifests())
}

/// Every YAML document of `files`, as JSON (PyYAML from the venv: a system Python need not have
/// it).
fn yaml_documents(test: &str, files: &[PathBuf]) -> Option<Vec<Value>> {
    let python = venv_bin("python3").to_string_lossy().into_owned();
    if !require_tool(test, &python) {
        return None;
    }
    let script = "import json, sys, yaml\n\
                  docs = [d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d is not None]\n\
                  print(json.dumps(docs))";
    let (ok, out, err) = run(Command::new(&python).arg("-c").arg(script).args(files));
    assert!(ok, "parse {files:?} with {python} (PyYAML comes with kubernetes-validate): {err}");
    let docs: Vec<Value> = serde_json::from_str(&out).expect("JSON from the YAML dump");
    Some(docs)
}

/// The prometheus-operator objects beside the manifests (deploy/kubernetes/monitoring/).
fn monitoring_manifests() -> Vec<PathBuf> {
    let dir = deploy("kubernetes/monitoring");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

/// Checks each prometheus-operator object against the operator's own models (generated from its
/// CRDs' OpenAPI schemas, PyPI `cloudcoil-models-prometheus-operator`), with unknown fields
/// refused at every level (the CRDs prune them silently: a typo would be a scrape or a rule that
/// never happens). Prints one line per object.
const OPERATOR_SCHEMA_CHECK: &str = r#"
import inspect, json, sys
import pydantic
from cloudcoil import apimachinery
from cloudcoil.models.prometheus_operator import v1
models = [c for m in (v1, apimachinery) for _, c in inspect.getmembers(m, inspect.isclass)
          if issubclass(c, pydantic.BaseModel) and c.__module__ == m.__name__]
for c in models:
    c.model_config["extra"] = "forbid"
# Nested models are built into their parents: rebuild until every level has the setting.
for _ in range(3):
    for c in models:
        c.model_rebuild(force=True)
ok = True
for doc in json.load(sys.stdin):
    kind = doc.get("kind")
    try:
        assert doc.get("apiVersion") == "monitoring.coreos.com/v1", "apiVersion " + str(doc.get("apiVersion"))
        getattr(v1, kind).model_validate(doc)
        print(kind, doc["metadata"]["name"], "valid")
    except Exception as e:
        ok = False
        print(kind, doc.get("metadata", {}).get("name"), "INVALID:", " | ".join(str(e).splitlines())[:2000])
sys.exit(0 if ok else 1)
"#;

fn operator_schema_check(docs: &[Value]) -> (bool, String) {
    let python = venv_bin("python3");
    let mut child = Command::new(&python)
        .arg("-c")
        .arg(OPERATOR_SCHEMA_CHECK)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn python");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(serde_json::to_string(docs).expect("json").as_bytes()).expect("write");
    }
    let out = child.wait_with_output().expect("python");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} named {name} in deploy/kubernetes/"))
}

/// A container's environment as kubelet gives it, in order: `value`s with `$(NAME)` of an earlier
/// variable expanded, `status.hostIP` from the downward API as `node_ip`. A variable that is not
/// `SHADOW_*` must be used by one that is (it exists for the expansion).
fn container_env(c: &Value, node_ip: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for e in c["env"].as_array().expect("env") {
        let name = str_of(&e["name"], "env name").to_string();
        let value = match (&e["value"], &e["valueFrom"]["fieldRef"]["fieldPath"]) {
            (Value::String(v), _) => out.iter().fold(v.clone(), |v, (n, x)| v.replace(&format!("$({n})"), x)),
            (_, Value::String(f)) if f == "status.hostIP" => node_ip.to_string(),
            _ => panic!("env {name}: only values and status.hostIP are understood here: {e}"),
        };
        assert!(!value.contains("$("), "env {name}: {value} refers to no earlier variable");
        out.push((name, value));
    }
    let raw = c["env"].to_string();
    for (name, _) in out.iter().filter(|(n, _)| !n.starts_with("SHADOW_")) {
        assert!(raw.contains(&format!("$({name})")), "env {name} is neither a SHADOW_* variable nor used by one");
    }
    out
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str().unwrap_or_else(|| panic!("{what} is not a string: {v}"))
}

/// What the release daemon's `--help` accepts: long flag -> its `SHADOW_*` variable.
fn daemon_flags() -> BTreeMap<String, String> {
    // A clean environment: clap prints the values of set variables in the help text.
    let (ok, help, err) = run(Command::new(workspace_bin("shadow-daemon")).arg("--help").env_clear());
    assert!(ok, "shadow-daemon --help: {err}");
    // Option blocks start with a line indented by 2 (`-i, --interface`) or 6 (`--shadow`)
    // spaces and a dash; deeper dashes are lists of values. The block's text (its help may wrap
    // over several lines) carries the `[env: SHADOW_...]` of that flag.
    let mut blocks: Vec<String> = Vec::new();
    for line in help.lines() {
        let head = line.trim_start();
        if head.starts_with('-') && line.len() - head.len() <= 6 {
            blocks.push(line.to_string());
        } else if let Some(b) = blocks.last_mut() {
            b.push(' ');
            b.push_str(line.trim());
        }
    }
    let mut flags = BTreeMap::new();
    for b in blocks {
        let Some(flag) = b.split([' ', ',', '=']).find(|w| w.starts_with("--")) else {
            continue;
        };
        let Some(at) = b.find("[env: ") else {
            assert!(matches!(flag, "--help" | "--version"), "{flag} has no SHADOW_* variable in --help: {b}");
            continue;
        };
        let env: String =
            b[at + 6..].chars().take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_').collect();
        // The convention the manifests rely on: SHADOW_ + the flag's name in upper snake case.
        assert_eq!(env, format!("SHADOW_{}", flag[2..].replace('-', "_").to_ascii_uppercase()), "{b}");
        flags.insert(flag.to_string(), env);
    }
    assert_eq!(flags.len(), help.matches("[env: ").count(), "a flag with a variable was not parsed from:\n{help}");
    assert!(flags.contains_key("--config") && flags.contains_key("--interface"), "parsed no flags from:\n{help}");
    flags
}

/// The daemon's flag for a `SHADOW_*` variable, or `None` for the documented non-flag ones
/// (which must still be read by the binary).
fn flag_for_env(flags: &BTreeMap<String, String>, env: &str, whence: &str) -> Option<String> {
    if let Some((flag, _)) = flags.iter().find(|(_, e)| *e == env) {
        return Some(flag.clone());
    }
    assert!(NON_FLAG_ENV.contains(&env), "{whence}: {env} is neither a daemon flag's variable nor one it reads");
    let binary = fs::read(workspace_bin("shadow-daemon")).expect("read the release daemon");
    assert!(binary.windows(env.len()).any(|w| w == env.as_bytes()), "{whence}: the daemon never mentions {env}");
    None
}

/// Check `args` (flags with values) and `env` against the daemon, then resolve them with its own
/// parser exactly as the daemon would start, `--config` pointing at `config_file`.
fn resolve_as_daemon(
    flags: &BTreeMap<String, String>,
    whence: &str,
    args: &[String],
    env: &[(String, String)],
    config_file: &Path,
) -> shadow_daemon::config::DaemonConfig {
    let mut argv = vec!["shadow-daemon".to_string()];
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let flag = a.split('=').next().unwrap_or_default();
        assert!(flag.starts_with("--"), "{whence}: argument {a:?} is not a --flag");
        assert!(flags.contains_key(flag), "{whence}: {flag} is not a flag of shadow-daemon --help");
        argv.push(flag.to_string());
        let value = match a.split_once('=') {
            Some((_, v)) => v.to_string(),
            None => it.next().unwrap_or_else(|| panic!("{whence}: {flag} has no value")).clone(),
        };
        argv.push(if flag == "--config" { config_file.to_string_lossy().into_owned() } else { value });
    }
    for (name, value) in env {
        assert!(name.starts_with("SHADOW_"), "{whence}: {name} is not a SHADOW_* variable");
        if let Some(flag) = flag_for_env(flags, name, whence) {
            assert!(flag != "--config", "{whence}: set the config file with an argument, not {name}");
            argv.push(format!("{flag}={value}"));
        }
    }
    let parsed = Args::try_parse_from(&argv).unwrap_or_else(|e| panic!("{whence}: the daemon refuses {argv:?}: {e}"));
    parsed.resolve().unwrap_or_else(|e| panic!("{whence}: the daemon's configuration check refuses {argv:?}: {e}"))
}

#[test]
fn kubernetes_manifests_validate_against_the_api_schemas() {
    let test = "kubernetes_manifests_validate_against_the_api_schemas";
    let tool = venv_tool("kubernetes-validate");
    if !require_tool(test, &tool) {
        return;
    }
    let files = kubernetes_manifests();
    for version in KUBERNETES_VERSIONS {
        // --strict: an unknown field (a typo such as `hostNetwrk`) is an error, not ignored.
        let (ok, out, err) = run(Command::new(&tool).args(["--strict", "--kubernetes-version", version]).args(&files));
        assert!(ok, "kubernetes-validate {version} failed:\n{out}{err}");
        for f in &files {
            let name = f.file_name().expect("file name").to_string_lossy();
            assert!(
                out.lines().any(|l| l.contains(&*name) && l.contains("passed")),
                "{name} not reported as passing against {version}:\n{out}{err}"
            );
        }
        assert!(!out.contains("WARN") && !err.contains("WARN"), "warnings against {version}:\n{out}{err}");
    }
}

#[test]
fn kubernetes_manifests_hold_together() {
    let Some(docs) = kubernetes_documents("kubernetes_manifests_hold_together") else {
        return;
    };
    // `kubectl -n shadow exec ds/shadow -- shadowctl ...` is the documented way to operate it.
    find(&docs, "Namespace", "shadow");
    for d in docs.iter().filter(|d| d["kind"] != "Namespace") {
        assert_eq!(d["metadata"]["namespace"], "shadow", "{} {}", d["kind"], d["metadata"]["name"]);
    }
    let ds = find(&docs, "DaemonSet", "shadow");
    let pod = &ds["spec"]["template"]["spec"];
    find(&docs, "ServiceAccount", str_of(&pod["serviceAccountName"], "serviceAccountName"));
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["hostPID"], false);
    assert_eq!(pod["nodeSelector"]["kubernetes.io/os"], "linux");
    let c = &pod["containers"][0];
    let caps: Vec<&str> = c["securityContext"]["capabilities"]["add"]
        .as_array()
        .expect("capabilities.add")
        .iter()
        .map(|v| str_of(v, "cap"))
        .collect();
    assert_eq!(caps, ["BPF", "NET_ADMIN", "PERFMON"], "exactly what the daemon checks for");
    assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
    assert_ne!(c["securityContext"]["privileged"], true);
    assert_eq!(c["terminationMessagePolicy"], "FallbackToLogsOnError", "the exit's one line in `kubectl describe`");
    for r in ["requests", "limits"] {
        assert!(c["resources"][r]["memory"].is_string() && c["resources"][r]["cpu"].is_string(), "resources.{r}");
    }

    // Host paths: bpffs and the control socket's directory.
    let host_path = |path: &str| {
        let v = pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["hostPath"]["path"] == path)
            .unwrap_or_else(|| panic!("no hostPath volume {path}"));
        assert_eq!(v["hostPath"]["type"], "DirectoryOrCreate", "{path}");
        let name = &v["name"];
        let m = c["volumeMounts"].as_array().expect("volumeMounts").iter().find(|m| m["name"] == *name);
        assert_eq!(m.map(|m| &m["mountPath"]), Some(&Value::from(path)), "{path} mounted at the same path");
    };
    host_path("/sys/fs/bpf");
    host_path("/run/shadow");
    // The egress fence reads the host's cgroup tree (never writes it).
    let cg = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["hostPath"]["path"] == "/sys/fs/cgroup")
        .expect("a hostPath volume for /sys/fs/cgroup");
    assert_eq!(cg["hostPath"]["type"], "Directory");
    let m = c["volumeMounts"].as_array().expect("volumeMounts").iter().find(|m| m["name"] == cg["name"]);
    assert_eq!(
        m.map(|m| (&m["mountPath"], &m["readOnly"])),
        Some((&Value::from("/sys/fs/cgroup"), &Value::from(true)))
    );

    // Probes, the container port and the scrape annotation all name the metrics endpoint's port.
    let node_env = container_env(c, "10.0.3.7");
    let env = |name: &str| node_env.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    let metrics_addr: std::net::SocketAddr =
        env("SHADOW_METRICS_ADDR").expect("SHADOW_METRICS_ADDR").parse().expect("SHADOW_METRICS_ADDR is ADDR:PORT");
    assert_eq!(
        metrics_addr.ip().to_string(),
        "10.0.3.7",
        "bound to the node's address (downward API): what kubelet probes and Prometheus scrapes, and nothing else"
    );
    let port = metrics_addr.port();
    let named =
        c["ports"].as_array().expect("ports").iter().find(|p| p["containerPort"] == port).expect("metrics port");
    assert_eq!(named["hostPort"], port);
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert!(get["port"] == port || get["port"] == named["name"], "{probe} port {}", get["port"]);
    }
    let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], port.to_string());
    assert_eq!(env("SHADOW_CONTROL").as_deref(), Some("/run/shadow/control.sock"), "shadowctl's default socket");
}

#[test]
fn kubernetes_args_env_and_config_are_accepted_by_the_daemon() {
    let Some(docs) = kubernetes_documents("kubernetes_args_env_and_config_are_accepted_by_the_daemon") else {
        return;
    };
    let flags = daemon_flags();
    let ds = find(&docs, "DaemonSet", "shadow");
    let pod = &ds["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert!(c["command"].is_null(), "the image's ENTRYPOINT is the daemon; set args, not command");
    let args: Vec<String> = c["args"].as_array().expect("args").iter().map(|a| str_of(a, "args").to_string()).collect();
    // The daemon reads the SHADOW_* variables (the others exist for kubelet's expansion).
    let shadow_env = |node_ip: &str| -> Vec<(String, String)> {
        container_env(c, node_ip).into_iter().filter(|(n, _)| n.starts_with("SHADOW_")).collect()
    };
    let env = shadow_env("10.0.3.7");

    // The file --config names is the ConfigMap's key, mounted from the shipped ConfigMap, whose
    // text is deploy/kubernetes/shadow.toml byte for byte.
    let config_path = args.iter().skip_while(|a| *a != "--config").nth(1).expect("--config FILE in args");
    let (dir, key) = config_path.rsplit_once('/').expect("--config is a path");
    let mount = c["volumeMounts"].as_array().expect("volumeMounts").iter().find(|m| m["mountPath"] == dir);
    let mount = mount.unwrap_or_else(|| panic!("nothing mounted at {dir}"));
    let volume =
        pod["volumes"].as_array().expect("volumes").iter().find(|v| v["name"] == mount["name"]).expect("volume");
    let cm = find(&docs, "ConfigMap", str_of(&volume["configMap"]["name"], "configMap.name"));
    let shipped = deploy("kubernetes/shadow.toml");
    assert_eq!(
        str_of(&cm["data"][key], "ConfigMap data"),
        read(&shipped),
        "20-configmap.yaml's {key} differs from deploy/kubernetes/shadow.toml"
    );

    let cfg = resolve_as_daemon(&flags, "30-daemonset.yaml", &args, &env, &shipped);
    assert_eq!(cfg.interface, "eth0");
    assert!(!cfg.rules.is_empty() && cfg.rules.iter().all(|r| r.shadow.is_some()), "{:?}", cfg.rules);
    assert_eq!(cfg.control, Path::new("/run/shadow/control.sock"));
    assert_eq!(cfg.sample_ppm, 50_000, "SHADOW_SAMPLE_RATE=5 is read as 5 %");
    assert_eq!(cfg.metrics_addr.to_string(), "10.0.3.7:9477");
    // On an IPv6 node, $(NODE_IP):9477 has no brackets: the daemon reads it as address and port.
    let cfg = resolve_as_daemon(&flags, "30-daemonset.yaml (IPv6 node)", &args, &shadow_env("fd00::7"), &shipped);
    assert_eq!(cfg.metrics_addr.to_string(), "[fd00::7]:9477");
}

#[test]
fn systemd_unit_passes_systemd_analyze() {
    let test = "systemd_unit_passes_systemd_analyze";
    if !require_tool(test, "systemd-analyze") {
        return;
    }
    let unit = read(&deploy("systemd/shadow.service"));
    // verify checks that ExecStart's binary exists: point it at the release build.
    let daemon = workspace_bin("shadow-daemon");
    let scratch = Scratch::new("deploy-unit");
    let copy = scratch.path("shadow.service");
    fs::write(&copy, unit.replace("/usr/local/bin/shadow-daemon", &daemon.to_string_lossy())).expect("write unit copy");
    let (ok, out, err) = run(Command::new("systemd-analyze").arg("verify").arg(&copy));
    // Unknown keys and unparsable values are warnings with exit 0: any output is a failure.
    assert!(ok && out.trim().is_empty() && err.trim().is_empty(), "systemd-analyze verify:\n{out}{err}");

    // Not root: a dynamic user with the three capabilities as ambient ones (daemon_cli_b runs the
    // daemon that way), and room for a descriptor per shadow connection.
    for line in ["DynamicUser=yes", "AmbientCapabilities=CAP_BPF CAP_NET_ADMIN CAP_PERFMON", "LimitNOFILE=65536"] {
        assert!(unit.lines().any(|l| l == line), "the unit lost {line}");
    }
    assert!(!unit.lines().any(|l| l.starts_with("User=")), "no fixed user: DynamicUser allocates one");
    // The hardening holds: exposure 1.8 on systemd's scale of 0 to 10 (it was 2.1 as root).
    let (ok, out, err) =
        run(Command::new("systemd-analyze").args(["security", "--offline=yes", "--threshold=18"]).arg(&copy));
    let overall = out.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_default().to_string();
    assert!(ok, "systemd-analyze security: exposure above 1.8 ({overall}):\n{out}{err}");
    eprintln!("{overall}");
}

/// The egress fence's drop-in: it verifies with the unit, changes only what pinning needs (root
/// for /sys/fs/bpf's owner permission, /sys/fs/bpf writable) and no capability; its exposure is
/// the figure docs/operations.md gives.
#[test]
fn systemd_egress_dropin_passes_systemd_analyze() {
    let test = "systemd_egress_dropin_passes_systemd_analyze";
    if !require_tool(test, "systemd-analyze") {
        return;
    }
    let dropin = read(&deploy("systemd/shadow-egress.conf"));
    let settings: Vec<&str> = dropin.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).collect();
    assert_eq!(
        settings,
        ["[Service]", "DynamicUser=no", "User=root", "ProtectKernelTunables=no", "ReadWritePaths=/sys/fs/bpf"],
        "the drop-in widens nothing else (no capability, no other path)"
    );
    let unit = read(&deploy("systemd/shadow.service"));
    let scratch = Scratch::new("deploy-dropin");
    let copy = scratch.path("shadow.service");
    let daemon = workspace_bin("shadow-daemon");
    fs::write(&copy, unit.replace("/usr/local/bin/shadow-daemon", &daemon.to_string_lossy())).expect("write unit copy");
    fs::create_dir_all(scratch.path("shadow.service.d")).expect("drop-in dir");
    fs::write(scratch.path("shadow.service.d/egress.conf"), &dropin).expect("write drop-in");
    let (ok, out, err) = run(Command::new("systemd-analyze").arg("verify").arg(&copy));
    assert!(ok && out.trim().is_empty() && err.trim().is_empty(), "systemd-analyze verify:\n{out}{err}");
    let (ok, out, err) =
        run(Command::new("systemd-analyze").args(["security", "--offline=yes", "--threshold=23"]).arg(&copy));
    let overall = out.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_default().to_string();
    assert!(ok, "systemd-analyze security with the drop-in: exposure above 2.3 ({overall}):\n{out}{err}");
    assert!(overall.contains("2.3"), "docs/operations.md gives 2.3: {overall}");
    let ops = read(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md"));
    assert!(
        ops.contains("shadow-egress.conf") && ops.contains("exposure 2.3"),
        "the docs name the drop-in and its exposure"
    );
}

#[test]
fn systemd_unit_args_and_env_are_accepted_by_the_daemon() {
    let unit = read(&deploy("systemd/shadow.service"));
    let directive = |key: &str| -> Vec<String> {
        unit.lines().filter_map(|l| l.strip_prefix(key)).map(|v| v.trim().to_string()).collect()
    };
    let exec = directive("ExecStart=");
    assert_eq!(exec.len(), 1, "one ExecStart: {exec:?}");
    let mut words = exec[0].split_whitespace().map(str::to_string);
    assert_eq!(words.next().as_deref(), Some("/usr/local/bin/shadow-daemon"));
    let args: Vec<String> = words.collect();
    let env: Vec<(String, String)> = directive("Environment=")
        .iter()
        .map(|e| {
            let (k, v) = e.split_once('=').unwrap_or_else(|| panic!("Environment={e} is not NAME=VALUE"));
            (k.to_string(), v.to_string())
        })
        .collect();
    // The unit's install steps copy deploy/shadow.example.toml to /etc/shadow/shadow.toml.
    assert!(unit.contains("deploy/shadow.example.toml /etc/shadow/shadow.toml"), "install steps changed");
    let cfg = resolve_as_daemon(&daemon_flags(), "shadow.service", &args, &env, &deploy("shadow.example.toml"));
    assert_eq!(cfg.metrics_addr.to_string(), "127.0.0.1:9477");
    assert_eq!(cfg.sample_ppm, 100_000);
    for cap in ["CapabilityBoundingSet=", "AmbientCapabilities="] {
        assert_eq!(directive(cap), ["CAP_BPF CAP_NET_ADMIN CAP_PERFMON"], "{cap}");
    }
    assert!(directive("RuntimeDirectory=") == ["shadow"], "/run/shadow holds the control socket");
    assert!(directive("PrivateNetwork=").is_empty(), "the daemon captures on the host's interfaces");
}

#[test]
fn dockerfile_passes_hadolint_and_builds_as_xtask_does() {
    let test = "dockerfile_passes_hadolint_and_builds_as_xtask_does";
    let file = deploy("Dockerfile");
    let text = read(&file);
    // The build is the project's own: setup, then the release binaries; the runtime stage ships
    // the daemon where the DaemonSet and the unit expect it.
    for needle in [
        "FROM rust:1.95.0-bookworm AS build",
        "cargo xtask setup",
        "cargo build --release --locked -p shadow-daemon --bins",
        // No .git in the context: the revision comes in as a build argument.
        "ARG SHADOW_REVISION",
        "target/release/shadowctl",
        // Completions and man pages, written by shadowctl itself.
        "shadowctl completions bash > /out/share/bash-completion/completions/shadowctl",
        "shadowctl man --out /out/share/man/man8",
        "COPY --from=build /out/share/ /usr/local/share/",
        "FROM debian:bookworm-slim",
        "ENTRYPOINT [\"/usr/local/bin/shadow-daemon\"]",
    ] {
        assert!(text.contains(needle), "deploy/Dockerfile lost {needle:?}");
    }
    let flags = daemon_flags();
    for line in text.lines().filter_map(|l| l.strip_prefix("ENV ")) {
        let name = line.split(['=', ' ']).next().unwrap_or_default();
        flag_for_env(&flags, name, "deploy/Dockerfile");
    }
    let tool = venv_tool("hadolint");
    if !require_tool(test, &tool) {
        return;
    }
    // From the repository root: hadolint's default rules (a .hadolint.yaml there would apply).
    let (ok, out, err) = run(Command::new(&tool).arg("--no-color").arg(&file).current_dir(repo()));
    assert!(ok && out.trim().is_empty(), "hadolint deploy/Dockerfile:\n{out}{err}");
}

#[test]
fn prometheus_operator_objects_validate_against_the_operator_schemas() {
    let Some(docs) = yaml_documents("prometheus_operator_objects", &monitoring_manifests()) else {
        return;
    };
    let kinds: Vec<&str> = docs.iter().map(|d| str_of(&d["kind"], "kind")).collect();
    assert_eq!(kinds, ["PodMonitor", "PrometheusRule"]);
    let (ok, out) = operator_schema_check(&docs);
    assert!(ok, "the operator's schemas refuse deploy/kubernetes/monitoring/:\n{out}");
    assert_eq!(out.lines().filter(|l| l.ends_with(" valid")).count(), 2, "{out}");
    // The check can fail: a misspelt field, a wrong type.
    let mut typo = docs.clone();
    typo[0]["spec"]["podMetricsEndpoints"][0]["prot"] = typo[0]["spec"]["podMetricsEndpoints"][0]["port"].take();
    let mut wrong = docs.clone();
    wrong[1]["spec"]["groups"][0]["rules"] = Value::from("not a list");
    for (what, bad) in [("a misspelt field", typo), ("a wrong type", wrong)] {
        let (ok, out) = operator_schema_check(&bad);
        assert!(!ok && out.contains("INVALID"), "{what} passed:\n{out}");
    }
}

#[test]
fn prometheus_operator_objects_scrape_the_daemonset_and_ship_the_rule_file() {
    let Some(docs) = yaml_documents("prometheus_operator_objects", &monitoring_manifests()) else {
        return;
    };
    let Some(k8s) = kubernetes_documents("prometheus_operator_objects") else {
        return;
    };
    let Some(rules) = yaml_documents("prometheus_operator_objects", &[deploy("prometheus/shadow-rules.yml")]) else {
        return;
    };
    let ds = find(&k8s, "DaemonSet", "shadow");
    let pod_labels = &ds["spec"]["template"]["metadata"]["labels"];
    let pm = find(&docs, "PodMonitor", "shadow");
    assert_eq!(pm["metadata"]["namespace"], ds["metadata"]["namespace"]);
    for (k, v) in pm["spec"]["selector"]["matchLabels"].as_object().expect("matchLabels") {
        assert_eq!(&pod_labels[k], v, "the PodMonitor selects the DaemonSet's pods by {k}");
    }
    // The job the health alerts select: the value of the pods' label the PodMonitor names.
    let job_label = str_of(&pm["spec"]["jobLabel"], "jobLabel");
    assert_eq!(pod_labels[job_label], "shadow", "job=\"shadow\", as the alerts say");
    let port = str_of(&pm["spec"]["podMetricsEndpoints"][0]["port"], "port");
    let ports = ds["spec"]["template"]["spec"]["containers"][0]["ports"].as_array().expect("ports");
    assert!(ports.iter().any(|p| p["name"] == port), "the container has a port named {port}");
    // The PrometheusRule's spec is the rule file Prometheus users load as is.
    let pr = find(&docs, "PrometheusRule", "shadow");
    assert_eq!(pr["metadata"]["namespace"], ds["metadata"]["namespace"]);
    assert_eq!(pr["spec"], rules[0], "50-prometheusrule.yaml's spec differs from deploy/prometheus/shadow-rules.yml");
}

/// Every alert has a severity, a summary, a description and a runbook: a section of
/// docs/operations.md whose heading is the alert's name (the URL's anchor).
#[test]
fn every_alert_has_a_runbook_section() {
    let Some(rules) = yaml_documents("every_alert_has_a_runbook_section", &[deploy("prometheus/shadow-rules.yml")])
    else {
        return;
    };
    let ops = read(&repo().join("docs/operations.md"));
    let mut alerts = Vec::new();
    for group in rules[0]["groups"].as_array().expect("groups") {
        for r in group["rules"].as_array().expect("rules").iter().filter(|r| r.get("alert").is_some()) {
            let name = str_of(&r["alert"], "alert");
            alerts.push(name.to_owned());
            assert!(
                matches!(r["labels"]["severity"].as_str(), Some("critical" | "warning" | "info")),
                "{name}: severity"
            );
            for a in ["summary", "description"] {
                assert!(!str_of(&r["annotations"][a], a).is_empty(), "{name}: {a}");
            }
            let url = str_of(&r["annotations"]["runbook_url"], "runbook_url");
            let anchor = name.to_ascii_lowercase();
            assert!(url.ends_with(&format!("docs/operations.md#{anchor}")), "{name}: {url}");
            assert!(ops.lines().any(|l| l == format!("### {name}")), "docs/operations.md has no section ### {name}");
        }
    }
    assert!(alerts.len() >= 7, "{alerts:?}");
}

/// The rollout gates of deploy/rollouts/: Argo Rollouts reads the node's `/verdict` (its
/// `verdict` field: PASS succeeds, FAIL fails, INSUFFICIENT is inconclusive and pauses) and both
/// Argo and Flagger query the fleet's windowed verdict, a name the shipped rules record and whose
/// query the promtool tests evaluate. (No offline schema of these CRDs is packaged; the fields are
/// the ones their documentation names.)
#[test]
fn rollout_gates_read_the_verdict_and_the_windowed_rules() {
    let files = [deploy("rollouts/argo-analysistemplate.yaml"), deploy("rollouts/flagger-metrictemplate.yaml")];
    let Some(docs) = yaml_documents("rollout_gates", &files) else {
        return;
    };
    let argo = find(&docs, "AnalysisTemplate", "shadow-verdict");
    assert_eq!(argo["apiVersion"], "argoproj.io/v1alpha1");
    let flagger = find(&docs, "MetricTemplate", "shadow-verdict");
    assert_eq!(flagger["apiVersion"], "flagger.app/v1beta1");
    let metrics = argo["spec"]["metrics"].as_array().expect("metrics");
    let node = metrics.iter().find(|m| m["name"] == "node-verdict").expect("node-verdict");
    assert_eq!(node["provider"]["web"]["jsonPath"], "{$.verdict}");
    assert_eq!(node["provider"]["web"]["url"], "{{args.verdict-url}}");
    assert_eq!(node["successCondition"], "result == \"PASS\"");
    assert_eq!(node["failureCondition"], "result == \"FAIL\"");
    let args: Vec<&str> =
        argo["spec"]["args"].as_array().expect("args").iter().map(|a| str_of(&a["name"], "arg")).collect();
    assert!(args.contains(&"verdict-url") && args.contains(&"prometheus-address"), "{args:?}");
    // INSUFFICIENT pauses, never fails or promotes.
    for m in metrics {
        assert_eq!(m["failureLimit"], 0, "{m}");
        assert!(m["inconclusiveLimit"].as_u64() > Some(0), "{m}");
    }
    let fleet = metrics.iter().find(|m| m["name"] == "fleet-verdict").expect("fleet-verdict");
    let query = str_of(&fleet["provider"]["prometheus"]["query"], "query");
    assert_eq!(query, str_of(&flagger["spec"]["query"], "query"), "Argo and Flagger ask the same");
    assert_eq!(flagger["spec"]["provider"]["type"], "prometheus");
    // The name it reads is recorded by the shipped rules, and promtool evaluates this very query.
    let rules = fs::read_to_string(deploy("prometheus/shadow-rules.yml")).expect("rules");
    assert!(rules.contains("- record: shadow_10m:fleet_verdict\n"), "shadow_10m:fleet_verdict is recorded");
    let tests = fs::read_to_string(repo().join("tests/prometheus/window.test.yml")).expect("window tests");
    assert!(tests.contains(&format!("- expr: '{query}'")), "tests/prometheus/window.test.yml evaluates {query}");
}
