//! helm for tests: the binary `cargo xtask render-manifests` builds, `helm template` of the
//! chart, and the chart's rules as a Prometheus rule file (as `cargo xtask render-rules` writes
//! it: the PrometheusRule's `spec`, dedented, after a header).

use std::path::{Path, PathBuf};
use std::process::Command;

pub const HELM_VERSION: &str = "v3.22.0";
pub const KUBE_VERSION: &str = "v1.34.0";

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn chart() -> PathBuf {
    repo().join("deploy/helm/flowwatch")
}

/// `${XDG_CACHE_HOME:-$HOME/.cache}/flowwatch/helm-<version>/helm`, or why it is missing.
pub fn helm() -> Result<PathBuf, String> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .ok_or("neither XDG_CACHE_HOME nor HOME is set")?;
    let p = base.join(format!("flowwatch/helm-{HELM_VERSION}/helm"));
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!(
            "{} missing (run `cargo xtask render-manifests`, which builds it)",
            p.display()
        ))
    }
}

/// `helm template flowwatch <chart> --namespace flowwatch ... <args>`: stdout, or stderr.
pub fn template(helm: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(helm)
        .args(["template", "flowwatch"])
        .arg(chart())
        .args(["--namespace", "flowwatch", "--kube-version", KUBE_VERSION])
        .args(args)
        .output()
        .expect("run helm");
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The header `cargo xtask render-manifests` puts on the rule file (xtask's `RULES_HEADER`).
pub fn rules_header() -> String {
    let xtask = std::fs::read_to_string(repo().join("xtask/src/deploy.rs")).unwrap();
    let start = xtask
        .find("pub const RULES_HEADER: &str = \"\\\n")
        .expect("RULES_HEADER in xtask/src/deploy.rs");
    let rest = &xtask[start..];
    let body = &rest[rest.find('\n').unwrap() + 1..];
    body[..body.find("\";").unwrap()].to_string()
}

/// The chart's rules rendered with `args` (`-f values.yaml`, `--set ...`) as a rule file.
pub fn rules(helm: &Path, args: &[&str]) -> Result<String, String> {
    let mut all = vec![
        "--set",
        "prometheusRule.enabled=true",
        "--show-only",
        "templates/prometheusrule.yaml",
    ];
    all.extend_from_slice(args);
    let rendered = template(helm, &all)?;
    let (_, spec) = rendered
        .split_once("\nspec:\n")
        .ok_or_else(|| format!("no spec in\n{rendered}"))?;
    let mut out = rules_header();
    for line in spec.lines() {
        let line = line.strip_prefix("  ").unwrap_or(line);
        if line.starts_with('#') {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    Ok(out)
}
