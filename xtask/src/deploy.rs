//! Deploy assets: render `deploy/manifests` and the rule file `deploy/prometheus/flowwatch-rules.yaml`
//! from the Helm chart, copy its dashboard to `deploy/grafana`, and build helm (Go only for
//! tooling).
//!
//! Never hand-edit the rendered files: change the chart and run `cargo xtask render-manifests`.
//! `--check` renders into memory and fails when a committed file differs. The deploy tests do not
//! run this command: `flowwatch/tests/deploy_chart.rs` renders the two manifests itself with the
//! same helm arguments and header and compares them, and `flowwatch/tests/deploy_rules.rs`
//! renders the rule file the same way ([`rules_from_prometheus_rule`]) and compares it and the
//! dashboard copy; keep those in step with [`rendered`].

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The helm release built by [`ensure_helm`].
pub const HELM_VERSION: &str = "v3.22.0";
/// The Kubernetes version helm renders for (matches the API server the tests run).
pub const RENDER_KUBE_VERSION: &str = "v1.34.0";
/// Release name and namespace of the plain manifests.
pub const RELEASE: &str = "flowwatch";
pub const NAMESPACE: &str = "flowwatch";

const HEADER: &str =
    "# Rendered from deploy/helm/flowwatch by `cargo xtask render-manifests`. Do not edit:\n\
                      # change the chart (or its values) and render again.\n";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// `${XDG_CACHE_HOME:-$HOME/.cache}/flowwatch/helm-<version>/helm`.
pub fn helm_path() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(
            std::env::var_os("HOME").context("neither XDG_CACHE_HOME nor HOME is set")?,
        )
        .join(".cache"),
    };
    Ok(base
        .join("flowwatch")
        .join(format!("helm-{HELM_VERSION}"))
        .join("helm"))
}

/// Builds helm from its Go module (`helm.sh/helm/v3`) into the cache unless already there;
/// returns its path. Takes a few minutes on 2 cores the first time.
pub fn ensure_helm() -> Result<PathBuf> {
    let path = helm_path()?;
    if path.is_file() {
        return Ok(path);
    }
    let dir = path.parent().expect("helm path has a parent");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Build into a private dir and rename, so a concurrent or interrupted build never leaves a
    // half-written binary at the final path.
    let staging = dir.join(format!("build-{}", std::process::id()));
    std::fs::create_dir_all(&staging)?;
    let (major, minor) = RENDER_KUBE_VERSION
        .trim_start_matches('v')
        .split_once('.')
        .map(|(a, b)| (a, b.split('.').next().unwrap_or(b)))
        .context("RENDER_KUBE_VERSION")?;
    let ldflags = format!(
        "-X helm.sh/helm/v3/internal/version.version={HELM_VERSION} \
         -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor={major} \
         -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor={minor} \
         -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor={major} \
         -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor={minor}"
    );
    eprintln!("building helm {HELM_VERSION} with go (first time only; a few minutes)...");
    let status = crate::setup::go()?
        .args(["install", "-ldflags", &ldflags])
        .arg(format!("helm.sh/helm/v3/cmd/helm@{HELM_VERSION}"))
        .env("GOBIN", &staging)
        .env("CGO_ENABLED", "0")
        .current_dir(&staging)
        .status()
        .context("running `go install` (Go 1.21 or newer is needed to build helm; `cargo xtask setup` checks for it)")?;
    if !status.success() {
        let _ = std::fs::remove_dir_all(&staging);
        bail!("`go install helm.sh/helm/v3/cmd/helm@{HELM_VERSION}` failed ({status})");
    }
    std::fs::rename(staging.join("helm"), &path)
        .with_context(|| format!("moving helm to {}", path.display()))?;
    let _ = std::fs::remove_dir_all(&staging);
    Ok(path)
}

/// One `helm template` of the chart with extra arguments.
fn helm_template(helm: &Path, args: &[&str]) -> Result<String> {
    let root = repo_root();
    let out = Command::new(helm)
        .args(["template", RELEASE])
        .arg(root.join("deploy/helm/flowwatch"))
        .args([
            "--namespace",
            NAMESPACE,
            "--kube-version",
            RENDER_KUBE_VERSION,
        ])
        .args(args)
        .output()
        .with_context(|| format!("running {}", helm.display()))?;
    if !out.status.success() {
        bail!(
            "helm template {} failed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout).context("helm output is not UTF-8")
}

/// Header of the rendered rule file.
pub const RULES_HEADER: &str = "\
# flowwatch alert and recording rules (a Prometheus rule file), rendered from the Helm chart's
# prometheusRule values (defaults) by `cargo xtask render-manifests`. Do not edit: change the
# chart (templates/_rules.tpl), or render your own tuned file with
# `cargo xtask render-rules -f my-values.yaml`. Runbooks: docs/runbooks.md. Unit tests:
# flowwatch-rules.test.yaml (these defaults), flowwatch-rules-tuned.test.yaml (tuned values).
";

/// The rule file of a rendered PrometheusRule (`helm template --show-only
/// templates/prometheusrule.yaml`): its `spec`, dedented, after [`RULES_HEADER`].
pub fn rules_from_prometheus_rule(rendered: &str) -> Result<String> {
    let (_, spec) = rendered
        .split_once("\nspec:\n")
        .context("the rendered PrometheusRule has no spec")?;
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
pub fn render_rules(args: &[&str]) -> Result<String> {
    let helm = ensure_helm()?;
    let mut all = vec![
        "--set",
        "prometheusRule.enabled=true",
        "--show-only",
        "templates/prometheusrule.yaml",
    ];
    all.extend_from_slice(args);
    rules_from_prometheus_rule(&helm_template(&helm, &all)?)
}

/// Every generated file (path relative to the repository root) and its content.
pub fn rendered() -> Result<Vec<(PathBuf, String)>> {
    let helm = ensure_helm()?;
    let root = repo_root();
    let core = helm_template(&helm, &["--set", "namespace.create=true"])?;
    let operator = helm_template(
        &helm,
        &[
            "--set",
            "serviceMonitor.enabled=true,prometheusRule.enabled=true",
            "--show-only",
            "templates/servicemonitor.yaml",
            "--show-only",
            "templates/prometheusrule.yaml",
        ],
    )?;
    let read =
        |p: &str| std::fs::read_to_string(root.join(p)).with_context(|| format!("reading {p}"));
    Ok(vec![
        (PathBuf::from("deploy/manifests/flowwatch.yaml"), format!("{HEADER}{core}")),
        (
            PathBuf::from("deploy/manifests/flowwatch-prometheus-operator.yaml"),
            format!("{HEADER}# Needs the Prometheus Operator CRDs (monitoring.coreos.com/v1).\n{operator}"),
        ),
        (
            PathBuf::from("deploy/prometheus/flowwatch-rules.yaml"),
            render_rules(&[])?,
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

/// `cargo xtask render-manifests [--check]`.
pub fn render_manifests(check: bool) -> Result<()> {
    let root = repo_root();
    let mut stale = Vec::new();
    for (rel, content) in rendered()? {
        let path = root.join(&rel);
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current == content {
            continue;
        }
        if check {
            stale.push(rel.display().to_string());
        } else {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&path, content).with_context(|| format!("writing {}", rel.display()))?;
            eprintln!("wrote {}", rel.display());
        }
    }
    if !stale.is_empty() {
        bail!(
            "generated deploy files differ from the chart: {}\nrun `cargo xtask render-manifests` and commit the result",
            stale.join(", ")
        );
    }
    Ok(())
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
}
