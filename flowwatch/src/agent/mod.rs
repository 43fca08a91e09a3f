//! The agent runtime: wires the datapath, the pipeline, the flow log and (when configured) the
//! inventory, policy verdicts and metrics, and runs until SIGTERM/SIGINT.

pub mod pipeline;

use std::io::Write;
use std::time::{Duration, SystemTime};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio_util::sync::CancellationToken;

use crate::aggregate::{AggregatorConfig, FinishedFlow};
use crate::cli::RunArgs;
use crate::datapath::{self, Datapath, DatapathError, DatapathOptions, InterfacePatterns};
use crate::flowlog::{FlowRecord, WallClock};
use crate::model::Nanos;
use crate::source::FlowSource;
use pipeline::Pipeline;

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
}

/// Kernel monotonic time, the clock of `bpf_ktime_get_ns`.
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
    let patterns = InterfacePatterns::new(args.interfaces.clone());
    let (mut datapath, source) = datapath::load(&DatapathOptions {
        flows_max_entries: args.flows_max_entries,
        mount_tracefs: args.mount_tracefs,
    })?;
    Datapath::require_interfaces(&patterns)?;
    let socket = datapath::LinkNotifications::subscribe().map_err(AgentError::LinkWatch)?;
    // SAFETY: LinkNotifications owns its socket and always returns the same open fd.
    let notifications = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }
        .map_err(|e| AgentError::LinkWatch(e.into()))?;
    datapath.reconcile(&patterns)?;

    let mut flow_log = open_flow_log(args.flow_log.as_deref())?;
    let clock = WallClock::new(SystemTime::now(), monotonic_now());
    let mut pipeline = Pipeline::new(
        source,
        AggregatorConfig {
            idle_timeout: args.idle_timeout_secs * 1_000_000_000,
            close_linger: (2 * args.poll_interval_ms).max(500) * 1_000_000,
            ..AggregatorConfig::default()
        },
        args.ignore_cidrs.clone(),
    );

    let cancel = CancellationToken::new();
    spawn_signal_handler(cancel.clone())?;
    if let Some(secs) = args.exit_after_secs {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            cancel.cancel();
        });
    }
    tracing::info!(
        interfaces = datapath.attached_interfaces().count(),
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
            _ = events_tick.tick() => pipeline.pump_events()?,
            _ = totals_tick.tick() => {
                let done = pipeline.pump_totals(monotonic_now())?;
                write_records(&mut flow_log, &done, clock, &args)?;
            }
            ready = notifications.readable() => {
                if let Ok(mut guard) = ready {
                    if guard.get_inner().drain() {
                        datapath.reconcile(&patterns)?;
                    }
                    guard.clear_ready();
                }
            }
            _ = rescan_tick.tick() => { datapath.reconcile(&patterns)?; }
        }
    }

    tracing::info!("stopping: flushing flows");
    let done = pipeline.finish_all()?;
    let losses = pipeline.source.losses()?;
    tracing::info!(
        "kernel losses: ringbuf_full={} flows_map_full={} truncated_packets={} flows_dropped_by_agent={} undecodable={}",
        losses.ringbuf_full,
        losses.flows_map_full,
        losses.truncated_packets,
        pipeline.aggregator().dropped_flows,
        pipeline.source.undecodable
    );
    write_records(&mut flow_log, &done, clock, &args)?;
    datapath.detach_all();
    Ok(())
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

struct FlowLog {
    path: String,
    out: Option<Box<dyn Write + Send>>,
}

fn open_flow_log(path: Option<&std::path::Path>) -> Result<FlowLog, AgentError> {
    let Some(path) = path else {
        return Ok(FlowLog {
            path: String::new(),
            out: None,
        });
    };
    let name = path.display().to_string();
    let out: Box<dyn Write + Send> = if name == "-" {
        Box::new(std::io::stdout())
    } else {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| AgentError::FlowLog {
                path: name.clone(),
                source,
            })?;
        Box::new(std::io::BufWriter::new(file))
    };
    Ok(FlowLog {
        path: name,
        out: Some(out),
    })
}

fn write_records(
    log: &mut FlowLog,
    done: &[FinishedFlow],
    clock: WallClock,
    _args: &RunArgs,
) -> Result<(), AgentError> {
    let Some(out) = log.out.as_mut() else {
        return Ok(());
    };
    let io = |source| AgentError::FlowLog {
        path: log.path.clone(),
        source,
    };
    for finished in done {
        let record = FlowRecord::new(finished, clock);
        writeln!(out, "{}", record.to_json_line()).map_err(io)?;
    }
    out.flush().map_err(io)
}
