//! Which NetworkPolicy rules the recorded traffic used (pure): every observed edge, judged by
//! the engine, credits each rule that allows it (on its source's egress side and its
//! destination's ingress side) with its connections, and says whether the rule was the only
//! one allowing it. Rules credited with nothing are unused.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::{EdgeCount, EdgeEnd, EdgeKey};
use crate::policy::{Direction, Explanation, PeerOutcome, Tier};

/// One rule of a NetworkPolicy: `namespace/name`, direction, index in its list.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleRef {
    pub policy: String,
    /// `ingress` or `egress`.
    pub direction: &'static str,
    pub index: usize,
}

impl std::fmt::Display for RuleRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}[{}]", self.policy, self.direction, self.index)
    }
}

/// What one rule matched.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleUse {
    /// Connections it allowed (each connection credits every rule that allows it).
    pub connections: u64,
    /// Of which no other rule of that side allowed.
    pub sole_connections: u64,
    /// Observed edges it allowed.
    pub edges: u64,
    /// The namespaces (or addresses) of the peers it was used for.
    pub peers: BTreeSet<String>,
    /// The peers it was used for, by the entry of its `from`/`to` that matched them (`None`:
    /// the rule lists no peers): what [`super::broad`] tightens it to.
    pub peer_ends: BTreeMap<Option<usize>, BTreeSet<EdgeEnd>>,
    /// Unix time of its last match, when the agents' counters say (see [`Counted`]).
    pub last_match: Option<u64>,
}

/// Every rule of a set of NetworkPolicies with what it matched.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub rules: BTreeMap<RuleRef, RuleUse>,
    /// Rules the agents counted that are not rules of the snapshot's NetworkPolicies (those of
    /// cluster policies, or of policies the snapshot lacks), by their labels.
    pub counted_elsewhere: BTreeMap<CountedRule, RuleUse>,
}

/// The labels of one rule-usage series (`flowwatch_policy_rule_matches_total`).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CountedRule {
    pub tier: String,
    pub kind: String,
    pub namespace: String,
    pub policy: String,
    pub direction: String,
    pub rule: String,
    pub action: String,
}

impl std::fmt::Display for CountedRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ns = if self.namespace.is_empty() {
            String::new()
        } else {
            format!("{}/", self.namespace)
        };
        write!(
            f,
            "{} {ns}{} {}[{}] ({})",
            self.kind, self.policy, self.direction, self.rule, self.action
        )
    }
}

/// What the agents' rule counters say over a window, per rule.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counted {
    pub rules: BTreeMap<CountedRule, (u64, u64, Option<u64>)>,
}

/// The labels of the rule-usage families.
const RULE_LABELS: &str = "tier, kind, namespace, policy, direction, rule, action";

/// The PromQL queries for the rule counters over the last `range_secs`: (matches, sole
/// matches, last-match time). A counter's growth in the window is its highest value in the
/// window less its value at the window's start (a series younger than the window: its highest
/// value), per agent, summed; the last match is the latest over agents.
pub fn prometheus_rule_queries(range_secs: u64) -> [String; 3] {
    let growth = |family: &str| {
        format!(
            "sum by ({RULE_LABELS}) (clamp_min(max_over_time({family}[{range_secs}s]) -              ({family} offset {range_secs}s), 0) or max_over_time({family}[{range_secs}s]))"
        )
    };
    [
        growth("flowwatch_policy_rule_matches_total"),
        growth("flowwatch_policy_rule_sole_matches_total"),
        format!(
            "max by ({RULE_LABELS}) (max_over_time(flowwatch_policy_rule_last_match_timestamp_seconds[{range_secs}s]))"
        ),
    ]
}

impl Counted {
    /// Adds the answers (JSON bodies of `/api/v1/query`) to the three
    /// [`prometheus_rule_queries`].
    pub fn from_answers(answers: &[serde_json::Value; 3]) -> Result<Counted, String> {
        let mut out = Counted::default();
        for (which, body) in answers.iter().enumerate() {
            if body.get("status").and_then(serde_json::Value::as_str) != Some("success") {
                let error = body
                    .get("error")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("no status \"success\"");
                return Err(format!("Prometheus answered with an error: {error}"));
            }
            let result = body
                .pointer("/data/result")
                .and_then(serde_json::Value::as_array)
                .ok_or("Prometheus answer without data.result")?;
            for sample in result {
                let label = |l: &str| {
                    sample
                        .pointer(&format!("/metric/{l}"))
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or("")
                        .to_string()
                };
                let value = sample
                    .pointer("/value/1")
                    .and_then(serde_json::Value::as_str)
                    .and_then(|v| v.parse::<f64>().ok())
                    .filter(|v| v.is_finite() && *v >= 0.0)
                    .ok_or_else(|| format!("sample without a number: {sample}"))?;
                let key = CountedRule {
                    tier: label("tier"),
                    kind: label("kind"),
                    namespace: label("namespace"),
                    policy: label("policy"),
                    direction: label("direction"),
                    rule: label("rule"),
                    action: label("action"),
                };
                let entry = out.rules.entry(key).or_default();
                let n = value.round() as u64;
                match which {
                    0 => entry.0 = n,
                    1 => entry.1 = n,
                    _ => entry.2 = Some(value as u64),
                }
            }
        }
        Ok(out)
    }
}

impl Usage {
    /// Every rule of `policies`, none used yet.
    pub fn of_policies<'a>(policies: impl IntoIterator<Item = &'a NetworkPolicy>) -> Usage {
        let mut usage = Usage::default();
        for np in policies {
            let (Some(ns), Some(name)) = (&np.metadata.namespace, &np.metadata.name) else {
                continue;
            };
            let Some(spec) = &np.spec else {
                continue;
            };
            let policy = format!("{ns}/{name}");
            let lists = [
                ("ingress", spec.ingress.as_ref().map_or(0, Vec::len)),
                ("egress", spec.egress.as_ref().map_or(0, Vec::len)),
            ];
            for (direction, n) in lists {
                for index in 0..n {
                    usage.rules.insert(
                        RuleRef {
                            policy: policy.clone(),
                            direction,
                            index,
                        },
                        RuleUse::default(),
                    );
                }
            }
        }
        usage
    }

    /// Credits the rules that allow an observed edge.
    pub fn add(&mut self, key: &EdgeKey, count: &EdgeCount, e: &Explanation) {
        let peer_of = |end: &EdgeEnd| match end {
            EdgeEnd::Workload { namespace, .. } => namespace.clone(),
            EdgeEnd::Address(ip) => ip.to_string(),
        };
        for (side, peer, end) in [
            (&e.egress, peer_of(&key.dst), &key.dst),
            (&e.ingress, peer_of(&key.src), &key.src),
        ] {
            let direction = match side.direction {
                Direction::Ingress => "ingress",
                Direction::Egress => "egress",
            };
            // As the agent's verdict names them: NetworkPolicy rules count when their tier
            // decided (an Admin or Baseline rule that decides first leaves them unused).
            if side.tier != Tier::NetworkPolicy {
                continue;
            }
            let allowing: Vec<(RuleRef, Option<usize>)> = side
                .policies
                .iter()
                .flat_map(|p| {
                    p.rules.iter().filter(|r| r.allows()).map(|r| {
                        let slot = match r.peer {
                            PeerOutcome::Matched(i) => Some(i),
                            PeerOutcome::AnyPeer | PeerOutcome::NoMatch => None,
                        };
                        let rule = RuleRef {
                            policy: p.policy.to_string(),
                            direction,
                            index: r.index,
                        };
                        (rule, slot)
                    })
                })
                .collect();
            let sole = allowing.len() == 1;
            for (rule, slot) in allowing {
                let u = self.rules.entry(rule).or_default();
                u.connections += count.connections;
                u.edges += 1;
                if sole {
                    u.sole_connections += count.connections;
                }
                u.peers.insert(peer.clone());
                u.peer_ends.entry(slot).or_default().insert(end.clone());
            }
        }
    }

    /// Takes the connection counts from the agents' counters: every NetworkPolicy rule of
    /// the snapshot gets its counted figures (none counted: 0, whatever re-evaluating the
    /// edges found); counted rules the snapshot does not have go to `counted_elsewhere`.
    /// Edges and peers stay as the edges give them.
    pub fn apply_counters(&mut self, counted: &Counted) {
        for u in self.rules.values_mut() {
            (u.connections, u.sole_connections, u.last_match) = (0, 0, None);
        }
        for (key, &(connections, sole, last)) in &counted.rules {
            let rule = (key.kind == "NetworkPolicy")
                .then(|| key.rule.parse::<usize>().ok())
                .flatten()
                .and_then(|index| {
                    let direction = match key.direction.as_str() {
                        "ingress" => "ingress",
                        "egress" => "egress",
                        _ => return None,
                    };
                    Some(RuleRef {
                        policy: format!("{}/{}", key.namespace, key.policy),
                        direction,
                        index,
                    })
                });
            let u = match rule.and_then(|r| self.rules.get_mut(&r)) {
                Some(u) => u,
                None => self.counted_elsewhere.entry(key.clone()).or_default(),
            };
            u.connections += connections;
            u.sole_connections += sole;
            u.last_match = u.last_match.max(last);
        }
    }

    /// The rules that matched nothing.
    pub fn unused(&self) -> impl Iterator<Item = &RuleRef> {
        self.rules
            .iter()
            .filter(|(_, u)| u.connections == 0)
            .map(|(r, _)| r)
    }

    /// The policies with rules none of which matched anything.
    pub fn unused_policies(&self) -> Vec<&str> {
        let mut used: BTreeMap<&str, bool> = BTreeMap::new();
        for (r, u) in &self.rules {
            *used.entry(r.policy.as_str()).or_default() |= u.connections > 0;
        }
        used.into_iter()
            .filter(|(_, used)| !used)
            .map(|(p, _)| p)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{snapshot, sources};
    use crate::model::Protocol;
    use crate::policy::{Peer, PolicyEngine, PolicyOptions};

    #[test]
    fn the_agents_counters_replace_the_counts_and_name_the_rules_outside_the_snapshot() {
        let text = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {namespace: a, name: p}\n\
                    spec: {podSelector: {}, ingress: [{}, {}]}\n";
        let (inventory, _) = snapshot::parse(text, "t").unwrap();
        let mut usage = Usage::of_policies(&inventory.network_policies);
        usage.rules.values_mut().for_each(|u| u.connections = 9);
        let sample = |labels: serde_json::Value, v: &str| serde_json::json!({"metric": labels, "value": [1.0, v]});
        let np = |rule: &str| {
            serde_json::json!({"tier": "networkpolicy", "kind": "NetworkPolicy", "namespace": "a",
                "policy": "p", "direction": "ingress", "rule": rule, "action": "Accept"})
        };
        let anp = serde_json::json!({"tier": "admin", "kind": "AdminNetworkPolicy",
            "namespace": "", "policy": "guard", "direction": "ingress", "rule": "deny-z",
            "action": "Deny"});
        let answer = |samples: Vec<serde_json::Value>| serde_json::json!({"status": "success", "data": {"resultType": "vector", "result": samples}});
        let counted = Counted::from_answers(&[
            answer(vec![sample(np("1"), "7"), sample(anp.clone(), "2")]),
            answer(vec![sample(np("1"), "3"), sample(anp.clone(), "2")]),
            answer(vec![
                sample(np("1"), "1700000000.25"),
                sample(anp, "1700000100"),
            ]),
        ])
        .unwrap();
        usage.apply_counters(&counted);
        let rule = |index| {
            &usage.rules[&RuleRef {
                policy: "a/p".into(),
                direction: "ingress",
                index,
            }]
        };
        // Rule 0 has no series: it matched nothing, whatever the edges said.
        assert_eq!((rule(0).connections, rule(0).last_match), (0, None));
        assert_eq!(
            (
                rule(1).connections,
                rule(1).sole_connections,
                rule(1).last_match
            ),
            (7, 3, Some(1_700_000_000))
        );
        let (guard, u) = usage.counted_elsewhere.iter().next().unwrap();
        assert_eq!(
            guard.to_string(),
            "AdminNetworkPolicy guard ingress[deny-z] (Deny)"
        );
        assert_eq!((u.connections, u.sole_connections), (2, 2));
        assert_eq!(usage.unused().count(), 1);
        let error = serde_json::json!({"status": "error", "error": "bad query"});
        let e = Counted::from_answers(&[error.clone(), error.clone(), error]).unwrap_err();
        assert!(e.contains("bad query"), "{e}");
        assert!(prometheus_rule_queries(3600)[0].contains("offset 3600s"));
    }

    #[test]
    fn every_allowing_rule_is_credited_and_a_sole_one_is_marked() {
        let deployment = |name: &str| {
            format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{namespace: a, name: {name}}}\n\
                 spec: {{template: {{metadata: {{labels: {{app: {name}}}}}, spec: {{containers: [{{name: c}}]}}}}}}\n---\n"
            )
        };
        let text = format!(
            "{}{}apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{namespace: a, name: p1}}\n\
             spec:\n  podSelector: {{matchLabels: {{app: server}}}}\n  ingress:\n  \
             - from: [{{podSelector: {{matchLabels: {{app: client}}}}}}]\n    ports: [{{port: 80}}]\n  \
             - ports: [{{port: 80}}, {{port: 81}}]\n---\n\
             apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{namespace: a, name: p2}}\n\
             spec:\n  podSelector: {{matchLabels: {{app: server}}}}\n  ingress:\n  \
             - from: [{{podSelector: {{matchLabels: {{app: other}}}}}}]\n",
            deployment("client"),
            deployment("server")
        );
        let (mut inventory, errors) = snapshot::parse(&text, "t").unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        sources::with_workloads_as_pods(&mut inventory);
        let (engine, _) = PolicyEngine::build(&inventory, PolicyOptions::default());
        let mut usage = Usage::of_policies(&inventory.network_policies);
        assert_eq!(usage.rules.len(), 3);
        let end = |name: &str| EdgeEnd::Workload {
            namespace: "a".into(),
            kind: "deployment".into(),
            name: name.into(),
        };
        let pod = |name: &str| Peer::Pod {
            namespace: "a".into(),
            name: format!("deployment/{name}"),
        };
        for (port, n) in [(80, 5), (81, 2)] {
            let key = EdgeKey {
                src: end("client"),
                dst: end("server"),
                port,
                protocol: Protocol::Tcp,
            };
            let e = engine
                .explain(&pod("client"), &pod("server"), port, Protocol::Tcp)
                .unwrap();
            let count = EdgeCount {
                connections: n,
                established: n,
            };
            usage.add(&key, &count, &e);
        }
        let rule = |policy: &str, index: usize| {
            &usage.rules[&RuleRef {
                policy: policy.into(),
                direction: "ingress",
                index,
            }]
        };
        // Port 80: both rules of p1 allow it (neither alone); port 81: only the second.
        assert_eq!(
            (
                rule("a/p1", 0).connections,
                rule("a/p1", 0).sole_connections
            ),
            (5, 0)
        );
        assert_eq!(
            (
                rule("a/p1", 1).connections,
                rule("a/p1", 1).sole_connections
            ),
            (7, 2)
        );
        assert_eq!(rule("a/p1", 1).edges, 2);
        assert_eq!(rule("a/p1", 1).peers, ["a".to_string()].into());
        assert_eq!(rule("a/p2", 0).connections, 0);
        assert_eq!(
            usage
                .unused()
                .map(std::string::ToString::to_string)
                .collect::<Vec<_>>(),
            ["a/p2 ingress[0]"]
        );
        assert_eq!(usage.unused_policies(), ["a/p2"]);
    }
}
