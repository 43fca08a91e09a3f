//! The policy engine: per-direction verdicts with reasons and the deciding tier (pure, no I/O).
//!
//! Cluster-scoped policies of the network-policy-api project (`ClusterNetworkPolicy` v1alpha2,
//! `AdminNetworkPolicy`/`BaselineAdminNetworkPolicy` v1alpha1, one model in [`tiered`]) are
//! walked around the NetworkPolicies: Admin tier, NetworkPolicy tier, Baseline tier (see
//! `docs/policy.md`, "Cluster-scoped policies").
//!
//! `networking.k8s.io/v1` NetworkPolicy as the Kubernetes API documents it: label selectors
//! (`matchLabels`, `matchExpressions`), `namespaceSelector` AND `podSelector` in one peer, OR
//! across peers, `ipBlock` with `except` (IPv4 and IPv6), ports (protocol defaulting to TCP,
//! numbers, `endPort` ranges, named ports resolved on the destination pod), `policyTypes`
//! defaulted as the API server does, union of policies, isolation per direction. See
//! `docs/policy.md` for the semantics and the implementation-defined choices.
//!
//! # API (stable: the agent and the offline CLI call it)
//!
//! ```
//! use flowwatch::inventory::Inventory;
//! use flowwatch::model::Protocol;
//! use flowwatch::policy::{Peer, PolicyEngine, PolicyOptions, SideVerdict, Verdict};
//!
//! let inventory = Inventory::default(); // from `inventory::snapshot` or the kube watchers
//! let (engine, errors) = PolicyEngine::build(&inventory, PolicyOptions::default());
//! assert!(errors.is_empty()); // invalid objects are reported here and left out
//!
//! // By address (the agent): pod address = that pod, node address = the node, else external.
//! let v = engine.evaluate_ips(
//!     "10.0.0.1".parse().unwrap(), "203.0.113.7".parse().unwrap(), 443, Protocol::Tcp);
//! assert_eq!(v.verdict, Verdict::Uncovered);
//! assert_eq!(v.ingress.verdict, SideVerdict::NotApplicable);
//!
//! // By name or address (the CLI); an unknown pod is an error.
//! let src: Peer = "x/a".parse().unwrap();
//! assert!(engine.evaluate(&src, &Peer::Ip("10.0.0.2".parse().unwrap()), 80, Protocol::Tcp).is_err());
//! ```
//!
//! - [`PolicyEngine::build`]`(&Inventory, PolicyOptions) -> (PolicyEngine, Vec<ObjectError>)`
//! - [`PolicyEngine::with_index`]`(Arc<ClusterIndex>, &Inventory, PolicyOptions)`: the same
//!   over the cluster index the caller shares with the enrichment index (the agent's
//!   classifier); the engine reads pods, nodes and namespaces only from it
//!   ([`crate::inventory::index`]) and adds its compiled policies and identities.
//! - [`PolicyEngine::evaluate`]`(&self, &Peer, &Peer, port, Protocol) -> Result<FlowVerdict, PolicyError>`
//! - [`PolicyEngine::evaluate_ips`]`(&self, IpAddr, IpAddr, port, Protocol) -> FlowVerdict`
//! - [`PolicyEngine::explain`] (every selecting policy and rule, and why each matched or not)
//! - [`PolicyEngine::coverage`] (unprotected namespaces and pods, policies selecting nothing)
//! - [`FlowVerdict`] `{ verdict: Verdict, ingress: SideResult, egress: SideResult }`;
//!   [`SideResult`] `{ verdict: SideVerdict, reason: SideReason, allowed_by: Arc<[RuleRef]>,
//!   tier: Tier, decided_by: Option<Arc<DecidedBy>>, cni_policy_present: bool }`;
//!   [`RuleRef`] `{ policy: "namespace/name", rule: index in spec.ingress / spec.egress }`.
//!   The enums are `Copy` and have `as_str()`: `allowed|denied|uncovered|not_applicable`.
//!
//! Caching: at build, the engine computes which policies select each *identity* (pods of one
//! namespace with the same labels and named ports) and, for each pod peer of each rule, the set
//! of identities it selects. At evaluation it caches, per (direction, identity, port, protocol),
//! the rules that can admit that port with their peer tests, so a flow costs two address
//! lookups, one cache lookup per side and a few bit tests. The engine is immutable: when pods,
//! namespaces or policies change, build a new engine (10,000 pods and 2,000 policies build in
//! well under a second); its cache starts empty, so a stale verdict is impossible by construction.

mod allowance;
mod compile;
mod coverage;
mod engine;
mod explain;
mod ipblock;
mod lookup;
mod ports;
mod selector;
mod tier_index;
mod tier_walk;
pub mod tiered;
mod verdict;

use std::net::IpAddr;

pub use compile::Direction;
pub use coverage::{Coverage, NamespaceCoverage, WorkloadCoverage};
pub use engine::PolicyEngine;
pub use explain::{
    ClusterPolicyExplanation, ClusterRuleExplanation, Explanation, PeerOutcome, PolicyExplanation,
    PortOutcome, RuleExplanation, SideExplanation, WalkOutcome,
};
pub use lookup::{PodRef, RulePort};
pub use ports::validate_port_name;
pub use selector::{Labels, Selector};
pub use verdict::{
    Action, DecidedBy, FlowVerdict, PolicyKind, RuleId, RuleRef, SideReason, SideResult,
    SideVerdict, Tier, Verdict,
};

/// Implementation-defined choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyOptions {
    /// Whether `ipBlock` peers match pod addresses. `true` (the default) is what the upstream
    /// e2e suite expects; `false` is how Cilium behaves (ipBlock only for non-pod addresses).
    pub ipblock_matches_pod_ips: bool,
    /// Whether CNI-specific policy objects (Cilium, Calico, Antrea) in the inventory may
    /// change verdicts: `true` (the default) marks the sides they may affect
    /// (`cni_policy_present`); `false` declares them irrelevant.
    pub cni_policies_relevant: bool,
}

impl Default for PolicyOptions {
    fn default() -> Self {
        PolicyOptions {
            ipblock_matches_pod_ips: true,
            cni_policies_relevant: true,
        }
    }
}

/// One end of a flow.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Peer {
    Pod { namespace: String, name: String },
    Ip(IpAddr),
}

impl std::str::FromStr for Peer {
    type Err = String;

    /// `namespace/pod` or an IPv4/IPv6 address.
    fn from_str(s: &str) -> Result<Peer, String> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Peer::Ip(ip));
        }
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Peer::Pod {
                    namespace: ns.to_string(),
                    name: name.to_string(),
                })
            }
            _ => Err(format!(
                "{s:?} is neither \"namespace/pod\" nor an IP address"
            )),
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Pod { namespace, name } => write!(f, "{namespace}/{name}"),
            Peer::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("unknown pod {0}")]
    UnknownPod(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_from_names_and_addresses() {
        assert_eq!(
            "x/a".parse::<Peer>(),
            Ok(Peer::Pod {
                namespace: "x".into(),
                name: "a".into()
            })
        );
        assert_eq!(
            "10.0.0.1".parse::<Peer>(),
            Ok(Peer::Ip("10.0.0.1".parse().unwrap()))
        );
        assert_eq!(
            "fd00::1".parse::<Peer>(),
            Ok(Peer::Ip("fd00::1".parse().unwrap()))
        );
        for bad in ["", "x", "x/", "/a", "x/a/b", "10.0.0.256"] {
            assert!(bad.parse::<Peer>().is_err(), "{bad:?}");
        }
        assert_eq!("x/a".parse::<Peer>().unwrap().to_string(), "x/a");
    }

    #[test]
    fn default_options_match_the_upstream_suite() {
        assert!(PolicyOptions::default().ipblock_matches_pod_ips);
    }
}
