//! A structured explanation of a verdict: every policy that selects each side's pod, and for
//! each of its rules which peer and which port entry matched (or that none did).

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use super::compile::Direction;
use super::engine::{rule_port, End, PolicyEngine};
use super::tier_walk::{admits, rule_port as tier_rule_port};
use super::tiered::{Action, ClusterTier, PolicyKind, RuleId, TierPeer};
use super::verdict::{DecidedBy, FlowVerdict, SideReason, SideVerdict, Tier};
use super::{Peer, PolicyError};
use crate::inventory::index::AddressOwner;
use crate::model::Protocol;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "index")]
pub enum PeerOutcome {
    /// The rule lists no peers: every peer.
    AnyPeer,
    /// The peer at this index of `from`/`to` matched (the first one that does).
    Matched(usize),
    NoMatch,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "index")]
pub enum PortOutcome {
    /// The rule lists no ports: every port and protocol.
    AnyPort,
    /// The entry at this index of `ports` matched (the first one that does).
    Matched(usize),
    NoMatch,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleExplanation {
    pub index: usize,
    pub peer: PeerOutcome,
    pub port: PortOutcome,
}

impl RuleExplanation {
    pub fn allows(&self) -> bool {
        self.peer != PeerOutcome::NoMatch && self.port != PortOutcome::NoMatch
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PolicyExplanation {
    #[serde(serialize_with = "super::verdict::serialize_arc_str")]
    pub policy: Arc<str>,
    /// Every rule of the side's direction, in order (empty: the policy only isolates).
    pub rules: Vec<RuleExplanation>,
}

/// What one rule of a cluster policy did in the walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WalkOutcome {
    /// Its peers or ports do not match the flow.
    NoMatch,
    /// It matched and decided the side (Accept or Deny), or left the tier (Pass).
    Decided,
    /// An earlier rule decided (or passed): this one was not reached.
    NotReached,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClusterRuleExplanation {
    pub rule: RuleId,
    pub action: Action,
    pub peer: PeerOutcome,
    pub port: PortOutcome,
    pub outcome: WalkOutcome,
    /// `domainNames` peers are not evaluated (never match), or the rule is a fail-closed deny.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<&'static str>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClusterPolicyExplanation {
    pub kind: PolicyKind,
    #[serde(serialize_with = "super::verdict::serialize_arc_str")]
    pub name: Arc<str>,
    pub priority: u32,
    /// Rules of the side's direction in written order.
    pub rules: Vec<ClusterRuleExplanation>,
    /// Other policies of the same tier selecting the pod with the same priority: the API leaves
    /// their order to implementations; flowwatch orders them by name.
    pub same_priority_as: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SideExplanation {
    pub direction: Direction,
    /// The pod the side is evaluated on (`namespace/name`), when that end is a pod.
    pub pod: Option<String>,
    pub verdict: SideVerdict,
    pub reason: &'static str,
    /// The tier that decided (`none`: no tier did).
    pub tier: Tier,
    pub decided_by: Option<DecidedBy>,
    /// Admin tier policies selecting the pod for this direction, in evaluation order.
    pub admin: Vec<ClusterPolicyExplanation>,
    /// The policies of this direction that select the pod.
    pub policies: Vec<PolicyExplanation>,
    /// Baseline tier policies selecting the pod for this direction, in evaluation order.
    pub baseline: Vec<ClusterPolicyExplanation>,
    /// Invalid policies of the pod's namespace that were skipped.
    pub skipped_policies: Vec<String>,
    /// Invalid cluster-scoped policies (any of them may have selected the pod).
    pub skipped_cluster_policies: Vec<String>,
    /// CNI-specific policies (not evaluated) may select the pod.
    pub cni_policy_present: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// The ends as resolved, e.g. `pod x/a (10.0.0.1)` or `external 203.0.113.9`.
    pub src: String,
    pub dst: String,
    pub port: u16,
    pub protocol: Protocol,
    pub verdict: &'static str,
    pub egress: SideExplanation,
    pub ingress: SideExplanation,
    #[serde(skip)]
    pub flow: FlowVerdict,
}

impl serde::Serialize for Direction {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl PolicyEngine {
    /// Explains the verdict of a flow (same inputs and verdict as [`PolicyEngine::evaluate`]).
    pub fn explain(
        &self,
        src: &Peer,
        dst: &Peer,
        port: u16,
        protocol: Protocol,
    ) -> Result<Explanation, PolicyError> {
        let (s, d) = self.resolve_pair(src, dst)?;
        let flow = self.evaluate_ends(s, d, port, protocol);
        let egress = self.explain_side(Direction::Egress, s, d, port, protocol, &flow);
        let ingress = self.explain_side(Direction::Ingress, d, s, port, protocol, &flow);
        Ok(Explanation {
            src: self.describe(s),
            dst: self.describe(d),
            port,
            protocol,
            verdict: flow.verdict.as_str(),
            egress,
            ingress,
            flow,
        })
    }

    fn describe(&self, end: End) -> String {
        let ip = end.ip.map(|ip| format!(" ({ip})")).unwrap_or_default();
        match end.ep {
            AddressOwner::Pod(p) => format!("pod {}{ip}", self.cluster.pod_label(p)),
            AddressOwner::HostPod(p) => {
                format!("host-network pod {}{ip}", self.cluster.pod_label(p))
            }
            AddressOwner::Node(n) => format!("node {}{ip}", self.cluster.nodes[n as usize].name),
            AddressOwner::External => match end.ip {
                Some(ip) => format!("external {ip}"),
                None => "external".into(),
            },
        }
    }

    fn explain_side(
        &self,
        dir: Direction,
        subject: End,
        peer: End,
        port: u16,
        protocol: Protocol,
        flow: &FlowVerdict,
    ) -> SideExplanation {
        let result = match dir {
            Direction::Ingress => &flow.ingress,
            Direction::Egress => &flow.egress,
        };
        let mut side = SideExplanation {
            direction: dir,
            pod: None,
            verdict: result.verdict,
            reason: result.reason.as_str(),
            tier: result.tier,
            decided_by: result.decided_by.as_deref().cloned(),
            admin: Vec::new(),
            policies: Vec::new(),
            baseline: Vec::new(),
            skipped_policies: Vec::new(),
            skipped_cluster_policies: Vec::new(),
            cni_policy_present: result.cni_policy_present,
        };
        let AddressOwner::Pod(pod) = subject.ep else {
            return side;
        };
        side.pod = Some(self.cluster.pod_label(pod));
        let ns_name = &self.cluster.namespaces[self.cluster.pod(pod).ns as usize].name;
        side.skipped_policies = self
            .skipped_policies_in(ns_name, dir)
            .map(str::to_string)
            .collect();
        side.skipped_cluster_policies =
            self.tiers.skipped.iter().map(|s| s.label.clone()).collect();
        let identity = &self.identities[self.pod_identity[pod as usize] as usize];
        let dst_ports = self.destination_ports(dir, pod, peer);
        // Loopback is outside the cluster tiers (see `side`); own-node traffic is not.
        if self.always_allowed(pod, peer) != Some(SideReason::Loopback) {
            let tiers = &self.tiers.selection[self.pod_identity[pod as usize] as usize];
            let mut reached = true;
            for (tier, out) in [
                (ClusterTier::Admin, &mut side.admin),
                (ClusterTier::Baseline, &mut side.baseline),
            ] {
                if tier == ClusterTier::Baseline
                    && (!identity.selecting(dir).is_empty() || result.tier == Tier::Admin)
                {
                    reached = false;
                }
                let list = tiers.of(tier, dir);
                for &pid in list {
                    let policy = &self.tiers.policies[pid as usize];
                    let same_priority_as = list
                        .iter()
                        .filter(|o| **o != pid)
                        .map(|o| &self.tiers.policies[*o as usize])
                        .filter(|o| o.priority == policy.priority)
                        .map(|o| format!("{} {}", o.kind.as_str(), o.name))
                        .collect();
                    let mut rules = Vec::new();
                    for rule in policy.rules(dir) {
                        let peer_outcome = if rule.deny_all {
                            PeerOutcome::AnyPeer
                        } else {
                            match rule
                                .peers
                                .iter()
                                .position(|p| self.tier_peer_matches(p, peer))
                            {
                                Some(i) => PeerOutcome::Matched(i),
                                None => PeerOutcome::NoMatch,
                            }
                        };
                        let port_outcome = if rule.deny_all {
                            PortOutcome::AnyPort
                        } else {
                            tier_rule_port(rule, port, protocol, dst_ports)
                        };
                        // `admits` is what the cached walk uses; agreeing with it here keeps
                        // explain and evaluate on one definition of a port match.
                        let admitted =
                            admits(rule, dir, port, protocol, &self.cluster.pod(pod).ports)
                                .is_some();
                        let matches = peer_outcome != PeerOutcome::NoMatch
                            && port_outcome != PortOutcome::NoMatch
                            && admitted;
                        let outcome = if !reached {
                            WalkOutcome::NotReached
                        } else if matches {
                            reached = false;
                            WalkOutcome::Decided
                        } else {
                            WalkOutcome::NoMatch
                        };
                        let note = if rule.deny_all {
                            Some(
                                "a peer of unknown shape: fail closed, this rule denies everything",
                            )
                        } else if rule
                            .peers
                            .iter()
                            .any(|p| matches!(p, TierPeer::DomainNames(_)))
                        {
                            Some("domainNames peers are not evaluated (never match)")
                        } else if rule.peers.iter().any(|p| matches!(p, TierPeer::Unknown)) {
                            Some("a peer of unknown shape: fail closed, that peer matches nothing")
                        } else {
                            None
                        };
                        rules.push(ClusterRuleExplanation {
                            rule: rule.id(),
                            action: rule.action,
                            peer: peer_outcome,
                            port: port_outcome,
                            outcome,
                            note,
                        });
                    }
                    out.push(ClusterPolicyExplanation {
                        kind: policy.kind,
                        name: policy.name.clone(),
                        priority: policy.priority,
                        rules,
                        same_priority_as,
                    });
                }
                // An Admin decision (or Pass) ends the Admin tier; the NetworkPolicy tier and
                // Baseline follow only after a Pass or no match.
                if tier == ClusterTier::Admin && result.tier != Tier::Admin {
                    reached = true;
                }
            }
        }
        for &pid in identity.selecting(dir) {
            let policy = &self.policies[pid as usize];
            let rules = policy
                .rules(dir)
                .unwrap_or_default()
                .iter()
                .enumerate()
                .map(|(index, rule)| RuleExplanation {
                    index,
                    peer: self.rule_peer(pid, rule, peer),
                    port: rule_port(rule, port, protocol, dst_ports),
                })
                .collect();
            side.policies.push(PolicyExplanation {
                policy: policy.key.clone(),
                rules,
            });
        }
        side
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} -> {} on {}/{}: {}",
            self.src, self.dst, self.port, self.protocol, self.verdict
        )?;
        write_side(f, &self.egress)?;
        write_side(f, &self.ingress)
    }
}

fn write_side(f: &mut fmt::Formatter<'_>, side: &SideExplanation) -> fmt::Result {
    let (dir, peers) = match side.direction {
        Direction::Egress => ("egress", "to"),
        Direction::Ingress => ("ingress", "from"),
    };
    let Some(pod) = &side.pod else {
        let what = match side.reason {
            "host_network" => "a host-network pod",
            "node" => "a node",
            _ => "not a pod",
        };
        return writeln!(
            f,
            "\n{dir}: {} (that end is {what}; policies do not apply)",
            side.verdict
        );
    };
    write!(f, "\n{dir} (on {pod}): {}", side.verdict)?;
    match &side.decided_by {
        Some(by) => {
            let rule = match &by.rule {
                Some(r) => format!(" rule {r}"),
                None => String::new(),
            };
            writeln!(
                f,
                " (decided by the {} tier: {} {}{rule}, {})",
                side.tier,
                by.kind.as_str(),
                by.name,
                by.action.as_str()
            )?;
        }
        None if side.tier != Tier::None => writeln!(f, " (the {} tier)", side.tier)?,
        None => writeln!(f, " (no tier decided)")?,
    }
    write_cluster_tier(f, "admin", pod, dir, peers, &side.admin)?;

    match side.reason {
        "not_selected" => writeln!(
            f,
            "  no NetworkPolicy with {dir} in its policyTypes and no cluster policy with {dir} rules selects {pod}: not isolated for {dir}"
        )?,
        "no_rule_decided" => writeln!(
            f,
            "  no cluster policy rule matched and no NetworkPolicy selects {pod} for {dir}: nothing decided"
        )?,
        "passed" => writeln!(
            f,
            "  a Pass rule left the cluster tiers and no later tier decided"
        )?,
        "loopback" => writeln!(f, "  a pod's traffic to itself is always allowed")?,
        "own_node" => writeln!(
            f,
            "  traffic between a pod and its own node is always allowed"
        )?,
        _ => {}
    }
    for p in &side.policies {
        writeln!(f, "  policy {} selects {pod} for {dir}", p.policy)?;
        if p.rules.is_empty() {
            writeln!(f, "    no {dir} rules: allows nothing (isolation only)")?;
        }
        for r in &p.rules {
            let peer = match r.peer {
                PeerOutcome::AnyPeer => format!("no {peers} list (any peer)"),
                PeerOutcome::Matched(i) => format!("{peers}[{i}] matches"),
                PeerOutcome::NoMatch => format!("no {peers} peer matches"),
            };
            let port = match r.port {
                PortOutcome::AnyPort => "no ports list (any port)".to_string(),
                PortOutcome::Matched(i) => format!("ports[{i}] matches"),
                PortOutcome::NoMatch => "no ports entry matches".to_string(),
            };
            let outcome = if r.allows() {
                "ALLOWS"
            } else {
                "does not allow"
            };
            writeln!(
                f,
                "    rule {dir}[{}]: {peer}; {port} -> {outcome}",
                r.index
            )?;
        }
    }
    if !side.admin.is_empty() || !side.baseline.is_empty() {
        if side.policies.is_empty() {
            writeln!(
                f,
                "  networkpolicy tier: no NetworkPolicy selects {pod} for {dir}"
            )?;
        } else if side.tier == Tier::Admin {
            writeln!(
                f,
                "  (the NetworkPolicy tier above was not reached: the admin tier decided)"
            )?;
        }
    }
    write_cluster_tier(f, "baseline", pod, dir, peers, &side.baseline)?;
    for s in &side.skipped_policies {
        writeln!(
            f,
            "  warning: policy {s} is invalid and was skipped; it may have selected {pod}"
        )?;
    }
    if side.cni_policy_present {
        writeln!(
            f,
            "  note: CNI-specific policies (not evaluated) may select {pod}: the cluster may decide otherwise"
        )?;
    }
    for s in &side.skipped_cluster_policies {
        writeln!(
            f,
            "  warning: {s} is invalid and was skipped; it may have selected {pod}"
        )?;
    }
    Ok(())
}

fn write_cluster_tier(
    f: &mut fmt::Formatter<'_>,
    tier: &str,
    pod: &str,
    dir: &str,
    peers: &str,
    policies: &[ClusterPolicyExplanation],
) -> fmt::Result {
    for p in policies {
        writeln!(
            f,
            "  {tier} tier: {} {} (priority {}) selects {pod} for {dir}",
            p.kind.as_str(),
            p.name,
            p.priority
        )?;
        if !p.same_priority_as.is_empty() {
            writeln!(
                f,
                "    note: same priority as {}; the API leaves their order to implementations, flowwatch orders them by name",
                p.same_priority_as.join(", ")
            )?;
        }
        for r in &p.rules {
            let peer = match r.peer {
                PeerOutcome::AnyPeer => "any peer".to_string(),
                PeerOutcome::Matched(i) => format!("{peers}[{i}] matches"),
                PeerOutcome::NoMatch => format!("no {peers} peer matches"),
            };
            let port = match r.port {
                PortOutcome::AnyPort => "any port".to_string(),
                PortOutcome::Matched(i) => format!("port entry [{i}] matches"),
                PortOutcome::NoMatch => "no port entry matches".to_string(),
            };
            let outcome = match (r.outcome, r.action) {
                (WalkOutcome::NotReached, _) => "not reached".to_string(),
                (WalkOutcome::NoMatch, _) => "no match".to_string(),
                (WalkOutcome::Decided, Action::Pass) => {
                    format!("PASS: leaves the {tier} tier")
                }
                (WalkOutcome::Decided, a) => format!("{}: decides", a.as_str().to_uppercase()),
            };
            writeln!(
                f,
                "    rule {} ({}): {peer}; {port} -> {outcome}",
                r.rule,
                r.action.as_str()
            )?;
            if let Some(note) = r.note {
                writeln!(f, "      note: {note}")?;
            }
        }
    }
    Ok(())
}
