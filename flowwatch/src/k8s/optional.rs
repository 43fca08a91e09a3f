//! The optional kinds: watched only while the API server serves them.
//!
//! * The cluster-scoped policies of network-policy-api (`policy.networking.k8s.io`):
//!   `ClusterNetworkPolicy` (`v1alpha2`), `AdminNetworkPolicy` and `BaselineAdminNetworkPolicy`
//!   (`v1alpha1`), decoded into the same [`ClusterPolicies`] the snapshot loader builds, so the
//!   policy engine evaluates them.
//! * The CNI-specific policy kinds of [`CNI_POLICY_KINDS`] (Cilium, Calico, Antrea): watched
//!   for their metadata only (namespace and name: all the engine reads of them, to mark the
//!   verdicts they may change `cni_policy_present`).
//!
//! Which are served comes from API discovery (`/apis`, then the resource lists of the groups
//! above that exist), at start and then every [`super::WatchOptions::discovery_interval`], and
//! at once when a watch finds its resource gone (404). A kind that appears is watched (the
//! agent is not made unready meanwhile, unless it was served at start: then the first view
//! waits for it); a kind that goes is no longer watched and its objects leave the views.
//! A kind that is not served needs no RBAC and is never an error or a stale signal.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{APIGroupList, APIResourceList};
use kube::api::{ApiResource, DynamicObject};
use kube::Client;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::store::{Cache, Change};
use super::watch_loop::{run_watch, Watch};
use super::{Kind, SyncStatus, WatchOptions};
use crate::inventory::cluster_policy::{
    self, AdminNetworkPolicy, BaselineAdminNetworkPolicy, ClusterNetworkPolicy, ClusterPolicies,
    CniPolicy, API_GROUP, CNI_POLICY_KINDS,
};

/// Where an optional kind is served: its API group, its kind, and the one version flowwatch
/// decodes (`None`: any version, the kind is read for its metadata only).
pub fn spec(kind: Kind) -> Option<(&'static str, &'static str, Option<&'static str>)> {
    let cni = |i: usize| {
        let (group, name, _) = CNI_POLICY_KINDS[i];
        Some((group, name, None))
    };
    match kind {
        Kind::ClusterNetworkPolicy => Some((API_GROUP, "ClusterNetworkPolicy", Some("v1alpha2"))),
        Kind::AdminNetworkPolicy => Some((API_GROUP, "AdminNetworkPolicy", Some("v1alpha1"))),
        Kind::BaselineAdminNetworkPolicy => {
            Some((API_GROUP, "BaselineAdminNetworkPolicy", Some("v1alpha1")))
        }
        Kind::CiliumNetworkPolicy => cni(0),
        Kind::CiliumClusterwideNetworkPolicy => cni(1),
        Kind::CalicoNetworkPolicy => cni(2),
        Kind::CalicoGlobalNetworkPolicy => cni(3),
        Kind::CalicoCrdNetworkPolicy => cni(4),
        Kind::CalicoCrdGlobalNetworkPolicy => cni(5),
        Kind::AntreaNetworkPolicy => cni(6),
        Kind::AntreaClusterNetworkPolicy => cni(7),
        _ => None,
    }
}

/// The group versions whose resource lists discovery must read: those of the optional kinds'
/// groups that the server lists, the preferred version first.
pub fn versions_to_read(groups: &APIGroupList) -> Vec<String> {
    let wanted: BTreeSet<&str> = Kind::OPTIONAL
        .iter()
        .filter_map(|k| spec(*k).map(|(g, _, _)| g))
        .collect();
    let mut out = Vec::new();
    for g in &groups.groups {
        if !wanted.contains(g.name.as_str()) {
            continue;
        }
        let preferred = g
            .preferred_version
            .as_ref()
            .map(|v| v.group_version.clone());
        out.extend(preferred.clone());
        out.extend(
            g.versions
                .iter()
                .map(|v| v.group_version.clone())
                .filter(|gv| Some(gv) != preferred.as_ref()),
        );
    }
    out
}

/// What one discovery found.
#[derive(Debug, Default, PartialEq)]
pub struct Discovered {
    /// The optional kinds served, each as the resource to watch.
    pub served: BTreeMap<Kind, ApiResource>,
    /// Kinds whose group's resource list could not be read this time: keep their state.
    pub unknown: BTreeSet<Kind>,
}

/// Which optional kinds are served (pure): `lists` holds the resource list of each group
/// version of [`versions_to_read`] (in that order), or `None` when it could not be read.
pub fn served(lists: &[(String, Option<APIResourceList>)]) -> Discovered {
    let mut out = Discovered::default();
    for kind in Kind::OPTIONAL {
        let Some((group, name, version)) = spec(kind) else {
            continue;
        };
        let in_group = lists
            .iter()
            .filter(|(gv, _)| gv.split('/').next() == Some(group))
            .filter(|(gv, _)| version.is_none_or(|v| gv.split('/').nth(1) == Some(v)));
        let mut found = None;
        let mut unreadable = false;
        for (gv, list) in in_group {
            let Some(list) = list else {
                unreadable = true;
                continue;
            };
            // `name` without a `/`: the resource itself, not a subresource such as `status`.
            let res = list.resources.iter().find(|r| {
                r.kind == name
                    && !r.name.contains('/')
                    && ["list", "watch"]
                        .iter()
                        .all(|v| r.verbs.iter().any(|x| x == v))
            });
            if let Some(r) = res {
                let version = gv.split('/').nth(1).unwrap_or_default();
                found = Some(ApiResource {
                    group: group.to_string(),
                    version: version.to_string(),
                    api_version: gv.clone(),
                    kind: name.to_string(),
                    plural: r.name.clone(),
                });
                break;
            }
        }
        match found {
            Some(ar) => {
                out.served.insert(kind, ar);
            }
            None if unreadable => {
                out.unknown.insert(kind);
            }
            None => {}
        }
    }
    out
}

/// Asks the API server which optional kinds it serves.
async fn discover(client: &Client) -> Result<Discovered, kube::Error> {
    let groups = client.list_api_groups().await?;
    let mut lists = Vec::new();
    for gv in versions_to_read(&groups) {
        let list = match client.list_api_group_resources(&gv).await {
            Ok(l) => Some(l),
            Err(e) => {
                // An aggregated API (Calico's projectcalico.org) may be down: its kinds keep
                // their state until it answers.
                tracing::warn!(group_version = %gv, error = %crate::error_chain::Chain(&e), "API discovery of a group failed");
                None
            }
        };
        lists.push((gv, list));
    }
    Ok(served(&lists))
}

/// A cluster policy as cached: the object, or the name of one that did not decode (the engine
/// lists it as skipped, as the snapshot loader's placeholders).
pub type Decoded<T> = Result<T, String>;

/// The caches of the optional kinds.
#[derive(Clone)]
pub struct OptionalStores {
    cnps: Arc<Cache<Decoded<ClusterNetworkPolicy>>>,
    anps: Arc<Cache<Decoded<AdminNetworkPolicy>>>,
    banps: Arc<Cache<Decoded<BaselineAdminNetworkPolicy>>>,
    /// One cache per CNI kind (a name may repeat across kinds).
    cni: Arc<BTreeMap<Kind, Arc<Cache<CniPolicy>>>>,
}

impl Default for OptionalStores {
    fn default() -> Self {
        OptionalStores {
            cnps: Arc::default(),
            anps: Arc::default(),
            banps: Arc::default(),
            cni: Arc::new(
                Kind::OPTIONAL[3..]
                    .iter()
                    .map(|k| (*k, Arc::default()))
                    .collect(),
            ),
        }
    }
}

impl OptionalStores {
    /// The cluster policies and CNI policies held now, ordered by kind, namespace and name.
    pub fn cluster_policies(&self) -> ClusterPolicies {
        fn split<T: Clone>(
            cache: &Cache<Decoded<T>>,
            kind: &str,
            into: &mut Vec<T>,
            undecodable: &mut Vec<(String, String)>,
        ) {
            for p in cache.map(Clone::clone) {
                match p {
                    Ok(p) => into.push(p),
                    Err(name) => undecodable.push((kind.to_string(), name)),
                }
            }
        }
        let mut out = ClusterPolicies::default();
        let bad = &mut out.undecodable;
        split(
            &self.cnps,
            "ClusterNetworkPolicy",
            &mut out.cluster_network_policies,
            bad,
        );
        split(
            &self.anps,
            "AdminNetworkPolicy",
            &mut out.admin_network_policies,
            bad,
        );
        let banps = &mut out.baseline_admin_network_policies;
        split(&self.banps, "BaselineAdminNetworkPolicy", banps, bad);
        for cache in self.cni.values() {
            out.cni_policies.extend(cache.map(Clone::clone));
        }
        out
    }

    fn clear(&self, kind: Kind) {
        fn empty<C>(c: &Cache<C>) {
            c.apply(Change::Init);
            c.apply(Change::InitDone);
        }
        match kind {
            Kind::ClusterNetworkPolicy => empty(&self.cnps),
            Kind::AdminNetworkPolicy => empty(&self.anps),
            Kind::BaselineAdminNetworkPolicy => empty(&self.banps),
            k => {
                if let Some(c) = self.cni.get(&k) {
                    empty(c);
                }
            }
        }
    }
}

/// Decodes a cluster policy (every field checked, the object and field named on failure); an
/// object that does not decode is counted as rejected and cached as undecodable.
fn decode_policy<T: DeserializeOwned>(
    kind: Kind,
    obj: DynamicObject,
    status: &SyncStatus,
) -> Decoded<T> {
    let mut obj = obj;
    super::convert::trim_meta(&mut obj.metadata);
    let name = obj.metadata.name.clone().unwrap_or_default();
    let (_, kind_name, _) = spec(kind).unwrap_or_default();
    let meta = obj.metadata.clone();
    let mut value = std::mem::take(&mut obj.data);
    let metadata = serde_json::to_value(&meta).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        map.insert("metadata".to_owned(), metadata);
    } else {
        value = serde_json::json!({ "metadata": metadata });
    }
    super::convert::decode::<T>(kind_name, &meta, value).map_err(|e| {
        status.metrics.add_rejected(kind);
        tracing::warn!(error = %e, "cluster policy skipped: cannot decode");
        name
    })
}

/// A CNI policy object from its metadata, named as the snapshot loader names it.
fn cni_object(ar: &ApiResource, obj: &DynamicObject) -> Option<CniPolicy> {
    let mut one = ClusterPolicies::default();
    let item = serde_json::json!({"metadata": {
        "namespace": obj.metadata.namespace, "name": obj.metadata.name}});
    cluster_policy::add_cni_object(&mut one, &ar.kind, &ar.api_version, &item);
    one.cni_policies.pop()
}

/// Everything a watch of an optional kind needs.
#[derive(Clone)]
pub(super) struct Ctx {
    pub client: Client,
    pub stores: OptionalStores,
    pub opts: WatchOptions,
    pub status: Arc<SyncStatus>,
    pub changed: Arc<Notify>,
    pub cancel: CancellationToken,
}

fn spawn_watch(ctx: &Ctx, kind: Kind, ar: ApiResource, gone: Arc<Notify>) -> Running {
    let cancel = ctx.cancel.child_token();
    let watch = Watch {
        client: ctx.client.clone(),
        kind,
        ar: ar.clone(),
        metadata_only: !matches!(
            kind,
            Kind::ClusterNetworkPolicy
                | Kind::AdminNetworkPolicy
                | Kind::BaselineAdminNetworkPolicy
        ),
        gone: Some(gone),
    };
    let spawner = Spawner {
        opts: ctx.opts.clone(),
        status: ctx.status.clone(),
        changed: ctx.changed.clone(),
        cancel: cancel.clone(),
    };
    let s = &ctx.stores;
    let task = match kind {
        Kind::ClusterNetworkPolicy => spawner.policies(watch, s.cnps.clone()),
        Kind::AdminNetworkPolicy => spawner.policies(watch, s.anps.clone()),
        Kind::BaselineAdminNetworkPolicy => spawner.policies(watch, s.banps.clone()),
        _ => {
            let cache = s.cni.get(&kind).cloned().unwrap_or_default();
            let resource = ar.clone();
            spawner.spawn(watch, move |o| cni_object(&resource, &o), cache)
        }
    };
    Running { ar, cancel, task }
}

/// Spawns one optional kind's watch loop.
struct Spawner {
    opts: WatchOptions,
    status: Arc<SyncStatus>,
    changed: Arc<Notify>,
    cancel: CancellationToken,
}

impl Spawner {
    fn spawn<C: Send + Sync + 'static>(
        self,
        watch: Watch,
        decode: impl Fn(DynamicObject) -> Option<C> + Send + 'static,
        cache: Arc<Cache<C>>,
    ) -> JoinHandle<()> {
        let Spawner {
            opts,
            status,
            changed,
            cancel,
        } = self;
        tokio::spawn(run_watch(
            watch, decode, cache, opts, status, changed, cancel,
        ))
    }

    /// A cluster policy kind, decoded into `T`.
    fn policies<T: DeserializeOwned + Send + Sync + 'static>(
        self,
        watch: Watch,
        cache: Arc<Cache<Decoded<T>>>,
    ) -> JoinHandle<()> {
        let (kind, status) = (watch.kind, self.status.clone());
        self.spawn(
            watch,
            move |o| Some(decode_policy::<T>(kind, o, &status)),
            cache,
        )
    }
}

struct Running {
    ar: ApiResource,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// Discovery, at start and then periodically (or at once when a watch finds its resource
/// gone), starting and stopping the optional kinds' watches to match.
pub(super) async fn run(ctx: Ctx) {
    let gone = Arc::new(Notify::new());
    let mut running: BTreeMap<Kind, Running> = BTreeMap::new();
    let mut first = true;
    loop {
        let pause = match discover(&ctx.client).await {
            Ok(found) => {
                reconcile(&ctx, &mut running, found, first, &gone).await;
                ctx.opts.discovery_interval
            }
            Err(e) => {
                tracing::warn!(error = %crate::error_chain::Chain(&e), "API discovery failed; the optional policy kinds keep their state");
                ctx.opts.max_backoff.min(ctx.opts.discovery_interval)
            }
        };
        if first {
            // The first view waited for this answer (or failure): release it.
            first = false;
            ctx.status.discovering.store(false, Ordering::Release);
            ctx.changed.notify_one();
        }
        tokio::select! {
            () = ctx.cancel.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
            () = gone.notified() => {}
        }
    }
}

async fn reconcile(
    ctx: &Ctx,
    running: &mut BTreeMap<Kind, Running>,
    found: Discovered,
    first: bool,
    gone: &Arc<Notify>,
) {
    for kind in Kind::OPTIONAL {
        if found.unknown.contains(&kind) {
            continue;
        }
        let want = found.served.get(&kind);
        let same = running
            .get(&kind)
            .is_some_and(|r| Some(&r.ar) == want && !r.task.is_finished());
        if same {
            continue;
        }
        let was_running = match running.remove(&kind) {
            Some(r) => {
                r.cancel.cancel();
                let _ = r.task.await; // it returns at once: no change after this point
                true
            }
            None => false,
        };
        match want {
            Some(ar) => {
                // A new version of a served kind: the new watch relists and swaps its list in.
                if !was_running {
                    tracing::info!(?kind, api_version = %ar.api_version, "kind served; watching it");
                    ctx.status.activate(kind, first);
                }
                running.insert(kind, spawn_watch(ctx, kind, ar.clone(), gone.clone()));
            }
            None if was_running => {
                tracing::info!(?kind, "kind no longer served; its objects leave the views");
                ctx.stores.clear(kind);
                ctx.status.deactivate(kind);
                ctx.changed.notify_one();
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
        APIGroup, APIResource, GroupVersionForDiscovery,
    };

    use super::*;

    fn group(name: &str, versions: &[&str]) -> APIGroup {
        let gv = |v: &&str| GroupVersionForDiscovery {
            group_version: format!("{name}/{v}"),
            version: v.to_string(),
        };
        APIGroup {
            name: name.into(),
            versions: versions.iter().map(gv).collect(),
            preferred_version: versions.first().map(gv),
            server_address_by_client_cidrs: None,
        }
    }

    fn resources(gv: &str, rs: &[(&str, &str)]) -> (String, Option<APIResourceList>) {
        let list = APIResourceList {
            group_version: gv.into(),
            resources: rs
                .iter()
                .map(|(name, kind)| APIResource {
                    name: name.to_string(),
                    kind: kind.to_string(),
                    namespaced: false,
                    verbs: vec!["get".into(), "list".into(), "watch".into()],
                    ..Default::default()
                })
                .collect(),
        };
        (gv.to_string(), Some(list))
    }

    #[test]
    fn only_the_groups_of_optional_kinds_are_read_preferred_version_first() {
        let groups = APIGroupList {
            groups: vec![
                group("apps", &["v1"]),
                group("policy.networking.k8s.io", &["v1alpha2", "v1alpha1"]),
                group("cilium.io", &["v2"]),
            ],
        };
        assert_eq!(
            versions_to_read(&groups),
            vec![
                "policy.networking.k8s.io/v1alpha2",
                "policy.networking.k8s.io/v1alpha1",
                "cilium.io/v2"
            ]
        );
    }

    #[test]
    fn each_kind_is_served_only_in_the_version_flowwatch_decodes() {
        let found = served(&[
            resources(
                "policy.networking.k8s.io/v1alpha2",
                &[("clusternetworkpolicies", "ClusterNetworkPolicy")],
            ),
            // an AdminNetworkPolicy in a version flowwatch does not decode is not watched
            resources(
                "policy.networking.k8s.io/v1alpha1",
                &[
                    ("baselineadminnetworkpolicies", "BaselineAdminNetworkPolicy"),
                    (
                        "baselineadminnetworkpolicies/status",
                        "BaselineAdminNetworkPolicy",
                    ),
                ],
            ),
            resources(
                "cilium.io/v2",
                &[("ciliumnetworkpolicies", "CiliumNetworkPolicy")],
            ),
            ("crd.antrea.io/v1beta1".into(), None),
        ]);
        let kinds: Vec<Kind> = found.served.keys().copied().collect();
        assert_eq!(
            kinds,
            vec![
                Kind::ClusterNetworkPolicy,
                Kind::BaselineAdminNetworkPolicy,
                Kind::CiliumNetworkPolicy
            ]
        );
        let banp = &found.served[&Kind::BaselineAdminNetworkPolicy];
        assert_eq!(banp.plural, "baselineadminnetworkpolicies");
        assert_eq!(banp.api_version, "policy.networking.k8s.io/v1alpha1");
        // Antrea's group did not answer: its kinds keep their state
        assert_eq!(
            found.unknown,
            BTreeSet::from([Kind::AntreaNetworkPolicy, Kind::AntreaClusterNetworkPolicy])
        );
        assert_eq!(served(&[]), Discovered::default());
    }

    #[test]
    fn a_cni_object_is_named_as_in_snapshots() {
        let ar = ApiResource {
            group: "crd.antrea.io".into(),
            version: "v1beta1".into(),
            api_version: "crd.antrea.io/v1beta1".into(),
            kind: "NetworkPolicy".into(),
            plural: "networkpolicies".into(),
        };
        let mut obj = DynamicObject::new("deny-db", &ar).within("shop");
        obj.data = serde_json::Value::Null;
        assert_eq!(
            cni_object(&ar, &obj),
            Some(CniPolicy {
                kind: "crd.antrea.io/NetworkPolicy".into(),
                namespace: Some("shop".into()),
                name: "deny-db".into()
            })
        );
    }

    #[test]
    fn an_undecodable_cluster_policy_is_kept_by_name_and_counted() {
        let status = SyncStatus::default();
        let ar = ApiResource {
            group: API_GROUP.into(),
            version: "v1alpha2".into(),
            api_version: format!("{API_GROUP}/v1alpha2"),
            kind: "ClusterNetworkPolicy".into(),
            plural: "clusternetworkpolicies".into(),
        };
        let mut obj = DynamicObject::new("bad", &ar);
        obj.data = serde_json::json!({"spec": {"tier": "Admin", "priority": "high"}});
        let got = decode_policy::<ClusterNetworkPolicy>(Kind::ClusterNetworkPolicy, obj, &status);
        assert_eq!(got, Err("bad".to_string()));
        assert_eq!(status.rejected(), 1);
        let stores = OptionalStores::default();
        stores.cnps.apply(Change::Apply((None, "bad".into()), got));
        let mut good = DynamicObject::new("good", &ar);
        good.data = serde_json::json!({"spec": {"tier": "Admin", "priority": 3,
            "subject": {"namespaces": {}}}});
        let good = decode_policy::<ClusterNetworkPolicy>(Kind::ClusterNetworkPolicy, good, &status);
        assert_eq!(
            good.as_ref().unwrap().spec.as_ref().unwrap().priority,
            Some(3)
        );
        stores
            .cnps
            .apply(Change::Apply((None, "good".into()), good));
        let all = stores.cluster_policies();
        assert_eq!(all.cluster_network_policies.len(), 1);
        assert_eq!(
            all.undecodable,
            vec![("ClusterNetworkPolicy".to_string(), "bad".to_string())]
        );
        stores.clear(Kind::ClusterNetworkPolicy);
        assert!(stores.cluster_policies().is_empty());
    }
}
