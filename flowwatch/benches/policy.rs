//! Policy engine benchmarks on a synthetic cluster: 10,000 pods in 500 namespaces, 2,000
//! NetworkPolicies and 200 cluster-scoped policies (Admin and Baseline ClusterNetworkPolicies,
//! AdminNetworkPolicies, the BaselineAdminNetworkPolicy; see `synthetic_cluster`), one core.
//!
//! * `cargo bench -p flowwatch --bench policy`: criterion groups `policy_build` (index
//!   build), `policy_evaluate` (flows by address with a warm cache, a cold cache, and pods by
//!   name), reported as elements (flows) per second.
//! * `cargo bench -p flowwatch --bench policy -- --report`: heap held by the inventory and the
//!   engine (counted by this binary's allocator), build time, throughput over 1,000,000 flows
//!   by thread CPU time (what "per second on one core" means on a shared machine) and by wall
//!   clock, and the process's peak RSS.
//! * `cargo bench -p flowwatch --bench policy -- --generate DIR [--flows N]`: writes
//!   `DIR/snapshot.yaml` (a `kind: List`, as kubectl prints it) and `DIR/flows.jsonl`
//!   (N flow lines, default 1,000,000) for timing `flowwatch policy eval` end to end.
//! * `cargo bench -p flowwatch --bench policy -- --generate-whatif DIR [--flows N]`: the same
//!   cluster with Deployment owners, a proposed change and N flow-log records, for timing
//!   `flowwatch policy whatif` end to end (docs/benchmarks.md, "Policy what-if").
//! * `cargo bench -p flowwatch --bench policy -- --whatif-prometheus DIR [--series N] [--days D] [--reuse]`:
//!   `flowwatch policy whatif --prometheus` over N edges (50,000) of D days (30) of history in
//!   a real Prometheus (see `flowwatch_testkit::whatif_prometheus`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::hint::black_box;
use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput};
use flowwatch::inventory::Inventory;
use flowwatch::model::Protocol;
use flowwatch::policy::{Peer, PolicyEngine, PolicyOptions};
use flowwatch_testkit::whatif_prometheus;

// ------------------------------------------------------------ allocation counting

/// Counts live heap bytes, so `--report` can say what the engine itself holds.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

// ------------------------------------------------------------ the synthetic cluster

const NAMESPACES: usize = 500;
const APPS_PER_NS: usize = 5;
const REPLICAS: usize = 4;
const NODES: usize = 50;
const TIERS: [&str; APPS_PER_NS] = ["web", "api", "db", "cache", "worker"];

/// A deterministic xorshift generator (no dependency, same flows on every run).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn pod_ip(index: usize) -> IpAddr {
    IpAddr::from([10, 1, (index / 256) as u8, (index % 256) as u8])
}

fn node_ip(index: usize) -> IpAddr {
    IpAddr::from([10, 250, 0, index as u8 + 1])
}

fn pod_name(ns: usize, app: usize, replica: usize) -> (String, String) {
    (format!("ns-{ns:03}"), format!("app-{app}-{replica}"))
}

/// The cluster as a kubectl `kind: List` (JSON value), so it goes through the real loader.
fn synthetic_cluster() -> serde_json::Value {
    use serde_json::json;
    let mut items = Vec::new();
    items.push(json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "kube-system", "labels": {"kubernetes.io/metadata.name": "kube-system"}}}));
    for ns in 0..NAMESPACES {
        let name = format!("ns-{ns:03}");
        let env = ["prod", "staging", "dev"][ns % 3];
        items.push(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name,
            "labels": {"kubernetes.io/metadata.name": name, "team": format!("t{}", ns % 20), "env": env,
                       "monitoring": if ns % 10 == 0 { "true" } else { "false" }}}}));
    }
    for n in 0..NODES {
        items.push(
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": format!("node-{n}"),
                "labels": {"kubernetes.io/os": "linux", "role": if n < 3 { "control-plane" } else { "worker" }}},
            "status": {"addresses": [{"type": "InternalIP", "address": node_ip(n).to_string()}]}}),
        );
    }
    let mut index = 0;
    for ns in 0..NAMESPACES {
        for (app, tier) in TIERS.iter().enumerate() {
            for replica in 0..REPLICAS {
                let (namespace, name) = pod_name(ns, app, replica);
                let ip = pod_ip(index).to_string();
                items.push(json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"namespace": namespace, "name": name, "labels": {
                        "app": format!("app-{app}"), "tier": tier, "pod-template-hash": format!("h{app}")}},
                    "spec": {"nodeName": format!("node-{}", index % NODES), "containers": [{"name": "main", "ports": [
                        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
                        {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
                        {"name": "db", "containerPort": 5432, "protocol": "TCP"}]}]},
                    "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}));
                index += 1;
            }
        }
    }
    for ns in 0..NAMESPACES {
        let namespace = format!("ns-{ns:03}");
        let np = |name: &str, spec: serde_json::Value| {
            json!({"apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy", "metadata": {"namespace": namespace, "name": name}, "spec": spec})
        };
        items.push(np(
            "default-deny",
            json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        ));
        items.push(np("web-ingress", json!({"podSelector": {"matchLabels": {"tier": "web"}}, "ingress": [
            {"from": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}], "ports": [{"port": "http"}]},
            {"from": [{"namespaceSelector": {"matchLabels": {"team": format!("t{}", ns % 20)}}}], "ports": [{"port": 8080}]}]})));
        items.push(np("backend-ingress", json!({
            "podSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["api", "db"]}]},
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"tier": "web"}}}, {"podSelector": {"matchLabels": {"tier": "api"}}}],
                 "ports": [{"port": "http"}, {"port": 5432, "endPort": 5440}]},
                {"from": [{"namespaceSelector": {"matchLabels": {"monitoring": "true"}},
                           "podSelector": {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]}]}}],
                 "ports": [{"port": "metrics"}]}]})));
        items.push(np("egress", json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [
            {"to": [{"podSelector": {}}]},
            {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}],
             "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
            {"to": [{"namespaceSelector": {"matchLabels": {"monitoring": "true"}}}], "ports": [{"port": 9090}]},
            {"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.250.0.0/16"]}}], "ports": [{"port": 8080}]}]})));
    }
    // FLOWWATCH_BENCH_NO_CLUSTER_POLICIES=1: the same cluster without them, for comparison.
    if std::env::var_os("FLOWWATCH_BENCH_NO_CLUSTER_POLICIES").is_none() {
        items.extend(cluster_policies());
    }
    json!({"apiVersion": "v1", "kind": "List", "items": items})
}

/// 200 cluster-scoped policies: per team (20), an Admin tenant policy (monitoring accepted,
/// own team passed, others denied; DNS accepted, own team passed, control-plane nodes denied,
/// the internet denied past a pass of pod CIDRs) and a Baseline one (deny ingress from other
/// teams); per team and env (60) an AdminNetworkPolicy guarding databases (port range,
/// named port); 99 more Admin ClusterNetworkPolicies per namespace group with equal
/// priorities; and the BaselineAdminNetworkPolicy `default`.
fn cluster_policies() -> Vec<serde_json::Value> {
    use serde_json::json;
    let cnp = |name: String, tier: &str, priority: u32, spec: serde_json::Value| {
        let mut spec = spec;
        spec["tier"] = json!(tier);
        spec["priority"] = json!(priority);
        json!({"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
            "metadata": {"name": name}, "spec": spec})
    };
    let mut out = Vec::new();
    for t in 0..20 {
        let team = format!("t{t}");
        out.push(cnp(format!("tenant-{team}"), "Admin", 100 + t, json!({
            "subject": {"namespaces": {"matchLabels": {"team": team}}},
            "ingress": [
                {"name": "accept-monitoring", "action": "Accept",
                 "from": [{"namespaces": {"matchLabels": {"monitoring": "true"}}}],
                 "protocols": [{"tcp": {"destinationPort": {"number": 9090}}}]},
                {"name": "pass-team", "action": "Pass", "from": [{"namespaces": {"matchLabels": {"team": team}}}]},
                {"name": "deny-others", "action": "Deny", "from": [{"namespaces": {}}]}],
            "egress": [
                {"name": "accept-dns", "action": "Accept",
                 "to": [{"pods": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}, "podSelector": {}}}],
                 "protocols": [{"udp": {"destinationPort": {"number": 53}}}, {"tcp": {"destinationPort": {"number": 53}}}]},
                {"name": "pass-team", "action": "Pass", "to": [{"namespaces": {"matchLabels": {"team": team}}}]},
                {"name": "deny-control-plane", "action": "Deny", "to": [{"nodes": {"matchLabels": {"role": "control-plane"}}}]},
                {"name": "pass-pods", "action": "Pass", "to": [{"networks": ["10.1.0.0/16"]}]},
                {"name": "deny-internet", "action": "Deny", "to": [{"networks": ["0.0.0.0/0", "::/0"]}]}]})));
        out.push(cnp(format!("baseline-{team}"), "Baseline", t, json!({
            "subject": {"namespaces": {"matchLabels": {"team": team}}},
            "ingress": [{"name": "deny-other-teams", "action": "Deny",
                         "from": [{"namespaces": {"matchExpressions": [{"key": "team", "operator": "NotIn", "values": [team]}]}}]}]})));
        for env in ["prod", "staging", "dev"] {
            out.push(json!({"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "AdminNetworkPolicy",
                "metadata": {"name": format!("db-guard-{team}-{env}")},
                "spec": {"priority": 50 + t, "subject": {"pods": {
                    "namespaceSelector": {"matchLabels": {"team": team, "env": env}},
                    "podSelector": {"matchLabels": {"tier": "db"}}}},
                "ingress": [
                    {"name": "allow-api", "action": "Allow",
                     "from": [{"pods": {"namespaceSelector": {"matchLabels": {"team": team}}, "podSelector": {"matchLabels": {"tier": "api"}}}}],
                     "ports": [{"portRange": {"start": 5432, "end": 5440}}, {"namedPort": "db"}]},
                    {"name": "deny-rest", "action": "Deny", "from": [{"namespaces": {}}],
                     "ports": [{"portNumber": {"port": 5432}}]}]}}));
        }
    }
    for g in 0..99 {
        // Namespace groups by name; a quarter share a priority (ties resolved by name).
        let names: Vec<String> = (0..8)
            .map(|i| format!("ns-{:03}", (g * 8 + i) % NAMESPACES))
            .collect();
        out.push(cnp(format!("group-{g:02}"), "Admin", 500 + (g / 4) as u32, json!({
            "subject": {"namespaces": {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": names}]}},
            "ingress": [{"name": "accept-web-from-anywhere", "action": "Accept", "from": [{"namespaces": {}}],
                         "protocols": [{"destinationNamedPort": "http"}]}]})));
    }
    out.push(json!({"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "BaselineAdminNetworkPolicy",
        "metadata": {"name": "default"},
        "spec": {"subject": {"namespaces": {}},
            "egress": [{"name": "deny-internet", "action": "Deny", "to": [{"networks": ["0.0.0.0/0"]}]}]}}));
    out
}

fn inventory() -> Inventory {
    let text = serde_json::to_string(&synthetic_cluster()).expect("serializable");
    let (inv, errors) = flowwatch::inventory::snapshot::parse(&text, "synthetic").expect("parses");
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(inv.pods.len(), NAMESPACES * APPS_PER_NS * REPLICAS);
    assert_eq!(inv.network_policies.len(), NAMESPACES * 4);
    if std::env::var_os("FLOWWATCH_BENCH_NO_CLUSTER_POLICIES").is_none() {
        assert_eq!(inv.cluster_policies.len(), 200);
    }
    inv
}

/// Flows as the agent sees them: mostly pod to pod (same namespace half the time), some from
/// outside and from nodes, on the ports the cluster serves.
fn flows(n: usize, seed: u64) -> Vec<(IpAddr, IpAddr, u16, Protocol)> {
    let pods = NAMESPACES * APPS_PER_NS * REPLICAS;
    let per_ns = APPS_PER_NS * REPLICAS;
    let mut rng = Rng(seed);
    (0..n)
        .map(|_| {
            let dst = rng.below(pods);
            let src = match rng.below(100) {
                0..=4 => IpAddr::from([203, 0, 113, rng.below(256) as u8]),
                5..=6 => node_ip(rng.below(NODES)),
                7..=56 => pod_ip(dst / per_ns * per_ns + rng.below(per_ns)),
                _ => pod_ip(rng.below(pods)),
            };
            let (port, protocol) = [
                (8080, Protocol::Tcp),
                (8080, Protocol::Tcp),
                (9090, Protocol::Tcp),
                (5432, Protocol::Tcp),
                (53, Protocol::Udp),
            ][rng.below(5)];
            (src, pod_ip(dst), port, protocol)
        })
        .collect()
}

// ------------------------------------------------------------ criterion

fn bench_build(c: &mut Criterion, inv: &Inventory) {
    let mut g = c.benchmark_group("policy_build");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.bench_function("10k_pods_2k_policies", |b| {
        b.iter(|| black_box(PolicyEngine::build(inv, PolicyOptions::default())));
    });
    g.finish();
}

fn bench_evaluate(c: &mut Criterion, inv: &Inventory) {
    let (engine, errors) = PolicyEngine::build(inv, PolicyOptions::default());
    assert!(errors.is_empty());
    let batch = flows(100_000, 42);
    let mut g = c.benchmark_group("policy_evaluate");
    g.throughput(Throughput::Elements(batch.len() as u64));
    g.sample_size(20);

    // Warm: every verdict was computed before; a flow costs two address lookups and two
    // cache lookups (the agent's steady state).
    for (s, d, p, proto) in &batch {
        engine.evaluate_ips(*s, *d, *p, *proto);
    }
    g.bench_function("by_address_warm_cache", |b| {
        b.iter(|| {
            for (s, d, p, proto) in &batch {
                black_box(engine.evaluate_ips(*s, *d, *p, *proto));
            }
        });
    });

    // Cold: a fresh engine per sample (build not timed), so every distinct verdict is
    // computed from the policies once.
    g.sample_size(10);
    g.bench_function("by_address_cold_cache", |b| {
        b.iter_batched(
            || PolicyEngine::build(inv, PolicyOptions::default()).0,
            |fresh| {
                for (s, d, p, proto) in &batch {
                    black_box(fresh.evaluate_ips(*s, *d, *p, *proto));
                }
                fresh
            },
            BatchSize::PerIteration,
        );
    });

    // By name (the CLI's path): two name lookups instead of address lookups.
    let per_ns = APPS_PER_NS * REPLICAS;
    let mut rng = Rng(7);
    let named: Vec<(Peer, Peer)> = (0..10_000)
        .map(|_| {
            let peer = |i: usize| {
                let (namespace, name) = pod_name(i / per_ns, i % per_ns / REPLICAS, i % REPLICAS);
                Peer::Pod { namespace, name }
            };
            (
                peer(rng.below(NAMESPACES * per_ns)),
                peer(rng.below(NAMESPACES * per_ns)),
            )
        })
        .collect();
    g.throughput(Throughput::Elements(named.len() as u64));
    g.sample_size(20);
    g.bench_function("by_name_warm_cache", |b| {
        b.iter(|| {
            for (s, d) in &named {
                black_box(engine.evaluate(s, d, 8080, Protocol::Tcp).ok());
            }
        });
    });
    g.finish();
}

// ------------------------------------------------------------ --report and --generate

/// CPU seconds used by this thread (CLOCK_THREAD_CPUTIME_ID).
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn report() {
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    let before = LIVE.load(Ordering::Relaxed);
    let inv = inventory();
    let with_inventory = LIVE.load(Ordering::Relaxed);
    let (start, build_cpu) = (Instant::now(), thread_cpu());
    let (engine, errors) = PolicyEngine::build(&inv, PolicyOptions::default());
    let build = start.elapsed();
    assert!(errors.is_empty(), "{errors:?}");
    let build_cpu = thread_cpu() - build_cpu;
    let with_engine = LIVE.load(Ordering::Relaxed);
    let batch = flows(1_000_000, 42);
    let with_flows = LIVE.load(Ordering::Relaxed);
    let (start, first_cpu) = (Instant::now(), thread_cpu());
    for (s, d, p, proto) in &batch {
        black_box(engine.evaluate_ips(*s, *d, *p, *proto));
    }
    let first_pass = start.elapsed();
    let first_pass_cpu = thread_cpu() - first_cpu;
    let with_cache = LIVE.load(Ordering::Relaxed);
    // Warm passes, timed by this thread's CPU clock as well as the wall clock: on a shared
    // machine the CPU time is what "per second on one core" means.
    let (wall, cpu) = (Instant::now(), thread_cpu());
    for _ in 0..3 {
        for (s, d, p, proto) in &batch {
            black_box(engine.evaluate_ips(*s, *d, *p, *proto));
        }
    }
    let (wall, cpu) = (wall.elapsed().as_secs_f64(), thread_cpu() - cpu);
    let n = 3.0 * batch.len() as f64;
    println!(
        "inventory (10,000 pods, 2,000 NetworkPolicies, {} cluster policies): {:.1} MiB",
        inv.cluster_policies.len(),
        mib(with_inventory - before)
    );
    println!(
        "engine after build: {:.1} MiB (build {:.0} ms wall, {:.0} ms CPU)",
        mib(with_engine - with_inventory),
        build.as_secs_f64() * 1e3,
        build_cpu * 1e3
    );
    println!(
        "engine after 1,000,000 flows ({} cached allowances): {:.1} MiB (first pass {:.0} ms wall, {:.0} ms CPU)",
        engine.cached_results(),
        mib(with_cache - with_flows + (with_engine - with_inventory)),
        first_pass.as_secs_f64() * 1e3,
        first_pass_cpu * 1e3
    );
    println!(
        "warm cache, 3 x 1,000,000 flows: {:.2} M flows/s of thread CPU time ({:.0} ns each), {:.2} M/s wall",
        n / cpu / 1e6,
        cpu / n * 1e9,
        n / wall / 1e6
    );
    // What decided the sides, so the figures are known to exercise every tier.
    let mut tiers = std::collections::BTreeMap::new();
    for (s, d, p, proto) in batch.iter().take(100_000) {
        let v = engine.evaluate_ips(*s, *d, *p, *proto);
        for side in [&v.ingress, &v.egress] {
            *tiers
                .entry(format!("{}/{}", side.verdict, side.tier))
                .or_insert(0usize) += 1;
        }
    }
    println!("sides of the first 100,000 flows by verdict/tier: {tiers:?}");
    if let Some(kib) = peak_rss_kib() {
        println!("process peak RSS: {:.1} MiB", kib as f64 / 1024.0);
    }
}

fn generate(dir: &std::path::Path, n: usize) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let yaml = serde_yaml::to_string(&synthetic_cluster()).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("snapshot.yaml"), yaml)?;
    let per_ns = APPS_PER_NS * REPLICAS;
    let name_of = |ip: IpAddr| -> String {
        // A third of the pod ends by name (the CLI's `namespace/pod` form), the rest by address.
        match ip {
            IpAddr::V4(v4) if v4.octets()[1] == 1 => {
                let o = v4.octets();
                let i = o[2] as usize * 256 + o[3] as usize;
                let (ns, pod) = pod_name(i / per_ns, i % per_ns / REPLICAS, i % REPLICAS);
                format!("{ns}/{pod}")
            }
            other => other.to_string(),
        }
    };
    let mut out = std::io::BufWriter::new(std::fs::File::create(dir.join("flows.jsonl"))?);
    for (i, (s, d, p, proto)) in flows(n, 42).into_iter().enumerate() {
        let src = if i % 3 == 0 {
            name_of(s)
        } else {
            s.to_string()
        };
        let dst = if i % 3 == 1 {
            name_of(d)
        } else {
            d.to_string()
        };
        writeln!(
            out,
            r#"{{"id":{i},"src":"{src}","dst":"{dst}","port":{p},"protocol":"{proto}"}}"#
        )?;
    }
    out.flush()
}

/// The current and proposed states of the what-if benches: `DIR/snapshot.json` (the synthetic
/// cluster, its pods owned by Deployments `app-0`..`app-4` through ReplicaSets, as kubectl
/// prints them) and `DIR/proposed.yaml` (in every tenth namespace, `backend-ingress` no longer
/// admits the api tier: the api -> db edges break).
fn write_whatif_states(dir: &std::path::Path) -> std::io::Result<()> {
    use serde_json::json;
    std::fs::create_dir_all(dir)?;
    let mut cluster = synthetic_cluster();
    for item in cluster["items"].as_array_mut().into_iter().flatten() {
        if item["kind"] == "Pod" {
            let app = item["metadata"]["labels"]["app"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let hash = item["metadata"]["labels"]["pod-template-hash"]
                .as_str()
                .unwrap_or("")
                .to_string();
            item["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": format!("{app}-{hash}"), "uid": format!("rs-{app}"), "controller": true}]);
        }
    }
    std::fs::write(dir.join("snapshot.json"), serde_json::to_vec(&cluster)?)?;
    let mut proposed = String::new();
    for ns in (0..NAMESPACES).step_by(10) {
        let _ = write!(
            proposed,
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{namespace: ns-{ns:03}, name: backend-ingress}}\n\
             spec:\n  podSelector: {{matchExpressions: [{{key: tier, operator: In, values: [api, db]}}]}}\n  \
             ingress:\n  - from: [{{podSelector: {{matchLabels: {{tier: web}}}}}}]\n    ports: [{{port: http}}, {{port: 5432, endPort: 5440}}]\n"
        );
    }
    std::fs::write(dir.join("proposed.yaml"), proposed)?;
    Ok(())
}

/// `--generate-whatif DIR`: a what-if over recorded traffic at the same scale. Writes
/// the states ([`write_whatif_states`]) and `DIR/flowlog.jsonl` (N records in the agent's flow-log format: web -> api, api -> db,
/// api -> cache, worker -> api in each namespace, a tenth of them to the api of ns-000, and the
/// internet -> web; one node logs each connection).
fn generate_whatif(dir: &std::path::Path, n: usize) -> std::io::Result<()> {
    write_whatif_states(dir)?;
    let per_ns = APPS_PER_NS * REPLICAS;
    let end = |i: usize, port: u16| {
        let (ns, app, replica) = (i / per_ns, i % per_ns / REPLICAS, i % REPLICAS);
        let (namespace, name) = pod_name(ns, app, replica);
        format!(
            r#"{{"ip":"{}","port":{port},"kind":"pod","namespace":"{namespace}","name":"{name}","workload_kind":"Deployment","workload_name":"app-{app}","node":"node-{}"}}"#,
            pod_ip(i),
            i % NODES
        )
    };
    let pod = |ns: usize, app: usize, replica: usize| ns * per_ns + app * REPLICAS + replica;
    let mut rng = Rng(42);
    let mut out = std::io::BufWriter::new(std::fs::File::create(dir.join("flowlog.jsonl"))?);
    for i in 0..n {
        let ns = rng.below(NAMESPACES);
        let (r1, r2) = (rng.below(REPLICAS), rng.below(REPLICAS));
        // (source app, destination app, port); app 0 web, 1 api, 2 db, 3 cache, 4 worker.
        let (from, to, port) =
            [(0, 1, 8080), (1, 2, 5432), (1, 3, 8080), (4, 1, 8080)][rng.below(4)];
        let dst_ns = if rng.below(10) == 0 { 0 } else { ns };
        let src = if rng.below(20) == 0 {
            format!(
                r#"{{"ip":"203.0.113.{}","port":{},"kind":"external","class":"public"}}"#,
                rng.below(256),
                30000 + i % 30000
            )
        } else {
            end(pod(ns, from, r1), 30000 + (i % 30000) as u16)
        };
        let dst = end(pod(dst_ns, to, r2), port);
        let outcome = if rng.below(50) == 0 {
            "failed"
        } else {
            "established"
        };
        writeln!(
            out,
            r#"{{"start":"2026-11-25T01:09:33.465Z","end":"2026-11-25T01:09:33.467Z","protocol":"TCP","src":{src},"dst":{dst},"outcome":"{outcome}","end_reason":"closed","observed_at":["client"],"fwd":{{"packets":6,"bytes":322}},"rev":{{"packets":4,"bytes":221}},"node":"node-{}","verdict":"allowed","ingress":{{"verdict":"allowed","policies":[],"rules":[],"reason":"rule_matched"}},"egress":{{"verdict":"allowed","policies":[],"rules":[],"reason":"rule_matched"}}}}"#,
            pod(ns, from, r1) % NODES
        )?;
    }
    out.flush()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|j| args.get(j + 1))
    };
    if let Some(dir) = flag("--whatif-prometheus") {
        let series = flag("--series").map_or(50_000, |s| s.parse().expect("--series N"));
        let days = flag("--days").map_or(30, |s| s.parse().expect("--days D"));
        let reuse = args.iter().any(|a| a == "--reuse");
        let cluster = whatif_prometheus::Cluster {
            namespaces: NAMESPACES,
            apps_per_ns: APPS_PER_NS,
            write_states: write_whatif_states,
        };
        whatif_prometheus::run(std::path::Path::new(dir), &cluster, series, days, reuse);
        return;
    }
    let flows = || flag("--flows").map_or(1_000_000, |s| s.parse().expect("--flows N"));
    if let Some(dir) = flag("--generate-whatif") {
        let n = flows();
        generate_whatif(std::path::Path::new(dir), n).expect("write the generated files");
        println!(
            "wrote {dir}/snapshot.json, {dir}/proposed.yaml and {dir}/flowlog.jsonl ({n} records)"
        );
        return;
    }
    if args.iter().any(|a| a == "--report") {
        report();
        return;
    }
    if let Some(dir) = flag("--generate") {
        let n = flows();
        generate(std::path::Path::new(dir), n).expect("write the generated files");
        println!("wrote {dir}/snapshot.yaml and {dir}/flows.jsonl ({n} flows)");
        return;
    }
    let inv = inventory();
    let mut c = Criterion::default().configure_from_args();
    bench_build(&mut c, &inv);
    bench_evaluate(&mut c, &inv);
    c.final_summary();
}
