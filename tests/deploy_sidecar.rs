//! What can be checked of the container image, the Kubernetes sidecar manifest, the
//! compose demo and the Grafana dashboard without docker, a cluster or Grafana:
//!
//! - every YAML file under `deploy/` parses (PyYAML's `safe_load_all`, from the venv
//!   `tests/run-all.sh` creates; never skipped: a missing PyYAML fails the test);
//! - every JSON file under `deploy/` parses, and the dashboard queries only metrics
//!   sessiongate exports (and shows every one of them);
//! - every TOML file under `deploy/` passes `sessiongate check`, and so does the config
//!   embedded in the Kubernetes ConfigMap;
//! - the Dockerfile builds and copies what the README says, with what the manifest and
//!   compose file assume (user, config path, ports);
//! - the Kubernetes probes, ports, mounts and grace period agree with the ConfigMap's
//!   config, and the compose services with the compose config.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Files under `deploy/` (recursively) whose names end with one of `suffixes`, sorted.
fn deploy_files(suffixes: &[&str]) -> Vec<PathBuf> {
    fn walk(dir: &Path, suffixes: &[&str], out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, suffixes, out);
            } else if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| suffixes.iter().any(|s| n.ends_with(s)))
            {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root().join("deploy"), suffixes, &mut out);
    out.sort();
    out
}

fn rel(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

// --- YAML, through PyYAML --------------------------------------------------------------

/// The Python that has PyYAML: `$SESSIONGATE_E2E_PYTHON`, else the venv that
/// `tests/run-all.sh` creates.
fn python() -> PathBuf {
    std::env::var_os("SESSIONGATE_E2E_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/e2e-venv/bin/python"))
}

const YAML_TO_JSON: &str = r#"
import json, sys, yaml
out = []
for path in sys.argv[1:]:
    with open(path, encoding="utf-8") as f:
        try:
            out.append([d for d in yaml.safe_load_all(f) if d is not None])
        except yaml.YAMLError as e:
            sys.exit(f"{path}: {e}")
json.dump(out, sys.stdout, default=str)
"#;

/// Every non-empty document of each file, parsed by `yaml.safe_load_all`, as JSON.
fn load_yaml(paths: &[PathBuf]) -> Vec<Vec<Value>> {
    let py = python();
    let hint = "run `bash tests/run-all.sh` once (it creates target/e2e-venv with Flask and \
                PyYAML), or set SESSIONGATE_E2E_PYTHON to a Python that has PyYAML";
    let probe = Command::new(&py)
        .args(["-c", "import yaml"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} ({e}): {hint}", py.display()));
    assert!(
        probe.status.success(),
        "{} has no PyYAML ({}): {hint}, e.g. `{} -m pip install pyyaml`",
        py.display(),
        String::from_utf8_lossy(&probe.stderr).trim(),
        py.display()
    );
    let out = Command::new(&py)
        .arg("-c")
        .arg(YAML_TO_JSON)
        .args(paths)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "YAML does not parse: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn load_one_yaml(rel_path: &str) -> Vec<Value> {
    load_yaml(&[root().join(rel_path)]).pop().unwrap()
}

#[test]
fn every_yaml_file_under_deploy_parses() {
    let files = deploy_files(&[".yaml", ".yml"]);
    let names: Vec<String> = files.iter().map(|p| rel(p)).collect();
    for want in [
        "deploy/kubernetes/sidecar.yaml",
        "deploy/compose/docker-compose.yml",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }
    for (path, docs) in files.iter().zip(load_yaml(&files)) {
        assert!(!docs.is_empty(), "{}: no document", rel(path));
    }
}

// --- JSON and the dashboard ------------------------------------------------------------

/// Every metric sessiongate exports, as Prometheus names its series. Histograms are
/// listed by their base name and used with `_bucket`, `_sum` or `_count`.
const COUNTERS_AND_GAUGES: &[&str] = &[
    "sessiongate_requests_total",
    "sessiongate_active_connections",
    "sessiongate_connections_pressed_total",
    "sessiongate_tls_handshake_failures_total",
    "sessiongate_sessions_created_total",
    "sessiongate_sessions_rotated_total",
    "sessiongate_sessions_logged_out_total",
    "sessiongate_sessions_expired_total",
    "sessiongate_stale_session_ids_total",
    "sessiongate_malformed_session_cookies_total",
    "sessiongate_vault_cookies_captured_total",
    "sessiongate_login_rule_matches_total",
    "sessiongate_login_conflicts_total",
    "sessiongate_login_cancelled_requests_total",
    "sessiongate_rejected_requests_total",
    "sessiongate_removed_request_parts_total",
    "sessiongate_store_errors_total",
    "sessiongate_cache_hits_total",
    "sessiongate_cache_misses_total",
    "sessiongate_config_reloads_total",
    "sessiongate_sessions_evicted_total",
    "sessiongate_sessions_refused_total",
    "sessiongate_sessions_revoked_by_subject_total",
    "sessiongate_observe_decisions_total",
    "sessiongate_tokio_tasks",
];
const HISTOGRAMS: &[&str] = &[
    "sessiongate_upstream_duration_seconds",
    "sessiongate_store_operation_duration_seconds",
];
const HISTOGRAM_SUFFIXES: &[&str] = &["_bucket", "_sum", "_count"];

/// The family a series name belongs to (a histogram's base name), if it is exported.
fn family_of(series: &str) -> Option<&'static str> {
    if let Some(name) = COUNTERS_AND_GAUGES.iter().find(|n| **n == series) {
        return Some(name);
    }
    HISTOGRAMS.iter().copied().find(|h| {
        series
            .strip_prefix(h)
            .is_some_and(|s| HISTOGRAM_SUFFIXES.contains(&s))
    })
}

#[test]
fn the_metric_list_matches_what_the_code_exports() {
    use sessiongate::telemetry::{Metrics, OpLabel, OutcomeLabel, RouteLabel};
    // `# TYPE` lines name every registered metric; a labelled family only once it has a
    // label set, so each one gets a sample first. (A new family nobody touches here is
    // not seen: add it to the list and to this block.)
    let m = Metrics::new();
    m.count_request("r", 200);
    let route = RouteLabel { route: "r".into() };
    m.upstream_seconds.get_or_create(&route).observe(0.1);
    m.store_seconds
        .get_or_create(&OpLabel {
            op: sessiongate::store::StoreOp::Load,
        })
        .observe(0.1);
    m.store_errors
        .get_or_create(&OpLabel {
            op: sessiongate::store::StoreOp::Load,
        })
        .inc();
    m.reloads
        .get_or_create(&OutcomeLabel { outcome: "success" })
        .inc();
    m.rejected
        .get_or_create(&sessiongate::telemetry::ReasonLabel { reason: "r" })
        .inc();
    m.count_removed("malformed_cookie", 1);
    m.count_refused("r", "rate");
    m.observed
        .get_or_create(&sessiongate::telemetry::RouteDecision {
            route: "r".into(),
            decision: "vault_cookie",
        })
        .inc();
    let rendered = m.render();
    let mut exported = BTreeSet::new();
    for line in rendered.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').unwrap();
        exported.insert(match kind {
            "counter" => format!("{name}_total"),
            _ => name.to_owned(),
        });
    }
    let listed: BTreeSet<String> = COUNTERS_AND_GAUGES
        .iter()
        .chain(HISTOGRAMS)
        .map(|s| s.to_string())
        .collect();
    assert_eq!(
        exported, listed,
        "src/telemetry.rs and this test's metric list (and so the dashboard) drifted apart"
    );
}

#[test]
fn every_json_file_under_deploy_parses() {
    let files = deploy_files(&[".json"]);
    assert!(
        files
            .iter()
            .any(|p| p.ends_with("grafana/sessiongate-dashboard.json")),
        "{files:?}"
    );
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        if let Err(e) = serde_json::from_str::<Value>(&text) {
            panic!("{}: {e}", rel(&path));
        }
    }
}

/// Every PromQL string of the dashboard: panel targets' `expr` and template variables'
/// `query` / `definition`.
fn promql(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "definition" | "query", Value::String(s)) => out.push(s.clone()),
                    _ => promql(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| promql(i, out)),
        _ => {}
    }
}

#[test]
fn dashboard_queries_only_exported_metrics_and_shows_them_all() {
    let dash: Value =
        serde_json::from_str(&read("deploy/grafana/sessiongate-dashboard.json")).unwrap();
    assert_eq!(dash["schemaVersion"], 39);
    let vars = dash["templating"]["list"].as_array().unwrap();
    assert!(
        vars.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "a Prometheus datasource template variable named `datasource`"
    );
    let ds = serde_json::json!({"type": "prometheus", "uid": "${datasource}"});

    let mut exprs = 0;
    for panel in dash["panels"].as_array().unwrap() {
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap();
        assert_eq!(panel["datasource"], ds, "{title}: datasource");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            assert!(t["expr"].as_str().is_some_and(|e| !e.is_empty()), "{title}");
            exprs += 1;
        }
    }
    assert!(exprs >= 10, "only {exprs} queries");

    let mut queries = Vec::new();
    promql(&dash, &mut queries);
    let token = regex::Regex::new(r"sessiongate_[a-z_]+").unwrap();
    let mut used = BTreeSet::new();
    for q in &queries {
        for m in token.find_iter(q) {
            let family = family_of(m.as_str()).unwrap_or_else(|| {
                panic!(
                    "dashboard query uses `{}`, which sessiongate does not export: {q}",
                    m.as_str()
                )
            });
            used.insert(family);
        }
    }
    let all: BTreeSet<&str> = COUNTERS_AND_GAUGES
        .iter()
        .chain(HISTOGRAMS)
        .copied()
        .collect();
    let unused: Vec<_> = all.difference(&used).collect();
    assert!(unused.is_empty(), "no panel shows {unused:?}");
}

// --- Configs: `sessiongate check` ------------------------------------------------------

fn check(path: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sessiongate"))
        .args(["check", "--config"])
        .arg(path)
        .current_dir(root())
        .output()
        .unwrap()
}

fn assert_check_passes(path: &Path, what: &str) {
    let out = check(path);
    assert!(
        out.status.success(),
        "sessiongate check rejects {what}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Kubernetes manifest's documents by kind (one of each is expected).
fn k8s() -> BTreeMap<String, Value> {
    let mut by_kind = BTreeMap::new();
    for doc in load_one_yaml("deploy/kubernetes/sidecar.yaml") {
        let kind = doc["kind"].as_str().unwrap().to_owned();
        assert!(
            by_kind.insert(kind.clone(), doc).is_none(),
            "two {kind}s in sidecar.yaml"
        );
    }
    by_kind
}

/// The sessiongate config embedded in the ConfigMap.
fn configmap_config(k8s: &BTreeMap<String, Value>) -> String {
    k8s["ConfigMap"]["data"]["config.toml"]
        .as_str()
        .expect("the ConfigMap has a config.toml")
        .to_owned()
}

#[test]
fn every_toml_under_deploy_passes_check() {
    // Recursively, deploy/examples/ included: tests/config.rs checks those too, but
    // "every TOML under deploy/" is the simpler rule, and a check takes milliseconds.
    let files = deploy_files(&[".toml"]);
    assert!(
        files
            .iter()
            .any(|p| p.ends_with("compose/sessiongate.toml")),
        "{files:?}"
    );
    for path in &files {
        assert_check_passes(path, &rel(path));
    }
}

#[test]
fn the_configmap_config_passes_check() {
    let text = configmap_config(&k8s());
    let config: toml::Table = text.parse().unwrap();
    let certs = config["tls"]["certificates"].as_array().unwrap();
    assert!(!certs.is_empty());
    let dir = tempfile::tempdir().unwrap();

    // The certificate files live in the pod's TLS Secret, not here. First, as asked of
    // this check: a copy whose [[tls.certificates]] is replaced by
    // `[tls] self_signed_dev = true`, so that everything else is validated as written.
    let mut dev = config.clone();
    let tls = dev["tls"].as_table_mut().unwrap();
    tls.remove("certificates");
    tls.insert("self_signed_dev".into(), toml::Value::Boolean(true));
    let dev_path = dir.path().join("configmap-self-signed.toml");
    std::fs::write(&dev_path, toml::to_string(&dev).unwrap()).unwrap();
    assert_check_passes(&dev_path, "the ConfigMap's config.toml (self-signed copy)");

    // Then the [[tls.certificates]] entries themselves, with only their paths pointed at
    // a throw-away certificate, so that a mistake in that table is caught as well.
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (crt, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&crt, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let mut real = config.clone();
    for cert in real["tls"]["certificates"].as_array_mut().unwrap() {
        let cert = cert.as_table_mut().unwrap();
        cert.insert("cert".into(), crt.display().to_string().into());
        cert.insert("key".into(), key.display().to_string().into());
    }
    let real_path = dir.path().join("configmap-certificates.toml");
    std::fs::write(&real_path, toml::to_string(&real).unwrap()).unwrap();
    assert_check_passes(
        &real_path,
        "the ConfigMap's config.toml (with test certificates)",
    );
}

// --- The Dockerfile and the README -----------------------------------------------------

/// The exact build command the README's "Running as a sidecar" section documents.
const README_BUILD: &str = "docker build -f deploy/Dockerfile -t sessiongate .";

#[test]
fn readme_documents_the_image_build() {
    assert!(
        read("README.md").contains(README_BUILD),
        "README.md should document the image build as `{README_BUILD}`"
    );
}

struct Dockerfile {
    text: String,
    /// Instructions of the build stage (the first `FROM` up to the second).
    build_stage: Vec<String>,
    /// Instructions of the final stage.
    runtime_stage: Vec<String>,
}

fn dockerfile() -> Dockerfile {
    let text = read("deploy/Dockerfile");
    // Join continuation lines; drop comments and blank lines.
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && current.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(t);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    let froms: Vec<usize> = (0..instructions.len())
        .filter(|&i| instructions[i].starts_with("FROM "))
        .collect();
    assert!(froms.len() >= 2, "a multi-stage build: {froms:?}");
    Dockerfile {
        build_stage: instructions[froms[0]..froms[1]].to_vec(),
        runtime_stage: instructions[froms[froms.len() - 1]..].to_vec(),
        text,
    }
}

fn instruction<'a>(stage: &'a [String], keyword: &str) -> Vec<&'a str> {
    stage
        .iter()
        .filter_map(|i| i.strip_prefix(keyword))
        .filter_map(|rest| rest.strip_prefix(' '))
        .map(str::trim)
        .collect()
}

/// The image's `USER` uid.
fn image_uid(df: &Dockerfile) -> u64 {
    let user = instruction(&df.runtime_stage, "USER");
    let user = user.last().expect("the runtime stage sets USER");
    let uid: u64 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("USER {user} should be numeric (runAsNonRoot checks it)"));
    assert_ne!(uid, 0, "the image must not run as root");
    uid
}

#[test]
fn dockerfile_builds_the_release_binary_and_runs_it_as_documented() {
    let df = dockerfile();
    assert!(
        df.text.contains("cargo build --release --locked"),
        "the Dockerfile builds with `cargo build --release --locked`"
    );
    assert!(
        df.text.contains(README_BUILD),
        "the Dockerfile's header shows the README's build command"
    );

    // The binary is copied from the build stage's target/release/.
    let workdir = instruction(&df.build_stage, "WORKDIR");
    let workdir = workdir.last().expect("the build stage sets WORKDIR");
    let copied = instruction(&df.runtime_stage, "COPY")
        .into_iter()
        .find(|c| c.starts_with("--from="))
        .expect("the runtime stage copies the binary from the build stage");
    let src = copied.split_whitespace().nth(1).unwrap();
    assert_eq!(
        src,
        format!(
            "{}/target/release/sessiongate",
            workdir.trim_end_matches('/')
        ),
        "{copied}"
    );
    assert!(copied.ends_with("/usr/local/bin/sessiongate"), "{copied}");

    // Everything Cargo.toml needs to load is copied into the build stage.
    let mut sources = BTreeSet::new();
    for c in instruction(&df.build_stage, "COPY") {
        let words: Vec<&str> = c.split_whitespace().collect();
        for s in &words[..words.len() - 1] {
            sources.insert(s.trim_start_matches("./").trim_end_matches('/').to_owned());
        }
    }
    let manifest: toml::Table = read("Cargo.toml").parse().unwrap();
    let mut needed: BTreeSet<String> = ["Cargo.toml", "Cargo.lock"].map(String::from).into();
    if root().join("build.rs").exists() {
        needed.insert("build.rs".into());
    }
    for (section, default_dir) in [
        ("lib", "src"),
        ("bin", "src"),
        ("example", "examples"),
        ("bench", "benches"),
    ] {
        let targets = match manifest.get(section) {
            Some(toml::Value::Array(a)) => a.clone(),
            Some(t @ toml::Value::Table(_)) => vec![t.clone()],
            _ => vec![],
        };
        for t in targets {
            let path = t
                .get("path")
                .and_then(|p| p.as_str())
                .unwrap_or(default_dir);
            needed.insert(path.split('/').next().unwrap().to_owned());
        }
    }
    let missing: Vec<_> = needed.difference(&sources).collect();
    assert!(
        missing.is_empty(),
        "the build stage does not COPY {missing:?} (copied: {sources:?})"
    );

    assert_eq!(
        instruction(&df.runtime_stage, "ENTRYPOINT"),
        [r#"["sessiongate"]"#]
    );
    assert_eq!(
        instruction(&df.runtime_stage, "CMD"),
        [r#"["--config", "/etc/sessiongate/config.toml", "--log-format", "json"]"#]
    );
    let exposed: BTreeSet<&str> = instruction(&df.runtime_stage, "EXPOSE")
        .iter()
        .flat_map(|e| e.split_whitespace())
        .collect();
    assert_eq!(exposed, BTreeSet::from(["8443", "9090"]));
    image_uid(&df);
}

// --- Kubernetes ------------------------------------------------------------------------

fn port_of(addr: &str) -> u64 {
    addr.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// "20s" -> 20. The deploy configs write whole seconds.
fn seconds(d: &str) -> u64 {
    d.strip_suffix('s')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("write {d:?} as whole seconds, e.g. \"20s\""))
}

fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// A probe's or Service's port (a number or a container port name) as a number.
fn resolve_port(port: &Value, container: &Value) -> u64 {
    if let Some(n) = port.as_u64() {
        return n;
    }
    let name = port.as_str().unwrap();
    container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no container port named {name}"))["containerPort"]
        .as_u64()
        .unwrap()
}

#[test]
fn kubernetes_sidecar_agrees_with_its_config() {
    let k8s = k8s();
    for kind in [
        "ConfigMap",
        "ServiceAccount",
        "Deployment",
        "Service",
        "NetworkPolicy",
    ] {
        assert!(k8s.contains_key(kind), "sidecar.yaml has no {kind}");
    }
    let config: toml::Table = configmap_config(&k8s).parse().unwrap();
    let listen = config["server"]["listen"].as_str().unwrap();
    let admin = config["admin"]["listen"].as_str().unwrap();
    assert!(
        !admin.starts_with("127.") && !admin.starts_with("[::1]"),
        "the kubelet probes the pod IP: admin.listen = {admin} is unreachable for it"
    );
    let (https_port, admin_port) = (port_of(listen), port_of(admin));

    let pod = &k8s["Deployment"]["spec"]["template"]["spec"];
    let sg = container(pod, "sessiongate");

    // Probes: /healthz and /readyz on the admin port.
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &sg[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(resolve_port(&get["port"], sg), admin_port, "{probe} port");
    }
    let store_timeout = config
        .get("session")
        .and_then(|s| s.get("store_timeout"))
        .and_then(|t| t.as_str())
        .map_or(2, seconds); // the default
    assert!(
        sg["readinessProbe"]["timeoutSeconds"].as_u64().unwrap() > store_timeout,
        "/readyz may take session.store_timeout: the probe's timeout must be longer"
    );
    assert_eq!(resolve_port(&Value::from("https"), sg), https_port);

    // Drain: the pod's grace period outlasts shutdown_grace.
    let grace = seconds(config["server"]["shutdown_grace"].as_str().unwrap());
    let pod_grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        pod_grace > grace,
        "terminationGracePeriodSeconds {pod_grace} <= shutdown_grace {grace}s"
    );

    // The Service: 443 -> the TLS listener, nothing else (never the admin port).
    let ports = k8s["Service"]["spec"]["ports"].as_array().unwrap();
    assert_eq!(ports.len(), 1, "the Service exposes only 443: {ports:?}");
    assert_eq!(ports[0]["port"], 443);
    assert_eq!(resolve_port(&ports[0]["targetPort"], sg), https_port);
    assert_eq!(
        k8s["Service"]["spec"]["selector"],
        k8s["Deployment"]["spec"]["selector"]["matchLabels"]
    );

    // Mounts: the --config path and the certificate paths are where the projected
    // volume puts the ConfigMap's config.toml and the TLS Secret's keys.
    let args: Vec<&str> = sg["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let config_path = args[args.iter().position(|a| *a == "--config").unwrap() + 1];
    let df = dockerfile();
    assert!(
        instruction(&df.runtime_stage, "CMD")[0].contains(config_path),
        "the args spell out the image's CMD"
    );
    let mount = &sg["volumeMounts"].as_array().unwrap()[0];
    let mount_path = mount["mountPath"].as_str().unwrap();
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    let mut files = BTreeMap::new(); // path in the container -> (source name, key)
    for source in volume["projected"]["sources"].as_array().unwrap() {
        for (kind, body) in source.as_object().unwrap() {
            for item in body["items"].as_array().unwrap() {
                files.insert(
                    format!("{mount_path}/{}", item["path"].as_str().unwrap()),
                    (
                        kind.clone(),
                        body["name"].as_str().unwrap().to_owned(),
                        item["key"].as_str().unwrap().to_owned(),
                    ),
                );
            }
        }
    }
    let configmap_name = k8s["ConfigMap"]["metadata"]["name"].as_str().unwrap();
    assert_eq!(
        files.get(config_path),
        Some(&(
            "configMap".into(),
            configmap_name.into(),
            "config.toml".into()
        )),
        "--config {config_path} is not the ConfigMap's config.toml: {files:?}"
    );
    for cert in config["tls"]["certificates"].as_array().unwrap() {
        for (field, key) in [("cert", "tls.crt"), ("key", "tls.key")] {
            let path = cert[field].as_str().unwrap();
            assert_eq!(
                files.get(path),
                Some(&("secret".into(), "sessiongate-tls".into(), key.into())),
                "tls.certificates {field} = {path} is not mounted from the TLS Secret"
            );
        }
    }

    // Hardening, and the image's uid.
    let sc = &sg["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(sc["runAsUser"].as_u64(), Some(image_uid(&df)));
    for kind in ["requests", "limits"] {
        assert!(
            sg["resources"][kind]["memory"].is_string(),
            "resources.{kind}"
        );
    }

    // Workload Identity.
    let sa = &k8s["ServiceAccount"];
    assert_eq!(pod["serviceAccountName"], sa["metadata"]["name"]);
    assert!(
        sa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"]
            .as_str()
            .unwrap()
            .ends_with(".iam.gserviceaccount.com")
    );
    assert_eq!(config["store"]["kind"].as_str(), Some("firestore"));

    // The app: reached on localhost only, and not a declared port anyone could target.
    let app = container(pod, "app");
    let app_text = format!("{} {}", app["args"], app["env"]);
    for route in config["routes"].as_array().unwrap() {
        let upstream = route["upstream"].as_str().unwrap();
        let hostport = upstream
            .strip_prefix("http://127.0.0.1:")
            .unwrap_or_else(|| {
                panic!("upstream {upstream}: the app in the same pod, on 127.0.0.1")
            });
        assert!(
            app_text.contains(&format!("127.0.0.1:{hostport}")),
            "the app container should show it listens on 127.0.0.1:{hostport}"
        );
    }
    assert!(app.get("ports").is_none(), "the app declares no ports");
}

// --- The compose demo ------------------------------------------------------------------

#[test]
fn compose_demo_is_wired_consistently() {
    let dir = root().join("deploy/compose");
    let compose = load_one_yaml("deploy/compose/docker-compose.yml")
        .pop()
        .unwrap();
    let services = &compose["services"];
    let config: toml::Table = read("deploy/compose/sessiongate.toml").parse().unwrap();
    let sg = &services["sessiongate"];

    // Built from deploy/Dockerfile with the repository root as context.
    let context = dir.join(sg["build"]["context"].as_str().unwrap());
    assert_eq!(
        context.canonicalize().unwrap(),
        root().canonicalize().unwrap()
    );
    assert!(context
        .join(sg["build"]["dockerfile"].as_str().unwrap())
        .is_file());

    // The emulator address comes from the environment, and matches the emulator.
    let emulator = sg["environment"]["FIRESTORE_EMULATOR_HOST"]
        .as_str()
        .unwrap();
    let (host, port) = emulator.split_once(':').unwrap();
    let fs_command = services[host]["command"].to_string();
    assert!(
        fs_command.contains(&format!("--host-port=0.0.0.0:{port}")),
        "{fs_command}"
    );
    assert_eq!(config["store"]["kind"].as_str(), Some("firestore"));
    assert_eq!(
        config["tls"]["self_signed_dev"].as_bool(),
        Some(true),
        "demo TLS"
    );

    // The config mount and the published ports.
    let mount = sg["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["target"] == "/etc/sessiongate/config.toml")
        .expect("the config is mounted at /etc/sessiongate/config.toml");
    assert_eq!(
        dir.join(mount["source"].as_str().unwrap())
            .canonicalize()
            .unwrap(),
        dir.join("sessiongate.toml").canonicalize().unwrap()
    );
    let https = port_of(config["server"]["listen"].as_str().unwrap());
    let admin = port_of(config["admin"]["listen"].as_str().unwrap());
    let published: Vec<&str> = sg["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(
        published,
        [
            format!("{https}:{https}"),
            format!("127.0.0.1:{admin}:{admin}")
        ],
        "https published, admin on the host's loopback only"
    );
    let grace = seconds(config["server"]["shutdown_grace"].as_str().unwrap());
    assert!(seconds(sg["stop_grace_period"].as_str().unwrap()) > grace);

    // The app: the e2e PHP app, on the port sessiongate's route points at.
    let app = &services["app"];
    let upstream = config["routes"][0]["upstream"].as_str().unwrap();
    let (app_host, app_port) = upstream
        .strip_prefix("http://")
        .unwrap()
        .split_once(':')
        .unwrap();
    assert!(services.get(app_host).is_some(), "no service {app_host}");
    assert!(
        app["command"]
            .to_string()
            .contains(&format!("\"0.0.0.0:{app_port}\"")),
        "the app should listen on port {app_port} of its container: {}",
        app["command"]
    );
    assert!(app.get("ports").is_none(), "the app is not published");
    let source = dir.join(app["volumes"][0]["source"].as_str().unwrap());
    assert!(source.join("index.php").is_file(), "{}", source.display());
    assert_eq!(app["volumes"][0]["read_only"], true);
}
