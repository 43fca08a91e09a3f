//! First-seen edges (pure): the set of workload edges this node has seen, each with the Unix
//! second it was first and last seen, bounded like an edge family (at most `max_edges`, at most
//! `max_per_namespace` per source namespace).
//!
//! The identity of an edge is its workloads, never its pods: (source namespace, workload and
//! kind) → (destination namespace, workload and kind), destination port, protocol. A rollout
//! (new ReplicaSet hash, new pod names), a scale-up, a pod restart or an address handed to
//! another pod of a known pair names the same edge, so it is not new; a new port between known
//! workloads is. Ends that name no stable identity are not remembered: `unknown` (an address
//! the inventory does not know yet: its pod would be "new" until the watch catches up) and the
//! `other` overflow bucket. Nodes and host-network pods are `node`, addresses outside the
//! cluster `external` (namespace `""`): one identity each, so the set stays bounded. A
//! connection between two outside addresses (the socket tracepoint sees every socket of the
//! machine, containers the inventory does not know included) names nothing of the cluster and
//! is not remembered either.
//!
//! The set survives an agent restart through [`state`] (a versioned file in the state
//! directory); the agent wires it to the metrics
//! (`flowwatch_edge_first_seen_timestamp_seconds`, `flowwatch_new_edges_total`).

pub mod state;

use std::collections::HashMap;

use crate::metrics::labels::{EdgeLabels, Name, WorkloadKind};

/// When an edge was first and last seen (Unix seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub first: u64,
    pub last: u64,
}

/// `last` is written to the state file at this granularity: refreshing it on every connection
/// would rewrite the file on every save.
pub const LAST_SEEN_GRANULARITY_SECS: u64 = 3600;

/// What one observation did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observed {
    /// First seen now.
    New,
    /// Already known.
    Known,
    /// New, but the set is full (family or source namespace budget): not remembered.
    Overflow,
    /// An end without a stable identity (`unknown`, `other`): not an edge to remember.
    Ignored,
}

/// The edges this node knows.
#[derive(Debug)]
pub struct KnownEdges {
    edges: HashMap<EdgeLabels, Seen>,
    per_namespace: HashMap<Name, usize>,
    max_edges: usize,
    max_per_namespace: usize,
    /// Changed since the last [`KnownEdges::take_dirty`].
    dirty: bool,
}

/// Whether an edge names two stable identities, one of them in the cluster.
pub fn trackable(edge: &EdgeLabels) -> bool {
    let stable = |k: WorkloadKind| !matches!(k, WorkloadKind::Unknown | WorkloadKind::Other);
    let outside = |k: WorkloadKind| k == WorkloadKind::External;
    stable(edge.src_kind)
        && stable(edge.dst_kind)
        && !(outside(edge.src_kind) && outside(edge.dst_kind))
}

impl KnownEdges {
    pub fn new(max_edges: usize, max_per_namespace: usize) -> KnownEdges {
        KnownEdges {
            edges: HashMap::new(),
            per_namespace: HashMap::new(),
            max_edges,
            max_per_namespace: max_per_namespace.min(max_edges),
            dirty: false,
        }
    }

    pub fn len(&self) -> usize {
        self.edges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.edges.is_empty()
    }

    pub fn get(&self, edge: &EdgeLabels) -> Option<Seen> {
        self.edges.get(edge).copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&EdgeLabels, &Seen)> {
        self.edges.iter()
    }

    fn has_room(&self, ns: &Name) -> bool {
        self.edges.len() < self.max_edges
            && self.per_namespace.get(ns).copied().unwrap_or(0) < self.max_per_namespace
    }

    fn insert(&mut self, edge: EdgeLabels, seen: Seen) {
        *self
            .per_namespace
            .entry(edge.src_namespace.clone())
            .or_insert(0) += 1;
        self.edges.insert(edge, seen);
    }

    /// One decided connection (established, failed or unanswered) of `edge` at `now` (Unix s).
    pub fn observe(&mut self, edge: &EdgeLabels, now: u64) -> Observed {
        if !trackable(edge) {
            return Observed::Ignored;
        }
        if let Some(seen) = self.edges.get_mut(edge) {
            if now >= seen.last.saturating_add(LAST_SEEN_GRANULARITY_SECS) {
                seen.last = now;
                self.dirty = true;
            }
            return Observed::Known;
        }
        if !self.has_room(&edge.src_namespace) {
            return Observed::Overflow;
        }
        self.insert(
            edge.clone(),
            Seen {
                first: now,
                last: now,
            },
        );
        self.dirty = true;
        Observed::New
    }

    /// Restores edges from the state file, the most recently seen first, as far as the budget
    /// goes; edges not seen since `forget_before` (Unix s) are left out. Returns how many were
    /// left out for the budget.
    pub fn restore(&mut self, mut edges: Vec<(EdgeLabels, Seen)>, forget_before: u64) -> usize {
        edges.retain(|(e, s)| s.last >= forget_before && trackable(e));
        edges.sort_by(|a, b| b.1.last.cmp(&a.1.last).then(a.1.first.cmp(&b.1.first)));
        let mut over = 0;
        for (edge, seen) in edges {
            if let Some(known) = self.edges.get_mut(&edge) {
                known.first = known.first.min(seen.first);
                known.last = known.last.max(seen.last);
            } else if self.has_room(&edge.src_namespace) {
                self.insert(edge, seen);
            } else {
                over += 1;
            }
        }
        over
    }

    /// Forgets the edges not seen since `before` (Unix s); returns them.
    pub fn forget_idle(&mut self, before: u64) -> Vec<EdgeLabels> {
        let gone: Vec<EdgeLabels> = self
            .edges
            .iter()
            .filter(|(_, s)| s.last < before)
            .map(|(e, _)| e.clone())
            .collect();
        for edge in &gone {
            self.edges.remove(edge);
            if let Some(n) = self.per_namespace.get_mut(&edge.src_namespace) {
                *n -= 1;
                if *n == 0 {
                    self.per_namespace.remove(&edge.src_namespace);
                }
            }
        }
        self.dirty |= !gone.is_empty();
        gone
    }

    /// Whether the set changed since the last call (and resets the mark).
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// Marks the set changed (a save failed and must be retried).
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::labels::{Port, ProtocolLabel};

    pub(crate) fn edge(src: (&str, &str), dst: (&str, &str), port: u16) -> EdgeLabels {
        EdgeLabels {
            src_namespace: src.0.into(),
            src_workload: src.1.into(),
            src_kind: WorkloadKind::Deployment,
            dst_namespace: dst.0.into(),
            dst_workload: dst.1.into(),
            dst_kind: WorkloadKind::Deployment,
            dst_port: Port::Number(port),
            protocol: ProtocolLabel::Tcp,
        }
    }

    #[test]
    fn a_pair_is_new_once_and_a_new_port_between_known_workloads_is_new() {
        let mut k = KnownEdges::new(10, 10);
        let e = edge(("shop", "web"), ("shop", "api"), 8080);
        assert_eq!(k.observe(&e, 100), Observed::New);
        assert!(k.take_dirty());
        assert_eq!(k.observe(&e, 200), Observed::Known);
        assert!(!k.take_dirty(), "last seen moves at its granularity only");
        assert_eq!(
            k.observe(&edge(("shop", "web"), ("shop", "api"), 9090), 300),
            Observed::New
        );
        assert_eq!(
            k.observe(&edge(("shop", "api"), ("shop", "web"), 8080), 300),
            Observed::New,
            "the reverse direction is its own edge"
        );
        assert_eq!(
            k.get(&e),
            Some(Seen {
                first: 100,
                last: 100
            })
        );
        assert_eq!(
            k.observe(&e, 100 + LAST_SEEN_GRANULARITY_SECS),
            Observed::Known
        );
        assert_eq!(k.get(&e).unwrap().last, 100 + LAST_SEEN_GRANULARITY_SECS);
        assert!(k.take_dirty());
    }

    #[test]
    fn unknown_and_overflow_ends_are_not_remembered_nodes_and_external_are() {
        let mut k = KnownEdges::new(10, 10);
        let mut e = edge(("shop", "web"), ("", "unknown"), 80);
        e.dst_kind = WorkloadKind::Unknown;
        assert_eq!(k.observe(&e, 1), Observed::Ignored);
        e.dst_kind = WorkloadKind::Other;
        assert_eq!(k.observe(&e, 1), Observed::Ignored);
        e.dst_kind = WorkloadKind::External;
        e.dst_workload = "external".into();
        assert_eq!(k.observe(&e, 1), Observed::New);
        e.dst_kind = WorkloadKind::Node;
        e.dst_workload = "node".into();
        assert_eq!(k.observe(&e, 1), Observed::New);
        assert_eq!(k.len(), 2);
        // Outside to outside: nothing of the cluster.
        e.src_kind = WorkloadKind::External;
        e.dst_kind = WorkloadKind::External;
        assert_eq!(k.observe(&e, 1), Observed::Ignored);
        e.dst_kind = WorkloadKind::Node;
        assert_eq!(k.observe(&e, 1), Observed::New, "outside to a node is one");
    }

    #[test]
    fn the_budget_bounds_the_set_per_family_and_per_source_namespace() {
        let mut k = KnownEdges::new(3, 2);
        assert_eq!(
            k.observe(&edge(("a", "x"), ("b", "y"), 1), 1),
            Observed::New
        );
        assert_eq!(
            k.observe(&edge(("a", "x"), ("b", "y"), 2), 1),
            Observed::New
        );
        assert_eq!(
            k.observe(&edge(("a", "x"), ("b", "y"), 3), 1),
            Observed::Overflow,
            "namespace a is full"
        );
        assert_eq!(
            k.observe(&edge(("c", "x"), ("b", "y"), 1), 1),
            Observed::New
        );
        assert_eq!(
            k.observe(&edge(("d", "x"), ("b", "y"), 1), 1),
            Observed::Overflow,
            "the set is full"
        );
        assert_eq!(k.len(), 3);
        // Idle edges make room.
        k.take_dirty();
        assert_eq!(k.forget_idle(2).len(), 3);
        assert!(k.take_dirty());
        assert_eq!(
            k.observe(&edge(("a", "x"), ("b", "y"), 3), 5),
            Observed::New
        );
    }

    #[test]
    fn restore_keeps_the_most_recent_within_the_budget_and_drops_the_idle() {
        let mut k = KnownEdges::new(2, 2);
        let edges = vec![
            (edge(("a", "x"), ("b", "y"), 1), Seen { first: 1, last: 10 }),
            (edge(("a", "x"), ("b", "y"), 2), Seen { first: 1, last: 30 }),
            (edge(("a", "x"), ("b", "y"), 3), Seen { first: 1, last: 20 }),
            (edge(("a", "x"), ("b", "y"), 4), Seen { first: 1, last: 2 }),
        ];
        assert_eq!(k.restore(edges, 5), 1, "one over the budget, one idle");
        assert!(k.get(&edge(("a", "x"), ("b", "y"), 2)).is_some());
        assert!(k.get(&edge(("a", "x"), ("b", "y"), 3)).is_some());
        assert!(!k.take_dirty(), "a restore changes nothing to save");
        assert_eq!(
            k.observe(&edge(("a", "x"), ("b", "y"), 2), 40),
            Observed::Known,
            "an edge seen before the restart is not new after it"
        );
    }
}
