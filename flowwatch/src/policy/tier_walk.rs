//! The rule walk of a cluster tier, behind the engine's cache: per (direction, identity, port,
//! protocol), the rules of the policies selecting the identity whose ports can admit that port,
//! in evaluation order (policy order, then written order). A flow then tests peers in that
//! order and the first rule that matches decides.

use std::sync::Arc;

use super::compile::Direction;
use super::engine::{End, PolicyEngine};
use super::explain::PortOutcome;
use super::ports::NamedPort;
use super::tier_index::TierPolicyId;
use super::tiered::{TierPeer, TierPort, TierRule};
use super::verdict::DecidedBy;
use crate::inventory::index::AddressOwner;
use crate::model::Protocol;

/// A rule that may decide flows of one cached key (12 bytes: the cache holds many).
#[derive(Clone, Copy, Debug)]
pub(crate) struct WalkRule {
    pub policy: TierPolicyId,
    /// Index in the policy's rules of the direction.
    pub rule: u32,
    /// Egress only: the port is admitted only through named ports of the destination pod.
    pub named_only: bool,
}

/// Every walk computed so far, stored flat.
#[derive(Debug, Default)]
pub(crate) struct Walks {
    entries: Vec<(u32, u32)>,
    rules: Vec<WalkRule>,
}

impl Walks {
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    pub fn rules_of(&self, entry: u32) -> &[WalkRule] {
        let (start, len) = self.entries[entry as usize];
        &self.rules[start as usize..(start + len) as usize]
    }

    /// Stores the walk of `policies` (in order) for one port; returns the new entry.
    pub fn add(
        &mut self,
        engine: &PolicyEngine,
        policies: &[TierPolicyId],
        dir: Direction,
        port: u16,
        protocol: Protocol,
        subject_ports: &[NamedPort],
    ) -> u32 {
        let start = self.rules.len() as u32;
        for &pid in policies {
            let policy = &engine.tiers.policies[pid as usize];
            for (i, rule) in policy.rules(dir).iter().enumerate() {
                let Some(named_only) = admits(rule, dir, port, protocol, subject_ports) else {
                    continue;
                };
                self.rules.push(WalkRule {
                    policy: pid,
                    rule: i as u32,
                    named_only,
                });
            }
        }
        self.entries.push((start, self.rules.len() as u32 - start));
        (self.entries.len() - 1) as u32
    }
}

/// Can `rule` match this port? `Some(false)`: yes; `Some(true)`: only if the destination pod
/// (known at flow time, egress) has a matching named port; `None`: no.
pub(crate) fn admits(
    rule: &TierRule,
    dir: Direction,
    port: u16,
    protocol: Protocol,
    subject_ports: &[NamedPort],
) -> Option<bool> {
    if rule.deny_all || rule.ports.is_empty() {
        return Some(false);
    }
    let mut named = false;
    for p in &rule.ports {
        match p {
            TierPort::Any(pr) if *pr == protocol => return Some(false),
            TierPort::Range(pr, lo, hi) if *pr == protocol && (*lo..=*hi).contains(&port) => {
                return Some(false)
            }
            TierPort::Named(n) => match dir {
                Direction::Ingress if named_port_matches(n, port, protocol, subject_ports) => {
                    return Some(false)
                }
                Direction::Ingress => {}
                Direction::Egress => named = true,
            },
            _ => {}
        }
    }
    named.then_some(true)
}

/// A named port resolves on the destination pod: a container port with that name, the flow's
/// port number and the flow's protocol (the container port's own protocol).
pub(crate) fn named_port_matches(
    name: &str,
    port: u16,
    protocol: Protocol,
    dst_ports: &[NamedPort],
) -> bool {
    dst_ports
        .iter()
        .any(|p| p.port == port && p.protocol == protocol && *p.name == *name)
}

/// Which port entry of a rule matches (`AnyPort`: the rule has no ports).
pub(crate) fn rule_port(
    rule: &TierRule,
    port: u16,
    protocol: Protocol,
    dst_ports: &[NamedPort],
) -> PortOutcome {
    if rule.ports.is_empty() {
        return PortOutcome::AnyPort;
    }
    rule.ports
        .iter()
        .position(|p| match p {
            TierPort::Any(pr) => *pr == protocol,
            TierPort::Range(pr, lo, hi) => *pr == protocol && (*lo..=*hi).contains(&port),
            TierPort::Named(n) => named_port_matches(n, port, protocol, dst_ports),
        })
        .map_or(PortOutcome::NoMatch, PortOutcome::Matched)
}

impl PolicyEngine {
    /// The `decided_by` of a walk rule (built once per rule when the engine is built).
    #[inline]
    pub(crate) fn walk_decided(&self, dir: Direction, w: &WalkRule) -> &Arc<DecidedBy> {
        let per_dir = &self.tiers.decided[w.policy as usize];
        let list = match dir {
            Direction::Ingress => &per_dir.0,
            Direction::Egress => &per_dir.1,
        };
        &list[w.rule as usize]
    }

    /// The first rule of a walk that matches the flow's peer (and, for named-only rules, the
    /// destination's named ports).
    pub(crate) fn first_match<'w>(
        &self,
        walk: &'w [WalkRule],
        dir: Direction,
        peer: End,
        port: u16,
        protocol: Protocol,
        dst_ports: &[NamedPort],
    ) -> Option<&'w WalkRule> {
        walk.iter().find(|w| {
            let rule = &self.tiers.policies[w.policy as usize].rules(dir)[w.rule as usize];
            (rule.deny_all || rule.peers.iter().any(|p| self.tier_peer_matches(p, peer)))
                && (!w.named_only
                    || rule.ports.iter().any(|p| {
                        matches!(p, TierPort::Named(n) if named_port_matches(n, port, protocol, dst_ports))
                    }))
        })
    }

    /// Does the flow's other end match one peer of a cluster policy rule?
    pub(crate) fn tier_peer_matches(&self, peer: &TierPeer, end: End) -> bool {
        match peer {
            // Only pods with their own network; a host-network pod is its node.
            TierPeer::Pods { id, .. } => match end.ep {
                AddressOwner::Pod(p) => {
                    self.tiers.pod_sets[*id as usize].contains(self.pod_identity[p as usize])
                }
                _ => false,
            },
            TierPeer::Nodes { id, .. } => {
                let set = &self.tiers.node_sets[*id as usize];
                match end.ep {
                    AddressOwner::Node(_) | AddressOwner::HostPod(_) => self
                        .cluster
                        .node_of(end.ep)
                        .is_some_and(|n| set.contains(n)),
                    AddressOwner::External => end
                        .ip
                        .and_then(|ip| self.tiers.external_node_ips.get(&ip))
                        .is_some_and(|n| set.contains(*n)),
                    AddressOwner::Pod(_) => false,
                }
            }
            TierPeer::Networks(nets) => end
                .ip
                .is_some_and(|ip| nets.iter().any(|n| n.contains(&ip))),
            TierPeer::DomainNames(_) | TierPeer::Unknown => false,
        }
    }
}
