//! The cluster as flowwatch sees it: the Kubernetes objects the policy engine and the
//! enrichment index are built from (pure; no I/O here).
//!
//! One `Inventory` is produced either from snapshot files (`kubectl get ... -o yaml`, see
//! [`snapshot`]) or from the kube watchers of the agent (`crate::k8s`). It is compiled once
//! into the [`index::ClusterIndex`] (namespaces, nodes, pods, and who holds each address),
//! which both consumers read: `crate::enrich` adds its address history on top, `crate::policy`
//! its compiled policies and identities. The objects are the upstream `k8s-openapi` types, so
//! both sources share one decoding of the Kubernetes schema.

pub mod addresses;
pub mod cluster_policy;
pub mod hash;
pub mod index;
pub mod intern;
pub mod label_rules;
pub mod limits;
pub mod local_node;
pub mod overlay;
pub mod owners;
pub mod pod_ports;
pub mod policy_types;
pub mod snapshot;
pub mod snapshot_reload;
pub mod sources;
pub mod workloads;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;

/// Every object kind flowwatch reads from the cluster.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    pub namespaces: Vec<Namespace>,
    pub nodes: Vec<Node>,
    pub pods: Vec<Pod>,
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
    pub network_policies: Vec<NetworkPolicy>,
    /// ClusterNetworkPolicy, AdminNetworkPolicy, BaselineAdminNetworkPolicy.
    pub cluster_policies: cluster_policy::ClusterPolicies,
    /// Workloads (Deployment, StatefulSet, ...) as the pods that stand for them, see
    /// [`workloads`]. Only the offline CLI uses them (it adds them to `pods`).
    pub workloads: Vec<Pod>,
}

/// Marks a placeholder in [`Inventory::network_policies`] for a NetworkPolicy that did not
/// decode: it holds only the namespace, name and policy types read from the raw object, so the
/// policy engine reports the policy as skipped (its decode error was already reported by the
/// loader). An annotation key with a space: the API server rejects it, so no real object has it.
pub const UNDECODABLE_POLICY_ANNOTATION: &str = "flowwatch.io/undecodable policy";

/// Whether `np` is a placeholder for a NetworkPolicy that did not decode.
pub fn is_undecodable_policy(np: &NetworkPolicy) -> bool {
    np.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(UNDECODABLE_POLICY_ANNOTATION))
}

/// An object that could not be used, named so a user can find and fix it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ObjectError {
    /// `Kind namespace/name` (or `Kind name` for cluster-scoped objects, or the item's
    /// position when it has no name).
    pub object: String,
    /// The field path, e.g. `spec.ingress[0].from[1].ipBlock.cidr`, when known.
    pub field: Option<String>,
    pub message: String,
}

/// `Kind namespace/name`, or `Kind name` for a cluster-scoped object: how every error and log
/// line names an object.
pub fn object_name(kind: &str, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// Decodes `value` as a `T`, or says which field of it failed and why (`None`: the value as
/// a whole).
pub fn decode_field<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
) -> Result<T, (Option<String>, String)> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        ((path != ".").then_some(path), e.into_inner().to_string())
    })
}

impl ObjectError {
    /// Decodes `value` as a `T` of `object`, the error naming the object and the field.
    pub fn decode<T: serde::de::DeserializeOwned>(
        object: impl FnOnce() -> String,
        value: serde_json::Value,
    ) -> Result<T, ObjectError> {
        decode_field(value).map_err(|(field, message)| ObjectError {
            object: object(),
            field,
            message,
        })
    }
}

impl std::fmt::Display for ObjectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{}: {}: {}", self.object, field, self.message),
            None => write!(f, "{}: {}", self.object, self.message),
        }
    }
}
