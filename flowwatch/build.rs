//! Builds the kernel programs (flowwatch-ebpf) for the BPF target and leaves the object in
//! OUT_DIR, where `datapath` embeds it.

fn main() {
    git_commit();
    // build-std on a stable toolchain: RUSTC_BOOTSTRAP is set for this build script's own
    // children only (the nested cargo that builds the eBPF crate), never for the agent itself.
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    // aya-build forwards every line the nested cargo prints as a build warning; keep only real
    // diagnostics.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
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

/// `FLOWWATCH_GIT_COMMIT` for `flowwatch_build_info{commit}`: the environment's value if set
/// (an image build without the .git directory passes it), else `git rev-parse HEAD`, else
/// `unknown`. Rebuilt when HEAD moves.
fn git_commit() {
    println!("cargo:rerun-if-env-changed=FLOWWATCH_GIT_COMMIT");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let commit = std::env::var("FLOWWATCH_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_string());
    // HEAD and the branch it points at (a worktree has its own HEAD in the common git dir).
    for path in [
        git(&["rev-parse", "--git-path", "HEAD"]),
        git(&["rev-parse", "--symbolic-full-name", "HEAD"])
            .and_then(|r| git(&["rev-parse", "--git-path", &r])),
    ]
    .into_iter()
    .flatten()
    {
        println!("cargo:rerun-if-changed={path}");
    }
    println!("cargo:rustc-env=FLOWWATCH_GIT_COMMIT={commit}");
}
