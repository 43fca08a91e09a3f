//! `flowwatch policy whatif`: judges the traffic a cluster really had (the agents' flow logs,
//! or the edge series in Prometheus) against the current policies and a proposed change, and
//! says which edges the change would break, newly allow or newly cover.
//!
//! The pure parts (edges, changes) are in [`crate::whatif`]; this module reads the inputs,
//! builds both engines and writes the report.

use std::io::{self, BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::{json, Map, Value};

use super::table::{write_table, Format};
use super::{prometheus, Resolver, SnapshotArgs};
use crate::inventory::overlay::{self, ObjectRef};
use crate::inventory::{sources, Inventory, ObjectError};
use crate::policy::{Explanation, Peer, PolicyEngine, SideExplanation};
use crate::whatif::{
    parse_duration, Change, EdgeCount, EdgeEnd, EdgeKey, Edges, PrometheusSource, ServiceTargets,
    EDGE_HISTORY, RAW_TAIL_SECS,
};

#[derive(clap::Args, Debug, Clone)]
pub struct WhatifArgs {
    /// The current state (files or folders, as for every `policy` command).
    #[command(flatten)]
    pub snapshot: SnapshotArgs,
    #[command(flatten)]
    pub proposal: ProposalArgs,
    #[command(flatten)]
    pub traffic: TrafficArgs,
    /// `table` (the default on a terminal), `json` (one object per edge, per line; the
    /// default otherwise) or `md`.
    #[arg(short = 'o', long = "output", value_enum)]
    pub output: Option<Format>,
    /// Exit with status 4 when an edge has one of these changes (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "would_break")]
    pub fail_on: Vec<Change>,
    /// In tables, list unchanged edges too (JSON lists every edge).
    #[arg(long)]
    pub all: bool,
}

/// Where the observed traffic comes from (`whatif`, `advise`, `unused`).
#[derive(clap::Args, Debug, Clone)]
pub struct TrafficArgs {
    /// The agents' flow log files, as written (`-` for stdin); any number, from any nodes.
    #[arg(
        long,
        value_name = "FLOWLOG",
        num_args = 1..,
        required_unless_present = "prometheus",
        conflicts_with = "prometheus"
    )]
    pub flows: Vec<PathBuf>,
    /// Read the edges from Prometheus instead (`http://host:port`): the agents'
    /// `flowwatch_connections_total` series.
    #[arg(long, value_name = "URL", requires = "since")]
    pub prometheus: Option<String>,
    /// How far back to read Prometheus, e.g. `7d`, `12h`.
    #[arg(long, value_name = "DURATION", requires = "prometheus", value_parser = parse_since)]
    pub since: Option<u64>,
}

impl TrafficArgs {
    /// The observed edges, from the flow logs or from Prometheus, Service traffic counted at
    /// its backend's target port in `inventory`. What was left out is reported on stderr
    /// (`verb`: what the command does with the edges); unreadable traffic is exit status 1.
    pub fn edges(&self, inventory: &Inventory, verb: &str) -> Result<Edges, ExitCode> {
        let mut edges = Edges::with_targets(ServiceTargets::of(inventory));
        let read = read_traffic(
            &self.flows,
            self.prometheus.as_deref(),
            self.since,
            &mut edges,
        );
        if let Err(e) = read {
            eprintln!("error: cannot read the observed traffic: {e}");
            return Err(ExitCode::from(1));
        }
        warn_about_reading(&edges, verb);
        Ok(edges)
    }
}

/// Checks a `--since` duration and gives it back in seconds.
pub fn parse_since(s: &str) -> Result<u64, String> {
    match parse_duration(s)?.as_secs() {
        0 => Err(format!("{s:?}: the window must be at least one second")),
        secs => Ok(secs),
    }
}

/// One observed edge, judged before and after.
#[derive(Debug)]
pub struct Judged {
    pub key: EdgeKey,
    pub count: EdgeCount,
    pub change: Change,
    pub before: Result<Explanation, String>,
    pub after: Result<Explanation, String>,
}

/// The current and proposed engines.
pub struct States {
    pub before: (PolicyEngine, Resolver),
    pub after: (PolicyEngine, Resolver),
}

/// The change `policy whatif` and `policy diff` judge: objects added or replaced, and deleted.
#[derive(clap::Args, Debug, Clone)]
pub struct ProposalArgs {
    /// The proposed objects (files or folders): each adds to, or replaces, the current object
    /// of the same kind, namespace and name.
    #[arg(long, value_name = "PATH", num_args = 1..)]
    pub proposed: Vec<PathBuf>,
    /// Objects the change deletes: `KIND/NAMESPACE/NAME` (e.g. `NetworkPolicy/shop/web`).
    #[arg(long, value_name = "KIND/NS/NAME", num_args = 1..)]
    pub delete: Vec<ObjectRef>,
}

impl ProposalArgs {
    /// Says so and returns exit code 1 when nothing is proposed.
    pub fn require_some(&self) -> Result<(), ExitCode> {
        if self.proposed.is_empty() && self.delete.is_empty() {
            eprintln!("error: nothing proposed: give --proposed PATH and/or --delete KIND/NS/NAME");
            return Err(ExitCode::from(1));
        }
        Ok(())
    }

    /// The proposed state over `current`, with the problems of the proposed files; says why
    /// not and returns the exit code: 2 when a file cannot be read, 1 when a deletion names no
    /// object.
    pub fn after(&self, current: &Inventory) -> Result<(Inventory, Vec<ObjectError>), ExitCode> {
        let (proposed, errors) = sources::load(&self.proposed).map_err(|e| {
            eprintln!("error: cannot read proposed: {e}");
            ExitCode::from(2)
        })?;
        let after = proposed_inventory(current, proposed, &self.delete).map_err(|e| {
            eprintln!("error: {e}");
            ExitCode::from(1)
        })?;
        Ok((after, errors))
    }
}

/// Builds the proposed inventory: `proposed` over `current`, less `delete`. Deleting an
/// object that is not there is an error (a typo would otherwise change nothing silently).
pub fn proposed_inventory(
    current: &Inventory,
    proposed: Inventory,
    delete: &[ObjectRef],
) -> Result<Inventory, String> {
    let mut after = current.clone();
    overlay::overlay(&mut after, proposed);
    for object in delete {
        if !overlay::delete(&mut after, object) {
            return Err(format!(
                "--delete {object}: no such object in the current or proposed state"
            ));
        }
    }
    Ok(after)
}

/// Judges every edge on both states.
pub fn judge(states: &States, edges: &Edges) -> Vec<Judged> {
    judge_between(&states.before, &states.after, edges)
}

/// [`judge`] with the two states borrowed (one current state against several proposals).
pub fn judge_between(
    before: &(PolicyEngine, Resolver),
    after: &(PolicyEngine, Resolver),
    edges: &Edges,
) -> Vec<Judged> {
    let mut out: Vec<Judged> = edges
        .edges
        .iter()
        .map(|(key, count)| {
            let before = explain_edge(before, key);
            let after = explain_edge(after, key);
            let change = match (&before, &after) {
                (Ok(b), Ok(a)) => Change::of(b.flow.verdict, a.flow.verdict),
                _ => Change::Unresolved,
            };
            Judged {
                key: key.clone(),
                count: *count,
                change,
                before,
                after,
            }
        })
        .collect();
    // The changes first, the worst first; then by edge.
    out.sort_by(|a, b| a.change.cmp(&b.change).then_with(|| a.key.cmp(&b.key)));
    out
}

/// The explanation of an observed edge's verdict on one state (an error when an end is a
/// workload that state does not have).
pub fn explain_edge(
    (engine, resolver): &(PolicyEngine, Resolver),
    key: &EdgeKey,
) -> Result<Explanation, String> {
    let peer = |end: &EdgeEnd| -> Result<Peer, String> {
        match end {
            EdgeEnd::Address(ip) => Ok(Peer::Ip(*ip)),
            EdgeEnd::Workload {
                namespace,
                kind,
                name,
            } => resolver
                .workload(namespace, kind, name)
                .ok_or_else(|| format!("no {kind} {namespace}/{name}")),
        }
    };
    let src = peer(&key.src)?;
    let dst = peer(&key.dst)?;
    engine
        .explain(&src, &dst, key.port, key.protocol)
        .map_err(|e| e.to_string())
}

/// One side of a verdict: its verdict and reason, the rules that allow it, and the
/// policies that select the pod (which isolate it when none allows).
fn side_json(side: &SideExplanation) -> Value {
    let rules: Vec<Value> = allowing_rules(side)
        .map(|(policy, rule)| json!({"policy": policy, "rule": rule}))
        .collect();
    let selected_by: Vec<&str> = side.policies.iter().map(|p| &*p.policy).collect();
    json!({
        "verdict": side.verdict.as_str(),
        "reason": side.reason,
        "rules": rules,
        "selected_by": selected_by,
    })
}

/// The rules that allow a side: their policy and index.
fn allowing_rules(side: &SideExplanation) -> impl Iterator<Item = (&str, usize)> {
    side.policies.iter().flat_map(|p| {
        p.rules
            .iter()
            .filter(|r| r.allows())
            .map(move |r| (&*p.policy, r.index))
    })
}

fn verdict_json(v: &Result<Explanation, String>) -> Value {
    match v {
        Ok(e) => json!({
            "verdict": e.verdict,
            "egress": side_json(&e.egress),
            "ingress": side_json(&e.ingress),
        }),
        Err(error) => json!({"error": error}),
    }
}

/// The JSON object of one edge.
pub fn edge_json(j: &Judged) -> Value {
    let mut m = Map::new();
    m.insert("src".into(), Value::String(j.key.src.to_string()));
    m.insert("dst".into(), Value::String(j.key.dst.to_string()));
    m.insert("port".into(), Value::from(j.key.port));
    m.insert("protocol".into(), Value::from(j.key.protocol.as_str()));
    m.insert("connections".into(), Value::from(j.count.connections));
    m.insert("established".into(), Value::from(j.count.established));
    m.insert("change".into(), Value::from(j.change.as_str()));
    m.insert("before".into(), verdict_json(&j.before));
    m.insert("after".into(), verdict_json(&j.after));
    Value::Object(m)
}

/// `allowed (egress shop/web[0]; ingress shop/api[0])`, `denied (ingress: data/default-deny,
/// data/postgres-ingress allow nothing here)`, `uncovered`.
pub(crate) fn verdict_text(v: &Result<Explanation, String>) -> String {
    let e = match v {
        Ok(e) => e,
        Err(error) => return format!("error: {error}"),
    };
    let mut parts = Vec::new();
    for (name, side) in [("egress", &e.egress), ("ingress", &e.ingress)] {
        let allowing: Vec<String> = allowing_rules(side)
            .map(|(policy, rule)| format!("{policy}[{rule}]"))
            .collect();
        match side.verdict.as_str() {
            "allowed" if !allowing.is_empty() => {
                parts.push(format!("{name} {}", allowing.join(", ")));
            }
            "allowed" => parts.push(format!("{name} {}", side.reason)),
            "denied" => {
                let selecting: Vec<&str> = side.policies.iter().map(|p| &*p.policy).collect();
                parts.push(format!("{name} denied by {}", selecting.join(", ")));
            }
            _ => {}
        }
    }
    if parts.is_empty() {
        e.verdict.to_string()
    } else {
        format!("{} ({})", e.verdict, parts.join("; "))
    }
}

/// Writes the report; `format` is `Table`, `Json` or `Md`.
pub fn write_report(
    judged: &[Judged],
    edges: &Edges,
    format: Format,
    all: bool,
    out: &mut dyn Write,
) -> io::Result<()> {
    if format == Format::Json {
        for j in judged {
            serde_json::to_writer(&mut *out, &edge_json(j))?;
            writeln!(out)?;
        }
        return out.flush();
    }
    let rows: Vec<Vec<String>> = judged
        .iter()
        .filter(|j| all || j.change != Change::Unchanged)
        .map(|j| {
            vec![
                j.change.to_string(),
                j.key.src.to_string(),
                j.key.dst.to_string(),
                format!("{}/{}", j.key.port, j.key.protocol),
                j.count.connections.to_string(),
                verdict_text(&j.before),
                verdict_text(&j.after),
            ]
        })
        .collect();
    let header = [
        "CHANGE",
        "SOURCE",
        "DESTINATION",
        "PORT",
        "CONNECTIONS",
        "BEFORE",
        "AFTER",
    ];
    if !rows.is_empty() {
        write_table(out, format == Format::Md, &header, &rows)?;
        writeln!(out)?;
    }
    let mut counts: Vec<(Change, usize)> = Vec::new();
    for j in judged {
        match counts.iter_mut().find(|(c, _)| *c == j.change) {
            Some((_, n)) => *n += 1,
            None => counts.push((j.change, 1)),
        }
    }
    let summary: Vec<String> = counts.iter().map(|(c, n)| format!("{n} {c}")).collect();
    let skipped: u64 = edges.skipped.values().sum();
    writeln!(
        out,
        "{} observed edges: {}{}",
        judged.len(),
        if summary.is_empty() {
            "none".to_string()
        } else {
            summary.join(", ")
        },
        if skipped > 0 {
            format!(" ({skipped} connections not judged, see stderr)")
        } else {
            String::new()
        }
    )?;
    out.flush()
}

/// Reads the flow logs (`-`: stdin).
pub fn read_flow_logs(paths: &[PathBuf], edges: &mut Edges) -> Result<(), String> {
    for path in paths {
        let name = path.display().to_string();
        let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
            Box::new(io::stdin().lock())
        } else {
            let f = std::fs::File::open(path).map_err(|e| format!("{name}: {e}"))?;
            Box::new(BufReader::with_capacity(1 << 16, f))
        };
        read_flow_log(reader, &name, edges).map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(())
}

/// Adds the records of one flow log.
pub fn read_flow_log(mut reader: impl BufRead, origin: &str, edges: &mut Edges) -> io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut line_no = 0;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            return Ok(());
        }
        line_no += 1;
        edges.add_flow_log_line(&String::from_utf8_lossy(&buf), origin, line_no);
    }
}

fn warn_all(errors: &[ObjectError], already: &[String], label: &str) -> Vec<String> {
    let mut shown = Vec::new();
    for e in errors {
        let text = e.to_string();
        if !already.contains(&text) && !shown.contains(&text) {
            eprintln!("warning: {label}skipped {text}");
            shown.push(text);
        }
    }
    shown
}

/// Says on stderr which lines were not flow records and which connections were left out
/// (`verb`: what was not done with them, "judged").
fn warn_about_reading(edges: &Edges, verb: &str) {
    for line in &edges.bad_lines {
        eprintln!("warning: not a flow record: {line}");
    }
    if edges.bad_line_count > edges.bad_lines.len() as u64 {
        eprintln!(
            "warning: {} more lines were not flow records",
            edges.bad_line_count - edges.bad_lines.len() as u64
        );
    }
    for (why, n) in &edges.skipped {
        eprintln!("note: {n} connections not {verb}: {}", why.as_str());
    }
}

/// Reads the observed traffic from the flow logs or from Prometheus (`prometheus` and
/// `since` given together) into `edges`.
pub fn read_traffic(
    flows: &[PathBuf],
    prometheus: Option<&str>,
    since: Option<u64>,
    edges: &mut Edges,
) -> Result<(), String> {
    match (prometheus, since) {
        (Some(url), Some(since)) => prometheus::read_edges(url, since, edges).map(|source| {
            if source == PrometheusSource::Raw && since > RAW_TAIL_SECS {
                eprintln!(
                    "note: Prometheus holds no edge history ({EDGE_HISTORY}) back to the \
                     start of the window: read every raw sample instead, which is slow on a \
                     large cluster (docs/policy.md, \"What-if from Prometheus\")"
                );
            }
        }),
        _ => read_flow_logs(flows, edges),
    }
}

/// Runs `policy whatif`.
pub fn run(args: &WhatifArgs) -> ExitCode {
    if let Err(code) = args.proposal.require_some() {
        return code;
    }
    let options = args.snapshot.options();
    let (current, current_errors) = match args.snapshot.inventory() {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let (after, proposed_errors) = match args.proposal.after(&current) {
        Ok(after) => after,
        Err(code) => return code,
    };
    // Each problem once: the proposed state shares most objects with the current one.
    let (engine, resolver, build_errors) = super::build(&current, options);
    let mut shown = warn_all(&current_errors, &[], "");
    shown.extend(warn_all(&build_errors, &shown, ""));
    let before = (engine, resolver);
    let (engine, resolver, build_errors) = super::build(&after, options);
    shown.extend(warn_all(&proposed_errors, &shown, "proposed: "));
    warn_all(&build_errors, &shown, "proposed: ");
    let states = States {
        before,
        after: (engine, resolver),
    };

    let edges = match args.traffic.edges(&current, "judged") {
        Ok(edges) => edges,
        Err(code) => return code,
    };

    let judged = judge(&states, &edges);
    let format = Format::or_default(args.output, Format::Json);
    let written = write_report(&judged, &edges, format, args.all, &mut io::stdout().lock());
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
        Err(e) => {
            eprintln!("error: writing output: {e}");
            return ExitCode::from(3);
        }
    }
    if judged.iter().any(|j| args.fail_on.contains(&j.change)) {
        ExitCode::from(4)
    } else {
        ExitCode::SUCCESS
    }
}
