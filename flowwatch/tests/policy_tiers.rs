//! Cluster-scoped policies through the real binary (`flowwatch policy eval`): scenarios written
//! from the network-policy-api text (v0.2.0: ClusterNetworkPolicy v1alpha2, AdminNetworkPolicy
//! and BaselineAdminNetworkPolicy v1alpha1) and the facts its conformance tests check: tiers,
//! priorities, rule order, Pass, networks, nodes, named ports, port ranges, protocols, tenants.
//! Each case checks the overall verdict and, per side, the verdict and the deciding tier.
//!
//! The world: namespaces x and y (tenant blue) and z (tenant red), each with pods a (app web,
//! on node-1, named ports web=80/TCP and dns=53/UDP) and b (app db, on node-2, named port
//! web=8080/TCP); node-1 and node-2 are workers, node-3 the control plane; a host-network pod
//! infra/agent on node-3.

use std::fmt::Write as _;
use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

const WORLD: &str = r"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: x, labels: {tenant: blue, ns: x}}}
- {apiVersion: v1, kind: Namespace, metadata: {name: y, labels: {tenant: blue, ns: y}}}
- {apiVersion: v1, kind: Namespace, metadata: {name: z, labels: {tenant: red, ns: z}}}
- {apiVersion: v1, kind: Namespace, metadata: {name: infra}}
- apiVersion: v1
  kind: Node
  metadata: {name: node-1, labels: {kubernetes.io/os: linux, role: worker}}
  status: {addresses: [{type: InternalIP, address: 192.168.0.1}, {type: ExternalIP, address: 198.51.100.1}]}
- apiVersion: v1
  kind: Node
  metadata: {name: node-2, labels: {kubernetes.io/os: linux, role: worker}}
  status: {addresses: [{type: InternalIP, address: 192.168.0.2}]}
- apiVersion: v1
  kind: Node
  metadata: {name: node-3, labels: {kubernetes.io/os: linux, role: control-plane}}
  status: {addresses: [{type: InternalIP, address: 192.168.0.3}]}
- apiVersion: v1
  kind: Pod
  metadata: {namespace: infra, name: agent, labels: {app: agent}}
  spec: {nodeName: node-3, hostNetwork: true, containers: [{name: c, ports: [{name: metrics, containerPort: 9100}]}]}
  status: {phase: Running, podIP: 192.168.0.3}
";

/// Pods a and b of namespace `ns` (index `n`): a = 10.0.<n>.10, b = 10.0.<n>.11.
fn pods(ns: &str, n: u8) -> String {
    format!(
        r"- apiVersion: v1
  kind: Pod
  metadata: {{namespace: {ns}, name: a, labels: {{app: web}}}}
  spec: {{nodeName: node-1, containers: [{{name: c, ports: [{{name: web, containerPort: 80}}, {{name: dns, containerPort: 53, protocol: UDP}}]}}]}}
  status: {{phase: Running, podIP: 10.0.{n}.10}}
- apiVersion: v1
  kind: Pod
  metadata: {{namespace: {ns}, name: b, labels: {{app: db}}}}
  spec: {{nodeName: node-2, containers: [{{name: c, ports: [{{name: web, containerPort: 8080}}]}}]}}
  status: {{phase: Running, podIP: 10.0.{n}.11}}
"
    )
}

fn snapshot(policies: &str) -> String {
    let mut s = String::from(WORLD);
    for (n, ns) in ["x", "y", "z"].iter().enumerate() {
        s.push_str(&pods(ns, n as u8));
    }
    s.push_str("---\n");
    s.push_str(policies);
    s
}

/// One expected answer: flow, overall verdict, egress (verdict, tier), ingress (verdict, tier).
struct Case {
    src: &'static str,
    dst: &'static str,
    port: u16,
    protocol: &'static str,
    verdict: &'static str,
    egress: (&'static str, &'static str),
    ingress: (&'static str, &'static str),
}

/// `"x/a -> y/b 80/TCP: denied | egress allowed admin | ingress uncovered none"`.
fn case(spec: &'static str) -> Case {
    let parts: Vec<&str> = spec.split('|').map(str::trim).collect();
    let (flow, verdict) = parts[0].rsplit_once(": ").unwrap();
    let mut words = flow.split_whitespace();
    let src = words.next().unwrap();
    assert_eq!(words.next(), Some("->"));
    let dst = words.next().unwrap();
    let (port, protocol) = words.next().unwrap().split_once('/').unwrap();
    let side = |s: &'static str, name: &str| {
        let w: Vec<&'static str> = s.split_whitespace().collect();
        assert_eq!(w[0], name, "{spec}");
        (w[1], w[2])
    };
    Case {
        src,
        dst,
        port: port.parse().unwrap(),
        protocol,
        verdict: verdict.trim(),
        egress: side(parts[1], "egress"),
        ingress: side(parts[2], "ingress"),
    }
}

/// Runs the cases through `flowwatch policy eval` on the world plus `policies`; every object
/// must be valid (no warning). Returns the answers.
#[track_caller]
fn check(policies: &str, cases: &[&'static str]) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snapshot.yaml");
    std::fs::write(&path, snapshot(policies)).unwrap();
    let cases: Vec<Case> = cases.iter().map(|c| case(c)).collect();
    let mut input = String::new();
    for c in &cases {
        let _ = writeln!(
            input,
            "{{\"src\": \"{}\", \"dst\": \"{}\", \"port\": {}, \"protocol\": \"{}\"}}",
            c.src, c.dst, c.port, c.protocol
        );
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_flowwatch"))
        .args(["policy", "eval", "--snapshot"])
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.is_empty(), "every object is valid: {stderr}");
    let answers: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(answers.len(), cases.len());
    let mut wrong = Vec::new();
    for (c, a) in cases.iter().zip(&answers) {
        let got = (
            a["verdict"].as_str().unwrap_or("?"),
            (
                a["egress"]["verdict"].as_str().unwrap_or("?"),
                a["egress"]["tier"].as_str().unwrap_or("?"),
            ),
            (
                a["ingress"]["verdict"].as_str().unwrap_or("?"),
                a["ingress"]["tier"].as_str().unwrap_or("?"),
            ),
        );
        if got != (c.verdict, c.egress, c.ingress) {
            wrong.push(format!(
                "{} -> {} {}/{}: expected {} | egress {:?} | ingress {:?}\n  got {a}",
                c.src, c.dst, c.port, c.protocol, c.verdict, c.egress, c.ingress
            ));
        }
        // `decided_by` is present exactly when a tier decided a rule-made verdict.
        for side in ["egress", "ingress"] {
            let s = &a[side];
            if s["tier"] == "admin" || s["tier"] == "baseline" {
                assert!(s["decided_by"]["kind"].is_string(), "{a}");
                assert!(s["decided_by"]["action"].is_string(), "{a}");
            }
            if s["tier"] == "none" {
                assert!(s.get("decided_by").is_none(), "{a}");
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    answers
}

fn cnp(name: &str, tier: &str, priority: u32, rest: &str) -> String {
    format!(
        "---\napiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n  tier: {tier}\n  priority: {priority}\n{rest}\n"
    )
}

fn anp(name: &str, priority: u32, rest: &str) -> String {
    format!(
        "---\napiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n  priority: {priority}\n{rest}\n"
    )
}

fn banp(rest: &str) -> String {
    format!(
        "---\napiVersion: policy.networking.k8s.io/v1alpha1\nkind: BaselineAdminNetworkPolicy\nmetadata: {{name: default}}\nspec:\n{rest}\n"
    )
}

fn np(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{namespace: {ns}, name: {name}}}\nspec: {spec}\n"
    )
}

const SUBJECT_X: &str = "  subject: {namespaces: {matchLabels: {ns: x}}}";

#[test]
fn admin_deny_and_accept_decide_before_network_policies() {
    let policies = [
        cnp(
            "admin-x",
            "Admin",
            10,
            &format!(
                "{SUBJECT_X}
  ingress:
  - {{name: deny-from-z, action: Deny, from: [{{namespaces: {{matchLabels: {{ns: z}}}}}}]}}
  - {{name: accept-from-y-web, action: Accept, from: [{{pods: {{namespaceSelector: {{matchLabels: {{ns: y}}}}, podSelector: {{matchLabels: {{app: web}}}}}}}}]}}"
            ),
        ),
        // x denies all ingress by NetworkPolicy.
        np("x", "deny-all", "{podSelector: {}}"),
    ]
    .concat();
    check(
        &policies,
        &[
            // Admin Deny: denied whatever the NetworkPolicy says.
            "z/a -> x/a 80/TCP: denied | egress uncovered none | ingress denied admin",
            // Admin Accept overrides the NetworkPolicy's deny.
            "y/a -> x/a 80/TCP: allowed | egress uncovered none | ingress allowed admin",
            // No Admin rule matches y/b: the NetworkPolicy decides.
            "y/b -> x/a 80/TCP: denied | egress uncovered none | ingress denied networkpolicy",
            // Egress of x is not governed by anything.
            "x/a -> y/a 80/TCP: uncovered | egress uncovered none | ingress uncovered none",
            // Addresses work the same as names.
            "10.0.2.10 -> 10.0.0.11 443/UDP: denied | egress uncovered none | ingress denied admin",
            // External sources are no pods: no Admin rule matches; the NetworkPolicy decides.
            "203.0.113.9 -> x/b 80/TCP: denied | egress not_applicable none | ingress denied networkpolicy",
        ],
    );
}

#[test]
fn an_admin_accept_on_egress_does_not_override_ingress_at_the_destination() {
    let policies = [
        cnp(
            "egress-accept",
            "Admin",
            1,
            "  subject: {namespaces: {}}\n  egress:\n  - {action: Accept, to: [{namespaces: {}}]}",
        ),
        np("y", "deny-all", "{podSelector: {}}"),
    ]
    .concat();
    check(
        &policies,
        &[
            "x/a -> y/a 80/TCP: denied | egress allowed admin | ingress denied networkpolicy",
            "x/a -> z/a 80/TCP: allowed | egress allowed admin | ingress uncovered none",
            // The egress rule's peers are pods: an external address is not one.
            "x/a -> 8.8.8.8 53/UDP: uncovered | egress uncovered none | ingress not_applicable none",
        ],
    );
}

#[test]
fn priorities_order_policies_and_equal_priorities_go_by_name() {
    let deny = |name: &str, p| {
        cnp(
            name,
            "Admin",
            p,
            &format!("{SUBJECT_X}\n  ingress:\n  - {{action: Deny, from: [{{namespaces: {{}}}}]}}"),
        )
    };
    let accept = |name: &str, p| {
        cnp(
            name,
            "Admin",
            p,
            &format!(
                "{SUBJECT_X}\n  ingress:\n  - {{action: Accept, from: [{{namespaces: {{matchLabels: {{ns: y}}}}}}]}}"
            ),
        )
    };
    // Lower priority value first.
    check(
        &[accept("accept", 5), deny("deny", 50)].concat(),
        &[
            "y/a -> x/a 80/TCP: allowed | egress uncovered none | ingress allowed admin",
            "z/a -> x/a 80/TCP: denied | egress uncovered none | ingress denied admin",
        ],
    );
    check(
        &[accept("accept", 50), deny("deny", 5)].concat(),
        &["y/a -> x/a 80/TCP: denied | egress uncovered none | ingress denied admin"],
    );
    // Same priority: by name (implementation-defined, documented).
    let answers = check(
        &[accept("b-accept", 7), deny("a-deny", 7)].concat(),
        &["y/a -> x/a 80/TCP: denied | egress uncovered none | ingress denied admin"],
    );
    assert_eq!(answers[0]["ingress"]["decided_by"]["name"], "a-deny");
    check(
        &[accept("a-accept", 7), deny("b-deny", 7)].concat(),
        &["y/a -> x/a 80/TCP: allowed | egress uncovered none | ingress allowed admin"],
    );
}

#[test]
fn rules_apply_in_written_order_and_the_first_match_decides() {
    let policies = cnp(
        "ordered",
        "Admin",
        3,
        &format!(
            "{SUBJECT_X}
  ingress:
  - {{name: accept-web-80, action: Accept, from: [{{namespaces: {{}}}}], protocols: [{{tcp: {{destinationPort: {{number: 80}}}}}}]}}
  - {{name: deny-z, action: Deny, from: [{{namespaces: {{matchLabels: {{tenant: red}}}}}}]}}
  - {{name: accept-all, action: Accept, from: [{{namespaces: {{}}}}]}}"
        ),
    );
    let answers = check(
        &policies,
        &[
            "z/a -> x/a 80/TCP: allowed | egress uncovered none | ingress allowed admin",
            "z/a -> x/a 81/TCP: denied | egress uncovered none | ingress denied admin",
            "z/a -> x/a 80/UDP: denied | egress uncovered none | ingress denied admin",
            "y/a -> x/a 81/TCP: allowed | egress uncovered none | ingress allowed admin",
        ],
    );
    let by = &answers[1]["ingress"]["decided_by"];
    assert_eq!(
        by,
        &serde_json::json!({"kind": "ClusterNetworkPolicy", "name": "ordered", "rule": "deny-z", "action": "Deny"})
    );
}

#[test]
fn pass_hands_over_to_network_policies_then_baseline() {
    let policies = [
        cnp(
            "delegate",
            "Admin",
            1,
            &format!(
                "{SUBJECT_X}
  ingress:
  - {{action: Pass, from: [{{namespaces: {{matchLabels: {{tenant: blue}}}}}}]}}
  - {{action: Deny, from: [{{namespaces: {{}}}}]}}"
            ),
        ),
        // x/b is selected by a NetworkPolicy allowing only app=web of y.
        np(
            "x",
            "db",
            "{podSelector: {matchLabels: {app: db}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {app: web}}}]}]}",
        ),
    ]
    .concat();
    check(
        &policies,
        &[
            // Pass, no NetworkPolicy selects x/a, no Baseline: nothing decides.
            "y/a -> x/a 80/TCP: uncovered | egress uncovered none | ingress uncovered none",
            "x/b -> x/a 80/TCP: uncovered | egress uncovered none | ingress uncovered none",
            // Pass, then the NetworkPolicy of x/b decides.
            "y/a -> x/b 80/TCP: allowed | egress uncovered none | ingress allowed networkpolicy",
            "y/b -> x/b 80/TCP: denied | egress uncovered none | ingress denied networkpolicy",
            // Not blue: the Deny after the Pass.
            "z/a -> x/b 80/TCP: denied | egress uncovered none | ingress denied admin",
        ],
    );
    // With a Baseline deny: what passes and no NetworkPolicy selects is denied there.
    let with_baseline = [
        policies,
        cnp(
            "baseline-deny",
            "Baseline",
            100,
            "  subject: {namespaces: {}}\n  ingress:\n  - {action: Deny, from: [{namespaces: {}}]}",
        ),
    ]
    .concat();
    check(
        &with_baseline,
        &[
            "y/a -> x/a 80/TCP: denied | egress uncovered none | ingress denied baseline",
            "y/a -> x/b 80/TCP: allowed | egress uncovered none | ingress allowed networkpolicy",
            "z/a -> x/a 80/TCP: denied | egress uncovered none | ingress denied admin",
            // Namespaces without a NetworkPolicy are denied by the baseline too.
            "x/a -> y/a 80/TCP: denied | egress uncovered none | ingress denied baseline",
        ],
    );
}

#[test]
fn baseline_rules_walk_in_order_and_a_pass_ends_the_walk() {
    let policies = [
        cnp(
            "b1",
            "Baseline",
            1,
            "  subject: {namespaces: {matchLabels: {tenant: blue}}}
  egress:
  - {name: pass-blue, action: Pass, to: [{namespaces: {matchLabels: {tenant: blue}}}]}
  - {name: accept-dns, action: Accept, to: [{namespaces: {}}], protocols: [{udp: {destinationPort: {number: 53}}}]}",
        ),
        cnp(
            "b2",
            "Baseline",
            2,
            "  subject: {namespaces: {matchLabels: {tenant: blue}}}\n  egress:\n  - {name: deny-all, action: Deny, to: [{namespaces: {}}]}",
        ),
        // y's pods are decided by their NetworkPolicy (egress to anything).
        np(
            "y",
            "egress",
            "{podSelector: {}, policyTypes: [Egress], egress: [{}]}",
        ),
    ]
    .concat();
    check(
        &policies,
        &[
            // Pass in the Baseline tier: nothing further; uncovered.
            "x/a -> y/a 80/TCP: uncovered | egress uncovered none | ingress uncovered none",
            "x/a -> z/a 53/UDP: allowed | egress allowed baseline | ingress uncovered none",
            "x/a -> z/a 80/TCP: denied | egress denied baseline | ingress uncovered none",
            // A NetworkPolicy selects y's pods: the Baseline tier is not reached.
            "y/a -> z/a 80/TCP: allowed | egress allowed networkpolicy | ingress uncovered none",
            // z is not a subject.
            "z/a -> x/a 80/TCP: uncovered | egress uncovered none | ingress uncovered none",
        ],
    );
}

#[test]
fn networks_match_pod_node_and_external_addresses() {
    let policies = cnp(
        "egress-networks",
        "Admin",
        10,
        &format!(
            "{SUBJECT_X}
  egress:
  - {{name: pass-pods, action: Pass, to: [{{pods: {{namespaceSelector: {{matchLabels: {{tenant: blue}}}}, podSelector: {{}}}}}}]}}
  - {{name: accept-z-cidr, action: Accept, to: [{{networks: [10.0.2.0/24]}}], protocols: [{{tcp: {{destinationPort: {{range: {{start: 80, end: 90}}}}}}}}]}}
  - {{name: deny-everything, action: Deny, to: [{{networks: [0.0.0.0/0, '::/0']}}]}}"
        ),
    );
    check(
        &policies,
        &[
            // Blue pods: passed, nothing else: uncovered.
            "x/a -> y/b 80/TCP: uncovered | egress uncovered none | ingress uncovered none",
            // z's pods by their CIDR (networks match pod addresses).
            "x/a -> z/a 85/TCP: allowed | egress allowed admin | ingress uncovered none",
            "x/a -> z/a 91/TCP: denied | egress denied admin | ingress uncovered none",
            // External and node addresses.
            "x/a -> 8.8.8.8 443/TCP: denied | egress denied admin | ingress not_applicable none",
            "x/a -> 2001:db8::1 443/TCP: denied | egress denied admin | ingress not_applicable none",
            "x/b -> 192.168.0.3 10250/TCP: denied | egress denied admin | ingress not_applicable none",
            // A pod and its own node: the cluster tiers decide it too (no exemption in their API).
            "x/a -> 192.168.0.1 10250/TCP: denied | egress denied admin | ingress not_applicable none",
        ],
    );
}

#[test]
fn nodes_peers_match_node_addresses_and_host_network_pods() {
    let policies = cnp(
        "egress-nodes",
        "Admin",
        75,
        &format!(
            "{SUBJECT_X}
  egress:
  - {{name: kubelet-on-workers, action: Accept, to: [{{nodes: {{matchLabels: {{role: worker}}}}}}], protocols: [{{tcp: {{destinationPort: {{number: 10250}}}}}}]}}
  - {{name: pass-metrics, action: Pass, to: [{{nodes: {{matchLabels: {{kubernetes.io/os: linux}}}}}}], protocols: [{{tcp: {{destinationPort: {{number: 9100}}}}}}]}}
  - {{name: deny-nodes, action: Deny, to: [{{nodes: {{}}}}]}}"
        ),
    );
    check(
        &policies,
        &[
            // x/b runs on node-2: node-1 is another worker.
            "x/b -> 192.168.0.1 10250/TCP: allowed | egress allowed admin | ingress not_applicable none",
            // node-1's ExternalIP is node-1 too.
            "x/b -> 198.51.100.1 10250/TCP: allowed | egress allowed admin | ingress not_applicable none",
            "x/b -> 192.168.0.3 10250/TCP: denied | egress denied admin | ingress not_applicable none",
            // A host-network pod is reached as its node, by name and by address.
            "x/b -> infra/agent 10250/TCP: denied | egress denied admin | ingress not_applicable none",
            "x/b -> infra/agent 9100/TCP: uncovered | egress uncovered none | ingress not_applicable none",
            "x/b -> 192.168.0.3 22/TCP: denied | egress denied admin | ingress not_applicable none",
            // Nodes peers never match pods or external addresses.
            "x/b -> y/a 10250/TCP: uncovered | egress uncovered none | ingress uncovered none",
            "x/b -> 203.0.113.5 10250/TCP: uncovered | egress uncovered none | ingress not_applicable none",
            // Own node (x/a runs on node-1, a worker): a nodes peer selects it like any node.
            "x/a -> 192.168.0.1 10250/TCP: allowed | egress allowed admin | ingress not_applicable none",
            "x/a -> 192.168.0.1 22/TCP: denied | egress denied admin | ingress not_applicable none",
        ],
    );
}

#[test]
fn host_network_pods_are_never_subjects_or_pod_peers() {
    let policies = [cnp(
        "deny-everything",
        "Admin",
        1,
        "  subject: {namespaces: {}}
  ingress:
  - {action: Deny, from: [{namespaces: {}}]}
  egress:
  - {action: Deny, to: [{namespaces: {}}]}",
    )]
    .concat();
    check(
        &policies,
        &[
            // The host-network pod is neither a subject nor a pod peer.
            "infra/agent -> x/b 80/TCP: uncovered | egress not_applicable none | ingress uncovered none",
            "x/b -> infra/agent 9100/TCP: uncovered | egress uncovered none | ingress not_applicable none",
            "x/b -> y/b 80/TCP: denied | egress denied admin | ingress denied admin",
            // A pod reaching itself is not subject to cluster policies.
            "x/a -> x/a 80/TCP: uncovered | egress uncovered none | ingress uncovered none",
            // From its own node: ingress peers select pods only, so no cluster rule matches.
            "192.168.0.1 -> x/a 80/TCP: uncovered | egress not_applicable none | ingress uncovered none",
        ],
    );
    // With a NetworkPolicy selecting x/a, loopback and own-node traffic are allowed there.
    let with_np = [
        policies,
        np(
            "x",
            "all",
            "{podSelector: {}, policyTypes: [Ingress, Egress]}",
        ),
    ]
    .concat();
    check(
        &with_np,
        &[
            "x/a -> x/a 80/TCP: allowed | egress allowed networkpolicy | ingress allowed networkpolicy",
            "192.168.0.1 -> x/a 80/TCP: allowed | egress not_applicable none | ingress allowed networkpolicy",
            "x/a -> y/a 80/TCP: denied | egress denied admin | ingress denied admin",
        ],
    );
}

#[test]
fn named_ports_resolve_on_the_destination_pod() {
    let policies = [
        cnp(
            "named-egress",
            "Admin",
            5,
            &format!(
                "{SUBJECT_X}
  egress:
  - {{action: Accept, to: [{{namespaces: {{matchLabels: {{ns: y}}}}}}], protocols: [{{destinationNamedPort: web}}]}}
  - {{action: Deny, to: [{{namespaces: {{matchLabels: {{ns: y}}}}}}]}}"
            ),
        ),
        cnp(
            "named-ingress",
            "Admin",
            6,
            "  subject: {namespaces: {matchLabels: {ns: z}}}
  ingress:
  - {action: Accept, from: [{namespaces: {}}], protocols: [{destinationNamedPort: dns}]}
  - {action: Deny, from: [{namespaces: {}}]}",
        ),
    ]
    .concat();
    check(
        &policies,
        &[
            // y/a's web is 80, y/b's web is 8080.
            "x/a -> y/a 80/TCP: allowed | egress allowed admin | ingress uncovered none",
            "x/a -> y/b 8080/TCP: allowed | egress allowed admin | ingress uncovered none",
            "x/a -> y/b 80/TCP: denied | egress denied admin | ingress uncovered none",
            // The named port has its container port's protocol.
            "x/a -> y/a 80/UDP: denied | egress denied admin | ingress uncovered none",
            // z/a's dns is 53/UDP; z/b has none.
            "y/a -> z/a 53/UDP: allowed | egress uncovered none | ingress allowed admin",
            "y/a -> z/a 53/TCP: denied | egress uncovered none | ingress denied admin",
            "y/a -> z/b 53/UDP: denied | egress uncovered none | ingress denied admin",
        ],
    );
}

#[test]
fn protocols_and_port_ranges() {
    let policies = cnp(
        "ports",
        "Admin",
        5,
        &format!(
            "{SUBJECT_X}
  ingress:
  - {{action: Deny, from: [{{namespaces: {{}}}}], protocols: [{{udp: {{destinationPort: {{number: 53}}}}}}, {{sctp: {{destinationPort: {{range: {{start: 9000, end: 9005}}}}}}}}]}}
  - {{action: Accept, from: [{{namespaces: {{}}}}], protocols: [{{tcp: {{destinationPort: {{range: {{start: 8000, end: 8100}}}}}}}}]}}"
        ),
    );
    check(
        &policies,
        &[
            "y/a -> x/a 53/UDP: denied | egress uncovered none | ingress denied admin",
            "y/a -> x/a 53/TCP: uncovered | egress uncovered none | ingress uncovered none",
            "y/a -> x/a 9003/SCTP: denied | egress uncovered none | ingress denied admin",
            "y/a -> x/a 9006/SCTP: uncovered | egress uncovered none | ingress uncovered none",
            "y/a -> x/a 8000/TCP: allowed | egress uncovered none | ingress allowed admin",
            "y/a -> x/a 8100/TCP: allowed | egress uncovered none | ingress allowed admin",
            "y/a -> x/a 8101/TCP: uncovered | egress uncovered none | ingress uncovered none",
            "y/a -> x/a 8050/UDP: uncovered | egress uncovered none | ingress uncovered none",
        ],
    );
}

#[test]
fn v1alpha1_admin_and_baseline_policies() {
    let policies = [
        anp(
            "anp-tenancy",
            10,
            "  subject: {namespaces: {matchLabels: {tenant: blue}}}
  ingress:
  - {name: allow-monitoring, action: Allow, from: [{pods: {namespaceSelector: {matchLabels: {ns: z}}, podSelector: {matchLabels: {app: web}}}}], ports: [{portNumber: {port: 9090}}]}
  - {name: pass-tenant, action: Pass, from: [{namespaces: {matchLabels: {tenant: blue}}}]}
  - {name: deny-others, action: Deny, from: [{namespaces: {}}]}
  egress:
  - {name: allow-dns, action: Allow, to: [{pods: {namespaceSelector: {matchLabels: {ns: z}}, podSelector: {matchLabels: {app: db}}}}], ports: [{portNumber: {protocol: UDP, port: 53}}, {portRange: {start: 5000, end: 5010}}, {namedPort: web}]}
  - {name: deny-external, action: Deny, to: [{networks: [8.0.0.0/8]}], ports: [{portRange: {protocol: TCP, start: 1, end: 1024}}]}",
        ),
        banp(
            "  subject: {namespaces: {}}
  ingress:
  - {name: deny-all, action: Deny, from: [{namespaces: {}}]}",
        ),
        np(
            "y",
            "web",
            "{podSelector: {matchLabels: {app: web}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: x}}}]}]}",
        ),
    ]
    .concat();
    check(
        &policies,
        &[
            // Allow (= Accept), port number (TCP by default).
            "z/a -> x/a 9090/TCP: allowed | egress uncovered none | ingress allowed admin",
            "z/a -> x/a 9090/UDP: denied | egress uncovered none | ingress denied admin",
            "z/b -> x/a 9090/TCP: denied | egress uncovered none | ingress denied admin",
            // Pass within the tenant: y/a's NetworkPolicy, else the BANP.
            "x/b -> y/a 80/TCP: allowed | egress uncovered none | ingress allowed networkpolicy",
            "x/a -> y/b 80/TCP: denied | egress uncovered none | ingress denied baseline",
            // z is not a subject of the ANP: the BANP denies.
            "x/a -> z/a 80/TCP: denied | egress uncovered none | ingress denied baseline",
            // Egress: ports by number (UDP), range (TCP default), named port (z/b web = 8080).
            "x/a -> z/b 53/UDP: denied | egress allowed admin | ingress denied baseline",
            "x/a -> z/b 5005/TCP: denied | egress allowed admin | ingress denied baseline",
            "x/a -> z/b 8080/TCP: denied | egress allowed admin | ingress denied baseline",
            "x/a -> 8.8.8.8 443/TCP: denied | egress denied admin | ingress not_applicable none",
            "x/a -> 8.8.8.8 5000/TCP: uncovered | egress uncovered none | ingress not_applicable none",
        ],
    );
}
