//! `policy advise --verify`: the advised policies judged by the policy engine, as a cluster
//! would enforce them, over the history they came from and over every workload pair.
//!
//! The advised set replaces the NetworkPolicies of the namespaces it covers (others, and
//! cluster-scoped policies, stay as they are). Two figures: the observed edges replayed
//! (every one must be allowed, so none would break), and the complete matrix of workload
//! pairs, protocols and port segments (see `diff::segment_starts`): every pair and port that
//! was not observed must be denied.

use std::collections::HashSet;

use super::super::diff::{segment_starts, workload_ends};
use super::super::whatif::{judge, States};
use crate::advise::{Advice, ClusterView};
use crate::inventory::{overlay, snapshot, Inventory};
use crate::model::Protocol;
use crate::policy::{PolicyOptions, Verdict};
use crate::whatif::{Change, Edges};

/// The most failures listed by name.
const LISTED: usize = 20;

/// What `--verify` found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verification {
    /// Observed edges replayed.
    pub edges: usize,
    /// Of which allowed by the advised set.
    pub edges_allowed: usize,
    /// Of which allowed or uncovered today and denied by the advised set.
    pub would_break: usize,
    /// The edges not allowed (the first few), `edge: verdict`.
    pub not_allowed: Vec<String>,
    /// Ordered pairs of different workloads checked (at least one end in an advised
    /// namespace).
    pub pairs: usize,
    /// Pairs with an observed edge.
    pub pairs_observed: usize,
    /// Pairs without one that are denied on every protocol and port.
    pub unobserved_denied: usize,
    /// Pair, protocol and port ranges allowed though not observed (count, and the first few).
    pub unobserved_allowed: usize,
    pub unobserved_allowed_list: Vec<String>,
}

impl Verification {
    pub fn passed(&self) -> bool {
        self.would_break == 0 && self.edges_allowed == self.edges && self.unobserved_allowed == 0
    }

    /// The two figures, one line each.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![
            format!(
                "verify history: {} observed edges replayed: {} allowed, {} would_break, {} not allowed",
                self.edges,
                self.edges_allowed,
                self.would_break,
                self.edges - self.edges_allowed
            ),
            format!(
                "verify matrix: {} workload pairs x TCP/UDP/SCTP x every port: {} observed pairs \
                 allowed only as observed, {} of {} unobserved pairs denied, {} unobserved \
                 pair-port ranges allowed",
                self.pairs,
                self.pairs_observed,
                self.unobserved_denied,
                self.pairs - self.pairs_observed,
                self.unobserved_allowed
            ),
        ];
        out.extend(
            self.not_allowed
                .iter()
                .map(|e| format!("  not allowed: {e}")),
        );
        out.extend(
            self.unobserved_allowed_list
                .iter()
                .map(|e| format!("  allowed, not observed: {e}")),
        );
        out.push(format!(
            "verify: {}",
            if self.passed() { "passed" } else { "FAILED" }
        ));
        out
    }
}

/// The current state with the advised policies in place of the NetworkPolicies of the
/// namespaces they cover. `advised_yaml` is what was written: it is read back as a cluster
/// would read it, so a rendering mistake fails here.
pub fn advised_state(
    current: &Inventory,
    advice: &Advice,
    advised_yaml: &str,
) -> Result<Inventory, String> {
    let (advised, errors) = snapshot::parse(advised_yaml, "the advised policies")
        .map_err(|e| format!("the advised YAML does not read back: {e}"))?;
    if let Some(e) = errors.first() {
        return Err(format!("an advised policy is invalid: {e}"));
    }
    let mut after = current.clone();
    after.network_policies.retain(|np| {
        np.metadata
            .namespace
            .as_ref()
            .is_none_or(|ns| !advice.namespaces.contains_key(ns))
    });
    overlay::overlay(&mut after, advised);
    Ok(after)
}

/// Judges the advised state (see the module's documentation).
pub fn verify(
    current: &Inventory,
    advice: &Advice,
    advised_yaml: &str,
    options: PolicyOptions,
) -> Result<Verification, String> {
    let after = advised_state(current, advice, advised_yaml)?;
    let (engine_b, resolver_b, _) = super::super::build(current, options);
    let (engine, resolver, errors) = super::super::build(&after, options);
    if let Some(e) = errors.iter().find(|e| e.object.contains("advised-")) {
        return Err(format!("the engine rejected an advised policy: {e}"));
    }
    let states = States {
        before: (engine_b, resolver_b),
        after: (engine, resolver),
    };
    let mut v = Verification::default();

    let replay = Edges {
        edges: advice.allowed_edges.clone(),
        ..Edges::default()
    };
    for j in judge(&states, &replay) {
        v.edges += 1;
        if j.change == Change::WouldBreak {
            v.would_break += 1;
        }
        match &j.after {
            Ok(e) if e.flow.verdict == Verdict::Allowed => v.edges_allowed += 1,
            other => {
                if v.not_allowed.len() < LISTED {
                    let verdict = match other {
                        Ok(e) => e.flow.verdict.to_string(),
                        Err(error) => error.clone(),
                    };
                    v.not_allowed.push(format!(
                        "{} -> {} {}/{}: {verdict}",
                        j.key.src, j.key.dst, j.key.port, j.key.protocol
                    ));
                }
            }
        }
    }

    let (engine, resolver) = &states.after;
    let expected: HashSet<(String, String, Protocol, u16)> = advice
        .allowed_pairs
        .iter()
        .map(|(s, d, p, port)| (s.to_string(), d.to_string(), *p, *port))
        .collect();
    let observed_pairs: HashSet<(String, String)> = expected
        .iter()
        .map(|(s, d, _, _)| (s.clone(), d.clone()))
        .collect();
    let advised = |label: &str| {
        label
            .split('/')
            .next()
            .is_some_and(|ns| advice.namespaces.contains_key(ns))
    };
    // One end per workload: the resolver also names each live pod by itself, and a pod
    // with its own workload would be one pod talking to itself.
    let workloads: HashSet<String> = ClusterView::of(&after)
        .workloads
        .keys()
        .map(std::string::ToString::to_string)
        .collect();
    let ends: Vec<_> = workload_ends(engine, resolver)
        .into_iter()
        .filter(|(label, _)| workloads.contains(label))
        .collect();
    let protocols = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];
    let starts: Vec<Vec<u16>> = protocols
        .iter()
        .map(|p| segment_starts(&[engine], *p))
        .collect();
    for (src_label, src) in &ends {
        for (dst_label, dst) in &ends {
            // A pod talking to itself is never blocked; and a workload's replicas to each
            // other are that same stand-in here.
            if src_label == dst_label || (!advised(src_label) && !advised(dst_label)) {
                continue;
            }
            v.pairs += 1;
            let observed = observed_pairs.contains(&(src_label.clone(), dst_label.clone()));
            if observed {
                v.pairs_observed += 1;
            }
            let mut any_allowed = false;
            for (protocol, starts) in protocols.iter().zip(&starts) {
                for (i, &start) in starts.iter().enumerate() {
                    let end = starts.get(i + 1).map_or(65535, |next| next - 1);
                    let Ok(verdict) = engine.evaluate(src, dst, start, *protocol) else {
                        continue;
                    };
                    if verdict.verdict == Verdict::Denied {
                        continue;
                    }
                    any_allowed = true;
                    let as_observed = start == end
                        && expected.contains(&(
                            src_label.clone(),
                            dst_label.clone(),
                            *protocol,
                            start,
                        ));
                    if !as_observed {
                        v.unobserved_allowed += 1;
                        if v.unobserved_allowed_list.len() < LISTED {
                            let ports = if start == end {
                                start.to_string()
                            } else {
                                format!("{start}-{end}")
                            };
                            v.unobserved_allowed_list.push(format!(
                                "{src_label} -> {dst_label} {ports}/{protocol}: {}",
                                verdict.verdict
                            ));
                        }
                    }
                }
            }
            if !observed && !any_allowed {
                v.unobserved_denied += 1;
            }
        }
    }
    Ok(v)
}
