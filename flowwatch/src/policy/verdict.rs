//! What the engine answers for a flow: an overall verdict and one result per side.

use std::sync::Arc;

use serde::Serialize;

pub use super::tiered::{Action, PolicyKind, RuleId, Tier};

/// The overall verdict of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allowed,
    Denied,
    Uncovered,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allowed => "allowed",
            Verdict::Denied => "denied",
            Verdict::Uncovered => "uncovered",
        }
    }

    /// `denied` if either side denies; else `uncovered` if neither side allows; else `allowed`.
    pub fn combine(ingress: SideVerdict, egress: SideVerdict) -> Verdict {
        use SideVerdict::{Allowed, Denied};
        if ingress == Denied || egress == Denied {
            Verdict::Denied
        } else if ingress != Allowed && egress != Allowed {
            Verdict::Uncovered
        } else {
            Verdict::Allowed
        }
    }
}

/// The verdict of one side of a flow (egress on the source pod, ingress on the destination).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SideVerdict {
    /// A policy of this direction selects the pod and one of its rules allows the flow
    /// (or the flow is one that policies cannot block: loopback, the pod's own node).
    Allowed,
    /// Policies of this direction select the pod and none allows the flow.
    Denied,
    /// No policy of this direction selects the pod.
    Uncovered,
    /// That end is not a pod policies apply to (external address, node, host-network pod).
    NotApplicable,
}

impl SideVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            SideVerdict::Allowed => "allowed",
            SideVerdict::Denied => "denied",
            SideVerdict::Uncovered => "uncovered",
            SideVerdict::NotApplicable => "not_applicable",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for SideVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a side got its verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SideReason {
    /// The end is an address outside the cluster's pods and nodes.
    External,
    /// The end is a node.
    Node,
    /// The end is a host-network pod (policies do not apply to it).
    HostNetwork,
    /// No policy of this direction selects the pod.
    NotSelected,
    /// A pod talking to itself: policies cannot block it.
    Loopback,
    /// Traffic between a pod and its own node is always allowed.
    OwnNode,
    /// At least one rule allows the flow (see `allowed_by`).
    RuleMatched,
    /// The pod is isolated and no rule allows the flow.
    NoRuleMatched,
    /// A rule of a cluster policy (Admin or Baseline tier) decided (see `decided_by`).
    ClusterRule,
    /// A `Pass` rule left the cluster tiers and no later tier decided.
    Passed,
    /// Cluster policies select the pod, none of their rules matched, and no NetworkPolicy
    /// selects it: nothing decided.
    NoRuleDecided,
    /// Nothing flowwatch evaluates decided, but CNI-specific policies (which it does not
    /// evaluate) may select the pod: the verdict is unknown rather than uncovered.
    CniPolicyPresent,
}

impl SideReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SideReason::External => "external",
            SideReason::Node => "node",
            SideReason::HostNetwork => "host_network",
            SideReason::NotSelected => "not_selected",
            SideReason::Loopback => "loopback",
            SideReason::OwnNode => "own_node",
            SideReason::RuleMatched => "rule_matched",
            SideReason::NoRuleMatched => "no_rule_matched",
            SideReason::ClusterRule => "cluster_rule",
            SideReason::Passed => "passed",
            SideReason::NoRuleDecided => "no_rule_decided",
            SideReason::CniPolicyPresent => "cni_policy_present",
        }
    }
}

/// One rule that allows a flow: the policy (`namespace/name`) and the rule's index in its
/// `spec.ingress` or `spec.egress` list.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct RuleRef {
    #[serde(serialize_with = "serialize_arc_str")]
    pub policy: Arc<str>,
    pub rule: usize,
}

/// `Arc<str>` as a plain string (serde's `rc` feature is not enabled in this workspace).
pub(crate) fn serialize_arc_str<S: serde::Serializer>(
    v: &Arc<str>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(v)
}

/// The rule that decided a side: its policy (`namespace/name` for a NetworkPolicy, the name
/// for a cluster-scoped one), the rule (its name, else its index; none for a NetworkPolicy
/// denial, which no rule makes) and the action (`Accept`, `Deny` or `Pass`, whatever the API
/// version calls it: v1alpha1 `Allow` is `Accept`; a NetworkPolicy rule that allows is `Accept`,
/// an isolation with no allowing rule is `Deny`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct DecidedBy {
    pub kind: PolicyKind,
    #[serde(serialize_with = "serialize_arc_str")]
    pub name: Arc<str>,
    pub rule: Option<RuleId>,
    pub action: Action,
}

/// The result for one side of a flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SideResult {
    pub verdict: SideVerdict,
    pub reason: SideReason,
    /// Every NetworkPolicy rule that allows the flow, in policy order (shared: cheap to
    /// clone); empty when another tier decided.
    pub allowed_by: Arc<[RuleRef]>,
    /// The tier that decided (`None` when none did: `uncovered` or `not_applicable`).
    pub tier: Tier,
    /// The rule that decided, when one did (absent for `loopback`/`own_node`, which no rule
    /// decides).
    pub decided_by: Option<Arc<DecidedBy>>,
    /// CNI-specific policies (not evaluated) may select this side's pod and change the
    /// verdict (see `PolicyOptions::cni_policies_relevant`).
    pub cni_policy_present: bool,
}

impl SideResult {
    /// The side as JSON: the one shape of the flow log's `ingress`/`egress` and of
    /// `flowwatch policy eval` (`verdict`, `policies`, `rules`, `reason`, `tier`; `decided_by`
    /// only when a rule or an isolation decided, `cni_policy_present` only when true).
    pub fn to_json(&self) -> serde_json::Value {
        let mut side = serde_json::json!({
            "verdict": self.verdict.as_str(),
            "policies": self.policies(),
            "rules": &*self.allowed_by,
            "reason": self.reason.as_str(),
            "tier": self.tier.as_str(),
        });
        if let Some(by) = &self.decided_by {
            side["decided_by"] = serde_json::to_value(&**by).unwrap_or_default();
        }
        if self.cni_policy_present {
            side["cni_policy_present"] = true.into();
        }
        side
    }
}

impl SideResult {
    /// The allowing policies (`namespace/name`), each once, in order.
    pub fn policies(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for r in self.allowed_by.iter() {
            if out.last() != Some(&&*r.policy) && !out.contains(&&*r.policy) {
                out.push(&r.policy);
            }
        }
        out
    }
}

/// The engine's answer for one flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowVerdict {
    pub verdict: Verdict,
    /// Evaluated on the destination pod.
    pub ingress: SideResult,
    /// Evaluated on the source pod.
    pub egress: SideResult,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overall_verdict_follows_the_contract() {
        use SideVerdict::*;
        let all = [Allowed, Denied, Uncovered, NotApplicable];
        for i in all {
            for e in all {
                let expected = if i == Denied || e == Denied {
                    Verdict::Denied
                } else if i == Allowed || e == Allowed {
                    Verdict::Allowed
                } else {
                    Verdict::Uncovered
                };
                assert_eq!(Verdict::combine(i, e), expected, "{i} {e}");
            }
        }
        assert_eq!(Verdict::combine(Allowed, Uncovered), Verdict::Allowed);
        assert_eq!(
            Verdict::combine(NotApplicable, Uncovered),
            Verdict::Uncovered
        );
        assert_eq!(Verdict::combine(Allowed, Denied), Verdict::Denied);
    }

    #[test]
    fn names_are_stable() {
        assert_eq!(SideVerdict::NotApplicable.as_str(), "not_applicable");
        assert_eq!(Verdict::Uncovered.to_string(), "uncovered");
        assert_eq!(
            serde_json::to_string(&SideVerdict::NotApplicable).unwrap(),
            "\"not_applicable\""
        );
    }

    #[test]
    fn policies_are_listed_once() {
        let p = |s: &str, rule| RuleRef {
            policy: Arc::from(s),
            rule,
        };
        let side = SideResult {
            verdict: SideVerdict::Allowed,
            reason: SideReason::RuleMatched,
            allowed_by: vec![p("x/a", 0), p("x/a", 2), p("x/b", 0)].into(),
            tier: Tier::NetworkPolicy,
            decided_by: None,
            cni_policy_present: false,
        };
        assert_eq!(side.policies(), vec!["x/a", "x/b"]);
    }
}
