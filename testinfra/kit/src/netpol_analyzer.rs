//! np-guard netpol-analyzer's `k8snetpolicy`, the reference of `policy_npguard.rs`: from
//! `FLOWWATCH_NETPOL_ANALYZER`, else from the cache `cargo xtask k8s-bins` fills
//! (`${XDG_CACHE_HOME:-$HOME/.cache}/flowwatch/netpol-analyzer-<version>/k8snetpolicy`, the
//! version from `testinfra/netpol-analyzer/go.mod`).

use std::path::PathBuf;

/// The binary, or why it is missing.
pub fn k8snetpolicy() -> Result<PathBuf, String> {
    super::gocache::tool(
        "FLOWWATCH_NETPOL_ANALYZER",
        "netpol-analyzer",
        "github.com/np-guard/netpol-analyzer",
        "netpol-analyzer",
        "k8snetpolicy",
    )
}
