//! The agent's image, built from `deploy/Containerfile` with buildah, offline: the same file
//! users build, with the two build arguments it has for this (`AGENT_FROM=prebuilt` takes the
//! release binary built here, `RUNTIME_BASE` a local `FROM scratch` image with that binary's
//! shared libraries in place of distroless).

use std::path::{Path, PathBuf};

use flowwatch_testnode::images::{shared_libraries, Buildah};

pub const RUNTIME_BASE: &str = "localhost/flowwatch-test/runtime-base:node";
pub const REPOSITORY: &str = "localhost/flowwatch-test/flowwatch";
pub const TAG: &str = "node";

use crate::paths::repo;

/// The release binary the image carries (`cargo xtask test` builds it first).
pub fn release_binary() -> Result<PathBuf, String> {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo().join("target"), PathBuf::from);
    let bin = target.join("release/flowwatch");
    if !bin.is_file() {
        return Err(format!(
            "{} missing: `cargo build --release -p flowwatch --bin flowwatch` (cargo xtask test does it)",
            bin.display()
        ));
    }
    // The Containerfile copies it from the build context (the repository root).
    if !bin.starts_with(repo()) {
        return Err(format!(
            "{} is outside the repository (CARGO_TARGET_DIR): the Containerfile's build context cannot reach it",
            bin.display()
        ));
    }
    Ok(bin)
}

/// Builds the image and writes it as a docker archive to `out`; buildah's storage lives in
/// `work` (the caller removes it).
pub fn build(work: &Path, out: &Path) -> Result<(), String> {
    let bin = release_binary()?;
    let buildah = Buildah::new(work).map_err(|e| format!("{e:#}"))?;
    let libs = shared_libraries(&bin).map_err(|e| format!("{e:#}"))?;
    let files: Vec<(PathBuf, String)> = libs
        .iter()
        .map(|l| (l.clone(), l.display().to_string()))
        .collect();
    let files: Vec<(&Path, &str)> = files
        .iter()
        .map(|(p, d)| (p.as_path(), d.as_str()))
        .collect();
    let base_tar = work.join("runtime-base.tar");
    buildah
        .scratch_image(RUNTIME_BASE, &files, &[], &base_tar)
        .map_err(|e| format!("runtime base: {e:#}"))?;
    let image = format!("{REPOSITORY}:{TAG}");
    let mut bud = buildah.cmd();
    bud.args(["bud", "--pull-never", "--quiet", "-f"])
        .arg(repo().join("deploy/Containerfile"))
        .args(["--build-arg", "AGENT_FROM=prebuilt"])
        .args(["--build-arg", &format!("RUNTIME_BASE={RUNTIME_BASE}")])
        .args(["-t", &image])
        .arg(repo());
    flowwatch_testnode::sys::run(&mut bud).map_err(|e| format!("buildah bud: {e:#}"))?;
    buildah
        .push(&image, out)
        .map_err(|e| format!("buildah push: {e:#}"))?;
    Ok(())
}
