//! `flowwatch report`: one self-contained HTML page of what the cluster's traffic and policies
//! look like (pure: the report's values in, the page's bytes out; `policy_cli::report` reads
//! the inputs, judges the edges and fills in a [`Report`]).
//!
//! * this module: the report's values (edges with their verdict class, coverage per namespace,
//!   unused rules, advised policies);
//! * [`escape`]: names from the cluster as HTML text and attribute values;
//! * [`csp`]: the Content-Security-Policy that forbids every remote load;
//! * [`layout`]: where each workload sits in the graph (namespaces as columns);
//! * [`svg`]: the graph, coloured by verdict;
//! * [`html`]: the page (legend, tables, style and the small script).
//!
//! The page is byte-identical for the same report: no clock, no random ids, sorted inputs.

pub mod csp;
pub mod escape;
pub mod html;
pub mod layout;
pub mod svg;

use crate::whatif::{EdgeCount, EdgeKey};

/// What the policies of the snapshot make of an observed edge (the graph's colours).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EdgeClass {
    /// Denied, and no connection succeeded: the policies hold.
    Blocked,
    /// Denied, yet connections were established: nothing enforces the policy (or it changed).
    DeniedEstablished,
    /// No policy selects either end for this direction.
    Uncovered,
    /// A rule allows it.
    Allowed,
    /// An end is a workload the snapshot does not have: no verdict.
    Unresolved,
}

impl EdgeClass {
    /// Every class, in the legend's order (the most urgent first).
    pub const ALL: [EdgeClass; 5] = [
        EdgeClass::Blocked,
        EdgeClass::DeniedEstablished,
        EdgeClass::Uncovered,
        EdgeClass::Allowed,
        EdgeClass::Unresolved,
    ];

    /// The class of an edge whose combined verdict is `verdict` (`None`: not judged).
    pub fn of(verdict: Option<crate::policy::Verdict>, count: &EdgeCount) -> EdgeClass {
        use crate::policy::Verdict;
        match verdict {
            None => EdgeClass::Unresolved,
            Some(Verdict::Allowed) => EdgeClass::Allowed,
            Some(Verdict::Uncovered) => EdgeClass::Uncovered,
            Some(Verdict::Denied) if count.established > 0 => EdgeClass::DeniedEstablished,
            Some(Verdict::Denied) => EdgeClass::Blocked,
        }
    }

    /// The CSS class and `data-verdict` value.
    pub fn as_str(self) -> &'static str {
        match self {
            EdgeClass::Blocked => "blocked",
            EdgeClass::DeniedEstablished => "denied-established",
            EdgeClass::Uncovered => "uncovered",
            EdgeClass::Allowed => "allowed",
            EdgeClass::Unresolved => "unresolved",
        }
    }

    /// The colour of its lines (one place: the style sheet and the arrow heads use it).
    pub fn colour(self) -> &'static str {
        match self {
            EdgeClass::Blocked => "#c62828",
            EdgeClass::DeniedEstablished => "#ef6c00",
            EdgeClass::Uncovered => "#8d6e63",
            EdgeClass::Allowed => "#2e7d32",
            EdgeClass::Unresolved => "#757575",
        }
    }

    /// The legend's words.
    pub fn label(self) -> &'static str {
        match self {
            EdgeClass::Blocked => "blocked (denied, never established)",
            EdgeClass::DeniedEstablished => "denied but established",
            EdgeClass::Uncovered => "uncovered (no policy selects either end)",
            EdgeClass::Allowed => "allowed by a rule",
            EdgeClass::Unresolved => "unresolved (workload not in the snapshot)",
        }
    }
}

/// One observed edge with its verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportEdge {
    pub key: EdgeKey,
    pub count: EdgeCount,
    pub class: EdgeClass,
    /// Which rules allow it or which policies deny it (as `policy whatif` says it).
    pub why: String,
}

/// How much of a namespace's observed traffic policies cover: per direction, the edges (and
/// their connections) whose end in this namespace some policy selects.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceCoverage {
    pub namespace: String,
    pub ingress_edges: u64,
    pub ingress_covered: u64,
    pub egress_edges: u64,
    pub egress_covered: u64,
    pub connections: u64,
    pub connections_covered: u64,
}

impl NamespaceCoverage {
    /// The covered share of the connections, in per mille (rounded down): 1000 when the
    /// namespace had none.
    pub fn connections_permille(&self) -> u64 {
        self.connections_covered
            .saturating_mul(1000)
            .checked_div(self.connections)
            .unwrap_or(1000)
    }

    /// The covered share of the edge ends (both directions), in per mille (rounded down).
    pub fn edges_permille(&self) -> u64 {
        (self.ingress_covered + self.egress_covered)
            .saturating_mul(1000)
            .checked_div(self.ingress_edges + self.egress_edges)
            .unwrap_or(1000)
    }
}

/// One advised NetworkPolicy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdvisedPolicy {
    pub namespace: String,
    pub name: String,
    /// Its YAML document.
    pub yaml: String,
}

/// Everything the page shows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Where the traffic came from (file names, or the Prometheus URL and window).
    pub source: String,
    /// Sorted by key.
    pub edges: Vec<ReportEdge>,
    /// Addresses that are node addresses -> the node's name (how the graph names them).
    pub nodes: std::collections::BTreeMap<std::net::IpAddr, String>,
    /// By namespace, sorted.
    pub coverage: Vec<NamespaceCoverage>,
    /// The NetworkPolicy rules in the snapshot (how many), and those that matched nothing
    /// (`namespace/policy direction[index]`).
    pub rules: usize,
    pub unused_rules: Vec<String>,
    /// Policies none of whose rules matched anything.
    pub unused_policies: Vec<String>,
    /// By namespace, then name.
    pub advised: Vec<AdvisedPolicy>,
    /// What a reader must know: edges left out, advice notes.
    pub notes: Vec<String>,
}

impl Report {
    /// Edges per class, in [`EdgeClass::ALL`]'s order.
    pub fn class_counts(&self) -> Vec<(EdgeClass, usize)> {
        EdgeClass::ALL
            .iter()
            .map(|c| (*c, self.edges.iter().filter(|e| e.class == *c).count()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Verdict;

    #[test]
    fn a_denied_edge_is_blocked_only_when_nothing_got_through() {
        let count = |established| EdgeCount {
            connections: 3,
            established,
        };
        assert_eq!(
            EdgeClass::of(Some(Verdict::Denied), &count(0)),
            EdgeClass::Blocked
        );
        assert_eq!(
            EdgeClass::of(Some(Verdict::Denied), &count(1)),
            EdgeClass::DeniedEstablished
        );
        assert_eq!(
            EdgeClass::of(Some(Verdict::Allowed), &count(0)),
            EdgeClass::Allowed
        );
        assert_eq!(
            EdgeClass::of(Some(Verdict::Uncovered), &count(3)),
            EdgeClass::Uncovered
        );
        assert_eq!(EdgeClass::of(None, &count(3)), EdgeClass::Unresolved);
    }

    #[test]
    fn coverage_shares_round_down_and_an_idle_namespace_is_whole() {
        let c = NamespaceCoverage {
            namespace: "a".into(),
            ingress_edges: 2,
            ingress_covered: 1,
            egress_edges: 1,
            egress_covered: 1,
            connections: 3,
            connections_covered: 2,
        };
        assert_eq!(c.connections_permille(), 666);
        assert_eq!(c.edges_permille(), 666);
        assert_eq!(NamespaceCoverage::default().connections_permille(), 1000);
    }
}
