//! helm for tests: the binary `cargo xtask render-manifests` builds, found in its cache, and the
//! chart rendered by the same code xtask runs (`flowwatch_render`), with errors as text for the
//! tests to match.

use std::path::{Path, PathBuf};

pub use flowwatch_render::{chart, rendered, KUBE_VERSION};

/// `${XDG_CACHE_HOME:-$HOME/.cache}/flowwatch/helm-<version>/helm`, or why it is missing.
pub fn helm() -> Result<PathBuf, String> {
    let p = flowwatch_render::helm_path().map_err(|e| e.to_string())?;
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!(
            "{} missing (run `cargo xtask render-manifests`, which builds it)",
            p.display()
        ))
    }
}

/// `helm template flowwatch <chart> --namespace flowwatch ... <args>`: stdout, or the error
/// with helm's stderr.
pub fn template(helm: &Path, args: &[&str]) -> Result<String, String> {
    flowwatch_render::template(helm, args).map_err(|e| e.to_string())
}

/// The chart's rules rendered with `args` (`-f values.yaml`, `--set ...`) as a rule file, as
/// `cargo xtask render-rules` writes it.
pub fn rules(helm: &Path, args: &[&str]) -> Result<String, String> {
    flowwatch_render::rules(helm, args).map_err(|e| e.to_string())
}
