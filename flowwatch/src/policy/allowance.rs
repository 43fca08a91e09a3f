//! What one pod identity allows on one port, per direction: the rules of the policies that
//! select it whose port entries admit (port, protocol), each with a precomputed peer test.
//! It is computed once per (direction, identity, port, protocol) and cached, so a flow costs a
//! lookup and a few bit tests, whatever the number of policies in the cluster.

use std::sync::Arc;

use super::compile::{CompiledPolicy, Direction, PeerMatcher};
use super::ipblock::IpBlockMatcher;
use super::ports::{NamedPort, PortSpec};
use super::verdict::{Action, DecidedBy, PolicyKind, RuleId, RuleRef};
use crate::model::Protocol;

/// A fixed-size set of small integers (pod identities).
#[derive(Clone, Debug, Default)]
pub struct BitSet(Vec<u64>);

impl BitSet {
    pub fn with_capacity(n: usize) -> BitSet {
        BitSet(vec![0; n.div_ceil(64)])
    }

    pub fn insert(&mut self, i: u32) {
        if let Some(word) = self.0.get_mut(i as usize / 64) {
            *word |= 1 << (i % 64);
        }
    }

    #[inline]
    pub fn contains(&self, i: u32) -> bool {
        self.0
            .get(i as usize / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
}

/// One peer of a rule, ready to test.
#[derive(Clone, Debug)]
pub enum PeerTest {
    /// Pods whose identity is in the engine's set with this id.
    Pods(u32),
    Block(IpBlockMatcher),
}

/// A rule whose port entries may admit the flow's port.
#[derive(Clone, Debug)]
pub struct AllowRule {
    /// This rule's peer tests in [`Allowances::peers`]: `start..start + len` (empty: every peer).
    pub peers_start: u32,
    pub peers_len: u32,
    /// Egress only: the rule admits the port only through these named ports, which must be
    /// resolved on the destination pod at flow time. `None`: admitted regardless.
    pub named_ports: Option<Box<[Arc<str>]>>,
    /// `[this rule]`, shared by every flow this rule alone allows.
    pub single: Arc<[RuleRef]>,
    /// This rule as the side's `decided_by` (when it is the first allowing rule).
    pub decided: Arc<DecidedBy>,
}

impl AllowRule {
    /// Does a destination with `dst_ports` resolve one of the rule's names to this port?
    #[inline]
    pub fn port_ok(&self, port: u16, protocol: Protocol, dst_ports: &[NamedPort]) -> bool {
        match &self.named_ports {
            None => true,
            Some(names) => dst_ports.iter().any(|p| {
                p.port == port && p.protocol == protocol && names.iter().any(|n| **n == *p.name)
            }),
        }
    }
}

/// Every allowance computed so far, stored flat (rules and peer tests contiguous) so that
/// evaluating one touches a few adjacent cache lines.
#[derive(Debug, Default)]
pub struct Allowances {
    /// Per allowance: its rules in `rules`, `start..start + len`.
    pub entries: Vec<(u32, u32)>,
    pub rules: Vec<AllowRule>,
    pub peers: Vec<PeerTest>,
}

impl Allowances {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn rules_of(&self, entry: u32) -> &[AllowRule] {
        let (start, len) = self.entries[entry as usize];
        &self.rules[start as usize..(start + len) as usize]
    }

    pub fn peers_of(&self, rule: &AllowRule) -> &[PeerTest] {
        let start = rule.peers_start as usize;
        &self.peers[start..start + rule.peers_len as usize]
    }

    /// Compiles and stores what `policies` (those selecting an identity, for `dir`) allow on
    /// `port`/`protocol`; returns the new entry. `subject_ports` are the identity's named ports
    /// (where an ingress named port resolves).
    pub fn add<'a>(
        &mut self,
        policies: impl Iterator<Item = &'a CompiledPolicy>,
        dir: Direction,
        port: u16,
        protocol: Protocol,
        subject_ports: &[NamedPort],
    ) -> u32 {
        let rules_start = self.rules.len() as u32;
        for policy in policies {
            for (index, rule) in policy.rules(dir).unwrap_or_default().iter().enumerate() {
                let mut admitted = rule.ports.is_empty();
                let mut names = Vec::new();
                for m in rule.ports.iter().filter(|m| m.protocol == protocol) {
                    match &m.spec {
                        PortSpec::Any => admitted = true,
                        PortSpec::Range(lo, hi) => admitted |= (*lo..=*hi).contains(&port),
                        PortSpec::Named(name) => match dir {
                            Direction::Ingress => {
                                admitted |= m.matches(port, protocol, subject_ports);
                            }
                            Direction::Egress => names.push(name.clone()),
                        },
                    }
                }
                if !admitted && names.is_empty() {
                    continue;
                }
                let peers_start = self.peers.len() as u32;
                self.peers.extend(rule.peers.iter().map(|p| match p {
                    PeerMatcher::Pods { id, .. } => PeerTest::Pods(*id),
                    PeerMatcher::Block(b) => PeerTest::Block(b.clone()),
                }));
                self.rules.push(AllowRule {
                    peers_start,
                    peers_len: rule.peers.len() as u32,
                    named_ports: (!admitted).then(|| names.into_boxed_slice()),
                    single: Arc::from(vec![RuleRef {
                        policy: policy.key.clone(),
                        rule: index,
                    }]),
                    decided: Arc::new(DecidedBy {
                        kind: PolicyKind::NetworkPolicy,
                        name: policy.key.clone(),
                        rule: Some(RuleId::Index(index)),
                        action: Action::Accept,
                    }),
                });
            }
        }
        self.entries
            .push((rules_start, self.rules.len() as u32 - rules_start));
        (self.entries.len() - 1) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitset_holds_what_was_inserted_and_ignores_out_of_range() {
        let mut s = BitSet::with_capacity(130);
        for i in [0, 63, 64, 129] {
            s.insert(i);
        }
        for i in 0..200 {
            assert_eq!(s.contains(i), [0, 63, 64, 129].contains(&i), "{i}");
        }
        s.insert(10_000); // beyond capacity: no panic, no effect
        assert!(!s.contains(10_000));
        assert!(!BitSet::default().contains(0));
    }
}
