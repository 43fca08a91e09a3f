//! The cluster as the advice needs it (pure): each workload with the labels all of its pods
//! share, the nodes' addresses, host-network pods, and pods by address.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use super::labels;
use crate::inventory::owners::OwnerIndex;
use crate::inventory::Inventory;
use crate::whatif::targets::workload_end_of_pod;
use crate::whatif::EdgeEnd;

/// Labels, by key.
pub type Labels = BTreeMap<String, String>;

/// A workload (or a pod without a controller) of the snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workload {
    pub namespace: String,
    /// As the CLI names it: `deployment`, `statefulset`, ..., `pod`.
    pub kind: String,
    pub name: String,
    /// The stable labels (see [`labels::is_stable`]) every pod of the workload has.
    pub labels: Labels,
    /// Each distinct label set of its pods, unstable labels included: what another
    /// workload's selector is checked against.
    pub label_sets: Vec<Labels>,
    /// Its pods share their node's network: policies never apply to them.
    pub host_network: bool,
}

impl Workload {
    /// `namespace/kind/name`, as `policy whatif` names an edge's end.
    pub fn id(&self) -> String {
        format!("{}/{}/{}", self.namespace, self.kind, self.name)
    }
}

/// What the advice knows of the cluster.
#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    /// By their edge end (`EdgeEnd::Workload`).
    pub workloads: BTreeMap<EdgeEnd, Workload>,
    /// Node addresses (InternalIP, ExternalIP) -> node name.
    pub nodes: BTreeMap<IpAddr, String>,
    /// Addresses of host-network pods (their node's) -> `namespace/pod`.
    pub host_pods: BTreeMap<IpAddr, BTreeSet<String>>,
    /// Addresses of running pods that have their own -> their workload.
    pub pod_ips: HashMap<IpAddr, EdgeEnd>,
}

impl ClusterView {
    /// From an inventory whose workloads stand in its pods (`sources::load`).
    pub fn of(inventory: &Inventory) -> ClusterView {
        let mut view = ClusterView::default();
        let owners = OwnerIndex::default();
        for node in &inventory.nodes {
            let Some(name) = &node.metadata.name else {
                continue;
            };
            let addresses = node
                .status
                .iter()
                .flat_map(|s| s.addresses.iter().flatten());
            for a in addresses {
                if let Ok(ip) = a.address.parse::<IpAddr>() {
                    view.nodes.insert(ip.to_canonical(), name.clone());
                }
            }
        }
        for pod in &inventory.pods {
            let host_network = pod
                .spec
                .as_ref()
                .and_then(|s| s.host_network)
                .unwrap_or(false);
            let terminated = matches!(
                pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            );
            let ips: Vec<IpAddr> = pod
                .status
                .iter()
                .flat_map(|s| {
                    s.pod_ips
                        .iter()
                        .flatten()
                        .map(|p| p.ip.as_str())
                        .chain(s.pod_ip.as_deref())
                })
                .filter_map(|ip| ip.parse::<IpAddr>().ok())
                .map(|ip| ip.to_canonical())
                .collect();
            let Some(end) = workload_end_of_pod(pod, &owners) else {
                continue;
            };
            let EdgeEnd::Workload {
                namespace,
                kind,
                name,
            } = &end
            else {
                continue;
            };
            let all: Labels = pod.metadata.labels.clone().unwrap_or_default();
            if host_network {
                let who = format!(
                    "{namespace}/{}",
                    pod.metadata.name.as_deref().unwrap_or(name)
                );
                for ip in &ips {
                    view.host_pods.entry(*ip).or_default().insert(who.clone());
                }
            } else if !terminated {
                for ip in &ips {
                    view.pod_ips.insert(*ip, end.clone());
                }
            }
            let stable = labels::stable(&all);
            match view.workloads.get_mut(&end) {
                Some(w) => {
                    // Only what every pod has: a rollout's old and new pods may differ.
                    w.labels.retain(|k, v| stable.get(k) == Some(v));
                    if !w.label_sets.contains(&all) {
                        w.label_sets.push(all);
                    }
                    w.host_network |= host_network;
                }
                None => {
                    view.workloads.insert(
                        end.clone(),
                        Workload {
                            namespace: namespace.clone(),
                            kind: kind.clone(),
                            name: name.clone(),
                            labels: stable,
                            label_sets: vec![all],
                            host_network,
                        },
                    );
                }
            }
        }
        view
    }

    /// The namespaces that have a workload policies apply to (not host-network), sorted.
    pub fn namespaces(&self) -> BTreeSet<&str> {
        self.workloads
            .values()
            .filter(|w| !w.host_network)
            .map(|w| w.namespace.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::snapshot;

    #[test]
    fn pods_fold_into_their_workloads_with_the_stable_labels_they_share() {
        let (inventory, errors) = snapshot::parse(
            "apiVersion: v1\nkind: List\nitems:\n\
             - apiVersion: v1\n  kind: Node\n  metadata: {name: n1}\n  \
               status: {addresses: [{type: InternalIP, address: 192.168.1.10}, {type: Hostname, address: n1}]}\n\
             - apiVersion: v1\n  kind: Pod\n  metadata:\n    namespace: shop\n    name: web-5d8c-a\n    \
               labels: {app: web, version: v1, pod-template-hash: 5d8c}\n    \
               ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-5d8c, uid: u1, controller: true}]\n  \
               spec: {containers: [{name: c}]}\n  status: {phase: Running, podIP: 10.1.0.1}\n\
             - apiVersion: v1\n  kind: Pod\n  metadata:\n    namespace: shop\n    name: web-77aa-b\n    \
               labels: {app: web, version: v2, pod-template-hash: 77aa}\n    \
               ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-77aa, uid: u2, controller: true}]\n  \
               spec: {containers: [{name: c}]}\n  status: {phase: Running, podIP: 10.1.0.2}\n\
             - apiVersion: v1\n  kind: Pod\n  metadata: {namespace: kube-system, name: proxy-x, labels: {k8s-app: proxy}}\n  \
               spec: {hostNetwork: true, containers: [{name: c}]}\n  status: {phase: Running, podIP: 192.168.1.10}\n",
            "t",
        )
        .unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        let view = ClusterView::of(&inventory);
        let web = EdgeEnd::Workload {
            namespace: "shop".into(),
            kind: "deployment".into(),
            name: "web".into(),
        };
        let w = &view.workloads[&web];
        assert_eq!(w.labels, [("app".to_string(), "web".to_string())].into());
        assert_eq!(w.label_sets.len(), 2);
        assert_eq!(view.pod_ips[&"10.1.0.2".parse::<IpAddr>().unwrap()], web);
        let node_ip: IpAddr = "192.168.1.10".parse().unwrap();
        assert_eq!(view.nodes[&node_ip], "n1");
        assert!(view.host_pods[&node_ip].contains("kube-system/proxy-x"));
        assert!(!view.pod_ips.contains_key(&node_ip));
        assert_eq!(view.namespaces().into_iter().collect::<Vec<_>>(), ["shop"]);
    }
}
