//! The known-edges state of `--state-dir`: restored at start (a file that cannot be used is
//! logged, counted in `flowwatch_edge_state_errors_total{reason}`, and the agent starts with no
//! known edges), saved when the set changed (every few seconds at most) and at shutdown.

use std::path::PathBuf;
use std::time::SystemTime;

use crate::first_seen::state::{self, StateError};
use crate::first_seen::KnownEdges;
use crate::metrics::{EdgeStateError, Metrics, WallOffset};
use crate::model::Nanos;

pub struct EdgeMemory {
    path: Option<PathBuf>,
    retention_secs: u64,
}

fn reason(e: &StateError) -> EdgeStateError {
    match e {
        StateError::TooLarge { .. } => EdgeStateError::TooLarge,
        StateError::UnsupportedVersion { .. } => EdgeStateError::UnsupportedVersion,
        StateError::Corrupt { .. } => EdgeStateError::Corrupt,
        StateError::Read { .. } => EdgeStateError::ReadFailed,
        StateError::Write { .. } => EdgeStateError::WriteFailed,
    }
}

/// Restores the known edges from `state_dir` (if any) and starts tracking them.
pub fn start(
    state_dir: Option<&std::path::Path>,
    retention_days: u64,
    budget: (usize, usize),
    metrics: &Metrics,
    monotonic_now: Nanos,
) -> EdgeMemory {
    let wall = WallOffset(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128)
            - i128::from(monotonic_now),
    );
    let retention_secs = retention_days.saturating_mul(86_400);
    let mut known = KnownEdges::new(budget.0, budget.1);
    let path = state_dir.map(state::path_in);
    if let (Some(dir), Some(path)) = (state_dir, &path) {
        if let Err(e) = std::fs::create_dir_all(dir) {
            tracing::error!(dir = %dir.display(), error = %e, "state directory unusable; known edges are kept in memory only");
            metrics.count_edge_state_error(EdgeStateError::WriteFailed);
        }
        match state::load(path, state::size_limit(budget.0)) {
            Ok(None) => {
                tracing::info!(path = %path.display(), "no known-edges state yet; every edge is new to this node");
            }
            Ok(Some(edges)) => {
                let total = edges.len();
                let now_secs = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let over = known.restore(edges, now_secs.saturating_sub(retention_secs));
                if over > 0 {
                    tracing::warn!(
                        over,
                        "known edges over the series budget left out of the restored state"
                    );
                }
                tracing::info!(path = %path.display(), in_file = total, restored = known.len(), "known edges restored");
            }
            Err(e) => {
                tracing::error!(error = %e, "known-edges state not used; starting with no known edges (the file is replaced at the next save)");
                metrics.count_edge_state_error(reason(&e));
            }
        }
    }
    metrics.start_first_seen(known, wall);
    EdgeMemory {
        path,
        retention_secs,
    }
}

impl EdgeMemory {
    /// Writes the state file if the set changed (and forgets edges idle past the retention).
    pub fn save(&self, metrics: &Metrics, now: Nanos) {
        let Some(bytes) = metrics.first_seen_changes(now, self.retention_secs) else {
            return;
        };
        let Some(path) = &self.path else {
            return;
        };
        if let Err(e) = state::save(path, &bytes) {
            tracing::error!(error = %e, "saving the known edges; kept in memory, retried at the next save");
            metrics.first_seen_save_failed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{encode_prometheus_text, MetricsConfig};

    fn sample(reg: &prometheus_client::registry::Registry, series: &str) -> Option<f64> {
        encode_prometheus_text(reg)
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    const GOOD: &str = r#"{"version":1,"edges":[{"src_namespace":"shop","src_workload":"web","src_kind":"deployment","dst_namespace":"shop","dst_workload":"api","dst_kind":"deployment","dst_port":8080,"protocol":"TCP","first_seen":1700000000,"last_seen":1700000000}]}"#;

    #[test]
    fn a_file_that_cannot_be_used_is_counted_by_reason_and_the_agent_starts_empty() {
        for (bytes, reason) in [
            (b"{\"version\":1,\"edg".to_vec(), "corrupt"),
            (
                b"{\"version\":7,\"edges\":[]}".to_vec(),
                "unsupported_version",
            ),
            (vec![b' '; 10_000], "too_large"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(state::path_in(dir.path()), &bytes).unwrap();
            let (m, reg) = Metrics::new(&MetricsConfig {
                max_series_per_family: 2,
                max_series_per_namespace: 2,
                ..MetricsConfig::default()
            })
            .unwrap();
            start(Some(dir.path()), 100_000, (2, 2), &m, 0);
            let errors = format!("flowwatch_edge_state_errors_total{{reason=\"{reason}\"}}");
            assert_eq!(sample(&reg, &errors), Some(1.0), "{reason}");
            assert_eq!(
                sample(&reg, "flowwatch_series{family=\"edge_first_seen\"}"),
                Some(0.0),
                "{reason}"
            );
        }
    }

    #[test]
    fn a_good_file_is_restored_and_an_unwritable_directory_is_counted_at_each_save() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(state::path_in(dir.path()), GOOD).unwrap();
        let (m, reg) = Metrics::new(&MetricsConfig::default()).unwrap();
        // A retention long enough for the file's 2023 edge.
        let memory = start(Some(dir.path()), 36_500, (10, 10), &m, 0);
        assert_eq!(
            sample(&reg, "flowwatch_series{family=\"edge_first_seen\"}"),
            Some(1.0)
        );
        // Nothing changed: nothing written.
        std::fs::remove_file(state::path_in(dir.path())).unwrap();
        memory.save(&m, 1_000_000_000);
        assert!(!state::path_in(dir.path()).exists());

        // The state directory is a file: the agent runs on, in memory, counting each failure.
        let blocked = dir.path().join("not-a-dir");
        std::fs::write(&blocked, b"").unwrap();
        let (m, reg) = Metrics::new(&MetricsConfig::default()).unwrap();
        let memory = start(Some(&blocked), 30, (10, 10), &m, 0);
        let write_failed = "flowwatch_edge_state_errors_total{reason=\"write_failed\"}";
        assert_eq!(sample(&reg, write_failed), Some(1.0));
        let edge = crate::metrics::FlowEdge {
            src: crate::metrics::EdgeEnd::workload(
                "shop",
                "web",
                crate::metrics::WorkloadKind::Deployment,
            ),
            dst: crate::metrics::EdgeEnd::external(),
            dst_port: 443,
            protocol: crate::model::Protocol::Tcp,
            verdict: crate::metrics::Verdict::Uncovered,
            egress: crate::metrics::Verdict::Uncovered,
            ingress: crate::metrics::Verdict::NotApplicable,
            tier: crate::metrics::TierLabel::None,
            cni_policy_present: crate::metrics::CniPresence::No,
        };
        m.record_flow(
            &edge,
            Some(crate::model::Outcome::Established),
            &crate::model::Counters::default(),
            1,
        );
        memory.save(&m, 2);
        assert_eq!(sample(&reg, write_failed), Some(2.0));
        memory.save(&m, 3);
        assert_eq!(sample(&reg, write_failed), Some(3.0), "retried");
    }
}
