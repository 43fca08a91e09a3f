//! Least-privilege NetworkPolicies from observed traffic (pure: the observed edges and the
//! cluster in, the policies out; `policy_cli::advise` reads the inputs and writes the files).
//!
//! Per namespace a default deny (ingress and egress), and per workload one policy that allows
//! exactly the edges it was seen to accept and to open: the peers are workloads (by the
//! `kubernetes.io/metadata.name` of their namespace and their stable labels, see [`labels`]),
//! nodes and host-network pods (`ipBlock`s of the node's address), or external networks
//! (`ipBlock`s of the observed addresses, aggregated to a prefix the user sets). A rule lists
//! peers that were all seen on the same ports, so it allows no peer-port pair that was not
//! observed. DNS seen over UDP is allowed over TCP too (the fallback for large answers).
//!
//! * [`cluster`]: the workloads, labels and addresses of the snapshot;
//! * [`labels`]: which labels select a workload;
//! * [`peers`]: the peer of an observed end;
//! * [`group`]: observed edges into rules;
//! * [`render`]: the rules as YAML, one document per policy, a comment per rule;
//! * [`render_cluster`]: the same rules as cluster-scoped `ClusterNetworkPolicy` objects.

pub mod cluster;
pub mod group;
pub mod labels;
pub mod peers;
pub mod render;
pub mod render_cluster;

use std::collections::{BTreeMap, BTreeSet};

pub use cluster::{ClusterView, Labels};
pub use group::advise;
pub use peers::Peer;

use crate::model::Protocol;
use crate::whatif::{EdgeCount, EdgeEnd, EdgeKey};

/// The choices of an advice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdviseOptions {
    /// The namespaces to write policies for; every namespace with a workload when `None`.
    pub namespaces: Option<BTreeSet<String>>,
    /// External IPv4 addresses are allowed as networks of this many bits (32: each address).
    pub external_prefix_v4: u8,
    /// The same for IPv6 (128: each address).
    pub external_prefix_v6: u8,
    /// Allow edges whose connections never succeeded too (by default only edges seen
    /// established or answered are allowed: a failed attempt may be one the policies deny on
    /// purpose today).
    pub include_failed: bool,
}

impl Default for AdviseOptions {
    fn default() -> Self {
        AdviseOptions {
            namespaces: None,
            external_prefix_v4: 32,
            external_prefix_v6: 128,
            include_failed: false,
        }
    }
}

/// Ingress or egress.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Ingress,
    Egress,
}

/// One rule: every peer on every port (all of them observed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub peers: Vec<Peer>,
    pub ports: Vec<(Protocol, u16)>,
    /// The observed edges it covers, one line each, sorted (a comment above the rule).
    pub covers: Vec<String>,
}

/// The policy of one workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadPolicy {
    pub namespace: String,
    pub kind: String,
    pub workload: String,
    /// The policy's name: `advised-KIND-NAME`.
    pub name: String,
    pub selector: Labels,
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
}

/// The advice for one namespace: its default deny and its workloads' policies (by name).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceAdvice {
    pub policies: Vec<WorkloadPolicy>,
}

/// Why an observed edge is not allowed by any advised rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LeftOut {
    /// Its connections never succeeded (see [`AdviseOptions::include_failed`]).
    NeverEstablished,
    /// A workload the snapshot does not have.
    UnknownWorkload,
    /// Neither end is a workload of a namespace advised (two addresses, host-network pods,
    /// or namespaces not asked for).
    NoSubject,
}

impl LeftOut {
    pub fn as_str(self) -> &'static str {
        match self {
            LeftOut::NeverEstablished => "never established (--include-failed allows them)",
            LeftOut::UnknownWorkload => "an end is a workload the snapshot does not have",
            LeftOut::NoSubject => "neither end is a pod of an advised namespace",
        }
    }
}

/// The policies advised, and what they were built from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Advice {
    /// By namespace, sorted: each gets a default deny.
    pub namespaces: BTreeMap<String, NamespaceAdvice>,
    /// The observed edges the policies allow (what `--verify` replays).
    pub allowed_edges: BTreeMap<EdgeKey, EdgeCount>,
    /// The workload pairs and ports the policies mean to allow, DNS over TCP included (what
    /// `--verify` checks the whole matrix against): (source, destination, protocol, port).
    pub allowed_pairs: BTreeSet<(EdgeEnd, EdgeEnd, Protocol, u16)>,
    /// Observed edges not allowed, by why.
    pub left_out: BTreeMap<LeftOut, Vec<EdgeKey>>,
    /// What a reader must know: labels that cannot tell workloads apart, host-network ends.
    pub notes: BTreeSet<String>,
}

/// The name of the namespace default deny every advised namespace gets.
pub const DEFAULT_DENY: &str = "advised-default-deny";

/// The policy name of a workload: `advised-KIND-NAME` (a DNS subdomain of at most 253
/// characters: longer names are cut and end in a hash of the whole).
pub fn policy_name(kind: &str, name: &str) -> String {
    let full = format!("advised-{kind}-{name}");
    if full.len() <= 253 {
        return full;
    }
    // FNV-1a: stable across runs and platforms.
    let hash = full.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let mut cut = 236;
    while !full.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}-{hash:016x}", full[..cut].trim_end_matches(['-', '.']))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_names_fit_a_dns_subdomain() {
        assert_eq!(policy_name("deployment", "web"), "advised-deployment-web");
        let long = "a".repeat(250);
        let name = policy_name("deployment", &long);
        assert!(name.len() <= 253, "{}", name.len());
        assert_eq!(name, policy_name("deployment", &long));
        assert_ne!(name, policy_name("deployment", &format!("{long}b")));
    }
}
