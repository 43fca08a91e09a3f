//! The cluster-scoped policies of an engine, compiled and indexed: every valid policy of both
//! API versions in evaluation order, which of them select each pod identity per direction,
//! and for every pod peer and node peer of their rules the identities / nodes it selects.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use super::allowance::BitSet;
use super::compile::Direction;
use super::engine::{Identity, IdentityId};
use super::selector::Selector;
use super::tiered::{
    compile_anp, compile_banp, compile_cnp, ClusterTier, Compiled, PeerIds, TierPeer, TierPolicy,
};
use super::verdict::DecidedBy;
use crate::inventory::cluster_policy::ClusterPolicies;
use crate::inventory::hash::FastMap;
use crate::inventory::index::{ClusterIndex, NodeId, NsId};
use crate::inventory::ObjectError;

pub(crate) type TierPolicyId = u32;

/// A cluster policy left out (invalid, or not decodable), as `Kind name`.
#[derive(Debug)]
pub(crate) struct SkippedClusterPolicy {
    pub label: String,
}

/// Per identity: the cluster policies selecting it that have rules of a direction, in
/// evaluation order, per tier.
#[derive(Debug, Default)]
pub(crate) struct TierSelection {
    /// [admin ingress, admin egress, baseline ingress, baseline egress]
    lists: [Vec<TierPolicyId>; 4],
}

impl TierSelection {
    fn slot(tier: ClusterTier, dir: Direction) -> usize {
        (match tier {
            ClusterTier::Admin => 0,
            ClusterTier::Baseline => 2,
        }) + match dir {
            Direction::Ingress => 0,
            Direction::Egress => 1,
        }
    }

    pub fn of(&self, tier: ClusterTier, dir: Direction) -> &[TierPolicyId] {
        &self.lists[Self::slot(tier, dir)]
    }

    pub fn is_empty(&self, dir: Direction) -> bool {
        self.of(ClusterTier::Admin, dir).is_empty()
            && self.of(ClusterTier::Baseline, dir).is_empty()
    }
}

#[derive(Debug, Default)]
pub(crate) struct TierIndex {
    /// Valid policies, sorted by (tier, priority, name, kind).
    pub policies: Vec<TierPolicy>,
    pub skipped: Vec<SkippedClusterPolicy>,
    /// Per identity (same numbering as the engine's identities).
    pub selection: Vec<TierSelection>,
    /// Per pod peer id: the identities it selects.
    pub pod_sets: Vec<Arc<BitSet>>,
    /// Per node peer id: the nodes it selects.
    pub node_sets: Vec<BitSet>,
    /// Node `ExternalIP` addresses (not the node by address, but `nodes` peers match them).
    pub external_node_ips: FastMap<IpAddr, NodeId>,
    /// Per policy: each rule as a side's `decided_by` (ingress rules, egress rules), shared by
    /// every verdict it decides.
    pub decided: Vec<DecidedByRules>,
}

/// One policy's rules as `decided_by` values: (ingress rules, egress rules).
pub type DecidedByRules = (Vec<Arc<DecidedBy>>, Vec<Arc<DecidedBy>>);

impl TierIndex {
    pub fn build(
        cluster: &ClusterIndex,
        identities: &[Identity],
        objects: &ClusterPolicies,
        errors: &mut Vec<ObjectError>,
    ) -> TierIndex {
        let mut index = TierIndex::default();
        if objects.is_empty() {
            index.selection = (0..identities.len())
                .map(|_| TierSelection::default())
                .collect();
            return index;
        }
        let mut ids = PeerIds::default();
        let mut seen: HashSet<(&'static str, &str)> = HashSet::new();
        // Objects that did not decode are only reported as skipped (the loader said why); a
        // good copy listed elsewhere wins over them.
        let mut compiled: Vec<(&'static str, &str, Compiled)> = Vec::new();
        for (i, p) in objects.cluster_network_policies.iter().enumerate() {
            let name = p.metadata.name.as_deref().unwrap_or_default();
            compiled.push(("ClusterNetworkPolicy", name, compile_cnp(p, i, &mut ids)));
        }
        for (i, p) in objects.admin_network_policies.iter().enumerate() {
            let name = p.metadata.name.as_deref().unwrap_or_default();
            compiled.push(("AdminNetworkPolicy", name, compile_anp(p, i, &mut ids)));
        }
        for (i, p) in objects.baseline_admin_network_policies.iter().enumerate() {
            let name = p.metadata.name.as_deref().unwrap_or_default();
            compiled.push((
                "BaselineAdminNetworkPolicy",
                name,
                compile_banp(p, i, &mut ids),
            ));
        }
        for (kind, name, c) in compiled {
            if !name.is_empty() && !seen.insert((kind, name)) {
                errors.push(ObjectError {
                    object: format!("{kind} {name}"),
                    field: None,
                    message: "listed twice; the first copy is used".into(),
                });
                continue;
            }
            errors.extend(c.warnings);
            match c.policy {
                Ok(p) => index.policies.push(p),
                Err(e) => {
                    index.skipped.push(SkippedClusterPolicy {
                        label: e.object.clone(),
                    });
                    errors.push(e);
                }
            }
        }
        for (kind, name) in &objects.undecodable {
            if !seen.contains(&(kind.as_str(), name.as_str())) {
                index.skipped.push(SkippedClusterPolicy {
                    label: format!("{kind} {name}"),
                });
            }
        }
        index
            .policies
            .sort_by(|a, b| a.order_key().cmp(&b.order_key()));

        index.decided = index
            .policies
            .iter()
            .map(|p| {
                let of = |rules: &[super::tiered::TierRule]| {
                    rules
                        .iter()
                        .map(|r| {
                            Arc::new(DecidedBy {
                                kind: p.kind,
                                name: p.name.clone(),
                                rule: Some(r.id()),
                                action: r.action,
                            })
                        })
                        .collect()
                };
                (of(&p.ingress), of(&p.egress))
            })
            .collect();
        index.selection = select(cluster, identities, &index.policies);
        index.pod_sets = pod_sets(cluster, identities, &index.policies, ids.pods);
        index.node_sets = node_sets(cluster, &index.policies, ids.nodes);
        for (id, node) in cluster.nodes.iter().enumerate() {
            for ip in &node.external_addresses {
                index.external_node_ips.insert(*ip, id as NodeId);
            }
        }
        index
    }
}

/// Where CNI-specific policy objects may apply: every namespace when a cluster-wide one
/// exists, else the namespaces of the namespaced ones; nowhere when declared irrelevant.
#[derive(Debug, Default)]
pub(crate) struct CniIndex {
    pub counts: std::collections::BTreeMap<String, usize>,
    everywhere: bool,
    namespaces: Vec<bool>,
}

impl CniIndex {
    pub fn build(
        cluster: &ClusterIndex,
        objects: &ClusterPolicies,
        options: super::PolicyOptions,
    ) -> CniIndex {
        let mut index = CniIndex::default();
        for p in &objects.cni_policies {
            *index.counts.entry(p.kind.clone()).or_default() += 1;
        }
        if !options.cni_policies_relevant {
            return index;
        }
        index.namespaces = vec![false; cluster.namespaces.len()];
        for p in &objects.cni_policies {
            match &p.namespace {
                None => index.everywhere = true,
                Some(ns) => {
                    if let Some(id) = cluster.namespace_id(ns) {
                        index.namespaces[id as usize] = true;
                    }
                }
            }
        }
        index
    }

    #[inline]
    pub fn affects(&self, ns: NsId) -> bool {
        self.everywhere || self.namespaces.get(ns as usize).copied().unwrap_or(false)
    }
}

/// Identities per namespace.
fn by_namespace(cluster: &ClusterIndex, identities: &[Identity]) -> Vec<Vec<IdentityId>> {
    let mut by_ns: Vec<Vec<IdentityId>> = vec![Vec::new(); cluster.namespaces.len()];
    for (id, identity) in identities.iter().enumerate() {
        by_ns[cluster.pod(identity.pod).ns as usize].push(id as IdentityId);
    }
    by_ns
}

/// The identities a (namespace selector, pod selector) pair selects, namespaces first.
fn selected(
    cluster: &ClusterIndex,
    identities: &[Identity],
    by_ns: &[Vec<IdentityId>],
    namespaces: &Selector,
    pods: &Selector,
    mut each: impl FnMut(IdentityId),
) {
    for (ns, info) in cluster.namespaces.iter().enumerate() {
        if !namespaces.matches(&info.labels) {
            continue;
        }
        for &identity in &by_ns[ns as NsId as usize] {
            if pods.matches(&cluster.pod(identities[identity as usize].pod).labels) {
                each(identity);
            }
        }
    }
}

fn select(
    cluster: &ClusterIndex,
    identities: &[Identity],
    policies: &[TierPolicy],
) -> Vec<TierSelection> {
    let by_ns = by_namespace(cluster, identities);
    let mut selection: Vec<TierSelection> = (0..identities.len())
        .map(|_| TierSelection::default())
        .collect();
    for (pid, p) in policies.iter().enumerate() {
        let dirs: Vec<Direction> = [Direction::Ingress, Direction::Egress]
            .into_iter()
            .filter(|d| !p.rules(*d).is_empty())
            .collect();
        if dirs.is_empty() {
            continue;
        }
        selected(
            cluster,
            identities,
            &by_ns,
            &p.subject_namespaces,
            &p.subject_pods,
            |identity| {
                for &d in &dirs {
                    selection[identity as usize].lists[TierSelection::slot(p.tier, d)]
                        .push(pid as TierPolicyId);
                }
            },
        );
    }
    selection
}

fn pod_sets(
    cluster: &ClusterIndex,
    identities: &[Identity],
    policies: &[TierPolicy],
    count: u32,
) -> Vec<Arc<BitSet>> {
    let by_ns = by_namespace(cluster, identities);
    // Every peer without pods of its own shares one empty set until it gets its own.
    let empty = Arc::new(BitSet::default());
    let mut sets = vec![empty; count as usize];
    let mut computed: HashMap<(&Selector, &Selector), Arc<BitSet>> = HashMap::new();
    let peers = policies
        .iter()
        .flat_map(|p| p.ingress.iter().chain(p.egress.iter()))
        .flat_map(|r| r.peers.iter());
    for peer in peers {
        let TierPeer::Pods {
            namespaces,
            pods,
            id,
        } = peer
        else {
            continue;
        };
        let set = computed
            .entry((namespaces, pods))
            .or_insert_with(|| {
                let mut set = BitSet::with_capacity(identities.len());
                selected(cluster, identities, &by_ns, namespaces, pods, |i| {
                    set.insert(i);
                });
                Arc::new(set)
            })
            .clone();
        if let Some(slot) = sets.get_mut(*id as usize) {
            *slot = set;
        }
    }
    sets
}

fn node_sets(cluster: &ClusterIndex, policies: &[TierPolicy], count: u32) -> Vec<BitSet> {
    let mut sets = vec![BitSet::default(); count as usize];
    let peers = policies
        .iter()
        .flat_map(|p| p.ingress.iter().chain(p.egress.iter()))
        .flat_map(|r| r.peers.iter());
    for peer in peers {
        let TierPeer::Nodes { selector, id } = peer else {
            continue;
        };
        let mut set = BitSet::with_capacity(cluster.nodes.len());
        for (n, node) in cluster.nodes.iter().enumerate() {
            if selector.matches(&node.labels) {
                set.insert(n as NodeId);
            }
        }
        if let Some(slot) = sets.get_mut(*id as usize) {
            *slot = set;
        }
    }
    sets
}
