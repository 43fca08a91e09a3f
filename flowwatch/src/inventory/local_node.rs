//! The agent's own node, by the addresses of its own network namespace (the agent runs in the
//! node's: host network). A Node object lists only the addresses the kubelet reports
//! (`InternalIP`, `ExternalIP`), but the node also sends from others: on a bridge CNI kubelet's
//! probes of pods leave from the bridge's address (the pod network's gateway). Counted as an
//! outside address, such a probe of a pod an ingress policy selects was judged `denied` and,
//! since it connects, reported as enforcement drift. Added as the node's addresses they are
//! what they are: the node (and own-node traffic, which NetworkPolicies allow).

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus};

use super::Inventory;

/// Adds `local` (the addresses of the agent's network namespace) to the Node named `node` as
/// `InternalIP` addresses, except loopback and IPv6 link-local addresses (the same on every
/// node), addresses the Node lists already, and addresses the inventory gives to a Service
/// (kube-proxy's IPVS mode binds ClusterIPs on the node) or to a pod of the pod network.
/// Returns how many were added (none when the Node is not in the inventory).
pub fn add_local_addresses(inv: &mut Inventory, node: &str, local: &[IpAddr]) -> usize {
    let taken: std::collections::HashSet<IpAddr> = service_and_pod_ips(inv).collect();
    let Some(n) = inv
        .nodes
        .iter_mut()
        .find(|n| n.metadata.name.as_deref() == Some(node))
    else {
        return 0;
    };
    let status = n.status.get_or_insert_with(NodeStatus::default);
    let addresses = status.addresses.get_or_insert_with(Vec::new);
    let listed: Vec<IpAddr> = addresses
        .iter()
        .filter_map(|a| a.address.trim().parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
        .collect();
    let mut added = 0;
    for ip in local.iter().map(std::net::IpAddr::to_canonical) {
        let link_local_v6 = matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
        if ip.is_loopback()
            || ip.is_unspecified()
            || link_local_v6
            || listed.contains(&ip)
            || taken.contains(&ip)
            || addresses
                .iter()
                .any(|a| a.address.parse::<IpAddr>().ok() == Some(ip))
        {
            continue;
        }
        addresses.push(NodeAddress {
            type_: "InternalIP".into(),
            address: ip.to_string(),
        });
        added += 1;
    }
    added
}

/// The addresses of Services (cluster, external, load-balancer) and of pods that are not on
/// the host network.
fn service_and_pod_ips(inv: &Inventory) -> impl Iterator<Item = IpAddr> + '_ {
    let services = inv.services.iter().flat_map(|s| {
        let spec = s.spec.iter().flat_map(|spec| {
            spec.cluster_ip
                .iter()
                .chain(spec.cluster_ips.iter().flatten())
                .chain(spec.external_ips.iter().flatten())
                .chain(spec.load_balancer_ip.iter())
        });
        let ingress = s
            .status
            .iter()
            .flat_map(|st| st.load_balancer.iter())
            .flat_map(|lb| lb.ingress.iter().flatten())
            .flat_map(|i| i.ip.iter());
        spec.chain(ingress)
    });
    let pods = inv
        .pods
        .iter()
        .filter(|p| {
            !p.spec
                .as_ref()
                .and_then(|s| s.host_network)
                .unwrap_or(false)
        })
        .flat_map(|p| p.status.iter())
        .flat_map(|st| {
            st.pod_ip
                .iter()
                .chain(st.pod_ips.iter().flatten().map(|i| &i.ip))
        });
    services
        .chain(pods)
        .filter_map(|s| s.trim().parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Node, Pod, PodIP, PodStatus, Service, ServiceSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn node(name: &str, ip: &str) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            status: Some(NodeStatus {
                addresses: Some(vec![NodeAddress {
                    type_: "InternalIP".into(),
                    address: ip.into(),
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn addresses(inv: &Inventory, name: &str) -> Vec<String> {
        inv.nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(name))
            .and_then(|n| n.status.as_ref()?.addresses.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|a| format!("{} {}", a.type_, a.address))
            .collect()
    }

    #[test]
    fn the_bridge_address_becomes_the_own_nodes_and_nothing_else_does() {
        let mut inv = Inventory {
            nodes: vec![node("n1", "10.250.0.10"), node("n2", "10.250.0.11")],
            services: vec![Service {
                spec: Some(ServiceSpec {
                    cluster_ip: Some("10.96.0.10".into()),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            pods: vec![Pod {
                status: Some(PodStatus {
                    pod_ip: Some("10.244.0.7".into()),
                    pod_ips: Some(vec![PodIP {
                        ip: "10.244.0.7".into(),
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let local: Vec<IpAddr> = [
            "127.0.0.1",
            "::1",
            "fe80::1",
            "10.250.0.10",
            // The bridge (pod network gateway): the one to add.
            "10.244.0.1",
            // An IPVS ClusterIP bound on kube-ipvs0, and a pod's address: not the node's.
            "10.96.0.10",
            "10.244.0.7",
            "::ffff:10.244.0.1",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        assert_eq!(add_local_addresses(&mut inv, "n1", &local), 1);
        assert_eq!(
            addresses(&inv, "n1"),
            ["InternalIP 10.250.0.10", "InternalIP 10.244.0.1"]
        );
        assert_eq!(addresses(&inv, "n2"), ["InternalIP 10.250.0.11"]);
        // Again: nothing new.
        assert_eq!(add_local_addresses(&mut inv, "n1", &local), 0);
        // A node the inventory does not have: nothing.
        assert_eq!(add_local_addresses(&mut inv, "n9", &local), 0);
    }
}
