//! One encoding of the exposition shared by every scrape that can use it.
//!
//! Encoding 6,000 edge series takes milliseconds of CPU and 7 MB; encoding it per client (and
//! holding each copy until that client has read it) let 150 clients that never read take a
//! gigabyte. Here each format has one slot: a scrape shares the newest encoding when that
//! encoding started after the scrape arrived (a burst of concurrent scrapes waits for one
//! encoding, and nobody gets data older than their request); otherwise it encodes afresh.
//! Encodings are shared as reference-counted [`Bytes`], never copied per client, and the bytes
//! of all encodings still held by clients are bounded: past [`bytes_in_flight_budget`], a
//! scrape gets the newest encoding even if it predates the request (stale by at most the time
//! the slow clients take to be dropped by the write stall timeout). One encoding runs at a
//! time, whatever the format, so the budget is checked against every encoding alive.
//!
//! The budget is two encodings: the one slow clients hold and a fresh one. With four, the
//! floods of `benches/http_flood.rs` took the agent to 2.8x its idle RSS (the hardening bar is at
//! most 2x); with two, a scrape during such a flood may get an answer as old as the newest
//! encoding, at most a write stall timeout (10 s) old.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use prometheus_client::registry::Registry;

use super::Format;
use crate::metrics::exposition::{encode_openmetrics, encode_prometheus_text};
use crate::metrics::Metrics;

/// Encodings alive at once (in clients' hands or cached), as a multiple of one encoding.
pub const ENCODINGS_IN_FLIGHT: usize = 2;
/// The budget's floor, so a small exposition never makes scrapes share stale encodings.
pub const MIN_BYTES_IN_FLIGHT: usize = 8 * 1024 * 1024;

/// Bytes of encodings that may be alive at once, for an exposition of `size` bytes.
pub fn bytes_in_flight_budget(size: usize) -> usize {
    size.saturating_mul(ENCODINGS_IN_FLIGHT)
        .max(MIN_BYTES_IN_FLIGHT)
}

struct Encoded {
    started: Instant,
    body: Bytes,
}

/// An encoding's text, counted in the bytes in flight until its last holder drops it.
struct Tracked {
    text: String,
    live: Arc<AtomicUsize>,
}

impl Tracked {
    fn new(text: String, live: Arc<AtomicUsize>) -> Tracked {
        live.fetch_add(text.len(), Ordering::Relaxed);
        Tracked { text, live }
    }
}

impl AsRef<[u8]> for Tracked {
    fn as_ref(&self) -> &[u8] {
        self.text.as_bytes()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.live.fetch_sub(self.text.len(), Ordering::Relaxed);
    }
}

pub struct ExpositionCache {
    registry: Arc<Registry>,
    metrics: Metrics,
    /// OpenMetrics, Prometheus text. The async lock makes concurrent scrapes of one format
    /// wait for one encoding instead of each starting their own.
    slots: [tokio::sync::Mutex<Option<Encoded>>; 2],
    /// Held while encoding (either format): the budget check sees every encoding alive.
    encoding: tokio::sync::Mutex<()>,
    live: Arc<AtomicUsize>,
    encodings: AtomicU64,
}

impl ExpositionCache {
    pub fn new(registry: Arc<Registry>, metrics: Metrics) -> ExpositionCache {
        ExpositionCache {
            registry,
            metrics,
            slots: Default::default(),
            encoding: tokio::sync::Mutex::new(()),
            live: Arc::default(),
            encodings: AtomicU64::new(0),
        }
    }

    /// Bytes of encodings alive now (cached or held by clients).
    pub fn bytes_in_flight(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Encodings made so far.
    pub fn encodings(&self) -> u64 {
        self.encodings.load(Ordering::Relaxed)
    }

    /// The exposition for a scrape that arrived now.
    pub async fn get(&self, format: Format) -> Result<Bytes, EncodeError> {
        let arrived = Instant::now();
        let slot = match format {
            Format::OpenMetrics => &self.slots[0],
            Format::PrometheusText => &self.slots[1],
        };
        let mut slot = slot.lock().await;
        if let Some(last) = &*slot {
            if last.started >= arrived {
                return Ok(last.body.clone());
            }
        }
        let _encoding = self.encoding.lock().await;
        if let Some(last) = &*slot {
            let size = last.body.len();
            if self.bytes_in_flight() + size > bytes_in_flight_budget(size) {
                return Ok(last.body.clone());
            }
        }
        let registry = self.registry.clone();
        let metrics = self.metrics.clone();
        let live = self.live.clone();
        let started = Instant::now();
        let body = tokio::task::spawn_blocking(move || {
            let text = match format {
                Format::OpenMetrics => encode_openmetrics(&registry),
                Format::PrometheusText => encode_prometheus_text(&registry),
            }?;
            metrics.observe_scrape(started.elapsed());
            Ok::<_, EncodeError>(Bytes::from_owner(Tracked::new(text, live)))
        })
        .await??;
        self.encodings.fetch_add(1, Ordering::Relaxed);
        // The previous encoding leaves the slot; clients still sending it keep it alive.
        *slot = Some(Encoded {
            started,
            body: body.clone(),
        });
        Ok(body)
    }
}

/// Why a scrape got no exposition.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("encoding the metrics")]
    Encode(#[from] std::fmt::Error),
    #[error("the encoding task did not finish")]
    Task(#[from] tokio::task::JoinError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> Arc<ExpositionCache> {
        let (metrics, registry) =
            crate::metrics::Metrics::new(&crate::metrics::MetricsConfig::default()).unwrap();
        Arc::new(ExpositionCache::new(Arc::new(registry), metrics))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scrapes_that_arrive_during_an_encoding_share_the_next_one() {
        let cache = cache();
        // An encoding in progress (the slot held), and 50 scrapes arriving meanwhile.
        let held = cache.slots[1].lock().await;
        let scrapes: Vec<_> = (0..50)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.get(Format::PrometheusText).await })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        drop(held);
        let mut bodies = Vec::new();
        for s in scrapes {
            bodies.push(s.await.unwrap().unwrap());
        }
        assert_eq!(
            cache.encodings(),
            1,
            "one encoding for the 50 waiting scrapes"
        );
        // Shared, not copied: every body points at the same bytes.
        assert!(bodies.iter().all(|b| b.as_ptr() == bodies[0].as_ptr()));
        assert_eq!(cache.bytes_in_flight(), bodies[0].len());
        drop(bodies);
        // The cached encoding alone stays alive.
        assert!(cache.bytes_in_flight() > 0);
    }

    #[tokio::test]
    async fn past_the_budget_scrapes_share_the_newest_encoding() {
        let cache = cache();
        let first = cache.get(Format::OpenMetrics).await.unwrap();
        let size = first.len();
        // Clients holding old encodings up to the budget (simulated by counted bytes).
        let held = Tracked::new("x".repeat(bytes_in_flight_budget(size)), cache.live.clone());
        let shared = cache.get(Format::OpenMetrics).await.unwrap();
        assert_eq!(cache.encodings(), 1, "over budget: no new encoding");
        assert_eq!(shared.as_ptr(), first.as_ptr());
        drop(held);
        let fresh = cache.get(Format::OpenMetrics).await.unwrap();
        assert_eq!(cache.encodings(), 2, "within budget again: fresh");
        assert_ne!(fresh.as_ptr(), first.as_ptr());
    }
}
