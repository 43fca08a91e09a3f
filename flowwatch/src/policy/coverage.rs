//! Coverage: which namespaces and pods no policy protects, and which policies protect nothing.

use serde::Serialize;

use super::compile::Direction;
use super::engine::PolicyEngine;
use super::tiered::ClusterTier;
use super::verdict::Tier;

/// Per namespace: how many (valid) policies it has and whether it has a default deny.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NamespaceCoverage {
    pub namespace: String,
    pub policies: usize,
    /// Every pod of the namespace, present and future, is isolated for ingress (a policy with
    /// an empty podSelector has the Ingress type) and no such policy allows all ingress
    /// unconditionally (a rule without peers and without ports).
    pub ingress_default_deny: bool,
    pub egress_default_deny: bool,
    /// Cluster-scoped policies selecting at least one live pod of the namespace
    /// (`Kind name`), in evaluation order.
    pub cluster_policies: Vec<String>,
}

/// Pods that policies cannot tell apart (same namespace, labels and named ports: usually the
/// replicas of one workload) and the tiers that select them per direction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WorkloadCoverage {
    pub namespace: String,
    /// Live pods with their own network, sorted.
    pub pods: Vec<String>,
    /// Tiers with a policy selecting these pods for ingress (`admin`, `networkpolicy`,
    /// `baseline`), in evaluation order; empty: nothing governs their ingress.
    pub ingress: Vec<Tier>,
    pub egress: Vec<Tier>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Coverage {
    pub namespaces: Vec<NamespaceCoverage>,
    /// Live pods with their own network that no Ingress policy selects (`namespace/name`).
    pub pods_without_ingress_policy: Vec<String>,
    pub pods_without_egress_policy: Vec<String>,
    /// Valid policies whose podSelector selects no live pod of their namespace.
    pub policies_selecting_no_pod: Vec<String>,
    /// Invalid policies, left out of everything above.
    pub skipped_policies: Vec<String>,
    /// Per workload: the tiers selecting it.
    pub workloads: Vec<WorkloadCoverage>,
    /// Valid cluster-scoped policies whose subject selects no live pod (`Kind name`).
    pub cluster_policies_selecting_no_pod: Vec<String>,
    /// Invalid cluster-scoped policies (`Kind name`), left out of everything above.
    pub skipped_cluster_policies: Vec<String>,
    /// CNI-specific policy objects (not evaluated), counted by kind.
    pub cni_policies: std::collections::BTreeMap<String, usize>,
}

impl Coverage {
    pub fn namespaces_without_policy(&self) -> impl Iterator<Item = &str> {
        self.namespaces
            .iter()
            .filter(|n| n.policies == 0)
            .map(|n| n.namespace.as_str())
    }

    /// Namespaces lacking a default deny in at least one direction, with the directions.
    pub fn namespaces_without_default_deny(&self) -> impl Iterator<Item = (&str, Vec<Direction>)> {
        self.namespaces.iter().filter_map(|n| {
            let mut missing = Vec::new();
            if !n.ingress_default_deny {
                missing.push(Direction::Ingress);
            }
            if !n.egress_default_deny {
                missing.push(Direction::Egress);
            }
            (!missing.is_empty()).then_some((n.namespace.as_str(), missing))
        })
    }
}

impl PolicyEngine {
    pub fn coverage(&self) -> Coverage {
        let cluster = &self.cluster;
        let mut namespaces: Vec<NamespaceCoverage> = cluster
            .namespaces
            .iter()
            .map(|ns| NamespaceCoverage {
                namespace: ns.name.clone(),
                policies: 0,
                ingress_default_deny: false,
                egress_default_deny: false,
                cluster_policies: Vec::new(),
            })
            .collect();
        for ns in &self.policy_ns {
            namespaces[*ns as usize].policies += 1;
        }
        for (i, ns) in namespaces.iter_mut().enumerate() {
            for dir in [Direction::Ingress, Direction::Egress] {
                let everything: Vec<_> = self
                    .policies
                    .iter()
                    .enumerate()
                    .filter(|(pid, p)| {
                        self.policy_ns[*pid] as usize == i && p.pod_selector.is_everything()
                    })
                    .filter_map(|(_, p)| p.rules(dir))
                    .collect();
                let isolates = !everything.is_empty();
                let allows_all = everything
                    .iter()
                    .flat_map(|rules| rules.iter())
                    .any(|r| r.peers.is_empty() && r.ports.is_empty());
                let deny = isolates && !allows_all;
                match dir {
                    Direction::Ingress => ns.ingress_default_deny = deny,
                    Direction::Egress => ns.egress_default_deny = deny,
                }
            }
        }

        let mut selected_some = vec![false; self.policies.len()];
        let mut tier_selected_some = vec![false; self.tiers.policies.len()];
        let mut ns_tier: Vec<Vec<bool>> =
            vec![vec![false; self.tiers.policies.len()]; cluster.namespaces.len()];
        let mut workloads: Vec<Option<WorkloadCoverage>> = Vec::new();
        workloads.resize_with(self.identities.len(), || None);
        let mut pods_without_ingress_policy = Vec::new();
        let mut pods_without_egress_policy = Vec::new();
        for (id, pod) in cluster.pods.iter().enumerate() {
            if pod.terminated || pod.host_network {
                continue;
            }
            let identity_id = self.pod_identity[id] as usize;
            let identity = &self.identities[identity_id];
            let tiers = &self.tiers.selection[identity_id];
            let workload = workloads[identity_id].get_or_insert_with(|| {
                let tiers_of = |dir| {
                    let mut t = Vec::new();
                    if !tiers.of(ClusterTier::Admin, dir).is_empty() {
                        t.push(Tier::Admin);
                    }
                    if !identity.selecting(dir).is_empty() {
                        t.push(Tier::NetworkPolicy);
                    }
                    if !tiers.of(ClusterTier::Baseline, dir).is_empty() {
                        t.push(Tier::Baseline);
                    }
                    t
                };
                WorkloadCoverage {
                    namespace: cluster.namespaces[pod.ns as usize].name.clone(),
                    pods: Vec::new(),
                    ingress: tiers_of(Direction::Ingress),
                    egress: tiers_of(Direction::Egress),
                }
            });
            workload.pods.push(pod.name.to_string());
            for tier in [ClusterTier::Admin, ClusterTier::Baseline] {
                for dir in [Direction::Ingress, Direction::Egress] {
                    for &pid in tiers.of(tier, dir) {
                        tier_selected_some[pid as usize] = true;
                        ns_tier[pod.ns as usize][pid as usize] = true;
                    }
                }
            }
            for &pid in identity.ingress.iter().chain(identity.egress.iter()) {
                selected_some[pid as usize] = true;
            }
            let label = cluster.pod_label(id as u32);
            if identity.ingress.is_empty() {
                pods_without_ingress_policy.push(label.clone());
            }
            if identity.egress.is_empty() {
                pods_without_egress_policy.push(label);
            }
        }
        // A policy with neither direction (cannot happen after defaulting) or whose selected
        // pods are all terminated counts as selecting nothing.
        let mut policies_selecting_no_pod: Vec<String> = self
            .policies
            .iter()
            .zip(&selected_some)
            .filter(|(_, selected)| !**selected)
            .map(|(p, _)| p.key.to_string())
            .collect();

        for (ns, selected) in namespaces.iter_mut().zip(&ns_tier) {
            ns.cluster_policies = self
                .tiers
                .policies
                .iter()
                .zip(selected)
                .filter(|(_, s)| **s)
                .map(|(p, _)| format!("{} {}", p.kind.as_str(), p.name))
                .collect();
        }
        let cluster_policies_selecting_no_pod = self
            .tiers
            .policies
            .iter()
            .zip(&tier_selected_some)
            .filter(|(_, s)| !**s)
            .map(|(p, _)| format!("{} {}", p.kind.as_str(), p.name))
            .collect();
        let mut workloads: Vec<WorkloadCoverage> = workloads.into_iter().flatten().collect();
        for w in &mut workloads {
            w.pods.sort();
        }
        workloads.sort_by(|a, b| (&a.namespace, &a.pods).cmp(&(&b.namespace, &b.pods)));
        namespaces.sort_by(|a, b| a.namespace.cmp(&b.namespace));
        pods_without_ingress_policy.sort();
        pods_without_egress_policy.sort();
        policies_selecting_no_pod.sort();
        Coverage {
            namespaces,
            pods_without_ingress_policy,
            pods_without_egress_policy,
            policies_selecting_no_pod,
            skipped_policies: self.skipped_policies().map(str::to_string).collect(),
            workloads,
            cluster_policies_selecting_no_pod,
            skipped_cluster_policies: self.tiers.skipped.iter().map(|s| s.label.clone()).collect(),
            cni_policies: self.cni_policy_counts().clone(),
        }
    }
}
