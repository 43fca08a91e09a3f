//! Idempotent installation of what building and testing need. Each step checks first and
//! does nothing when the thing is already there, so a warm machine pays a few milliseconds.

use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Debian packages: LLVM 22 for bpf-linker, the tools the tests drive (nft, iptables, ip,
/// unshare/setpriv), Prometheus and promtool, bpftool for inspection, python3-jsonschema
/// (the flow log's JSON Schema is checked against real records with an independent validator),
/// and Chromium (`flowwatch report`'s page is opened headless and checked as a reader sees it).
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "nftables",
    "iptables",
    "iproute2",
    "util-linux",
    "procps",
    "prometheus",
    "bpftool",
    "python3-jsonschema",
    "chromium",
];

const BPF_LINKER_VERSION: &str = "0.13.0";

/// What building the agent and its eBPF programs needs (the demo, the benches).
pub fn run() -> Result<()> {
    apt_packages()?;
    rust_components()?;
    bpf_linker()?;
    Ok(())
}

/// `run`, and Go for the test infrastructure (etcd, kube-apiserver and helm are built from
/// their Go modules; the product never uses Go).
pub fn for_tests() -> Result<()> {
    run()?;
    nightly_rustfmt()?;
    go()?;
    Ok(())
}

/// `cargo` arguments of the formatting check and fix: nightly rustfmt, which has the options
/// of rustfmt.toml that stable rustfmt lacks (it warns and ignores them).
pub const NIGHTLY_FMT: [&str; 3] = ["+nightly", "fmt", "--all"];

/// rustfmt of the nightly toolchain, for rustfmt.toml's `group_imports` (the tests check it;
/// the product builds on stable).
fn nightly_rustfmt() -> Result<()> {
    if quiet_output(Command::new("rustup").args(["run", "nightly", "rustfmt", "--version"]))
        .is_some()
    {
        return Ok(());
    }
    eprintln!("setup: installing nightly rustfmt (rustfmt.toml groups imports, a nightly option)");
    run_cmd(Command::new("rustup").args([
        "toolchain",
        "install",
        "nightly",
        "--profile",
        "minimal",
        "--component",
        "rustfmt",
    ]))
}

/// Runs a command, failing with its name and status.
pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

fn quiet_output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn apt_packages() -> Result<()> {
    // The tests' Kubernetes node (containerd, runc, buildah, ...) comes from Debian too.
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .chain(flowwatch_testnode::bins::DEBIAN_PACKAGES)
        .copied()
        .filter(|pkg| {
            quiet_output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
                .is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing {}", missing.join(" "));
    run_cmd(Command::new("apt-get").arg("update").arg("-qq"))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// rust-src (the eBPF crate builds core from source), and rustfmt and clippy (the test
/// command checks formatting and lints), which a minimal rustup profile leaves out.
fn rust_components() -> Result<()> {
    let installed = quiet_output(Command::new("rustup").args(["component", "list", "--installed"]))
        .unwrap_or_default();
    let missing: Vec<&str> = ["rust-src", "rustfmt", "clippy"]
        .into_iter()
        .filter(|c| !installed.lines().any(|l| l.starts_with(c)))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: adding {}", missing.join(" "));
    run_cmd(
        Command::new("rustup")
            .args(["component", "add", "--toolchain", "stable"])
            .args(&missing),
    )
}

fn bpf_linker() -> Result<()> {
    let version = quiet_output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if version.contains(BPF_LINKER_VERSION) {
        return Ok(());
    }
    eprintln!("setup: installing bpf-linker {BPF_LINKER_VERSION} against LLVM 22");
    run_cmd(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
            ])
            .args(["--no-default-features", "--features", "llvm-22", "--force"])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
    )
}

/// A `go` command: the one on PATH, else the official tarball's /usr/local/go/bin/go (where it
/// lives on these machines, not always on a non-login shell's PATH).
pub fn go() -> Result<Command> {
    for candidate in ["go", "/usr/local/go/bin/go"] {
        if quiet_output(Command::new(candidate).arg("version")).is_some() {
            return Ok(Command::new(candidate));
        }
    }
    bail!(
        "Go (1.21 or newer) is neither on PATH nor in /usr/local/go: the test infrastructure \
         (etcd, kube-apiserver, helm) is built from Go modules"
    )
}
