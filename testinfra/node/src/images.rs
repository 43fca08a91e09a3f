//! Container images built offline with buildah (vfs storage in a folder of the caller's, no
//! registry): the pods' image and the sandbox ("pause") image from the upstream e2e tool
//! `agnhost` plus busybox for a shell, and any Containerfile build. Each image leaves as a
//! docker-archive file that `ctr images import` loads into the node's containerd.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::bins::Binaries;
use crate::sys::run;

/// The pods' image: `/agnhost` (serve-hostname, connect, ...) and busybox (`/bin/sh`).
pub const AGNHOST_IMAGE: &str = "localhost/flowwatch-test/agnhost:node";
/// The sandbox image containerd starts for every pod: the same files, `agnhost pause`.
pub const PAUSE_IMAGE: &str = "localhost/flowwatch-test/pause:node";

/// buildah with its own storage (root and runroot in `dir`), the vfs driver (no overlay mounts
/// left behind), never pulling.
pub struct Buildah {
    dir: PathBuf,
}

impl Buildah {
    pub fn new(dir: &Path) -> Result<Buildah> {
        std::fs::create_dir_all(dir.join("root"))?;
        std::fs::create_dir_all(dir.join("run"))?;
        Ok(Buildah {
            dir: dir.to_path_buf(),
        })
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new("buildah");
        c.arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .args(["--storage-driver", "vfs"]);
        c
    }

    /// A `FROM scratch` image holding `files` (source, path in the image) and a `/bin/sh`
    /// symlink when busybox is among them; committed as `name` with `entrypoint`, written to
    /// `archive`.
    pub fn scratch_image(
        &self,
        name: &str,
        files: &[(&Path, &str)],
        entrypoint: &[&str],
        archive: &Path,
    ) -> Result<()> {
        let ctr = run(self.cmd().args(["from", "scratch"]))?
            .trim()
            .to_string();
        let result = (|| {
            let root = PathBuf::from(run(self.cmd().args(["mount", &ctr]))?.trim());
            for (src, dst) in files {
                let to = root.join(dst.trim_start_matches('/'));
                if let Some(dir) = to.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                std::fs::copy(src, &to)
                    .with_context(|| format!("copying {} into the image", src.display()))?;
                let mode = std::fs::metadata(src)?.permissions().mode();
                std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode))?;
                if dst.ends_with("/busybox") {
                    std::os::unix::fs::symlink("busybox", to.with_file_name("sh"))?;
                }
            }
            std::fs::create_dir_all(root.join("tmp"))?;
            run(self.cmd().args(["umount", &ctr]))?;
            let ep = format!(
                "[{}]",
                entrypoint
                    .iter()
                    .map(|a| format!("\"{a}\""))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            run(self
                .cmd()
                .args(["config", "--entrypoint", &ep, "--cmd", "", &ctr]))?;
            run(self.cmd().args(["commit", "--quiet", &ctr, name]))?;
            self.push(name, archive)
        })();
        let _ = run(self.cmd().args(["rm", &ctr]));
        result
    }

    /// Writes image `name` to a docker-archive file.
    pub fn push(&self, name: &str, archive: &Path) -> Result<()> {
        let _ = std::fs::remove_file(archive);
        run(self
            .cmd()
            .args(["push", "--quiet", name])
            .arg(format!("docker-archive:{}:{name}", archive.display())))?;
        Ok(())
    }
}

/// The pods' and the sandbox image, as docker archives in `out` (built once per binary set;
/// rebuilt when missing).
pub fn test_images(bins: &Binaries, work: &Path, out: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out)?;
    let agnhost_tar = out.join("agnhost.tar");
    let pause_tar = out.join("pause.tar");
    if agnhost_tar.is_file() && pause_tar.is_file() {
        return Ok(vec![agnhost_tar, pause_tar]);
    }
    let buildah = Buildah::new(work)?;
    let files: [(&Path, &str); 2] = [(&bins.agnhost, "/agnhost"), (&bins.busybox, "/bin/busybox")];
    let tmp = |p: &Path| p.with_extension(format!("tmp{}", std::process::id()));
    buildah.scratch_image(AGNHOST_IMAGE, &files, &[], &tmp(&agnhost_tar))?;
    buildah.scratch_image(
        PAUSE_IMAGE,
        &files,
        &["/agnhost", "pause"],
        &tmp(&pause_tar),
    )?;
    std::fs::rename(tmp(&agnhost_tar), &agnhost_tar)?;
    std::fs::rename(tmp(&pause_tar), &pause_tar)?;
    Ok(vec![agnhost_tar, pause_tar])
}

/// The shared libraries a dynamically linked binary loads (its ELF interpreter included), from
/// `ldd`: what a `FROM scratch` base needs to run it.
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = run(Command::new("ldd").arg(binary))?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}
