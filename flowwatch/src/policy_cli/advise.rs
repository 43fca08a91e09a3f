//! `flowwatch policy advise`: least-privilege NetworkPolicies from the traffic a cluster
//! really had (flow logs or Prometheus, as `policy whatif` reads it), on stdout or in files,
//! and with `--verify` the proof that they allow the observed edges and deny the rest.
//!
//! The advice itself is pure ([`crate::advise`]); this module reads the inputs, writes the
//! YAML and reports.

pub mod verify;

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::whatif::TrafficArgs;
use super::SnapshotArgs;
use crate::advise::{self, render, render_cluster, AdviseOptions, ClusterView};

#[derive(clap::Args, Debug, Clone)]
pub struct AdviseArgs {
    /// The cluster (files or folders, as for every `policy` command): its workloads and their
    /// labels, namespaces, nodes and Services. Its NetworkPolicies are what `--verify` compares
    /// against; the advice does not depend on them.
    #[command(flatten)]
    pub snapshot: SnapshotArgs,
    /// The observed traffic: `--flows FLOWLOG...` or `--prometheus URL --since DURATION`.
    #[command(flatten)]
    pub traffic: TrafficArgs,
    /// Write policies for this namespace only (repeat for several); by default every
    /// namespace with a workload.
    #[arg(long = "namespace", value_name = "NS")]
    pub namespaces: Vec<String>,
    /// Allow external IPv4 destinations and sources as networks of this many bits (24: the
    /// /24 of each observed address; 32: each address).
    #[arg(long, value_name = "BITS", default_value_t = 32,
          value_parser = clap::value_parser!(u8).range(0..=32))]
    pub external_prefix: u8,
    /// The same for IPv6 addresses.
    #[arg(long, value_name = "BITS", default_value_t = 128,
          value_parser = clap::value_parser!(u8).range(0..=128))]
    pub external_prefix_v6: u8,
    /// Also allow edges whose connections never succeeded (failed or unanswered only): by
    /// default they are left out, as today's policies may deny them on purpose.
    #[arg(long)]
    pub include_failed: bool,
    /// Write files into this folder instead of stdout (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// With `--out`: one file per namespace (`DIR/NS.yaml`) or per policy
    /// (`DIR/NS/POLICY.yaml`).
    #[arg(long, value_enum, default_value_t = Split::Namespace, requires = "out")]
    pub split: Split,
    /// Judge the advised policies with the policy engine: over the same history (zero
    /// would_break, every edge allowed) and over every workload pair (every pair and port not
    /// observed denied). Prints both figures (stdout with `--out`, else stderr); exit status 4
    /// when either fails.
    #[arg(long)]
    pub verify: bool,
    /// Write ClusterNetworkPolicies (policy.networking.k8s.io/v1alpha2, tier Admin) instead
    /// of NetworkPolicies: per workload one that accepts what was observed, per namespace one
    /// that denies the rest. Ingress from addresses (nodes, external networks), which
    /// v1alpha2 cannot name, stays in a NetworkPolicy of its workload. `--verify` judges them
    /// the same way.
    #[arg(long, alias = "cluster")]
    pub cluster_scoped: bool,
}

/// How `--out` splits the documents into files.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Namespace,
    Workload,
}

/// The files of `--out`: (path under the folder, content), sorted.
pub fn files(docs: &[render::Document], split: Split) -> Vec<(PathBuf, String)> {
    let mut out: Vec<(PathBuf, String)> = Vec::new();
    for d in docs {
        let path = match split {
            Split::Namespace => PathBuf::from(format!("{}.yaml", d.namespace)),
            Split::Workload => Path::new(&d.namespace).join(format!("{}.yaml", d.name)),
        };
        match out.last_mut() {
            Some((p, text)) if *p == path => {
                text.push_str("---\n");
                text.push_str(&d.text);
            }
            _ => out.push((path, format!("---\n{}", d.text))),
        }
    }
    out
}

fn write_files(dir: &Path, files: &[(PathBuf, String)]) -> io::Result<()> {
    for (path, text) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, text)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    }
    Ok(())
}

/// Runs `policy advise`.
pub fn run(args: &AdviseArgs) -> ExitCode {
    let options = args.snapshot.options();
    let (inventory, errors) = match args.snapshot.inventory() {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    for e in &errors {
        eprintln!("warning: skipped {e}");
    }
    let edges = match args.traffic.edges(&inventory, "advised") {
        Ok(edges) => edges,
        Err(code) => return code,
    };

    let view = ClusterView::of(&inventory);
    let known: BTreeSet<&str> = view.namespaces();
    for ns in &args.namespaces {
        if !known.contains(ns.as_str()) {
            eprintln!("error: --namespace {ns}: no workload of the snapshot is in it");
            return ExitCode::from(1);
        }
    }
    let opts = AdviseOptions {
        namespaces: (!args.namespaces.is_empty())
            .then(|| args.namespaces.iter().cloned().collect()),
        external_prefix_v4: args.external_prefix,
        external_prefix_v6: args.external_prefix_v6,
        include_failed: args.include_failed,
    };
    let advice = advise::advise(&view, &edges.edges, &opts);
    for note in &advice.notes {
        eprintln!("note: {note}");
    }
    for (why, keys) in &advice.left_out {
        eprintln!(
            "note: {} observed edges not allowed: {}",
            keys.len(),
            why.as_str()
        );
        for key in keys.iter().take(5) {
            eprintln!("  {} -> {} {}/{}", key.src, key.dst, key.port, key.protocol);
        }
    }
    let docs = if args.cluster_scoped {
        render_cluster::documents(&advice)
    } else {
        render::documents(&advice)
    };
    let yaml = render::stream(&docs);
    eprintln!(
        "advised {} policies in {} namespaces from {} observed edges",
        docs.len(),
        advice.namespaces.len(),
        advice.allowed_edges.len()
    );

    let written = match &args.out {
        None => {
            let mut stdout = io::stdout().lock();
            stdout
                .write_all(yaml.as_bytes())
                .and_then(|()| stdout.flush())
        }
        Some(dir) => write_files(dir, &files(&docs, args.split)),
    };
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
        Err(e) => {
            eprintln!("error: writing the policies: {e}");
            return ExitCode::from(3);
        }
    }
    if !args.verify {
        return ExitCode::SUCCESS;
    }
    let verification = match verify::verify(&inventory, &advice, &yaml, options) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: verify: {e}");
            return ExitCode::from(4);
        }
    };
    for line in verification.lines() {
        if args.out.is_some() {
            println!("{line}");
        } else {
            eprintln!("{line}");
        }
    }
    if verification.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(4)
    }
}
