//! The series budget: bounded edge families with `other` buckets, expiry of idle series, and
//! a periodic re-ranking that keeps the most active edges as their own series.
//!
//! * A new series is admitted while its family has room (`max_series`) and its source
//!   namespace has room (`max_per_namespace`); otherwise its update goes to an overflow bucket
//!   (the namespace pair's, or the global one) and the series becomes a *candidate*.
//! * Every window (the caller decides when: `rebalance`), candidates are ranked by their
//!   updates in the window; one with at least [`MIN_PROMOTION_HITS`] updates and more than twice
//!   the updates of the least active admitted series (of its namespace when the namespace is
//!   full) takes that series' place. The evicted series disappears from the exposition (its
//!   later updates fold into `other`); the promoted one starts at zero.
//! * `expire` removes series not updated since a cutoff.

use std::collections::{HashMap, HashSet};

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::TypedMetric;

use super::labels::{Fold, HasEdge, Name};
use crate::model::Nanos;

/// A candidate needs at least this many updates in a window to be promoted.
pub(crate) const MIN_PROMOTION_HITS: u64 = 2;

/// What one update did to the budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// The series already existed.
    Own,
    /// A new series was admitted.
    New,
    /// The budget was full: the update went to an `other` series.
    Folded,
}

struct Live {
    last_seen: Nanos,
    /// Counts against the budget (overflow buckets do not).
    own: bool,
    /// Updates in the current window.
    hits: u64,
}

/// One edge family under the budget. `M` is the metric (a counter); the family owns the series.
pub(crate) struct BudgetedFamily<L: HasEdge, M> {
    pub(crate) family: Family<L, M>,
    live: HashMap<L, Live>,
    /// Series refused in the current window, with their updates (bounded by `max_series`).
    candidates: HashMap<L, u64>,
    /// Own series per source namespace.
    per_namespace: HashMap<Name, usize>,
    own: usize,
    max_series: usize,
    max_per_namespace: usize,
}

impl<L: HasEdge, M: Default + TypedMetric> BudgetedFamily<L, M> {
    pub(crate) fn new(max_series: usize, max_per_namespace: usize) -> Self {
        BudgetedFamily {
            family: Family::default(),
            live: HashMap::new(),
            candidates: HashMap::new(),
            per_namespace: HashMap::new(),
            own: 0,
            max_series,
            max_per_namespace,
        }
    }

    fn ns_count(&self, ns: &Name) -> usize {
        self.per_namespace.get(ns).copied().unwrap_or(0)
    }

    fn admit(&mut self, labels: L, now: Nanos, hits: u64) {
        self.own += 1;
        *self
            .per_namespace
            .entry(labels.edge().src_namespace.clone())
            .or_insert(0) += 1;
        let _ = self.family.get_or_create(&labels);
        self.live.insert(
            labels,
            Live {
                last_seen: now,
                own: true,
                hits,
            },
        );
    }

    fn forget(&mut self, labels: &L, own: bool) {
        self.family.remove(labels);
        if own {
            self.own -= 1;
            let ns = &labels.edge().src_namespace;
            if let Some(n) = self.per_namespace.get_mut(ns) {
                *n -= 1;
                if *n == 0 {
                    self.per_namespace.remove(ns);
                }
            }
        }
    }

    /// Decides which series an update to `labels` goes to, records it as seen at `now`, and
    /// runs `update` on that series' metric.
    pub(crate) fn update(&mut self, labels: L, now: Nanos, update: impl FnOnce(&M)) -> Admission {
        if let Some(live) = self.live.get_mut(&labels) {
            live.last_seen = now;
            live.hits += 1;
            update(&self.family.get_or_create(&labels));
            return Admission::Own;
        }
        let fold = if self.own >= self.max_series {
            Some(Fold::All)
        } else if self.ns_count(&labels.edge().src_namespace) >= self.max_per_namespace {
            Some(Fold::Namespace)
        } else {
            None
        };
        let Some(fold) = fold else {
            // A slot freed mid-window (by `expire`) may admit a candidate of this window: it
            // is no longer one, or the next `rebalance` would admit it a second time.
            self.candidates.remove(&labels);
            update(&self.family.get_or_create(&labels));
            self.admit(labels, now, 1);
            return Admission::New;
        };
        let folded = labels.with_edge(labels.edge().folded(fold));
        update(&self.family.get_or_create(&folded));
        self.live
            .entry(folded)
            .and_modify(|l| l.last_seen = now)
            .or_insert(Live {
                last_seen: now,
                own: false,
                hits: 0,
            });
        if let Some(h) = self.candidates.get_mut(&labels) {
            *h += 1;
        } else if self.candidates.len() < self.max_series {
            self.candidates.insert(labels, 1);
        }
        Admission::Folded
    }

    /// Promotes the most active candidates of the window over the least active admitted
    /// series, then starts a new window. Returns how many series were promoted.
    pub(crate) fn rebalance(&mut self, now: Nanos) -> usize {
        let mut candidates: Vec<(L, u64)> = self
            .candidates
            .drain()
            .filter(|(_, hits)| *hits >= MIN_PROMOTION_HITS)
            .collect();
        let mut promoted = 0;
        if !candidates.is_empty() {
            candidates.sort_by_key(|c| std::cmp::Reverse(c.1));
            // Admitted series, least active first.
            let mut admitted: Vec<(L, u64)> = self
                .live
                .iter()
                .filter(|(_, l)| l.own)
                .map(|(k, l)| (k.clone(), l.hits))
                .collect();
            admitted.sort_by_key(|(_, hits)| *hits);
            let mut evicted: HashSet<usize> = HashSet::new();
            for (candidate, hits) in candidates {
                // Admitting an admitted series again would count it twice against the budget.
                if self.live.contains_key(&candidate) {
                    continue;
                }
                let ns = candidate.edge().src_namespace.clone();
                let ns_full = self.ns_count(&ns) >= self.max_per_namespace;
                if self.own < self.max_series && !ns_full {
                    self.admit(candidate, now, 0);
                    promoted += 1;
                    continue;
                }
                let victim = admitted.iter().enumerate().find(|(i, (l, _))| {
                    !evicted.contains(i) && (!ns_full || l.edge().src_namespace == ns)
                });
                let Some((i, (victim, victim_hits))) = victim else {
                    continue;
                };
                if victim_hits.saturating_mul(2) >= hits {
                    continue;
                }
                evicted.insert(i);
                let victim = victim.clone();
                self.live.remove(&victim);
                self.forget(&victim, true);
                self.admit(candidate, now, 0);
                promoted += 1;
            }
        }
        for live in self.live.values_mut() {
            live.hits = 0;
        }
        promoted
    }

    /// Removes the series not updated since `cutoff` (exclusive). Returns how many went.
    pub(crate) fn expire(&mut self, cutoff: Nanos) -> usize {
        let mut gone = Vec::new();
        self.live.retain(|labels, live| {
            if live.last_seen < cutoff {
                gone.push((labels.clone(), live.own));
                false
            } else {
                true
            }
        });
        for (labels, own) in &gone {
            self.forget(labels, *own);
        }
        gone.len()
    }

    /// Live series, overflow buckets included.
    pub(crate) fn len(&self) -> usize {
        self.live.len()
    }
}
