//! Builds the kernel programs (flowwatch-ebpf) for the BPF target and leaves the object in
//! OUT_DIR, where `datapath` embeds it.

fn main() {
    // build-std on a stable toolchain: RUSTC_BOOTSTRAP is set for this build script's own
    // children only (the nested cargo that builds the eBPF crate), never for the agent itself.
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    // aya-build forwards every line the nested cargo prints as a build warning; keep only real
    // diagnostics.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    embed_git_commit();
    let package = aya_build::Package {
        name: "flowwatch-ebpf",
        root_dir: "../flowwatch-ebpf",
        ..Default::default()
    };
    if let Err(e) = aya_build::build_ebpf([package], aya_build::Toolchain::Custom("stable")) {
        // One clear line instead of a build-script backtrace; the usual causes first.
        eprintln!(
            "error: building the eBPF programs failed: {e:#}\n\
             hint: run `cargo xtask setup` (installs bpf-linker with LLVM 22 and rust-src)"
        );
        std::process::exit(1);
    }
}

/// The commit `flowwatch version` reports: `FLOWWATCH_GIT_COMMIT` when set (a build from a
/// source archive), else `git rev-parse HEAD` (with `-dirty` when the tree has changes), else
/// `unknown`. Rebuilt when HEAD moves.
fn embed_git_commit() {
    let git = |args: &[&str]| -> Option<String> {
        let out = std::process::Command::new("git").args(args).output().ok()?;
        let text = String::from_utf8(out.stdout).ok()?;
        (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
    };
    println!("cargo:rerun-if-env-changed=FLOWWATCH_GIT_COMMIT");
    let commit = std::env::var("FLOWWATCH_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            let head = git(&["rev-parse", "HEAD"])?;
            // Only when a file the build reads differs from the commit (not untracked files).
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some();
            Some(if dirty { format!("{head}-dirty") } else { head })
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=FLOWWATCH_GIT_COMMIT={commit}");
    // HEAD, and the branch file it points to (when it is a file: packed refs are not, and a
    // path that does not exist would rerun this script on every build).
    let mut watched = vec![git(&["rev-parse", "--git-path", "HEAD"])];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(git(&["rev-parse", "--git-path", &branch]));
    }
    for path in watched.into_iter().flatten() {
        if std::path::Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
