//! The demo behind `cargo xtask demo`: four pods (network namespaces on a bridge, as a CNI
//! makes them), the agent with the demo cluster's snapshot (`deploy/demo/snapshot.yaml`), a
//! little traffic, and what the agent saw: its flow records and its metrics.
//!
//! Needs root. Everything it creates is removed when it ends, also on failure.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flowwatch_testkit::netns;
use netns::{Node, Pod};

const LISTEN: &str = "127.0.0.1:19810";

/// The demo's pods, in the order the snapshot gives them addresses.
const PODS: [(&str, [u8; 4]); 4] = [
    ("shop/web", [10, 213, 0, 10]),
    ("shop/api", [10, 213, 0, 20]),
    ("data/postgres", [10, 213, 0, 30]),
    ("jobs/report", [10, 213, 0, 40]),
];

fn main() {
    if let Err(e) = run() {
        eprintln!("demo failed: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("the demo creates network namespaces and loads eBPF: run it as root".into());
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let snapshot = repo.join("deploy/demo/snapshot.yaml");
    let agent_bin = std::env::current_exe()
        .map_err(|e| e.to_string())?
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("flowwatch"))
        .ok_or("cannot locate the flowwatch binary")?;

    println!("==> creating 4 pods (network namespaces on a bridge) with the snapshot's addresses");
    let node = Node::new(PODS.len());
    for (pod, (_, ip)) in node.pods.iter().zip(PODS) {
        // Readdress each pod to the snapshot's IP for its role.
        pod.ip(&["addr", "flush", "dev", "eth0"]);
        pod.ip(&[
            "addr",
            "add",
            &format!("{}/24", Ipv4Addr::from(ip)),
            "dev",
            "eth0",
        ]);
    }
    let [web, api, postgres, report] = [0, 1, 2, 3].map(|i| &node.pods[i]);
    // postgres drops connections from the report job, as an enforcing CNI would.
    postgres.drop_incoming("ip saddr 10.213.0.40 tcp dport 5432");

    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let flow_log = dir.path().join("flows.jsonl");
    println!(
        "==> starting the agent: flowwatch run --snapshot {}",
        snapshot.display()
    );
    let mut agent = AgentGuard(
        Command::new(&agent_bin)
            .args([
                "run",
                "--interfaces",
                &node.interface_glob(),
                "--listen",
                LISTEN,
            ])
            .args(["--poll-interval-ms", "200", "--snapshot"])
            .arg(&snapshot)
            .arg("--flow-log")
            .arg(&flow_log)
            .env("FLOWWATCH_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", agent_bin.display()))?,
    );
    wait_ready(&mut agent.0)?;

    println!("==> traffic");
    let api_addr = SocketAddr::from(([10, 213, 0, 20], 8080));
    let pg_addr = SocketAddr::from(([10, 213, 0, 30], 5432));
    let servers = [serve(api, api_addr, 3), serve(postgres, pg_addr, 5)];
    connect(web, api_addr, 3, "shop/web -> shop/api:8080");
    connect(api, pg_addr, 3, "shop/api -> data/postgres:5432");
    connect(web, pg_addr, 2, "shop/web -> data/postgres:5432");
    connect(report, pg_addr, 1, "jobs/report -> data/postgres:5432");
    for s in servers {
        let _ = s.join();
    }
    std::thread::sleep(Duration::from_millis(1500));

    let metrics = http_get("/metrics")?;
    agent.stop();
    print_flows(&flow_log)?;
    print_metrics(&metrics);
    drop(node);
    println!("\n(the pods, the bridge and the agent are gone; nothing stays attached)");
    Ok(())
}

struct AgentGuard(Child);

impl AgentGuard {
    fn stop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

impl Drop for AgentGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_ready(agent: &mut Child) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = agent.try_wait() {
            return Err(format!("the agent exited: {status}"));
        }
        if http_get("/readyz").is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err("the agent did not become ready in 30 s".into())
}

fn http_get(path: &str) -> Result<String, String> {
    let mut conn = TcpStream::connect(LISTEN).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok();
    write!(conn, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").map_err(|e| e.to_string())?;
    let mut body = String::new();
    conn.read_to_string(&mut body).map_err(|e| e.to_string())?;
    let (head, rest) = body.split_once("\r\n\r\n").ok_or("bad HTTP answer")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(head.lines().next().unwrap_or("").to_string());
    }
    Ok(rest.to_string())
}

fn serve(pod: &Pod, addr: SocketAddr, connections: usize) -> std::thread::JoinHandle<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = pod.run(move || {
        let listener = TcpListener::bind(addr).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        tx.send(()).ok();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut served = 0;
        while served < connections && Instant::now() < deadline {
            match listener.accept() {
                Ok((mut c, _)) => {
                    c.set_nonblocking(false).ok();
                    let mut buf = [0u8; 64];
                    if let Ok(n) = c.read(&mut buf) {
                        let _ = c.write_all(&buf[..n]);
                    }
                    served += 1;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    let _ = rx.recv_timeout(Duration::from_secs(5));
    handle
}

fn connect(pod: &Pod, addr: SocketAddr, times: usize, what: &'static str) {
    pod.run(move || {
        let mut ok = 0;
        for _ in 0..times {
            if let Ok(mut c) = TcpStream::connect_timeout(&addr, Duration::from_millis(1200)) {
                let _ = c.write_all(b"hello");
                let mut buf = [0u8; 5];
                let _ = c.read_exact(&mut buf);
                ok += 1;
            }
        }
        println!("    {what}: {ok} of {times} connections established");
    })
    .join()
    .ok();
}

fn field(v: &serde_json::Value, path: &[&str]) -> String {
    let mut cur = v;
    for p in path {
        cur = &cur[p];
    }
    match cur {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn endpoint(v: &serde_json::Value) -> String {
    match (v["namespace"].as_str(), v["name"].as_str()) {
        (Some(ns), Some(pod)) => format!("{ns}/{pod}"),
        _ => v["ip"].as_str().unwrap_or("?").to_string(),
    }
}

fn print_flows(flow_log: &PathBuf) -> Result<(), String> {
    let file = std::fs::File::open(flow_log).map_err(|e| format!("{}: {e}", flow_log.display()))?;
    println!("\n==> flow records (the agent's --flow-log, one JSON object per connection)");
    println!(
        "{:<32} {:<28} {:>6} {:<12} {:<10} {:<9} {:<9} {:>5}",
        "SOURCE", "DESTINATION", "PORT", "OUTCOME", "VERDICT", "EGRESS", "INGRESS", "PKTS"
    );
    let mut lines: Vec<serde_json::Value> = BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str(&l).ok())
        .filter(|r: &serde_json::Value| {
            r["src"]["ip"]
                .as_str()
                .is_some_and(|ip| ip.starts_with("10.213.0."))
        })
        .collect();
    lines.sort_by_key(|r| (field(r, &["start"]), field(r, &["src", "port"])));
    for r in &lines {
        println!(
            "{:<32} {:<28} {:>6} {:<12} {:<10} {:<9} {:<9} {:>5}",
            endpoint(&r["src"]),
            endpoint(&r["dst"]),
            field(r, &["dst", "port"]),
            field(r, &["outcome"]),
            field(r, &["verdict"]),
            field(r, &["egress", "verdict"]),
            field(r, &["ingress", "verdict"]),
            r["fwd"]["packets"].as_u64().unwrap_or(0) + r["rev"]["packets"].as_u64().unwrap_or(0),
        );
    }
    Ok(())
}

fn print_metrics(text: &str) {
    println!("\n==> the exporter (GET http://{LISTEN}/metrics), edge families:");
    for line in text.lines() {
        let edge = line.starts_with("flowwatch_connections")
            || line.starts_with("flowwatch_uncovered")
            || line.starts_with("flowwatch_drift")
            || line.starts_with("flowwatch_enforcement")
            || line.starts_with("flowwatch_blocked");
        if edge && !line.starts_with('#') {
            println!("    {line}");
        }
    }
}
