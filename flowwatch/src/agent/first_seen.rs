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
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0)
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
                tracing::info!(path = %path.display(), "no known-edges state yet; every edge is new to this node")
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
