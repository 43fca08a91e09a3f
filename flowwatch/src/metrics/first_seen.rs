//! The first-seen families: one gauge per edge this node knows (the Unix time it was first
//! seen), a counter of new edges, and the errors of the state file that keeps them across
//! restarts. The set itself is [`crate::first_seen::KnownEdges`]; it is bounded by the series
//! budget (`max_series_per_family`, `max_series_per_namespace`), and an edge over it is counted
//! in `flowwatch_series_dropped_total{family="edge_first_seen"}` (and not remembered).
//!
//! Tracking starts when the agent calls [`super::Metrics::start_first_seen`] with the restored
//! set and the wall clock: `record_flow` takes monotonic time, the gauge is Unix seconds.

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::labels::{EdgeLabels, EdgeStateError, EdgeStateLabels, Scope, ScopeLabels};
use crate::first_seen::{KnownEdges, Observed};
use crate::model::Nanos;

type F64Gauge = Gauge<f64, AtomicU64>;

/// Unix nanoseconds minus monotonic nanoseconds (see [`crate::flowlog::WallClock`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WallOffset(pub i128);

impl WallOffset {
    fn unix_secs(self, now: Nanos) -> u64 {
        u64::try_from((i128::from(now) + self.0).max(0) / 1_000_000_000).unwrap_or(u64::MAX)
    }
}

struct Tracker {
    known: KnownEdges,
    wall: WallOffset,
}

pub(crate) struct FirstSeenFamilies {
    first_seen: Family<EdgeLabels, F64Gauge>,
    new_edges: Family<ScopeLabels, Counter>,
    state_errors: Family<EdgeStateLabels, Counter>,
    /// `None` until the agent starts tracking.
    tracker: Mutex<Option<Tracker>>,
}

/// What [`FirstSeenFamilies::observe`] did, for the budget metrics.
pub(crate) struct Update {
    pub overflow: bool,
    pub len: Option<usize>,
}

impl FirstSeenFamilies {
    pub(crate) fn new() -> Self {
        FirstSeenFamilies {
            first_seen: Family::default(),
            new_edges: Family::default(),
            state_errors: Family::default(),
            tracker: Mutex::new(None),
        }
    }

    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "edge_first_seen_timestamp",
            "Unix time this node first saw the workload edge (a connection decided: \
             established, failed or unanswered); kept across agent restarts in the state \
             directory. The new-edge alert takes the earliest over the agents",
            Unit::Seconds,
            self.first_seen.clone(),
        );
        registry.register(
            "new_edges",
            "Workload edges (workload pair, port, protocol) this node saw for the first time, \
             by scope; restored edges are not counted",
            self.new_edges.clone(),
        );
        registry.register(
            "edge_state_errors",
            "Known-edges state file not read or written, by reason; on a read error the agent \
             starts with no known edges",
            self.state_errors.clone(),
        );
        for scope in Scope::ALL {
            // Present from the start, so `increase()` sees the first new edge.
            let _ = self.new_edges.get_or_create(&ScopeLabels { scope: *scope });
        }
        for reason in EdgeStateError::ALL {
            let _ = self
                .state_errors
                .get_or_create(&EdgeStateLabels { reason: *reason });
        }
    }

    fn tracker(&self) -> std::sync::MutexGuard<'_, Option<Tracker>> {
        crate::sync::lock(&self.tracker)
    }

    /// Starts tracking with `known` (restored); exports its edges.
    pub(crate) fn start(&self, known: KnownEdges, wall: WallOffset) -> usize {
        self.first_seen.clear();
        for (edge, seen) in known.iter() {
            self.first_seen.get_or_create(edge).set(seen.first as f64);
        }
        let n = known.len();
        *self.tracker() = Some(Tracker { known, wall });
        n
    }

    /// One decided connection of `edge`.
    pub(crate) fn observe(&self, edge: &EdgeLabels, scope: Scope, now: Nanos) -> Update {
        let mut guard = self.tracker();
        let Some(t) = guard.as_mut() else {
            return Update {
                overflow: false,
                len: None,
            };
        };
        let secs = t.wall.unix_secs(now);
        match t.known.observe(edge, secs) {
            Observed::New => {
                self.first_seen.get_or_create(edge).set(secs as f64);
                self.new_edges.get_or_create(&ScopeLabels { scope }).inc();
                Update {
                    overflow: false,
                    len: Some(t.known.len()),
                }
            }
            Observed::Overflow => Update {
                overflow: true,
                len: None,
            },
            Observed::Known | Observed::Ignored => Update {
                overflow: false,
                len: None,
            },
        }
    }

    /// When the set changed since the last call: forgets the edges idle for `retention_secs`
    /// and returns the state file's bytes. `None` when nothing changed or tracking is off.
    pub(crate) fn take_changes(&self, now: Nanos, retention_secs: u64) -> Option<(Vec<u8>, usize)> {
        let mut guard = self.tracker();
        let t = guard.as_mut()?;
        let before = t.wall.unix_secs(now).saturating_sub(retention_secs);
        for gone in t.known.forget_idle(before) {
            self.first_seen.remove(&gone);
        }
        if !t.known.take_dirty() {
            return None;
        }
        Some((
            crate::first_seen::state::encode(t.known.iter()),
            t.known.len(),
        ))
    }

    /// A save that failed: the set is saved again next time.
    pub(crate) fn save_failed(&self) {
        if let Some(t) = self.tracker().as_mut() {
            t.known.mark_dirty();
        }
        self.count_error(EdgeStateError::WriteFailed);
    }

    pub(crate) fn count_error(&self, reason: EdgeStateError) {
        self.state_errors
            .get_or_create(&EdgeStateLabels { reason })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

    use crate::first_seen::KnownEdges;
    use crate::metrics::{
        encode_prometheus_text, CniPresence, EdgeEnd, FlowEdge, Metrics, MetricsConfig, TierLabel,
        Verdict, WallOffset, WorkloadKind,
    };
    use crate::model::{Counters, Nanos, Outcome, Protocol};

    const SEC: Nanos = 1_000_000_000;
    /// Monotonic 0 is Unix time 1_700_000_000.
    const WALL: WallOffset = WallOffset(1_700_000_000 * SEC as i128);

    fn edge(src: (&str, &str), dst: (&str, &str), port: u16) -> FlowEdge {
        FlowEdge {
            src: EdgeEnd::workload(src.0, src.1, WorkloadKind::Deployment),
            dst: EdgeEnd::workload(dst.0, dst.1, WorkloadKind::Deployment),
            dst_port: port,
            protocol: Protocol::Tcp,
            verdict: Verdict::Uncovered,
            egress: Verdict::Uncovered,
            ingress: Verdict::Uncovered,
            tier: TierLabel::None,
            cni_policy_present: CniPresence::No,
        }
    }

    fn lines(reg: &Registry, prefix: &str) -> Vec<String> {
        encode_prometheus_text(reg)
            .unwrap()
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_string)
            .collect()
    }

    fn metrics(budget: usize) -> (Metrics, Registry) {
        Metrics::new(&MetricsConfig {
            max_series_per_family: budget,
            max_series_per_namespace: budget,
            ..MetricsConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn a_new_edge_gets_its_first_seen_gauge_and_counts_once_failed_attempts_included() {
        let (m, reg) = metrics(100);
        let web_api = edge(("shop", "web"), ("shop", "api"), 8080);
        // Not started: nothing tracked.
        m.record_flow(
            &web_api,
            Some(Outcome::Established),
            &Counters::default(),
            SEC,
        );
        assert!(lines(&reg, "flowwatch_edge_first_seen_timestamp_seconds{").is_empty());
        assert_eq!(m.start_first_seen(KnownEdges::new(100, 100), WALL), 0);
        m.record_flow(
            &web_api,
            Some(Outcome::Failed),
            &Counters::default(),
            5 * SEC,
        );
        m.record_flow(
            &web_api,
            Some(Outcome::Established),
            &Counters::default(),
            9 * SEC,
        );
        // Traffic alone (no decided outcome) makes no edge known.
        let traffic = Counters {
            fwd_packets: 1,
            fwd_bytes: 60,
            ..Counters::default()
        };
        m.record_flow(
            &edge(("shop", "web"), ("shop", "api"), 9090),
            None,
            &traffic,
            9 * SEC,
        );
        assert_eq!(
            lines(&reg, "flowwatch_edge_first_seen_timestamp_seconds{"),
            vec!["flowwatch_edge_first_seen_timestamp_seconds{src_namespace=\"shop\",src_workload=\"web\",src_kind=\"deployment\",dst_namespace=\"shop\",dst_workload=\"api\",dst_kind=\"deployment\",dst_port=\"8080\",protocol=\"TCP\"} 1700000005.0"]
        );
        let om = crate::metrics::encode_openmetrics(&reg).unwrap();
        assert!(om.contains("# UNIT flowwatch_edge_first_seen_timestamp_seconds seconds\n"));
        assert_eq!(
            lines(&reg, "flowwatch_new_edges_total{scope=\"same_namespace\"}"),
            vec!["flowwatch_new_edges_total{scope=\"same_namespace\"} 1"]
        );
        assert_eq!(
            lines(&reg, "flowwatch_series{family=\"edge_first_seen\"}"),
            vec!["flowwatch_series{family=\"edge_first_seen\"} 1"]
        );
        // An unknown destination (an address not known yet) is no edge to remember.
        let mut to_unknown = edge(("shop", "web"), ("", ""), 80);
        to_unknown.dst = EdgeEnd::unknown();
        m.record_flow(
            &to_unknown,
            Some(Outcome::Established),
            &Counters::default(),
            10 * SEC,
        );
        assert_eq!(
            lines(&reg, "flowwatch_edge_first_seen_timestamp_seconds{").len(),
            1
        );
    }

    #[test]
    fn edges_over_the_budget_are_counted_as_dropped_and_not_remembered() {
        let (m, reg) = metrics(1);
        m.start_first_seen(KnownEdges::new(1, 1), WALL);
        for port in [1, 2, 2] {
            m.record_flow(
                &edge(("a", "x"), ("b", "y"), port),
                Some(Outcome::Established),
                &Counters::default(),
                SEC,
            );
        }
        assert_eq!(
            lines(&reg, "flowwatch_edge_first_seen_timestamp_seconds{").len(),
            1
        );
        assert_eq!(
            lines(
                &reg,
                "flowwatch_series_dropped_total{family=\"edge_first_seen\"}"
            ),
            vec!["flowwatch_series_dropped_total{family=\"edge_first_seen\"} 2"]
        );
    }

    #[test]
    fn the_state_saved_by_one_agent_restores_the_same_gauges_in_the_next_and_nothing_is_new() {
        let (m, reg) = metrics(100);
        m.start_first_seen(KnownEdges::new(100, 100), WALL);
        let e = edge(("shop", "web"), ("data", "db"), 5432);
        m.record_flow(
            &e,
            Some(Outcome::Established),
            &Counters::default(),
            7 * SEC,
        );
        let bytes = m.first_seen_changes(8 * SEC, 86_400).expect("changed");
        assert_eq!(m.first_seen_changes(9 * SEC, 86_400), None, "saved once");
        let before = lines(&reg, "flowwatch_edge_first_seen_timestamp_seconds{");

        // The next agent: another monotonic clock, the same wall clock.
        let (m2, reg2) = metrics(100);
        let mut known = KnownEdges::new(100, 100);
        let edges = crate::first_seen::state::decode(&bytes, "test", 1 << 20).unwrap();
        known.restore(edges, 0);
        m2.start_first_seen(known, WallOffset(WALL.0 + 1000 * i128::from(SEC)));
        assert_eq!(
            lines(&reg2, "flowwatch_edge_first_seen_timestamp_seconds{"),
            before
        );
        m2.record_flow(
            &e,
            Some(Outcome::Established),
            &Counters::default(),
            60 * SEC,
        );
        assert_eq!(
            lines(&reg2, "flowwatch_edge_first_seen_timestamp_seconds{"),
            before
        );
        assert_eq!(
            lines(
                &reg2,
                "flowwatch_new_edges_total{scope=\"cross_namespace\"}"
            ),
            vec!["flowwatch_new_edges_total{scope=\"cross_namespace\"} 0"]
        );
        // Idle past the retention: forgotten, saved, gone from the exposition.
        let later = 1_000_000 * SEC;
        let bytes = m2.first_seen_changes(later, 3600).expect("forgotten");
        assert!(crate::first_seen::state::decode(&bytes, "t", 1 << 20)
            .unwrap()
            .is_empty());
        assert!(lines(&reg2, "flowwatch_edge_first_seen_timestamp_seconds{").is_empty());
    }
}
