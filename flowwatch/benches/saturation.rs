//! Loss at saturation, connection by connection (`cargo xtask bench saturation`, as root).
//!
//! Four client pods open short TCP connections (1-byte request, 1-byte answer, the server
//! closes first) to a server pod as fast as they go, with the agent as deployed and its flow
//! log on, in rounds of a fresh agent each. Every connection's client address is noted; after
//! the round the flow log must hold, for every 5-tuple, exactly as many established
//! client-to-server records as connections were made on it (client ports are reused within a
//! round at these rates). Prints per round: connections, reported, missing, extra, the kernel
//! loss counters, and for the 5-tuples that differ every record the agent wrote of them.
//!
//! With FLOWWATCH_BENCH_EVENTS=1 it runs no agent: it loads the kernel programs itself, keeps
//! every socket event of the round in order and prints how often a client's connection
//! established on a 5-tuple whose previous connection's sockets had not all closed yet (in the
//! order the ring buffer delivers them).
//!
//! Environment: FLOWWATCH_BENCH_SECS (per round, default 10), FLOWWATCH_BENCH_ROUNDS (default 3),
//! FLOWWATCH_BENCH_THREADS (client threads per client pod, default 2), FLOWWATCH_BENCH_CLIENT_PODS
//! (default 4).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowwatch::datapath::{self, DatapathOptions};
use flowwatch::model::{EventKind, FlowKey, Observation, Role};
use flowwatch::source::FlowSource;
use flowwatch_testkit::agent::Agent;
use flowwatch_testkit::ledger::Ledger;
use flowwatch_testkit::netns::{Node, Pod};

/// Client pods (FLOWWATCH_BENCH_CLIENT_PODS, default 4): fewer pods at the same rate come
/// round their ephemeral ports sooner.
fn client_pods() -> usize {
    env_u64("FLOWWATCH_BENCH_CLIENT_PODS", 4).clamp(1, 16) as usize
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Accepts, reads the request byte, answers, closes first; `threads` acceptors.
fn start_server(pod: &Pod, addr: SocketAddr, threads: usize, stop: &Arc<AtomicBool>) {
    let listener = pod
        .run(move || TcpListener::bind(addr).expect("bind"))
        .join()
        .unwrap();
    for _ in 0..threads {
        let l = listener.try_clone().unwrap();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut b = [0u8; 1];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((mut c, _)) = l.accept() {
                    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                    let _ = c.read(&mut b);
                    let _ = c.write_all(&b);
                }
            }
        });
    }
}

/// Connections from `pod` for `duration` on `threads` threads, flat out; the ledger of those
/// made.
fn drive(
    pod: &Pod,
    addr: SocketAddr,
    duration: Duration,
    threads: usize,
) -> Vec<std::thread::JoinHandle<Ledger>> {
    (0..threads)
        .map(|_| {
            pod.run(move || {
                let start = Instant::now();
                let mut ledger = Ledger::default();
                let mut buf = [0u8; 1];
                while start.elapsed() < duration {
                    let Ok(mut c) = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
                    else {
                        continue;
                    };
                    let _ = c.set_read_timeout(Some(Duration::from_secs(3)));
                    // Every connection made counts (its handshake completed).
                    if let Ok(local) = c.local_addr() {
                        ledger.add(local);
                    }
                    if c.write_all(&[1]).is_ok() && c.read_exact(&mut buf).is_ok() {
                        let _ = c.read(&mut buf); // EOF: the server closed first
                    }
                }
                ledger
            })
        })
        .collect()
}

fn main() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP saturation benchmark: needs root");
        return;
    }
    let secs = Duration::from_secs(env_u64("FLOWWATCH_BENCH_SECS", 10));
    let rounds = env_u64("FLOWWATCH_BENCH_ROUNDS", 3);
    let threads = env_u64("FLOWWATCH_BENCH_THREADS", 2).max(1) as usize;
    let clients = client_pods();
    let node = Node::new(clients + 1);
    let server = &node.pods[clients];
    let addr = SocketAddr::new(server.ipv4.into(), 9000);
    for client in &node.pods[..clients] {
        client.exec(&["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535"]);
    }
    let stop = Arc::new(AtomicBool::new(false));
    start_server(server, addr, threads * clients, &stop);
    if env_u64("FLOWWATCH_BENCH_EVENTS", 0) == 1 {
        for round in 1..=rounds {
            let (clients, threads) = (&node.pods[..clients], threads);
            event_orders(round, clients, addr, secs, threads);
        }
        return;
    }
    let glob = node.interface_glob();
    let (mut made, mut missing, mut extra) = (0, 0, 0);
    for round in 1..=rounds {
        let mut agent = Agent::start_as_deployed_with_flow_log(&["--interfaces", &glob]);
        let started = Instant::now();
        let handles: Vec<_> = node.pods[..clients]
            .iter()
            .flat_map(|pod| drive(pod, addr, secs, threads))
            .collect();
        let mut ledger = Ledger::default();
        for h in handles {
            ledger.merge(h.join().unwrap());
        }
        let elapsed = started.elapsed();
        // The last connections' records: the close linger and a poll or two.
        std::thread::sleep(Duration::from_secs(3));
        let (_, records) = agent.stop();
        let result = ledger.reconcile(addr, "established", &records);
        let losses = agent
            .stderr()
            .lines()
            .find_map(|l| l.split("kernel losses: ").nth(1).map(str::to_string))
            .unwrap_or_else(|| "(not reported)".into());
        println!(
            "saturation: round {round}: {:.0} connections/s; {}; kernel losses: {losses}",
            ledger.len() as f64 / elapsed.as_secs_f64(),
            result.summary()
        );
        print!("{}", result.details());
        // Records of the server's port that are not an established client-to-server record:
        // late packets (midstream), attempts, and anything oriented the other way.
        let mut others = std::collections::BTreeMap::<String, u64>::default();
        for r in &records {
            let to_server =
                r["dst"]["port"] == addr.port() && r["dst"]["ip"] == addr.ip().to_string();
            let from_server =
                r["src"]["port"] == addr.port() && r["src"]["ip"] == addr.ip().to_string();
            if (to_server && r["outcome"] == "established") || !(to_server || from_server) {
                continue;
            }
            let what = format!(
                "{}{}/{}",
                if from_server { "server->client " } else { "" },
                r["outcome"].as_str().unwrap_or("?"),
                r["end_reason"].as_str().unwrap_or("?")
            );
            *others.entry(what).or_default() += 1;
        }
        if !others.is_empty() {
            println!("saturation: round {round}: other records of the server's port: {others:?}");
        }
        made += result.made;
        missing += result.missing;
        extra += result.extra;
    }
    println!(
        "saturation: {rounds} rounds of {} s, {clients} client pods x {threads} threads: {made} connections, {missing} without a record, {extra} records too many",
        secs.as_secs()
    );
    stop.store(true, Ordering::Relaxed);
    // Unblock the acceptors.
    let client = &node.pods[0];
    for _ in 0..threads * clients {
        client
            .run(move || {
                let _ = TcpStream::connect_timeout(&addr, Duration::from_millis(200));
            })
            .join()
            .ok();
    }
}

/// One round with the kernel programs loaded here: the socket events of the connections to
/// `addr`, in ring order, and how their establishments and closes interleave per 5-tuple.
fn event_orders(round: u64, clients: &[Pod], addr: SocketAddr, secs: Duration, threads: usize) {
    /// One 5-tuple's sockets as the events tell, in ring order.
    #[derive(Default)]
    struct Sockets {
        client_open: bool,
        server_open: bool,
        /// Closes still to come from the previous connection's server socket.
        previous_server_closes: u32,
    }
    let (_datapath, mut source) =
        datapath::load(&DatapathOptions::default()).expect("loading the datapath");
    let handles: Vec<_> = clients
        .iter()
        .flat_map(|pod| drive(pod, addr, secs, threads))
        .collect();
    let mut events = Vec::new();
    while !handles.iter().all(std::thread::JoinHandle::is_finished) {
        source.drain_events(&mut events).expect("draining events");
        std::thread::sleep(Duration::from_millis(10));
    }
    let made: u64 = handles.into_iter().map(|h| h.join().unwrap().len()).sum();
    std::thread::sleep(Duration::from_millis(500));
    source.drain_events(&mut events).expect("draining events");

    let mut tuples = std::collections::HashMap::<FlowKey, Sockets>::default();
    let (mut established, mut over_previous_client, mut over_previous_server) = (0u64, 0u64, 0u64);
    let mut late_server_closes = 0u64;
    for e in &events {
        let Observation::Event {
            key, kind, role, ..
        } = e
        else {
            continue;
        };
        let (k, server_side) = match (kind, role) {
            (EventKind::TcpClosed, _) if key.dst == addr => (*key, false),
            (EventKind::TcpClosed, _) if key.src == addr => (key.reversed(), true),
            (_, Role::Client) if key.dst == addr => (*key, false),
            (_, Role::Server) if key.dst == addr => (*key, true),
            _ => continue,
        };
        let t = tuples.entry(k).or_default();
        match (kind, server_side) {
            (EventKind::TcpEstablished, false) => {
                established += 1;
                if t.client_open {
                    over_previous_client += 1;
                }
                if t.server_open {
                    over_previous_server += 1;
                    t.previous_server_closes += 1;
                    t.server_open = false;
                }
                t.client_open = true;
            }
            (EventKind::TcpEstablished, true) => t.server_open = true,
            (EventKind::TcpClosed, false) => t.client_open = false,
            (EventKind::TcpClosed, true) => {
                if t.previous_server_closes > 0 {
                    t.previous_server_closes -= 1;
                    late_server_closes += 1;
                } else {
                    t.server_open = false;
                }
            }
            _ => {}
        }
    }
    println!(
        "saturation: events round {round}: {made} connections, {} events, {established} client establishments; of them {over_previous_server} came before the previous connection's server close on their 5-tuple ({late_server_closes} such closes came later), {over_previous_client} before its client close; kernel losses: {:?}",
        events.len(),
        source.losses().ok(),
    );
}
