//! Giving the heap of dropped views back to the system.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// A materialized view is tens of MB of small allocations at 10,000 pods; once it is dropped,
/// glibc keeps the freed pages. A few seconds after views were materialized, give them back
/// (`malloc_trim`), twice, in case a view was still in use at the first try.
pub(super) async fn release_freed_memory(materialized: Arc<AtomicU64>, cancel: CancellationToken) {
    let mut seen = 0;
    let mut pending = 0u8;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        let n = materialized.load(Ordering::Relaxed);
        if n != seen {
            seen = n;
            pending = 2;
        }
        if pending > 0 {
            pending -= 1;
            trim_heap();
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap() {
    // SAFETY: malloc_trim has no preconditions; it only returns free heap pages to the OS.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() {}
