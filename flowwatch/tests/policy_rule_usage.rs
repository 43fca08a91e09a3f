//! Rule usage on the real agent: three network-namespace pods (client, server, intruder) talk over
//! real TCP while the agent runs with a snapshot whose policies give the connections known
//! rules: one connection allowed by two NetworkPolicy rules, one by a rule alone, and attempts
//! an AdminNetworkPolicy rule denies (one established anyway, nothing enforces here; one
//! refused). The agent's per-rule counters, scraped, must equal a count made here from the
//! same connections' flow-log records; then `policy unused --prometheus` against a real
//! Prometheus that scraped the agent names the unused rule and the over-broad one with its
//! tightening; and deleting a policy takes its rules' series away. Needs root (namespaces,
//! eBPF) and Debian's prometheus.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use flowwatch_testkit::agent::Agent;
use flowwatch_testkit::netns::{Node, Pod};
use flowwatch_testkit::recording::agent_and_prometheus;
use flowwatch_testkit::traffic::{one_connection, records_to, wait_record};
use serde_json::Value;

const ALLOWED_PORT: u16 = 8080;
const SOLE_PORT: u16 = 9090;
/// Nothing listens there: refused.
const CLOSED_PORT: u16 = 7000;

fn pod_yaml(name: &str, app: &str, ip: &Pod) -> String {
    format!(
        r"- apiVersion: v1
  kind: Pod
  metadata:
    name: {name}-0
    namespace: shop
    labels: {{app: {app}}}
    ownerReferences: [{{apiVersion: apps/v1, kind: StatefulSet, name: {name}, uid: u-{name}, controller: true}}]
  spec: {{nodeName: node-a, containers: [{{name: c, image: x}}]}}
  status: {{phase: Running, podIP: {ip}}}
",
        ip = ip.ipv4,
    )
}

/// The cluster: the three pods and the policies. `server-ingress` has two rules that both
/// allow client -> server:8080 and the second alone allows :9090 (its `namespaceSelector: {}`
/// is over-broad: only `shop/client` uses it); `unused-rule` admits a workload that never
/// talks; the AdminNetworkPolicy `guard` denies `intruder` -> server (`other` would read as an
/// overflow bucket's name).
fn cluster(client: &Pod, server: &Pod, intruder: &Pod, with_guard: bool) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: List\nitems:\n\
         - {{apiVersion: v1, kind: Namespace, metadata: {{name: shop}}}}\n\
         - {{apiVersion: v1, kind: Namespace, metadata: {{name: ops}}}}\n\
         - {{apiVersion: v1, kind: Node, metadata: {{name: node-a}}}}\n{}{}{}",
        pod_yaml("client", "client", client),
        pod_yaml("server", "server", server),
        pod_yaml("intruder", "intruder", intruder),
    );
    let _ = write!(
        y,
        r"---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{namespace: shop, name: server-ingress}}
spec:
  podSelector: {{matchLabels: {{app: server}}}}
  ingress:
  - from: [{{podSelector: {{matchLabels: {{app: client}}}}}}]
    ports: [{{port: {ALLOWED_PORT}}}]
  - from: [{{namespaceSelector: {{}}}}]
    ports: [{{port: {ALLOWED_PORT}}}, {{port: {SOLE_PORT}}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{namespace: shop, name: unused-rule}}
spec:
  podSelector: {{matchLabels: {{app: server}}}}
  ingress:
  - from: [{{podSelector: {{matchLabels: {{app: nobody}}}}}}]
"
    );
    if with_guard {
        y.push_str(
            r"---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: guard}
spec:
  priority: 10
  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: server}}}}
  ingress:
  - {name: deny-intruder, action: Deny, from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: intruder}}}}]}
  - {name: deny-nobody, action: Deny, from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: nobody}}}}]}
",
        );
    }
    y
}

/// A connection attempt nobody accepts (refused: a failed attempt).
fn refused(from: &Pod, to: SocketAddr) {
    let result = from
        .run(move || TcpStream::connect_timeout(&to, Duration::from_secs(2)).map(|_| ()))
        .join()
        .unwrap();
    assert!(result.is_err(), "{to} accepted a connection");
}

/// The rules each connection credits, by hand from the policies above: (policy, rule) ->
/// (matches, sole matches), counted over the flow-log records.
fn by_hand(records: &[Value]) -> BTreeMap<(String, String), (u64, u64)> {
    let mut out: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    let mut credit = |policy: &str, rule: &str, sole: bool| {
        let e = out.entry((policy.into(), rule.into())).or_default();
        e.0 += 1;
        e.1 += u64::from(sole);
    };
    for r in records {
        if r["outcome"] == "midstream" || r["outcome"] == "pending" {
            continue;
        }
        let src = r["src"]["workload_name"].as_str().unwrap_or("");
        let port = r["dst"]["port"].as_u64().unwrap_or(0);
        match (src, port as u16) {
            ("client", ALLOWED_PORT) => {
                credit("shop/server-ingress", "0", false);
                credit("shop/server-ingress", "1", false);
            }
            ("client", SOLE_PORT) => credit("shop/server-ingress", "1", true),
            ("intruder", _) => credit("/guard", "deny-intruder", true),
            _ => {}
        }
    }
    out
}

/// (policy as `namespace/name`, rule) -> (matches, sole matches) from the agent's /metrics.
fn scraped(agent: &Agent) -> BTreeMap<(String, String), (u64, u64)> {
    let (_, text) =
        flowwatch_testkit::prometheus::http_get(&agent.listen, "/metrics", None).unwrap();
    let mut out: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for line in text.lines() {
        let sole = if line.starts_with("flowwatch_policy_rule_sole_matches_total{") {
            true
        } else if line.starts_with("flowwatch_policy_rule_matches_total{") {
            false
        } else {
            continue;
        };
        let label = |name: &str| {
            let at = line.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
            line[at..].split('"').next().unwrap().to_string()
        };
        let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        let key = (
            format!("{}/{}", label("namespace"), label("policy")),
            label("rule"),
        );
        let e = out.entry(key).or_default();
        if sole {
            e.1 = value as u64;
        } else {
            e.0 = value as u64;
        }
    }
    out
}

fn unused(snapshot: &Path, traffic: &[&str]) -> (Vec<Value>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flowwatch"))
        .args(["policy", "unused", "-o", "json", "--snapshot"])
        .arg(snapshot)
        .args(traffic)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    let lines = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (lines, stderr)
}

#[test]
fn the_agents_rule_counters_match_an_independent_count_and_feed_policy_unused() {
    if !flowwatch_testkit::privileged::root_test("rule usage on the real agent")
        || !flowwatch_testkit::privileged::require(
            "rule usage on Prometheus",
            flowwatch_testkit::prometheus::available(),
        )
    {
        return;
    }
    let node = Node::new(3);
    let [client, server, intruder] = [0, 1, 2].map(|i| &node.pods[i]);
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("cluster.yaml");
    std::fs::write(&snapshot, cluster(client, server, intruder, true)).unwrap();
    // The state the traffic ran under, for the offline checks (the agent's file changes below).
    let judged_on = dir.path().join("judged-on.yaml");
    std::fs::copy(&snapshot, &judged_on).unwrap();

    let (mut agent, prom) = agent_and_prometheus(&node, &snapshot);

    let allowed = SocketAddr::from((server.ipv4, ALLOWED_PORT));
    let sole = SocketAddr::from((server.ipv4, SOLE_PORT));
    let closed = SocketAddr::from((server.ipv4, CLOSED_PORT));
    for _ in 0..3 {
        one_connection(client, server, allowed);
    }
    for _ in 0..2 {
        one_connection(client, server, sole);
    }
    // Denied by `guard`: established anyway (nothing enforces here), and refused.
    one_connection(intruder, server, allowed);
    refused(intruder, closed);
    wait_record(&agent, allowed, 3);
    wait_record(&agent, sole, 1);
    wait_record(&agent, closed, 0);

    // What the test sent, and what the agent logged, credit the same rules.
    let sent: BTreeMap<(String, String), (u64, u64)> = [
        (("shop/server-ingress", "0"), (3, 0)),
        (("shop/server-ingress", "1"), (5, 2)),
        (("/guard", "deny-intruder"), (2, 2)),
    ]
    .into_iter()
    .map(|((p, r), v)| ((p.to_string(), r.to_string()), v))
    .collect();
    let records: Vec<Value> = [allowed, sole, closed]
        .iter()
        .flat_map(|a| records_to(&agent, *a))
        .collect();
    assert_eq!(by_hand(&records), sent, "{records:#?}");
    // The agent counts on its poll: wait until the counters are complete, then compare all.
    let deadline = Instant::now() + Duration::from_secs(15);
    while scraped(&agent) != sent && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(scraped(&agent), sent, "{}", agent.stderr());
    // The same unit as flowwatch_connections_total: each connection once.
    let connections: f64 = {
        let (_, text) =
            flowwatch_testkit::prometheus::http_get(&agent.listen, "/metrics", None).unwrap();
        text.lines()
            .filter(|l| {
                l.starts_with("flowwatch_connections_total{")
                    && l.contains("dst_workload=\"server\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(connections, 7.0);
    let last = agent
        .metric(
            "flowwatch_policy_rule_last_match_timestamp_seconds{tier=\"admin\",kind=\"AdminNetworkPolicy\",namespace=\"\",policy=\"guard\",direction=\"ingress\",rule=\"deny-intruder\",action=\"Deny\"}",
        )
        .expect("last match of guard");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        now - last < 120.0 && last <= now + 1.0,
        "last match {last}, now {now}"
    );

    // Prometheus scraped them: `policy unused` reads the counters.
    prom.wait_for(
        "sum(flowwatch_policy_rule_matches_total)",
        Duration::from_secs(40),
        |r| r.first().is_some_and(|s| s.value == 10.0),
    );
    prom.wait_for(
        "sum(flowwatch_connections_total{dst_workload=\"server\"})",
        Duration::from_secs(40),
        |r| r.first().is_some_and(|s| s.value == 7.0),
    );
    let (lines, stderr) = unused(&judged_on, &["--prometheus", &prom.url(), "--since", "1h"]);
    let rule = |policy: &str, index: u64| {
        lines
            .iter()
            .find(|l| l["policy"] == policy && l["rule"] == index)
            .unwrap_or_else(|| panic!("no {policy} rule {index} in {lines:#?}\n{stderr}"))
    };
    for (policy, index, connections, sole) in [
        ("shop/server-ingress", 0, 3, 0),
        ("shop/server-ingress", 1, 5, 2),
        ("shop/unused-rule", 0, 0, 0),
    ] {
        let r = rule(policy, index);
        assert_eq!(r["source"], "agent_counters", "{r}");
        assert_eq!(r["connections"], connections, "{r}");
        assert_eq!(r["sole_connections"], sole, "{r}");
        assert_eq!(r["unused"], connections == 0, "{r}");
    }
    assert!(rule("shop/server-ingress", 1)["last_match"]
        .as_u64()
        .is_some());
    // The AdminNetworkPolicy rule, counted by the agent (not a NetworkPolicy of the snapshot).
    let guard_rule = |rule: &str| {
        lines
            .iter()
            .find(|l| l["policy"] == "guard" && l["rule"] == rule)
            .unwrap_or_else(|| panic!("no guard rule {rule}: {lines:#?}"))
    };
    // Its second rule, which nothing matched: listed from the snapshot, unused.
    let nobody = guard_rule("deny-nobody");
    assert_eq!(
        (&nobody["connections"], &nobody["unused"], &nobody["tier"]),
        (&Value::from(0), &Value::from(true), &Value::from("admin")),
        "{nobody}"
    );
    let guard = guard_rule("deny-intruder");
    assert_eq!(guard["unused"], false, "{guard}");
    assert_eq!(
        (
            &guard["kind"],
            &guard["rule"],
            &guard["action"],
            &guard["connections"]
        ),
        (
            &Value::from("AdminNetworkPolicy"),
            &Value::from("deny-intruder"),
            &Value::from("Deny"),
            &Value::from(2)
        ),
        "{guard}"
    );
    // Over-broad: `namespaceSelector: {}` used by shop/client alone, tightened to it, proven
    // on the same edges.
    let broad = &rule("shop/server-ingress", 1)["over_broad"];
    assert_eq!(broad.as_array().map(Vec::len), Some(1), "{broad}");
    let b = &broad[0];
    assert_eq!(b["suggested"], true, "{b}");
    assert_eq!(b["would_break"], 0, "{b}");
    assert_eq!(b["edges_checked"], 4, "{b}\n{stderr}");
    let yaml = b["tightened_rule"].as_str().unwrap();
    let tightened: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
    let from = &tightened["ingress"][0]["from"][0];
    assert_eq!(
        from["podSelector"]["matchLabels"]["app"],
        serde_yaml::Value::from("client"),
        "{yaml}"
    );
    assert!(
        from.get("namespaceSelector").is_none(),
        "own namespace: {yaml}"
    );
    assert!(rule("shop/server-ingress", 0)["over_broad"]
        .as_array()
        .unwrap()
        .is_empty());

    // The AdminNetworkPolicy deleted: its rule's series leave the agent's exposition.
    let rewritten = dir.path().join("cluster.yaml.new");
    std::fs::write(&rewritten, cluster(client, server, intruder, false)).unwrap();
    std::fs::rename(&rewritten, &snapshot).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while scraped(&agent).contains_key(&("/guard".to_string(), "deny-intruder".to_string()))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    let left = scraped(&agent);
    assert!(
        !left.contains_key(&("/guard".to_string(), "deny-intruder".to_string())),
        "{left:?}"
    );
    assert_eq!(left.len(), 2, "the NetworkPolicy rules stay: {left:?}");

    let (status, _) = agent.stop();
    assert!(status.success(), "{}", agent.stderr());

    // From the flow log the same counts (judged again) and the same tightening.
    let (from_log, stderr) = unused(&judged_on, &["--flows", agent.flow_log.to_str().unwrap()]);
    let line = from_log
        .iter()
        .find(|l| l["policy"] == "shop/server-ingress" && l["rule"] == 1)
        .unwrap_or_else(|| panic!("{from_log:#?}\n{stderr}"));
    assert_eq!(line["source"], "re_evaluated", "{line}");
    assert_eq!(
        (&line["connections"], &line["sole_connections"]),
        (&Value::from(5), &Value::from(2)),
        "{line}"
    );
    assert_eq!(
        line["over_broad"][0]["tightened_rule"], b["tightened_rule"],
        "{line}"
    );
}
