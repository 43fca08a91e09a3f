//! The series budget: bounded edge families with an `other` bucket and expiry of idle series.

use std::collections::HashMap;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::TypedMetric;

use super::labels::{Fold, HasEdge, Name};
use crate::model::Nanos;

/// What one update did to the budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// The series already existed or was admitted.
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
}

/// One edge family under the budget. `M` is the metric (a counter); the family owns the series.
pub(crate) struct BudgetedFamily<L: HasEdge, M> {
    pub(crate) family: Family<L, M>,
    live: HashMap<L, Live>,
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
            per_namespace: HashMap::new(),
            own: 0,
            max_series,
            max_per_namespace,
        }
    }

    /// Decides which series an update to `labels` goes to, records it as seen at `now`, and
    /// runs `update` on that series' metric.
    pub(crate) fn update(&mut self, labels: L, now: Nanos, update: impl FnOnce(&M)) -> Admission {
        if let Some(live) = self.live.get_mut(&labels) {
            live.last_seen = now;
            update(&self.family.get_or_create(&labels));
            return Admission::Own;
        }
        let ns_count = self
            .per_namespace
            .get(&labels.edge().src_namespace)
            .copied()
            .unwrap_or(0);
        let fold = if self.own >= self.max_series {
            Some(Fold::All)
        } else if ns_count >= self.max_per_namespace {
            Some(Fold::Namespace)
        } else {
            None
        };
        let Some(fold) = fold else {
            self.own += 1;
            *self
                .per_namespace
                .entry(labels.edge().src_namespace.clone())
                .or_insert(0) += 1;
            update(&self.family.get_or_create(&labels));
            self.live.insert(
                labels,
                Live {
                    last_seen: now,
                    own: true,
                },
            );
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
            });
        Admission::Folded
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
            self.family.remove(labels);
            if *own {
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
        gone.len()
    }

    /// Live series, overflow buckets included.
    pub(crate) fn len(&self) -> usize {
        self.live.len()
    }
}
