//! The offline `flowwatch policy ...` commands (eval, explain, coverage).
//!
//! They read what `kubectl get namespaces,nodes,pods,services,networkpolicies -A -o yaml`
//! prints and need no agent and no cluster. The cores are functions over readers and writers
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

use crate::inventory::{snapshot, Inventory, ObjectError};
use crate::model::Protocol;
use crate::policy::{
    Coverage, DecidedBy, Direction, Peer, PolicyEngine, PolicyOptions, RuleId, SideResult,
    SideVerdict,
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
}

#[derive(clap::Args, Debug, Clone)]
pub struct SnapshotArgs {
    /// `kubectl get namespaces,nodes,pods,services,networkpolicies -A -o yaml` output
    /// (YAML, multi-document YAML or JSON); repeat to merge several files.
    #[arg(long = "snapshot", value_name = "FILE", required = true)]
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
}

#[derive(clap::Args, Debug, Clone)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub snapshot: SnapshotArgs,
    /// Source: `namespace/pod` or an IP address.
    #[arg(long, value_name = "PEER")]
    pub from: String,
    /// Destination: `namespace/pod` or an IP address.
    #[arg(long, value_name = "PEER")]
    pub to: String,
    /// Destination port and protocol, e.g. `80/TCP`, `53/UDP` (TCP when omitted).
    #[arg(long, value_name = "PORT[/PROTO]", value_parser = parse_port_protocol)]
    pub port: (u16, Protocol),
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

#[derive(clap::Args, Debug, Clone)]
pub struct CoverageArgs {
    #[command(flatten)]
    pub snapshot: SnapshotArgs,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Text,
    Json,
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

/// Runs a `flowwatch policy` command on the process's stdin/stdout/stderr.
pub fn run(cmd: PolicyCommand) -> ExitCode {
    let snapshot = match &cmd {
        PolicyCommand::Eval(a) => &a.snapshot,
        PolicyCommand::Explain(a) => &a.snapshot,
        PolicyCommand::Coverage(a) => &a.snapshot,
    };
    let engine = match load_engine(snapshot, &mut io::stderr()) {
        Ok(engine) => engine,
        Err(e) => {
            eprintln!("error: cannot read snapshot: {e}");
            return ExitCode::from(2);
        }
    };
    let stdout = io::stdout();
    let result = match cmd {
        PolicyCommand::Eval(args) => {
            let out = BufWriter::with_capacity(1 << 16, stdout.lock());
            let flows = args.flows.filter(|p| p.as_os_str() != "-");
            let name = flows
                .as_ref()
                .map_or("stdin".into(), |p| p.display().to_string());
            let evaluated = match flows {
                None => eval_flows(&engine, io::stdin().lock(), out),
                Some(path) => match std::fs::File::open(&path) {
                    Ok(f) => eval_flows(&engine, BufReader::with_capacity(1 << 16, f), out),
                    Err(e) => Err(EvalError::Read(e)),
                },
            };
            match evaluated {
                Ok(_) => Ok(()),
                // Unreadable input is the caller's to fix (e.g. a directory): exit 1, not 3.
                Err(EvalError::Read(e)) => {
                    eprintln!("error: cannot read flows {name}: {e}");
                    return ExitCode::from(1);
                }
                Err(EvalError::Write(e)) => Err(e),
            }
        }
        PolicyCommand::Explain(args) => {
            let peers = args
                .from
                .parse::<Peer>()
                .map_err(|e| format!("--from: {e}"))
                .and_then(|src| {
                    Ok((
                        src,
                        args.to.parse::<Peer>().map_err(|e| format!("--to: {e}"))?,
                    ))
                });
            let (src, dst) = match peers {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(1);
                }
            };
            let (port, protocol) = args.port;
            match engine.explain(&src, &dst, port, protocol) {
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(1);
                }
                Ok(explanation) => {
                    let mut out = stdout.lock();
                    match args.output {
                        OutputFormat::Text => write!(out, "{explanation}"),
                        OutputFormat::Json => serde_json::to_writer_pretty(&mut out, &explanation)
                            .map_err(io::Error::from)
                            .and_then(|()| writeln!(out)),
                    }
                }
            }
        }
        PolicyCommand::Coverage(args) => {
            write_coverage(&engine.coverage(), args.output, &mut stdout.lock())
        }
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

/// Reads the snapshot files and builds the engine; every invalid object is reported on
/// `warnings` (one line each, saying what was skipped) and the rest is used.
pub fn load_engine(
    args: &SnapshotArgs,
    warnings: &mut dyn Write,
) -> Result<PolicyEngine, snapshot::SnapshotError> {
    let (inventory, mut errors) = snapshot::load_files(&args.snapshots)?;
    let (engine, build_errors) = build_engine(
        &inventory,
        PolicyOptions {
            ipblock_matches_pod_ips: args.ipblock_matches_pod_ips,
            cni_policies_relevant: !args.ignore_cni_policies,
        },
    );
    errors.extend(build_errors);
    for e in &errors {
        // Best effort: warnings must not stop the evaluation.
        let _ = writeln!(warnings, "warning: skipped {e}");
    }
    let cni = engine.cni_policy_counts();
    if !cni.is_empty() {
        let kinds: Vec<String> = cni.iter().map(|(k, n)| format!("{n} {k}")).collect();
        let what = if args.ignore_cni_policies {
            "declared irrelevant (--ignore-cni-policies)"
        } else {
            "the sides of the pods they may select are marked cni_policy_present"
        };
        let _ = writeln!(
            warnings,
            "note: CNI-specific policies are not evaluated ({}); {what}",
            kinds.join(", ")
        );
    }
    Ok(engine)
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
        let answer = eval_line(engine, &line, line_no);
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
const ANSWER_FIELDS: [&str; 4] = ["verdict", "ingress", "egress", "error"];

/// Answers one flow line (never fails: problems become an `error` field).
pub fn eval_line(engine: &PolicyEngine, line: &str, line_no: u64) -> Map<String, Value> {
    let mut obj = match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(obj)) => obj,
        Ok(_) => return error_only(line_no, "expected a JSON object"),
        Err(e) => return error_only(line_no, &format!("invalid JSON: {e}")),
    };
    // Input that is an earlier answer fed back in must not keep a stale verdict or error.
    for field in ANSWER_FIELDS {
        obj.remove(field);
    }
    match flow_of(&obj) {
        Err(message) => {
            obj.insert("error".into(), Value::String(message));
        }
        Ok((src, dst, port, protocol)) => match engine.evaluate(&src, &dst, port, protocol) {
            Err(e) => {
                obj.insert("error".into(), Value::String(e.to_string()));
            }
            Ok(v) => {
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

fn flow_of(obj: &Map<String, Value>) -> Result<(Peer, Peer, u16, Protocol), String> {
    let peer = |field: &str| -> Result<Peer, String> {
        match obj.get(field) {
            Some(Value::String(s)) => s.parse::<Peer>().map_err(|e| format!("{field}: {e}")),
            Some(_) => Err(format!(
                "{field}: expected a string (\"namespace/pod\" or an IP address)"
            )),
            None => Err(format!(
                "missing {field:?} (\"namespace/pod\" or an IP address)"
            )),
        }
    };
    let src = peer("src")?;
    let dst = peer("dst")?;
    let port = match obj.get("port") {
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("port: {n} is not a port number (1-65535)"))?,
        Some(_) => return Err("port: expected a number".into()),
        None => return Err("missing \"port\"".into()),
    };
    let protocol = match obj.get("protocol") {
        None | Some(Value::Null) => Protocol::Tcp,
        Some(Value::String(s)) => s
            .parse::<Protocol>()
            .map_err(|e| format!("protocol: {e}"))?,
        Some(_) => return Err("protocol: expected \"TCP\", \"UDP\" or \"SCTP\"".into()),
    };
    Ok((src, dst, port, protocol))
}

fn side_json(engine: &PolicyEngine, side: &SideResult, subject: &Peer, dir: Direction) -> Value {
    let mut m = Map::new();
    m.insert("verdict".into(), Value::from(side.verdict.as_str()));
    m.insert("policies".into(), json!(side.policies()));
    m.insert(
        "rules".into(),
        Value::Array(
            side.allowed_by
                .iter()
                .map(|r| json!({"policy": &*r.policy, "rule": r.rule}))
                .collect(),
        ),
    );
    m.insert("reason".into(), Value::from(side.reason.as_str()));
    m.insert("tier".into(), Value::from(side.tier.as_str()));
    if side.cni_policy_present {
        m.insert("cni_policy_present".into(), Value::Bool(true));
    }
    if let Some(by) = &side.decided_by {
        m.insert("decided_by".into(), decided_by_json(by));
    }
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

/// `{"kind", "name", "rule", "action"}`; `rule` is the rule's name, else its index, and
/// `null` for a NetworkPolicy denial (no rule makes it).
fn decided_by_json(by: &DecidedBy) -> Value {
    let rule = match &by.rule {
        Some(RuleId::Name(n)) => Value::from(&**n),
        Some(RuleId::Index(i)) => Value::from(*i),
        None => Value::Null,
    };
    json!({"kind": by.kind.as_str(), "name": &*by.name, "rule": rule, "action": by.action.as_str()})
}

/// Writes the coverage report as text or JSON.
pub fn write_coverage(c: &Coverage, format: OutputFormat, out: &mut dyn Write) -> io::Result<()> {
    if format == OutputFormat::Json {
        serde_json::to_writer_pretty(&mut *out, c)?;
        return writeln!(out);
    }
    let without: Vec<&str> = c.namespaces_without_policy().collect();
    section(
        out,
        "Namespaces without any NetworkPolicy",
        without.iter().map(|s| s.to_string()),
    )?;
    let no_deny: Vec<String> = c
        .namespaces_without_default_deny()
        .map(|(ns, dirs)| {
            let dirs: Vec<&str> = dirs.iter().map(|d| d.as_str()).collect();
            format!("{ns}: no {} default deny", dirs.join(" and no "))
        })
        .collect();
    section(
        out,
        "Namespaces without a default deny",
        no_deny.into_iter(),
    )?;
    section(
        out,
        "Pods selected by no ingress policy",
        c.pods_without_ingress_policy.iter().cloned(),
    )?;
    section(
        out,
        "Pods selected by no egress policy",
        c.pods_without_egress_policy.iter().cloned(),
    )?;
    section(
        out,
        "Policies that select no pod",
        c.policies_selecting_no_pod.iter().cloned(),
    )?;
    section(
        out,
        "Invalid policies (skipped)",
        c.skipped_policies.iter().cloned(),
    )?;
    if !c.cni_policies.is_empty() {
        section(
            out,
            "CNI-specific policies (not evaluated)",
            c.cni_policies
                .iter()
                .map(|(k, n)| format!("{k}: {n}"))
                .collect::<Vec<_>>()
                .into_iter(),
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
    section(
        out,
        "Cluster policies selecting pods of each namespace",
        c.namespaces
            .iter()
            .filter(|n| !n.cluster_policies.is_empty())
            .map(|n| format!("{}: {}", n.namespace, n.cluster_policies.join(", ")))
            .collect::<Vec<_>>()
            .into_iter(),
    )?;
    let tiers = |t: &[crate::policy::Tier]| -> String {
        if t.is_empty() {
            "none".into()
        } else {
            t.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", ")
        }
    };
    section(
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
            .collect::<Vec<_>>()
            .into_iter(),
    )?;
    section(
        out,
        "Cluster policies that select no pod",
        c.cluster_policies_selecting_no_pod.iter().cloned(),
    )?;
    section(
        out,
        "Invalid cluster policies (skipped)",
        c.skipped_cluster_policies.iter().cloned(),
    )
}

fn section(
    out: &mut dyn Write,
    title: &str,
    items: impl ExactSizeIterator<Item = String>,
) -> io::Result<()> {
    writeln!(out, "{title} ({}):", items.len())?;
    for item in items {
        writeln!(out, "  {item}")?;
    }
    writeln!(out)
}
