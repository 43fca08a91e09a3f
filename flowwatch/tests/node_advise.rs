//! `flowwatch policy advise` proven on a real Kubernetes node (`testinfra/node`: etcd,
//! kube-apiserver, containerd, kubelet, the bridge CNI, kube-proxy, and kube-router as the
//! NetworkPolicy enforcer), with the agent installed by its chart from the image built here:
//!
//! 1. An application (`flowwatch_testkit::node::app`) in three namespaces: Deployments and a StatefulSet,
//!    the cluster DNS with pods labelled only `k8s-app=kube-dns`, a host-network DaemonSet,
//!    a Service in front of a named target port. Its traffic (DNS over UDP and TCP through the
//!    `kube-dns` Service, web to api through its Service, api to the database, to and from the
//!    host-network pod) is recorded by the agent in its flow log, on the node's disk.
//! 2. The cluster's state as `kubectl get namespaces,nodes,pods,services,networkpolicies -A -o
//!    yaml` prints it, and `flowwatch policy advise --snapshot ... --flows ... --verify`: it
//!    must succeed, select the DNS pods by their real label for UDP and TCP 53, allow the
//!    Service's backend port, and name the host-network server by its node's address.
//! 3. The advised policies applied with kubectl (the API server must accept them) and enforced
//!    by kube-router; then the same traffic again, and every other connection one workload
//!    could open to another: every observed connection succeeds, every unobserved one fails.
//!
//! Needs what `tests/node.rs` needs (`cargo xtask test` provides it).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use flowwatch_testkit::node::app::{self, Probe, Target, Via, Workload};
use flowwatch_testkit::node::{chart, harness, lifecycle, matrix};
use flowwatch_testkit::privileged::require;
use flowwatch_testnode::node::NODE_IP;
use flowwatch_testnode::Node;
use serde_json::{json, Value};

/// How often each observed connection is made while recording, and again when replayed.
const ROUNDS: usize = 3;

#[test]
fn advised_policies_enforced_by_kube_router_allow_the_recorded_traffic_and_nothing_else() {
    if !require("policy advise on a real node", harness::available()) {
        return;
    }
    harness::on_a_node("flowwatch-node-advise-", None, scenario);
}

fn scenario(node: &Node, work: &Path) {
    let flows = install_the_agent_with_a_flow_log(node, work);
    // No policy exists yet: kube-router enforces nothing until the advice is applied.
    let started = Instant::now();
    node.start_kube_router().unwrap_or_else(|e| panic!("{e:#}"));
    let addresses = start_the_app(node);
    eprintln!(
        "kube-router and the application up in {:.1?}",
        started.elapsed()
    );

    // Record.
    let started = Instant::now();
    let recorded = run(node, &repeated(&app::observed()), &addresses);
    let failed: Vec<String> = recorded
        .iter()
        .filter(|(_, ok)| !*ok)
        .map(|(p, _)| p.to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "without policies every recorded connection succeeds; these did not: {failed:?}"
    );
    wait_for_the_flow_records(&flows, &addresses);
    let snapshot = work.join("cluster.yaml");
    let state = node
        .kubectl(&[
            "get",
            "namespaces,nodes,pods,services,networkpolicies",
            "-A",
            "-o",
            "yaml",
        ])
        .expect("the cluster's state");
    std::fs::write(&snapshot, state).expect("writing the snapshot");
    eprintln!(
        "recorded {} connections in {:.1?}",
        recorded.len(),
        started.elapsed()
    );

    keep(&[&flows, &snapshot]);

    // Advise.
    let started = Instant::now();
    let yaml = advise(&snapshot, &flows);
    check_the_advice(&yaml);
    eprintln!("advised in {:.1?}", started.elapsed());

    // Apply, and wait for kube-router.
    let started = Instant::now();
    let applied = node
        .apply(&yaml)
        .unwrap_or_else(|e| panic!("the API server refused the advice: {e:#}\n{yaml}"));
    eprintln!("kubectl apply:\n{}", applied.trim());
    wait_until_enforced(node, &addresses);
    eprintln!("advice enforced after {:.1?}", started.elapsed());

    // Replay, and try everything else.
    let started = Instant::now();
    let mut probes = repeated(&app::observed());
    let matrix = app::matrix();
    probes.extend(matrix.iter().map(|(p, _)| *p));
    let results = run(node, &probes, &addresses);
    eprintln!(
        "{} connections tried in {:.1?}",
        probes.len(),
        started.elapsed()
    );
    assert_replayed_and_denied(&results, &matrix);
}

/// Copies the recorded inputs to `$FLOWWATCH_NODE_ADVISE_KEEP` when set (the node's work
/// folder goes with the node), to rerun `policy advise` on them by hand.
fn keep(files: &[&Path]) {
    let Some(dir) = std::env::var_os("FLOWWATCH_NODE_ADVISE_KEEP") else {
        return;
    };
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir).expect("FLOWWATCH_NODE_ADVISE_KEEP");
    for f in files {
        let to = dir.join(f.file_name().expect("a file"));
        std::fs::copy(f, &to)
            .unwrap_or_else(|e| panic!("{} -> {}: {e}", f.display(), to.display()));
    }
    eprintln!("recorded inputs kept in {}", dir.display());
}

/// The recorded connections, each `ROUNDS` times.
fn repeated(probes: &[Probe]) -> Vec<Probe> {
    (0..ROUNDS).flat_map(|_| probes.iter().copied()).collect()
}

/// The chart with its flow log on a host path of the node (a folder of `work`, which the
/// node's mount namespace shares), flows reported two seconds after their last packet (UDP
/// has no close). Returns the flow log's path; waits for the agent to be Ready.
fn install_the_agent_with_a_flow_log(node: &Node, work: &Path) -> std::path::PathBuf {
    let dir = work.join("flows");
    std::fs::create_dir_all(&dir).expect("flow log folder");
    let values = work.join("values.yaml");
    std::fs::write(
        &values,
        format!(
            r#"agent:
  flowLog: /flows/flows.jsonl
  idleTimeoutSecs: 2
extraVolumes:
- name: flows
  hostPath: {{path: "{}", type: Directory}}
extraVolumeMounts:
- {{name: flows, mountPath: /flows}}
"#,
            dir.display()
        ),
    )
    .expect("values");
    chart::install(node, work, &["--values", &values.display().to_string()]);
    lifecycle::ready_agent(node, None);
    dir.join("flows.jsonl")
}

/// Where each target is dialled: (IP, port, protocol).
type Addresses = BTreeMap<Target, String>;

/// Starts the application, waits for it, and returns every target's address.
fn start_the_app(node: &Node) -> Addresses {
    let manifest = app::manifests(flowwatch_testnode::images::AGNHOST_IMAGE);
    // The namespaces' ServiceAccounts come from the controller-manager, asynchronously.
    let deadline = Instant::now() + Duration::from_mins(1);
    loop {
        match node.apply(&manifest) {
            Ok(_) => break,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(500)),
            Err(e) => panic!("{e:#}"),
        }
    }
    for w in app::WORKLOADS {
        let selector = selector(&w);
        node.kubectl(&[
            "wait",
            "--for=condition=Ready",
            "pod",
            "-l",
            &selector,
            "-n",
            w.ns,
            "--timeout=180s",
        ])
        .unwrap_or_else(|e| {
            panic!(
                "{w}: {e:#}\n{}",
                node.kubectl(&["describe", "pods", "-n", w.ns])
                    .unwrap_or_default()
            )
        });
    }
    let mut out = Addresses::new();
    for t in app::targets() {
        let ip = match t.via {
            Via::Pod => pod_ip(node, &t.to),
            Via::Service(i) => {
                let s = &app::SERVICES[i];
                node.kubectl(&[
                    "get",
                    "service",
                    s.name,
                    "-n",
                    s.ns,
                    "-o",
                    "jsonpath={.spec.clusterIP}",
                ])
                .expect("cluster IP")
            }
        };
        out.insert(t, ip);
    }
    assert_eq!(
        pod_ip(node, &app::NODE_AGENT),
        NODE_IP,
        "the host-network pod has its node's address"
    );
    // kube-proxy has programmed each Service once its endpoints answer through it.
    let dns = out[&app::targets()
        .into_iter()
        .find(|t| t.via == Via::Service(1) && t.protocol == "TCP")
        .expect("kube-dns TCP")]
        .clone();
    let api = out[&app::targets()
        .into_iter()
        .find(|t| t.via == Via::Service(0))
        .expect("api")]
        .clone();
    let deadline = Instant::now() + Duration::from_mins(1);
    while !(matrix::connects(node, "shop", "deployment/web", &format!("{dns}:53"))
        && matrix::connects(node, "shop", "deployment/web", &format!("{api}:80")))
    {
        assert!(
            Instant::now() < deadline,
            "kube-proxy did not program the Services within 60 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    out
}

fn selector(w: &Workload) -> String {
    w.labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn pod_ip(node: &Node, w: &Workload) -> String {
    let ip = node
        .kubectl(&[
            "get",
            "pods",
            "-n",
            w.ns,
            "-l",
            &selector(w),
            "-o",
            "jsonpath={.items[0].status.podIP}",
        ])
        .expect("pod ip");
    assert!(!ip.is_empty(), "{w} has no pod IP");
    ip
}

/// Runs the probes, each source's from its pod (one `kubectl exec` each, the sources in
/// parallel); whether each connected, in probe order.
fn run(node: &Node, probes: &[Probe], addresses: &Addresses) -> Vec<(Probe, bool)> {
    let sources: BTreeSet<Workload> = probes.iter().map(|p| p.from).collect();
    let outputs: BTreeMap<Workload, String> = std::thread::scope(|s| {
        let handles: Vec<_> = sources
            .into_iter()
            .map(|from| {
                let targets: Vec<(String, u16, &str)> = probes
                    .iter()
                    .filter(|p| p.from == from)
                    .map(|p| {
                        (
                            addresses[&p.target].clone(),
                            p.target.port,
                            p.target.protocol,
                        )
                    })
                    .collect();
                let script = matrix::probe_script(&targets);
                s.spawn(move || {
                    let out = node
                        .kubectl(&[
                            "exec",
                            "-n",
                            from.ns,
                            &app::exec_name(&from),
                            "--",
                            "/bin/sh",
                            "-c",
                            &script,
                        ])
                        .unwrap_or_else(|e| panic!("probes from {from}: {e:#}"));
                    (from, out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("probe thread"))
            .collect()
    });
    // Each source's lines, by what was dialled: (ip port protocol) -> outcomes in order.
    let mut lines: BTreeMap<(Workload, String), Vec<bool>> = BTreeMap::new();
    for (from, text) in &outputs {
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(f.len(), 4, "probes from {from}: {text}");
            lines
                .entry((*from, format!("{} {} {}", f[0], f[1], f[2])))
                .or_default()
                .push(f[3] == "ok");
        }
    }
    let mut out = Vec::new();
    for p in probes {
        let key = format!(
            "{} {} {}",
            addresses[&p.target], p.target.port, p.target.protocol
        );
        let ok = lines
            .get_mut(&(p.from, key.clone()))
            .and_then(|v| (!v.is_empty()).then(|| v.remove(0)))
            .unwrap_or_else(|| panic!("no outcome of {p} ({key}) in {outputs:?}"));
        out.push((*p, ok));
    }
    out
}

/// The flow log's records (rotated files too, though two minutes of this traffic stay far
/// below the chart's 100 MiB).
fn records(flows: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    let mut files = vec![flows.to_path_buf()];
    files.extend((1..=5).map(|i| flows.with_extension(format!("jsonl.{i}"))));
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: not a JSON record: {e}: {line}", f.display()));
            out.push(v);
        }
    }
    out
}

/// Whether a flow record is of the probe: its protocol, its destination as dialled or as
/// translated to the backend, its source the probing pod (any non-pod address for the
/// host-network pod, whose connections leave from the node).
fn record_of(r: &Value, p: &Probe, addresses: &Addresses) -> bool {
    let backend = Target {
        via: Via::Pod,
        port: p.target.target_port,
        ..p.target
    };
    let dst = (r["dst"]["ip"].as_str(), r["dst"]["port"].as_u64());
    let dialled = (
        Some(addresses[&p.target].as_str()),
        Some(u64::from(p.target.port)),
    );
    let served = (
        addresses.get(&backend).map(String::as_str),
        Some(u64::from(p.target.target_port)),
    );
    let src_ok = if p.from.host_network {
        r["src"]["kind"] != "pod"
    } else {
        r["src"]["namespace"] == p.from.ns && r["src"]["workload_name"] == p.from.name
    };
    r["protocol"] == p.target.protocol && (dst == dialled || dst == served) && src_ok
}

/// Waits (60 s at most) until the flow log holds every recorded connection.
fn wait_for_the_flow_records(flows: &Path, addresses: &Addresses) {
    let started = Instant::now();
    loop {
        let records = records(flows);
        let counts: Vec<(Probe, usize)> = app::observed()
            .into_iter()
            .map(|p| {
                (
                    p,
                    records
                        .iter()
                        .filter(|r| record_of(r, &p, addresses))
                        .count(),
                )
            })
            .collect();
        if counts.iter().all(|(_, n)| *n >= ROUNDS) {
            eprintln!(
                "flow log: {} records after {:.1?}; of the recorded edges: {}",
                records.len(),
                started.elapsed(),
                counts
                    .iter()
                    .map(|(p, n)| format!("{p}: {n}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
            return;
        }
        assert!(
            started.elapsed() < Duration::from_mins(1),
            "the flow log lacks recorded connections after 60 s: {counts:?}\n{}",
            records
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `flowwatch policy advise --verify` of the recorded traffic: must succeed; returns the YAML.
fn advise(snapshot: &Path, flows: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_flowwatch"))
        .args(["policy", "advise", "--snapshot"])
        .arg(snapshot)
        .arg("--flows")
        .arg(flows)
        .arg("--verify")
        .output()
        .expect("running flowwatch policy advise");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let yaml = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("policy advise --verify:\n{stderr}\n{yaml}");
    assert!(
        out.status.success(),
        "policy advise --verify failed ({}): {stderr}{}",
        out.status,
        snapshot_lines_named_in(&stderr, snapshot)
    );
    assert!(stderr.contains("verify: passed"), "{stderr}");
    yaml
}

/// The lines around the one an error names (`at line N`) in the snapshot, for the failure's
/// report (kubectl's output is gone with the node).
fn snapshot_lines_named_in(error: &str, snapshot: &Path) -> String {
    let Some(line) = error
        .split("at line ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<usize>().ok())
    else {
        return String::new();
    };
    let text = std::fs::read_to_string(snapshot).unwrap_or_default();
    let around: Vec<String> = text
        .lines()
        .enumerate()
        .skip(line.saturating_sub(8))
        .take(12)
        .map(|(i, l)| format!("{:>5} {l}", i + 1))
        .collect();
    format!("\nthe snapshot around line {line}:\n{}", around.join("\n"))
}

/// The documents of a YAML stream, as JSON values.
fn documents(yaml: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).expect("advised YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn policy<'a>(docs: &'a [Value], ns: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["metadata"]["namespace"] == ns && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no policy {ns}/{name} in {docs:#?}"))
}

/// The ports of the egress rules of `policy` that name a peer `is`, as `PORT/PROTOCOL`.
fn egress_ports(policy: &Value, is: impl Fn(&Value) -> bool) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for rule in policy["spec"]["egress"].as_array().into_iter().flatten() {
        if rule["to"].as_array().into_iter().flatten().any(&is) {
            for port in rule["ports"].as_array().into_iter().flatten() {
                out.insert(format!(
                    "{}/{}",
                    port["port"],
                    port["protocol"].as_str().unwrap_or("")
                ));
            }
        }
    }
    out
}

/// What the advice must say about the two cases generators get wrong, and the Service.
fn check_the_advice(yaml: &str) {
    for unstable in [
        "pod-template-hash",
        "controller-revision-hash",
        "statefulset.kubernetes.io/pod-name",
        "pod-template-generation",
    ] {
        assert!(
            !yaml.contains(unstable),
            "the advice selects by {unstable}:\n{yaml}"
        );
    }
    let docs = documents(yaml);
    let names: Vec<String> = docs
        .iter()
        .map(|d| {
            format!(
                "{}/{}/{}",
                d["kind"].as_str().unwrap_or(""),
                d["metadata"]["namespace"].as_str().unwrap_or(""),
                d["metadata"]["name"].as_str().unwrap_or("")
            )
        })
        .collect();
    eprintln!("advised: {names:?}");
    // The DNS pods by their only label.
    let dns = policy(&docs, "kube-system", "advised-deployment-coredns");
    assert_eq!(
        dns["spec"]["podSelector"],
        json!({"matchLabels": {"k8s-app": "kube-dns"}}),
        "{dns:#}"
    );
    let to_dns = |peer: &Value| {
        peer["namespaceSelector"]
            == json!({"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}})
            && peer["podSelector"] == json!({"matchLabels": {"k8s-app": "kube-dns"}})
    };
    let both: BTreeSet<String> = ["53/TCP".to_string(), "53/UDP".to_string()].into();
    for w in ["web", "api"] {
        let p = policy(&docs, "shop", &format!("advised-deployment-{w}"));
        assert_eq!(
            egress_ports(p, to_dns),
            both,
            "{w}'s DNS egress: the k8s-app=kube-dns pods on UDP and TCP 53: {p:#}"
        );
    }
    // The Service's backend port, not the Service's.
    let web = policy(&docs, "shop", "advised-deployment-web");
    let to_api = |peer: &Value| peer == &json!({"podSelector": {"matchLabels": {"app": "api"}}});
    assert_eq!(
        egress_ports(web, to_api),
        ["8080/TCP".to_string()].into(),
        "web -> api through its Service: the backend's port 8080: {web:#}"
    );
    // The host-network server by its node's address.
    let api = policy(&docs, "shop", "advised-deployment-api");
    let to_node = |peer: &Value| peer == &json!({"ipBlock": {"cidr": format!("{NODE_IP}/32")}});
    assert_eq!(
        egress_ports(api, to_node),
        ["9100/TCP".to_string()].into(),
        "api -> the host-network pod: an ipBlock of the node's address: {api:#}"
    );
}

/// kube-router programs its rules a moment after the policies exist: waits (90 s at most)
/// until worker (which the advice lets talk to nobody) can no longer reach web or the DNS, and
/// web and api reach what their policies and their peers' allow them.
fn wait_until_enforced(node: &Node, addresses: &Addresses) {
    let at = |w: Workload, port: u16| {
        let t = app::targets()
            .into_iter()
            .find(|t| t.to == w && t.via == Via::Pod && t.port == port)
            .expect("target");
        format!("{}:{port}", addresses[&t])
    };
    let started = Instant::now();
    loop {
        // One policy of each namespace in force (the checks stop at the first that is not).
        let enforced = !matrix::connects(node, "shop", "deployment/worker", &at(app::WEB, 8080))
            && !matrix::connects(node, "shop", "deployment/worker", &at(app::DNS, 53))
            && matrix::connects(node, "shop", "deployment/web", &at(app::API, 8080))
            && matrix::connects(node, "shop", "deployment/web", &at(app::DNS, 53))
            && matrix::connects(node, "shop", "deployment/api", &at(app::DB, 5432));
        if enforced {
            // Whatever of the stream kube-router has yet to program, it does in one sync.
            std::thread::sleep(Duration::from_secs(2));
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "kube-router did not enforce the advice within 90 s:\n{}",
            std::fs::read_to_string(node.log_path("kube-router")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Every replayed connection connected, every matrix probe as the advice means it.
fn assert_replayed_and_denied(results: &[(Probe, bool)], matrix: &[(Probe, bool)]) {
    let observed: BTreeSet<Probe> = app::observed().into_iter().collect();
    let replay = &results[..observed.len() * ROUNDS];
    let tried = &results[observed.len() * ROUNDS..];
    assert_eq!(tried.len(), matrix.len());
    let replay_failed: Vec<String> = replay
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(p, _)| p.to_string())
        .collect();
    let mut wrong = Vec::new();
    let (mut unobserved, mut unobserved_failed, mut intended, mut intended_ok) = (0, 0, 0, 0);
    for ((p, ok), (m, allowed)) in tried.iter().zip(matrix) {
        assert_eq!(p, m);
        if *allowed {
            intended += 1;
            intended_ok += usize::from(*ok);
        } else {
            unobserved += 1;
            unobserved_failed += usize::from(!*ok);
        }
        if ok != allowed {
            wrong.push(format!(
                "{p}: connected={ok}, the advice {}",
                if *allowed { "allows it" } else { "denies it" }
            ));
        }
    }
    eprintln!(
        "replay: {} observed connections ({} edges x {ROUNDS}), {} failed; \
         allowed pairs at any address: {intended_ok} of {intended} connected; \
         unobserved pairs and ports: {unobserved_failed} of {unobserved} failed",
        replay.len(),
        observed.len(),
        replay_failed.len()
    );
    assert!(
        replay_failed.is_empty(),
        "observed connections that fail under the advice: {replay_failed:?}"
    );
    assert!(
        wrong.is_empty(),
        "{} of {} connections not as advised:\n{}",
        wrong.len(),
        matrix.len(),
        wrong.join("\n")
    );
    assert!(unobserved > 0 && unobserved == unobserved_failed);
}
