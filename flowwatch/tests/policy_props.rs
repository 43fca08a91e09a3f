//! Property tests: no input panics the snapshot parser, the engine or the eval CLI core, and
//! the engine agrees with a naive reference evaluator (written independently below, straight
//! over the k8s-openapi objects, without identities, indexes or caching) on random policies,
//! random labels and random flows; warm-cache and cold-cache answers are identical.

use std::collections::BTreeMap;
use std::net::IpAddr;

use flowwatch::inventory::{snapshot, Inventory};
use flowwatch::model::Protocol;
use flowwatch::policy::{Peer, PolicyEngine, PolicyOptions, SideReason, SideVerdict, Verdict};
use flowwatch::policy_cli::eval_line;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, Namespace, Node, NodeAddress, NodeStatus, Pod, PodIP, PodSpec,
    PodStatus,
};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use proptest::prelude::*;

type Labels = BTreeMap<String, String>;

// ---------------------------------------------------------------- the random cluster

const NS: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];

#[derive(Clone, Debug)]
struct World {
    ns_labels: Vec<Labels>,
    /// (namespace index, pod index) -> labels
    pod_labels: Vec<Labels>,
    /// Pod b of each namespace runs with host networking on node-2.
    host_network_b: bool,
    policies: Vec<NetworkPolicy>,
    /// Which policies were made invalid on purpose (`p<i>` names).
    corrupted: Vec<String>,
}

fn pod_ip(n: usize, p: usize) -> IpAddr {
    format!("10.0.{n}.{}", p + 10).parse().unwrap()
}

fn node_ip(i: usize) -> IpAddr {
    format!("192.168.0.{}", i + 1).parse().unwrap()
}

fn meta(ns: Option<&str>, name: &str, labels: Labels) -> ObjectMeta {
    ObjectMeta {
        namespace: ns.map(str::to_string),
        name: Some(name.to_string()),
        labels: Some(labels),
        ..Default::default()
    }
}

/// Pod p's named ports: serve-80-tcp always; serve-81-udp on pod a; "web" at 80 on pod a
/// and 81 on pods b and c (so b and c can share an identity and a cached verdict).
fn pod_ports(p: usize) -> Vec<(String, u16, Protocol)> {
    let mut v = vec![
        ("serve-80-tcp".to_string(), 80, Protocol::Tcp),
        (
            "web".to_string(),
            if p == 0 { 80 } else { 81 },
            Protocol::Tcp,
        ),
    ];
    if p == 0 {
        v.push(("serve-81-udp".to_string(), 81, Protocol::Udp));
    }
    v
}

impl World {
    fn is_host(&self, p: usize) -> bool {
        self.host_network_b && p == 1
    }

    fn inventory(&self) -> Inventory {
        let mut inv = Inventory::default();
        for (n, ns) in NS.iter().enumerate() {
            inv.namespaces.push(Namespace {
                metadata: meta(None, ns, self.ns_labels[n].clone()),
                ..Default::default()
            });
        }
        for i in 0..3 {
            inv.nodes.push(Node {
                metadata: meta(None, &format!("node-{}", i + 1), Labels::new()),
                status: Some(NodeStatus {
                    addresses: Some(vec![NodeAddress {
                        type_: "InternalIP".into(),
                        address: node_ip(i).to_string(),
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        for (n, ns) in NS.iter().enumerate() {
            for (p, name) in PODS.iter().enumerate() {
                let host = self.is_host(p);
                let ip = if host { node_ip(p) } else { pod_ip(n, p) };
                let ports = pod_ports(p)
                    .into_iter()
                    .map(|(name, port, proto)| ContainerPort {
                        name: Some(name),
                        container_port: i32::from(port),
                        protocol: Some(proto.as_str().to_string()),
                        ..Default::default()
                    })
                    .collect();
                inv.pods.push(Pod {
                    metadata: meta(Some(ns), name, self.pod_labels[n * 3 + p].clone()),
                    spec: Some(PodSpec {
                        node_name: Some(format!("node-{}", p + 1)),
                        host_network: Some(host),
                        containers: vec![Container {
                            name: "c".into(),
                            ports: Some(ports),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                    status: Some(PodStatus {
                        pod_ip: Some(ip.to_string()),
                        pod_ips: Some(vec![PodIP { ip: ip.to_string() }]),
                        phase: Some("Running".into()),
                        ..Default::default()
                    }),
                });
            }
        }
        inv.network_policies.clone_from(&self.policies);
        inv
    }
}

// ---------------------------------------------------------------- the naive reference

#[derive(Clone, Copy, Debug)]
enum RefEnd {
    /// (namespace, pod)
    Pod(usize, usize),
    Node(usize),
    External(IpAddr),
}

fn ref_selector(s: &LabelSelector, labels: &Labels) -> bool {
    for (k, v) in s.match_labels.iter().flatten() {
        if labels.get(k) != Some(v) {
            return false;
        }
    }
    for e in s.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default();
        let have = labels.get(&e.key);
        let ok = match e.operator.as_str() {
            "In" => have.is_some_and(|v| values.contains(v)),
            "NotIn" => !have.is_some_and(|v| values.contains(v)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            other => panic!("the engine should have skipped a policy with operator {other}"),
        };
        if !ok {
            return false;
        }
    }
    true
}

/// A rule's peers and ports, whichever direction it is.
type RuleRefs<'a> = (
    Option<&'a Vec<NetworkPolicyPeer>>,
    Option<&'a Vec<NetworkPolicyPort>>,
);

struct Reference<'a> {
    w: &'a World,
    valid: Vec<&'a NetworkPolicy>,
    ipblock_matches_pod_ips: bool,
}

impl Reference<'_> {
    fn ns_labels(&self, n: usize) -> Labels {
        let mut l = self.w.ns_labels[n].clone();
        l.insert("kubernetes.io/metadata.name".into(), NS[n].into());
        l
    }

    fn ip_of(&self, end: RefEnd) -> IpAddr {
        match end {
            RefEnd::Pod(_, p) if self.w.is_host(p) => node_ip(p),
            RefEnd::Pod(n, p) => pod_ip(n, p),
            RefEnd::Node(i) => node_ip(i),
            RefEnd::External(ip) => ip,
        }
    }

    fn types(p: &NetworkPolicy) -> (bool, bool) {
        let spec = p.spec.as_ref().unwrap();
        match spec.policy_types.as_deref() {
            None | Some([]) => (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty())),
            Some(t) => (
                t.iter().any(|t| t == "Ingress"),
                t.iter().any(|t| t == "Egress"),
            ),
        }
    }

    fn selecting(&self, n: usize, p: usize, ingress: bool) -> Vec<&NetworkPolicy> {
        self.valid
            .iter()
            .copied()
            .filter(|pol| pol.metadata.namespace.as_deref() == Some(NS[n]))
            .filter(|pol| {
                let sel = pol
                    .spec
                    .as_ref()
                    .unwrap()
                    .pod_selector
                    .clone()
                    .unwrap_or_default();
                ref_selector(&sel, &self.w.pod_labels[n * 3 + p])
            })
            .filter(|pol| {
                let (i, e) = Self::types(pol);
                if ingress {
                    i
                } else {
                    e
                }
            })
            .collect()
    }

    fn peer_ok(&self, peer: &NetworkPolicyPeer, pol_ns: usize, end: RefEnd) -> bool {
        if let Some(b) = &peer.ip_block {
            let is_pod = matches!(end, RefEnd::Pod(_, p) if !self.w.is_host(p));
            if is_pod && !self.ipblock_matches_pod_ips {
                return false;
            }
            let ip = self.ip_of(end);
            let cidr: IpNet = b.cidr.parse().unwrap();
            let excepted = b
                .except
                .iter()
                .flatten()
                .any(|e| e.parse::<IpNet>().unwrap().contains(&ip));
            return cidr.contains(&ip) && !excepted;
        }
        let RefEnd::Pod(n, p) = end else {
            return false;
        };
        if self.w.is_host(p) {
            return false;
        }
        let ns_ok = match &peer.namespace_selector {
            None => n == pol_ns,
            Some(s) => ref_selector(s, &self.ns_labels(n)),
        };
        let pod_ok = match &peer.pod_selector {
            None => true,
            Some(s) => ref_selector(s, &self.w.pod_labels[n * 3 + p]),
        };
        ns_ok && pod_ok
    }

    fn port_ok(
        port_rule: &NetworkPolicyPort,
        port: u16,
        proto: Protocol,
        dst: Option<usize>,
    ) -> bool {
        let rule_proto = port_rule.protocol.as_deref().unwrap_or("TCP");
        if rule_proto != proto.as_str() {
            return false;
        }
        match &port_rule.port {
            None => true,
            Some(IntOrString::Int(n)) => {
                let end = port_rule.end_port.unwrap_or(*n);
                (*n..=end).contains(&i32::from(port))
            }
            Some(IntOrString::String(name)) => dst.is_some_and(|p| {
                pod_ports(p)
                    .iter()
                    .any(|(nm, pt, pr)| nm == name && *pt == port && *pr == proto)
            }),
        }
    }

    fn side(
        &self,
        subject: RefEnd,
        peer: RefEnd,
        ingress: bool,
        port: u16,
        proto: Protocol,
    ) -> SideVerdict {
        let RefEnd::Pod(n, p) = subject else {
            return SideVerdict::NotApplicable;
        };
        if self.w.is_host(p) {
            return SideVerdict::NotApplicable;
        }
        let policies = self.selecting(n, p, ingress);
        if policies.is_empty() {
            return SideVerdict::Uncovered;
        }
        match peer {
            RefEnd::Pod(pn, pp) if (pn, pp) == (n, p) => return SideVerdict::Allowed,
            // The pod's node: its address, or a host-network pod on it.
            RefEnd::Node(i) if i == p => return SideVerdict::Allowed,
            RefEnd::Pod(_, pp) if self.w.is_host(pp) && pp == p => return SideVerdict::Allowed,
            _ => {}
        }
        // Where a named port resolves: the destination pod.
        let dst_pod = if ingress {
            Some(p)
        } else {
            match peer {
                // A host-network pod's traffic is its node's (by address several may share
                // it), so a named port never resolves on it, by name or by address.
                RefEnd::Pod(_, pp) if !self.w.is_host(pp) => Some(pp),
                _ => None,
            }
        };
        for pol in policies {
            let pol_ns = NS
                .iter()
                .position(|x| Some(*x) == pol.metadata.namespace.as_deref())
                .unwrap();
            let spec = pol.spec.as_ref().unwrap();
            let rules: Vec<RuleRefs> = if ingress {
                spec.ingress
                    .iter()
                    .flatten()
                    .map(|r| (r.from.as_ref(), r.ports.as_ref()))
                    .collect()
            } else {
                spec.egress
                    .iter()
                    .flatten()
                    .map(|r| (r.to.as_ref(), r.ports.as_ref()))
                    .collect()
            };
            for (peers, ports) in rules {
                let peers_ok = peers.is_none_or(|v| {
                    v.is_empty() || v.iter().any(|x| self.peer_ok(x, pol_ns, peer))
                });
                let ports_ok = ports.is_none_or(|v| {
                    v.is_empty() || v.iter().any(|x| Self::port_ok(x, port, proto, dst_pod))
                });
                if peers_ok && ports_ok {
                    return SideVerdict::Allowed;
                }
            }
        }
        SideVerdict::Denied
    }
}

// ---------------------------------------------------------------- strategies

fn labels_strategy() -> impl Strategy<Value = Labels> {
    prop::collection::btree_map(
        prop::sample::select(vec!["role", "tier", "pod"]).prop_map(str::to_string),
        prop::sample::select(vec!["r1", "r2", "a", "b"]).prop_map(str::to_string),
        0..3,
    )
}

fn selector_strategy() -> impl Strategy<Value = LabelSelector> {
    let value =
        || prop::sample::select(vec!["r1", "r2", "a", "b", "x", "y"]).prop_map(str::to_string);
    let expr = (
        prop::sample::select(vec![
            "role",
            "tier",
            "pod",
            "ns",
            "kubernetes.io/metadata.name",
        ]),
        prop::sample::select(vec!["In", "NotIn", "Exists", "DoesNotExist"]),
        prop::collection::vec(value(), 1..3),
    )
        .prop_map(|(k, op, vals)| LabelSelectorRequirement {
            key: k.into(),
            operator: op.into(),
            // The API requires values for In/NotIn and none for Exists/DoesNotExist.
            values: matches!(op, "In" | "NotIn").then_some(vals),
        });
    (
        prop::option::of(labels_strategy()),
        prop::option::of(prop::collection::vec(expr, 0..3)),
    )
        .prop_map(|(match_labels, match_expressions)| LabelSelector {
            match_labels,
            match_expressions,
        })
}

/// Peer selectors: often `{}` or a single label, as templated policies repeat them across
/// namespaces (identical peers must keep their own namespace's meaning).
fn peer_selector_strategy() -> impl Strategy<Value = LabelSelector> {
    prop_oneof![
        1 => Just(LabelSelector::default()),
        1 => prop::sample::select(vec!["a", "b", "r1"]).prop_map(|v| LabelSelector {
            match_labels: Some(Labels::from([("pod".to_string(), v.to_string())])),
            match_expressions: None,
        }),
        2 => selector_strategy(),
    ]
}

fn peer_strategy() -> impl Strategy<Value = NetworkPolicyPeer> {
    // Each CIDR with except ranges inside it.
    let blocks: Vec<(&str, Vec<&str>)> = vec![
        (
            "10.0.0.0/16",
            vec!["10.0.1.11/32", "10.0.2.0/24", "10.0.0.10/32"],
        ),
        ("10.0.1.0/24", vec!["10.0.1.11/32"]),
        ("10.0.0.10/32", vec![]),
        ("192.168.0.0/24", vec!["192.168.0.2/32"]),
        ("0.0.0.0/0", vec!["10.0.0.0/8", "192.168.0.0/24"]),
        ("fd00::/8", vec!["fd00::1/128"]),
        ("203.0.113.0/24", vec![]),
    ];
    let block = (prop::sample::select(blocks), any::<u8>()).prop_map(|((cidr, inside), pick)| {
        let except: Vec<String> = inside
            .iter()
            .enumerate()
            .filter(|(i, _)| pick & (1 << i) != 0)
            .map(|(_, e)| e.to_string())
            .collect();
        IPBlock {
            cidr: cidr.into(),
            except: (pick & 0x80 != 0).then_some(except),
        }
    });
    prop_oneof![
        3 => (prop::option::of(selector_strategy()), peer_selector_strategy(), 0..3u8).prop_map(
            |(other, sel, shape)| match shape {
                // pod selector only, namespace selector only, or both (never neither)
                0 => NetworkPolicyPeer { pod_selector: Some(sel), ..Default::default() },
                1 => NetworkPolicyPeer { namespace_selector: Some(sel), ..Default::default() },
                _ => NetworkPolicyPeer {
                    pod_selector: Some(other.unwrap_or_default()),
                    namespace_selector: Some(sel),
                    ip_block: None,
                },
            }
        ),
        1 => block.prop_map(|b| NetworkPolicyPeer { ip_block: Some(b), ..Default::default() }),
    ]
}

fn port_strategy() -> impl Strategy<Value = NetworkPolicyPort> {
    (
        prop::option::of(prop::sample::select(vec!["TCP", "UDP", "SCTP"])),
        prop::option::of(prop_oneof![
            prop::sample::select(vec![80, 81, 82]).prop_map(IntOrString::Int),
            prop::sample::select(vec!["serve-80-tcp", "serve-81-udp", "web"])
                .prop_map(|s| IntOrString::String(s.into())),
        ]),
        prop::option::of(prop::sample::select(vec![82, 90])),
    )
        .prop_map(|(protocol, port, end_port)| NetworkPolicyPort {
            protocol: protocol.map(str::to_string),
            // endPort only with a numeric port, as the API requires.
            end_port: end_port.filter(|_| matches!(port, Some(IntOrString::Int(_)))),
            port,
        })
}

type RawRule = (
    Option<Vec<NetworkPolicyPeer>>,
    Option<Vec<NetworkPolicyPort>>,
);

fn rule_strategy() -> impl Strategy<Value = RawRule> {
    (
        prop::option::of(prop::collection::vec(peer_strategy(), 0..3)),
        prop::option::of(prop::collection::vec(port_strategy(), 0..3)),
    )
}

/// One way to make a valid policy invalid (the engine must skip it, the reference ignores it).
#[derive(Clone, Copy, Debug)]
enum Corruption {
    UnknownOperator,
    BadCidr,
    ExceptOutsideCidr,
    EndPortBelowPort,
    UnknownPolicyType,
    LowercaseProtocol,
    EmptyPeer,
}

fn corrupt(p: &mut NetworkPolicy, c: Corruption) {
    let spec = p.spec.get_or_insert_with(Default::default);
    let rule = NetworkPolicyIngressRule::default;
    let first_rule = |spec: &mut NetworkPolicySpec| -> NetworkPolicyIngressRule {
        spec.ingress
            .get_or_insert_with(Vec::new)
            .first()
            .cloned()
            .unwrap_or_else(rule)
    };
    let mut r = first_rule(spec);
    match c {
        Corruption::UnknownOperator => {
            spec.pod_selector
                .get_or_insert_with(Default::default)
                .match_expressions = Some(vec![LabelSelectorRequirement {
                key: "pod".into(),
                operator: "Equals".into(),
                values: Some(vec!["a".into()]),
            }]);
            return;
        }
        Corruption::UnknownPolicyType => {
            spec.policy_types = Some(vec!["Ingress".into(), "Sideways".into()]);
            return;
        }
        Corruption::BadCidr => r.from.get_or_insert_with(Vec::new).push(NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: "10.0.0.0/33".into(),
                except: None,
            }),
            ..Default::default()
        }),
        Corruption::ExceptOutsideCidr => {
            r.from.get_or_insert_with(Vec::new).push(NetworkPolicyPeer {
                ip_block: Some(IPBlock {
                    cidr: "10.0.0.0/16".into(),
                    except: Some(vec!["11.0.0.0/8".into()]),
                }),
                ..Default::default()
            });
        }
        Corruption::EndPortBelowPort => {
            r.ports
                .get_or_insert_with(Vec::new)
                .push(NetworkPolicyPort {
                    port: Some(IntOrString::Int(90)),
                    end_port: Some(80),
                    protocol: None,
                });
        }
        Corruption::LowercaseProtocol => {
            r.ports
                .get_or_insert_with(Vec::new)
                .push(NetworkPolicyPort {
                    protocol: Some("tcp".into()),
                    ..Default::default()
                });
        }
        Corruption::EmptyPeer => r
            .from
            .get_or_insert_with(Vec::new)
            .push(NetworkPolicyPeer::default()),
    }
    let rules = spec.ingress.get_or_insert_with(Vec::new);
    if rules.is_empty() {
        rules.push(r);
    } else {
        rules[0] = r;
    }
}

type RawPolicy = (
    usize,
    Option<LabelSelector>,
    Option<Vec<&'static str>>,
    Option<Vec<RawRule>>,
    Option<Vec<RawRule>>,
    Option<Corruption>,
);

fn policy_strategy() -> impl Strategy<Value = RawPolicy> {
    let corruption = prop::sample::select(vec![
        Corruption::UnknownOperator,
        Corruption::BadCidr,
        Corruption::ExceptOutsideCidr,
        Corruption::EndPortBelowPort,
        Corruption::UnknownPolicyType,
        Corruption::LowercaseProtocol,
        Corruption::EmptyPeer,
    ]);
    (
        0..3usize,
        prop::option::of(selector_strategy()),
        prop::option::of(prop::sample::select(vec![
            vec![],
            vec!["Ingress"],
            vec!["Egress"],
            vec!["Ingress", "Egress"],
        ])),
        prop::option::of(prop::collection::vec(rule_strategy(), 0..3)),
        prop::option::of(prop::collection::vec(rule_strategy(), 0..3)),
        prop::option::weighted(0.2, corruption),
    )
}

fn world_strategy() -> impl Strategy<Value = World> {
    (
        prop::collection::vec(labels_strategy(), 3),
        prop::collection::vec(labels_strategy(), 9),
        prop::bool::weighted(0.25),
        prop::collection::vec(policy_strategy(), 0..5),
    )
        .prop_map(|(ns_labels, pod_labels, host_network_b, raw)| {
            let mut corrupted = Vec::new();
            let policies: Vec<NetworkPolicy> = raw
                .into_iter()
                .enumerate()
                .map(
                    |(i, (n, pod_selector, types, ingress, egress, corruption))| {
                        let mut p = NetworkPolicy {
                            metadata: meta(Some(NS[n]), &format!("p{i}"), Labels::new()),
                            spec: Some(NetworkPolicySpec {
                                pod_selector,
                                policy_types: types
                                    .map(|t| t.into_iter().map(str::to_string).collect()),
                                ingress: ingress.map(|rules| {
                                    rules
                                        .into_iter()
                                        .map(|(from, ports)| NetworkPolicyIngressRule {
                                            from,
                                            ports,
                                        })
                                        .collect()
                                }),
                                egress: egress.map(|rules| {
                                    rules
                                        .into_iter()
                                        .map(|(to, ports)| NetworkPolicyEgressRule { to, ports })
                                        .collect()
                                }),
                            }),
                        };
                        if let Some(c) = corruption {
                            corrupt(&mut p, c);
                            corrupted.push(format!("NetworkPolicy {}/p{i}", NS[n]));
                        }
                        p
                    },
                )
                .collect();
            World {
                ns_labels,
                pod_labels,
                host_network_b,
                policies,
                corrupted,
            }
        })
}

fn end_strategy() -> impl Strategy<Value = RefEnd> {
    prop_oneof![
        8 => (0..3usize, 0..3usize).prop_map(|(n, p)| RefEnd::Pod(n, p)),
        1 => (0..3usize).prop_map(RefEnd::Node),
        1 => prop::sample::select(vec!["10.0.5.5", "203.0.113.9", "8.8.8.8", "fd00::1"])
            .prop_map(|s| RefEnd::External(s.parse().unwrap())),
    ]
}

fn flow_strategy() -> impl Strategy<Value = (RefEnd, RefEnd, u16, Protocol)> {
    (
        end_strategy(),
        end_strategy(),
        prop::sample::select(vec![80u16, 81, 82, 90]),
        prop::sample::select(vec![Protocol::Tcp, Protocol::Udp, Protocol::Sctp]),
    )
}

// ---------------------------------------------------------------- properties

/// Guards the generators: random worlds must produce valid and invalid policies and every
/// side verdict often enough for the reference comparison to mean something.
#[test]
fn generators_cover_every_outcome() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    let (mut valid, mut invalid) = (0, 0);
    for _ in 0..300 {
        let world = world_strategy().new_tree(&mut runner).unwrap().current();
        let flows = prop::collection::vec(flow_strategy(), 10)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let (engine, errors) = PolicyEngine::build(&world.inventory(), PolicyOptions::default());
        invalid += errors.len();
        valid += world.policies.len() - errors.len();
        let r = Reference {
            w: &world,
            valid: vec![],
            ipblock_matches_pod_ips: true,
        };
        for (src, dst, port, proto) in flows {
            let v = engine.evaluate_ips(r.ip_of(src), r.ip_of(dst), port, proto);
            for side in [v.ingress.verdict, v.egress.verdict] {
                *counts.entry(side.as_str()).or_default() += 1;
            }
            if !v.ingress.allowed_by.is_empty() || !v.egress.allowed_by.is_empty() {
                *counts.entry("allowed_by_rule").or_default() += 1;
            }
        }
    }
    assert!(
        valid >= 300 && invalid >= 60,
        "valid {valid}, invalid {invalid}"
    );
    for kind in [
        "allowed",
        "denied",
        "uncovered",
        "not_applicable",
        "allowed_by_rule",
    ] {
        assert!(
            counts.get(kind).copied().unwrap_or(0) >= 200,
            "{kind}: {counts:?}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_the_reference_and_its_cache_is_exact(
        world in world_strategy(),
        flows in prop::collection::vec(flow_strategy(), 1..25),
        ipblock_matches_pod_ips in any::<bool>(),
    ) {
        let inv = world.inventory();
        let options = PolicyOptions { ipblock_matches_pod_ips, ..Default::default() };
        let (engine, errors) = PolicyEngine::build(&inv, options);
        let skipped: Vec<String> = errors.iter().map(|e| e.object.clone()).collect();
        // Every corrupted policy is rejected, and nothing else is.
        prop_assert_eq!(&skipped, &world.corrupted, "{:?}", errors);
        let reference = Reference {
            w: &world,
            valid: world
                .policies
                .iter()
                .filter(|p| {
                    let key = format!("NetworkPolicy {}/{}", p.metadata.namespace.as_deref().unwrap(), p.metadata.name.as_deref().unwrap());
                    !skipped.contains(&key)
                })
                .collect(),
            ipblock_matches_pod_ips,
        };
        for (src, dst, port, proto) in flows {
            let r = &reference;
            let got = engine.evaluate_ips(r.ip_of(src), r.ip_of(dst), port, proto);
            // Cold cache: a fresh engine must give exactly the same answer.
            let (fresh, _) = PolicyEngine::build(&inv, options);
            prop_assert_eq!(&fresh.evaluate_ips(r.ip_of(src), r.ip_of(dst), port, proto), &got);

            let want_egress = r.side(src, dst, false, port, proto);
            let want_ingress = r.side(dst, src, true, port, proto);
            // A host-network pod is its node when addressed by IP, which the reference models
            // by the pod's node address; compare per side.
            prop_assert_eq!(got.egress.verdict, want_egress, "egress {:?} -> {:?} {}/{}", src, dst, port, proto);
            prop_assert_eq!(got.ingress.verdict, want_ingress, "ingress {:?} -> {:?} {}/{}", src, dst, port, proto);
            prop_assert_eq!(got.verdict, Verdict::combine(got.ingress.verdict, got.egress.verdict));
            for side in [&got.ingress, &got.egress] {
                if side.verdict != SideVerdict::Allowed {
                    prop_assert!(side.allowed_by.is_empty());
                }
            }

            // By name gives the same as by address, host-network pods included. The one
            // difference is the reason on a host-network pod's own side: by name the engine
            // knows it is a host-network pod, by address it only sees its node.
            if let (RefEnd::Pod(sn, sp), RefEnd::Pod(dn, dp)) = (src, dst) {
                let mut by_name = engine.evaluate(
                    &Peer::Pod { namespace: NS[sn].into(), name: PODS[sp].into() },
                    &Peer::Pod { namespace: NS[dn].into(), name: PODS[dp].into() },
                    port,
                    proto,
                ).unwrap();
                for (side, host) in [(&mut by_name.egress, world.is_host(sp)), (&mut by_name.ingress, world.is_host(dp))] {
                    if host {
                        prop_assert_eq!(side.reason, SideReason::HostNetwork);
                        side.reason = SideReason::Node;
                    }
                }
                prop_assert_eq!(by_name, got.clone(), "{:?} -> {:?} {}/{}", src, dst, port, proto);
            }
            // explain() never disagrees with evaluate().
            let x = engine.explain(&Peer::Ip(r.ip_of(src)), &Peer::Ip(r.ip_of(dst)), port, proto).unwrap();
            // The explanation's per-rule outcomes (computed from the selectors directly) name
            // exactly the rules the fast path reports.
            for (side, result) in [(&x.ingress, &got.ingress), (&x.egress, &got.egress)] {
                if result.reason == flowwatch::policy::SideReason::RuleMatched
                    || result.reason == flowwatch::policy::SideReason::NoRuleMatched
                {
                    let allowing: Vec<(String, usize)> = side
                        .policies
                        .iter()
                        .flat_map(|p| p.rules.iter().filter(|r| r.allows()).map(|r| (p.policy.to_string(), r.index)))
                        .collect();
                    let reported: Vec<(String, usize)> =
                        result.allowed_by.iter().map(|r| (r.policy.to_string(), r.rule)).collect();
                    prop_assert_eq!(allowing, reported);
                }
            }
            prop_assert_eq!(x.flow, got);
        }
        // Then the whole pod matrix on one warm engine: pods sharing an identity share cache
        // entries, which must never leak a verdict between pods whose addresses differ.
        for (src, dst) in (0..9).flat_map(|a| (0..9).map(move |b| (a, b))) {
            let (src, dst) = (RefEnd::Pod(src / 3, src % 3), RefEnd::Pod(dst / 3, dst % 3));
            let r = &reference;
            for (port, proto) in [(80, Protocol::Tcp), (81, Protocol::Tcp)] {
                let got = engine.evaluate_ips(r.ip_of(src), r.ip_of(dst), port, proto);
                prop_assert_eq!(got.egress.verdict, r.side(src, dst, false, port, proto), "egress {:?} -> {:?} {}", src, dst, port);
                prop_assert_eq!(got.ingress.verdict, r.side(dst, src, true, port, proto), "ingress {:?} -> {:?} {}", src, dst, port);
            }
        }
        let _ = engine.coverage();
    }

    #[test]
    fn the_snapshot_parser_never_panics_on_text(text in "(?s).{0,400}") {
        let _ = snapshot::parse(&text, "fuzz");
    }

    #[test]
    fn the_snapshot_parser_never_panics_on_kubernetes_shaped_yaml(
        doc in prop::collection::vec(
            prop::sample::select(vec![
                "kind: List\n", "items:\n", "- kind: Pod\n", "- kind: NetworkPolicy\n", "- kind: Namespace\n",
                "  apiVersion: v1\n", "  apiVersion: networking.k8s.io/v1\n", "  metadata: {name: a, namespace: x}\n",
                "  metadata: 7\n", "  spec: {podSelector: {}}\n", "  spec: {ingress: [{from: [{ipBlock: {cidr: 1}}]}]}\n",
                "  spec: {containers: [{name: c, ports: [{containerPort: x}]}]}\n", "  status: {podIP: [1]}\n",
                "---\n", "- 42\n", "- null\n", "  kind: 5\n", "items: {}\n", "  spec: {policyTypes: Ingress}\n",
                "\t", "{", "]", "- [a, b\n", "kind: PodList\n", "  labels: {a: {b: c}}\n",
            ]),
            0..30,
        )
    ) {
        let text: String = doc.concat();
        if let Ok((inv, _)) = snapshot::parse(&text, "fuzz") {
            let (engine, _) = PolicyEngine::build(&inv, PolicyOptions::default());
            let _ = engine.evaluate_ips("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap(), 80, Protocol::Tcp);
            let _ = engine.coverage();
        }
    }

    #[test]
    fn eval_lines_always_get_an_answer(line in prop_oneof![
        "(?s).{0,200}",
        (
            prop::sample::select(vec!["\"x/a\"", "\"10.0.0.10\"", "\"fd00::1\"", "5", "null", "\"a/b/c\"", "\"\"", "\"x/\""]),
            prop::sample::select(vec!["\"y/b\"", "\"192.168.0.1\"", "[]", "\"nope\""]),
            prop::sample::select(vec!["80", "0", "-1", "65536", "\"80\"", "1.5", "18446744073709551616"]),
            prop::sample::select(vec!["", ", \"protocol\": \"udp\"", ", \"protocol\": 6", ", \"protocol\": \"GRE\""]),
        ).prop_map(|(s, d, p, proto)| format!("{{\"src\": {s}, \"dst\": {d}, \"port\": {p}{proto}, \"extra\": [1]}}")),
    ]) {
        let world = World {
            ns_labels: vec![Labels::new(); 3],
            pod_labels: vec![Labels::new(); 9],
            host_network_b: false,
            policies: vec![],
            corrupted: vec![],
        };
        let (engine, _) = PolicyEngine::build(&world.inventory(), PolicyOptions::default());
        let answer = eval_line(&engine, &line, 1);
        prop_assert!(answer.contains_key("error") != answer.contains_key("verdict"), "{:?}", answer);
    }
}
