//! Names and verdicts for flows: the enrichment index and the policy engine, rebuilt from each
//! new inventory, turned into what the flow log and the metrics need (pure: the caller passes
//! the inventory and the time).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::enrich::{self, EndpointIndex, EnrichOptions, OwnerIndex};
use crate::inventory::index::ClusterIndex;
use crate::inventory::{Inventory, ObjectError};
use crate::metrics;
use crate::model::{Flow, Nanos};
use crate::policy::{FlowVerdict, PolicyEngine, PolicyOptions, SideVerdict, Verdict};

/// What the agent knows about one flow beyond its addresses.
#[derive(Clone, Debug)]
pub struct Classification {
    pub src: enrich::Endpoint,
    pub dst: enrich::Endpoint,
    /// `None`: not judged (a Service destination whose backend is unknown, see `classify`).
    pub verdict: Option<FlowVerdict>,
    pub edge: metrics::FlowEdge,
}

/// The current enrichment index and policy engine.
pub struct Classifier {
    index: EndpointIndex,
    engine: Option<Arc<PolicyEngine>>,
    policy_options: PolicyOptions,
    /// Generation of the inventory the engine was built from (0: none yet).
    pub generation: u64,
}

impl Classifier {
    pub fn new(enrich: EnrichOptions, policy_options: PolicyOptions) -> Classifier {
        Classifier {
            index: EndpointIndex::new(enrich),
            engine: None,
            policy_options,
            generation: 0,
        }
    }

    /// Takes a new inventory: compiles its cluster index once, updates the IP index from it
    /// (keeping its history) and rebuilds the policy engine over it (an immutable engine with
    /// an empty cache: no stale verdict survives a change). Returns the objects the index,
    /// the Services or the policies had to skip (or partly skip), each object and field once:
    /// each is read by one of them only.
    pub fn update(
        &mut self,
        inventory: &Inventory,
        owners: &OwnerIndex,
        generation: u64,
        now: Nanos,
    ) -> Vec<ObjectError> {
        let mut skipped = Vec::new();
        let cluster = Arc::new(ClusterIndex::build(inventory, owners, &mut skipped));
        let services = self.index.update_from(&cluster, &inventory.services, now);
        skipped.extend(services.errors);
        let (engine, policies) = PolicyEngine::with_index(cluster, inventory, self.policy_options);
        skipped.extend(policies);
        self.engine = Some(Arc::new(engine));
        self.generation = generation;
        skipped
    }

    /// The CNI-specific policy objects of the current inventory, by kind (empty before the
    /// first view).
    pub fn cni_policy_counts(&self) -> std::collections::BTreeMap<String, usize> {
        self.engine
            .as_ref()
            .map(|e| e.cni_policy_counts().clone())
            .unwrap_or_default()
    }

    /// The rules of the current inventory's valid policies, as verdicts name them, for the
    /// rule-usage series (see `Metrics::retain_rules`).
    pub fn rule_keys(&self) -> Vec<crate::metrics::rules::RuleKey> {
        self.engine
            .as_ref()
            .map(|e| e.rule_keys())
            .unwrap_or_default()
    }

    /// Whether a cluster view has arrived (before it nothing can be classified).
    pub fn engine_ready(&self) -> bool {
        self.engine.is_some()
    }

    /// Whether `addr` is a Service address (ClusterIP, external or load-balancer IP).
    pub fn is_service(&self, addr: SocketAddr, flow: &Flow) -> bool {
        matches!(
            self.index.resolve(addr, flow.key.protocol, flow.first_seen),
            enrich::Endpoint::Service { .. }
        )
    }

    /// Names both ends as they were when the flow started and evaluates the policies; `None`
    /// until a cluster view arrived. Returns the evaluation time too.
    ///
    /// `translated_dst` is where the node's NAT sent a connection to a Service address (for
    /// kube-proxy's DNAT: the backend pod's address and port); the destination is then the
    /// Service with that backend, and the policies are evaluated against the backend, as a
    /// CNI enforces them after the translation. Without it, a connection to a Service address
    /// is not judged: policies select the backend pods and name their target ports, so the
    /// Service address and port would make any egress-isolated client look denied.
    pub fn classify(
        &self,
        flow: &Flow,
        translated_dst: Option<SocketAddr>,
    ) -> Option<(Classification, Duration)> {
        let engine = self.engine.as_ref()?;
        let key = &flow.key;
        let at = flow.first_seen;
        let src = self.index.resolve(key.src, key.protocol, at);
        let dst = match translated_dst {
            Some(_) => self
                .index
                .resolve_service(key.dst, translated_dst, key.protocol, at),
            None => self.index.resolve(key.dst, key.protocol, at),
        };
        let evaluated_dst = translated_dst.unwrap_or(key.dst);
        let backend_unknown =
            translated_dst.is_none() && matches!(dst, enrich::Endpoint::Service { .. });
        let started = Instant::now();
        let verdict = (!backend_unknown).then(|| {
            engine.evaluate_ips(
                key.src.ip(),
                evaluated_dst.ip(),
                evaluated_dst.port(),
                key.protocol,
            )
        });
        let took = started.elapsed();
        let (overall_verdict, egress, ingress) = match &verdict {
            Some(v) => (
                v.verdict.into(),
                v.egress.verdict.into(),
                v.ingress.verdict.into(),
            ),
            None => (
                metrics::Verdict::Unknown,
                metrics::Verdict::Unknown,
                metrics::Verdict::Unknown,
            ),
        };
        let tier = verdict
            .as_ref()
            .map_or(metrics::TierLabel::None, deciding_tier);
        let cni = verdict
            .as_ref()
            .is_some_and(|v| v.egress.cni_policy_present || v.ingress.cni_policy_present);
        let edge = metrics::FlowEdge {
            src: edge_end(&src),
            dst: edge_end(&dst),
            dst_port: evaluated_dst.port(),
            protocol: key.protocol,
            verdict: overall_verdict,
            egress,
            ingress,
            tier,
            cni_policy_present: if cni {
                metrics::CniPresence::Yes
            } else {
                metrics::CniPresence::No
            },
        };
        Some((
            Classification {
                src,
                dst,
                verdict,
                edge,
            },
            took,
        ))
    }
}

/// The tier that decided the overall verdict (see [`metrics::TierLabel`]): the tier of the
/// side whose verdict is the overall one, egress first.
fn deciding_tier(v: &FlowVerdict) -> metrics::TierLabel {
    let want = match v.verdict {
        Verdict::Denied => SideVerdict::Denied,
        Verdict::Allowed => SideVerdict::Allowed,
        Verdict::Uncovered => return metrics::TierLabel::None,
    };
    let side = [&v.egress, &v.ingress]
        .into_iter()
        .find(|s| s.verdict == want);
    side.map_or(metrics::TierLabel::None, |s| s.tier.into())
}

/// One end of a metrics edge: the workload, never the pod or its address.
fn edge_end(e: &enrich::Endpoint) -> metrics::EdgeEnd {
    match e {
        enrich::Endpoint::Pod(p) => metrics::EdgeEnd::workload(
            p.namespace.as_str(),
            p.workload_name.as_str(),
            p.workload_kind.into(),
        ),
        enrich::Endpoint::HostNetworkPod(_) | enrich::Endpoint::Node { .. } => {
            metrics::EdgeEnd::node()
        }
        enrich::Endpoint::Service {
            backend: Some(backend),
            ..
        } => edge_end(backend),
        enrich::Endpoint::Service { backend: None, .. } => metrics::EdgeEnd::unknown(),
        enrich::Endpoint::External { .. } => metrics::EdgeEnd::external(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FlowKey, Protocol};

    const SNAPSHOT: &str = include_str!("../../deploy/demo/snapshot.yaml");

    fn classifier() -> Classifier {
        let (inventory, errors) = crate::inventory::snapshot::parse(SNAPSHOT, "demo").unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        let mut c = Classifier::new(EnrichOptions::default(), PolicyOptions::default());
        assert!(c
            .update(&inventory, &OwnerIndex::default(), 1, 0)
            .is_empty());
        c
    }

    fn flow(src: &str, dst: &str) -> Flow {
        Flow::new(
            FlowKey {
                src: src.parse().unwrap(),
                dst: dst.parse().unwrap(),
                protocol: Protocol::Tcp,
            },
            5,
        )
    }

    #[test]
    fn objects_the_index_or_the_engine_cannot_use_are_reported_once_each() {
        let broken = SNAPSHOT.to_owned()
            + r"
---
apiVersion: v1
kind: Pod
metadata: {namespace: shop, name: odd, labels: {app: odd}}
spec: {nodeName: demo-node, containers: [{name: c}]}
status: {podIP: 10.213.0.099}
---
apiVersion: v1
kind: Service
metadata: {namespace: shop, name: odd}
spec: {clusterIP: 10.96.0.999, ports: [{port: 80}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: shop, name: broken}
spec:
  podSelector: {}
  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/99}}]}]
";
        let (inventory, errors) = crate::inventory::snapshot::parse(&broken, "demo").unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        let mut c = Classifier::new(EnrichOptions::default(), PolicyOptions::default());
        let skipped = c.update(&inventory, &OwnerIndex::default(), 1, 0);
        let named: Vec<String> = skipped.iter().map(|e| e.object.clone()).collect();
        assert_eq!(
            named,
            vec![
                "Pod shop/odd",
                "Service shop/odd",
                "NetworkPolicy shop/broken"
            ],
            "{skipped:?}"
        );
        // the rest works
        let (web_to_db, _) = c
            .classify(&flow("10.213.0.10:40000", "10.213.0.30:5432"), None)
            .unwrap();
        assert_eq!(web_to_db.edge.verdict, metrics::Verdict::Denied);
    }

    /// Two pods listing one address (a hand-over, a stale status), in either order and with
    /// either one being deleted: the record's name and its verdict describe the same pod.
    #[test]
    fn names_and_verdicts_describe_the_same_pod_when_two_list_one_address() {
        let twin = |name: &str, deleting: bool| {
            let deletion = if deleting {
                ", deletionTimestamp: '2026-01-01T00:00:00Z'"
            } else {
                ""
            };
            format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{namespace: shop, name: {name}, \
                 labels: {{app: {name}}}{deletion}}}\nspec: {{nodeName: demo-node, containers: \
                 [{{name: c}}]}}\nstatus: {{podIP: 10.213.0.77}}\n"
            )
        };
        // Only twin-b's ingress is governed: allowed from anywhere.
        let policy = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
            metadata: {namespace: shop, name: twin-b-open}\n\
            spec: {podSelector: {matchLabels: {app: twin-b}}, ingress: [{}]}\n";
        for (first, second) in [("twin-a", "twin-b"), ("twin-b", "twin-a")] {
            for deleting in [None, Some(first), Some(second)] {
                let snapshot = format!(
                    "{SNAPSHOT}{}{}{policy}",
                    twin(first, deleting == Some(first)),
                    twin(second, deleting == Some(second)),
                );
                let (inventory, _) = crate::inventory::snapshot::parse(&snapshot, "t").unwrap();
                let mut c = Classifier::new(EnrichOptions::default(), PolicyOptions::default());
                c.update(&inventory, &OwnerIndex::default(), 1, 0);
                let (class, _) = c
                    .classify(&flow("10.213.0.10:40000", "10.213.0.77:80"), None)
                    .unwrap();
                let enrich::Endpoint::Pod(named) = &class.dst else {
                    panic!("not a pod: {:?}", class.dst);
                };
                let ingress = class.verdict.as_ref().unwrap().ingress.verdict;
                let judged_b = ingress == SideVerdict::Allowed;
                assert_eq!(
                    named.name == "twin-b",
                    judged_b,
                    "{first} then {second}, deleting {deleting:?}: named {}, ingress {ingress:?}",
                    named.name
                );
                let expected = match deleting {
                    Some(d) if d == first => second,
                    Some(_) => first,
                    None => second, // the later in inventory order
                };
                assert_eq!(named.name, expected);
            }
        }
    }

    #[test]
    fn nothing_is_classified_before_an_inventory_arrives() {
        let c = Classifier::new(EnrichOptions::default(), PolicyOptions::default());
        assert!(c
            .classify(&flow("10.213.0.10:40000", "10.213.0.20:8080"), None)
            .is_none());
    }

    #[test]
    fn edges_name_workloads_and_carry_both_sides_verdicts() {
        let c = classifier();
        let (web_to_db, _) = c
            .classify(&flow("10.213.0.10:40000", "10.213.0.30:5432"), None)
            .unwrap();
        assert_eq!(
            web_to_db.edge.src,
            metrics::EdgeEnd::workload("shop", "web", metrics::WorkloadKind::Deployment)
        );
        assert_eq!(
            web_to_db.edge.dst,
            metrics::EdgeEnd::workload("data", "postgres", metrics::WorkloadKind::StatefulSet)
        );
        assert_eq!(web_to_db.edge.verdict, metrics::Verdict::Denied);
        assert_eq!(web_to_db.edge.ingress, metrics::Verdict::Denied);
        assert_eq!(web_to_db.edge.egress, metrics::Verdict::Uncovered);

        let (api_to_db, _) = c
            .classify(&flow("10.213.0.20:40000", "10.213.0.30:5432"), None)
            .unwrap();
        assert_eq!(api_to_db.edge.verdict, metrics::Verdict::Allowed);
        assert_eq!(
            api_to_db.verdict.as_ref().unwrap().ingress.policies(),
            vec!["data/postgres-ingress"]
        );

        // per direction: the job's own namespace allows its egress, postgres's ingress denies
        let (report_to_db, _) = c
            .classify(&flow("10.213.0.40:40000", "10.213.0.30:5432"), None)
            .unwrap();
        assert_eq!(report_to_db.edge.egress, metrics::Verdict::Allowed);
        assert_eq!(report_to_db.edge.ingress, metrics::Verdict::Denied);
        assert_eq!(report_to_db.edge.verdict, metrics::Verdict::Denied);
        assert_eq!(
            report_to_db.verdict.as_ref().unwrap().egress.policies(),
            vec!["jobs/report-egress"]
        );

        let (to_outside, _) = c
            .classify(&flow("10.213.0.10:40000", "198.51.100.7:443"), None)
            .unwrap();
        assert_eq!(to_outside.edge.dst, metrics::EdgeEnd::external());
        assert_eq!(to_outside.edge.ingress, metrics::Verdict::NotApplicable);
        assert_eq!(to_outside.edge.verdict, metrics::Verdict::Uncovered);
    }

    #[test]
    fn a_service_connection_whose_backend_is_unknown_is_not_judged() {
        // jobs/report is egress-isolated in the demo (its policy names pods): judged against
        // the Service address, its connection would look denied, and count as drift.
        let c = classifier();
        let judged_by_address = c.engine.as_ref().unwrap().evaluate_ips(
            "10.213.0.40".parse().unwrap(),
            "10.96.0.20".parse().unwrap(),
            80,
            Protocol::Tcp,
        );
        assert_eq!(judged_by_address.verdict, Verdict::Denied, "the trap");
        let (to_service, _) = c
            .classify(&flow("10.213.0.40:40000", "10.96.0.20:80"), None)
            .unwrap();
        assert!(matches!(to_service.dst, enrich::Endpoint::Service { .. }));
        assert!(to_service.verdict.is_none());
        assert_eq!(to_service.edge.verdict, metrics::Verdict::Unknown);
        assert_eq!(to_service.edge.egress, metrics::Verdict::Unknown);
        // With the backend known, judged against it.
        let (to_backend, _) = c
            .classify(
                &flow("10.213.0.40:40000", "10.96.0.20:80"),
                Some("10.213.0.20:8080".parse().unwrap()),
            )
            .unwrap();
        assert!(to_backend.verdict.is_some());
        assert_ne!(to_backend.edge.verdict, metrics::Verdict::Unknown);
    }

    #[test]
    fn pods_of_other_controllers_are_pods_not_the_overflow_bucket() {
        // An Argo Rollout's pod: a controller flowwatch does not know.
        let rollout = SNAPSHOT.to_owned()
            + r"
---
apiVersion: v1
kind: Pod
metadata:
  namespace: jobs
  name: canary-6f7d8-abcde
  labels: {app: canary}
  ownerReferences: [{apiVersion: argoproj.io/v1alpha1, kind: Rollout, name: canary, uid: u-1, controller: true}]
spec: {nodeName: demo-node, containers: [{name: c}]}
status: {podIP: 10.213.0.50}
";
        let (inventory, errors) = crate::inventory::snapshot::parse(&rollout, "demo").unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        let mut c = Classifier::new(EnrichOptions::default(), PolicyOptions::default());
        assert!(c
            .update(&inventory, &OwnerIndex::default(), 1, 0)
            .is_empty());
        let (to_api, _) = c
            .classify(&flow("10.213.0.50:40000", "10.213.0.20:8080"), None)
            .unwrap();
        assert_eq!(to_api.edge.src.workload.as_str(), "Rollout/canary");
        assert_eq!(to_api.edge.verdict, metrics::Verdict::Uncovered);

        // Its own kind value, not `other` (the overflow bucket), and counted as a pod: the
        // uncovered edge across namespaces is in scope for the alerts.
        let (m, registry) = metrics::Metrics::new(&metrics::MetricsConfig::default()).unwrap();
        m.record_flow(
            &to_api.edge,
            Some(crate::model::Outcome::Established),
            &crate::model::Counters::default(),
            5,
        );
        let text = metrics::encode_prometheus_text(&registry).unwrap();
        let uncovered = text
            .lines()
            .find(|l| l.starts_with("flowwatch_uncovered_connections_total{"))
            .unwrap_or_else(|| panic!("no uncovered series: {text}"));
        assert!(uncovered.contains("src_kind=\"custom\""), "{uncovered}");
        assert!(
            uncovered.contains("scope=\"cross_namespace\""),
            "{uncovered}"
        );
    }
}
