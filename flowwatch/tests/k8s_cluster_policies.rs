//! The optional kinds against a real kube-apiserver with CRDs written from the published API
//! types (`tests/fixtures/crds`): without the CRDs the watchers sync clean (no error, ready,
//! not stale); CRDs served at start are in the first view and change verdicts; CRDs created
//! while the watchers run are picked up without a restart, and a deleted CRD takes its
//! policies out of the views, with no error or stale signal either way. CNI-specific kinds
//! (a CiliumNetworkPolicy CRD) are counted and mark the verdicts of their namespace.

use std::net::IpAddr;
use std::time::Duration;

use flowwatch::k8s::{ClusterView, ClusterWatch, Kind, WatchOptions};
use flowwatch::model::Protocol;
use flowwatch::policy::tiered::Tier;
use flowwatch::policy::{FlowVerdict, PolicyEngine, PolicyOptions, SideVerdict, Verdict};
use flowwatch_testkit::apiserver::ApiServer;
use flowwatch_testkit::k8s::*;
use flowwatch_testkit::privileged;
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn available(what: &str) -> bool {
    privileged::require(what, ApiServer::available())
}

/// Discovery every second, so a CRD's coming and going is seen quickly.
fn options() -> WatchOptions {
    WatchOptions {
        discovery_interval: Duration::from_secs(1),
        ..WatchOptions::default()
    }
}

/// How long a CRD change may take to reach the views: a discovery interval, the watch's list,
/// the debounce, with margin for a loaded machine.
const DISCOVER: Duration = Duration::from_secs(10);

const A1: &str = "10.244.1.10";
const B1: &str = "10.244.2.10";

/// Two tenants' namespaces with a pod each.
async fn tenants(client: &kube::Client) {
    create_namespace(client, "tenant-a", json!({"tenant": "a"})).await;
    create_namespace(client, "tenant-b", json!({"tenant": "b"})).await;
    create_node(client, "node-a", "192.168.77.10").await;
    create_pod(
        client,
        "tenant-a",
        "a1",
        json!({"app": "a"}),
        None,
        "node-a",
        A1,
    )
    .await;
    create_pod(
        client,
        "tenant-b",
        "b1",
        json!({"app": "b"}),
        None,
        "node-a",
        B1,
    )
    .await;
}

/// An Admin-tier ClusterNetworkPolicy: tenant-a may not reach tenant-b on TCP 8080.
fn admin_deny() -> serde_json::Value {
    json!({
        "apiVersion": "policy.networking.k8s.io/v1alpha2",
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": "deny-a-to-b"},
        "spec": {
            "tier": "Admin",
            "priority": 10,
            "subject": {"namespaces": {"matchLabels": {"tenant": "b"}}},
            "ingress": [{
                "name": "no-a",
                "action": "Deny",
                "from": [{"namespaces": {"matchLabels": {"tenant": "a"}}}],
                "protocols": [{"tcp": {"destinationPort": {"number": 8080}}}]
            }]
        }
    })
}

/// A fresh API server and its admin client.
async fn cluster() -> (ApiServer, kube::Client) {
    let api = ApiServer::start().await;
    let client = api.admin_client().await;
    (api, client)
}

/// The watchers with [`options`], synced; they stop when the guard is dropped.
async fn watched(client: &kube::Client) -> (ClusterWatch, tokio_util::sync::DropGuard) {
    let cancel = CancellationToken::new();
    let w = watch_with(client.clone(), options(), &cancel).await;
    (w, cancel.drop_guard())
}

fn verdict(view: &ClusterView, port: u16) -> FlowVerdict {
    let (engine, errors) = PolicyEngine::build(&view.inventory, PolicyOptions::default());
    assert!(errors.is_empty(), "{errors:?}");
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    engine.evaluate_ips(ip(A1), ip(B1), port, Protocol::Tcp)
}

fn clean(w: &ClusterWatch) {
    let s = w.status();
    assert!(s.is_synced(), "{:?}", s.report());
    assert!(!s.is_stale(), "{:?}", s.report());
    assert_eq!(s.watch_errors(), 0, "{:?}", s.report());
    assert_eq!(s.rejected(), 0, "{:?}", s.report());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_crds_the_watchers_sync_clean() {
    if !available("k8s optional kinds absent") {
        return;
    }
    let (_api, client) = cluster().await;
    tenants(&client).await;
    let (w, _stop) = watched(&client).await;
    let view = w.current();
    assert!(view.inventory.cluster_policies.is_empty());
    for kind in Kind::OPTIONAL {
        assert!(!w.status().is_active(kind), "{kind:?} is not served");
    }
    // Several discovery rounds later: still nothing to report, and no series of absent kinds.
    tokio::time::sleep(Duration::from_secs(3)).await;
    clean(&w);
    assert_eq!(w.status().readiness(), Ok(()));
    let report = w.status().report();
    assert!(report.unsynced_kinds.is_empty() && report.failing_kinds.is_empty());
    let kinds: Vec<Kind> = w.status().staleness().iter().map(|(k, _)| *k).collect();
    assert_eq!(
        kinds,
        Kind::CORE,
        "only the core kinds have staleness series"
    );
    let v = verdict(&w.current(), 8080);
    assert_eq!(v.verdict, Verdict::Uncovered);
    assert_eq!(v.ingress.tier, Tier::None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_policies_served_at_start_are_in_the_first_view_and_decide() {
    if !available("k8s cluster policies at start") {
        return;
    }
    let (_api, client) = cluster().await;
    install_crds(&client, CLUSTER_NETWORK_POLICY_CRD).await;
    install_crds(&client, ADMIN_NETWORK_POLICY_CRDS).await;
    tenants(&client).await;
    create_custom(&client, "clusternetworkpolicies", admin_deny()).await;
    // v1alpha1: an AdminNetworkPolicy allowing TCP 9090, and the Baseline denying the rest
    create_custom(
        &client,
        "adminnetworkpolicies",
        json!({
            "apiVersion": "policy.networking.k8s.io/v1alpha1",
            "kind": "AdminNetworkPolicy",
            "metadata": {"name": "allow-9090"},
            "spec": {"priority": 20,
                "subject": {"namespaces": {"matchLabels": {"tenant": "b"}}},
                "ingress": [{"name": "metrics", "action": "Allow",
                    "from": [{"namespaces": {}}],
                    "ports": [{"portNumber": {"protocol": "TCP", "port": 9090}}]}]}
        }),
    )
    .await;
    create_custom(
        &client,
        "baselineadminnetworkpolicies",
        json!({
            "apiVersion": "policy.networking.k8s.io/v1alpha1",
            "kind": "BaselineAdminNetworkPolicy",
            "metadata": {"name": "default"},
            "spec": {"subject": {"namespaces": {}},
                "ingress": [{"name": "isolate", "action": "Deny", "from": [{"namespaces": {}}]}]}
        }),
    )
    .await;

    let (w, _stop) = watched(&client).await;
    // The first view already holds them: it waited for discovery and their lists.
    let view = w.current();
    let cp = &view.inventory.cluster_policies;
    assert_eq!(cp.cluster_network_policies.len(), 1, "{cp:?}");
    assert_eq!(cp.admin_network_policies.len(), 1, "{cp:?}");
    assert_eq!(cp.baseline_admin_network_policies.len(), 1, "{cp:?}");
    for kind in [
        Kind::ClusterNetworkPolicy,
        Kind::AdminNetworkPolicy,
        Kind::BaselineAdminNetworkPolicy,
    ] {
        assert!(w.status().is_active(kind), "{kind:?}");
    }
    clean(&w);

    let denied = verdict(&view, 8080);
    assert_eq!(denied.verdict, Verdict::Denied);
    assert_eq!(denied.ingress.verdict, SideVerdict::Denied);
    assert_eq!(denied.ingress.tier, Tier::Admin);
    let by = denied.ingress.decided_by.as_ref().expect("decided_by");
    assert_eq!(&*by.name, "deny-a-to-b");
    let allowed = verdict(&view, 9090);
    assert_eq!(allowed.verdict, Verdict::Allowed);
    assert_eq!(allowed.ingress.tier, Tier::Admin);
    assert_eq!(
        &*allowed.ingress.decided_by.as_ref().unwrap().name,
        "allow-9090"
    );
    let baseline = verdict(&view, 7070);
    assert_eq!(baseline.verdict, Verdict::Denied);
    assert_eq!(baseline.ingress.tier, Tier::Baseline);

    // A change of a policy is followed like any object.
    let cnps: kube::Api<kube::api::DynamicObject> = kube::Api::all_with(
        client.clone(),
        &kube::api::ApiResource {
            group: "policy.networking.k8s.io".into(),
            version: "v1alpha2".into(),
            api_version: "policy.networking.k8s.io/v1alpha2".into(),
            kind: "ClusterNetworkPolicy".into(),
            plural: "clusternetworkpolicies".into(),
        },
    );
    cnps.delete("deny-a-to-b", &kube::api::DeleteParams::default())
        .await
        .unwrap();
    eventually(&w, FOLLOW, "ClusterNetworkPolicy deleted", |v| {
        v.inventory
            .cluster_policies
            .cluster_network_policies
            .is_empty()
    })
    .await;
    // 8080 now falls through to the Baseline
    assert_eq!(verdict(&w.current(), 8080).ingress.tier, Tier::Baseline);
    clean(&w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crds_created_and_deleted_while_running_are_followed_without_a_restart() {
    if !available("k8s CRDs come and go") {
        return;
    }
    let (_api, client) = cluster().await;
    tenants(&client).await;
    let (w, _stop) = watched(&client).await;
    assert!(w.current().inventory.cluster_policies.is_empty());
    let generation = w.current().generation;

    // Created: the CRD, then a policy of it.
    let names = install_crds(&client, CLUSTER_NETWORK_POLICY_CRD).await;
    create_custom(&client, "clusternetworkpolicies", admin_deny()).await;
    eventually(&w, DISCOVER, "ClusterNetworkPolicy picked up", |v| {
        v.inventory.cluster_policies.cluster_network_policies.len() == 1
    })
    .await;
    assert!(w.current().generation > generation);
    assert!(w.status().is_active(Kind::ClusterNetworkPolicy));
    let v = verdict(&w.current(), 8080);
    assert_eq!(v.verdict, Verdict::Denied);
    assert_eq!(v.ingress.tier, Tier::Admin);
    clean(&w);

    // A CNI-specific kind: counted, and the verdicts of its namespace are marked.
    install_crds(&client, CILIUM_NETWORK_POLICY_CRD).await;
    create_custom(
        &client,
        "ciliumnetworkpolicies",
        json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "l7", "namespace": "tenant-b"},
            "spec": {"endpointSelector": {}}}),
    )
    .await;
    eventually(&w, DISCOVER, "CiliumNetworkPolicy counted", |v| {
        v.inventory.cluster_policies.cni_policies.len() == 1
    })
    .await;
    let view = w.current();
    let (engine, _) = PolicyEngine::build(&view.inventory, PolicyOptions::default());
    assert_eq!(
        engine.cni_policy_counts().get("CiliumNetworkPolicy"),
        Some(&1)
    );
    let v = verdict(&view, 7070);
    assert!(v.ingress.cni_policy_present, "{v:?}");
    assert!(!v.egress.cni_policy_present, "tenant-a has no CNI policy");
    clean(&w);

    // Deleted: the CRD and its objects go, the policies leave the views; no error, no stale.
    for name in names {
        delete_crd(&client, &name).await;
    }
    eventually(&w, DISCOVER, "ClusterNetworkPolicy dropped", |v| {
        v.inventory
            .cluster_policies
            .cluster_network_policies
            .is_empty()
    })
    .await;
    // Past a few discovery rounds, the kind is no longer watched and nothing is reported.
    let start = std::time::Instant::now();
    while w.status().is_active(Kind::ClusterNetworkPolicy) {
        assert!(start.elapsed() < DISCOVER, "{:?}", w.status().report());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let v = verdict(&w.current(), 8080);
    assert_eq!(v.verdict, Verdict::Uncovered);
    assert!(
        w.status().is_active(Kind::CiliumNetworkPolicy),
        "the other CRD stays"
    );
    clean(&w);
}
