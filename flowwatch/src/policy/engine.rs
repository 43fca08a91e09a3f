//! The compiled engine: policies indexed by the pods they select, pod peers precomputed as
//! sets of identities, and the per-side evaluation behind a cache of what each identity
//! allows on each port.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use super::allowance::{Allowances, BitSet, PeerTest};
use super::compile::{
    compile_policy, declared_directions, CompiledPolicy, Direction, NamespaceScope, PeerMatcher,
    Rule,
};
use super::explain::{PeerOutcome, PortOutcome};
use super::ports::NamedPort;
use super::selector::{Labels, Selector};
use super::tier_index::{CniIndex, TierIndex};
use super::tier_walk::Walks;
use super::tiered::ClusterTier;
use super::verdict::{
    Action, DecidedBy, FlowVerdict, PolicyKind, RuleId, RuleRef, SideReason, SideResult,
    SideVerdict, Tier, Verdict,
};
use super::{Peer, PolicyError, PolicyOptions};
use crate::inventory::hash::FastMap;
use crate::inventory::index::{AddressOwner, ClusterIndex, NsId, PodId};
use crate::inventory::owners::OwnerIndex;
use crate::inventory::{is_undecodable_policy, Inventory, ObjectError};
use crate::model::Protocol;

pub(crate) type PolicyId = u32;
pub(crate) type IdentityId = u32;

/// Upper bound on cached allowances (identity x port x protocol x direction); past it the
/// cache starts over, which bounds memory when flows hit many distinct ports.
const CACHE_CAPACITY: usize = 1 << 18;
/// And on the rules they hold in total (identities selected by very many policies).
const CACHE_RULES_CAPACITY: usize = 1 << 24;

/// Pods that policies cannot tell apart: same namespace, same labels, same named ports.
/// Every pod of a Deployment usually shares one identity, so verdicts are cached per identity.
#[derive(Debug)]
pub(crate) struct Identity {
    /// One pod of the identity (for its namespace, labels and named ports).
    pub pod: PodId,
    /// Policies of the namespace whose podSelector selects this identity, per direction
    /// (only policies whose policyTypes include that direction).
    pub ingress: Vec<PolicyId>,
    pub egress: Vec<PolicyId>,
}

impl Identity {
    pub fn selecting(&self, dir: Direction) -> &[PolicyId] {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// A policy left out because it is invalid, with the directions it declares.
#[derive(Debug)]
pub(crate) struct SkippedPolicy {
    pub namespace: String,
    /// `namespace/name`
    pub key: String,
    pub ingress: bool,
    pub egress: bool,
}

/// One end of a flow, resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct End {
    pub ep: AddressOwner,
    /// The address this end uses in the flow (absent for a pod without an address).
    pub ip: Option<IpAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct AllowKey {
    dir: Direction,
    identity: IdentityId,
    port: u16,
    protocol: Protocol,
}

/// The rules of one allowance that allow a flow, by position.
#[derive(Debug, Default)]
struct Matched {
    /// Positions below 64.
    mask: u64,
    /// Positions from 64 on (an identity with that many applicable rules is unusual).
    beyond: Vec<usize>,
}

impl Matched {
    fn add(&mut self, i: usize) {
        if i < 64 {
            self.mask |= 1 << i;
        } else {
            self.beyond.push(i);
        }
    }

    fn is_empty(&self) -> bool {
        self.mask == 0 && self.beyond.is_empty()
    }

    fn positions(&self) -> impl Iterator<Item = usize> + '_ {
        (0..64)
            .filter(|i| self.mask & (1 << i) != 0)
            .chain(self.beyond.iter().copied())
    }
}

/// What is cached for one key: the NetworkPolicy allowance and the walks of both cluster tiers.
#[derive(Clone, Copy, Debug)]
struct Slots {
    np: u32,
    admin: u32,
    baseline: u32,
}

/// Allowances computed so far, and the rule lists of flows several rules allow at once.
#[derive(Debug, Default)]
struct VerdictCache {
    index: FastMap<AllowKey, Slots>,
    entries: Allowances,
    walks: Walks,
    /// (entry, bit mask of its allowing rules) -> the rules
    combos: FastMap<(u32, u64), Arc<[RuleRef]>>,
}

impl VerdictCache {
    /// The rules (`policy`, index) behind `matched`, shared between flows: one rule's list is
    /// prebuilt, a combination is built once per allowance and kept.
    fn rule_list(&mut self, entry: u32, matched: &Matched) -> Arc<[RuleRef]> {
        let rules = self.entries.rules_of(entry);
        let collect = |m: &Matched| -> Arc<[RuleRef]> {
            m.positions()
                .flat_map(|i| rules[i].single.iter().cloned())
                .collect::<Vec<_>>()
                .into()
        };
        if !matched.beyond.is_empty() {
            return collect(matched);
        }
        if matched.mask.is_power_of_two() {
            return rules[matched.mask.trailing_zeros() as usize].single.clone();
        }
        self.combos
            .entry((entry, matched.mask))
            .or_insert_with(|| collect(matched))
            .clone()
    }
}

/// The NetworkPolicy engine. Immutable once built; apply a change of the cluster by building a
/// new one (the verdict cache lives and dies with the engine, so it never serves a verdict
/// computed from an older inventory). `Send + Sync`: share it behind an `Arc`.
#[derive(Debug)]
pub struct PolicyEngine {
    pub(crate) options: PolicyOptions,
    /// The cluster as indexed once for enrichment and the engine (shared, not copied).
    pub(crate) cluster: Arc<ClusterIndex>,
    pub(crate) policies: Vec<CompiledPolicy>,
    /// The namespace of each policy.
    pub(crate) policy_ns: Vec<NsId>,
    /// Policies rejected as invalid.
    pub(crate) skipped: Vec<SkippedPolicy>,
    pub(crate) identities: Vec<Identity>,
    pub(crate) pod_identity: Vec<IdentityId>,
    /// Per pod peer (`PeerMatcher::Pods::id`): the identities it selects (peers with the same
    /// selectors share one set).
    pod_sets: Vec<Arc<BitSet>>,
    /// Per policy: its `decided_by` when it isolates a pod and no rule allows the flow.
    np_deny: Vec<Arc<DecidedBy>>,
    /// The cluster-scoped policies (Admin and Baseline tiers).
    pub(crate) tiers: TierIndex,
    /// Where CNI-specific policies may apply.
    pub(crate) cni: CniIndex,
    cache: Mutex<VerdictCache>,
    empty: Arc<[RuleRef]>,
}

impl PolicyEngine {
    /// Compiles an inventory. Invalid objects are reported, one error each, and left out
    /// (an invalid policy is skipped whole, as the API server would have rejected it); the
    /// rest is evaluated.
    pub fn build(
        inventory: &Inventory,
        options: PolicyOptions,
    ) -> (PolicyEngine, Vec<ObjectError>) {
        let mut errors = Vec::new();
        let cluster = ClusterIndex::build(inventory, &OwnerIndex::default(), &mut errors);
        let (engine, policy_errors) =
            PolicyEngine::with_index(Arc::new(cluster), inventory, options);
        errors.extend(policy_errors);
        (engine, errors)
    }

    /// Compiles the policies of `inventory` over `cluster`, the index of the same inventory
    /// (shared with the enrichment index). Returns the engine and the policy objects it had to
    /// skip (the objects the index skipped were reported when it was built).
    pub fn with_index(
        cluster: Arc<ClusterIndex>,
        inventory: &Inventory,
        options: PolicyOptions,
    ) -> (PolicyEngine, Vec<ObjectError>) {
        let mut errors = Vec::new();

        let mut policies = Vec::with_capacity(inventory.network_policies.len());
        let mut skipped = Vec::new();
        let mut next_peer_id = 0;
        // Merged snapshot files can list a policy twice; applied twice, its rules would be
        // listed twice. The first copy that decoded is used (a copy that did not decode is only
        // a placeholder: another file may have the policy whole); else the first.
        let mut chosen: HashMap<(&str, &str), usize> = HashMap::new();
        for (i, np) in inventory.network_policies.iter().enumerate() {
            let key = (
                np.metadata.namespace.as_deref().unwrap_or_default(),
                np.metadata.name.as_deref().unwrap_or_default(),
            );
            match chosen.entry(key) {
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(i);
                }
                std::collections::hash_map::Entry::Occupied(mut slot) => {
                    let kept = &inventory.network_policies[*slot.get()];
                    if is_undecodable_policy(kept) && !is_undecodable_policy(np) {
                        slot.insert(i);
                    }
                }
            }
        }
        for (i, np) in inventory.network_policies.iter().enumerate() {
            let ns = np.metadata.namespace.as_deref().unwrap_or_default();
            let name = np.metadata.name.as_deref().unwrap_or_default();
            // Unnamed policies are rejected by `compile_policy` below.
            if !ns.is_empty() && !name.is_empty() && chosen.get(&(ns, name)) != Some(&i) {
                errors.push(ObjectError {
                    object: format!("NetworkPolicy {ns}/{name}"),
                    field: None,
                    message: "listed twice; one copy is used (the first that could be read)".into(),
                });
                continue;
            }
            // The loader already reported why it did not decode: only record it as skipped.
            let compiled = if is_undecodable_policy(np) {
                None
            } else {
                match compile_policy(np, i, &mut next_peer_id) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        errors.push(e);
                        None
                    }
                }
            };
            if let Some(p) = compiled {
                policies.push(p);
            } else {
                let (ingress, egress) = declared_directions(np);
                skipped.push(SkippedPolicy {
                    key: format!("{ns}/{name}"),
                    namespace: ns.to_string(),
                    ingress,
                    egress,
                });
            }
        }
        let policy_ns: Vec<NsId> = policies
            .iter()
            .map(|p| {
                // The index lists the namespace of every policy.
                cluster.namespace_id(&p.namespace).unwrap_or_default()
            })
            .collect();
        let mut policies_by_ns: Vec<Vec<PolicyId>> = vec![Vec::new(); cluster.namespaces.len()];
        for (id, ns) in policy_ns.iter().enumerate() {
            policies_by_ns[*ns as usize].push(id as PolicyId);
        }

        // Identities, and which policies select each one.
        let mut interned: HashMap<(NsId, &Labels, &[NamedPort]), IdentityId> = HashMap::new();
        let mut identities = Vec::new();
        let mut pod_identity = Vec::with_capacity(cluster.pods.len());
        for (pod_id, pod) in cluster.pods.iter().enumerate() {
            let key = (pod.ns, &*pod.labels, &*pod.ports);
            let id = *interned.entry(key).or_insert_with(|| {
                let mut identity = Identity {
                    pod: pod_id as PodId,
                    ingress: Vec::new(),
                    egress: Vec::new(),
                };
                for &pid in &policies_by_ns[pod.ns as usize] {
                    let p = &policies[pid as usize];
                    if p.pod_selector.matches(&pod.labels) {
                        if p.ingress.is_some() {
                            identity.ingress.push(pid);
                        }
                        if p.egress.is_some() {
                            identity.egress.push(pid);
                        }
                    }
                }
                identities.push(identity);
                (identities.len() - 1) as IdentityId
            });
            pod_identity.push(id);
        }
        drop(interned);
        let pod_sets = pod_peer_sets(&cluster, &policies, &policy_ns, &identities, next_peer_id);
        let np_deny = policies
            .iter()
            .map(|p| {
                Arc::new(DecidedBy {
                    kind: PolicyKind::NetworkPolicy,
                    name: p.key.clone(),
                    rule: None,
                    action: Action::Deny,
                })
            })
            .collect();
        let cni = CniIndex::build(&cluster, &inventory.cluster_policies, options);
        let tiers = TierIndex::build(
            &cluster,
            &identities,
            &inventory.cluster_policies,
            &mut errors,
        );

        let engine = PolicyEngine {
            options,
            cluster,
            policies,
            policy_ns,
            skipped,
            identities,
            pod_identity,
            pod_sets,
            np_deny,
            tiers,
            cni,
            cache: Mutex::new(VerdictCache::default()),
            empty: Arc::from(Vec::new()),
        };
        (engine, errors)
    }

    pub fn options(&self) -> PolicyOptions {
        self.options
    }

    /// Evaluates a flow between two peers named by pod or by address.
    /// Fails only when a `Peer::Pod` names a pod the inventory does not have.
    pub fn evaluate(
        &self,
        src: &Peer,
        dst: &Peer,
        port: u16,
        protocol: Protocol,
    ) -> Result<FlowVerdict, PolicyError> {
        let (src, dst) = self.resolve_pair(src, dst)?;
        Ok(self.evaluate_ends(src, dst, port, protocol))
    }

    /// Evaluates a flow seen on the wire: a pod address is that pod, a node address (or a
    /// host-network pod's) is the node, anything else is external.
    pub fn evaluate_ips(
        &self,
        src: IpAddr,
        dst: IpAddr,
        port: u16,
        protocol: Protocol,
    ) -> FlowVerdict {
        let src = self.resolve_ip(src);
        let dst = self.resolve_ip(dst);
        self.evaluate_ends(src, dst, port, protocol)
    }

    /// Every rule of every valid policy as verdicts name it: (kind, `namespace/name` for a
    /// NetworkPolicy or the name for a cluster policy, direction, rule, action, tier; a
    /// NetworkPolicy rule is its index and `Accept`).
    pub fn rule_keys(&self) -> Vec<(PolicyKind, Arc<str>, Direction, RuleId, Action, Tier)> {
        let mut out = Vec::new();
        for p in &self.policies {
            for (dir, rules) in [
                (Direction::Ingress, &p.ingress),
                (Direction::Egress, &p.egress),
            ] {
                for index in 0..rules.as_ref().map_or(0, Vec::len) {
                    let (kind, rule) = (PolicyKind::NetworkPolicy, RuleId::Index(index));
                    out.push((
                        kind,
                        p.key.clone(),
                        dir,
                        rule,
                        Action::Accept,
                        Tier::NetworkPolicy,
                    ));
                }
            }
        }
        for (policy, (ingress, egress)) in self.tiers.policies.iter().zip(&self.tiers.decided) {
            let tier = match policy.tier {
                ClusterTier::Admin => Tier::Admin,
                ClusterTier::Baseline => Tier::Baseline,
            };
            for (dir, rules) in [(Direction::Ingress, ingress), (Direction::Egress, egress)] {
                for by in rules {
                    if let Some(rule) = &by.rule {
                        let name = by.name.clone();
                        out.push((by.kind, name, dir, rule.clone(), by.action, tier));
                    }
                }
            }
        }
        out
    }

    /// Policies that were rejected as invalid (`namespace/name`), in inventory order.
    pub fn skipped_policies(&self) -> impl Iterator<Item = &str> {
        self.skipped.iter().map(|s| s.key.as_str())
    }

    /// Cluster-scoped policies that were rejected as invalid or did not decode (`Kind name`).
    pub fn skipped_cluster_policies(&self) -> impl Iterator<Item = &str> {
        self.tiers.skipped.iter().map(|s| s.label.as_str())
    }

    /// The skipped policies of one namespace that declare direction `dir`: a verdict of that
    /// direction about a pod of the namespace may differ from what the cluster enforces if the
    /// policy was meant to select it.
    pub fn skipped_policies_in<'a>(
        &'a self,
        namespace: &'a str,
        dir: Direction,
    ) -> impl Iterator<Item = &'a str> {
        self.skipped
            .iter()
            .filter(move |s| {
                s.namespace == namespace
                    && match dir {
                        Direction::Ingress => s.ingress,
                        Direction::Egress => s.egress,
                    }
            })
            .map(|s| s.key.as_str())
    }

    /// The namespace of a peer's pod (`None` for non-pod addresses and unknown pods).
    pub fn namespace_of(&self, peer: &Peer) -> Option<&str> {
        let pod = match peer {
            Peer::Pod { namespace, name } => self.cluster.pod_id(namespace, name)?,
            Peer::Ip(ip) => match self.cluster.endpoint_of(*ip) {
                AddressOwner::Pod(p) | AddressOwner::HostPod(p) => p,
                AddressOwner::Node(_) | AddressOwner::External => return None,
            },
        };
        Some(&self.cluster.namespaces[self.cluster.pod(pod).ns as usize].name)
    }

    /// How many allowances (direction x identity x port x protocol) are cached.
    pub fn cached_results(&self) -> usize {
        self.lock_cache().entries.len()
    }

    pub(crate) fn resolve_ip(&self, ip: IpAddr) -> End {
        let ip = ip.to_canonical();
        End {
            ep: self.cluster.endpoint_of(ip),
            ip: Some(ip),
        }
    }

    /// Resolves both ends. A pod named by name uses its address of the flow's family: the
    /// family of an end given as an address, else the source pod's primary address family.
    pub(crate) fn resolve_pair(&self, src: &Peer, dst: &Peer) -> Result<(End, End), PolicyError> {
        let src_ep = self.resolve_peer(src)?;
        let dst_ep = self.resolve_peer(dst)?;
        let primary = |ep: Option<PodId>| ep.and_then(|p| self.cluster.pod(p).ips.first().copied());
        let family_v6 = [src, dst]
            .iter()
            .find_map(|p| match p {
                Peer::Ip(ip) => Some(ip.to_canonical().is_ipv6()),
                Peer::Pod { .. } => None,
            })
            .or_else(|| primary(src_ep.1).map(|ip| ip.is_ipv6()))
            .or_else(|| primary(dst_ep.1).map(|ip| ip.is_ipv6()));
        let end = |peer: &Peer, (ep, pod): (AddressOwner, Option<PodId>)| -> End {
            let ip = match (peer, pod) {
                (Peer::Ip(ip), _) => Some(ip.to_canonical()),
                (Peer::Pod { .. }, Some(p)) => {
                    let ips = &self.cluster.pod(p).ips;
                    ips.iter()
                        .copied()
                        .find(|ip| Some(ip.is_ipv6()) == family_v6)
                        .or_else(|| family_v6.is_none().then(|| ips.first().copied()).flatten())
                }
                (Peer::Pod { .. }, None) => None,
            };
            End { ep, ip }
        };
        Ok((end(src, src_ep), end(dst, dst_ep)))
    }

    /// The endpoint of a peer, and the pod when it was named by name.
    fn resolve_peer(&self, peer: &Peer) -> Result<(AddressOwner, Option<PodId>), PolicyError> {
        match peer {
            Peer::Ip(ip) => Ok((self.cluster.endpoint_of(*ip), None)),
            Peer::Pod { namespace, name } => {
                let id = self
                    .cluster
                    .pod_id(namespace, name)
                    .ok_or_else(|| PolicyError::UnknownPod(format!("{namespace}/{name}")))?;
                let ep = if self.cluster.pod(id).host_network {
                    AddressOwner::HostPod(id)
                } else {
                    AddressOwner::Pod(id)
                };
                Ok((ep, Some(id)))
            }
        }
    }

    fn lock_cache(&self) -> MutexGuard<'_, VerdictCache> {
        // A panic while holding the lock cannot leave a half-written entry (inserts are
        // atomic from the map's point of view), so a poisoned cache is still sound.
        crate::sync::lock(&self.cache)
    }

    pub(crate) fn evaluate_ends(
        &self,
        src: End,
        dst: End,
        port: u16,
        protocol: Protocol,
    ) -> FlowVerdict {
        let mut cache = self.lock_cache();
        let egress = match src.ep {
            AddressOwner::Pod(p) => self.cni_mark(
                p,
                self.side(&mut cache, Direction::Egress, p, dst, port, protocol),
            ),
            other => self.not_applicable(other),
        };
        let ingress = match dst.ep {
            AddressOwner::Pod(p) => self.cni_mark(
                p,
                self.side(&mut cache, Direction::Ingress, p, src, port, protocol),
            ),
            other => self.not_applicable(other),
        };
        FlowVerdict {
            verdict: Verdict::combine(ingress.verdict, egress.verdict),
            ingress,
            egress,
        }
    }

    /// Marks a side whose pod CNI-specific policies may select (unless declared irrelevant):
    /// flagged, and an `uncovered` side gets the reason `cni_policy_present`.
    #[inline]
    fn cni_mark(&self, pod: PodId, mut side: SideResult) -> SideResult {
        if self.cni.affects(self.cluster.pod(pod).ns) {
            side.cni_policy_present = true;
            if side.verdict == SideVerdict::Uncovered {
                side.reason = SideReason::CniPolicyPresent;
            }
        }
        side
    }

    /// CNI-specific policy objects of the inventory, counted by kind.
    pub fn cni_policy_counts(&self) -> &std::collections::BTreeMap<String, usize> {
        &self.cni.counts
    }

    fn not_applicable(&self, ep: AddressOwner) -> SideResult {
        let reason = match ep {
            AddressOwner::HostPod(_) => SideReason::HostNetwork,
            AddressOwner::Node(_) => SideReason::Node,
            AddressOwner::External | AddressOwner::Pod(_) => SideReason::External,
        };
        self.result(SideVerdict::NotApplicable, reason, None)
    }

    fn result(
        &self,
        verdict: SideVerdict,
        reason: SideReason,
        rules: Option<Arc<[RuleRef]>>,
    ) -> SideResult {
        SideResult {
            verdict,
            reason,
            allowed_by: rules.unwrap_or_else(|| self.empty.clone()),
            tier: match verdict {
                SideVerdict::Uncovered | SideVerdict::NotApplicable => Tier::None,
                SideVerdict::Allowed | SideVerdict::Denied => Tier::NetworkPolicy,
            },
            decided_by: None,
            cni_policy_present: false,
        }
    }

    fn decided(
        &self,
        verdict: SideVerdict,
        reason: SideReason,
        tier: Tier,
        by: Arc<DecidedBy>,
        rules: Option<Arc<[RuleRef]>>,
    ) -> SideResult {
        SideResult {
            verdict,
            reason,
            allowed_by: rules.unwrap_or_else(|| self.empty.clone()),
            tier,
            decided_by: Some(by),
            cni_policy_present: false,
        }
    }

    /// The verdict of one side: `subject` is the pod the policies are evaluated on (the
    /// source for egress, the destination for ingress), `peer` the other end. The tiers in
    /// order: Admin (first matching rule decides; `Pass` leaves the tier), NetworkPolicy (a
    /// selected pod is decided there), Baseline (same walk; `Pass` ends it), else nothing.
    #[allow(clippy::too_many_arguments)]
    fn side(
        &self,
        cache: &mut VerdictCache,
        dir: Direction,
        subject: PodId,
        peer: End,
        port: u16,
        protocol: Protocol,
    ) -> SideResult {
        let identity = self.pod_identity[subject as usize];
        let selecting = self.identities[identity as usize].selecting(dir);
        let tiers = &self.tiers.selection[identity as usize];
        // Loopback is outside every tier (the API exempts a pod reaching its own address).
        // Traffic between a pod and its own node is allowed by NetworkPolicies (their
        // convention), but the cluster tiers decide it as any other: their API has no such
        // exemption, and a `nodes`/`networks` egress peer selects the pod's own node too.
        let exempt = self.always_allowed(subject, peer);
        let no_cluster = tiers.is_empty(dir);
        if let Some(reason) = exempt.filter(|r| *r == SideReason::Loopback || no_cluster) {
            if selecting.is_empty() {
                return self.result(SideVerdict::Uncovered, SideReason::NotSelected, None);
            }
            return self.result(SideVerdict::Allowed, reason, None);
        }
        if selecting.is_empty() && no_cluster {
            return self.result(SideVerdict::Uncovered, SideReason::NotSelected, None);
        }
        let key = AllowKey {
            dir,
            identity,
            port,
            protocol,
        };
        let slots = self.allowance(cache, key, subject);
        let dst_ports = self.destination_ports(dir, subject, peer);
        let mut passed = false;
        if !no_cluster {
            let walk = cache.walks.rules_of(slots.admin);
            if let Some(w) = self.first_match(walk, dir, peer, port, protocol, dst_ports) {
                let by = self.walk_decided(dir, w);
                let verdict = match by.action {
                    Action::Accept => SideVerdict::Allowed,
                    Action::Deny => SideVerdict::Denied,
                    Action::Pass => SideVerdict::Uncovered,
                };
                if verdict != SideVerdict::Uncovered {
                    let (reason, by) = (SideReason::ClusterRule, by.clone());
                    return self.decided(verdict, reason, Tier::Admin, by, None);
                }
                passed = true;
            }
        }
        if !selecting.is_empty() {
            if let Some(reason) = exempt {
                return self.result(SideVerdict::Allowed, reason, None);
            }
            let matched =
                self.matching_rules(&cache.entries, slots.np, peer, port, protocol, dst_ports);
            if matched.is_empty() {
                let by = self.np_deny[selecting[0] as usize].clone();
                return self.decided(
                    SideVerdict::Denied,
                    SideReason::NoRuleMatched,
                    Tier::NetworkPolicy,
                    by,
                    None,
                );
            }
            let first = matched.positions().next().unwrap_or_default();
            let by = cache.entries.rules_of(slots.np)[first].decided.clone();
            let allowed_by = cache.rule_list(slots.np, &matched);
            return self.decided(
                SideVerdict::Allowed,
                SideReason::RuleMatched,
                Tier::NetworkPolicy,
                by,
                Some(allowed_by),
            );
        }
        if !no_cluster {
            let walk = cache.walks.rules_of(slots.baseline);
            if let Some(w) = self.first_match(walk, dir, peer, port, protocol, dst_ports) {
                let by = self.walk_decided(dir, w);
                let verdict = match by.action {
                    Action::Accept => SideVerdict::Allowed,
                    Action::Deny => SideVerdict::Denied,
                    Action::Pass => {
                        return self.result(SideVerdict::Uncovered, SideReason::Passed, None)
                    }
                };
                let (reason, by) = (SideReason::ClusterRule, by.clone());
                return self.decided(verdict, reason, Tier::Baseline, by, None);
            }
        }
        let reason = if passed {
            SideReason::Passed
        } else {
            SideReason::NoRuleDecided
        };
        self.result(SideVerdict::Uncovered, reason, None)
    }

    /// The cached allowance and tier walks of `key`, compiled from the policies selecting the
    /// identity on first use.
    fn allowance(&self, cache: &mut VerdictCache, key: AllowKey, subject: PodId) -> Slots {
        if let Some(e) = cache.index.get(&key) {
            return *e;
        }
        if cache.entries.len() >= CACHE_CAPACITY
            || cache.entries.rules.len() + cache.walks.rule_count() >= CACHE_RULES_CAPACITY
        {
            *cache = VerdictCache::default();
        }
        let selecting = self.identities[key.identity as usize].selecting(key.dir);
        let ports = &self.cluster.pod(subject).ports;
        let np = cache.entries.add(
            selecting.iter().map(|p| &self.policies[*p as usize]),
            key.dir,
            key.port,
            key.protocol,
            ports,
        );
        let tiers = &self.tiers.selection[key.identity as usize];
        let mut walk = |tier| {
            cache.walks.add(
                self,
                tiers.of(tier, key.dir),
                key.dir,
                key.port,
                key.protocol,
                ports,
            )
        };
        let admin = walk(ClusterTier::Admin);
        let baseline = walk(ClusterTier::Baseline);
        let slots = Slots {
            np,
            admin,
            baseline,
        };
        cache.index.insert(key, slots);
        slots
    }

    /// Which rules of an allowance let the flow's peer through.
    fn matching_rules(
        &self,
        allowances: &Allowances,
        entry: u32,
        peer: End,
        port: u16,
        protocol: Protocol,
        dst_ports: &[NamedPort],
    ) -> Matched {
        let mut matched = Matched::default();
        for (i, rule) in allowances.rules_of(entry).iter().enumerate() {
            let peers = allowances.peers_of(rule);
            let peer_ok = peers.is_empty() || peers.iter().any(|t| self.peer_test(t, peer));
            if peer_ok && rule.port_ok(port, protocol, dst_ports) {
                matched.add(i);
            }
        }
        matched
    }

    /// Does a flow's peer pass one peer of a rule?
    #[inline]
    fn peer_test(&self, test: &PeerTest, peer: End) -> bool {
        match test {
            // Only pods with their own network are selected by selectors; a host-network
            // pod's traffic is its node's.
            PeerTest::Pods(set) => match peer.ep {
                AddressOwner::Pod(p) => {
                    self.pod_sets[*set as usize].contains(self.pod_identity[p as usize])
                }
                _ => false,
            },
            PeerTest::Block(block) => {
                if matches!(peer.ep, AddressOwner::Pod(_)) && !self.options.ipblock_matches_pod_ips
                {
                    return false;
                }
                peer.ip.is_some_and(|ip| block.matches(ip))
            }
        }
    }

    /// Flows no policy can block: a pod talking to itself, and traffic between a pod and the
    /// node it runs on (including host-network pods of that node).
    pub(crate) fn always_allowed(&self, subject: PodId, peer: End) -> Option<SideReason> {
        match peer.ep {
            AddressOwner::Pod(p) if p == subject => Some(SideReason::Loopback),
            AddressOwner::Node(_) | AddressOwner::HostPod(_) => {
                let own = self.cluster.pod(subject).node;
                (own.is_some() && self.cluster.node_of(peer.ep) == own)
                    .then_some(SideReason::OwnNode)
            }
            _ => None,
        }
    }

    /// The named container ports of the flow's destination (where a named port resolves).
    /// A host-network pod has none here: its traffic is its node's, and by address it cannot
    /// be told apart from the node (or from other host-network pods of that node), so
    /// resolving on it by name would make by-name and by-address verdicts differ.
    pub(crate) fn destination_ports(
        &self,
        dir: Direction,
        subject: PodId,
        peer: End,
    ) -> &[NamedPort] {
        match (dir, peer.ep) {
            (Direction::Ingress, _) => &self.cluster.pod(subject).ports,
            (Direction::Egress, AddressOwner::Pod(p)) => &self.cluster.pod(p).ports,
            (Direction::Egress, _) => &[],
        }
    }

    /// Which peer of the rule matches (`AnyPeer` when the rule has no peers: it matches
    /// every peer).
    pub(crate) fn rule_peer(&self, policy: PolicyId, rule: &Rule, peer: End) -> PeerOutcome {
        if rule.peers.is_empty() {
            return PeerOutcome::AnyPeer;
        }
        rule.peers
            .iter()
            .position(|m| self.peer_matches(policy, m, peer))
            .map_or(PeerOutcome::NoMatch, PeerOutcome::Matched)
    }

    fn peer_matches(&self, policy: PolicyId, m: &PeerMatcher, peer: End) -> bool {
        match m {
            PeerMatcher::Pods {
                namespaces, pods, ..
            } => {
                // Only pods with their own network are selected by selectors; a host-network
                // pod's traffic is its node's.
                let AddressOwner::Pod(p) = peer.ep else {
                    return false;
                };
                let pod = self.cluster.pod(p);
                let ns_ok = match namespaces {
                    NamespaceScope::Own => pod.ns == self.policy_ns[policy as usize],
                    NamespaceScope::Selected(s) => {
                        s.matches(&self.cluster.namespaces[pod.ns as usize].labels)
                    }
                };
                ns_ok && pods.matches(&pod.labels)
            }
            PeerMatcher::Block(block) => {
                if matches!(peer.ep, AddressOwner::Pod(_)) && !self.options.ipblock_matches_pod_ips
                {
                    return false;
                }
                peer.ip.is_some_and(|ip| block.matches(ip))
            }
        }
    }
}

/// Which port entry of the rule matches (`AnyPort` when the rule has no ports: every port
/// and protocol).
pub(crate) fn rule_port(
    rule: &Rule,
    port: u16,
    protocol: Protocol,
    dst_ports: &[NamedPort],
) -> PortOutcome {
    if rule.ports.is_empty() {
        return PortOutcome::AnyPort;
    }
    rule.ports
        .iter()
        .position(|m| m.matches(port, protocol, dst_ports))
        .map_or(PortOutcome::NoMatch, PortOutcome::Matched)
}

/// A pod peer as far as the identities it selects go: (own namespace when the peer has no
/// namespace selector, namespace selector, pod selector).
type PeerShape<'a> = (Option<NsId>, Option<&'a Selector>, &'a Selector);

/// For every pod peer of every valid policy, the set of identities it selects: namespaces
/// are filtered first (own namespace, or the namespace selector), then the identities of those
/// namespaces by the pod selector. Templated policies repeat the same peers in every namespace
/// (`namespaceSelector: {}` + `podSelector: {app: prometheus}`), so each distinct peer is
/// computed once and shared.
fn pod_peer_sets(
    cluster: &ClusterIndex,
    policies: &[CompiledPolicy],
    policy_ns: &[NsId],
    identities: &[Identity],
    peer_ids: u32,
) -> Vec<Arc<BitSet>> {
    let mut by_ns: Vec<Vec<IdentityId>> = vec![Vec::new(); cluster.namespaces.len()];
    for (id, identity) in identities.iter().enumerate() {
        by_ns[cluster.pod(identity.pod).ns as usize].push(id as IdentityId);
    }
    let empty = Arc::new(BitSet::default());
    let mut sets = vec![empty; peer_ids as usize];
    let mut computed: HashMap<PeerShape, Arc<BitSet>> = HashMap::new();
    for (pid, policy) in policies.iter().enumerate() {
        let rules = policy.ingress.iter().chain(policy.egress.iter()).flatten();
        for peer in rules.flat_map(|r| r.peers.iter()) {
            let PeerMatcher::Pods {
                namespaces,
                pods,
                id,
            } = peer
            else {
                continue;
            };
            let shape = match namespaces {
                NamespaceScope::Own => (Some(policy_ns[pid]), None, pods),
                NamespaceScope::Selected(selector) => (None, Some(selector), pods),
            };
            let set = computed
                .entry(shape)
                .or_insert_with(|| {
                    let mut set = BitSet::with_capacity(identities.len());
                    let mut add_namespace = |ns: usize| {
                        for &identity in &by_ns[ns] {
                            let pod = cluster.pod(identities[identity as usize].pod);
                            if pods.matches(&pod.labels) {
                                set.insert(identity);
                            }
                        }
                    };
                    match namespaces {
                        NamespaceScope::Own => add_namespace(policy_ns[pid] as usize),
                        NamespaceScope::Selected(selector) => {
                            for (ns, info) in cluster.namespaces.iter().enumerate() {
                                if selector.matches(&info.labels) {
                                    add_namespace(ns);
                                }
                            }
                        }
                    }
                    Arc::new(set)
                })
                .clone();
            if let Some(slot) = sets.get_mut(*id as usize) {
                *slot = set;
            }
        }
    }
    sets
}
