//! `flowwatch policy diff`: which workload pairs and ports change reachability between two
//! policy sets over the same workloads (the complete matrix, not only observed traffic), as
//! netpol-analyzer's `diff` does.
//!
//! Ports are judged per *segment*: the port numbers where any rule of either set starts or
//! stops matching (a numeric port, an `endPort` range, a named port's number on some
//! workload) cut 1..=65535 into ranges in which every rule matches all ports or none, so one
//! port per range decides the whole range.

use std::io::{self, Write};
use std::process::ExitCode;

use serde_json::{json, Value};

use super::table::{write_table, Format};
use super::whatif::ProposalArgs;
use super::{build, Resolver, SnapshotArgs};
use crate::model::Protocol;
use crate::policy::{Peer, PolicyEngine, RulePort, Verdict};
use crate::whatif::Change;

#[derive(clap::Args, Debug, Clone)]
pub struct DiffArgs {
    /// The current state (files or folders).
    #[command(flatten)]
    pub snapshot: SnapshotArgs,
    #[command(flatten)]
    pub proposal: ProposalArgs,
    /// `table` (the default on a terminal), `json` (one object per line; the default
    /// otherwise) or `md`.
    #[arg(short = 'o', long = "output", value_enum)]
    pub output: Option<Format>,
    /// Exit with status 4 when a pair has one of these changes (`would_break`: reachable
    /// before, not after; `newly_allowed`: the reverse).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "would_break")]
    pub fail_on: Vec<Change>,
}

/// One change of reachability: a workload pair, a protocol and a port range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    pub src: String,
    pub dst: String,
    pub protocol: Protocol,
    pub ports: (u16, u16),
    pub change: Change,
    pub before: Verdict,
    pub after: Verdict,
}

impl Difference {
    pub fn ports_text(&self) -> String {
        match self.ports {
            (a, b) if a == b => a.to_string(),
            (1, 65535) => "all".to_string(),
            (a, b) => format!("{a}-{b}"),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "src": self.src,
            "dst": self.dst,
            "protocol": self.protocol.as_str(),
            "ports": self.ports_text(),
            "port_from": self.ports.0,
            "port_to": self.ports.1,
            "change": self.change.as_str(),
            "before": self.before.as_str(),
            "after": self.after.as_str(),
        })
    }
}

/// The first port of every segment of 1..=65535 in which each rule of `engines` matches
/// every port or none (per protocol), with the named ports' numbers of every pod.
pub fn segment_starts(engines: &[&PolicyEngine], protocol: Protocol) -> Vec<u16> {
    let mut starts = vec![1u32];
    let mut cut = |a: u32, b: u32| {
        starts.push(a);
        starts.push(b + 1);
    };
    for engine in engines {
        for port in engine.rule_ports() {
            if let RulePort::Range(p, a, b) = port {
                if p == protocol {
                    cut(u32::from(a), u32::from(b));
                }
            }
        }
        // A named port matches its number on the destination that has it.
        for pod in engine.pods() {
            let peer = Peer::Pod {
                namespace: pod.namespace.to_string(),
                name: pod.name.to_string(),
            };
            for (_, n, p) in engine.named_ports(&peer) {
                if p == protocol {
                    cut(u32::from(n), u32::from(n));
                }
            }
        }
    }
    starts.sort_unstable();
    starts.dedup();
    starts
        .into_iter()
        .filter(|s| (1..=65535).contains(s))
        .map(|s| s as u16)
        .collect()
}

/// Whether policies let a connection through (allowed, or no policy governs it).
fn reachable(v: Verdict) -> bool {
    v != Verdict::Denied
}

/// The workloads policies apply to (not host-network, not terminated), as
/// (`namespace/kind/name`, the pod standing for it), sorted.
pub fn workload_ends(engine: &PolicyEngine, resolver: &Resolver) -> Vec<(String, Peer)> {
    let usable: std::collections::HashSet<(&str, &str)> = engine
        .pods()
        .filter(|p| !p.host_network && !p.terminated)
        .map(|p| (p.namespace, p.name))
        .collect();
    resolver
        .workloads()
        .into_iter()
        .filter_map(|(ns, kind, name)| {
            let peer = resolver.workload(ns, kind, name)?;
            let Peer::Pod {
                namespace,
                name: pod,
            } = &peer
            else {
                return None;
            };
            usable
                .contains(&(namespace.as_str(), pod.as_str()))
                .then(|| (format!("{ns}/{kind}/{name}"), peer))
        })
        .collect()
}

/// Every reachability change between the workloads both states have (pairs of different
/// workloads; host-network pods and terminated pods are left out: policies do not apply).
pub fn diff(
    before: (&PolicyEngine, &Resolver),
    after: (&PolicyEngine, &Resolver),
) -> Vec<Difference> {
    let before_ends = workload_ends(before.0, before.1);
    let after_ends = workload_ends(after.0, after.1);
    let common: Vec<(&String, &Peer, &Peer)> = before_ends
        .iter()
        .filter_map(|(label, b)| {
            after_ends
                .iter()
                .find(|(l, _)| l == label)
                .map(|(_, a)| (label, b, a))
        })
        .collect();
    let mut out = Vec::new();
    for protocol in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
        let starts = segment_starts(&[before.0, after.0], protocol);
        for (src_label, src_b, src_a) in &common {
            for (dst_label, dst_b, dst_a) in &common {
                if src_label == dst_label {
                    continue;
                }
                let mut open: Option<Difference> = None;
                for (i, &start) in starts.iter().enumerate() {
                    let end = starts.get(i + 1).map_or(65535, |next| next - 1);
                    let verdict = |engine: &PolicyEngine, s: &Peer, d: &Peer| {
                        engine.evaluate(s, d, start, protocol).map(|v| v.verdict)
                    };
                    let (Ok(b), Ok(a)) = (
                        verdict(before.0, src_b, dst_b),
                        verdict(after.0, src_a, dst_a),
                    ) else {
                        continue;
                    };
                    let change = match (reachable(b), reachable(a)) {
                        (true, false) => Some(Change::WouldBreak),
                        (false, true) => Some(Change::NewlyAllowed),
                        _ => None,
                    };
                    // Extend the open range when the next segment changes the same way.
                    match (&mut open, change) {
                        (Some(d), Some(c)) if d.change == c && d.before == b && d.after == a => {
                            d.ports.1 = end;
                        }
                        (_, change) => {
                            out.extend(open.take());
                            open = change.map(|change| Difference {
                                src: (*src_label).clone(),
                                dst: (*dst_label).clone(),
                                protocol,
                                ports: (start, end),
                                change,
                                before: b,
                                after: a,
                            });
                        }
                    }
                }
                out.extend(open.take());
            }
        }
    }
    out.sort_by(|a, b| {
        (a.change, &a.src, &a.dst, a.protocol, a.ports)
            .cmp(&(b.change, &b.src, &b.dst, b.protocol, b.ports))
    });
    out
}

/// Writes the differences.
pub fn write_report(diffs: &[Difference], format: Format, out: &mut dyn Write) -> io::Result<()> {
    if format == Format::Json {
        for d in diffs {
            serde_json::to_writer(&mut *out, &d.to_json())?;
            writeln!(out)?;
        }
        return out.flush();
    }
    if !diffs.is_empty() {
        let rows: Vec<Vec<String>> = diffs
            .iter()
            .map(|d| {
                vec![
                    d.change.to_string(),
                    d.src.clone(),
                    d.dst.clone(),
                    format!("{}/{}", d.ports_text(), d.protocol),
                    d.before.to_string(),
                    d.after.to_string(),
                ]
            })
            .collect();
        let header = [
            "CHANGE",
            "SOURCE",
            "DESTINATION",
            "PORTS",
            "BEFORE",
            "AFTER",
        ];
        write_table(out, format == Format::Md, &header, &rows)?;
        writeln!(out)?;
    }
    let breaks = diffs
        .iter()
        .filter(|d| d.change == Change::WouldBreak)
        .count();
    writeln!(
        out,
        "{} reachability changes: {} would_break, {} newly_allowed",
        diffs.len(),
        breaks,
        diffs.len() - breaks
    )?;
    out.flush()
}

/// Runs `policy diff`.
pub fn run(args: &DiffArgs) -> ExitCode {
    if let Err(code) = args.proposal.require_some() {
        return code;
    }
    let options = args.snapshot.options();
    let (current, mut errors) = match args.snapshot.inventory() {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let (after, proposed_errors) = match args.proposal.after(&current) {
        Ok(after) => after,
        Err(code) => return code,
    };
    let (engine_b, resolver_b, build_b) = build(&current, options);
    let (engine_a, resolver_a, build_a) = build(&after, options);
    errors.extend(build_b);
    let mut shown = Vec::new();
    for (label, list) in [
        ("", &errors),
        ("proposed: ", &proposed_errors),
        ("proposed: ", &build_a),
    ] {
        for e in list {
            let text = e.to_string();
            if !shown.contains(&text) {
                eprintln!("warning: {label}skipped {text}");
                shown.push(text);
            }
        }
    }
    let diffs = diff((&engine_b, &resolver_b), (&engine_a, &resolver_a));
    let format = Format::or_default(args.output, Format::Json);
    match write_report(&diffs, format, &mut io::stdout().lock()) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
        Err(e) => {
            eprintln!("error: writing output: {e}");
            return ExitCode::from(3);
        }
    }
    if diffs.iter().any(|d| args.fail_on.contains(&d.change)) {
        ExitCode::from(4)
    } else {
        ExitCode::SUCCESS
    }
}
