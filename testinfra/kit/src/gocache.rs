//! Where `cargo xtask k8s-bins` caches a tool built from a Go wrapper module:
//! `${XDG_CACHE_HOME:-$HOME/.cache}/flowwatch/<prefix>-<version>/<file>`, the version being
//! what `testinfra/<module_dir>/go.mod` requires of `module`.

use std::path::PathBuf;

/// The cached tool's path (which may not exist yet).
pub fn tool_path(
    module_dir: &str,
    module: &str,
    prefix: &str,
    file: &str,
) -> Result<PathBuf, String> {
    let go_mod_path = crate::paths::repo()
        .join("testinfra")
        .join(module_dir)
        .join("go.mod");
    let go_mod = std::fs::read_to_string(&go_mod_path)
        .map_err(|e| format!("{}: {e}", go_mod_path.display()))?;
    let needle = format!("{module} ");
    let version = go_mod
        .lines()
        .map(|l| l.trim().trim_start_matches("require ").trim())
        .find_map(|l| l.strip_prefix(needle.as_str()))
        .and_then(|v| v.split_whitespace().next())
        .ok_or_else(|| format!("{}: no {module} version", go_mod_path.display()))?
        .to_owned();
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").ok_or("HOME is not set")?).join(".cache"),
    };
    Ok(base
        .join("flowwatch")
        .join(format!("{prefix}-{version}"))
        .join(file))
}

/// The tool from the environment variable `env` when set, else from the cache; or why it is
/// missing.
pub fn tool(
    env: &str,
    module_dir: &str,
    module: &str,
    prefix: &str,
    file: &str,
) -> Result<PathBuf, String> {
    let path = match std::env::var_os(env).filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => tool_path(module_dir, module, prefix, file)?,
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} not found (run `cargo xtask k8s-bins`, or set {env})",
            path.display()
        ))
    }
}
