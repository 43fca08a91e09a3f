//! The `kube_*` families: the agent's caches of the Kubernetes API, one series per watched kind
//! (and the snapshot-file reloads, which take the API's place). Their state lives in
//! [`crate::k8s::SyncStatus`], which sets these families as it changes; the names, help texts
//! and labels are defined here, with the rest of the catalogue, so `kind` reads the same in
//! every family (`kube_objects{kind="Pod"}` and `watch_staleness_seconds{kind="Pod"}`).
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::labels::{KindLabels, WatchedKind};

/// The families, cheap to clone (each is a shared handle).
#[derive(Clone, Debug, Default)]
pub struct KubeFamilies {
    cache_synced: Family<KindLabels, Gauge>,
    stale: Gauge,
    last_sync_timestamp: Gauge,
    objects: Family<KindLabels, Gauge>,
    watch_errors: Family<KindLabels, Counter>,
    relists: Family<KindLabels, Counter>,
    objects_rejected: Family<KindLabels, Counter>,
    views: Counter,
    snapshot_reload_errors: Counter,
}

impl KubeFamilies {
    /// Registers the families (under the registry's prefix, e.g. `flowwatch_`), with every core
    /// kind's series from the start (0 until it happens), so `increase()` and alerts see zeros
    /// rather than nothing, and an unsynced kind shows as 0. An optional kind's series appear
    /// when it is first served ([`KubeFamilies::create_series`]).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "kube_cache_synced",
            "1 when the kind's cache has completed its first list",
            self.cache_synced.clone(),
        );
        registry.register(
            "kube_stale",
            "1 while a watch of the API server is failing and the agent runs on the last known state",
            self.stale.clone(),
        );
        registry.register_with_unit(
            "kube_last_sync_timestamp",
            "Unix time of the last successful watch event or list",
            Unit::Seconds,
            self.last_sync_timestamp.clone(),
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
            self.objects_rejected.clone(),
        );
        registry.register(
            "kube_views",
            "Inventories published to the policy engine and the enrichment index",
            self.views.clone(),
        );
        registry.register(
            "snapshot_reload_errors",
            "Snapshot-file reloads that failed (the last good inventory stays in force)",
            self.snapshot_reload_errors.clone(),
        );
        for kind in WatchedKind::CORE {
            self.create_series(kind);
        }
    }

    /// The per-kind series of `kind`, at 0 where they did not exist.
    pub fn create_series(&self, kind: WatchedKind) {
        let labels = KindLabels { kind };
        let _ = self.cache_synced.get_or_create(&labels);
        let _ = self.objects.get_or_create(&labels);
        let _ = self.watch_errors.get_or_create(&labels);
        let _ = self.relists.get_or_create(&labels);
        let _ = self.objects_rejected.get_or_create(&labels);
    }

    pub fn set_synced(&self, kind: WatchedKind, synced: bool) {
        self.cache_synced
            .get_or_create(&KindLabels { kind })
            .set(i64::from(synced));
    }

    pub fn set_stale(&self, stale: bool) {
        self.stale.set(i64::from(stale));
    }

    pub fn set_last_sync(&self, unix_secs: u64) {
        self.last_sync_timestamp
            .set(i64::try_from(unix_secs).unwrap_or(i64::MAX));
    }

    pub fn set_objects(&self, kind: WatchedKind, objects: usize) {
        self.objects
            .get_or_create(&KindLabels { kind })
            .set(i64::try_from(objects).unwrap_or(i64::MAX));
    }

    pub fn add_watch_error(&self, kind: WatchedKind) {
        self.watch_errors.get_or_create(&KindLabels { kind }).inc();
    }

    pub fn watch_errors(&self, kind: WatchedKind) -> u64 {
        self.watch_errors.get_or_create(&KindLabels { kind }).get()
    }

    pub fn add_relist(&self, kind: WatchedKind) {
        self.relists.get_or_create(&KindLabels { kind }).inc();
    }

    pub fn relists(&self, kind: WatchedKind) -> u64 {
        self.relists.get_or_create(&KindLabels { kind }).get()
    }

    pub fn add_rejected(&self, kind: WatchedKind) {
        self.objects_rejected
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    pub fn rejected(&self, kind: WatchedKind) -> u64 {
        self.objects_rejected
            .get_or_create(&KindLabels { kind })
            .get()
    }

    pub fn add_view(&self) {
        self.views.inc();
    }

    pub fn add_snapshot_reload_error(&self) {
        self.snapshot_reload_errors.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    #[test]
    fn core_kinds_have_series_from_the_start_and_optional_ones_when_created() {
        let families = KubeFamilies::default();
        let mut registry = Registry::with_prefix("flowwatch");
        families.register(&mut registry);
        let t = text(&registry);
        for kind in WatchedKind::CORE {
            let want = format!("flowwatch_kube_objects{{kind=\"{}\"}} 0", kind.as_str());
            assert!(t.contains(&want), "{want} not in\n{t}");
        }
        let optional = WatchedKind::OPTIONAL[0];
        let series = format!("kind=\"{}\"", optional.as_str());
        assert!(!t.contains(&series), "{series} before it is served:\n{t}");
        families.create_series(optional);
        families.add_rejected(optional);
        let t = text(&registry);
        let want = format!(
            "flowwatch_kube_objects_rejected_total{{kind=\"{}\"}} 1",
            optional.as_str()
        );
        assert!(t.contains(&want), "{want} not in\n{t}");
        assert_eq!(families.rejected(optional), 1);
    }

    #[test]
    fn every_kind_has_the_same_kind_label_value_here_and_in_the_staleness_family() {
        let families = KubeFamilies::default();
        let mut registry = Registry::default();
        families.register(&mut registry);
        let (metrics, health) = super::super::Metrics::new(&super::super::MetricsConfig::default())
            .expect("default config");
        for &kind in WatchedKind::ALL {
            families.set_objects(kind, 1);
            metrics.set_watch_staleness(kind, std::time::Duration::from_secs(2));
        }
        let (kube, staleness) = (text(&registry), text(&health));
        for &kind in WatchedKind::ALL {
            let want = format!("kube_objects{{kind=\"{}\"}} 1", kind.as_str());
            assert!(kube.contains(&want), "{want} not in\n{kube}");
            let want = format!("watch_staleness_seconds{{kind=\"{}\"}} 2", kind.as_str());
            assert!(staleness.contains(&want), "{want} not in\n{staleness}");
        }
    }
}
