//! Cluster-scoped policy objects of the network-policy-api project (`policy.networking.k8s.io`),
//! as the API server serves them and `kubectl get ... -o yaml|json` prints them (pure; no I/O):
//!
//! * `ClusterNetworkPolicy` (`v1alpha2`, tiers `Admin` and `Baseline`);
//! * `AdminNetworkPolicy` and the singleton `BaselineAdminNetworkPolicy` `default` (`v1alpha1`).
//!
//! The types mirror the published Go types (network-policy-api v0.2.0) field for field, with
//! every field optional so that an object the API server would reject still decodes and the
//! policy engine can say which field is wrong. Validation and meaning live in
//! `crate::policy::tiered`, which translates both versions into one model.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ObjectError;

/// The API group of the three kinds.
pub const API_GROUP: &str = "policy.networking.k8s.io";

/// The cluster-scoped policy objects of an inventory.
#[derive(Clone, Debug, Default)]
pub struct ClusterPolicies {
    pub cluster_network_policies: Vec<ClusterNetworkPolicy>,
    pub admin_network_policies: Vec<AdminNetworkPolicy>,
    pub baseline_admin_network_policies: Vec<BaselineAdminNetworkPolicy>,
    /// Objects of these kinds that did not decode (already reported by the loader), by kind
    /// and name: the engine lists them as skipped.
    pub undecodable: Vec<(String, String)>,
    /// CNI-specific policy objects (Cilium, Calico, Antrea): not evaluated, but they may allow
    /// or deny what the evaluated kinds say.
    pub cni_policies: Vec<CniPolicy>,
}

/// A CNI-specific policy object, by kind and place only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniPolicy {
    /// `Kind` as the CNI names it, prefixed by its API group when the bare kind is ambiguous
    /// (`projectcalico.org/NetworkPolicy`, `crd.antrea.io/ClusterNetworkPolicy`).
    pub kind: String,
    /// `None` for a cluster-wide kind (it may select pods of any namespace).
    pub namespace: Option<String>,
    pub name: String,
}

/// The CNI-specific policy kinds flowwatch recognises: (API group, kind, namespaced).
/// Staged (not enforced) Calico kinds are left out: they change no traffic.
pub const CNI_POLICY_KINDS: [(&str, &str, bool); 8] = [
    ("cilium.io", "CiliumNetworkPolicy", true),
    ("cilium.io", "CiliumClusterwideNetworkPolicy", false),
    ("projectcalico.org", "NetworkPolicy", true),
    ("projectcalico.org", "GlobalNetworkPolicy", false),
    ("crd.projectcalico.org", "NetworkPolicy", true),
    ("crd.projectcalico.org", "GlobalNetworkPolicy", false),
    ("crd.antrea.io", "NetworkPolicy", true),
    ("crd.antrea.io", "ClusterNetworkPolicy", false),
];

/// The entry of [`CNI_POLICY_KINDS`] an object is, by its `kind` and `apiVersion`.
pub fn cni_policy_kind(
    kind: &str,
    api_version: Option<&str>,
) -> Option<&'static (&'static str, &'static str, bool)> {
    let group = api_version?.split('/').next()?;
    CNI_POLICY_KINDS
        .iter()
        .find(|(g, k, _)| *g == group && *k == kind)
}

/// Records a CNI-specific policy object (only its kind, namespace and name are read).
pub fn add_cni_object(into: &mut ClusterPolicies, kind: &str, api_version: &str, item: &Value) {
    let Some((group, kind, namespaced)) = cni_policy_kind(kind, Some(api_version)) else {
        return;
    };
    let meta = |f: &str| {
        item.get("metadata")
            .and_then(|m| m.get(f))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let ambiguous = matches!(*kind, "NetworkPolicy" | "ClusterNetworkPolicy");
    into.cni_policies.push(CniPolicy {
        kind: if ambiguous {
            format!("{group}/{kind}")
        } else {
            kind.to_string()
        },
        namespace: if *namespaced {
            Some(meta("namespace").unwrap_or_default())
        } else {
            None
        },
        name: meta("name").unwrap_or_default(),
    });
}

impl ClusterPolicies {
    pub fn extend(&mut self, other: ClusterPolicies) {
        self.cluster_network_policies
            .extend(other.cluster_network_policies);
        self.admin_network_policies
            .extend(other.admin_network_policies);
        self.baseline_admin_network_policies
            .extend(other.baseline_admin_network_policies);
        self.undecodable.extend(other.undecodable);
        self.cni_policies.extend(other.cni_policies);
    }

    pub fn is_empty(&self) -> bool {
        self.cluster_network_policies.is_empty()
            && self.admin_network_policies.is_empty()
            && self.baseline_admin_network_policies.is_empty()
            && self.undecodable.is_empty()
            && self.cni_policies.is_empty()
    }

    pub fn len(&self) -> usize {
        self.cluster_network_policies.len()
            + self.admin_network_policies.len()
            + self.baseline_admin_network_policies.len()
    }
}

/// Whether `kind` (with `apiVersion`, when the object has one) is one of the three kinds.
/// Another group's kind of the same name is not.
pub fn is_cluster_policy_kind(kind: &str, api_version: Option<&str>) -> bool {
    matches!(
        kind,
        "ClusterNetworkPolicy" | "AdminNetworkPolicy" | "BaselineAdminNetworkPolicy"
    ) && api_version.is_none_or(|v| v.split('/').next() == Some(API_GROUP))
}

/// Decodes one object of a cluster policy kind into `into`, or reports it (object and field)
/// and records it as undecodable.
pub fn add_object(
    into: &mut ClusterPolicies,
    kind: &str,
    item: Value,
    object: String,
    errors: &mut Vec<ObjectError>,
) {
    let name = item
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let decoded = match kind {
        "ClusterNetworkPolicy" => {
            super::decode_field(item).map(|p| into.cluster_network_policies.push(p))
        }
        "AdminNetworkPolicy" => {
            super::decode_field(item).map(|p| into.admin_network_policies.push(p))
        }
        _ => super::decode_field(item).map(|p| into.baseline_admin_network_policies.push(p)),
    };
    if let Err((field, message)) = decoded {
        errors.push(ObjectError {
            object,
            field,
            message,
        });
        into.undecodable.push((kind.to_string(), name));
    }
}

// ------------------------------------------------------------ shared parts

/// `pods` in a subject or a peer: namespaces AND pods.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedPod {
    #[serde(default)]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(default)]
    pub pod_selector: Option<LabelSelector>,
}

/// The pods a policy applies to: exactly one of the two.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Subject {
    #[serde(default)]
    pub namespaces: Option<LabelSelector>,
    #[serde(default)]
    pub pods: Option<NamespacedPod>,
}

/// A peer of a rule: exactly one field. `nodes`, `networks` and `domainNames` exist only in
/// egress peers (and `domainNames` not in a BaselineAdminNetworkPolicy); the engine rejects them
/// elsewhere. A peer with none of the known fields (a field of a newer API version) is
/// "fail closed", as the API prescribes.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyPeer {
    #[serde(default)]
    pub namespaces: Option<LabelSelector>,
    #[serde(default)]
    pub pods: Option<NamespacedPod>,
    #[serde(default)]
    pub nodes: Option<LabelSelector>,
    #[serde(default)]
    pub networks: Option<Vec<String>>,
    #[serde(default)]
    pub domain_names: Option<Vec<String>>,
}

// ------------------------------------------------------------ v1alpha2

/// `ClusterNetworkPolicy` (`policy.networking.k8s.io/v1alpha2`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct ClusterNetworkPolicy {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<ClusterNetworkPolicySpec>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkPolicySpec {
    /// `Admin` | `Baseline`.
    #[serde(default)]
    pub tier: Option<String>,
    /// 0..=1000; lower first.
    #[serde(default)]
    pub priority: Option<i64>,
    #[serde(default)]
    pub subject: Option<Subject>,
    #[serde(default)]
    pub ingress: Option<Vec<ClusterNetworkPolicyRule>>,
    #[serde(default)]
    pub egress: Option<Vec<ClusterNetworkPolicyRule>>,
}

/// An ingress rule (`from`) or an egress rule (`to`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkPolicyRule {
    #[serde(default)]
    pub name: Option<String>,
    /// `Accept` | `Deny` | `Pass`.
    #[serde(default)]
    pub action: Option<String>,
    #[serde(default)]
    pub from: Option<Vec<PolicyPeer>>,
    #[serde(default)]
    pub to: Option<Vec<PolicyPeer>>,
    #[serde(default)]
    pub protocols: Option<Vec<ClusterNetworkPolicyProtocol>>,
}

/// Exactly one field.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkPolicyProtocol {
    #[serde(default)]
    pub tcp: Option<ProtocolPorts>,
    #[serde(default)]
    pub udp: Option<ProtocolPorts>,
    #[serde(default)]
    pub sctp: Option<ProtocolPorts>,
    #[serde(default)]
    pub destination_named_port: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProtocolPorts {
    #[serde(default)]
    pub destination_port: Option<DestinationPort>,
}

/// `number` or `range`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationPort {
    #[serde(default)]
    pub number: Option<i64>,
    #[serde(default)]
    pub range: Option<PortBounds>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortBounds {
    /// v1alpha1 only (`portRange.protocol`, TCP by default).
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub start: Option<i64>,
    #[serde(default)]
    pub end: Option<i64>,
}

// ------------------------------------------------------------ v1alpha1

/// `AdminNetworkPolicy` (`policy.networking.k8s.io/v1alpha1`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct AdminNetworkPolicy {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<AdminNetworkPolicySpec>,
}

/// `BaselineAdminNetworkPolicy` (`policy.networking.k8s.io/v1alpha1`); only `default` is valid.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct BaselineAdminNetworkPolicy {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<AdminNetworkPolicySpec>,
}

/// The spec of both v1alpha1 kinds (a BaselineAdminNetworkPolicy has no `priority`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminNetworkPolicySpec {
    #[serde(default)]
    pub priority: Option<i64>,
    #[serde(default)]
    pub subject: Option<Subject>,
    #[serde(default)]
    pub ingress: Option<Vec<AdminNetworkPolicyRule>>,
    #[serde(default)]
    pub egress: Option<Vec<AdminNetworkPolicyRule>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminNetworkPolicyRule {
    #[serde(default)]
    pub name: Option<String>,
    /// `Allow` | `Deny` | `Pass` (`Allow` | `Deny` in a BaselineAdminNetworkPolicy).
    #[serde(default)]
    pub action: Option<String>,
    #[serde(default)]
    pub from: Option<Vec<PolicyPeer>>,
    #[serde(default)]
    pub to: Option<Vec<PolicyPeer>>,
    #[serde(default)]
    pub ports: Option<Vec<AdminNetworkPolicyPort>>,
}

/// Exactly one field.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminNetworkPolicyPort {
    #[serde(default)]
    pub port_number: Option<PortNumber>,
    #[serde(default)]
    pub named_port: Option<String>,
    #[serde(default)]
    pub port_range: Option<PortBounds>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortNumber {
    /// TCP when absent.
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub port: Option<i64>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn kinds_of_the_group_are_recognised_and_others_are_not() {
        assert!(is_cluster_policy_kind("ClusterNetworkPolicy", None));
        assert!(is_cluster_policy_kind(
            "AdminNetworkPolicy",
            Some("policy.networking.k8s.io/v1alpha1")
        ));
        assert!(!is_cluster_policy_kind(
            "ClusterNetworkPolicy",
            Some("example.com/v1")
        ));
        assert!(!is_cluster_policy_kind("NetworkPolicy", None));
    }

    #[test]
    fn cni_kinds_are_recognised_by_group_and_kind() {
        assert!(cni_policy_kind("CiliumNetworkPolicy", Some("cilium.io/v2")).is_some());
        assert!(cni_policy_kind("NetworkPolicy", Some("projectcalico.org/v3")).is_some());
        assert!(cni_policy_kind("ClusterNetworkPolicy", Some("crd.antrea.io/v1beta1")).is_some());
        assert!(cni_policy_kind("NetworkPolicy", Some("networking.k8s.io/v1")).is_none());
        assert!(cni_policy_kind("NetworkPolicy", None).is_none());
        assert!(cni_policy_kind("StagedNetworkPolicy", Some("projectcalico.org/v3")).is_none());
        let mut into = ClusterPolicies::default();
        add_cni_object(
            &mut into,
            "NetworkPolicy",
            "crd.antrea.io/v1beta1",
            &json!({"metadata": {"namespace": "x", "name": "p"}}),
        );
        add_cni_object(
            &mut into,
            "CiliumClusterwideNetworkPolicy",
            "cilium.io/v2",
            &json!({"metadata": {"name": "c"}}),
        );
        assert_eq!(
            into.cni_policies,
            vec![
                CniPolicy {
                    kind: "crd.antrea.io/NetworkPolicy".into(),
                    namespace: Some("x".into()),
                    name: "p".into()
                },
                CniPolicy {
                    kind: "CiliumClusterwideNetworkPolicy".into(),
                    namespace: None,
                    name: "c".into()
                }
            ]
        );
    }

    #[test]
    fn a_bad_field_is_reported_with_its_path_and_the_object_is_kept_as_undecodable() {
        let mut into = ClusterPolicies::default();
        let mut errors = Vec::new();
        let item = json!({"kind": "ClusterNetworkPolicy", "metadata": {"name": "p"},
            "spec": {"tier": "Admin", "priority": "high"}});
        add_object(
            &mut into,
            "ClusterNetworkPolicy",
            item,
            "ClusterNetworkPolicy p".into(),
            &mut errors,
        );
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].object, "ClusterNetworkPolicy p");
        assert_eq!(errors[0].field.as_deref(), Some("spec.priority"));
        assert_eq!(
            into.undecodable,
            vec![("ClusterNetworkPolicy".to_string(), "p".to_string())]
        );
        assert!(into.cluster_network_policies.is_empty());
    }

    #[test]
    fn every_field_of_both_versions_decodes() {
        let cnp: ClusterNetworkPolicy = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"tier": "Baseline", "priority": 5,
                "subject": {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"a": "b"}}}},
                "egress": [{"name": "r", "action": "Pass",
                    "to": [{"networks": ["10.0.0.0/8"]}, {"nodes": {}}, {"domainNames": ["x.io"]}],
                    "protocols": [{"tcp": {"destinationPort": {"range": {"start": 1, "end": 2}}}},
                                  {"destinationNamedPort": "web"}]}]}}))
        .unwrap();
        let spec = cnp.spec.unwrap();
        assert_eq!(spec.tier.as_deref(), Some("Baseline"));
        let rule = &spec.egress.unwrap()[0];
        assert_eq!(rule.to.as_ref().unwrap().len(), 3);
        assert_eq!(
            rule.protocols.as_ref().unwrap()[1]
                .destination_named_port
                .as_deref(),
            Some("web")
        );
        let anp: AdminNetworkPolicy = serde_json::from_value(json!({
            "metadata": {"name": "a"},
            "spec": {"priority": 3, "subject": {"namespaces": {}},
                "ingress": [{"action": "Allow", "from": [{"namespaces": {}}],
                    "ports": [{"portNumber": {"port": 80}}, {"portRange": {"protocol": "UDP", "start": 1, "end": 9}},
                              {"namedPort": "dns"}]}]}}))
        .unwrap();
        let ports = anp.spec.unwrap().ingress.unwrap()[0].ports.clone().unwrap();
        assert_eq!(ports[0].port_number.as_ref().unwrap().port, Some(80));
        assert_eq!(ports[1].port_range.as_ref().unwrap().end, Some(9));
        assert_eq!(ports[2].named_port.as_deref(), Some("dns"));
    }
}
