//! The OpenTelemetry logs exporter: flow records to an OTLP/HTTP endpoint (protobuf,
//! `POST <endpoint>/v1/logs`), from a bounded buffer, in batches.
//!
//! The buffer holds at most [`OtlpOptions::buffer_records`] records, the batch being sent
//! included: a record is removed only once the collector has taken it. While the collector is
//! slow or away, records wait (retried with jittered exponential backoff); once the buffer is
//! full, new records are dropped and counted (`buffer_full`), so an outage costs bounded memory
//! and a known number of records, never the agent. A batch the collector refuses outright (a 4xx
//! other than 429, or records it reports rejected in a partial success) is dropped and counted
//! (`rejected`); what is still buffered when the agent stops and cannot be sent within the
//! shutdown deadline is counted (`shutdown`). So `exported + dropped` accounts for every record
//! offered: `flowwatch_flow_export_records_total` and
//! `flowwatch_flow_export_records_dropped_total{reason}`.

use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::otlp_proto::{self, Value};
use crate::flowlog::FlowRecord;
use crate::k8s::backoff::Backoff;

/// Why records were not exported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The buffer was full (the collector slow or unreachable for a while).
    BufferFull,
    /// The collector refused them (4xx other than 429, or a partial success's rejected count).
    Rejected,
    /// Still buffered when the agent stopped and not sent within the shutdown deadline.
    Shutdown,
}

impl DropReason {
    pub const ALL: [DropReason; 3] = [
        DropReason::BufferFull,
        DropReason::Rejected,
        DropReason::Shutdown,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::BufferFull => "buffer_full",
            DropReason::Rejected => "rejected",
            DropReason::Shutdown => "shutdown",
        }
    }
}

impl EncodeLabelValue for DropReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DropLabels {
    reason: DropReason,
}

/// The exporter's metrics (registered only when export is on).
#[derive(Clone, Debug, Default)]
pub struct ExportStats {
    exported: Counter,
    dropped: Family<DropLabels, Counter>,
    buffered: Gauge,
}

impl ExportStats {
    pub fn register(&self, registry: &mut Registry) {
        for reason in DropReason::ALL {
            let _ = self.dropped.get_or_create(&DropLabels { reason });
        }
        registry.register(
            "flow_export_records",
            "Flow records the OpenTelemetry collector accepted",
            self.exported.clone(),
        );
        registry.register(
            "flow_export_records_dropped",
            "Flow records not exported, by reason",
            self.dropped.clone(),
        );
        registry.register(
            "flow_export_buffered_records",
            "Flow records waiting in the export buffer",
            self.buffered.clone(),
        );
    }
    pub fn exported(&self) -> u64 {
        self.exported.get()
    }
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped.get_or_create(&DropLabels { reason }).get()
    }
    fn drop_n(&self, reason: DropReason, n: u64) {
        if n > 0 {
            self.dropped.get_or_create(&DropLabels { reason }).inc_by(n);
        }
    }
}

/// Where and how to export.
#[derive(Clone, Debug)]
pub struct OtlpOptions {
    /// `http://host:port` (the path `/v1/logs` is added) or `http://host:port/path`.
    pub endpoint: String,
    /// Most records held (queued and in flight).
    pub buffer_records: usize,
    /// Most records per request.
    pub batch_records: usize,
    /// A partial batch is sent after waiting this long.
    pub flush_interval: Duration,
    /// One request's time limit.
    pub timeout: Duration,
    /// Time to send what is buffered when the agent stops.
    pub shutdown_deadline: Duration,
    /// Resource attributes (the agent: `service.name`, `k8s.node.name`, ...).
    pub resource: Vec<(String, Value)>,
}

impl OtlpOptions {
    pub fn new(endpoint: &str) -> OtlpOptions {
        OtlpOptions {
            endpoint: endpoint.to_string(),
            buffer_records: 10_000,
            batch_records: 512,
            flush_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
            shutdown_deadline: Duration::from_secs(5),
            resource: Vec::new(),
        }
    }
}

/// `http://host:port[/path]`, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectorEndpoint {
    pub host: String,
    pub port: u16,
    pub path: String,
}

/// Why the exporter could not start, or could not reach the collector.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// `--otlp-endpoint` is not a valid endpoint; the message says what a valid one looks like.
    #[error("{0}")]
    Endpoint(String),
    #[error("the export buffer and batch need room for at least one record")]
    NoRoom,
    #[error("connecting to {host}:{port}")]
    Connect {
        host: String,
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP handshake")]
    Handshake(#[source] hyper::Error),
}

/// Parses `--otlp-endpoint`; the error says what a valid one looks like.
pub fn parse_endpoint(s: &str) -> Result<CollectorEndpoint, String> {
    let rest = s.strip_prefix("http://").ok_or_else(|| {
        if s.starts_with("https://") {
            format!("{s:?}: https is not supported; export to a collector on the node or in the cluster over http (e.g. http://otel-collector:4318)")
        } else {
            format!("{s:?}: expected http://host:port (OTLP/HTTP, e.g. http://otel-collector:4318)")
        }
    })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("{s:?}: port {p:?} is not a number 1..65535"))?,
        ),
        _ => (authority, 4318),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 {
        return Err(format!("{s:?}: expected http://host:port"));
    }
    let path = if path.is_empty() || path == "/" {
        "/v1/logs".to_string()
    } else {
        path.to_string()
    };
    Ok(CollectorEndpoint {
        host: host.to_string(),
        port,
        path,
    })
}

struct Shared {
    queue: Mutex<VecDeque<Bytes>>,
    capacity: usize,
    batch: usize,
    /// Wakes the sender when a batch is full.
    notify: Notify,
    stats: ExportStats,
    offered: AtomicU64,
}

/// The handle the agent offers records to; cheap to clone.
#[derive(Clone)]
pub struct OtlpExporter {
    shared: Arc<Shared>,
}

/// Unix nanoseconds of an RFC 3339 time (0 when it does not parse).
fn unix_nanos(t: &str) -> u64 {
    humantime::parse_rfc3339(t)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64)
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl OtlpExporter {
    /// Starts the sender on the current runtime. It stops when `stop` is cancelled, after
    /// sending what it can within the shutdown deadline; await the returned handle for that.
    pub fn start(
        opts: OtlpOptions,
        stats: ExportStats,
        stop: CancellationToken,
    ) -> Result<(OtlpExporter, tokio::task::JoinHandle<()>), ExportError> {
        let endpoint = parse_endpoint(&opts.endpoint).map_err(ExportError::Endpoint)?;
        if opts.buffer_records == 0 || opts.batch_records == 0 {
            return Err(ExportError::NoRoom);
        }
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            capacity: opts.buffer_records,
            batch: opts.batch_records.min(opts.buffer_records),
            notify: Notify::new(),
            stats,
            offered: AtomicU64::new(0),
        });
        let sender = Sender {
            shared: shared.clone(),
            endpoint,
            opts,
            conn: None,
            backoff: Backoff::new(
                Duration::from_millis(250),
                Duration::from_secs(10),
                Backoff::seed(0x07e1),
            ),
            last_error: None,
        };
        let task = tokio::spawn(sender.run(stop));
        Ok((OtlpExporter { shared }, task))
    }

    /// Queues one flow record, or counts it dropped when the buffer is full. Never blocks.
    pub fn offer(&self, record: &FlowRecord) {
        let body = record.to_json_line();
        let encoded = otlp_proto::log_record(
            unix_nanos(&record.end),
            now_nanos(),
            &body,
            &otlp_proto::flow_attributes(record),
        );
        self.offer_encoded(Bytes::from(encoded));
    }

    fn offer_encoded(&self, record: Bytes) {
        let s = &self.shared;
        s.offered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut q = crate::sync::lock(&s.queue);
        if q.len() >= s.capacity {
            drop(q);
            s.stats.drop_n(DropReason::BufferFull, 1);
            return;
        }
        q.push_back(record);
        let len = q.len();
        drop(q);
        s.stats.buffered.set(len as i64);
        if len >= s.batch {
            s.notify.notify_one();
        }
    }

    /// Records offered so far.
    pub fn offered(&self) -> u64 {
        self.shared
            .offered
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Records held now.
    pub fn buffered(&self) -> usize {
        crate::sync::lock(&self.shared.queue).len()
    }
}

/// What one request came to.
enum Sent {
    /// Taken; this many of the batch were rejected in a partial success.
    Accepted { rejected: u64 },
    /// Try again later (connection error, timeout, 429, 502, 503, 504).
    Retry(String),
    /// Refused for good.
    Refused(String),
}

struct Sender {
    shared: Arc<Shared>,
    endpoint: CollectorEndpoint,
    opts: OtlpOptions,
    conn: Option<SendRequest<Full<Bytes>>>,
    backoff: Backoff,
    /// Logged once per run of failures.
    last_error: Option<String>,
}

impl Sender {
    async fn run(mut self, stop: CancellationToken) {
        loop {
            if self.len() < self.shared.batch {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = self.shared.notify.notified() => {}
                    () = tokio::time::sleep(self.opts.flush_interval) => {}
                }
            }
            if self.len() == 0 {
                continue;
            }
            if self.send_batch().await {
                self.backoff.reset();
            } else {
                let pause = self.backoff.next_pause();
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
        // Stopping: send what is left while the deadline allows, then count the rest.
        let deadline = Instant::now() + self.opts.shutdown_deadline;
        while self.len() > 0 && Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.send_batch()).await {
                Ok(true) => {}
                Ok(false) | Err(_) => break,
            }
        }
        let left = {
            let mut q = self.queue();
            let n = q.len();
            q.clear();
            n
        };
        self.shared.stats.drop_n(DropReason::Shutdown, left as u64);
        self.shared.stats.buffered.set(0);
        if left > 0 {
            tracing::warn!(records = left, "flow export stopped with records unsent");
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Bytes>> {
        crate::sync::lock(&self.shared.queue)
    }

    fn len(&self) -> usize {
        self.queue().len()
    }

    /// Sends the oldest batch; it leaves the buffer only once the collector answered for it.
    /// Returns whether the batch is done with (taken or refused for good).
    async fn send_batch(&mut self) -> bool {
        let batch: Vec<Bytes> = self
            .queue()
            .iter()
            .take(self.shared.batch)
            .cloned()
            .collect();
        let n = batch.len() as u64;
        let body = otlp_proto::export_request(
            &self.opts.resource,
            env!("CARGO_PKG_VERSION"),
            batch.iter().map(std::convert::AsRef::as_ref),
        );
        let outcome = if let Ok(o) = tokio::time::timeout(self.opts.timeout, self.post(body)).await
        {
            o
        } else {
            self.conn = None;
            Sent::Retry(format!("no answer within {:?}", self.opts.timeout))
        };
        let done = match outcome {
            Sent::Accepted { rejected } => {
                let rejected = rejected.min(n);
                self.shared.stats.exported.inc_by(n - rejected);
                self.shared.stats.drop_n(DropReason::Rejected, rejected);
                if self.last_error.take().is_some() {
                    tracing::info!("flow export: the collector takes records again");
                }
                true
            }
            Sent::Refused(why) => {
                self.shared.stats.drop_n(DropReason::Rejected, n);
                tracing::warn!(records = n, error = %why, "flow export: the collector refused a batch; dropped");
                true
            }
            Sent::Retry(why) => {
                if self.last_error.is_none() {
                    tracing::warn!(error = %why, endpoint = %self.opts.endpoint, "flow export: collector unavailable; buffering and retrying");
                }
                self.last_error = Some(why);
                false
            }
        };
        if done {
            let mut q = self.queue();
            let k = (n as usize).min(q.len());
            q.drain(..k);
            let len = q.len();
            drop(q);
            self.shared.stats.buffered.set(len as i64);
        }
        done
    }

    async fn post(&mut self, body: Vec<u8>) -> Sent {
        // The kept-alive connection if the collector has not closed it, else a new one.
        let reused = match self.conn.take() {
            Some(mut c) => c.ready().await.is_ok().then_some(c),
            None => None,
        };
        let mut conn = match reused {
            Some(c) => c,
            None => match self.connect().await {
                Ok(c) => c,
                Err(e) => return Sent::Retry(crate::error_chain::Chain(&e).to_string()),
            },
        };
        let request = hyper::Request::post(self.endpoint.path.as_str())
            .header(
                hyper::header::HOST,
                format!("{}:{}", self.endpoint.host, self.endpoint.port),
            )
            .header(hyper::header::CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(Bytes::from(body)));
        let request = match request {
            Ok(r) => r,
            Err(e) => return Sent::Refused(format!("building the request: {e}")),
        };
        let response = match conn.send_request(request).await {
            Ok(r) => r,
            Err(e) => return Sent::Retry(format!("sending: {e}")),
        };
        let status = response.status();
        // A response body of any sane collector is small; read at most 64 KiB of it.
        let body = Limited::new(response.into_body(), 64 * 1024)
            .collect()
            .await
            .map(http_body_util::Collected::to_bytes)
            .unwrap_or_default();
        self.conn = Some(conn);
        match status.as_u16() {
            200..=299 => Sent::Accepted {
                rejected: otlp_proto::rejected_in_response(&body),
            },
            429 | 502 | 503 | 504 => Sent::Retry(format!("HTTP {status}")),
            _ => Sent::Refused(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )),
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, ExportError> {
        let addr = (self.endpoint.host.as_str(), self.endpoint.port);
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|source| ExportError::Connect {
                host: self.endpoint.host.clone(),
                port: self.endpoint.port,
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(ExportError::Handshake)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_get_the_logs_path_unless_they_name_one() {
        assert_eq!(
            parse_endpoint("http://otel:4318").unwrap(),
            CollectorEndpoint {
                host: "otel".into(),
                port: 4318,
                path: "/v1/logs".into()
            }
        );
        assert_eq!(parse_endpoint("http://otel").unwrap().port, 4318);
        assert_eq!(
            parse_endpoint("http://127.0.0.1:9/custom/logs")
                .unwrap()
                .path,
            "/custom/logs"
        );
        assert_eq!(parse_endpoint("http://[::1]:4318/").unwrap().host, "::1");
        assert!(parse_endpoint("https://otel:4318")
            .unwrap_err()
            .contains("https is not supported"));
        assert!(parse_endpoint("otel:4318")
            .unwrap_err()
            .contains("http://host:port"));
        assert!(parse_endpoint("http://otel:x")
            .unwrap_err()
            .contains("port"));
    }

    #[tokio::test]
    async fn a_full_buffer_counts_what_it_drops() {
        let stats = ExportStats::default();
        let stop = CancellationToken::new();
        // Nothing listens on port 9 of loopback: every send fails and is retried.
        let mut opts = OtlpOptions::new("http://127.0.0.1:9");
        opts.buffer_records = 3;
        opts.shutdown_deadline = Duration::from_millis(100);
        let (exp, task) = OtlpExporter::start(opts, stats.clone(), stop.clone()).unwrap();
        for _ in 0..5 {
            exp.offer_encoded(Bytes::from_static(b"x"));
        }
        assert_eq!(exp.buffered(), 3);
        assert_eq!(stats.dropped(DropReason::BufferFull), 2);
        stop.cancel();
        task.await.unwrap();
        assert_eq!(stats.dropped(DropReason::Shutdown), 3);
        assert_eq!(stats.exported(), 0);
    }
}
