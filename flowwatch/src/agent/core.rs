//! The agent's work between events, over any flow source: what each arm of `run`'s loop does,
//! in one type that unit tests drive with `crate::source::FakeSource`, no root
//! and no kernel needed. `run` keeps the wiring (datapath, HTTP, signals, the cluster source)
//! and the `select!`.

use std::net::{IpAddr, SocketAddr};

use super::backlog::Backlog;
use super::first_seen::EdgeMemory;
use super::flow_log::{write_records, FlowLog};
use super::health::LossAccounting;
use super::pipeline::{Ended, Pipeline};
use crate::aggregate::FinishedFlow;
use crate::classify::Classifier;
use crate::count::ConnectionCounter;
use crate::error_chain::Chain;
use crate::flowlog::WallClock;
use crate::k8s::ClusterView;
use crate::metrics::Metrics;
use crate::model::{FlowKey, Nanos};
use crate::source::FlowSource;

/// Where a Service address was translated to, by the node's conntrack (`None`: not known).
pub type Nat = Box<dyn FnMut(&FlowKey) -> Option<SocketAddr> + Send>;

/// The running agent's state: flows in flight, the classifier, the flow log and the metrics.
pub struct Agent<S: FlowSource> {
    pub(super) pipeline: Pipeline<S>,
    pub(super) classifier: Classifier,
    pub(super) reporter: ConnectionCounter,
    pub(super) backlog: Backlog,
    pub(super) flow_log: FlowLog,
    pub(super) clock: WallClock,
    pub(super) metrics: Metrics,
    pub(super) edge_memory: EdgeMemory,
    pub(super) losses: LossAccounting,
    /// A cluster view is coming (API or snapshots): flows that end before it wait for it.
    pub(super) expects_inventory: bool,
    /// This node's name, to give its Node the node's own addresses.
    pub(super) node_name: Option<String>,
    pub(super) nat: Nat,
}

impl<S: FlowSource> Agent<S> {
    /// Drains the socket events (often: they must not wait).
    pub fn on_events(&mut self) {
        keep_going(self.pipeline.pump_events(), "draining events");
    }

    /// One poll: reads the flow totals, reports the flows that ended (metrics, flow log), counts
    /// what was lost, and expires idle series.
    pub fn on_poll(&mut self, now: Nanos) {
        let done = match self.pipeline.pump_totals(now) {
            Ok(ended) => flows_freed_or_logged(ended),
            Err(e) => {
                tracing::error!(error = %Chain(&e), "reading flow totals");
                Vec::new()
            }
        };
        let waiting_for_view = self.expects_inventory && !self.classifier.engine_ready();
        if !waiting_for_view && !self.backlog.is_empty() {
            tracing::info!(
                flows = self.backlog.len(),
                "reporting the flows that ended before the cluster view"
            );
        }
        let done = self.backlog.pass(done, waiting_for_view, now);
        self.report(&done, true, now);
        self.losses.update(&self.metrics, &self.pipeline);
        self.metrics.expire(now);
    }

    /// A new view of the cluster: the classifier is rebuilt from it (with the node's own
    /// addresses, `local`, added to its Node), and what it could not use is logged and counted.
    pub fn on_inventory(&mut self, view: ClusterView, local: &[IpAddr], now: Nanos) {
        let generation = view.generation;
        // A fresh view is this update's alone: taken over, not copied.
        let mut cluster = std::sync::Arc::unwrap_or_clone(view.inventory);
        // The node's own addresses beyond its Node object's (a bridge CNI's gateway).
        if let Some(node) = self.node_name.as_deref() {
            crate::inventory::local_node::add_local_addresses(&mut cluster, node, local);
        }
        let errors = self
            .classifier
            .update(&cluster, &view.owners, generation, now);
        for e in &errors {
            tracing::warn!(object = %e.object, field = e.field.as_deref().unwrap_or(""), reason = %e.message, "object skipped");
        }
        let policies = errors.iter().filter(|e| is_policy(&e.object)).count();
        self.metrics.set_invalid_policies(policies as u64);
        self.metrics
            .set_objects_skipped((errors.len() - policies) as u64);
        self.metrics
            .set_cni_policy_objects(&self.classifier.cni_policy_counts());
        self.metrics.retain_rules(self.classifier.rule_keys());
        tracing::info!(
            generation,
            pods = cluster.pods.len(),
            policies = cluster.network_policies.len(),
            "inventory updated"
        );
    }

    /// Saves the known edges when they changed.
    pub fn save_state(&self, now: Nanos) {
        self.edge_memory.save(&self.metrics, now);
    }

    /// Whether flows are named and judged yet (the engine is built from a view).
    pub fn engine_ready(&self) -> bool {
        self.classifier.engine_ready()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// At shutdown: every flow in flight is reported (what still waited for a view too, named
    /// if the view came), the known edges saved and the flow log closed. Returns the pipeline,
    /// for the source's last figures.
    pub fn finish(mut self, now: Nanos) -> Pipeline<S> {
        let (ended, last_read) = self.pipeline.finish_all();
        keep_going(last_read, "reading the flows in flight at shutdown");
        let done = self.backlog.pass(flows_freed_or_logged(ended), false, now);
        // A full disk at shutdown is counted and logged like any other drop: the agent still
        // stops cleanly.
        self.report(&done, false, now);
        self.edge_memory.save(&self.metrics, now);
        self.flow_log.summary();
        self.pipeline
    }

    /// Classifies and counts `done` (and, with `live`, the flows still in flight), then writes
    /// their records.
    fn report(&mut self, done: &[FinishedFlow], live: bool, now: Nanos) {
        let in_flight = self.pipeline.aggregator().flows().filter(move |_| live);
        let classes = self.reporter.tick(
            in_flight,
            done,
            &self.classifier,
            &self.metrics,
            &mut self.nat,
            now,
        );
        write_records(
            &mut self.flow_log,
            done,
            &classes,
            self.clock,
            &self.metrics,
        );
    }
}

/// Once running, the agent does not stop on an error: it logs it and goes on with the next
/// tick (a transient netlink or map error must not take the node's observability down).
pub(super) fn keep_going<T, E: std::error::Error>(result: Result<T, E>, what: &str) {
    if let Err(e) = result {
        tracing::error!(error = %Chain(&e), "{what}");
    }
}

/// The flows that ended; a failure to free their kernel entries is logged, not fatal (their
/// entries are read again next poll and start flows of their own).
fn flows_freed_or_logged<E: std::error::Error>(ended: Ended<E>) -> Vec<FinishedFlow> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::AggregatorConfig;
    use crate::enrich::{EnrichOptions, OwnerIndex};
    use crate::flowlog::writer::Rotation;
    use crate::metrics::MetricsConfig;
    use crate::model::{Counters, EventKind, Observation, Protocol, Role};
    use crate::policy::PolicyOptions;
    use crate::source::{FakeSource, KernelLosses};

    const S: Nanos = 1_000_000_000;
    const DEMO: &str = include_str!("../../../deploy/demo/snapshot.yaml");

    /// An agent over a fake source, writing its flow log to `log`, and its metrics' registry.
    fn agent_with_registry(
        source: FakeSource,
        log: &std::path::Path,
        expects_inventory: bool,
    ) -> (Agent<FakeSource>, prometheus_client::registry::Registry) {
        let (metrics, registry) = Metrics::new(&MetricsConfig::default()).unwrap();
        let edge_memory = super::super::first_seen::start(None, 30, (1_000, 1_000), &metrics, 0);
        let agent = Agent {
            pipeline: Pipeline::new(source, AggregatorConfig::default(), &[]),
            classifier: Classifier::new(EnrichOptions::default(), PolicyOptions::default()),
            reporter: ConnectionCounter::new(
                None,
                WallClock::new(std::time::SystemTime::UNIX_EPOCH, 0),
            ),
            backlog: Backlog::default(),
            flow_log: super::super::flow_log::open_flow_log(Some(log), None, Rotation::default())
                .unwrap(),
            clock: WallClock::new(std::time::SystemTime::UNIX_EPOCH, 0),
            metrics,
            edge_memory,
            losses: LossAccounting::default(),
            expects_inventory,
            node_name: None,
            nat: Box::new(|_| None),
        };
        (agent, registry)
    }

    fn agent(
        source: FakeSource,
        log: &std::path::Path,
        expects_inventory: bool,
    ) -> Agent<FakeSource> {
        agent_with_registry(source, log, expects_inventory).0
    }

    /// A refused connection from shop/web to data/postgres (the demo's pods), at 1 s.
    fn refused_web_to_postgres() -> FakeSource {
        let key = FlowKey {
            src: "10.213.0.10:40000".parse().unwrap(),
            dst: "10.213.0.30:5432".parse().unwrap(),
            protocol: Protocol::Tcp,
        };
        let mut source = FakeSource::default();
        for kind in [EventKind::TcpConnect, EventKind::TcpFailed] {
            source.events.push(Observation::Event {
                key,
                kind,
                role: Role::Client,
                at: S,
            });
        }
        source.totals.push(Observation::Totals {
            key,
            counters: Counters {
                fwd_packets: 1,
                fwd_bytes: 60,
                rev_packets: 1,
                rev_bytes: 40,
            },
            first_seen: S,
            last_seen: S,
            fwd_tcp_flags: 0,
            rev_tcp_flags: 0,
        });
        source
    }

    fn demo_view() -> ClusterView {
        let (inventory, errors) = crate::inventory::snapshot::parse(DEMO, "demo").unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        ClusterView {
            inventory: std::sync::Arc::new(inventory),
            owners: std::sync::Arc::new(OwnerIndex::default()),
            generation: 1,
        }
    }

    fn records(log: &std::path::Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn a_flow_that_ends_before_the_cluster_view_waits_for_it_and_is_written_named() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("flows.jsonl");
        let mut agent = agent(refused_web_to_postgres(), &log, true);
        agent.on_events();
        agent.on_poll(S);
        agent.on_poll(10 * S);
        assert!(records(&log).is_empty(), "written before the view came");
        agent.on_inventory(demo_view(), &[], 11 * S);
        assert!(agent.engine_ready());
        agent.on_poll(12 * S);
        let written = records(&log);
        assert_eq!(written.len(), 1, "{written:?}");
        assert_eq!(written[0]["outcome"], "failed");
        assert_eq!(written[0]["src"]["name"], "web-5d8c7f9b4-x2x7q");
        assert_eq!(written[0]["dst"]["workload_name"], "postgres");
        assert_eq!(written[0]["verdict"], "denied");
        // Its kernel entry was freed once it was reported.
        let pipeline = agent.finish(13 * S);
        assert_eq!(pipeline.source.forgotten.len(), 1);
    }

    #[test]
    fn without_a_cluster_source_flows_are_written_at_once_and_shutdown_flushes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("flows.jsonl");
        let mut agent = agent(refused_web_to_postgres(), &log, false);
        agent.on_events();
        agent.on_poll(10 * S);
        assert_eq!(records(&log).len(), 1);
        assert!(
            records(&log)[0].get("verdict").is_none(),
            "not judged without a view"
        );
        // A flow still in flight at shutdown is written by `finish`.
        let key = FlowKey {
            src: "10.213.0.10:40001".parse().unwrap(),
            dst: "10.213.0.20:8080".parse().unwrap(),
            protocol: Protocol::Tcp,
        };
        agent.pipeline.source.events.push(Observation::Event {
            key,
            kind: EventKind::TcpConnect,
            role: Role::Client,
            at: 11 * S,
        });
        agent.on_events();
        agent.finish(12 * S);
        assert_eq!(records(&log).len(), 2);
    }

    #[test]
    fn the_sources_losses_are_counted_once_however_often_it_is_polled() {
        let dir = tempfile::tempdir().unwrap();
        let source = FakeSource {
            losses: KernelLosses {
                ringbuf_full: 3,
                unattributed_packets: 2,
                ..KernelLosses::default()
            },
            ..FakeSource::default()
        };
        let (mut agent, registry) =
            agent_with_registry(source, &dir.path().join("flows.jsonl"), false);
        let exposition = || crate::metrics::encode_prometheus_text(&registry).unwrap();
        agent.on_poll(S);
        agent.on_poll(2 * S);
        let text = exposition();
        assert!(
            text.contains("flowwatch_kernel_events_lost_total{reason=\"ringbuf_full\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("flowwatch_kernel_packets_unattributed_total 2\n"),
            "{text}"
        );
        agent.pipeline.source.losses.ringbuf_full = 5;
        agent.on_poll(3 * S);
        let text = exposition();
        assert!(
            text.contains("flowwatch_kernel_events_lost_total{reason=\"ringbuf_full\"} 5\n"),
            "{text}"
        );
    }
}
