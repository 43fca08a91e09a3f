//! The real Kubernetes control plane of the tests: etcd and kube-apiserver (and kubectl, for
//! the manifests' server-side dry run) built from their published Go modules, cached by version.
//!
//! The Go wrapper module lives in `testinfra/kube/` (test infrastructure only; the product has no
//! Go). Its `go.mod` requires `k8s.io/kubernetes` and replaces each `k8s.io/<staging>` module
//! with the matching published `v0.X.Y`; etcd comes from the `go.etcd.io/etcd/server/v3` version
//! that kube-apiserver itself pins. The binaries go to
//! `${XDG_CACHE_HOME:-$HOME/.cache}/flowwatch/k8s-<version>/{etcd,kube-apiserver,kubectl}`; a present
//! binary is never rebuilt, so only the first run pays (several minutes on 2 cores).
//!
//! np-guard netpol-analyzer (the reference `flowwatch/tests/policy_npguard.rs` compares the
//! offline policy CLI with) is built the same way from `testinfra/netpol-analyzer/`, into
//! `${XDG_CACHE_HOME:-$HOME/.cache}/flowwatch/netpol-analyzer-<version>/k8snetpolicy`.
//!
//! The test harness (`flowwatch/tests/support/apiserver.rs`) finds the same paths from the same
//! `go.mod`, or takes `FLOWWATCH_ETCD` / `FLOWWATCH_KUBE_APISERVER` / `FLOWWATCH_KUBECTL` when
//! they are set (`FLOWWATCH_NETPOL_ANALYZER` for netpol-analyzer).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::setup;

/// Paths of the built binaries.
pub struct K8sBinaries {
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kubectl: PathBuf,
    /// np-guard netpol-analyzer's `k8snetpolicy` (the policy agreement test's reference).
    pub netpol_analyzer: PathBuf,
}

/// The Go packages whose `main` builds each binary.
const ETCD_PKG: &str = "go.etcd.io/etcd/server/v3";
const APISERVER_PKG: &str = "k8s.io/kubernetes/cmd/kube-apiserver";
const KUBECTL_PKG: &str = "k8s.io/kubernetes/cmd/kubectl";

/// The wrapper module's directory.
pub fn module_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("testinfra")
        .join("kube")
}

/// The `k8s.io/kubernetes` version the wrapper module requires, e.g. `v1.34.4`.
pub fn kubernetes_version(go_mod: &str) -> Result<String> {
    required_version(go_mod, "k8s.io/kubernetes")
        .context("testinfra/kube/go.mod: no `require k8s.io/kubernetes vX.Y.Z` line")
}

/// The version a `go.mod` requires of `module` (a `require` line or a line of a block).
fn required_version(go_mod: &str, module: &str) -> Option<String> {
    go_mod
        .lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("require "))
        .chain(go_mod.lines().map(str::trim))
        .find_map(|l| {
            let mut parts = l.split_whitespace();
            (parts.next() == Some(module))
                .then(|| parts.next().map(str::to_owned))
                .flatten()
        })
        .filter(|v| v.starts_with('v'))
}

/// `${XDG_CACHE_HOME:-$HOME/.cache}/flowwatch`.
fn cache_base() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(
            std::env::var_os("HOME").context("neither XDG_CACHE_HOME nor HOME is set")?,
        )
        .join(".cache"),
    };
    Ok(base.join("flowwatch"))
}

/// `${XDG_CACHE_HOME:-$HOME/.cache}/flowwatch/k8s-<version>`.
pub fn cache_dir(version: &str) -> Result<PathBuf> {
    Ok(cache_base()?.join(format!("k8s-{version}")))
}

/// Builds etcd and kube-apiserver unless the cache already has them; returns their paths.
pub fn build_binaries() -> Result<K8sBinaries> {
    let module = module_dir();
    let go_mod_path = module.join("go.mod");
    let go_mod = std::fs::read_to_string(&go_mod_path)
        .with_context(|| format!("reading {}", go_mod_path.display()))?;
    let version = kubernetes_version(&go_mod)?;
    let dir = cache_dir(&version)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let netpol_analyzer = build_netpol_analyzer()?;
    let bins = K8sBinaries {
        etcd: dir.join("etcd"),
        kube_apiserver: dir.join("kube-apiserver"),
        kubectl: dir.join("kubectl"),
        netpol_analyzer,
    };
    for (path, pkg) in [
        (&bins.etcd, ETCD_PKG),
        (&bins.kube_apiserver, APISERVER_PKG),
        (&bins.kubectl, KUBECTL_PKG),
    ] {
        if path.is_file() {
            eprintln!("k8s-bins: {} (cached)", path.display());
            continue;
        }
        go_build(&module, pkg, path)?;
    }
    Ok(bins)
}

/// The np-guard netpol-analyzer module's directory (the reference of
/// `flowwatch/tests/policy_npguard.rs`).
pub fn netpol_analyzer_module_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("testinfra")
        .join("netpol-analyzer")
}

/// The Go package whose `main` is netpol-analyzer's `k8snetpolicy` command.
const NETPOL_ANALYZER_PKG: &str = "github.com/np-guard/netpol-analyzer/cmd/netpolicy";

/// The `github.com/np-guard/netpol-analyzer` version its wrapper module requires.
pub fn netpol_analyzer_version(go_mod: &str) -> Result<String> {
    required_version(go_mod, "github.com/np-guard/netpol-analyzer")
        .context("testinfra/netpol-analyzer/go.mod: no `require github.com/np-guard/netpol-analyzer vX.Y.Z` line")
}

/// `${XDG_CACHE_HOME:-$HOME/.cache}/flowwatch/netpol-analyzer-<version>/k8snetpolicy`.
pub fn netpol_analyzer_path(version: &str) -> Result<PathBuf> {
    Ok(cache_base()?
        .join(format!("netpol-analyzer-{version}"))
        .join("k8snetpolicy"))
}

/// Builds netpol-analyzer's `k8snetpolicy` unless the cache already has it; returns its path.
pub fn build_netpol_analyzer() -> Result<PathBuf> {
    let module = netpol_analyzer_module_dir();
    let go_mod_path = module.join("go.mod");
    let go_mod = std::fs::read_to_string(&go_mod_path)
        .with_context(|| format!("reading {}", go_mod_path.display()))?;
    let path = netpol_analyzer_path(&netpol_analyzer_version(&go_mod)?)?;
    if path.is_file() {
        eprintln!("k8s-bins: {} (cached)", path.display());
        return Ok(path);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    go_build(&module, NETPOL_ANALYZER_PKG, &path)?;
    Ok(path)
}

/// `go build -o <out> <pkg>` in the wrapper module, through a temporary name so an interrupted
/// build never leaves a half-written binary that a later run would take as cached.
fn go_build(module: &Path, pkg: &str, out: &Path) -> Result<()> {
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    eprintln!("k8s-bins: building {pkg} (first run only; several minutes on 2 cores)");
    let started = Instant::now();
    let status = setup::go()?
        .args(["build", "-trimpath", "-o"])
        .arg(&tmp)
        .arg(pkg)
        .current_dir(module)
        .status()
        .context("running `go` (is Go installed and on PATH? `cargo xtask setup`)")?;
    if !status.success() {
        let _ = std::fs::remove_file(&tmp);
        bail!("go build {pkg} failed ({status})");
    }
    std::fs::rename(&tmp, out)
        .with_context(|| format!("moving {} to {}", tmp.display(), out.display()))?;
    eprintln!(
        "k8s-bins: built {} in {:.0?}",
        out.display(),
        started.elapsed()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_kubernetes_version_from_go_mod() {
        let go_mod = "module x\n\ngo 1.24.0\n\nrequire k8s.io/kubernetes v1.34.4\n";
        assert_eq!(kubernetes_version(go_mod).unwrap(), "v1.34.4");
        let block = "module x\nrequire (\n\tk8s.io/kubernetes v1.34.2\n)\n";
        assert_eq!(kubernetes_version(block).unwrap(), "v1.34.2");
        assert!(kubernetes_version("module x\n").is_err());
    }

    #[test]
    fn reads_the_netpol_analyzer_version_from_go_mod() {
        let go_mod =
            "module x\n\ngo 1.23.0\n\nrequire github.com/np-guard/netpol-analyzer v1.4.2\n";
        assert_eq!(netpol_analyzer_version(go_mod).unwrap(), "v1.4.2");
        let committed =
            std::fs::read_to_string(netpol_analyzer_module_dir().join("go.mod")).unwrap();
        assert_eq!(netpol_analyzer_version(&committed).unwrap(), "v1.4.2");
    }

    #[test]
    fn the_committed_module_names_a_version() {
        let go_mod = std::fs::read_to_string(module_dir().join("go.mod")).unwrap();
        assert!(kubernetes_version(&go_mod).unwrap().starts_with("v1."));
    }
}
