//! The debouncer: after changes settle, a new view generation is published (once every
//! kind has synced).
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::SyncStatus;

/// Publishes a new generation `debounce` after a change (changes within it are batched).
pub(super) async fn publish(
    tx: watch::Sender<u64>,
    status: Arc<SyncStatus>,
    changed: Arc<Notify>,
    debounce: Duration,
    cancel: CancellationToken,
) {
    let mut generation = 0u64;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = changed.notified() => {}
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(debounce) => {}
        }
        if !status.has_synced() {
            continue;
        }
        generation += 1;
        tracing::debug!(generation, "cluster changed");
        status.metrics.add_view();
        tx.send_replace(generation);
    }
}
