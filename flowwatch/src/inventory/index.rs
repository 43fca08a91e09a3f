//! The cluster index: the one compilation of an [`Inventory`] that enrichment and the policy
//! engine both read (pure). Namespaces (with labels), nodes (labels and addresses) and pods
//! (addresses, labels, named ports, node, host networking, workload), indexed by name and by
//! address, with one rule for which pod holds an address two pods list. Built once per
//! inventory view and shared (`Arc`): the enrichment index adds its address history on top,
//! the policy engine its compiled identities; neither reads pods, nodes or namespaces itself,
//! so a record's names and its verdict always describe the same pod, and an unusable field
//! is reported once.
//!
//! Workloads from manifests fit as they are: the offline tools add each as the pod that
//! stands for it (see [`super::workloads`]), and its workload is the workload itself.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};

use super::hash::FastMap;
use super::intern::Interner;
use super::owners::{workload_of, OwnerIndex, Workload, WorkloadKind};
use super::pod_ports::{self, NamedPort};
use super::{addresses, object_name, workloads, Inventory, ObjectError};
use crate::model::Protocol;

pub type NsId = u32;
pub type NodeId = u32;
pub type PodId = u32;

/// A label set (namespace, node or pod labels).
pub type Labels = BTreeMap<String, String>;

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
    /// NetworkPolicy engine), but a cluster policy's `nodes` peer matches them too, and the
    /// enrichment index names the node by them.
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
    /// `status.podIP` first, then the rest of `status.podIPs`.
    pub ips: Vec<IpAddr>,
    /// Named container ports, sorted (part of the pod's identity for named-port resolution);
    /// shared like the labels.
    pub ports: Arc<[NamedPort]>,
}

/// What names a pod in flow records beyond [`PodInfo`], kept apart from it: verdicts read
/// `PodInfo` per flow, and a smaller one keeps more pods in the CPU's caches.
#[derive(Debug)]
pub struct PodNaming {
    /// `metadata.uid` (`namespace/name` when unset): which pod, across inventories, held an
    /// address.
    pub uid: Box<str>,
    /// The workload that runs the pod; shared by the pods of one workload.
    pub workload: Arc<Workload>,
    /// Of a host-network pod only: every port its containers declare (container and host
    /// port), by which its traffic is told from its node's on the node's address.
    pub host_ports: Box<[(u16, Protocol)]>,
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

/// See the module documentation. Immutable once built.
#[derive(Debug, Default)]
pub struct ClusterIndex {
    pub namespaces: Vec<NamespaceInfo>,
    ns_by_name: HashMap<String, NsId>,
    pub nodes: Vec<NodeInfo>,
    node_by_name: HashMap<String, NodeId>,
    pub pods: Vec<PodInfo>,
    /// Per pod (same ids as `pods`).
    pub naming: Vec<PodNaming>,
    /// Per namespace: pod name -> pod.
    pods_by_name: Vec<HashMap<String, PodId>>,
    /// What each address designates, for verdicts: a node's address is the node (even if a
    /// pod lists it), a host-network pod's is its node's.
    pub by_ip: FastMap<IpAddr, AddressOwner>,
    /// The pods holding an address that `by_ip` gives a node (or a host-network pod): named
    /// as the pod, judged as the node (rare; see [`ClusterIndex::pod_holding`]).
    shadowed: FastMap<IpAddr, PodId>,
}

/// Only while building: one copy of each distinct label set, port list and workload.
#[derive(Default)]
struct Shared {
    labels: Interner<Labels>,
    ports: Interner<[NamedPort]>,
    workloads: Interner<Workload>,
}

impl ClusterIndex {
    /// Compiles `inv` (with `owners` to name the Deployments and CronJobs above pods).
    /// Objects and fields that cannot be used are reported in `errors`, one error each
    /// (naming the object and the field), and left out; the rest is indexed.
    pub fn build(inv: &Inventory, owners: &OwnerIndex, errors: &mut Vec<ObjectError>) -> Self {
        let mut c = ClusterIndex::default();
        let mut shared = Shared::default();
        for ns in &inv.namespaces {
            c.add_namespace(ns, errors);
        }
        // Nodes by name first (their ids come before the nodes only pods name), their
        // addresses after the pods': errors name objects in the order readers expect.
        let named: Vec<(&Node, NodeId)> = inv
            .nodes
            .iter()
            .filter_map(|node| Some((node, c.add_node(node, errors)?)))
            .collect();
        for (i, pod) in inv.pods.iter().enumerate() {
            c.add_pod(pod, i, owners, &mut shared, errors);
        }
        for (node, id) in named {
            let found = addresses::node_addresses(node, errors);
            let info = &mut c.nodes[id as usize];
            info.addresses = found.internal;
            info.external_addresses = found.external;
        }
        // A namespace a policy names exists even when no Namespace object or pod lists it.
        for np in &inv.network_policies {
            if let Some(ns) = np.metadata.namespace.as_deref().filter(|n| !n.is_empty()) {
                c.ensure_namespace(ns);
            }
        }
        c.index_addresses(errors);
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

    pub fn naming(&self, id: PodId) -> &PodNaming {
        &self.naming[id as usize]
    }

    /// `namespace/name` of a pod.
    pub fn pod_label(&self, id: PodId) -> String {
        let p = self.pod(id);
        format!("{}/{}", self.namespaces[p.ns as usize].name, p.name)
    }

    /// The name of the node a pod runs on.
    pub fn node_name(&self, id: PodId) -> Option<&str> {
        self.pod(id)
            .node
            .map(|n| self.nodes[n as usize].name.as_str())
    }

    /// The pod holding `ip` among the pods with their own network (live ones, one per address
    /// by [`addresses::takes_address`]), for names: unlike [`ClusterIndex::endpoint_of`], a
    /// pod listing a node's address is named as that pod.
    pub fn pod_holding(&self, ip: IpAddr) -> Option<PodId> {
        let ip = ip.to_canonical();
        match self.by_ip.get(&ip) {
            Some(AddressOwner::Pod(p)) => Some(*p),
            _ => self.shadowed.get(&ip).copied(),
        }
    }

    /// Every address a pod holds, with the pod (see [`ClusterIndex::pod_holding`]).
    pub fn pod_addresses(&self) -> impl Iterator<Item = (IpAddr, PodId)> + '_ {
        let own = self.by_ip.iter().filter_map(|(ip, owner)| match owner {
            AddressOwner::Pod(p) => Some((*ip, *p)),
            _ => None,
        });
        own.chain(self.shadowed.iter().map(|(ip, p)| (*ip, *p)))
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

    fn ensure_namespace(&mut self, name: &str) -> NsId {
        if let Some(id) = self.ns_by_name.get(name) {
            return *id;
        }
        // A namespace the snapshot does not list still has the label the API server gives
        // every namespace, so `namespaceSelector` on its name works.
        let id = id_of(self.namespaces.len());
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
        let id = id_of(self.nodes.len());
        self.nodes.push(NodeInfo {
            name: name.to_string(),
            addresses: Vec::new(),
            external_addresses: Vec::new(),
            labels: Labels::new(),
        });
        self.node_by_name.insert(name.to_string(), id);
        id
    }

    /// A listed node with its labels (its addresses are read later); `None` if unnamed.
    fn add_node(&mut self, node: &Node, errors: &mut Vec<ObjectError>) -> Option<NodeId> {
        let Some(name) = node.metadata.name.as_deref().filter(|n| !n.is_empty()) else {
            errors.push(ObjectError {
                object: "Node (unnamed)".into(),
                field: Some("metadata.name".into()),
                message: "missing".into(),
            });
            return None;
        };
        let id = self.ensure_node(name);
        self.nodes[id as usize].labels = node.metadata.labels.clone().unwrap_or_default();
        Some(id)
    }

    fn add_pod(
        &mut self,
        pod: &Pod,
        index: usize,
        owners: &OwnerIndex,
        shared: &mut Shared,
        errors: &mut Vec<ObjectError>,
    ) {
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
        let object = object_name("Pod", Some(ns), name);
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
        let ports = pod_ports::named_ports(pod, &object, errors);
        let ips = addresses::pod_addresses(pod, errors);
        let host_ports = if host_network {
            pod_ports::declared_ports(pod).into()
        } else {
            Box::default()
        };
        let uid = match meta.uid.as_deref() {
            Some(uid) => uid.into(),
            None => format!("{ns}/{name}").into(),
        };

        let id = id_of(self.pods.len());
        self.pods.push(PodInfo {
            ns: ns_id,
            name: name.into(),
            labels: shared
                .labels
                .intern(meta.labels.clone().unwrap_or_default()),
            node,
            host_network,
            terminated: addresses::pod_finished(pod),
            deleting: meta.deletion_timestamp.is_some(),
            ips,
            ports: shared.ports.intern(ports),
        });
        self.naming.push(PodNaming {
            uid,
            workload: shared.workloads.intern(workload(pod, name, owners)),
            host_ports,
        });
        self.pods_by_name[ns_id as usize].insert(name.to_string(), id);
    }

    /// Which pod holds each address, and what each address designates. Terminated pods hold
    /// no address; of two pods listing one address, one without a deletion timestamp wins over
    /// one being deleted, else the later in inventory order (reported: two live pods cannot
    /// share an address). For verdicts, node addresses come first, then host-network pods
    /// (whose address is their node's: they count as the node), then the pods.
    fn index_addresses(&mut self, errors: &mut Vec<ObjectError>) {
        let mut by_ip = FastMap::default();
        for (id, node) in self.nodes.iter().enumerate() {
            for ip in &node.addresses {
                by_ip.insert(*ip, AddressOwner::Node(id_of(id)));
            }
        }
        for (id, pod) in self.pods.iter().enumerate() {
            if pod.host_network && !pod.terminated {
                for ip in &pod.ips {
                    let ep = match pod.node {
                        Some(n) => AddressOwner::Node(n),
                        None => AddressOwner::HostPod(id_of(id)),
                    };
                    by_ip.entry(*ip).or_insert(ep);
                }
            }
        }
        let mut shadowed: FastMap<IpAddr, PodId> = FastMap::default();
        for (id, pod) in self.pods.iter().enumerate() {
            if pod.host_network || pod.terminated {
                continue;
            }
            let id = id_of(id);
            for ip in &pod.ips {
                let holder = match by_ip.get(ip) {
                    None => None,
                    Some(AddressOwner::Pod(other)) => Some(*other),
                    // A node's address is the node's for verdicts; which pod listing it is
                    // named is decided apart (and pods listing it are not judged against each
                    // other).
                    Some(_) => {
                        let takes = shadowed.get(ip).is_none_or(|other| {
                            addresses::takes_address(pod.deleting, self.pod(*other).deleting)
                        });
                        if takes {
                            shadowed.insert(*ip, id);
                        }
                        continue;
                    }
                };
                if let Some(other) = holder {
                    let held = self.pod(other);
                    if !addresses::takes_address(pod.deleting, held.deleting) {
                        continue;
                    }
                    // A pod being deleted lists an address its replacement already has: an
                    // ordinary hand-over, not a conflict.
                    if pod.deleting == held.deleting {
                        errors.push(ObjectError {
                            object: format!("Pod {}", self.pod_label(id)),
                            field: Some("status.podIP".into()),
                            message: format!(
                                "address {ip} is also the address of pod {}; it now names this one",
                                self.pod_label(other)
                            ),
                        });
                    }
                }
                by_ip.insert(*ip, AddressOwner::Pod(id));
            }
        }
        self.shadowed = shadowed;
        self.by_ip = by_ip;
    }
}

/// The workload of a pod; a workload's stand-in (see [`workloads`]) is the workload itself.
fn workload(pod: &Pod, name: &str, owners: &OwnerIndex) -> Workload {
    let Some((kind, workload_name)) = workloads::stand_in_of(name) else {
        return workload_of(pod, owners);
    };
    match WorkloadKind::from_kind_name(kind) {
        Some(kind) => Workload {
            kind,
            name: workload_name.to_owned(),
        },
        None => Workload {
            kind: WorkloadKind::Other,
            name: name.to_owned(),
        },
    }
}

/// The id of the `index`th namespace, node or pod. The inventory's own limits keep counts
/// far below `u32::MAX`.
fn id_of(index: usize) -> u32 {
    u32::try_from(index).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(name: &str, ip: &str, extra: &serde_json::Value) -> Pod {
        let mut v = json!({
            "metadata": {"namespace": "shop", "name": name, "uid": format!("uid-{name}")},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [
                {"name": "http", "containerPort": 8080},
                {"containerPort": 9090, "hostPort": 19090, "protocol": "UDP"},
            ]}]},
            "status": {"podIP": ip},
        });
        json_patch(&mut v, extra);
        serde_json::from_value(v).unwrap()
    }

    fn json_patch(into: &mut serde_json::Value, from: &serde_json::Value) {
        match (into, from) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    json_patch(a.entry(k.clone()).or_insert(serde_json::Value::Null), v);
                }
            }
            (slot, v) => *slot = v.clone(),
        }
    }

    fn node(name: &str, ip: &str) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"zone": "a"}},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
        }))
        .unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn pods_nodes_and_namespaces_are_indexed_by_name_and_address() {
        let inv = Inventory {
            nodes: vec![node("n1", "192.168.0.1")],
            pods: vec![
                pod("web-1", "10.0.0.5", &json!({})),
                pod(
                    "agent",
                    "192.168.0.1",
                    &json!({"spec": {"hostNetwork": true}}),
                ),
            ],
            ..Inventory::default()
        };
        let mut errors = Vec::new();
        let c = ClusterIndex::build(&inv, &OwnerIndex::default(), &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let web = c.pod_id("shop", "web-1").unwrap();
        assert_eq!(c.endpoint_of(ip("10.0.0.5")), AddressOwner::Pod(web));
        assert_eq!(c.endpoint_of(ip("192.168.0.1")), AddressOwner::Node(0));
        assert_eq!(c.endpoint_of(ip("10.9.9.9")), AddressOwner::External);
        assert_eq!(c.node_name(web), Some("n1"));
        assert_eq!(c.nodes[0].labels.get("zone").map(String::as_str), Some("a"));
        let info = c.naming(web);
        assert_eq!(&*info.uid, "uid-web-1");
        assert_eq!(c.pod(web).ports.len(), 1, "only the named port");
        assert!(
            info.host_ports.is_empty(),
            "only host-network pods keep them"
        );
        assert_eq!(info.workload.kind, WorkloadKind::Pod);
        let agent = c.naming(c.pod_id("shop", "agent").unwrap());
        assert_eq!(
            &*agent.host_ports,
            &[
                (8080, Protocol::Tcp),
                (9090, Protocol::Udp),
                (19090, Protocol::Udp)
            ]
        );
        assert_eq!(
            c.namespaces[c.namespace_id("shop").unwrap() as usize]
                .labels
                .get(NAMESPACE_NAME_LABEL)
                .map(String::as_str),
            Some("shop")
        );
    }

    #[test]
    fn a_pod_listing_a_node_address_is_named_as_itself_but_judged_as_the_node() {
        let inv = Inventory {
            nodes: vec![node("n1", "192.168.0.1")],
            pods: vec![pod("odd", "192.168.0.1", &json!({}))],
            ..Inventory::default()
        };
        let c = ClusterIndex::build(&inv, &OwnerIndex::default(), &mut Vec::new());
        assert_eq!(c.endpoint_of(ip("192.168.0.1")), AddressOwner::Node(0));
        assert_eq!(c.pod_holding(ip("192.168.0.1")), Some(0));
        assert_eq!(
            c.pod_addresses().collect::<Vec<_>>(),
            [(ip("192.168.0.1"), 0)]
        );
    }

    #[test]
    fn of_two_pods_sharing_an_address_the_live_one_holds_it_and_a_conflict_is_reported_once() {
        let deleting = json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}});
        for (first, second, holder, conflicts) in [
            (json!({}), json!({}), "b", 1),
            (deleting.clone(), json!({}), "b", 0),
            (json!({}), deleting.clone(), "a", 0),
        ] {
            let inv = Inventory {
                pods: vec![pod("a", "10.0.0.7", &first), pod("b", "10.0.0.7", &second)],
                ..Inventory::default()
            };
            let mut errors = Vec::new();
            let c = ClusterIndex::build(&inv, &OwnerIndex::default(), &mut errors);
            let want = c.pod_id("shop", holder).unwrap();
            assert_eq!(c.endpoint_of(ip("10.0.0.7")), AddressOwner::Pod(want));
            assert_eq!(c.pod_holding(ip("10.0.0.7")), Some(want));
            assert_eq!(errors.len(), conflicts, "{errors:?}");
        }
    }

    #[test]
    fn bad_fields_are_named_once_pods_before_node_addresses() {
        let inv = Inventory {
            nodes: vec![node("n1", "nope")],
            pods: vec![
                pod("bad", "10.0.0.300", &json!({})),
                pod("bad", "10.0.0.8", &json!({})),
            ],
            ..Inventory::default()
        };
        let mut errors = Vec::new();
        ClusterIndex::build(&inv, &OwnerIndex::default(), &mut errors);
        let named: Vec<(&str, Option<&str>)> = errors
            .iter()
            .map(|e| (e.object.as_str(), e.field.as_deref()))
            .collect();
        assert_eq!(
            named,
            vec![
                ("Pod shop/bad", Some("status.podIP")),
                ("Pod shop/bad", None),
                ("Node n1", Some("status.addresses[0].address")),
            ]
        );
    }

    #[test]
    fn a_workload_stand_in_is_its_workload() {
        let inv = Inventory {
            pods: vec![pod("deployment/web", "", &json!({"status": {}}))],
            network_policies: vec![serde_json::from_value(json!({
                "metadata": {"namespace": "other", "name": "p"},
                "spec": {"podSelector": {}},
            }))
            .unwrap()],
            ..Inventory::default()
        };
        let c = ClusterIndex::build(&inv, &OwnerIndex::default(), &mut Vec::new());
        let stand_in = c.naming(c.pod_id("shop", "deployment/web").unwrap());
        assert_eq!(stand_in.workload.kind, WorkloadKind::Deployment);
        assert_eq!(stand_in.workload.name, "web");
        assert!(c
            .pod(c.pod_id("shop", "deployment/web").unwrap())
            .ips
            .is_empty());
        assert!(
            c.namespace_id("other").is_some(),
            "a policy's namespace exists"
        );
    }
}
