//! End to end with a cluster-scoped policy: the real agent (`flowwatch run --kube=true`, the
//! shipped ServiceAccount and ClusterRole) against a real kube-apiserver serving the
//! ClusterNetworkPolicy CRD (`tests/fixtures/crds`), with TCP between namespace-pods. An
//! Admin-tier `Deny` decides a real connection: established anyway (nothing enforces it here),
//! it is drift; dropped by the server pod (as an enforcing CNI would), it is a blocked attempt;
//! both carry `tier="admin"` in the metrics and in the flow record.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use flowwatch_testkit::agent::Agent;
use flowwatch_testkit::apiserver::ApiServer;
use flowwatch_testkit::k8s::*;
use flowwatch_testkit::netns::Node;
use flowwatch_testkit::privileged;
use flowwatch_testkit::traffic::{one_connection, wait_record};
use serde_json::json;

fn available() -> bool {
    privileged::require("k8s cluster policy end to end", privileged::root())
        && privileged::require("k8s cluster policy end to end", ApiServer::available())
}

/// The agent's exposition lines of `family` that contain every one of `labels`.
fn series(agent: &Agent, family: &str, labels: &[&str]) -> Vec<String> {
    let (_, text) = flowwatch_testkit::prometheus::http_get(&agent.listen, "/metrics", None)
        .unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .map(str::to_string)
        .collect()
}

/// Waits until exactly one series of `family` with `labels` reads `value`.
fn wait_series(agent: &Agent, family: &str, labels: &[&str], value: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let found = series(agent, family, labels);
        if let [one] = found.as_slice() {
            if one.split_whitespace().last() == Some(value) {
                return one.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{family} {labels:?} = {value} not seen: {found:?}\n{}",
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn an_admin_deny_decides_a_real_connection_in_records_and_metrics() {
    if !available() {
        return;
    }
    let node = Node::new(2);
    let (client_pod, server_pod) = (&node.pods[0], &node.pods[1]);
    let (client_ip, server_ip) = (client_pod.ipv4.to_string(), server_pod.ipv4.to_string());
    let open = SocketAddr::from((server_pod.ipv4, 8080));
    let dropped = SocketAddr::from((server_pod.ipv4, 8081));
    // The server pod drops 8081, as a CNI enforcing the Admin Deny would.
    server_pod.drop_incoming("tcp dport 8081");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = rt.block_on(ApiServer::start());
    let admin = rt.block_on(api.admin_client());
    let (sa_ns, sa_name) = rt.block_on(apply_shipped_rbac(&admin));
    let token = rt.block_on(api.service_account_token(&sa_ns, &sa_name));
    let kubeconfig = api.kubeconfig_for_token("agent", &token);
    rt.block_on(async {
        install_crds(&admin, CLUSTER_NETWORK_POLICY_CRD).await;
        install_crds(&admin, CILIUM_NETWORK_POLICY_CRD).await;
        create_namespace(&admin, "tenant-a", json!({"tenant": "a"})).await;
        create_namespace(&admin, "other", json!({})).await;
        // A CNI-specific policy in a namespace of neither pod: counted, marks nothing here.
        create_custom(
            &admin,
            "ciliumnetworkpolicies",
            json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                "metadata": {"name": "l7", "namespace": "other"},
                "spec": {"endpointSelector": {}}}),
        )
        .await;
        create_namespace(&admin, "tenant-b", json!({"tenant": "b"})).await;
        create_node(&admin, "node-a", "192.168.77.10").await;
        let rs = |name: &str, uid: &str| Some(owner("apps/v1", "ReplicaSet", name, uid));
        create_pod(
            &admin,
            "tenant-a",
            "client-7d9f-a",
            json!({"app": "client", "pod-template-hash": "7d9f"}),
            rs("client-7d9f", "uid-a"),
            "node-a",
            &client_ip,
        )
        .await;
        create_pod(
            &admin,
            "tenant-b",
            "api-5c7b-b",
            json!({"app": "api", "pod-template-hash": "5c7b"}),
            rs("api-5c7b", "uid-b"),
            "node-a",
            &server_ip,
        )
        .await;
        create_custom(
            &admin,
            "clusternetworkpolicies",
            json!({
                "apiVersion": "policy.networking.k8s.io/v1alpha2",
                "kind": "ClusterNetworkPolicy",
                "metadata": {"name": "tenant-isolation"},
                "spec": {"tier": "Admin", "priority": 5,
                    "subject": {"namespaces": {"matchLabels": {"tenant": "b"}}},
                    "ingress": [{"name": "no-tenant-a", "action": "Deny",
                        "from": [{"namespaces": {"matchLabels": {"tenant": "a"}}}],
                        "protocols": [{"tcp": {"destinationPort":
                            {"range": {"start": 8080, "end": 8081}}}}]}]}
            }),
        )
        .await;
    });

    // The agent reads KUBECONFIG (a token of the shipped ServiceAccount). This target has this
    // one test, so no other thread reads the environment.
    std::env::set_var("KUBECONFIG", &kubeconfig);
    let glob = node.interface_glob();
    let mut agent = Agent::start(&["--interfaces", &glob, "--kube=true"]);
    agent.wait_for_log("inventory updated", Duration::from_secs(20));

    // 1. Established although the Admin tier denies it: drift, decided by the Admin tier.
    one_connection(client_pod, server_pod, open);
    let r = wait_record(&agent, open, 0);
    assert_eq!(r["verdict"], "denied", "{r}");
    assert_eq!(r["outcome"], "established", "{r}");
    assert_eq!(r["ingress"]["verdict"], "denied", "{r}");
    assert_eq!(r["ingress"]["tier"], "admin", "{r}");
    assert_eq!(
        r["ingress"]["decided_by"],
        json!({"kind": "ClusterNetworkPolicy", "name": "tenant-isolation",
            "rule": "no-tenant-a", "action": "Deny"}),
        "{r}"
    );
    assert_eq!(r["egress"]["tier"], "none", "{r}");
    assert_eq!(r["dst"]["workload_name"], "api", "{r}");
    let edge = [
        "src_namespace=\"tenant-a\"",
        "src_workload=\"client\"",
        "dst_namespace=\"tenant-b\"",
        "dst_workload=\"api\"",
    ];
    let drift: Vec<&str> = edge
        .iter()
        .copied()
        .chain([
            "dst_port=\"8080\"",
            "tier=\"admin\"",
            "cni_policy_present=\"false\"",
        ])
        .collect();
    wait_series(
        &agent,
        "flowwatch_enforcement_drift_connections_total",
        &drift,
        "1",
    );
    let connections: Vec<&str> = edge
        .iter()
        .copied()
        .chain(["dst_port=\"8080\"", "verdict=\"denied\"", "tier=\"admin\""])
        .collect();
    wait_series(&agent, "flowwatch_connections_total", &connections, "1");

    // 2. Dropped by the server pod: a blocked attempt the Admin tier intends.
    let attempt = client_pod
        .run(move || TcpStream::connect_timeout(&dropped, Duration::from_secs(1)).is_err())
        .join()
        .unwrap();
    assert!(attempt, "the connection to {dropped} was not dropped");
    let r = wait_record(&agent, dropped, 0);
    assert_eq!(r["verdict"], "denied", "{r}");
    assert_eq!(r["outcome"], "failed", "{r}");
    assert_eq!(r["ingress"]["tier"], "admin", "{r}");
    let blocked: Vec<&str> = edge
        .iter()
        .copied()
        .chain([
            "dst_port=\"8081\"",
            "verdict=\"denied\"",
            "outcome=\"failed\"",
            "tier=\"admin\"",
        ])
        .collect();
    wait_series(&agent, "flowwatch_blocked_attempts_total", &blocked, "1");
    // No drift for the dropped port, and nothing was counted as uncovered.
    let none: Vec<&str> = edge.iter().copied().chain(["dst_port=\"8081\""]).collect();
    assert!(series(
        &agent,
        "flowwatch_enforcement_drift_connections_total",
        &none
    )
    .is_empty());
    assert!(series(&agent, "flowwatch_uncovered_connections_total", &edge).is_empty());
    // The CNI-specific policy is counted by kind.
    agent.wait_metric(
        "flowwatch_cni_policy_objects{kind=\"CiliumNetworkPolicy\"}",
        1.0,
        Duration::from_secs(5),
    );
    assert!(
        r.get("cni_policy_present").is_none() && r["ingress"].get("cni_policy_present").is_none()
    );
    // The optional kind is watched, with no error.
    let synced = agent.metric("flowwatch_kube_cache_synced{kind=\"ClusterNetworkPolicy\"}");
    assert_eq!(synced, Some(1.0));
    assert_eq!(
        agent.metric("flowwatch_kube_objects{kind=\"ClusterNetworkPolicy\"}"),
        Some(1.0)
    );

    let (status, _) = agent.stop();
    assert!(status.success(), "agent exit: {status}\n{}", agent.stderr());
    for bad in ["forbidden", "watch failed"] {
        assert!(
            !agent.stderr().contains(bad),
            "{bad} in the agent's log:\n{}",
            agent.stderr()
        );
    }
}
