//! Reading the first-seen families off a real agent's /metrics (tests of first-seen edges).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::agent::Agent;
use super::prometheus::http_get;

pub const FIRST_SEEN: &str = "flowwatch_edge_first_seen_timestamp_seconds";

pub fn metrics(agent: &Agent) -> String {
    match http_get(&agent.listen, "/metrics", None) {
        Ok((200, body)) => body,
        other => panic!("/metrics: {other:?}\n{}", agent.stderr()),
    }
}

/// The sample lines of a family: labels ("" without) -> value.
pub fn family(body: &str, name: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter_map(|l| l.strip_prefix(name))
        .filter_map(|l| {
            let (labels, value) = match l.strip_prefix('{') {
                Some(rest) => rest.rsplit_once("} ")?,
                None => ("", l.strip_prefix(' ')?),
            };
            Some((labels.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

pub fn sum(body: &str, name: &str) -> f64 {
    family(body, name).values().sum()
}

/// The series of `name` whose source namespace is `ns`. The socket tracepoint sees every TCP
/// socket of the machine: connections of other processes (other tests) show up as edges of
/// their own, never in a test's namespace.
pub fn ours(body: &str, name: &str, ns: &str) -> BTreeMap<String, f64> {
    let prefix = format!("src_namespace=\"{ns}\"");
    family(body, name)
        .into_iter()
        .filter(|(labels, _)| labels.starts_with(&prefix))
        .collect()
}

/// New edges of pod scope (the others are the machine's own traffic, see `ours`).
pub fn new_pod_edges(body: &str) -> f64 {
    let f = family(body, "flowwatch_new_edges_total");
    f.get("scope=\"same_namespace\"").copied().unwrap_or(0.0)
        + f.get("scope=\"cross_namespace\"").copied().unwrap_or(0.0)
}

/// Waits until `done` holds for the agent's /metrics (bounded); returns the body.
pub fn wait_metrics(
    agent: &Agent,
    what: &str,
    timeout: Duration,
    done: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let body = metrics(agent);
        if done(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {timeout:?}\n{}\n{}",
            body.lines()
                .filter(|l| l.starts_with("flowwatch_edge") || l.starts_with("flowwatch_new_edges"))
                .collect::<Vec<_>>()
                .join("\n"),
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
