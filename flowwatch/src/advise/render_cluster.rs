//! The advice as cluster-scoped `ClusterNetworkPolicy` objects (`policy.networking.k8s.io/
//! v1alpha2`, tier `Admin`) instead of NetworkPolicies (pure), for clusters whose
//! administrators keep isolation out of the application namespaces' hands:
//!
//! * per workload, `advised-NS-KIND-NAME` at priority [`ACCEPT_PRIORITY`]: its subject is the
//!   workload's pods (namespace by `kubernetes.io/metadata.name`, pods by its stable labels),
//!   each advised rule becomes an `Accept` rule with the same peers and ports;
//! * per namespace, `advised-NS-default-deny` at the lower precedence [`DENY_PRIORITY`]:
//!   `Deny` every other ingress from pods and every other egress (`networks` 0.0.0.0/0, ::/0).
//!
//! Admin rules are final, so no NetworkPolicy can widen what they leave out. One thing v1alpha2
//! cannot say: an ingress peer that is an address (a node, a host-network pod, an external
//! network; ingress peers are namespaces and pods only). Ingress from addresses is left to
//! the NetworkPolicy tier, in the same stream: per namespace an ingress-only default deny
//! (`advised-default-deny`), and per workload that accepts an address its rules from the
//! `ipBlock`s only (`advised-KIND-NAME`). Pods never reach that tier: the Admin tier decides
//! every connection from a pod.

use std::fmt::Write;
use std::net::IpAddr;

use super::render::{covers, header as np_header, policy, scalar, selector, Document, MANAGED_BY};
use super::{policy_name, Advice, Labels, Peer, Rule, WorkloadPolicy, DEFAULT_DENY};

/// The precedence of the workloads' Accept rules (lower is earlier).
pub const ACCEPT_PRIORITY: u32 = 100;
/// The precedence of the namespaces' deny, after every Accept.
pub const DENY_PRIORITY: u32 = 900;

/// The cluster-scoped name of a namespace's deny.
pub fn deny_name(ns: &str) -> String {
    policy_name(ns, "default-deny")
}

/// The cluster-scoped name of a workload's policy: its namespace is part of it.
pub fn workload_name(p: &WorkloadPolicy) -> String {
    policy_name(&format!("{}-{}", p.namespace, p.kind), &p.workload)
}

/// The documents of an advice: by namespace, its deny first, then per workload its
/// ClusterNetworkPolicy and, when it accepts traffic from addresses, that NetworkPolicy.
pub fn documents(advice: &Advice) -> Vec<Document> {
    let mut out = Vec::new();
    for (ns, a) in &advice.namespaces {
        out.push(Document {
            namespace: ns.clone(),
            name: deny_name(ns),
            text: deny(ns),
        });
        out.push(Document {
            namespace: ns.clone(),
            name: DEFAULT_DENY.to_string(),
            text: address_deny(ns),
        });
        for p in &a.policies {
            out.push(Document {
                namespace: ns.clone(),
                name: workload_name(p),
                text: workload(p),
            });
            if let Some(np) = address_ingress(p) {
                out.push(Document {
                    namespace: ns.clone(),
                    name: np.name.clone(),
                    text: policy(&np),
                });
            }
        }
    }
    out
}

fn header(out: &mut String, name: &str, priority: u32) {
    let _ = write!(
        out,
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata:\n  \
         name: {}\n  labels:\n    {}: {}\nspec:\n  tier: Admin\n  priority: {priority}\n",
        scalar(name),
        scalar(MANAGED_BY.0),
        scalar(MANAGED_BY.1)
    );
}

fn namespace_labels(ns: &str) -> Labels {
    [("kubernetes.io/metadata.name".to_string(), ns.to_string())].into()
}

fn deny(ns: &str) -> String {
    let mut out = format!(
        "# Namespace {ns}: nothing in from pods, nothing out, unless an advised policy accepts it.\n"
    );
    header(&mut out, &deny_name(ns), DENY_PRIORITY);
    out.push_str("  subject:\n");
    selector(&mut out, "namespaces", &namespace_labels(ns), 4);
    out.push_str(
        "  ingress:\n  - name: deny-all\n    action: Deny\n    from:\n    - namespaces: {}\n  \
         egress:\n  - name: deny-all\n    action: Deny\n    to:\n    - networks:\n      \
         - 0.0.0.0/0\n      - \"::/0\"\n",
    );
    out
}

/// The NetworkPolicy that denies ingress from addresses the Admin tier cannot name.
fn address_deny(ns: &str) -> String {
    let mut out = format!(
        "# Namespace {ns}: no ingress from nodes or other addresses unless an advised policy \
         allows it (ClusterNetworkPolicy ingress cannot name addresses).\n"
    );
    np_header(&mut out, DEFAULT_DENY, ns);
    out.push_str("spec:\n  podSelector: {}\n  policyTypes:\n  - Ingress\n");
    out
}

fn workload(p: &WorkloadPolicy) -> String {
    let mut out = format!(
        "# {}/{}/{}: the traffic it was seen to accept and to open.\n",
        p.namespace, p.kind, p.workload
    );
    header(&mut out, &workload_name(p), ACCEPT_PRIORITY);
    out.push_str("  subject:\n    pods:\n");
    selector(
        &mut out,
        "namespaceSelector",
        &namespace_labels(&p.namespace),
        6,
    );
    selector(&mut out, "podSelector", &p.selector, 6);
    // Ingress from pods only (see the module's documentation).
    let ingress: Vec<Rule> = p.ingress.iter().filter_map(|r| part(r, false)).collect();
    for (key, peers_key, rules) in [("ingress", "from", &ingress), ("egress", "to", &p.egress)] {
        if rules.is_empty() {
            continue;
        }
        let _ = writeln!(out, "  {key}:");
        for (i, r) in rules.iter().enumerate() {
            rule(&mut out, key, i, peers_key, &p.namespace, r);
        }
    }
    out
}

/// Whether a rule comment's edge starts at an address (`203.0.113.9 -> ...`).
fn from_address(cover: &str) -> bool {
    cover
        .split_whitespace()
        .next()
        .is_some_and(|src| src.parse::<IpAddr>().is_ok())
}

fn rule(out: &mut String, key: &str, i: usize, peers_key: &str, own_ns: &str, r: &Rule) {
    covers(out, r);
    let _ = writeln!(
        out,
        "  - name: {key}-{i}\n    action: Accept\n    {peers_key}:"
    );
    let mut networks = Vec::new();
    for peer in &r.peers {
        match peer {
            Peer::Pods { namespace, labels } => {
                let ns = namespace.as_deref().unwrap_or(own_ns);
                out.push_str("    - pods:\n");
                selector(out, "namespaceSelector", &namespace_labels(ns), 8);
                selector(out, "podSelector", labels, 8);
            }
            Peer::Block { net, prefix } => networks.push(Peer::cidr(*net, *prefix)),
        }
    }
    if !networks.is_empty() {
        out.push_str("    - networks:\n");
        for n in networks {
            let _ = writeln!(out, "      - {}", scalar(&n));
        }
    }
    out.push_str("    protocols:\n");
    for (protocol, port) in &r.ports {
        let _ = writeln!(
            out,
            "    - {}:\n        destinationPort:\n          number: {port}",
            protocol.as_str().to_ascii_lowercase()
        );
    }
}

/// The part of an ingress rule with its pod peers (`addresses` false) or its address peers,
/// and the comment lines of the edges from those; `None` when it has none of them.
fn part(r: &Rule, addresses: bool) -> Option<Rule> {
    let peers: Vec<Peer> = r
        .peers
        .iter()
        .filter(|peer| matches!(peer, Peer::Block { .. }) == addresses)
        .cloned()
        .collect();
    (!peers.is_empty()).then(|| Rule {
        peers,
        ports: r.ports.clone(),
        covers: r
            .covers
            .iter()
            .filter(|c| from_address(c) == addresses)
            .cloned()
            .collect(),
    })
}

/// The NetworkPolicy of a workload's ingress rules from addresses (with those peers only),
/// when it has any.
fn address_ingress(p: &WorkloadPolicy) -> Option<WorkloadPolicy> {
    let ingress: Vec<Rule> = p.ingress.iter().filter_map(|r| part(r, true)).collect();
    (!ingress.is_empty()).then(|| WorkloadPolicy {
        ingress,
        egress: Vec::new(),
        ..p.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::advise::NamespaceAdvice;
    use crate::model::Protocol;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn advice() -> Advice {
        let mut a = Advice::default();
        a.namespaces.insert(
            "shop".into(),
            NamespaceAdvice {
                policies: vec![WorkloadPolicy {
                    namespace: "shop".into(),
                    kind: "deployment".into(),
                    workload: "api".into(),
                    name: "advised-deployment-api".into(),
                    selector: labels(&[("app", "api")]),
                    ingress: vec![Rule {
                        peers: vec![
                            Peer::Pods {
                                namespace: None,
                                labels: labels(&[("app", "web")]),
                            },
                            Peer::Block {
                                net: "203.0.113.0".parse().unwrap(),
                                prefix: 24,
                            },
                        ],
                        ports: vec![(Protocol::Tcp, 9090)],
                        covers: vec![
                            "shop/deployment/web -> shop/deployment/api 9090/TCP: 3 connections"
                                .into(),
                            "203.0.113.9 -> shop/deployment/api 9090/TCP: 1 connections".into(),
                        ],
                    }],
                    egress: vec![Rule {
                        peers: vec![
                            Peer::Pods {
                                namespace: Some("kube-system".into()),
                                labels: labels(&[("k8s-app", "kube-dns")]),
                            },
                            Peer::Block {
                                net: "2001:db8::".parse().unwrap(),
                                prefix: 64,
                            },
                        ],
                        ports: vec![(Protocol::Tcp, 53), (Protocol::Udp, 53)],
                        covers: vec!["a".into()],
                    }],
                }],
            },
        );
        a
    }

    #[test]
    fn the_cluster_form_reads_back_and_the_engine_accepts_it() {
        let docs = documents(&advice());
        let names: Vec<&str> = docs.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "advised-shop-default-deny",
                "advised-default-deny",
                "advised-shop-deployment-api",
                "advised-deployment-api"
            ]
        );
        let text = crate::advise::render::stream(&docs);
        assert_eq!(text, crate::advise::render::stream(&documents(&advice())));
        let (inventory, errors) = crate::inventory::snapshot::parse(&text, "advised").unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        let cnps = &inventory.cluster_policies.cluster_network_policies;
        assert_eq!(cnps.len(), 2);
        let api = serde_json::to_value(&cnps[1]).unwrap();
        assert_eq!(api["spec"]["tier"], "Admin");
        assert_eq!(api["spec"]["priority"], 100);
        assert_eq!(
            api["spec"]["subject"]["pods"]["namespaceSelector"]["matchLabels"]
                ["kubernetes.io/metadata.name"],
            "shop"
        );
        let ingress = &api["spec"]["ingress"][0];
        assert_eq!(ingress["action"], "Accept");
        assert_eq!(ingress["from"].as_array().unwrap().len(), 1, "pods only");
        assert_eq!(
            ingress["protocols"][0]["tcp"]["destinationPort"]["number"],
            9090
        );
        let egress = &api["spec"]["egress"][0];
        assert_eq!(
            egress["to"][1]["networks"],
            serde_json::json!(["2001:db8::/64"])
        );
        let deny = serde_json::to_value(&cnps[0]).unwrap();
        assert_eq!(
            deny["spec"]["egress"][0]["to"][0]["networks"],
            serde_json::json!(["0.0.0.0/0", "::/0"])
        );
        assert_eq!(deny["spec"]["priority"], 900);
        // The address ingress stays a NetworkPolicy, with its own comment only.
        let ingress_only = serde_json::to_value(&inventory.network_policies[0]).unwrap();
        assert_eq!(
            ingress_only["spec"]["policyTypes"],
            serde_json::json!(["Ingress"])
        );
        let np = serde_json::to_value(&inventory.network_policies[1]).unwrap();
        assert_eq!(
            np["spec"]["ingress"][0]["from"],
            serde_json::json!([{"ipBlock": {"cidr": "203.0.113.0/24"}}])
        );
        assert!(text.contains("  # 203.0.113.9 -> shop/deployment/api"));
        assert_eq!(
            text.matches("# shop/deployment/web -> shop/deployment/api")
                .count(),
            1
        );
        // The engine compiles every object without an error.
        let (_, errors) =
            crate::policy::PolicyEngine::build(&inventory, crate::policy::PolicyOptions::default());
        assert!(errors.is_empty(), "{errors:?}");
    }
}
