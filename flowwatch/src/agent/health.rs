//! The agent's own health, pushed to the metrics and to /readyz on every poll: what the flow
//! source lost (any source: unit tests use the fake one) and, at the edge, the interfaces
//! attached and the state of the cluster view.

use super::pipeline::Pipeline;
use crate::datapath::Datapath;
use crate::http::Readiness;
use crate::k8s::ClusterWatch;
use crate::metrics::{KernelMap, LossReason, Metrics};
use crate::source::FlowSource;

/// What of the source's cumulative losses was already added to the loss counters.
#[derive(Default)]
pub(super) struct LossAccounting {
    /// Per reason (`LossReason::ALL` order).
    lost_reported: [u64; 3],
    unattributed_reported: u64,
}

impl LossAccounting {
    /// Adds what the source and the aggregator lost since the last call, and the flow map's fill.
    pub(super) fn update<S: FlowSource>(&mut self, metrics: &Metrics, pipeline: &Pipeline<S>) {
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
    }
}

/// Interfaces attached, the watches' staleness, and /readyz.
pub(super) fn report_readiness(
    metrics: &Metrics,
    datapath: &Datapath,
    inventory: Option<&ClusterWatch>,
    engine_ready: bool,
    readiness: &Readiness,
) {
    metrics.set_interfaces_attached(datapath.attached_interfaces().count() as u64);
    let Some(watch) = inventory else {
        readiness.set_ready();
        return;
    };
    let status = watch.status();
    for (kind, stale) in status.staleness() {
        metrics.set_watch_staleness(kind, stale);
    }
    match status.readiness() {
        // Synced caches are not enough: flows are named and judged only once the index and
        // the policy engine are built from them.
        Ok(()) if !engine_ready => {
            readiness.set_not_ready("kube caches synced; building the policy engine");
        }
        Ok(()) => readiness.set_ready(),
        Err(reason) => readiness.set_not_ready(reason),
    }
}
