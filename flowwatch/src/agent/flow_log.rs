//! The agent's flow log: opened from the flags, written after every poll, and what could not be
//! written counted (`flowwatch_flow_log_records_dropped_total{reason}`), never an error.

use std::sync::Arc;

use super::AgentError;
use crate::aggregate::FinishedFlow;
use crate::classify::Classification;
use crate::flowlog::writer::{FlowLogWriter, Rotation};
use crate::flowlog::{FlowRecord, WallClock};
use crate::metrics::Metrics;

/// The flow log and what became of its records.
pub(super) struct FlowLog {
    path: String,
    node: Option<String>,
    out: Option<FlowLogWriter>,
    /// The OpenTelemetry exporter, offered every record too.
    pub(super) export: Option<crate::export::OtlpExporter>,
    written: u64,
    dropped: u64,
    /// Set while writes fail, so a full disk logs once when it starts and once when it ends.
    failing: Option<crate::metrics::FlowLogDropReason>,
}

impl FlowLog {
    pub(super) fn summary(&self) {
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

pub(super) fn open_flow_log(
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
pub(super) fn write_records(
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
