//! Kubernetes edge: kube-rs watchers and reflectors that feed the inventory.
//!
//! [`ClusterWatch::start`] runs one watcher per kind (Namespaces, Nodes, Pods, Services,
//! EndpointSlices, NetworkPolicies, and the metadata of ReplicaSets and Jobs for workload
//! resolution, watched metadata-only), each into a kube-rs reflector store, and, while the API
//! server serves them, the optional kinds of [`optional`] (cluster-scoped policies, and the
//! metadata of CNI-specific policies), found by API discovery. Objects arrive as
//! `DynamicObject`s and are decoded one by one ([`convert`]), so an object the agent cannot
//! decode is logged, counted and skipped while the rest keeps working; what is stored is
//! trimmed to the fields the agent reads. After changes (debounced) the stores are copied into
//! a new [`ClusterView`] (`Arc<Inventory>` + [`OwnerIndex`]) published on a `tokio::sync::watch`
//! channel; the first view is published once every kind has listed.
//!
//! Failures: a watch that fails (API server gone, 410 Gone, ...) is restarted with a relist
//! after a capped exponential backoff with jitter ([`backoff`], so agents that lost the API
//! server together do not come back in lockstep); until the relist completes the store keeps the last
//! known state (the reflector swaps the new list in atomically at its end), and a failed kind
//! stays failing until then. [`SyncStatus`] says whether everything has synced, whether any
//! watch is failing (stale) and since when.

pub mod backoff;
pub mod convert;
pub mod optional;
pub mod snapshot_reload;
pub mod source;
pub mod store;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::stream::BoxStream;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::{self, metadata_watcher, watcher, Event};
use kube::Client;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::enrich::OwnerIndex;
use crate::inventory::Inventory;
use crate::metrics::WatchedResource;
use convert::Trim;
use store::{Cache, Cached, Change, CompactPod, Json};

/// What the agent knows of the cluster at one moment.
#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    pub inventory: Arc<Inventory>,
    /// ReplicaSet → Deployment and Job → CronJob (empty in snapshot mode).
    pub owners: Arc<OwnerIndex>,
    /// Increases with every published view (0: nothing loaded yet).
    pub generation: u64,
}

/// The kinds flowwatch watches: the eight core kinds, always, and the optional kinds (see
/// [`optional`]) while the API server serves them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, EncodeLabelValue)]
pub enum Kind {
    Namespace,
    Node,
    Pod,
    Service,
    EndpointSlice,
    NetworkPolicy,
    ReplicaSet,
    Job,
    // policy.networking.k8s.io (network-policy-api), evaluated
    ClusterNetworkPolicy,
    AdminNetworkPolicy,
    BaselineAdminNetworkPolicy,
    // CNI-specific policy kinds, counted only (metadata-only watches)
    CiliumNetworkPolicy,
    CiliumClusterwideNetworkPolicy,
    CalicoNetworkPolicy,
    CalicoGlobalNetworkPolicy,
    CalicoCrdNetworkPolicy,
    CalicoCrdGlobalNetworkPolicy,
    AntreaNetworkPolicy,
    AntreaClusterNetworkPolicy,
}

impl Kind {
    /// The core kinds: watched always, and the agent is not ready until each has listed.
    pub const ALL: [Kind; 8] = [
        Kind::Namespace,
        Kind::Node,
        Kind::Pod,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::NetworkPolicy,
        Kind::ReplicaSet,
        Kind::Job,
    ];

    /// The kinds watched only while their CRD (or aggregated API) is served.
    pub const OPTIONAL: [Kind; 11] = [
        Kind::ClusterNetworkPolicy,
        Kind::AdminNetworkPolicy,
        Kind::BaselineAdminNetworkPolicy,
        Kind::CiliumNetworkPolicy,
        Kind::CiliumClusterwideNetworkPolicy,
        Kind::CalicoNetworkPolicy,
        Kind::CalicoGlobalNetworkPolicy,
        Kind::CalicoCrdNetworkPolicy,
        Kind::CalicoCrdGlobalNetworkPolicy,
        Kind::AntreaNetworkPolicy,
        Kind::AntreaClusterNetworkPolicy,
    ];

    /// Every kind, core first.
    pub const EVERY: [Kind; KINDS] = {
        let mut all = [Kind::Namespace; KINDS];
        let mut i = 0;
        while i < KINDS {
            all[i] = if i < 8 {
                Kind::ALL[i]
            } else {
                Kind::OPTIONAL[i - 8]
            };
            i += 1;
        }
        all
    };

    /// Whether this is one of the core kinds.
    pub fn is_core(self) -> bool {
        idx(self) < Kind::ALL.len()
    }
}

/// How many kinds there are.
const KINDS: usize = 19;

/// The `kind` label of `flowwatch_watch_staleness_seconds` for each watched kind (the same
/// value as the `kind` label of the `flowwatch_kube_*` families).
impl From<Kind> for WatchedResource {
    fn from(kind: Kind) -> WatchedResource {
        match kind {
            Kind::Namespace => WatchedResource::Namespaces,
            Kind::Node => WatchedResource::Nodes,
            Kind::Pod => WatchedResource::Pods,
            Kind::Service => WatchedResource::Services,
            Kind::EndpointSlice => WatchedResource::EndpointSlices,
            Kind::NetworkPolicy => WatchedResource::NetworkPolicies,
            Kind::ReplicaSet => WatchedResource::ReplicaSets,
            Kind::Job => WatchedResource::Jobs,
            Kind::ClusterNetworkPolicy => WatchedResource::ClusterNetworkPolicies,
            Kind::AdminNetworkPolicy => WatchedResource::AdminNetworkPolicies,
            Kind::BaselineAdminNetworkPolicy => WatchedResource::BaselineAdminNetworkPolicies,
            Kind::CiliumNetworkPolicy => WatchedResource::CiliumNetworkPolicies,
            Kind::CiliumClusterwideNetworkPolicy => {
                WatchedResource::CiliumClusterwideNetworkPolicies
            }
            Kind::CalicoNetworkPolicy => WatchedResource::CalicoNetworkPolicies,
            Kind::CalicoGlobalNetworkPolicy => WatchedResource::CalicoGlobalNetworkPolicies,
            Kind::CalicoCrdNetworkPolicy => WatchedResource::CalicoCrdNetworkPolicies,
            Kind::CalicoCrdGlobalNetworkPolicy => WatchedResource::CalicoCrdGlobalNetworkPolicies,
            Kind::AntreaNetworkPolicy => WatchedResource::AntreaNetworkPolicies,
            Kind::AntreaClusterNetworkPolicy => WatchedResource::AntreaClusterNetworkPolicies,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: Kind,
}

/// Watch settings.
#[derive(Clone, Debug)]
pub struct WatchOptions {
    /// Quiet time after a change before a new view is built (changes within it are batched).
    pub debounce: Duration,
    /// Server-side timeout of each watch request (kube-rs default: 290 s).
    pub watch_timeout_secs: Option<u32>,
    /// Page size of the initial lists.
    pub page_size: u32,
    /// Base of the first and of the largest pause before a failed watch is restarted; each
    /// pause is jittered up to twice its base ([`backoff::Backoff`]).
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// How often API discovery looks for the optional kinds ([`optional`]) coming or going.
    pub discovery_interval: Duration,
    /// How the initial state of each kind is fetched (see [`ListStrategy`]).
    pub list_strategy: ListStrategy,
}

/// How a watch gets the objects that exist when it starts.
///
/// Paged is the default: with kube-runtime 2.0.1 a streaming watch asks for the initial events
/// again each time it resumes (every 290 s per kind, kube-rs issue #1844, fixed upstream by
/// kube-rs PR #1882 in a later release), so at rest it downloads the whole state again every
/// few minutes, where a paged agent resumes its watch for free (figures in
/// docs/benchmarks.md). Streaming pays off in a restart storm; switch the default once the
/// kube-rs upgrade carries the fix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ListStrategy {
    /// A streaming list (`sendInitialEvents=true`, KEP-3157 WatchList) when the server
    /// supports it, else paged lists: a kind whose streaming watch the server refuses (422/400:
    /// the WatchList feature off or unknown) before it ever completed lists in pages from then on.
    Auto,
    /// Always a streaming list: one watch request per kind instead of a list request per page
    /// and a watch.
    Streaming,
    /// Paged lists (`limit`/`continue`), then a watch resumed from its resourceVersion.
    #[default]
    Paged,
}

/// The watcher settings of one watch of a kind (page size, timeout, list strategy).
pub fn watcher_config(opts: &WatchOptions, streaming: bool) -> watcher::Config {
    let mut cfg = watcher::Config {
        page_size: Some(opts.page_size),
        ..Default::default()
    };
    if let Some(t) = opts.watch_timeout_secs {
        cfg = cfg.timeout(t);
    }
    if streaming {
        cfg = cfg.streaming_lists();
    }
    cfg
}

/// Whether a streaming watch that has not delivered its initial state yet failed because the
/// server does not do streaming lists: it rejects `sendInitialEvents` as invalid (422, or 400),
/// or, for a metadata-only watch, answers with a Status that is no watch event (kube-rs cannot
/// decode it). Any of these on a kind whose streaming list never completed means: list in pages.
fn refuses_streaming_lists(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::WatchStartFailed(kube::Error::Api(e))
        | watcher::Error::WatchError(e)
        | watcher::Error::WatchFailed(kube::Error::Api(e)) => {
            matches!(e.code, 400 | 422)
        }
        watcher::Error::WatchStartFailed(kube::Error::SerdeError(_))
        | watcher::Error::WatchFailed(kube::Error::SerdeError(_)) => true,
        _ => false,
    }
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            debounce: Duration::from_millis(100),
            watch_timeout_secs: None,
            page_size: 100,
            min_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(5),
            discovery_interval: Duration::from_secs(30),
            list_strategy: ListStrategy::Paged,
        }
    }
}

#[derive(Debug, Default)]
struct KindState {
    /// Watched now: always for a core kind; for an optional kind while it is served.
    active: AtomicBool,
    /// The agent is not synced until this kind has listed: the core kinds, and the optional
    /// kinds served when the agent started (a kind that appears later joins the views once
    /// listed, without making the agent unready meanwhile).
    required: AtomicBool,
    /// Was active at some time (its series exist).
    seen: AtomicBool,
    synced: AtomicBool,
    failing: AtomicBool,
    /// When this kind's current run of failures started (None: its watch is current).
    failing_since: Mutex<Option<Instant>>,
    /// When an optional kind was last activated (see [`NEW_KIND_GRACE`]).
    activated: Mutex<Option<Instant>>,
}

/// For this long after an optional kind starts being served, failures of its watch are retried
/// without being counted or making the agent stale: the API server answers 429 "storage is
/// (re)initializing" to the first lists and watches of a CRD it has just established.
pub const NEW_KIND_GRACE: Duration = Duration::from_secs(10);

/// Sync state and its metrics, shared by the watchers, `/readyz` and `/metrics`.
#[derive(Debug)]
pub struct SyncStatus {
    kinds: [KindState; KINDS],
    /// The first API discovery (which optional kinds are served) has not answered yet: the
    /// first view waits for it, so cluster policies served at start are in it.
    discovering: AtomicBool,
    /// When the current run of failures started (None: healthy).
    stale_since: Mutex<Option<Instant>>,
    last_ok: Mutex<Option<Instant>>,
    synced_gauge: Family<KindLabels, Gauge>,
    stale_gauge: Gauge,
    objects: Family<KindLabels, Gauge>,
    watch_errors: Family<KindLabels, Counter>,
    relists: Family<KindLabels, Counter>,
    rejected: Family<KindLabels, Counter>,
    last_ok_ts: Gauge,
    views: Counter,
    reload_errors: Counter,
}

/// A readable summary of [`SyncStatus`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct SyncReport {
    pub synced: bool,
    pub stale: bool,
    pub stale_for_secs: Option<f64>,
    pub last_ok_age_secs: Option<f64>,
    pub unsynced_kinds: Vec<String>,
    pub failing_kinds: Vec<String>,
}

impl Default for SyncStatus {
    fn default() -> Self {
        let kinds: [KindState; KINDS] = Default::default();
        for kind in Kind::ALL {
            let k = &kinds[idx(kind)];
            k.active.store(true, Ordering::Relaxed);
            k.required.store(true, Ordering::Relaxed);
            k.seen.store(true, Ordering::Relaxed);
        }
        SyncStatus {
            kinds,
            discovering: AtomicBool::new(false),
            stale_since: Mutex::new(None),
            last_ok: Mutex::new(None),
            synced_gauge: Family::default(),
            stale_gauge: Gauge::default(),
            objects: Family::default(),
            watch_errors: Family::default(),
            relists: Family::default(),
            rejected: Family::default(),
            last_ok_ts: Gauge::default(),
            views: Counter::default(),
            reload_errors: Counter::default(),
        }
    }
}

fn idx(kind: Kind) -> usize {
    kind as usize
}

impl SyncStatus {
    /// Every kind has listed at least once and no watch is failing now. This is the cache half
    /// of `/readyz` (the other half: programs attached).
    pub fn is_synced(&self) -> bool {
        self.has_synced() && !self.is_stale()
    }

    /// The cache half of `/readyz` as a reason: `Ok(())` when synced, else why not (for
    /// `http::Readiness::set_not_ready`).
    pub fn readiness(&self) -> Result<(), String> {
        let r = self.report();
        if !r.unsynced_kinds.is_empty() {
            return Err(format!(
                "kube caches not synced: {}",
                r.unsynced_kinds.join(", ")
            ));
        }
        if r.stale {
            return Err(format!(
                "kube API watch failing for {:.0} s ({}); running on the last known state",
                r.stale_for_secs.unwrap_or(0.0),
                r.failing_kinds.join(", ")
            ));
        }
        Ok(())
    }

    /// Every kind has listed at least once (the caches hold a complete state, maybe old).
    pub fn has_synced(&self) -> bool {
        !self.discovering.load(Ordering::Acquire)
            && self
                .kinds
                .iter()
                .all(|k| !k.required.load(Ordering::Acquire) || k.synced.load(Ordering::Acquire))
    }

    /// Whether `kind` is watched now (a core kind always; an optional kind while served).
    pub fn is_active(&self, kind: Kind) -> bool {
        self.kinds[idx(kind)].active.load(Ordering::Acquire)
    }

    /// Some watch is failing, or relisting after a failure and not yet swapped in: the agent
    /// runs on the last known state.
    pub fn is_stale(&self) -> bool {
        self.kinds
            .iter()
            .any(|k| k.active.load(Ordering::Acquire) && k.failing.load(Ordering::Acquire))
    }

    /// How long the current run of failures has lasted.
    pub fn stale_for(&self) -> Option<Duration> {
        lock(&self.stale_since).map(|t| t.elapsed())
    }

    /// How long this kind's watch has been failing (None: it is current). [`Self::stale_for`]
    /// counts from the first failure of any kind in the current run, so it is at least the
    /// longest of these.
    pub fn stale_for_kind(&self, kind: Kind) -> Option<Duration> {
        lock(&self.kinds[idx(kind)].failing_since).map(|t| t.elapsed())
    }

    /// Every kind watched now or before (the core kinds, and the optional kinds that have been
    /// served) with its own staleness (zero while its watch is current or no longer runs): the
    /// values of `flowwatch_watch_staleness_seconds{kind}` (`WatchedResource::from(kind)`).
    pub fn staleness(&self) -> Vec<(Kind, Duration)> {
        Kind::EVERY
            .into_iter()
            .filter(|k| self.kinds[idx(*k)].seen.load(Ordering::Acquire))
            .map(|k| (k, self.stale_for_kind(k).unwrap_or_default()))
            .collect()
    }

    /// Age of the last watch event or completed list the caches took in.
    pub fn last_ok_age(&self) -> Option<Duration> {
        lock(&self.last_ok).map(|t| t.elapsed())
    }

    /// Watch restarts that relisted (after a 410 Gone or an outage), all kinds.
    pub fn relists(&self) -> u64 {
        Kind::EVERY.iter().map(|k| self.relists_for_kind(*k)).sum()
    }

    /// Watch restarts of this kind that relisted.
    pub fn relists_for_kind(&self, kind: Kind) -> u64 {
        self.relists.get_or_create(&KindLabels { kind }).get()
    }

    /// Objects that could not be decoded, all kinds.
    pub fn rejected(&self) -> u64 {
        Kind::EVERY
            .iter()
            .map(|k| self.rejected.get_or_create(&KindLabels { kind: *k }).get())
            .sum()
    }

    pub fn watch_errors(&self) -> u64 {
        Kind::EVERY
            .iter()
            .map(|k| {
                self.watch_errors
                    .get_or_create(&KindLabels { kind: *k })
                    .get()
            })
            .sum()
    }

    pub fn report(&self) -> SyncReport {
        let names = |f: &dyn Fn(&KindState) -> bool| {
            Kind::EVERY
                .iter()
                .filter(|k| f(&self.kinds[idx(**k)]))
                .map(|k| format!("{k:?}"))
                .collect()
        };
        SyncReport {
            synced: self.is_synced(),
            stale: self.is_stale(),
            stale_for_secs: self.stale_for().map(|d| d.as_secs_f64()),
            last_ok_age_secs: self.last_ok_age().map(|d| d.as_secs_f64()),
            unsynced_kinds: names(&|k| {
                k.required.load(Ordering::Acquire) && !k.synced.load(Ordering::Acquire)
            }),
            failing_kinds: names(&|k| {
                k.active.load(Ordering::Acquire) && k.failing.load(Ordering::Acquire)
            }),
        }
    }

    /// Registers the `kube_*` metrics (under the registry's prefix, e.g. `flowwatch_`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "kube_cache_synced",
            "1 when the kind's cache has completed its first list",
            self.synced_gauge.clone(),
        );
        registry.register(
            "kube_stale",
            "1 while a watch of the API server is failing and the agent runs on the last known state",
            self.stale_gauge.clone(),
        );
        registry.register_with_unit(
            "kube_last_sync_timestamp",
            "Unix time of the last successful watch event or list",
            prometheus_client::registry::Unit::Seconds,
            self.last_ok_ts.clone(),
        );
        registry.register(
            "kube_objects",
            "Objects in the agent's cache",
            self.objects.clone(),
        );
        registry.register(
            "kube_watch_errors",
            "Failed watch or list requests",
            self.watch_errors.clone(),
        );
        registry.register(
            "kube_relists",
            "Watches restarted with a full list (after 410 Gone or an outage)",
            self.relists.clone(),
        );
        registry.register(
            "kube_objects_rejected",
            "Objects that could not be decoded and were skipped",
            self.rejected.clone(),
        );
        registry.register(
            "kube_views",
            "Inventories published to the policy engine and the enrichment index",
            self.views.clone(),
        );
        registry.register(
            "snapshot_reload_errors",
            "Snapshot-file reloads that failed (the last good inventory stays in force)",
            self.reload_errors.clone(),
        );
        // Every core kind's series from the start (0 until it happens), so `increase()` and
        // alerts see zeros rather than nothing, and an unsynced kind shows as 0. An optional
        // kind's series appear when it is first served (`activate`).
        for kind in Kind::ALL {
            self.create_series(kind);
        }
    }

    fn create_series(&self, kind: Kind) {
        let labels = KindLabels { kind };
        let _ = self.synced_gauge.get_or_create(&labels);
        let _ = self.objects.get_or_create(&labels);
        let _ = self.watch_errors.get_or_create(&labels);
        let _ = self.relists.get_or_create(&labels);
        let _ = self.rejected.get_or_create(&labels);
    }

    /// An optional kind is served: it is watched from now on. `required`: the agent is not
    /// synced until it has listed (kinds served at start).
    fn activate(&self, kind: Kind, required: bool) {
        let k = &self.kinds[idx(kind)];
        k.synced.store(false, Ordering::Release);
        k.failing.store(false, Ordering::Release);
        *guard(&k.failing_since) = None;
        k.required.store(required, Ordering::Release);
        *guard(&k.activated) = Some(Instant::now());
        k.seen.store(true, Ordering::Release);
        k.active.store(true, Ordering::Release);
        self.create_series(kind);
        self.synced_gauge.get_or_create(&KindLabels { kind }).set(0);
    }

    /// An optional kind is no longer served: not watched, not required, never stale.
    fn deactivate(&self, kind: Kind) {
        let k = &self.kinds[idx(kind)];
        k.active.store(false, Ordering::Release);
        k.required.store(false, Ordering::Release);
        k.synced.store(false, Ordering::Release);
        k.failing.store(false, Ordering::Release);
        *guard(&k.failing_since) = None;
        self.synced_gauge.get_or_create(&KindLabels { kind }).set(0);
        self.set_objects(kind, 0);
        self.recompute_stale();
    }

    /// Clears the stale signal when no active kind is failing any more.
    fn recompute_stale(&self) {
        if !self.is_stale() {
            *guard(&self.stale_since) = None;
            self.stale_gauge.set(0);
        }
    }

    fn ok(&self, kind: Kind) {
        let k = &self.kinds[idx(kind)];
        k.failing.store(false, Ordering::Release);
        *guard(&k.failing_since) = None;
        *guard(&self.last_ok) = Some(Instant::now());
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.last_ok_ts.set(i64::try_from(unix).unwrap_or(i64::MAX));
        self.recompute_stale();
    }

    fn synced(&self, kind: Kind, objects: usize) {
        if !self.kinds[idx(kind)].active.load(Ordering::Acquire) {
            return; // the watch of a kind no longer served, being stopped
        }
        self.kinds[idx(kind)].synced.store(true, Ordering::Release);
        self.synced_gauge.get_or_create(&KindLabels { kind }).set(1);
        self.set_objects(kind, objects);
    }

    fn set_objects(&self, kind: Kind, objects: usize) {
        self.objects
            .get_or_create(&KindLabels { kind })
            .set(i64::try_from(objects).unwrap_or(i64::MAX));
    }

    /// Records a failure of `kind`'s watch; false when it is not counted (a kind no longer
    /// served, or one served only since [`NEW_KIND_GRACE`]).
    fn failed(&self, kind: Kind) -> bool {
        let k = &self.kinds[idx(kind)];
        if !k.active.load(Ordering::Acquire) {
            return false; // the watch of a kind no longer served, being stopped
        }
        if lock(&k.activated).is_some_and(|t| t.elapsed() < NEW_KIND_GRACE) {
            return false;
        }
        k.failing.store(true, Ordering::Release);
        guard(&k.failing_since).get_or_insert_with(Instant::now);
        self.watch_errors.get_or_create(&KindLabels { kind }).inc();
        let mut since = guard(&self.stale_since);
        if since.is_none() {
            *since = Some(Instant::now());
        }
        self.stale_gauge.set(1);
        true
    }
}

fn guard<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn lock<T: Copy>(m: &Mutex<T>) -> T {
    *guard(m)
}

/// The caches, read when a view is materialized.
#[derive(Clone, Default)]
struct Stores {
    namespaces: Arc<Cache<Namespace>>,
    nodes: Arc<Cache<Node>>,
    pods: Arc<Cache<CompactPod>>,
    services: Arc<Cache<Json<Service>>>,
    endpoint_slices: Arc<Cache<Json<EndpointSlice>>>,
    network_policies: Arc<Cache<Json<NetworkPolicy>>>,
    replica_sets: Arc<Cache<ReplicaSet>>,
    jobs: Arc<Cache<Job>>,
    /// Cluster policies and CNI policies, while served.
    optional: optional::OptionalStores,
}

impl Stores {
    fn view(&self, generation: u64) -> ClusterView {
        let inventory = Inventory {
            namespaces: self.namespaces.map(Namespace::expand),
            nodes: self.nodes.map(Node::expand),
            pods: self.pods.map(Pod::expand),
            services: self.services.map(Service::expand),
            endpoint_slices: self.endpoint_slices.map(EndpointSlice::expand),
            network_policies: self.network_policies.map(NetworkPolicy::expand),
            cluster_policies: self.optional.cluster_policies(),
            workloads: Vec::new(),
        };
        let rs = self.replica_sets.map(ReplicaSet::expand);
        let jobs = self.jobs.map(Job::expand);
        ClusterView {
            inventory: Arc::new(inventory),
            owners: Arc::new(OwnerIndex::from_objects(&rs, &jobs)),
            generation,
        }
    }
}

/// Where views come from.
#[derive(Clone)]
enum Backing {
    /// Materialized from the watch caches on demand.
    Kube(Stores),
    /// Loaded from snapshot files (small: kept as loaded).
    Snapshot(Arc<Mutex<Arc<ClusterView>>>),
}

/// The running source: views of the cluster and the sync status.
///
/// Views are materialized on demand by [`ClusterWatch::current`] (about 30 ms at 10,000 pods)
/// rather than kept: the caches hold pods in a compact form, and a materialized `Inventory`
/// (k8s-openapi objects) is several times larger. Build the policy engine and update the
/// enrichment index from a view, then drop it.
#[derive(Clone)]
pub struct ClusterWatch {
    generation: watch::Receiver<u64>,
    backing: Backing,
    status: Arc<SyncStatus>,
    materialized: Arc<AtomicU64>,
}

impl ClusterWatch {
    /// Starts the watchers and the change notifier on the current tokio runtime; they stop
    /// when `cancel` is cancelled. The client's identity needs get/list/watch on the core kinds
    /// (the chart's ClusterRole), and on the optional kinds the server serves ([`optional`]),
    /// and nothing else (API discovery is open to every authenticated identity).
    pub fn start(client: Client, opts: WatchOptions, cancel: CancellationToken) -> ClusterWatch {
        let status = Arc::new(SyncStatus::default());
        let changed = Arc::new(Notify::new());
        let (tx, rx) = watch::channel(0u64);
        let stores = Stores::default();

        macro_rules! kind {
            ($ty:ty, $kind:expr, $cache:expr) => {{
                tokio::spawn(run_kind::<$ty>(
                    client.clone(),
                    $kind,
                    $cache.clone(),
                    opts.clone(),
                    status.clone(),
                    changed.clone(),
                    cancel.clone(),
                ));
            }};
        }
        kind!(Namespace, Kind::Namespace, stores.namespaces);
        kind!(Node, Kind::Node, stores.nodes);
        kind!(Pod, Kind::Pod, stores.pods);
        kind!(Service, Kind::Service, stores.services);
        kind!(EndpointSlice, Kind::EndpointSlice, stores.endpoint_slices);
        kind!(NetworkPolicy, Kind::NetworkPolicy, stores.network_policies);
        kind!(ReplicaSet, Kind::ReplicaSet, stores.replica_sets);
        kind!(Job, Kind::Job, stores.jobs);
        // The first view waits for the first discovery of the optional kinds.
        status.discovering.store(true, Ordering::Release);
        tokio::spawn(optional::run(optional::Ctx {
            client: client.clone(),
            stores: stores.optional.clone(),
            opts: opts.clone(),
            status: status.clone(),
            changed: changed.clone(),
            cancel: cancel.clone(),
        }));
        let materialized = Arc::new(AtomicU64::new(0));
        tokio::spawn(publish(
            tx,
            status.clone(),
            changed,
            opts.debounce,
            cancel.clone(),
        ));
        tokio::spawn(release_freed_memory(materialized.clone(), cancel));
        ClusterWatch {
            generation: rx,
            backing: Backing::Kube(stores),
            status,
            materialized,
        }
    }

    /// Change notifications, lean: the generation, which increases (debounced) after every
    /// change once all kinds have synced. `changed().await`, then [`ClusterWatch::current`],
    /// use the view, drop it. Nothing is kept between changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.generation.clone()
    }

    /// A channel of materialized views, updated after every change (marked changed at once
    /// when a view exists already). Convenient, but the channel keeps the latest view alive:
    /// one materialized inventory more than [`ClusterWatch::changes`] + `current()`. Spawns a
    /// forwarding task on the current runtime, which ends when the receivers are dropped.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterView>> {
        let mut changes = self.generation.clone();
        changes.mark_unchanged();
        let first = self.current();
        let has_view = first.generation > 0;
        let (tx, mut rx) = watch::channel(first);
        if has_view {
            rx.mark_changed();
        }
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    r = changes.changed() => if r.is_err() { return },
                }
                changes.mark_unchanged();
                tx.send_replace(me.current());
            }
        });
        rx
    }

    /// The cluster as of now (materialized; drop it when done).
    pub fn current(&self) -> Arc<ClusterView> {
        let generation = *self.generation.borrow();
        match &self.backing {
            Backing::Kube(stores) if generation > 0 => {
                self.materialized.fetch_add(1, Ordering::Relaxed);
                Arc::new(stores.view(generation))
            }
            Backing::Kube(_) => Arc::new(ClusterView::default()),
            Backing::Snapshot(view) => guard(view).clone(),
        }
    }

    pub fn status(&self) -> Arc<SyncStatus> {
        self.status.clone()
    }

    /// Waits until every kind has listed once (or `timeout`). True when synced.
    pub async fn wait_synced(&self, timeout: Duration) -> bool {
        let mut rx = self.generation.clone();
        let wait = async {
            loop {
                if *rx.borrow_and_update() > 0 {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok() && self.status.has_synced()
    }
}

/// A materialized view is tens of MB of small allocations at 10,000 pods; once it is dropped,
/// glibc keeps the freed pages. A few seconds after views were materialized, give them back
/// (`malloc_trim`), twice, in case a view was still in use at the first try.
async fn release_freed_memory(materialized: Arc<AtomicU64>, cancel: CancellationToken) {
    let mut seen = 0;
    let mut pending = 0u8;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        let n = materialized.load(Ordering::Relaxed);
        if n != seen {
            seen = n;
            pending = 2;
        }
        if pending > 0 {
            pending -= 1;
            trim_heap();
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap() {
    // SAFETY: malloc_trim has no preconditions; it only returns free heap pages to the OS.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() {}

async fn publish(
    tx: watch::Sender<u64>,
    status: Arc<SyncStatus>,
    changed: Arc<Notify>,
    debounce: Duration,
    cancel: CancellationToken,
) {
    let mut generation = 0u64;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = changed.notified() => {}
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(debounce) => {}
        }
        if !status.has_synced() {
            continue;
        }
        generation += 1;
        tracing::debug!(generation, "cluster changed");
        status.views.inc();
        tx.send_replace(generation);
    }
}

/// One core kind's watch loop (see [`run_watch`]), decoding into the typed object `K`.
#[allow(clippy::too_many_arguments)]
async fn run_kind<K>(
    client: Client,
    kind: Kind,
    cache: Arc<Cache<K::Compact>>,
    opts: WatchOptions,
    status: Arc<SyncStatus>,
    changed: Arc<Notify>,
    cancel: CancellationToken,
) where
    K: Trim
        + Cached
        + DeserializeOwned
        + kube::Resource<DynamicType = ()>
        + k8s_openapi::Metadata<Ty = ObjectMeta>
        + Default
        + Clone
        + Send
        + Sync
        + 'static,
{
    let ar = ApiResource::erase::<K>(&());
    let decoder = {
        let (status, cache) = (status.clone(), cache.clone());
        move |obj: DynamicObject| decode_obj::<K>(kind, obj, &status).map(|k| cache.compact(k))
    };
    let watch = Watch {
        client,
        kind,
        ar,
        metadata_only: matches!(kind, Kind::ReplicaSet | Kind::Job),
        gone: None,
    };
    run_watch(watch, decoder, cache, opts, status, changed, cancel).await
}

/// What one watch loop watches.
struct Watch {
    client: Client,
    kind: Kind,
    ar: ApiResource,
    /// Watch PartialObjectMetadata only (same list and watch verbs).
    metadata_only: bool,
    /// For an optional kind: told when the resource is gone from the server (404), so API
    /// discovery runs again at once rather than the kind being reported failing.
    gone: Option<Arc<Notify>>,
}

/// One kind's watch loop: watcher → decode and trim → reflector store, restarted (with a
/// relist) after failures.
async fn run_watch<C>(
    watch: Watch,
    decode: impl Fn(DynamicObject) -> Option<C>,
    cache: Arc<Cache<C>>,
    opts: WatchOptions,
    status: Arc<SyncStatus>,
    changed: Arc<Notify>,
    cancel: CancellationToken,
) {
    let Watch {
        client,
        kind,
        ar,
        metadata_only,
        gone,
    } = watch;
    let api: Api<DynamicObject> = Api::all_with(client, &ar);
    let mut streaming = opts.list_strategy != ListStrategy::Paged;
    // A streaming list of this kind has completed: from then on a failure is a failure.
    let mut streamed = false;
    let mut backoff = backoff::Backoff::new(
        opts.min_backoff,
        opts.max_backoff,
        backoff::Backoff::seed(kind as u64),
    );
    // A 410 Gone was met since the last complete list (see `Failure::Expired`).
    let mut expired_since_listed = false;
    let mut lists = 0u64;
    let mut init_count = 0usize;
    loop {
        let mut stream = watch_stream(metadata_only, api.clone(), watcher_config(&opts, streaming));
        loop {
            let item = tokio::select! {
                _ = cancel.cancelled() => return,
                item = stream.next() => item,
            };
            let event = match item {
                None => break,
                Some(Err(e))
                    if streaming
                        && !streamed
                        && opts.list_strategy == ListStrategy::Auto
                        && refuses_streaming_lists(&e) =>
                {
                    streaming = false;
                    tracing::info!(?kind, error = %e, "the API server does not stream lists (WatchList); listing in pages");
                    break;
                }
                Some(Err(e)) => match failure(&e) {
                    Failure::WatchExpired => {
                        // The watcher relists by itself; the store keeps the last state until
                        // the relist completes. Not a failure.
                        tracing::info!(?kind, "watch expired (410 Gone); relisting");
                        continue;
                    }
                    Failure::Expired if !expired_since_listed => {
                        expired_since_listed = true;
                        tracing::info!(?kind, error = %e, "watch or list expired (410 Gone); relisting");
                        break;
                    }
                    Failure::Gone if gone.is_some() => {
                        // An optional kind whose CRD was just deleted: discovery drops it.
                        tracing::info!(?kind, "resource no longer served; rediscovering");
                        if let Some(g) = &gone {
                            g.notify_one();
                        }
                        break;
                    }
                    Failure::Expired | Failure::Gone | Failure::Failed => {
                        // An expiry again before a list completed counts too: the list cannot
                        // finish within the server's compaction window, so the kind would
                        // stay on old state without ever being reported stale.
                        if status.failed(kind) {
                            tracing::warn!(?kind, error = %e, "watch failed; keeping the last known state and retrying");
                        } else {
                            tracing::info!(?kind, error = %e, "newly served kind not ready yet; retrying");
                        }
                        break;
                    }
                },
                Some(Ok(event)) => event,
            };
            // Any other event means the server answered, so the next retry need not wait long.
            // (`Init` is emitted before the list request: it proves no contact.) Whether the
            // kind is current again is decided once the cache has the event (`apply_change`).
            if !matches!(event, Event::Init) {
                backoff.reset();
            }
            let change = match event {
                Event::Init => {
                    init_count = 0;
                    Some(Change::Init)
                }
                Event::InitApply(obj) => {
                    let key = store::key_of(&obj.metadata);
                    let c = decode(obj);
                    init_count += usize::from(c.is_some());
                    c.map(|c| Change::InitApply(key, c))
                }
                Event::InitDone => {
                    expired_since_listed = false;
                    streamed |= streaming;
                    lists += 1;
                    if lists > 1 {
                        status.relists.get_or_create(&KindLabels { kind }).inc();
                        tracing::info!(?kind, objects = init_count, "relisted");
                    }
                    Some(Change::InitDone)
                }
                Event::Apply(obj) => {
                    // An update that cannot be read (reported by decode_obj) removes the
                    // object, as a relist would leave it out: keeping the previous version
                    // would judge flows by an object that no longer exists as it was.
                    let key = store::key_of(&obj.metadata);
                    Some(match decode(obj) {
                        Some(c) => Change::Apply(key, c),
                        None => Change::Delete(key),
                    })
                }
                Event::Delete(obj) => Some(Change::Delete(store::key_of(&obj.metadata))),
            };
            let Some(change) = change else { continue };
            if apply_change(kind, &cache, change, &status) {
                changed.notify_one();
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_pause()) => {}
        }
    }
}

/// A kind's watcher, as untyped objects. ReplicaSets and Jobs are watched for their metadata
/// only (PartialObjectMetadata, with the same list and watch verbs): the agent reads nothing
/// else of them, and a ReplicaSet's body carries its whole pod template.
fn watch_stream(
    metadata_only: bool,
    api: Api<DynamicObject>,
    cfg: watcher::Config,
) -> BoxStream<'static, watcher::Result<Event<DynamicObject>>> {
    if metadata_only {
        metadata_watcher(api, cfg)
            .map(|r| r.map(meta_event))
            .boxed()
    } else {
        watcher(api, cfg).boxed()
    }
}

/// A metadata-only event as an object with an empty body (all `decode_obj` needs of these
/// kinds).
fn meta_event(event: Event<PartialObjectMeta<DynamicObject>>) -> Event<DynamicObject> {
    let obj = |m: PartialObjectMeta<DynamicObject>| DynamicObject {
        types: m.types,
        metadata: m.metadata,
        data: serde_json::Value::Null,
    };
    match event {
        Event::Apply(m) => Event::Apply(obj(m)),
        Event::Delete(m) => Event::Delete(obj(m)),
        Event::Init => Event::Init,
        Event::InitApply(m) => Event::InitApply(obj(m)),
        Event::InitDone => Event::InitDone,
    }
}

/// What a failed watcher step means for the kind.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// The open watch expired (410 Gone: the server compacted past its resource version): the
    /// watcher relists by itself.
    WatchExpired,
    /// A watch expired as it started, or a paged list's continue token expired (its pages
    /// outlived the compaction window): start over with a relist. The server answered; it is
    /// not failing.
    Expired,
    /// The resource is not served (404): for an optional kind, its CRD was deleted.
    Gone,
    /// Anything else (server gone, connection reset, forbidden, ...): the watch is failing.
    Failed,
}

fn failure(e: &watcher::Error) -> Failure {
    match e {
        watcher::Error::WatchError(e) if e.code == 410 => Failure::WatchExpired,
        watcher::Error::WatchStartFailed(kube::Error::Api(e))
        | watcher::Error::InitialListFailed(kube::Error::Api(e))
            if e.code == 410 =>
        {
            Failure::Expired
        }
        watcher::Error::WatchError(e) if e.code == 404 => Failure::Gone,
        watcher::Error::WatchStartFailed(kube::Error::Api(e))
        | watcher::Error::InitialListFailed(kube::Error::Api(e))
            if e.code == 404 =>
        {
            Failure::Gone
        }
        _ => Failure::Failed,
    }
}

/// Applies one change to a kind's cache and records it in `status`. True when the cache's
/// contents changed (a new view is due).
///
/// Only a change the cache has taken in makes the kind current again. The objects of a relist
/// are buffered until `InitDone`, so while it runs the agent still serves the pre-outage state:
/// calling the kind current at its first object would report ready and zero staleness too
/// early, and a relist that keeps failing after its first page would restart the staleness
/// clock at every retry, so the staleness alert would never fire.
fn apply_change<C>(kind: Kind, cache: &Cache<C>, change: Change<C>, status: &SyncStatus) -> bool {
    let listed = matches!(change, Change::InitDone);
    let changed = matches!(change, Change::Apply(..) | Change::Delete(_));
    cache.apply(change);
    if listed {
        status.synced(kind, cache.len());
    } else if changed {
        status.set_objects(kind, cache.len());
    } else {
        return false; // Init, InitApply: a relist under way
    }
    status.ok(kind);
    true
}

fn decode_obj<K>(kind: Kind, obj: DynamicObject, status: &SyncStatus) -> Option<K>
where
    K: Trim + DeserializeOwned + k8s_openapi::Metadata<Ty = ObjectMeta> + Default,
{
    let mut obj = obj;
    obj.metadata.managed_fields = None;
    let meta = obj.metadata.clone();
    // The body without a second copy: the object's own fields plus its (small) metadata.
    let mut value = std::mem::take(&mut obj.data);
    let metadata = match serde_json::to_value(&meta) {
        Ok(v) => v,
        Err(e) => {
            status.rejected.get_or_create(&KindLabels { kind }).inc();
            tracing::warn!(object = %convert::object_name(K::NAME, &meta), error = %e, "object skipped");
            return None;
        }
    };
    match value.as_object_mut() {
        Some(map) => {
            map.insert("metadata".to_owned(), metadata);
        }
        None => {
            value = serde_json::json!({ "metadata": metadata });
        }
    }
    match convert::convert::<K>(meta, value) {
        Ok(k) => Some(k),
        Err(e) => {
            status.rejected.get_or_create(&KindLabels { kind }).inc();
            tracing::warn!(error = %e, "object skipped: cannot decode");
            None
        }
    }
}

/// Counts of objects per kind in a view (for logs and tests).
pub fn counts(view: &ClusterView) -> BTreeMap<&'static str, usize> {
    let inv = &view.inventory;
    BTreeMap::from([
        ("namespaces", inv.namespaces.len()),
        ("nodes", inv.nodes.len()),
        ("pods", inv.pods.len()),
        ("services", inv.services.len()),
        ("endpoint_slices", inv.endpoint_slices.len()),
        ("network_policies", inv.network_policies.len()),
        ("cluster_policies", inv.cluster_policies.len()),
        ("cni_policies", inv.cluster_policies.cni_policies.len()),
    ])
}

#[cfg(test)]
mod status_tests {
    use super::*;

    #[test]
    fn each_kind_has_its_own_staleness() {
        let status = SyncStatus::default();
        assert!(status.staleness().iter().all(|(_, d)| d.is_zero()));
        status.failed(Kind::Pod);
        std::thread::sleep(Duration::from_millis(20));
        status.failed(Kind::Job);
        status.failed(Kind::Pod); // a second failure does not restart the clock
        let pods = status.stale_for_kind(Kind::Pod).unwrap();
        let jobs = status.stale_for_kind(Kind::Job).unwrap();
        assert!(
            pods >= Duration::from_millis(20) && pods > jobs,
            "{pods:?} {jobs:?}"
        );
        assert_eq!(status.stale_for_kind(Kind::Node), None);
        status.ok(Kind::Pod);
        assert_eq!(status.stale_for_kind(Kind::Pod), None);
        assert!(status.is_stale(), "the Job watch still fails");
        let by_kind = status.staleness();
        let kinds: Vec<Kind> = by_kind.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            kinds,
            Kind::ALL,
            "optional kinds never served have no series"
        );
        for (kind, d) in by_kind {
            assert_eq!(d.is_zero(), kind != Kind::Job, "{kind:?}: {d:?}");
        }
        status.ok(Kind::Job);
        assert!(!status.is_stale() && status.stale_for().is_none());
    }

    #[test]
    fn a_relist_makes_the_kind_current_only_once_it_is_swapped_in() {
        let status = SyncStatus::default();
        let cache: Cache<u32> = Cache::default();
        let key = |n: &str| (Some("shop".to_owned()), n.to_owned());
        for c in [
            Change::Init,
            Change::InitApply(key("old"), 1),
            Change::InitDone,
        ] {
            apply_change(Kind::Pod, &cache, c, &status);
        }
        // an outage, then a relist that fails after its first page
        status.failed(Kind::Pod);
        std::thread::sleep(Duration::from_millis(20));
        assert!(!apply_change(Kind::Pod, &cache, Change::Init, &status));
        let page = Change::InitApply(key("new"), 2);
        assert!(!apply_change(Kind::Pod, &cache, page, &status));
        assert!(status.is_stale(), "the cache still holds the old list");
        assert!(!status.is_synced());
        let stale = status.stale_for_kind(Kind::Pod);
        assert!(
            stale.is_some_and(|d| d >= Duration::from_millis(20)),
            "the staleness clock keeps running: {stale:?}"
        );
        status.failed(Kind::Pod); // the relist's second page fails; the clock is not restarted
        assert!(status.stale_for().unwrap() >= Duration::from_millis(20));
        // the retry completes
        for c in [Change::Init, Change::InitApply(key("new"), 2)] {
            apply_change(Kind::Pod, &cache, c, &status);
        }
        assert!(status.is_stale());
        assert!(apply_change(Kind::Pod, &cache, Change::InitDone, &status));
        assert!(!status.is_stale() && status.stale_for_kind(Kind::Pod).is_none());
        assert!(status.last_ok_age().is_some());
        // events of a current watch keep it current
        status.failed(Kind::Pod);
        assert!(apply_change(
            Kind::Pod,
            &cache,
            Change::Delete(key("new")),
            &status
        ));
        assert!(!status.is_stale());
        assert!(cache.is_empty());
    }

    #[test]
    fn an_optional_kind_counts_only_while_served() {
        let status = SyncStatus::default();
        for kind in Kind::ALL {
            status.synced(kind, 0);
        }
        assert!(status.is_synced());
        // not served: no readiness or stale signal, whatever its watch does
        status.failed(Kind::ClusterNetworkPolicy);
        assert!(status.is_synced() && status.watch_errors() == 0);
        // served at start: required before the agent is synced
        status.activate(Kind::ClusterNetworkPolicy, true);
        assert!(!status.has_synced());
        assert_eq!(
            status.report().unsynced_kinds,
            vec!["ClusterNetworkPolicy".to_string()]
        );
        status.synced(Kind::ClusterNetworkPolicy, 2);
        assert!(status.is_synced());
        // served later: not required; its first failures (a CRD just established) are not
        // counted, but once past the grace a failing watch of it is stale
        status.activate(Kind::CiliumNetworkPolicy, false);
        assert!(status.has_synced());
        assert!(!status.failed(Kind::CiliumNetworkPolicy));
        assert!(!status.is_stale() && status.watch_errors() == 0);
        let long_ago = Instant::now().checked_sub(NEW_KIND_GRACE).unwrap();
        *guard(&status.kinds[idx(Kind::CiliumNetworkPolicy)].activated) = Some(long_ago);
        assert!(status.failed(Kind::CiliumNetworkPolicy));
        assert!(status.is_stale());
        assert!(status
            .staleness()
            .iter()
            .any(|(k, _)| *k == Kind::CiliumNetworkPolicy));
        // gone: neither stale nor required any more
        status.deactivate(Kind::CiliumNetworkPolicy);
        status.deactivate(Kind::ClusterNetworkPolicy);
        assert!(status.is_synced() && status.stale_for().is_none());
        assert!(status.staleness().iter().all(|(_, d)| d.is_zero()));
    }

    #[test]
    fn a_404_is_a_resource_gone() {
        let api = |code: u16| kube::core::ErrorResponse {
            status: "Failure".into(),
            message: "the server could not find the requested resource".into(),
            reason: "NotFound".into(),
            code,
        };
        use watcher::Error as E;
        let list = E::InitialListFailed(kube::Error::Api(api(404)));
        assert_eq!(failure(&list), Failure::Gone);
        assert_eq!(failure(&E::WatchError(api(404))), Failure::Gone);
    }

    #[test]
    fn a_410_on_a_watch_or_a_list_page_is_an_expiry_not_a_failure() {
        let api = |code: u16| kube::core::ErrorResponse {
            status: "Failure".into(),
            message: "too old resource version".into(),
            reason: "Expired".into(),
            code,
        };
        use watcher::Error as E;
        assert_eq!(failure(&E::WatchError(api(410))), Failure::WatchExpired);
        let at_start = E::WatchStartFailed(kube::Error::Api(api(410)));
        assert_eq!(failure(&at_start), Failure::Expired);
        // a later page of a list whose continue token expired
        let next_page = E::InitialListFailed(kube::Error::Api(api(410)));
        assert_eq!(failure(&next_page), Failure::Expired);
        for e in [
            E::InitialListFailed(kube::Error::Api(api(503))),
            E::WatchStartFailed(kube::Error::Api(api(403))),
            E::WatchError(api(500)),
            E::NoResourceVersion,
        ] {
            assert_eq!(failure(&e), Failure::Failed, "{e}");
        }
    }

    #[test]
    fn every_kind_has_the_same_kind_label_value_in_every_family() {
        let labels: std::collections::BTreeSet<&str> = Kind::EVERY
            .iter()
            .map(|k| WatchedResource::from(*k).as_str())
            .collect();
        assert_eq!(labels.len(), Kind::EVERY.len());
        assert_eq!(labels.len(), WatchedResource::ALL.len());
        // The kube_* families' `kind` value of each kind is the staleness family's.
        let status = SyncStatus::default();
        let mut registry = prometheus_client::registry::Registry::default();
        status.register(&mut registry);
        for kind in Kind::EVERY {
            status.objects.get_or_create(&KindLabels { kind }).set(1);
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for kind in Kind::EVERY {
            let want = format!(
                "kube_objects{{kind=\"{}\"}} 1",
                WatchedResource::from(kind).as_str()
            );
            assert!(text.contains(&want), "{want} not in\n{text}");
        }
    }
}
