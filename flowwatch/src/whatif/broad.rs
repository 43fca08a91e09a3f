//! Over-broad NetworkPolicy rules (pure): a rule that admits far more than its real traffic
//! needs, and the narrower rule that would admit that traffic. A candidate is only a
//! proposal: `policy unused` suggests it once `whatif` over the same traffic shows the
//! tightened policy breaks nothing (see `policy_cli::unused`).
//!
//! Broad, here: a peer with an empty `namespaceSelector` (every namespace; with an empty or
//! absent `podSelector`, every pod of the cluster), an `ipBlock` wider than the aggregation
//! prefix, or a rule with no peers at all (everything). Its traffic, by the peer entry that
//! matched it ([`super::usage::RuleUse::peer_ends`]), decides the tightening: one namespace
//! becomes that namespace (and one workload, its stable labels when they select no other
//! workload of the namespace); addresses become the smallest network holding them all,
//! rounded out to the prefix (`/24`, `/64` by default, as `policy advise` aggregates).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::networking::v1::{IPBlock, NetworkPolicy, NetworkPolicyPeer};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::usage::{RuleRef, Usage};
use super::EdgeEnd;
use crate::advise::cluster::ClusterView;
use crate::advise::labels::choose;
use crate::advise::peers::network;

/// The label every namespace carries (set by the API server).
const NAMESPACE_NAME: &str = "kubernetes.io/metadata.name";

/// One proposed tightening of one rule.
#[derive(Clone, Debug)]
pub struct Tightening {
    pub rule: RuleRef,
    /// The entry of `from`/`to` replaced (`None`: the rule listed no peers; one is added).
    pub peer: Option<usize>,
    /// What the rule admits now and what its traffic was, in words.
    pub why: String,
    /// The whole policy with the rule tightened.
    pub policy: NetworkPolicy,
}

impl Tightening {
    /// The tightened rule as YAML (one item of `spec.ingress` / `spec.egress`).
    pub fn rule_yaml(&self) -> String {
        let spec = self.policy.spec.as_ref();
        let i = self.rule.index;
        let value = if self.rule.direction == "ingress" {
            spec.and_then(|s| s.ingress.as_ref()?.get(i))
                .and_then(|r| serde_yaml::to_value(r).ok())
        } else {
            spec.and_then(|s| s.egress.as_ref()?.get(i))
                .and_then(|r| serde_yaml::to_value(r).ok())
        };
        let body = value
            .and_then(|v| serde_yaml::to_string(&v).ok())
            .unwrap_or_default();
        // As a list item under `spec.<direction>:`.
        let mut out = format!("{}:\n", self.rule.direction);
        for (n, line) in body.lines().enumerate() {
            out.push_str(if n == 0 { "- " } else { "  " });
            out.push_str(line);
            out.push('\n');
        }
        out
    }
}

/// Whether a selector selects everything (`{}`).
fn selects_all(s: &LabelSelector) -> bool {
    s.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
        && s.match_expressions.as_ref().is_none_or(Vec::is_empty)
}

fn by_name(namespace: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some([(NAMESPACE_NAME.to_string(), namespace.to_string())].into()),
        match_expressions: None,
    }
}

/// The pod-selector labels that pick exactly `end`'s pods among its namespace's workloads.
fn workload_selector(end: &EdgeEnd, view: &ClusterView) -> Option<LabelSelector> {
    let w = view.workloads.get(end)?;
    if w.labels.is_empty() {
        return None;
    }
    let others: Vec<(String, &[BTreeMap<String, String>])> = view
        .workloads
        .iter()
        .filter(|(e, o)| *e != end && o.namespace == w.namespace)
        .map(|(_, o)| (o.id(), o.label_sets.as_slice()))
        .collect();
    let choice = choose(&w.labels, &others);
    choice.also_selects.is_empty().then_some(LabelSelector {
        match_labels: Some(choice.labels),
        match_expressions: None,
    })
}

/// The namespaces (and workloads) of pod ends; `None` if an end is an address.
fn workloads(ends: &BTreeSet<EdgeEnd>) -> Option<BTreeMap<&str, Vec<&EdgeEnd>>> {
    let mut out: BTreeMap<&str, Vec<&EdgeEnd>> = BTreeMap::new();
    for end in ends {
        match end {
            EdgeEnd::Workload { namespace, .. } => out.entry(namespace).or_default().push(end),
            EdgeEnd::Address(_) => return None,
        }
    }
    Some(out)
}

/// The smallest network holding every address (no wider than needed, no narrower than
/// `prefix_v4`/`prefix_v6`), or `None` if an end is a pod or the families mix.
fn covering(ends: &BTreeSet<EdgeEnd>, prefix_v4: u8, prefix_v6: u8) -> Option<(IpAddr, u8)> {
    let mut ips = ends.iter().map(|e| match e {
        EdgeEnd::Address(ip) => Some(*ip),
        EdgeEnd::Workload { .. } => None,
    });
    let first = ips.next()??;
    let mut prefix = if first.is_ipv4() {
        prefix_v4
    } else {
        prefix_v6
    };
    for ip in ips {
        let ip = ip?;
        if ip.is_ipv4() != first.is_ipv4() {
            return None;
        }
        while prefix > 0 && network(ip, prefix) != network(first, prefix) {
            prefix -= 1;
        }
    }
    Some(network(first, prefix))
}

/// The narrower peer for one broad entry and its traffic, with what changed in words.
fn tighter(
    peer: &NetworkPolicyPeer,
    ends: &BTreeSet<EdgeEnd>,
    policy_ns: &str,
    view: &ClusterView,
    prefixes: (u8, u8),
) -> Option<(NetworkPolicyPeer, String)> {
    if let Some(block) = &peer.ip_block {
        let net: ipnet::IpNet = block.cidr.parse().ok()?;
        let wide = match net {
            ipnet::IpNet::V4(n) => n.prefix_len() < prefixes.0,
            ipnet::IpNet::V6(n) => n.prefix_len() < prefixes.1,
        };
        if !wide {
            return None;
        }
        let (ip, len) = covering(ends, prefixes.0, prefixes.1)?;
        if len <= net.prefix_len() || !net.contains(&ip) {
            return None;
        }
        let cidr = format!("{ip}/{len}");
        let inner: ipnet::IpNet = cidr.parse().ok()?;
        let except: Vec<String> = block
            .except
            .iter()
            .flatten()
            .filter(|e| {
                e.parse::<ipnet::IpNet>()
                    .is_ok_and(|e| inner.contains(&e.network()))
            })
            .cloned()
            .collect();
        let why = format!(
            "ipBlock {} admits {} addresses; its traffic came from {}",
            block.cidr,
            if net.prefix_len() == 0 {
                "all"
            } else {
                "that many"
            },
            cidr
        );
        let tightened = NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr,
                except: (!except.is_empty()).then_some(except),
            }),
            ..NetworkPolicyPeer::default()
        };
        return Some((tightened, why));
    }
    let ns_all = peer.namespace_selector.as_ref().is_some_and(selects_all);
    if !ns_all {
        return None;
    }
    let by_ns = workloads(ends)?;
    let [(namespace, pods)] = <[_; 1]>::try_from(by_ns.into_iter().collect::<Vec<_>>()).ok()?;
    let pods_all = peer.pod_selector.as_ref().is_none_or(selects_all);
    let mut out = NetworkPolicyPeer {
        namespace_selector: (namespace != policy_ns).then(|| by_name(namespace)),
        pod_selector: peer.pod_selector.clone(),
        ip_block: None,
    };
    let mut why = format!("namespaceSelector {{}} admits every namespace; its traffic came from namespace {namespace} only");
    if pods_all {
        if let [one] = pods.as_slice() {
            if let Some(selector) = workload_selector(one, view) {
                out.pod_selector = Some(selector);
                why = format!(
                    "namespaceSelector {{}} with podSelector {{}} admits every pod of the cluster; its traffic came from {one} only"
                );
            }
        }
    }
    if out.namespace_selector.is_none() && out.pod_selector.is_none() {
        // Own namespace, every pod: `podSelector: {}` (an entry must name something).
        out.pod_selector = Some(LabelSelector::default());
    }
    Some((out, why))
}

/// The peer for a rule that lists none, from its traffic: its one namespace (and workload),
/// or the network of its addresses.
fn first_peer(
    ends: &BTreeSet<EdgeEnd>,
    policy_ns: &str,
    view: &ClusterView,
    prefixes: (u8, u8),
) -> Option<(NetworkPolicyPeer, String)> {
    let any = NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector::default()),
        ..NetworkPolicyPeer::default()
    };
    if let Some((peer, _)) = tighter(&any, ends, policy_ns, view, prefixes) {
        return Some((
            peer,
            "the rule admits every peer; its traffic came from one namespace only".into(),
        ));
    }
    let all = NetworkPolicyPeer {
        ip_block: Some(IPBlock {
            cidr: if ends
                .iter()
                .any(|e| matches!(e, EdgeEnd::Address(IpAddr::V6(_))))
            {
                "::/0".into()
            } else {
                "0.0.0.0/0".into()
            },
            except: None,
        }),
        ..NetworkPolicyPeer::default()
    };
    let (peer, _) = tighter(&all, ends, policy_ns, view, prefixes)?;
    let cidr = peer
        .ip_block
        .as_ref()
        .map_or("", |b| b.cidr.as_str())
        .to_string();
    Some((
        peer,
        format!("the rule admits every peer; its traffic came from {cidr} only"),
    ))
}

/// Every tightening the traffic suggests: per used rule, per broad peer entry (a rule that
/// lists no peers gets one). `prefixes`: the IPv4 and IPv6 aggregation prefixes.
pub fn candidates(
    policies: &[NetworkPolicy],
    usage: &Usage,
    view: &ClusterView,
    prefixes: (u8, u8),
) -> Vec<Tightening> {
    let mut out = Vec::new();
    for np in policies {
        let (Some(ns), Some(name), Some(spec)) =
            (&np.metadata.namespace, &np.metadata.name, &np.spec)
        else {
            continue;
        };
        let key = format!("{ns}/{name}");
        let lists: [(&'static str, Vec<Option<&Vec<NetworkPolicyPeer>>>); 2] = [
            (
                "ingress",
                spec.ingress
                    .iter()
                    .flatten()
                    .map(|r| r.from.as_ref())
                    .collect(),
            ),
            (
                "egress",
                spec.egress
                    .iter()
                    .flatten()
                    .map(|r| r.to.as_ref())
                    .collect(),
            ),
        ];
        for (direction, rules) in lists {
            for (index, peers) in rules.into_iter().enumerate() {
                let rule = RuleRef {
                    policy: key.clone(),
                    direction,
                    index,
                };
                let Some(used) = usage.rules.get(&rule).filter(|u| u.connections > 0) else {
                    continue;
                };
                let peers = peers.filter(|p| !p.is_empty());
                let proposals: Vec<(Option<usize>, NetworkPolicyPeer, String)> = match peers {
                    None => used
                        .peer_ends
                        .get(&None)
                        .and_then(|ends| first_peer(ends, ns, view, prefixes))
                        .map(|(p, why)| (None, p, why))
                        .into_iter()
                        .collect(),
                    Some(peers) => peers
                        .iter()
                        .enumerate()
                        .filter_map(|(i, peer)| {
                            let ends = used.peer_ends.get(&Some(i))?;
                            let (p, why) = tighter(peer, ends, ns, view, prefixes)?;
                            Some((Some(i), p, why))
                        })
                        .collect(),
                };
                for (slot, peer, why) in proposals {
                    let mut policy = np.clone();
                    let Some(spec) = policy.spec.as_mut() else {
                        continue;
                    };
                    let list = if direction == "ingress" {
                        spec.ingress
                            .as_mut()
                            .and_then(|l| l.get_mut(index))
                            .map(|r| r.from.get_or_insert_with(Vec::new))
                    } else {
                        spec.egress
                            .as_mut()
                            .and_then(|l| l.get_mut(index))
                            .map(|r| r.to.get_or_insert_with(Vec::new))
                    };
                    let Some(list) = list else {
                        continue;
                    };
                    match slot {
                        Some(i) => list[i] = peer,
                        None => *list = vec![peer],
                    }
                    out.push(Tightening {
                        rule: rule.clone(),
                        peer: slot,
                        why,
                        policy,
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{snapshot, sources};
    use crate::model::Protocol;
    use crate::policy::{Peer, PolicyEngine, PolicyOptions};
    use crate::whatif::{EdgeCount, EdgeKey};

    fn deployment(ns: &str, name: &str) -> String {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{namespace: {ns}, name: {name}}}\n\
             spec: {{template: {{metadata: {{labels: {{app: {name}, tier: x}}}}, spec: {{containers: [{{name: c}}]}}}}}}\n---\n"
        )
    }

    const POLICIES: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: a, name: server}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{namespaceSelector: {}}]
    ports: [{port: 80}]
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: 81}]
  - ports: [{port: 82}]
  - from: [{namespaceSelector: {}, podSelector: {matchLabels: {tier: x}}}]
    ports: [{port: 83}]
  egress:
  - to: [{ipBlock: {cidr: 0.0.0.0/0, except: [203.0.113.128/25, 10.0.0.0/8]}}]
  - to: [{ipBlock: {cidr: 198.51.100.0/24}}]
";

    /// (the candidates, with the usage behind them) for traffic `(src, dst, port)`.
    fn analyse(traffic: &[(&str, &str, u16)]) -> Vec<Tightening> {
        let text = [
            deployment("a", "server"),
            deployment("b", "client"),
            deployment("b", "other"),
            deployment("c", "client"),
            POLICIES.to_string(),
        ]
        .concat();
        let (mut inventory, errors) = snapshot::parse(&text, "t").unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        sources::with_workloads_as_pods(&mut inventory);
        let (engine, errors) = PolicyEngine::build(&inventory, PolicyOptions::default());
        assert!(errors.is_empty(), "{errors:?}");
        let view = ClusterView::of(&inventory);
        let mut usage = Usage::of_policies(&inventory.network_policies);
        let end = |s: &str| {
            if let Ok(ip) = s.parse::<IpAddr>() {
                (EdgeEnd::Address(ip), Peer::Ip(ip))
            } else {
                let (ns, name) = s.split_once('/').unwrap();
                (
                    EdgeEnd::Workload {
                        namespace: ns.into(),
                        kind: "deployment".into(),
                        name: name.into(),
                    },
                    Peer::Pod {
                        namespace: ns.into(),
                        name: format!("deployment/{name}"),
                    },
                )
            }
        };
        for (src, dst, port) in traffic {
            let ((src_end, src_peer), (dst_end, dst_peer)) = (end(src), end(dst));
            let e = engine
                .explain(&src_peer, &dst_peer, *port, Protocol::Tcp)
                .unwrap();
            let key = EdgeKey {
                src: src_end,
                dst: dst_end,
                port: *port,
                protocol: Protocol::Tcp,
            };
            let count = EdgeCount {
                connections: 2,
                established: 2,
            };
            usage.add(&key, &count, &e);
        }
        candidates(&inventory.network_policies, &usage, &view, (24, 64))
    }

    fn peers_of(t: &Tightening) -> serde_json::Value {
        let spec = serde_json::to_value(t.policy.spec.as_ref().unwrap()).unwrap();
        let list = if t.rule.direction == "ingress" {
            &spec["ingress"][t.rule.index]["from"]
        } else {
            &spec["egress"][t.rule.index]["to"]
        };
        list.clone()
    }

    #[test]
    fn an_empty_namespace_selector_used_by_one_workload_becomes_that_workload() {
        let found = analyse(&[("b/client", "a/server", 80), ("b/client", "a/server", 80)]);
        assert_eq!(found.len(), 1, "{found:?}");
        let t = &found[0];
        assert_eq!(t.rule.to_string(), "a/server ingress[0]");
        assert_eq!(t.peer, Some(0));
        assert_eq!(
            peers_of(t),
            serde_json::json!([{
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "b"}},
                "podSelector": {"matchLabels": {"app": "client"}}
            }])
        );
        assert!(t.why.contains("b/deployment/client"), "{}", t.why);
        let yaml = t.rule_yaml();
        assert!(yaml.starts_with("ingress:\n- from:\n"), "{yaml}");
        assert!(yaml.contains("kubernetes.io/metadata.name: b"), "{yaml}");
        assert!(yaml.contains("port: 80"), "{yaml}");
    }

    #[test]
    fn two_workloads_of_one_namespace_narrow_the_namespace_only_and_keep_a_pod_selector() {
        let found = analyse(&[
            ("b/client", "a/server", 80),
            ("b/other", "a/server", 80),
            ("b/client", "a/server", 83),
        ]);
        let by_rule: BTreeMap<String, serde_json::Value> = found
            .iter()
            .map(|t| (t.rule.to_string(), peers_of(t)))
            .collect();
        assert_eq!(
            by_rule["a/server ingress[0]"],
            serde_json::json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "b"}}}])
        );
        // The pod selector the rule has is kept: only the namespace narrows.
        assert_eq!(
            by_rule["a/server ingress[3]"],
            serde_json::json!([{
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "b"}},
                "podSelector": {"matchLabels": {"tier": "x"}}
            }])
        );
    }

    #[test]
    fn traffic_from_several_namespaces_or_scoped_rules_suggest_nothing() {
        let found = analyse(&[
            ("b/client", "a/server", 80),
            ("c/client", "a/server", 80),
            // A rule scoped to a label of its own namespace is not broad.
            ("a/server", "a/server", 81),
            // Unused rules are not tightened (they are reported unused).
        ]);
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn a_slash_zero_used_for_one_network_becomes_that_network_with_its_exceptions() {
        let found = analyse(&[
            ("a/server", "203.0.113.7", 443),
            ("a/server", "203.0.113.9", 443),
        ]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].rule.to_string(), "a/server egress[0]");
        assert_eq!(
            peers_of(&found[0]),
            serde_json::json!([{"ipBlock": {"cidr": "203.0.113.0/24", "except": ["203.0.113.128/25"]}}])
        );
        // Two networks: the smallest network holding both.
        let found = analyse(&[
            ("a/server", "203.0.113.7", 443),
            ("a/server", "203.0.112.1", 443),
        ]);
        assert_eq!(
            peers_of(&found[0]),
            serde_json::json!([{"ipBlock": {"cidr": "203.0.112.0/23", "except": ["203.0.113.128/25"]}}])
        );
        // Rule 1 is already a /24: not wide, whatever its traffic (rule 0, which allows the
        // same address, narrows to the network holding it).
        let found = analyse(&[("a/server", "198.51.100.5", 443)]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].rule.to_string(), "a/server egress[0]");
        assert_eq!(
            peers_of(&found[0]),
            serde_json::json!([{"ipBlock": {"cidr": "198.51.100.0/24"}}])
        );
    }

    #[test]
    fn a_rule_without_peers_gets_the_one_namespace_or_network_of_its_traffic() {
        let found = analyse(&[("b/client", "a/server", 82), ("b/other", "a/server", 82)]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].peer, None);
        assert_eq!(
            peers_of(&found[0]),
            serde_json::json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "b"}}}])
        );
        assert!(analyse(&[("b/client", "a/server", 82), ("c/client", "a/server", 82)]).is_empty());
    }
}
