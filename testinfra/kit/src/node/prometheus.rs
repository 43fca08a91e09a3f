//! Prometheus scraping the agent the way the chart means it to be found, through Kubernetes
//! service discovery: the annotation-based job every Prometheus Helm chart ships (the chart's
//! Service carries `prometheus.io/scrape`, `/port`, `/path`), and a pod job selecting what the
//! chart's PodMonitor selects (the agent's pods, port `metrics`), both with the `node` label the
//! chart's ServiceMonitor and PodMonitor add. Upstream Prometheus (`testinfra/prometheus`,
//! `cargo xtask k8s-bins`) runs on the node as a host process with a ServiceAccount and RBAC of
//! its own, as a cluster's Prometheus would.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use flowwatch_testnode::node::NODE_IP;
use flowwatch_testnode::sys::{enter, Join};
use flowwatch_testnode::Node;

const LISTEN: &str = "127.0.0.1:19090";

/// The jobs of the configuration: (job name, how it discovers the agent).
pub const JOBS: [&str; 2] = ["kubernetes-service-endpoints", "flowwatch-pods"];

const RBAC: &str = r#"apiVersion: v1
kind: Namespace
metadata:
  name: monitoring
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: prometheus
  namespace: monitoring
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: flowwatch-test-prometheus
rules:
- apiGroups: [""]
  resources: [services, endpoints, pods, nodes]
  verbs: [get, list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: flowwatch-test-prometheus
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: flowwatch-test-prometheus
subjects:
- kind: ServiceAccount
  name: prometheus
  namespace: monitoring
"#;

const CONFIG: &str = r#"global:
  scrape_interval: 2s
  scrape_timeout: 2s
scrape_configs:
# The usual annotation-based job: Services annotated prometheus.io/scrape.
- job_name: kubernetes-service-endpoints
  kubernetes_sd_configs:
  - role: endpointslice
    api_server: https://@NODE_IP@:6443
    authorization: {credentials_file: "@TOKEN@"}
    tls_config: {ca_file: "@CA@"}
  relabel_configs:
  - {source_labels: [__meta_kubernetes_service_annotation_prometheus_io_scrape], action: keep, regex: "true"}
  - {source_labels: [__meta_kubernetes_service_annotation_prometheus_io_path], action: replace, target_label: __metrics_path__, regex: "(.+)"}
  - {source_labels: [__address__, __meta_kubernetes_service_annotation_prometheus_io_port], action: replace, regex: '([^:]+)(?::\d+)?;(\d+)', replacement: "$1:$2", target_label: __address__}
  - {source_labels: [__meta_kubernetes_namespace], target_label: namespace}
  - {source_labels: [__meta_kubernetes_pod_name], target_label: pod}
  - {source_labels: [__meta_kubernetes_pod_node_name], target_label: node}
# What the chart's PodMonitor selects: the agent's pods, their port named metrics.
- job_name: flowwatch-pods
  kubernetes_sd_configs:
  - role: pod
    api_server: https://@NODE_IP@:6443
    authorization: {credentials_file: "@TOKEN@"}
    tls_config: {ca_file: "@CA@"}
    namespaces: {names: [flowwatch]}
  relabel_configs:
  - {source_labels: [__meta_kubernetes_pod_label_app_kubernetes_io_name, __meta_kubernetes_pod_container_port_name], action: keep, regex: "flowwatch;metrics"}
  - {source_labels: [__meta_kubernetes_pod_name], target_label: pod}
  - {source_labels: [__meta_kubernetes_pod_node_name], target_label: node}
"#;

/// Starts Prometheus on the node (killed with it); returns when it answers.
pub fn start(node: &Node, work: &Path) {
    let prometheus = &node.bins.prometheus;
    node.apply(RBAC).expect("Prometheus' RBAC");
    let dir = work.join("prometheus");
    std::fs::create_dir_all(&dir).expect("prometheus dir");
    let token = node
        .kubectl(&[
            "create",
            "token",
            "prometheus",
            "-n",
            "monitoring",
            "--duration=1h",
        ])
        .expect("the ServiceAccount's token");
    std::fs::write(dir.join("token"), token.trim()).expect("token file");
    let config = CONFIG
        .replace("@NODE_IP@", NODE_IP)
        .replace("@TOKEN@", &dir.join("token").display().to_string())
        .replace(
            "@CA@",
            &node.dir.join("certs/apiserver.crt").display().to_string(),
        );
    std::fs::write(dir.join("prometheus.yml"), config).expect("config");
    let mut cmd = Command::new(prometheus);
    cmd.arg(format!(
        "--config.file={}",
        dir.join("prometheus.yml").display()
    ))
    .arg(format!(
        "--storage.tsdb.path={}",
        dir.join("data").display()
    ))
    .arg(format!("--web.listen-address={LISTEN}"))
    .arg("--log.level=warn");
    node.spawn_extra("prometheus", &mut cmd)
        .unwrap_or_else(|e| panic!("starting prometheus: {e:#}"));
    let up = flowwatch_testnode::sys::wait_until(Duration::from_mins(1), || {
        get(node, "/-/ready").is_ok()
    });
    assert!(
        up,
        "prometheus not ready within 60 s:\n{}",
        std::fs::read_to_string(node.log_path("prometheus")).unwrap_or_default()
    );
}

/// GET on Prometheus' HTTP API, from inside the node's netns (busybox wget).
pub fn get(node: &Node, path_and_query: &str) -> Result<String, String> {
    let mut c = Command::new("busybox");
    c.args(["wget", "-q", "-O", "-"])
        .arg(format!("http://{LISTEN}{path_and_query}"));
    enter(
        &mut c,
        Join {
            mnt: None,
            ..node.join()
        },
    );
    flowwatch_testnode::sys::run(&mut c).map_err(|e| format!("{e:#}"))
}

fn json(node: &Node, path_and_query: &str) -> serde_json::Value {
    let text = get(node, path_and_query).unwrap_or_else(|e| panic!("{path_and_query}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path_and_query}: {e}: {text}"))
}

/// An instant query's vector: (labels, value) per series.
pub fn query(node: &Node, promql: &str) -> Vec<(serde_json::Value, f64)> {
    let v = json(node, &format!("/api/v1/query?query={}", encode(promql)));
    v["data"]["result"]
        .as_array()
        .unwrap_or_else(|| panic!("{promql}: {v}"))
        .iter()
        .map(|r| {
            let value = r["value"][1]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(f64::NAN);
            (r["metric"].clone(), value)
        })
        .collect()
}

/// Waits until each job has exactly one active target, the agent pod's `/metrics` on the
/// node's address (host network), healthy, labelled with the node and the pod.
pub fn wait_for_the_agent_targets(node: &Node, agent_pod: &str) {
    let want_url = format!("http://{NODE_IP}:9810/metrics");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let v = json(node, "/api/v1/targets?state=active");
        let targets = v["data"]["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut problems = Vec::new();
        for job in JOBS {
            let of_job: Vec<&serde_json::Value> = targets
                .iter()
                .filter(|t| t["labels"]["job"] == job)
                .collect();
            match of_job[..] {
                [t] => {
                    let checks = [
                        ("scrapeUrl", t["scrapeUrl"].as_str(), want_url.as_str()),
                        ("health", t["health"].as_str(), "up"),
                        ("node", t["labels"]["node"].as_str(), node.name.as_str()),
                        ("pod", t["labels"]["pod"].as_str(), agent_pod),
                    ];
                    for (what, got, want) in checks {
                        if got != Some(want) {
                            problems.push(format!("{job}: {what} {got:?}, want {want:?}"));
                        }
                    }
                }
                _ => problems.push(format!("{job}: {} targets", of_job.len())),
            }
        }
        if problems.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus' discovery of the agent: {problems:?}\ntargets: {targets:#?}\n{}",
            std::fs::read_to_string(node.log_path("prometheus")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Percent-encoding of a query parameter (everything but unreserved characters).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn encodes_a_query() {
    assert_eq!(encode("up{job=\"a b\"}"), "up%7Bjob%3D%22a%20b%22%7D");
}
