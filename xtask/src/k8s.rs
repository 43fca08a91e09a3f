//! The real Kubernetes of the tests, built from published Go modules and cached by version:
//! etcd, kube-apiserver and kubectl for the control-plane tests; kubelet, kube-proxy,
//! kube-controller-manager, kube-scheduler, agnhost, the CNI reference plugins and kube-router
//! for the node of `testinfra/node` (`cargo xtask cluster`, `flowwatch/tests/node.rs`).
//!
//! The Go wrapper module lives in `testinfra/kube/` (test infrastructure only; the product has no
//! Go). Its `go.mod` requires `k8s.io/kubernetes` and replaces each `k8s.io/<staging>` module
//! with the matching published `v0.X.Y`; etcd comes from the `go.etcd.io/etcd/server/v3` version
//! that kube-apiserver itself pins. The Kubernetes commands are linked with their version stamped
//! in (`-X k8s.io/component-base/version.gitVersion=...`), as the project's own build does. The
//! binaries go to `${XDG_CACHE_HOME:-$HOME/.cache}/flowwatch/k8s-<version>/`, the CNI plugins to
//! `cni-plugins-<version>/`, kube-router to `kube-router-<version>/`; a present binary is not
//! rebuilt, so only the first run pays (about 15 minutes on 2 busy cores for all of them).
//!
//! Upstream Prometheus (the node test's scraper: Debian's prometheus has no Kubernetes service
//! discovery) is built from `testinfra/prometheus/` with only that discovery compiled in, into
//! `${XDG_CACHE_HOME:-$HOME/.cache}/flowwatch/prometheus-<module version>/prometheus`.
//!
//! np-guard netpol-analyzer (the reference `flowwatch/tests/policy_npguard.rs` compares the
//! offline policy CLI with) is built the same way from `testinfra/netpol-analyzer/`, into
//! `${XDG_CACHE_HOME:-$HOME/.cache}/flowwatch/netpol-analyzer-<version>/k8snetpolicy`.
//!
//! A minimal OpenTelemetry Collector (the collector's own OTLP receiver feeding a file, the
//! reference of `flowwatch/tests/flow_export.rs`) is built the same way from `testinfra/otelcol/`
//! into `${XDG_CACHE_HOME:-$HOME/.cache}/flowwatch/otelcol-<version>/otelcol` (about 2 minutes).
//!
//! The test harnesses (`testinfra/kit/src/apiserver.rs`, `testinfra/node`) find the same
//! paths from the same `go.mod`, or take `FLOWWATCH_ETCD` / `FLOWWATCH_KUBE_APISERVER` /
//! `FLOWWATCH_KUBECTL` when they are set.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use flowwatch_testnode::bins;

use crate::setup;

/// Paths of the built binaries.
pub struct K8sBinaries {
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kubectl: PathBuf,
    /// np-guard netpol-analyzer's `k8snetpolicy` (the policy agreement test's reference).
    pub netpol_analyzer: PathBuf,
    /// The OpenTelemetry Collector of `testinfra/otelcol` (the flow exporter's reference).
    pub otelcol: PathBuf,
}

/// The Go package whose `main` builds etcd.
const ETCD_PKG: &str = "go.etcd.io/etcd/server/v3";
/// The e2e suite's test server/client, for the node's pods (static: it runs in a scratch image).
const AGNHOST_PKG: &str = "k8s.io/kubernetes/test/images/agnhost";

/// The wrapper module's directory.
pub fn module_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("testinfra")
        .join("kube")
}

/// The `k8s.io/kubernetes` version the wrapper module requires, e.g. `v1.34.4`.
pub fn kubernetes_version(go_mod: &str) -> Result<String> {
    bins::kubernetes_version_of(go_mod)
        .context("testinfra/kube/go.mod: no `require k8s.io/kubernetes vX.Y.Z` line")
}

/// `${XDG_CACHE_HOME:-$HOME/.cache}/flowwatch/k8s-<version>`.
pub fn cache_dir(version: &str) -> Result<PathBuf> {
    bins::kubernetes_dir(version)
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

/// Builds etcd, kube-apiserver and kubectl unless the cache already has them; returns their
/// paths. The Kubernetes binaries carry their version (`--version`); one that does not (built
/// before the version was stamped) is rebuilt, which only relinks.
pub fn build_binaries() -> Result<K8sBinaries> {
    let module = module_dir();
    let go_mod_path = module.join("go.mod");
    let go_mod = std::fs::read_to_string(&go_mod_path)
        .with_context(|| format!("reading {}", go_mod_path.display()))?;
    let version = kubernetes_version(&go_mod)?;
    let dir = cache_dir(&version)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let netpol_analyzer = build_netpol_analyzer()?;
    let otelcol = build_otelcol()?;
    let bins = K8sBinaries {
        etcd: dir.join("etcd"),
        kube_apiserver: dir.join("kube-apiserver"),
        kubectl: dir.join("kubectl"),
        netpol_analyzer,
        otelcol,
    };
    if bins.etcd.is_file() {
        eprintln!("k8s-bins: {} (cached)", bins.etcd.display());
    } else {
        go_build(&module, ETCD_PKG, &bins.etcd, &[], "")?;
    }
    for name in ["kube-apiserver", "kubectl"] {
        kubernetes_command(&module, &version, &dir, name)?;
    }
    Ok(bins)
}

/// Everything the node of `flowwatch-testnode` runs that is built from Go: the rest of the
/// Kubernetes commands (kubelet, kube-proxy, controller-manager, scheduler), agnhost, the CNI
/// reference plugins and kube-router. Several minutes on 2 cores the first time, cached by
/// version afterwards.
pub fn build_node_binaries() -> Result<()> {
    let module = module_dir();
    let version = bins::kubernetes_version()?;
    let dir = cache_dir(&version)?;
    std::fs::create_dir_all(&dir)?;
    for name in bins::KUBERNETES_COMMANDS {
        kubernetes_command(&module, &version, &dir, name)?;
    }
    let agnhost = dir.join("agnhost");
    if !agnhost.is_file() {
        go_build(&module, AGNHOST_PKG, &agnhost, &[("CGO_ENABLED", "0")], "")?;
    }
    let cni = bins::cni_dir()?;
    if bins::CNI_PLUGINS
        .iter()
        .any(|(name, _)| !cni.join(name).is_file())
    {
        let pkgs: Vec<String> = bins::CNI_PLUGINS
            .iter()
            .map(|(_, pkg)| {
                format!(
                    "github.com/containernetworking/plugins/{pkg}@{}",
                    bins::CNI_PLUGINS_VERSION
                )
            })
            .collect();
        go_install(&pkgs, &cni, &[("CGO_ENABLED", "0")])?;
    }
    build_prometheus()?;
    let router = bins::kube_router_path()?;
    if !router.is_file() {
        go_install(
            &[format!(
                "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@{}",
                bins::KUBE_ROUTER_VERSION
            )],
            router.parent().context("kube-router dir")?,
            &[],
        )?;
    }
    Ok(())
}

/// The Go package whose `main` is Prometheus.
const PROMETHEUS_PKG: &str = "github.com/prometheus/prometheus/cmd/prometheus";

/// Upstream Prometheus from `testinfra/prometheus`, with only the Kubernetes service discovery
/// compiled in (the node test scrapes the agent through pod discovery, as a user's Prometheus
/// would; Debian's prometheus is built without it), unless cached; returns its path.
pub fn build_prometheus() -> Result<PathBuf> {
    let path = bins::prometheus_path()?;
    if path.is_file() {
        eprintln!("k8s-bins: {} (cached)", path.display());
        return Ok(path);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let version = bins::prometheus_version()?;
    let release = prometheus_release(&version)?;
    // `prometheus --version` says what it is (the module zip carries no commit).
    let ldflags = format!(
        "-X github.com/prometheus/common/version.Version={release} \
         -X github.com/prometheus/common/version.Revision={version} \
         -X github.com/prometheus/common/version.Branch={version}"
    );
    go_build_tagged(
        &bins::prometheus_module_dir(),
        PROMETHEUS_PKG,
        &path,
        &[],
        &ldflags,
        bins::PROMETHEUS_BUILD_TAGS,
    )?;
    Ok(path)
}

/// The Prometheus release of its Go module version: `v0.316.0` is 3.16.0.
fn prometheus_release(module_version: &str) -> Result<String> {
    let parse = || -> Option<String> {
        let mut parts = module_version.strip_prefix("v0.")?.split('.');
        let minor: u32 = parts.next()?.parse().ok()?;
        let patch = parts.next()?;
        (minor >= 300).then(|| format!("{}.{}.{patch}", minor / 100, minor % 100))
    };
    parse().with_context(|| {
        format!("github.com/prometheus/prometheus {module_version}: not a v0.3xx.y version")
    })
}

/// One `k8s.io/kubernetes/cmd/<name>`, built with its version stamped in, unless a binary that
/// reports that version is cached.
fn kubernetes_command(module: &Path, version: &str, dir: &Path, name: &str) -> Result<()> {
    let path = dir.join(name);
    if path.is_file() {
        if reports_version(&path, name, version) {
            eprintln!("k8s-bins: {} (cached)", path.display());
            return Ok(());
        }
        eprintln!(
            "k8s-bins: {} does not report {version}: building it again",
            path.display()
        );
    }
    go_build(
        module,
        &format!("k8s.io/kubernetes/cmd/{name}"),
        &path,
        &[],
        &bins::version_ldflags(version),
    )
}

fn reports_version(path: &Path, name: &str, version: &str) -> bool {
    let mut cmd = Command::new(path);
    if name == "kubectl" {
        cmd.args(["version", "--client"]);
    } else {
        cmd.arg("--version");
    }
    cmd.output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(version))
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
    Ok(bins::cache_root()?
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
    build_cached(&module, NETPOL_ANALYZER_PKG, path)
}

/// `pkg` of the wrapper module `module` built into `path`, unless it is already there.
fn build_cached(module: &Path, pkg: &str, path: PathBuf) -> Result<PathBuf> {
    if path.is_file() {
        eprintln!("k8s-bins: {} (cached)", path.display());
        return Ok(path);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    go_build(module, pkg, &path, &[], "")?;
    Ok(path)
}

/// The OpenTelemetry Collector wrapper module's directory.
pub fn otelcol_module_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("testinfra")
        .join("otelcol")
}

/// The collector release (the OTLP receiver's version) the wrapper module requires.
pub fn otelcol_version(go_mod: &str) -> Result<String> {
    required_version(go_mod, "go.opentelemetry.io/collector/receiver/otlpreceiver").context(
        "testinfra/otelcol/go.mod: no `go.opentelemetry.io/collector/receiver/otlpreceiver vX.Y.Z` line",
    )
}

/// `${XDG_CACHE_HOME:-$HOME/.cache}/flowwatch/otelcol-<version>/otelcol`.
pub fn otelcol_path(version: &str) -> Result<PathBuf> {
    Ok(bins::cache_root()?
        .join(format!("otelcol-{version}"))
        .join("otelcol"))
}

/// Builds the test collector unless the cache already has it; returns its path.
pub fn build_otelcol() -> Result<PathBuf> {
    let module = otelcol_module_dir();
    let go_mod_path = module.join("go.mod");
    let go_mod = std::fs::read_to_string(&go_mod_path)
        .with_context(|| format!("reading {}", go_mod_path.display()))?;
    let path = otelcol_path(&otelcol_version(&go_mod)?)?;
    build_cached(&module, ".", path)
}

/// `go build -o <out> <pkg>` in the wrapper module, through a temporary name so an interrupted
/// build never leaves a half-written binary that a later run would take as cached.
fn go_build(
    module: &Path,
    pkg: &str,
    out: &Path,
    env: &[(&str, &str)],
    ldflags: &str,
) -> Result<()> {
    go_build_tagged(module, pkg, out, env, ldflags, "")
}

/// [`go_build`] with build tags (`-tags a,b`; empty: none).
fn go_build_tagged(
    module: &Path,
    pkg: &str,
    out: &Path,
    env: &[(&str, &str)],
    ldflags: &str,
    tags: &str,
) -> Result<()> {
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    eprintln!("k8s-bins: building {pkg} (first run only; minutes on 2 cores)");
    let started = Instant::now();
    let mut cmd = setup::go()?;
    cmd.args(["build", "-trimpath"]);
    if !ldflags.is_empty() {
        cmd.args(["-ldflags", ldflags]);
    }
    if !tags.is_empty() {
        cmd.args(["-tags", tags]);
    }
    let status = cmd
        .arg("-o")
        .arg(&tmp)
        .arg(pkg)
        .envs(env.iter().copied())
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

/// `go install <pkg>@<version>...` into `dir`, through a staging folder renamed into place.
fn go_install(pkgs: &[String], dir: &Path, env: &[(&str, &str)]) -> Result<()> {
    let parent = dir.parent().context("install dir has a parent")?;
    std::fs::create_dir_all(parent)?;
    let staging = parent.join(format!(
        "{}.tmp{}",
        dir.file_name().and_then(|n| n.to_str()).unwrap_or("bin"),
        std::process::id()
    ));
    std::fs::create_dir_all(&staging)?;
    eprintln!("k8s-bins: installing {} (first run only)", pkgs.join(" "));
    let started = Instant::now();
    let status = setup::go()?
        .args(["install", "-trimpath"])
        .args(pkgs)
        .env("GOBIN", &staging)
        .envs(env.iter().copied())
        .current_dir(&staging)
        .status()
        .context("running `go install`")?;
    if !status.success() {
        let _ = std::fs::remove_dir_all(&staging);
        bail!("go install {} failed ({status})", pkgs.join(" "));
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&staging, dir)
        .with_context(|| format!("moving {} to {}", staging.display(), dir.display()))?;
    eprintln!(
        "k8s-bins: installed into {} in {:.0?}",
        dir.display(),
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
    fn names_the_prometheus_release_of_its_module_version() {
        assert_eq!(prometheus_release("v0.316.0").unwrap(), "3.16.0");
        assert_eq!(prometheus_release("v0.300.1").unwrap(), "3.0.1");
        assert!(prometheus_release("v2.53.0").is_err());
    }

    #[test]
    fn reads_the_collector_version_from_go_mod() {
        let committed = std::fs::read_to_string(otelcol_module_dir().join("go.mod")).unwrap();
        assert_eq!(otelcol_version(&committed).unwrap(), "v0.165.0");
    }

    #[test]
    fn the_committed_module_names_a_version() {
        let go_mod = std::fs::read_to_string(module_dir().join("go.mod")).unwrap();
        assert!(kubernetes_version(&go_mod).unwrap().starts_with("v1."));
    }
}
