//! Rule usage (pure): per policy rule, the connections it allowed or denied, of which how many
//! it alone allowed, and when it last matched.
//!
//! The verdict the engine already returns names the rules (`SideResult::allowed_by` for the
//! NetworkPolicy tier, `decided_by` for the cluster tiers), so nothing is evaluated again: a
//! counted connection credits the rules its verdict names. One series per rule that matched,
//! bounded by the number of rules (never by traffic); a rule that never matched has none (0
//! is read as absent). A connection several NetworkPolicy rules allow credits each, and the
//! sole-match counter too when it was the only one of its side: a separate family rather than
//! a `sole` label, so `flowwatch_policy_rule_matches_total` alone answers "how much did this
//! rule match" without summing two series, and the sole count, which says whether removing the
//! rule would change anything, reads directly.
//!
//! Per connection: one map lookup per credited rule (keys share the verdict's `Arc<str>`),
//! then atomic adds; the series are created once per rule.

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::labels::{write_escaped, TierLabel};
use crate::model::FlowHashMap;
use crate::policy::{
    Action, Direction, FlowVerdict, PolicyKind, RuleId, SideResult, SideVerdict, Tier,
};

type F64Gauge = Gauge<f64, AtomicU64>;

/// The side a rule belongs to (`spec.ingress` or `spec.egress`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RuleDirection {
    Ingress,
    Egress,
}

impl RuleDirection {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleDirection::Ingress => "ingress",
            RuleDirection::Egress => "egress",
        }
    }
}

/// The labels of one rule's series: `tier`, `kind`, `namespace` (empty for a cluster-scoped
/// policy), `policy`, `direction`, `rule` (the index in its list for a NetworkPolicy; the
/// rule's name, else its index, for a cluster policy), `action` (`Accept`, `Deny`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RuleLabels {
    pub tier: Tier,
    pub kind: PolicyKind,
    /// `namespace/name` for a NetworkPolicy, the name for a cluster policy (as verdicts name
    /// policies; split when encoded).
    pub policy: Arc<str>,
    pub direction: RuleDirection,
    pub rule: RuleId,
    pub action: Action,
}

impl RuleLabels {
    /// The policy's namespace (empty for a cluster-scoped policy) and name.
    pub fn namespace_and_name(&self) -> (&str, &str) {
        match self.kind {
            PolicyKind::NetworkPolicy => self.policy.split_once('/').unwrap_or(("", &self.policy)),
            _ => ("", &self.policy),
        }
    }
}

/// A `&str` label value, escaped.
struct Text<'a>(&'a str);

impl EncodeLabelValue for Text<'_> {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        write_escaped(encoder, self.0)
    }
}

impl EncodeLabelSet for RuleLabels {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder,
    ) -> std::fmt::Result {
        use prometheus_client::encoding::EncodeLabel;
        let tier = match self.tier {
            Tier::Admin => TierLabel::Admin,
            Tier::NetworkPolicy => TierLabel::NetworkPolicy,
            Tier::Baseline => TierLabel::Baseline,
            Tier::None => TierLabel::None,
        };
        let (namespace, name) = self.namespace_and_name();
        let rule = rule_label(&self.rule);
        ("tier", tier).encode(encoder.encode_label())?;
        ("kind", Text(self.kind.as_str())).encode(encoder.encode_label())?;
        ("namespace", Text(namespace)).encode(encoder.encode_label())?;
        ("policy", Text(name)).encode(encoder.encode_label())?;
        ("direction", Text(self.direction.as_str())).encode(encoder.encode_label())?;
        ("rule", Text(&rule)).encode(encoder.encode_label())?;
        ("action", Text(self.action.as_str())).encode(encoder.encode_label())
    }
}

/// A rule as the engine lists them (`PolicyEngine::rule_keys`): kind, policy (as verdicts name
/// it), direction, rule, action, tier.
pub type RuleKey = (PolicyKind, Arc<str>, Direction, RuleId, Action, Tier);

/// The `rule` label of a rule: its name, else its index.
pub fn rule_label(rule: &RuleId) -> std::borrow::Cow<'_, str> {
    match rule {
        RuleId::Name(n) => std::borrow::Cow::Borrowed(&**n),
        RuleId::Index(i) => std::borrow::Cow::Owned(i.to_string()),
    }
}

impl RuleLabels {
    fn key(&self) -> RuleKey {
        let direction = match self.direction {
            RuleDirection::Ingress => Direction::Ingress,
            RuleDirection::Egress => Direction::Egress,
        };
        (
            self.kind,
            self.policy.clone(),
            direction,
            self.rule.clone(),
            self.action,
            self.tier,
        )
    }
}

/// One rule's three series (clones of the families' own: they update the same values).
#[derive(Clone)]
struct Series {
    matches: Counter,
    sole: Counter,
    last: F64Gauge,
}

#[derive(Default)]
struct State {
    series: FlowHashMap<RuleLabels, Series>,
    /// The rules of the current inventory (`None` before the first): a connection judged
    /// under an older inventory does not bring back the series of a rule deleted since.
    live: Option<HashSet<RuleKey>>,
}

/// `flowwatch_policy_rule_matches_total`, `flowwatch_policy_rule_sole_matches_total`,
/// `flowwatch_policy_rule_last_match_timestamp_seconds`.
#[derive(Default)]
pub struct RuleFamilies {
    matches: Family<RuleLabels, Counter>,
    sole: Family<RuleLabels, Counter>,
    last: Family<RuleLabels, F64Gauge>,
    state: Mutex<State>,
}

impl RuleFamilies {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "policy_rule_matches",
            "Connections each policy rule allowed or denied (counted as flowwatch_connections_total \
             counts them; a connection several rules allow credits each)",
            self.matches.clone(),
        );
        registry.register(
            "policy_rule_sole_matches",
            "Connections each policy rule was the only rule of its side to allow or deny",
            self.sole.clone(),
        );
        registry.register_with_unit(
            "policy_rule_last_match_timestamp",
            "Unix time of the last connection each policy rule matched",
            Unit::Seconds,
            self.last.clone(),
        );
    }

    fn state(&self) -> MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    /// Credits the rules a counted connection's verdict names, at `unix_secs`.
    pub fn record(&self, verdict: &FlowVerdict, unix_secs: f64) {
        let sides = [
            (RuleDirection::Egress, &verdict.egress),
            (RuleDirection::Ingress, &verdict.ingress),
        ];
        if sides.iter().all(|(_, s)| !credits_any(s)) {
            return;
        }
        let mut state = self.state();
        for (direction, side) in sides {
            if !credits_any(side) {
                continue;
            }
            if !side.allowed_by.is_empty() {
                let sole = side.allowed_by.len() == 1;
                for r in side.allowed_by.iter() {
                    let labels = RuleLabels {
                        tier: Tier::NetworkPolicy,
                        kind: PolicyKind::NetworkPolicy,
                        policy: r.policy.clone(),
                        direction,
                        rule: RuleId::Index(r.rule),
                        action: Action::Accept,
                    };
                    self.bump(&mut state, labels, sole, unix_secs);
                }
            } else if let Some(by) = &side.decided_by {
                // A cluster tier's first matching rule decides alone.
                if let Some(rule) = &by.rule {
                    let labels = RuleLabels {
                        tier: side.tier,
                        kind: by.kind,
                        policy: by.name.clone(),
                        direction,
                        rule: rule.clone(),
                        action: by.action,
                    };
                    self.bump(&mut state, labels, true, unix_secs);
                }
            }
        }
    }

    fn bump(&self, state: &mut State, labels: RuleLabels, sole: bool, unix_secs: f64) {
        let series = if let Some(s) = state.series.get(&labels) {
            s
        } else {
            let live = state
                .live
                .as_ref()
                .is_none_or(|l| l.contains(&labels.key()));
            if !live {
                return;
            }
            let s = Series {
                matches: self.matches.get_or_create_owned(&labels),
                sole: self.sole.get_or_create_owned(&labels),
                last: self.last.get_or_create_owned(&labels),
            };
            state.series.entry(labels).or_insert(s)
        };
        series.matches.inc();
        if sole {
            series.sole.inc();
        }
        series.last.set(unix_secs);
    }

    /// Keeps only the series of `rules`: those of a deleted policy, or of a rule removed or
    /// changed, leave the exposition. Called with each new inventory.
    pub fn retain(&self, rules: impl IntoIterator<Item = RuleKey>) {
        let live: HashSet<RuleKey> = rules.into_iter().collect();
        let mut state = self.state();
        state.series.retain(|labels, _| {
            let keep = live.contains(&labels.key());
            if !keep {
                self.matches.remove(labels);
                self.sole.remove(labels);
                self.last.remove(labels);
            }
            keep
        });
        state.live = Some(live);
    }

    /// Rules with a series now.
    pub fn len(&self) -> usize {
        self.state().series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether a side's verdict names a rule to credit.
fn credits_any(side: &SideResult) -> bool {
    matches!(side.verdict, SideVerdict::Allowed | SideVerdict::Denied)
        && (!side.allowed_by.is_empty()
            || side
                .decided_by
                .as_ref()
                .is_some_and(|b| b.rule.is_some() && b.kind != PolicyKind::NetworkPolicy))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::snapshot;
    use crate::metrics::{encode_prometheus_text, Metrics, MetricsConfig};
    use crate::model::Protocol;
    use crate::policy::{Peer, PolicyEngine, PolicyOptions};

    const CLUSTER: &str = "\
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: a, labels: {ns: a}}}
- {apiVersion: v1, kind: Namespace, metadata: {name: z, labels: {ns: z}}}
- {apiVersion: v1, kind: Pod, metadata: {namespace: a, name: client, labels: {app: client}}, spec: {containers: [{name: c}]}, status: {podIP: 10.0.0.1}}
- {apiVersion: v1, kind: Pod, metadata: {namespace: a, name: server, labels: {app: server}}, spec: {containers: [{name: c}]}, status: {podIP: 10.0.0.2}}
- {apiVersion: v1, kind: Pod, metadata: {namespace: z, name: intruder, labels: {app: x}}, spec: {containers: [{name: c}]}, status: {podIP: 10.0.0.3}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: a, name: p1}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: 80}]
  - ports: [{port: 80}, {port: 81}]
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: no-z}
spec:
  priority: 5
  subject: {namespaces: {matchLabels: {ns: a}}}
  ingress:
  - {name: deny-from-z, action: Deny, from: [{namespaces: {matchLabels: {ns: z}}}]}
";

    fn pod(ns: &str, name: &str) -> Peer {
        Peer::Pod {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    fn value(text: &str, family: &str, needles: &[&str]) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(family) && needles.iter().all(|n| l.contains(n)))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn every_named_rule_is_credited_once_per_connection_and_a_sole_one_is_marked() {
        let (inventory, errors) = snapshot::parse(CLUSTER, "t").unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        let (engine, errors) = PolicyEngine::build(&inventory, PolicyOptions::default());
        assert!(errors.is_empty(), "{errors:?}");
        let (metrics, registry) = Metrics::new(&MetricsConfig::default()).unwrap();
        let judge = |src: &str, port| {
            let (ns, name) = src.split_once('/').unwrap();
            engine
                .evaluate(&pod(ns, name), &pod("a", "server"), port, Protocol::Tcp)
                .unwrap()
        };
        // 3 on port 80 (both p1 rules), 2 on 81 (the second alone), 1 from z (ANP deny).
        for (src, port, n) in [
            ("a/client", 80, 3),
            ("a/client", 81, 2),
            ("z/intruder", 80, 1),
        ] {
            let v = judge(src, port);
            for _ in 0..n {
                metrics.record_rule_matches(&v, 1_700_000_000.5);
            }
        }
        let text = encode_prometheus_text(&registry).unwrap();
        let np = |rule: &'static str| {
            [
                "tier=\"networkpolicy\"",
                "kind=\"NetworkPolicy\"",
                "namespace=\"a\"",
                "policy=\"p1\"",
                "direction=\"ingress\"",
                "action=\"Accept\"",
            ]
            .into_iter()
            .chain([rule])
            .collect::<Vec<_>>()
        };
        let matches = "flowwatch_policy_rule_matches_total";
        let sole = "flowwatch_policy_rule_sole_matches_total";
        assert_eq!(
            value(&text, matches, &np("rule=\"0\"")),
            Some(3.0),
            "{text}"
        );
        assert_eq!(value(&text, sole, &np("rule=\"0\"")), Some(0.0), "{text}");
        assert_eq!(
            value(&text, matches, &np("rule=\"1\"")),
            Some(5.0),
            "{text}"
        );
        assert_eq!(value(&text, sole, &np("rule=\"1\"")), Some(2.0), "{text}");
        let anp = [
            "tier=\"admin\"",
            "kind=\"AdminNetworkPolicy\"",
            "namespace=\"\"",
            "policy=\"no-z\"",
            "rule=\"deny-from-z\"",
            "action=\"Deny\"",
        ];
        assert_eq!(value(&text, matches, &anp), Some(1.0), "{text}");
        assert_eq!(value(&text, sole, &anp), Some(1.0), "{text}");
        assert_eq!(
            value(
                &text,
                "flowwatch_policy_rule_last_match_timestamp_seconds",
                &anp
            ),
            Some(1_700_000_000.5),
            "{text}"
        );
        assert_eq!(metrics.rule_series(), 3);

        // A rule edited away (p1's first): its series go, the rest stay.
        let edited = engine
            .rule_keys()
            .into_iter()
            .filter(|k| !(k.0 == PolicyKind::NetworkPolicy && k.3 == RuleId::Index(0)));
        metrics.retain_rules(edited);
        let text = encode_prometheus_text(&registry).unwrap();
        assert_eq!(value(&text, matches, &np("rule=\"0\"")), None, "{text}");
        assert_eq!(
            value(&text, matches, &np("rule=\"1\"")),
            Some(5.0),
            "{text}"
        );
        assert_eq!(metrics.rule_series(), 2);

        // The policy deleted: its series go, and a connection judged before the change does
        // not bring them back; the remaining policy's stay.
        let old = judge("a/client", 80);
        let only_anp = engine
            .rule_keys()
            .into_iter()
            .filter(|k| k.0 == PolicyKind::AdminNetworkPolicy);
        metrics.retain_rules(only_anp);
        metrics.record_rule_matches(&old, 1_700_000_001.0);
        let text = encode_prometheus_text(&registry).unwrap();
        assert!(!text.contains("policy=\"p1\""), "{text}");
        assert_eq!(value(&text, matches, &anp), Some(1.0), "{text}");
        assert_eq!(metrics.rule_series(), 1);
    }

    #[test]
    fn verdicts_no_rule_made_credit_nothing() {
        let (inventory, _) = snapshot::parse(CLUSTER, "t").unwrap();
        let (engine, _) = PolicyEngine::build(&inventory, PolicyOptions::default());
        let (metrics, registry) = Metrics::new(&MetricsConfig::default()).unwrap();
        // Uncovered (server -> client egress and client ingress are governed by nothing), and a
        // NetworkPolicy denial (isolation: no rule denies it).
        for (src, dst, port) in [("server", "client", 80), ("client", "server", 9)] {
            let v = engine
                .evaluate(&pod("a", src), &pod("a", dst), port, Protocol::Tcp)
                .unwrap();
            metrics.record_rule_matches(&v, 1.0);
        }
        assert_eq!(metrics.rule_series(), 0);
        let text = encode_prometheus_text(&registry).unwrap();
        assert!(!text.contains("policy_rule_matches_total{"), "{text}");
    }
}
