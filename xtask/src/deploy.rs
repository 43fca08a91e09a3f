//! Deploy assets: render `deploy/manifests` and the rule file `deploy/prometheus/flowwatch-rules.yaml`
//! from the Helm chart, copy its dashboard to `deploy/grafana`, and build helm (Go only for
//! tooling).
//!
//! Never hand-edit the rendered files: change the chart and run `cargo xtask render-manifests`.
//! `--check` renders into memory and fails when a committed file differs. What is rendered, and
//! how, is `flowwatch_render::rendered`: the deploy tests (`flowwatch/tests/deploy_chart.rs`,
//! `deploy_rules.rs`) compare the committed files against that same function.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use flowwatch_render::{helm_path, HELM_VERSION, KUBE_VERSION};

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
    let (major, minor) = KUBE_VERSION
        .trim_start_matches('v')
        .split_once('.')
        .map(|(a, b)| (a, b.split('.').next().unwrap_or(b)))
        .context("KUBE_VERSION")?;
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

/// The chart's rules as a Prometheus rule file, with the default values and then `args`
/// (`-f values.yaml`, `--set ...`).
pub fn render_rules(args: &[&str]) -> Result<String> {
    let helm = ensure_helm()?;
    Ok(flowwatch_render::rules(&helm, args)?)
}

/// `cargo xtask render-manifests [--check]`.
pub fn render_manifests(check: bool) -> Result<()> {
    let root = flowwatch_render::repo_root();
    let mut stale = Vec::new();
    let helm = ensure_helm()?;
    for (rel, content) in flowwatch_render::rendered(&helm)? {
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
