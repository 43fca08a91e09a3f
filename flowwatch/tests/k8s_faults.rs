//! Faults against a real kube-apiserver: an outage of 30 s, watches that expire (410 Gone),
//! and objects the agent cannot use.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowwatch::enrich::{EndpointIndex, EnrichOptions};
use flowwatch::k8s::{Kind, SyncStatus, WatchOptions};
use flowwatch::model::Protocol;
use flowwatch_testkit::apiserver::{ApiServer, ApiServerOptions};
use flowwatch_testkit::k8s::*;
use flowwatch_testkit::privileged;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn metrics_text(status: &SyncStatus) -> String {
    let mut registry = Registry::with_prefix("flowwatch");
    status.register(&mut registry);
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
    out
}

fn shop_pods(v: &flowwatch::k8s::ClusterView) -> usize {
    v.inventory
        .pods
        .iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some("shop"))
        .count()
}

async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_outage_of_30_seconds_runs_on_the_last_state_then_resyncs() {
    if !privileged::require("k8s API server outage", ApiServer::available()) {
        return;
    }
    let mut api = ApiServer::start().await;
    let admin = api.admin_client().await;
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    create_namespace(&admin, "shop", json!({})).await;
    for i in 0..5 {
        create_pod(
            &admin,
            "shop",
            &format!("web-{i}"),
            json!({"app": "web"}),
            None,
            "node-a",
            &format!("10.244.2.{}", 10 + i),
        )
        .await;
    }
    let w = watch(admin.clone(), &cancel).await;
    let status = w.status();
    eventually(&w, FOLLOW, "five pods", |v| shop_pods(v) == 5).await;
    assert!(status.is_synced());
    assert!(metrics_text(&status).contains("flowwatch_kube_stale 0"));

    // API server down
    api.stop_apiserver();
    let stopped = Instant::now();
    let noticed = wait_for(
        "stale after the API server stopped",
        Duration::from_secs(10),
        || status.is_stale(),
    )
    .await;
    eprintln!("stale noticed after {noticed:?}");
    assert!(!status.is_synced(), "not ready while stale");
    let why = status.readiness().unwrap_err();
    assert!(why.contains("running on the last known state"), "{why}");
    assert!(status.has_synced());
    let metrics = metrics_text(&status);
    assert!(metrics.contains("flowwatch_kube_stale 1"), "{metrics}");
    // 30 s on the last known state
    while stopped.elapsed() < Duration::from_secs(30) {
        let view = w.current();
        assert_eq!(shop_pods(&view), 5, "the last known state is kept");
        assert!(status.is_stale());
        let (index, _) =
            EndpointIndex::build(&view.inventory, &view.owners, &EnrichOptions::default(), 0);
        assert!(index
            .resolve("10.244.2.12:80".parse().unwrap(), Protocol::Tcp, 0)
            .pod()
            .is_some());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Stale since it was noticed (within a second of the check that saw it).
    let stale_for = status.stale_for().unwrap();
    assert!(
        stale_for + noticed + Duration::from_secs(1) >= stopped.elapsed(),
        "stale for {stale_for:?}, noticed after {noticed:?}, {:?} into the outage",
        stopped.elapsed()
    );
    let errors_during = status.watch_errors();
    assert!(errors_during > 0);

    // back: resync
    api.restart_apiserver().await;
    let admin = api.admin_client().await;
    let back = wait_for(
        "synced after the API server returned",
        Duration::from_secs(15),
        || status.is_synced(),
    )
    .await;
    eprintln!("resynced {back:?} after the API server was ready again");
    assert!(!status.is_stale());
    assert_eq!(status.readiness(), Ok(()));
    for kind in Kind::CORE {
        assert!(
            status.relists_for_kind(kind) >= 1,
            "{kind:?} did not relist: {:?}",
            Kind::CORE.map(|k| (k, status.relists_for_kind(k)))
        );
    }
    assert!(metrics_text(&status).contains("flowwatch_kube_stale 0"));
    // and follows changes again
    create_pod(
        &admin,
        "shop",
        "web-new",
        json!({}),
        None,
        "node-a",
        "10.244.2.99",
    )
    .await;
    delete_pod(&admin, "shop", "web-0").await;
    eventually(&w, FOLLOW, "changes after the outage", |v| {
        pod_in(v, "shop", "web-new").is_some() && pod_in(v, "shop", "web-0").is_none()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_watch_relists_without_losing_state() {
    if !privileged::require("k8s watch expiry (410 Gone)", ApiServer::available()) {
        return;
    }
    // Without the watch cache, a watch resumed from a compacted revision gets 410 Gone.
    let api = ApiServer::start_with(ApiServerOptions {
        watch_cache: false,
        etcd_compaction_interval: Some(Duration::from_secs(1)),
        ..Default::default()
    })
    .await;
    let admin = api.admin_client().await;
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    create_namespace(&admin, "shop", json!({})).await;
    for i in 0..10 {
        create_pod(
            &admin,
            "shop",
            &format!("web-{i}"),
            json!({}),
            None,
            "node-a",
            &format!("10.244.3.{}", 10 + i),
        )
        .await;
    }
    let opts = WatchOptions {
        watch_timeout_secs: Some(2),
        // Pages of two: the pods' relist takes several list requests, a window in which a
        // cache that did not buffer the relist would be seen partial or empty.
        page_size: 2,
        list_strategy: flowwatch::k8s::ListStrategy::Paged,
        ..Default::default()
    };
    let w = watch_with(admin.clone(), opts, &cancel).await;
    let status = w.status();
    eventually(&w, FOLLOW, "ten pods", |v| shop_pods(v) == 10).await;

    // The caches, read as fast as a view can be built (`current()` reads them directly; the
    // published views only come after a debounce, too late to see a relist in progress),
    // from before the relist until it is over: every read has the ten pods.
    let fewest = Arc::new(AtomicUsize::new(usize::MAX));
    let samples = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (w, fewest, samples, stop) = (w.clone(), fewest.clone(), samples.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                fewest.fetch_min(shop_pods(&w.current()), Ordering::Relaxed);
                samples.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    // advance etcd's revision (objects the agent does not watch) until compaction expires the
    // pods' watch
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), "shop");
    let start = Instant::now();
    let mut i = 0;
    while status.relists_for_kind(Kind::Pod) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no relist within 30 s"
        );
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": format!("cm-{i}")}})).unwrap();
        cms.create(&PostParams::default(), &cm).await.unwrap();
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "relisted after {:?} and {i} unrelated writes",
        start.elapsed()
    );
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    assert!(samples.load(Ordering::Relaxed) > 0, "no read of the caches");
    assert_eq!(
        fewest.load(Ordering::Relaxed),
        10,
        "a read lost pods during the relist"
    );
    // a change after the relist is followed
    create_pod(
        &admin,
        "shop",
        "web-new",
        json!({}),
        None,
        "node-a",
        "10.244.3.99",
    )
    .await;
    eventually(&w, FOLLOW, "pod after relist", |v| {
        pod_in(v, "shop", "web-new").is_some()
    })
    .await;
    cancel.cancel();
    assert!(
        !status.is_stale(),
        "a 410 is not an outage: {:?}",
        status.report()
    );
    assert_eq!(
        status.watch_errors(),
        0,
        "410 is handled, not counted as a failure"
    );
    eprintln!(
        "cache reads: {}; relists: {}",
        samples.load(Ordering::Relaxed),
        status.relists()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_the_agent_cannot_use_are_reported_and_the_rest_works() {
    if !privileged::require("k8s unusable objects", ApiServer::available()) {
        return;
    }
    let api = ApiServer::start().await;
    let admin = api.admin_client().await;
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let w = watch(admin.clone(), &cancel).await;
    create_namespace(&admin, "shop", json!({})).await;
    create_pod(
        &admin,
        "shop",
        "good",
        json!({}),
        None,
        "node-a",
        "10.244.4.5",
    )
    .await;
    // The API server accepts this legacy form (leading zeros); no IP parser of the agent does.
    create_pod(
        &admin,
        "shop",
        "odd",
        json!({}),
        None,
        "node-a",
        "10.244.4.010",
    )
    .await;
    eventually(&w, FOLLOW, "both pods", |v| {
        pod_in(v, "shop", "odd")
            .is_some_and(|p| p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some())
            && pod_in(v, "shop", "good").is_some()
    })
    .await;
    let view = w.current();
    let (index, report) =
        EndpointIndex::build(&view.inventory, &view.owners, &EnrichOptions::default(), 0);
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    let e = report.errors[0].to_string();
    assert!(e.starts_with("Pod shop/odd: status.podIP:"), "{e}");
    let good = index.resolve("10.244.4.5:80".parse().unwrap(), Protocol::Tcp, 0);
    assert_eq!(good.pod().map(|p| p.name.as_str()), Some("good"));
    assert!(w.status().is_synced());
}
