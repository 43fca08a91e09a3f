//! np-guard netpol-analyzer's `k8snetpolicy`, the reference of `policy_npguard.rs`: from
//! `FLOWWATCH_NETPOL_ANALYZER`, else from the cache `cargo xtask k8s-bins` fills
//! (`${XDG_CACHE_HOME:-$HOME/.cache}/flowwatch/netpol-analyzer-<version>/k8snetpolicy`, the
//! version from `testinfra/netpol-analyzer/go.mod`).

use std::path::{Path, PathBuf};

/// The binary, or why it is missing.
pub fn k8snetpolicy() -> Result<PathBuf, String> {
    let path = match std::env::var_os("FLOWWATCH_NETPOL_ANALYZER").filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => cache_path()?,
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} not found (run `cargo xtask k8s-bins`, or set FLOWWATCH_NETPOL_ANALYZER)",
            path.display()
        ))
    }
}

fn cache_path() -> Result<PathBuf, String> {
    let go_mod_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../testinfra/netpol-analyzer/go.mod");
    let go_mod = std::fs::read_to_string(&go_mod_path)
        .map_err(|e| format!("{}: {e}", go_mod_path.display()))?;
    let version = go_mod
        .lines()
        .map(|l| l.trim().trim_start_matches("require ").trim())
        .find_map(|l| l.strip_prefix("github.com/np-guard/netpol-analyzer "))
        .and_then(|v| v.split_whitespace().next())
        .ok_or_else(|| format!("{}: no netpol-analyzer version", go_mod_path.display()))?
        .to_owned();
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").ok_or("HOME is not set")?).join(".cache"),
    };
    Ok(base
        .join("flowwatch")
        .join(format!("netpol-analyzer-{version}"))
        .join("k8snetpolicy"))
}
