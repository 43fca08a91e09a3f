//! The policy bench's `--whatif-prometheus DIR [--series N] [--days D]` (benches/policy.rs
//! owns the synthetic cluster, [`Cluster`]): `flowwatch policy whatif --prometheus
//! URL --since Dd` on the synthetic cluster against a real Prometheus (Debian's, with its
//! promtool) holding N workload edges (default 50,000) over D days (default 30), as the chart's
//! rules and the agents would have left them:
//!
//! * the edge history (`flowwatch:edge_connections:history`), one sample per edge an hour over
//!   the whole window, written by the chart's `flowwatch.history` group;
//! * the raw `flowwatch_connections_total` series at a 30 s scrape interval over the window's
//!   first hour and its last two: the only raw samples whatif reads when the history covers the
//!   window. The raw samples in between are not generated (4.3G samples at this scale); the
//!   raw path's cost is measured on the last two hours instead and scaled, in the same run.
//!
//! The TSDB is written by `promtool tsdb create-blocks-from openmetrics` into DIR (cleared
//! first), in blocks of 162 h; the OpenMetrics text of each is deleted once it is written.

use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::agent::{binary, free_port};

/// The synthetic cluster the history describes: `namespaces` namespaces `ns-NNN` of
/// `apps_per_ns` Deployments `app-K` each, and the writer of its snapshot and proposed change
/// (`DIR/snapshot.json`, `DIR/proposed.yaml`), which the policy bench owns.
#[derive(Clone, Copy)]
pub struct Cluster {
    pub namespaces: usize,
    pub apps_per_ns: usize,
    pub write_states: fn(&Path) -> std::io::Result<()>,
}

const SCRAPE_SECS: u64 = 30;
const HOUR: u64 = 3600;

/// The labels of edge `i` of `n`: every workload talks to up to `n / workloads` others, on
/// one of three ports; every 25th edge failed.
fn edge_labels(cluster: &Cluster, i: usize) -> String {
    let per_ns = cluster.apps_per_ns;
    let workloads = cluster.namespaces * per_ns;
    let (src, k) = (i % workloads, i / workloads);
    let dst = (src + 1 + k * 101) % workloads;
    let port = [8080, 5432, 9090][k % 3];
    let outcome = if i.is_multiple_of(25) {
        "failed"
    } else {
        "established"
    };
    let end = |w: usize| (w / per_ns, w % per_ns);
    let ((sn, sa), (dn, da)) = (end(src), end(dst));
    format!(
        "src_namespace=\"ns-{sn:03}\",src_kind=\"deployment\",src_workload=\"app-{sa}\",\
         dst_namespace=\"ns-{dn:03}\",dst_kind=\"deployment\",dst_workload=\"app-{da}\",\
         dst_port=\"{port}\",protocol=\"TCP\",outcome=\"{outcome}\""
    )
}

/// The span of each promtool run and of the blocks it writes: the window is generated a
/// block at a time so the OpenMetrics text on disk stays a few GB (30 days of 50,000 edges
/// is 12 GB of text). 162 h is one of the block ranges Prometheus's own compaction makes.
const BLOCK_SECS: u64 = 162 * HOUR;

/// Writes the OpenMetrics text of the samples in `[from, to)` of a window of `days` ending
/// at `now`: the raw series over the window's first hour and last two, the history hourly.
fn write_openmetrics(
    path: &Path,
    cluster: &Cluster,
    series: usize,
    (days, now): (u64, u64),
    (from, to): (u64, u64),
) -> std::io::Result<u64> {
    let start = now - days * 24 * HOUR;
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut samples = 0;
    // The counter of every edge grows by one connection per scrape interval.
    let count = |t: u64| (t - start) / SCRAPE_SECS + 1;
    let within = |t: &u64| (from..to).contains(t);
    writeln!(out, "# TYPE flowwatch_connections counter")?;
    let raw_times: Vec<u64> = (start..start + HOUR)
        .step_by(SCRAPE_SECS as usize)
        .chain((now - 2 * HOUR..now).step_by(SCRAPE_SECS as usize))
        .filter(within)
        .collect();
    let history_times: Vec<u64> = (start + HOUR..now)
        .step_by(HOUR as usize)
        .filter(within)
        .collect();
    for i in 0..series {
        let labels = edge_labels(cluster, i);
        let node = i % 50;
        for &t in &raw_times {
            writeln!(
                out,
                "flowwatch_connections_total{{job=\"flowwatch\",instance=\"node-{node}:9810\",{labels}}} {} {t}",
                count(t)
            )?;
            samples += 1;
        }
    }
    writeln!(out, "# TYPE flowwatch:edge_connections:history gauge")?;
    for i in 0..series {
        let labels = edge_labels(cluster, i);
        for &t in &history_times {
            writeln!(
                out,
                "flowwatch:edge_connections:history{{{labels}}} {} {t}",
                count(t)
            )?;
            samples += 1;
        }
    }
    writeln!(out, "# EOF")?;
    out.flush()?;
    Ok(samples)
}

/// Writes the TSDB of the window into `dir/data`, a block at a time. Returns the samples
/// written and the bytes of OpenMetrics text they took.
fn write_tsdb(dir: &Path, cluster: &Cluster, series: usize, days: u64, now: u64) -> (u64, u64) {
    let start = now - days * 24 * HOUR;
    let om = dir.join("block.om");
    let (mut samples, mut bytes) = (0, 0);
    let mut from = start - start % BLOCK_SECS;
    while from < now {
        let to = from + BLOCK_SECS;
        samples += write_openmetrics(&om, cluster, series, (days, now), (from, to))
            .expect("write the OpenMetrics text");
        bytes += std::fs::metadata(&om).map_or(0, |m| m.len());
        let status = Command::new("promtool")
            .args(["tsdb", "create-blocks-from", "openmetrics", "--quiet"])
            .arg(format!("--max-block-duration={}h", BLOCK_SECS / HOUR))
            .arg(&om)
            .arg(dir.join("data"))
            .status()
            .expect("spawn promtool");
        assert!(
            status.success(),
            "promtool tsdb create-blocks-from openmetrics: {status}"
        );
        from = to;
    }
    let _ = std::fs::remove_file(&om);
    (samples, bytes)
}

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Prometheus {
    /// User + system CPU seconds of the Prometheus process so far.
    fn cpu_secs(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.0.id())).unwrap_or_default();
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
        (ticks(11) + ticks(12)) / 100.0
    }
}

fn start_prometheus(dir: &Path) -> (Prometheus, String) {
    let port = free_port();
    std::fs::write(
        dir.join("prometheus.yml"),
        "global: {scrape_interval: 1h}\n",
    )
    .expect("write the config");
    let log = std::fs::File::create(dir.join("prometheus.log")).expect("log file");
    let child = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg("--storage.tsdb.retention.time=100d")
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn prometheus (Debian package prometheus; `cargo xtask setup`)");
    let prom = Prometheus(child);
    let deadline = Instant::now() + Duration::from_mins(5);
    while Instant::now() < deadline {
        let ready = std::net::TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
            s.write_all(b"GET /-/ready HTTP/1.0\r\n\r\n")?;
            let mut answer = String::new();
            std::io::Read::read_to_string(&mut s, &mut answer)?;
            Ok(answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"))
        });
        if ready.unwrap_or(false) {
            return (prom, format!("http://127.0.0.1:{port}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "prometheus not ready after 300 s; see {}",
        dir.join("prometheus.log").display()
    );
}

/// One `whatif` run: wall seconds, Prometheus and whatif CPU seconds, report lines,
/// would_break lines and stderr.
fn whatif(
    dir: &Path,
    prom: &Prometheus,
    url: &str,
    since: &str,
) -> (f64, f64, f64, usize, usize, String) {
    let cpu = prom.cpu_secs();
    let started = Instant::now();
    // GNU time's line (the whatif process's own CPU) is the last of stderr.
    let out = Command::new("/usr/bin/time")
        .args(["-f", "whatif-cpu %U %S"])
        .arg(binary())
        .args(["policy", "whatif", "--snapshot"])
        .arg(dir.join("snapshot.json"))
        .arg("--proposed")
        .arg(dir.join("proposed.yaml"))
        .args(["--prometheus", url, "--since", since, "-o", "json"])
        .output()
        .expect("run flowwatch policy whatif");
    let wall = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        matches!(out.status.code(), Some(0 | 4)),
        "whatif failed: {:?}\n{stderr}",
        out.status
    );
    let whatif_cpu: f64 = stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("whatif-cpu "))
        .map_or(f64::NAN, |t| {
            t.split_whitespace()
                .filter_map(|v| v.parse::<f64>().ok())
                .sum()
        });
    let lines = stdout.lines().count();
    let broken = stdout
        .lines()
        .filter(|l| l.contains("\"change\":\"would_break\""))
        .count();
    (
        wall,
        prom.cpu_secs() - cpu,
        whatif_cpu,
        lines,
        broken,
        stderr,
    )
}

/// `reuse`: measure again on the TSDB a previous run left in `dir` (written for the same
/// edges and days, less than an hour ago: the window moves with the clock).
pub fn run(dir: &Path, cluster: &Cluster, series: usize, days: u64, reuse: bool) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        / 60
        * 60;
    let stamp = dir.join("written-at");
    let written = std::fs::read_to_string(&stamp).ok();
    let fresh = written.as_deref().is_some_and(|w| {
        w.trim() == format!("{series} {days}")
            && std::fs::metadata(&stamp)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().unwrap_or_default() < Duration::from_hours(1))
    });
    if reuse && fresh {
        println!("reusing the TSDB in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(dir);
        (cluster.write_states)(dir).expect("write the snapshot and the proposed change");
        let t = Instant::now();
        let (samples, bytes) = write_tsdb(dir, cluster, series, days, now);
        println!(
            "wrote {series} edges over {days} days: {samples} samples ({:.1} GB of OpenMetrics, \
             promtool) in {:.0} s",
            bytes as f64 / 1e9,
            t.elapsed().as_secs_f64()
        );
        std::fs::write(&stamp, format!("{series} {days}\n")).expect("write the stamp");
    }
    let (prom, url) = start_prometheus(dir);

    let since = format!("{days}d");
    let mut walls = Vec::new();
    for round in 1..=3 {
        let (wall, cpu, own, lines, broken, stderr) = whatif(dir, &prom, &url, &since);
        assert!(
            !stderr.contains("holds no edge history"),
            "the history covers the window, yet whatif read raw samples:\n{stderr}"
        );
        println!(
            "round {round}: whatif --since {since}: {wall:.2} s wall, Prometheus {cpu:.2} s CPU, \
             whatif {own:.2} s CPU; {lines} edges judged, {broken} would_break"
        );
        walls.push(wall);
    }
    walls.sort_by(f64::total_cmp);
    println!(
        "median whatif --since {since} over {series} edges: {:.2} s wall (bar: < 30 s)",
        walls[1]
    );

    // The raw path on the newest two hours, scaled to the window (same run, same load).
    let (wall, cpu, _, lines, _, _) = whatif(dir, &prom, &url, "2h");
    let raw_samples = series as u64 * 2 * HOUR / SCRAPE_SECS;
    let window_samples = series as u64 * days * 24 * HOUR / SCRAPE_SECS;
    println!(
        "raw path, whatif --since 2h: {wall:.2} s wall, Prometheus {cpu:.2} s CPU for {raw_samples} samples \
         ({lines} edges); over {days} days of raw samples ({window_samples}) that is about {:.0} s of Prometheus CPU",
        cpu * window_samples as f64 / raw_samples as f64
    );
}
