//! Counts flows into the metric families as they progress (pure: flows, classifications and
//! the time come in as values): each connection is counted once,
//! when its outcome is known (established as soon as it is; failed or unanswered when it ends),
//! and its packets and bytes as they grow. Each flow is classified once, when first seen, so
//! its metrics and its flow-log record agree even if the cluster changes meanwhile.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::aggregate::FinishedFlow;
use crate::classify::{Classification, Classifier};
use crate::flowlog::WallClock;
use crate::metrics::Metrics;
use crate::model::{Counters, Flow, FlowHashMap, FlowKey, Nanos, Outcome, Protocol};

pub struct ConnectionCounter {
    flows: FlowHashMap<FlowKey, Reported>,
    /// This node's name. A connection between pods of two nodes is seen by both nodes' agents;
    /// the metrics count it on one: the initiator's node when the initiator is a pod, else the
    /// responder's. Unknown (no `--node-name`): every flow seen here is counted.
    node: Option<String>,
    /// Wall-clock time of the rule-usage series (`flowwatch_policy_rule_last_match_*`).
    clock: WallClock,
}

struct Reported {
    class: Option<Arc<Classification>>,
    counters: Counters,
    outcome_counted: bool,
    /// The backend half of a connection to a Service (see [`Siblings`]): the Service half counts
    /// the connection; this half, the replies (see `record`).
    backend_half: bool,
    /// The Service half of a connection whose backend half is on this node too: this half
    /// counts the connection and the requests, that one the replies (see `record`).
    has_backend_half: bool,
    /// Another node's agent counts this connection (see [`counted_on_other_node`]).
    counted_elsewhere: bool,
}

impl ConnectionCounter {
    /// `node`: this node's name (see the field); `clock`: converts the flows' monotonic times
    /// to the wall-clock times of the rule-usage series.
    pub fn new(node: Option<String>, clock: WallClock) -> ConnectionCounter {
        ConnectionCounter {
            flows: FlowHashMap::default(),
            node,
            clock,
        }
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// One poll: flows in progress are classified when new, counted when established, and
    /// their traffic added; flows that ended get their final outcome and remaining traffic.
    /// Returns the classification of each finished flow (in order) for the flow log.
    ///
    /// `nat` answers where the node's NAT sent a connection (conntrack), for connections to a
    /// Service whose backend this node does not see.
    pub fn tick<'a>(
        &mut self,
        live: impl Iterator<Item = &'a Flow> + Clone,
        finished: &'a [FinishedFlow],
        classifier: &Classifier,
        metrics: &Metrics,
        nat: &mut dyn FnMut(&FlowKey) -> Option<SocketAddr>,
        now: Nanos,
    ) -> Vec<Option<Arc<Classification>>> {
        // A live flow whose 5-tuple also ended this poll is a new connection on a reused
        // 5-tuple: it is classified and counted anew, once the old one is settled.
        let ended: std::collections::HashSet<FlowKey> =
            finished.iter().map(|d| d.flow.key).collect();
        // Only flows still to classify need a twin: pairing the whole flow table on every poll
        // would be per-flow work that changes nothing for flows already classified.
        let unclassified = live
            .clone()
            .chain(finished.iter().map(|d| &d.flow))
            .filter(|f| {
                ended.contains(&f.key) || self.flows.get(&f.key).is_none_or(|r| r.class.is_none())
            });
        let siblings = Siblings::of(unclassified);
        let mut ctx = Ctx {
            classifier,
            metrics,
            siblings: &siblings,
            nat,
            now,
            unix_secs: self.clock.unix_secs(now),
        };
        // The flows that ended first: their entries must be gone before a new connection on
        // the same 5-tuple (live below) is counted, or it would take the old one's entry.
        let classes = finished
            .iter()
            .map(|done| {
                let class = self.record(&done.flow, Some(done.flow.outcome), &mut ctx);
                self.flows.remove(&done.flow.key);
                class
            })
            .collect();
        for flow in live {
            let outcome = (flow.outcome == Outcome::Established).then_some(Outcome::Established);
            self.record(flow, outcome, &mut ctx);
        }
        classes
    }

    fn record(
        &mut self,
        flow: &Flow,
        outcome: Option<Outcome>,
        ctx: &mut Ctx<'_>,
    ) -> Option<Arc<Classification>> {
        let entry = self.flows.entry(flow.key).or_insert_with(|| Reported {
            class: None,
            counters: Counters::default(),
            outcome_counted: false,
            backend_half: false,
            has_backend_half: false,
            counted_elsewhere: false,
        });
        if entry.class.is_none() {
            // Until the first cluster view arrives there is nothing to classify with.
            let (mut translated, backend_half) = ctx.siblings.nat_view(flow, ctx.classifier);
            // A backend found among this node's flows, not through conntrack: its half is here.
            entry.has_backend_half = translated.is_some();
            if translated.is_none()
                && !backend_half
                && ctx.classifier.engine_ready()
                && ctx.classifier.is_service(flow.key.dst, flow)
            {
                // The backend is not on this node: ask the NAT.
                translated = (ctx.nat)(&flow.key);
            }
            entry.backend_half = backend_half;
            entry.class = ctx
                .classifier
                .classify(flow, translated)
                .map(|(class, took)| {
                    ctx.metrics.observe_evaluation(took);
                    Arc::new(class)
                });
            entry.counted_elsewhere = entry
                .class
                .as_ref()
                .is_some_and(|c| counted_on_other_node(c, self.node.as_deref()));
        }
        let class = entry.class.clone()?;
        if entry.counted_elsewhere {
            return Some(class);
        }
        // A connection through the node's NAT with both ends here is two flows on one edge.
        // Where a packet enters a pod it may be counted again, depending on the CNI (routed
        // through a bridge, the host receives it anew and the egress program cannot tell it
        // was counted; routed point-to-point or bridged, it can). Where a packet leaves a pod
        // it is always counted, once: so each direction comes from the half that saw it
        // leave, the requests from the Service half (the client's interface), the replies
        // from the backend half (the backend's).
        let mut delta = flow.counters.saturating_sub(entry.counters);
        if entry.has_backend_half {
            (delta.rev_packets, delta.rev_bytes) = (0, 0);
        }
        if entry.backend_half {
            (delta.fwd_packets, delta.fwd_bytes) = (0, 0);
        }
        let outcome = outcome.filter(|_| !entry.outcome_counted && !entry.backend_half);
        if outcome.is_some() || delta != Counters::default() {
            ctx.metrics
                .record_flow(&class.edge, outcome, &delta, ctx.now);
            // The rules behind the verdict, with the connection and as often (same unit).
            if let (Some(_), Some(verdict)) = (outcome, &class.verdict) {
                ctx.metrics.record_rule_matches(verdict, ctx.unix_secs);
            }
            entry.counters = flow.counters;
            entry.outcome_counted |= outcome.is_some();
        }
        Some(class)
    }
}

/// Whether another node's agent counts this connection: the initiator's node when the
/// initiator is a pod (host-network pods included), else the responder's node when the
/// responder is a pod. Both agents see a connection between two nodes; without this rule
/// `sum` over instances would count it twice.
fn counted_on_other_node(class: &Classification, node: Option<&str>) -> bool {
    use crate::enrich::Endpoint;
    let Some(here) = node else {
        return false;
    };
    let counting_pod = match &class.src {
        Endpoint::Pod(pod) | Endpoint::HostNetworkPod(pod) => Some(pod),
        // A node, an external address or an unknown one: the responder (a Service's
        // backend included) is the pod whose node counts.
        _ => match &class.dst {
            Endpoint::HostNetworkPod(pod) => Some(pod),
            dst => dst.pod(),
        },
    };
    // A pod whose node is unknown, or no pod at either end: count it here rather than nowhere.
    counting_pod
        .and_then(|pod| pod.node.as_deref())
        .is_some_and(|n| n != here)
}

struct Ctx<'a> {
    classifier: &'a Classifier,
    metrics: &'a Metrics,
    siblings: &'a Siblings,
    nat: &'a mut dyn FnMut(&FlowKey) -> Option<SocketAddr>,
    now: Nanos,
    /// `now` in Unix seconds.
    unix_secs: f64,
}

/// A connection to a Service through the node's NAT (kube-proxy's DNAT) shows up as two flows
/// with the same source address, port and protocol: the client's socket and the wire at the
/// client pod see the Service address; the backend's socket, when the backend is on this node,
/// sees the backend pod. Pairing them gives the Service flow its backend. Both halves appear in
/// the same drain of socket events, so pairing among the flows not classified yet suffices.
struct Siblings(FlowHashMap<(SocketAddr, Protocol), Vec<SocketAddr>>);

impl Siblings {
    fn of<'a>(flows: impl Iterator<Item = &'a Flow>) -> Siblings {
        let mut by_source: FlowHashMap<(SocketAddr, Protocol), Vec<SocketAddr>> =
            FlowHashMap::default();
        for f in flows {
            by_source
                .entry((f.key.src, f.key.protocol))
                .or_default()
                .push(f.key.dst);
        }
        by_source.retain(|_, dsts| dsts.len() > 1);
        Siblings(by_source)
    }

    /// For a Service flow: the backend its twin reached. For the backend twin: `true`.
    fn nat_view(&self, flow: &Flow, classifier: &Classifier) -> (Option<SocketAddr>, bool) {
        let Some(dsts) = self.0.get(&(flow.key.src, flow.key.protocol)) else {
            return (None, false);
        };
        let mut others = dsts.iter().copied().filter(|d| *d != flow.key.dst);
        if classifier.is_service(flow.key.dst, flow) {
            (others.find(|d| !classifier.is_service(*d, flow)), false)
        } else {
            (None, others.any(|d| classifier.is_service(d, flow)))
        }
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

    /// The demo cluster's pods, policies and Service (deploy/demo/snapshot.yaml).
    fn demo_classifier() -> Classifier {
        let (inventory, _) = crate::inventory::snapshot::parse(
            include_str!("../../deploy/demo/snapshot.yaml"),
            "demo",
        )
        .unwrap();
        let mut classifier = Classifier::new(EnrichOptions::default(), PolicyOptions::default());
        classifier.update(&inventory, &OwnerIndex::default(), 1, 0);
        classifier
    }

    fn tcp_flow(src: &str, dst: &str) -> Flow {
        Flow::new(
            FlowKey {
                src: src.parse().unwrap(),
                dst: dst.parse().unwrap(),
                protocol: Protocol::Tcp,
            },
            1,
        )
    }

    fn sample(text: &str, family: &str, needle: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(family) && l.contains(needle))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn a_connection_is_counted_once_and_its_traffic_as_it_grows() {
        let classifier = demo_classifier();
        let (metrics, registry) = Metrics::new(&MetricsConfig::default()).unwrap();
        let mut reporter =
            ConnectionCounter::new(None, WallClock::new(std::time::SystemTime::UNIX_EPOCH, 0));

        let mut flow = tcp_flow("10.213.0.10:40000", "10.213.0.30:5432");
        flow.outcome = Outcome::Established;
        flow.counters.fwd_packets = 3;
        reporter.tick(
            [&flow].into_iter(),
            &[],
            &classifier,
            &metrics,
            &mut |_| None,
            10,
        );
        flow.counters.fwd_packets = 5;
        reporter.tick(
            [&flow].into_iter(),
            &[],
            &classifier,
            &metrics,
            &mut |_| None,
            20,
        );
        let done = [FinishedFlow {
            flow: flow.clone(),
            reason: EndReason::Closed,
        }];
        let classes = reporter.tick(
            std::iter::empty(),
            &done,
            &classifier,
            &metrics,
            &mut |_| None,
            30,
        );
        assert!(classes[0].is_some());
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

    #[test]
    fn a_new_connection_on_a_reused_five_tuple_is_counted_with_its_own_traffic() {
        let classifier = demo_classifier();
        let (metrics, registry) = Metrics::new(&MetricsConfig::default()).unwrap();
        let mut reporter =
            ConnectionCounter::new(None, WallClock::new(std::time::SystemTime::UNIX_EPOCH, 0));
        let mut old = tcp_flow("10.213.0.10:40000", "10.213.0.30:5432");
        old.outcome = Outcome::Established;
        old.counters.fwd_packets = 5;
        let tick =
            |reporter: &mut ConnectionCounter, live: &[&Flow], done: &[FinishedFlow], now| {
                reporter.tick(
                    live.iter().copied(),
                    done,
                    &classifier,
                    &metrics,
                    &mut |_| None,
                    now,
                );
            };
        tick(&mut reporter, &[&old], &[], 10);
        // The same 5-tuple connects again before the old record is reported (the aggregator
        // reports the old one as reused and starts the new one from zero).
        old.counters.fwd_packets = 6;
        let mut new = tcp_flow("10.213.0.10:40000", "10.213.0.30:5432");
        new.outcome = Outcome::Established;
        new.counters.fwd_packets = 3;
        let done = [FinishedFlow {
            flow: old,
            reason: EndReason::Reused,
        }];
        tick(&mut reporter, &[&new], &done, 20);
        let text = encode_prometheus_text(&registry).unwrap();
        let edge = "src_workload=\"web\"";
        assert_eq!(
            sample(&text, "flowwatch_connections_total", edge),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                "flowwatch_flow_packets_total",
                "direction=\"forward\""
            ),
            Some(9.0),
            "{text}"
        );
        assert_eq!(reporter.len(), 1, "the new connection is followed");
    }

    #[test]
    fn a_service_connection_through_nat_is_one_edge_to_the_backend() {
        let classifier = demo_classifier();
        let (metrics, registry) = Metrics::new(&MetricsConfig::default()).unwrap();
        let mut reporter =
            ConnectionCounter::new(None, WallClock::new(std::time::SystemTime::UNIX_EPOCH, 0));

        // The client's view (the Service address) and the backend's socket (the pod).
        let client = "10.213.0.10:41000";
        let mut to_service = tcp_flow(client, "10.96.0.20:80");
        to_service.outcome = Outcome::Established;
        to_service.counters.fwd_packets = 4;
        let mut at_backend = tcp_flow(client, "10.213.0.20:8080");
        at_backend.outcome = Outcome::Established;
        let done = [
            FinishedFlow {
                flow: to_service,
                reason: EndReason::Closed,
            },
            FinishedFlow {
                flow: at_backend,
                reason: EndReason::Closed,
            },
        ];
        let classes = reporter.tick(
            std::iter::empty(),
            &done,
            &classifier,
            &metrics,
            &mut |_| None,
            10,
        );

        let service = classes[0].as_ref().unwrap();
        match &service.dst {
            crate::enrich::Endpoint::Service {
                name,
                backend: Some(backend),
                ..
            } => {
                assert_eq!(name, "api");
                assert_eq!(
                    backend.pod().map(|p| p.name.as_str()),
                    Some("api-7c9d6b5f8-k4m2p")
                );
            }
            other => panic!("expected the Service with its backend, got {other:?}"),
        }
        assert_eq!(service.edge.dst_port, 8080, "policies see the backend port");
        assert!(classes[1].is_some(), "the backend half is still logged");

        let text = encode_prometheus_text(&registry).unwrap();
        let counted: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("flowwatch_connections_total{"))
            .collect();
        assert_eq!(counted.len(), 1, "{counted:?}");
        assert!(
            counted[0].contains("dst_workload=\"api\"") && counted[0].contains("dst_port=\"8080\"")
        );
        assert!(
            counted[0].ends_with(" 1"),
            "one connection, not two: {}",
            counted[0]
        );
    }

    /// The demo cluster (all on demo-node) plus a second node with a pod, and a host-network
    /// pod on demo-node.
    fn two_node_classifier() -> Classifier {
        let extra = r"
---
apiVersion: v1
kind: Node
metadata: {name: other-node}
status: {addresses: [{type: InternalIP, address: 10.213.1.254}]}
---
apiVersion: v1
kind: Pod
metadata:
  namespace: data
  name: cache-0
  ownerReferences: [{apiVersion: apps/v1, kind: StatefulSet, name: cache, uid: u-cache, controller: true}]
spec: {nodeName: other-node, containers: [{name: c, ports: [{containerPort: 6379}]}]}
status: {podIP: 10.213.1.10}
---
apiVersion: v1
kind: Pod
metadata:
  namespace: data
  name: probe-x1
  ownerReferences: [{apiVersion: apps/v1, kind: DaemonSet, name: probe, uid: u-probe, controller: true}]
spec: {nodeName: demo-node, hostNetwork: true, containers: [{name: c, ports: [{containerPort: 9100}]}]}
status: {podIP: 10.213.0.254}
";
        let snapshot = include_str!("../../deploy/demo/snapshot.yaml").to_owned() + extra;
        let (inventory, errors) = crate::inventory::snapshot::parse(&snapshot, "demo").unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        let mut classifier = Classifier::new(EnrichOptions::default(), PolicyOptions::default());
        classifier.update(&inventory, &OwnerIndex::default(), 1, 0);
        classifier
    }

    #[test]
    fn a_connection_is_counted_by_the_initiator_pods_node_else_by_the_responders() {
        let classifier = two_node_classifier();
        // (initiator, responder, whether the agent on demo-node / on other-node / without a
        // node name counts it): every connection is counted by exactly one node.
        let cases = [
            // pod of demo-node -> pod of demo-node: its node only
            ("10.213.0.10:40000", "10.213.0.30:5432", [true, false, true]),
            // pod of demo-node -> pod of other-node: the initiator's node
            ("10.213.0.10:40000", "10.213.1.10:6379", [true, false, true]),
            // host-network pod of demo-node (recognised by a port it declares) -> pod of
            // other-node: a pod initiator, so its node
            ("10.213.0.254:9100", "10.213.1.10:6379", [true, false, true]),
            // demo-node itself -> pod of other-node: not a pod, so the responder's node
            (
                "10.213.0.254:40000",
                "10.213.1.10:6379",
                [false, true, true],
            ),
            // outside the cluster -> pod of demo-node: the responder's node
            ("198.51.100.7:40000", "10.213.0.10:80", [true, false, true]),
        ];
        for (src, dst, counted) in cases {
            let mut flow = tcp_flow(src, dst);
            flow.outcome = Outcome::Established;
            flow.counters.fwd_packets = 3;
            let done = [FinishedFlow {
                flow,
                reason: EndReason::Closed,
            }];
            for (node, counted) in [Some("demo-node"), Some("other-node"), None]
                .into_iter()
                .zip(counted)
            {
                let (metrics, registry) = Metrics::new(&MetricsConfig::default()).unwrap();
                let mut reporter = ConnectionCounter::new(
                    node.map(String::from),
                    WallClock::new(std::time::SystemTime::UNIX_EPOCH, 0),
                );
                let classes = reporter.tick(
                    std::iter::empty(),
                    &done,
                    &classifier,
                    &metrics,
                    &mut |_| None,
                    10,
                );
                assert!(classes[0].is_some(), "the flow log keeps it either way");
                let text = encode_prometheus_text(&registry).unwrap();
                assert_eq!(
                    text.contains("flowwatch_connections_total{"),
                    counted,
                    "{src} -> {dst} on the agent of {node:?}: {:?}",
                    classes[0].as_ref().map(|c| (&c.src, &c.dst))
                );
            }
        }
    }
}
