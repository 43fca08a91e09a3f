//! The advice as YAML ready for `kubectl apply` (pure): one document per NetworkPolicy, the
//! namespace's default deny first, then its workloads' policies by kind and name; above each
//! rule a comment naming the observed edges it covers. Written by hand (a YAML library would
//! drop the comments); every string that is not plainly safe is quoted as JSON, which YAML
//! reads the same. Byte-identical for the same advice.

use std::fmt::Write;

use super::cluster::Labels;
use super::{Advice, Peer, Rule, WorkloadPolicy, DEFAULT_DENY};

/// The most edges a rule's comment lists (then "... and N more").
const MAX_COVERS: usize = 20;

/// The label every advised policy carries, so `kubectl delete -l` can take them back.
pub(super) const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "flowwatch-advise");

/// One policy as a YAML document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document {
    pub namespace: String,
    /// The policy's name.
    pub name: String,
    /// The document, without the `---` separator.
    pub text: String,
}

/// The documents of an advice, in order: by namespace, the default deny first.
pub fn documents(advice: &Advice) -> Vec<Document> {
    let mut out = Vec::new();
    for (ns, a) in &advice.namespaces {
        out.push(Document {
            namespace: ns.clone(),
            name: DEFAULT_DENY.to_string(),
            text: default_deny(ns),
        });
        for p in &a.policies {
            out.push(Document {
                namespace: ns.clone(),
                name: p.name.clone(),
                text: policy(p),
            });
        }
    }
    out
}

/// Documents as one multi-document YAML stream.
pub fn stream(docs: &[Document]) -> String {
    let mut out = String::new();
    for d in docs {
        out.push_str("---\n");
        out.push_str(&d.text);
    }
    out
}

/// A string as a YAML scalar: plain when it cannot be read as anything but that string,
/// else double-quoted (JSON escaping).
pub fn scalar(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
        && s.as_bytes()[0].is_ascii_alphabetic()
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "y" | "n" | "yes" | "no" | "on" | "off" | "true" | "false" | "null"
        );
    if plain {
        s.to_string()
    } else {
        serde_json::Value::from(s).to_string()
    }
}

pub(super) fn header(out: &mut String, name: &str, ns: &str) {
    let _ = write!(
        out,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {}\n  \
         namespace: {}\n  labels:\n    {}: {}\n",
        scalar(name),
        scalar(ns),
        scalar(MANAGED_BY.0),
        scalar(MANAGED_BY.1)
    );
}

fn default_deny(ns: &str) -> String {
    let mut out =
        format!("# Namespace {ns}: nothing in or out unless an advised policy allows it.\n");
    header(&mut out, DEFAULT_DENY, ns);
    out.push_str("spec:\n  podSelector: {}\n  policyTypes:\n  - Ingress\n  - Egress\n");
    out
}

/// `matchLabels` at `indent` spaces (`{}` for no label: every pod).
pub(super) fn selector(out: &mut String, key: &str, labels: &Labels, indent: usize) {
    let pad = " ".repeat(indent);
    if labels.is_empty() {
        let _ = writeln!(out, "{pad}{key}: {{}}");
        return;
    }
    let _ = writeln!(out, "{pad}{key}:\n{pad}  matchLabels:");
    for (k, v) in labels {
        let _ = writeln!(out, "{pad}    {}: {}", scalar(k), scalar(v));
    }
}

pub(super) fn policy(p: &WorkloadPolicy) -> String {
    let mut out = format!(
        "# {}/{}/{}: the traffic it was seen to accept and to open.\n",
        p.namespace, p.kind, p.workload
    );
    header(&mut out, &p.name, &p.namespace);
    out.push_str("spec:\n");
    selector(&mut out, "podSelector", &p.selector, 2);
    out.push_str("  policyTypes:\n");
    if !p.ingress.is_empty() {
        out.push_str("  - Ingress\n");
    }
    if !p.egress.is_empty() {
        out.push_str("  - Egress\n");
    }
    for (key, peers_key, rules) in [("ingress", "from", &p.ingress), ("egress", "to", &p.egress)] {
        if rules.is_empty() {
            continue;
        }
        let _ = writeln!(out, "  {key}:");
        for r in rules {
            rule(&mut out, peers_key, r);
        }
    }
    out
}

fn rule(out: &mut String, peers_key: &str, r: &Rule) {
    covers(out, r);
    let _ = writeln!(out, "  - {peers_key}:");
    for peer in &r.peers {
        match peer {
            Peer::Pods { namespace, labels } => {
                // The first key of a sequence item carries the dash.
                if let Some(ns) = namespace {
                    let ns_labels: Labels =
                        [("kubernetes.io/metadata.name".to_string(), ns.clone())].into();
                    let mut nested = String::new();
                    selector(&mut nested, "namespaceSelector", &ns_labels, 6);
                    selector(&mut nested, "podSelector", labels, 6);
                    out.push_str("    - ");
                    out.push_str(&nested[6..]);
                } else {
                    let mut nested = String::new();
                    selector(&mut nested, "podSelector", labels, 6);
                    out.push_str("    - ");
                    out.push_str(&nested[6..]);
                }
            }
            Peer::Block { net, prefix } => {
                // Digits, dots, colons and a slash: never read as a number or a key.
                let _ = writeln!(
                    out,
                    "    - ipBlock:\n        cidr: {}",
                    Peer::cidr(*net, *prefix)
                );
            }
        }
    }
    let _ = writeln!(out, "    ports:");
    for (protocol, port) in &r.ports {
        let _ = writeln!(out, "    - protocol: {protocol}\n      port: {port}");
    }
}

/// The comment above a rule: the observed edges it covers.
pub(super) fn covers(out: &mut String, r: &Rule) {
    for line in r.covers.iter().take(MAX_COVERS) {
        let _ = writeln!(out, "  # {line}");
    }
    if r.covers.len() > MAX_COVERS {
        let _ = writeln!(out, "  # ... and {} more", r.covers.len() - MAX_COVERS);
    }
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
                    selector: labels(&[("app", "api"), ("version", "1")]),
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
                        ],
                    }],
                    egress: vec![Rule {
                        peers: vec![Peer::Pods {
                            namespace: Some("kube-system".into()),
                            labels: labels(&[("k8s-app", "kube-dns")]),
                        }],
                        ports: vec![(Protocol::Tcp, 53), (Protocol::Udp, 53)],
                        covers: vec!["a".into(), "b".into()],
                    }],
                }],
            },
        );
        a
    }

    #[test]
    fn strings_that_yaml_would_read_otherwise_are_quoted() {
        assert_eq!(scalar("web"), "web");
        assert_eq!(
            scalar("kubernetes.io/metadata.name"),
            "kubernetes.io/metadata.name"
        );
        for (s, quoted) in [
            ("1", "\"1\""),
            ("true", "\"true\""),
            ("No", "\"No\""),
            ("", "\"\""),
            ("a: b", "\"a: b\""),
            ("-x", "\"-x\""),
            ("1.0", "\"1.0\""),
        ] {
            assert_eq!(scalar(s), quoted);
        }
    }

    #[test]
    fn the_yaml_reads_back_as_the_policies_with_a_comment_per_rule() {
        let docs = documents(&advice());
        assert_eq!(docs.len(), 2);
        let text = stream(&docs);
        assert_eq!(text, stream(&documents(&advice())), "deterministic");
        assert!(text.contains(
            "  # shop/deployment/web -> shop/deployment/api 9090/TCP: 3 connections\n  - from:\n"
        ));
        let (inventory, errors) = crate::inventory::snapshot::parse(&text, "advised").unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        let nps = &inventory.network_policies;
        assert_eq!(nps.len(), 2);
        let api = serde_json::to_value(&nps[1]).unwrap();
        assert_eq!(api["metadata"]["name"], "advised-deployment-api");
        assert_eq!(api["spec"]["podSelector"]["matchLabels"]["version"], "1");
        assert_eq!(
            api["spec"]["policyTypes"],
            serde_json::json!(["Ingress", "Egress"])
        );
        let from = &api["spec"]["ingress"][0]["from"];
        assert_eq!(from[0]["podSelector"]["matchLabels"]["app"], "web");
        assert_eq!(from[1]["ipBlock"]["cidr"], "203.0.113.0/24");
        let to = &api["spec"]["egress"][0]["to"][0];
        assert_eq!(
            to["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
            "kube-system"
        );
        assert_eq!(to["podSelector"]["matchLabels"]["k8s-app"], "kube-dns");
        assert_eq!(
            api["spec"]["egress"][0]["ports"],
            serde_json::json!([{"protocol": "TCP", "port": 53}, {"protocol": "UDP", "port": 53}])
        );
        let deny = serde_json::to_value(&nps[0]).unwrap();
        assert_eq!(deny["spec"]["podSelector"], serde_json::json!({}));
        assert_eq!(
            deny["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "flowwatch-advise"
        );
    }
}
