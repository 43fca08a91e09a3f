//! What a policy change would do to the traffic a cluster really had (pure: values in,
//! values out; `policy_cli::whatif` reads the files and Prometheus and builds the engines).
//!
//! Recorded traffic becomes *edges*: source workload, destination workload, port, protocol,
//! with how many connections were seen. An edge's end is the workload of the pod (replicas
//! and restarts fold into one end, and a pod's address may belong to no one any more), or an
//! address for an end that is not a pod. Each edge is judged before and after the change and
//! its [`Change`] classified.

pub mod broad;
pub mod targets;
pub mod usage;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;
use serde_json::Value;
pub use targets::ServiceTargets;

use crate::model::Protocol;
use crate::policy::Verdict;

/// One end of an observed edge.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EdgeEnd {
    /// A pod's workload; `kind` as the CLI names it (`deployment`, `statefulset`, ...,
    /// `pod` for a pod without a controller).
    Workload {
        namespace: String,
        kind: String,
        name: String,
    },
    /// An end that is not a pod (a node, an external or unknown address), by address.
    Address(IpAddr),
}

impl std::fmt::Display for EdgeEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EdgeEnd::Workload {
                namespace,
                kind,
                name,
            } => write!(f, "{namespace}/{kind}/{name}"),
            EdgeEnd::Address(ip) => write!(f, "{ip}"),
        }
    }
}

impl Serialize for EdgeEnd {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// An observed edge: who connected to whom, on which port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct EdgeKey {
    pub src: EdgeEnd,
    pub dst: EdgeEnd,
    pub port: u16,
    pub protocol: Protocol,
}

/// How much traffic an edge had.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EdgeCount {
    /// Connections (every outcome: established, failed, unanswered).
    pub connections: u64,
    /// Of which established (TCP) or answered (UDP/SCTP).
    pub established: u64,
}

/// Why a recorded connection did not become an edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Skip {
    /// Not a connection: traffic seen mid-stream, or still pending at shutdown.
    NotAConnection,
    /// Recorded by both nodes of a cross-node connection: counted once, on the node the
    /// agent's metrics count it (the initiator's node when it is a pod, else the responder's).
    OtherNodesCopy,
    /// A Service address whose backend was not known: which pod served it is unknown.
    UnknownBackend,
    /// A pod of a controller flowwatch does not know (`custom`), or an overflow bucket
    /// (`other`): no workload of a snapshot can be named by it.
    UnnamedWorkload,
    /// A Prometheus edge with a non-pod end (`node`, `external`, `unknown`): the edge
    /// families carry no address, and an address is what policies judge such an end by.
    NoAddress,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::NotAConnection => "not a connection (midstream or pending)",
            Skip::OtherNodesCopy => "the other node's copy of a cross-node connection",
            Skip::UnknownBackend => "a Service address with an unknown backend",
            Skip::UnnamedWorkload => "a workload of an unknown controller or an overflow bucket",
            Skip::NoAddress => "a non-pod end without an address (Prometheus edges)",
        }
    }
}

/// Observed edges with their counts, and what was left out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Edges {
    pub edges: BTreeMap<EdgeKey, EdgeCount>,
    pub skipped: BTreeMap<Skip, u64>,
    /// Lines that were not flow records (`(line number, why)`, the first few).
    pub bad_lines: Vec<String>,
    pub bad_line_count: u64,
    /// The snapshot's Service target ports: a connection to a Service is an edge on the
    /// backend's target port (empty: the Service port is kept).
    pub targets: ServiceTargets,
}

/// Most bad lines whose text is kept for the report.
const BAD_LINES_KEPT: usize = 10;

impl Edges {
    /// No edges yet; connections to Services are counted on the target ports of `targets`.
    pub fn with_targets(targets: ServiceTargets) -> Edges {
        Edges {
            targets,
            ..Edges::default()
        }
    }

    pub fn add(&mut self, key: EdgeKey, connections: u64, established: u64) {
        let c = self.edges.entry(key).or_default();
        c.connections += connections;
        c.established += established;
    }

    pub fn skip(&mut self, why: Skip, n: u64) {
        *self.skipped.entry(why).or_default() += n;
    }

    fn bad_line(&mut self, origin: &str, line_no: u64, why: &str) {
        self.bad_line_count += 1;
        if self.bad_lines.len() < BAD_LINES_KEPT {
            self.bad_lines.push(format!("{origin}:{line_no}: {why}"));
        }
    }

    /// Adds one line of an agent's flow log (`origin` names the file in reports).
    pub fn add_flow_log_line(&mut self, line: &str, origin: &str, line_no: u64) {
        if line.trim().is_empty() {
            return;
        }
        match edge_of_line_with(line, &self.targets) {
            Ok(Recorded::Edge(key, established)) => self.add(key, 1, u64::from(established)),
            Ok(Recorded::Skipped(why)) => self.skip(why, 1),
            Err(why) => self.bad_line(origin, line_no, &why),
        }
    }
}

/// What one flow record contributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// A connection of this edge; `true` when established/answered.
    Edge(EdgeKey, bool),
    Skipped(Skip),
}

/// A flow-log record as far as what-if reads it, borrowed from its line (a million records
/// are read without building a document tree for each; other fields are skipped).
#[derive(serde::Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    outcome: Option<Cow<'a, str>>,
    #[serde(borrow)]
    protocol: Option<Cow<'a, str>>,
    #[serde(borrow)]
    node: Option<Cow<'a, str>>,
    #[serde(borrow)]
    src: Option<RecordEnd<'a>>,
    #[serde(borrow)]
    dst: Option<RecordEnd<'a>>,
}

#[derive(serde::Deserialize)]
struct RecordEnd<'a> {
    #[serde(borrow)]
    ip: Option<Cow<'a, str>>,
    port: Option<u64>,
    #[serde(borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    namespace: Option<Cow<'a, str>>,
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    workload_kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    workload_name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    node: Option<Cow<'a, str>>,
    #[serde(borrow)]
    backend: Option<Box<RecordEnd<'a>>>,
}

/// The edge of one flow-log line (the record format of `docs/configuration.md`), a
/// connection to a Service on the port the client dialled.
pub fn edge_of_line(line: &str) -> Result<Recorded, String> {
    edge_of_line_with(line, &ServiceTargets::default())
}

/// [`edge_of_line`], a connection to a Service on its backend's target port when `targets`
/// has the Service.
pub fn edge_of_line_with(line: &str, targets: &ServiceTargets) -> Result<Recorded, String> {
    let record: Record = serde_json::from_str(line).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            format!("invalid JSON: {e}")
        } else {
            format!("not a flow record: {e}")
        }
    })?;
    let established = match record.outcome.as_deref().ok_or("missing \"outcome\"")? {
        "established" => true,
        "failed" | "unanswered" => false,
        "midstream" | "pending" => return Ok(Recorded::Skipped(Skip::NotAConnection)),
        other => return Err(format!("unknown outcome {other:?}")),
    };
    let protocol = record
        .protocol
        .as_deref()
        .ok_or("missing \"protocol\"")?
        .parse::<Protocol>()?;
    let src = record.src.as_ref().ok_or("missing \"src\"")?;
    let dst = record.dst.as_ref().ok_or("missing \"dst\"")?;
    // Both nodes of a cross-node connection log it; count the copy the metrics count.
    if let Some(node) = record.node.as_deref() {
        if let Some(counting) = pod_node(src).or_else(|| pod_node(dst)) {
            if counting != node {
                return Ok(Recorded::Skipped(Skip::OtherNodesCopy));
            }
        }
    }
    let port = dst
        .port
        .and_then(|p| u16::try_from(p).ok())
        .ok_or("dst.port: missing or not a port")?;
    let end = |e: &RecordEnd, side: &str| -> Result<Result<EdgeEnd, Skip>, String> {
        end_of(e).map_err(|why| format!("{side}: {why}"))
    };
    let src = match end(src, "src")? {
        Ok(e) => e,
        Err(skip) => return Ok(Recorded::Skipped(skip)),
    };
    let dst_end = match end(dst, "dst")? {
        Ok(e) => e,
        Err(skip) => return Ok(Recorded::Skipped(skip)),
    };
    let port = match (dst.kind.as_deref(), &dst.namespace, &dst.name) {
        (Some("service"), Some(ns), Some(svc)) => targets
            .target(ns, svc, port, protocol, &dst_end)
            .unwrap_or(port),
        _ => port,
    };
    let dst = dst_end;
    Ok(Recorded::Edge(
        EdgeKey {
            src,
            dst,
            port,
            protocol,
        },
        established,
    ))
}

/// The node of a record's end when it is a pod (host-network pods included).
fn pod_node<'r>(end: &'r RecordEnd) -> Option<&'r str> {
    match end.kind.as_deref() {
        Some("pod" | "host_network_pod") => end.node.as_deref(),
        _ => None,
    }
}

/// One end of a record: a pod's workload, a Service's backend, or an address.
fn end_of(end: &RecordEnd) -> Result<Result<EdgeEnd, Skip>, String> {
    match end.kind.as_deref() {
        Some("pod") => Ok(workload_end(
            end.namespace.as_deref().ok_or("pod without namespace")?,
            end.workload_kind
                .as_deref()
                .ok_or("pod without workload_kind")?,
            end.workload_name
                .as_deref()
                .ok_or("pod without workload_name")?,
        )),
        Some("service") => match &end.backend {
            Some(backend) if backend.kind.as_deref() == Some("pod") => end_of(backend),
            Some(_) | None => Ok(Err(Skip::UnknownBackend)),
        },
        // Node, host-network pod, external, or a record written without an inventory: the
        // address is what policies judge it by.
        _ => {
            let ip = end
                .ip
                .as_deref()
                .ok_or("missing ip")?
                .parse::<IpAddr>()
                .map_err(|e| format!("ip: {e}"))?;
            Ok(Ok(EdgeEnd::Address(ip)))
        }
    }
}

/// A workload end from its kind as the flow log (`Deployment`) or the edge metrics
/// (`deployment`) write it.
pub fn workload_end(namespace: &str, kind: &str, name: &str) -> Result<EdgeEnd, Skip> {
    let kind = match kind.to_ascii_lowercase().as_str() {
        k @ ("deployment" | "statefulset" | "daemonset" | "replicaset" | "job" | "cronjob"
        | "pod") => k.to_string(),
        // The CLI names pods of a ReplicationController as the agent counts them.
        "replicationcontroller" => "replicaset".to_string(),
        _ => return Err(Skip::UnnamedWorkload),
    };
    if namespace.is_empty() || name.is_empty() || namespace == "other" || name == "other" {
        return Err(Skip::UnnamedWorkload);
    }
    Ok(EdgeEnd::Workload {
        namespace: namespace.to_string(),
        kind,
        name: name.to_string(),
    })
}

/// The labels of one edge as Prometheus holds it (with the outcome).
const EDGE_LABELS: &str = "src_namespace, src_kind, src_workload, dst_namespace, dst_kind, \
                           dst_workload, dst_port, protocol, outcome";

/// The edge history the chart records (`prometheusRule.edgeHistory`): per edge and outcome,
/// once an hour, the highest connection counter of the hour summed over agents.
pub const EDGE_HISTORY: &str = "flowwatch:edge_connections:history";

/// How much of the newest traffic is read from the raw series on top of the history, which
/// lags by up to one recording interval (an hour by default) plus evaluation delay.
pub const RAW_TAIL_SECS: u64 = 2 * 3600;

/// Where `policy whatif --prometheus` reads the edges of a window from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrometheusSource {
    /// `flowwatch_connections_total` over the whole window: exact, but every sample of every
    /// series is read (30 days of 50,000 edges at 30 s is 4.3G samples, minutes of
    /// Prometheus CPU).
    Raw,
    /// The recorded history over the window plus the raw series over its newest
    /// [`RAW_TAIL_SECS`]: the same edges from one sample per hour.
    History,
}

/// The PromQL query for the edges seen in the last `range_secs` seconds: per edge and
/// outcome, the highest value each agent's `flowwatch_connections_total` series reached in
/// the window, summed over agents. A series' highest value counts from when that agent
/// started counting the edge, so edges seen once are found too (an `increase()` would drop a
/// series whose only sample is its first). With [`PrometheusSource::History`] the older part
/// of the window comes from [`EDGE_HISTORY`], which holds that same sum once an hour; an
/// edge in both parts counts with its higher figure.
pub fn prometheus_edges_query(range_secs: u64, source: PrometheusSource) -> String {
    let raw = |secs: u64| {
        format!("sum by ({EDGE_LABELS}) (max_over_time(flowwatch_connections_total[{secs}s]))")
    };
    match source {
        PrometheusSource::Raw => raw(range_secs),
        PrometheusSource::History => format!(
            "max by ({EDGE_LABELS}) (\n  label_replace(sum by ({EDGE_LABELS}) \
             (max_over_time({EDGE_HISTORY}[{range_secs}s])), \"flowwatch_part\", \"history\", \"\", \"\")\n\
             or\n  label_replace({}, \"flowwatch_part\", \"raw\", \"\", \"\")\n)",
            raw(range_secs.min(RAW_TAIL_SECS))
        ),
    }
}

/// Whether the history can stand for the raw series over a window of `range_secs`: it can
/// when the window is longer than the raw tail and the history reaches back to the window's
/// start. A query that answers with a sample when it does not: raw series exist within the
/// window's first hour but no history within its first day (or its whole length if
/// shorter). Cheap: one hour of raw samples and a day of hourly ones. `None`: the window is
/// short enough to read raw.
pub fn prometheus_history_gap_query(range_secs: u64) -> Option<String> {
    if range_secs <= RAW_TAIL_SECS {
        return None;
    }
    let raw_window = 3600;
    let history_window = range_secs.min(86_400);
    Some(format!(
        "count(last_over_time(flowwatch_connections_total[{raw_window}s] offset {}s)) \
         unless on () count(last_over_time({EDGE_HISTORY}[{history_window}s] offset {}s))",
        range_secs - raw_window,
        range_secs - history_window
    ))
}

impl Edges {
    /// Adds the edges of a Prometheus instant-query answer to [`prometheus_edges_query`]
    /// (the JSON body of `/api/v1/query`).
    pub fn add_prometheus_answer(&mut self, body: &Value) -> Result<(), String> {
        if body.get("status").and_then(Value::as_str) != Some("success") {
            let error = body
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("no status \"success\"");
            return Err(format!("Prometheus answered with an error: {error}"));
        }
        let result = body
            .pointer("/data/result")
            .and_then(Value::as_array)
            .ok_or("Prometheus answer without data.result")?;
        for sample in result {
            let label = |l: &str| {
                sample
                    .pointer(&format!("/metric/{l}"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
            };
            let value = sample
                .pointer("/value/1")
                .and_then(Value::as_str)
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| format!("sample without a number: {sample}"))?;
            let count = value.round() as u64;
            if count == 0 {
                continue;
            }
            let non_pod = |kind: &str| matches!(kind, "node" | "external" | "unknown");
            if non_pod(label("src_kind")) || non_pod(label("dst_kind")) {
                self.skip(Skip::NoAddress, count);
                continue;
            }
            let ends = workload_end(
                label("src_namespace"),
                label("src_kind"),
                label("src_workload"),
            )
            .and_then(|src| {
                Ok((
                    src,
                    workload_end(
                        label("dst_namespace"),
                        label("dst_kind"),
                        label("dst_workload"),
                    )?,
                ))
            });
            let (src, dst) = match ends {
                Ok(ends) => ends,
                Err(skip) => {
                    self.skip(skip, count);
                    continue;
                }
            };
            let (Ok(port), Ok(protocol)) = (
                label("dst_port").parse::<u16>(),
                label("protocol").parse::<Protocol>(),
            ) else {
                // `dst_port="other"`: an overflow bucket.
                self.skip(Skip::UnnamedWorkload, count);
                continue;
            };
            let established = if label("outcome") == "established" {
                count
            } else {
                0
            };
            self.add(
                EdgeKey {
                    src,
                    dst,
                    port,
                    protocol,
                },
                count,
                established,
            );
        }
        Ok(())
    }
}

/// How an edge's verdict changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Change {
    /// Allowed or uncovered today, denied after: this traffic would be blocked.
    WouldBreak,
    /// Denied today, allowed or uncovered after.
    NewlyAllowed,
    /// Uncovered today (no policy governs it), allowed by a policy after.
    NewlyCovered,
    /// Allowed by a policy today, governed by none after (still reachable).
    NewlyUncovered,
    /// The same verdict (the deciding rules may differ).
    Unchanged,
    /// An end is not in one of the snapshots (a workload added, removed or renamed), so the
    /// edge could not be judged on both.
    Unresolved,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::WouldBreak => "would_break",
            Change::NewlyAllowed => "newly_allowed",
            Change::NewlyCovered => "newly_covered",
            Change::NewlyUncovered => "newly_uncovered",
            Change::Unchanged => "unchanged",
            Change::Unresolved => "unresolved",
        }
    }

    /// The change from verdict `before` to `after`.
    pub fn of(before: Verdict, after: Verdict) -> Change {
        use Verdict::{Allowed, Denied, Uncovered};
        match (before, after) {
            (Allowed | Uncovered, Denied) => Change::WouldBreak,
            (Denied, Allowed | Uncovered) => Change::NewlyAllowed,
            (Uncovered, Allowed) => Change::NewlyCovered,
            (Allowed, Uncovered) => Change::NewlyUncovered,
            _ => Change::Unchanged,
        }
    }
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A duration as `--since` takes it: `30m`, `12h`, `7d`, `2w`, or `90s`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?}: a unit is missing (s, m, h, d or w)"))?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 7d or 12h"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (s, m, h, d or w)")),
    };
    if n == 0 {
        return Err(format!("{s:?}: must be longer than zero"));
    }
    Ok(std::time::Duration::from_secs(n.saturating_mul(secs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_windows_read_the_history_where_it_reaches_the_window_start() {
        // Up to the raw tail: raw only, no question asked.
        assert_eq!(prometheus_history_gap_query(RAW_TAIL_SECS), None);
        assert!(!prometheus_edges_query(3600, PrometheusSource::Raw).contains(EDGE_HISTORY));
        // 30 days: raw samples in the first hour against history in the first day.
        let gap = prometheus_history_gap_query(30 * 86_400).expect("a long window");
        assert!(
            gap.contains("flowwatch_connections_total[3600s] offset 2588400s)"),
            "{gap}"
        );
        assert!(
            gap.contains(&format!("{EDGE_HISTORY}[86400s] offset 2505600s)")),
            "{gap}"
        );
        // Shorter than a day: the history over the whole window.
        let gap = prometheus_history_gap_query(6 * 3600).expect("longer than the tail");
        assert!(
            gap.contains(&format!("{EDGE_HISTORY}[21600s] offset 0s)")),
            "{gap}"
        );
        let both = prometheus_edges_query(30 * 86_400, PrometheusSource::History);
        assert!(
            both.contains(&format!("max_over_time({EDGE_HISTORY}[2592000s])")),
            "{both}"
        );
        assert!(
            both.contains("max_over_time(flowwatch_connections_total[7200s])"),
            "the raw tail only: {both}"
        );
    }
    use serde_json::json;

    fn record(src: Value, dst: Value, outcome: &str, node: &str) -> Value {
        let mut record = json!({"start": "2026-11-25T01:09:33.465Z", "end": "2026-11-25T01:09:33.467Z",
               "protocol": "TCP", "outcome": outcome,
               "end_reason": "closed", "observed_at": ["client"],
               "fwd": {"packets": 1, "bytes": 60}, "rev": {"packets": 1, "bytes": 60},
               "node": node});
        record["src"] = src;
        record["dst"] = dst;
        record
    }

    fn pod(ns: &str, name: &str, kind: &str, workload: &str, node: &str, port: u16) -> Value {
        json!({"ip": "10.0.0.1", "port": port, "kind": "pod", "namespace": ns, "name": name,
               "workload_kind": kind, "workload_name": workload, "node": node})
    }

    fn web_to_db() -> EdgeKey {
        EdgeKey {
            src: workload_end("shop", "Deployment", "web").unwrap(),
            dst: workload_end("data", "StatefulSet", "postgres").unwrap(),
            port: 5432,
            protocol: Protocol::Tcp,
        }
    }

    #[test]
    fn replicas_and_outcomes_fold_into_one_edge_per_workload_pair_and_port() {
        let mut edges = Edges::default();
        for (i, (pod_name, outcome)) in [
            ("web-5d8c-a", "established"),
            ("web-5d8c-b", "failed"),
            ("web-77aa-c", "established"),
        ]
        .iter()
        .enumerate()
        {
            let r = record(
                pod(
                    "shop",
                    pod_name,
                    "Deployment",
                    "web",
                    "n1",
                    40000 + i as u16,
                ),
                pod("data", "postgres-0", "StatefulSet", "postgres", "n1", 5432),
                outcome,
                "n1",
            );
            edges.add_flow_log_line(&r.to_string(), "n1.log", i as u64 + 1);
        }
        assert_eq!(edges.edges.len(), 1);
        assert_eq!(
            edges.edges[&web_to_db()],
            EdgeCount {
                connections: 3,
                established: 2
            }
        );
        assert!(edges.skipped.is_empty() && edges.bad_lines.is_empty());
    }

    #[test]
    fn a_cross_node_connection_is_counted_once_on_the_initiators_node() {
        let mut edges = Edges::default();
        for node in ["n1", "n2"] {
            let r = record(
                pod("shop", "web-a", "Deployment", "web", "n1", 40000),
                pod("data", "postgres-0", "StatefulSet", "postgres", "n2", 5432),
                "established",
                node,
            );
            edges.add_flow_log_line(&r.to_string(), "x", 1);
        }
        assert_eq!(edges.edges[&web_to_db()].connections, 1);
        assert_eq!(edges.skipped[&Skip::OtherNodesCopy], 1);
        // A non-pod initiator: the responder's node counts it.
        let ext = json!({"ip": "203.0.113.9", "port": 5555, "kind": "external", "class": "public"});
        for node in ["n1", "n2"] {
            let r = record(
                ext.clone(),
                pod("data", "postgres-0", "StatefulSet", "postgres", "n2", 5432),
                "failed",
                node,
            );
            edges.add_flow_log_line(&r.to_string(), "x", 2);
        }
        let key = EdgeKey {
            src: EdgeEnd::Address("203.0.113.9".parse().unwrap()),
            dst: workload_end("data", "statefulset", "postgres").unwrap(),
            port: 5432,
            protocol: Protocol::Tcp,
        };
        assert_eq!(
            edges.edges[&key],
            EdgeCount {
                connections: 1,
                established: 0
            }
        );
    }

    #[test]
    fn services_are_judged_at_their_backend_and_the_rest_is_skipped_or_reported() {
        let svc = json!({"ip": "10.96.0.20", "port": 5432, "kind": "service", "namespace": "data",
                         "name": "postgres", "backend": {"kind": "pod", "namespace": "data",
                         "name": "postgres-0", "workload_kind": "StatefulSet",
                         "workload_name": "postgres", "node": "n1"}});
        let web = pod("shop", "web-a", "Deployment", "web", "n1", 40000);
        let r = record(web.clone(), svc, "established", "n1");
        assert_eq!(
            edge_of_line(&r.to_string()),
            Ok(Recorded::Edge(web_to_db(), true))
        );
        let no_backend = json!({"ip": "10.96.0.20", "port": 5432, "kind": "service",
                                "namespace": "data", "name": "postgres"});
        let r = record(web.clone(), no_backend, "failed", "n1");
        assert_eq!(
            edge_of_line(&r.to_string()),
            Ok(Recorded::Skipped(Skip::UnknownBackend))
        );
        let r = record(
            web.clone(),
            pod("data", "x", "Other", "Rollout/x", "n1", 80),
            "established",
            "n1",
        );
        assert_eq!(
            edge_of_line(&r.to_string()),
            Ok(Recorded::Skipped(Skip::UnnamedWorkload))
        );
        let r = record(
            web,
            pod("data", "x", "Pod", "x", "n1", 80),
            "midstream",
            "n1",
        );
        assert_eq!(
            edge_of_line(&r.to_string()),
            Ok(Recorded::Skipped(Skip::NotAConnection))
        );

        let mut edges = Edges::default();
        edges.add_flow_log_line("not json", "f.log", 3);
        edges.add_flow_log_line("[1]", "f.log", 4);
        edges.add_flow_log_line("", "f.log", 5);
        edges.add_flow_log_line(r#"{"outcome": "established"}"#, "f.log", 6);
        assert_eq!(edges.bad_line_count, 3);
        assert!(
            edges.bad_lines[0].starts_with("f.log:3: invalid JSON"),
            "{:?}",
            edges.bad_lines
        );
        assert_eq!(edges.bad_lines[2], "f.log:6: missing \"protocol\"");
    }

    #[test]
    fn a_service_connection_is_an_edge_on_the_backends_target_port() {
        let (mut inventory, _) = crate::inventory::snapshot::parse(
            "apiVersion: v1\nkind: Service\nmetadata: {namespace: data, name: postgres}\n\
             spec: {ports: [{port: 80, targetPort: pg}]}\n---\n\
             apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {namespace: data, name: postgres}\n\
             spec: {template: {spec: {containers: [{name: c, ports: [{name: pg, containerPort: 5432}]}]}}}\n",
            "t",
        )
        .unwrap();
        crate::inventory::sources::with_workloads_as_pods(&mut inventory);
        let svc = json!({"ip": "10.96.0.20", "port": 80, "kind": "service", "namespace": "data",
                         "name": "postgres", "backend": {"kind": "pod", "namespace": "data",
                         "name": "postgres-0", "workload_kind": "StatefulSet",
                         "workload_name": "postgres", "node": "n1"}});
        let web = pod("shop", "web-a", "Deployment", "web", "n1", 40000);
        let line = record(web, svc, "established", "n1").to_string();
        let mut edges = Edges::with_targets(ServiceTargets::of(&inventory));
        edges.add_flow_log_line(&line, "x", 1);
        assert_eq!(edges.edges.keys().next(), Some(&web_to_db()));
        // Without the Service in the snapshot, the port the client dialled.
        let Ok(Recorded::Edge(key, _)) = edge_of_line(&line) else {
            panic!("an edge")
        };
        assert_eq!(key.port, 80);
    }

    #[test]
    fn changes_are_classified_from_the_overall_verdicts() {
        use Verdict::*;
        let cases = [
            (Allowed, Denied, Change::WouldBreak),
            (Uncovered, Denied, Change::WouldBreak),
            (Denied, Allowed, Change::NewlyAllowed),
            (Denied, Uncovered, Change::NewlyAllowed),
            (Uncovered, Allowed, Change::NewlyCovered),
            (Allowed, Uncovered, Change::NewlyUncovered),
            (Allowed, Allowed, Change::Unchanged),
            (Denied, Denied, Change::Unchanged),
            (Uncovered, Uncovered, Change::Unchanged),
        ];
        for (before, after, change) in cases {
            assert_eq!(Change::of(before, after), change, "{before} -> {after}");
        }
    }

    #[test]
    fn prometheus_edges_fold_outcomes_and_skip_what_has_no_workload_or_address() {
        let sample = |src_kind: &str, dst_port: &str, outcome: &str, v: &str| {
            json!({"metric": {"src_namespace": "shop", "src_kind": src_kind, "src_workload": "web",
                              "dst_namespace": "data", "dst_kind": "statefulset",
                              "dst_workload": "postgres", "dst_port": dst_port,
                              "protocol": "TCP", "outcome": outcome},
                   "value": [1_700_000_000.0, v]})
        };
        let body = json!({"status": "success", "data": {"resultType": "vector", "result": [
            sample("deployment", "5432", "established", "7"),
            sample("deployment", "5432", "failed", "2.0000001"),
            sample("deployment", "5432", "unanswered", "0"),
            sample("external", "5432", "established", "4"),
            sample("custom", "5432", "established", "1"),
            sample("deployment", "other", "established", "3"),
        ]}});
        let mut edges = Edges::default();
        edges.add_prometheus_answer(&body).unwrap();
        assert_eq!(edges.edges.len(), 1);
        assert_eq!(
            edges.edges[&web_to_db()],
            EdgeCount {
                connections: 9,
                established: 7
            }
        );
        assert_eq!(edges.skipped[&Skip::NoAddress], 4);
        assert_eq!(edges.skipped[&Skip::UnnamedWorkload], 4);
        let error = json!({"status": "error", "errorType": "bad_data", "error": "parse error"});
        assert!(edges
            .add_prometheus_answer(&error)
            .unwrap_err()
            .contains("parse error"));
    }

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(
            parse_duration("7d"),
            Ok(std::time::Duration::from_hours(168))
        );
        assert_eq!(
            parse_duration("90s"),
            Ok(std::time::Duration::from_secs(90))
        );
        for bad in ["7", "d", "0h", "3y", "-1d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
