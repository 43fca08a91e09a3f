//! The tricky corners of NetworkPolicy semantics, one behavior per test: policyTypes
//! defaulting, empty vs absent vs `[{}]`, selector edge cases, named ports per pod, nodes,
//! host networking, ipBlock and pod addresses, IPv6, verdict details, caching, bad input.

use std::fmt::Write as _;
use std::net::IpAddr;

use flowwatch::inventory::snapshot;
use flowwatch::model::Protocol::{Tcp, Udp};
use flowwatch::policy::{
    Direction, Peer, PolicyEngine, PolicyError, PolicyOptions, RuleRef, SideReason, SideVerdict,
    Verdict,
};
use flowwatch_testkit::policy::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn side_verdicts(e: &PolicyEngine, from: &str, to: &str, port: u16) -> (SideVerdict, SideVerdict) {
    let v = e.evaluate(&pod(from), &pod(to), port, Tcp).unwrap();
    (v.egress.verdict, v.ingress.verdict)
}

// ---- policyTypes defaulting and rule lists ----

#[test]
fn without_policy_types_egress_rules_make_an_egress_policy_too() {
    // No policyTypes + egress rules: Ingress AND Egress, so x/a is also ingress-isolated.
    let e = engine(&[np(
        "x",
        "p",
        "{podSelector: {matchLabels: {pod: a}}, egress: [{}]}",
    )]);
    assert_eq!(side_verdicts(&e, "x/a", "y/a", 80).0, SideVerdict::Allowed);
    assert_eq!(side_verdicts(&e, "y/a", "x/a", 80).1, SideVerdict::Denied);
}

#[test]
fn without_policy_types_an_empty_egress_list_is_not_egress() {
    let e = engine(&[np(
        "x",
        "p",
        "{podSelector: {matchLabels: {pod: a}}, egress: []}",
    )]);
    assert_eq!(
        side_verdicts(&e, "x/a", "y/a", 80).0,
        SideVerdict::Uncovered
    );
    assert_eq!(side_verdicts(&e, "y/a", "x/a", 80).1, SideVerdict::Denied);
}

#[test]
fn rules_of_a_type_not_in_policy_types_are_ignored() {
    let e = engine(&[
        np(
            "x",
            "egress-only",
            "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], ingress: [{}], egress: [{to: [{podSelector: {}}]}]}",
        ),
        np(
            "y",
            "ingress-only",
            "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], egress: []}",
        ),
    ]);
    // x/a: its ingress rule does not exist for the engine; it is not ingress-isolated.
    assert_eq!(
        side_verdicts(&e, "y/b", "x/a", 80).1,
        SideVerdict::Uncovered
    );
    assert_eq!(side_verdicts(&e, "x/a", "x/b", 80).0, SideVerdict::Allowed);
    assert_eq!(side_verdicts(&e, "x/a", "y/b", 80).0, SideVerdict::Denied);
    // y/a: ingress-isolated with no rules, egress untouched.
    assert_eq!(side_verdicts(&e, "x/b", "y/a", 80).1, SideVerdict::Denied);
    assert_eq!(
        side_verdicts(&e, "y/a", "x/b", 80).0,
        SideVerdict::Uncovered
    );
}

#[test]
fn absent_empty_and_allow_all_rule_lists() {
    let absent = engine(&[np(
        "x",
        "p",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress]}",
    )]);
    let empty = engine(&[np(
        "x",
        "p",
        "{podSelector: {matchLabels: {pod: a}}, ingress: []}",
    )]);
    let allow_all = engine(&[np(
        "x",
        "p",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{}]}",
    )]);
    let empty_lists = engine(&[np(
        "x",
        "p",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [], ports: []}]}",
    )]);
    assert_eq!(
        side_verdicts(&absent, "y/b", "x/a", 80).1,
        SideVerdict::Denied
    );
    assert_eq!(
        side_verdicts(&empty, "y/b", "x/a", 80).1,
        SideVerdict::Denied
    );
    assert_eq!(
        side_verdicts(&allow_all, "y/b", "x/a", 80).1,
        SideVerdict::Allowed
    );
    assert_eq!(
        side_verdicts(&empty_lists, "y/b", "x/a", 80).1,
        SideVerdict::Allowed
    );
    let v = allow_all.evaluate_ips(ip("203.0.113.5"), pod_ip("x", "a"), 9999, Udp);
    assert_eq!(
        v.verdict,
        Verdict::Allowed,
        "[{{}}] allows every peer, port and protocol"
    );
}

#[test]
fn missing_pod_selector_selects_every_pod_of_the_namespace() {
    let e = engine(&[np("x", "p", "{policyTypes: [Ingress]}")]);
    for p in PODS {
        assert_eq!(
            side_verdicts(&e, "y/a", &format!("x/{p}"), 80).1,
            SideVerdict::Denied
        );
        assert_eq!(
            side_verdicts(&e, "x/a", &format!("y/{p}"), 80).1,
            SideVerdict::Uncovered
        );
    }
}

// ---- selectors ----

#[test]
fn namespace_selector_alone_and_pod_selector_alone() {
    let e = engine(&[
        np("x", "all-ns", "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {}}]}]}"),
        np("x", "own-ns", "{podSelector: {matchLabels: {pod: b}}, ingress: [{from: [{podSelector: {}}]}]}"),
        np(
            "x",
            "y-with-empty-pods",
            "{podSelector: {matchLabels: {pod: c}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {}}]}]}",
        ),
    ]);
    assert_eq!(side_verdicts(&e, "z/c", "x/a", 80).1, SideVerdict::Allowed);
    assert_eq!(side_verdicts(&e, "x/c", "x/b", 80).1, SideVerdict::Allowed);
    assert_eq!(side_verdicts(&e, "y/c", "x/b", 80).1, SideVerdict::Denied);
    assert_eq!(side_verdicts(&e, "y/a", "x/c", 80).1, SideVerdict::Allowed);
    assert_eq!(side_verdicts(&e, "z/a", "x/c", 80).1, SideVerdict::Denied);
    assert_eq!(side_verdicts(&e, "x/a", "x/c", 80).1, SideVerdict::Denied);
}

#[test]
fn the_same_pod_selector_peer_means_each_policys_own_namespace() {
    // Templated policies: identical peers in two namespaces must not share a meaning.
    let spec = "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]}";
    let same_ns_selector = "{podSelector: {matchLabels: {pod: c}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}, podSelector: {}}]}]}";
    let e = engine(&[
        np("x", "from-b", spec),
        np("y", "from-b", spec),
        np("x", "from-z", same_ns_selector),
        np("y", "from-z", same_ns_selector),
    ]);
    let expected = Reach::all(true)
        .set("*/*", "x/a", false)
        .set("x/b", "x/a", true)
        .set("*/*", "y/a", false)
        .set("y/b", "y/a", true)
        .set("*/*", "x/c", false)
        .set("z/*", "x/c", true)
        .set("*/*", "y/c", false)
        .set("z/*", "y/c", true);
    assert_reach(&e, 80, Tcp, &expected);
}

#[test]
fn not_in_and_does_not_exist_match_pods_without_the_key() {
    let e = engine(&[np(
        "x",
        "p",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {}, podSelector: {matchExpressions: [{key: tier, operator: NotIn, values: [db]}, {key: legacy, operator: DoesNotExist}]}}]}]}",
    )]);
    // No pod of the world has `tier` or `legacy`: every pod matches.
    assert_reach(&e, 80, Tcp, &Reach::all(true));
    // A pod with an excluded value, or with the key that must not exist, does not match.
    let extra = |name: &str, labels: &str, ip: &str| {
        format!("---\napiVersion: v1\nkind: Pod\nmetadata: {{namespace: y, name: {name}, labels: {labels}}}\nspec: {{nodeName: node-2, containers: [{{name: c}}]}}\nstatus: {{podIP: {ip}}}\n")
    };
    let e = engine(&[
        extra("db", "{tier: db}", "10.0.9.1"),
        extra("web", "{tier: web}", "10.0.9.2"),
        extra("old", "{legacy: 'yes'}", "10.0.9.3"),
        np(
            "x",
            "p",
            "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {}, podSelector: {matchExpressions: [{key: tier, operator: NotIn, values: [db]}, {key: legacy, operator: DoesNotExist}]}}]}]}",
        ),
    ]);
    let to_a = |from: &str| side_verdicts(&e, from, "x/a", 80).1;
    assert_eq!(to_a("y/db"), SideVerdict::Denied);
    assert_eq!(to_a("y/web"), SideVerdict::Allowed);
    assert_eq!(to_a("y/old"), SideVerdict::Denied);
}

#[test]
fn exists_needs_the_key() {
    let e = engine(&[np(
        "x",
        "p",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {matchExpressions: [{key: tier, operator: Exists}]}}]}]}",
    )]);
    assert_reach(&e, 80, Tcp, &Reach::all(true).set("*/*", "x/a", false));
}

#[test]
fn a_policy_selects_only_pods_of_its_own_namespace() {
    let e = engine(&[np(
        "y",
        "deny",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress]}",
    )]);
    assert_eq!(
        side_verdicts(&e, "z/b", "x/a", 80).1,
        SideVerdict::Uncovered
    );
    assert_eq!(side_verdicts(&e, "z/b", "y/a", 80).1, SideVerdict::Denied);
}

// ---- ports ----

fn named_port_world(policy: &str) -> PolicyEngine {
    // Two pods of one namespace call different container ports "web".
    let pods = "---\napiVersion: v1\nkind: Pod\nmetadata: {namespace: w, name: p1, labels: {app: web}}\nspec: {nodeName: node-1, containers: [{name: c, ports: [{name: web, containerPort: 8080}]}]}\nstatus: {podIP: 10.9.0.1}\n---\napiVersion: v1\nkind: Pod\nmetadata: {namespace: w, name: p2, labels: {app: web}}\nspec: {nodeName: node-2, containers: [{name: c, ports: [{name: web, containerPort: 9090}, {name: dns, containerPort: 53, protocol: UDP}]}]}\nstatus: {podIP: 10.9.0.2}\n".to_string();
    engine(&[pods, np("w", "p", policy)])
}

#[test]
fn named_ports_resolve_per_destination_pod() {
    let e = named_port_world("{podSelector: {}, ingress: [{ports: [{port: web}]}]}");
    let v = |dst: &str, port| {
        e.evaluate(&pod("x/a"), &pod(dst), port, Tcp)
            .unwrap()
            .ingress
            .verdict
    };
    assert_eq!(v("w/p1", 8080), SideVerdict::Allowed);
    assert_eq!(v("w/p1", 9090), SideVerdict::Denied);
    assert_eq!(v("w/p2", 9090), SideVerdict::Allowed);
    assert_eq!(v("w/p2", 8080), SideVerdict::Denied);
}

#[test]
fn egress_named_ports_resolve_on_the_destination() {
    let e = named_port_world(
        "{podSelector: {}, policyTypes: [Egress], egress: [{ports: [{port: dns, protocol: UDP}]}]}",
    );
    let from_p1 = |dst: Peer, port| {
        e.evaluate(&pod("w/p1"), &dst, port, Udp)
            .unwrap()
            .egress
            .verdict
    };
    assert_eq!(from_p1(pod("w/p2"), 53), SideVerdict::Allowed);
    // The source's own ports do not matter; p1 has no "dns" port, x/a neither.
    assert_eq!(from_p1(pod("x/a"), 53), SideVerdict::Denied);
    // An external destination has no named ports.
    assert_eq!(from_p1(Peer::Ip(ip("8.8.8.8")), 53), SideVerdict::Denied);
}

#[test]
fn egress_named_ports_never_resolve_on_host_network_pods() {
    // A host-network pod declaring the named port: its traffic is its node's, so the port
    // name does not resolve on it, whether the pod is named by name or by its address.
    let agent = format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{namespace: kube-system, name: exporter}}\nspec: {{nodeName: node-1, hostNetwork: true, containers: [{{name: c, ports: [{{name: metrics, containerPort: 9100}}]}}]}}\nstatus: {{podIP: {}}}\n",
        node_ip("node-1")
    );
    let e = engine(&[
        agent,
        np(
            "x",
            "to-metrics",
            "{podSelector: {}, policyTypes: [Egress], egress: [{ports: [{port: metrics}]}]}",
        ),
    ]);
    // x/b runs on node-2, so the own-node exemption does not apply.
    let by_name = e
        .evaluate(&pod("x/b"), &pod("kube-system/exporter"), 9100, Tcp)
        .unwrap();
    let by_ip = e.evaluate_ips(pod_ip("x", "b"), node_ip("node-1"), 9100, Tcp);
    assert_eq!(by_name.egress.verdict, SideVerdict::Denied);
    assert_eq!(by_ip.egress.verdict, SideVerdict::Denied);
}

// ---- nodes, host network, external ----

fn host_pod() -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{namespace: kube-system, name: agent-1, labels: {{app: agent}}}}\nspec: {{nodeName: node-1, hostNetwork: true, containers: [{{name: c}}]}}\nstatus: {{podIP: {}}}\n",
        node_ip("node-1")
    )
}

#[test]
fn traffic_between_a_pod_and_its_own_node_is_always_allowed() {
    let e = engine(&[np(
        "x",
        "deny-all",
        "{podSelector: {}, policyTypes: [Ingress, Egress]}",
    )]);
    // x/a runs on node-1.
    let own = e.evaluate_ips(node_ip("node-1"), pod_ip("x", "a"), 80, Tcp);
    assert_eq!(own.verdict, Verdict::Allowed);
    assert_eq!(own.ingress.reason, SideReason::OwnNode);
    assert_eq!(own.egress.verdict, SideVerdict::NotApplicable);
    assert_eq!(own.egress.reason, SideReason::Node);
    let other = e.evaluate_ips(node_ip("node-2"), pod_ip("x", "a"), 80, Tcp);
    assert_eq!(other.verdict, Verdict::Denied);
    let out = e.evaluate_ips(pod_ip("x", "a"), node_ip("node-1"), 10250, Tcp);
    assert_eq!(
        (out.verdict, out.egress.reason),
        (Verdict::Allowed, SideReason::OwnNode)
    );
    let out = e.evaluate_ips(pod_ip("x", "a"), node_ip("node-3"), 10250, Tcp);
    assert_eq!(out.verdict, Verdict::Denied);
}

#[test]
fn host_network_pods_are_their_node_and_not_policy_subjects() {
    let e = engine(&[
        host_pod(),
        np("x", "deny-all", "{podSelector: {}, policyTypes: [Ingress]}"),
        np(
            "kube-system",
            "deny-all",
            "{podSelector: {}, policyTypes: [Ingress, Egress]}",
        ),
    ]);
    let agent: Peer = "kube-system/agent-1".parse().unwrap();
    // By name: its side is not applicable; it sits on node-1, like x/a.
    let to_a = e.evaluate(&agent, &pod("x/a"), 80, Tcp).unwrap();
    assert_eq!(to_a.egress.verdict, SideVerdict::NotApplicable);
    assert_eq!(to_a.egress.reason, SideReason::HostNetwork);
    assert_eq!(to_a.ingress.reason, SideReason::OwnNode);
    assert_eq!(to_a.verdict, Verdict::Allowed);
    let to_b = e.evaluate(&agent, &pod("x/b"), 80, Tcp).unwrap();
    assert_eq!(to_b.verdict, Verdict::Denied);
    // Its address is node-1's: by address it is the node.
    let by_ip = e.evaluate_ips(node_ip("node-1"), pod_ip("x", "b"), 80, Tcp);
    assert_eq!(by_ip.egress.reason, SideReason::Node);
    // Policies of its namespace do not apply to it.
    let into = e.evaluate(&pod("y/a"), &agent, 80, Tcp).unwrap();
    assert_eq!(into.ingress.verdict, SideVerdict::NotApplicable);
    assert_eq!(into.verdict, Verdict::Uncovered);
}

#[test]
fn selectors_do_not_match_nodes_or_host_network_pods() {
    let e = engine(&[
        host_pod(),
        np(
            "x",
            "from-everything",
            "{podSelector: {}, ingress: [{from: [{namespaceSelector: {}}]}]}",
        ),
    ]);
    let from_node = e.evaluate_ips(node_ip("node-2"), pod_ip("x", "a"), 80, Tcp);
    assert_eq!(from_node.verdict, Verdict::Denied);
    // The host-network pod as the source, to x/b on another node (node-2): `namespaceSelector:
    // {}` selects every pod with its own network, not it, by name or by its address.
    let agent: Peer = "kube-system/agent-1".parse().unwrap();
    let by_name = e.evaluate(&agent, &pod("x/b"), 80, Tcp).unwrap();
    assert_eq!(by_name.ingress.verdict, SideVerdict::Denied);
    let by_ip = e.evaluate_ips(node_ip("node-1"), pod_ip("x", "b"), 80, Tcp);
    assert_eq!(by_ip.ingress.verdict, SideVerdict::Denied);
}

#[test]
fn of_two_pods_listing_one_address_the_one_not_being_deleted_has_it() {
    // A pod being deleted can still list an address its replacement already got.
    let pod_at = |name: &str, deleting: bool| {
        let deletion = if deleting {
            ", deletionTimestamp: '2024-01-01T00:00:00Z'"
        } else {
            ""
        };
        format!("---\napiVersion: v1\nkind: Pod\nmetadata: {{namespace: w, name: {name}, labels: {{app: {name}}}{deletion}}}\nspec: {{nodeName: node-2, containers: [{{name: c}}]}}\nstatus: {{phase: Running, podIP: 10.9.0.5}}\n")
    };
    let deny_new = np(
        "w",
        "deny-new",
        "{podSelector: {matchLabels: {app: new}}, policyTypes: [Ingress]}",
    );
    // Either inventory order (the agent lists pods by name); `engine` also checks that no
    // error is reported: this is an ordinary hand-over, not a conflict.
    for pods in [["new", "old"], ["old", "new"]] {
        let docs: Vec<String> = pods.iter().map(|p| pod_at(p, *p == "old")).collect();
        let e = engine(&[docs[0].clone(), docs[1].clone(), deny_new.clone()]);
        let v = e.evaluate_ips(pod_ip("x", "a"), ip("10.9.0.5"), 80, Tcp);
        assert_eq!(v.ingress.verdict, SideVerdict::Denied, "{pods:?}");
    }
}

#[test]
fn finished_pods_hold_no_address() {
    // A Succeeded/Failed pod keeps its podIP in its status, but the address is released: by
    // address it is no longer that pod (external here, as no other pod has it).
    let done = "---\napiVersion: v1\nkind: Pod\nmetadata: {namespace: w, name: done}\nspec: {nodeName: node-2, containers: [{name: c}]}\nstatus: {phase: Succeeded, podIP: 10.9.0.7}\n".to_string();
    let e = engine(&[
        done,
        np("w", "deny-all", "{podSelector: {}, policyTypes: [Ingress]}"),
    ]);
    let v = e.evaluate_ips(pod_ip("x", "a"), ip("10.9.0.7"), 80, Tcp);
    assert_eq!(
        (v.ingress.verdict, v.ingress.reason),
        (SideVerdict::NotApplicable, SideReason::External)
    );
    assert_eq!(e.namespace_of(&Peer::Ip(ip("10.9.0.7"))), None);
    // By name it is still the pod (the policy selects it).
    let by_name = e.evaluate(&pod("x/a"), &pod("w/done"), 80, Tcp).unwrap();
    assert_eq!(by_name.ingress.verdict, SideVerdict::Denied);
}

#[test]
fn external_peers_and_unknown_pods() {
    let e = engine(&[np(
        "x",
        "from-cidr",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{ipBlock: {cidr: 203.0.113.0/24}}]}]}",
    )]);
    let v = e.evaluate_ips(ip("203.0.113.9"), pod_ip("x", "a"), 443, Tcp);
    assert_eq!(v.verdict, Verdict::Allowed);
    assert_eq!(v.egress.reason, SideReason::External);
    assert_eq!(
        v.ingress.allowed_by.to_vec(),
        vec![RuleRef {
            policy: "x/from-cidr".into(),
            rule: 0
        }]
    );
    assert_eq!(
        e.evaluate_ips(ip("198.51.100.1"), pod_ip("x", "a"), 443, Tcp)
            .verdict,
        Verdict::Denied
    );
    let out = e.evaluate_ips(pod_ip("x", "a"), ip("198.51.100.1"), 443, Tcp);
    assert_eq!(
        (out.verdict, out.ingress.verdict),
        (Verdict::Uncovered, SideVerdict::NotApplicable)
    );
    assert_eq!(
        e.evaluate(&pod("x/nope"), &pod("x/a"), 80, Tcp),
        Err(PolicyError::UnknownPod("x/nope".into()))
    );
}

// ---- ipBlock and pod addresses, IPv6 ----

#[test]
fn ipblock_matching_pod_addresses_is_a_choice() {
    let policy = np(
        "x",
        "from-pod-cidr",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}}, {ipBlock: {cidr: 198.51.100.0/24}}]}]}",
    );
    let upstream = engine(std::slice::from_ref(&policy));
    let cilium = engine_with(
        &[policy],
        PolicyOptions {
            ipblock_matches_pod_ips: false,
            ..Default::default()
        },
    );
    assert_eq!(
        side_verdicts(&upstream, "y/b", "x/a", 80).1,
        SideVerdict::Allowed
    );
    assert_eq!(
        side_verdicts(&cilium, "y/b", "x/a", 80).1,
        SideVerdict::Denied
    );
    // Non-pod addresses match in both modes.
    for e in [&upstream, &cilium] {
        let v = e.evaluate_ips(ip("198.51.100.7"), pod_ip("x", "a"), 80, Tcp);
        assert_eq!(v.ingress.verdict, SideVerdict::Allowed);
        assert_eq!(v.ingress.allowed_by[0].rule, 0);
    }
}

#[test]
fn ipv6_blocks_and_dual_stack_pods() {
    let e = engine(&[np(
        "x",
        "v6",
        &format!(
            "{{podSelector: {{matchLabels: {{pod: a}}}}, ingress: [{{from: [{{ipBlock: {{cidr: 'fd00::/64', except: ['{}/128']}}}}, {{ipBlock: {{cidr: '2001:db8::/32'}}}}]}}]}}",
            pod_ip6("z", "a")
        ),
    )]);
    let a6 = pod_ip6("x", "a");
    // Pods are addressed by their IPv6 addresses too.
    let v = e.evaluate_ips(pod_ip6("y", "b"), a6, 80, Tcp);
    assert_eq!(v.ingress.verdict, SideVerdict::Allowed);
    assert_eq!(
        e.evaluate_ips(pod_ip6("z", "a"), a6, 80, Tcp)
            .ingress
            .verdict,
        SideVerdict::Denied
    );
    assert_eq!(
        e.evaluate_ips(ip("2001:db8::5"), a6, 80, Tcp).verdict,
        Verdict::Allowed
    );
    assert_eq!(
        e.evaluate_ips(ip("2001:db9::5"), a6, 80, Tcp).verdict,
        Verdict::Denied
    );
    // The IPv4 address of the same pod is outside every block.
    assert_eq!(
        e.evaluate_ips(pod_ip("y", "b"), pod_ip("x", "a"), 80, Tcp)
            .verdict,
        Verdict::Denied
    );
    // By name, a pod uses the family of the other end when that end is an address.
    let by_name = e.evaluate(&pod("y/b"), &Peer::Ip(a6), 80, Tcp).unwrap();
    assert_eq!(by_name.verdict, Verdict::Allowed);
    // By name on both ends: the source's primary (IPv4) family.
    assert_eq!(
        e.evaluate(&pod("y/b"), &pod("x/a"), 80, Tcp)
            .unwrap()
            .verdict,
        Verdict::Denied
    );
    // IPv4-mapped IPv6 addresses are the IPv4 address.
    let mapped = e.evaluate_ips(ip("::ffff:10.0.1.11"), pod_ip("x", "a"), 80, Tcp);
    assert_eq!(
        mapped,
        e.evaluate_ips(pod_ip("y", "b"), pod_ip("x", "a"), 80, Tcp)
    );
}

// ---- verdict details ----

#[test]
fn every_allowing_policy_and_rule_is_listed() {
    let e = engine(&[
        np("x", "first", "{podSelector: {}, ingress: [{from: [{podSelector: {matchLabels: {pod: c}}}]}, {ports: [{port: 80}]}]}"),
        np("x", "second", "{podSelector: {matchLabels: {pod: a}}, ingress: [{ports: [{port: 81}]}, {from: [{namespaceSelector: {}}]}]}"),
        np("x", "third", "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}}]}]}"),
    ]);
    let v = e.evaluate(&pod("y/b"), &pod("x/a"), 80, Tcp).unwrap();
    let rules: Vec<(String, usize)> = v
        .ingress
        .allowed_by
        .iter()
        .map(|r| (r.policy.to_string(), r.rule))
        .collect();
    assert_eq!(
        rules,
        vec![
            ("x/first".into(), 1),
            ("x/second".into(), 1),
            ("x/third".into(), 0)
        ]
    );
    assert_eq!(v.ingress.policies(), vec!["x/first", "x/second", "x/third"]);
    assert_eq!(v.egress.verdict, SideVerdict::Uncovered);
    assert_eq!(v.verdict, Verdict::Allowed);
}

#[test]
fn every_allowing_rule_is_listed_even_beyond_64() {
    // 70 rules that all allow the flow, 10 that do not (port 81): the list is complete, in
    // order, and the same on a cache hit.
    let mut rules: Vec<String> = (0..70)
        .map(|_| "{ports: [{port: 80}]}".to_string())
        .collect();
    for i in 0..10 {
        rules.insert(i * 7, "{ports: [{port: 81}]}".to_string());
    }
    let e = engine(&[np(
        "x",
        "many",
        &format!(
            "{{podSelector: {{matchLabels: {{pod: a}}}}, ingress: [{}]}}",
            rules.join(", ")
        ),
    )]);
    let expected: Vec<usize> = (0..80).filter(|i| i % 7 != 0 || i / 7 >= 10).collect();
    assert_eq!(expected.len(), 70);
    for _ in 0..2 {
        let v = e.evaluate(&pod("y/b"), &pod("x/a"), 80, Tcp).unwrap();
        let got: Vec<usize> = v.ingress.allowed_by.iter().map(|r| r.rule).collect();
        assert_eq!(got, expected);
    }
}

#[test]
fn a_pod_can_always_reach_itself() {
    let e = engine(&[np(
        "x",
        "deny-all",
        "{podSelector: {}, policyTypes: [Ingress, Egress]}",
    )]);
    let v = e.evaluate(&pod("x/a"), &pod("x/a"), 80, Tcp).unwrap();
    assert_eq!(v.verdict, Verdict::Allowed);
    assert_eq!(v.ingress.reason, SideReason::Loopback);
    assert_eq!(v.egress.reason, SideReason::Loopback);
    assert!(v.ingress.allowed_by.is_empty());
}

// ---- cache ----

#[test]
fn verdicts_are_cached_per_identity_not_per_pod() {
    // Three replicas with the same labels share one identity.
    let mut extra = String::new();
    for i in 0..3 {
        let _ = write!(
            extra,
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{namespace: r, name: web-{i}, labels: {{app: web}}}}\nspec: {{containers: [{{name: c}}]}}\nstatus: {{podIP: 10.8.0.{i}}}\n"
        );
    }
    let e = engine(&[extra, np("r", "web", "{podSelector: {matchLabels: {app: web}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: x}}}]}]}")]);
    assert_eq!(e.cached_results(), 0);
    for i in 0..3 {
        let v = e.evaluate_ips(pod_ip("x", "a"), ip(&format!("10.8.0.{i}")), 80, Tcp);
        assert_eq!(v.verdict, Verdict::Allowed);
    }
    assert_eq!(e.cached_results(), 1, "one entry for three replicas");
    // Other peers on the same port use the same entry (it holds the peer tests)...
    let denied = e.evaluate_ips(pod_ip("y", "a"), ip("10.8.0.1"), 80, Tcp);
    assert_eq!(denied.verdict, Verdict::Denied);
    assert_eq!(e.cached_results(), 1);
    // ...another port or protocol is another entry.
    e.evaluate_ips(pod_ip("x", "a"), ip("10.8.0.1"), 81, Tcp);
    e.evaluate_ips(pod_ip("x", "a"), ip("10.8.0.1"), 80, Udp);
    assert_eq!(e.cached_results(), 3);
    // A hit gives the same answer as the first evaluation.
    assert_eq!(
        e.evaluate_ips(pod_ip("y", "a"), ip("10.8.0.2"), 80, Tcp),
        denied
    );
}

#[test]
fn ipblock_results_are_not_shared_between_pods_of_one_identity() {
    // Same labels, addresses on both sides of an except: the cache must tell them apart.
    let e = engine(&[np(
        "x",
        "p",
        &format!(
            "{{podSelector: {{matchLabels: {{pod: a}}}}, ingress: [{{from: [{{ipBlock: {{cidr: 10.0.0.0/16, except: [{}/32]}}}}]}}]}}",
            pod_ip("y", "b")
        ),
    )]);
    assert_eq!(side_verdicts(&e, "y/a", "x/a", 80).1, SideVerdict::Allowed);
    assert_eq!(side_verdicts(&e, "y/b", "x/a", 80).1, SideVerdict::Denied);
    assert_eq!(side_verdicts(&e, "y/a", "x/a", 80).1, SideVerdict::Allowed);
}

// ---- bad input ----

#[test]
fn invalid_policies_are_reported_by_object_and_field_and_skipped() {
    let bad = [
        np("x", "bad-cidr", "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]}"),
        np("x", "bad-op", "{podSelector: {matchExpressions: [{key: pod, operator: Equals, values: [a]}]}}"),
        np("x", "bad-range", "{podSelector: {}, egress: [{ports: [{port: 90, endPort: 80}]}], policyTypes: [Egress]}"),
        np("x", "bad-type", "{podSelector: {}, policyTypes: [Ingress, Sideways]}"),
        np("x", "bad-peer", "{podSelector: {}, ingress: [{from: [{}]}]}"),
        np("x", "bad-mix", "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]}"),
        np("x", "bad-proto", "{podSelector: {}, ingress: [{ports: [{protocol: ICMP}]}]}"),
    ];
    let good = np("x", "good", "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]}");
    let mut all = bad.to_vec();
    all.push(good);
    let (e, errors) = PolicyEngine::build(&inventory(&all), PolicyOptions::default());
    let got: Vec<(String, Option<String>)> = errors
        .iter()
        .map(|e| (e.object.clone(), e.field.clone()))
        .collect();
    let want = [
        ("bad-cidr", "spec.ingress[0].from[0].ipBlock.cidr"),
        ("bad-op", "spec.podSelector.matchExpressions[0].operator"),
        ("bad-range", "spec.egress[0].ports[0].endPort"),
        ("bad-type", "spec.policyTypes[1]"),
        ("bad-peer", "spec.ingress[0].from[0]"),
        ("bad-mix", "spec.ingress[0].from[0]"),
        ("bad-proto", "spec.ingress[0].ports[0].protocol"),
    ];
    let want: Vec<(String, Option<String>)> = want
        .iter()
        .map(|(n, f)| (format!("NetworkPolicy x/{n}"), Some(f.to_string())))
        .collect();
    assert_eq!(got, want);
    assert_eq!(e.skipped_policies().count(), 7);
    // Each is flagged on the directions it declares (an unknown type counts as both).
    let egress: Vec<&str> = e.skipped_policies_in("x", Direction::Egress).collect();
    assert_eq!(egress, vec!["x/bad-range", "x/bad-type"]);
    assert_eq!(e.skipped_policies_in("x", Direction::Ingress).count(), 6);
    assert_eq!(e.skipped_policies_in("y", Direction::Ingress).count(), 0);
    // The valid policy still applies, and only it.
    assert_reach(
        &e,
        80,
        Tcp,
        &Reach::all(true)
            .set("*/*", "x/a", false)
            .set("x/b", "x/a", true),
    );
}

#[test]
fn wrong_types_in_a_snapshot_name_the_object_and_field() {
    let mut text = world_yaml();
    text.push_str(&np(
        "x",
        "typed-wrong",
        "{podSelector: {}, ingress: [{ports: [{port: 80, endPort: high}]}]}",
    ));
    text.push_str(&np(
        "x",
        "fine",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress]}",
    ));
    text.push_str("---\napiVersion: v1\nkind: Pod\nmetadata: {namespace: x, name: broken}\nspec: {containers: [{name: c, ports: [{containerPort: eighty}]}]}\n");
    let (inv, errors) = snapshot::parse(&text, "snap.yaml").unwrap();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(errors[0].object, "NetworkPolicy x/typed-wrong");
    assert_eq!(
        errors[0].field.as_deref(),
        Some("spec.ingress[0].ports[0].endPort")
    );
    assert_eq!(errors[1].object, "Pod x/broken");
    assert_eq!(
        errors[1].field.as_deref(),
        Some("spec.containers[0].ports[0].containerPort")
    );
    let (e, build_errors) = PolicyEngine::build(&inv, PolicyOptions::default());
    assert!(build_errors.is_empty());
    assert_eq!(side_verdicts(&e, "y/a", "x/a", 80).1, SideVerdict::Denied);
    assert_eq!(
        side_verdicts(&e, "y/a", "x/b", 80).1,
        SideVerdict::Uncovered
    );
}

#[test]
fn bad_pod_data_is_reported_and_the_pod_kept() {
    let extra = "---\napiVersion: v1\nkind: Pod\nmetadata: {namespace: x, name: odd, labels: {pod: odd}}\nspec: {containers: [{name: c, ports: [{name: Bad_Name, containerPort: 80}, {name: ok, containerPort: 70000}]}]}\nstatus: {podIP: not-an-ip}\n".to_string();
    let (e, errors) = PolicyEngine::build(&inventory(&[extra]), PolicyOptions::default());
    let fields: Vec<_> = errors
        .iter()
        .map(|e| e.field.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        fields,
        vec![
            "spec.containers[0].ports[0].name",
            "spec.containers[0].ports[1].containerPort",
            "status.podIP"
        ]
    );
    assert!(errors.iter().all(|e| e.object == "Pod x/odd"));
    assert!(e.evaluate(&pod("x/odd"), &pod("x/a"), 80, Tcp).is_ok());
}
