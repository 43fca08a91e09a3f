//! The soak (`cargo xtask soak --minutes N`, as root; not in CI): the release agent, with its
//! flow log and a snapshot inventory, under mixed traffic between namespace pods for N minutes
//! (FLOWWATCH_SOAK_MINUTES, default 30), then checked:
//!
//! * its RSS after warm-up (the first fifth of the run, at least a minute) stays flat: the
//!   median of the last minute's samples is within 10% of the first minute's after warm-up;
//! * every edge family stays within its series budget (`flowwatch_series` on every scrape);
//! * nothing is lost below capacity: the kernel loss counters, the flow log's dropped records
//!   and the flows the agent refused stay 0, and every snapshot reload succeeds;
//! * every connection of a sampled set is reported exactly once: every short TCP connection of
//!   one client pod (one established client-to-server record each), every connection of a
//!   second client pod that binds the same few ports over and over (5-tuple reuse), and every
//!   refused attempt of the first pod (one failed record each).
//!
//! The traffic, all between pods this run creates on a bridge of its own (no route out): short
//! TCP request/answer connections from several pods, long-lived TCP connections that trickle
//! data and are replaced, UDP request/answer from sockets that come and go, refused attempts and
//! attempts into a firewall (timeouts), and two pods deleted and created again with the same
//! addresses every 20 s (their connections cut, their new names in the next snapshot). The
//! snapshot is rewritten (atomically) every 3 s with changing labels, pod names and a policy
//! that comes and goes; /metrics is scraped every 5 s. Every loop ends at the deadline; pods,
//! bridge and agent are removed on the way out, also on a panic.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use flowwatch_testkit::agent::Agent;
use flowwatch_testkit::ledger::Ledger;
use flowwatch_testkit::netns::{Node, Pod};
use flowwatch_testkit::traffic;

/// The pods, by index in the node.
const SERVER: usize = 0;
const SAMPLED: usize = 1;
const REUSER: usize = 2;
const MIXED: usize = 3;
const CHURNED: [usize; 2] = [4, 5];
const PODS: usize = 6;

const SHORT_PORT: u16 = 8080;
const LONG_PORT: u16 = 8081;
const UDP_PORT: u16 = 5353;
/// Nothing listens there: refused.
const CLOSED_PORT: u16 = 7000;
/// The server pod drops SYNs to it: attempts time out.
const FIREWALLED_PORT: u16 = 7001;
/// The ports the reusing client binds, in turn, for every connection.
const REUSED_PORTS: [u16; 4] = [41000, 41001, 41002, 41003];

const SERIES_BUDGET: usize = 200;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Everything the traffic threads share: when to stop.
#[derive(Clone)]
struct Clock {
    stop: Arc<AtomicBool>,
}

impl Clock {
    fn running(&self) -> bool {
        !self.stop.load(Ordering::Relaxed)
    }

    /// Sleeps `d` unless stopped meanwhile (in steps of at most 100 ms).
    fn sleep(&self, d: Duration) {
        let end = Instant::now() + d;
        while self.running() {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(Duration::from_millis(100)));
        }
    }
}

/// Accepts on `addr` in `pod` until stopped (non-blocking accept, so the thread ends on time);
/// each connection is served on a thread of its own by `serve`.
fn serve_tcp(
    pod: &Pod,
    addr: SocketAddr,
    clock: &Clock,
    serve: fn(TcpStream, &Clock),
) -> JoinHandle<()> {
    let clock = clock.clone();
    pod.run(move || {
        let listener = TcpListener::bind(addr).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        while clock.running() {
            match listener.accept() {
                Ok((c, _)) => {
                    let _ = c.set_nonblocking(false);
                    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                    let _ = c.set_write_timeout(Some(Duration::from_secs(5)));
                    let clock = clock.clone();
                    std::thread::spawn(move || serve(c, &clock));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    })
}

/// Short: read an 8-byte request, answer it, close first.
fn answer_and_close(mut c: TcpStream, _: &Clock) {
    let mut buf = [0u8; 8];
    if c.read_exact(&mut buf).is_ok() {
        let _ = c.write_all(&buf);
    }
}

/// Long: echo until the client closes (or the run ends).
fn echo(mut c: TcpStream, clock: &Clock) {
    let mut buf = [0u8; 256];
    while clock.running() {
        match c.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if c.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return,
        }
    }
}

fn udp_echo(pod: &Pod, addr: SocketAddr, clock: &Clock) -> JoinHandle<()> {
    let clock = clock.clone();
    pod.run(move || {
        let s = UdpSocket::bind(addr).expect("bind udp");
        s.set_read_timeout(Some(Duration::from_millis(100))).ok();
        let mut buf = [0u8; 512];
        while clock.running() {
            if let Ok((n, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(&buf[..n], from);
            }
        }
    })
}

/// One short connection: 8 bytes each way, the server closes first.
fn short_exchange(c: &mut TcpStream) {
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = [0u8; 8];
    if c.write_all(b"soak1234").is_ok() && c.read_exact(&mut buf).is_ok() {
        let _ = c.read(&mut buf[..1]); // EOF: the server closed first
    }
}

/// Runs `attempt` from `pod` every `pause` until stopped, or until `alive` (a generation
/// counter and this thread's generation) says the pod was replaced; the ledger of the client
/// addresses it returned.
fn ledger_loop(
    pod: &Pod,
    pause: Duration,
    clock: &Clock,
    alive: Option<(Arc<AtomicU64>, u64)>,
    mut attempt: impl FnMut(std::net::Ipv4Addr) -> Option<SocketAddr> + Send + 'static,
) -> JoinHandle<Ledger> {
    let clock = clock.clone();
    let ip = pod.ipv4;
    pod.run(move || {
        let mut ledger = Ledger::default();
        let current = || {
            alive
                .as_ref()
                .is_none_or(|(g, mine)| g.load(Ordering::Relaxed) == *mine)
        };
        while clock.running() && current() {
            if let Some(local) = attempt(ip) {
                ledger.add(local);
            }
            clock.sleep(pause);
        }
        ledger
    })
}

/// Short connections from `pod` to `to`, one every `pause`; the ledger of those made (every
/// connection whose handshake completed counts, whatever the exchange).
fn short_client(
    pod: &Pod,
    to: SocketAddr,
    pause: Duration,
    clock: &Clock,
    alive: Option<(Arc<AtomicU64>, u64)>,
) -> JoinHandle<Ledger> {
    ledger_loop(pod, pause, clock, alive, move |_| {
        let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(3)).ok()?;
        let local = c.local_addr().ok();
        short_exchange(&mut c);
        local
    })
}

/// Connections from the same few client ports in turn (each port reused every
/// `REUSED_PORTS.len()` connections), to `to`; the ledger of those made.
fn reusing_client(pod: &Pod, to: SocketAddr, pause: Duration, clock: &Clock) -> JoinHandle<Ledger> {
    let mut n = 0usize;
    ledger_loop(pod, pause, clock, None, move |ip| {
        let local = SocketAddr::new(ip.into(), REUSED_PORTS[n % REUSED_PORTS.len()]);
        n += 1;
        let mut c = traffic::connect_from(local, to).ok()?;
        short_exchange(&mut c);
        Some(local)
    })
}

/// Refused attempts (nothing listens on `to`), one every `pause`; the ledger of the attempts
/// the server refused.
fn refused_client(pod: &Pod, to: SocketAddr, pause: Duration, clock: &Clock) -> JoinHandle<Ledger> {
    ledger_loop(pod, pause, clock, None, move |ip| {
        // A port of the kernel's choosing (bound, then released), so the attempt's port is
        // known.
        let local = TcpListener::bind(SocketAddr::new(ip.into(), 0))
            .and_then(|l| l.local_addr())
            .ok()?;
        match traffic::connect_from(local, to) {
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => Some(local),
            _ => None,
        }
    })
}

/// Long connections from `pod`: `count` at a time, each trickling 16 bytes a second and
/// replaced after 30 to 90 s.
fn long_clients(pod: &Pod, to: SocketAddr, count: usize, clock: &Clock) -> Vec<JoinHandle<()>> {
    (0..count)
        .map(|i| {
            let clock = clock.clone();
            pod.run(move || {
                let mut lifetime = 30 + (i as u64 * 23) % 60;
                while clock.running() {
                    let Ok(mut c) = TcpStream::connect_timeout(&to, Duration::from_secs(3)) else {
                        clock.sleep(Duration::from_secs(1));
                        continue;
                    };
                    c.set_read_timeout(Some(Duration::from_secs(5))).ok();
                    let born = Instant::now();
                    let mut buf = [0u8; 16];
                    while clock.running() && born.elapsed() < Duration::from_secs(lifetime) {
                        if c.write_all(&[7u8; 16]).is_err() || c.read_exact(&mut buf).is_err() {
                            break;
                        }
                        clock.sleep(Duration::from_secs(1));
                    }
                    lifetime = 30 + (lifetime * 7 + 13) % 60;
                }
            })
        })
        .collect()
}

/// UDP request/answer from `sockets` sockets of `pod`, each sending every 100 ms and replaced
/// (a new source port) every 20 s.
fn udp_clients(pod: &Pod, to: SocketAddr, sockets: usize, clock: &Clock) -> Vec<JoinHandle<()>> {
    (0..sockets)
        .map(|_| {
            let clock = clock.clone();
            let ip = pod.ipv4;
            pod.run(move || {
                while clock.running() {
                    let Ok(s) = UdpSocket::bind(SocketAddr::new(ip.into(), 0)) else {
                        clock.sleep(Duration::from_secs(1));
                        continue;
                    };
                    s.set_read_timeout(Some(Duration::from_millis(200))).ok();
                    let born = Instant::now();
                    let mut buf = [0u8; 64];
                    while clock.running() && born.elapsed() < Duration::from_secs(20) {
                        let _ = s.send_to(b"soak-udp", to);
                        let _ = s.recv_from(&mut buf);
                        clock.sleep(Duration::from_millis(100));
                    }
                }
            })
        })
        .collect()
}

/// Attempts into the server pod's firewall, one every 5 s (each times out after 1 s).
fn firewalled_client(pod: &Pod, to: SocketAddr, clock: &Clock) -> JoinHandle<()> {
    let clock = clock.clone();
    pod.run(move || {
        while clock.running() {
            let _ = TcpStream::connect_timeout(&to, Duration::from_secs(1));
            clock.sleep(Duration::from_secs(5));
        }
    })
}

/// The inventory: a namespace, every pod (the churned ones under their current names), and on
/// odd versions a policy that admits only the served ports to the server.
fn snapshot(node: &Node, version: u64, generations: &[u64; 2]) -> String {
    let pod = |name: &str, app: &str, ip: std::net::Ipv4Addr| {
        format!(
            "- apiVersion: v1\n  kind: Pod\n  metadata: {{name: {name}, namespace: soak, labels: {{app: {app}, version: v{}}}}}\n  spec: {{containers: [{{name: c, image: x}}]}}\n  status: {{podIP: {ip}}}\n",
            version % 3
        )
    };
    let mut items = String::from(
        "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: soak, labels: {kubernetes.io/metadata.name: soak}}}\n",
    );
    for (i, name) in [
        (SERVER, "server"),
        (SAMPLED, "sampled"),
        (REUSER, "reuser"),
        (MIXED, "mixed"),
    ] {
        items.push_str(&pod(name, name, node.pods[i].ipv4));
    }
    for (k, &i) in CHURNED.iter().enumerate() {
        let name = format!("churned-{k}-{}", generations[k]);
        items.push_str(&pod(&name, "churned", node.pods[i].ipv4));
    }
    if version % 2 == 1 {
        let _ = write!(
            items,
            "- apiVersion: networking.k8s.io/v1\n  kind: NetworkPolicy\n  metadata: {{name: server-ports, namespace: soak}}\n  spec:\n    podSelector: {{matchLabels: {{app: server}}}}\n    ingress: [{{ports: [{{port: {SHORT_PORT}}}, {{port: {LONG_PORT}}}, {{port: {UDP_PORT}, protocol: UDP}}]}}]\n"
        );
    }
    items
}

/// Replaces the file at `path` in one rename, so the agent never reads it half written.
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("writing the snapshot");
    std::fs::rename(&tmp, path).expect("renaming the snapshot");
}

/// One scrape: the series each edge family holds, the loss counters, and the agent's RSS.
#[derive(Debug, Default)]
struct Scrape {
    at: Duration,
    rss_kib: u64,
    max_family_series: u64,
    series_total: u64,
    losses: Vec<(String, f64)>,
}

/// Counters that must stay 0 below capacity.
const LOSS_SERIES: [&str; 4] = [
    "flowwatch_kernel_events_lost_total",
    "flowwatch_flow_log_records_dropped_total",
    "flowwatch_snapshot_reload_errors_total",
    "flowwatch_series_dropped_total",
];

fn scrape(agent: &Agent, at: Duration) -> Result<Scrape, String> {
    let (status, text) = flowwatch_testkit::prometheus::http_get(&agent.listen, "/metrics", None)?;
    if status != 200 {
        return Err(format!("/metrics answered {status}"));
    }
    let mut s = Scrape {
        at,
        rss_kib: rss_kib(agent.pid()),
        ..Scrape::default()
    };
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let mut parts = line.split_whitespace();
        let (Some(series), Some(value)) = (parts.next(), parts.next()) else {
            continue;
        };
        let value: f64 = value.parse().unwrap_or(0.0);
        s.series_total += 1;
        if series.starts_with("flowwatch_series{") {
            s.max_family_series = s.max_family_series.max(value as u64);
        }
        if LOSS_SERIES.iter().any(|name| series.starts_with(name)) && value != 0.0 {
            s.losses.push((series.to_string(), value));
        }
    }
    Ok(s)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// Every record of the flow log and its rotated files, oldest first, one at a time.
fn flow_log_records(path: &Path) -> impl Iterator<Item = serde_json::Value> {
    let mut files: Vec<_> = (1..=5)
        .rev()
        .map(|i| path.with_extension(format!("jsonl.{i}")))
        .filter(|p| p.exists())
        .collect();
    files.push(path.to_path_buf());
    files.into_iter().flat_map(|f| {
        let lines = std::fs::File::open(&f).map(|f| BufReader::new(f).lines());
        lines
            .into_iter()
            .flatten()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str(&l).ok())
    })
}

fn main() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP soak: needs root");
        return;
    }
    let minutes = env_u64("FLOWWATCH_SOAK_MINUTES", 30).max(1);
    let run = Duration::from_secs(minutes * 60);
    let warm_up = (run / 5).max(Duration::from_mins(1));
    let node = Node::new(PODS);
    let server = &node.pods[SERVER];
    let at = |port| SocketAddr::new(server.ipv4.into(), port);
    server.drop_incoming(&format!("tcp dport {FIREWALLED_PORT}"));

    let dir = tempfile::tempdir().expect("temp dir");
    let snapshot_path = dir.path().join("cluster.yaml");
    let mut generations = [0u64; 2];
    write_atomically(&snapshot_path, &snapshot(&node, 0, &generations));
    let glob = node.interface_glob();
    let snapshot_arg = snapshot_path.display().to_string();
    let budget = SERIES_BUDGET.to_string();
    let mut agent = Agent::start_as_deployed_with_flow_log(&[
        "--interfaces",
        &glob,
        "--snapshot",
        &snapshot_arg,
        "--series-budget",
        &budget,
        "--series-budget-per-namespace",
        &budget,
        "--series-ttl-secs",
        "120",
    ]);
    let pid = agent.pid();
    println!(
        "soak: {minutes} min, warm-up {} s, agent pid {pid}, flow log {}",
        warm_up.as_secs(),
        agent.flow_log.display()
    );

    let clock = Clock {
        stop: Arc::new(AtomicBool::new(false)),
    };
    let mut servers = vec![
        serve_tcp(server, at(SHORT_PORT), &clock, answer_and_close),
        serve_tcp(server, at(LONG_PORT), &clock, echo),
        udp_echo(server, at(UDP_PORT), &clock),
    ];
    std::thread::sleep(Duration::from_millis(200));
    let sampled = &node.pods[SAMPLED];
    let mixed = &node.pods[MIXED];
    let ledgers = vec![
        short_client(
            sampled,
            at(SHORT_PORT),
            Duration::from_millis(20),
            &clock,
            None,
        ),
        short_client(
            sampled,
            at(SHORT_PORT),
            Duration::from_millis(20),
            &clock,
            None,
        ),
    ];
    let reused = reusing_client(
        &node.pods[REUSER],
        at(SHORT_PORT),
        Duration::from_millis(50),
        &clock,
    );
    let refused = refused_client(sampled, at(CLOSED_PORT), Duration::from_millis(200), &clock);
    let mut others = long_clients(mixed, at(LONG_PORT), 4, &clock);
    others.extend(udp_clients(mixed, at(UDP_PORT), 3, &clock));
    others.push(firewalled_client(mixed, at(FIREWALLED_PORT), &clock));
    let mixed_short = short_client(
        mixed,
        at(SHORT_PORT),
        Duration::from_millis(50),
        &clock,
        None,
    );

    // The churned pods: a generation each; their clients end when it moves on.
    let churn_gen: Vec<Arc<AtomicU64>> = CHURNED
        .iter()
        .map(|_| Arc::new(AtomicU64::new(0)))
        .collect();
    let mut churn_threads: Vec<JoinHandle<Ledger>> = CHURNED
        .iter()
        .zip(&churn_gen)
        .map(|(&i, g)| {
            short_client(
                &node.pods[i],
                at(SHORT_PORT),
                Duration::from_millis(50),
                &clock,
                Some((g.clone(), 0)),
            )
        })
        .collect();

    let started = Instant::now();
    let mut scrapes: Vec<Scrape> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let (mut next_snapshot, mut next_scrape, mut next_churn) =
        (started, started, started + Duration::from_secs(20));
    let mut version = 0u64;
    let mut churned = 0u64;
    while started.elapsed() < run {
        let now = Instant::now();
        if now >= next_snapshot {
            version += 1;
            write_atomically(&snapshot_path, &snapshot(&node, version, &generations));
            next_snapshot += Duration::from_secs(3);
        }
        if now >= next_churn {
            let k = (churned % CHURNED.len() as u64) as usize;
            churned += 1;
            generations[k] += 1;
            churn_gen[k].store(generations[k], Ordering::Relaxed);
            node.recreate_pod(CHURNED[k]);
            churn_threads.push(short_client(
                &node.pods[CHURNED[k]],
                at(SHORT_PORT),
                Duration::from_millis(50),
                &clock,
                Some((churn_gen[k].clone(), generations[k])),
            ));
            next_churn += Duration::from_secs(20);
        }
        if now >= next_scrape {
            match scrape(&agent, started.elapsed()) {
                Ok(s) => {
                    if scrapes.len().is_multiple_of(12) {
                        println!(
                            "soak: {:>5.0} s: RSS {:.1} MiB, {} series ({} at most in one family), {} snapshot versions, {churned} pods replaced",
                            s.at.as_secs_f64(),
                            s.rss_kib as f64 / 1024.0,
                            s.series_total,
                            s.max_family_series,
                            version
                        );
                    }
                    scrapes.push(s);
                }
                Err(e) => failures.push(format!("scrape at {:?}: {e}", started.elapsed())),
            }
            next_scrape += Duration::from_secs(5);
        }
        if !agent.is_running() {
            failures.push("the agent exited during the run".into());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    clock.stop.store(true, Ordering::Relaxed);
    let mut ledger = Ledger::default();
    for h in ledgers {
        ledger.merge(h.join().unwrap_or_default());
    }
    let reused = reused.join().unwrap_or_default();
    let refused = refused.join().unwrap_or_default();
    for h in churn_threads.into_iter().chain([mixed_short]) {
        let _ = h.join();
    }
    for h in others.drain(..).chain(servers.drain(..)) {
        let _ = h.join();
    }
    // The last connections' records: the close linger, a poll or two.
    std::thread::sleep(Duration::from_secs(3));
    let (status, _) = agent.stop();
    let stderr = agent.stderr();
    let losses_line = stderr
        .lines()
        .find_map(|l| l.split("kernel losses: ").nth(1))
        .unwrap_or("(not reported)")
        .to_string();
    if !status.success() {
        failures.push(format!("the agent exited with {status}"));
    }

    // RSS after warm-up.
    let after: Vec<&Scrape> = scrapes.iter().filter(|s| s.at >= warm_up).collect();
    let minute = Duration::from_mins(1);
    let first: Vec<u64> = after
        .iter()
        .filter(|s| s.at < warm_up + minute)
        .map(|s| s.rss_kib)
        .collect();
    let end = scrapes.last().map(|s| s.at).unwrap_or_default();
    let last: Vec<u64> = after
        .iter()
        .filter(|s| s.at + minute > end)
        .map(|s| s.rss_kib)
        .collect();
    let (rss_first, rss_last) = (median(first), median(last));
    let rss_max = after.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let growth = rss_last as f64 / rss_first.max(1) as f64 - 1.0;
    println!(
        "soak: RSS after warm-up: {:.1} MiB (median of the first minute), {:.1} MiB (of the last), {:+.1}%; highest {:.1} MiB",
        rss_first as f64 / 1024.0,
        rss_last as f64 / 1024.0,
        growth * 100.0,
        rss_max as f64 / 1024.0
    );
    if rss_first == 0 || growth.abs() > 0.10 {
        failures.push(format!(
            "RSS not flat within 10% after warm-up ({:+.1}%)",
            growth * 100.0
        ));
    }

    let max_series = scrapes
        .iter()
        .map(|s| s.max_family_series)
        .max()
        .unwrap_or(0);
    println!(
        "soak: {} scrapes; at most {max_series} series in one edge family (budget {SERIES_BUDGET}), {} series in all at the end",
        scrapes.len(),
        scrapes.last().map_or(0, |s| s.series_total)
    );
    if max_series as usize > SERIES_BUDGET + 1 {
        failures.push(format!(
            "an edge family held {max_series} series, budget {SERIES_BUDGET}"
        ));
    }
    // Each loss series that was ever above 0, at its last value.
    let losses: std::collections::BTreeMap<String, f64> =
        scrapes.iter().flat_map(|s| s.losses.clone()).collect();
    println!("soak: kernel losses at shutdown: {losses_line}");
    for (series, value) in &losses {
        failures.push(format!("{series} = {value}"));
    }
    let zero_losses = losses_line
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .all(|(_, v)| v == "0");
    if !zero_losses {
        failures.push(format!("losses at shutdown: {losses_line}"));
    }

    // The sampled connections, each once.
    let checks = [
        (
            "short connections of one pod",
            &ledger,
            SHORT_PORT,
            "established",
        ),
        (
            "connections on reused client ports",
            &reused,
            SHORT_PORT,
            "established",
        ),
        ("refused attempts", &refused, CLOSED_PORT, "failed"),
    ];
    let results: Vec<_> = checks
        .iter()
        .map(|(what, ledger, port, outcome)| {
            let r = ledger.reconcile(at(*port), outcome, flow_log_records(&agent.flow_log));
            (what, r)
        })
        .collect();
    for (what, r) in &results {
        println!("soak: {what}: {}", r.summary());
        print!("{}", r.details());
        if r.made == 0 || r.missing > 0 || r.extra > 0 {
            failures.push(format!("{what}: {}", r.summary()));
        }
    }
    println!(
        "soak: {version} snapshot versions, {churned} pods replaced with their addresses reused"
    );
    if failures.is_empty() {
        println!("soak: PASSED ({minutes} min)");
    } else {
        for f in &failures {
            println!("soak: FAILED: {f}");
        }
        drop(agent);
        drop(node);
        std::process::exit(1);
    }
}
