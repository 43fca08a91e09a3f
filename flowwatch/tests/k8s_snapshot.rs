//! The agent's no-cluster mode: the inventory from snapshot files (`kubectl get -o yaml`),
//! reloaded when they change; a broken file keeps the last good inventory.

use std::fmt::Write as _;
use std::time::Duration;

use flowwatch::k8s::source::snapshot_loader;
use flowwatch::k8s::ClusterWatch;
use flowwatch_testkit::k8s::{eventually, label, pod_in, FOLLOW};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

fn pods_yaml(pods: &[(&str, &str, &str)]) -> String {
    let mut s = String::from("apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata:\n    name: shop\n");
    for (name, app, ip) in pods {
        let _ = write!(
            s,
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
        );
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

/// A watch of `path` (polled every 100 ms) once it has loaded `web-1`; the guard stops it.
async fn watching_web_1(path: std::path::PathBuf) -> (ClusterWatch, tokio_util::sync::DropGuard) {
    let cancel = CancellationToken::new();
    let w = ClusterWatch::snapshot_files(
        vec![path],
        Duration::from_millis(100),
        snapshot_loader(),
        cancel.clone(),
    );
    assert!(w.wait_synced(Duration::from_secs(5)).await);
    eventually(&w, FOLLOW, "first load", |v| {
        pod_in(v, "shop", "web-1").is_some()
    })
    .await;
    (w, cancel.drop_guard())
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

async fn wait_reload_errors(w: &ClusterWatch, n: u64, what: &str) {
    let want = format!("flowwatch_snapshot_reload_errors_total {n}");
    let start = std::time::Instant::now();
    while reload_errors(w) != want {
        assert!(
            start.elapsed() < FOLLOW * 2,
            "{what}: reload failure not counted ({})",
            reload_errors(w)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Issue 17: an empty file, a bare YAML string, a directory with no snapshot file: each is a
/// failed reload (counted; the last good inventory stays), never an empty cluster. An
/// intentionally empty cluster is said with an empty `kind: List`.
#[tokio::test]
async fn what_is_not_a_cluster_dump_never_replaces_the_last_good_inventory() {
    type Breakage<'a> = (&'a str, Box<dyn Fn() + 'a>);
    let dir = tempfile::tempdir().unwrap();
    let snapshots = dir.path().join("snapshots");
    std::fs::create_dir(&snapshots).unwrap();
    let pods = snapshots.join("pods.yaml");
    std::fs::write(&pods, pods_yaml(&[("web-1", "web", "10.244.0.5")])).unwrap();
    let (w, _stop) = watching_web_1(snapshots.clone()).await;
    let generation = w.current().generation;

    let broken: [Breakage; 4] = [
        (
            "an empty file",
            Box::new(|| std::fs::write(&pods, "").unwrap()),
        ),
        (
            "a bare YAML string",
            Box::new(|| std::fs::write(&pods, "just a string\n").unwrap()),
        ),
        (
            "a document without a kind",
            Box::new(|| std::fs::write(&pods, "metadata: {name: x}\n").unwrap()),
        ),
        (
            "a directory with no snapshot file",
            Box::new(|| {
                std::fs::remove_file(&pods).unwrap();
                std::fs::write(snapshots.join("README.txt"), "moved").unwrap();
            }),
        ),
    ];
    for (n, (what, break_it)) in broken.iter().enumerate() {
        break_it();
        wait_reload_errors(&w, n as u64 + 1, what).await;
        assert_eq!(
            w.current().generation,
            generation,
            "{what} replaced the view"
        );
        assert!(pod_in(&w.current(), "shop", "web-1").is_some(), "{what}");
    }

    // An empty List is an empty cluster, on purpose.
    std::fs::write(&pods, "apiVersion: v1\nkind: List\nitems: []\n").unwrap();
    eventually(&w, FOLLOW * 2, "an intentionally empty cluster", |v| {
        v.generation > generation && v.inventory.pods.is_empty()
    })
    .await;
    assert_eq!(
        reload_errors(&w),
        "flowwatch_snapshot_reload_errors_total 4"
    );
}

/// A file that a writer is still writing (non-atomically, in pieces) is not loaded half-way:
/// the change is loaded once it has settled.
#[tokio::test]
async fn a_file_written_in_pieces_is_loaded_once_complete() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let pods = dir.path().join("pods.yaml");
    std::fs::write(&pods, pods_yaml(&[("web-1", "web", "10.244.0.5")])).unwrap();
    let (w, _stop) = watching_web_1(pods.clone()).await;
    let generation = w.current().generation;
    // Three pods, written as `kubectl get ... > file` does: truncate, then chunks with pauses
    // shorter than a poll. Each prefix that ends at an item boundary is valid YAML with fewer
    // pods; none of them may be loaded.
    let full = pods_yaml(&[
        ("web-1", "web", "10.244.0.5"),
        ("web-2", "web", "10.244.0.6"),
        ("web-3", "web", "10.244.0.7"),
    ]);
    let mut f = std::fs::File::create(&pods).unwrap();
    for chunk in full.as_bytes().chunks(full.len() / 6 + 1) {
        f.write_all(chunk).unwrap();
        f.flush().unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
        let v = w.current();
        assert!(
            v.generation == generation || v.inventory.pods.len() == 3,
            "a partial file was loaded: {} pods",
            v.inventory.pods.len()
        );
    }
    drop(f);
    eventually(&w, FOLLOW, "the complete file", |v| {
        v.inventory.pods.len() == 3
    })
    .await;
}

/// Issue 17: a snapshot *file* replaced by a directory (a `mkdir` or a volume mount over its
/// path) is a failed reload, not an empty cluster; the file back is loaded again.
#[tokio::test]
async fn a_snapshot_file_replaced_by_a_directory_is_a_failed_reload() {
    let dir = tempfile::tempdir().unwrap();
    let pods = dir.path().join("pods.yaml");
    std::fs::write(&pods, pods_yaml(&[("web-1", "web", "10.244.0.5")])).unwrap();
    let (w, _stop) = watching_web_1(pods.clone()).await;
    let generation = w.current().generation;
    std::fs::remove_file(&pods).unwrap();
    std::fs::create_dir(&pods).unwrap();
    wait_reload_errors(&w, 1, "a directory where the file was").await;
    assert_eq!(w.current().generation, generation);
    assert!(pod_in(&w.current(), "shop", "web-1").is_some());
    // An (empty) directory stays a failed state, it is not reloaded as a new, empty view.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(w.current().generation, generation);

    std::fs::remove_dir(&pods).unwrap();
    std::fs::write(&pods, pods_yaml(&[("web-2", "web", "10.244.0.6")])).unwrap();
    eventually(&w, FOLLOW, "the file back", |v| {
        pod_in(v, "shop", "web-2").is_some() && pod_in(v, "shop", "web-1").is_none()
    })
    .await;
}

/// Issue 17: in the agent, a 117 KB file of nesting held up the next good snapshot for 31 s
/// (and burnt 11 s of CPU). Now it is refused at once as a failed reload, and a good snapshot
/// written right after it is loaded within the usual follow time.
#[tokio::test]
async fn a_deeply_nested_snapshot_is_refused_at_once_and_the_next_good_one_follows() {
    let dir = tempfile::tempdir().unwrap();
    let pods = dir.path().join("pods.yaml");
    std::fs::write(&pods, pods_yaml(&[("web-1", "web", "10.244.0.5")])).unwrap();
    let (w, _stop) = watching_web_1(dir.path().to_path_buf()).await;
    let bombs = [
        // 117 KB of open flow sequences (YAML) and of nested JSON objects.
        format!("kind: List\nitems: {}\n", "[".repeat(117 * 1024)),
        format!(
            "{{\"kind\": \"List\", \"items\": [{}]}}\n",
            "{\"a\": ".repeat(117 * 1024 / 6)
        ),
    ];
    let mut last_good = "web-1".to_string();
    for (n, bomb) in bombs.iter().enumerate() {
        std::fs::write(&pods, bomb).unwrap();
        wait_reload_errors(&w, n as u64 + 1, "a nested bomb").await;
        assert!(pod_in(&w.current(), "shop", &last_good).is_some());
        // The good snapshot right after: loaded within the follow time, not 31 s later.
        let name = format!("web-{}", n + 2);
        std::fs::write(&pods, pods_yaml(&[(&name, "web", "10.244.0.6")])).unwrap();
        let written = std::time::Instant::now();
        eventually(&w, FOLLOW, "the good snapshot after the bomb", |v| {
            pod_in(v, "shop", &name).is_some()
        })
        .await;
        eprintln!(
            "good snapshot {} loaded {:?} after writing",
            n + 1,
            written.elapsed()
        );
        last_good = name;
    }
}
