//! The kernel capture, proven on real traffic: pods are network namespaces on a bridge, the
//! real agent binary runs with its eBPF programs attached, and every assertion is about exact
//! flow records and the pods' own kernel counters.
//!
//! Needs root; outside CI these tests skip with one line, under CI=true they must run.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use flowwatch_testkit::agent::{self, Agent};
use flowwatch_testkit::netns::{sh, Node, Pod};
use flowwatch_testkit::privileged;
use serde_json::Value;

/// Records of flows from `src` to `dst` (by IP), in the order the agent wrote them.
fn between(records: &[Value], src: IpAddr, dst: IpAddr) -> Vec<Value> {
    records
        .iter()
        .filter(|r| {
            r["src"]["ip"].as_str() == Some(&src.to_string())
                && r["dst"]["ip"].as_str() == Some(&dst.to_string())
        })
        .cloned()
        .collect()
}

/// Whether either end of the record is `ip`.
fn touches(record: &Value, ip: IpAddr) -> bool {
    let ip = ip.to_string();
    record["src"]["ip"].as_str() == Some(&ip) || record["dst"]["ip"].as_str() == Some(&ip)
}

fn sum(records: &[Value], dir: &str, field: &str) -> u64 {
    records
        .iter()
        .map(|r| r[dir][field].as_u64().unwrap())
        .sum()
}

/// A TCP echo server in `pod` for `connections` connections, sequentially; returns once bound.
fn echo_server(pod: &Pod, addr: SocketAddr, connections: usize) -> std::thread::JoinHandle<()> {
    let (bound_tx, bound_rx) = mpsc::channel();
    let handle = pod.run(move || {
        let listener = TcpListener::bind(addr).expect("bind");
        bound_tx.send(()).unwrap();
        for _ in 0..connections {
            let (mut conn, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 4096];
            loop {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => conn.write_all(&buf[..n]).expect("echo"),
                }
            }
        }
    });
    bound_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("server bound");
    handle
}

/// One request/response on a fresh connection, then close.
fn request(addr: SocketAddr, rounds: usize, pause: Duration) {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    for i in 0..rounds {
        let msg = format!("ping {i}");
        conn.write_all(msg.as_bytes()).unwrap();
        conn.read_exact(&mut buf[..msg.len()]).unwrap();
        std::thread::sleep(pause);
    }
}

fn tcp_scenario(v6: bool) {
    const SHORT: usize = 20;
    let node = Node::new(2);
    let (client, server) = (&node.pods[0], &node.pods[1]);
    let (cip, sip): (IpAddr, IpAddr) = if v6 {
        (client.ipv6.into(), server.ipv6.into())
    } else {
        (client.ipv4.into(), server.ipv4.into())
    };
    let mut agent = Agent::start(&["--interfaces", &node.interface_glob()]);
    let (client_before, server_before) = (client.snmp(), server.snmp());

    let addr = SocketAddr::new(sip, 8080);
    let srv = echo_server(server, addr, SHORT + 1);
    client
        .run(move || {
            for _ in 0..SHORT {
                request(addr, 1, Duration::ZERO);
            }
            // The long one: 20 round trips over about two seconds.
            request(addr, 20, Duration::from_millis(100));
        })
        .join()
        .expect("client");
    srv.join().expect("server");
    // Let the last FIN/ACKs and close events reach the agent and the close linger pass.
    std::thread::sleep(Duration::from_millis(1500));
    let client_delta = client.snmp().minus(client_before);
    let server_delta = server.snmp().minus(server_before);
    let (status, records) = agent.stop();
    assert!(status.success(), "agent: {status}\n{}", agent.stderr());

    let flows = between(&records, cip, sip);
    assert_eq!(
        flows.len(),
        SHORT + 1,
        "one record per connection: {flows:#?}"
    );
    let mut ports = std::collections::BTreeSet::new();
    for f in &flows {
        assert_eq!(f["protocol"], "TCP");
        assert_eq!(f["dst"]["port"], 8080);
        assert_eq!(f["outcome"], "established", "{f}");
        assert_eq!(f["end_reason"], "closed", "{f}");
        assert_eq!(
            f["observed_at"],
            serde_json::json!(["client", "server"]),
            "{f}"
        );
        ports.insert(f["src"]["port"].as_u64().unwrap());
    }
    assert_eq!(ports.len(), SHORT + 1, "distinct ephemeral ports");
    assert!(!ports.contains(&0));
    let long = flows
        .iter()
        .max_by_key(|f| f["fwd"]["packets"].as_u64().unwrap())
        .unwrap();
    assert!(long["fwd"]["packets"].as_u64().unwrap() >= 22, "{long}");

    // The pods' own counters: everything the client sent is `fwd`, everything it got `rev`.
    let sent = client_delta.tcp_out_segs + client_delta.tcp_retrans_segs;
    assert_eq!(sum(&flows, "fwd", "packets"), sent, "client sent");
    assert_eq!(
        sum(&flows, "rev", "packets"),
        client_delta.tcp_in_segs,
        "client received"
    );
    assert_eq!(
        sum(&flows, "fwd", "packets"),
        server_delta.tcp_in_segs,
        "server received"
    );
    assert_eq!(
        sum(&flows, "rev", "packets"),
        server_delta.tcp_out_segs + server_delta.tcp_retrans_segs,
        "server sent"
    );
    assert!(sum(&flows, "fwd", "bytes") > sum(&flows, "fwd", "packets") * 40);
}

#[test]
fn tcp_ipv4_many_short_connections_and_one_long_one() {
    if !privileged::root_test("tcp_ipv4") {
        return;
    }
    tcp_scenario(false);
}

/// A bulk transfer: the pods' stacks hand the veths super-packets of many segments (TSO/GSO),
/// which the namespaces' counters count as segments, and so must flowwatch.
#[test]
fn a_bulk_transfer_counts_segments_and_their_headers() {
    const PAYLOAD: u64 = 4 << 20;
    if !privileged::root_test("tcp bulk transfer") {
        return;
    }
    let node = Node::new(2);
    let (client, server) = (&node.pods[0], &node.pods[1]);
    let (cip, sip): (IpAddr, IpAddr) = (client.ipv4.into(), server.ipv4.into());
    let mut agent = Agent::start(&["--interfaces", &node.interface_glob()]);
    let (client_before, server_before) = (client.snmp(), server.snmp());

    let addr = SocketAddr::new(sip, 8081);
    let (bound_tx, bound_rx) = mpsc::channel();
    let sink = server.run(move || {
        let listener = TcpListener::bind(addr).expect("bind");
        bound_tx.send(()).unwrap();
        let (mut conn, _) = listener.accept().expect("accept");
        let mut received = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => received += n as u64,
            }
        }
        received
    });
    bound_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("bound");
    client
        .run(move || {
            let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
            let chunk = vec![7u8; 1 << 16];
            for _ in 0..PAYLOAD / chunk.len() as u64 {
                conn.write_all(&chunk).unwrap();
            }
        })
        .join()
        .expect("client");
    assert_eq!(sink.join().expect("sink"), PAYLOAD);
    std::thread::sleep(Duration::from_millis(1500));
    let client_delta = client.snmp().minus(client_before);
    let server_delta = server.snmp().minus(server_before);
    let (status, records) = agent.stop();
    assert!(status.success(), "agent: {status}\n{}", agent.stderr());

    let flows = between(&records, cip, sip);
    assert_eq!(flows.len(), 1, "{flows:#?}");
    // The sender counts segments (OutSegs); the receiver counts what its stack took in, the
    // super-packets GRO made (InSegs), so fewer. The answers are plain ACKs: equal both ends.
    let sent = client_delta.tcp_out_segs + client_delta.tcp_retrans_segs;
    assert_eq!(sum(&flows, "fwd", "packets"), sent, "client sent");
    assert!(
        server_delta.tcp_in_segs < sent,
        "the server received {} super-packets",
        server_delta.tcp_in_segs
    );
    assert_eq!(
        sum(&flows, "rev", "packets"),
        server_delta.tcp_out_segs + server_delta.tcp_retrans_segs,
        "server sent"
    );
    assert_eq!(
        sum(&flows, "rev", "packets"),
        client_delta.tcp_in_segs,
        "client received"
    );
    // Far more segments than the 64 KiB writes: the stacks did segment (else the test shows
    // nothing). Each segment carries its own IP and TCP headers, 40 to 80 bytes.
    let packets = sum(&flows, "fwd", "packets");
    assert!(packets > 2 * PAYLOAD / (1 << 16), "{packets} segments");
    let bytes = sum(&flows, "fwd", "bytes");
    assert!(
        (PAYLOAD + 40 * packets..=PAYLOAD + 80 * packets).contains(&bytes),
        "{bytes} bytes for {PAYLOAD} bytes of payload in {packets} segments"
    );
}

#[test]
fn tcp_ipv6_connections() {
    if !privileged::root_test("tcp_ipv6") {
        return;
    }
    tcp_scenario(true);
}

/// A connection opened before the agent started: the agent sees its later packets and its
/// closes but no handshake, so the record is `midstream` (its traffic counts, it is not a new
/// connection), oriented from the client's ephemeral port to the service port, and one record.
#[test]
fn a_connection_older_than_the_agent_is_midstream() {
    if !privileged::root_test("tcp midstream") {
        return;
    }
    let node = Node::new(2);
    let (client, server) = (&node.pods[0], &node.pods[1]);
    let (cip, sip): (IpAddr, IpAddr) = (client.ipv4.into(), server.ipv4.into());
    let addr = SocketAddr::new(sip, 8080);
    let srv = echo_server(server, addr, 1);
    let (opened_tx, opened_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (close_tx, close_rx) = mpsc::channel::<()>();
    let conn = client.run(move || {
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 4];
        conn.write_all(b"ping").unwrap();
        conn.read_exact(&mut buf).unwrap();
        opened_tx.send(conn.local_addr().unwrap().port()).unwrap();
        go_rx.recv_timeout(Duration::from_secs(30)).expect("go");
        for _ in 0..5 {
            conn.write_all(b"pong").unwrap();
            conn.read_exact(&mut buf).unwrap();
        }
        // Open until the agent has read the flow from its map, so it knows the flow when the
        // sockets close (a close event for a flow it never saw is ignored).
        close_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("close");
    });
    let client_port = opened_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("opened");
    let mut agent = Agent::start(&["--interfaces", &node.interface_glob()]);
    go_tx.send(()).unwrap();
    // The fill ratio is set on the poll that read the map: once it is above 0, the flow is
    // known; one more poll (200 ms) for the entry that landed just after that read.
    let fill = "flowwatch_kernel_map_fill_ratio{map=\"flows\"}";
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.metric(fill).unwrap_or(0.0) == 0.0 {
        assert!(
            Instant::now() < deadline,
            "{fill} still 0:\n{}",
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(400));
    let _ = close_tx.send(()); // a client that failed already says why at its join
    conn.join().expect("client");
    srv.join().expect("server");
    std::thread::sleep(Duration::from_millis(1500));
    let (status, records) = agent.stop();
    assert!(status.success(), "agent: {status}\n{}", agent.stderr());

    let flows = between(&records, cip, sip);
    assert_eq!(flows.len(), 1, "one record: {records:#?}");
    let f = &flows[0];
    assert_eq!(f["outcome"], "midstream", "{f}");
    assert_eq!(f["end_reason"], "closed", "{f}");
    assert_eq!(f["src"]["port"], client_port);
    assert_eq!(f["dst"]["port"], 8080);
    assert!(f["fwd"]["packets"].as_u64().unwrap() >= 5, "{f}");
    assert!(f["rev"]["packets"].as_u64().unwrap() >= 5, "{f}");
    assert!(between(&records, sip, cip).is_empty(), "{records:#?}");
}

#[test]
fn udp_request_response_both_families() {
    if !privileged::root_test("udp") {
        return;
    }
    let node = Node::new(2);
    let (client, server) = (&node.pods[0], &node.pods[1]);
    let mut agent = Agent::start(&["--interfaces", &node.interface_glob()]);
    let (client_before, server_before) = (client.snmp(), server.snmp());
    for sip in [IpAddr::from(server.ipv4), IpAddr::from(server.ipv6)] {
        let addr = SocketAddr::new(sip, 5353);
        let (bound_tx, bound_rx) = mpsc::channel();
        let srv = server.run(move || {
            let sock = UdpSocket::bind(addr).unwrap();
            bound_tx.send(()).unwrap();
            let mut buf = [0u8; 512];
            for _ in 0..5 {
                let (n, from) = sock.recv_from(&mut buf).unwrap();
                sock.send_to(&buf[..n], from).unwrap();
            }
        });
        bound_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        client
            .run(move || {
                let bind: SocketAddr = if addr.is_ipv6() {
                    "[::]:0".parse().unwrap()
                } else {
                    "0.0.0.0:0".parse().unwrap()
                };
                let sock = UdpSocket::bind(bind).unwrap();
                sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut buf = [0u8; 512];
                for i in 0..5 {
                    sock.send_to(format!("query {i}").as_bytes(), addr).unwrap();
                    sock.recv_from(&mut buf).unwrap();
                }
            })
            .join()
            .unwrap();
        srv.join().unwrap();
    }
    std::thread::sleep(Duration::from_millis(600));
    let client_delta = client.snmp().minus(client_before);
    let server_delta = server.snmp().minus(server_before);
    let (status, records) = agent.stop();
    assert!(status.success());

    for (cip, sip, sent, received) in [
        (
            IpAddr::from(client.ipv4),
            IpAddr::from(server.ipv4),
            client_delta.udp_out,
            client_delta.udp_in,
        ),
        (
            IpAddr::from(client.ipv6),
            IpAddr::from(server.ipv6),
            client_delta.udp6_out,
            client_delta.udp6_in,
        ),
    ] {
        let flows = between(&records, cip, sip);
        assert_eq!(flows.len(), 1, "{cip} -> {sip}: {flows:#?}");
        let f = &flows[0];
        assert_eq!(f["protocol"], "UDP");
        assert_eq!(f["dst"]["port"], 5353);
        assert_eq!(f["outcome"], "established", "answered: {f}");
        assert_eq!((sent, received), (5, 5));
        assert_eq!(f["fwd"]["packets"], 5);
        assert_eq!(f["rev"]["packets"], 5);
    }
    assert_eq!(server_delta.udp_in + server_delta.udp6_in, 10);
}

#[test]
fn refused_and_firewalled_attempts_are_failed_flows() {
    if !privileged::root_test("failed attempts")
        || !privileged::require("failed attempts", privileged::command("nft"))
    {
        return;
    }
    let node = Node::new(2);
    let (client, server) = (&node.pods[0], &node.pods[1]);
    // The server pod drops SYNs to port 7000, as a NetworkPolicy-enforcing CNI would.
    server.drop_incoming("tcp dport 7000");

    let mut agent = Agent::start(&["--interfaces", &node.interface_glob()]);
    let before = client.snmp();
    let sip = IpAddr::from(server.ipv4);
    client
        .run(move || {
            let refused =
                TcpStream::connect_timeout(&SocketAddr::new(sip, 9), Duration::from_secs(2));
            assert_eq!(
                refused.map(|_| ()).unwrap_err().kind(),
                std::io::ErrorKind::ConnectionRefused
            );
            let dropped = TcpStream::connect_timeout(
                &SocketAddr::new(sip, 7000),
                Duration::from_millis(1500),
            );
            assert_eq!(
                dropped.map(|_| ()).unwrap_err().kind(),
                std::io::ErrorKind::TimedOut
            );
        })
        .join()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    let delta = client.snmp().minus(before);
    let (status, records) = agent.stop();
    assert!(status.success());

    let flows = between(&records, IpAddr::from(client.ipv4), sip);
    assert_eq!(flows.len(), 2, "{flows:#?}");
    let refused = flows
        .iter()
        .find(|f| f["dst"]["port"] == 9)
        .expect("refused flow");
    assert_eq!(refused["outcome"], "failed");
    assert_eq!(refused["end_reason"], "failed");
    assert_eq!(refused["observed_at"], serde_json::json!(["client"]));
    assert_eq!(
        (
            refused["fwd"]["packets"].as_u64(),
            refused["rev"]["packets"].as_u64()
        ),
        (Some(1), Some(1)),
        "SYN, RST"
    );

    let dropped = flows
        .iter()
        .find(|f| f["dst"]["port"] == 7000)
        .expect("dropped flow");
    assert_eq!(dropped["outcome"], "failed");
    assert_eq!(dropped["observed_at"], serde_json::json!(["client"]));
    assert_eq!(dropped["rev"]["packets"], 0, "nothing came back");
    // Every SYN the client sent (first and retransmitted) is on one of the two records.
    assert_eq!(
        sum(&flows, "fwd", "packets"),
        delta.tcp_out_segs + delta.tcp_retrans_segs,
        "client segments"
    );
    assert!(dropped["fwd"]["packets"].as_u64().unwrap() >= 1);
}

/// The names of the tcx programs attached to an interface, asked of the kernel.
fn tcx_programs(dev: &str) -> String {
    use aya::programs::{SchedClassifier, TcAttachType};
    let mut names = Vec::new();
    for direction in [TcAttachType::Ingress, TcAttachType::Egress] {
        let (_, programs) = SchedClassifier::query_tcx(dev, direction)
            .unwrap_or_else(|e| panic!("querying tcx on {dev}: {e}"));
        names.extend(
            programs
                .iter()
                .filter_map(|p| p.name_as_str().map(String::from)),
        );
    }
    names.join(",")
}

/// Attaches, at the end of `dev`'s tcx ingress chain, a program named `cni_drop` that drops
/// every IPv4 packet (what a CNI enforcing a deny-all would do; ARP goes on, so the client still
/// finds the server and sends its SYNs): six instructions loaded and linked with bpf(2), so the
/// test needs no second eBPF object. Detached when the returned link is dropped.
fn drop_everything_after(dev: &str) -> std::os::fd::OwnedFd {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_LINK_CREATE: libc::c_long = 28;
    const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
    const BPF_TCX_INGRESS: u32 = 46;
    const TC_ACT_SHOT: u8 = 2;
    let bpf = |cmd: libc::c_long, attr: &mut [u8; 128]| -> i32 {
        // SAFETY: attr is a zero-padded bpf_attr of the size passed; its pointers reference
        // live buffers for the whole call.
        let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
        assert!(rc >= 0, "bpf({cmd}): {}", std::io::Error::last_os_error());
        rc as i32
    };
    #[rustfmt::skip]
    let insns: [u8; 48] = [
        0x61, 0x12, 16, 0, 0, 0, 0, 0,         // r2 = skb->protocol (u32 at offset 16)
        0x55, 0x02, 2, 0, 0x08, 0, 0, 0,       // if r2 != htons(ETH_P_IP) goto +2
        0xb7, 0, 0, 0, TC_ACT_SHOT, 0, 0, 0,   // r0 = TC_ACT_SHOT
        0x95, 0, 0, 0, 0, 0, 0, 0,             // exit
        0xb7, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, // r0 = -1 (next)
        0x95, 0, 0, 0, 0, 0, 0, 0,             // exit
    ];
    let license = b"GPL\0";
    let mut load = [0u8; 128];
    load[0..4].copy_from_slice(&BPF_PROG_TYPE_SCHED_CLS.to_ne_bytes());
    load[4..8].copy_from_slice(&((insns.len() / 8) as u32).to_ne_bytes());
    load[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    load[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    load[48..56].copy_from_slice(b"cni_drop"); // prog_name
                                               // SAFETY: a new fd the kernel just returned, owned here.
    let prog = unsafe { OwnedFd::from_raw_fd(bpf(BPF_PROG_LOAD, &mut load)) };
    let name = std::ffi::CString::new(dev).expect("interface name");
    // SAFETY: a valid NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert_ne!(ifindex, 0, "no interface {dev}");
    let mut link = [0u8; 128];
    link[0..4].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
    link[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    link[8..12].copy_from_slice(&BPF_TCX_INGRESS.to_ne_bytes());
    // SAFETY: as above.
    unsafe { OwnedFd::from_raw_fd(bpf(BPF_LINK_CREATE, &mut link)) }
}

/// flowwatch only observes: its programs answer "next", so what a CNI attached to the same
/// interface decides still happens. Here a CNI's program, attached after flowwatch's, drops
/// everything the client pod sends: the drop must still take effect, and flowwatch must still
/// have seen the attempt.
#[test]
fn a_cni_filter_behind_flowwatch_still_runs() {
    if !privileged::root_test("tc chain") {
        return;
    }
    let node = Node::new(2);
    let (client, server) = (&node.pods[0], &node.pods[1]);
    // The CNI was there first; flowwatch still goes before it, to see what it drops.
    let _cni = drop_everything_after(&client.host_if);
    let mut agent = Agent::start(&["--interfaces", &node.interface_glob()]);
    assert!(
        tcx_programs(&client.host_if).starts_with("tc_ingress,cni_drop"),
        "flowwatch first in the chain: {}",
        tcx_programs(&client.host_if)
    );
    // The listener stays open (in the server pod's namespace) while the client tries: without
    // the drop, the kernel would complete the handshake into its backlog.
    let addr = SocketAddr::new(server.ipv4.into(), 8090);
    let _listener = server
        .run(move || TcpListener::bind(addr))
        .join()
        .expect("server pod")
        .expect("bind");
    let connected = client
        .run(move || TcpStream::connect_timeout(&addr, Duration::from_millis(1500)).is_ok())
        .join()
        .expect("client");
    assert!(
        !connected,
        "the CNI's drop was skipped: flowwatch ended the TC chain"
    );
    std::thread::sleep(Duration::from_millis(500));
    let (status, records) = agent.stop();
    assert!(status.success());
    let attempts = between(&records, client.ipv4.into(), server.ipv4.into());
    assert_eq!(attempts.len(), 1, "{attempts:#?}");
    assert_eq!(attempts[0]["outcome"], "failed", "{}", attempts[0]);
    // Seen on the wire, not only by the socket: the SYNs the CNI then dropped.
    assert!(
        attempts[0]["fwd"]["packets"].as_u64() >= Some(1),
        "{}\n{records:#?}\n{}",
        attempts[0],
        agent.stderr()
    );
}

#[test]
fn interfaces_are_followed_and_nothing_stays_attached_after_sigkill() {
    if !privileged::root_test("interface lifecycle") {
        return;
    }
    let node = Node::new(1);
    let host_if = node.pods[0].host_if.clone();
    let mut agent = Agent::start(&["--interfaces", &node.interface_glob()]);
    assert!(
        tcx_programs(&host_if).contains("tc_ingress"),
        "{}",
        tcx_programs(&host_if)
    );

    // A pod interface that appears after start is attached; one that goes is detached.
    let late = format!("fw{}h9", node.tag);
    sh(&[
        "ip",
        "link",
        "add",
        &late,
        "type",
        "veth",
        "peer",
        "name",
        &format!("fw{}x9", node.tag),
    ]);
    agent.wait_for_log(
        &format!("attached interface=\"{late}\""),
        Duration::from_secs(5),
    );
    assert!(tcx_programs(&late).contains("tc_egress"));
    sh(&["ip", "link", "del", &late]);
    agent.wait_for_log(
        &format!("detached interface=\"{late}\""),
        Duration::from_secs(15),
    );

    agent.kill9();
    // tcx links belong to the agent's file descriptors: the kernel detached them at exit.
    let after = tcx_programs(&host_if);
    assert!(
        !after.contains("tc_ingress") && !after.contains("tc_egress"),
        "{after}"
    );
}

#[test]
fn sigterm_detaches_cleanly() {
    if !privileged::root_test("sigterm") {
        return;
    }
    let node = Node::new(1);
    let host_if = node.pods[0].host_if.clone();
    let mut agent = Agent::start(&["--interfaces", &node.interface_glob()]);
    let (status, _) = agent.stop();
    assert!(status.success(), "{}", agent.stderr());
    assert!(agent
        .stderr()
        .contains(&format!("detached interface=\"{host_if}\"")));
    assert!(!tcx_programs(&host_if).contains("tc_ingress"));
}

#[test]
fn sigint_flushes_the_flow_log_on_stdout_and_detaches() {
    if !privileged::root_test("sigint") {
        return;
    }
    let node = Node::new(2);
    let (client, server) = (&node.pods[0], &node.pods[1]);
    let host_if = client.host_if.clone();
    // An idle timeout far beyond the test: the flow is still in flight at SIGINT, so only the
    // shutdown flush can write its record.
    let mut agent = Agent::start_with_flow_log_on_stdout(&[
        "--interfaces",
        &node.interface_glob(),
        "--idle-timeout-secs",
        "600",
    ]);
    let target = SocketAddr::new(server.ipv4.into(), 5454);
    client
        .run(move || {
            let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
            for _ in 0..3 {
                sock.send_to(b"hello", target).unwrap();
            }
        })
        .join()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500)); // a poll reads the flow map

    // Only this node's pods: the socket tracepoint sees every socket on the machine, so tests
    // running alongside (other nodes, other addresses) may end their own flows meanwhile.
    let early: Vec<Value> = agent
        .records()
        .into_iter()
        .filter(|r| node.pods.iter().any(|pod| touches(r, pod.ipv4.into())))
        .collect();
    assert!(
        early.is_empty(),
        "nothing is over before the signal: {early:#?}\n{}",
        agent.stderr()
    );

    let (status, records) = agent.stop_with(libc::SIGINT);
    assert!(status.success(), "{}", agent.stderr());
    let flows = between(&records, client.ipv4.into(), server.ipv4.into());
    assert_eq!(flows.len(), 1, "{records:#?}");
    assert_eq!(flows[0]["protocol"], "UDP");
    assert_eq!(flows[0]["dst"]["port"], 5454);
    assert_eq!(flows[0]["fwd"]["packets"], 3);
    assert!(agent.stderr().contains("SIGINT"), "{}", agent.stderr());
    assert!(!tcx_programs(&host_if).contains("tc_ingress"));
}

/// The capture benchmark's floor (`--benchmark-null-datapath`) is only a floor if the programs
/// really do nothing: attached, and nothing seen.
#[test]
fn the_benchmark_null_datapath_attaches_and_sees_nothing() {
    if !privileged::root_test("null datapath") {
        return;
    }
    let node = Node::new(2);
    let (client, server) = (&node.pods[0], &node.pods[1]);
    let mut agent = Agent::start(&[
        "--interfaces",
        &node.interface_glob(),
        "--benchmark-null-datapath",
    ]);
    assert!(tcx_programs(&client.host_if).contains("tc_ingress"));
    flowwatch_testkit::traffic::one_connection(
        client,
        server,
        SocketAddr::new(server.ipv4.into(), 7100),
    );
    std::thread::sleep(Duration::from_millis(500)); // two polls
    let (status, records) = agent.stop();
    assert!(status.success(), "{}", agent.stderr());
    assert!(records.is_empty(), "{records:#?}");
}

/// Startup errors are one line naming what is missing, with a non-zero exit.
fn assert_one_clear_line(status: std::process::ExitStatus, stderr: &str, expected: &str) {
    assert!(!status.success(), "should fail: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains(expected), "{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
}

/// The agent given `--interfaces pattern` stops at startup with one error line, `expected`.
fn interfaces_are_one_clear_error(pattern: &str, expected: &str) {
    let (status, stderr) = agent::run_to_exit(std::process::Command::new(agent::binary()).args([
        "run",
        "--interfaces",
        pattern,
        "--listen",
        "127.0.0.1:0",
    ]));
    assert_one_clear_line(status, &stderr, expected);
}

#[test]
fn missing_interface_is_one_clear_error() {
    if !privileged::root_test("missing interface") {
        return;
    }
    interfaces_are_one_clear_error(
        "fwnosuch0",
        "network interface \"fwnosuch0\" does not exist",
    );
}

#[test]
fn interface_patterns_that_attach_nothing_are_one_clear_error() {
    if !privileged::root_test("interface patterns") {
        return;
    }
    interfaces_are_one_clear_error(
        "!veth*",
        "--interfaces: no pattern to attach to: every one is an exclusion",
    );
}

#[test]
fn no_privileges_is_one_clear_error() {
    if !privileged::root_test("no privileges")
        || !privileged::require("no privileges", privileged::command("setpriv"))
    {
        return;
    }
    // Still uid 0 (so the binary is reachable wherever the clone is, e.g. under a 0700 /root),
    // but with no capabilities: an empty bounding set leaves root none at exec, and
    // no_new_privs keeps it so.
    let (status, stderr) = agent::run_to_exit(
        std::process::Command::new("setpriv")
            .args([
                "--bounding-set=-all",
                "--inh-caps=-all",
                "--ambient-caps=-all",
                "--no-new-privs",
                "--",
            ])
            .arg(agent::binary())
            .args(["run", "--listen", "127.0.0.1:0"]),
    );
    assert_one_clear_line(
        status,
        &stderr,
        "insufficient privileges: missing CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN",
    );
}

#[test]
fn tracefs_not_mounted_names_the_mount_to_make() {
    if !privileged::root_test("tracefs")
        || !privileged::require("tracefs", privileged::command("unshare"))
    {
        return;
    }
    // A private mount namespace where tracefs is gone, and the agent told not to mount it.
    let script = format!(
        "umount -l /sys/kernel/tracing 2>/dev/null; umount -l /sys/kernel/debug/tracing 2>/dev/null; \
         umount -l /sys/kernel/debug 2>/dev/null; \
         exec {} run --mount-tracefs=false --interfaces lo --listen 127.0.0.1:0",
        agent::binary().display()
    );
    let (status, stderr) = agent::run_to_exit(std::process::Command::new("unshare").args([
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
    ]));
    assert_one_clear_line(
        status,
        &stderr,
        "mount -t tracefs nodev /sys/kernel/tracing",
    );
}
