//! The offline `flowwatch policy ...` commands (eval, explain, coverage, whatif, diff,
//! advise, unused).
//!
//! They read what `kubectl get namespaces,nodes,pods,services,networkpolicies -A -o yaml`
//! prints, or folders of manifests as a Git repository holds them (workloads stand for their
//! pods, see `inventory::workloads`), and need no agent and no cluster. The cores are functions over readers and writers
//! ([`eval_flows`], [`write_coverage`]); [`run`] only wires files, stdin/stdout and exit codes.
//!
//! Exit codes: 0 success (including flow lines answered with an `error`), 1 bad arguments, an
//! unreadable `--flows` or an unknown pod in `explain`, 2 a snapshot that cannot be read, 3 an
//! output write failure.

pub mod lines;

use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::{json, Map, Value};

pub mod advise;
pub mod diff;
mod peers;
mod prometheus;
pub mod report;
pub mod table;
pub mod unused;
pub mod whatif;

pub use peers::{PortRef, Resolver};

use crate::inventory::{snapshot, sources, Inventory, ObjectError};
use crate::model::Protocol;
use crate::policy::{
    Coverage, Direction, Peer, PolicyEngine, PolicyOptions, SideResult, SideVerdict,
};

/// `flowwatch policy <eval|explain|coverage>`.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum PolicyCommand {
    /// Evaluate flows (JSON lines on stdin or --flows) against a snapshot; one JSON line out
    /// per flow line in, in order.
    Eval(EvalArgs),
    /// Explain the verdict of one flow: every policy and rule of both sides.
    Explain(ExplainArgs),
    /// Report namespaces without policies or default deny, unprotected pods, and policies
    /// that select no pod.
    Coverage(CoverageArgs),
    /// Judge the traffic the cluster really had (flow logs or Prometheus) before and after a
    /// proposed change: which edges it would break, newly allow or newly cover.
    Whatif(Box<whatif::WhatifArgs>),
    /// Compare two policy sets over the same workloads: every workload pair, protocol and
    /// port range whose reachability changes.
    Diff(diff::DiffArgs),
    /// Least-privilege NetworkPolicies from the traffic the cluster really had (flow logs or
    /// Prometheus): per workload, exactly the observed edges, as YAML for `kubectl apply`.
    Advise(Box<advise::AdviseArgs>),
    /// Which NetworkPolicy rules the observed traffic (flow logs or Prometheus) used, how
    /// many connections each allowed (and alone), and which matched nothing.
    Unused(Box<unused::UnusedArgs>),
}

#[derive(clap::Args, Debug, Clone)]
pub struct SnapshotArgs {
    /// `kubectl get namespaces,nodes,pods,services,networkpolicies -A -o yaml` output or
    /// manifests (YAML, multi-document YAML or JSON): a file, or a folder read recursively
    /// (`*.yaml`, `*.yml`, `*.json`); repeat to merge several.
    #[arg(long = "snapshot", value_name = "PATH", required = true)]
    pub snapshots: Vec<PathBuf>,
    /// Whether ipBlock peers match pod addresses (true: as the upstream e2e suite expects;
    /// false: as Cilium behaves).
    #[arg(long, value_name = "true|false", default_value_t = true, action = clap::ArgAction::Set)]
    pub ipblock_matches_pod_ips: bool,
    /// Declare CNI-specific policy objects in the snapshot (CiliumNetworkPolicy, Calico and
    /// Antrea policies) irrelevant: verdicts are then not marked `cni_policy_present`.
    #[arg(long)]
    pub ignore_cni_policies: bool,
}

#[derive(clap::Args, Debug, Clone)]
pub struct EvalArgs {
    #[command(flatten)]
    pub snapshot: SnapshotArgs,
    /// Flow lines (JSON objects); stdin when absent or `-`.
    #[arg(long, value_name = "FILE")]
    pub flows: Option<PathBuf>,
    /// `json` (the batch contract: one JSON line per flow line; the default when stdout is
    /// not a terminal), `table` (the default on a terminal) or `md`.
    #[arg(short = 'o', long = "output", value_enum)]
    pub output: Option<table::Format>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub snapshot: SnapshotArgs,
    /// Source: `namespace/pod`, `namespace/KIND/name` (a workload), `namespace/name` or an IP
    /// address.
    #[arg(long, value_name = "PEER")]
    pub from: String,
    /// Destination, named like the source.
    #[arg(long, value_name = "PEER")]
    pub to: String,
    /// Destination port (a number or a container port name of the destination) and protocol,
    /// e.g. `80/TCP`, `53/UDP`, `http` (TCP when omitted).
    #[arg(long, value_name = "PORT[/PROTO]", value_parser = parse_port_ref_protocol)]
    pub port: (PortRef, Protocol),
    /// `table` (text for people; `text` is accepted too), `json` or `md`.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

#[derive(clap::Args, Debug, Clone)]
pub struct CoverageArgs {
    #[command(flatten)]
    pub snapshot: SnapshotArgs,
    /// `table` (text for people; `text` is accepted too), `json` or `md`.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// Exit with status 4 when the report lists any gap (a namespace without a policy or a
    /// default deny, an unprotected workload, a policy that selects nothing, an invalid
    /// policy), so CI can require full coverage. Without it, coverage exits 0.
    #[arg(long)]
    pub fail_on_gaps: bool,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// Text for people.
    #[value(name = "table", alias = "text")]
    Text,
    Json,
    /// Markdown, e.g. for a pull request comment.
    Md,
}

/// `80`, `80/TCP`, `53/udp`.
pub fn parse_port_protocol(s: &str) -> Result<(u16, Protocol), String> {
    let (port, protocol) = match s.split_once('/') {
        Some((p, proto)) => (p, proto.parse::<Protocol>()?),
        None => (s, Protocol::Tcp),
    };
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{port:?} is not a port number (1-65535)"))?;
    Ok((port, protocol))
}

/// `80`, `http/TCP`, `dns/UDP`: a port number or name, and a protocol (TCP when omitted).
pub fn parse_port_ref_protocol(s: &str) -> Result<(PortRef, Protocol), String> {
    let (port, protocol) = match s.split_once('/') {
        Some((p, proto)) => (p, proto.parse::<Protocol>()?),
        None => (s, Protocol::Tcp),
    };
    Ok((PortRef::parse(port)?, protocol))
}

/// Runs a `flowwatch policy` command on the process's stdin/stdout/stderr.
pub fn run(cmd: PolicyCommand) -> ExitCode {
    let snapshot = match &cmd {
        PolicyCommand::Eval(a) => &a.snapshot,
        PolicyCommand::Explain(a) => &a.snapshot,
        PolicyCommand::Coverage(a) => &a.snapshot,
        PolicyCommand::Whatif(_)
        | PolicyCommand::Diff(_)
        | PolicyCommand::Advise(_)
        | PolicyCommand::Unused(_) => return run_comparison(cmd),
    };
    let (engine, resolver) = match load(snapshot, &mut io::stderr()) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("error: cannot read snapshot: {e}");
            return ExitCode::from(2);
        }
    };
    let stdout = io::stdout();
    let result = match cmd {
        PolicyCommand::Eval(args) => {
            let format = table::Format::or_default(args.output, table::Format::Json);
            let mut collected = Vec::new();
            let flows = args.flows.filter(|p| p.as_os_str() != "-");
            let name = flows
                .as_ref()
                .map_or("stdin".into(), |p| p.display().to_string());
            let evaluated = {
                let out: Box<dyn Write> = if format == table::Format::Json {
                    Box::new(BufWriter::with_capacity(1 << 16, stdout.lock()))
                } else {
                    Box::new(&mut collected)
                };
                match flows {
                    None => eval_flows_with(&engine, &resolver, io::stdin().lock(), out),
                    Some(path) => match std::fs::File::open(&path) {
                        Ok(f) => eval_flows_with(
                            &engine,
                            &resolver,
                            BufReader::with_capacity(1 << 16, f),
                            out,
                        ),
                        Err(e) => Err(EvalError::Read(e)),
                    },
                }
            };
            match evaluated {
                Ok(_) if format == table::Format::Json => Ok(()),
                Ok(_) => {
                    write_eval_table(&collected, format == table::Format::Md, &mut stdout.lock())
                }
                // Unreadable input is the caller's to fix (e.g. a directory): exit 1, not 3.
                Err(EvalError::Read(e)) => {
                    eprintln!("error: cannot read flows {name}: {e}");
                    return ExitCode::from(1);
                }
                Err(EvalError::Write(e)) => Err(e),
            }
        }
        PolicyCommand::Explain(args) => {
            let (port, protocol) = args.port;
            let peers = resolver
                .peer(&args.from)
                .map_err(|e| format!("--from: {e}"))
                .and_then(|src| {
                    let dst = resolver.peer(&args.to).map_err(|e| format!("--to: {e}"))?;
                    let port = port
                        .resolve(&engine, &dst, protocol)
                        .map_err(|e| format!("--port: {e}"))?;
                    Ok((src, dst, port))
                });
            let (src, dst, port) = match peers {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(1);
                }
            };
            match engine.explain(&src, &dst, port, protocol) {
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(1);
                }
                Ok(explanation) => {
                    let mut out = stdout.lock();
                    match args.output {
                        OutputFormat::Text => write!(out, "{explanation}"),
                        OutputFormat::Md => write!(out, "```text\n{explanation}```\n"),
                        OutputFormat::Json => serde_json::to_writer_pretty(&mut out, &explanation)
                            .map_err(io::Error::from)
                            .and_then(|()| writeln!(out)),
                    }
                }
            }
        }
        PolicyCommand::Coverage(args) => {
            let coverage = engine.coverage();
            let written =
                write_coverage_by_workload(&coverage, &resolver, args.output, &mut stdout.lock());
            if written.is_ok() && args.fail_on_gaps && has_gaps(&coverage) {
                return ExitCode::from(4);
            }
            written
        }
        // Answered above, before a single snapshot is loaded.
        PolicyCommand::Whatif(_)
        | PolicyCommand::Diff(_)
        | PolicyCommand::Advise(_)
        | PolicyCommand::Unused(_) => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`| head`) is the reader's choice, not a failure.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: writing output: {e}");
            ExitCode::from(3)
        }
    }
}

/// The commands that load their states (current, proposed or advised) themselves.
fn run_comparison(cmd: PolicyCommand) -> ExitCode {
    match cmd {
        PolicyCommand::Whatif(args) => whatif::run(&args),
        PolicyCommand::Diff(args) => diff::run(&args),
        PolicyCommand::Advise(args) => advise::run(&args),
        PolicyCommand::Unused(args) => unused::run(&args),
        _ => ExitCode::from(1),
    }
}

/// Reads the snapshot files and folders and builds the engine; every invalid object is
/// reported on `warnings` (one line each, saying what was skipped) and the rest is used.
pub fn load_engine(
    args: &SnapshotArgs,
    warnings: &mut dyn Write,
) -> Result<PolicyEngine, snapshot::SnapshotError> {
    load(args, warnings).map(|(engine, _)| engine)
}

/// [`load_engine`], and the names of its pods and workloads.
pub fn load(
    args: &SnapshotArgs,
    warnings: &mut dyn Write,
) -> Result<(PolicyEngine, Resolver), snapshot::SnapshotError> {
    let (inventory, errors) = sources::load(&args.snapshots)?;
    Ok(engine_of(&inventory, args.options(), errors, warnings))
}

/// Builds the engine and resolver of an inventory; `errors` (the loader's) and the engine's
/// own are reported on `warnings`.
pub fn engine_of(
    inventory: &Inventory,
    options: PolicyOptions,
    mut errors: Vec<ObjectError>,
    warnings: &mut dyn Write,
) -> (PolicyEngine, Resolver) {
    let (engine, resolver, build_errors) = build(inventory, options);
    errors.extend(build_errors);
    for e in &errors {
        // Best effort: warnings must not stop the evaluation.
        let _ = writeln!(warnings, "warning: skipped {e}");
    }
    let cni = engine.cni_policy_counts();
    if !cni.is_empty() {
        let kinds: Vec<String> = cni.iter().map(|(k, n)| format!("{n} {k}")).collect();
        let what = if options.cni_policies_relevant {
            "the sides of the pods they may select are marked cni_policy_present"
        } else {
            "declared irrelevant (--ignore-cni-policies)"
        };
        let _ = writeln!(
            warnings,
            "note: CNI-specific policies are not evaluated ({}); {what}",
            kinds.join(", ")
        );
    }
    (engine, resolver)
}

/// The engine and resolver of an inventory, and the objects the engine left out.
pub fn build(
    inventory: &Inventory,
    options: PolicyOptions,
) -> (PolicyEngine, Resolver, Vec<ObjectError>) {
    let (engine, errors) = build_engine(inventory, options);
    let resolver = Resolver::from_engine(&engine).with_owners(inventory);
    (engine, resolver, errors)
}

impl SnapshotArgs {
    /// The engine's implementation-defined choices these flags select.
    pub fn options(&self) -> PolicyOptions {
        PolicyOptions {
            ipblock_matches_pod_ips: self.ipblock_matches_pod_ips,
            cni_policies_relevant: !self.ignore_cni_policies,
        }
    }

    /// The snapshot files as one inventory with the objects it skipped; an unreadable snapshot
    /// is reported on stderr and answers exit status 2, as every policy command does.
    pub fn inventory(&self) -> Result<(Inventory, Vec<ObjectError>), ExitCode> {
        sources::load(&self.snapshots).map_err(|e| {
            eprintln!("error: cannot read snapshot: {e}");
            ExitCode::from(2)
        })
    }
}

fn build_engine(inventory: &Inventory, options: PolicyOptions) -> (PolicyEngine, Vec<ObjectError>) {
    PolicyEngine::build(inventory, options)
}

/// Why an `eval` run stopped: the flows could not be read, or the output not written.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("reading flows: {0}")]
    Read(#[source] io::Error),
    #[error("writing output: {0}")]
    Write(#[source] io::Error),
}

/// What an `eval` run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvalSummary {
    /// Flow lines answered with a verdict.
    pub evaluated: u64,
    /// Flow lines answered with an `error`.
    pub errors: u64,
}

/// The batch contract over an inventory: builds the engine, then [`eval_flows`]. Invalid
/// objects of the inventory are returned (they were left out of the evaluation).
pub fn eval(
    inventory: &Inventory,
    input: impl BufRead,
    output: impl Write,
    options: PolicyOptions,
) -> Result<(EvalSummary, Vec<ObjectError>), EvalError> {
    let (engine, errors) = PolicyEngine::build(inventory, options);
    Ok((eval_flows(&engine, input, output)?, errors))
}

/// The batch contract: one JSON object per input line, answered by one JSON line, in order.
/// Blank lines are skipped. A line that cannot be evaluated gets an `error` field instead of
/// a verdict; only I/O errors stop the run.
pub fn eval_flows(
    engine: &PolicyEngine,
    input: impl BufRead,
    output: impl Write,
) -> Result<EvalSummary, EvalError> {
    eval_flows_with(engine, &Resolver::from_engine(engine), input, output)
}

/// [`eval_flows`] with the names of a [`Resolver`] (workloads of pods' owners too).
pub fn eval_flows_with(
    engine: &PolicyEngine,
    resolver: &Resolver,
    mut input: impl BufRead,
    mut output: impl Write,
) -> Result<EvalSummary, EvalError> {
    let mut summary = EvalSummary::default();
    let mut buf = Vec::with_capacity(256);
    let mut line_no = 0u64;
    loop {
        let read = lines::read_line_bounded(
            &mut input,
            &mut buf,
            lines::MAX_FLOW_LINE_BYTES,
            line_no + 1,
        );
        if read.map_err(EvalError::Read)? == 0 {
            break;
        }
        line_no += 1;
        let line = String::from_utf8_lossy(&buf);
        if line.trim().is_empty() {
            continue;
        }
        let answer = eval_line_with(engine, resolver, &line, line_no);
        if answer.contains_key("error") {
            summary.errors += 1;
        } else {
            summary.evaluated += 1;
        }
        serde_json::to_writer(&mut output, &answer)
            .map_err(io::Error::from)
            .and_then(|()| output.write_all(b"\n"))
            .map_err(EvalError::Write)?;
    }
    output.flush().map_err(EvalError::Write)?;
    Ok(summary)
}

/// The fields `eval` writes; input fields of these names are replaced, not passed through.
const ANSWER_FIELDS: [&str; 5] = ["verdict", "ingress", "egress", "error", "resolved_port"];

/// Answers one flow line (never fails: problems become an `error` field).
pub fn eval_line(engine: &PolicyEngine, line: &str, line_no: u64) -> Map<String, Value> {
    eval_line_with(engine, &Resolver::from_engine(engine), line, line_no)
}

/// [`eval_line`] with the names of a [`Resolver`].
pub fn eval_line_with(
    engine: &PolicyEngine,
    resolver: &Resolver,
    line: &str,
    line_no: u64,
) -> Map<String, Value> {
    let mut obj = match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(obj)) => obj,
        Ok(_) => return error_only(line_no, "expected a JSON object"),
        Err(e) => return error_only(line_no, &format!("invalid JSON: {e}")),
    };
    // Input that is an earlier answer fed back in must not keep a stale verdict or error.
    for field in ANSWER_FIELDS {
        obj.remove(field);
    }
    match flow_of(engine, resolver, &obj) {
        Err(message) => {
            obj.insert("error".into(), Value::String(message));
        }
        Ok((src, dst, port, protocol)) => match engine.evaluate(&src, &dst, port, protocol) {
            Err(e) => {
                obj.insert("error".into(), Value::String(e.to_string()));
            }
            Ok(v) => {
                if !obj.get("port").is_some_and(Value::is_number) {
                    // Given by name: say which number it resolved to.
                    obj.insert("resolved_port".into(), Value::from(port));
                }
                obj.insert("verdict".into(), Value::from(v.verdict.as_str()));
                obj.insert(
                    "ingress".into(),
                    side_json(engine, &v.ingress, &dst, Direction::Ingress),
                );
                obj.insert(
                    "egress".into(),
                    side_json(engine, &v.egress, &src, Direction::Egress),
                );
            }
        },
    }
    obj
}

fn error_only(line_no: u64, message: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(
        "error".into(),
        Value::String(format!("line {line_no}: {message}")),
    );
    m
}

fn flow_of(
    engine: &PolicyEngine,
    resolver: &Resolver,
    obj: &Map<String, Value>,
) -> Result<(Peer, Peer, u16, Protocol), String> {
    const PEER: &str = "\"namespace/pod\", \"namespace/kind/name\" or an IP address";
    let peer = |field: &str| -> Result<Peer, String> {
        match obj.get(field) {
            Some(Value::String(s)) => resolver.peer(s).map_err(|e| format!("{field}: {e}")),
            Some(_) => Err(format!("{field}: expected a string ({PEER})")),
            None => Err(format!("missing {field:?} ({PEER})")),
        }
    };
    let src = peer("src")?;
    let dst = peer("dst")?;
    let protocol = match obj.get("protocol") {
        None | Some(Value::Null) => Protocol::Tcp,
        Some(Value::String(s)) => s
            .parse::<Protocol>()
            .map_err(|e| format!("protocol: {e}"))?,
        Some(_) => return Err("protocol: expected \"TCP\", \"UDP\" or \"SCTP\"".into()),
    };
    let port = match obj.get("port") {
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("port: {n} is not a port number (1-65535)"))?,
        Some(Value::String(s)) => PortRef::parse(s)
            .and_then(|p| p.resolve(engine, &dst, protocol))
            .map_err(|e| format!("port: {e}"))?,
        Some(_) => return Err("port: expected a number or a port name".into()),
        None => return Err("missing \"port\"".into()),
    };
    Ok((src, dst, port, protocol))
}

fn side_json(engine: &PolicyEngine, side: &SideResult, subject: &Peer, dir: Direction) -> Value {
    let mut m = match side.to_json() {
        Value::Object(m) => m,
        other => return other,
    };
    // Only when the snapshot had invalid policies (a name lookup per side otherwise).
    if side.verdict != SideVerdict::NotApplicable
        && (engine.skipped_policies().next().is_some()
            || engine.skipped_cluster_policies().next().is_some())
    {
        if let Some(ns) = engine.namespace_of(subject) {
            // Invalid cluster-scoped policies may have selected any pod: listed on every side.
            let skipped: Vec<&str> = engine
                .skipped_policies_in(ns, dir)
                .chain(engine.skipped_cluster_policies())
                .collect();
            if !skipped.is_empty() {
                m.insert("skipped_policies".into(), json!(skipped));
            }
        }
    }
    Value::Object(m)
}

/// Whether a coverage report lists any gap (what `--fail-on-gaps` fails on).
pub fn has_gaps(c: &Coverage) -> bool {
    c.namespaces_without_policy().next().is_some()
        || c.namespaces_without_default_deny().next().is_some()
        || !c.pods_without_ingress_policy.is_empty()
        || !c.pods_without_egress_policy.is_empty()
        || !c.policies_selecting_no_pod.is_empty()
        || !c.skipped_policies.is_empty()
}

/// Renders `eval` answers (JSON lines) as a table: one row per flow line.
fn write_eval_table(answers: &[u8], markdown: bool, out: &mut dyn Write) -> io::Result<()> {
    let side = |v: &Value| -> String {
        let verdict = v["verdict"].as_str().unwrap_or("");
        let policies: Vec<&str> = v["policies"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if policies.is_empty() {
            verdict.to_string()
        } else {
            format!("{verdict} ({})", policies.join(", "))
        }
    };
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let rows: Vec<Vec<String>> = String::from_utf8_lossy(answers)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|a| {
            let port = match a.get("resolved_port") {
                Some(n) => format!("{} ({n})", text(&a["port"])),
                None => text(&a["port"]),
            };
            let protocol = a.get("protocol").map_or_else(|| "TCP".into(), text);
            match a.get("error") {
                Some(e) => vec![
                    text(&a["src"]),
                    text(&a["dst"]),
                    port,
                    protocol,
                    "error".into(),
                    text(e),
                    String::new(),
                ],
                None => vec![
                    text(&a["src"]),
                    text(&a["dst"]),
                    port,
                    protocol.to_uppercase(),
                    text(&a["verdict"]),
                    side(&a["egress"]),
                    side(&a["ingress"]),
                ],
            }
        })
        .collect();
    table::write_table(
        out,
        markdown,
        &[
            "SOURCE",
            "DESTINATION",
            "PORT",
            "PROTOCOL",
            "VERDICT",
            "EGRESS",
            "INGRESS",
        ],
        &rows,
    )
}

/// The coverage report with replicas named by their workload (`shop/deployment/web (3
/// pods)`): in text and Markdown the pod lists are folded; JSON keeps the pod lists and adds
/// `workloads_without_ingress_policy` / `workloads_without_egress_policy`.
pub fn write_coverage_by_workload(
    c: &Coverage,
    resolver: &Resolver,
    format: OutputFormat,
    out: &mut dyn Write,
) -> io::Result<()> {
    let ingress = resolver.by_workload(&c.pods_without_ingress_policy);
    let egress = resolver.by_workload(&c.pods_without_egress_policy);
    if format == OutputFormat::Json {
        let mut v = serde_json::to_value(c).map_err(io::Error::from)?;
        if let Value::Object(m) = &mut v {
            m.insert("workloads_without_ingress_policy".into(), json!(ingress));
            m.insert("workloads_without_egress_policy".into(), json!(egress));
        }
        serde_json::to_writer_pretty(&mut *out, &v)?;
        return writeln!(out);
    }
    let folded = Coverage {
        pods_without_ingress_policy: ingress,
        pods_without_egress_policy: egress,
        ..c.clone()
    };
    write_coverage(&folded, format, out)
}

/// Writes the coverage report as text, JSON or Markdown.
pub fn write_coverage(c: &Coverage, format: OutputFormat, out: &mut dyn Write) -> io::Result<()> {
    if format == OutputFormat::Json {
        serde_json::to_writer_pretty(&mut *out, c)?;
        return writeln!(out);
    }
    let md = format == OutputFormat::Md;
    let part = |out: &mut dyn Write, title: &str, items: Vec<String>| {
        section(out, md, title, items.into_iter())
    };
    let without: Vec<&str> = c.namespaces_without_policy().collect();
    part(
        out,
        "Namespaces without any NetworkPolicy",
        without
            .iter()
            .map(std::string::ToString::to_string)
            .collect(),
    )?;
    let no_deny: Vec<String> = c
        .namespaces_without_default_deny()
        .map(|(ns, dirs)| {
            let dirs: Vec<&str> = dirs.iter().map(|d| d.as_str()).collect();
            format!("{ns}: no {} default deny", dirs.join(" and no "))
        })
        .collect();
    part(out, "Namespaces without a default deny", no_deny)?;
    part(
        out,
        "Pods selected by no ingress policy",
        c.pods_without_ingress_policy.clone(),
    )?;
    part(
        out,
        "Pods selected by no egress policy",
        c.pods_without_egress_policy.clone(),
    )?;
    part(
        out,
        "Policies that select no pod",
        c.policies_selecting_no_pod.clone(),
    )?;
    part(
        out,
        "Invalid policies (skipped)",
        c.skipped_policies.clone(),
    )?;
    if !c.cni_policies.is_empty() {
        part(
            out,
            "CNI-specific policies (not evaluated)",
            c.cni_policies
                .iter()
                .map(|(k, n)| format!("{k}: {n}"))
                .collect(),
        )?;
    }
    // Cluster-scoped policies: only when the snapshot has some (the report stays as it was
    // for NetworkPolicy-only clusters).
    let any_cluster = c.namespaces.iter().any(|n| !n.cluster_policies.is_empty())
        || !c.cluster_policies_selecting_no_pod.is_empty()
        || !c.skipped_cluster_policies.is_empty();
    if !any_cluster {
        return Ok(());
    }
    part(
        out,
        "Cluster policies selecting pods of each namespace",
        c.namespaces
            .iter()
            .filter(|n| !n.cluster_policies.is_empty())
            .map(|n| format!("{}: {}", n.namespace, n.cluster_policies.join(", ")))
            .collect(),
    )?;
    let tiers = |t: &[crate::policy::Tier]| -> String {
        if t.is_empty() {
            "none".into()
        } else {
            t.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", ")
        }
    };
    part(
        out,
        "Tiers selecting each workload (pods with the same labels)",
        c.workloads
            .iter()
            .map(|w| {
                let more = match w.pods.len() {
                    1 => String::new(),
                    n => format!(" (+{} more)", n - 1),
                };
                format!(
                    "{}/{}{more}: ingress {}; egress {}",
                    w.namespace,
                    w.pods[0],
                    tiers(&w.ingress),
                    tiers(&w.egress)
                )
            })
            .collect(),
    )?;
    part(
        out,
        "Cluster policies that select no pod",
        c.cluster_policies_selecting_no_pod.clone(),
    )?;
    part(
        out,
        "Invalid cluster policies (skipped)",
        c.skipped_cluster_policies.clone(),
    )
}

fn section(
    out: &mut dyn Write,
    markdown: bool,
    title: &str,
    items: impl ExactSizeIterator<Item = String>,
) -> io::Result<()> {
    if markdown {
        writeln!(out, "### {title} ({})\n", items.len())?;
        for item in items {
            writeln!(out, "- `{item}`")?;
        }
        return writeln!(out);
    }
    writeln!(out, "{title} ({}):", items.len())?;
    for item in items {
        writeln!(out, "  {item}")?;
    }
    writeln!(out)
}
