//! Read-only questions about what an engine was built from, for the offline tools that name
//! workloads and ports (`policy eval` with a named port, `policy diff`'s port list).

use super::engine::PolicyEngine;
use super::ports::PortSpec;
use super::tiered::TierPort;
use super::Peer;
use crate::inventory::index::AddressOwner;
use crate::model::Protocol;

/// A pod the engine knows, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodRef<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    /// Shares its node's network: policies never apply to it.
    pub host_network: bool,
    /// `Succeeded`/`Failed`.
    pub terminated: bool,
}

/// A port a rule names: a number or range, or a name resolved on the destination.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RulePort {
    /// `port..=endPort` (equal ends for a single port).
    Range(Protocol, u16, u16),
    Named(Protocol, String),
}

impl PolicyEngine {
    /// Every pod of the inventory (workload stand-ins included), in inventory order.
    pub fn pods(&self) -> impl Iterator<Item = PodRef<'_>> {
        self.cluster.pods.iter().map(|p| PodRef {
            namespace: &self.cluster.namespaces[p.ns as usize].name,
            name: &p.name,
            host_network: p.host_network,
            terminated: p.terminated,
        })
    }

    /// Every namespace the engine knows (listed, or named by a pod or a policy), in order.
    pub fn namespaces(&self) -> impl Iterator<Item = &str> {
        self.cluster.namespaces.iter().map(|n| n.name.as_str())
    }

    /// The named container ports of a pod: (name, number, protocol), sorted.
    pub fn named_ports(&self, peer: &Peer) -> Vec<(&str, u16, Protocol)> {
        let pod = match peer {
            Peer::Pod { namespace, name } => self.cluster.pod_id(namespace, name),
            Peer::Ip(ip) => match self.cluster.endpoint_of(*ip) {
                AddressOwner::Pod(p) | AddressOwner::HostPod(p) => Some(p),
                _ => None,
            },
        };
        pod.map(|p| {
            self.cluster
                .pod(p)
                .ports
                .iter()
                .map(|n| (n.name.as_str(), n.port, n.protocol))
                .collect()
        })
        .unwrap_or_default()
    }

    /// The number a port name has on a destination, as a NetworkPolicy resolves it: the
    /// container port with that name and protocol (none for a non-pod address).
    pub fn resolve_named_port(&self, dst: &Peer, name: &str, protocol: Protocol) -> Option<u16> {
        self.named_ports(dst)
            .into_iter()
            .find(|(n, _, p)| *n == name && *p == protocol)
            .map(|(_, port, _)| port)
    }

    /// Every port the valid policies' rules name (both directions), sorted and deduplicated:
    /// NetworkPolicies' and the cluster tiers' (whose named ports carry no protocol of their
    /// own and are left out: the destination's container port says it). Entries without a
    /// port (every port of a protocol) are not listed.
    pub fn rule_ports(&self) -> Vec<RulePort> {
        let mut out: Vec<RulePort> = self
            .policies
            .iter()
            .flat_map(|p| p.ingress.iter().chain(p.egress.iter()).flatten())
            .flat_map(|r| r.ports.iter())
            .filter_map(|m| match &m.spec {
                PortSpec::Any => None,
                PortSpec::Range(a, b) => Some(RulePort::Range(m.protocol, *a, *b)),
                PortSpec::Named(n) => Some(RulePort::Named(m.protocol, n.to_string())),
            })
            .collect();
        out.extend(
            self.tiers
                .policies
                .iter()
                .flat_map(|p| p.ingress.iter().chain(&p.egress))
                .flat_map(|r| r.ports.iter())
                .filter_map(|port| match port {
                    TierPort::Range(p, a, b) => Some(RulePort::Range(*p, *a, *b)),
                    TierPort::Any(_) | TierPort::Named(_) => None,
                }),
        );
        out.sort();
        out.dedup();
        out
    }
}
