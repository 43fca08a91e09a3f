//! What one pod identity allows on one port, per direction: the rules of the policies that
//! select it whose port entries admit (port, protocol), each with a precomputed peer test.
//! It is computed once per (direction, identity, port, protocol) and cached, so a flow costs a
//! lookup and a few bit tests, whatever the number of policies in the cluster.

use std::sync::Arc;

use super::compile::{CompiledPolicy, Direction, PeerMatcher};
use super::ipblock::IpBlockMatcher;
use super::ports::{NamedPort, PortSpec};
use super::verdict::RuleRef;
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
    /// Empty: every peer.
    pub peers: Vec<PeerTest>,
    /// Egress only: the rule admits the port only through these named ports, which must be
    /// resolved on the destination pod at flow time. `None`: admitted regardless.
    pub named_ports: Option<Vec<Arc<str>>>,
    /// `[this rule]`, shared by every flow this rule alone allows.
    pub single: Arc<[RuleRef]>,
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

#[derive(Clone, Debug, Default)]
pub struct Allowance {
    pub rules: Vec<AllowRule>,
}

impl Allowance {
    /// Compiles what `policies` (those selecting an identity, for `dir`) allow on
    /// `port`/`protocol`. `subject_ports` are the identity's named ports (where an ingress named
    /// port resolves).
    pub fn compile<'a>(
        policies: impl Iterator<Item = &'a CompiledPolicy>,
        dir: Direction,
        port: u16,
        protocol: Protocol,
        subject_ports: &[NamedPort],
    ) -> Allowance {
        let mut rules = Vec::new();
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
                                admitted |= m.matches(port, protocol, subject_ports)
                            }
                            Direction::Egress => names.push(name.clone()),
                        },
                    }
                }
                if !admitted && names.is_empty() {
                    continue;
                }
                let peers = rule
                    .peers
                    .iter()
                    .map(|p| match p {
                        PeerMatcher::Pods { id, .. } => PeerTest::Pods(*id),
                        PeerMatcher::Block(b) => PeerTest::Block(b.clone()),
                    })
                    .collect();
                rules.push(AllowRule {
                    peers,
                    named_ports: (!admitted).then_some(names),
                    single: Arc::from(vec![RuleRef {
                        policy: policy.key.clone(),
                        rule: index,
                    }]),
                });
            }
        }
        Allowance { rules }
    }
}
