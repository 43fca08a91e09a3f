//! The agent runtime: wires the datapath, the pipeline, the flow log and (when configured) the
//! inventory, policy verdicts and metrics, and runs until SIGTERM/SIGINT.

mod backlog;
mod core;
mod edge;
mod export;
mod first_seen;
mod flow_log;
mod health;
mod local_addresses;
pub mod pipeline;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use health::LossAccounting;
use pipeline::Pipeline;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio_util::sync::CancellationToken;

use self::core::keep_going;
pub use self::core::{Agent, Nat};
use crate::aggregate::AggregatorConfig;
use crate::classify::Classifier;
use crate::cli::RunArgs;
use crate::count::ConnectionCounter;
use crate::datapath::{self, Datapath, DatapathError, DatapathOptions, InterfacePatterns};
use crate::enrich::EnrichOptions;
use crate::error_chain::Chain;
use crate::flowlog::writer::Rotation;
use crate::flowlog::WallClock;
use crate::http::{self, HttpState, Readiness};
use crate::k8s;
use crate::metrics::{Metrics, MetricsConfig};
use crate::model::Nanos;
use crate::policy::PolicyOptions;
use crate::source::FlowSource;

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
    #[error("connecting to the Kubernetes API")]
    Kube(#[source] kube::Error),
    #[error("--metrics-auth=kubernetes needs the API server")]
    MetricsAuthKube(#[source] kube::Error),
    #[error(transparent)]
    Tls(#[from] crate::http::tls::TlsError),
    #[error("--otlp-endpoint")]
    Export(#[source] crate::export::ExportError),
    #[error("the HTTP server on {addr} stopped")]
    Http {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// How long after a TCP connection's end, when the agent saw the whole end (both sockets here,
/// FINs both ways, a RST), its record waits for its last packet. The last close follows the last
/// packet by microseconds (the closing ACK reaches the TC program before the peer's socket sees
/// it), and each poll drains socket events before it reads the packet totals; the margin covers
/// a packet still queued on another CPU. Short, so a closed connection's kernel entry is read
/// once or twice, not once per poll for seconds. (A local socket whose remote peer has not
/// closed yet waits longer: `AggregatorConfig::peer_close_wait`.)
const CLOSE_LINGER: Nanos = 100_000_000;

/// How often the known edges are saved when they changed: a SIGKILLed agent loses at most the
/// edges first seen within this interval (they are then first seen again, and the shipped
/// alert's Prometheus lookback keeps them quiet).
const STATE_SAVE_INTERVAL: Duration = Duration::from_secs(5);

/// Kernel monotonic time (CLOCK_MONOTONIC), the clock of the kernel programs' timestamps.
pub fn monotonic_now() -> Nanos {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Runs the agent until a signal (or `--exit-after-secs`).
pub async fn run(args: RunArgs) -> Result<(), AgentError> {
    let cancel = CancellationToken::new();
    spawn_signal_handler(cancel.clone())?;
    // The soft descriptor limit (often 1024) is what a flood of connections ran out of first;
    // the HTTP edge caps its connections at half of what this gives.
    if let Err(e) = http::raise_fd_limit() {
        tracing::warn!(error = %crate::error_chain::Chain(&e), "raising the open-file limit");
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
    // Before the first flow: an edge known before a restart is not new after it.
    let edge_memory = first_seen::start(
        args.state_dir.as_deref(),
        args.edge_retention_days,
        (args.series_budget, args.series_budget_per_namespace),
        &metrics,
        monotonic_now(),
    );
    let inventory = k8s::source::from_settings(
        args.snapshots.clone(),
        args.kube,
        args.kube_list_strategy,
        cancel.clone(),
    )
    .await
    .map_err(AgentError::Kube)?;
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
    // Its handle is kept: a server that fails after binding stops the agent with the error
    // (the kubelet restarts it) rather than leaving a node without /metrics and /healthz.
    let mut http_server = tokio::spawn(http::serve_secured(
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
        #[cfg(feature = "test-hooks")]
        null_datapath: args.benchmark_null_datapath,
    })?;
    Datapath::require_interfaces(&patterns)?;
    let socket = datapath::LinkNotifications::subscribe().map_err(AgentError::LinkWatch)?;
    // SAFETY: LinkNotifications owns its socket and always returns the same open fd.
    let notifications = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }
        .map_err(|e| AgentError::LinkWatch(e.into()))?;
    datapath.reconcile(&patterns)?;

    let mut flow_log = flow_log::open_flow_log(
        args.flow_log.as_deref(),
        args.node_name.clone(),
        Rotation {
            max_bytes: args.flow_log_max_bytes,
            max_files: args.flow_log_max_files,
        },
    )?;
    flow_log.export = export.as_ref().map(|e| e.exporter.clone());
    let mut conntrack = match datapath::conntrack::Conntrack::open() {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(error = %Chain(&e), "conntrack unavailable: Services with backends on other nodes stay without backend");
            None
        }
    };
    let clock = WallClock::new(SystemTime::now(), monotonic_now());
    let mut agent = Agent {
        pipeline: Pipeline::new(
            source,
            AggregatorConfig {
                idle_timeout: args.idle_timeout_secs * 1_000_000_000,
                close_linger: CLOSE_LINGER,
                ..AggregatorConfig::default()
            },
            &args.ignore_cidrs,
        ),
        classifier: Classifier::new(
            EnrichOptions {
                label_allowlist: args.label_allowlist.clone(),
                named_networks: args.named_networks.clone(),
                ..EnrichOptions::default()
            },
            PolicyOptions {
                ipblock_matches_pod_ips: args.ipblock_matches_pod_ips,
                cni_policies_relevant: !args.ignore_cni_policies,
            },
        ),
        reporter: ConnectionCounter::new(args.node_name.clone(), clock),
        backlog: backlog::Backlog::default(),
        flow_log,
        clock,
        metrics: metrics.clone(),
        edge_memory,
        losses: LossAccounting::default(),
        expects_inventory: inventory.is_some(),
        node_name: args.node_name.clone(),
        nat: Box::new(move |key: &crate::model::FlowKey| {
            conntrack
                .as_mut()
                .and_then(|c| c.translated_destination(key).ok().flatten())
        }),
    };
    let mut changes = inventory.as_ref().map(crate::k8s::ClusterWatch::changes);

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
    let mut state_tick = tokio::time::interval(STATE_SAVE_INTERVAL);
    for tick in [
        &mut events_tick,
        &mut totals_tick,
        &mut rescan_tick,
        &mut state_tick,
    ] {
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }

    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = events_tick.tick() => agent.on_events(),
            _ = totals_tick.tick() => {
                agent.on_poll(monotonic_now());
                health::report_readiness(&metrics, &datapath, inventory.as_ref(), agent.engine_ready(), &readiness);
            }
            changed = next_change(&mut changes) => {
                if let (true, Some(watch)) = (changed, inventory.as_ref()) {
                    // Materialized only for this update and dropped after it: keeping a full
                    // inventory alive between changes would double the agent's memory.
                    let view = Arc::unwrap_or_clone(watch.current());
                    agent.on_inventory(view, &local_addresses::list(), monotonic_now());
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
            _ = state_tick.tick() => agent.save_state(monotonic_now()),
            ended = &mut http_server => {
                let source = match ended {
                    Ok(Err(e)) => e,
                    Ok(Ok(())) => std::io::Error::other("ended unexpectedly"),
                    Err(e) => std::io::Error::other(e),
                };
                readiness.set_not_ready("stopping");
                let pipeline = agent.finish(monotonic_now());
                drop(pipeline);
                datapath.detach_all();
                return Err(AgentError::Http { addr: args.listen, source });
            }
        }
    }

    readiness.set_not_ready("stopping");
    tracing::info!("stopping: flushing flows");
    let pipeline = agent.finish(monotonic_now());
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

/// Resolves when the inventory changed (true), or never without an inventory; false once the
/// source stopped (shutdown).
async fn next_change(changes: &mut Option<tokio::sync::watch::Receiver<u64>>) -> bool {
    match changes {
        Some(rx) => {
            if let Ok(()) = rx.changed().await {
                rx.borrow_and_update();
                true
            } else {
                *changes = None;
                false
            }
        }
        None => std::future::pending().await,
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
