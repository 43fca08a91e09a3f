//! Where the node's binaries are: built from Go modules by `cargo xtask k8s-bins` into a cache
//! keyed by version (`${XDG_CACHE_HOME:-$HOME/.cache}/flowwatch/`), or installed from Debian.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The CNI reference plugins (`github.com/containernetworking/plugins`).
pub const CNI_PLUGINS_VERSION: &str = "v1.10.0";
/// The CNI plugins the node uses.
pub const CNI_PLUGINS: &[(&str, &str)] = &[
    ("bridge", "plugins/main/bridge"),
    ("host-local", "plugins/ipam/host-local"),
    ("loopback", "plugins/main/loopback"),
    ("portmap", "plugins/meta/portmap"),
];
/// kube-router (`github.com/cloudnativelabs/kube-router/v2`): the NetworkPolicy enforcer. The
/// newest version the Go module proxy serves (later tags are not available there).
pub const KUBE_ROUTER_VERSION: &str = "v2.1.0";

/// Build tags of upstream Prometheus (`testinfra/prometheus`): of the service discoveries only
/// Kubernetes' (Debian's prometheus has none of them; the others only make the build longer).
pub const PROMETHEUS_BUILD_TAGS: &str = "remove_all_sd,enable_kubernetes_sd";

/// The binaries built from `k8s.io/kubernetes` (the `testinfra/kube` wrapper module), all with
/// the module's version stamped in (`--version` says `v1.34.4`, not `v0.0.0-master`).
pub const KUBERNETES_COMMANDS: &[&str] = &[
    "kube-apiserver",
    "kubectl",
    "kubelet",
    "kube-controller-manager",
    "kube-scheduler",
    "kube-proxy",
];

/// Debian packages the node needs (`cargo xtask setup` installs them).
pub const DEBIAN_PACKAGES: &[&str] = &[
    "containerd",
    "runc",
    "buildah",
    "busybox-static",
    "ipset",
    "conntrack",
    "openssl",
];

#[derive(Clone, Debug)]
pub struct Binaries {
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kubectl: PathBuf,
    pub kubelet: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub kube_scheduler: PathBuf,
    pub kube_proxy: PathBuf,
    /// The upstream e2e suite's test server and client (`/agnhost serve-hostname`, `connect`,
    /// `pause`), built static from the same module: the pods' image and the sandbox image.
    pub agnhost: PathBuf,
    pub cni_bin_dir: PathBuf,
    pub kube_router: PathBuf,
    /// Upstream Prometheus with Kubernetes service discovery (checked by the test that uses it).
    pub prometheus: PathBuf,
    pub containerd: PathBuf,
    pub busybox: PathBuf,
}

/// `${XDG_CACHE_HOME:-$HOME/.cache}/flowwatch`.
pub fn cache_root() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(
            std::env::var_os("HOME").context("neither XDG_CACHE_HOME nor HOME is set")?,
        )
        .join(".cache"),
    };
    Ok(base.join("flowwatch"))
}

/// The wrapper module `testinfra/kube`.
pub fn kube_module_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../kube")
}

/// The `k8s.io/kubernetes` version the wrapper module requires, e.g. `v1.34.4`.
pub fn kubernetes_version_of(go_mod: &str) -> Option<String> {
    required_version_of(go_mod, "k8s.io/kubernetes")
}

/// The version a `go.mod` requires of `module` (a `require` line or a line of a block).
pub fn required_version_of(go_mod: &str, module: &str) -> Option<String> {
    go_mod
        .lines()
        .map(|l| l.trim().trim_start_matches("require ").trim())
        .find_map(|l| l.strip_prefix(module)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next())
        .filter(|v| v.starts_with('v'))
        .map(str::to_owned)
}

pub fn kubernetes_version() -> Result<String> {
    let path = kube_module_dir().join("go.mod");
    let go_mod =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    kubernetes_version_of(&go_mod)
        .with_context(|| format!("{}: no `k8s.io/kubernetes vX.Y.Z` line", path.display()))
}

/// `-ldflags` that stamp a Kubernetes version into a binary of `k8s.io/kubernetes` (what the
/// project's own build does with `hack/lib/version.sh`); without them the binaries report
/// `v0.0.0-master+$Format:%H$` and helm refuses charts with a `kubeVersion` constraint.
pub fn version_ldflags(version: &str) -> String {
    let v = version.trim_start_matches('v');
    let mut parts = v.split('.');
    let major = parts.next().unwrap_or("0");
    let minor = parts.next().unwrap_or("0");
    let mut flags = Vec::new();
    for pkg in [
        "k8s.io/component-base/version",
        "k8s.io/client-go/pkg/version",
    ] {
        flags.push(format!("-X {pkg}.gitVersion={version}"));
        flags.push(format!("-X {pkg}.gitMajor={major}"));
        flags.push(format!("-X {pkg}.gitMinor={minor}"));
        // The module zip carries no commit; the tag names the source exactly.
        flags.push(format!("-X {pkg}.gitCommit={version}"));
        flags.push(format!("-X {pkg}.gitTreeState=clean"));
    }
    flags.join(" ")
}

/// The cache folder of the Kubernetes binaries (`k8s-<version>`).
pub fn kubernetes_dir(version: &str) -> Result<PathBuf> {
    Ok(cache_root()?.join(format!("k8s-{version}")))
}

pub fn cni_dir() -> Result<PathBuf> {
    Ok(cache_root()?.join(format!("cni-plugins-{CNI_PLUGINS_VERSION}")))
}

/// The wrapper module of upstream Prometheus, `testinfra/prometheus`.
pub fn prometheus_module_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../prometheus")
}

/// The `github.com/prometheus/prometheus` version its wrapper module requires (`v0.316.0` is
/// Prometheus 3.16.0: the Go module numbers 3.x releases as v0.3xx).
pub fn prometheus_version() -> Result<String> {
    let path = prometheus_module_dir().join("go.mod");
    let go_mod =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    required_version_of(&go_mod, "github.com/prometheus/prometheus").with_context(|| {
        format!(
            "{}: no `github.com/prometheus/prometheus vX.Y.Z` line",
            path.display()
        )
    })
}

/// `<cache>/prometheus-<version>/prometheus`.
pub fn prometheus_path() -> Result<PathBuf> {
    Ok(cache_root()?
        .join(format!("prometheus-{}", prometheus_version()?))
        .join("prometheus"))
}

pub fn kube_router_path() -> Result<PathBuf> {
    Ok(cache_root()?
        .join(format!("kube-router-{KUBE_ROUTER_VERSION}"))
        .join("kube-router"))
}

impl Binaries {
    /// The cached and installed binaries; an error names the first one missing and how to get it.
    /// (kube-router is checked when it starts: a node runs without it.)
    pub fn find() -> Result<Binaries> {
        let k8s = kubernetes_dir(&kubernetes_version()?)?;
        let bins = Binaries {
            etcd: k8s.join("etcd"),
            kube_apiserver: k8s.join("kube-apiserver"),
            kubectl: k8s.join("kubectl"),
            kubelet: k8s.join("kubelet"),
            kube_controller_manager: k8s.join("kube-controller-manager"),
            kube_scheduler: k8s.join("kube-scheduler"),
            kube_proxy: k8s.join("kube-proxy"),
            agnhost: k8s.join("agnhost"),
            cni_bin_dir: cni_dir()?,
            kube_router: kube_router_path()?,
            prometheus: prometheus_path()?,
            containerd: PathBuf::from("/usr/bin/containerd"),
            busybox: PathBuf::from("/bin/busybox"),
        };
        let mut built = vec![
            &bins.etcd,
            &bins.kube_apiserver,
            &bins.kubectl,
            &bins.kubelet,
            &bins.kube_controller_manager,
            &bins.kube_scheduler,
            &bins.kube_proxy,
            &bins.agnhost,
        ];
        let cni: Vec<PathBuf> = CNI_PLUGINS
            .iter()
            .map(|(name, _)| bins.cni_bin_dir.join(name))
            .collect();
        built.extend(cni.iter());
        for p in built {
            if !p.is_file() {
                bail!("{} not found: run `cargo xtask k8s-bins`", p.display());
            }
        }
        for p in [&bins.containerd, &bins.busybox] {
            if !p.is_file() {
                bail!("{} not found: run `cargo xtask setup`", p.display());
            }
        }
        for tool in [
            "runc",
            "containerd-shim-runc-v2",
            "ctr",
            "buildah",
            "ipset",
            "iptables",
            "ip",
            "nsenter",
            "openssl",
        ] {
            if crate::sys::which(tool).is_none() {
                bail!("`{tool}` not found on PATH: run `cargo xtask setup`");
            }
        }
        Ok(bins)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_flags_stamp_every_variable() {
        let f = version_ldflags("v1.34.4");
        assert!(f.contains("-X k8s.io/component-base/version.gitVersion=v1.34.4"));
        assert!(f.contains("-X k8s.io/component-base/version.gitMajor=1"));
        assert!(f.contains("-X k8s.io/component-base/version.gitMinor=34"));
        assert!(f.contains("-X k8s.io/client-go/pkg/version.gitVersion=v1.34.4"));
    }

    #[test]
    fn reads_the_module_version() {
        assert_eq!(
            kubernetes_version_of("module x\nrequire (\n\tk8s.io/kubernetes v1.34.4\n)\n")
                .as_deref(),
            Some("v1.34.4")
        );
        assert!(kubernetes_version().unwrap().starts_with("v1."));
    }

    #[test]
    fn the_prometheus_module_names_a_version() {
        assert!(prometheus_version().unwrap().starts_with("v0."));
        assert!(prometheus_path().unwrap().ends_with(format!(
            "prometheus-{}/prometheus",
            prometheus_version().unwrap()
        )));
    }
}
