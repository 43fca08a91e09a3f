//! The chart on the node: `helm` against the node's API server, `helm install` as the chart's
//! README says, and the agent's metrics scraped through the API server's pod proxy.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use flowwatch_testnode::sys::{enter, Join};
use flowwatch_testnode::Node;

use super::image;
use super::metrics::{self, Sample};
use crate::helm::helm;

/// helm for the node's admin, run in the node's netns, its caches in `work`.
pub fn helm_cmd(node: &Node, work: &Path) -> Command {
    let mut c = Command::new(helm().expect("helm"));
    c.env("KUBECONFIG", node.kubeconfig())
        .env("HELM_CACHE_HOME", work.join("helm/cache"))
        .env("HELM_CONFIG_HOME", work.join("helm/config"))
        .env("HELM_DATA_HOME", work.join("helm/data"));
    enter(
        &mut c,
        Join {
            mnt: None,
            ..node.join()
        },
    );
    c
}

/// `helm install` as the chart's README says: the namespace created and labelled for Pod
/// Security Admission first, then the chart with the image overridden and `extra` arguments
/// (`--set`, `--values`) of the caller's.
pub fn install(node: &Node, work: &Path, extra: &[&str]) {
    node.kubectl(&["create", "namespace", "flowwatch"])
        .expect("namespace");
    node.kubectl(&[
        "label",
        "namespace",
        "flowwatch",
        "pod-security.kubernetes.io/enforce=privileged",
    ])
    .expect("label");
    let started = Instant::now();
    let out = helm_cmd(node, work)
        .args(["install", "flowwatch"])
        .arg(crate::helm::chart())
        .args(["--namespace", "flowwatch"])
        .args(["--set", &format!("image.repository={}", image::REPOSITORY)])
        .args(["--set", &format!("image.tag={}", image::TAG)])
        .args(extra)
        .args(["--wait", "--timeout", "180s"])
        .output()
        .expect("helm");
    assert!(
        out.status.success(),
        "helm install: {}\n{}\nagent pod: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        node.kubectl(&["describe", "pods", "-n", "flowwatch"])
            .unwrap_or_default()
    );
    // helm's --wait accepts a DaemonSet with maxUnavailable pods not ready (1 here): wait for
    // the rollout as kubectl sees it.
    node.kubectl(&[
        "rollout",
        "status",
        "daemonset/flowwatch",
        "-n",
        "flowwatch",
        "--timeout=120s",
    ])
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}\n{}",
            node.kubectl(&["describe", "pods", "-n", "flowwatch"])
                .unwrap_or_default()
        )
    });
    eprintln!("helm install, agent Ready: {:.1?}", started.elapsed());
    let ready = node
        .kubectl(&[
            "get",
            "daemonset",
            "flowwatch",
            "-n",
            "flowwatch",
            "-o",
            "jsonpath={.status.numberReady}/{.status.desiredNumberScheduled}",
        ])
        .expect("daemonset");
    assert_eq!(ready, "1/1", "the DaemonSet's pod is Ready");
}

/// The agent's `/metrics`, through the API server's proxy to its pod.
pub fn scrape(node: &Node, agent_pod: &str) -> Vec<Sample> {
    let text = node
        .kubectl(&[
            "get",
            "--raw",
            &format!("/api/v1/namespaces/flowwatch/pods/{agent_pod}:9810/proxy/metrics"),
        ])
        .unwrap_or_else(|e| panic!("scraping the agent through the API server: {e:#}"));
    metrics::parse(&text)
}
