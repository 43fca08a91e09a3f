//! Enrichment: IP address -> pod, workload, node, service or external network (pure).
//!
//! [`EndpointIndex`] is built over the [`ClusterIndex`] of an inventory (which read its pods,
//! nodes, their addresses and the pods' workloads, with the [`OwnerIndex`] that resolves
//! ReplicaSets to Deployments and Jobs to CronJobs; the policy engine reads the same index)
//! and the inventory's Services, and answers, for one end of a flow, what it is: a pod
//! (namespace, name, workload, node, allowlisted labels), a host-network pod, the node itself,
//! a Service (with the backend pod that served the connection when the caller knows the
//! translated destination), or an external address (private, public, or a network the user
//! named by CIDR).
//!
//! Pod IPs are reused. The index is updated in place ([`EndpointIndex::update`]) with the time
//! of each update, and keeps for every pod IP the pods that held it, each with the interval in
//! which it did; a flow resolves to the pod that held the address at the flow's time. Ended
//! holders are forgotten after [`EnrichOptions::history`]. No I/O and no clock here: the
//! caller passes times (monotonic nanoseconds, as in [`crate::model`]).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use serde::Serialize;

use crate::inventory::index::{ClusterIndex, PodId};
/// Which workload a pod belongs to (read by the cluster index), named here too for the
/// readers of flow records.
pub use crate::inventory::owners::{workload_of, OwnerIndex, Workload, WorkloadKind};
use crate::inventory::{addresses, object_name, Inventory, ObjectError};
use crate::model::{Nanos, Protocol};

/// What the user configures.
#[derive(Clone, Debug)]
pub struct EnrichOptions {
    /// Pod label keys copied into flow records (none by default: labels can carry anything).
    pub label_allowlist: Vec<String>,
    /// Networks named by the user (`corp-vpn` = `10.200.0.0/16`); the longest prefix wins.
    pub named_networks: Vec<NamedNetwork>,
    /// How long a pod that no longer holds an IP is remembered for flows that started while it
    /// did (nanoseconds).
    pub history: Nanos,
}

impl Default for EnrichOptions {
    fn default() -> Self {
        EnrichOptions {
            label_allowlist: Vec::new(),
            named_networks: Vec::new(),
            history: 5 * 60 * 1_000_000_000,
        }
    }
}

/// A network the user named.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct NamedNetwork {
    pub name: String,
    pub cidr: IpNet,
}

impl std::str::FromStr for NamedNetwork {
    type Err = String;
    /// `name=cidr`, e.g. `corp-vpn=10.200.0.0/16`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, cidr) = s
            .split_once('=')
            .ok_or_else(|| format!("named network {s:?}: expected NAME=CIDR"))?;
        let cidr = cidr
            .trim()
            .parse::<IpNet>()
            .map_err(|e| format!("named network {s:?}: {e}"))?;
        if name.trim().is_empty() {
            return Err(format!("named network {s:?}: empty name"));
        }
        Ok(NamedNetwork {
            name: name.trim().to_owned(),
            cidr: cidr.trunc(),
        })
    }
}

/// A pod as it appears in a flow record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PodEndpoint {
    pub namespace: String,
    pub name: String,
    pub workload_kind: WorkloadKind,
    pub workload_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Only the allowlisted labels.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// How an address outside the cluster is classified.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExternalClass {
    /// RFC 1918, CGNAT, ULA, link-local and loopback ranges.
    Private,
    Public,
    /// A network of [`EnrichOptions::named_networks`].
    Named,
}

/// One end of a flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Endpoint {
    Pod(PodEndpoint),
    /// A pod with `hostNetwork: true`, recognised by its node's address and a port it declares.
    HostNetworkPod(PodEndpoint),
    /// A node's own address.
    Node {
        name: String,
    },
    /// A Service address (ClusterIP, external IP or load-balancer IP). `backend` is the pod
    /// that served the connection when the translated destination is known.
    Service {
        namespace: String,
        name: String,
        /// The Service port's name. Serialized as `port_name`: in a flow record this object
        /// is merged into one that has the numeric `port` already.
        #[serde(rename = "port_name", skip_serializing_if = "Option::is_none")]
        port: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        backend: Option<Box<Endpoint>>,
    },
    External {
        class: ExternalClass,
        #[serde(skip_serializing_if = "Option::is_none")]
        network: Option<String>,
    },
}

impl Endpoint {
    /// The pod behind this end: the pod itself, or a Service's backend pod.
    pub fn pod(&self) -> Option<&PodEndpoint> {
        match self {
            Endpoint::Pod(p) => Some(p),
            Endpoint::Service {
                backend: Some(b), ..
            } => b.pod(),
            _ => None,
        }
    }
}

/// One pod's tenure of an IP: from `from` until `to` (open while it still holds it).
#[derive(Clone, Debug)]
struct Holder {
    uid: Box<str>,
    pod: Arc<PodEndpoint>,
    from: Nanos,
    to: Option<Nanos>,
}

#[derive(Clone, Debug)]
struct ServiceInfo {
    namespace: String,
    name: String,
    /// (port, protocol, port name)
    ports: Vec<(u16, Protocol, Option<String>)>,
}

#[derive(Clone, Debug)]
struct HostPod {
    pod: Arc<PodEndpoint>,
    ports: Vec<(u16, Protocol)>,
}

/// The IP index. Build once with [`EndpointIndex::new`], then [`EndpointIndex::update`] on each
/// new inventory (keeping the IP history), and [`EndpointIndex::resolve`] per flow end.
#[derive(Clone, Debug)]
pub struct EndpointIndex {
    opts: EnrichOptions,
    updated: bool,
    pod_ips: HashMap<IpAddr, Vec<Holder>>,
    node_ips: HashMap<IpAddr, String>,
    host_pods: HashMap<String, Vec<HostPod>>,
    /// Every Service holding each address, in inventory order: a load-balancer or external IP
    /// can be shared by Services that differ by port (MetalLB's allow-shared-ip, k3s
    /// ServiceLB), so the port of a flow picks among them.
    service_ips: HashMap<IpAddr, Vec<Arc<ServiceInfo>>>,
}

/// What an update saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpdateReport {
    /// Pods that hold an IP now.
    pub pods: usize,
    /// Objects with a field the index could not use (each named); they are skipped.
    pub errors: Vec<ObjectError>,
}

impl EndpointIndex {
    pub fn new(opts: EnrichOptions) -> EndpointIndex {
        EndpointIndex {
            opts,
            updated: false,
            pod_ips: HashMap::new(),
            node_ips: HashMap::new(),
            host_pods: HashMap::new(),
            service_ips: HashMap::new(),
        }
    }

    /// A fresh index of one inventory (no history before `now`: every pod is taken to have
    /// held its IP since time 0).
    pub fn build(
        inv: &Inventory,
        owners: &OwnerIndex,
        opts: &EnrichOptions,
        now: Nanos,
    ) -> (EndpointIndex, UpdateReport) {
        let mut index = EndpointIndex::new(opts.clone());
        let report = index.update(inv, owners, now);
        (index, report)
    }

    pub fn options(&self) -> &EnrichOptions {
        &self.opts
    }

    /// Brings the index to `inv`, as seen at `now`: compiles its [`ClusterIndex`] and calls
    /// [`EndpointIndex::update_from`]. The report names what the cluster index and the
    /// Services skipped.
    pub fn update(&mut self, inv: &Inventory, owners: &OwnerIndex, now: Nanos) -> UpdateReport {
        let mut errors = Vec::new();
        let cluster = ClusterIndex::build(inv, owners, &mut errors);
        let mut report = self.update_from(&cluster, &inv.services, now);
        errors.append(&mut report.errors);
        report.errors = errors;
        report
    }

    /// Brings the index to `cluster` and `services` (of one inventory), as seen at `now`. Pods
    /// that appeared start holding their IPs at `now` (at 0 on the first update); pods that
    /// are gone, finished (phase Succeeded or Failed: their IP is released even though the
    /// status keeps it) or moved to another IP stop holding the old one at `now`. Which pod
    /// holds an address two pods list is the cluster index's rule, so the policy engine
    /// judges the pod named here. The report names only the Services skipped (the cluster
    /// index reported its own objects when it was built).
    pub fn update_from(
        &mut self,
        cluster: &ClusterIndex,
        services: &[Service],
        now: Nanos,
    ) -> UpdateReport {
        let mut report = UpdateReport::default();
        let start = if self.updated { now } else { 0 };
        self.updated = true;

        // One endpoint per pod, shared by its addresses.
        let mut endpoints: HashMap<PodId, Arc<PodEndpoint>> = HashMap::new();
        let mut endpoint = |id: PodId| {
            endpoints
                .entry(id)
                .or_insert_with(|| Arc::new(self.pod_endpoint(cluster, id)))
                .clone()
        };
        let mut host_pods: HashMap<String, Vec<HostPod>> = HashMap::new();
        for (id, pod) in cluster.pods.iter().enumerate() {
            if pod.terminated {
                continue;
            }
            let id = PodId::try_from(id).unwrap_or(PodId::MAX);
            if pod.host_network {
                if let Some(node) = cluster.node_name(id) {
                    host_pods.entry(node.to_owned()).or_default().push(HostPod {
                        pod: endpoint(id),
                        ports: cluster.naming(id).host_ports.to_vec(),
                    });
                }
            } else if !pod.ips.is_empty() {
                report.pods += 1;
            }
        }
        // Current holders: ip -> pod
        let current: HashMap<IpAddr, (&str, Arc<PodEndpoint>)> = cluster
            .pod_addresses()
            .map(|(ip, id)| (ip, (&*cluster.naming(id).uid, endpoint(id))))
            .collect();

        // Close tenures that ended.
        for (ip, holders) in &mut self.pod_ips {
            if let Some(open) = holders.iter_mut().find(|h| h.to.is_none()) {
                let still = current.get(ip).is_some_and(|(uid, _)| *uid == &*open.uid);
                if !still {
                    open.to = Some(now);
                }
            }
        }
        // Open new tenures, refresh current ones (labels and workload may change).
        for (ip, (uid, pod)) in current {
            let holders = self.pod_ips.entry(ip).or_default();
            match holders.iter_mut().find(|h| h.to.is_none()) {
                Some(open) if &*open.uid == uid => open.pod = pod,
                _ => holders.push(Holder {
                    uid: uid.into(),
                    pod,
                    from: start,
                    to: None,
                }),
            }
        }
        // Forget what is older than the history.
        let horizon = now.saturating_sub(self.opts.history);
        self.pod_ips.retain(|_, holders| {
            holders.retain(|h| h.to.is_none_or(|to| to >= horizon));
            !holders.is_empty()
        });

        self.host_pods = host_pods;
        self.node_ips = node_ips(cluster);
        self.service_ips = service_ips(services, &mut report.errors);
        report
    }

    fn pod_endpoint(&self, cluster: &ClusterIndex, id: PodId) -> PodEndpoint {
        let pod = cluster.pod(id);
        let workload = &cluster.naming(id).workload;
        let labels = if self.opts.label_allowlist.is_empty() {
            BTreeMap::new()
        } else {
            self.opts
                .label_allowlist
                .iter()
                .filter_map(|k| pod.labels.get(k).map(|v| (k.clone(), v.clone())))
                .collect()
        };
        PodEndpoint {
            namespace: cluster.namespaces[pod.ns as usize].name.clone(),
            name: pod.name.to_string(),
            workload_kind: workload.kind,
            workload_name: workload.name.clone(),
            node: cluster.node_name(id).map(str::to_owned),
            labels,
        }
    }

    /// The pod that held `ip` at time `at`: the tenure that contains `at`; else (a flow in
    /// the gap between one pod's deletion and the next pod's arrival, or before the first
    /// tenure the index saw) the next tenure to begin, since the index sees a new pod a
    /// little after it got its address. `None` when no pod held it at or after `at`.
    pub fn pod_at(&self, ip: IpAddr, at: Nanos) -> Option<&PodEndpoint> {
        let holders = self.pod_ips.get(&ip)?;
        holders
            .iter()
            .filter(|h| h.from <= at && h.to.is_none_or(|to| at < to))
            .max_by_key(|h| h.from)
            .or_else(|| {
                holders
                    .iter()
                    .filter(|h| h.from > at)
                    .min_by_key(|h| h.from)
            })
            .map(|h| h.pod.as_ref())
    }

    /// What the address `addr` (with the flow's protocol) was at time `at`.
    pub fn resolve(&self, addr: SocketAddr, protocol: Protocol, at: Nanos) -> Endpoint {
        let ip = addr.ip().to_canonical();
        if let Some(pod) = self.pod_at(ip, at) {
            return Endpoint::Pod(pod.clone());
        }
        if let Some(node) = self.node_ips.get(&ip) {
            let host_pod = self.host_pods.get(node).and_then(|pods| {
                pods.iter()
                    .find(|p| p.ports.contains(&(addr.port(), protocol)))
            });
            return match host_pod {
                Some(p) => Endpoint::HostNetworkPod(p.pod.as_ref().clone()),
                None => Endpoint::Node { name: node.clone() },
            };
        }
        if let Some((svc, port_name)) = self.service_at(ip, addr.port(), protocol) {
            return service_endpoint(svc, port_name, None);
        }
        self.external(ip)
    }

    /// A connection whose original destination was `original_dst` and which the node's NAT
    /// (kube-proxy's DNAT, as conntrack reports it) sent to `translated_dst`: a Service with
    /// the backend that served it, or, when the original destination is no Service, whatever
    /// that address is.
    pub fn resolve_service(
        &self,
        original_dst: SocketAddr,
        translated_dst: Option<SocketAddr>,
        protocol: Protocol,
        at: Nanos,
    ) -> Endpoint {
        let ip = original_dst.ip().to_canonical();
        match self.service_at(ip, original_dst.port(), protocol) {
            Some((svc, port_name)) if self.pod_at(ip, at).is_none() => {
                let backend = translated_dst
                    .filter(|t| t.ip().to_canonical() != ip)
                    .map(|t| Box::new(self.resolve(t, protocol, at)));
                service_endpoint(svc, port_name, backend)
            }
            _ => self.resolve(original_dst, protocol, at),
        }
    }

    /// The Service at `ip` that declares `port` and `protocol`, with the port's name; when
    /// several Services share the address and none declares the port, the first in inventory
    /// order, without a port name (the address is still known to be a Service's).
    fn service_at(
        &self,
        ip: IpAddr,
        port: u16,
        protocol: Protocol,
    ) -> Option<(&ServiceInfo, Option<String>)> {
        let services = self.service_ips.get(&ip)?;
        let declared = services.iter().find_map(|svc| {
            svc.ports
                .iter()
                .find(|(p, proto, _)| *p == port && *proto == protocol)
                .map(|(_, _, name)| (svc.as_ref(), name.clone()))
        });
        declared.or_else(|| services.first().map(|svc| (svc.as_ref(), None)))
    }

    /// Classifies an address outside the cluster's known pods, nodes and services.
    pub fn external(&self, ip: IpAddr) -> Endpoint {
        let named = self
            .opts
            .named_networks
            .iter()
            .filter(|n| n.cidr.contains(&ip))
            .max_by_key(|n| n.cidr.prefix_len());
        if let Some(n) = named {
            return Endpoint::External {
                class: ExternalClass::Named,
                network: Some(n.name.clone()),
            };
        }
        Endpoint::External {
            class: if is_private(ip) {
                ExternalClass::Private
            } else {
                ExternalClass::Public
            },
            network: None,
        }
    }

    /// Pod IPs and tenures held (for memory accounting and tests).
    pub fn stats(&self) -> IndexStats {
        IndexStats {
            pod_ips: self.pod_ips.len(),
            tenures: self.pod_ips.values().map(Vec::len).sum(),
            node_ips: self.node_ips.len(),
            service_ips: self.service_ips.len(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexStats {
    pub pod_ips: usize,
    pub tenures: usize,
    pub node_ips: usize,
    pub service_ips: usize,
}

fn service_endpoint(
    svc: &ServiceInfo,
    port_name: Option<String>,
    backend: Option<Box<Endpoint>>,
) -> Endpoint {
    Endpoint::Service {
        namespace: svc.namespace.clone(),
        name: svc.name.clone(),
        port: port_name,
        backend,
    }
}

/// Every node address, internal and external, to the node's name.
fn node_ips(cluster: &ClusterIndex) -> HashMap<IpAddr, String> {
    let mut out = HashMap::new();
    for node in &cluster.nodes {
        for ip in node.addresses.iter().chain(&node.external_addresses) {
            out.insert(*ip, node.name.clone());
        }
    }
    out
}

fn service_ips(
    services: &[Service],
    errors: &mut Vec<ObjectError>,
) -> HashMap<IpAddr, Vec<Arc<ServiceInfo>>> {
    let mut out: HashMap<IpAddr, Vec<Arc<ServiceInfo>>> = HashMap::new();
    for svc in services {
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        let name = svc.metadata.name.clone().unwrap_or_default();
        let info = Arc::new(ServiceInfo {
            namespace: ns.clone(),
            name: name.clone(),
            ports: spec
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    let proto = p
                        .protocol
                        .as_deref()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(Protocol::Tcp);
                    Some((u16::try_from(p.port).ok()?, proto, p.name.clone()))
                })
                .collect(),
        });
        let mut addrs: Vec<(String, String)> = Vec::new();
        match spec.cluster_ips.as_deref() {
            Some(list) if !list.is_empty() => {
                for (i, ip) in list.iter().enumerate() {
                    addrs.push((ip.clone(), format!("spec.clusterIPs[{i}]")));
                }
            }
            _ => addrs.extend(
                spec.cluster_ip
                    .clone()
                    .map(|ip| (ip, "spec.clusterIP".to_owned())),
            ),
        }
        for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
            addrs.push((ip.clone(), format!("spec.externalIPs[{i}]")));
        }
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref());
        for (i, ing) in ingress.into_iter().flatten().enumerate() {
            if let Some(ip) = &ing.ip {
                addrs.push((ip.clone(), format!("status.loadBalancer.ingress[{i}].ip")));
            }
        }
        for (ip, field) in addrs {
            if ip.is_empty() || ip == "None" {
                continue; // headless
            }
            let obj = || object_name("Service", Some(&ns), &name);
            if let Some(ip) = addresses::parse_address(&ip, obj, field, errors) {
                let holders = out.entry(ip).or_default();
                // Once per Service, even if it lists the address twice (say, in externalIPs
                // and as a load-balancer ingress): one candidate, not two.
                if !holders.iter().any(|h| Arc::ptr_eq(h, &info)) {
                    holders.push(info.clone());
                }
            }
        }
    }
    out
}

/// Private, shared, link-local, loopback and unique-local ranges.
pub fn is_private(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback()
                || (s[0] & 0xfe00) == 0xfc00 // fc00::/7
                || (s[0] & 0xffc0) == 0xfe80 // fe80::/10
        }
    }
}

#[cfg(test)]
mod tests;
