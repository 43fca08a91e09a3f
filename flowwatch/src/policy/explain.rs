//! A structured explanation of a verdict: every policy that selects each side's pod, and for
//! each of its rules which peer and which port entry matched (or that none did).

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use super::cluster::Endpoint;
use super::compile::Direction;
use super::engine::{rule_port, End, PolicyEngine};
use super::verdict::{FlowVerdict, SideVerdict};
use super::{Peer, PolicyError};
use crate::model::Protocol;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "index")]
pub enum PeerOutcome {
    /// The rule lists no peers: every peer.
    AnyPeer,
    /// The peer at this index of `from`/`to` matched (the first one that does).
    Matched(usize),
    NoMatch,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "index")]
pub enum PortOutcome {
    /// The rule lists no ports: every port and protocol.
    AnyPort,
    /// The entry at this index of `ports` matched (the first one that does).
    Matched(usize),
    NoMatch,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleExplanation {
    pub index: usize,
    pub peer: PeerOutcome,
    pub port: PortOutcome,
}

impl RuleExplanation {
    pub fn allows(&self) -> bool {
        self.peer != PeerOutcome::NoMatch && self.port != PortOutcome::NoMatch
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PolicyExplanation {
    #[serde(serialize_with = "super::verdict::serialize_arc_str")]
    pub policy: Arc<str>,
    /// Every rule of the side's direction, in order (empty: the policy only isolates).
    pub rules: Vec<RuleExplanation>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SideExplanation {
    pub direction: Direction,
    /// The pod the side is evaluated on (`namespace/name`), when that end is a pod.
    pub pod: Option<String>,
    pub verdict: SideVerdict,
    pub reason: &'static str,
    /// The policies of this direction that select the pod.
    pub policies: Vec<PolicyExplanation>,
    /// Invalid policies of the pod's namespace that were skipped.
    pub skipped_policies: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// The ends as resolved, e.g. `pod x/a (10.0.0.1)` or `external 203.0.113.9`.
    pub src: String,
    pub dst: String,
    pub port: u16,
    pub protocol: Protocol,
    pub verdict: &'static str,
    pub egress: SideExplanation,
    pub ingress: SideExplanation,
    #[serde(skip)]
    pub flow: FlowVerdict,
}

impl serde::Serialize for Direction {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl PolicyEngine {
    /// Explains the verdict of a flow (same inputs and verdict as [`PolicyEngine::evaluate`]).
    pub fn explain(
        &self,
        src: &Peer,
        dst: &Peer,
        port: u16,
        protocol: Protocol,
    ) -> Result<Explanation, PolicyError> {
        let (s, d) = self.resolve_pair(src, dst)?;
        let flow = self.evaluate_ends(s, d, port, protocol);
        let egress = self.explain_side(Direction::Egress, s, d, port, protocol, &flow);
        let ingress = self.explain_side(Direction::Ingress, d, s, port, protocol, &flow);
        Ok(Explanation {
            src: self.describe(s),
            dst: self.describe(d),
            port,
            protocol,
            verdict: flow.verdict.as_str(),
            egress,
            ingress,
            flow,
        })
    }

    fn describe(&self, end: End) -> String {
        let ip = end.ip.map(|ip| format!(" ({ip})")).unwrap_or_default();
        match end.ep {
            Endpoint::Pod(p) => format!("pod {}{ip}", self.cluster.pod_label(p)),
            Endpoint::HostPod(p) => format!("host-network pod {}{ip}", self.cluster.pod_label(p)),
            Endpoint::Node(n) => format!("node {}{ip}", self.cluster.nodes[n as usize].name),
            Endpoint::External => match end.ip {
                Some(ip) => format!("external {ip}"),
                None => "external".into(),
            },
        }
    }

    fn explain_side(
        &self,
        dir: Direction,
        subject: End,
        peer: End,
        port: u16,
        protocol: Protocol,
        flow: &FlowVerdict,
    ) -> SideExplanation {
        let result = match dir {
            Direction::Ingress => &flow.ingress,
            Direction::Egress => &flow.egress,
        };
        let mut side = SideExplanation {
            direction: dir,
            pod: None,
            verdict: result.verdict,
            reason: result.reason.as_str(),
            policies: Vec::new(),
            skipped_policies: Vec::new(),
        };
        let Endpoint::Pod(pod) = subject.ep else {
            return side;
        };
        side.pod = Some(self.cluster.pod_label(pod));
        let ns_name = &self.cluster.namespaces[self.cluster.pod(pod).ns as usize].name;
        side.skipped_policies = self
            .skipped_policies_in(ns_name, dir)
            .map(str::to_string)
            .collect();
        let identity = &self.identities[self.pod_identity[pod as usize] as usize];
        let dst_ports = self.destination_ports(dir, pod, peer);
        for &pid in identity.selecting(dir) {
            let policy = &self.policies[pid as usize];
            let rules = policy
                .rules(dir)
                .unwrap_or_default()
                .iter()
                .enumerate()
                .map(|(index, rule)| RuleExplanation {
                    index,
                    peer: match self.rule_peer(pid, rule, peer) {
                        None => PeerOutcome::NoMatch,
                        Some(None) => PeerOutcome::AnyPeer,
                        Some(Some(i)) => PeerOutcome::Matched(i),
                    },
                    port: match rule_port(rule, port, protocol, dst_ports) {
                        None => PortOutcome::NoMatch,
                        Some(None) => PortOutcome::AnyPort,
                        Some(Some(i)) => PortOutcome::Matched(i),
                    },
                })
                .collect();
            side.policies.push(PolicyExplanation {
                policy: policy.key.clone(),
                rules,
            });
        }
        side
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} -> {} on {}/{}: {}",
            self.src, self.dst, self.port, self.protocol, self.verdict
        )?;
        write_side(f, &self.egress)?;
        write_side(f, &self.ingress)
    }
}

fn write_side(f: &mut fmt::Formatter<'_>, side: &SideExplanation) -> fmt::Result {
    let (dir, peers) = match side.direction {
        Direction::Egress => ("egress", "to"),
        Direction::Ingress => ("ingress", "from"),
    };
    let Some(pod) = &side.pod else {
        let what = match side.reason {
            "host_network" => "a host-network pod",
            "node" => "a node",
            _ => "not a pod",
        };
        return writeln!(
            f,
            "\n{dir}: {} (that end is {what}; policies do not apply)",
            side.verdict
        );
    };
    writeln!(f, "\n{dir} (on {pod}): {}", side.verdict)?;
    match side.reason {
        "not_selected" => writeln!(
            f,
            "  no NetworkPolicy with {dir} in its policyTypes selects {pod}: not isolated for {dir}"
        )?,
        "loopback" => writeln!(f, "  a pod's traffic to itself is always allowed")?,
        "own_node" => writeln!(
            f,
            "  traffic between a pod and its own node is always allowed"
        )?,
        _ => {}
    }
    for p in &side.policies {
        writeln!(f, "  policy {} selects {pod} for {dir}", p.policy)?;
        if p.rules.is_empty() {
            writeln!(f, "    no {dir} rules: allows nothing (isolation only)")?;
        }
        for r in &p.rules {
            let peer = match r.peer {
                PeerOutcome::AnyPeer => format!("no {peers} list (any peer)"),
                PeerOutcome::Matched(i) => format!("{peers}[{i}] matches"),
                PeerOutcome::NoMatch => format!("no {peers} peer matches"),
            };
            let port = match r.port {
                PortOutcome::AnyPort => "no ports list (any port)".to_string(),
                PortOutcome::Matched(i) => format!("ports[{i}] matches"),
                PortOutcome::NoMatch => "no ports entry matches".to_string(),
            };
            let outcome = if r.allows() {
                "ALLOWS"
            } else {
                "does not allow"
            };
            writeln!(
                f,
                "    rule {dir}[{}]: {peer}; {port} -> {outcome}",
                r.index
            )?;
        }
    }
    for s in &side.skipped_policies {
        writeln!(
            f,
            "  warning: policy {s} is invalid and was skipped; it may have selected {pod}"
        )?;
    }
    Ok(())
}
