//! `flowwatch policy unused`: which NetworkPolicy rules the traffic a cluster really had (flow
//! logs or Prometheus, as `policy whatif` reads it) used, and which matched nothing.
//!
//! The counting is pure ([`crate::whatif::usage`]); this module reads the inputs and writes the
//! report.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::process::ExitCode;

use serde_json::{json, Value};

use super::table::{write_table, Format};
use super::whatif::{explain_edge, judge_between, TrafficArgs};
use super::SnapshotArgs;
use crate::advise::cluster::ClusterView;
use crate::inventory::Inventory;
use crate::metrics::rules::rule_label;
use crate::policy::PolicyOptions;
use crate::whatif::broad::{self, Tightening};
use crate::whatif::usage::{CountedRule, RuleRef, RuleUse, Usage};
use crate::whatif::{Change, Edges};

#[derive(clap::Args, Debug, Clone)]
pub struct UnusedArgs {
    /// The cluster and its NetworkPolicies (files or folders).
    #[command(flatten)]
    pub snapshot: SnapshotArgs,
    /// The observed traffic: `--flows FLOWLOG...` or `--prometheus URL --since DURATION`.
    /// With Prometheus, the connection counts come from the agents' rule counters
    /// (`flowwatch_policy_rule_matches_total`) where they exist.
    #[command(flatten)]
    pub traffic: TrafficArgs,
    /// Tighten a wide IPv4 `ipBlock` to the network of its traffic no narrower than this many
    /// bits (an ipBlock wider than it counts as broad).
    #[arg(long, value_name = "BITS", default_value_t = 24,
          value_parser = clap::value_parser!(u8).range(0..=32))]
    pub prefix_v4: u8,
    /// The same for IPv6.
    #[arg(long, value_name = "BITS", default_value_t = 64,
          value_parser = clap::value_parser!(u8).range(0..=128))]
    pub prefix_v6: u8,
    /// `table` (the default on a terminal), `json` (one object per rule, per line; the default
    /// otherwise) or `md`.
    #[arg(short = 'o', long = "output", value_enum)]
    pub output: Option<Format>,
}

/// Where the connection counts come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CountSource {
    /// The agents' `flowwatch_policy_rule_*` counters.
    AgentCounters,
    /// The observed edges judged again by the engine.
    ReEvaluated,
}

impl CountSource {
    fn as_str(self) -> &'static str {
        match self {
            CountSource::AgentCounters => "agent_counters",
            CountSource::ReEvaluated => "re_evaluated",
        }
    }
}

/// A tightening with its proof: what whatif found over the same edges.
#[derive(Clone, Debug)]
pub struct Proven {
    pub tightening: Tightening,
    /// Edges judged on both states.
    pub edges: usize,
    /// Edges (and their connections) the tightened policy would deny.
    pub would_break: usize,
    pub would_break_connections: u64,
    /// Edges not judged on one state (an end the snapshot lacks).
    pub unresolved: usize,
}

impl Proven {
    /// Suggested only when nothing of the traffic would break.
    pub fn suggested(&self) -> bool {
        self.would_break == 0
    }
}

/// Proves each tightening: `whatif` of the policy tightened against the current state over the
/// same edges.
pub fn prove(
    inventory: &Inventory,
    options: PolicyOptions,
    current: &(crate::policy::PolicyEngine, super::peers::Resolver),
    edges: &Edges,
    candidates: Vec<Tightening>,
) -> Vec<Proven> {
    candidates
        .into_iter()
        .map(|tightening| {
            let mut after = inventory.clone();
            let key = (
                &tightening.policy.metadata.namespace,
                &tightening.policy.metadata.name,
            );
            for np in &mut after.network_policies {
                if (&np.metadata.namespace, &np.metadata.name) == key {
                    *np = tightening.policy.clone();
                }
            }
            let (engine, resolver, _) = super::build(&after, options);
            let judged = judge_between(current, &(engine, resolver), edges);
            let breaking = judged.iter().filter(|j| j.change == Change::WouldBreak);
            Proven {
                edges: judged.len(),
                would_break: breaking.clone().count(),
                would_break_connections: breaking.map(|j| j.count.connections).sum(),
                unresolved: judged
                    .iter()
                    .filter(|j| j.change == Change::Unresolved)
                    .count(),
                tightening,
            }
        })
        .collect()
}

fn over_broad_json(p: &Proven) -> Value {
    json!({"why": p.tightening.why, "peer": p.tightening.peer,
        "tightened_rule": p.tightening.rule_yaml(), "suggested": p.suggested(),
        "edges_checked": p.edges, "would_break": p.would_break,
        "would_break_connections": p.would_break_connections, "unresolved": p.unresolved})
}

/// Writes the report: every rule with what it matched (and, for an over-broad one, its
/// tightening and proof), then the unused ones.
pub fn write_report(
    usage: &Usage,
    source: CountSource,
    broad: &[Proven],
    format: Format,
    out: &mut dyn Write,
) -> io::Result<()> {
    let mut by_rule: BTreeMap<&RuleRef, Vec<&Proven>> = BTreeMap::new();
    for p in broad {
        by_rule.entry(&p.tightening.rule).or_default().push(p);
    }
    if format == Format::Json {
        for (r, u) in &usage.rules {
            let over: Vec<Value> = by_rule
                .get(r)
                .into_iter()
                .flatten()
                .map(|p| over_broad_json(p))
                .collect();
            let line = json!({"policy": r.policy, "direction": r.direction, "rule": r.index,
                "connections": u.connections, "sole_connections": u.sole_connections,
                "edges": u.edges, "peers": u.peers, "unused": u.connections == 0,
                "last_match": u.last_match, "source": source.as_str(),
                "over_broad": over});
            writeln!(out, "{line}")?;
        }
        for (c, u) in &usage.counted_elsewhere {
            let line = json!({"kind": c.kind, "tier": c.tier, "namespace": c.namespace,
                "policy": c.policy, "direction": c.direction, "rule": c.rule, "action": c.action,
                "connections": u.connections, "sole_connections": u.sole_connections,
                "unused": u.connections == 0, "last_match": u.last_match,
                "source": source.as_str()});
            writeln!(out, "{line}")?;
        }
        return out.flush();
    }
    let row = |name: String, rule: String, u: &RuleUse| {
        vec![
            name,
            rule,
            u.connections.to_string(),
            u.sole_connections.to_string(),
            u.edges.to_string(),
            u.peers.iter().cloned().collect::<Vec<_>>().join(", "),
        ]
    };
    let mut rows: Vec<Vec<String>> = usage
        .rules
        .iter()
        .map(|(r, u)| row(r.policy.clone(), format!("{}[{}]", r.direction, r.index), u))
        .collect();
    rows.extend(usage.counted_elsewhere.iter().map(|(c, u)| {
        let name = if c.namespace.is_empty() {
            format!("{} {}", c.kind, c.policy)
        } else {
            format!("{} {}/{}", c.kind, c.namespace, c.policy)
        };
        row(name, format!("{}[{}] {}", c.direction, c.rule, c.action), u)
    }));
    if !rows.is_empty() {
        let header = ["POLICY", "RULE", "CONNECTIONS", "SOLE", "EDGES", "PEERS"];
        write_table(out, format == Format::Md, &header, &rows)?;
        writeln!(out)?;
    }
    let unused: Vec<String> = usage
        .unused()
        .map(std::string::ToString::to_string)
        .collect();
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
    writeln!(
        out,
        "counts: {}",
        match source {
            CountSource::AgentCounters => "the agents' rule counters",
            CountSource::ReEvaluated => "the observed edges, judged again",
        }
    )?;
    for p in broad {
        let t = &p.tightening;
        writeln!(out)?;
        if p.suggested() {
            writeln!(
                out,
                "over-broad: {} ({}). Tightened, whatif over the same {} edges: 0 would break:",
                t.rule, t.why, p.edges
            )?;
            let fence = if format == Format::Md { "```\n" } else { "" };
            write!(out, "{fence}{}{fence}", t.rule_yaml())?;
        } else {
            writeln!(
                out,
                "over-broad: {} ({}); not suggested: tightened, {} edges ({} connections) would break",
                t.rule, t.why, p.would_break, p.would_break_connections
            )?;
        }
    }
    out.flush()
}

/// Lists the rules of the snapshot's cluster policies (AdminNetworkPolicy,
/// BaselineAdminNetworkPolicy, ClusterNetworkPolicy) that the agents' counters do not name,
/// with no connections.
fn add_uncounted_cluster_rules(usage: &mut Usage, engine: &crate::policy::PolicyEngine) {
    for (kind, name, direction, rule, action, tier) in engine.rule_keys() {
        if kind == crate::policy::PolicyKind::NetworkPolicy {
            continue;
        }
        let key = CountedRule {
            tier: tier.as_str().to_string(),
            kind: kind.as_str().to_string(),
            namespace: String::new(),
            policy: name.to_string(),
            direction: direction.as_str().to_string(),
            rule: rule_label(&rule).into_owned(),
            action: action.as_str().to_string(),
        };
        usage.counted_elsewhere.entry(key).or_default();
    }
}

/// Runs `policy unused`.
pub fn run(args: &UnusedArgs) -> ExitCode {
    let options = args.snapshot.options();
    let (inventory, errors) = match args.snapshot.inventory() {
        Ok(loaded) => loaded,
        Err(code) => return code,
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
    let mut source = CountSource::ReEvaluated;
    if let (Some(url), Some(since)) = (&args.traffic.prometheus, args.traffic.since) {
        match super::prometheus::read_rule_counters(url, since) {
            Ok(counted) if !counted.rules.is_empty() => {
                usage.apply_counters(&counted);
                source = CountSource::AgentCounters;
                // The cluster policies' rules nothing counted: unused too.
                add_uncounted_cluster_rules(&mut usage, &state.0);
            }
            Ok(_) => eprintln!(
                "note: Prometheus has no flowwatch_policy_rule_matches_total series (agents \
                 older than the rule counters?): the counts are the edges of \
                 flowwatch_connections_total judged again"
            ),
            Err(e) => {
                eprintln!("error: cannot read the rule counters: {e}");
                return ExitCode::from(1);
            }
        }
    }
    // Over-broad rules: from the peers the edges show, each tightening proven on them.
    let view = ClusterView::of(&inventory);
    let candidates = broad::candidates(
        &inventory.network_policies,
        &usage,
        &view,
        (args.prefix_v4, args.prefix_v6),
    );
    let proven = prove(&inventory, options, &state, &edges, candidates);
    let format = Format::or_default(args.output, Format::Json);
    match write_report(&usage, source, &proven, format, &mut io::stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: writing output: {e}");
            ExitCode::from(3)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::snapshot;
    use crate::model::Protocol;
    use crate::whatif::{EdgeEnd, EdgeKey};

    const CLUSTER: &str = "\
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: a}}
- {apiVersion: v1, kind: Namespace, metadata: {name: b}}
- {apiVersion: v1, kind: Pod, metadata: {namespace: a, name: server, labels: {app: server}}, spec: {containers: [{name: c}]}, status: {podIP: 10.0.0.1}}
- {apiVersion: v1, kind: Pod, metadata: {namespace: b, name: client, labels: {app: client}}, spec: {containers: [{name: c}]}, status: {podIP: 10.0.0.2}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: a, name: server}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{namespaceSelector: {}}]
";

    /// The proof rejects a tightening the traffic contradicts and accepts the one it suggests.
    #[test]
    fn only_a_tightening_that_breaks_nothing_is_suggested() {
        let (inventory, errors) = snapshot::parse(CLUSTER, "t").unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        let options = PolicyOptions::default();
        let (engine, resolver, _) = super::super::build(&inventory, options);
        let current = (engine, resolver);
        let mut edges = Edges::default();
        let pod = |ns: &str, name: &str| EdgeEnd::Workload {
            namespace: ns.into(),
            kind: "pod".into(),
            name: name.into(),
        };
        let key = EdgeKey {
            src: pod("b", "client"),
            dst: pod("a", "server"),
            port: 80,
            protocol: Protocol::Tcp,
        };
        edges.add(key.clone(), 4, 4);
        let mut usage = Usage::of_policies(&inventory.network_policies);
        let e = explain_edge(&current, &key).unwrap();
        usage.add(&key, &edges.edges[&key], &e);
        let view = ClusterView::of(&inventory);
        let found = broad::candidates(&inventory.network_policies, &usage, &view, (24, 64));
        assert_eq!(found.len(), 1, "{found:?}");
        // The same rule narrowed to the wrong namespace: the client's traffic would break.
        let mut wrong = found[0].clone();
        let spec = wrong.policy.spec.as_mut().unwrap();
        spec.ingress.as_mut().unwrap()[0].from.as_mut().unwrap()[0]
            .namespace_selector
            .as_mut()
            .unwrap()
            .match_labels = Some([("kubernetes.io/metadata.name".into(), "a".into())].into());
        let proven = prove(
            &inventory,
            options,
            &current,
            &edges,
            vec![found[0].clone(), wrong],
        );
        assert_eq!(
            (
                proven[0].suggested(),
                proven[0].would_break,
                proven[0].edges
            ),
            (true, 0, 1)
        );
        assert_eq!(
            (
                proven[1].suggested(),
                proven[1].would_break,
                proven[1].would_break_connections
            ),
            (false, 1, 4)
        );
        let mut out = Vec::new();
        write_report(
            &usage,
            CountSource::ReEvaluated,
            &proven,
            Format::Table,
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("Tightened, whatif over the same 1 edges: 0 would break:\ningress:\n- from:\n  - namespaceSelector:\n      matchLabels:\n        kubernetes.io/metadata.name: b\n"),
            "{text}"
        );
        assert!(
            text.contains("not suggested: tightened, 1 edges (4 connections) would break"),
            "{text}"
        );
    }
}
