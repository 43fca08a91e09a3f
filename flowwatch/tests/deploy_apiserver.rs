//! Every rendered manifest passes a server-side dry-run apply (`kubectl apply --server-side
//! --dry-run=server --validate=strict`) against a real kube-apiserver: the plain manifests, the
//! Prometheus Operator objects (against stand-in CRDs: the real ones are not vendored here), and
//! the chart rendered with every option on. Also: Pod Security Admission flags the DaemonSet in a
//! `baseline` namespace (why the chart's namespace must allow `privileged`), a broken manifest
//! is rejected (the dry run really validates), and the README's install (create and label the
//! namespace, then `helm install`) works, while `--create-namespace` with `namespace.create=true`
//! collides.
//!
//! What the ServiceAccount may do ("can-i") is checked in `k8s_rbac.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;

use flowwatch_testkit::apiserver::ApiServer;
use flowwatch_testkit::helm::{self, helm, template};
use flowwatch_testkit::paths::repo;
use flowwatch_testkit::privileged::require;

/// Stand-ins for the Prometheus Operator CRDs: the real group, kinds and scope, with an open
/// schema. They prove the objects are well-formed Kubernetes objects of those kinds; the
/// operator's own schema is not checked here.
const MONITORING_CRDS: &str = r"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: servicemonitors.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: ServiceMonitor, listKind: ServiceMonitorList, plural: servicemonitors, singular: servicemonitor}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec: {type: object, x-kubernetes-preserve-unknown-fields: true}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: podmonitors.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: PodMonitor, listKind: PodMonitorList, plural: podmonitors, singular: podmonitor}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec: {type: object, x-kubernetes-preserve-unknown-fields: true}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: prometheusrules.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: PrometheusRule, listKind: PrometheusRuleList, plural: prometheusrules, singular: prometheusrule}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              required: [groups]
              properties:
                groups:
                  type: array
                  items:
                    type: object
                    required: [name, rules]
                    properties:
                      name: {type: string}
                      # The operator's Duration (a group's own evaluation interval).
                      interval:
                        type: string
                        pattern: '^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$'
                      rules:
                        type: array
                        items:
                          type: object
                          required: [expr]
                          properties:
                            alert: {type: string}
                            record: {type: string}
                            expr: {type: string}
                            for: {type: string}
                            labels: {type: object, additionalProperties: {type: string}}
                            annotations: {type: object, additionalProperties: {type: string}}
";

struct Kubectl<'a> {
    api: &'a ApiServer,
    binary: PathBuf,
}

impl Kubectl<'_> {
    /// Runs kubectl with `args`, feeding `stdin`; returns (success, stdout, stderr).
    fn run(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        use std::io::Write;
        let mut child = Command::new(&self.binary)
            .arg(format!(
                "--kubeconfig={}",
                self.api.kubeconfig_path().display()
            ))
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run kubectl");
        let mut pipe = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            pipe.write_all(s.as_bytes()).unwrap();
        }
        drop(pipe);
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let (ok, out, err) = self.run(args, stdin);
        assert!(
            ok,
            "kubectl {args:?} failed:\n{out}{err}\n--- input ---\n{}",
            stdin.unwrap_or("")
        );
        out
    }

    fn dry_run(&self, manifest: &str) -> (bool, String, String) {
        self.run(
            &[
                "apply",
                "--server-side",
                "--dry-run=server",
                "--validate=strict",
                "--field-manager=flowwatch-test",
                "-f",
                "-",
            ],
            Some(manifest),
        )
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn objects(manifest: &str) -> usize {
    manifest.lines().filter(|l| l.starts_with("kind: ")).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rendered_manifest_passes_a_server_side_dry_run() {
    if !require("server-side dry run", ApiServer::available()) {
        return;
    }
    let kubectl = match flowwatch_testkit::apiserver::kubectl() {
        Ok(k) => k,
        Err(e) => {
            require("server-side dry run", Err(e));
            return;
        }
    };
    let helm = match helm() {
        Ok(h) => h,
        Err(e) => {
            require("server-side dry run", Err(e));
            return;
        }
    };
    let api = ApiServer::start().await;
    let k = Kubectl {
        api: &api,
        binary: kubectl,
    };

    k.ok(
        &["apply", "--server-side", "-f", "-"],
        Some(MONITORING_CRDS),
    );
    k.ok(
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/servicemonitors.monitoring.coreos.com",
            "crd/podmonitors.monitoring.coreos.com",
            "crd/prometheusrules.monitoring.coreos.com",
        ],
        None,
    );
    // Namespaced objects need their namespace to exist for a dry run.
    k.ok(&["create", "namespace", "flowwatch"], None);
    k.ok(
        &[
            "label",
            "namespace",
            "flowwatch",
            "pod-security.kubernetes.io/enforce=privileged",
        ],
        None,
    );

    let all_options = template(
        &helm,
        &[
            "--set",
            "serviceMonitor.enabled=true,prometheusRule.enabled=true,podMonitor.enabled=true,namespace.create=true,tolerateAllTaints=true,agent.flowLog=-,agent.labelAllowlist={app,team},extraCapabilities={SYS_RESOURCE},image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let core = std::fs::read_to_string(repo().join("deploy/manifests/flowwatch.yaml")).unwrap();
    let operator =
        std::fs::read_to_string(repo().join("deploy/manifests/flowwatch-prometheus-operator.yaml"))
            .unwrap();
    for (name, manifest) in [
        ("deploy/manifests/flowwatch.yaml", core.as_str()),
        (
            "deploy/manifests/flowwatch-prometheus-operator.yaml",
            operator.as_str(),
        ),
        ("chart with every option", all_options.as_str()),
    ] {
        let (ok, out, err) = k.dry_run(manifest);
        assert!(ok, "{name}: server-side dry run failed:\n{out}{err}");
        let accepted = out
            .lines()
            .filter(|l| l.contains("(server dry run)"))
            .count();
        assert_eq!(
            accepted,
            objects(manifest),
            "{name}: not every object was accepted:\n{out}{err}"
        );
        assert!(
            !err.contains("Warning"),
            "{name}: the server warned:\n{err}"
        );
    }
    // The core manifest holds what a DaemonSet install needs.
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Service",
        "DaemonSet",
        "ConfigMap",
    ] {
        assert!(
            core.contains(&format!("\nkind: {kind}\n")),
            "deploy/manifests/flowwatch.yaml has no {kind}"
        );
    }

    // In a namespace enforcing `baseline`, Pod Security Admission flags the DaemonSet's pods.
    k.ok(&["create", "namespace", "baseline-only"], None);
    k.ok(
        &[
            "label",
            "namespace",
            "baseline-only",
            "pod-security.kubernetes.io/enforce=baseline",
        ],
        None,
    );
    let ds_only = core
        .split("\n---\n")
        .find(|d| d.contains("\nkind: DaemonSet\n"))
        .unwrap()
        .replace("namespace: flowwatch", "namespace: baseline-only");
    let (_, out, err) = k.dry_run(&ds_only);
    assert!(
        err.contains("would violate PodSecurity") && err.contains("hostNetwork"),
        "expected a PodSecurity warning:\n{out}{err}"
    );

    // The dry run validates for real: an unknown field is rejected.
    let broken = core.replacen("hostNetwork: true", "hostNetworkz: true", 1);
    let (ok, out, err) = k.dry_run(&broken);
    assert!(
        !ok && format!("{out}{err}").contains("hostNetworkz"),
        "a broken manifest passed:\n{out}{err}"
    );

    // The README's install, for real: into the namespace created and labelled above (`kubectl
    // create namespace flowwatch`, `kubectl label ... enforce=privileged`), `helm install`.
    let helm_run = |args: &[&str]| {
        let out = Command::new(&helm)
            .arg(format!("--kubeconfig={}", api.kubeconfig_path().display()))
            .args(args)
            .output()
            .expect("run helm");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    // The test API server is built without version stamps (it reports v0.0.0), which the chart's
    // `kubeVersion` would refuse: install a copy of the chart without that line.
    let chart = api.dir().join("chart");
    copy_dir(&helm::chart(), &chart);
    let chart_yaml = std::fs::read_to_string(chart.join("Chart.yaml")).unwrap();
    assert!(chart_yaml.contains("\nkubeVersion:"), "{chart_yaml}");
    let chart_yaml: String = chart_yaml
        .lines()
        .filter(|l| !l.starts_with("kubeVersion:"))
        .flat_map(|l| [l, "\n"])
        .collect();
    std::fs::write(chart.join("Chart.yaml"), chart_yaml).unwrap();
    let chart = chart.to_str().unwrap();
    let (ok, out) = helm_run(&["install", "flowwatch", chart, "--namespace", "flowwatch"]);
    assert!(ok, "helm install as the README says failed:\n{out}");
    assert!(!out.contains("PodSecurity"), "{out}");
    k.ok(&["-n", "flowwatch", "get", "daemonset/flowwatch"], None);
    // Why the README has the namespace made first rather than by the chart: with
    // `--create-namespace`, the chart's Namespace collides with the one helm just created.
    let (ok, out) = helm_run(&[
        "install",
        "other",
        chart,
        "--namespace",
        "flowwatch-other",
        "--create-namespace",
        "--set",
        "namespace.create=true,fullnameOverride=other",
    ]);
    assert!(
        !ok && out.contains("already exists"),
        "helm install --create-namespace with namespace.create=true:\n{out}"
    );
}
