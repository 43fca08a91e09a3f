//! The peer a rule names for an observed end (pure): pods by namespace and labels, or an
//! `ipBlock` for an address that is not a pod's.

use std::net::IpAddr;

use super::cluster::{ClusterView, Labels};
use crate::whatif::EdgeEnd;

/// A peer of an advised rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Peer {
    /// Pods with these labels; in namespace `namespace`, or in the policy's own when `None`.
    Pods {
        namespace: Option<String>,
        labels: Labels,
    },
    /// `net/prefix`.
    Block { net: IpAddr, prefix: u8 },
}

impl Peer {
    /// `203.0.113.0/24`.
    pub fn cidr(net: IpAddr, prefix: u8) -> String {
        format!("{net}/{prefix}")
    }
}

/// What an address that is not a workload's pod is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// A node's address; with the host-network pods that use it, if any.
    Node {
        node: String,
        host_pods: Vec<String>,
    },
    /// A host-network pod's address on a node the snapshot does not list.
    HostPods(Vec<String>),
    /// Anything else: outside the cluster, or unknown to the snapshot.
    External,
}

impl Address {
    pub fn of(ip: IpAddr, view: &ClusterView) -> Address {
        let ip = ip.to_canonical();
        let host_pods: Vec<String> = view
            .host_pods
            .get(&ip)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        match view.nodes.get(&ip) {
            Some(node) => Address::Node {
                node: node.clone(),
                host_pods,
            },
            None if !host_pods.is_empty() => Address::HostPods(host_pods),
            None => Address::External,
        }
    }

    /// How a comment names the address: `192.168.1.10 (node n1)`.
    pub fn describe(&self, ip: IpAddr) -> String {
        match self {
            Address::Node { node, host_pods } if host_pods.is_empty() => {
                format!("{ip} (node {node})")
            }
            Address::Node { node, host_pods } => {
                format!("{ip} (node {node}: {})", host_pods.join(", "))
            }
            Address::HostPods(pods) => format!("{ip} ({})", pods.join(", ")),
            Address::External => ip.to_string(),
        }
    }
}

/// The network of `ip` with `prefix` bits (clamped to the address's length).
pub fn network(ip: IpAddr, prefix: u8) -> (IpAddr, u8) {
    match ip {
        IpAddr::V4(v4) => {
            let prefix = prefix.min(32);
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            (IpAddr::from((u32::from(v4) & mask).to_be_bytes()), prefix)
        }
        IpAddr::V6(v6) => {
            let prefix = prefix.min(128);
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            (IpAddr::from((u128::from(v6) & mask).to_be_bytes()), prefix)
        }
    }
}

/// The peer for an address: a node's or a host-network pod's exactly (one address), an
/// external one as its network of `prefix_v4`/`prefix_v6` bits.
pub fn address_peer(ip: IpAddr, kind: &Address, prefix_v4: u8, prefix_v6: u8) -> Peer {
    let ip = ip.to_canonical();
    let full = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = match kind {
        Address::External if ip.is_ipv4() => prefix_v4,
        Address::External => prefix_v6,
        _ => full,
    };
    let (net, prefix) = network(ip, prefix);
    Peer::Block { net, prefix }
}

/// The peer for a workload, as seen from a policy in namespace `from_ns`.
pub fn workload_peer(end: &EdgeEnd, labels: &Labels, from_ns: &str) -> Peer {
    let namespace = match end {
        EdgeEnd::Workload { namespace, .. } if namespace != from_ns => Some(namespace.clone()),
        _ => None,
    };
    Peer::Pods {
        namespace,
        labels: labels.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_addresses_aggregate_to_the_prefix_and_nodes_stay_exact() {
        let ip: IpAddr = "203.0.113.77".parse().unwrap();
        assert_eq!(
            address_peer(ip, &Address::External, 24, 64),
            Peer::Block {
                net: "203.0.113.0".parse().unwrap(),
                prefix: 24
            }
        );
        let node = Address::Node {
            node: "n1".into(),
            host_pods: vec![],
        };
        assert_eq!(
            address_peer(ip, &node, 24, 64),
            Peer::Block {
                net: ip,
                prefix: 32
            }
        );
        let v6: IpAddr = "2001:db8:1:2:3::9".parse().unwrap();
        assert_eq!(
            address_peer(v6, &Address::External, 24, 48),
            Peer::Block {
                net: "2001:db8:1::".parse().unwrap(),
                prefix: 48
            }
        );
        assert_eq!(network(ip, 0), ("0.0.0.0".parse().unwrap(), 0));
        assert_eq!(network(ip, 40), (ip, 32));
    }

    #[test]
    fn addresses_are_nodes_host_network_pods_or_external() {
        let mut view = ClusterView::default();
        let n: IpAddr = "192.168.1.10".parse().unwrap();
        view.nodes.insert(n, "n1".into());
        view.host_pods
            .entry(n)
            .or_default()
            .insert("kube-system/agent-x".into());
        let kind = Address::of(n, &view);
        assert_eq!(
            kind.describe(n),
            "192.168.1.10 (node n1: kube-system/agent-x)"
        );
        let h: IpAddr = "192.168.9.9".parse().unwrap();
        view.host_pods.entry(h).or_default().insert("ns/p".into());
        assert_eq!(
            Address::of(h, &view),
            Address::HostPods(vec!["ns/p".into()])
        );
        assert_eq!(
            Address::of("8.8.8.8".parse().unwrap(), &view),
            Address::External
        );
    }
}
