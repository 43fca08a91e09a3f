//! The real agent with an inventory holding objects it cannot use (a pod whose IP does not
//! parse, a Service with a bad ClusterIP, a NetworkPolicy with a bad CIDR): each is logged with
//! its name and field and counted in the metrics, and the rest keeps working: a real connection
//! between two good pods is named and judged.

use std::net::SocketAddr;
use std::time::Duration;

use flowwatch_testkit::agent::Agent;
use flowwatch_testkit::netns::Node;
use flowwatch_testkit::privileged;
use flowwatch_testkit::traffic::{one_connection, wait_record};

#[test]
fn unusable_objects_are_logged_and_counted_and_the_rest_works() {
    if !privileged::root_test("agent with unusable objects") {
        return;
    }
    let node = Node::new(2);
    let (client, server) = (&node.pods[0], &node.pods[1]);
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("cluster.yaml");
    let unusable = r"- apiVersion: v1
  kind: Pod
  metadata: {name: odd, namespace: app}
  spec: {containers: [{name: o, image: x}]}
  status: {podIP: 10.244.9.0010}
- apiVersion: v1
  kind: Service
  metadata: {name: odd, namespace: app}
  spec: {clusterIP: 10.96.0.999, ports: [{port: 80}]}
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: broken, namespace: app}
  spec:
    podSelector: {}
    ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/99}}]}]
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: server-ingress, namespace: app}
  spec:
    podSelector: {matchLabels: {app: server}}
    ingress: [{from: [{podSelector: {matchLabels: {app: client}}}]}]
";
    std::fs::write(
        &snapshot,
        flowwatch_testkit::snapshot::client_and_server(client, server, unusable),
    )
    .unwrap();
    let glob = node.interface_glob();
    let snapshot_arg = snapshot.display().to_string();
    let mut agent = Agent::start(&["--interfaces", &glob, "--snapshot", &snapshot_arg]);
    agent.wait_for_log("inventory updated", Duration::from_secs(10));

    let log = agent.stderr();
    for (object, field) in [
        ("Pod app/odd", "status.podIP"),
        ("Service app/odd", "spec.clusterIP"),
        (
            "NetworkPolicy app/broken",
            "spec.ingress[0].from[0].ipBlock.cidr",
        ),
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains("object skipped") && l.contains(object) && l.contains(field)),
            "{object} {field} not logged:\n{log}"
        );
    }
    agent.wait_metric(
        "flowwatch_inventory_objects_skipped",
        2.0,
        Duration::from_secs(5),
    );
    assert_eq!(agent.metric("flowwatch_policies_invalid"), Some(1.0));

    let dst = SocketAddr::from((server.ipv4, 8080));
    one_connection(client, server, dst);
    let r = wait_record(&agent, dst, 0);
    assert_eq!(r["src"]["name"], "client", "{r}");
    assert_eq!(r["dst"]["name"], "server", "{r}");
    assert_eq!(r["verdict"], "allowed", "{r}");
    let (status, _) = agent.stop();
    assert!(status.success(), "{}", agent.stderr());
}
