//! Capture overhead, measured in one run on this machine (`cargo xtask bench capture`).
//!
//! Two namespace pods on a bridge; a client pod opens short TCP connections (1-byte request,
//! 1-byte answer, close) to a server pod as fast as it can, in rounds that alternate runs
//! without the agent with runs of it as deployed (default poll, no flow log) and runs of the
//! hooks only (every program attached but returning at once: the floor); then with a flow log
//! and with the kernel programs only (agent stopped), each followed by a run without; then paced
//! at a fixed rate with the agent and its flow log.
//! Reported:
//! * the connection rates; each round's ratio against the runs without on either side of it,
//!   and their median and range;
//! * the agent's CPU per connection flat out (user and system) and its context switches, and in
//!   the paced run its CPU seconds per 1,000 connections and share of one core per 1,000
//!   connections/s (/proc/<pid>/stat), its peak RSS (VmHWM);
//! * events and flows lost (kernel loss counters from the agent's shutdown line, and flow
//!   records written vs. connections made);
//! * the BPF programs' own run time per call (kernel.bpf_stats_enabled, switched on for the paced
//!   run and one more flat-out run only).
//!
//! Not a test: it needs root and prints figures. Environment: FLOWWATCH_BENCH_SECS (seconds per
//! run, default 4), FLOWWATCH_BENCH_ROUNDS (default 3), FLOWWATCH_BENCH_RATE (paced rate,
//! default 2000/s).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowwatch_testkit::agent::Agent;
use flowwatch_testkit::netns::{Node, Pod};

/// Client connections in flight, and as many server threads (FLOWWATCH_BENCH_THREADS).
fn threads() -> usize {
    env_u64("FLOWWATCH_BENCH_THREADS", 8).max(1) as usize
}

/// (idle, total) CPU ticks of the whole machine so far, from /proc/stat.
fn cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (idle, fields.iter().take(8).sum())
}

/// `drive` flat out, and the share of the machine's CPU time that stayed idle meanwhile: a
/// load that leaves CPUs idle is bound by latency, not by CPU.
fn drive_flat_out(pod: &Pod, addr: SocketAddr, duration: Duration) -> (u64, f64) {
    let (idle0, total0) = cpu_ticks();
    let done = drive(pod, addr, duration, 0);
    let (idle1, total1) = cpu_ticks();
    let idle = (idle1 - idle0) as f64 / (total1 - total0).max(1) as f64;
    (done, idle)
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Server: accept, read the request byte, answer, close first (TIME_WAIT stays on the server,
/// so the client's ephemeral ports are not exhausted).
fn start_server(
    pod: &Pod,
    addr: SocketAddr,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<()>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let listener_thread = pod.run(move || {
        let l = TcpListener::bind(addr).expect("bind");
        tx.send(l).unwrap();
    });
    listener_thread.join().unwrap();
    let listener = rx.recv().unwrap();
    listener.set_nonblocking(false).unwrap();
    (0..threads())
        .map(|_| {
            let l = listener.try_clone().unwrap();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut b = [0u8; 1];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((mut c, _)) = l.accept() {
                        let _ = c.read(&mut b);
                        let _ = c.write_all(&b);
                    }
                }
            })
        })
        .collect()
}

/// Opens connections from `pod` for `duration`, at most `rate` per second overall (0 = as fast
/// as possible). Returns the number completed.
fn drive(pod: &Pod, addr: SocketAddr, duration: Duration, rate: u64) -> u64 {
    let done = Arc::new(AtomicU64::new(0));
    let threads = threads();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let done = done.clone();
            pod.run(move || {
                let start = Instant::now();
                let per_thread = rate as f64 / threads as f64;
                let mut n = 0u64;
                let mut buf = [0u8; 1];
                while start.elapsed() < duration {
                    if rate > 0 {
                        let due = start + Duration::from_secs_f64(n as f64 / per_thread);
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                    }
                    if let Ok(mut c) = TcpStream::connect(addr) {
                        if c.write_all(&[t as u8]).is_ok() && c.read_exact(&mut buf).is_ok() {
                            let _ = c.read(&mut buf); // EOF: the server closed first
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    n += 1;
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    done.load(Ordering::Relaxed)
}

/// The agent's CPU so far: (user, system) seconds, from /proc/<pid>/stat.
fn proc_cpu_seconds(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name: utime is 14th, stime 15th overall.
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) / hz, ticks(12) / hz)
}

/// Context switches of all the agent's threads so far (each one a wakeup or a preemption).
fn context_switches(pid: u32) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten();
    tasks
        .flatten()
        .map(|task| {
            std::fs::read_to_string(task.path().join("status"))
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// How long the agent is left to finish the last poll's work after a flat-out run.
const SETTLE: Duration = Duration::from_millis(1500);

/// What the agent cost during one flat-out run.
#[derive(Default, Clone, Copy)]
struct AgentCost {
    connections: u64,
    user: f64,
    system: f64,
    switches: u64,
    /// Idle share of the machine's CPU time during the run (summed over runs by `add`).
    idle: f64,
}

impl AgentCost {
    fn add(&mut self, other: AgentCost) {
        self.connections += other.connections;
        self.user += other.user;
        self.system += other.system;
        self.switches += other.switches;
        self.idle += other.idle;
    }
}

/// Drives connections flat out for `secs` while `agent` runs; returns the count and its cost.
fn flat_out_with(agent: &Agent, client: &Pod, addr: SocketAddr, secs: Duration) -> AgentCost {
    let pid = agent.pid();
    let ((user0, sys0), switches0) = (proc_cpu_seconds(pid), context_switches(pid));
    let (connections, idle) = drive_flat_out(client, addr, secs);
    // The agent is still reading the last second's flows: count that work too.
    std::thread::sleep(SETTLE);
    let ((user1, sys1), switches1) = (proc_cpu_seconds(pid), context_switches(pid));
    AgentCost {
        connections,
        idle,
        user: user1 - user0,
        system: sys1 - sys0,
        switches: switches1.saturating_sub(switches0),
    }
}

/// The flat-out runs of one kind of agent, each with the rate without it around it.
#[derive(Default)]
struct Rounds {
    rates: Vec<f64>,
    ratios: Vec<f64>,
    cost: AgentCost,
}

impl Rounds {
    fn push(&mut self, rate: f64, rate_without_around: f64, cost: AgentCost) {
        self.rates.push(rate);
        self.ratios.push(rate / rate_without_around);
        self.cost.add(cost);
    }

    /// "rates; ratio = median (of n rounds: each; range low-high)".
    fn summary(&self, rounds: usize) -> String {
        let lowest = self.ratios.iter().copied().fold(f64::MAX, f64::min);
        let highest = self.ratios.iter().copied().fold(0.0, f64::max);
        format!(
            "{}/s; ratio with/without = {:.3} (median of {rounds} rounds: {}; range {lowest:.3}-{highest:.3})",
            show(&self.rates, 0),
            median(&self.ratios),
            show(&self.ratios, 3)
        )
    }
}

fn show(values: &[f64], digits: usize) -> String {
    values
        .iter()
        .map(|x| format!("{x:.digits$}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len().is_multiple_of(2) {
        f64::midpoint(v[mid - 1], v[mid])
    } else {
        v[mid]
    }
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// (run_time_ns, run_cnt) of each flowwatch program, summed over loaded instances: run the
/// benchmark with no other flowwatch agent on the machine.
fn bpf_stats() -> BpfStats {
    let out = std::process::Command::new("bpftool")
        .args(["prog", "show", "-j"])
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap_or_default();
    let mut stats = std::collections::BTreeMap::new();
    for p in v.as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or("");
        if ["tcp_state", "tc_ingress", "tc_egress"].contains(&name) {
            let e = stats.entry(name.to_string()).or_insert((0, 0));
            e.0 += p["run_time_ns"].as_u64().unwrap_or(0);
            e.1 += p["run_cnt"].as_u64().unwrap_or(0);
        }
    }
    stats
}

type BpfStats = std::collections::BTreeMap<String, (u64, u64)>;

fn print_bpf_runs(when: &str, before: &BpfStats, after: &BpfStats, connections: u64) {
    for (name, (t1, c1)) in after {
        let (t0, c0) = before.get(name).copied().unwrap_or((0, 0));
        let calls = c1.saturating_sub(c0);
        if calls > 0 {
            println!(
                "capture: bpf {when}: {name}: {calls} runs, {:.0} ns per run, {:.2} runs per connection",
                (t1 - t0) as f64 / calls as f64,
                calls as f64 / connections.max(1) as f64
            );
        }
    }
}

/// The kernel loss counters from the agent's shutdown line.
fn kernel_losses(agent: &Agent) -> String {
    let stderr = agent.stderr();
    let line = stderr.lines().find(|l| l.contains("kernel losses"));
    match line.and_then(|l| l.split("kernel losses").nth(1)) {
        Some(rest) => format!("kernel losses{rest}"),
        None => "kernel losses: (not reported)".into(),
    }
}

fn main() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP capture benchmark: needs root");
        return;
    }
    let secs = Duration::from_secs(env_u64("FLOWWATCH_BENCH_SECS", 4));
    let paced = env_u64("FLOWWATCH_BENCH_RATE", 2000);
    let node = Node::new(2);
    let (client, server) = (&node.pods[0], &node.pods[1]);
    client.exec(&["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535"]);
    let addr = SocketAddr::new(server.ipv4.into(), 9000);
    let stop = Arc::new(AtomicBool::new(false));
    let servers = start_server(server, addr, &stop);

    let glob = node.interface_glob();
    let agent_args = ["--interfaces", glob.as_str()];
    let rate = |n: u64| n as f64 / secs.as_secs_f64();
    let idle_without = std::cell::Cell::new(0.0);
    let without = || {
        let (done, idle) = drive_flat_out(client, addr, secs);
        idle_without.set(idle_without.get() + idle);
        rate(done)
    };
    drive(client, addr, Duration::from_millis(500), 0); // warm-up

    // Flat out, alternating runs without the agent with runs of it as the DaemonSet runs it
    // (default 1 s poll, metrics only, no flow log) and runs of the hooks only (every program
    // attached but returning at once, `--benchmark-null-datapath`: the floor any program on
    // these hooks pays). Each run's ratio is against the runs without on either side of it,
    // which cancels most of this shared machine's drift.
    let rounds = env_u64("FLOWWATCH_BENCH_ROUNDS", 3).max(1) as usize;
    let null_args = [&agent_args[..], &["--benchmark-null-datapath"]].concat();
    let mut offs = vec![without()];
    // One flat-out run with an agent started with `args`, then one without: the run's cost,
    // the mean rate without on either side of it, and the agent's kernel loss counters.
    let mut with_then_without = |args: &[&str]| {
        let mut agent = Agent::start_as_deployed(args);
        let run = flat_out_with(&agent, client, addr, secs);
        agent.stop();
        offs.push(without());
        let around = f64::midpoint(offs[offs.len() - 2], offs[offs.len() - 1]);
        (run, around, kernel_losses(&agent))
    };
    let (mut deployed, mut hooks_only) = (Rounds::default(), Rounds::default());
    // The loss counters of each round, each distinct line once.
    let mut deployed_losses: Vec<String> = Vec::new();
    for _ in 0..rounds {
        let (run, around, losses) = with_then_without(&agent_args);
        deployed.push(rate(run.connections), around, run);
        if !deployed_losses.contains(&losses) {
            deployed_losses.push(losses);
        }
        let (run, around, _) = with_then_without(&null_args);
        hooks_only.push(rate(run.connections), around, run);
    }
    println!(
        "capture: flat-out TCP connections/s without agent: {}",
        show(&offs, 0)
    );
    println!(
        "capture: with the agent as deployed: {}",
        deployed.summary(rounds)
    );
    println!(
        "capture: with the hooks only (programs that return at once): {}",
        hooks_only.summary(rounds)
    );
    println!(
        "capture: {} client threads; CPU idle {:.1}% without the agent, {:.1}% with it as deployed",
        threads(),
        idle_without.get() / offs.len() as f64 * 100.0,
        deployed.cost.idle / rounds as f64 * 100.0
    );
    let cost = deployed.cost;
    let per_conn = |seconds: f64| seconds / cost.connections.max(1) as f64 * 1e6;
    println!(
        "capture: flat out, agent CPU {:.2} µs per connection ({:.2} user + {:.2} system), {:.0} context switches/s; every round's {}",
        per_conn(cost.user + cost.system),
        per_conn(cost.user),
        per_conn(cost.system),
        cost.switches as f64 / ((secs + SETTLE).as_secs_f64() * rounds as f64),
        deployed_losses.join(" | "),
    );
    println!(
        "capture: hooks only, agent CPU {:.2} µs per connection",
        (hooks_only.cost.user + hooks_only.cost.system) / hooks_only.cost.connections.max(1) as f64
            * 1e6
    );
    // Two variants, each followed by a run without, to split the cost:
    // * with a JSON flow log (one line per connection);
    // * the kernel programs only: the agent is stopped with SIGSTOP once attached, what the
    //   datapath alone costs (its ring buffer fills and later events are dropped, which is
    //   cheaper than delivering them; its flow map, never emptied, grows instead).
    let last_off = offs[offs.len() - 1];
    let agent = Agent::start_as_deployed_with_flow_log(&agent_args);
    let with_log = rate(drive(client, addr, secs, 0));
    drop(agent);
    let off_log = without();
    let large_map = [&agent_args[..], &["--flows-max-entries", "1048576"]].concat();
    let agent = Agent::start_as_deployed(&large_map);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGSTOP) };
    let kernel_only = rate(drive(client, addr, secs, 0));
    unsafe { libc::kill(agent.pid() as i32, libc::SIGCONT) };
    drop(agent);
    let off_kernel = without();
    println!(
        "capture: with a flow log {with_log:.0}/s (ratio {:.3}); kernel programs only {kernel_only:.0}/s (ratio {:.3}); without agent {off_log:.0}/s {off_kernel:.0}/s",
        with_log / f64::midpoint(last_off, off_log),
        kernel_only / f64::midpoint(off_log, off_kernel),
    );

    // BPF run-time accounting costs a little on every program run: only for the last two runs.
    let stats_before = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .unwrap_or_else(|_| "0".into());
    let _ = std::process::Command::new("sysctl")
        .args(["-qw", "kernel.bpf_stats_enabled=1"])
        .status();

    // Paced run: the agent's own cost per connection, and loss.
    // Paced, with the flow log so every connection's record can be counted, default poll.
    let mut agent = Agent::start_as_deployed_with_flow_log(&agent_args);
    let pid = agent.pid();
    let bpf_before = bpf_stats();
    let cpu_before = proc_cpu_seconds(pid);
    let made = drive(client, addr, secs, paced);
    std::thread::sleep(Duration::from_millis(1500));
    let cpu_after = proc_cpu_seconds(pid);
    let cpu = (cpu_after.0 + cpu_after.1) - (cpu_before.0 + cpu_before.1);
    let rss = peak_rss_kib(pid);
    let bpf_after = bpf_stats();
    let (_, records) = agent.stop();
    let ours = records
        .iter()
        .filter(|r| r["dst"]["port"] == 9000 && r["src"]["ip"] == client.ipv4.to_string())
        .count() as u64;
    let losses = kernel_losses(&agent);
    let paced_rate = rate(made);
    println!(
        "capture: paced at {paced}/s: {made} connections ({paced_rate:.0}/s), {ours} flow records"
    );
    println!(
        "capture: agent CPU {:.3} s = {:.3} CPU-s per 1,000 connections = {:.2}% of one core per 1,000 connections/s",
        cpu,
        cpu / made.max(1) as f64 * 1000.0,
        cpu / secs.as_secs_f64() * 100.0 / (paced_rate / 1000.0)
    );
    println!("capture: agent peak RSS {:.1} MiB", rss as f64 / 1024.0);
    println!("capture: {losses}");
    println!(
        "capture: connections without a record: {}",
        made.saturating_sub(ours)
    );
    print_bpf_runs("paced", &bpf_before, &bpf_after, made);

    // Flat out once more with the accounting on: what each program costs per run under full
    // load (the accounting's own clock reads included, about 40 ns per run here). Not a ratio.
    let agent = Agent::start_as_deployed(&agent_args);
    let bpf_before = bpf_stats();
    let made = drive(client, addr, secs, 0);
    let bpf_after = bpf_stats();
    drop(agent);
    print_bpf_runs("flat out", &bpf_before, &bpf_after, made);

    let _ = std::process::Command::new("sysctl")
        .args([
            "-qw",
            &format!("kernel.bpf_stats_enabled={}", stats_before.trim()),
        ])
        .status();
    stop.store(true, Ordering::Relaxed);
    // Unblock the acceptors.
    for _ in 0..threads() {
        client
            .run(move || {
                let _ = TcpStream::connect_timeout(&addr, Duration::from_millis(200));
            })
            .join()
            .ok();
    }
    for s in servers {
        let _ = s.join();
    }
}
