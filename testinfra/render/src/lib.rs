//! The Helm chart rendered into the committed deploy files (`deploy/manifests`, the rule file
//! `deploy/prometheus/flowwatch-rules.yaml`, the dashboards in `deploy/grafana`).
//!
//! `cargo xtask render-manifests` writes [`rendered`] and `--check` compares against it; the
//! deploy tests (`flowwatch/tests/deploy_chart.rs`, `deploy_rules.rs`) compare the committed
//! files against the same function, so the drift check runs the very code xtask runs. Building
//! helm itself stays in xtask (`ensure_helm`): this crate only finds it in its cache directory.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The helm release xtask builds into the cache (`helm_path`).
pub const HELM_VERSION: &str = "v3.22.0";
/// The Kubernetes version helm renders for (matches the API server the tests run).
pub const KUBE_VERSION: &str = "v1.34.0";
/// Release name and namespace of the plain manifests.
pub const RELEASE: &str = "flowwatch";
pub const NAMESPACE: &str = "flowwatch";

/// Header of the rendered manifests.
pub const HEADER: &str =
    "# Rendered from deploy/helm/flowwatch by `cargo xtask render-manifests`. Do not edit:\n\
     # change the chart (or its values) and render again.\n";

/// Header of the rendered rule file.
pub const RULES_HEADER: &str = "\
# flowwatch alert and recording rules (a Prometheus rule file), rendered from the Helm chart's
# prometheusRule values (defaults) by `cargo xtask render-manifests`. Do not edit: change the
# chart (templates/_rules.tpl), or render your own tuned file with
# `cargo xtask render-rules -f my-values.yaml`. Runbooks: docs/runbooks.md. Unit tests:
# flowwatch-rules.test.yaml (these defaults), flowwatch-rules-tuned.test.yaml (tuned values).
";

/// Why the chart could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("neither XDG_CACHE_HOME nor HOME is set")]
    NoCacheDir,
    #[error("running {}", helm.display())]
    Spawn {
        helm: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("helm template {args} failed:\n{stderr}")]
    Template { args: String, stderr: String },
    #[error("helm output is not UTF-8")]
    NotUtf8(#[source] std::string::FromUtf8Error),
    #[error("the rendered PrometheusRule has no spec")]
    NoSpec,
    #[error("reading {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The workspace root (this crate lives in `testinfra/render`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("testinfra/render lives in the workspace")
        .to_path_buf()
}

/// The chart's directory.
pub fn chart() -> PathBuf {
    repo_root().join("deploy/helm/flowwatch")
}

/// `${XDG_CACHE_HOME:-$HOME/.cache}/flowwatch/helm-<version>/helm`, whether built or not.
pub fn helm_path() -> Result<PathBuf, RenderError> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => {
            PathBuf::from(std::env::var_os("HOME").ok_or(RenderError::NoCacheDir)?).join(".cache")
        }
    };
    Ok(base
        .join("flowwatch")
        .join(format!("helm-{HELM_VERSION}"))
        .join("helm"))
}

/// `helm template flowwatch <chart> --namespace flowwatch --kube-version ... <args>`.
pub fn template(helm: &Path, args: &[&str]) -> Result<String, RenderError> {
    let out = Command::new(helm)
        .args(["template", RELEASE])
        .arg(chart())
        .args(["--namespace", NAMESPACE, "--kube-version", KUBE_VERSION])
        .args(args)
        .output()
        .map_err(|source| RenderError::Spawn {
            helm: helm.to_path_buf(),
            source,
        })?;
    if !out.status.success() {
        return Err(RenderError::Template {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    String::from_utf8(out.stdout).map_err(RenderError::NotUtf8)
}

/// The rule file of a rendered PrometheusRule (`helm template --show-only
/// templates/prometheusrule.yaml`): its `spec`, dedented, after [`RULES_HEADER`].
pub fn rules_from_prometheus_rule(rendered: &str) -> Result<String, RenderError> {
    let (_, spec) = rendered
        .split_once("\nspec:\n")
        .ok_or(RenderError::NoSpec)?;
    let mut out = String::from(RULES_HEADER);
    for line in spec.lines() {
        let line = line.strip_prefix("  ").unwrap_or(line);
        // The template's own comments describe the chart, not this file.
        if line.starts_with('#') {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    Ok(out)
}

/// The chart's rules as a Prometheus rule file, with the default values and then `args`
/// (`-f values.yaml`, `--set ...`).
pub fn rules(helm: &Path, args: &[&str]) -> Result<String, RenderError> {
    let mut all = vec![
        "--set",
        "prometheusRule.enabled=true",
        "--show-only",
        "templates/prometheusrule.yaml",
    ];
    all.extend_from_slice(args);
    rules_from_prometheus_rule(&template(helm, &all)?)
}

/// Every generated file (path relative to the repository root) and its content.
pub fn rendered(helm: &Path) -> Result<Vec<(PathBuf, String)>, RenderError> {
    let root = repo_root();
    let core = template(helm, &["--set", "namespace.create=true"])?;
    let operator = template(
        helm,
        &[
            "--set",
            "serviceMonitor.enabled=true,prometheusRule.enabled=true",
            "--show-only",
            "templates/servicemonitor.yaml",
            "--show-only",
            "templates/prometheusrule.yaml",
        ],
    )?;
    let read = |p: &str| {
        std::fs::read_to_string(root.join(p)).map_err(|source| RenderError::Read {
            path: p.to_string(),
            source,
        })
    };
    Ok(vec![
        (
            PathBuf::from("deploy/manifests/flowwatch.yaml"),
            format!("{HEADER}{core}"),
        ),
        (
            PathBuf::from("deploy/manifests/flowwatch-prometheus-operator.yaml"),
            format!(
                "{HEADER}# Needs the Prometheus Operator CRDs (monitoring.coreos.com/v1).\n{operator}"
            ),
        ),
        (
            PathBuf::from("deploy/prometheus/flowwatch-rules.yaml"),
            rules(helm, &[])?,
        ),
        (
            PathBuf::from("deploy/grafana/flowwatch-dashboard.json"),
            read("deploy/helm/flowwatch/files/dashboard.json")?,
        ),
        (
            PathBuf::from("deploy/grafana/flowwatch-workload-dashboard.json"),
            read("deploy/helm/flowwatch/files/workload-dashboard.json")?,
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_file_is_the_spec_of_the_prometheus_rule_dedented() {
        let rendered = "---\n# Source: x\napiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata:\n  name: x\nspec:\n  # chart comment\n  groups:\n    - name: a\n      rules: []\n";
        assert_eq!(
            rules_from_prometheus_rule(rendered).unwrap(),
            format!("{RULES_HEADER}groups:\n  - name: a\n    rules: []\n")
        );
        assert!(rules_from_prometheus_rule("kind: ConfigMap\n").is_err());
    }

    #[test]
    fn helm_lives_in_the_versioned_cache_dir() {
        let p = helm_path().unwrap();
        assert!(
            p.ends_with(format!("flowwatch/helm-{HELM_VERSION}/helm")),
            "{}",
            p.display()
        );
    }

    #[test]
    fn the_chart_is_found_from_the_workspace_root() {
        assert!(
            chart().join("Chart.yaml").is_file(),
            "{}",
            chart().display()
        );
    }
}
