//! `cargo xtask fuzz [--secs N] [--target NAME] [--seeds-only]`: the cargo-fuzz targets of
//! fuzz/ (one per parser), each for N seconds (60 by default) starting from its seed corpus in
//! fuzz/corpus/<target> (read-only; new inputs go to target/fuzz-corpus/<target>). A crash
//! leaves its input in fuzz/artifacts/<target>/ and fails the command; turn it into a
//! regression test of the parser (see docs/fuzzing.md).
//!
//! cargo-fuzz needs nightly flags (`-Zsanitizer=address`); on the stable toolchain they are
//! allowed by `RUSTC_BOOTSTRAP=1`, set here for cargo-fuzz's cargo only. cargo-fuzz itself is
//! installed with `cargo install cargo-fuzz --locked` when missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// Every fuzz target (the `[[bin]]`s of fuzz/Cargo.toml).
pub const TARGETS: [&str; 6] = [
    "snapshot",
    "flow_lines",
    "label_selector",
    "policy_spec",
    "kernel_event",
    "conntrack_reply",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the repository")
        .to_path_buf()
}

fn have_cargo_fuzz() -> bool {
    Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

pub fn run(secs: u64, only: Option<&str>, seeds_only: bool) -> anyhow::Result<()> {
    if let Some(t) = only {
        if !TARGETS.contains(&t) {
            bail!(
                "no fuzz target {t:?}: the targets are {}",
                TARGETS.join(", ")
            );
        }
    }
    if !have_cargo_fuzz() {
        crate::setup::run_cmd(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let repo = repo();
    let mut crashed = Vec::new();
    for target in TARGETS.iter().filter(|t| only.is_none_or(|o| o == **t)) {
        let seeds = repo.join("fuzz/corpus").join(target);
        let work = repo.join("target/fuzz-corpus").join(target);
        std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        let mut cmd = Command::new("cargo");
        cmd.current_dir(&repo).env("RUSTC_BOOTSTRAP", "1").args([
            "fuzz",
            "run",
            "--release",
            "--debug-assertions",
            target,
        ]);
        if seeds_only {
            // Each seed once: a crash in a known input, quickly.
            cmd.arg(&seeds).args(["--", "-runs=0"]);
        } else {
            cmd.arg(&work)
                .arg(&seeds)
                .arg("--")
                .arg(format!("-max_total_time={secs}"))
                .args(["-rss_limit_mb=2048", "-max_len=1048576", "-timeout=10"]);
        }
        eprintln!(
            "fuzz: {target} ({})",
            if seeds_only {
                "seed corpus".to_string()
            } else {
                format!("{secs} s")
            }
        );
        let status = cmd.status().context("running cargo fuzz")?;
        if !status.success() {
            crashed.push(*target);
        }
    }
    if !crashed.is_empty() {
        bail!(
            "fuzz targets failed: {} (inputs in fuzz/artifacts/<target>/)",
            crashed.join(", ")
        );
    }
    Ok(())
}
