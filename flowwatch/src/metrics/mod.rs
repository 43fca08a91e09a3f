//! The metric catalogue: every Prometheus family flowwatch exports, with bounded labels (pure).
//!
//! One registry (`Registry::with_prefix("flowwatch")`), one struct per subsystem with a
//! `register` method ([`EdgeFamilies`] for the flow edges, [`Health`] for the agent itself),
//! typed label sets and enum label values ([`labels`]). No tokio, aya, kube or HTTP here: time
//! comes in as `now` (monotonic nanoseconds, the same clock as [`crate::model::Nanos`]).
//! `docs/metrics.md` is the user-facing description of every family, these and the `kube_*`
//! families of [`KubeFamilies`] (a unit test checks it lists them all).
//!
//! # Wiring (the stable API)
//!
//! ```no_run
//! use flowwatch::metrics::{CniPresence, EdgeEnd, FlowEdge, KernelMap, Metrics, MetricsConfig, TierLabel, Verdict, WatchedKind, WorkloadKind};
//! use flowwatch::model::{Counters, Outcome, Protocol};
//! # fn main() -> Result<(), flowwatch::metrics::ConfigError> {
//! let (metrics, registry) = Metrics::new(&MetricsConfig::default())?;
//! // `registry` goes to the HTTP edge (`http::HttpState::new(Arc::new(registry), metrics.clone(), ..)`);
//! // `metrics` (cheap to clone, `Send + Sync`) goes wherever flows are evaluated.
//! let edge = FlowEdge {
//!     src: EdgeEnd::workload("shop", "frontend", WorkloadKind::Deployment),
//!     dst: EdgeEnd::workload("shop", "cart", WorkloadKind::Deployment),
//!     dst_port: 8080,
//!     protocol: Protocol::Tcp,
//!     verdict: Verdict::Allowed,
//!     egress: Verdict::Uncovered,
//!     ingress: Verdict::Allowed,
//!     tier: TierLabel::NetworkPolicy,
//!     cni_policy_present: CniPresence::No,
//! };
//! let now = 1_000_000_000; // monotonic ns
//! // Once per connection, when its outcome is decided (Established / Failed / Unanswered):
//! metrics.record_flow(&edge, Some(Outcome::Established), &Counters::default(), now);
//! // For every counters delta of a known flow (no new connection):
//! let delta = Counters { fwd_packets: 3, fwd_bytes: 180, rev_packets: 2, rev_bytes: 1200 };
//! metrics.record_flow(&edge, None, &delta, now);
//! // Health, whenever known:
//! metrics.add_events_lost(flowwatch::metrics::LossReason::RingbufFull, 0);
//! metrics.set_map_fill(KernelMap::Flows, 0.12);
//! metrics.set_interfaces_attached(4);
//! metrics.set_watch_staleness(WatchedKind::Pod, std::time::Duration::from_secs(2));
//! metrics.set_invalid_policies(0);
//! metrics.observe_evaluation(std::time::Duration::from_micros(3));
//! // Periodically (also done by record_flow itself every ttl/10): drop idle series.
//! metrics.expire(now);
//! # Ok(()) }
//! ```
//!
//! # Cardinality
//!
//! Labels name workloads, never pod IPs or ephemeral ports. Each edge family keeps at most
//! `max_series_per_family` series and at most `max_series_per_namespace` per source namespace.
//! A new series over the namespace budget is folded into that namespace pair's `other` bucket
//! (workloads, kinds and port become `other`); over the family budget into the global `other`
//! bucket (namespaces too). Each fold counts in `flowwatch_series_dropped_total{family}`.
//! Series not updated for `series_ttl` are removed, so workloads that disappeared vanish
//! from the exposition and their budget goes to the edges active now. Every `series_ttl / 10`
//! the budget is re-ranked: a folded edge with at least 2 updates in that window and more than
//! twice the updates of the least active admitted edge (of its namespace, if the namespace is
//! full) replaces it, so the budget keeps the top edges.

mod budget;
pub mod exposition;
mod first_seen;
mod kube_families;
pub mod labels;
pub mod rules;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use budget::{Admission, BudgetedFamily};
pub use exposition::{encode_openmetrics, encode_prometheus_text};
pub use first_seen::WallOffset;
pub use kube_families::KubeFamilies;
use labels::{
    BlockedLabels, BuildLabels, CniKindLabels, ConnectionLabels, DriftLabels, FamilyLabels,
    FlowLogDropLabels, KindLabels, LossLabels, MapLabels, TrafficLabels, UncoveredLabels,
};
pub use labels::{
    CniPolicyKind, CniPresence, EdgeEnd, EdgeStateError, FamilyName, FlowEdge, FlowLogDropReason,
    KernelMap, LossReason, Name, OutcomeLabel, Port, ProtocolLabel, Scope, TierLabel,
    TrafficDirection, Verdict, WatchedKind, WorkloadKind,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::model::{Counters, Nanos, Outcome};

/// The metric prefix of every family.
pub const PREFIX: &str = "flowwatch";

/// What `flowwatch_build_info` says about the running agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildInfo {
    /// The crate version.
    pub version: String,
    /// The git commit the agent was built from (`FLOWWATCH_GIT_COMMIT` at build time, set by
    /// build.rs), `unknown` outside a git checkout.
    pub commit: String,
    /// SHA-256 (hex) of the eBPF object the agent loads, `unknown` where none is known (the
    /// agent sets it from the object it embeds).
    pub ebpf_object_sha256: String,
}

impl Default for BuildInfo {
    fn default() -> Self {
        BuildInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            commit: env!("FLOWWATCH_GIT_COMMIT").to_string(),
            ebpf_object_sha256: "unknown".to_string(),
        }
    }
}

/// Settings of the metric catalogue (the agent's `--series-budget*` / `--series-ttl` flags).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Most series one edge family keeps (overflow buckets not counted).
    pub max_series_per_family: usize,
    /// Most series one source namespace may hold in one edge family.
    pub max_series_per_namespace: usize,
    /// Series not updated for this long are removed.
    pub series_ttl: Duration,
    /// The labels of `flowwatch_build_info`.
    pub build: BuildInfo,
    /// Whether the rule-usage families are filled (`record_rule_matches`); off, they stay
    /// empty and a counted connection costs nothing more (the benchmark's baseline).
    pub rule_usage: bool,
}

impl MetricsConfig {
    /// The defaults, shared with the agent's flags (`--series-budget`,
    /// `--series-budget-per-namespace`, `--series-ttl-secs`).
    pub const DEFAULT_SERIES_PER_FAMILY: usize = 10_000;
    pub const DEFAULT_SERIES_PER_NAMESPACE: usize = 2_000;
    pub const DEFAULT_SERIES_TTL_SECS: u64 = 15 * 60;
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            max_series_per_family: Self::DEFAULT_SERIES_PER_FAMILY,
            max_series_per_namespace: Self::DEFAULT_SERIES_PER_NAMESPACE,
            series_ttl: Duration::from_secs(Self::DEFAULT_SERIES_TTL_SECS),
            build: BuildInfo::default(),
            rule_usage: true,
        }
    }
}

/// A setting of [`MetricsConfig`] that cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("metrics config: max_series_per_family must be at least 1 (got 0)")]
    ZeroFamilyBudget,
    #[error("metrics config: max_series_per_namespace must be at least 1 (got 0)")]
    ZeroNamespaceBudget,
    #[error(
        "metrics config: max_series_per_namespace ({per_namespace}) exceeds max_series_per_family ({per_family})"
    )]
    NamespaceBudgetAboveFamily {
        per_namespace: usize,
        per_family: usize,
    },
    #[error("metrics config: series_ttl must be at least 1s (got {0:?})")]
    TtlTooShort(Duration),
}

impl MetricsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_series_per_family == 0 {
            return Err(ConfigError::ZeroFamilyBudget);
        }
        if self.max_series_per_namespace == 0 {
            return Err(ConfigError::ZeroNamespaceBudget);
        }
        if self.max_series_per_namespace > self.max_series_per_family {
            return Err(ConfigError::NamespaceBudgetAboveFamily {
                per_namespace: self.max_series_per_namespace,
                per_family: self.max_series_per_family,
            });
        }
        if self.series_ttl < Duration::from_secs(1) {
            return Err(ConfigError::TtlTooShort(self.series_ttl));
        }
        Ok(())
    }
}

type F64Gauge = Gauge<f64, AtomicU64>;

/// The flow-edge families, each under the series budget.
pub struct EdgeFamilies {
    connections: BudgetedFamily<ConnectionLabels, Counter>,
    uncovered: BudgetedFamily<UncoveredLabels, Counter>,
    drift: BudgetedFamily<DriftLabels, Counter>,
    blocked: BudgetedFamily<BlockedLabels, Counter>,
    bytes: BudgetedFamily<TrafficLabels, Counter>,
    packets: BudgetedFamily<TrafficLabels, Counter>,
    last_sweep: Nanos,
    last_expire: Option<Nanos>,
}

impl EdgeFamilies {
    fn new(cfg: &MetricsConfig) -> Self {
        let (f, n) = (cfg.max_series_per_family, cfg.max_series_per_namespace);
        EdgeFamilies {
            connections: BudgetedFamily::new(f, n),
            uncovered: BudgetedFamily::new(f, n),
            drift: BudgetedFamily::new(f, n),
            blocked: BudgetedFamily::new(f, n),
            bytes: BudgetedFamily::new(f, n),
            packets: BudgetedFamily::new(f, n),
            last_sweep: 0,
            last_expire: None,
        }
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "connections",
            "Connections by source and destination workload, destination port, protocol, \
             overall and per-side policy verdict, and outcome",
            self.connections.family.clone(),
        );
        registry.register(
            "uncovered_connections",
            "Connections no NetworkPolicy governs on either side (overall verdict uncovered)",
            self.uncovered.family.clone(),
        );
        registry.register(
            "enforcement_drift_connections",
            "Connections the policies deny that were established anyway (the CNI did not enforce)",
            self.drift.family.clone(),
        );
        registry.register(
            "blocked_attempts",
            "Failed or unanswered connection attempts of governed edges: verdict=denied as the \
             policies intend, verdict=allowed where something else is broken",
            self.blocked.family.clone(),
        );
        registry.register_with_unit(
            "flow",
            "Bytes at the IP layer by edge and direction (forward: initiator to responder)",
            Unit::Bytes,
            self.bytes.family.clone(),
        );
        registry.register(
            "flow_packets",
            "Packets by edge and direction (forward: initiator to responder)",
            self.packets.family.clone(),
        );
    }

    fn lens(&self) -> [(FamilyName, usize); 6] {
        [
            (FamilyName::Connections, self.connections.len()),
            (FamilyName::Uncovered, self.uncovered.len()),
            (FamilyName::Drift, self.drift.len()),
            (FamilyName::Blocked, self.blocked.len()),
            (FamilyName::Bytes, self.bytes.len()),
            (FamilyName::Packets, self.packets.len()),
        ]
    }

    fn expire(&mut self, cutoff: Nanos) -> usize {
        self.connections.expire(cutoff)
            + self.uncovered.expire(cutoff)
            + self.drift.expire(cutoff)
            + self.blocked.expire(cutoff)
            + self.bytes.expire(cutoff)
            + self.packets.expire(cutoff)
    }

    fn rebalance(&mut self, now: Nanos) -> usize {
        self.connections.rebalance(now)
            + self.uncovered.rebalance(now)
            + self.drift.rebalance(now)
            + self.blocked.rebalance(now)
            + self.bytes.rebalance(now)
            + self.packets.rebalance(now)
    }

    /// Once per window: expiry and re-ranking.
    fn maintain(&mut self, now: Nanos, ttl: Nanos, window: Nanos) {
        if now < self.last_sweep.saturating_add(window) {
            return;
        }
        self.last_sweep = now;
        self.expire(now.saturating_sub(ttl));
        self.rebalance(now);
    }
}

/// The agent's own health.
pub struct Health {
    events_lost: Family<LossLabels, Counter>,
    packets_unattributed: Counter,
    map_fill: Family<MapLabels, F64Gauge>,
    interfaces_attached: Gauge,
    watch_staleness: Family<KindLabels, F64Gauge>,
    invalid_policies: Gauge,
    objects_skipped: Gauge,
    cni_policies: Family<CniKindLabels, Gauge>,
    series_dropped: Family<FamilyLabels, Counter>,
    series: Family<FamilyLabels, Gauge>,
    evaluation: Histogram,
    scrape: Histogram,
    build: BuildInfo,
    flow_log_records: Counter,
    flow_log_dropped: Family<FlowLogDropLabels, Counter>,
    flow_log_rotations: Counter,
    flow_log_reopens: Counter,
}

impl Health {
    fn new(build: BuildInfo) -> Self {
        Health {
            events_lost: Family::default(),
            packets_unattributed: Counter::default(),
            map_fill: Family::default(),
            interfaces_attached: Gauge::default(),
            watch_staleness: Family::default(),
            invalid_policies: Gauge::default(),
            objects_skipped: Gauge::default(),
            cni_policies: Family::default(),
            series_dropped: Family::default(),
            series: Family::default(),
            // 1 µs .. about 1 s
            evaluation: Histogram::new(exponential_buckets(1e-6, 4.0, 11)),
            // 1 ms .. about 4 s
            scrape: Histogram::new(exponential_buckets(0.001, 2.0, 13)),
            build,
            flow_log_records: Counter::default(),
            flow_log_dropped: Family::default(),
            flow_log_rotations: Counter::default(),
            flow_log_reopens: Counter::default(),
        }
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "kernel_events_lost",
            "Flow data lost, by reason, each in its own unit: ringbuf_full (events the kernel \
             ring buffer had no room for), flow_map_full (packets of flows the full kernel flow \
             map could not hold), agent_flow_limit (flows the agent refused at its own bound)",
            self.events_lost.clone(),
        );
        registry.register(
            "kernel_packets_unattributed",
            "Packets of a tracked protocol no flow could be given (non-first IPv4 fragments, \
             IPv6 behind extension headers): traffic in no flow",
            self.packets_unattributed.clone(),
        );
        registry.register_with_unit(
            "kernel_map_fill",
            "Fill ratio (0..1) of the kernel maps",
            Unit::Other("ratio".into()),
            self.map_fill.clone(),
        );
        registry.register(
            "interfaces_attached",
            "Network interfaces the capture programs are attached to",
            self.interfaces_attached.clone(),
        );
        registry.register_with_unit(
            "watch_staleness",
            "Seconds the Kubernetes watches have been failing (the agent runs on the last known \
             state); 0 while every watch is current",
            Unit::Seconds,
            self.watch_staleness.clone(),
        );
        registry.register(
            "policies_invalid",
            "NetworkPolicies and cluster policies skipped because they are invalid",
            self.invalid_policies.clone(),
        );
        registry.register(
            "cni_policy_objects",
            "CNI-specific policy objects (Cilium, Calico, Antrea) in the inventory, by kind: not \
             evaluated, they mark the verdicts of the pods they may select cni_policy_present",
            self.cni_policies.clone(),
        );
        // Every kind's series from the start: 0 is an answer.
        for kind in CniPolicyKind::ALL {
            let _ = self
                .cni_policies
                .get_or_create(&CniKindLabels { kind: *kind });
        }
        registry.register(
            "inventory_objects_skipped",
            "Pods, Services and Nodes with a field the agent cannot use (such as an address that does not parse), skipped",
            self.objects_skipped.clone(),
        );
        registry.register(
            "series_dropped",
            "Updates folded into an `other` series because the series budget was full",
            self.series_dropped.clone(),
        );
        registry.register(
            "series",
            "Series each edge family currently exports (overflow buckets included)",
            self.series.clone(),
        );
        registry.register_with_unit(
            "policy_evaluation_duration",
            "Time to evaluate one flow against the NetworkPolicies",
            Unit::Seconds,
            self.evaluation.clone(),
        );
        registry.register_with_unit(
            "scrape_duration",
            "Time to encode the /metrics exposition",
            Unit::Seconds,
            self.scrape.clone(),
        );
        registry.register(
            "build",
            "The agent's version, the git commit it was built from, and the SHA-256 of the eBPF \
             object it loads",
            Info::new(BuildLabels {
                version: self.build.version.clone(),
                commit: self.build.commit.clone(),
                ebpf_object_sha256: self.build.ebpf_object_sha256.clone(),
            }),
        );
        registry.register(
            "flow_log_records",
            "Records written to the flow log",
            self.flow_log_records.clone(),
        );
        registry.register(
            "flow_log_records_dropped",
            "Flow-log records that could not be written, by reason (no_space, io_error, \
             open_failed); the agent goes on",
            self.flow_log_dropped.clone(),
        );
        registry.register(
            "flow_log_rotations",
            "Size-based rotations of the flow log file",
            self.flow_log_rotations.clone(),
        );
        registry.register(
            "flow_log_reopens",
            "Times the flow log file was reopened because something else renamed or removed it \
             (logrotate)",
            self.flow_log_reopens.clone(),
        );
        for reason in FlowLogDropReason::ALL {
            let _ = self
                .flow_log_dropped
                .get_or_create(&FlowLogDropLabels { reason: *reason });
        }
        for reason in LossReason::ALL {
            // Present from the start, so `increase()` sees the first loss.
            let _ = self
                .events_lost
                .get_or_create(&LossLabels { reason: *reason });
        }
        for family in FamilyName::ALL {
            // Present from the start, so `rate()` and alerts see zeros rather than nothing.
            let _ = self
                .series_dropped
                .get_or_create(&FamilyLabels { family: *family });
            let _ = self.series.get_or_create(&FamilyLabels { family: *family });
        }
    }
}

struct Inner {
    edges: Mutex<EdgeFamilies>,
    health: Health,
    first_seen: first_seen::FirstSeenFamilies,
    rules: rules::RuleFamilies,
    rule_usage: bool,
    ttl: Nanos,
    sweep_every: Nanos,
}

/// The metric catalogue. Cheap to clone; all clones update the same series.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn nanos(d: Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Metrics {
    /// Builds the catalogue and the registry (`flowwatch_` prefix) it is registered in.
    pub fn new(config: &MetricsConfig) -> Result<(Metrics, Registry), ConfigError> {
        config.validate()?;
        let mut registry = Registry::with_prefix(PREFIX);
        let edges = EdgeFamilies::new(config);
        let health = Health::new(config.build.clone());
        edges.register(&mut registry);
        health.register(&mut registry);
        let first_seen = first_seen::FirstSeenFamilies::new();
        first_seen.register(&mut registry);
        let rules = rules::RuleFamilies::default();
        rules.register(&mut registry);
        let ttl = nanos(config.series_ttl);
        let metrics = Metrics {
            inner: Arc::new(Inner {
                edges: Mutex::new(edges),
                health,
                first_seen,
                rules,
                rule_usage: config.rule_usage,
                ttl,
                sweep_every: (ttl / 10).max(1_000_000_000),
            }),
        };
        Ok((metrics, registry))
    }

    fn edges(&self) -> MutexGuard<'_, EdgeFamilies> {
        // A panic while holding the lock leaves counters consistent enough to keep exporting.
        crate::sync::lock(&self.inner.edges)
    }

    /// Records one flow update.
    ///
    /// `decided`: `Some(outcome)` exactly once per connection, when its outcome is decided
    /// (`Established`, `Failed`, `Unanswered`): counts the connection in `connections` and, by
    /// verdict, in `uncovered_connections`, `enforcement_drift_connections` and
    /// `blocked_attempts`. `None` (or `Some(Pending)`) for a traffic-only update.
    /// `delta`: packets and bytes since the previous update of this flow (zeros are skipped).
    pub fn record_flow(
        &self,
        edge: &FlowEdge,
        decided: Option<Outcome>,
        delta: &Counters,
        now: Nanos,
    ) {
        let outcome = decided.and_then(OutcomeLabel::from_outcome);
        let mut fam = self.edges();
        let mut dropped = [0u64; FamilyName::ALL.len()];
        // A fold can create an overflow bucket, and a sweep can remove series: compare the
        // counts rather than inferring them from the admissions.
        let series_before = fam.lens();
        let mut note = |family: FamilyName, a: Admission| {
            if a == Admission::Folded {
                dropped[family as usize] += 1;
            }
        };
        let base = edge.edge_labels();
        let scope = edge.scope();
        let inc = |c: &Counter| {
            c.inc();
        };
        // Failed and unanswered attempts make an edge known too.
        let first_seen = outcome.map(|_| self.inner.first_seen.observe(&base, scope, now));
        if let Some(outcome) = outcome {
            let a = fam.connections.update(
                ConnectionLabels {
                    edge: base.clone(),
                    verdict: edge.verdict,
                    egress_verdict: edge.egress,
                    ingress_verdict: edge.ingress,
                    outcome,
                    tier: edge.tier,
                },
                now,
                inc,
            );
            note(FamilyName::Connections, a);
            if edge.verdict == Verdict::Uncovered {
                let a = fam.uncovered.update(
                    UncoveredLabels {
                        edge: base.clone(),
                        scope,
                        outcome,
                    },
                    now,
                    inc,
                );
                note(FamilyName::Uncovered, a);
            }
            if edge.verdict == Verdict::Denied && outcome == OutcomeLabel::Established {
                let a = fam.drift.update(
                    DriftLabels {
                        edge: base.clone(),
                        scope,
                        egress_verdict: edge.egress,
                        ingress_verdict: edge.ingress,
                        tier: edge.tier,
                        cni_policy_present: edge.cni_policy_present,
                    },
                    now,
                    inc,
                );
                note(FamilyName::Drift, a);
            }
            if outcome != OutcomeLabel::Established
                && matches!(edge.verdict, Verdict::Denied | Verdict::Allowed)
            {
                let a = fam.blocked.update(
                    BlockedLabels {
                        edge: base.clone(),
                        scope,
                        verdict: edge.verdict,
                        egress_verdict: edge.egress,
                        ingress_verdict: edge.ingress,
                        outcome,
                        tier: edge.tier,
                    },
                    now,
                    inc,
                );
                note(FamilyName::Blocked, a);
            }
        }
        for (direction, bytes, packets) in [
            (
                TrafficDirection::Forward,
                delta.fwd_bytes,
                delta.fwd_packets,
            ),
            (
                TrafficDirection::Reverse,
                delta.rev_bytes,
                delta.rev_packets,
            ),
        ] {
            if bytes == 0 && packets == 0 {
                continue;
            }
            let labels = TrafficLabels {
                edge: base.clone(),
                verdict: edge.verdict,
                direction,
            };
            let a = fam.bytes.update(labels.clone(), now, |c| {
                c.inc_by(bytes);
            });
            note(FamilyName::Bytes, a);
            let a = fam.packets.update(labels, now, |c| {
                c.inc_by(packets);
            });
            note(FamilyName::Packets, a);
        }
        if let Some(seen) = first_seen {
            dropped[FamilyName::EdgeFirstSeen as usize] += u64::from(seen.overflow);
            if let Some(len) = seen.len {
                self.set_series(FamilyName::EdgeFirstSeen, len);
            }
        }
        fam.maintain(now, self.inner.ttl, self.inner.sweep_every);
        if fam.lens() != series_before {
            self.publish_series(&fam);
        }
        drop(fam);
        for family in FamilyName::ALL {
            let n = dropped[*family as usize];
            if n > 0 {
                self.inner
                    .health
                    .series_dropped
                    .get_or_create(&FamilyLabels { family: *family })
                    .inc_by(n);
            }
        }
    }

    /// Removes the series not updated within `series_ttl` before `now` and returns how many;
    /// once per window (`series_ttl / 10`, at least 1 s) also re-ranks the budget: the most
    /// active folded edges replace the least active admitted ones. `record_flow` does the same
    /// on its own every window. Calls less than a second apart return 0 at once, so calling
    /// this on every poll is cheap.
    pub fn expire(&self, now: Nanos) -> usize {
        let mut fam = self.edges();
        // The scan visits every series: at most once a second, however often the agent polls.
        if fam
            .last_expire
            .is_some_and(|t| now < t.saturating_add(1_000_000_000))
        {
            return 0;
        }
        fam.last_expire = Some(now);
        let n = fam.expire(now.saturating_sub(self.inner.ttl));
        let promoted = if now >= fam.last_sweep.saturating_add(self.inner.sweep_every) {
            fam.last_sweep = now;
            fam.rebalance(now)
        } else {
            0
        };
        if n + promoted > 0 {
            self.publish_series(&fam);
        }
        n
    }

    fn publish_series(&self, fam: &EdgeFamilies) {
        for (family, len) in fam.lens() {
            self.set_series(family, len);
        }
    }

    fn set_series(&self, family: FamilyName, len: usize) {
        self.inner
            .health
            .series
            .get_or_create(&FamilyLabels { family })
            .set(i64::try_from(len).unwrap_or(i64::MAX));
    }

    /// Starts first-seen tracking with the edges restored from the state file (`known`, empty
    /// on a first start); `wall` converts the monotonic time of `record_flow` to Unix time.
    /// Before this call no edge is tracked. Returns how many edges are exported.
    pub fn start_first_seen(
        &self,
        known: crate::first_seen::KnownEdges,
        wall: WallOffset,
    ) -> usize {
        let n = self.inner.first_seen.start(known, wall);
        self.set_series(FamilyName::EdgeFirstSeen, n);
        n
    }

    /// The known-edges state file's new bytes when the set changed since the last call (edges
    /// idle for `retention_secs` are forgotten first); `None` when there is nothing to save.
    pub fn first_seen_changes(&self, now: Nanos, retention_secs: u64) -> Option<Vec<u8>> {
        let (bytes, len) = self.inner.first_seen.take_changes(now, retention_secs)?;
        self.set_series(FamilyName::EdgeFirstSeen, len);
        Some(bytes)
    }

    /// The state file could not be written: counted, and the set is saved again next time.
    pub fn first_seen_save_failed(&self) {
        self.inner.first_seen.save_failed();
    }

    /// Counts a state file that could not be used.
    pub fn count_edge_state_error(&self, reason: EdgeStateError) {
        self.inner.first_seen.count_error(reason);
    }

    /// Adds flow data lost since the last call for one reason: events the kernel ring buffer
    /// dropped, packets of flows the kernel flow map could not hold, flows the agent itself
    /// refused (its bound on flows in flight).
    pub fn add_events_lost(&self, reason: LossReason, n: u64) {
        if n > 0 {
            self.inner
                .health
                .events_lost
                .get_or_create(&LossLabels { reason })
                .inc_by(n);
        }
    }

    /// Counts one batch of the flow log: records written and dropped (with why), rotations,
    /// and whether the file was reopened.
    pub fn record_flow_log(
        &self,
        written: u64,
        dropped: u64,
        reason: Option<FlowLogDropReason>,
        rotations: u64,
        reopened: bool,
    ) {
        let h = &self.inner.health;
        h.flow_log_records.inc_by(written);
        if let (true, Some(reason)) = (dropped > 0, reason) {
            h.flow_log_dropped
                .get_or_create(&FlowLogDropLabels { reason })
                .inc_by(dropped);
        }
        h.flow_log_rotations.inc_by(rotations);
        if reopened {
            h.flow_log_reopens.inc();
        }
    }

    /// Adds packets the kernel could not give a flow since the last call.
    pub fn add_packets_unattributed(&self, n: u64) {
        self.inner.health.packets_unattributed.inc_by(n);
    }

    /// Sets a kernel map's fill ratio (clamped to 0..=1; NaN is ignored).
    pub fn set_map_fill(&self, map: KernelMap, ratio: f64) {
        if ratio.is_nan() {
            return;
        }
        self.inner
            .health
            .map_fill
            .get_or_create(&MapLabels { map })
            .set(ratio.clamp(0.0, 1.0));
    }

    /// Sets how many interfaces the capture programs are attached to.
    pub fn set_interfaces_attached(&self, n: u64) {
        self.inner
            .health
            .interfaces_attached
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Sets how long a watch has been failing (zero while it is current).
    pub fn set_watch_staleness(&self, kind: WatchedKind, staleness: Duration) {
        self.inner
            .health
            .watch_staleness
            .get_or_create(&KindLabels { kind })
            .set(staleness.as_secs_f64());
    }

    /// Sets the CNI-specific policy objects of the inventory, by kind name (as the policy engine
    /// counts them); kinds not named are 0, names of no known kind are ignored.
    pub fn set_cni_policy_objects(&self, counts: &std::collections::BTreeMap<String, usize>) {
        for kind in CniPolicyKind::ALL {
            let n = counts.get(kind.as_str()).copied().unwrap_or(0);
            self.inner
                .health
                .cni_policies
                .get_or_create(&CniKindLabels { kind: *kind })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Sets how many NetworkPolicies and cluster policies are currently skipped as invalid.
    pub fn set_invalid_policies(&self, n: u64) {
        self.inner
            .health
            .invalid_policies
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Sets how many other inventory objects (pods, services, nodes) are currently skipped
    /// because a field the agent needs cannot be used.
    pub fn set_objects_skipped(&self, n: u64) {
        self.inner
            .health
            .objects_skipped
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Observes the time one flow's policy evaluation took.
    pub fn observe_evaluation(&self, took: Duration) {
        self.inner.health.evaluation.observe(took.as_secs_f64());
    }

    /// Observes the time one scrape's encoding took (called by the HTTP edge).
    pub fn observe_scrape(&self, took: Duration) {
        self.inner.health.scrape.observe(took.as_secs_f64());
    }

    /// Credits the policy rules a counted connection's verdict names (see [`rules`]): call it
    /// where `record_flow` gets `Some(outcome)`, with the wall-clock time in Unix seconds.
    pub fn record_rule_matches(&self, verdict: &crate::policy::FlowVerdict, unix_secs: f64) {
        if self.inner.rule_usage {
            self.inner.rules.record(verdict, unix_secs);
        }
    }

    /// Keeps the rule series of these rules only (see [`rules::RuleKey`]): call it with each
    /// new inventory, so the rules of a deleted policy (or a rule removed or changed) leave the
    /// exposition.
    pub fn retain_rules(&self, rules: impl IntoIterator<Item = rules::RuleKey>) {
        self.inner.rules.retain(rules);
    }

    /// Policy rules with series now.
    pub fn rule_series(&self) -> usize {
        self.inner.rules.len()
    }

    /// Live series per edge family (overflow buckets included).
    pub fn series_counts(&self) -> Vec<(FamilyName, usize)> {
        self.edges().lens().to_vec()
    }
}

#[cfg(test)]
mod tests;
