//! `flowwatch report`: the observed traffic (flow logs or Prometheus, read as `policy whatif`
//! reads it), judged by the snapshot's policies, as one self-contained HTML page.
//!
//! Nothing here evaluates anything itself: each edge is explained by the policy engine
//! ([`explain_edge`]), rule usage is [`Usage`] (as `policy unused` counts it), the advice is
//! [`crate::advise`] rendered as `policy advise` writes it. This module gathers their answers
//! into a [`Report`] and [`crate::report::html`] draws it.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use super::whatif::{explain_edge, verdict_text, TrafficArgs};
use super::SnapshotArgs;
use crate::advise::{self, render, AdviseOptions, ClusterView};
use crate::inventory::Inventory;
use crate::policy::{PolicyOptions, SideExplanation};
use crate::report::{html, AdvisedPolicy, EdgeClass, NamespaceCoverage, Report, ReportEdge};
use crate::whatif::usage::Usage;
use crate::whatif::{EdgeEnd, Edges};

#[derive(clap::Args, Debug, Clone)]
pub struct ReportArgs {
    /// The cluster and its policies (files or folders, as for every `policy` command):
    /// `kubectl get namespaces,nodes,pods,services,networkpolicies -A -o yaml` or manifests.
    #[command(flatten)]
    pub snapshot: SnapshotArgs,
    /// The observed traffic: `--flows FLOWLOG...` or `--prometheus URL --since DURATION`.
    #[command(flatten)]
    pub traffic: TrafficArgs,
    /// The HTML file to write (`-`: stdout). One file, nothing loaded when it is opened.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// Whether a policy of the side's direction (any tier) selects its pod.
fn covered(side: &SideExplanation) -> bool {
    !side.policies.is_empty() || !side.admin.is_empty() || !side.baseline.is_empty()
}

/// The report of `edges` over `inventory` (`source`: where the edges came from).
pub fn collect(
    inventory: &Inventory,
    options: PolicyOptions,
    edges: &Edges,
    source: String,
) -> Report {
    let (engine, resolver, _) = super::build(inventory, options);
    let view = ClusterView::of(inventory);
    let state = (engine, resolver);
    let mut usage = Usage::of_policies(&inventory.network_policies);
    let mut coverage: BTreeMap<String, NamespaceCoverage> = BTreeMap::new();
    let mut report = Report {
        source,
        nodes: view.nodes.clone(),
        ..Report::default()
    };
    let mut unresolved = 0usize;
    for (key, count) in &edges.edges {
        let explained = explain_edge(&state, key);
        let class = EdgeClass::of(explained.as_ref().ok().map(|e| e.flow.verdict), count);
        if let Ok(e) = &explained {
            usage.add(key, count, e);
            for (end, side, ingress) in [(&key.src, &e.egress, false), (&key.dst, &e.ingress, true)]
            {
                let EdgeEnd::Workload { namespace, .. } = end else {
                    continue;
                };
                let c = coverage
                    .entry(namespace.clone())
                    .or_insert_with(|| NamespaceCoverage {
                        namespace: namespace.clone(),
                        ..NamespaceCoverage::default()
                    });
                let is_covered = u64::from(covered(side));
                if ingress {
                    c.ingress_edges += 1;
                    c.ingress_covered += is_covered;
                } else {
                    c.egress_edges += 1;
                    c.egress_covered += is_covered;
                }
                c.connections += count.connections;
                c.connections_covered += is_covered * count.connections;
            }
        } else {
            unresolved += 1;
        }
        report.edges.push(ReportEdge {
            key: key.clone(),
            count: *count,
            class,
            why: verdict_text(&explained),
        });
    }
    report.coverage = coverage.into_values().collect();
    report.rules = usage.rules.len();
    report.unused_rules = usage
        .unused()
        .map(std::string::ToString::to_string)
        .collect();
    report.unused_policies = usage
        .unused_policies()
        .into_iter()
        .map(String::from)
        .collect();

    let advice = advise::advise(&view, &edges.edges, &AdviseOptions::default());
    report.advised = render::documents(&advice)
        .into_iter()
        .map(|d| AdvisedPolicy {
            namespace: d.namespace,
            name: d.name,
            yaml: d.text,
        })
        .collect();
    if unresolved > 0 {
        report.notes.push(format!(
            "{unresolved} observed edges name workloads the snapshot does not have (unresolved)"
        ));
    }
    for (why, n) in &edges.skipped {
        report
            .notes
            .push(format!("{n} connections not shown: {}", why.as_str()));
    }
    for (why, keys) in &advice.left_out {
        report.notes.push(format!(
            "{} observed edges not allowed by the advised policies: {}",
            keys.len(),
            why.as_str()
        ));
    }
    report.notes.extend(advice.notes.iter().cloned());
    report
}

/// Says where the traffic came from, as the page's header shows it.
fn source_of(traffic: &TrafficArgs) -> String {
    if let (Some(url), Some(since)) = (&traffic.prometheus, traffic.since) {
        format!(
            "Prometheus {url}, the last {}",
            humantime::format_duration(std::time::Duration::from_secs(since))
        )
    } else {
        let files: Vec<String> = traffic
            .flows
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        format!("flow logs {}", files.join(", "))
    }
}

/// Runs `flowwatch report`.
pub fn run(args: &ReportArgs) -> ExitCode {
    let (inventory, errors) = match args.snapshot.inventory() {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    for e in &errors {
        eprintln!("warning: skipped {e}");
    }
    let edges = match args.traffic.edges(&inventory, "shown") {
        Ok(edges) => edges,
        Err(code) => return code,
    };
    let report = collect(
        &inventory,
        args.snapshot.options(),
        &edges,
        source_of(&args.traffic),
    );
    let page = html::page(&report);
    let written = if args.out.as_os_str() == "-" {
        let mut stdout = io::stdout().lock();
        stdout
            .write_all(page.as_bytes())
            .and_then(|()| stdout.flush())
    } else {
        std::fs::write(&args.out, page.as_bytes())
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", args.out.display())))
    };
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
        Err(e) => {
            eprintln!("error: writing the report: {e}");
            return ExitCode::from(3);
        }
    }
    let counts: Vec<String> = report
        .class_counts()
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(c, n)| format!("{n} {}", c.as_str()))
        .collect();
    eprintln!(
        "report: {} edges ({}), {} namespaces, {} unused rules, {} advised policies",
        report.edges.len(),
        if counts.is_empty() {
            "none".to_string()
        } else {
            counts.join(", ")
        },
        report.coverage.len(),
        report.unused_rules.len(),
        report.advised.len()
    );
    ExitCode::SUCCESS
}
