//! Where the agent's inventory comes from: the Kubernetes API ([`super::ClusterWatch::start`])
//! or, without a cluster, snapshot files (`kubectl get ... -o yaml`, the offline CLI's format)
//! that are reloaded when they change ([`ClusterWatch::snapshot_files`]).
//!
//! Both give the same handle: a `watch` channel of [`ClusterView`]s and a [`SyncStatus`].
//! In snapshot mode the status is synced after the first successful load; a reload that fails
//! (a file being edited, bad YAML, an empty file, a directory with no snapshot file: see
//! [`crate::inventory::snapshot_reload`]) is counted, logged with the path and the reason, and the last
//! good inventory stays in force.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::cluster_watch::Backing;
use super::{ClusterView, ClusterWatch, Kind, SyncStatus, WatchOptions};
use crate::inventory::snapshot_reload::ReloadError;
use crate::inventory::Inventory;

/// The loader of snapshot files, given the configured paths (files or directories); in the
/// agent: [`snapshot_loader`].
pub type Loader = dyn Fn(&[PathBuf]) -> Result<Inventory, ReloadError> + Send + Sync;

impl ClusterWatch {
    /// Loads `paths` (files, or directories whose `*.yaml`, `*.yml` and `*.json` files are
    /// read) with `load`, then checks their modification times and sizes every `poll` and
    /// reloads when any changed, appeared or disappeared, once that change has settled (the
    /// same for a poll, or older than [`crate::inventory::snapshot_reload::SETTLE`]).
    pub fn snapshot_files(
        paths: Vec<PathBuf>,
        poll: Duration,
        load: Arc<Loader>,
        cancel: CancellationToken,
    ) -> ClusterWatch {
        let status = Arc::new(SyncStatus::default());
        let (tx, rx) = watch::channel(0u64);
        let view = Arc::new(Mutex::new(Arc::new(ClusterView::default())));
        tokio::spawn(poll_files(
            paths,
            poll,
            load,
            tx,
            view.clone(),
            status.clone(),
            cancel,
        ));
        ClusterWatch {
            generation: rx,
            backing: Backing::Snapshot(view),
            status,
            materialized: Arc::default(),
        }
    }
}

/// The agent's loader: [`crate::inventory::snapshot_reload::load`], all or nothing; objects it cannot use
/// are logged (named, with their field) and skipped, the rest is loaded.
pub fn snapshot_loader() -> Arc<Loader> {
    Arc::new(|paths: &[PathBuf]| {
        let (inventory, errors) = crate::inventory::snapshot_reload::load(paths)?;
        for e in &errors {
            tracing::warn!(error = %e, "snapshot object skipped");
        }
        Ok(inventory)
    })
}

/// The source the agent's settings ask for: snapshot files when any are given, else the
/// Kubernetes API with the default client (in-cluster service account, or `KUBECONFIG`).
pub async fn from_settings(
    snapshots: Vec<PathBuf>,
    kube: bool,
    list_strategy: super::ListStrategy,
    cancel: CancellationToken,
) -> Result<Option<ClusterWatch>, kube::Error> {
    if !snapshots.is_empty() {
        return Ok(Some(ClusterWatch::snapshot_files(
            snapshots,
            Duration::from_secs(1),
            snapshot_loader(),
            cancel,
        )));
    }
    if kube {
        let client = kube::Client::try_default().await?;
        return Ok(Some(ClusterWatch::start(
            client,
            WatchOptions {
                list_strategy,
                ..WatchOptions::default()
            },
            cancel,
        )));
    }
    Ok(None)
}

type Stamp = Vec<(PathBuf, Option<(SystemTime, u64)>)>;

/// The files behind `paths` with their modification time and size.
pub fn stamp(paths: &[PathBuf]) -> Stamp {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|f| is_snapshot_file(f))
                .collect();
            files.sort();
            out.extend(files.into_iter().map(|f| {
                let s = file_stamp(&f);
                (f, s)
            }));
        } else {
            out.push((p.clone(), file_stamp(p)));
        }
    }
    out
}

/// The files `paths` stand for (directories expanded).
pub fn expand(paths: &[PathBuf]) -> Vec<PathBuf> {
    stamp(paths).into_iter().map(|(p, _)| p).collect()
}

fn is_snapshot_file(p: &Path) -> bool {
    crate::inventory::snapshot_reload::is_snapshot_file(p)
}

/// Whether every file of `stamp` was last modified at least [`crate::inventory::snapshot_reload::SETTLE`]
/// ago (a writer that is not done would have touched it more recently).
fn settled(stamp: &Stamp) -> bool {
    let now = SystemTime::now();
    stamp.iter().all(|(_, s)| match s {
        Some((mtime, _)) => now
            .duration_since(*mtime)
            .is_ok_and(|age| age >= crate::inventory::snapshot_reload::SETTLE),
        None => true,
    })
}

fn file_stamp(p: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

async fn poll_files(
    paths: Vec<PathBuf>,
    poll: Duration,
    load: Arc<Loader>,
    tx: watch::Sender<u64>,
    view: Arc<Mutex<Arc<ClusterView>>>,
    status: Arc<SyncStatus>,
    cancel: CancellationToken,
) {
    let mut last: Option<Stamp> = None;
    // A change seen at the previous poll, loaded once it is still the same at this one.
    let mut pending: Option<Stamp> = None;
    let mut generation = 0u64;
    loop {
        let now = stamp(&paths);
        let changed = last.as_ref() != Some(&now);
        let settled = pending.as_ref() == Some(&now) || settled(&now);
        if changed && !settled {
            pending = Some(now);
        } else if changed {
            pending = None;
            let configured = paths.clone();
            let loader = load.clone();
            // The reason, with its causes, for the log line of a refused reload.
            let result = match tokio::task::spawn_blocking(move || loader(&configured)).await {
                Ok(loaded) => loaded.map_err(|e| crate::error_chain::Chain(&e).to_string()),
                Err(e) => Err(format!("snapshot loader panicked: {e}")),
            };
            match result {
                Ok(inventory) => {
                    generation += 1;
                    for kind in Kind::CORE {
                        status.ok(kind);
                    }
                    let inv = &inventory;
                    for (kind, n) in [
                        (Kind::Namespace, inv.namespaces.len()),
                        (Kind::Node, inv.nodes.len()),
                        (Kind::Pod, inv.pods.len()),
                        (Kind::Service, inv.services.len()),
                        (Kind::EndpointSlice, inv.endpoint_slices.len()),
                        (Kind::NetworkPolicy, inv.network_policies.len()),
                        (Kind::ReplicaSet, 0),
                        (Kind::Job, 0),
                    ] {
                        status.synced(kind, n);
                    }
                    tracing::info!(generation, pods = inv.pods.len(), "snapshot loaded");
                    status.metrics.add_view();
                    *crate::sync::lock(&view) = Arc::new(ClusterView {
                        inventory: Arc::new(inventory),
                        owners: Arc::default(),
                        generation,
                    });
                    tx.send_replace(generation);
                }
                Err(e) => {
                    status.metrics.add_snapshot_reload_error();
                    tracing::warn!(reason = %e, "snapshot reload failed; keeping the last good inventory");
                }
            }
            last = Some(now);
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(poll) => {}
        }
    }
}
