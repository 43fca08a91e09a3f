//! The agent's HTTP edge cannot be exhausted by its clients (issue 17, item 1), over real
//! loopback sockets against `flowwatch::http`'s server with an exposition of a few megabytes,
//! scraped by a real Prometheus all along:
//!
//! - clients that request `/metrics` and never read do not grow memory per client (the
//!   exposition is shared, not copied) and are dropped after the write stall timeout; with
//!   concurrent scrapers on top, the process's peak RSS stays within twice its idle figure
//!   (idle: the same exposition loaded and scraped by Prometheus). Before the allocator settings
//!   (`flowwatch::allocator`) and the budget of two encodings, it peaked at 31 MiB for 15 idle;
//!   after, 23 for 14;
//! - connections held open without a request, or with half a request, are bounded in number
//!   (the stalest are closed) and in time (the header timeout);
//! - slow clients of every shape of the campaign (headers a byte at a time, a trickled body,
//!   pipelined answers never read) are closed within the header and write stall timeouts;
//! - all the while, `/healthz` is probed every 20 ms and *every* probe answers within 100 ms,
//!   and Prometheus's own scrapes (every 2 s) all succeed (`up == 1`) with every sample.
//!
//! About the 100 ms on a shared machine: a probe's time includes the scheduling of the probing
//! thread and of the server's one worker on 2 cores shared with other builds; the test prints
//! the load average beside the slowest probe and the 99th percentile. The bound is asserted as
//! is, with no margin: a probe over it is a failure to look at, not noise to widen the bound for.
//!
//! The figures (500 non-readers, 2,000 held connections, 200 scrapers) are measured
//! against the release agent by `cargo xtask bench agent_http_flood` (docs/benchmarks.md) and
//! against the server alone by `cargo xtask bench http_flood`; the numbers here are smaller for
//! test time, and each assertion failed against the server before the fix.
//! One test per process state: they measure the process's memory, so they run one at a time.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use flowwatch::http::HttpLimits;
use flowwatch_testkit::http_flood;
use flowwatch_testkit::prometheus::{self, Job, Prometheus};
use http_flood::*;

/// The tests measure this process's RSS and descriptors: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const MB: u64 = 1024 * 1024;

/// Non-reading clients in the first test: enough for 92 MB before the fix.
const NON_READERS: usize = 40;
/// Concurrent scrapers (3 scrapes each) while they hold their answers: each burst of them
/// makes an encoding, on whichever blocking thread; before the allocator settings, the freed
/// encodings stayed in the threads' malloc arenas.
const SCRAPERS: usize = 32;
/// Prometheus's scrape interval (and timeout) for the server: a few megabytes to fetch and
/// ingest on a loaded machine take more than the 900 ms of the support's default.
const SCRAPE_EVERY: Duration = Duration::from_secs(2);
/// How often `/healthz` is probed during a flood.
const PROBE_EVERY: Duration = Duration::from_millis(20);

/// A real Prometheus scraping the server, once it has scraped it successfully; `None` (the
/// test skips) only outside CI when Prometheus is not installed.
fn prometheus_scraping(addr: &str) -> Option<Prometheus> {
    if !flowwatch_testkit::privileged::require(
        "Prometheus scraping the HTTP edge",
        prometheus::available(),
    ) {
        return None;
    }
    let prom = Prometheus::start(
        &[Job::new("flowwatch", &[addr]).interval(SCRAPE_EVERY)],
        &[],
    );
    prom.wait_for("up{job=\"flowwatch\"} == 1", Duration::from_secs(30), |s| {
        !s.is_empty()
    });
    Some(prom)
}

/// Prometheus's scrapes since `since` all succeeded with every sample (`samples`: what one
/// scrape brought before the flood), and there were as many as the interval allows.
fn assert_prometheus_kept_scraping(prom: &Prometheus, since: Instant, samples: u64) {
    // The scrape in progress when the flood ended lands.
    std::thread::sleep(SCRAPE_EVERY + Duration::from_millis(500));
    let window = since.elapsed();
    let scrapes = prom.scrapes_over("flowwatch", window).unwrap();
    eprintln!("Prometheus over the last {window:?}: {scrapes:?} ({samples} samples a scrape)");
    assert_eq!(
        scrapes.failed,
        0,
        "Prometheus's scrapes failed: {scrapes:?}\n{}",
        prom.logs()
    );
    let expected = window.as_secs() / SCRAPE_EVERY.as_secs();
    assert!(
        scrapes.attempts + 2 >= expected,
        "{} scrapes in {window:?}, every {SCRAPE_EVERY:?}",
        scrapes.attempts
    );
    assert_eq!(
        scrapes.fewest_samples, samples,
        "a scrape brought fewer samples"
    );
}

/// The samples of one scrape of the server, as Prometheus counts them.
fn samples_per_scrape(prom: &Prometheus) -> u64 {
    let s = prom.wait_for(
        "scrape_samples_scraped{job=\"flowwatch\"}",
        Duration::from_secs(10),
        |s| s.len() == 1,
    );
    s[0].value as u64
}

/// Every probe within 100 ms; prints the slowest and the 99th percentile.
fn assert_health_fast(probes: Result<Vec<Duration>, String>, what: &str) {
    let took = probes.unwrap_or_else(|e| panic!("{what}: a /healthz probe failed: {e}"));
    let (max, p99) = max_and_p99(&took);
    eprintln!(
        "{what}: {} /healthz probes, slowest {max:?}, p99 {p99:?} (load average {})",
        took.len(),
        load_average()
    );
    assert!(took.len() >= 10, "{what}: only {} probes", took.len());
    assert!(
        max < Duration::from_millis(100),
        "{what}: /healthz took {max:?} (p99 {p99:?}, load average {})",
        load_average()
    );
}

#[test]
fn non_reading_clients_share_one_exposition_and_are_dropped_when_they_stall() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    raise_fd_limit();
    let limits = HttpLimits {
        write_stall_timeout: Duration::from_secs(15),
        ..HttpLimits::default()
    };
    let server = Server::start(3_000, limits);
    // Warm up: one full scrape (allocator pools, the first encoding).
    let (status, size, _) = get(&server.addr, "/metrics", Duration::from_secs(30)).unwrap();
    assert_eq!(status, 200);
    assert!(
        size > 2 * MB as usize,
        "exposition of {size} bytes is too small to test with"
    );
    let Some(prom) = prometheus_scraping(&server.addr) else {
        return;
    };
    let samples = samples_per_scrape(&prom);
    // Idle: the exposition loaded and scraped (by Prometheus, every 2 s).
    let idle = rss_bytes();
    // The peak from here on (short spikes included), against the idle figure.
    reset_peak_rss("self");
    let flood = Instant::now();
    let probes = HealthProbes::start(&server.addr, PROBE_EVERY);

    // One after another, each after the previous answer was encoded (before the shared
    // encodings, each got an encoding of its own and held what the kernel did not take: about
    // 2.3 MB per client here, 92 MB for 40 clients; the issue saw 7 MB per client).
    let mut clients = Vec::new();
    for _ in 0..NON_READERS {
        clients.extend(non_readers(&server.addr, 1));
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(clients.len(), NON_READERS);
    std::thread::sleep(Duration::from_millis(500));
    // What the kernel queues for them is bounded too (the send buffer): left to autotuning,
    // each held up to 2.7 MiB of socket memory (108 MiB for 40), charged to the pod's cgroup.
    let port: u16 = server.addr.rsplit_once(':').unwrap().1.parse().unwrap();
    let (queued_sockets, queued, largest) = send_queues(port);
    let per_socket = 2 * limits.send_buffer_bytes as u64;
    eprintln!(
        "kernel send queues: {queued_sockets} sockets, {} KiB in all, {} KiB the largest",
        queued / 1024,
        largest / 1024
    );
    assert!(
        largest <= per_socket && queued <= NON_READERS as u64 * per_socket,
        "send queues of {} KiB (largest {} KiB) for {NON_READERS} non-readers",
        queued / 1024,
        largest / 1024
    );
    // While they hold their answers, scrapers get full answers.
    let failures = concurrent_scrapes(&server.addr, SCRAPERS, 3);
    let peak = status_kib("self", "VmHWM:") * 1024;
    eprintln!(
        "exposition {} KiB; RSS idle {} MiB, peak with {NON_READERS} non-readers and {SCRAPERS} scrapers \
         {} MiB; {} encodings; {} MiB in flight",
        size / 1024,
        idle / MB,
        peak / MB,
        server.state.exposition().encodings(),
        server.state.exposition().bytes_in_flight() as u64 / MB,
    );
    // The bar: RSS within twice its idle figure (idle: the same exposition, scraped).
    assert!(
        peak <= 2 * idle,
        "RSS peaked at {} MiB with {NON_READERS} non-reading clients and {SCRAPERS} scrapers: more than \
         twice the idle {} MiB",
        peak / MB,
        idle / MB
    );
    assert!(failures.is_empty(), "scrapes failed: {failures:?}");
    assert!(
        server.state.exposition().bytes_in_flight()
            <= flowwatch::http::bytes_in_flight_budget(size) + size,
        "bytes in flight beyond the budget"
    );

    // The stall timeout drops them all, and their answers are freed.
    let opened = clients.len();
    let closed = wait_closed(&mut clients, opened, Duration::from_secs(25));
    assert_eq!(closed, opened, "non-reading clients still connected");
    // What stays is the newest encoding of each format asked for: the text format of this
    // test's clients and Prometheus's OpenMetrics (about the same size); before the fix,
    // each non-reader's own copy stayed until it was dropped.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while server.state.exposition().bytes_in_flight() > 2 * size + size / 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} bytes still in flight after the clients were dropped",
            server.state.exposition().bytes_in_flight()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // All along: every /healthz probe within 100 ms, every Prometheus scrape whole.
    assert_health_fast(probes.finish(), "non-readers and scrapers");
    assert_prometheus_kept_scraping(&prom, flood, samples);
}

#[test]
fn held_connections_are_bounded_and_timed_out_and_health_still_answers() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    raise_fd_limit();
    let limits = HttpLimits {
        max_connections: 64,
        header_read_timeout: Duration::from_secs(2),
        ..HttpLimits::default()
    };
    let server = Server::start(10, limits);
    let Some(prom) = prometheus_scraping(&server.addr) else {
        return;
    };
    let samples = samples_per_scrape(&prom);
    let flood = Instant::now();
    let probes = HealthProbes::start(&server.addr, PROBE_EVERY);
    let mut silent = held(&server.addr, 150, false);
    let mut trickling = held(&server.addr, 150, true);
    assert_eq!(silent.len() + trickling.len(), 300);
    // The cap: all but 64 of the 300 were closed to make room (the newest stay).
    std::thread::sleep(Duration::from_millis(300));
    let failures = concurrent_scrapes(&server.addr, 20, 3);
    assert!(failures.is_empty(), "scrapes failed: {failures:?}");
    let closed_now = wait_closed(&mut silent, 150, Duration::ZERO)
        + wait_closed(&mut trickling, 150, Duration::ZERO);
    assert!(
        closed_now >= 300 - 64,
        "only {closed_now} of 300 held connections closed with a cap of 64"
    );
    // The header timeout: the rest are closed within it.
    let closed = wait_closed(&mut silent, 150, Duration::from_secs(6))
        + wait_closed(&mut trickling, 150, Duration::from_secs(6));
    assert_eq!(closed, 300, "held connections outlived the header timeout");
    assert_health_fast(probes.finish(), "held connections");
    assert_prometheus_kept_scraping(&prom, flood, samples);
}

#[test]
fn a_kept_alive_idle_connection_is_closed_after_the_idle_timeout() {
    use std::io::{Read, Write};
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let limits = HttpLimits {
        header_read_timeout: Duration::from_secs(1),
        ..HttpLimits::default()
    };
    let server = Server::start(1, limits);
    let mut s = std::net::TcpStream::connect(&server.addr).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Kept alive, then idle: closed after about a second.
    let closed = wait_closed(std::slice::from_mut(&mut s), 1, Duration::from_secs(4));
    assert_eq!(closed, 1, "an idle kept-alive connection stayed open");
}

/// The slow-client shapes of the campaign, each bounded by a timeout: headers trickled
/// a byte at a time (slowloris: the header timeout is a deadline, not an idle time), a body
/// announced and trickled, and pipelined requests whose answers are never read (the write
/// stall timeout).
#[test]
fn slow_clients_of_every_shape_are_closed_within_their_timeouts() {
    use std::io::Write;
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let limits = HttpLimits {
        header_read_timeout: Duration::from_secs(2),
        write_stall_timeout: Duration::from_secs(2),
        ..HttpLimits::default()
    };
    let server = Server::start(1_000, limits);
    let connect = || {
        let s = std::net::TcpStream::connect(&server.addr).unwrap();
        s.set_nodelay(true).unwrap();
        s
    };
    let probes = HealthProbes::start(&server.addr, PROBE_EVERY);
    let start = Instant::now();
    // Slowloris: a byte every 100 ms keeps each connection "making progress" for 4 s.
    let mut loris: Vec<_> = (0..20).map(|_| connect()).collect();
    for s in &mut loris {
        s.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
    }
    // A body of 1 MB announced, a byte at a time.
    let mut bodies: Vec<_> = (0..10).map(|_| connect()).collect();
    for s in &mut bodies {
        s.write_all(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
            .unwrap();
    }
    // Pipelined scrapes, never read (small receive window: the answers stay with the server).
    let mut pipelined: Vec<_> = (0..5)
        .map(|_| {
            let mut s = connect_small_window(&server.addr).unwrap();
            s.write_all(&b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(1_000))
                .unwrap();
            s
        })
        .collect();
    let mut trickled = 0;
    while start.elapsed() < Duration::from_secs(4) {
        for s in loris.iter_mut().chain(bodies.iter_mut()) {
            // An error: the server already closed it.
            let _ = s.write_all(b"x");
        }
        trickled += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(trickled >= 20);
    // Header deadline 2 s: every slowloris closed although it never stopped sending.
    let loris_closed = wait_closed(&mut loris, 20, Duration::from_secs(2));
    assert_eq!(
        loris_closed, 20,
        "slowloris connections outlived the header timeout"
    );
    let bodies_closed = wait_closed(&mut bodies, 10, Duration::from_secs(2));
    assert_eq!(bodies_closed, 10, "trickled bodies kept their connections");
    // Write stall 2 s, measured from the client's side (which reads nothing until now).
    let pipelined_closed = wait_closed(&mut pipelined, 5, Duration::from_secs(10));
    assert_eq!(
        pipelined_closed, 5,
        "unread pipelined answers kept their connections"
    );
    assert_health_fast(probes.finish(), "slow clients");
}

/// A probe that arrives in the middle of a burst of more connections than the cap is served,
/// not evicted before it could send its request (it looked as stale as the held connections
/// around it; once in six runs of the release bench a probe was reset).
#[test]
fn a_probe_amid_a_burst_beyond_the_cap_is_answered() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    raise_fd_limit();
    let limits = HttpLimits {
        max_connections: 32,
        ..HttpLimits::default()
    };
    let server = Server::start(1, limits);
    let mut failures = Vec::new();
    for round in 0..20 {
        let addr = server.addr.clone();
        let burst = std::thread::spawn(move || held(&addr, 400, false));
        // Amid the burst: sequential probes until it is over.
        while !burst.is_finished() {
            if let Err(e) = get(&server.addr, "/healthz", Duration::from_secs(5)) {
                failures.push(format!("round {round}: {e}"));
            }
        }
        drop(burst.join().expect("burst thread"));
    }
    assert!(
        failures.is_empty(),
        "probes failed amid bursts: {failures:?}"
    );
}
