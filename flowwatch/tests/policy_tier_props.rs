//! Property tests of the tier walk: on random clusters with random ClusterNetworkPolicies
//! (both tiers), AdminNetworkPolicies, a BaselineAdminNetworkPolicy and simple NetworkPolicies,
//! the engine (fed through the snapshot loader as JSON) agrees with a naive reference written
//! below straight from the API text: per side, the Admin policies selecting the pod sorted by
//! priority then name, rules in order, first match decides, Pass leaves the tier; then the
//! NetworkPolicies; then Baseline; else nothing. No identities, indexes or caches.

use std::net::{IpAddr, Ipv4Addr};

use flowwatch::inventory::snapshot;
use flowwatch::model::Protocol;
use flowwatch::policy::{Peer, PolicyEngine, PolicyOptions, SideVerdict, Tier, Verdict};
use proptest::prelude::*;
use serde_json::{json, Value};

const NS: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];

/// A label pair from a small set (so selectors often match), or none (select everything).
type Pair = Option<(&'static str, &'static str)>;

fn pair_json(p: Pair) -> Value {
    match p {
        None => json!({}),
        Some((k, v)) => json!({"matchLabels": {k: v}}),
    }
}

fn pair_matches(p: Pair, labels: &[(&'static str, &'static str)]) -> bool {
    p.is_none_or(|(k, v)| labels.iter().any(|(lk, lv)| *lk == k && *lv == v))
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Act {
    Accept,
    Deny,
    Pass,
}

#[derive(Clone, Debug)]
enum GPeer {
    Namespaces(Pair),
    Pods(Pair, Pair),
    /// IPv4 (address, prefix length)
    Networks(Vec<(Ipv4Addr, u8)>),
    Nodes(Pair),
}

#[derive(Clone, Debug)]
enum GPort {
    Num(Protocol, u16),
    Range(Protocol, u16, u16),
    Named(&'static str),
}

#[derive(Clone, Debug)]
struct GRule {
    action: Act,
    peers: Vec<GPeer>,
    ports: Vec<GPort>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Cnp,
    Anp,
    Banp,
}

#[derive(Clone, Debug)]
struct GPolicy {
    kind: Kind,
    admin: bool,
    priority: u32,
    name: String,
    subject_ns: Pair,
    /// `None`: a `namespaces` subject; `Some(pods)`: a `pods` subject.
    subject_pods: Option<Pair>,
    ingress: Vec<GRule>,
    egress: Vec<GRule>,
}

/// A NetworkPolicy: selects pods with `pods` in `ns` for the directions; each rule allows
/// pods (own network) of namespaces with the label pair.
#[derive(Clone, Debug)]
struct GNp {
    ns: usize,
    pods: Pair,
    ingress: Option<Vec<Pair>>,
    egress: Option<Vec<Pair>>,
}

#[derive(Clone, Debug)]
struct World {
    ns_labels: Vec<Vec<(&'static str, &'static str)>>,
    pod_labels: Vec<Vec<(&'static str, &'static str)>>,
    node_labels: Vec<Vec<(&'static str, &'static str)>>,
    host_network_b: bool,
    policies: Vec<GPolicy>,
    nps: Vec<GNp>,
}

fn pod_ip(n: usize, p: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, n as u8, p as u8 + 10)
}

fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 0, i as u8 + 1)
}

/// Named ports: "web" at 80/TCP on pod a and 81/TCP on b and c; "dns" at 81/UDP on pod a.
fn named_ports(p: usize) -> Vec<(&'static str, u16, Protocol)> {
    let mut v = vec![("web", if p == 0 { 80 } else { 81 }, Protocol::Tcp)];
    if p == 0 {
        v.push(("dns", 81, Protocol::Udp));
    }
    v
}

fn labels_json(l: &[(&'static str, &'static str)]) -> Value {
    Value::Object(l.iter().map(|(k, v)| (k.to_string(), json!(v))).collect())
}

impl World {
    fn is_host(&self, p: usize) -> bool {
        self.host_network_b && p == 1
    }

    fn snapshot(&self) -> String {
        let mut items = Vec::new();
        for (n, ns) in NS.iter().enumerate() {
            items.push(json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": ns, "labels": labels_json(&self.ns_labels[n])}}));
        }
        for i in 0..3 {
            items.push(json!({"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": format!("node-{i}"), "labels": labels_json(&self.node_labels[i])},
                "status": {"addresses": [{"type": "InternalIP", "address": node_ip(i).to_string()}]}}));
        }
        for (n, ns) in NS.iter().enumerate() {
            for (p, name) in PODS.iter().enumerate() {
                let ip = if self.is_host(p) {
                    node_ip(p)
                } else {
                    pod_ip(n, p)
                };
                let ports: Vec<Value> = named_ports(p)
                    .iter()
                    .map(|(nm, port, proto)| json!({"name": nm, "containerPort": port, "protocol": proto.as_str()}))
                    .collect();
                items.push(json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"namespace": ns, "name": name, "labels": labels_json(&self.pod_labels[n * 3 + p])},
                    "spec": {"nodeName": format!("node-{p}"), "hostNetwork": self.is_host(p),
                             "containers": [{"name": "c", "ports": ports}]},
                    "status": {"phase": "Running", "podIP": ip.to_string()}}));
            }
        }
        for (i, np) in self.nps.iter().enumerate() {
            let mut types = Vec::new();
            let mut spec = json!({"podSelector": pair_json(np.pods)});
            for (t, rules, field, peer) in [
                ("Ingress", &np.ingress, "ingress", "from"),
                ("Egress", &np.egress, "egress", "to"),
            ] {
                if let Some(rules) = rules {
                    types.push(t);
                    let rules: Vec<Value> = rules
                        .iter()
                        .map(|r| json!({peer: [{"namespaceSelector": pair_json(*r)}]}))
                        .collect();
                    spec[field] = json!(rules);
                }
            }
            spec["policyTypes"] = json!(types);
            items.push(
                json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"namespace": NS[np.ns], "name": format!("np{i}")}, "spec": spec}),
            );
        }
        for p in &self.policies {
            items.push(policy_json(p));
        }
        serde_json::to_string(&json!({"apiVersion": "v1", "kind": "List", "items": items})).unwrap()
    }
}

fn policy_json(p: &GPolicy) -> Value {
    let v1 = p.kind != Kind::Cnp;
    let rule = |r: &GRule, peers_field: &str| {
        let action = match (r.action, v1) {
            (Act::Accept, false) => "Accept",
            (Act::Accept, true) => "Allow",
            (Act::Deny, _) => "Deny",
            (Act::Pass, _) => "Pass",
        };
        let peers: Vec<Value> = r
            .peers
            .iter()
            .map(|peer| match peer {
                GPeer::Namespaces(s) => json!({"namespaces": pair_json(*s)}),
                GPeer::Pods(n, p) => {
                    json!({"pods": {"namespaceSelector": pair_json(*n), "podSelector": pair_json(*p)}})
                }
                GPeer::Networks(nets) => json!({"networks": nets
                    .iter()
                    .map(|(ip, len)| format!("{ip}/{len}"))
                    .collect::<Vec<_>>()}),
                GPeer::Nodes(s) => json!({"nodes": pair_json(*s)}),
            })
            .collect();
        let mut out = json!({"action": action, peers_field: peers});
        if !r.ports.is_empty() {
            let ports: Vec<Value> = r
                .ports
                .iter()
                .map(|port| match (port, v1) {
                    (GPort::Num(pr, n), false) => {
                        json!({pr.as_str().to_lowercase(): {"destinationPort": {"number": n}}})
                    }
                    (GPort::Range(pr, lo, hi), false) => {
                        json!({pr.as_str().to_lowercase(): {"destinationPort": {"range": {"start": lo, "end": hi}}}})
                    }
                    (GPort::Named(n), false) => json!({"destinationNamedPort": n}),
                    // v1alpha1: protocol defaults to TCP: leave it out for TCP.
                    (GPort::Num(pr, n), true) => match pr {
                        Protocol::Tcp => json!({"portNumber": {"port": n}}),
                        _ => json!({"portNumber": {"protocol": pr.as_str(), "port": n}}),
                    },
                    (GPort::Range(pr, lo, hi), true) => {
                        json!({"portRange": {"protocol": pr.as_str(), "start": lo, "end": hi}})
                    }
                    (GPort::Named(n), true) => json!({"namedPort": n}),
                })
                .collect();
            out[if v1 { "ports" } else { "protocols" }] = json!(ports);
        }
        out
    };
    let subject = match p.subject_pods {
        None => json!({"namespaces": pair_json(p.subject_ns)}),
        Some(pods) => {
            json!({"pods": {"namespaceSelector": pair_json(p.subject_ns), "podSelector": pair_json(pods)}})
        }
    };
    let mut spec = json!({"subject": subject,
        "ingress": p.ingress.iter().map(|r| rule(r, "from")).collect::<Vec<_>>(),
        "egress": p.egress.iter().map(|r| rule(r, "to")).collect::<Vec<_>>()});
    let (api, kind) = match p.kind {
        Kind::Cnp => {
            spec["tier"] = json!(if p.admin { "Admin" } else { "Baseline" });
            spec["priority"] = json!(p.priority);
            ("v1alpha2", "ClusterNetworkPolicy")
        }
        Kind::Anp => {
            spec["priority"] = json!(p.priority);
            ("v1alpha1", "AdminNetworkPolicy")
        }
        Kind::Banp => ("v1alpha1", "BaselineAdminNetworkPolicy"),
    };
    json!({"apiVersion": format!("policy.networking.k8s.io/{api}"), "kind": kind,
        "metadata": {"name": p.name}, "spec": spec})
}

// ---------------------------------------------------------------- the naive reference

#[derive(Clone, Copy, Debug, PartialEq)]
enum End {
    Pod(usize, usize),
    Node(usize),
    External(Ipv4Addr),
}

struct Reference<'a> {
    w: &'a World,
}

impl Reference<'_> {
    fn ns_labels(&self, n: usize) -> Vec<(&'static str, &'static str)> {
        let mut l = self.w.ns_labels[n].clone();
        l.push(("kubernetes.io/metadata.name", NS[n]));
        l
    }

    fn ip(&self, e: End) -> Ipv4Addr {
        match e {
            End::Pod(_, p) if self.w.is_host(p) => node_ip(p),
            End::Pod(n, p) => pod_ip(n, p),
            End::Node(i) => node_ip(i),
            End::External(ip) => ip,
        }
    }

    /// The node an end is (a node, or a host-network pod), if any.
    fn as_node(&self, e: End) -> Option<usize> {
        match e {
            End::Node(i) => Some(i),
            End::Pod(_, p) if self.w.is_host(p) => Some(p),
            _ => None,
        }
    }

    fn own_network_pod(&self, e: End) -> Option<(usize, usize)> {
        match e {
            End::Pod(n, p) if !self.w.is_host(p) => Some((n, p)),
            _ => None,
        }
    }

    fn peer_ok(&self, peer: &GPeer, e: End) -> bool {
        match peer {
            GPeer::Namespaces(s) => self
                .own_network_pod(e)
                .is_some_and(|(n, _)| pair_matches(*s, &self.ns_labels(n))),
            GPeer::Pods(ns, pods) => self.own_network_pod(e).is_some_and(|(n, p)| {
                pair_matches(*ns, &self.ns_labels(n))
                    && pair_matches(*pods, &self.w.pod_labels[n * 3 + p])
            }),
            GPeer::Networks(nets) => {
                let ip = u32::from(self.ip(e));
                nets.iter().any(|(net, len)| {
                    let mask = if *len == 0 { 0 } else { u32::MAX << (32 - len) };
                    ip & mask == u32::from(*net) & mask
                })
            }
            GPeer::Nodes(s) => self
                .as_node(e)
                .is_some_and(|i| pair_matches(*s, &self.w.node_labels[i])),
        }
    }

    fn port_ok(port: &GPort, flow_port: u16, proto: Protocol, dst: Option<usize>) -> bool {
        match port {
            GPort::Num(pr, n) => *pr == proto && *n == flow_port,
            GPort::Range(pr, lo, hi) => *pr == proto && *lo <= flow_port && flow_port <= *hi,
            GPort::Named(name) => dst.is_some_and(|p| {
                named_ports(p)
                    .iter()
                    .any(|(nm, pt, pr)| nm == name && *pt == flow_port && *pr == proto)
            }),
        }
    }

    fn selects(&self, p: &GPolicy, n: usize, pod: usize) -> bool {
        pair_matches(p.subject_ns, &self.ns_labels(n))
            && p.subject_pods
                .is_none_or(|s| pair_matches(s, &self.w.pod_labels[n * 3 + pod]))
    }

    /// The cluster tier walk: `Some(action)` decided; `None` passed to the next tier, or no
    /// rule matched (the caller goes on to the next tier either way).
    // The model spells out every input of one side's walk, as the engine's caller would.
    #[allow(clippy::too_many_arguments)]
    fn walk(
        &self,
        admin: bool,
        subject: (usize, usize),
        peer: End,
        ingress: bool,
        port: u16,
        proto: Protocol,
        dst: Option<usize>,
    ) -> Option<Act> {
        let mut policies: Vec<&GPolicy> = self
            .w
            .policies
            .iter()
            .filter(|p| p.admin == admin && self.selects(p, subject.0, subject.1))
            .collect();
        // Priority (the BANP after every Baseline CNP), then name, then kind (CNP first).
        let key = |p: &GPolicy| {
            let prio = if p.kind == Kind::Banp {
                1001
            } else {
                p.priority
            };
            (prio, p.name.clone(), p.kind != Kind::Cnp)
        };
        policies.sort_by_key(|p| key(p));
        for p in policies {
            let rules = if ingress { &p.ingress } else { &p.egress };
            for r in rules {
                let peers = r.peers.iter().any(|x| self.peer_ok(x, peer));
                let ports = r.ports.is_empty()
                    || r.ports.iter().any(|x| Self::port_ok(x, port, proto, dst));
                if peers && ports {
                    return match r.action {
                        Act::Pass => None,
                        a => Some(a),
                    };
                }
            }
        }
        None
    }

    fn side(
        &self,
        subject: End,
        peer: End,
        ingress: bool,
        port: u16,
        proto: Protocol,
    ) -> (SideVerdict, Tier) {
        let Some((n, p)) = self.own_network_pod(subject) else {
            return (SideVerdict::NotApplicable, Tier::None);
        };
        let nps: Vec<&GNp> = self
            .w
            .nps
            .iter()
            .filter(|np| {
                np.ns == n
                    && pair_matches(np.pods, &self.w.pod_labels[n * 3 + p])
                    && if ingress {
                        np.ingress.is_some()
                    } else {
                        np.egress.is_some()
                    }
            })
            .collect();
        // Loopback: outside every tier. Own node: NetworkPolicies allow it, the cluster tiers
        // decide it as any other destination.
        let loopback = peer == End::Pod(n, p);
        let own_node = self.as_node(peer) == Some(p);
        if loopback {
            return if nps.is_empty() {
                (SideVerdict::Uncovered, Tier::None)
            } else {
                (SideVerdict::Allowed, Tier::NetworkPolicy)
            };
        }
        let dst = if ingress {
            Some(p)
        } else {
            self.own_network_pod(peer).map(|(_, pp)| pp)
        };
        match self.walk(true, (n, p), peer, ingress, port, proto, dst) {
            Some(Act::Accept) => return (SideVerdict::Allowed, Tier::Admin),
            Some(_) => return (SideVerdict::Denied, Tier::Admin),
            None => {}
        }
        if !nps.is_empty() {
            if own_node {
                return (SideVerdict::Allowed, Tier::NetworkPolicy);
            }
            let allowed = nps.iter().any(|np| {
                let rules = if ingress { &np.ingress } else { &np.egress };
                rules.iter().flatten().any(|r| {
                    self.own_network_pod(peer)
                        .is_some_and(|(pn, _)| pair_matches(*r, &self.ns_labels(pn)))
                })
            });
            return if allowed {
                (SideVerdict::Allowed, Tier::NetworkPolicy)
            } else {
                (SideVerdict::Denied, Tier::NetworkPolicy)
            };
        }
        match self.walk(false, (n, p), peer, ingress, port, proto, dst) {
            Some(Act::Accept) => (SideVerdict::Allowed, Tier::Baseline),
            Some(_) => (SideVerdict::Denied, Tier::Baseline),
            None => (SideVerdict::Uncovered, Tier::None),
        }
    }
}

// ---------------------------------------------------------------- strategies

fn pair() -> impl Strategy<Value = Pair> {
    prop::option::weighted(
        0.7,
        prop::sample::select(vec![
            ("env", "prod"),
            ("env", "dev"),
            ("team", "a"),
            ("team", "b"),
        ]),
    )
}

fn labels() -> impl Strategy<Value = Vec<(&'static str, &'static str)>> {
    (
        prop::option::of(prop::sample::select(vec!["prod", "dev"])),
        prop::option::of(prop::sample::select(vec!["a", "b"])),
    )
        .prop_map(|(env, team)| {
            let mut l = Vec::new();
            if let Some(e) = env {
                l.push(("env", e));
            }
            if let Some(t) = team {
                l.push(("team", t));
            }
            l
        })
}

fn proto() -> impl Strategy<Value = Protocol> {
    prop::sample::select(vec![Protocol::Tcp, Protocol::Udp, Protocol::Sctp])
}

fn port() -> impl Strategy<Value = GPort> {
    prop_oneof![
        (proto(), prop::sample::select(vec![80u16, 81])).prop_map(|(p, n)| GPort::Num(p, n)),
        (
            proto(),
            prop::sample::select(vec![(79u16, 80u16), (80, 81), (81, 90)])
        )
            .prop_map(|(p, (lo, hi))| GPort::Range(p, lo, hi)),
        prop::sample::select(vec!["web", "dns"]).prop_map(GPort::Named),
    ]
}

fn networks() -> impl Strategy<Value = Vec<(Ipv4Addr, u8)>> {
    prop::collection::vec(
        prop::sample::select(vec![
            (Ipv4Addr::new(10, 0, 0, 0), 24),
            (Ipv4Addr::new(10, 0, 0, 0), 16),
            (Ipv4Addr::new(10, 0, 1, 11), 32),
            (Ipv4Addr::new(192, 168, 0, 2), 32),
            (Ipv4Addr::UNSPECIFIED, 0),
            (Ipv4Addr::new(203, 0, 113, 0), 24),
        ]),
        1..3,
    )
}

fn rule(egress: bool) -> impl Strategy<Value = GRule> {
    let peer = if egress {
        prop_oneof![
            3 => pair().prop_map(GPeer::Namespaces),
            3 => (pair(), pair()).prop_map(|(n, p)| GPeer::Pods(n, p)),
            2 => networks().prop_map(GPeer::Networks),
            2 => pair().prop_map(GPeer::Nodes),
        ]
        .boxed()
    } else {
        prop_oneof![
            pair().prop_map(GPeer::Namespaces),
            (pair(), pair()).prop_map(|(n, p)| GPeer::Pods(n, p)),
        ]
        .boxed()
    };
    (
        prop::sample::select(vec![Act::Accept, Act::Deny, Act::Pass]),
        prop::collection::vec(peer, 1..3),
        prop::collection::vec(port(), 0..3),
    )
        .prop_map(|(action, peers, mut ports)| {
            // The API forbids named ports with networks/nodes peers.
            if peers
                .iter()
                .any(|p| matches!(p, GPeer::Networks(_) | GPeer::Nodes(_)))
            {
                ports.retain(|p| !matches!(p, GPort::Named(_)));
            }
            GRule {
                action,
                peers,
                ports,
            }
        })
}

fn policy() -> impl Strategy<Value = GPolicy> {
    (
        prop::sample::select(vec![Kind::Cnp, Kind::Cnp, Kind::Anp]),
        any::<bool>(),
        0..3u32,
        pair(),
        prop::option::of(pair()),
        prop::collection::vec(rule(false), 0..3),
        prop::collection::vec(rule(true), 0..3),
    )
        .prop_map(
            |(kind, admin, priority, subject_ns, subject_pods, ingress, egress)| GPolicy {
                kind,
                admin: admin || kind == Kind::Anp,
                priority,
                name: String::new(),
                subject_ns,
                subject_pods,
                ingress,
                egress,
            },
        )
}

fn np() -> impl Strategy<Value = GNp> {
    (
        0..3usize,
        pair(),
        prop::option::of(prop::collection::vec(pair(), 0..2)),
        prop::option::of(prop::collection::vec(pair(), 0..2)),
    )
        .prop_map(|(ns, pods, ingress, egress)| GNp {
            ns,
            pods,
            // A NetworkPolicy with no direction gets Ingress by default: keep one.
            ingress: if ingress.is_none() && egress.is_none() {
                Some(Vec::new())
            } else {
                ingress
            },
            egress,
        })
}

fn world() -> impl Strategy<Value = World> {
    (
        prop::collection::vec(labels(), 3),
        prop::collection::vec(labels(), 9),
        prop::collection::vec(labels(), 3),
        prop::bool::weighted(0.25),
        prop::collection::vec(policy(), 0..5),
        prop::option::weighted(
            0.4,
            (
                pair(),
                prop::option::of(pair()),
                prop::collection::vec(rule(false), 0..3),
                prop::collection::vec(rule(true), 0..3),
            ),
        ),
        prop::collection::vec(np(), 0..3),
        // Names: a permutation so that equal priorities are ordered by name, not position.
        Just(()).prop_perturb(|(), mut rng| {
            let mut names: Vec<usize> = (0..5).collect();
            for i in (1..names.len()).rev() {
                let j = (rng.next_u32() as usize) % (i + 1);
                names.swap(i, j);
            }
            names
        }),
    )
        .prop_map(
            |(
                ns_labels,
                pod_labels,
                node_labels,
                host_network_b,
                mut policies,
                banp,
                nps,
                names,
            )| {
                for (i, p) in policies.iter_mut().enumerate() {
                    p.name = format!("p{}", names[i]);
                }
                if let Some((subject_ns, subject_pods, ingress, mut egress)) = banp {
                    // A BaselineAdminNetworkPolicy has no Pass action.
                    let mut ingress = ingress;
                    for r in ingress.iter_mut().chain(egress.iter_mut()) {
                        if r.action == Act::Pass {
                            r.action = Act::Deny;
                        }
                    }
                    policies.push(GPolicy {
                        kind: Kind::Banp,
                        admin: false,
                        priority: 0,
                        name: "default".into(),
                        subject_ns,
                        subject_pods,
                        ingress,
                        egress,
                    });
                }
                World {
                    ns_labels,
                    pod_labels,
                    node_labels,
                    host_network_b,
                    policies,
                    nps,
                }
            },
        )
}

fn end() -> impl Strategy<Value = End> {
    prop_oneof![
        8 => (0..3usize, 0..3usize).prop_map(|(n, p)| End::Pod(n, p)),
        1 => (0..3usize).prop_map(End::Node),
        1 => prop::sample::select(vec![Ipv4Addr::new(203, 0, 113, 9), Ipv4Addr::new(8, 8, 8, 8)])
            .prop_map(End::External),
    ]
}

fn flow() -> impl Strategy<Value = (End, End, u16, Protocol)> {
    (
        end(),
        end(),
        prop::sample::select(vec![80u16, 81, 85]),
        proto(),
    )
}

fn tier_of(t: Tier) -> &'static str {
    t.as_str()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    #[test]
    fn the_tier_walk_matches_the_reference(
        world in world(),
        flows in prop::collection::vec(flow(), 1..25),
    ) {
        let text = world.snapshot();
        let (inv, errors) = snapshot::parse(&text, "generated").unwrap();
        prop_assert!(errors.is_empty(), "{:?}", errors);
        let (engine, errors) = PolicyEngine::build(&inv, PolicyOptions::default());
        prop_assert!(errors.is_empty(), "every generated policy is valid: {:?}", errors);
        let r = Reference { w: &world };
        // Twice: the second pass answers from the warm cache.
        for pass in 0..2 {
            for &(src, dst, port, proto) in &flows {
                let v = engine.evaluate_ips(IpAddr::V4(r.ip(src)), IpAddr::V4(r.ip(dst)), port, proto);
                let egress = r.side(src, dst, false, port, proto);
                let ingress = r.side(dst, src, true, port, proto);
                let expected = Verdict::combine(ingress.0, egress.0);
                prop_assert_eq!(
                    (v.verdict, (v.egress.verdict, tier_of(v.egress.tier)), (v.ingress.verdict, tier_of(v.ingress.tier))),
                    (expected, (egress.0, tier_of(egress.1)), (ingress.0, tier_of(ingress.1))),
                    "pass {}: {:?} -> {:?} {}/{}\n{:#?}\n{}", pass, src, dst, port, proto, v, text
                );
                // By name (pods with their own network) the engine answers the same.
                if let (End::Pod(sn, sp), End::Pod(dn, dp)) = (src, dst) {
                    if !world.is_host(sp) && !world.is_host(dp) {
                        let peer = |n: usize, p: usize| Peer::Pod { namespace: NS[n].into(), name: PODS[p].into() };
                        let by_name = engine.evaluate(&peer(sn, sp), &peer(dn, dp), port, proto).unwrap();
                        prop_assert_eq!(&by_name, &v);
                    }
                }
            }
        }
    }
}

/// Guards the generator: the comparison must see every tier decide and every verdict.
#[test]
fn generators_cover_every_tier() {
    use std::collections::BTreeMap;

    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..200 {
        let w = world().new_tree(&mut runner).unwrap().current();
        let flows = prop::collection::vec(flow(), 20)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let r = Reference { w: &w };
        for (src, dst, port, proto) in flows {
            for (subject, peer, ingress) in [(src, dst, false), (dst, src, true)] {
                let (v, t) = r.side(subject, peer, ingress, port, proto);
                *counts
                    .entry(format!("{}/{}", v.as_str(), t.as_str()))
                    .or_default() += 1;
            }
        }
    }
    for key in [
        "allowed/admin",
        "denied/admin",
        "allowed/networkpolicy",
        "denied/networkpolicy",
        "allowed/baseline",
        "denied/baseline",
        "uncovered/none",
        "not_applicable/none",
    ] {
        assert!(
            counts.get(key).copied().unwrap_or(0) >= 50,
            "{key}: {counts:?}"
        );
    }
}
