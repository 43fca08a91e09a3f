//! The endpoints a flow can name: namespaces (with their labels), nodes (with their
//! addresses) and pods (labels, node, host networking, addresses, named ports), indexed by
//! name and by IP.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};

use super::hash::FastMap;
use super::ports::{validate_port_name, NamedPort};
use super::selector::Labels;
use crate::inventory::intern::Interner;
use crate::inventory::{addresses, Inventory, ObjectError};
use crate::model::Protocol;

pub type NsId = u32;
pub type NodeId = u32;
pub type PodId = u32;

/// The label the API server puts on every namespace (immutable, equal to its name).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

#[derive(Debug)]
pub struct NamespaceInfo {
    pub name: String,
    pub labels: Labels,
}

#[derive(Debug)]
pub struct NodeInfo {
    pub name: String,
    /// `InternalIP` addresses: what the node is by address.
    pub addresses: Vec<IpAddr>,
    /// `ExternalIP` addresses: not the node by address (traffic to them is external to the
    /// NetworkPolicy engine), but a cluster policy's `nodes` peer matches them too.
    pub external_addresses: Vec<IpAddr>,
    /// For the `nodes` peers of cluster policies.
    pub labels: Labels,
}

#[derive(Debug)]
pub struct PodInfo {
    pub ns: NsId,
    pub name: Box<str>,
    /// Shared by the pods with the same labels (the pods of a Deployment): stored once.
    pub labels: Arc<Labels>,
    pub node: Option<NodeId>,
    pub host_network: bool,
    /// `Succeeded`/`Failed`: no longer an endpoint; its address may belong to a new pod.
    pub terminated: bool,
    /// Has a deletion timestamp: on its way out, so another pod listing the same address
    /// (its replacement) is the one that has it.
    pub deleting: bool,
    /// `status.podIPs` (or `status.podIP`), primary first.
    pub ips: Vec<IpAddr>,
    /// Named container ports, sorted (part of the pod's identity for named-port resolution);
    /// shared like the labels.
    pub ports: Arc<[NamedPort]>,
}

/// What an address or a name designates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddressOwner {
    /// A pod with its own network namespace: policies apply to it.
    Pod(PodId),
    /// A host-network pod: policies do not apply to it and its traffic is its node's.
    HostPod(PodId),
    Node(NodeId),
    External,
}

#[derive(Debug, Default)]
pub struct Cluster {
    pub namespaces: Vec<NamespaceInfo>,
    ns_by_name: HashMap<String, NsId>,
    pub nodes: Vec<NodeInfo>,
    node_by_name: HashMap<String, NodeId>,
    pub pods: Vec<PodInfo>,
    /// Per namespace: pod name -> pod.
    pods_by_name: Vec<HashMap<String, PodId>>,
    pub by_ip: FastMap<IpAddr, AddressOwner>,
    /// Only while building: one copy of each distinct label set and port list.
    labels: Interner<Labels>,
    ports: Interner<[NamedPort]>,
}

impl Cluster {
    pub fn build(inv: &Inventory, errors: &mut Vec<ObjectError>) -> Cluster {
        let mut c = Cluster::default();
        for ns in &inv.namespaces {
            c.add_namespace(ns, errors);
        }
        for node in &inv.nodes {
            c.add_node(node, errors);
        }
        for (i, pod) in inv.pods.iter().enumerate() {
            c.add_pod(pod, i, errors);
        }
        c.index_addresses(errors);
        c.labels = Interner::default();
        c.ports = Interner::default();
        c
    }

    pub fn namespace_id(&self, name: &str) -> Option<NsId> {
        self.ns_by_name.get(name).copied()
    }

    pub fn pod_id(&self, namespace: &str, name: &str) -> Option<PodId> {
        let ns = self.namespace_id(namespace)?;
        self.pods_by_name.get(ns as usize)?.get(name).copied()
    }

    pub fn pod(&self, id: PodId) -> &PodInfo {
        &self.pods[id as usize]
    }

    pub fn pod_label(&self, id: PodId) -> String {
        let p = self.pod(id);
        format!("{}/{}", self.namespaces[p.ns as usize].name, p.name)
    }

    /// What an address designates; unknown addresses are external.
    pub fn endpoint_of(&self, ip: IpAddr) -> AddressOwner {
        self.by_ip
            .get(&ip.to_canonical())
            .copied()
            .unwrap_or(AddressOwner::External)
    }

    /// The node an endpoint runs on (itself for a node).
    pub fn node_of(&self, ep: AddressOwner) -> Option<NodeId> {
        match ep {
            AddressOwner::Pod(p) | AddressOwner::HostPod(p) => self.pod(p).node,
            AddressOwner::Node(n) => Some(n),
            AddressOwner::External => None,
        }
    }

    pub fn ensure_namespace(&mut self, name: &str) -> NsId {
        if let Some(id) = self.ns_by_name.get(name) {
            return *id;
        }
        // A namespace the snapshot does not list still has the label the API server gives
        // every namespace, so `namespaceSelector` on its name works.
        let id = self.namespaces.len() as NsId;
        let labels = Labels::from([(NAMESPACE_NAME_LABEL.to_string(), name.to_string())]);
        self.namespaces.push(NamespaceInfo {
            name: name.to_string(),
            labels,
        });
        self.ns_by_name.insert(name.to_string(), id);
        self.pods_by_name.push(HashMap::new());
        id
    }

    fn add_namespace(&mut self, ns: &Namespace, errors: &mut Vec<ObjectError>) {
        let Some(name) = ns.metadata.name.as_deref().filter(|n| !n.is_empty()) else {
            errors.push(ObjectError {
                object: "Namespace (unnamed)".into(),
                field: Some("metadata.name".into()),
                message: "missing".into(),
            });
            return;
        };
        let id = self.ensure_namespace(name);
        let labels = &mut self.namespaces[id as usize].labels;
        labels.extend(ns.metadata.labels.clone().unwrap_or_default());
        labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.to_string());
    }

    fn ensure_node(&mut self, name: &str) -> NodeId {
        if let Some(id) = self.node_by_name.get(name) {
            return *id;
        }
        let id = self.nodes.len() as NodeId;
        self.nodes.push(NodeInfo {
            name: name.to_string(),
            addresses: Vec::new(),
            external_addresses: Vec::new(),
            labels: Labels::new(),
        });
        self.node_by_name.insert(name.to_string(), id);
        id
    }

    fn add_node(&mut self, node: &Node, errors: &mut Vec<ObjectError>) {
        let Some(name) = node.metadata.name.as_deref().filter(|n| !n.is_empty()) else {
            errors.push(ObjectError {
                object: "Node (unnamed)".into(),
                field: Some("metadata.name".into()),
                message: "missing".into(),
            });
            return;
        };
        let id = self.ensure_node(name);
        self.nodes[id as usize].labels = node.metadata.labels.clone().unwrap_or_default();
        let found = addresses::node_addresses(node, errors);
        let node = &mut self.nodes[id as usize];
        node.addresses = found.internal;
        node.external_addresses = found.external;
    }

    fn add_pod(&mut self, pod: &Pod, index: usize, errors: &mut Vec<ObjectError>) {
        let meta = &pod.metadata;
        let (Some(ns), Some(name)) = (
            meta.namespace.as_deref().filter(|s| !s.is_empty()),
            meta.name.as_deref().filter(|s| !s.is_empty()),
        ) else {
            errors.push(ObjectError {
                object: format!("Pod #{index}"),
                field: Some("metadata".into()),
                message: "missing name or namespace".into(),
            });
            return;
        };
        let object = format!("Pod {ns}/{name}");
        let ns_id = self.ensure_namespace(ns);
        if self.pods_by_name[ns_id as usize].contains_key(name) {
            errors.push(ObjectError {
                object,
                field: None,
                message: "listed twice; the first one is used".into(),
            });
            return;
        }
        let spec = pod.spec.as_ref();
        let node = spec
            .and_then(|s| s.node_name.as_deref())
            .filter(|n| !n.is_empty())
            .map(|n| self.ensure_node(n));
        let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);

        let mut ports = Vec::new();
        for (ci, container) in spec.iter().flat_map(|s| s.containers.iter()).enumerate() {
            for (pi, p) in container.ports.iter().flatten().enumerate() {
                let field = |f: &str| Some(format!("spec.containers[{ci}].ports[{pi}].{f}"));
                let Some(pname) = p.name.as_deref().filter(|n| !n.is_empty()) else {
                    continue; // only named ports matter to policies
                };
                let Some(port) = u16::try_from(p.container_port).ok().filter(|p| *p != 0) else {
                    errors.push(ObjectError {
                        object: object.clone(),
                        field: field("containerPort"),
                        message: format!("{} is not a port number", p.container_port),
                    });
                    continue;
                };
                if let Err(message) = validate_port_name(pname) {
                    errors.push(ObjectError {
                        object: object.clone(),
                        field: field("name"),
                        message,
                    });
                    continue;
                }
                let protocol = match p.protocol.as_deref().unwrap_or("TCP").parse::<Protocol>() {
                    Ok(proto) => proto,
                    Err(message) => {
                        errors.push(ObjectError {
                            object: object.clone(),
                            field: field("protocol"),
                            message,
                        });
                        continue;
                    }
                };
                ports.push(NamedPort {
                    name: pname.to_string(),
                    port,
                    protocol,
                });
            }
        }
        ports.sort();
        ports.dedup();

        let ips = addresses::pod_addresses(pod, errors);
        let terminated = addresses::pod_finished(pod);

        let id = self.pods.len() as PodId;
        self.pods.push(PodInfo {
            ns: ns_id,
            name: name.into(),
            labels: self.labels.intern(meta.labels.clone().unwrap_or_default()),
            node,
            host_network,
            terminated,
            deleting: meta.deletion_timestamp.is_some(),
            ips,
            ports: self.ports.intern(ports),
        });
        self.pods_by_name[ns_id as usize].insert(name.to_string(), id);
    }

    /// Address index: node addresses first, then host-network pods (whose address is their
    /// node's: they count as the node), then pods. Terminated pods hold no address; of two
    /// pods listing one address, one without a deletion timestamp wins over one being deleted,
    /// else the later in inventory order (reported: two live pods cannot share an address).
    fn index_addresses(&mut self, errors: &mut Vec<ObjectError>) {
        let mut by_ip = FastMap::default();
        for (id, node) in self.nodes.iter().enumerate() {
            for ip in &node.addresses {
                by_ip.insert(*ip, AddressOwner::Node(id as NodeId));
            }
        }
        for (id, pod) in self.pods.iter().enumerate() {
            if pod.host_network && !pod.terminated {
                for ip in &pod.ips {
                    let ep = match pod.node {
                        Some(n) => AddressOwner::Node(n),
                        None => AddressOwner::HostPod(id as PodId),
                    };
                    by_ip.entry(*ip).or_insert(ep);
                }
            }
        }
        for (id, pod) in self.pods.iter().enumerate() {
            if pod.host_network || pod.terminated {
                continue;
            }
            for ip in &pod.ips {
                match by_ip.insert(*ip, AddressOwner::Pod(id as PodId)) {
                    None => {}
                    // A pod being deleted lists an address its replacement already has: an
                    // ordinary hand-over, not a conflict (the enrichment index applies the
                    // same rule, so names and verdicts describe the same pod).
                    Some(AddressOwner::Pod(other))
                        if !addresses::takes_address(pod.deleting, self.pod(other).deleting) =>
                    {
                        by_ip.insert(*ip, AddressOwner::Pod(other));
                    }
                    Some(AddressOwner::Pod(other)) if pod.deleting != self.pod(other).deleting => {}
                    Some(AddressOwner::Pod(other)) => {
                        errors.push(ObjectError {
                            object: format!("Pod {}", self.pod_label(id as PodId)),
                            field: Some("status.podIP".into()),
                            message: format!(
                                "address {ip} is also the address of pod {}; it now names this one",
                                self.pod_label(other)
                            ),
                        });
                    }
                    Some(other) => {
                        // A node's address: the node keeps it.
                        by_ip.insert(*ip, other);
                    }
                }
            }
        }
        self.by_ip = by_ip;
    }
}
