//! The agent's no-cluster mode: the inventory from snapshot files (`kubectl get -o yaml`),
//! reloaded when they change; a broken file keeps the last good inventory.

mod k8s_common;

use std::time::Duration;

use flowwatch::k8s::source::snapshot_loader;
use flowwatch::k8s::ClusterWatch;
use k8s_common::{eventually, label, pod_in, FOLLOW};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

fn pods_yaml(pods: &[(&str, &str, &str)]) -> String {
    let mut s = String::from("apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata:\n    name: shop\n");
    for (name, app, ip) in pods {
        s.push_str(&format!(
            "- apiVersion: v1
  kind: Pod
  metadata:
    name: {name}
    namespace: shop
    labels:
      app: {app}
  spec:
    nodeName: node-a
    containers:
    - name: c
      image: x
  status:
    phase: Running
    podIP: {ip}
    podIPs:
    - ip: {ip}
"
        ));
    }
    s
}

fn reload_errors(w: &ClusterWatch) -> String {
    let mut registry = Registry::with_prefix("flowwatch");
    w.status().register(&mut registry);
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
    out.lines()
        .find(|l| l.starts_with("flowwatch_snapshot_reload_errors_total "))
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn snapshot_files_are_reloaded_when_they_change() {
    let dir = tempfile::tempdir().unwrap();
    let pods = dir.path().join("pods.yaml");
    std::fs::write(&pods, pods_yaml(&[("web-1", "web", "10.244.0.5")])).unwrap();
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let w = ClusterWatch::snapshot_files(
        vec![dir.path().to_path_buf()],
        Duration::from_millis(100),
        snapshot_loader(),
        cancel.clone(),
    );
    assert!(w.wait_synced(Duration::from_secs(5)).await);
    assert!(w.status().is_synced());
    eventually(&w, FOLLOW, "first load", |v| {
        pod_in(v, "shop", "web-1").is_some()
    })
    .await;

    // relabel one pod, add another
    std::fs::write(
        &pods,
        pods_yaml(&[
            ("web-1", "web-v2", "10.244.0.5"),
            ("web-2", "web", "10.244.0.6"),
        ]),
    )
    .unwrap();
    eventually(&w, FOLLOW, "reloaded after a change", |v| {
        pod_in(v, "shop", "web-1").is_some_and(|p| label(p, "app") == Some("web-v2"))
            && pod_in(v, "shop", "web-2").is_some()
    })
    .await;
    let generation = w.current().generation;
    assert_eq!(
        reload_errors(&w),
        "flowwatch_snapshot_reload_errors_total 0"
    );

    // a broken file: the last good inventory stays, the failure is counted
    std::fs::write(&pods, "items: [unclosed").unwrap();
    let start = std::time::Instant::now();
    while reload_errors(&w) != "flowwatch_snapshot_reload_errors_total 1" {
        assert!(
            start.elapsed() < FOLLOW,
            "reload failure not counted: {}",
            reload_errors(&w)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(w.current().generation, generation);
    assert!(pod_in(&w.current(), "shop", "web-2").is_some());
    assert!(w.status().is_synced());

    // fixed, and a new file appears in the directory
    std::fs::write(&pods, pods_yaml(&[("web-2", "web", "10.244.0.6")])).unwrap();
    std::fs::write(
        dir.path().join("more.yaml"),
        pods_yaml(&[("db-0", "db", "10.244.0.7")]).replace(
            "- apiVersion: v1\n  kind: Namespace\n  metadata:\n    name: shop\n",
            "",
        ),
    )
    .unwrap();
    eventually(&w, FOLLOW, "fixed and a new file", |v| {
        pod_in(v, "shop", "web-1").is_none()
            && pod_in(v, "shop", "web-2").is_some()
            && pod_in(v, "shop", "db-0").is_some()
    })
    .await;
}
