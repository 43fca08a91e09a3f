//! The reflector caches: one per kind, applying watch events with kube-rs reflector semantics
//! (a relist is buffered and swapped in atomically at its end, so readers never see a partial
//! list), holding each object in a compact form.
//!
//! Why not the typed objects: a `k8s_openapi` `Pod` is 2.2 KB inline plus 2.1 KB per
//! `Container` before any string, almost all of it empty `Option`s. Pods are kept as
//! [`CompactPod`] (only the fields flowwatch reads, boxed slices and strings, a few hundred
//! bytes) and expanded back into `Pod`s only when an inventory is materialized; the other kinds
//! are few and kept as their trimmed typed objects.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;

use k8s_openapi::api::core::v1::{Container, ContainerPort, Pod, PodIP, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};

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
        }
    }
}

impl<C> Cache<C> {
    pub fn apply(&self, change: Change<C>) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
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
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .objects
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `f` of every object, ordered by namespace and name.
    pub fn map<T>(&self, f: impl Fn(&C) -> T) -> Vec<T> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let mut keyed: Vec<(&Key, &C)> = inner.objects.iter().collect();
        keyed.sort_by(|a, b| a.0.cmp(b.0));
        keyed.into_iter().map(|(_, c)| f(c)).collect()
    }
}

/// How a kind is held in its cache.
pub trait Cached: Sized {
    type Compact: Send + Sync + 'static;
    fn compact(self) -> Self::Compact;
    fn expand(c: &Self::Compact) -> Self;
}

macro_rules! as_is {
    ($($t:ty),*) => {$(
        impl Cached for $t {
            type Compact = $t;
            fn compact(self) -> $t { self }
            fn expand(c: &$t) -> $t { c.clone() }
        }
    )*};
}
as_is!(
    k8s_openapi::api::core::v1::Namespace,
    k8s_openapi::api::core::v1::Node,
    k8s_openapi::api::core::v1::Service,
    k8s_openapi::api::discovery::v1::EndpointSlice,
    k8s_openapi::api::networking::v1::NetworkPolicy,
    k8s_openapi::api::apps::v1::ReplicaSet,
    k8s_openapi::api::batch::v1::Job
);

/// A container's name and its declared ports.
type NamedPorts = (Box<str>, Box<[ContainerPort]>);

/// A pod, as much of it as flowwatch reads.
#[derive(Clone, Debug, PartialEq)]
pub struct CompactPod {
    name: Box<str>,
    namespace: Box<str>,
    uid: Option<Box<str>>,
    labels: Box<[(Box<str>, Box<str>)]>,
    owners: Box<[OwnerReference]>,
    deletion: Option<Time>,
    node_name: Option<Box<str>>,
    host_network: Option<bool>,
    /// (container name, its ports)
    containers: Box<[NamedPorts]>,
    phase: Option<Box<str>>,
    pod_ip: Option<Box<str>>,
    pod_ips: Box<[Box<str>]>,
    host_ip: Option<Box<str>>,
}

fn b(s: String) -> Box<str> {
    s.into_boxed_str()
}

impl Cached for Pod {
    type Compact = CompactPod;

    fn compact(self) -> CompactPod {
        let m = self.metadata;
        let spec = self.spec.unwrap_or_default();
        let status = self.status.unwrap_or_default();
        CompactPod {
            name: b(m.name.unwrap_or_default()),
            namespace: b(m.namespace.unwrap_or_default()),
            uid: m.uid.map(b),
            labels: m
                .labels
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (b(k), b(v)))
                .collect(),
            owners: m.owner_references.unwrap_or_default().into(),
            deletion: m.deletion_timestamp,
            node_name: spec.node_name.map(b),
            host_network: spec.host_network,
            containers: spec
                .containers
                .into_iter()
                .filter(|c| c.ports.as_ref().is_some_and(|p| !p.is_empty()))
                .map(|c| (b(c.name), c.ports.unwrap_or_default().into()))
                .collect(),
            phase: status.phase.map(b),
            pod_ip: status.pod_ip.map(b),
            pod_ips: status
                .pod_ips
                .unwrap_or_default()
                .into_iter()
                .map(|p| b(p.ip))
                .collect(),
            host_ip: status.host_ip.map(b),
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
                owner_references: (!c.owners.is_empty()).then(|| c.owners.to_vec()),
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
                        ports: Some(ports.to_vec()),
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
        let back = Pod::expand(&pod.clone().compact());
        let mut expected = pod;
        // containers without ports are not kept: nothing flowwatch reads is lost
        expected.spec.as_mut().unwrap().containers.truncate(1);
        assert_eq!(back, expected);
    }
}
