//! A connection to a Service ClusterIP, translated by an iptables DNAT rule as kube-proxy does,
//! is attributed by the real agent to the Service and the backend pod that served it, and
//! counted once in the metrics.
//!
//! Two pods on two bridges routed through the host (so the reply goes back through the NAT),
//! the agent with a snapshot naming the pods and the Service.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use flowwatch_testkit::agent::Agent;
use flowwatch_testkit::netns::{sh, Node, Pod};
use flowwatch_testkit::privileged;
use flowwatch_testkit::traffic::{accept_within, wait_record};

/// The DNAT rule as kube-proxy writes it, removed again on drop, also on failure. Unique to
/// the test: its ClusterIP derives from the server node's unique subnet.
struct HostNat {
    rule: Vec<String>,
}

impl HostNat {
    fn install(cluster_ip: Ipv4Addr, backend: SocketAddr) -> HostNat {
        let rule: Vec<String> = [
            "PREROUTING",
            "-d",
            &format!("{cluster_ip}/32"),
            "-p",
            "tcp",
            "--dport",
            "80",
            "-j",
            "DNAT",
            "--to-destination",
            &backend.to_string(),
        ]
        .iter()
        .map(std::string::ToString::to_string)
        .collect();
        let mut add = vec!["iptables", "-t", "nat", "-A"];
        add.extend(rule.iter().map(String::as_str));
        sh(&add);
        HostNat { rule }
    }
}

impl Drop for HostNat {
    fn drop(&mut self) {
        let mut del = vec!["-t".to_string(), "nat".into(), "-D".into()];
        del.extend(self.rule.iter().cloned());
        let _ = Command::new("iptables").args(&del).output();
    }
}

/// Gives the node's bridge the .254 address of its pods' subnet, routes the pods through it,
/// and lets the host forward what arrives on the bridge.
///
/// Forwarding is switched on for this bridge only (`net.ipv4.conf.<bridge>.forwarding`, which
/// decides for packets coming in on it), never through the machine-wide `net.ipv4.ip_forward`:
/// nothing global to save and restore, which tests running at the same time (in this process
/// or another) would race on, and the setting goes with the bridge.
fn route_through_host(node: &Node) {
    let pod = &node.pods[0];
    let o = pod.ipv4.octets();
    let gateway = Ipv4Addr::new(o[0], o[1], o[2], 254);
    sh(&[
        "ip",
        "addr",
        "add",
        &format!("{gateway}/24"),
        "dev",
        &node.bridge,
    ]);
    sh(&[
        "sysctl",
        "-qw",
        &format!("net.ipv4.conf.{}.forwarding=1", node.bridge),
    ]);
    pod.ip(&["route", "add", "default", "via", &gateway.to_string()]);
}

fn snapshot(client: &Pod, server: &Pod, cluster_ip: Ipv4Addr) -> String {
    flowwatch_testkit::snapshot::client_and_server(
        client,
        server,
        &format!(
            r"- apiVersion: v1
  kind: Service
  metadata: {{name: web, namespace: app}}
  spec:
    clusterIP: {cluster_ip}
    selector: {{app: server}}
    ports: [{{port: 80, targetPort: 8080, protocol: TCP}}]
"
        ),
    )
}

#[test]
fn clusterip_connection_is_attributed_to_its_backend() {
    if !privileged::root_test("service nat")
        || !privileged::require("service nat", privileged::command("iptables"))
    {
        return;
    }
    scenario(false);
}

/// The backend's socket and interface are hidden from the agent (`--ignore-cidrs` its address),
/// as when the backend runs on another node: only conntrack knows where the DNAT sent it.
#[test]
fn clusterip_connection_to_a_backend_not_seen_here_is_resolved_through_conntrack() {
    if !privileged::root_test("service nat (conntrack)")
        || !privileged::require("service nat (conntrack)", privileged::command("iptables"))
    {
        return;
    }
    scenario(true);
}

fn scenario(backend_elsewhere: bool) {
    let (a, b) = (Node::new(1), Node::new(1));
    route_through_host(&a);
    route_through_host(&b);
    let (client, server) = (&a.pods[0], &b.pods[0]);
    let o = server.ipv4.octets();
    // A ClusterIP unique to this test, outside both pod subnets.
    let cluster_ip = Ipv4Addr::new(10, 96, o[1], o[2]);
    let backend = SocketAddr::from((server.ipv4, 8080));
    let _nat = HostNat::install(cluster_ip, backend);

    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("cluster.yaml");
    std::fs::write(&snap, snapshot(client, server, cluster_ip)).unwrap();
    let (interfaces, ignore) = if backend_elsewhere {
        (
            a.interface_glob(),
            format!("127.0.0.0/8,{}/32", server.ipv4),
        )
    } else {
        (
            format!("{},{}", a.interface_glob(), b.interface_glob()),
            "127.0.0.0/8".to_string(),
        )
    };
    let mut agent = Agent::start(&[
        "--interfaces",
        &interfaces,
        "--ignore-cidrs",
        &ignore,
        "--snapshot",
        snap.to_str().unwrap(),
    ]);
    agent.wait_for_log("inventory updated", Duration::from_secs(10));

    let (tx, rx) = std::sync::mpsc::channel();
    let srv = server.run(move || {
        let l = TcpListener::bind(backend).unwrap();
        tx.send(()).unwrap();
        let mut c = accept_within(&l, Duration::from_secs(10)).expect("accept at the backend");
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).unwrap();
        c.write_all(&buf).unwrap();
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let client_before = client.snmp();
    client
        .run(move || {
            let mut c = TcpStream::connect_timeout(
                &SocketAddr::from((cluster_ip, 80)),
                Duration::from_secs(3),
            )
            .expect("connect to the ClusterIP");
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            c.write_all(b"hello").unwrap();
            let mut buf = [0u8; 5];
            c.read_exact(&mut buf).unwrap();
        })
        .join()
        .unwrap();
    srv.join().unwrap();
    // Scraped once the connection is reported (its last packets read, so its metrics final),
    // and two more polls for the backend's half to settle with it.
    wait_record(&agent, SocketAddr::from((cluster_ip, 80)), 0);
    std::thread::sleep(Duration::from_millis(500));
    let client_delta = client.snmp().minus(client_before);
    let (_, metrics) =
        flowwatch_testkit::prometheus::http_get(&agent.listen, "/metrics", None).expect("scrape");
    let (status, records) = agent.stop();
    assert!(status.success());

    let from_client: Vec<_> = records
        .iter()
        .filter(|r| r["src"]["ip"] == client.ipv4.to_string())
        .collect();
    let to_service = from_client
        .iter()
        .find(|r| r["dst"]["ip"] == cluster_ip.to_string())
        .unwrap_or_else(|| panic!("no record to the ClusterIP: {from_client:#?}"));
    assert_eq!(to_service["dst"]["port"], 80);
    assert_eq!(to_service["dst"]["kind"], "service", "{to_service}");
    assert_eq!(to_service["dst"]["name"], "web");
    assert_eq!(
        to_service["dst"]["backend"]["name"], "server",
        "{to_service}"
    );
    assert_eq!(to_service["outcome"], "established");
    assert!(to_service["fwd"]["packets"].as_u64().unwrap() >= 3);

    let edges: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            l.starts_with("flowwatch_connections_total{") && l.contains("src_workload=\"client\"")
        })
        .collect();
    assert_eq!(edges.len(), 1, "{edges:?}");
    assert!(
        edges[0].contains("dst_workload=\"server\"") && edges[0].contains("dst_port=\"8080\""),
        "{edges:?}"
    );
    assert!(edges[0].ends_with(" 1"), "counted once: {edges:?}");
    // Both directions reach the edge's traffic: requests seen at the client, replies at the
    // backend.
    let packets = |direction: &str| -> f64 {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("flowwatch_flow_packets_total{")
                    && l.contains("src_workload=\"client\"")
                    && l.contains(&format!("direction=\"{direction}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    };
    // Each packet once, though the node's NAT shows the connection twice (to the Service at the
    // client, to the backend at the backend): the client pod's own counters.
    let sent = client_delta.tcp_out_segs + client_delta.tcp_retrans_segs;
    assert_eq!(packets("forward"), sent as f64, "{metrics}");
    assert_eq!(
        packets("reverse"),
        client_delta.tcp_in_segs as f64,
        "{metrics}"
    );
    if backend_elsewhere {
        assert!(
            !records
                .iter()
                .any(|r| r["dst"]["ip"] == server.ipv4.to_string()),
            "the backend's view is hidden in this variant"
        );
    }
}
