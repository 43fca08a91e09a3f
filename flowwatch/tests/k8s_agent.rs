//! End to end: the real agent (`flowwatch run --kube=true`) with the ServiceAccount and
//! ClusterRole that `deploy/` ships, against a real kube-apiserver, with TCP traffic between
//! namespace-pods whose IPs the test sets through the pods' status subresource. The flow
//! records and verdicts follow each change (relabel, add and remove a policy, delete and
//! re-create a pod on the same IP) within 2 seconds.

use std::net::SocketAddr;
use std::time::Duration;

use flowwatch_testkit::agent::Agent;
use flowwatch_testkit::apiserver::ApiServer;
use flowwatch_testkit::k8s::*;
use flowwatch_testkit::netns::Node;
use flowwatch_testkit::privileged;
use flowwatch_testkit::traffic::{one_connection, wait_record};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

fn available() -> bool {
    privileged::require("k8s end to end with the agent", privileged::root())
        && privileged::require("k8s end to end with the agent", ApiServer::available())
}

#[test]
fn flow_records_and_verdicts_follow_the_cluster_within_two_seconds() {
    if !available() {
        return;
    }
    let node = Node::new(2);
    let (client_pod, server_pod) = (&node.pods[0], &node.pods[1]);
    let (client_ip, server_ip) = (client_pod.ipv4.to_string(), server_pod.ipv4.to_string());
    let dst = SocketAddr::from((server_pod.ipv4, 8080));

    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = rt.block_on(ApiServer::start());
    let admin = rt.block_on(api.admin_client());
    let (sa_ns, sa_name) = rt.block_on(apply_shipped_rbac(&admin));
    let token = rt.block_on(api.service_account_token(&sa_ns, &sa_name));
    let kubeconfig = api.kubeconfig_for_token("agent", &token);
    rt.block_on(async {
        create_namespace(&admin, "shop", json!({})).await;
        create_node(&admin, "node-a", "192.168.77.10").await;
        create_pod(
            &admin,
            "shop",
            "client",
            json!({"app": "client"}),
            None,
            "node-a",
            &client_ip,
        )
        .await;
        create_pod(
            &admin,
            "shop",
            "web-5c7b9-x1",
            json!({"app": "web", "pod-template-hash": "5c7b9"}),
            Some(owner("apps/v1", "ReplicaSet", "web-5c7b9", "uid-rs")),
            "node-a",
            &server_ip,
        )
        .await;
    });

    // The agent reads KUBECONFIG (a token of the shipped ServiceAccount). This target has this
    // one test, so no other thread reads the environment.
    std::env::set_var("KUBECONFIG", &kubeconfig);
    let glob = node.interface_glob();
    let mut agent = Agent::start(&[
        "--interfaces",
        &glob,
        "--kube=true",
        "--label-allowlist",
        "app",
    ]);
    agent.wait_for_log("inventory updated", Duration::from_secs(20));

    // 1. names on both ends
    one_connection(client_pod, server_pod, dst);
    let r = wait_record(&agent, dst, 0);
    assert_eq!(r["src"]["kind"], "pod", "{r}");
    assert_eq!(r["src"]["name"], "client");
    assert_eq!(r["dst"]["namespace"], "shop");
    assert_eq!(r["dst"]["name"], "web-5c7b9-x1");
    assert_eq!(r["dst"]["workload_kind"], "Deployment");
    assert_eq!(r["dst"]["workload_name"], "web");
    assert_eq!(r["dst"]["node"], "node-a");
    assert_eq!(r["dst"]["labels"], json!({"app": "web"}));
    assert_eq!(r["verdict"], "uncovered");

    let pods: Api<Pod> = Api::namespaced(admin.clone(), "shop");
    let policies: Api<NetworkPolicy> = Api::namespaced(admin.clone(), "shop");
    let follow = || std::thread::sleep(Duration::from_secs(2));

    // 2. relabel
    rt.block_on(pods.patch(
        "web-5c7b9-x1",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "web-v2"}}})),
    ))
    .unwrap();
    follow();
    one_connection(client_pod, server_pod, dst);
    let r = wait_record(&agent, dst, 1);
    assert_eq!(r["dst"]["labels"], json!({"app": "web-v2"}), "{r}");

    // 3. add a policy that allows only other clients to web-v2: denied
    let np: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"name": "web-ingress"},
        "spec": {"podSelector": {"matchLabels": {"app": "web-v2"}}, "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "frontend"}}}]}]}
    }))
    .unwrap();
    rt.block_on(policies.create(&PostParams::default(), &np))
        .unwrap();
    follow();
    one_connection(client_pod, server_pod, dst);
    let r = wait_record(&agent, dst, 2);
    assert_eq!(r["verdict"], "denied", "{r}");
    assert_eq!(r["ingress"]["verdict"], "denied");

    // 4. remove it: uncovered again
    rt.block_on(policies.delete("web-ingress", &DeleteParams::default()))
        .unwrap();
    follow();
    one_connection(client_pod, server_pod, dst);
    let r = wait_record(&agent, dst, 3);
    assert_eq!(r["verdict"], "uncovered", "{r}");

    // 5. the pod is deleted and another one gets its IP
    rt.block_on(async {
        delete_pod(&admin, "shop", "web-5c7b9-x1").await;
        create_pod(
            &admin,
            "shop",
            "db-0",
            json!({"app": "db"}),
            Some(owner("apps/v1", "StatefulSet", "db", "uid-db")),
            "node-a",
            &server_ip,
        )
        .await;
    });
    follow();
    one_connection(client_pod, server_pod, dst);
    let r = wait_record(&agent, dst, 4);
    assert_eq!(r["dst"]["name"], "db-0", "{r}");
    assert_eq!(r["dst"]["workload_kind"], "StatefulSet");

    let (status, _) = agent.stop();
    assert!(status.success(), "agent exit: {status}\n{}", agent.stderr());
    assert!(
        !agent.stderr().contains("forbidden"),
        "the shipped RBAC was not enough:\n{}",
        agent.stderr()
    );
}
