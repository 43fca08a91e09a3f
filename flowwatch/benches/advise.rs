//! `policy advise` at scale (criterion-free; `cargo xtask bench advise`): 10,000 pods (500
//! namespaces x 5 Deployments x 4 replicas, with controller labels and ownerReferences as a
//! running cluster has them) and 1,000,000 flow-log records in the agent's format (web -> api,
//! api -> db, api -> cache, worker -> api, every pod -> DNS over UDP through the kube-dns
//! Service, a tenth to another namespace's api, a twentieth from the internet), one core.
//!
//! Prints the time of each stage (the records read into edges, the cluster view, the advice,
//! the YAML) and their sum, the figure docs/benchmarks.md records. `--flows N` changes the
//! number of records.

use std::hint::black_box;
use std::time::{Duration, Instant};

use flowwatch::advise::{self, render, AdviseOptions, ClusterView};
use flowwatch::inventory::{snapshot, sources};
use flowwatch::whatif::{Edges, ServiceTargets};

const NAMESPACES: usize = 500;
const APPS: [&str; 5] = ["web", "api", "db", "cache", "worker"];
const REPLICAS: usize = 4;
const NODES: usize = 50;

/// A deterministic xorshift generator (the same records on every run).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn pod_ip(i: usize) -> String {
    format!("10.{}.{}.{}", 1 + i / 65536, (i / 256) % 256, i % 256)
}

/// The cluster as `kubectl get -o json` prints it (a `List`), read by the real loader.
fn cluster() -> String {
    use serde_json::json;
    let mut items = vec![json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "kube-system", "labels": {"kubernetes.io/metadata.name": "kube-system"}}})];
    for n in 0..NODES {
        items.push(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": format!("node-{n}")},
            "status": {"addresses": [{"type": "InternalIP", "address": format!("192.168.0.{}", n + 1)}]}}));
    }
    for r in 0..2 {
        items.push(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": "kube-system",
            "name": format!("coredns-7db6d8ff4d-{r}"), "labels": {"k8s-app": "kube-dns", "pod-template-hash": "7db6d8ff4d"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "coredns-7db6d8ff4d",
                                 "uid": "dns", "controller": true}]},
            "spec": {"containers": [{"name": "coredns", "ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]},
            "status": {"phase": "Running", "podIP": format!("10.0.0.{}", r + 2)}}));
    }
    items.push(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "kube-system", "name": "kube-dns"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 53, "protocol": "UDP", "targetPort": "dns"}]}}));
    for ns in 0..NAMESPACES {
        let namespace = format!("ns-{ns:03}");
        items.push(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace,
            "labels": {"kubernetes.io/metadata.name": namespace}}}),
        );
        for (a, app) in APPS.iter().enumerate() {
            for r in 0..REPLICAS {
                let i = (ns * APPS.len() + a) * REPLICAS + r;
                items.push(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": namespace,
                    "name": format!("{app}-5f6b7c8d9-{r}"),
                    "labels": {"app.kubernetes.io/name": app, "app.kubernetes.io/part-of": "shop", "pod-template-hash": "5f6b7c8d9"},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{app}-5f6b7c8d9"),
                                         "uid": format!("{ns}-{a}"), "controller": true}]},
                    "spec": {"nodeName": format!("node-{}", i % NODES),
                             "containers": [{"name": "main", "ports": [{"name": "http", "containerPort": 8080}]}]},
                    "status": {"phase": "Running", "podIP": pod_ip(i)}}));
            }
        }
    }
    json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}

/// `n` flow-log records.
fn records(n: usize) -> Vec<String> {
    let mut rng = Rng(42);
    let end = |ns: usize, a: usize, r: usize, port: usize| {
        let i = (ns * APPS.len() + a) * REPLICAS + r;
        format!(
            r#"{{"ip":"{}","port":{port},"kind":"pod","namespace":"ns-{ns:03}","name":"{}-5f6b7c8d9-{r}","workload_kind":"Deployment","workload_name":"{}","node":"node-{}"}}"#,
            pod_ip(i),
            APPS[a],
            APPS[a],
            i % NODES
        )
    };
    (0..n)
        .map(|i| {
            let ns = rng.below(NAMESPACES);
            let (r1, r2) = (rng.below(REPLICAS), rng.below(REPLICAS));
            let (from, to, port) = [(0, 1, 8080), (1, 2, 5432), (1, 3, 6379), (4, 1, 8080), (0, 9, 53)][rng.below(5)];
            let dst_ns = if rng.below(10) == 0 { rng.below(NAMESPACES) } else { ns };
            let (protocol, dst) = if to == 9 {
                let backend = r#"{"kind":"pod","namespace":"kube-system","name":"coredns-7db6d8ff4d-0","workload_kind":"Deployment","workload_name":"coredns","node":"node-0"}"#;
                ("UDP", format!(r#"{{"ip":"10.96.0.10","port":53,"kind":"service","namespace":"kube-system","name":"kube-dns","backend":{backend}}}"#))
            } else {
                ("TCP", end(dst_ns, to, r2, port))
            };
            let src = if rng.below(20) == 0 {
                format!(r#"{{"ip":"203.0.{}.{}","port":40000,"kind":"external","class":"public"}}"#, rng.below(4), rng.below(256))
            } else {
                end(ns, from, r1, 30000 + i % 30000)
            };
            let outcome = if rng.below(50) == 0 { "failed" } else { "established" };
            format!(
                r#"{{"start":"2026-12-01T10:00:00.000Z","end":"2026-12-01T10:00:00.050Z","protocol":"{protocol}","src":{src},"dst":{dst},"outcome":"{outcome}","end_reason":"closed","observed_at":["client"],"fwd":{{"packets":5,"bytes":400}},"rev":{{"packets":4,"bytes":300}}}}"#
            )
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n = args
        .iter()
        .position(|a| a == "--flows")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    // `cargo bench` passes `--bench`; nothing else to parse.
    println!(
        "generating {NAMESPACES} namespaces, {} pods, {n} flow records ...",
        NAMESPACES * APPS.len() * REPLICAS + 2
    );
    let text = cluster();
    let lines = records(n);

    let mut stages: Vec<(&str, Duration)> = Vec::new();
    let t = Instant::now();
    let (mut inventory, errors) = snapshot::parse(&text, "bench").expect("the cluster parses");
    assert!(errors.is_empty(), "{errors:?}");
    sources::with_workloads_as_pods(&mut inventory);
    stages.push(("snapshot read", t.elapsed()));

    let t = Instant::now();
    let mut edges = Edges::with_targets(ServiceTargets::of(&inventory));
    for (i, line) in lines.iter().enumerate() {
        edges.add_flow_log_line(line, "bench", i as u64 + 1);
    }
    assert_eq!(edges.bad_line_count, 0, "{:?}", edges.bad_lines);
    stages.push(("records -> edges", t.elapsed()));

    let t = Instant::now();
    let view = ClusterView::of(&inventory);
    stages.push(("cluster view", t.elapsed()));

    let t = Instant::now();
    let opts = AdviseOptions {
        external_prefix_v4: 24,
        ..AdviseOptions::default()
    };
    let advice = advise::advise(&view, &edges.edges, &opts);
    stages.push(("advice", t.elapsed()));

    let t = Instant::now();
    let docs = render::documents(&advice);
    let yaml = render::stream(&docs);
    stages.push(("YAML", t.elapsed()));
    black_box(&yaml);

    let total: Duration = stages.iter().map(|(_, d)| *d).sum();
    for (stage, d) in &stages {
        println!("{stage:>18}: {:>8.3} s", d.as_secs_f64());
    }
    println!(
        "{:>18}: {:>8.3} s for {n} records, {} edges, {} policies ({} bytes of YAML)",
        "total",
        total.as_secs_f64(),
        edges.edges.len(),
        docs.len(),
        yaml.len()
    );
}
