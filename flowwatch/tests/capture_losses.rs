//! Loss is counted, end to end: the kernel's flow map and its event ring buffer are made to
//! overflow on purpose, with the real agent, and the exact number of lost flows and events must
//! reach the agent's metric, its warning and its shutdown line, while what did fit is still
//! reported. Also traffic no flow can be given (IP fragments after the first) is counted, not
//! silently left out.
//!
//! Needs root; outside CI these tests skip with one line, under CI=true they must run.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::{mpsc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use flowwatch::datapath::{self, DatapathOptions};
use flowwatch::model::{EventKind, Observation, Role};
use flowwatch::source::FlowSource;
use flowwatch_testkit::agent::Agent;
use flowwatch_testkit::netns::Node;
use flowwatch_testkit::privileged;

/// The loss counter by reason: events the ring buffer dropped, packets the full flow map
/// could not count (each in its own unit, so each reason is asserted on its own).
const LOST_EVENTS: &str = "flowwatch_kernel_events_lost_total{reason=\"ringbuf_full\"}";
const LOST_PACKETS: &str = "flowwatch_kernel_events_lost_total{reason=\"flow_map_full\"}";

/// Every kernel program of every test sees every TCP socket of the node: these tests count
/// events exactly, so they run one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The smallest flow map the agent accepts (`--flows-max-entries`).
const FLOW_MAP_ENTRIES: u64 = 1024;

/// The smallest ring buffer the agent accepts (`--events-ring-bytes`), and what one event takes
/// in it: the 56-byte `FlowEvent` after the kernel's 8-byte record header.
const RING_BYTES: u64 = 65_536;
const EVENT_BYTES: u64 = 64;

/// Waits until the agent's count of events lost (ring buffer full) reaches `least` and returns it.
fn wait_lost_at_least(agent: &Agent, least: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lost = agent.metric(LOST_EVENTS).unwrap_or(0.0) as u64;
        if lost >= least {
            return lost;
        }
        assert!(
            Instant::now() < deadline,
            "{LOST_EVENTS} is {lost}, not at least {least}:\n{}",
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_full_flow_map_counts_every_flow_that_did_not_fit() {
    const FLOWS: u64 = 1_100;
    const PACKETS_PER_FLOW: u64 = 2;
    if !privileged::root_test("flow map overflow") {
        return;
    }
    let _serial = one_at_a_time();
    let node = Node::new(2);
    let (client, server) = (&node.pods[0], &node.pods[1]);
    // UDP flows stay in the map until idle: none is freed while the test runs.
    let mut agent = Agent::start(&[
        "--interfaces",
        &node.interface_glob(),
        "--flows-max-entries",
        &FLOW_MAP_ENTRIES.to_string(),
        "--idle-timeout-secs",
        "120",
    ]);

    // Two datagrams to each of 1,100 closed ports: 1,100 flows, two packets each (the server's
    // ICMP port-unreachable answers are not tracked). Every packet of a flow that does not fit
    // is lost, and counted.
    let target = server.ipv4;
    client
        .run(move || {
            let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
            for port in 0..FLOWS as u16 {
                for _ in 0..PACKETS_PER_FLOW {
                    sock.send_to(b"x", (target, 20_000 + port)).unwrap();
                }
                if port % 100 == 99 {
                    // Paced, so the receiving side's backlog never drops one before the
                    // program has seen it.
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        })
        .join()
        .unwrap();

    let expected_lost = (FLOWS - FLOW_MAP_ENTRIES) * PACKETS_PER_FLOW;
    agent.wait_metric(LOST_PACKETS, expected_lost as f64, Duration::from_secs(10));
    // Packets are not events: the other reasons stay at zero.
    assert_eq!(agent.metric(LOST_EVENTS), Some(0.0));
    assert_eq!(
        agent.metric("flowwatch_kernel_events_lost_total{reason=\"agent_flow_limit\"}"),
        Some(0.0)
    );
    assert_eq!(
        agent.metric("flowwatch_kernel_map_fill_ratio{map=\"flows\"}"),
        Some(1.0)
    );
    assert!(
        agent
            .stderr()
            .contains(&format!("flows_map_full={expected_lost}")),
        "the agent warns with the cause:\n{}",
        agent.stderr()
    );

    let (status, records) = agent.stop();
    assert!(status.success());
    let reported = records
        .iter()
        .filter(|r| r["protocol"] == "UDP" && r["dst"]["ip"] == target.to_string())
        .count() as u64;
    assert_eq!(
        reported, FLOW_MAP_ENTRIES,
        "every flow that fit is reported"
    );
    assert!(
        agent
            .stderr()
            .contains(&format!("ringbuf_full=0 flows_map_full={expected_lost} ")),
        "shutdown line:\n{}",
        agent.stderr()
    );
}

#[test]
fn a_full_ring_buffer_counts_every_event_that_did_not_fit() {
    const CONNECTIONS: u64 = 400;
    if !privileged::root_test("ring buffer overflow") {
        return;
    }
    let _serial = one_at_a_time();
    let node = Node::new(2);
    let (client, server) = (&node.pods[0], &node.pods[1]);
    let addr = SocketAddr::new(server.ipv4.into(), 7000);

    let mut agent = Agent::start(&[
        "--interfaces",
        &node.interface_glob(),
        "--events-ring-bytes",
        &RING_BYTES.to_string(),
    ]);
    // The agent's reader empties the ring every 100 ms at most and nothing has happened yet:
    // the ring buffer is empty when the agent stops reading it.
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGSTOP) };

    // Each connection between two local pods is four events: established and closed at the
    // client and at the server.
    echo_connections(client, server, addr, CONNECTIONS);
    // The last closes (the server's TIME_WAIT) have happened after this.
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: as above.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGCONT) };

    // The kernel keeps the producer less than the ring's size ahead of the consumer, so this
    // many events fit. The tracepoint sees every TCP socket of the node, and other processes
    // of this shared machine may have added events of their own while the agent was stopped:
    // at least our overflow is lost, and not more than we made, as long as they added fewer
    // events than the ring holds (a handful, here).
    let fit = (RING_BYTES - 1) / EVENT_BYTES;
    let (least, most) = (4 * CONNECTIONS - fit, 4 * CONNECTIONS);
    let lost = wait_lost_at_least(&agent, least);
    assert!(
        lost <= most,
        "{lost} events lost, more than the {most} made"
    );
    assert!(
        agent.stderr().contains(&format!("ringbuf_full={lost}")),
        "the agent warns with the cause:\n{}",
        agent.stderr()
    );

    // The agent goes on: a connection made now is reported as usual.
    let after = SocketAddr::new(server.ipv4.into(), 7001);
    flowwatch_testkit::traffic::one_connection(client, server, after);
    let record = flowwatch_testkit::traffic::wait_record(&agent, after, 0);
    assert_eq!(record["outcome"], "established", "{record}");
    assert_eq!(
        record["observed_at"],
        serde_json::json!(["client", "server"])
    );

    let (status, _) = agent.stop();
    assert!(status.success());
    assert!(
        agent
            .stderr()
            .contains(&format!("ringbuf_full={lost} flows_map_full=0 ")),
        "shutdown line:\n{}",
        agent.stderr()
    );
}

/// Makes `connections` echo connections (one byte each way) from `client` to `addr` on
/// `server`, one after the other.
fn echo_connections(
    client: &flowwatch_testkit::netns::Pod,
    server: &flowwatch_testkit::netns::Pod,
    addr: SocketAddr,
    connections: u64,
) {
    let (bound_tx, bound_rx) = mpsc::channel();
    let server_thread = server.run(move || {
        let listener = TcpListener::bind(addr).expect("bind");
        bound_tx.send(()).unwrap();
        for _ in 0..connections {
            let (mut conn, _) = listener.accept().expect("accept");
            let mut b = [0u8; 1];
            if conn.read_exact(&mut b).is_ok() {
                let _ = conn.write_all(&b);
            }
        }
    });
    bound_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    client
        .run(move || {
            for i in 0..connections {
                let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
                c.write_all(&[i as u8]).unwrap();
                let mut b = [0u8; 1];
                c.read_exact(&mut b).unwrap();
            }
        })
        .join()
        .unwrap();
    server_thread.join().unwrap();
}

#[test]
fn the_event_reader_keeps_the_ring_buffer_from_overflowing_while_nobody_drains() {
    const CONNECTIONS: u64 = 350;
    if !privileged::root_test("event reader") {
        return;
    }
    let _serial = one_at_a_time();
    // The smallest ring (1,023 events), and more events than it holds, made while the caller
    // (the agent's main loop, here the test) does not drain: the reader thread must have moved
    // them out of the ring in time, so none is lost and all come out of one drain, in order.
    let node = Node::new(2);
    let (client, server) = (&node.pods[0], &node.pods[1]);
    let addr = SocketAddr::new(server.ipv4.into(), 7002);
    let (_datapath, mut source) = datapath::load(&DatapathOptions {
        events_bytes: RING_BYTES as u32,
        ..DatapathOptions::default()
    })
    .expect("loading the datapath");
    const { assert!(4 * CONNECTIONS > (RING_BYTES - 1) / EVENT_BYTES) };
    echo_connections(client, server, addr, CONNECTIONS);
    std::thread::sleep(Duration::from_millis(300)); // the last closes (server TIME_WAIT)

    let mut observations = Vec::new();
    source.drain_events(&mut observations).unwrap();
    // Events of our connections, by the client's port: between the client pod and the
    // server's port (a close is reported from the closing socket's side, so either
    // orientation; the listener's own close at the end has no peer and is not ours). Other
    // processes' sockets are seen too, and may even overflow the ring on a busy machine; what
    // is asserted is that none of ours was lost.
    let client_ip = std::net::IpAddr::from(client.ipv4);
    let mut by_connection = std::collections::BTreeMap::<u16, Vec<(EventKind, Role)>>::default();
    for o in &observations {
        let Observation::Event {
            key, kind, role, ..
        } = o
        else {
            continue;
        };
        let client_port = if key.dst == addr && key.src.ip() == client_ip {
            key.src.port()
        } else if key.src == addr && key.dst.ip() == client_ip {
            key.dst.port()
        } else {
            continue;
        };
        by_connection
            .entry(client_port)
            .or_default()
            .push((*kind, *role));
    }
    assert_eq!(by_connection.len() as u64, CONNECTIONS);
    for (port, events) in &by_connection {
        // Both ends established, then both closed, in the order the kernel wrote them: a
        // close that overtook its connection's establishment would make the agent lose it.
        assert_eq!(events.len(), 4, "client port {port}: {events:?}");
        assert!(
            events[..2].iter().all(|e| e.0 == EventKind::TcpEstablished)
                && events[2..].iter().all(|e| e.0 == EventKind::TcpClosed),
            "client port {port}: {events:?}"
        );
    }
}

#[test]
fn fragments_after_the_first_are_counted_as_unattributed_and_the_flow_keeps_the_first() {
    const DATAGRAMS: u64 = 5;
    if !privileged::root_test("IP fragments") {
        return;
    }
    let _serial = one_at_a_time();
    let node = Node::new(2);
    let (client, server) = (&node.pods[0], &node.pods[1]);
    let mut agent = Agent::start(&["--interfaces", &node.interface_glob()]);
    // 3,000 bytes over a 1,500-byte MTU: three IPv4 fragments each, only the first with ports.
    let target = server.ipv4;
    client
        .run(move || {
            let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
            for _ in 0..DATAGRAMS {
                sock.send_to(&[1u8; 3000], (target, 7777)).unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
        })
        .join()
        .unwrap();
    let series = "flowwatch_kernel_packets_unattributed_total";
    agent.wait_metric(series, (DATAGRAMS * 2) as f64, Duration::from_secs(10));
    let (status, records) = agent.stop();
    assert!(status.success());
    let flows: Vec<_> = records
        .iter()
        .filter(|r| r["protocol"] == "UDP" && r["dst"]["ip"] == target.to_string())
        .collect();
    assert_eq!(flows.len(), 1, "{flows:?}");
    assert_eq!(flows[0]["fwd"]["packets"], DATAGRAMS, "{}", flows[0]);
    assert!(
        agent
            .stderr()
            .contains(&format!("unattributed_packets={}", DATAGRAMS * 2)),
        "shutdown line:\n{}",
        agent.stderr()
    );
}
