//! Reachability matrices modeled on every reachability test of the upstream Kubernetes e2e
//! NetworkPolicy suite (`test/e2e/network/netpol`): namespaces x, y, z with pods a, b, c
//! serving 80 and 81 over TCP, UDP and SCTP. Each test checks the full 9x9 matrix (by pod
//! name and by address) on the ports and protocols the upstream test probes.

use flowwatch::model::Protocol::{Sctp, Tcp, Udp};
use flowwatch_testkit::policy::*;

const DENY_ALL_INGRESS: &str = "{podSelector: {}, policyTypes: [Ingress]}";

fn deny_ingress_x() -> String {
    np("x", "deny-ingress", DENY_ALL_INGRESS)
}

#[test]
fn default_deny_ingress_on_every_protocol() {
    let e = engine(&[deny_ingress_x()]);
    let expected = Reach::all(true).set("*/*", "x/*", false);
    for (port, proto) in [(80, Tcp), (81, Tcp), (80, Udp), (81, Sctp)] {
        assert_reach(&e, port, proto, &expected);
    }
}

#[test]
fn default_deny_all_ingress_and_egress() {
    let e = engine(&[np(
        "x",
        "deny-all",
        "{podSelector: {}, policyTypes: [Ingress, Egress]}",
    )]);
    let expected = Reach::all(true)
        .set("*/*", "x/*", false)
        .set("x/*", "*/*", false);
    for (port, proto) in [(80, Tcp), (81, Udp), (80, Sctp)] {
        assert_reach(&e, port, proto, &expected);
    }
}

#[test]
fn allow_from_pods_in_server_namespace_by_pod_selector() {
    let e = engine(&[np(
        "x",
        "allow-b",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]}",
    )]);
    let expected = Reach::all(true)
        .set("*/*", "x/a", false)
        .set("x/b", "x/a", true);
    assert_reach(&e, 80, Tcp, &expected);
    assert_reach(&e, 81, Udp, &expected);
}

#[test]
fn allow_all_ingress_to_a_target_on_top_of_default_deny() {
    let e = engine(&[
        deny_ingress_x(),
        np(
            "x",
            "allow-to-a",
            "{podSelector: {matchLabels: {pod: a}}, ingress: [{}]}",
        ),
    ]);
    let expected = Reach::all(true)
        .set("*/*", "x/*", false)
        .set("*/*", "x/a", true);
    assert_reach(&e, 80, Tcp, &expected);
}

#[test]
fn allow_from_pods_in_all_namespaces() {
    let e = engine(&[np(
        "x",
        "allow-all-ns",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {}}]}]}",
    )]);
    assert_reach(&e, 80, Tcp, &Reach::all(true));
    // ...but x/a is isolated: an address outside the cluster is not a pod of any namespace.
    let v = e.evaluate(
        &"203.0.113.1".parse::<flowwatch::policy::Peer>().unwrap(),
        &pod("x/a"),
        80,
        Tcp,
    );
    assert_eq!(v.unwrap().verdict, flowwatch::policy::Verdict::Denied);
}

#[test]
fn allow_only_from_another_namespace_by_namespace_selector() {
    let e = engine(&[np(
        "x",
        "allow-ns-y",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]}",
    )]);
    let expected = Reach::all(true)
        .set("*/*", "x/a", false)
        .set("y/*", "x/a", true);
    assert_reach(&e, 80, Tcp, &expected);
}

#[test]
fn pod_selector_with_match_expressions() {
    let e = engine(&[np(
        "x",
        "allow-b-expr",
        "{podSelector: {matchExpressions: [{key: pod, operator: In, values: [a]}]}, ingress: [{from: [{podSelector: {matchExpressions: [{key: pod, operator: In, values: [b]}]}}]}]}",
    )]);
    let expected = Reach::all(true)
        .set("*/*", "x/a", false)
        .set("x/b", "x/a", true);
    assert_reach(&e, 80, Tcp, &expected);
}

#[test]
fn namespace_selector_with_match_expressions() {
    let e = engine(&[np(
        "x",
        "allow-y-expr",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: In, values: [y]}]}}]}]}",
    )]);
    let expected = Reach::all(true)
        .set("*/*", "x/a", false)
        .set("y/*", "x/a", true);
    assert_reach(&e, 80, Tcp, &expected);
}

#[test]
fn pod_selector_or_namespace_selector_in_separate_peers() {
    let e = engine(&[np(
        "x",
        "or",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [x]}]}}, {podSelector: {matchLabels: {pod: b}}}]}]}",
    )]);
    let expected = Reach::all(true)
        .set("*/*", "x/a", false)
        .set("y/*", "x/a", true)
        .set("z/*", "x/a", true)
        .set("x/b", "x/a", true);
    assert_reach(&e, 80, Tcp, &expected);
}

#[test]
fn pod_selector_and_namespace_selector_in_one_peer() {
    let e = engine(&[np(
        "x",
        "and",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [x]}]}, podSelector: {matchExpressions: [{key: pod, operator: In, values: [b, c]}]}}]}]}",
    )]);
    let expected = Reach::all(true)
        .set("*/*", "x/a", false)
        .set("y/b", "x/a", true)
        .set("y/c", "x/a", true)
        .set("z/b", "x/a", true)
        .set("z/c", "x/a", true);
    assert_reach(&e, 80, Tcp, &expected);
}

#[test]
fn multiple_pod_and_namespace_selector_peers() {
    let e = engine(&[np(
        "x",
        "multi",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}, {namespaceSelector: {matchLabels: {ns: z}}, podSelector: {matchLabels: {pod: c}}}]}]}",
    )]);
    let expected = Reach::all(true)
        .set("*/*", "x/a", false)
        .set("y/b", "x/a", true)
        .set("z/c", "x/a", true);
    assert_reach(&e, 80, Tcp, &expected);
}

#[test]
fn any_of_several_pod_selectors() {
    let e = engine(&[np(
        "x",
        "any",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}, {podSelector: {matchLabels: {pod: c}}}]}]}",
    )]);
    let expected = Reach::all(true)
        .set("*/*", "x/a", false)
        .set("x/b", "x/a", true)
        .set("x/c", "x/a", true);
    assert_reach(&e, 80, Tcp, &expected);
}

#[test]
fn only_a_pod_of_another_namespace_by_both_selectors() {
    let e = engine(&[np(
        "x",
        "ya",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: a}}}]}]}",
    )]);
    let expected = Reach::all(true)
        .set("*/*", "x/a", false)
        .set("y/a", "x/a", true);
    assert_reach(&e, 80, Tcp, &expected);
}

#[test]
fn ingress_restricted_to_one_port() {
    let e = engine(&[np(
        "x",
        "port-81",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}], ports: [{port: 81, protocol: TCP}]}]}",
    )]);
    assert_reach(&e, 80, Tcp, &Reach::all(true).set("*/*", "x/a", false));
    assert_reach(
        &e,
        81,
        Tcp,
        &Reach::all(true)
            .set("*/*", "x/a", false)
            .set("y/*", "x/a", true),
    );
    // Same port number, other protocol: not allowed.
    assert_reach(&e, 81, Udp, &Reach::all(true).set("*/*", "x/a", false));
}

#[test]
fn stacked_policies_with_overlapping_pod_selectors() {
    let p80 = np(
        "x",
        "allow-80",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}], ports: [{port: 80}]}]}",
    );
    let p81 = np(
        "x",
        "allow-81",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}], ports: [{port: 81}]}]}",
    );
    let only_y = Reach::all(true)
        .set("*/*", "x/a", false)
        .set("y/*", "x/a", true);
    let closed = Reach::all(true).set("*/*", "x/a", false);
    let first = engine(std::slice::from_ref(&p80));
    assert_reach(&first, 80, Tcp, &only_y);
    assert_reach(&first, 81, Tcp, &closed);
    let both = engine(&[p80, p81]);
    assert_reach(&both, 80, Tcp, &only_y);
    assert_reach(&both, 81, Tcp, &only_y);
}

#[test]
fn allow_all_policy() {
    let e = engine(&[np("x", "allow-all", "{podSelector: {}, ingress: [{}]}")]);
    assert_reach(&e, 80, Tcp, &Reach::all(true));
    assert_reach(&e, 81, Udp, &Reach::all(true));
    let v = e.evaluate(&pod("y/a"), &pod("x/b"), 80, Tcp).unwrap();
    assert_eq!(v.ingress.policies(), vec!["x/allow-all"]);
}

#[test]
fn ingress_on_one_named_port() {
    let e = engine(&[np(
        "x",
        "named-81",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{ports: [{port: serve-81-tcp}]}]}",
    )]);
    assert_reach(&e, 81, Tcp, &Reach::all(true));
    assert_reach(&e, 80, Tcp, &Reach::all(true).set("*/*", "x/a", false));
    // The name is serve-81-*tcp*: UDP 81 is another container port.
    assert_reach(&e, 81, Udp, &Reach::all(true).set("*/*", "x/a", false));
}

#[test]
fn ingress_from_a_namespace_on_one_named_port() {
    let e = engine(&[np(
        "x",
        "named-80-from-y",
        "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}], ports: [{port: serve-80-tcp, protocol: TCP}]}]}",
    )]);
    assert_reach(
        &e,
        80,
        Tcp,
        &Reach::all(true)
            .set("*/*", "x/*", false)
            .set("y/*", "x/*", true),
    );
    assert_reach(&e, 81, Tcp, &Reach::all(true).set("*/*", "x/*", false));
}

#[test]
fn egress_on_one_named_port() {
    let e = engine(&[np(
        "x",
        "egress-named-80",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{ports: [{port: serve-80-udp, protocol: UDP}]}]}",
    )]);
    assert_reach(&e, 80, Udp, &Reach::all(true));
    assert_reach(&e, 81, Udp, &Reach::all(true).set("x/a", "*/*", false));
    assert_reach(&e, 80, Tcp, &Reach::all(true).set("x/a", "*/*", false));
}

#[test]
fn updated_policy_is_enforced_after_rebuild() {
    let from = |ns: &str| {
        np(
            "x",
            "allow",
            &format!("{{podSelector: {{matchLabels: {{pod: a}}}}, ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{ns: {ns}}}}}}}]}}]}}"),
        )
    };
    let before = engine(&[from("y")]);
    // Warm the cache, then rebuild with the updated policy: nothing stale may survive.
    assert_reach(
        &before,
        80,
        Tcp,
        &Reach::all(true)
            .set("*/*", "x/a", false)
            .set("y/*", "x/a", true),
    );
    let after = engine(&[from("z")]);
    assert_reach(
        &after,
        80,
        Tcp,
        &Reach::all(true)
            .set("*/*", "x/a", false)
            .set("z/*", "x/a", true),
    );
}

#[test]
fn ingress_from_updated_namespace() {
    let policy = np(
        "x",
        "allow-updated-ns",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns2: updated}}}]}]}",
    );
    let closed = Reach::all(true).set("*/*", "x/a", false);
    let e = engine(std::slice::from_ref(&policy));
    assert_reach(&e, 80, Tcp, &closed);

    let mut inv = inventory(&[policy]);
    let y = inv
        .namespaces
        .iter_mut()
        .find(|n| n.metadata.name.as_deref() == Some("y"))
        .unwrap();
    y.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert("ns2".into(), "updated".into());
    let (updated, errors) =
        flowwatch::policy::PolicyEngine::build(&inv, flowwatch::policy::PolicyOptions::default());
    assert!(errors.is_empty());
    assert_reach(&updated, 80, Tcp, &closed.set("y/*", "x/a", true));
}

#[test]
fn ingress_from_updated_pod() {
    let policy = np(
        "x",
        "allow-updated-pod",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {matchLabels: {pod2: updated}}}]}]}",
    );
    let closed = Reach::all(true).set("*/*", "x/a", false);
    assert_reach(&engine(std::slice::from_ref(&policy)), 80, Tcp, &closed);

    let mut inv = inventory(&[policy]);
    let b = inv
        .pods
        .iter_mut()
        .find(|p| {
            p.metadata.namespace.as_deref() == Some("x") && p.metadata.name.as_deref() == Some("b")
        })
        .unwrap();
    b.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert("pod2".into(), "updated".into());
    let (updated, _) =
        flowwatch::policy::PolicyEngine::build(&inv, flowwatch::policy::PolicyOptions::default());
    assert_reach(&updated, 80, Tcp, &closed.set("x/b", "x/a", true));
}

#[test]
fn deny_ingress_from_pods_of_other_namespaces() {
    let e = engine(&[np(
        "x",
        "same-ns-only",
        "{podSelector: {}, ingress: [{from: [{podSelector: {}}]}]}",
    )]);
    let expected = Reach::all(true)
        .set("y/*", "x/*", false)
        .set("z/*", "x/*", false);
    assert_reach(&e, 80, Tcp, &expected);
}

#[test]
fn deny_ingress_to_updated_pod() {
    let policy = np(
        "x",
        "deny-target",
        "{podSelector: {matchLabels: {target: 'true'}}, ingress: []}",
    );
    assert_reach(
        &engine(std::slice::from_ref(&policy)),
        80,
        Tcp,
        &Reach::all(true),
    );
    let mut inv = inventory(&[policy]);
    let a = inv
        .pods
        .iter_mut()
        .find(|p| {
            p.metadata.namespace.as_deref() == Some("x") && p.metadata.name.as_deref() == Some("a")
        })
        .unwrap();
    a.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert("target".into(), "true".into());
    let (updated, _) =
        flowwatch::policy::PolicyEngine::build(&inv, flowwatch::policy::PolicyOptions::default());
    assert_reach(
        &updated,
        80,
        Tcp,
        &Reach::all(true).set("*/*", "x/a", false),
    );
}

#[test]
fn deny_egress_from_a_pod() {
    let e = engine(&[np(
        "x",
        "deny-egress-a",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress]}",
    )]);
    assert_reach(&e, 80, Tcp, &Reach::all(true).set("x/a", "*/*", false));
    assert_reach(&e, 81, Sctp, &Reach::all(true).set("x/a", "*/*", false));
}

#[test]
fn deny_egress_from_all_pods_of_a_namespace() {
    let e = engine(&[np(
        "x",
        "deny-egress",
        "{podSelector: {}, policyTypes: [Egress]}",
    )]);
    assert_reach(&e, 80, Tcp, &Reach::all(true).set("x/*", "*/*", false));
}

#[test]
fn ingress_and_egress_together() {
    let e = engine(&[np(
        "x",
        "both",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress, Egress], ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}], egress: [{ports: [{port: 80}]}]}",
    )]);
    let into_a = Reach::all(true)
        .set("*/*", "x/a", false)
        .set("y/*", "x/a", true);
    assert_reach(&e, 80, Tcp, &into_a);
    assert_reach(&e, 81, Tcp, &into_a.clone().set("x/a", "*/*", false));
}

#[test]
fn client_side_egress_denial_wins_over_server_allow() {
    let e = engine(&[
        np(
            "x",
            "a-to-y-only",
            "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchLabels: {ns: y}}}]}]}",
        ),
        np(
            "z",
            "allow-from-xa",
            "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}]}]}",
        ),
    ]);
    let expected = Reach::all(true)
        .set("*/*", "z/*", false)
        .set("z/*", "z/*", false)
        .set("x/a", "*/*", false)
        .set("x/a", "y/*", true);
    assert_reach(&e, 80, Tcp, &expected);
    let v = e.evaluate(&pod("x/a"), &pod("z/b"), 80, Tcp).unwrap();
    assert_eq!(v.ingress.policies(), vec!["z/allow-from-xa"]);
    assert_eq!(v.egress.verdict, flowwatch::policy::SideVerdict::Denied);
}

#[test]
fn egress_to_a_pod_of_another_namespace_by_both_selectors() {
    let e = engine(&[np(
        "x",
        "to-ya",
        "{podSelector: {matchLabels: {pod: a}}, egress: [{to: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: a}}}]}], policyTypes: [Egress]}",
    )]);
    let expected = Reach::all(true)
        .set("x/a", "*/*", false)
        .set("x/a", "y/a", true);
    assert_reach(&e, 80, Tcp, &expected);
}

#[test]
fn any_port_on_a_specific_protocol() {
    let e = engine(&[np(
        "x",
        "tcp-only",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{ports: [{protocol: TCP}]}]}",
    )]);
    assert_reach(&e, 80, Tcp, &Reach::all(true));
    assert_reach(&e, 81, Tcp, &Reach::all(true));
    assert_reach(&e, 80, Udp, &Reach::all(true).set("*/*", "x/a", false));
}

#[test]
fn ingress_allow_all_policy_takes_precedence() {
    let narrow = np(
        "x",
        "only-80",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{ports: [{port: 80}]}]}",
    );
    let one = engine(std::slice::from_ref(&narrow));
    assert_reach(&one, 80, Tcp, &Reach::all(true));
    assert_reach(&one, 81, Tcp, &Reach::all(true).set("*/*", "x/a", false));
    let both = engine(&[
        narrow,
        np(
            "x",
            "allow-all",
            "{podSelector: {matchLabels: {pod: a}}, ingress: [{}]}",
        ),
    ]);
    assert_reach(&both, 81, Tcp, &Reach::all(true));
}

#[test]
fn egress_allow_all_policy_takes_precedence() {
    let narrow = np(
        "x",
        "egress-80",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{ports: [{port: 80}]}]}",
    );
    let one = engine(std::slice::from_ref(&narrow));
    assert_reach(&one, 80, Tcp, &Reach::all(true));
    assert_reach(&one, 81, Tcp, &Reach::all(true).set("x/a", "*/*", false));
    let both = engine(&[
        narrow,
        np(
            "x",
            "egress-all",
            "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{}]}",
        ),
    ]);
    assert_reach(&both, 81, Tcp, &Reach::all(true));
}

#[test]
fn policies_stop_applying_once_deleted() {
    let with = engine(&[np(
        "x",
        "deny-all",
        "{podSelector: {}, policyTypes: [Ingress, Egress]}",
    )]);
    assert_reach(
        &with,
        80,
        Tcp,
        &Reach::all(true)
            .set("*/*", "x/*", false)
            .set("x/*", "*/*", false),
    );
    assert_reach(&engine(&[]), 80, Tcp, &Reach::all(true));
}

#[test]
fn egress_to_a_server_in_a_cidr_block() {
    let policy = np(
        "x",
        "to-yb",
        &format!(
            "{{podSelector: {{matchLabels: {{pod: a}}}}, policyTypes: [Egress], egress: [{{to: [{{ipBlock: {{cidr: {}/32}}}}]}}]}}",
            pod_ip("y", "b")
        ),
    );
    let e = engine(std::slice::from_ref(&policy));
    assert_reach(
        &e,
        80,
        Tcp,
        &Reach::all(true)
            .set("x/a", "*/*", false)
            .set("x/a", "y/b", true),
    );
    // With ipBlock not matching pod addresses (Cilium's behavior) the block allows no pod.
    let cilium = engine_with(
        &[policy],
        flowwatch::policy::PolicyOptions {
            ipblock_matches_pod_ips: false,
            ..Default::default()
        },
    );
    assert_reach(&cilium, 80, Tcp, &Reach::all(true).set("x/a", "*/*", false));
}

#[test]
fn except_clause_of_a_cidr_block() {
    let e = engine(&[np(
        "x",
        "all-but-yb",
        &format!(
            "{{podSelector: {{matchLabels: {{pod: a}}}}, policyTypes: [Egress], egress: [{{to: [{{ipBlock: {{cidr: 10.0.0.0/16, except: [{}/32]}}}}]}}]}}",
            pod_ip("y", "b")
        ),
    )]);
    assert_reach(&e, 80, Tcp, &Reach::all(true).set("x/a", "y/b", false));
}

#[test]
fn address_in_one_block_and_another_blocks_except_is_allowed() {
    let yb = pod_ip("y", "b");
    let e = engine(&[
        np(
            "x",
            "all-but-yb",
            &format!("{{podSelector: {{matchLabels: {{pod: a}}}}, policyTypes: [Egress], egress: [{{to: [{{ipBlock: {{cidr: 10.0.0.0/16, except: [{yb}/32]}}}}]}}]}}"),
        ),
        np(
            "x",
            "yb",
            &format!("{{podSelector: {{matchLabels: {{pod: a}}}}, policyTypes: [Egress], egress: [{{to: [{{ipBlock: {{cidr: {yb}/32}}}}]}}]}}"),
        ),
    ]);
    assert_reach(&e, 80, Tcp, &Reach::all(true));
    let v = e.evaluate(&pod("x/a"), &pod("y/b"), 80, Tcp).unwrap();
    assert_eq!(v.egress.policies(), vec!["x/yb"]);
}

#[test]
fn ingress_and_egress_isolation_are_independent() {
    let e = engine(&[
        np(
            "x",
            "a-no-egress",
            "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress]}",
        ),
        np(
            "x",
            "b-no-ingress",
            "{podSelector: {matchLabels: {pod: b}}, policyTypes: [Ingress]}",
        ),
    ]);
    let expected = Reach::all(true)
        .set("x/a", "*/*", false)
        .set("*/*", "x/b", false);
    assert_reach(&e, 80, Tcp, &expected);
    assert_reach(&e, 81, Udp, &expected);
}

#[test]
fn sctp_is_not_mistaken_for_tcp() {
    let e = engine(&[np(
        "x",
        "sctp-81",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{ports: [{protocol: SCTP, port: 81}]}]}",
    )]);
    assert_reach(&e, 81, Sctp, &Reach::all(true));
    assert_reach(&e, 81, Tcp, &Reach::all(true).set("*/*", "x/a", false));
    assert_reach(&e, 80, Sctp, &Reach::all(true).set("*/*", "x/a", false));
}

#[test]
fn udp_only_policy_denies_tcp() {
    let e = engine(&[np(
        "x",
        "udp-81",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{ports: [{protocol: UDP, port: 81}]}]}",
    )]);
    assert_reach(&e, 81, Udp, &Reach::all(true));
    assert_reach(&e, 81, Tcp, &Reach::all(true).set("*/*", "x/a", false));
}

#[test]
fn namespace_selector_on_the_default_namespace_name_label() {
    let by_labels = engine(&[np(
        "x",
        "from-y",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]}]}",
    )]);
    assert_reach(
        &by_labels,
        80,
        Tcp,
        &Reach::all(true)
            .set("*/*", "x/a", false)
            .set("y/*", "x/a", true),
    );
    let by_expr = engine(&[np(
        "x",
        "not-from-x",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]}}]}]}",
    )]);
    assert_reach(
        &by_expr,
        80,
        Tcp,
        &Reach::all(true).set("x/*", "x/a", false),
    );
}

#[test]
fn end_port_ranges_for_ingress_and_egress() {
    let e = engine(&[
        np(
            "x",
            "in-80-81",
            "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}], ports: [{port: 80, endPort: 81, protocol: TCP}]}]}",
        ),
        np(
            "x",
            "out-81-90",
            "{podSelector: {matchLabels: {pod: b}}, policyTypes: [Egress], egress: [{ports: [{port: 81, endPort: 90}]}]}",
        ),
    ]);
    let into_a = Reach::all(true)
        .set("*/*", "x/a", false)
        .set("y/*", "x/a", true);
    assert_reach(&e, 80, Tcp, &into_a.clone().set("x/b", "*/*", false));
    assert_reach(&e, 81, Tcp, &into_a);
    let closed_a = Reach::all(true).set("*/*", "x/a", false);
    assert_reach(&e, 82, Tcp, &closed_a);
    assert_reach(&e, 91, Tcp, &closed_a.set("x/b", "*/*", false));
}

#[test]
fn egress_to_a_namespace_and_ingress_from_it_both_needed() {
    // A connection needs both sides: x/a may only send to y, y/b only accepts from z.
    let e = engine(&[
        np(
            "x",
            "to-y",
            "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchLabels: {ns: y}}}]}]}",
        ),
        np(
            "y",
            "b-from-z",
            "{podSelector: {matchLabels: {pod: b}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}]}]}",
        ),
    ]);
    let expected = Reach::all(true)
        .set("x/a", "*/*", false)
        .set("x/a", "y/*", true)
        .set("*/*", "y/b", false)
        .set("z/*", "y/b", true);
    assert_reach(&e, 80, Tcp, &expected);
}

// ---- The upstream scenarios whose exact shape differs from the ones above ----

#[test]
fn ports_and_pod_in_other_namespace_on_udp_and_sctp() {
    // The upstream UDP and SCTP contexts repeat these two scenarios per protocol.
    for (proto, name) in [(Udp, "UDP"), (Sctp, "SCTP"), (Tcp, "TCP")] {
        let e = engine(&[
            np(
                "x",
                "port-81-from-y",
                &format!("{{podSelector: {{matchLabels: {{pod: a}}}}, ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: y}}}}}}], ports: [{{port: 81, protocol: {name}}}]}}]}}"),
            ),
            np(
                "x",
                "ya-to-xb",
                "{podSelector: {matchLabels: {pod: b}}, ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}, podSelector: {matchLabels: {pod: a}}}]}]}",
            ),
        ]);
        let into_b = Reach::all(true)
            .set("*/*", "x/b", false)
            .set("y/a", "x/b", true);
        assert_reach(
            &e,
            81,
            proto,
            &into_b
                .clone()
                .set("*/*", "x/a", false)
                .set("y/*", "x/a", true),
        );
        assert_reach(&e, 80, proto, &into_b.set("*/*", "x/a", false));
    }
}

#[test]
fn named_port_for_the_whole_namespace() {
    let e = engine(&[np(
        "x",
        "allow-all",
        "{podSelector: {}, ingress: [{ports: [{port: serve-81-tcp}]}]}",
    )]);
    assert_reach(&e, 81, Tcp, &Reach::all(true));
    assert_reach(&e, 80, Tcp, &Reach::all(true).set("*/*", "x/*", false));
}

#[test]
fn egress_named_port_for_the_whole_namespace() {
    let e = engine(&[np(
        "x",
        "allow-egress",
        "{podSelector: {}, policyTypes: [Egress], egress: [{ports: [{port: serve-80-tcp}]}]}",
    )]);
    assert_reach(&e, 80, Tcp, &Reach::all(true));
    assert_reach(&e, 81, Tcp, &Reach::all(true).set("x/*", "*/*", false));
}

#[test]
fn allow_all_updated_to_deny_all() {
    let allow = engine(&[np("x", "p", "{podSelector: {}, ingress: [{}]}")]);
    assert_reach(&allow, 81, Tcp, &Reach::all(true));
    let deny = engine(&[np("x", "p", "{podSelector: {}, ingress: []}")]);
    assert_reach(&deny, 81, Tcp, &Reach::all(true).set("*/*", "x/*", false));
}

#[test]
fn ingress_from_a_pod_and_egress_on_one_port_in_one_policy() {
    let e = engine(&[np(
        "x",
        "both",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress, Ingress], ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}], egress: [{ports: [{port: 80}]}]}",
    )]);
    let into_a = Reach::all(true)
        .set("*/*", "x/a", false)
        .set("x/b", "x/a", true);
    assert_reach(&e, 80, Tcp, &into_a);
    assert_reach(&e, 81, Tcp, &into_a.set("x/a", "*/*", false));
}

#[test]
fn client_egress_allows_only_one_of_two_servers_that_allow_it() {
    let from_xa = "{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}, podSelector: {matchLabels: {pod: a}}}]}";
    let e = engine(&[
        np(
            "x",
            "to-ya",
            "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}, podSelector: {matchLabels: {pod: a}}}]}]}",
        ),
        np("y", "ya-from-xa", &format!("{{podSelector: {{matchLabels: {{pod: a}}}}, ingress: [{from_xa}]}}")),
        np("y", "yb-from-xa", &format!("{{podSelector: {{matchLabels: {{pod: b}}}}, ingress: [{from_xa}]}}")),
    ]);
    let expected = Reach::all(true)
        .set("x/a", "*/*", false)
        .set("*/*", "y/a", false)
        .set("x/a", "y/a", true)
        .set("*/*", "y/b", false);
    assert_reach(&e, 80, Tcp, &expected);
}

#[test]
fn an_except_policy_replaced_by_a_single_address_policy() {
    let xb = pod_ip("x", "b");
    let except = np(
        "x",
        "cidr",
        &format!("{{podSelector: {{matchLabels: {{pod: a}}}}, policyTypes: [Egress], egress: [{{to: [{{ipBlock: {{cidr: 10.0.0.0/8, except: [{xb}/32]}}}}]}}]}}"),
    );
    assert_reach(
        &engine(&[except]),
        80,
        Tcp,
        &Reach::all(true).set("x/a", "x/b", false),
    );
    // The update replaces the policy of the same name: only x/b is allowed now.
    let replaced = np(
        "x",
        "cidr",
        &format!("{{podSelector: {{matchLabels: {{pod: a}}}}, policyTypes: [Egress], egress: [{{to: [{{ipBlock: {{cidr: {xb}/32}}}}]}}]}}"),
    );
    assert_reach(
        &engine(&[replaced]),
        80,
        Tcp,
        &Reach::all(true)
            .set("x/a", "*/*", false)
            .set("x/a", "x/b", true),
    );
}

#[test]
fn egress_allow_all_then_ingress_deny_on_the_same_pod() {
    let allow_egress = np(
        "x",
        "allow-egress",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{}]}",
    );
    assert_reach(
        &engine(std::slice::from_ref(&allow_egress)),
        80,
        Tcp,
        &Reach::all(true),
    );
    let both = engine(&[
        allow_egress,
        np(
            "x",
            "deny-ingress",
            "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress]}",
        ),
    ]);
    assert_reach(&both, 80, Tcp, &Reach::all(true).set("*/*", "x/a", false));
}

#[test]
fn sctp_allow_does_not_open_tcp_under_default_deny() {
    let e = engine(&[
        deny_ingress_x(),
        np(
            "x",
            "sctp-81",
            "{podSelector: {matchLabels: {pod: a}}, ingress: [{ports: [{port: 81, protocol: SCTP}]}]}",
        ),
    ]);
    assert_reach(&e, 81, Tcp, &Reach::all(true).set("*/*", "x/*", false));
    assert_reach(
        &e,
        81,
        Sctp,
        &Reach::all(true)
            .set("*/*", "x/*", false)
            .set("*/*", "x/a", true),
    );
}

#[test]
fn egress_namespace_selector_not_in_on_the_default_label() {
    let e = engine(&[np(
        "x",
        "not-to-y",
        "{podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [y]}]}}]}]}",
    )]);
    assert_reach(&e, 80, Tcp, &Reach::all(true).set("x/a", "y/*", false));
}
