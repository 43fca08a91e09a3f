//! `cargo xtask test`: the whole suite, the way CI runs it.
//!
//! Installs what is missing, builds the Go-based test infrastructure (cached), checks
//! formatting and lints, runs every test target of the workspace, and ends with one line:
//! how many tests ran and how many failed.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::{deploy, k8s, setup};

pub fn run() -> Result<()> {
    setup::for_tests()?;
    let bins = k8s::build_binaries().context("building etcd and kube-apiserver")?;
    // The deploy tests find helm in its cache directory (deploy::helm_path).
    deploy::ensure_helm().context("building helm")?;
    // The real node of tests/node.rs: its Go-built binaries (cached), and the release agent its
    // image carries (built from deploy/Containerfile with the prebuilt binary).
    k8s::build_node_binaries().context("building the node's binaries")?;
    eprintln!("==> cargo build --release -p flowwatch --bin flowwatch (the image's agent)");
    setup::run_cmd(Command::new("cargo").args([
        "build",
        "--release",
        "--locked",
        "-p",
        "flowwatch",
        "--bin",
        "flowwatch",
    ]))?;

    let mut failures = Vec::new();
    // flowwatch-ebpf only builds for the BPF target: it is linted there (build-std needs
    // RUSTC_BOOTSTRAP, for that cargo only) and left out of the host builds.
    let host = ["--workspace", "--exclude", "flowwatch-ebpf"];
    let clippy_host = [
        &["clippy"][..],
        &host,
        &["--all-targets", "--quiet", "--", "-D", "warnings"],
    ]
    .concat();
    let clippy_bpf = [
        "clippy",
        "-p",
        "flowwatch-ebpf",
        "--target",
        "bpfel-unknown-none",
        "-Zbuild-std=core",
        "--release",
        "--quiet",
        "--",
        "-D",
        "warnings",
    ];
    // Nightly rustfmt formats as stable does, and groups the imports as rustfmt.toml asks.
    let fmt_check = [&setup::NIGHTLY_FMT[..], &["--check"]].concat();
    let lints: [(&str, &[&str], bool); 3] = [
        ("cargo +nightly fmt --check", &fmt_check, false),
        ("cargo clippy -D warnings", &clippy_host, false),
        ("cargo clippy (eBPF) -D warnings", &clippy_bpf, true),
    ];
    for (name, args, bootstrap) in lints {
        eprintln!("==> {name}");
        let mut cmd = Command::new("cargo");
        cmd.args(args);
        if bootstrap {
            cmd.env("RUSTC_BOOTSTRAP", "1");
        }
        if let Err(e) = setup::run_cmd(&mut cmd) {
            eprintln!("{e:#}");
            failures.push(name.to_string());
        }
    }
    // The API docs' links resolve (a renamed or feature-gated item breaks them silently).
    let doc = "cargo doc -D warnings";
    eprintln!("==> {doc}");
    let mut cmd = Command::new("cargo");
    cmd.args(["doc", "-p", "flowwatch", "--no-deps", "--quiet"])
        .env("RUSTDOCFLAGS", "-D warnings");
    if let Err(e) = setup::run_cmd(&mut cmd) {
        eprintln!("{e:#}");
        failures.push(doc.to_string());
    }

    eprintln!("==> cargo test --workspace");
    // Tests that skip (no root, outside CI) append a line here: see testinfra/kit/src/privileged.rs.
    let skip_log = std::env::temp_dir().join(format!("flowwatch-skips-{}", std::process::id()));
    let _ = std::fs::remove_file(&skip_log);
    let mut child = Command::new("cargo")
        .arg("test")
        .args(host)
        .arg("--no-fail-fast")
        .env("FLOWWATCH_SKIP_LOG", &skip_log)
        .env("FLOWWATCH_ETCD", &bins.etcd)
        .env("FLOWWATCH_KUBE_APISERVER", &bins.kube_apiserver)
        .env("FLOWWATCH_KUBECTL", &bins.kubectl)
        .env("FLOWWATCH_NETPOL_ANALYZER", &bins.netpol_analyzer)
        .env("FLOWWATCH_OTELCOL", &bins.otelcol)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    // Cargo names every test binary that failed on stderr, including one that crashed (a
    // signal, an abort) and so printed no `test result:` line for the totals to count.
    let failed_binaries = child.stderr.take().map(|stderr| {
        std::thread::spawn(move || {
            let mut failed = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                if let Some(rest) = line.split("to rerun pass `").nth(1) {
                    failed.push(rest.trim_end_matches('`').to_string());
                }
            }
            failed
        })
    });
    let mut totals = Totals::default();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("{line}");
            totals.observe(&line);
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    let failed_binaries = failed_binaries
        .and_then(|reader| reader.join().ok())
        .unwrap_or_default();
    let skipped: Vec<String> = std::fs::read_to_string(&skip_log)
        .map(|log| log.lines().map(str::to_string).collect())
        .unwrap_or_default();
    let _ = std::fs::remove_file(&skip_log);

    // The details first, the total last: the run ends with it.
    println!();
    for reason in &skipped {
        println!("SKIPPED: {reason}");
    }
    for name in &totals.failed_names {
        println!("FAILED: {name}");
    }
    for name in &failures {
        println!("FAILED CHECK: {name}");
    }
    for binary in &failed_binaries {
        println!("FAILED TEST BINARY: {binary}");
    }
    println!(
        "TOTAL: {} tests run, {} failed, {} ignored, {} skipped (passed without running their checks), in {} test binaries",
        totals.passed + totals.failed,
        totals.failed,
        totals.ignored,
        skipped.len(),
        totals.binaries
    );
    if totals.failed > 0 || !failures.is_empty() {
        bail!(
            "{} tests failed, {} checks failed (test binaries with failures: {})",
            totals.failed,
            failures.len(),
            failed_binaries.len()
        );
    }
    if !failed_binaries.is_empty() {
        bail!(
            "{} test binaries failed without a failing test: they crashed (see their output above)",
            failed_binaries.len()
        );
    }
    if !status.success() {
        bail!("cargo test failed before running every test ({status}): see the build output above");
    }
    Ok(())
}

/// Sums libtest's `test result:` lines.
#[derive(Default, Debug, PartialEq)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
    binaries: u64,
    failed_names: Vec<String>,
}

impl Totals {
    fn observe(&mut self, line: &str) {
        if let Some(rest) = line.strip_prefix("test result: ") {
            self.binaries += 1;
            for part in rest.split(';') {
                let mut words = part.split_whitespace().rev();
                let (Some(what), Some(n)) = (words.next(), words.next()) else {
                    continue;
                };
                let Ok(n) = n.parse::<u64>() else { continue };
                match what {
                    "passed" => self.passed += n,
                    "failed" => self.failed += n,
                    "ignored" => self.ignored += n,
                    _ => {}
                }
            }
        } else if let Some(name) = line
            .strip_prefix("test ")
            .and_then(|l| l.strip_suffix(" ... FAILED"))
        {
            self.failed_names.push(name.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_libtest_summaries() {
        let mut t = Totals::default();
        for line in [
            "test result: ok. 13 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s",
            "test a::b ... FAILED",
            "test result: FAILED. 8 passed; 1 failed; 2 ignored; 0 measured; 0 filtered out; finished in 7.62s",
            "test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out",
        ] {
            t.observe(line);
        }
        assert_eq!(
            t,
            Totals {
                passed: 21,
                failed: 1,
                ignored: 2,
                binaries: 3,
                failed_names: vec!["a::b".into()],
            }
        );
    }
}
