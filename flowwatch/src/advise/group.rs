//! Observed edges into rules (pure): each edge allows egress on its source and ingress on its
//! destination (for the ends that are workloads of an advised namespace); per workload and
//! direction, peers seen on the same set of ports share one rule.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::IpAddr;

use super::cluster::{ClusterView, Labels, Workload};
use super::labels;
use super::peers::{self, Address, Peer};
use super::{
    policy_name, Advice, AdviseOptions, Direction, LeftOut, NamespaceAdvice, Rule, WorkloadPolicy,
};
use crate::model::Protocol;
use crate::whatif::{EdgeCount, EdgeEnd, EdgeKey};

/// An observed end, as the snapshot knows it.
enum End<'v> {
    Workload(&'v EdgeEnd, &'v Workload),
    Address(IpAddr, Address),
}

/// Ports of a peer -> the edges seen there (comment lines).
type PortsSeen = BTreeMap<(Protocol, u16), BTreeSet<String>>;

/// What one run accumulates.
struct Builder<'v> {
    view: &'v ClusterView,
    opts: &'v AdviseOptions,
    namespaces: BTreeSet<String>,
    /// Workloads by namespace (the others a selector must not select).
    by_namespace: BTreeMap<&'v str, Vec<&'v Workload>>,
    selectors: HashMap<&'v EdgeEnd, Labels>,
    rules: BTreeMap<(&'v EdgeEnd, Direction), BTreeMap<Peer, PortsSeen>>,
    advice: Advice,
}

/// The advice for the observed `edges` on the cluster `view`.
pub fn advise(
    view: &ClusterView,
    edges: &BTreeMap<EdgeKey, EdgeCount>,
    opts: &AdviseOptions,
) -> Advice {
    let namespaces: BTreeSet<String> = view
        .namespaces()
        .into_iter()
        .filter(|ns| {
            opts.namespaces
                .as_ref()
                .is_none_or(|only| only.contains(*ns))
        })
        .map(str::to_string)
        .collect();
    let mut by_namespace: BTreeMap<&str, Vec<&Workload>> = BTreeMap::new();
    for w in view.workloads.values() {
        by_namespace.entry(&w.namespace).or_default().push(w);
    }
    let mut b = Builder {
        view,
        opts,
        namespaces,
        by_namespace,
        selectors: HashMap::new(),
        rules: BTreeMap::new(),
        advice: Advice::default(),
    };
    for ns in &b.namespaces {
        b.advice
            .namespaces
            .insert(ns.clone(), NamespaceAdvice::default());
    }
    for (key, count) in edges {
        b.add(key, count);
    }
    b.finish()
}

/// The other protocol DNS uses: a client that asked over UDP retries over TCP when the answer
/// does not fit, so both are allowed whichever was seen.
fn dns_companion(port: u16, protocol: Protocol) -> Option<Protocol> {
    match (port, protocol) {
        (53, Protocol::Udp) => Some(Protocol::Tcp),
        (53, Protocol::Tcp) => Some(Protocol::Udp),
        _ => None,
    }
}

impl<'v> Builder<'v> {
    fn end(&self, end: &EdgeEnd) -> Option<End<'v>> {
        match end {
            EdgeEnd::Workload { .. } => self
                .view
                .workloads
                .get_key_value(end)
                .map(|(k, w)| End::Workload(k, w)),
            // A pod's own address (a record written without the cluster's names).
            EdgeEnd::Address(ip) => Some(
                match self
                    .view
                    .pod_ips
                    .get(&ip.to_canonical())
                    .and_then(|e| self.view.workloads.get_key_value(e))
                {
                    Some((k, w)) => End::Workload(k, w),
                    None => End::Address(*ip, Address::of(*ip, self.view)),
                },
            ),
        }
    }

    fn name(end: &End) -> String {
        match end {
            End::Workload(_, w) => w.id(),
            End::Address(ip, kind) => kind.describe(*ip),
        }
    }

    /// The workload a policy is written for, if this end is one.
    fn subject(&self, end: &End<'v>) -> Option<(&'v EdgeEnd, &'v Workload)> {
        match end {
            End::Workload(k, w) if !w.host_network && self.namespaces.contains(&w.namespace) => {
                Some((*k, *w))
            }
            _ => None,
        }
    }

    /// The labels selecting a workload's pods (chosen once per workload).
    fn selector(&mut self, end: &'v EdgeEnd, w: &'v Workload) -> Labels {
        if let Some(s) = self.selectors.get(end) {
            return s.clone();
        }
        let others: Vec<(String, &[Labels])> = self
            .by_namespace
            .get(w.namespace.as_str())
            .into_iter()
            .flatten()
            .filter(|o| o.kind != w.kind || o.name != w.name)
            .map(|o| (o.id(), o.label_sets.as_slice()))
            .collect();
        let choice = labels::choose(&w.labels, &others);
        if !choice.also_selects.is_empty() {
            self.advice.notes.insert(format!(
                "{}: no stable labels tell it apart from {}; its rules select those too",
                w.id(),
                choice.also_selects.join(", ")
            ));
        }
        self.selectors.insert(end, choice.labels.clone());
        choice.labels
    }

    /// The peer naming `end` in a policy of namespace `from_ns`.
    fn peer(&mut self, end: &End<'v>, from_ns: &str) -> Option<Peer> {
        match end {
            End::Workload(_, w) if w.host_network => {
                self.advice.notes.insert(format!(
                    "{}: a host-network workload; its traffic carries its node's address, \
                     and the records named it as a pod: left out",
                    w.id()
                ));
                None
            }
            End::Workload(k, w) => {
                let labels = self.selector(k, w);
                Some(peers::workload_peer(k, &labels, from_ns))
            }
            End::Address(ip, kind) => Some(peers::address_peer(
                *ip,
                kind,
                self.opts.external_prefix_v4,
                self.opts.external_prefix_v6,
            )),
        }
    }

    fn add(&mut self, key: &EdgeKey, count: &EdgeCount) {
        if !self.opts.include_failed && count.established == 0 {
            self.left_out(LeftOut::NeverEstablished, key);
            return;
        }
        let (Some(src), Some(dst)) = (self.end(&key.src), self.end(&key.dst)) else {
            self.left_out(LeftOut::UnknownWorkload, key);
            return;
        };
        let (src_name, dst_name) = (Self::name(&src), Self::name(&dst));
        let seen = |protocol: Protocol| {
            let mut line = format!(
                "{src_name} -> {dst_name} {}/{protocol}: {} connection{}",
                key.port,
                count.connections,
                if count.connections == 1 { "" } else { "s" }
            );
            if count.established != count.connections {
                let _ = write!(line, " ({} established)", count.established);
            }
            line
        };
        let mut protocols = vec![(key.protocol, seen(key.protocol))];
        if let Some(other) = dns_companion(key.port, key.protocol) {
            protocols.push((
                other,
                format!(
                    "{src_name} -> {dst_name} {}/{other}: DNS, as {} was seen",
                    key.port, key.protocol
                ),
            ));
        }
        let mut allowed = false;
        if let Some((end, w)) = self.subject(&src) {
            if let Some(peer) = self.peer(&dst, &w.namespace) {
                self.allow(end, Direction::Egress, peer, key.port, &protocols);
                allowed = true;
            }
        }
        if let Some((end, w)) = self.subject(&dst) {
            if let Some(peer) = self.peer(&src, &w.namespace) {
                self.allow(end, Direction::Ingress, peer, key.port, &protocols);
                allowed = true;
            }
        }
        if !allowed {
            self.left_out(LeftOut::NoSubject, key);
            return;
        }
        self.advice.allowed_edges.insert(key.clone(), *count);
        if let (End::Workload(s, _), End::Workload(d, _)) = (&src, &dst) {
            for (protocol, _) in &protocols {
                self.advice
                    .allowed_pairs
                    .insert(((*s).clone(), (*d).clone(), *protocol, key.port));
            }
        }
    }

    fn allow(
        &mut self,
        subject: &'v EdgeEnd,
        dir: Direction,
        peer: Peer,
        port: u16,
        protocols: &[(Protocol, String)],
    ) {
        let ports = self
            .rules
            .entry((subject, dir))
            .or_default()
            .entry(peer)
            .or_default();
        for (protocol, line) in protocols {
            ports
                .entry((*protocol, port))
                .or_default()
                .insert(line.clone());
        }
    }

    fn left_out(&mut self, why: LeftOut, key: &EdgeKey) {
        self.advice
            .left_out
            .entry(why)
            .or_default()
            .push(key.clone());
    }

    fn finish(mut self) -> Advice {
        let rules = std::mem::take(&mut self.rules);
        let mut policies: BTreeMap<&EdgeEnd, WorkloadPolicy> = BTreeMap::new();
        for ((end, dir), by_peer) in rules {
            let Some(w) = self.view.workloads.get(end) else {
                continue;
            };
            let selector = self.selector(end, w);
            let policy = policies.entry(end).or_insert_with(|| WorkloadPolicy {
                namespace: w.namespace.clone(),
                kind: w.kind.clone(),
                workload: w.name.clone(),
                name: policy_name(&w.kind, &w.name),
                selector,
                ingress: Vec::new(),
                egress: Vec::new(),
            });
            // Peers seen on the same ports share a rule: it then allows only observed pairs.
            let mut by_ports: BTreeMap<Vec<(Protocol, u16)>, Rule> = BTreeMap::new();
            for (peer, seen) in by_peer {
                let ports: Vec<(Protocol, u16)> = seen.keys().copied().collect();
                let rule = by_ports.entry(ports.clone()).or_insert_with(|| Rule {
                    peers: Vec::new(),
                    ports,
                    covers: Vec::new(),
                });
                rule.peers.push(peer);
                rule.covers.extend(seen.into_values().flatten());
            }
            let rules: Vec<Rule> = by_ports
                .into_values()
                .map(|mut r| {
                    r.covers.sort();
                    r.covers.dedup();
                    r
                })
                .collect();
            match dir {
                Direction::Ingress => policy.ingress = rules,
                Direction::Egress => policy.egress = rules,
            }
        }
        for (_, policy) in policies {
            if let Some(ns) = self.advice.namespaces.get_mut(&policy.namespace) {
                ns.policies.push(policy);
            }
        }
        self.advice
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::advise::cluster::Workload;

    fn workload(ns: &str, kind: &str, name: &str, labels: &[(&str, &str)]) -> (EdgeEnd, Workload) {
        let labels: Labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        (
            EdgeEnd::Workload {
                namespace: ns.into(),
                kind: kind.into(),
                name: name.into(),
            },
            Workload {
                namespace: ns.into(),
                kind: kind.into(),
                name: name.into(),
                labels: labels.clone(),
                label_sets: vec![labels],
                host_network: false,
            },
        )
    }

    fn view() -> ClusterView {
        let mut view = ClusterView::default();
        for (end, w) in [
            workload("shop", "deployment", "web", &[("app", "web")]),
            workload("shop", "deployment", "api", &[("app", "api")]),
            workload(
                "kube-system",
                "deployment",
                "coredns",
                &[("k8s-app", "kube-dns")],
            ),
        ] {
            view.workloads.insert(end, w);
        }
        view.nodes
            .insert("192.168.1.10".parse().unwrap(), "n1".into());
        view
    }

    fn end(ns: &str, kind: &str, name: &str) -> EdgeEnd {
        EdgeEnd::Workload {
            namespace: ns.into(),
            kind: kind.into(),
            name: name.into(),
        }
    }

    fn edge(src: EdgeEnd, dst: EdgeEnd, port: u16, protocol: Protocol) -> EdgeKey {
        EdgeKey {
            src,
            dst,
            port,
            protocol,
        }
    }

    fn seen(n: u64) -> EdgeCount {
        EdgeCount {
            connections: n,
            established: n,
        }
    }

    #[test]
    fn an_edge_between_workloads_is_egress_on_one_and_ingress_on_the_other() {
        let web = end("shop", "deployment", "web");
        let api = end("shop", "deployment", "api");
        let dns = end("kube-system", "deployment", "coredns");
        let edges: BTreeMap<EdgeKey, EdgeCount> = [
            (edge(web.clone(), api.clone(), 9090, Protocol::Tcp), seen(3)),
            (edge(api.clone(), dns.clone(), 53, Protocol::Udp), seen(2)),
            (
                edge(
                    EdgeEnd::Address("203.0.113.9".parse().unwrap()),
                    web.clone(),
                    8080,
                    Protocol::Tcp,
                ),
                seen(1),
            ),
            (
                edge(
                    EdgeEnd::Address("192.168.1.10".parse().unwrap()),
                    api.clone(),
                    9090,
                    Protocol::Tcp,
                ),
                seen(1),
            ),
            (
                edge(web.clone(), api.clone(), 6379, Protocol::Tcp),
                EdgeCount {
                    connections: 4,
                    established: 0,
                },
            ),
        ]
        .into();
        let opts = AdviseOptions {
            external_prefix_v4: 24,
            ..AdviseOptions::default()
        };
        let advice = advise(&view(), &edges, &opts);
        assert_eq!(
            advice.namespaces.keys().collect::<Vec<_>>(),
            ["kube-system", "shop"]
        );
        let shop = &advice.namespaces["shop"].policies;
        let names: Vec<&str> = shop.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["advised-deployment-api", "advised-deployment-web"]);
        let api_policy = &shop[0];
        assert_eq!(api_policy.selector["app"], "api");
        // Ingress: web and the node, both on 9090: one rule.
        assert_eq!(api_policy.ingress.len(), 1);
        assert_eq!(api_policy.ingress[0].ports, [(Protocol::Tcp, 9090)]);
        assert_eq!(api_policy.ingress[0].peers.len(), 2);
        assert!(api_policy.ingress[0].peers.contains(&Peer::Block {
            net: "192.168.1.10".parse().unwrap(),
            prefix: 32
        }));
        // Egress to DNS by its real labels, in its namespace, over UDP and TCP.
        let dns_rule = &api_policy.egress[0];
        assert_eq!(
            dns_rule.peers,
            [Peer::Pods {
                namespace: Some("kube-system".into()),
                labels: [("k8s-app".to_string(), "kube-dns".to_string())].into()
            }]
        );
        assert_eq!(dns_rule.ports, [(Protocol::Tcp, 53), (Protocol::Udp, 53)]);
        assert_eq!(dns_rule.covers.len(), 2, "{:?}", dns_rule.covers);
        // The internet, as its /24.
        let web_policy = &shop[1];
        assert_eq!(
            web_policy.ingress[0].peers,
            [Peer::Block {
                net: "203.0.113.0".parse().unwrap(),
                prefix: 24
            }]
        );
        assert_eq!(
            web_policy.ingress[0].covers,
            ["203.0.113.9 -> shop/deployment/web 8080/TCP: 1 connection"]
        );
        // The failed attempts are not allowed.
        assert_eq!(advice.left_out[&LeftOut::NeverEstablished].len(), 1);
        assert!(!web_policy
            .egress
            .iter()
            .any(|r| r.ports.contains(&(Protocol::Tcp, 6379))));
        assert!(advice
            .allowed_pairs
            .contains(&(api.clone(), dns.clone(), Protocol::Tcp, 53)));
        assert_eq!(advice.allowed_edges.len(), 4);
    }

    #[test]
    fn peers_seen_on_different_ports_get_rules_of_their_own() {
        let web = end("shop", "deployment", "web");
        let api = end("shop", "deployment", "api");
        let dns = end("kube-system", "deployment", "coredns");
        let edges: BTreeMap<EdgeKey, EdgeCount> = [
            (edge(web.clone(), api.clone(), 9090, Protocol::Tcp), seen(1)),
            (edge(web.clone(), api.clone(), 9091, Protocol::Tcp), seen(1)),
            (edge(web.clone(), dns.clone(), 9090, Protocol::Tcp), seen(1)),
        ]
        .into();
        let advice = advise(&view(), &edges, &AdviseOptions::default());
        let web_policy = advice.namespaces["shop"]
            .policies
            .iter()
            .find(|p| p.workload == "web")
            .unwrap();
        // api on {9090, 9091}, coredns on {9090}: two rules, so coredns is not allowed 9091.
        assert_eq!(web_policy.egress.len(), 2);
        for rule in &web_policy.egress {
            assert_eq!(rule.peers.len(), 1);
        }
        // Unknown workloads and address-to-address edges are reported, never a crash.
        let ghost = end("shop", "deployment", "ghost");
        let a = EdgeEnd::Address("192.168.1.10".parse().unwrap());
        let b = EdgeEnd::Address("8.8.8.8".parse().unwrap());
        let edges: BTreeMap<EdgeKey, EdgeCount> = [
            (edge(ghost, api.clone(), 1, Protocol::Tcp), seen(1)),
            (edge(a, b, 53, Protocol::Udp), seen(1)),
        ]
        .into();
        let advice = advise(&view(), &edges, &AdviseOptions::default());
        assert_eq!(advice.left_out[&LeftOut::UnknownWorkload].len(), 1);
        assert_eq!(advice.left_out[&LeftOut::NoSubject].len(), 1);
        assert!(advice.allowed_edges.is_empty());
        // Only the namespaces asked for get policies.
        let only = AdviseOptions {
            namespaces: Some(["shop".to_string()].into()),
            ..AdviseOptions::default()
        };
        let edges: BTreeMap<EdgeKey, EdgeCount> =
            [(edge(api.clone(), dns.clone(), 53, Protocol::Udp), seen(1))].into();
        let advice = advise(&view(), &edges, &only);
        assert_eq!(advice.namespaces.keys().collect::<Vec<_>>(), ["shop"]);
        assert_eq!(advice.namespaces["shop"].policies[0].egress.len(), 1);
    }
}
