//! Kubernetes enrichment at scale, against a real kube-apiserver: the agent's memory (RSS) with
//! 10,000 pods, 500 namespaces, 2,000 NetworkPolicies and 2,000 Services (with their
//! EndpointSlices, 1,000 ReplicaSets and 50 nodes) and its time from start to ready (caches
//! synced, enrichment index and policy engine built). Targets: under 100 MB, under 5 s.
//!
//! `cargo bench -p flowwatch --bench enrich` (needs `cargo xtask k8s-bins`). Scale with
//! `FLOWWATCH_BENCH_NAMESPACES` (pods, services and policies scale with it: 20, 4 and 4 per
//! namespace).
//!
//! The measured process is a child of this one (this binary re-executed with
//! `FLOWWATCH_BENCH_CHILD=<kubeconfig>`) that does what the agent does with the cluster and
//! nothing else, so its RSS is the kube side of the agent alone: it starts the watchers,
//! waits for sync, builds the `ClusterIndex` and over it the `EndpointIndex` and the
//! `PolicyEngine`, then reports its `VmRSS`/`VmHWM`. It runs once against the empty cluster
//! (the baseline) and once loaded.

use std::process::Command;
use std::time::{Duration, Instant};

use flowwatch::enrich::{EndpointIndex, EnrichOptions};
use flowwatch::inventory::index::ClusterIndex;
use flowwatch::k8s::{ClusterWatch, WatchOptions};
use flowwatch::policy::{PolicyEngine, PolicyOptions};
#[allow(dead_code)]
use flowwatch_testkit::apiserver;
use futures::{stream, StreamExt};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const PODS_PER_NS: usize = 20;
const SERVICES_PER_NS: usize = 4;
const POLICIES_PER_NS: usize = 4;
const NODES: usize = 50;
const CONCURRENCY: usize = 48;

fn main() {
    if let Ok(kubeconfig) = std::env::var("FLOWWATCH_BENCH_CHILD") {
        child(&kubeconfig);
        return;
    }
    if let Err(why) = apiserver::ApiServer::available() {
        eprintln!("SKIP enrich bench: {why}");
        return;
    }
    let namespaces: usize = std::env::var("FLOWWATCH_BENCH_NAMESPACES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(parent(namespaces));
}

async fn parent(namespaces: usize) {
    let api = apiserver::ApiServer::start().await;
    let admin = api.admin_client().await;
    let kubeconfig = api.kubeconfig_path().to_path_buf();

    let empty = run_child(&kubeconfig, &[]);
    println!("empty cluster: {empty}");

    let t = Instant::now();
    load(&admin, namespaces).await;
    println!(
        "loaded {} namespaces, {} pods, {} services (+ slices), {} policies, {} replicasets, {NODES} nodes in {:.1?}",
        namespaces,
        namespaces * PODS_PER_NS,
        namespaces * SERVICES_PER_NS,
        namespaces * POLICIES_PER_NS,
        namespaces * 2,
        t.elapsed()
    );
    // FLOWWATCH_BENCH_RUNS: how many runs of each measurement (default 3).
    let runs: usize = std::env::var("FLOWWATCH_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    for run in 1..=runs {
        let loaded = run_child(&kubeconfig, &[]);
        println!("loaded cluster, run {run}: {loaded}");
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("real agent: not measured (loading eBPF programs needs root)");
        return;
    }
    println!(
        "real agent without --kube: {}",
        run_agent(&kubeconfig, false)
    );
    for run in 1..=runs {
        println!(
            "real agent, loaded cluster, run {run}: {}",
            run_agent(&kubeconfig, true)
        );
    }
}

/// The real agent binary (`flowwatch run --kube=true`, eBPF programs loaded, HTTP server, flow
/// pipeline) against the cluster: its time from start to `/readyz` 200 (programs attached,
/// caches synced, index and policy engine built) and its RSS 6 s later. Without `kube`, the
/// same agent with no inventory: the baseline.
fn run_agent(kubeconfig: &std::path::Path, kube: bool) -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let listen = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let mut agent = Command::new(env!("CARGO_BIN_EXE_flowwatch"))
        .args(["run", "--interfaces", "fwbench-none*", "--listen", &listen])
        .arg(format!("--kube={kube}"))
        .env("KUBECONFIG", kubeconfig)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawning flowwatch");
    let mut ready = None;
    while started.elapsed() < Duration::from_mins(1) {
        if readyz(&listen) == Some(200) {
            ready = Some(started.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(6));
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", agent.id())).unwrap_or_default();
    let kib = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let (rss, peak) = (kib("VmRSS:") / 1000.0, kib("VmHWM:") / 1000.0);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let _ = agent.wait();
    match ready {
        Some(t) => format!(
            "ready in {:.2} s; RSS steady {rss:.1} MB, peak {peak:.1} MB",
            t.as_secs_f64()
        ),
        None => format!("NOT READY within 60 s; RSS {rss:.1} MB, peak {peak:.1} MB"),
    }
}

/// The status code of `GET /readyz`, if the agent answers.
fn readyz(addr: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(
        format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

fn run_child(kubeconfig: &std::path::Path, env: &[(&str, &str)]) -> String {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .envs(env.iter().copied())
        .env("FLOWWATCH_BENCH_CHILD", kubeconfig)
        .output()
        .expect("run child");
    assert!(
        out.status.success(),
        "child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn child(kubeconfig: &str) {
    let t0 = Instant::now();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .unwrap();
        let client = Client::try_from(config).unwrap();
        let cancel = CancellationToken::new();
        let w = ClusterWatch::start(client, WatchOptions::default(), cancel.clone());
        assert!(w.wait_synced(Duration::from_mins(2)).await, "no sync");
        let synced = t0.elapsed();
        let rss_synced = rss_mb();
        let view = w.current();
        // As the agent's classifier: one cluster index, read by both.
        let cluster = ClusterIndex::build(&view.inventory, &view.owners, &mut Vec::new());
        let cluster = std::sync::Arc::new(cluster);
        let mut index = EndpointIndex::new(EnrichOptions::default());
        index.update_from(&cluster, &view.inventory.services, 0);
        let (engine, _) =
            PolicyEngine::with_index(cluster, &view.inventory, PolicyOptions::default());
        let ready = t0.elapsed();
        let rss_ready = rss_mb();
        let counts = format!(
            "pods={} namespaces={} services={} slices={} policies={}",
            view.inventory.pods.len(),
            view.inventory.namespaces.len(),
            view.inventory.services.len(),
            view.inventory.endpoint_slices.len(),
            view.inventory.network_policies.len()
        );
        // the agent keeps the engine and the index, not the materialized view
        drop(view);
        // steady state: the watchers keep running (and return the view's memory)
        tokio::time::sleep(Duration::from_secs(6)).await;
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let stats = index.stats();
        // SAFETY: malloc_trim has no preconditions.
        unsafe { libc::malloc_trim(0) };
        let rss_trimmed = rss_mb();
        eprintln!(
            "sizes: Pod {} PodSpec {} Container {} PodStatus {} ObjectMeta {}; rss at sync {rss_synced:.1}MB, ready (view held) {rss_ready:.1}MB, steady + malloc_trim {rss_trimmed:.1}MB",
            std::mem::size_of::<Pod>(),
            std::mem::size_of::<k8s_openapi::api::core::v1::PodSpec>(),
            std::mem::size_of::<k8s_openapi::api::core::v1::Container>(),
            std::mem::size_of::<k8s_openapi::api::core::v1::PodStatus>(),
            std::mem::size_of::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>(),
        );
        println!(
            "{counts} synced={:.0}ms ready={:.0}ms rss={:.1}MB peak={:.1}MB index_pod_ips={}",
            synced.as_secs_f64() * 1000.0,
            ready.as_secs_f64() * 1000.0,
            field("VmRSS:") as f64 / 1024.0,
            field("VmHWM:") as f64 / 1024.0,
            stats.pod_ips,
        );
        drop(engine);
        cancel.cancel();
    });
}

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn value<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap()
}

async fn all<F>(what: &str, futs: Vec<F>)
where
    F: std::future::Future<Output = Result<(), kube::Error>>,
{
    let n = futs.len();
    let errors: Vec<kube::Error> = stream::iter(futs)
        .buffer_unordered(CONCURRENCY)
        .filter_map(|r| async move { r.err() })
        .collect()
        .await;
    assert!(
        errors.is_empty(),
        "{what}: {} of {n} failed, e.g. {}",
        errors.len(),
        errors[0]
    );
}

async fn load(client: &Client, namespaces: usize) {
    let pp = PostParams::default();
    let nss: Api<Namespace> = Api::all(client.clone());
    all(
        "namespaces",
        (0..namespaces)
            .map(|n| {
                let ns = value::<Namespace>(json!({"metadata": {"name": format!("ns-{n}"),
                    "labels": {"team": format!("team-{}", n % 25), "env": "prod"}}}));
                let (nss, pp) = (nss.clone(), pp.clone());
                async move { nss.create(&pp, &ns).await.map(|_| ()) }
            })
            .collect(),
    )
    .await;
    let nodes: Api<Node> = Api::all(client.clone());
    all(
        "nodes",
        (0..NODES)
            .map(|k| {
                let nodes = nodes.clone();
                async move {
                    let name = format!("node-{k}");
                    nodes.create(&PostParams::default(), &value(json!({"metadata": {"name": name}}))).await?;
                    nodes
                        .patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({"status": {
                            "addresses": [{"type": "InternalIP", "address": format!("192.168.100.{}", k + 1)}]}})))
                        .await
                        .map(|_| ())
                }
            })
            .collect(),
    )
    .await;
    // two Deployments' ReplicaSets per namespace (10 pods each)
    all(
        "replicasets",
        (0..namespaces * 2)
            .map(|i| {
                let (n, d) = (i / 2, i % 2);
                let api: Api<ReplicaSet> = Api::namespaced(client.clone(), &format!("ns-{n}"));
                let rs = value::<ReplicaSet>(json!({
                    "metadata": {"name": format!("app-{d}-h{d}"), "ownerReferences": [{"apiVersion": "apps/v1",
                        "kind": "Deployment", "name": format!("app-{d}"), "uid": format!("dep-{n}-{d}"), "controller": true}]},
                    "spec": {"selector": {"matchLabels": {"app": format!("app-{d}")}},
                        "template": {"metadata": {"labels": {"app": format!("app-{d}")}},
                            "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}}}
                }));
                async move { api.create(&PostParams::default(), &rs).await.map(|_| ()) }
            })
            .collect(),
    )
    .await;
    let ip = |n: usize, p: usize| {
        let i = n * PODS_PER_NS + p;
        format!(
            "10.{}.{}.{}",
            100 + i / 62_500,
            (i / 250) % 250,
            i % 250 + 1
        )
    };
    all(
        "pods",
        (0..namespaces * PODS_PER_NS)
            .map(|i| {
                let (n, p) = (i / PODS_PER_NS, i % PODS_PER_NS);
                let d = p % 2;
                let api: Api<Pod> = Api::namespaced(client.clone(), &format!("ns-{n}"));
                let name = format!("app-{d}-h{d}-{p:05}");
                let pod = value::<Pod>(json!({
                    "metadata": {"name": name, "labels": {"app": format!("app-{d}"), "pod-template-hash": format!("h{d}"),
                        "tier": if d == 0 { "front" } else { "back" }, "version": "v1.2.3"},
                        "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "9090"},
                        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("app-{d}-h{d}"),
                            "uid": format!("rs-{n}-{d}"), "controller": true}]},
                    "spec": {"nodeName": format!("node-{}", i % NODES), "containers": [{
                        "name": "app", "image": "registry.invalid/team/app:1.2.3",
                        "ports": [{"name": "http", "containerPort": 8080}, {"name": "metrics", "containerPort": 9090}],
                        "env": (0..6).map(|e| json!({"name": format!("SETTING_{e}"), "value": format!("value-{e}-{i}")})).collect::<Vec<_>>(),
                        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
                        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}},
                        "volumeMounts": [{"name": "config", "mountPath": "/etc/app"}]}],
                        "volumes": [{"name": "config", "configMap": {"name": "app-config"}}]}
                }));
                let ip = ip(n, p);
                async move {
                    api.create(&PostParams::default(), &pod).await?;
                    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({"status": {
                        "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "192.168.100.1"}})))
                        .await
                        .map(|_| ())
                }
            })
            .collect(),
    )
    .await;
    all(
        "services",
        (0..namespaces * SERVICES_PER_NS)
            .map(|i| {
                let (n, s) = (i / SERVICES_PER_NS, i % SERVICES_PER_NS);
                let ns = format!("ns-{n}");
                let svcs: Api<Service> = Api::namespaced(client.clone(), &ns);
                let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
                let svc = value::<Service>(json!({"metadata": {"name": format!("svc-{s}")},
                    "spec": {"selector": {"app": format!("app-{}", s % 2)},
                        "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}));
                let endpoints: Vec<_> = (0..5)
                    .map(|k| json!({"addresses": [ip(n, (s % 2) + 2 * k)], "conditions": {"ready": true},
                        "targetRef": {"kind": "Pod", "namespace": ns, "name": format!("app-{}-h{}-{:05}", s % 2, s % 2, (s % 2) + 2 * k)}}))
                    .collect();
                let slice = value::<EndpointSlice>(json!({
                    "metadata": {"name": format!("svc-{s}-abcde"), "labels": {"kubernetes.io/service-name": format!("svc-{s}")}},
                    "addressType": "IPv4", "endpoints": endpoints,
                    "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}));
                async move {
                    svcs.create(&PostParams::default(), &svc).await?;
                    slices.create(&PostParams::default(), &slice).await.map(|_| ())
                }
            })
            .collect(),
    )
    .await;
    all(
        "policies",
        (0..namespaces * POLICIES_PER_NS)
            .map(|i| {
                let (n, k) = (i / POLICIES_PER_NS, i % POLICIES_PER_NS);
                let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), &format!("ns-{n}"));
                let np = value::<NetworkPolicy>(json!({"metadata": {"name": format!("np-{k}")},
                    "spec": {"podSelector": {"matchLabels": {"app": format!("app-{}", k % 2)}},
                        "policyTypes": ["Ingress", "Egress"],
                        "ingress": [{"from": [
                            {"podSelector": {"matchLabels": {"tier": "front"}}},
                            {"namespaceSelector": {"matchLabels": {"team": format!("team-{}", k)}}},
                            {"ipBlock": {"cidr": "172.16.0.0/12", "except": ["172.16.1.0/24"]}}],
                            "ports": [{"protocol": "TCP", "port": 8080}, {"protocol": "TCP", "port": "http"}]}],
                        "egress": [{"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "app-1"}}}],
                            "ports": [{"protocol": "TCP", "port": 8080}]},
                            {"ports": [{"protocol": "UDP", "port": 53}]}]}}));
                async move { api.create(&PostParams::default(), &np).await.map(|_| ()) }
            })
            .collect(),
    )
    .await;
}
