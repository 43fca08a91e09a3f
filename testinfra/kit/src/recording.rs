//! Recording real traffic of netns pods for the offline commands: the agent with a snapshot
//! naming the pods (a `shop` namespace on `node-a`), and a real Prometheus scraping it.

use std::path::Path;
use std::time::Duration;

use super::agent::Agent;
use super::netns::{Node, Pod};
use super::prometheus::{Job, Prometheus};

/// One pod of namespace `shop` on `node-a` as a List item: its labels (`app: web, ...`), its
/// controller (`("ReplicaSet", "web-5d8c7f9b4")`), its address and container ports
/// (`{name: http, containerPort: 80}`, or empty).
pub fn shop_pod(name: &str, labels: &str, owner: (&str, &str), pod: &Pod, ports: &str) -> String {
    format!(
        r"- apiVersion: v1
  kind: Pod
  metadata:
    name: {name}
    namespace: shop
    labels: {{{labels}}}
    ownerReferences: [{{apiVersion: apps/v1, kind: {kind}, name: {owner}, uid: u-{name}, controller: true}}]
  spec: {{nodeName: node-a, containers: [{{name: c, image: x, ports: [{ports}]}}]}}
  status: {{phase: Running, podIP: {ip}}}
",
        kind = owner.0,
        owner = owner.1,
        ip = pod.ipv4,
    )
}

/// A snapshot List of namespace `shop`, node `node-a` and these pod items.
pub fn shop_snapshot(pods: &[String]) -> String {
    format!(
        "apiVersion: v1\nkind: List\nitems:\n\
         - {{apiVersion: v1, kind: Namespace, metadata: {{name: shop}}}}\n\
         - {{apiVersion: v1, kind: Node, metadata: {{name: node-a}}}}\n{}",
        pods.concat()
    )
}

/// The agent on `node`'s pod interfaces with `snapshot` as its inventory, once it has read
/// it, and a Prometheus that scrapes it, once the first scrape succeeded.
pub fn agent_and_prometheus(node: &Node, snapshot: &Path) -> (Agent, Prometheus) {
    let mut agent = Agent::start(&[
        "--interfaces",
        &node.interface_glob(),
        "--snapshot",
        snapshot.to_str().unwrap(),
        "--node-name",
        "node-a",
    ]);
    agent.wait_for_log("inventory updated", Duration::from_secs(10));
    let prom = Prometheus::start(&[Job::new("flowwatch", &[&agent.listen])], &[]);
    prom.wait_for("up{job=\"flowwatch\"}", Duration::from_secs(30), |r| {
        r.first().is_some_and(|s| s.value == 1.0)
    });
    (agent, prom)
}
