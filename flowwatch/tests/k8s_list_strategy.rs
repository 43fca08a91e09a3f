//! Streaming lists against a real kube-apiserver: where the server supports them (WatchList),
//! the watches fetch the initial state without a single LIST request; where it does not
//! (the feature gate off), `auto` falls back to paged lists and the inventory is complete all
//! the same. The API server's own request counters say which requests were made.

use flowwatch::k8s::{ListStrategy, WatchOptions};
use flowwatch_testkit::apiserver::{ApiServer, ApiServerOptions};
use flowwatch_testkit::k8s::*;
use flowwatch_testkit::privileged;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const PODS: usize = 30;

/// Starts a server with `extra_args`, creates [`PODS`] pods, syncs a watch with `strategy`;
/// returns the LIST requests for pods the watch made, and the pod watches open once synced.
async fn sync_with(extra_args: &[&str], strategy: ListStrategy) -> (f64, f64) {
    // The watches' log (the fallback says why) in the test's output.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("flowwatch=info")
        .with_test_writer()
        .try_init();
    let api = ApiServer::start_with(ApiServerOptions {
        extra_args: extra_args
            .iter()
            .map(std::string::ToString::to_string)
            .collect(),
        ..Default::default()
    })
    .await;
    let admin = api.admin_client().await;
    create_namespace(&admin, "shop", json!({})).await;
    for i in 0..PODS {
        let ip = format!("10.1.0.{}", i + 1);
        create_pod(
            &admin,
            "shop",
            &format!("web-{i}"),
            json!({"app": "web"}),
            None,
            "node-a",
            &ip,
        )
        .await;
    }
    let list = || {
        api.metric_sum(
            "apiserver_request_total",
            &["verb=\"LIST\"", "resource=\"pods\""],
        )
    };
    // A watch is counted in apiserver_request_total only when it ends; the open ones are here.
    let watch = || {
        api.metric_sum(
            "apiserver_longrunning_requests",
            &["verb=\"WATCH\"", "resource=\"pods\""],
        )
    };
    let lists_before = list().await;
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let opts = WatchOptions {
        page_size: 10,
        list_strategy: strategy,
        ..Default::default()
    };
    let w = watch_with(admin.clone(), opts, &cancel).await;
    eventually(&w, FOLLOW, "every pod", |v| {
        v.inventory
            .pods
            .iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some("shop"))
            .count()
            == PODS
    })
    .await;
    (list().await - lists_before, watch().await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_the_server_streams_lists_the_watch_makes_no_list_request() {
    if !privileged::require("streaming lists", ApiServer::available()) {
        return;
    }
    let (lists, watches) = sync_with(&["--feature-gates=WatchList=true"], ListStrategy::Auto).await;
    assert_eq!(lists, 0.0, "a streaming list needs no LIST request");
    assert!(
        watches >= 1.0,
        "the pods came by a watch, still open ({watches})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_it_does_not_auto_falls_back_to_paged_lists() {
    if !privileged::require("streaming lists fallback", ApiServer::available()) {
        return;
    }
    let (lists, _) = sync_with(&["--feature-gates=WatchList=false"], ListStrategy::Auto).await;
    // 30 pods in pages of 10: at least three LIST requests.
    assert!(lists >= 3.0, "paged lists after the refusal ({lists})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paged_stays_paged() {
    if !privileged::require("paged lists", ApiServer::available()) {
        return;
    }
    let (lists, _) = sync_with(&["--feature-gates=WatchList=true"], ListStrategy::Paged).await;
    assert!(lists >= 3.0, "{lists}");
}
