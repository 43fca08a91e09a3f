//! A proposed state over the current one: objects of the proposal add to, or replace, those
//! of the same kind, namespace and name; named objects can be deleted (pure).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::Metadata;

use super::workloads::{kind_name, stand_in_name};
use super::Inventory;

/// `proposed` over `current`: each object of `proposed` replaces the object of the same kind,
/// namespace and name in `current`, or is added. Workloads must already stand in `pods`
/// (their stand-in names carry their kind, so a Deployment replaces only a Deployment).
pub fn overlay(current: &mut Inventory, proposed: Inventory) {
    replace(&mut current.namespaces, proposed.namespaces);
    replace(&mut current.nodes, proposed.nodes);
    replace(&mut current.pods, proposed.pods);
    replace(&mut current.services, proposed.services);
    replace(&mut current.endpoint_slices, proposed.endpoint_slices);
    replace(&mut current.network_policies, proposed.network_policies);
    replace(&mut current.workloads, proposed.workloads);
    let (now, next) = (&mut current.cluster_policies, proposed.cluster_policies);
    replace_by_name(
        &mut now.cluster_network_policies,
        next.cluster_network_policies,
        |p| &p.metadata,
    );
    replace_by_name(
        &mut now.admin_network_policies,
        next.admin_network_policies,
        |p| &p.metadata,
    );
    replace_by_name(
        &mut now.baseline_admin_network_policies,
        next.baseline_admin_network_policies,
        |p| &p.metadata,
    );
    now.undecodable.extend(next.undecodable);
    for cni in next.cni_policies {
        if !now.cni_policies.contains(&cni) {
            now.cni_policies.push(cni);
        }
    }
}

/// [`replace`] for the cluster-scoped policy types, which carry `metadata` without the
/// `k8s_openapi::Metadata` trait.
fn replace_by_name<T>(current: &mut Vec<T>, proposed: Vec<T>, meta: fn(&T) -> &ObjectMeta) {
    for object in proposed {
        let k = meta(&object).name.clone();
        match current.iter().position(|o| meta(o).name == k) {
            Some(i) => current[i] = object,
            None => current.push(object),
        }
    }
}

fn key(meta: &ObjectMeta) -> (Option<&str>, Option<&str>) {
    (meta.namespace.as_deref(), meta.name.as_deref())
}

fn replace<T: Metadata<Ty = ObjectMeta>>(current: &mut Vec<T>, proposed: Vec<T>) {
    for object in proposed {
        let k = key(object.metadata());
        match current.iter().position(|o| key(o.metadata()) == k) {
            Some(i) => current[i] = object,
            None => current.push(object),
        }
    }
}

/// An object to delete: `KIND/NAMESPACE/NAME`, or `KIND/NAME` for a Namespace or a Node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectRef {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl std::str::FromStr for ObjectRef {
    type Err = String;
    fn from_str(s: &str) -> Result<ObjectRef, String> {
        let parts: Vec<&str> = s.split('/').collect();
        let bad = || {
            format!(
                "{s:?}: expected KIND/NAMESPACE/NAME (e.g. NetworkPolicy/shop/web), or \
                 KIND/NAME for Namespace, Node and the cluster-scoped policy kinds"
            )
        };
        if parts.iter().any(|p| p.is_empty()) {
            return Err(bad());
        }
        let kind = canonical_kind(parts[0]).ok_or_else(|| {
            format!(
                "{s:?}: unknown kind {:?} (NetworkPolicy, Pod, Namespace, Node, Service, \
                 EndpointSlice or a workload kind)",
                parts[0]
            )
        })?;
        let cluster_scoped = matches!(
            kind,
            "Namespace"
                | "Node"
                | "ClusterNetworkPolicy"
                | "AdminNetworkPolicy"
                | "BaselineAdminNetworkPolicy"
        );
        match (parts.len(), cluster_scoped) {
            (2, true) => Ok(ObjectRef {
                kind: kind.into(),
                namespace: None,
                name: parts[1].into(),
            }),
            (3, false) => Ok(ObjectRef {
                kind: kind.into(),
                namespace: Some(parts[1].into()),
                name: parts[2].into(),
            }),
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{}/{ns}/{}", self.kind, self.name),
            None => write!(f, "{}/{}", self.kind, self.name),
        }
    }
}

fn canonical_kind(kind: &str) -> Option<&'static str> {
    const KINDS: [&str; 16] = [
        "NetworkPolicy",
        "ClusterNetworkPolicy",
        "AdminNetworkPolicy",
        "BaselineAdminNetworkPolicy",
        "Pod",
        "Namespace",
        "Node",
        "Service",
        "EndpointSlice",
        "Deployment",
        "StatefulSet",
        "DaemonSet",
        "ReplicaSet",
        "Job",
        "CronJob",
        "PodTemplate",
    ];
    KINDS.into_iter().find(|k| k.eq_ignore_ascii_case(kind))
}

/// Deletes an object; false when `inventory` has no such object.
pub fn delete(inventory: &mut Inventory, object: &ObjectRef) -> bool {
    fn remove<T: Metadata<Ty = ObjectMeta>>(v: &mut Vec<T>, ns: Option<&str>, name: &str) -> bool {
        let before = v.len();
        v.retain(|o| key(o.metadata()) != (ns, Some(name)));
        v.len() != before
    }
    let ns = object.namespace.as_deref();
    let name = object.name.as_str();
    match object.kind.as_str() {
        "NetworkPolicy" => remove(&mut inventory.network_policies, ns, name),
        "Pod" => remove(&mut inventory.pods, ns, name),
        "Namespace" => remove(&mut inventory.namespaces, None, name),
        "Node" => remove(&mut inventory.nodes, None, name),
        "ClusterNetworkPolicy" | "AdminNetworkPolicy" | "BaselineAdminNetworkPolicy" => {
            let cp = &mut inventory.cluster_policies;
            let before = cp.len();
            match object.kind.as_str() {
                "ClusterNetworkPolicy" => cp
                    .cluster_network_policies
                    .retain(|p| p.metadata.name.as_deref() != Some(name)),
                "AdminNetworkPolicy" => cp
                    .admin_network_policies
                    .retain(|p| p.metadata.name.as_deref() != Some(name)),
                _ => cp
                    .baseline_admin_network_policies
                    .retain(|p| p.metadata.name.as_deref() != Some(name)),
            }
            cp.len() != before
        }
        "Service" => remove(&mut inventory.services, ns, name),
        "EndpointSlice" => remove(&mut inventory.endpoint_slices, ns, name),
        workload => match kind_name(workload) {
            Some(slug) => {
                let stand_in = stand_in_name(slug, name);
                remove(&mut inventory.pods, ns, &stand_in)
                    | remove(&mut inventory.workloads, ns, &stand_in)
            }
            None => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::snapshot;

    fn inventory(yaml: &str) -> Inventory {
        let (mut inv, errors) = snapshot::parse(yaml, "t").unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        crate::inventory::sources::with_workloads_as_pods(&mut inv);
        inv
    }

    fn policy_names(inv: &Inventory) -> Vec<String> {
        inv.network_policies
            .iter()
            .map(|p| {
                let m = &p.metadata;
                format!(
                    "{}/{}",
                    m.namespace.clone().unwrap(),
                    m.name.clone().unwrap()
                )
            })
            .collect()
    }

    #[test]
    fn proposed_objects_replace_those_of_the_same_kind_namespace_and_name() {
        let mut current = inventory(
            "kind: NetworkPolicy\nmetadata: {namespace: a, name: p}\nspec: {podSelector: {}}\n---\n\
             kind: NetworkPolicy\nmetadata: {namespace: b, name: p}\nspec: {podSelector: {}}\n---\n\
             kind: Deployment\nmetadata: {namespace: a, name: web}\nspec: {template: {metadata: {labels: {v: '1'}}}}\n",
        );
        let proposed = inventory(
            "kind: NetworkPolicy\nmetadata: {namespace: a, name: p}\nspec: {podSelector: {matchLabels: {x: y}}}\n---\n\
             kind: NetworkPolicy\nmetadata: {namespace: a, name: q}\nspec: {podSelector: {}}\n---\n\
             kind: StatefulSet\nmetadata: {namespace: a, name: web}\nspec: {template: {metadata: {labels: {v: '2'}}}}\n",
        );
        overlay(&mut current, proposed);
        assert_eq!(policy_names(&current), ["a/p", "b/p", "a/q"]);
        let replaced = current.network_policies[0].spec.as_ref().unwrap();
        assert!(replaced
            .pod_selector
            .as_ref()
            .unwrap()
            .match_labels
            .is_some());
        // A StatefulSet of the same name is another object.
        assert_eq!(current.pods.len(), 2);

        let del: ObjectRef = "networkpolicy/b/p".parse().unwrap();
        assert!(delete(&mut current, &del));
        assert!(!delete(&mut current, &del), "already gone");
        assert!(delete(&mut current, &"Deployment/a/web".parse().unwrap()));
        assert_eq!(policy_names(&current), ["a/p", "a/q"]);
        assert_eq!(
            current.pods[0].metadata.name.as_deref(),
            Some("statefulset/web")
        );
    }

    #[test]
    fn object_refs_name_kind_namespace_and_name() {
        assert!("NetworkPolicy/p".parse::<ObjectRef>().is_err());
        assert!("Namespace/a/b".parse::<ObjectRef>().is_err());
        assert!("Secret/a/b".parse::<ObjectRef>().is_err());
        assert!("NetworkPolicy//p".parse::<ObjectRef>().is_err());
        let ns: ObjectRef = "namespace/shop".parse().unwrap();
        assert_eq!(ns.to_string(), "Namespace/shop");
    }

    #[test]
    fn cluster_scoped_policies_are_replaced_and_deleted_by_kind_and_name() {
        let cnp = |name: &str, priority: u32| {
            format!(
                "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\n\
                 metadata: {{name: {name}}}\nspec: {{tier: Admin, priority: {priority}, \
                 subject: {{namespaces: {{}}}}, ingress: [{{action: Deny, from: [{{namespaces: {{}}}}]}}]}}\n"
            )
        };
        let anp = "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\n\
                   metadata: {name: tenants}\nspec: {priority: 5, subject: {namespaces: {}}, \
                   ingress: [{action: Pass, from: [{namespaces: {}}]}]}\n";
        let mut current = inventory(&format!("{}---\n{}---\n{anp}", cnp("a", 10), cnp("b", 20)));
        overlay(
            &mut current,
            inventory(&format!("{}---\n{}", cnp("a", 30), cnp("c", 40))),
        );
        let cnps = &current.cluster_policies.cluster_network_policies;
        let summary: Vec<(String, Option<i64>)> = cnps
            .iter()
            .map(|p| {
                let priority = p.spec.as_ref().and_then(|s| s.priority);
                (p.metadata.name.clone().unwrap_or_default(), priority)
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("a".into(), Some(30)),
                ("b".into(), Some(20)),
                ("c".into(), Some(40))
            ],
            "a replaced in place, c added, b kept"
        );
        assert_eq!(current.cluster_policies.admin_network_policies.len(), 1);

        let del: ObjectRef = "ClusterNetworkPolicy/b".parse().unwrap();
        assert!(delete(&mut current, &del));
        assert!(!delete(&mut current, &del), "already gone");
        assert!(delete(
            &mut current,
            &"adminnetworkpolicy/tenants".parse().unwrap()
        ));
        assert_eq!(current.cluster_policies.len(), 2);
        assert!("ClusterNetworkPolicy/ns/b".parse::<ObjectRef>().is_err());
    }
}
