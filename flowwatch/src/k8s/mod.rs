//! Kubernetes edge: kube-rs watchers that feed the inventory.
//!
//! [`ClusterWatch::start`] runs one watcher per kind (Namespaces, Nodes, Pods, Services,
//! EndpointSlices, NetworkPolicies, and the metadata of ReplicaSets and Jobs for workload
//! resolution, watched metadata-only), each into its own compact cache ([`store`]), and, while
//! the API server serves them, the optional kinds of [`optional`] (cluster-scoped policies, and
//! the metadata of CNI-specific policies), found by API discovery. Objects arrive as
//! `DynamicObject`s and are decoded one by one ([`convert`]), so an object the agent cannot
//! decode is logged, counted and skipped while the rest keeps working; what is stored is
//! trimmed to the fields the agent reads. After changes (debounced) a new generation is
//! published on a `tokio::sync::watch` channel, and a [`ClusterView`] (`Arc<Inventory>` +
//! [`OwnerIndex`]) is materialized from the caches on demand; the first generation is published
//! once every kind has listed.
//!
//! Failures: a watch that fails (API server gone, 410 Gone, ...) is restarted with a relist
//! after a capped exponential backoff with jitter ([`backoff`], so agents that lost the API
//! server together do not come back in lockstep); until the relist completes the cache keeps the
//! last known state (it swaps the new list in at its end), and a failed kind stays failing until
//! then. [`SyncStatus`] says whether everything has synced, whether any watch is failing (stale)
//! and since when.
//!
//! One file per job: `kind` (what is watched), `options` (how), `watch_loop` (one kind's
//! watch), `store` (its cache), `publish` (the debouncer), `cluster_watch` (the running source
//! and its views), `status` (sync state and the `kube_*` metrics), `memory` (heap given back
//! after views), `source` (the snapshot-file source, whose all-or-nothing loading is
//! `crate::inventory::snapshot_reload`), `optional` (discovery of optional kinds).

pub mod backoff;
mod cluster_watch;
pub mod convert;
mod kind;
mod memory;
pub mod optional;
mod options;
mod publish;
pub mod source;
mod status;
pub mod store;
mod watch_loop;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use cluster_watch::ClusterWatch;
pub use kind::Kind;
pub use options::{watcher_config, ListStrategy, WatchOptions};
pub use status::{SyncReport, SyncStatus, NEW_KIND_GRACE};

use crate::enrich::OwnerIndex;
use crate::inventory::Inventory;

/// What the agent knows of the cluster at one moment.
#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    pub inventory: Arc<Inventory>,
    /// ReplicaSet → Deployment and Job → CronJob (empty in snapshot mode).
    pub owners: Arc<OwnerIndex>,
    /// Increases with every published view (0: nothing loaded yet).
    pub generation: u64,
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
