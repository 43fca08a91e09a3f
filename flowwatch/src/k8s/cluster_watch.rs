//! The running source of cluster views ([`ClusterWatch`]): the watch caches of every kind,
//! materialized into a [`ClusterView`] on demand, or the last snapshot loaded.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Client;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::memory::release_freed_memory;
use super::publish::publish;
use super::store::{Cache, Cached, CompactPod, Json};
use super::watch_loop::run_kind;
use super::{optional, ClusterView, Kind, SyncStatus, WatchOptions};
use crate::enrich::OwnerIndex;
use crate::inventory::Inventory;
use crate::sync::lock;

/// The caches, read when a view is materialized.
#[derive(Clone, Default)]
pub(super) struct Stores {
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
pub(super) enum Backing {
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
    pub(super) generation: watch::Receiver<u64>,
    pub(super) backing: Backing,
    pub(super) status: Arc<SyncStatus>,
    pub(super) materialized: Arc<AtomicU64>,
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
        let debounce = opts.debounce;
        tokio::spawn(optional::run(optional::Ctx {
            client,
            stores: stores.optional.clone(),
            opts,
            status: status.clone(),
            changed: changed.clone(),
            cancel: cancel.clone(),
        }));
        let materialized = Arc::new(AtomicU64::new(0));
        tokio::spawn(publish(
            tx,
            status.clone(),
            changed,
            debounce,
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
                    () = tx.closed() => return,
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
            Backing::Snapshot(view) => lock(view).clone(),
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
