//! `policy advise` on realistic inputs: the example shop repository with its flow logs, and a
//! running cluster's snapshot (`fixtures/advise/cluster.yaml`) with the two cases generators
//! get wrong (CoreDNS labelled only `k8s-app=kube-dns`; a host-network peer), a Service in
//! front of a named target port, controller labels, a finished Job and external networks.
//! The advice is checked three ways: its YAML read back, its own `--verify`, and, independently,
//! `policy eval` of every workload pair and port against the advised set alone. When the
//! Kubernetes test binaries are installed, a real kube-apiserver accepts the YAML (server-side
//! dry run).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn shop(part: &str) -> PathBuf {
    root().join("deploy/examples/shop").join(part)
}

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/advise/cluster.yaml")
}

fn flowwatch() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flowwatch"))
}

fn advise(snapshot: &Path, flows: &[PathBuf], args: &[&str]) -> Output {
    let mut cmd = flowwatch();
    cmd.args(["policy", "advise", "--snapshot"]).arg(snapshot);
    for f in flows {
        cmd.arg("--flows").arg(f);
    }
    cmd.args(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The documents of a YAML stream, as JSON values.
fn documents(yaml: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn policy<'a>(docs: &'a [Value], ns: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["metadata"]["namespace"] == ns && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no policy {ns}/{name} in {docs:#?}"))
}

fn shop_flows() -> Vec<PathBuf> {
    vec![shop("flows/node-a.jsonl"), shop("flows/node-b.jsonl")]
}

#[test]
fn the_shop_gets_one_policy_per_workload_allowing_what_it_did_and_verify_proves_it() {
    let out = advise(&shop("repo"), &shop_flows(), &["--verify"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("verify history: 6 observed edges replayed: 6 allowed, 0 would_break"),
        "{stderr}"
    );
    assert!(
        stderr.contains("0 unobserved pair-port ranges allowed"),
        "{stderr}"
    );
    assert!(stderr.contains("verify: passed"), "{stderr}");
    // web -> redis failed (today's policies deny it): not allowed.
    assert!(
        stderr.contains("1 observed edges not allowed: never established"),
        "{stderr}"
    );
    assert!(
        stderr.contains("shop/deployment/web -> shop/deployment/redis 6379/TCP"),
        "{stderr}"
    );

    let yaml = text(&out.stdout);
    let docs = documents(&yaml);
    let names: Vec<String> = docs
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["metadata"]["namespace"].as_str().unwrap(),
                d["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            "data/advised-default-deny",
            "data/advised-statefulset-postgres",
            "kube-system/advised-default-deny",
            "kube-system/advised-deployment-coredns",
            "ops/advised-default-deny",
            "ops/advised-cronjob-backup",
            "shop/advised-default-deny",
            "shop/advised-deployment-api",
            "shop/advised-deployment-redis",
            "shop/advised-deployment-web",
        ]
    );
    let postgres = policy(&docs, "data", "advised-statefulset-postgres");
    assert_eq!(
        postgres["spec"]["podSelector"],
        json!({"matchLabels": {"app": "postgres"}})
    );
    assert_eq!(postgres["spec"]["policyTypes"], json!(["Ingress"]));
    // api (shop) and backup (ops) both on 5432: one rule, each by its namespace's name.
    assert_eq!(
        postgres["spec"]["ingress"],
        json!([{"from": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ops"}},
             "podSelector": {"matchLabels": {"app": "backup"}}},
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "shop"}},
             "podSelector": {"matchLabels": {"app": "api"}}}],
          "ports": [{"protocol": "TCP", "port": 5432}]}])
    );
    let api = policy(&docs, "shop", "advised-deployment-api");
    assert_eq!(api["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    let egress = api["spec"]["egress"].as_array().unwrap();
    assert!(
        egress.contains(&json!({"to": [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
         "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
        "ports": [{"protocol": "TCP", "port": 53}, {"protocol": "UDP", "port": 53}]})),
        "{egress:#?}"
    );
    let web = policy(&docs, "shop", "advised-deployment-web");
    assert_eq!(
        web["spec"]["ingress"],
        json!([{"from": [{"ipBlock": {"cidr": "203.0.113.9/32"}}], "ports": [{"protocol": "TCP", "port": 8080}]}])
    );
    // A comment per rule names the edges it covers.
    assert!(
        yaml.contains(
            "  # shop/deployment/api -> data/statefulset/postgres 5432/TCP: 1 connection\n"
        ),
        "{yaml}"
    );
    assert!(yaml.contains("DNS, as UDP was seen"), "{yaml}");
    // Deterministic: the same input, the same bytes.
    let again = advise(&shop("repo"), &shop_flows(), &[]);
    assert_eq!(again.stdout, out.stdout);
}

#[test]
fn out_writes_the_same_documents_per_namespace_or_per_policy() {
    let dir = tempfile::tempdir().unwrap();
    let stdout = advise(&shop("repo"), &shop_flows(), &[]).stdout;
    let by_ns = dir.path().join("ns");
    let out = advise(
        &shop("repo"),
        &shop_flows(),
        &["--out", by_ns.to_str().unwrap(), "--verify"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        out.stdout.is_empty() || text(&out.stdout).contains("verify: passed"),
        "verify goes to stdout with --out"
    );
    assert!(text(&out.stdout).contains("verify: passed"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&by_ns)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let names: Vec<&str> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["data.yaml", "kube-system.yaml", "ops.yaml", "shop.yaml"]
    );
    let joined: Vec<u8> = files
        .iter()
        .flat_map(|f| std::fs::read(f).unwrap())
        .collect();
    assert_eq!(text(&joined), text(&stdout));

    let by_policy = dir.path().join("policies");
    let out = advise(
        &shop("repo"),
        &shop_flows(),
        &["--out", by_policy.to_str().unwrap(), "--split", "workload"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let web = std::fs::read_to_string(by_policy.join("shop/advised-deployment-web.yaml")).unwrap();
    assert_eq!(documents(&web).len(), 1);
    assert!(by_policy.join("shop/advised-default-deny.yaml").is_file());
}

/// Flow records of the cafe cluster (fixtures/advise/cluster.yaml), in the agent's format.
fn cafe_flows(dir: &Path) -> PathBuf {
    let pod =
        |ip: &str, port: u16, ns: &str, name: &str, kind: &str, workload: &str, node: &str| {
            json!({"ip": ip, "port": port, "kind": "pod", "namespace": ns, "name": name,
               "workload_kind": kind, "workload_name": workload, "node": node})
        };
    let record = |protocol: &str, src: &Value, dst: &Value, outcome: &str, node: &str| {
        json!({"start": "2026-12-01T10:00:00.000Z", "end": "2026-12-01T10:00:00.050Z",
               "protocol": protocol, "src": src, "dst": dst, "outcome": outcome,
               "end_reason": "closed", "observed_at": ["client"],
               "fwd": {"packets": 5, "bytes": 400}, "rev": {"packets": 4, "bytes": 300},
               "node": node})
        .to_string()
    };
    let frontend_1 = pod(
        "10.244.0.10",
        41000,
        "cafe",
        "frontend-5f6b7c8d9-x1x1x",
        "Deployment",
        "frontend",
        "node-1",
    );
    let frontend_2 = pod(
        "10.244.1.10",
        41001,
        "cafe",
        "frontend-5f6b7c8d9-y2y2y",
        "Deployment",
        "frontend",
        "node-2",
    );
    let orders = pod(
        "10.244.1.20",
        42000,
        "cafe",
        "orders-84c9d7b6f5-q7q7q",
        "Deployment",
        "orders",
        "node-2",
    );
    let db = pod(
        "10.244.0.30",
        5432,
        "cafe",
        "db-0",
        "StatefulSet",
        "db",
        "node-1",
    );
    let migrate = pod(
        "10.244.0.40",
        43000,
        "cafe",
        "migrate-4k2xq",
        "Job",
        "migrate",
        "node-1",
    );
    let prometheus = pod(
        "10.244.1.50",
        44000,
        "monitoring",
        "prometheus-0",
        "StatefulSet",
        "prometheus",
        "node-2",
    );
    let coredns = |name: &str, ip: &str, node: &str| {
        pod(ip, 53, "kube-system", name, "Deployment", "coredns", node)
    };
    let service = |ip: &str, port: u16, ns: &str, name: &str, backend: Value| json!({"ip": ip, "port": port, "kind": "service", "namespace": ns, "name": name, "backend": backend});
    let mut frontend_as_server = frontend_1.clone();
    frontend_as_server["port"] = json!(8080);
    let mut frontend_2_as_server = frontend_2.clone();
    frontend_2_as_server["port"] = json!(8080);
    // The Service port 80; the backend listens on its named target port, grpc = 50051.
    let orders_svc = service("10.96.5.5", 80, "cafe", "orders", orders.clone());
    let dns_svc = |backend: Value| service("10.96.0.10", 53, "kube-system", "kube-dns", backend);
    let node_exporter = json!({"ip": "192.168.50.11", "port": 9100, "kind": "host_network_pod",
        "namespace": "monitoring", "name": "node-exporter-m4n5p", "workload_kind": "DaemonSet",
        "workload_name": "node-exporter", "node": "node-1"});
    let kubelet = json!({"ip": "192.168.50.12", "port": 51234, "kind": "node", "name": "node-2"});
    let external = |ip: &str| json!({"ip": ip, "port": 443, "kind": "external", "class": "public"});
    let lines = [
        record("TCP", &frontend_1, &orders_svc, "established", "node-1"),
        record("TCP", &frontend_2, &orders_svc, "established", "node-2"),
        record(
            "UDP",
            &frontend_2,
            &dns_svc(coredns("coredns-7db6d8ff4d-abcde", "10.244.0.2", "node-1")),
            "established",
            "node-2",
        ),
        record(
            "UDP",
            &orders,
            &dns_svc(coredns("coredns-7db6d8ff4d-fghij", "10.244.1.2", "node-2")),
            "established",
            "node-2",
        ),
        record("TCP", &orders, &db, "established", "node-2"),
        record("TCP", &migrate, &db, "established", "node-1"),
        record(
            "TCP",
            &prometheus,
            &frontend_as_server,
            "established",
            "node-2",
        ),
        record("TCP", &prometheus, &node_exporter, "established", "node-2"),
        record(
            "TCP",
            &kubelet,
            &frontend_2_as_server,
            "established",
            "node-2",
        ),
        record(
            "TCP",
            &orders,
            &external("203.0.113.10"),
            "established",
            "node-2",
        ),
        record(
            "TCP",
            &orders,
            &external("203.0.113.20"),
            "established",
            "node-2",
        ),
        // An attempt that never succeeded: not allowed.
        record("TCP", &frontend_1, &db, "failed", "node-1"),
    ];
    let path = dir.join("flows.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

#[test]
fn a_running_cluster_gets_stable_labels_real_dns_labels_target_ports_and_ip_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let flows = vec![cafe_flows(dir.path())];
    let out = advise(&fixture(), &flows, &["--external-prefix", "24", "--verify"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("verify: passed"), "{stderr}");
    assert!(stderr.contains("0 would_break"), "{stderr}");
    let yaml = text(&out.stdout);
    for unstable in [
        "pod-template-hash",
        "controller-revision-hash",
        "pod-template-generation",
        "job-name",
        "controller-uid",
        "batch.kubernetes.io",
        "statefulset.kubernetes.io/pod-name",
        "pod-index",
    ] {
        assert!(!yaml.contains(unstable), "{unstable} in\n{yaml}");
    }
    let docs = documents(&yaml);
    // CoreDNS by the only label it has, over UDP and TCP, from the pods that asked it.
    let frontend = policy(&docs, "cafe", "advised-deployment-frontend");
    let dns = json!({"to": [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
         "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
        "ports": [{"protocol": "TCP", "port": 53}, {"protocol": "UDP", "port": 53}]});
    let egress = frontend["spec"]["egress"].as_array().unwrap();
    assert!(egress.contains(&dns), "{egress:#?}");
    // The Service's port 80 is the backend's grpc port, 50051, where policies see it.
    assert!(
        egress.contains(
            &json!({"to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "orders"}}}],
        "ports": [{"protocol": "TCP", "port": 50051}]})
        ),
        "{egress:#?}"
    );
    assert!(!yaml.contains("port: 80\n"), "{yaml}");
    // The kubelet's node and Prometheus, both on 8080: one rule.
    assert_eq!(
        frontend["spec"]["ingress"],
        json!([{"from": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
             "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}},
            {"ipBlock": {"cidr": "192.168.50.12/32"}}],
          "ports": [{"protocol": "TCP", "port": 8080}]}])
    );
    // The host-network node-exporter: its node's address, exactly.
    let prometheus = policy(&docs, "monitoring", "advised-statefulset-prometheus");
    assert!(prometheus["spec"]["egress"].as_array().unwrap().contains(&json!({
        "to": [{"ipBlock": {"cidr": "192.168.50.11/32"}}], "ports": [{"protocol": "TCP", "port": 9100}]})));
    assert!(
        yaml.contains("192.168.50.11 (node node-1: monitoring/node-exporter-m4n5p)"),
        "{yaml}"
    );
    // External addresses as their /24.
    let orders = policy(&docs, "cafe", "advised-deployment-orders");
    assert!(orders["spec"]["egress"].as_array().unwrap().contains(&json!({
        "to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}], "ports": [{"protocol": "TCP", "port": 443}]})));
    // The finished Job by its author's label, not its run's.
    let migrate = policy(&docs, "cafe", "advised-job-migrate");
    assert_eq!(
        migrate["spec"]["podSelector"],
        json!({"matchLabels": {"app.kubernetes.io/name": "migrate"}})
    );
    let db = policy(&docs, "cafe", "advised-statefulset-db");
    assert_eq!(
        db["spec"]["ingress"][0]["from"].as_array().unwrap().len(),
        2
    );
    // No policy for the host-network DaemonSet (policies do not apply to it).
    assert!(!yaml.contains("advised-daemonset-node-exporter"));
    assert!(
        stderr.contains("cafe/deployment/frontend -> cafe/statefulset/db 5432/TCP"),
        "{stderr}"
    );
}

/// The advised set alone, judged by `policy eval` (not by `--verify`'s code): every observed
/// workload pair and port allowed, every other pair and port of the list denied.
#[test]
fn eval_agrees_the_advice_allows_exactly_the_observed_edges() {
    eval_agrees(&[]);
}

/// The same of the cluster-scoped form: ClusterNetworkPolicies (tier Admin) in place of the
/// NetworkPolicies, with the ingress from 203.0.113.9 in a NetworkPolicy.
#[test]
fn eval_agrees_the_cluster_scoped_advice_allows_exactly_the_observed_edges() {
    eval_agrees(&["--cluster-scoped"]);
}

fn eval_agrees(form: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let advised = dir.path().join("advised");
    let mut args = form.to_vec();
    args.extend(["--out", advised.to_str().unwrap()]);
    let out = advise(&shop("repo"), &shop_flows(), &args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The shop's workloads and namespaces without its NetworkPolicies.
    let stripped = dir.path().join("repo");
    copy_without_policies(&shop("repo"), &stripped);

    let workloads = [
        "shop/deployment/web",
        "shop/deployment/api",
        "shop/deployment/redis",
        "data/statefulset/postgres",
        "ops/cronjob/backup",
        "kube-system/deployment/coredns",
    ];
    let observed: BTreeSet<(&str, &str, u16, &str)> = [
        ("shop/deployment/web", "shop/deployment/api", 9090, "TCP"),
        (
            "shop/deployment/api",
            "data/statefulset/postgres",
            5432,
            "TCP",
        ),
        ("shop/deployment/api", "shop/deployment/redis", 6379, "TCP"),
        (
            "shop/deployment/api",
            "kube-system/deployment/coredns",
            53,
            "UDP",
        ),
        (
            "shop/deployment/api",
            "kube-system/deployment/coredns",
            53,
            "TCP",
        ),
        (
            "ops/cronjob/backup",
            "data/statefulset/postgres",
            5432,
            "TCP",
        ),
        ("203.0.113.9", "shop/deployment/web", 8080, "TCP"),
    ]
    .into();
    let ports = [
        (53, "UDP"),
        (53, "TCP"),
        (5432, "TCP"),
        (6379, "TCP"),
        (9090, "TCP"),
        (8080, "TCP"),
        (80, "TCP"),
    ];
    let mut lines = Vec::new();
    let mut expected = Vec::new();
    let sources: Vec<&str> = workloads.iter().copied().chain(["203.0.113.9"]).collect();
    for src in &sources {
        // A workload with itself aside: a pod talking to itself is never blocked.
        for dst in workloads.iter().filter(|d| *d != src) {
            for (port, protocol) in ports {
                lines.push(
                    json!({"src": src, "dst": dst, "port": port, "protocol": protocol}).to_string(),
                );
                let allowed = observed.contains(&(*src, *dst, port, protocol));
                expected.push((
                    format!("{src} -> {dst} {port}/{protocol}"),
                    if allowed { "allowed" } else { "denied" },
                ));
            }
        }
    }
    let input = dir.path().join("pairs.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let out = flowwatch()
        .args(["policy", "eval", "-o", "json", "--snapshot"])
        .arg(&stripped)
        .arg("--snapshot")
        .arg(&advised)
        .arg("--flows")
        .arg(&input)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let answers: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(answers.len(), expected.len());
    let wrong: Vec<String> = answers
        .iter()
        .zip(&expected)
        .filter(|(a, (_, verdict))| a["verdict"] != *verdict)
        .map(|(a, (what, verdict))| format!("{what}: expected {verdict}, got {a}"))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} disagreements:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert!(expected.iter().filter(|(_, v)| *v == "allowed").count() == observed.len());
}

/// Copies a folder of manifests, leaving out the NetworkPolicy documents.
fn copy_without_policies(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_without_policies(&entry.path(), &target);
            continue;
        }
        let yaml = std::fs::read_to_string(entry.path()).unwrap();
        let kept: Vec<String> = documents(&yaml)
            .into_iter()
            .filter(|d| d["kind"] != "NetworkPolicy")
            .map(|d| serde_yaml::to_string(&d).unwrap())
            .collect();
        if !kept.is_empty() {
            std::fs::write(&target, kept.join("---\n")).unwrap();
        }
    }
}

/// Two workloads no stable label tells apart: a rule for one admits the other, and `--verify`
/// says so and fails.
#[test]
fn verify_fails_when_labels_cannot_tell_workloads_apart() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let deployment = |name: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{namespace: lab, name: {name}}}\n\
             spec:\n  selector: {{matchLabels: {{app: twin}}}}\n  template:\n    metadata: {{labels: {{app: twin}}}}\n    \
             spec: {{containers: [{{name: c, ports: [{{containerPort: 8080}}]}}]}}\n"
        )
    };
    std::fs::write(
        repo.join("lab.yaml"),
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: lab}}\n---\n{}---\n{}---\n{}",
            deployment("client"),
            deployment("server"),
            deployment("bystander")
        ),
    )
    .unwrap();
    let pod = |name: &str, port: u16| {
        json!({"ip": "10.9.0.1", "port": port, "kind": "pod", "namespace": "lab", "name": format!("{name}-1"),
               "workload_kind": "Deployment", "workload_name": name, "node": "n1"})
    };
    let line = json!({"start": "2026-12-01T10:00:00.000Z", "end": "2026-12-01T10:00:00.050Z",
        "protocol": "TCP", "src": pod("client", 40000), "dst": pod("server", 8080),
        "outcome": "established", "end_reason": "closed", "observed_at": ["client"],
        "fwd": {"packets": 5, "bytes": 400}, "rev": {"packets": 4, "bytes": 300}, "node": "n1"});
    let flows = dir.path().join("flows.jsonl");
    std::fs::write(&flows, format!("{line}\n")).unwrap();
    let out = advise(&repo, &[flows], &["--verify"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("verify: FAILED"), "{stderr}");
    assert!(
        stderr.contains("no stable labels tell it apart"),
        "{stderr}"
    );
    assert!(
        stderr.contains("allowed, not observed: lab/deployment/"),
        "{stderr}"
    );
    // The history itself is allowed: the failure is the matrix's.
    assert!(
        stderr.contains("1 observed edges replayed: 1 allowed, 0 would_break"),
        "{stderr}"
    );
    // The cluster-scoped form selects by the same labels: the same failure.
    let flows = dir.path().join("flows.jsonl");
    let out = advise(&repo, &[flows], &["--verify", "--cluster-scoped"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("verify: FAILED"), "{stderr}");
    assert!(
        stderr.contains("allowed, not observed: lab/deployment/"),
        "{stderr}"
    );
}

/// `--cluster-scoped`: ClusterNetworkPolicies (tier Admin), one per workload and a deny per
/// namespace, proved by `--verify` as the namespaced form is, on the shop and on the running
/// cluster (kube-dns labels, a host-network peer, external networks); ingress from addresses,
/// which v1alpha2 cannot name, stays a NetworkPolicy.
#[test]
fn the_cluster_scoped_form_is_verified_the_same_way() {
    let out = advise(
        &shop("repo"),
        &shop_flows(),
        &["--cluster-scoped", "--verify"],
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("verify history: 6 observed edges replayed: 6 allowed, 0 would_break"),
        "{stderr}"
    );
    assert!(
        stderr.contains("25 of 25 unobserved pairs denied, 0 unobserved pair-port ranges allowed"),
        "{stderr}"
    );
    assert!(stderr.contains("verify: passed"), "{stderr}");
    let yaml = text(&out.stdout);
    let again = advise(&shop("repo"), &shop_flows(), &["--cluster-scoped"]);
    assert_eq!(text(&again.stdout), yaml, "deterministic");
    let docs = documents(&yaml);
    let kinds: Vec<String> = docs
        .iter()
        .map(|d| {
            format!(
                "{} {}",
                d["kind"].as_str().unwrap(),
                d["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "ClusterNetworkPolicy advised-data-default-deny",
            "NetworkPolicy advised-default-deny",
            "ClusterNetworkPolicy advised-data-statefulset-postgres",
            "ClusterNetworkPolicy advised-kube-system-default-deny",
            "NetworkPolicy advised-default-deny",
            "ClusterNetworkPolicy advised-kube-system-deployment-coredns",
            "ClusterNetworkPolicy advised-ops-default-deny",
            "NetworkPolicy advised-default-deny",
            "ClusterNetworkPolicy advised-ops-cronjob-backup",
            "ClusterNetworkPolicy advised-shop-default-deny",
            "NetworkPolicy advised-default-deny",
            "ClusterNetworkPolicy advised-shop-deployment-api",
            "ClusterNetworkPolicy advised-shop-deployment-redis",
            "ClusterNetworkPolicy advised-shop-deployment-web",
            "NetworkPolicy advised-deployment-web",
        ]
    );
    let web = docs
        .iter()
        .find(|d| d["kind"] == "NetworkPolicy" && d["metadata"]["name"] == "advised-deployment-web")
        .unwrap();
    assert_eq!(web["metadata"]["namespace"], "shop");
    assert_eq!(
        web["spec"]["ingress"],
        json!([{"from": [{"ipBlock": {"cidr": "203.0.113.9/32"}}], "ports": [{"protocol": "TCP", "port": 8080}]}])
    );
    let api = docs
        .iter()
        .find(|d| d["metadata"]["name"] == "advised-shop-deployment-api")
        .unwrap();
    assert_eq!(api["spec"]["tier"], "Admin");
    assert_eq!(
        api["spec"]["subject"],
        json!({"pods": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "shop"}},
            "podSelector": {"matchLabels": {"app": "api"}}}})
    );
    assert!(
        api["spec"]["egress"].as_array().unwrap().contains(&json!({
            "name": "egress-0", "action": "Accept",
            "to": [{"pods": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}}],
            "protocols": [{"tcp": {"destinationPort": {"number": 53}}}, {"udp": {"destinationPort": {"number": 53}}}]
        })),
        "{:#}",
        api["spec"]["egress"]
    );

    let dir = tempfile::tempdir().unwrap();
    let flows = vec![cafe_flows(dir.path())];
    let out = advise(
        &fixture(),
        &flows,
        &["--cluster-scoped", "--verify", "--external-prefix", "24"],
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("0 would_break"), "{stderr}");
    assert!(stderr.contains("verify: passed"), "{stderr}");
    let docs = documents(&text(&out.stdout));
    // The kubelet's node reaches the frontend by address: a NetworkPolicy; Prometheus's pods
    // are accepted by the ClusterNetworkPolicy.
    let frontend_np = policy(&docs, "cafe", "advised-deployment-frontend");
    assert_eq!(
        frontend_np["spec"]["ingress"],
        json!([{"from": [{"ipBlock": {"cidr": "192.168.50.12/32"}}], "ports": [{"protocol": "TCP", "port": 8080}]}])
    );
    assert!(docs.iter().any(|d| d["kind"] == "ClusterNetworkPolicy"
        && d["metadata"]["name"] == "advised-cafe-deployment-frontend"));
}

#[test]
fn bad_input_is_named_and_never_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let out = advise(&shop("repo"), &[dir.path().join("missing.jsonl")], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("missing.jsonl"),
        "{}",
        text(&out.stderr)
    );
    let out = advise(&shop("repo"), &shop_flows(), &["--namespace", "nowhere"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("--namespace nowhere"),
        "{}",
        text(&out.stderr)
    );
    let out = advise(&shop("repo"), &shop_flows(), &["--external-prefix", "33"]);
    assert_eq!(out.status.code(), Some(1), "a usage error");
    assert!(
        text(&out.stderr).contains("--external-prefix"),
        "{}",
        text(&out.stderr)
    );
    // Only the namespaces asked for.
    let out = advise(
        &shop("repo"),
        &shop_flows(),
        &["--namespace", "data", "--verify"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let docs = documents(&text(&out.stdout));
    assert!(
        docs.iter().all(|d| d["metadata"]["namespace"] == "data"),
        "{docs:#?}"
    );
}

/// `--include-failed` also allows the attempts that never succeeded (web -> redis, denied by
/// today's policies): replayed, it is newly allowed, not broken.
#[test]
fn include_failed_allows_the_attempts_too() {
    let out = advise(
        &shop("repo"),
        &shop_flows(),
        &["--include-failed", "--verify"],
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("7 observed edges replayed: 7 allowed, 0 would_break"),
        "{stderr}"
    );
    let docs = documents(&text(&out.stdout));
    let redis = policy(&docs, "shop", "advised-deployment-redis");
    let from: Vec<&Value> = redis["spec"]["ingress"][0]["from"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    assert!(
        from.contains(&&json!({"podSelector": {"matchLabels": {"app": "web"}}})),
        "{from:?}"
    );
    assert!(text(&out.stdout).contains(
        "shop/deployment/web -> shop/deployment/redis 6379/TCP: 1 connection (0 established)"
    ));
}

/// The advised YAML is what a real kube-apiserver accepts: a server-side dry-run create of
/// every document (strict validation), in namespaces that exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_api_server_accepts_the_advised_policies() {
    use flowwatch_testkit::apiserver::ApiServer;
    use flowwatch_testkit::privileged::require;
    if !require(
        "advised policies against a kube-apiserver",
        ApiServer::available(),
    ) {
        return;
    }
    let kubectl = match flowwatch_testkit::apiserver::kubectl() {
        Ok(k) => k,
        Err(e) => {
            require("advised policies against a kube-apiserver", Err(e));
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let flows = vec![cafe_flows(dir.path())];
    let cafe = advise(&fixture(), &flows, &["--external-prefix", "24"]);
    assert!(cafe.status.success(), "{}", text(&cafe.stderr));
    let shop_out = advise(&shop("repo"), &shop_flows(), &[]);
    assert!(shop_out.status.success(), "{}", text(&shop_out.stderr));
    let api = ApiServer::start().await;
    let run = |args: &[&str], stdin: &str| -> (bool, String) {
        use std::io::Write;
        let mut child = Command::new(&kubectl)
            .arg(format!("--kubeconfig={}", api.kubeconfig_path().display()))
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (out.status.success(), text(&out.stdout) + &text(&out.stderr))
    };
    for ns in ["cafe", "monitoring", "shop", "data", "ops"] {
        let (ok, out) = run(&["create", "namespace", ns], "");
        assert!(ok, "{out}");
    }
    for (name, yaml) in [
        ("cafe", text(&cafe.stdout)),
        ("shop", text(&shop_out.stdout)),
    ] {
        let (ok, out) = run(
            &["create", "--dry-run=server", "--validate=strict", "-f", "-"],
            &yaml,
        );
        assert!(
            ok,
            "{name}: the API server rejected the advice:\n{out}\n{yaml}"
        );
        let created = out
            .lines()
            .filter(|l| l.contains("(server dry run)"))
            .count();
        assert_eq!(created, documents(&yaml).len(), "{out}");
    }
    // The cluster-scoped form, against the ClusterNetworkPolicy CRD written from the published
    // API types (tests/fixtures/crds): its schema validates every field.
    let crd = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/crds/clusternetworkpolicies.v1alpha2.yaml");
    let (ok, out) = run(&["create", "-f", crd.to_str().unwrap()], "");
    assert!(ok, "{out}");
    let (ok, out) = run(
        &[
            "wait",
            "--for=condition=established",
            "--timeout=60s",
            "crd/clusternetworkpolicies.policy.networking.k8s.io",
        ],
        "",
    );
    assert!(ok, "{out}");
    let cluster = advise(
        &fixture(),
        &flows,
        &["--external-prefix", "24", "--cluster-scoped"],
    );
    assert!(cluster.status.success(), "{}", text(&cluster.stderr));
    let yaml = text(&cluster.stdout);
    assert!(yaml.contains("kind: ClusterNetworkPolicy"));
    // Discovery of a new CRD takes a moment: retry the dry run a bounded number of times.
    let mut last = String::new();
    for _ in 0..30 {
        let (ok, out) = run(
            &["create", "--dry-run=server", "--validate=strict", "-f", "-"],
            &yaml,
        );
        if ok {
            let created = out
                .lines()
                .filter(|l| l.contains("(server dry run)"))
                .count();
            assert_eq!(created, documents(&yaml).len(), "{out}");
            last.clear();
            break;
        }
        last = out;
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert!(
        last.is_empty(),
        "the API server rejected the cluster-scoped advice:\n{last}\n{yaml}"
    );
    // The dry run validates for real: a broken policy is rejected.
    let (ok, _) = run(
        &["create", "--dry-run=server", "--validate=strict", "-f", "-"],
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x, namespace: cafe}\n\
         spec: {podSelector: {}, ingress: [{ports: [{port: 0}]}]}\n",
    );
    assert!(!ok, "an invalid port must be rejected");
}
