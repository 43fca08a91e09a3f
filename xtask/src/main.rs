//! Developer automation for flowwatch: `cargo xtask <command>`.
//!
//! Each area owns a module; `main` only dispatches.

mod cluster;
mod deploy;
mod fuzz;
mod k8s;
mod setup;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "flowwatch developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing need (apt packages, bpf-linker, rust-src, rustfmt,
    /// clippy) and check for Go; idempotent.
    Setup,
    /// Build (once, cached by version) the binaries the tests run: etcd, kube-apiserver,
    /// kubectl, netpol-analyzer, the OpenTelemetry Collector, and the node's kubelet,
    /// kube-proxy, controller-manager, scheduler, agnhost, CNI plugins, kube-router, and
    /// Prometheus with Kubernetes discovery.
    K8sBins,
    /// A real single-node cluster for use by hand, in a network namespace of its own (needs
    /// root): `up` starts it and prints its kubeconfig, `down` removes every trace of it.
    Cluster {
        #[command(subcommand)]
        action: cluster::Action,
    },
    /// Render deploy/manifests and deploy/prometheus/flowwatch-rules.yaml from the Helm chart
    /// (and copy its dashboard).
    RenderManifests {
        /// Fail if a committed file differs instead of writing it.
        #[arg(long)]
        check: bool,
    },
    /// Print the chart's alert and recording rules as a Prometheus rule file, tuned by values
    /// files (`-f`) and `--set` (for a Prometheus without the operator).
    RenderRules {
        /// Values files, in order (`-f my-values.yaml`).
        #[arg(short = 'f', long = "values")]
        values: Vec<String>,
        /// `key=value` settings, as `helm --set`.
        #[arg(long)]
        set: Vec<String>,
    },
    /// The main job: demo pods, the agent on them with the demo cluster's snapshot, some
    /// traffic, and what the agent saw (flow records, verdicts, metrics). Needs root.
    Demo,
    /// Run the whole test suite as CI does (installs what is missing first); ends with totals.
    Test,
    /// Format the tree as the tests check it: nightly rustfmt, for the import groups of
    /// rustfmt.toml (std, other crates, this crate); otherwise the same as stable's.
    Fmt,
    /// Run a benchmark and print its figures: `capture`, `saturation`, `datapath` and `agent_http_flood` (need root), `http_flood`, `policy`, `advise`, `metrics`, `enrich`.
    Bench {
        /// Which benchmark.
        name: String,
    },
    /// The soak (needs root; not in CI): the release agent under mixed traffic between test
    /// pods for `--minutes`, then its RSS, series, losses and a sampled set of connections
    /// checked; exits non-zero when a check fails.
    Soak {
        /// How long the traffic runs.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=1440))]
        minutes: u64,
    },
    /// Fuzz every parser (cargo fuzz; not in CI): each target for `--secs` from its seeds.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        secs: u64,
        /// Only this target.
        #[arg(long)]
        target: Option<String>,
        /// Run each seed of the corpus once instead (a quick check).
        #[arg(long)]
        seeds_only: bool,
    },
}

/// Benchmarks live apart from tests: criterion benches and the capture benchmark are all
/// `cargo bench` targets of the flowwatch crate.
fn bench(name: &str) -> anyhow::Result<()> {
    setup::run()?;
    setup::run_cmd(std::process::Command::new("cargo").args([
        "bench",
        "-p",
        "flowwatch",
        "--bench",
        name,
    ]))
}

/// The soak is a `cargo bench` target of the flowwatch crate too (it shares the tests' pod and
/// agent harness), run against the release agent.
fn soak(minutes: u64) -> anyhow::Result<()> {
    setup::run()?;
    setup::run_cmd(
        std::process::Command::new("cargo")
            .args(["bench", "-p", "flowwatch", "--bench", "soak"])
            .env("FLOWWATCH_SOAK_MINUTES", minutes.to_string()),
    )
}

/// The demo is an example of the flowwatch crate (it shares the tests' pod harness, the test kit).
fn demo() -> anyhow::Result<()> {
    setup::run()?;
    let cargo = || std::process::Command::new("cargo");
    setup::run_cmd(cargo().args([
        "build",
        "--quiet",
        "-p",
        "flowwatch",
        "--bin",
        "flowwatch",
        "--example",
        "demo",
    ]))?;
    let target = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target").to_string());
    setup::run_cmd(&mut std::process::Command::new(format!(
        "{target}/debug/examples/demo"
    )))
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::for_tests(),
        Command::K8sBins => k8s::build_binaries().and_then(|_| k8s::build_node_binaries()),
        Command::Cluster { action } => cluster::run(action),
        Command::RenderManifests { check } => deploy::render_manifests(check),
        Command::RenderRules { values, set } => {
            let mut args = Vec::new();
            for v in &values {
                args.extend(["-f", v.as_str()]);
            }
            for s in &set {
                args.extend(["--set", s.as_str()]);
            }
            deploy::render_rules(&args).map(|rules| print!("{rules}"))
        }
        Command::Demo => demo(),
        Command::Test => test::run(),
        Command::Fmt => {
            setup::run_cmd(std::process::Command::new("cargo").args(setup::NIGHTLY_FMT))
        }
        Command::Bench { name } => bench(&name),
        Command::Soak { minutes } => soak(minutes),
        Command::Fuzz {
            secs,
            target,
            seeds_only,
        } => fuzz::run(secs, target.as_deref(), seeds_only),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
