//! The policy CLI on manifests as a Git repository holds them: folders, workloads standing for
//! their pods, namespaces known only from `metadata.namespace`, workload and port names in
//! `eval` and `explain` (on the example repository of deploy/examples/shop).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

fn example(part: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/examples/shop")
        .join(part)
}

fn flowwatch() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flowwatch"))
}

/// `flowwatch policy eval --snapshot <paths>` with `lines` on stdin: (answers, stderr).
fn eval(paths: &[PathBuf], lines: &[&str]) -> (Vec<Value>, String) {
    let mut cmd = flowwatch();
    cmd.args(["policy", "eval"]);
    for p in paths {
        cmd.arg("--snapshot").arg(p);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for l in lines {
        writeln!(stdin, "{l}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let answers = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (answers, String::from_utf8(out.stderr).unwrap())
}

#[test]
fn eval_judges_workloads_of_a_folder_of_manifests() {
    let (out, stderr) = eval(
        &[example("repo")],
        &[
            // Workloads by kind, ports by name (resolved on the destination).
            r#"{"id": 1, "src": "shop/deployment/web", "dst": "shop/deployment/api", "port": "api"}"#,
            // `namespace/name` when one workload has that name; a number port.
            r#"{"id": 2, "src": "shop/web", "dst": "shop/api", "port": 9090}"#,
            // Across namespaces, to a StatefulSet.
            r#"{"id": 3, "src": "shop/api", "dst": "data/statefulset/postgres", "port": "postgres"}"#,
            // A CronJob's pods.
            r#"{"id": 4, "src": "ops/cronjob/backup", "dst": "data/postgres", "port": 5432}"#,
            // Not allowed by any rule: both sides are isolated.
            r#"{"id": 5, "src": "shop/web", "dst": "data/postgres", "port": 5432}"#,
            // DNS in kube-system, a namespace no manifest lists: it still has its name label.
            r#"{"id": 6, "src": "shop/web", "dst": "kube-system/coredns", "port": "dns", "protocol": "UDP"}"#,
            r#"{"id": 7, "src": "shop/api", "dst": "shop/redis", "port": "redis"}"#,
            r#"{"id": 8, "src": "shop/web", "dst": "shop/redis", "port": "redis"}"#,
            // Bad names: an unknown kind, an unknown workload, a port the destination lacks.
            r#"{"id": 9, "src": "shop/service/web", "dst": "shop/api", "port": 80}"#,
            r#"{"id": 10, "src": "shop/deployment/nope", "dst": "shop/api", "port": 80}"#,
            r#"{"id": 11, "src": "shop/web", "dst": "shop/api", "port": "postgres"}"#,
            // From outside (an address) to web's named port.
            r#"{"id": 12, "src": "203.0.113.9", "dst": "shop/web", "port": "http"}"#,
        ],
    );
    assert!(
        stderr.is_empty(),
        "no object of the repository is invalid: {stderr}"
    );
    let by_id = |id: i64| {
        out.iter()
            .find(|l| l["id"] == id)
            .unwrap_or_else(|| panic!("no answer {id}: {out:?}"))
    };
    let verdict = |id: i64| by_id(id)["verdict"].as_str().unwrap_or("").to_string();
    let policies = |id: i64, side: &str| by_id(id)[side]["policies"].clone();

    assert_eq!(verdict(1), "allowed");
    assert_eq!(by_id(1)["resolved_port"], 9090);
    assert_eq!(policies(1, "egress"), serde_json::json!(["shop/web"]));
    assert_eq!(policies(1, "ingress"), serde_json::json!(["shop/api"]));
    assert_eq!(
        by_id(1)["src"],
        "shop/deployment/web",
        "input passed through"
    );
    assert_eq!(verdict(2), "allowed");
    assert!(by_id(2).get("resolved_port").is_none());
    assert_eq!(verdict(3), "allowed");
    assert_eq!(
        policies(3, "ingress"),
        serde_json::json!(["data/postgres-ingress"])
    );
    assert_eq!(verdict(4), "allowed");
    assert_eq!(
        policies(4, "egress"),
        serde_json::json!(["ops/backup-egress"])
    );
    assert_eq!(verdict(5), "denied");
    assert_eq!(by_id(5)["egress"]["verdict"], "denied");
    assert_eq!(by_id(5)["ingress"]["verdict"], "denied");
    assert_eq!(verdict(6), "allowed");
    assert_eq!(by_id(6)["resolved_port"], 53);
    assert_eq!(policies(6, "egress"), serde_json::json!(["shop/allow-dns"]));
    assert_eq!(by_id(6)["ingress"]["verdict"], "uncovered");
    assert_eq!(verdict(7), "allowed");
    assert_eq!(verdict(8), "denied");
    let error = |id: i64| by_id(id)["error"].as_str().unwrap_or("").to_string();
    assert!(
        error(9).contains("unknown kind \"service\""),
        "{}",
        error(9)
    );
    assert_eq!(error(10), "src: unknown deployment shop/nope");
    assert!(
        error(11).contains("no container port named \"postgres\" (TCP) on shop/deployment/api"),
        "{}",
        error(11)
    );
    assert_eq!(verdict(12), "allowed");
    assert_eq!(by_id(12)["resolved_port"], 8080);
}

#[test]
fn a_name_shared_by_two_workloads_must_be_qualified() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("two.yaml"),
        "kind: Deployment\nmetadata: {namespace: x, name: db}\nspec: {template: {metadata: {labels: {app: a}}}}\n---\n\
         kind: StatefulSet\nmetadata: {namespace: x, name: db}\nspec: {template: {metadata: {labels: {app: b}}}}\n---\n\
         kind: NetworkPolicy\nmetadata: {namespace: x, name: only-a}\nspec: {podSelector: {matchLabels: {app: a}}}\n",
    )
    .unwrap();
    let (out, _) = eval(
        &[dir.path().to_path_buf()],
        &[
            r#"{"src": "10.0.0.1", "dst": "x/db", "port": 80}"#,
            r#"{"src": "10.0.0.1", "dst": "x/deployment/db", "port": 80}"#,
            r#"{"src": "10.0.0.1", "dst": "x/StatefulSet/db", "port": 80}"#,
        ],
    );
    assert_eq!(
        out[0]["error"],
        "dst: x/db is ambiguous: x/deployment/db, x/statefulset/db; name one as namespace/kind/name"
    );
    assert_eq!(out[1]["verdict"], "denied");
    assert_eq!(out[2]["verdict"], "uncovered");
}

#[test]
fn workloads_of_a_cluster_snapshot_are_named_by_their_pods_owners() {
    // `kubectl get pods` lists replicas, not their Deployment: `ns/deployment/name` is one of
    // its live pods.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pods.yaml"),
        r"
kind: List
items:
- kind: Pod
  metadata:
    namespace: shop
    name: web-5d8c7f9b4-x2x7q
    labels: {app: web, pod-template-hash: 5d8c7f9b4}
    ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-5d8c7f9b4, uid: u1, controller: true}]
  status: {phase: Succeeded, podIP: 10.0.0.9}
- kind: Pod
  metadata:
    namespace: shop
    name: web-5d8c7f9b4-abcde
    labels: {app: web, pod-template-hash: 5d8c7f9b4}
    ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-5d8c7f9b4, uid: u1, controller: true}]
  status: {phase: Running, podIP: 10.0.0.10}
- kind: NetworkPolicy
  metadata: {namespace: shop, name: web}
  spec:
    podSelector: {matchLabels: {app: web}}
    ingress: [{from: [{ipBlock: {cidr: 10.0.0.10/32}}]}]
",
    )
    .unwrap();
    let (out, _) = eval(
        &[dir.path().to_path_buf()],
        &[
            // The live replica stands for the Deployment: its address is the one allowed.
            r#"{"src": "shop/deployment/web", "dst": "shop/web", "port": 80}"#,
            r#"{"src": "shop/web-5d8c7f9b4-abcde", "dst": "shop/deployment/web", "port": 80}"#,
        ],
    );
    assert_eq!(out[0]["ingress"]["reason"], "loopback", "{out:?}");
    assert_eq!(out[1]["verdict"], "allowed", "{out:?}");
}

#[test]
fn explain_and_coverage_take_folders_workloads_and_port_names() {
    let explain = flowwatch()
        .args(["policy", "explain", "--snapshot"])
        .arg(example("repo"))
        .args([
            "--from",
            "ops/cronjob/backup",
            "--to",
            "data/statefulset/postgres",
            "--port",
            "postgres",
        ])
        .output()
        .unwrap();
    assert!(explain.status.success(), "{explain:?}");
    let text = String::from_utf8(explain.stdout).unwrap();
    assert!(text.contains("on 5432/TCP: allowed"), "{text}");

    let bad_port = flowwatch()
        .args(["policy", "explain", "--snapshot"])
        .arg(example("repo"))
        .args(["--from", "shop/web", "--to", "shop/api", "--port", "redis"])
        .output()
        .unwrap();
    assert_eq!(bad_port.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad_port.stderr).contains("--port: no container port named"),
        "{bad_port:?}"
    );

    let coverage = flowwatch()
        .args(["policy", "coverage", "--output", "json", "--snapshot"])
        .arg(example("repo"))
        .output()
        .unwrap();
    assert!(coverage.status.success(), "{coverage:?}");
    let c: Value = serde_json::from_slice(&coverage.stdout).unwrap();
    // Every policy selects a workload; only CoreDNS (no policy in kube-system) is unprotected.
    assert_eq!(c["policies_selecting_no_pod"], serde_json::json!([]));
    assert_eq!(
        c["pods_without_ingress_policy"],
        serde_json::json!(["kube-system/deployment/coredns"])
    );
    let namespaces: Vec<&str> = c["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["namespace"].as_str().unwrap())
        .collect();
    assert_eq!(namespaces, ["data", "kube-system", "ops", "shop"]);
}

#[test]
fn an_unreadable_manifest_in_a_folder_fails_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub/broken.yaml"), "kind: [unclosed\n").unwrap();
    let out = flowwatch()
        .args(["policy", "coverage", "--snapshot"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("broken.yaml"),
        "{out:?}"
    );
}

#[test]
fn coverage_names_workloads_rather_than_every_replica() {
    let dir = tempfile::tempdir().unwrap();
    let replica = |name: &str| {
        format!(
            "- kind: Pod\n  metadata:\n    namespace: shop\n    name: web-5d8c7f9b4-{name}\n    \
             labels: {{app: web, pod-template-hash: 5d8c7f9b4}}\n    ownerReferences: [{{apiVersion: apps/v1, \
             kind: ReplicaSet, name: web-5d8c7f9b4, uid: u1, controller: true}}]\n"
        )
    };
    std::fs::write(
        dir.path().join("cluster.yaml"),
        format!(
            "kind: List\nitems:\n{}{}{}- kind: Pod\n  metadata: {{namespace: shop, name: debug}}\n\
             - kind: StatefulSet\n  metadata: {{namespace: data, name: db}}\n  spec: {{template: {{metadata: {{labels: {{app: db}}}}}}}}\n",
            replica("aaaaa"),
            replica("bbbbb"),
            replica("ccccc"),
        ),
    )
    .unwrap();
    let run = |format: &str| {
        let out = flowwatch()
            .args(["policy", "coverage", "-o", format, "--snapshot"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let text = run("table");
    assert!(
        text.contains(
            "Pods selected by no ingress policy (3):\n  data/statefulset/db\n  shop/debug\n  shop/deployment/web (3 pods)\n"
        ),
        "{text}"
    );
    let json: Value = serde_json::from_str(&run("json")).unwrap();
    assert_eq!(
        json["pods_without_ingress_policy"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    assert_eq!(
        json["workloads_without_egress_policy"],
        serde_json::json!([
            "data/statefulset/db",
            "shop/debug",
            "shop/deployment/web (3 pods)"
        ])
    );
    let md = run("md");
    assert!(
        md.contains("### Pods selected by no egress policy (3)\n\n- `data/statefulset/db`\n"),
        "{md}"
    );
}
