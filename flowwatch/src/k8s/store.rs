//! The reflector caches: one per kind, applying watch events with kube-rs reflector semantics
//! (a relist is buffered and swapped in atomically at its end, so readers never see a partial
//! list), holding each object in a compact form.
//!
//! Why not the typed objects: a `k8s_openapi` `Pod` is 2.2 KB inline plus 2.1 KB per
//! `Container` before any string, almost all of it empty `Option`s. Pods are kept as
//! [`CompactPod`] (only the fields flowwatch reads, boxed slices and strings, a few hundred
//! bytes) and expanded back into `Pod`s only when an inventory is materialized; Services,
//! EndpointSlices and NetworkPolicies are kept as their JSON text ([`Json`]); the other kinds
//! are few and kept as their trimmed typed objects.
//!
//! What pods repeat (namespace, node, phase, label sets, owners, container ports: the same for
//! every pod of a Deployment) is interned in the cache's [`Pool`] and stored once.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, RwLock};

use k8s_openapi::api::core::v1::{Container, ContainerPort, Pod, PodIP, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};

use crate::inventory::intern::Interner;

/// `(namespace, name)`.
pub type Key = (Option<String>, String);

pub fn key_of(meta: &ObjectMeta) -> Key {
    (
        meta.namespace.clone(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// A watch event for a cache (the kube-rs `watcher::Event` shape, keyed).
#[derive(Clone, Debug)]
pub enum Change<C> {
    Init,
    InitApply(Key, C),
    InitDone,
    Apply(Key, C),
    Delete(Key),
}

/// One kind's objects.
#[derive(Debug)]
pub struct Cache<C> {
    inner: RwLock<Inner<C>>,
    /// Shared values of this kind's objects (see [`Cache::compact`]).
    pool: Mutex<Pool>,
}

#[derive(Debug)]
struct Inner<C> {
    objects: HashMap<Key, C>,
    relist: Option<HashMap<Key, C>>,
}

impl<C> Default for Cache<C> {
    fn default() -> Self {
        Cache {
            inner: RwLock::new(Inner {
                objects: HashMap::new(),
                relist: None,
            }),
            pool: Mutex::default(),
        }
    }
}

impl<C> Cache<C> {
    /// `object` in the form this cache holds, sharing what it repeats with the objects already
    /// held.
    pub fn compact<K: Cached<Compact = C>>(&self, object: K) -> C {
        object.compact(&mut crate::sync::lock(&self.pool))
    }

    pub fn apply(&self, change: Change<C>) {
        let mut inner = crate::sync::write(&self.inner);
        match change {
            Change::Init => inner.relist = Some(HashMap::new()),
            Change::InitApply(k, c) => match inner.relist.as_mut() {
                Some(buf) => {
                    buf.insert(k, c);
                }
                None => {
                    inner.objects.insert(k, c);
                }
            },
            Change::InitDone => {
                if let Some(buf) = inner.relist.take() {
                    inner.objects = buf;
                }
            }
            Change::Apply(k, c) => {
                inner.objects.insert(k, c);
            }
            Change::Delete(k) => {
                inner.objects.remove(&k);
            }
        }
    }

    pub fn len(&self) -> usize {
        crate::sync::read(&self.inner).objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `f` of every object, ordered by namespace and name.
    pub fn map<T>(&self, f: impl Fn(&C) -> T) -> Vec<T> {
        let inner = crate::sync::read(&self.inner);
        let mut keyed: Vec<(&Key, &C)> = inner.objects.iter().collect();
        keyed.sort_by(|a, b| a.0.cmp(b.0));
        keyed.into_iter().map(|(_, c)| f(c)).collect()
    }
}

/// How a kind is held in its cache.
pub trait Cached: Sized {
    type Compact: Send + Sync + 'static;
    fn compact(self, pool: &mut Pool) -> Self::Compact;
    fn expand(c: &Self::Compact) -> Self;
}

/// The values a cache's objects share, one copy each.
#[derive(Debug, Default)]
pub struct Pool {
    strs: Interner<str>,
    labels: Interner<[(Arc<str>, Arc<str>)]>,
    owners: Interner<[Owner]>,
    containers: Interner<[NamedPorts]>,
}

impl Pool {
    fn str(&mut self, s: String) -> Arc<str> {
        self.strs.intern(s)
    }
}

macro_rules! as_is {
    ($($t:ty),*) => {$(
        impl Cached for $t {
            type Compact = $t;
            fn compact(self, _: &mut Pool) -> $t { self }
            fn expand(c: &$t) -> $t { c.clone() }
        }
    )*};
}
as_is!(
    k8s_openapi::api::core::v1::Namespace,
    k8s_openapi::api::core::v1::Node,
    k8s_openapi::api::apps::v1::ReplicaSet,
    k8s_openapi::api::batch::v1::Job
);

/// An object held as its JSON text, decoded again when a view is materialized.
///
/// Why: a typed Service, EndpointSlice or NetworkPolicy is mostly empty `Option` slots, and
/// every label map or selector in it is a `BTreeMap` whose first node takes about 0.5 KB; the
/// JSON text (absent fields are not written) is about five times smaller. At 2,000 of each
/// kind that is some 16 MB less of heap, for a decode per object when a view is built. Serializing a k8s-openapi
/// object and reading it back gives the same object (tested below).
pub struct Json<K> {
    text: Box<[u8]>,
    kind: PhantomData<fn() -> K>,
}

impl<K> std::fmt::Debug for Json<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.text))
    }
}

macro_rules! as_json {
    ($($t:ty),*) => {$(
        impl Cached for $t {
            type Compact = Json<$t>;
            fn compact(self, _: &mut Pool) -> Json<$t> {
                // Serializing a typed object (string keys, no non-finite floats) cannot fail.
                let text = serde_json::to_vec(&self).unwrap_or_default();
                Json { text: text.into(), kind: PhantomData }
            }
            fn expand(c: &Json<$t>) -> $t {
                serde_json::from_slice(&c.text).unwrap_or_else(|e| {
                    tracing::error!(error = %e, object = ?c, "cannot decode a cached object");
                    Default::default()
                })
            }
        }
    )*};
}
as_json!(
    k8s_openapi::api::core::v1::Service,
    k8s_openapi::api::discovery::v1::EndpointSlice,
    k8s_openapi::api::networking::v1::NetworkPolicy
);

/// A container's name and its declared ports.
type NamedPorts = (Box<str>, Box<[Port]>);

/// `OwnerReference` and `ContainerPort` are only `PartialEq` (their fields are strings,
/// integers and bools, so it is a full equivalence); these wrappers add `Eq` and `Hash` so
/// they can be interned.
#[derive(Clone, Debug, PartialEq)]
pub struct Owner(OwnerReference);

impl Eq for Owner {}

impl Hash for Owner {
    fn hash<H: Hasher>(&self, h: &mut H) {
        let o = &self.0;
        (&o.api_version, &o.kind, &o.name, &o.uid).hash(h);
        (o.controller, o.block_owner_deletion).hash(h);
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Port(ContainerPort);

impl Eq for Port {}

impl Hash for Port {
    fn hash<H: Hasher>(&self, h: &mut H) {
        let p = &self.0;
        (
            p.container_port,
            &p.host_ip,
            p.host_port,
            &p.name,
            &p.protocol,
        )
            .hash(h);
    }
}

/// A pod, as much of it as flowwatch reads. The `Arc`s are interned in the cache's [`Pool`]:
/// what is the same for many pods is stored once; what is the pod's own is boxed.
#[derive(Clone, Debug, PartialEq)]
pub struct CompactPod {
    name: Box<str>,
    namespace: Arc<str>,
    uid: Option<Box<str>>,
    labels: Arc<[(Arc<str>, Arc<str>)]>,
    owners: Arc<[Owner]>,
    deletion: Option<Time>,
    node_name: Option<Arc<str>>,
    host_network: Option<bool>,
    /// (container name, its ports)
    containers: Arc<[NamedPorts]>,
    phase: Option<Arc<str>>,
    pod_ip: Option<Box<str>>,
    pod_ips: Box<[Box<str>]>,
    host_ip: Option<Arc<str>>,
}

fn b(s: String) -> Box<str> {
    s.into_boxed_str()
}

impl Cached for Pod {
    type Compact = CompactPod;

    fn compact(self, pool: &mut Pool) -> CompactPod {
        let m = self.metadata;
        let spec = self.spec.unwrap_or_default();
        let status = self.status.unwrap_or_default();
        let labels: Vec<_> = m
            .labels
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (pool.str(k), pool.str(v)))
            .collect();
        let containers: Vec<NamedPorts> = spec
            .containers
            .into_iter()
            .filter(|c| c.ports.as_ref().is_some_and(|p| !p.is_empty()))
            .map(|c| {
                let ports = c.ports.unwrap_or_default().into_iter().map(Port);
                (b(c.name), ports.collect())
            })
            .collect();
        CompactPod {
            name: b(m.name.unwrap_or_default()),
            namespace: pool.str(m.namespace.unwrap_or_default()),
            uid: m.uid.map(b),
            labels: pool.labels.intern(labels),
            owners: pool.owners.intern(
                m.owner_references
                    .unwrap_or_default()
                    .into_iter()
                    .map(Owner)
                    .collect::<Vec<_>>(),
            ),
            deletion: m.deletion_timestamp,
            node_name: spec.node_name.map(|n| pool.str(n)),
            host_network: spec.host_network,
            containers: pool.containers.intern(containers),
            phase: status.phase.map(|p| pool.str(p)),
            pod_ip: status.pod_ip.map(b),
            pod_ips: status
                .pod_ips
                .unwrap_or_default()
                .into_iter()
                .map(|p| b(p.ip))
                .collect(),
            host_ip: status.host_ip.map(|h| pool.str(h)),
        }
    }

    fn expand(c: &CompactPod) -> Pod {
        let s = |x: &str| -> String { x.to_owned() };
        Pod {
            metadata: ObjectMeta {
                name: Some(s(&c.name)),
                namespace: Some(s(&c.namespace)),
                uid: c.uid.as_deref().map(s),
                labels: (!c.labels.is_empty()).then(|| {
                    c.labels
                        .iter()
                        .map(|(k, v)| (s(k), s(v)))
                        .collect::<BTreeMap<_, _>>()
                }),
                owner_references: (!c.owners.is_empty())
                    .then(|| c.owners.iter().map(|o| o.0.clone()).collect()),
                deletion_timestamp: c.deletion.clone(),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: c.node_name.as_deref().map(s),
                host_network: c.host_network,
                containers: c
                    .containers
                    .iter()
                    .map(|(name, ports)| Container {
                        name: s(name),
                        ports: Some(ports.iter().map(|p| p.0.clone()).collect()),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: c.phase.as_deref().map(s),
                pod_ip: c.pod_ip.as_deref().map(s),
                pod_ips: (!c.pod_ips.is_empty())
                    .then(|| c.pod_ips.iter().map(|ip| PodIP { ip: s(ip) }).collect()),
                host_ip: c.host_ip.as_deref().map(s),
                ..Default::default()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Key {
        (Some("ns".into()), name.into())
    }

    #[test]
    fn a_relist_is_swapped_in_at_its_end() {
        let cache: Cache<u32> = Cache::default();
        cache.apply(Change::Init);
        cache.apply(Change::InitApply(key("a"), 1));
        cache.apply(Change::InitApply(key("b"), 2));
        cache.apply(Change::InitDone);
        assert_eq!(cache.map(|v| *v), vec![1, 2]);
        // relist: until it is done, readers see the old state
        cache.apply(Change::Init);
        cache.apply(Change::InitApply(key("b"), 20));
        assert_eq!(cache.map(|v| *v), vec![1, 2]);
        cache.apply(Change::InitDone);
        assert_eq!(cache.map(|v| *v), vec![20], "a was deleted during the gap");
        cache.apply(Change::Apply(key("c"), 3));
        cache.apply(Change::Delete(key("b")));
        assert_eq!(cache.map(|v| *v), vec![3]);
    }

    #[test]
    fn json_held_objects_survive_compaction() {
        use k8s_openapi::api::discovery::v1::EndpointSlice;
        use k8s_openapi::api::networking::v1::NetworkPolicy;
        let np: NetworkPolicy = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "np", "namespace": "shop", "uid": "u", "generation": 2,
                "creationTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress", "Egress"],
                "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchExpressions": [
                    {"key": "tier", "operator": "In", "values": ["a", "b"]}]}},
                    {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                    "ports": [{"protocol": "TCP", "port": "http"}, {"port": 8080, "endPort": 8090}]}],
                "egress": [{}]}
        }))
        .unwrap();
        let mut pool = Pool::default();
        assert_eq!(NetworkPolicy::expand(&np.clone().compact(&mut pool)), np);
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-abc", "namespace": "shop",
                "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": true}, "nodeName": "n",
                "targetRef": {"kind": "Pod", "namespace": "shop", "name": "web-1"}}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        }))
        .unwrap();
        assert_eq!(
            EndpointSlice::expand(&slice.clone().compact(&mut pool)),
            slice
        );
    }

    #[test]
    fn a_pod_survives_compaction() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u1",
                "labels": {"app": "web", "tier": "front"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1",
                    "uid": "r", "controller": true}]},
            "spec": {"nodeName": "n1", "hostNetwork": false, "containers": [
                {"name": "app", "ports": [{"name": "http", "containerPort": 8080}]},
                {"name": "sidecar"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.5", "podIPs": [{"ip": "10.0.0.5"}, {"ip": "fd00::5"}],
                "hostIP": "192.168.1.1"}
        }))
        .unwrap();
        let back = Pod::expand(&pod.clone().compact(&mut Pool::default()));
        let mut expected = pod;
        // containers without ports are not kept: nothing flowwatch reads is lost
        expected.spec.as_mut().unwrap().containers.truncate(1);
        assert_eq!(back, expected);
    }
}
