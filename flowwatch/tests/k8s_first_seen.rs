//! First-seen edges with a real kube-apiserver: the real agent (`flowwatch run --kube=true
//! --state-dir`, the shipped RBAC) names pods from the API server's watch. 20 rollouts through
//! the API (every pod deleted and created again with a new name and ReplicaSet hash, on a
//! reused address, `web` and `worker` swapping addresses each time) and an agent restart on its
//! state directory every fifth rollout (SIGTERM, or SIGKILL) make no edge new and move no
//! first-seen timestamp; a new port between known workloads afterwards is flagged at the next
//! poll.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use flowwatch_testkit::agent::{free_port, Agent};
use flowwatch_testkit::apiserver::ApiServer;
use flowwatch_testkit::first_seen::{metrics, new_pod_edges, ours, sum, wait_metrics, FIRST_SEEN};
use flowwatch_testkit::k8s::*;
use flowwatch_testkit::netns::Node;
use flowwatch_testkit::privileged;
use flowwatch_testkit::traffic::one_connection;
use serde_json::json;

fn available() -> bool {
    let what = "first-seen edges with the API server";
    privileged::require(what, privileged::root())
        && privileged::require(what, ApiServer::available())
}

/// The pods of `web` and `worker` in rollout `gen` (they swap addresses every rollout); `api`
/// is on pod 1.
fn roles(gen: u32) -> [(&'static str, usize); 3] {
    if gen.is_multiple_of(2) {
        [("web", 0), ("worker", 2), ("api", 1)]
    } else {
        [("web", 2), ("worker", 0), ("api", 1)]
    }
}

fn pod_name(workload: &str, gen: u32) -> String {
    format!("{workload}-{}-r{gen}", hash(gen))
}

fn hash(gen: u32) -> String {
    format!("{:x}", 0x7c9d_6b00 + gen * 977)
}

fn edge(src: &str, port: u16) -> String {
    format!(
        "src_namespace=\"shop\",src_workload=\"{src}\",src_kind=\"deployment\",dst_namespace=\"shop\",dst_workload=\"api\",dst_kind=\"deployment\",dst_port=\"{port}\",protocol=\"TCP\""
    )
}

/// Connections from a workload of `shop` to `api`: both ends named by the current pods.
fn to_api(body: &str) -> f64 {
    ours(body, "flowwatch_connections_total", "shop")
        .iter()
        .filter(|(labels, _)| labels.contains("dst_workload=\"api\""))
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn rollouts_through_the_api_server_and_agent_restarts_make_no_edge_new() {
    if !available() {
        return;
    }
    let node = Node::new(3);
    let p = &node.pods;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = rt.block_on(ApiServer::start());
    let admin = rt.block_on(api.admin_client());
    let (sa_ns, sa_name) = rt.block_on(apply_shipped_rbac(&admin));
    let token = rt.block_on(api.service_account_token(&sa_ns, &sa_name));
    let kubeconfig = api.kubeconfig_for_token("agent", &token);
    let create = |gen: u32| {
        rt.block_on(async {
            for (workload, pod) in roles(gen) {
                let h = hash(gen);
                create_pod(
                    &admin,
                    "shop",
                    &pod_name(workload, gen),
                    json!({"app": workload, "pod-template-hash": h}),
                    Some(owner(
                        "apps/v1",
                        "ReplicaSet",
                        &format!("{workload}-{h}"),
                        &format!("uid-rs-{workload}-{gen}"),
                    )),
                    "node-a",
                    &p[pod].ipv4.to_string(),
                )
                .await;
            }
        });
    };
    rt.block_on(async {
        create_namespace(&admin, "shop", json!({})).await;
        create_node(&admin, "node-a", "192.168.78.10").await;
    });
    create(0);

    // This target has this one test: no other thread reads the environment.
    std::env::set_var("KUBECONFIG", &kubeconfig);
    let state = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let glob = node.interface_glob();
    let args = [
        "--interfaces",
        &glob,
        "--kube=true",
        "--poll-interval-ms",
        "200",
        "--state-dir",
        state.path().to_str().unwrap(),
    ];
    let start = || {
        let mut agent = Agent::start_as_deployed_on(&listen, &args);
        agent.wait_for_log("inventory updated", Duration::from_secs(20));
        agent
    };
    let mut agent = start();
    let api_at = |port| SocketAddr::from((p[1].ipv4, port));
    let traffic = |gen: u32| {
        let [(_, web), (_, worker), _] = roles(gen);
        one_connection(&p[web], &p[1], api_at(8080));
        one_connection(&p[worker], &p[1], api_at(8080));
    };

    // Two new pairs, each a series at the next poll.
    traffic(0);
    let one_poll = Duration::from_secs(2);
    let body = wait_metrics(&agent, "web and worker to api", one_poll, |b| {
        ours(b, FIRST_SEEN, "shop").len() == 2
    });
    assert_eq!(new_pod_edges(&body), 2.0);
    let known: BTreeMap<String, f64> = ours(&body, FIRST_SEEN, "shop");
    assert!(known.contains_key(&edge("web", 8080)) && known.contains_key(&edge("worker", 8080)));

    for gen in 1..=20u32 {
        let views = sum(&metrics(&agent), "flowwatch_kube_views_total");
        rt.block_on(async {
            for (workload, _) in roles(gen - 1) {
                delete_pod(&admin, "shop", &pod_name(workload, gen - 1)).await;
            }
        });
        create(gen);
        if gen.is_multiple_of(5) {
            if gen == 10 {
                agent.kill9();
            } else {
                let (status, _) = agent.stop();
                assert!(status.success(), "{status}\n{}", agent.stderr());
            }
            agent = start();
        } else {
            wait_metrics(&agent, "the rollout seen", Duration::from_secs(15), |b| {
                sum(b, "flowwatch_kube_views_total") > views
            });
            // The deletions and creations may come in more than one view.
            std::thread::sleep(Duration::from_secs(1));
        }
        let before = to_api(&metrics(&agent));
        traffic(gen);
        let body = wait_metrics(&agent, "the rollout's connections", one_poll * 5, |b| {
            to_api(b) >= before + 2.0
        });
        // Named by the new pods' workloads: the same two edges, first seen when they were.
        assert_eq!(ours(&body, FIRST_SEEN, "shop"), known, "rollout {gen}");
        let want = if gen < 5 { 2.0 } else { 0.0 };
        assert_eq!(new_pod_edges(&body), want, "rollout {gen}");
    }

    // A new port between the known workloads: new at the next poll.
    let [(_, web), _, _] = roles(20);
    one_connection(&p[web], &p[1], api_at(9090));
    let body = wait_metrics(&agent, "a new port", one_poll, |b| {
        ours(b, FIRST_SEEN, "shop").contains_key(&edge("web", 9090))
    });
    assert_eq!(new_pod_edges(&body), 1.0);
    let (status, _) = agent.stop();
    assert!(status.success(), "{status}\n{}", agent.stderr());
    assert!(
        !agent.stderr().contains("forbidden"),
        "the shipped RBAC was not enough:\n{}",
        agent.stderr()
    );
}
