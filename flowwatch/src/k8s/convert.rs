//! From what the API server sends to what the agent keeps: each object is decoded on its own
//! (one object that cannot be decoded is rejected with its name and field path, the rest goes
//! on) and trimmed to the fields that enrichment and the policy engine read.
//!
//! What a pod keeps: name, namespace, uid, labels, ownerReferences, creation/deletion times,
//! `spec.nodeName`, `spec.hostNetwork`, each container's name and ports (named ports are needed
//! by NetworkPolicy), `status.phase`, `status.podIP(s)`, `status.hostIP`. Everything else
//! (managedFields, annotations, volumes, env, images, probes, conditions, container statuses)
//! is dropped before the object is stored.

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    Container, Namespace, Node, NodeSpec, NodeStatus, Pod, PodSpec, PodStatus, Service,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;

use crate::inventory::ObjectError;

/// `Kind namespace/name` or `Kind name`.
pub fn object_name(kind: &str, meta: &ObjectMeta) -> String {
    crate::inventory::object_name(
        kind,
        meta.namespace.as_deref(),
        meta.name.as_deref().unwrap_or("<unnamed>"),
    )
}

/// Decodes one object from its JSON form, naming the object and the field on failure.
pub fn decode<K: DeserializeOwned>(
    kind: &str,
    meta: &ObjectMeta,
    value: serde_json::Value,
) -> Result<K, ObjectError> {
    ObjectError::decode(|| object_name(kind, meta), value)
}

/// Metadata trimmed to what flowwatch reads.
pub fn trim_meta(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    meta.annotations = None;
    meta.finalizers = None;
    meta.generate_name = None;
    meta.self_link = None;
}

/// A cluster object flowwatch stores, with its trimming.
pub trait Trim: Sized {
    const NAME: &'static str;
    fn trim(self) -> Self;
}

impl Trim for Pod {
    const NAME: &'static str = "Pod";
    fn trim(mut self) -> Self {
        trim_meta(&mut self.metadata);
        self.spec = self.spec.map(|s| PodSpec {
            node_name: s.node_name,
            host_network: s.host_network,
            containers: s
                .containers
                .into_iter()
                .map(|c| Container {
                    name: c.name,
                    ports: c.ports,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        });
        self.status = self.status.map(|s| PodStatus {
            phase: s.phase,
            pod_ip: s.pod_ip,
            pod_ips: s.pod_ips,
            host_ip: s.host_ip,
            ..Default::default()
        });
        self
    }
}

impl Trim for Namespace {
    const NAME: &'static str = "Namespace";
    fn trim(mut self) -> Self {
        trim_meta(&mut self.metadata);
        self.spec = None;
        self
    }
}

impl Trim for Node {
    const NAME: &'static str = "Node";
    fn trim(mut self) -> Self {
        trim_meta(&mut self.metadata);
        self.spec = self.spec.map(|s| NodeSpec {
            pod_cidr: s.pod_cidr,
            pod_cidrs: s.pod_cidrs,
            ..Default::default()
        });
        self.status = self.status.map(|s| NodeStatus {
            addresses: s.addresses,
            ..Default::default()
        });
        self
    }
}

impl Trim for Service {
    const NAME: &'static str = "Service";
    fn trim(mut self) -> Self {
        trim_meta(&mut self.metadata);
        self
    }
}

impl Trim for EndpointSlice {
    const NAME: &'static str = "EndpointSlice";
    fn trim(mut self) -> Self {
        trim_meta(&mut self.metadata);
        for ep in &mut self.endpoints {
            ep.hints = None;
            ep.deprecated_topology = None;
        }
        self
    }
}

impl Trim for NetworkPolicy {
    const NAME: &'static str = "NetworkPolicy";
    fn trim(mut self) -> Self {
        trim_meta(&mut self.metadata);
        self
    }
}

/// Only the metadata (name, namespace, ownerReferences) of ReplicaSets and Jobs is kept: it is
/// what resolves a pod's ReplicaSet to its Deployment and a Job to its CronJob.
macro_rules! keep_only_owner_metadata {
    ($($kind:ident),+) => {$(
        impl Trim for $kind {
            const NAME: &'static str = stringify!($kind);
            fn trim(mut self) -> Self {
                trim_meta(&mut self.metadata);
                self.metadata.labels = None;
                self.spec = None;
                self.status = None;
                self
            }
        }
    )+};
}
keep_only_owner_metadata!(ReplicaSet, Job);

/// Decodes and trims one object. For metadata-only kinds the body is never decoded.
pub fn convert<K>(meta: ObjectMeta, value: serde_json::Value) -> Result<K, ObjectError>
where
    K: Trim + DeserializeOwned + k8s_openapi::Metadata<Ty = ObjectMeta> + Default,
{
    if K::NAME == "ReplicaSet" || K::NAME == "Job" {
        return Ok(only_meta::<K>(meta).trim());
    }
    decode::<K>(K::NAME, &meta, value).map(Trim::trim)
}

/// An object with only its metadata (what a deletion needs to find it in a store).
pub fn only_meta<K>(mut meta: ObjectMeta) -> K
where
    K: k8s_openapi::Metadata<Ty = ObjectMeta> + Default,
{
    trim_meta(&mut meta);
    let mut k = K::default();
    *k.metadata_mut() = meta;
    k
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn meta(ns: &str, name: &str) -> ObjectMeta {
        ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_pod_is_trimmed_to_what_flowwatch_reads() {
        let value = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"},
                "annotations": {"big": "x".repeat(1000)},
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}]},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "nginx",
                "env": [{"name": "A", "value": "1"}],
                "ports": [{"name": "http", "containerPort": 8080}]}],
                "volumes": [{"name": "v", "emptyDir": {}}]},
            "status": {"phase": "Running", "podIP": "10.0.0.5",
                "podIPs": [{"ip": "10.0.0.5"}],
                "conditions": [{"type": "Ready", "status": "True"}]}
        });
        let pod: Pod = convert(meta("shop", "web-1"), value).unwrap();
        assert!(pod.metadata.annotations.is_none());
        assert!(pod.metadata.managed_fields.is_none());
        assert_eq!(pod.metadata.labels.unwrap()["app"], "web");
        let spec = pod.spec.unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("n1"));
        assert!(spec.volumes.is_none());
        assert_eq!(spec.containers[0].image, None);
        assert!(spec.containers[0].env.is_none());
        assert_eq!(
            spec.containers[0].ports.as_ref().unwrap()[0].container_port,
            8080
        );
        let status = pod.status.unwrap();
        assert_eq!(status.pod_ip.as_deref(), Some("10.0.0.5"));
        assert!(status.conditions.is_none());
    }

    #[test]
    fn an_undecodable_object_is_named_with_its_field() {
        let value = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "bad", "namespace": "shop"},
            "spec": {"containers": [{"name": "c", "ports": [{"containerPort": "eighty"}]}]}
        });
        let err = convert::<Pod>(meta("shop", "bad"), value).unwrap_err();
        assert_eq!(err.object, "Pod shop/bad");
        assert_eq!(
            err.field.as_deref(),
            Some("spec.containers[0].ports[0].containerPort")
        );
    }

    #[test]
    fn replica_sets_keep_only_their_owner() {
        let mut m = meta("shop", "web-5d8f");
        m.labels = Some([("a".to_string(), "b".to_string())].into());
        m.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                name: "web".into(),
                uid: "u".into(),
                controller: Some(true),
                ..Default::default()
            },
        ]);
        // the body is not even looked at
        let rs: ReplicaSet = convert(m, json!({"spec": "garbage"})).unwrap();
        assert!(rs.spec.is_none());
        assert!(rs.metadata.labels.is_none());
        assert_eq!(rs.metadata.owner_references.unwrap()[0].name, "web");
    }
}
