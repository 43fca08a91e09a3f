//! The HTTP edge under the floods of issue 17: 500 clients that request `/metrics` and never
//! read, 2,000 connections held open without a request, 200 concurrent scrapers. The server is
//! the agent's (`flowwatch::http::serve`, default limits) with a registry of 6,000 edges fed
//! through the metrics API (about 7 MB of exposition), run in a child process (this binary,
//! re-executed) so that its RSS is the server's alone.
//!
//! `cargo bench -p flowwatch --bench http_flood` (or `cargo xtask bench http_flood`). Prints a
//! table for docs/benchmarks.md and exits non-zero if a bound of the issue is missed: RSS
//! within 2x the idle figure, `/healthz` within 100 ms, every scrape answered in full. The peak
//! of each flood is the kernel's high-water mark (`VmHWM`, reset before the flood), the idle
//! figure the RSS after three whole scrapes; after each, the server prints its allocator's
//! figures on stderr (heaps in use and free, mapped blocks, exposition bytes alive).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowwatch::http::HttpLimits;
use flowwatch_testkit::http_flood;
use http_flood::{
    concurrent_scrapes, get, held, non_readers, raise_fd_limit, reset_peak_rss,
    slowest_health_probe, status_kib, wait_closed, Server,
};

const SERVER_ENV: &str = "FLOWWATCH_HTTP_FLOOD_SERVER";
const EDGES: usize = 6_000;
const MIB: f64 = 1024.0 * 1024.0;

fn serve(edges: usize) {
    raise_fd_limit();
    let server = Server::start(edges, HttpLimits::default());
    println!("{}", server.addr);
    // Until the parent closes our stdin; a line asks for the allocator's figures.
    let mut line = String::new();
    while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
        // SAFETY: mallinfo2 only reads glibc's counters.
        let m = unsafe { libc::mallinfo2() };
        // Where the memory is: glibc's heaps (in use and free but kept) and mapped blocks.
        eprintln!(
            "server {}: heaps {} KiB ({} KiB in use, {} KiB free), mapped {} KiB in {} blocks; \
             exposition {} KiB alive, {} encodings so far",
            line.trim(),
            m.arena / 1024,
            m.uordblks / 1024,
            m.fordblks / 1024,
            m.hblkhd / 1024,
            m.hblks,
            server.state.exposition().bytes_in_flight() / 1024,
            server.state.exposition().encodings()
        );
        line.clear();
    }
}

/// `/healthz` probed every 50 ms on a thread while a phase runs; the slowest answer.
fn probe_health(
    addr: String,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<Duration, String>> {
    std::thread::spawn(move || {
        let mut slowest = Duration::ZERO;
        while !stop.load(Ordering::Relaxed) {
            slowest = slowest.max(slowest_health_probe(&addr, 1)?);
            std::thread::sleep(Duration::from_millis(30));
        }
        Ok(slowest)
    })
}

struct Row {
    phase: &'static str,
    peak_mib: f64,
    slowest_health: Result<Duration, String>,
    /// Whole scrape answers, of how many.
    scrapes: (usize, usize),
    note: String,
}

fn main() {
    if let Ok(edges) = std::env::var(SERVER_ENV) {
        serve(edges.parse().unwrap_or(EDGES));
        return;
    }
    raise_fd_limit();
    let mut child = Command::new(std::env::current_exe().expect("this binary"))
        .env(SERVER_ENV, EDGES.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the server process");
    let pid = child.id();
    let mut addr = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut addr)
        .expect("the server's address");
    let addr = addr.trim().to_string();

    // Idle: after a few whole scrapes (the steady state of a scraped agent).
    let mut size = 0;
    for _ in 0..3 {
        let (status, len, _) = get(&addr, "/metrics", Duration::from_secs(30)).expect("scrape");
        assert_eq!(status, 200);
        size = len;
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_secs(1));
    let idle_mib = status_kib(&pid.to_string(), "VmRSS:") as f64 / 1024.0;
    {
        use std::io::Write;
        if let Some(stdin) = child.stdin.as_mut() {
            let _ = writeln!(stdin, "idle");
        }
    }
    let mut rows = Vec::new();

    let mut phase =
        |name: &'static str, run: &mut dyn FnMut() -> ((usize, usize), String)| -> Row {
            reset_peak_rss(&pid.to_string());
            let stop = Arc::new(AtomicBool::new(false));
            let health = probe_health(addr.clone(), stop.clone());
            let (scrapes, note) = run();
            stop.store(true, Ordering::Relaxed);
            {
                use std::io::Write;
                if let Some(stdin) = child.stdin.as_mut() {
                    let _ = writeln!(stdin, "after {name}");
                }
            }
            let slowest_health = health
                .join()
                .unwrap_or_else(|_| Err("probe panicked".into()));
            Row {
                phase: name,
                peak_mib: status_kib(&pid.to_string(), "VmHWM:") as f64 / 1024.0,
                slowest_health,
                scrapes,
                note,
            }
        };

    rows.push(phase(
        "500 clients request /metrics and never read",
        &mut || {
            let start = Instant::now();
            let mut clients = non_readers(&addr, 500);
            let opened = clients.len();
            let failures = concurrent_scrapes(&addr, 4, 5);
            let closed = wait_closed(&mut clients, opened, Duration::from_secs(30));
            (
                (20 - failures.len(), 20),
                format!(
                "{opened} opened; {closed} of them dropped (write stall timeout) within {:.0} s",
                start.elapsed().as_secs_f64()
            ),
            )
        },
    ));
    rows.push(phase("2,000 connections held (1,000 silent, 1,000 half a request)", &mut || {
        let start = Instant::now();
        let mut silent = held(&addr, 1_000, false);
        let mut partial = held(&addr, 1_000, true);
        let opened = silent.len() + partial.len();
        let failures = concurrent_scrapes(&addr, 4, 5);
        let closed_at_once = wait_closed(&mut silent, 1_000, Duration::ZERO)
            + wait_closed(&mut partial, 1_000, Duration::ZERO);
        let closed = wait_closed(&mut silent, 1_000, Duration::from_secs(30))
            + wait_closed(&mut partial, 1_000, Duration::from_secs(30));
        (
            (20 - failures.len(), 20),
            format!(
                "{opened} opened; {closed_at_once} closed when checked right after opening, {closed} within {:.0} s",
                start.elapsed().as_secs_f64()
            ),
        )
    }));
    rows.push(phase(
        "200 concurrent scrapers, 3 scrapes each",
        &mut || {
            let start = Instant::now();
            let failures = concurrent_scrapes(&addr, 200, 3);
            (
                (600 - failures.len(), 600),
                format!("in {:.1} s", start.elapsed().as_secs_f64()),
            )
        },
    ));

    drop(child.stdin.take());
    let _ = child.wait();

    println!(
        "\nexposition: {:.1} MiB ({EDGES} edges); server RSS idle: {idle_mib:.0} MiB\n",
        size as f64 / MIB
    );
    println!(
        "| flood | server peak RSS | vs idle | slowest /healthz | scrapes meanwhile | notes |"
    );
    println!("|---|---|---|---|---|---|");
    let mut ok = true;
    for r in &rows {
        let ratio = r.peak_mib / idle_mib;
        let health = match &r.slowest_health {
            Ok(d) => format!("{:.1} ms", d.as_secs_f64() * 1e3),
            Err(e) => format!("failed: {e}"),
        };
        ok &= ratio <= 2.0
            && r.slowest_health
                .as_ref()
                .is_ok_and(|d| *d <= Duration::from_millis(100))
            && r.scrapes.0 == r.scrapes.1;
        println!(
            "| {} | {:.0} MiB | {ratio:.2}x | {health} | {} of {} whole | {} |",
            r.phase, r.peak_mib, r.scrapes.0, r.scrapes.1, r.note
        );
    }
    if !ok {
        eprintln!("a bound of issue 17 was missed (RSS <= 2x idle, /healthz <= 100 ms, every scrape whole)");
        std::process::exit(1);
    }
}
