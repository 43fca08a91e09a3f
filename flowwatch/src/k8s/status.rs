//! Whether the agent's caches are synced and current ([`SyncStatus`]): the cache half of
//! `/readyz`, the stale signal, and the `flowwatch_kube_*` metric families.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::registry::Registry;

use super::kind::{idx, Kind, KINDS};
use crate::metrics::KubeFamilies;
use crate::sync::lock;

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
    pub(super) discovering: AtomicBool,
    /// When the current run of failures started (None: healthy).
    stale_since: Mutex<Option<Instant>>,
    last_ok: Mutex<Option<Instant>>,
    /// The `kube_*` families this state is exported as.
    pub(super) metrics: KubeFamilies,
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
        for kind in Kind::CORE {
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
            metrics: KubeFamilies::default(),
        }
    }
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
    /// values of `flowwatch_watch_staleness_seconds{kind}`.
    pub fn staleness(&self) -> Vec<(Kind, Duration)> {
        Kind::ALL
            .iter()
            .copied()
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
        Kind::ALL.iter().map(|k| self.relists_for_kind(*k)).sum()
    }

    /// Watch restarts of this kind that relisted.
    pub fn relists_for_kind(&self, kind: Kind) -> u64 {
        self.metrics.relists(kind)
    }

    /// Objects that could not be decoded, all kinds.
    pub fn rejected(&self) -> u64 {
        Kind::ALL.iter().map(|k| self.metrics.rejected(*k)).sum()
    }

    pub fn watch_errors(&self) -> u64 {
        Kind::ALL
            .iter()
            .map(|k| self.metrics.watch_errors(*k))
            .sum()
    }

    pub fn report(&self) -> SyncReport {
        let names = |f: &dyn Fn(&KindState) -> bool| {
            Kind::ALL
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
        self.metrics.register(registry);
    }

    /// An optional kind is served: it is watched from now on. `required`: the agent is not
    /// synced until it has listed (kinds served at start).
    pub(super) fn activate(&self, kind: Kind, required: bool) {
        let k = &self.kinds[idx(kind)];
        k.synced.store(false, Ordering::Release);
        k.failing.store(false, Ordering::Release);
        *lock(&k.failing_since) = None;
        k.required.store(required, Ordering::Release);
        *lock(&k.activated) = Some(Instant::now());
        k.seen.store(true, Ordering::Release);
        k.active.store(true, Ordering::Release);
        self.metrics.create_series(kind);
        self.metrics.set_synced(kind, false);
    }

    /// An optional kind is no longer served: not watched, not required, never stale.
    pub(super) fn deactivate(&self, kind: Kind) {
        let k = &self.kinds[idx(kind)];
        k.active.store(false, Ordering::Release);
        k.required.store(false, Ordering::Release);
        k.synced.store(false, Ordering::Release);
        k.failing.store(false, Ordering::Release);
        *lock(&k.failing_since) = None;
        self.metrics.set_synced(kind, false);
        self.set_objects(kind, 0);
        self.recompute_stale();
    }

    /// Clears the stale signal when no active kind is failing any more.
    fn recompute_stale(&self) {
        if !self.is_stale() {
            *lock(&self.stale_since) = None;
            self.metrics.set_stale(false);
        }
    }

    pub(super) fn ok(&self, kind: Kind) {
        let k = &self.kinds[idx(kind)];
        k.failing.store(false, Ordering::Release);
        *lock(&k.failing_since) = None;
        *lock(&self.last_ok) = Some(Instant::now());
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.metrics.set_last_sync(unix);
        self.recompute_stale();
    }

    pub(super) fn synced(&self, kind: Kind, objects: usize) {
        if !self.kinds[idx(kind)].active.load(Ordering::Acquire) {
            return; // the watch of a kind no longer served, being stopped
        }
        self.kinds[idx(kind)].synced.store(true, Ordering::Release);
        self.metrics.set_synced(kind, true);
        self.set_objects(kind, objects);
    }

    pub(super) fn set_objects(&self, kind: Kind, objects: usize) {
        self.metrics.set_objects(kind, objects);
    }

    /// Records a failure of `kind`'s watch; false when it is not counted (a kind no longer
    /// served, or one served only since [`NEW_KIND_GRACE`]).
    pub(super) fn failed(&self, kind: Kind) -> bool {
        let k = &self.kinds[idx(kind)];
        if !k.active.load(Ordering::Acquire) {
            return false; // the watch of a kind no longer served, being stopped
        }
        if lock(&k.activated).is_some_and(|t| t.elapsed() < NEW_KIND_GRACE) {
            return false;
        }
        k.failing.store(true, Ordering::Release);
        lock(&k.failing_since).get_or_insert_with(Instant::now);
        self.metrics.add_watch_error(kind);
        let mut since = lock(&self.stale_since);
        if since.is_none() {
            *since = Some(Instant::now());
        }
        self.metrics.set_stale(true);
        true
    }
}

#[cfg(test)]
mod tests {
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
            Kind::CORE,
            "optional kinds never served have no series"
        );
        for (kind, d) in by_kind {
            assert_eq!(d.is_zero(), kind != Kind::Job, "{kind:?}: {d:?}");
        }
        status.ok(Kind::Job);
        assert!(!status.is_stale() && status.stale_for().is_none());
    }

    #[test]
    fn an_optional_kind_counts_only_while_served() {
        let status = SyncStatus::default();
        for kind in Kind::CORE {
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
        *lock(&status.kinds[idx(Kind::CiliumNetworkPolicy)].activated) = Some(long_ago);
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
}
