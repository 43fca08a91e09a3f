//! The real agent binary through a Kubernetes API server outage, with the shipped RBAC: not
//! ready until its caches have synced and its policy engine is built (flows that ended before
//! that wait for it, then are named and judged); stale (metric and `/readyz`) while the API
//! server is gone for 30 seconds, naming flows from the last known state all along; resynced
//! and following changes when the API server returns; never exiting.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use flowwatch_testkit::agent::Agent;
use flowwatch_testkit::apiserver::ApiServer;
use flowwatch_testkit::k8s::*;
use flowwatch_testkit::netns::Node;
use flowwatch_testkit::privileged;
use flowwatch_testkit::prometheus::http_get;
use flowwatch_testkit::traffic::{one_connection, records_to, wait_record};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

const OUTAGE: Duration = Duration::from_secs(30);

/// Polls `/readyz` until it answers `want` (200 or 503) with a body containing `saying`, or
/// the timeout; returns the body. (Before its first poll the agent says "starting": a reason
/// the test waits past, not one it asserts on.)
fn wait_readyz(agent: &Agent, want: u16, saying: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let (status, body) = http_get(&agent.listen, "/readyz", None).unwrap_or((0, String::new()));
        if status == want && body.contains(saying) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz not {want} {saying:?} within {timeout:?} (last {status} {body:?}):\n{}",
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn assert_alive(agent: &mut Agent) {
    assert!(agent.is_running(), "the agent exited:\n{}", agent.stderr());
}

#[test]
fn the_agent_rides_out_an_api_server_outage() {
    if !privileged::require("k8s outage with the agent", privileged::root())
        || !privileged::require("k8s outage with the agent", ApiServer::available())
    {
        return;
    }
    let node = Node::new(2);
    let (client_pod, server_pod) = (&node.pods[0], &node.pods[1]);
    let dst = SocketAddr::from((server_pod.ipv4, 8080));

    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut api = rt.block_on(ApiServer::start());
    let admin = rt.block_on(api.admin_client());
    let (sa_ns, sa_name) = rt.block_on(apply_shipped_rbac(&admin));
    let token = rt.block_on(api.service_account_token(&sa_ns, &sa_name));
    let kubeconfig = api.kubeconfig_for_token("agent", &token);
    rt.block_on(async {
        create_namespace(&admin, "shop", json!({})).await;
        create_node(&admin, "node-a", "192.168.77.10").await;
        let client_ip = client_pod.ipv4.to_string();
        create_pod(
            &admin,
            "shop",
            "client",
            json!({}),
            None,
            "node-a",
            &client_ip,
        )
        .await;
        let server_ip = server_pod.ipv4.to_string();
        create_pod(
            &admin,
            "shop",
            "web",
            json!({"app": "web"}),
            None,
            "node-a",
            &server_ip,
        )
        .await;
    });

    // 1. Started while the API server is down: running, serving metrics, not ready.
    api.stop_apiserver();
    // The only test of this target: no other thread reads the environment.
    std::env::set_var("KUBECONFIG", &kubeconfig);
    let glob = node.interface_glob();
    let mut agent = Agent::start(&[
        "--interfaces",
        &glob,
        "--kube=true",
        "--label-allowlist",
        "app",
    ]);
    let why = wait_readyz(&agent, 503, "not synced", Duration::from_secs(5));
    assert!(why.contains("not synced"), "{why}");
    std::thread::sleep(Duration::from_secs(2));
    let (status, _) = http_get(&agent.listen, "/readyz", None).unwrap();
    assert_eq!(status, 503, "ready without a cluster view");
    assert_alive(&mut agent);
    // A connection before any cluster view: nothing could name or judge it yet, so it waits
    // for the view instead of being logged bare.
    one_connection(client_pod, server_pod, dst);
    std::thread::sleep(Duration::from_secs(1)); // several polls
    let early = records_to(&agent, dst).len();
    assert_eq!(
        early,
        0,
        "reported before the cluster view:\n{}",
        agent.stderr()
    );

    // 2. The API server comes up: caches sync, the engine is built, ready; the waiting flow
    // and the new ones are named and judged.
    rt.block_on(api.restart_apiserver());
    wait_readyz(&agent, 200, "", Duration::from_secs(20));
    assert!(
        agent.stderr().contains("inventory updated"),
        "ready before the engine was built"
    );
    assert_eq!(agent.metric("flowwatch_kube_stale"), Some(0.0));
    let r = wait_record(&agent, dst, 0);
    assert_eq!(
        r["dst"]["name"], "web",
        "the flow that waited for the view: {r}"
    );
    assert_eq!(r["src"]["name"], "client", "{r}");
    assert_eq!(r["verdict"], "uncovered", "{r}");
    one_connection(client_pod, server_pod, dst);
    let r = wait_record(&agent, dst, 1);
    assert_eq!(r["dst"]["name"], "web", "{r}");

    // 3. 30 s without the API server: stale, not ready, still naming flows, never exiting.
    api.stop_apiserver();
    let stopped = Instant::now();
    let why = wait_readyz(&agent, 503, "last known state", Duration::from_secs(15));
    assert!(why.contains("last known state"), "{why}");
    assert_eq!(agent.metric("flowwatch_kube_stale"), Some(1.0));
    let pods_stale = r#"flowwatch_watch_staleness_seconds{kind="Pod"}"#;
    let mut during = 0;
    while stopped.elapsed() < OUTAGE {
        assert_alive(&mut agent);
        if stopped.elapsed() > Duration::from_secs(20) && during == 0 {
            one_connection(client_pod, server_pod, dst);
            let r = wait_record(&agent, dst, 2);
            assert_eq!(
                r["dst"]["name"], "web",
                "the last known state names flows: {r}"
            );
            assert_eq!(r["dst"]["labels"], json!({"app": "web"}));
            during += 1;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let (status, _) = http_get(&agent.listen, "/readyz", None).unwrap();
    assert_eq!(status, 503, "still stale at the end of the outage");
    let stale_for = agent.metric(pods_stale).unwrap_or(0.0);
    assert!(stale_for >= 20.0, "pods watch stale for {stale_for} s");

    // 4. Back: resynced, ready, and following a change made after the outage.
    rt.block_on(api.restart_apiserver());
    wait_readyz(&agent, 200, "", Duration::from_secs(20));
    assert_eq!(agent.metric("flowwatch_kube_stale"), Some(0.0));
    // the staleness gauges are set on the agent's poll: wait for the next one
    agent.wait_metric(pods_stale, 0.0, Duration::from_secs(5));
    let admin = rt.block_on(api.admin_client());
    let pods: Api<Pod> = Api::namespaced(admin, "shop");
    rt.block_on(pods.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "web-v2"}}})),
    ))
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    one_connection(client_pod, server_pod, dst);
    let r = wait_record(&agent, dst, 3);
    assert_eq!(r["dst"]["labels"], json!({"app": "web-v2"}), "{r}");

    let (status, _) = agent.stop();
    assert!(status.success(), "agent exit: {status}\n{}", agent.stderr());
    assert!(!agent.stderr().contains("panicked"), "{}", agent.stderr());
}
