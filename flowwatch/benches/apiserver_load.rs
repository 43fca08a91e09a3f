//! What flowwatch's watches cost the API server, measured against a real kube-apiserver + etcd
//! (the tests' `flowwatch_testkit::apiserver`) holding 10,000 pods:
//!
//! 1. one agent's initial sync, with paged lists and with streaming lists (WatchList):
//!    requests (the server's own `apiserver_request_total`, LIST and WATCH) and bytes on the
//!    wire (a counting TCP proxy on loopback between the agent and the server: TLS and HTTP/2
//!    framing included);
//! 2. the two synced agents side by side, at rest for 120 s and through 1,000 pod changes
//!    (bytes per change);
//! 3. 100 agents (each a full `ClusterWatch`, its own client and connection) starting at the
//!    same moment, with each strategy: time until all are synced, the API server's CPU seconds
//!    and peak RSS, requests, bytes, and refusals (429 / 5xx).
//!
//! `cargo xtask bench apiserver_load` (or `cargo bench -p flowwatch --bench apiserver_load`);
//! `FLOWWATCH_BENCH_PODS` and `FLOWWATCH_BENCH_AGENTS` change the scale (`AGENTS=0`: the
//! one-agent figures only). Bounded: every wait has a
//! deadline, everything listens on loopback, the servers and their temp dir go on exit.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apiserver::{ApiServer, ApiServerOptions, ADMIN_TOKEN};
use flowwatch::k8s::{ClusterWatch, ListStrategy, WatchOptions};
use flowwatch_testkit::apiserver;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A TCP proxy on loopback that counts the bytes each way.
#[derive(Clone, Default)]
struct Counted {
    to_server: Arc<AtomicU64>,
    to_client: Arc<AtomicU64>,
}

impl Counted {
    fn total(&self) -> (u64, u64) {
        (
            self.to_server.load(Ordering::Relaxed),
            self.to_client.load(Ordering::Relaxed),
        )
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    count: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                count.fetch_add(n as u64, Ordering::Relaxed);
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}

/// Starts the proxy to `upstream`; returns its URL and counters.
async fn proxy(upstream: u16, cancel: CancellationToken) -> (String, Counted) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    let counted = Counted::default();
    let c = counted.clone();
    tokio::spawn(async move {
        loop {
            let (client, _) = tokio::select! {
                () = cancel.cancelled() => return,
                a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
            };
            let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else {
                continue;
            };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::spawn(pipe(cr, sw, c.to_server.clone()));
            tokio::spawn(pipe(sr, cw, c.to_client.clone()));
        }
    });
    (url, counted)
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

/// The server's LIST and WATCH requests (all resources), and its refusals.
async fn requests(api: &ApiServer) -> (f64, f64, f64) {
    let lists = api
        .metric_sum("apiserver_request_total", &["verb=\"LIST\""])
        .await;
    let watches = api
        .metric_sum("apiserver_request_total", &["verb=\"WATCH\""])
        .await;
    let mut refused = api
        .metric_sum("apiserver_request_total", &["code=\"429\""])
        .await;
    for code in ["500", "503", "504"] {
        refused += api
            .metric_sum("apiserver_request_total", &[&format!("code=\"{code}\"")])
            .await;
    }
    (lists, watches, refused)
}

/// CPU seconds (user + system) of a process.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// Samples a process's RSS every 100 ms; the highest seen.
struct PeakRss {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
}

impl PeakRss {
    fn start(pid: u32) -> PeakRss {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max((rss_mib(pid) * 1024.0) as u64, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        PeakRss { stop, peak }
    }
    fn finish(self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        self.peak.load(Ordering::Relaxed) as f64 / 1024.0
    }
}

fn opts(strategy: ListStrategy) -> WatchOptions {
    WatchOptions {
        list_strategy: strategy,
        ..WatchOptions::default()
    }
}

async fn populate(api: &ApiServer, pods: usize) {
    let admin = api.admin_client().await;
    let namespaces = 100.min(pods.max(1));
    let ns_api: Api<Namespace> = Api::all(admin.clone());
    for n in 0..namespaces {
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": format!("ns-{n}"),
            "labels": {"team": format!("t{}", n % 10)}}}))
        .unwrap();
        ns_api.create(&PostParams::default(), &ns).await.unwrap();
    }
    let started = Instant::now();
    futures::stream::iter(0..pods)
        .map(|i| {
            let admin = admin.clone();
            async move {
                let ns = format!("ns-{}", i % namespaces);
                let app = format!("app-{}", (i / namespaces) % 20);
                let pod: Pod = serde_json::from_value(json!({
                    "metadata": {
                        "name": format!("{app}-{i}"),
                        "labels": {"app": app, "tier": "backend", "pod-template-hash": "5d8c7f9b4"},
                        "annotations": {"kubectl.kubernetes.io/default-container": "app"},
                        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                            "name": format!("{app}-5d8c7f9b4"), "uid": format!("00000000-0000-0000-0000-{i:012}"),
                            "controller": true}],
                    },
                    "spec": {
                        "nodeName": format!("node-{}", i % 100),
                        "containers": [{"name": "app", "image": "registry.example/app:1.2.3",
                            "ports": [{"name": "http", "containerPort": 8080}],
                            "env": [{"name": "MODE", "value": "production"}],
                            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}],
                    }
                }))
                .unwrap();
                Api::<Pod>::namespaced(admin, &ns)
                    .create(&PostParams::default(), &pod)
                    .await
                    .unwrap_or_else(|e| panic!("creating pod {i}: {e}"));
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    println!(
        "populated: {pods} pods in {namespaces} namespaces in {:.1?}",
        started.elapsed()
    );
}

struct Row {
    what: String,
    requests: String,
    bytes: String,
    note: String,
}

/// Keeps a row for the table and prints it at once (a later failure keeps what was measured).
fn push(rows: &mut Vec<Row>, r: Row) {
    println!("| {} | {} | {} | {} |", r.what, r.requests, r.bytes, r.note);
    rows.push(r);
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / 1_048_576.0)
}

/// One agent synced through its own counting proxy; it runs until the token is cancelled.
async fn one_agent_sync(
    api: &ApiServer,
    strategy: ListStrategy,
    rows: &mut Vec<Row>,
) -> (ClusterWatch, CancellationToken, Counted) {
    let cancel = CancellationToken::new();
    let (url, counted) = proxy(port_of(api.url()), cancel.clone()).await;
    let mut config = api.config_via(&url, ADMIN_TOKEN).await;
    config.read_timeout = Some(Duration::from_secs(295));
    let client = kube::Client::try_from(config).expect("client");
    let (l0, w0, _) = requests(api).await;
    let started = Instant::now();
    let w = ClusterWatch::start(client, opts(strategy), cancel.clone());
    assert!(
        w.wait_synced(Duration::from_mins(5)).await,
        "one agent did not sync: {:?}",
        w.status().report()
    );
    let took = started.elapsed();
    let (l1, w1, _) = requests(api).await;
    let (up, down) = counted.total();
    push(
        rows,
        Row {
            what: format!("one agent, initial sync, {strategy:?} lists"),
            requests: format!("{} LIST + {} WATCH", l1 - l0, w1 - w0),
            bytes: format!("{} down, {} up", mib(down), mib(up)),
            note: format!("synced in {took:.1?}"),
        },
    );
    (w, cancel, counted)
}

async fn many_agents(api: &ApiServer, agents: usize, strategy: ListStrategy, rows: &mut Vec<Row>) {
    let pid = api.apiserver_pid().expect("apiserver running");
    let cancel = CancellationToken::new();
    let (url, counted) = proxy(port_of(api.url()), cancel.clone()).await;
    let mut clients = Vec::with_capacity(agents);
    for _ in 0..agents {
        // As the agent's in-cluster client: kube's 295 s read timeout, not the tests' 30 s.
        let mut config = api.config_via(&url, ADMIN_TOKEN).await;
        config.read_timeout = Some(Duration::from_secs(295));
        config.connect_timeout = Some(Duration::from_secs(10));
        clients.push(kube::Client::try_from(config).expect("client"));
    }
    let (l0, w0, r0) = requests(api).await;
    let cpu0 = cpu_seconds(pid);
    let peak = PeakRss::start(pid);
    let started = Instant::now();
    let watches: Vec<ClusterWatch> = clients
        .into_iter()
        .map(|c| ClusterWatch::start(c, opts(strategy), cancel.clone()))
        .collect();
    let mut synced_at = Vec::with_capacity(agents);
    for w in &watches {
        let left = Duration::from_mins(5).saturating_sub(started.elapsed());
        assert!(
            w.wait_synced(left).await,
            "an agent did not sync within 300 s: {:?}",
            w.status().report()
        );
        synced_at.push(started.elapsed());
    }
    let all = started.elapsed();
    let cpu = cpu_seconds(pid) - cpu0;
    let (l1, w1, r1) = requests(api).await;
    let peak = peak.finish();
    let (up, down) = counted.total();
    let relists: u64 = watches.iter().map(|w| w.status().relists()).sum();
    push(rows, Row {
        what: format!("{agents} agents starting at once, {strategy:?} lists"),
        requests: format!("{} LIST + {} WATCH; {} refused (429/5xx)", l1 - l0, w1 - w0, r1 - r0),
        bytes: format!("{} down ({} per agent)", mib(down), mib(down / agents as u64)),
        note: format!(
            "all synced in {all:.1?}; API server {cpu:.1} CPU-s, peak RSS {peak:.0} MiB; {relists} relists; {} up",
            mib(up)
        ),
    });
    cancel.cancel();
    drop(watches);
    // Let the server drop the watches and settle before the next run.
    tokio::time::sleep(Duration::from_secs(10)).await;
}

async fn run() {
    let pods = env_usize("FLOWWATCH_BENCH_PODS", 10_000);
    let agents = env_usize("FLOWWATCH_BENCH_AGENTS", 100);
    let api = ApiServer::start_with(ApiServerOptions {
        extra_args: vec!["--feature-gates=WatchList=true".into()],
        ..Default::default()
    })
    .await;
    populate(&api, pods).await;
    let mut rows = Vec::new();

    // Both agents stay up and are measured side by side: at rest, then through pod changes.
    let synced = [
        one_agent_sync(&api, ListStrategy::Paged, &mut rows).await,
        one_agent_sync(&api, ListStrategy::Streaming, &mut rows).await,
    ];
    let down = |i: usize| synced[i].2.total().1;

    // At rest: watch restarts (kube-rs's 290 s server-side timeout) and bookmarks only.
    let rest = Duration::from_mins(2);
    let before = [down(0), down(1)];
    tokio::time::sleep(rest).await;
    for (i, strategy) in [ListStrategy::Paged, ListStrategy::Streaming]
        .iter()
        .enumerate()
    {
        let bytes = down(i) - before[i];
        push(
            &mut rows,
            Row {
                what: format!("one synced agent at rest, {rest:?}, {strategy:?} lists"),
                requests: "watches only".into(),
                bytes: format!("{} down", mib(bytes)),
                note: format!(
                    "{:.1} MiB/hour",
                    bytes as f64 * 3600.0 / rest.as_secs_f64() / 1_048_576.0
                ),
            },
        );
    }

    // Churn: 1,000 pod label changes, each one watch event to each agent.
    let admin = api.admin_client().await;
    let changes = 1_000.min(pods);
    let namespaces = 100.min(pods.max(1));
    let before = [down(0), down(1)];
    futures::stream::iter(0..changes)
        .map(|i| {
            let admin = admin.clone();
            async move {
                let ns = format!("ns-{}", i % namespaces);
                let app = format!("app-{}", (i / namespaces) % 20);
                Api::<Pod>::namespaced(admin, &ns)
                    .patch(
                        &format!("{app}-{i}"),
                        &PatchParams::default(),
                        &Patch::Merge(json!({"metadata": {"labels": {"rev": "2"}}})),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("patching pod {i}: {e}"));
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (i, strategy) in [ListStrategy::Paged, ListStrategy::Streaming]
        .iter()
        .enumerate()
    {
        let bytes = down(i) - before[i];
        let per_change = bytes as f64 / changes as f64;
        push(
            &mut rows,
            Row {
                what: format!("one synced agent, {changes} pod changes, {strategy:?} lists"),
                requests: "0 (on the open watch)".into(),
                bytes: format!("{} down", mib(bytes)),
                note: format!("{per_change:.0} bytes per change"),
            },
        );
    }
    for (_, cancel, _) in &synced {
        cancel.cancel();
    }
    drop(synced);

    // FLOWWATCH_BENCH_AGENTS=0 measures one agent only.
    if agents > 0 {
        many_agents(&api, agents, ListStrategy::Paged, &mut rows).await;
        many_agents(&api, agents, ListStrategy::Streaming, &mut rows).await;
    }

    println!("\n| scenario ({pods} pods) | requests | bytes (wire, TLS) | notes |");
    println!("|---|---|---|---|");
    for r in rows {
        println!("| {} | {} | {} | {} |", r.what, r.requests, r.bytes, r.note);
    }
    println!(
        "\nwatch restarts: 8 kinds x 3600 s / 290 s (kube-rs's server-side watch timeout) = {:.0} WATCH requests per agent per hour, each resuming from its resourceVersion (no relist)",
        8.0 * 3600.0 / 290.0
    );
}

fn main() {
    // `cargo bench` passes `--bench`; there is nothing to filter.
    if let Err(why) = ApiServer::available() {
        eprintln!("apiserver_load: {why}");
        std::process::exit(1);
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}
