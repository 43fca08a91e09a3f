//! `flowwatch policy unused`: which NetworkPolicy rules the traffic a cluster really had (flow
//! logs or Prometheus, as `policy whatif` reads it) used, and which matched nothing.
//!
//! The counting is pure ([`crate::whatif::usage`]); this module reads the inputs and writes the
//! report.

use std::io::{self, Write};
use std::process::ExitCode;

use serde_json::json;

use super::table::{write_table, Format};
use super::whatif::{explain_edge, TrafficArgs};
use super::SnapshotArgs;
use crate::inventory::sources;
use crate::whatif::usage::Usage;

#[derive(clap::Args, Debug, Clone)]
pub struct UnusedArgs {
    /// The cluster and its NetworkPolicies (files or folders).
    #[command(flatten)]
    pub snapshot: SnapshotArgs,
    /// The observed traffic: `--flows FLOWLOG...` or `--prometheus URL --since DURATION`.
    #[command(flatten)]
    pub traffic: TrafficArgs,
    /// `table` (the default on a terminal), `json` (one object per rule, per line; the default
    /// otherwise) or `md`.
    #[arg(short = 'o', long = "output", value_enum)]
    pub output: Option<Format>,
}

/// Writes the report: every rule with what it matched, then the unused ones.
pub fn write_report(usage: &Usage, format: Format, out: &mut dyn Write) -> io::Result<()> {
    if format == Format::Json {
        for (r, u) in &usage.rules {
            let line = json!({"policy": r.policy, "direction": r.direction, "rule": r.index,
                "connections": u.connections, "sole_connections": u.sole_connections,
                "edges": u.edges, "peers": u.peers, "unused": u.connections == 0});
            writeln!(out, "{line}")?;
        }
        return out.flush();
    }
    let rows: Vec<Vec<String>> = usage
        .rules
        .iter()
        .map(|(r, u)| {
            vec![
                r.policy.clone(),
                format!("{}[{}]", r.direction, r.index),
                u.connections.to_string(),
                u.sole_connections.to_string(),
                u.edges.to_string(),
                u.peers.iter().cloned().collect::<Vec<_>>().join(", "),
            ]
        })
        .collect();
    if !rows.is_empty() {
        let header = ["POLICY", "RULE", "CONNECTIONS", "SOLE", "EDGES", "PEERS"];
        write_table(out, format == Format::Md, &header, &rows)?;
        writeln!(out)?;
    }
    let unused: Vec<String> = usage.unused().map(|r| r.to_string()).collect();
    let policies = usage.unused_policies();
    writeln!(
        out,
        "{} rules: {} unused; policies whose rules matched nothing: {}",
        usage.rules.len(),
        unused.len(),
        if policies.is_empty() {
            "none".to_string()
        } else {
            policies.join(", ")
        }
    )?;
    out.flush()
}

/// Runs `policy unused`.
pub fn run(args: UnusedArgs) -> ExitCode {
    let options = args.snapshot.options();
    let (inventory, errors) = match sources::load(&args.snapshot.snapshots) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("error: cannot read snapshot: {e}");
            return ExitCode::from(2);
        }
    };
    let (engine, resolver, build_errors) = super::build(&inventory, options);
    for e in errors.iter().chain(&build_errors) {
        eprintln!("warning: skipped {e}");
    }
    let edges = match args.traffic.edges(&inventory, "counted") {
        Ok(edges) => edges,
        Err(code) => return code,
    };
    let state = (engine, resolver);
    let mut usage = Usage::of_policies(&inventory.network_policies);
    let mut unresolved = 0u64;
    for (key, count) in &edges.edges {
        match explain_edge(&state, key) {
            Ok(e) => usage.add(key, count, &e),
            Err(_) => unresolved += 1,
        }
    }
    if unresolved > 0 {
        eprintln!("note: {unresolved} observed edges name workloads the snapshot does not have");
    }
    let format = Format::or_default(args.output, Format::Json);
    match write_report(&usage, format, &mut io::stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: writing output: {e}");
            ExitCode::from(3)
        }
    }
}
