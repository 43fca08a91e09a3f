//! The agent runtime: wires the datapath, the pipeline, the flow log and (when configured) the
//! inventory, policy verdicts and metrics, and runs until SIGTERM/SIGINT.

mod backlog;
mod edge;
mod export;
mod local_addresses;
pub mod pipeline;
pub mod report;

use std::time::{Duration, SystemTime};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio_util::sync::CancellationToken;

use std::sync::Arc;

use crate::aggregate::{AggregatorConfig, FinishedFlow};
use crate::classify::{Classification, Classifier};
use crate::cli::RunArgs;
use crate::datapath::{self, Datapath, DatapathError, DatapathOptions, InterfacePatterns};
use crate::enrich::EnrichOptions;
use crate::flowlog::writer::{FlowLogWriter, Rotation};
use crate::flowlog::{FlowRecord, WallClock};
use crate::http::{self, HttpState, Readiness};
use crate::k8s::{self, ClusterWatch};
use crate::metrics::{KernelMap, LossReason, Metrics, MetricsConfig};
use crate::model::Nanos;
use crate::policy::PolicyOptions;
use crate::source::FlowSource;
use pipeline::Pipeline;
use report::Reporter;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error("flow log {path}: {source}")]
    FlowLog {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("installing signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error("watching network interfaces: {0}")]
    LinkWatch(#[source] std::io::Error),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::ConfigError),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to the Kubernetes API: {0}")]
    Kube(String),
    #[error("{0}")]
    Tls(String),
    #[error("--otlp-endpoint: {0}")]
    Export(String),
}

/// How long after a TCP connection's end, when the agent saw the whole end (both sockets here,
/// FINs both ways, a RST), its record waits for its last packet. The last close follows the last
/// packet by microseconds (the closing ACK reaches the TC program before the peer's socket sees
/// it), and each poll drains socket events before it reads the packet totals; the margin covers
/// a packet still queued on another CPU. Short, so a closed connection's kernel entry is read
/// once or twice, not once per poll for seconds. (A local socket whose remote peer has not
/// closed yet waits longer: `AggregatorConfig::peer_close_wait`.)
const CLOSE_LINGER: Nanos = 100_000_000;

/// Kernel monotonic time (CLOCK_MONOTONIC), the clock of the kernel programs' timestamps.
pub fn monotonic_now() -> Nanos {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Runs the agent until a signal (or `--exit-after-secs`).
pub async fn run(args: RunArgs) -> Result<(), AgentError> {
    let cancel = CancellationToken::new();
    spawn_signal_handler(cancel.clone())?;
    // The soft descriptor limit (often 1024) is what a flood of connections ran out of first;
    // the HTTP edge caps its connections at half of what this gives.
    if let Err(e) = http::raise_fd_limit() {
        tracing::warn!(error = %e, "raising the open-file limit");
    }

    // The HTTP server starts first, so /healthz answers (and /readyz says why not) while the
    // programs load and the caches fill.
    let (metrics, mut registry) = Metrics::new(&MetricsConfig {
        max_series_per_family: args.series_budget,
        max_series_per_namespace: args.series_budget_per_namespace,
        series_ttl: Duration::from_secs(args.series_ttl_secs),
        build: crate::metrics::BuildInfo {
            ebpf_object_sha256: datapath::object_sha256(),
            ..Default::default()
        },
        rule_usage: true,
    })?;
    let inventory = k8s::source::from_settings(
        args.snapshots.clone(),
        args.kube,
        args.kube_list_strategy,
        cancel.clone(),
    )
    .await
    .map_err(|e| AgentError::Kube(e.to_string()))?;
    if let Some(watch) = &inventory {
        watch.status().register(&mut registry);
    }
    let export = export::start(&args, &mut registry).map_err(AgentError::Export)?;
    let readiness = Readiness::new();
    let listener = http::bind(args.listen).map_err(|source| AgentError::Listen {
        addr: args.listen,
        source,
    })?;
    // The HTTP server outlives the signal: while the agent flushes, /readyz answers "503
    // stopping" and /metrics serves the flush's counts. It stops when `run` returns.
    let http_stop = CancellationToken::new();
    let _stop_http_on_return = http_stop.clone().drop_guard();
    let tls = edge::tls(&args, &http_stop)?;
    let state = HttpState::new(Arc::new(registry), metrics.clone(), readiness.clone());
    let state = edge::authorize(&args, state).await?;
    tokio::spawn(http::serve_secured(
        listener,
        state,
        http::HttpLimits::default(),
        tls,
        http_stop,
    ));

    let patterns = InterfacePatterns::new(args.interfaces.clone());
    let (mut datapath, source) = datapath::load(&DatapathOptions {
        flows_max_entries: args.flows_max_entries,
        events_bytes: args.events_ring_bytes,
        mount_tracefs: args.mount_tracefs,
        null_datapath: args.benchmark_null_datapath,
    })?;
    Datapath::require_interfaces(&patterns)?;
    let socket = datapath::LinkNotifications::subscribe().map_err(AgentError::LinkWatch)?;
    // SAFETY: LinkNotifications owns its socket and always returns the same open fd.
    let notifications = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }
        .map_err(|e| AgentError::LinkWatch(e.into()))?;
    datapath.reconcile(&patterns)?;

    let mut flow_log = open_flow_log(
        args.flow_log.as_deref(),
        args.node_name.clone(),
        Rotation {
            max_bytes: args.flow_log_max_bytes,
            max_files: args.flow_log_max_files,
        },
    )?;
    flow_log.export = export.as_ref().map(|e| e.exporter.clone());
    let clock = WallClock::new(SystemTime::now(), monotonic_now());
    let mut pipeline = Pipeline::new(
        source,
        AggregatorConfig {
            idle_timeout: args.idle_timeout_secs * 1_000_000_000,
            close_linger: CLOSE_LINGER,
            ..AggregatorConfig::default()
        },
        args.ignore_cidrs.clone(),
    );
    let mut classifier = Classifier::new(
        EnrichOptions {
            label_allowlist: args.label_allowlist.clone(),
            named_networks: args.named_networks.clone(),
            ..EnrichOptions::default()
        },
        PolicyOptions {
            ipblock_matches_pod_ips: args.ipblock_matches_pod_ips,
            cni_policies_relevant: !args.ignore_cni_policies,
        },
    );
    let mut reporter = Reporter::new(args.node_name.clone());
    let mut backlog = backlog::Backlog::default();
    let mut changes = inventory.as_ref().map(|w| w.changes());
    let mut health = Health::default();
    let mut conntrack = match datapath::conntrack::Conntrack::open() {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(error = %e, "conntrack unavailable: Services with backends on other nodes stay without backend");
            None
        }
    };
    let mut nat = |key: &crate::model::FlowKey| {
        conntrack
            .as_mut()
            .and_then(|c| c.translated_destination(key).ok().flatten())
    };

    if let Some(secs) = args.exit_after_secs {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            cancel.cancel();
        });
    }
    tracing::info!(
        interfaces = datapath.attached_interfaces().count(),
        inventory = inventory.is_some(),
        "flowwatch running"
    );

    // Events are drained often (they must not wait), totals on the poll interval; neither
    // wakes the agent per packet.
    let mut events_tick = tokio::time::interval(Duration::from_millis(100));
    let mut totals_tick = tokio::time::interval(Duration::from_millis(args.poll_interval_ms));
    let mut rescan_tick = tokio::time::interval(Duration::from_secs(10));
    for tick in [&mut events_tick, &mut totals_tick, &mut rescan_tick] {
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }

    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = events_tick.tick() => keep_going(pipeline.pump_events(), "draining events"),
            _ = totals_tick.tick() => {
                let now = monotonic_now();
                let done = match pipeline.pump_totals(now) {
                    Ok(ended) => flows_freed_or_logged(ended),
                    Err(e) => {
                        tracing::error!(error = %e, "reading flow totals");
                        Vec::new()
                    }
                };
                // With an inventory coming, flows that end before it wait for it.
                let waiting_for_view = inventory.is_some() && !classifier.engine_ready();
                if !waiting_for_view && !backlog.is_empty() {
                    tracing::info!(flows = backlog.len(), "reporting the flows that ended before the cluster view");
                }
                let done = backlog.pass(done, waiting_for_view, now);
                let classes = reporter.tick(pipeline.aggregator().flows(), &done, &classifier, &metrics, &mut nat, now);
                write_records(&mut flow_log, &done, &classes, clock, &metrics);
                health.update(&metrics, &pipeline, &datapath, inventory.as_ref(), classifier.engine_ready(), &readiness);
                metrics.expire(now);
            }
            changed = next_change(&mut changes) => {
                if let (true, Some(watch)) = (changed, inventory.as_ref()) {
                    // Materialized only for this update and dropped after it: keeping a full
                    // inventory alive between changes would double the agent's memory.
                    let view = Arc::unwrap_or_clone(watch.current());
                    let generation = view.generation;
                    // A fresh view is this update's alone: taken over, not copied.
                    let mut cluster = Arc::unwrap_or_clone(view.inventory);
                    // The node's own addresses beyond its Node object's (a bridge CNI's gateway).
                    if let Some(node) = args.node_name.as_deref() {
                        crate::inventory::local_node::add_local_addresses(&mut cluster, node, &local_addresses::list());
                    }
                    let errors = classifier.update(&cluster, &view.owners, generation, monotonic_now());
                    for e in &errors {
                        tracing::warn!(object = %e.object, field = e.field.as_deref().unwrap_or(""), reason = %e.message, "object skipped");
                    }
                    let policies = errors.iter().filter(|e| is_policy(&e.object)).count();
                    metrics.set_invalid_policies(policies as u64);
                    metrics.set_objects_skipped((errors.len() - policies) as u64);
                    metrics.set_cni_policy_objects(&classifier.cni_policy_counts());
                    metrics.retain_rules(classifier.rule_keys());
                    tracing::info!(generation, pods = cluster.pods.len(), policies = cluster.network_policies.len(), "inventory updated");
                }
            }
            ready = notifications.readable() => {
                if let Ok(mut guard) = ready {
                    if guard.get_inner().drain() {
                        keep_going(datapath.reconcile(&patterns), "attaching to interfaces");
                    }
                    guard.clear_ready();
                }
            }
            _ = rescan_tick.tick() => keep_going(datapath.reconcile(&patterns), "attaching to interfaces"),
        }
    }

    readiness.set_not_ready("stopping");
    tracing::info!("stopping: flushing flows");
    let now = monotonic_now();
    let (ended, last_read) = pipeline.finish_all();
    keep_going(last_read, "reading the flows in flight at shutdown");
    // Whatever still waits for a view goes out now, named if the view came.
    let done = backlog.pass(flows_freed_or_logged(ended), false, now);
    let classes = reporter.tick(
        std::iter::empty(),
        &done,
        &classifier,
        &metrics,
        &mut nat,
        now,
    );
    // A full disk at shutdown is counted and logged like any other drop: the agent still
    // stops cleanly.
    write_records(&mut flow_log, &done, &classes, clock, &metrics);
    flow_log.summary();
    if let Some(export) = export {
        export.finish().await;
    }
    let losses = pipeline.source.losses()?;
    tracing::info!(
        "kernel losses: ringbuf_full={} flows_map_full={} truncated_packets={} flows_dropped_by_agent={} undecodable={} unattributed_packets={}",
        losses.ringbuf_full,
        losses.flows_map_full,
        losses.truncated_packets,
        pipeline.aggregator().dropped_flows,
        pipeline.source.undecodable,
        losses.unattributed_packets
    );
    datapath.detach_all();
    Ok(())
}

/// Once running, the agent does not stop on an error: it logs it and goes on with the next
/// tick (a transient netlink or map error must not take the node's observability down).
fn keep_going<T, E: std::fmt::Display>(result: Result<T, E>, what: &str) {
    if let Err(e) = result {
        tracing::error!(error = %e, "{what}");
    }
}

/// The flows that ended; a failure to free their kernel entries is logged, not fatal (their
/// entries are read again next poll and start flows of their own).
fn flows_freed_or_logged<E: std::fmt::Display>(ended: pipeline::Ended<E>) -> Vec<FinishedFlow> {
    keep_going(ended.freed, "freeing kernel flow entries");
    ended.flows
}

/// Whether an object the engine skipped (named `Kind ns/name` or `Kind name`) is a policy.
fn is_policy(object: &str) -> bool {
    [
        "NetworkPolicy ",
        "ClusterNetworkPolicy ",
        "AdminNetworkPolicy ",
        "BaselineAdminNetworkPolicy ",
    ]
    .iter()
    .any(|k| object.starts_with(k))
}

/// Resolves when the inventory changed (true), or never without an inventory; false once the
/// source stopped (shutdown).
async fn next_change(changes: &mut Option<tokio::sync::watch::Receiver<u64>>) -> bool {
    match changes {
        Some(rx) => match rx.changed().await {
            Ok(()) => {
                rx.borrow_and_update();
                true
            }
            Err(_) => {
                *changes = None;
                false
            }
        },
        None => std::future::pending().await,
    }
}

/// The agent's own health, pushed to the metrics and to /readyz on every poll.
#[derive(Default)]
struct Health {
    /// What was already added to the loss counter, per reason (`LossReason::ALL` order).
    lost_reported: [u64; 3],
    unattributed_reported: u64,
}

impl Health {
    fn update(
        &mut self,
        metrics: &Metrics,
        pipeline: &Pipeline<datapath::EbpfSource>,
        datapath: &Datapath,
        inventory: Option<&ClusterWatch>,
        engine_ready: bool,
        readiness: &Readiness,
    ) {
        if let Ok(losses) = pipeline.source.losses() {
            // Lost in the kernel (ring buffer or flow map full) or refused by the agent's own
            // bound on flows in flight: all of it is traffic nobody will see.
            let dropped = pipeline.aggregator().dropped_flows;
            let totals = [losses.ringbuf_full, losses.flows_map_full, dropped];
            if totals.iter().zip(&self.lost_reported).any(|(t, r)| t > r) {
                tracing::warn!(
                    ringbuf_full = losses.ringbuf_full,
                    flows_map_full = losses.flows_map_full,
                    flows_dropped_by_agent = dropped,
                    "flow events lost"
                );
            }
            for ((reason, total), reported) in LossReason::ALL
                .iter()
                .zip(totals)
                .zip(self.lost_reported.iter_mut())
            {
                if total > *reported {
                    metrics.add_events_lost(*reason, total - *reported);
                    *reported = total;
                }
            }
            if losses.unattributed_packets > self.unattributed_reported {
                metrics.add_packets_unattributed(
                    losses.unattributed_packets - self.unattributed_reported,
                );
                self.unattributed_reported = losses.unattributed_packets;
            }
        }
        if let Ok(fill) = pipeline.source.flow_map_fill() {
            metrics.set_map_fill(KernelMap::Flows, fill);
        }
        metrics.set_interfaces_attached(datapath.attached_interfaces().count() as u64);
        let Some(watch) = inventory else {
            readiness.set_ready();
            return;
        };
        let status = watch.status();
        for (kind, stale) in status.staleness() {
            metrics.set_watch_staleness(kind.into(), stale);
        }
        match status.readiness() {
            // Synced caches are not enough: flows are named and judged only once the index and
            // the policy engine are built from them.
            Ok(()) if !engine_ready => {
                readiness.set_not_ready("kube caches synced; building the policy engine")
            }
            Ok(()) => readiness.set_ready(),
            Err(reason) => readiness.set_not_ready(reason),
        }
    }
}

fn spawn_signal_handler(cancel: CancellationToken) -> Result<(), AgentError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(AgentError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(AgentError::Signals)?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
        cancel.cancel();
    });
    Ok(())
}

/// The flow log and what became of its records.
struct FlowLog {
    path: String,
    node: Option<String>,
    out: Option<FlowLogWriter>,
    /// The OpenTelemetry exporter, offered every record too.
    export: Option<crate::export::OtlpExporter>,
    written: u64,
    dropped: u64,
    /// Set while writes fail, so a full disk logs once when it starts and once when it ends.
    failing: Option<crate::metrics::FlowLogDropReason>,
}

impl FlowLog {
    fn summary(&self) {
        if self.out.is_some() {
            tracing::info!(
                path = %self.path,
                written = self.written,
                dropped = self.dropped,
                "flow log closed"
            );
        }
    }
}

fn open_flow_log(
    path: Option<&std::path::Path>,
    node: Option<String>,
    rotation: Rotation,
) -> Result<FlowLog, AgentError> {
    let name = path.map(|p| p.display().to_string()).unwrap_or_default();
    let out = match path {
        None => None,
        Some(_) if name == "-" => Some(FlowLogWriter::stdout()),
        Some(p) => {
            Some(
                FlowLogWriter::file(p, rotation).map_err(|source| AgentError::FlowLog {
                    path: name.clone(),
                    source,
                })?,
            )
        }
    };
    Ok(FlowLog {
        path: name,
        node,
        out,
        export: None,
        written: 0,
        dropped: 0,
        failing: None,
    })
}

/// Writes the records of the flows that ended. Never an error: what cannot be written is
/// counted (`flowwatch_flow_log_records_dropped_total{reason}`) and logged, and the agent goes
/// on observing.
fn write_records(
    log: &mut FlowLog,
    done: &[FinishedFlow],
    classes: &[Option<Arc<Classification>>],
    clock: WallClock,
    metrics: &Metrics,
) {
    if log.out.is_none() && log.export.is_none() {
        return;
    }
    let mut lines = Vec::with_capacity(done.len());
    for (finished, class) in done.iter().zip(classes) {
        let mut record = FlowRecord::new(finished, clock);
        record.node.clone_from(&log.node);
        let record = match class {
            Some(class) => record.classified(class),
            None => record,
        };
        if let Some(export) = &log.export {
            export.offer(&record);
        }
        if log.out.is_some() {
            let mut line = record.to_json_line();
            line.push('\n');
            lines.push(line);
        }
    }
    let Some(out) = log.out.as_mut() else {
        return;
    };
    let w = out.write(&lines);
    metrics.record_flow_log(w.records, w.dropped, w.reason, w.rotations, w.reopened);
    log.written += w.records;
    log.dropped += w.dropped;
    if w.reopened {
        tracing::info!(path = %log.path, "flow log reopened (renamed or removed by something else)");
    }
    match (w.reason, log.failing) {
        (Some(reason), None) => {
            tracing::error!(path = %log.path, reason = %reason, dropped = w.dropped, "flow log records dropped; counting them until writes succeed again");
            log.failing = Some(reason);
        }
        (None, Some(_)) if w.records > 0 => {
            tracing::info!(path = %log.path, dropped_total = log.dropped, "flow log writable again");
            log.failing = None;
        }
        _ => {}
    }
}
