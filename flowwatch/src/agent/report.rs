//! Feeds the metric families from flows as they progress: each connection is counted once,
//! when its outcome is known (established as soon as it is; failed or unanswered when it ends),
//! and its packets and bytes as they grow. Each flow is classified once, when first seen, so
//! its metrics and its flow-log record agree even if the cluster changes meanwhile.

use std::collections::HashMap;
use std::sync::Arc;

use crate::aggregate::FinishedFlow;
use crate::classify::{Classification, Classifier};
use crate::metrics::Metrics;
use crate::model::{Counters, Flow, FlowKey, Nanos, Outcome};

#[derive(Default)]
pub struct Reporter {
    flows: HashMap<FlowKey, Reported>,
}

struct Reported {
    class: Option<Arc<Classification>>,
    counters: Counters,
    outcome_counted: bool,
}

impl Reporter {
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Flows in progress: classify new ones, count established ones, add traffic.
    pub fn observe_live<'a>(
        &mut self,
        flows: impl Iterator<Item = &'a Flow>,
        classifier: &Classifier,
        metrics: &Metrics,
        now: Nanos,
    ) {
        for flow in flows {
            let outcome = (flow.outcome == Outcome::Established).then_some(Outcome::Established);
            self.record(flow, outcome, classifier, metrics, now);
        }
    }

    /// A flow that ended: its final outcome (if not counted yet) and remaining traffic.
    /// Returns its classification for the flow log.
    pub fn finish(
        &mut self,
        done: &FinishedFlow,
        classifier: &Classifier,
        metrics: &Metrics,
        now: Nanos,
    ) -> Option<Arc<Classification>> {
        let class = self.record(
            &done.flow,
            Some(done.flow.outcome),
            classifier,
            metrics,
            now,
        );
        self.flows.remove(&done.flow.key);
        class
    }

    fn record(
        &mut self,
        flow: &Flow,
        outcome: Option<Outcome>,
        classifier: &Classifier,
        metrics: &Metrics,
        now: Nanos,
    ) -> Option<Arc<Classification>> {
        let entry = self.flows.entry(flow.key).or_insert_with(|| Reported {
            class: None,
            counters: Counters::default(),
            outcome_counted: false,
        });
        if entry.class.is_none() {
            // Until the first cluster view arrives there is nothing to classify with.
            entry.class = classifier.classify(flow).map(|(class, took)| {
                metrics.observe_evaluation(took);
                Arc::new(class)
            });
        }
        let class = entry.class.clone()?;
        let delta = flow.counters.saturating_sub(entry.counters);
        let outcome = outcome.filter(|_| !entry.outcome_counted);
        if outcome.is_some() || delta != Counters::default() {
            metrics.record_flow(&class.edge, outcome, &delta, now);
            entry.counters = flow.counters;
            entry.outcome_counted |= outcome.is_some();
        }
        Some(class)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::EndReason;
    use crate::classify::Classifier;
    use crate::enrich::{EnrichOptions, OwnerIndex};
    use crate::metrics::{encode_prometheus_text, MetricsConfig};
    use crate::model::Protocol;
    use crate::policy::PolicyOptions;

    fn sample(text: &str, family: &str, needle: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(family) && l.contains(needle))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn a_connection_is_counted_once_and_its_traffic_as_it_grows() {
        let (inventory, _) = crate::inventory::snapshot::parse(
            include_str!("../../../deploy/demo/snapshot.yaml"),
            "demo",
        )
        .unwrap();
        let mut classifier = Classifier::new(EnrichOptions::default(), PolicyOptions::default());
        classifier.update(&inventory, &OwnerIndex::default(), 1, 0);
        let (metrics, registry) = Metrics::new(&MetricsConfig::default()).unwrap();
        let mut reporter = Reporter::default();

        let mut flow = Flow::new(
            FlowKey {
                src: "10.213.0.10:40000".parse().unwrap(),
                dst: "10.213.0.30:5432".parse().unwrap(),
                protocol: Protocol::Tcp,
            },
            1,
        );
        flow.outcome = Outcome::Established;
        flow.counters.fwd_packets = 3;
        reporter.observe_live([&flow].into_iter(), &classifier, &metrics, 10);
        flow.counters.fwd_packets = 5;
        reporter.observe_live([&flow].into_iter(), &classifier, &metrics, 20);
        let class = reporter.finish(
            &FinishedFlow {
                flow: flow.clone(),
                reason: EndReason::Closed,
            },
            &classifier,
            &metrics,
            30,
        );
        assert!(class.is_some());
        assert!(reporter.is_empty(), "finished flows are forgotten");

        let text = encode_prometheus_text(&registry).unwrap();
        let edge = "src_workload=\"web\"";
        assert_eq!(
            sample(&text, "flowwatch_connections_total", edge),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, "flowwatch_enforcement_drift_connections_total", edge),
            Some(1.0),
            "denied yet established: drift"
        );
        assert_eq!(
            sample(
                &text,
                "flowwatch_flow_packets_total",
                "direction=\"forward\""
            ),
            Some(5.0),
            "{text}"
        );
    }
}
