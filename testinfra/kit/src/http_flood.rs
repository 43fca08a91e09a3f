//! Floods of HTTP clients against the agent's HTTP edge (`flowwatch::http::serve`), with the
//! agent's metrics registry filled through its public API: clients that request `/metrics` and
//! never read, connections held open without a request, and concurrent scrapers. Shared by the
//! `http_exhaustion` test (small numbers) and the `http_flood` bench (the figures).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowwatch::http::{self, HttpLimits, HttpState, Readiness};
use flowwatch::metrics::{
    CniPresence, EdgeEnd, FlowEdge, Metrics, MetricsConfig, TierLabel, Verdict, WorkloadKind,
};
use flowwatch::model::{Counters, Outcome, Protocol};
use tokio_util::sync::CancellationToken;

/// The process's resident memory, in bytes.
pub fn rss_bytes() -> u64 {
    status_kib("self", "VmRSS:") * 1024
}

/// A field of `/proc/<pid>/status` given in kB (`VmRSS:`, `VmHWM:`), in KiB.
pub fn status_kib(pid: &str, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("a status field")
}

/// Starts a new peak: the kernel's high-water mark of resident memory (`VmHWM:`) is reset to
/// the current RSS (`/proc/<pid>/clear_refs`, value 5), so a later `VmHWM:` is the peak of
/// what happened since, short spikes included (sampling `VmRSS:` would miss them).
pub fn reset_peak_rss(pid: &str) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("resetting VmHWM");
}

/// Raises this process's soft descriptor limit to the hard one (clients and server share it).
pub fn raise_fd_limit() -> u64 {
    http::raise_fd_limit().expect("raising RLIMIT_NOFILE")
}

fn edge(i: usize) -> FlowEdge {
    FlowEdge {
        src: EdgeEnd::workload(
            format!("team-{:03}", i % 100),
            format!("service-{:04}", i / 100),
            WorkloadKind::Deployment,
        ),
        dst: EdgeEnd::workload(
            format!("platform-{}", i % 10),
            format!("api-{}", i % 7),
            WorkloadKind::Deployment,
        ),
        dst_port: 8080,
        protocol: Protocol::Tcp,
        verdict: Verdict::Allowed,
        egress: Verdict::Uncovered,
        ingress: Verdict::Allowed,
        tier: TierLabel::NetworkPolicy,
        cni_policy_present: CniPresence::No,
    }
}

/// The agent's HTTP edge on a loopback port, on a runtime shaped like the agent's (one worker),
/// with `edges` distinct edges recorded (each gives a series in several families).
pub struct Server {
    pub rt: tokio::runtime::Runtime,
    pub addr: String,
    pub state: HttpState,
    shutdown: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Server {
    pub fn start(edges: usize, limits: HttpLimits) -> Server {
        // The allocator as the agent's main sets it (large blocks mapped, two arenas).
        flowwatch::allocator::tune();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let (metrics, registry) = Metrics::new(&MetricsConfig {
            max_series_per_family: 1_000_000,
            max_series_per_namespace: 1_000_000,
            ..MetricsConfig::default()
        })
        .expect("metrics config");
        for i in 0..edges {
            let traffic = Counters {
                fwd_packets: 3,
                fwd_bytes: 300,
                rev_packets: 2,
                rev_bytes: 2_000,
            };
            metrics.record_flow(&edge(i), Some(Outcome::Established), &traffic, 1);
        }
        let state = HttpState::new(Arc::new(registry), metrics, Readiness::new());
        let listener = rt
            .block_on(async { http::bind("127.0.0.1:0".parse().unwrap()) })
            .expect("bind loopback");
        let addr = listener.local_addr().unwrap().to_string();
        let shutdown = CancellationToken::new();
        rt.spawn(http::serve_with_limits(
            listener,
            state.clone(),
            limits,
            shutdown.clone(),
        ));
        Server {
            rt,
            addr,
            state,
            shutdown,
        }
    }
}

/// One complete GET: status, body length, and how long it took. `Connection: close`. The body
/// is counted, not kept: the scrapers run in the measuring process of `http_exhaustion`, whose
/// RSS must be the server's growth, not megabytes of answers held by its clients.
pub fn get(addr: &str, path: &str, timeout: Duration) -> Result<(u16, usize, Duration), String> {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout)).ok();
    s.set_write_timeout(Some(timeout)).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut block = vec![0u8; 64 * 1024];
    let mut head = Vec::new();
    let mut body_len = 0;
    loop {
        let n = match s.read(&mut block) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("read after {} bytes: {e}", head.len() + body_len)),
        };
        if body_len > 0 || head.ends_with(b"\r\n\r\n") {
            body_len += n;
            continue;
        }
        head.extend_from_slice(&block[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            body_len = head.len() - (end + 4);
            head.truncate(end + 4);
        } else if head.len() > 64 * 1024 {
            return Err("no header end in 64 KiB".into());
        }
    }
    let took = start.elapsed();
    if !head.ends_with(b"\r\n\r\n") {
        return Err(format!("no header end in {} bytes", head.len()));
    }
    let head = String::from_utf8_lossy(&head);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line: {head}"))?;
    if let Some(len) = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("content-length:")
            .and_then(|v| v.trim().parse::<usize>().ok())
    }) {
        if len != body_len {
            return Err(format!("body of {body_len} bytes, announced {len}"));
        }
    }
    Ok((status, body_len, took))
}

/// A connection whose receive buffer is 4 KiB (set before connecting, so the window the
/// server sees stays small): what such a client does not read stays with the server instead of
/// being absorbed by the kernel's loopback buffers.
pub fn connect_small_window(addr: &str) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let addr: std::net::SocketAddrV4 = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{e}")))?;
    // SAFETY: a new socket owned by the TcpStream below (or closed on error); the sockaddr_in
    // is fully initialised and its size passed.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let size: libc::c_int = 4096;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw const size).cast::<libc::c_void>(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: addr.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*addr.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        if libc::connect(
            fd,
            (&raw const sin).cast::<libc::sockaddr>(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

/// Clients that request `/metrics` and never read the answer (their sockets stay open), with
/// small receive windows.
pub fn non_readers(addr: &str, n: usize) -> Vec<TcpStream> {
    (0..n)
        .filter_map(|_| {
            let mut s = connect_small_window(addr).ok()?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                .ok()?;
            Some(s)
        })
        .collect()
}

/// Connections that send nothing (`partial: false`) or half a request head and then nothing.
pub fn held(addr: &str, n: usize, partial: bool) -> Vec<TcpStream> {
    (0..n)
        .filter_map(|_| {
            let mut s = TcpStream::connect(addr).ok()?;
            if partial {
                s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").ok()?;
            }
            Some(s)
        })
        .collect()
}

/// Whether the server closed this connection (reading gives end of file or a reset once what
/// it had sent is drained). Drains without blocking.
pub fn closed_by_server(s: &mut TcpStream) -> bool {
    s.set_nonblocking(true).ok();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// Counts the connections of `conns` the server has closed, polling until `want` are or
/// `timeout` passes.
pub fn wait_closed(conns: &mut [TcpStream], want: usize, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    let mut closed = vec![false; conns.len()];
    loop {
        for (s, c) in conns.iter_mut().zip(closed.iter_mut()) {
            if !*c {
                *c = closed_by_server(s);
            }
        }
        let n = closed.iter().filter(|c| **c).count();
        if n >= want || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The slowest of `n` sequential `/healthz` probes.
pub fn slowest_health_probe(addr: &str, n: usize) -> Result<Duration, String> {
    let mut slowest = Duration::ZERO;
    for _ in 0..n {
        let (status, _, took) = get(addr, "/healthz", Duration::from_secs(5))?;
        if status != 200 {
            return Err(format!("/healthz answered {status}"));
        }
        slowest = slowest.max(took);
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(slowest)
}

/// `n` scrapers scraping `/metrics` `rounds` times each, at once; the failures, if any.
pub fn concurrent_scrapes(addr: &str, n: usize, rounds: usize) -> Vec<String> {
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let addr = addr.to_string();
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                for _ in 0..rounds {
                    match get(&addr, "/metrics", Duration::from_secs(30)) {
                        Ok((200, len, _)) if len > 0 => {}
                        Ok((status, len, _)) => failures.push(format!("{status}, {len} bytes")),
                        Err(e) => failures.push(e),
                    }
                }
                failures
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().unwrap_or_else(|_| vec!["scraper panicked".into()]))
        .collect()
}

/// `/healthz` probed on a thread of its own every `every` while a flood runs, each probe's
/// latency kept (the bar holds for every probe, not a sample of them).
pub struct HealthProbes {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Result<Vec<(Duration, Duration)>, String>>,
}

impl HealthProbes {
    pub fn start(addr: &str, every: Duration) -> HealthProbes {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let (addr, flag) = (addr.to_string(), stop.clone());
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            let mut took = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let at = start.elapsed();
                match get(&addr, "/healthz", Duration::from_secs(5)) {
                    Ok((200, _, t)) => took.push((at, t)),
                    Ok((status, _, _)) => {
                        return Err(format!("probe at {at:?}: /healthz answered {status}"))
                    }
                    Err(e) => return Err(format!("probe at {at:?}: {e}")),
                }
                std::thread::sleep(every);
            }
            Ok(took)
        });
        HealthProbes { stop, thread }
    }

    /// Stops probing; every probe's latency, or the first probe that failed.
    pub fn finish(self) -> Result<Vec<Duration>, String> {
        self.finish_timed()
            .map(|probes| probes.into_iter().map(|(_, took)| took).collect())
    }

    /// As `finish`, each latency with when its probe started (since `start`).
    pub fn finish_timed(self) -> Result<Vec<(Duration, Duration)>, String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .join()
            .unwrap_or_else(|_| Err("the prober panicked".into()))
    }
}

/// The slowest and the 99th percentile of `took` (zero when empty).
pub fn max_and_p99(took: &[Duration]) -> (Duration, Duration) {
    let mut sorted = took.to_vec();
    sorted.sort();
    let max = sorted.last().copied().unwrap_or_default();
    let p99 = sorted
        .get((sorted.len() * 99).div_ceil(100).saturating_sub(1))
        .copied()
        .unwrap_or_default();
    (max, p99)
}

/// The 1-minute load average (for the record next to latencies measured on a shared machine).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The kernel's send queues of the established TCP connections whose local port is `port`
/// (this network namespace, IPv4: `/proc/net/tcp`'s `tx_queue`): how many have bytes queued,
/// and the bytes in all and in the largest. Socket memory is the kernel's, not the process's
/// RSS, but the pod's cgroup is charged for it.
pub fn send_queues(port: u16) -> (usize, u64, u64) {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let mut out = (0, 0, 0);
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(state), Some(queues)) = (f.get(1), f.get(3), f.get(4)) else {
            continue;
        };
        let local_port = local
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
        let tx = queues
            .split_once(':')
            .and_then(|(tx, _)| u64::from_str_radix(tx, 16).ok())
            .unwrap_or(0);
        if local_port == Some(port) && *state == "01" && tx > 0 {
            out.0 += 1;
            out.1 += tx;
            out.2 = out.2.max(tx);
        }
    }
    out
}
