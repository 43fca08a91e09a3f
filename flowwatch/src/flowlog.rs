//! The machine-readable flow log: one JSON object per finished flow, one per line (pure:
//! records are built from values; the agent decides where the lines go).
//!
//! A record, oriented from the initiator (`src`) to the responder (`dst`); every field is
//! described in docs/configuration.md ("The flow log") and, machine-readably, in the JSON Schema
//! docs/flow-record.schema.json (tests validate real records against it). A test keeps this
//! example's fields those of a real record:
//!
//! ```json
//! {"schema_version":1,"start":"2026-11-25T01:09:33.465Z","end":"2026-11-25T01:09:33.467Z","protocol":"TCP",
//!  "src":{"ip":"10.213.0.10","port":48504,"kind":"pod","namespace":"shop","name":"web-5d8c7f9b4-x2x7q",
//!         "workload_kind":"Deployment","workload_name":"web","node":"demo-node"},
//!  "dst":{"ip":"10.213.0.30","port":5432,"kind":"pod","namespace":"data","name":"postgres-0",
//!         "workload_kind":"StatefulSet","workload_name":"postgres","node":"demo-node"},
//!  "outcome":"established","end_reason":"closed","observed_at":["client","server"],
//!  "fwd":{"packets":6,"bytes":322},"rev":{"packets":4,"bytes":221},"node":"demo-node",
//!  "verdict":"denied",
//!  "ingress":{"verdict":"denied","policies":[],"rules":[],"reason":"no_rule_matched","tier":"networkpolicy",
//!             "decided_by":{"kind":"NetworkPolicy","name":"data/default-deny","rule":null,"action":"Deny"}},
//!  "egress":{"verdict":"uncovered","policies":[],"rules":[],"reason":"not_selected","tier":"none"}}
//! ```
//!
//! `fwd` counts initiator->responder, `rev` the answer; bytes are IP-layer bytes. Enrichment and
//! verdict fields appear when the agent has an inventory.
//!
//! `schema_version` ([`SCHEMA_VERSION`]) changes when a field is removed, renamed or changes
//! meaning; new optional fields keep it. Where the lines go (stdout, or a file rotated by size
//! and reopened after logrotate) is [`writer`].

pub mod writer;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::aggregate::{EndReason, FinishedFlow};
use crate::classify::Classification;
use crate::model::{Nanos, Outcome, Protocol};

/// Converts kernel monotonic timestamps to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    /// Unix-epoch nanoseconds minus monotonic nanoseconds, measured at start.
    offset: i128,
}

impl WallClock {
    pub fn new(unix_now: SystemTime, monotonic_now: Nanos) -> WallClock {
        let unix = unix_now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        WallClock {
            offset: unix - i128::from(monotonic_now),
        }
    }

    /// Monotonic `at` as Unix seconds.
    pub fn unix_secs(self, at: Nanos) -> f64 {
        (i128::from(at) + self.offset) as f64 / 1e9
    }

    pub fn to_rfc3339(self, at: Nanos) -> String {
        let unix = (i128::from(at) + self.offset).max(0) as u128;
        let t = UNIX_EPOCH + Duration::from_nanos(unix.min(u128::from(u64::MAX)) as u64);
        humantime::format_rfc3339_millis(t).to_string()
    }
}

/// One end of a flow in the log.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct EndpointRecord {
    pub ip: std::net::IpAddr,
    pub port: u16,
    /// Enrichment (namespace, pod, workload, ...), merged into this object.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub identity: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
}

/// The version of the record's schema (docs/flow-record.schema.json), in every record.
pub const SCHEMA_VERSION: u32 = 1;

/// One line of the flow log.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FlowRecord {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    pub start: String,
    pub end: String,
    pub protocol: Protocol,
    pub src: EndpointRecord,
    pub dst: EndpointRecord,
    pub outcome: Outcome,
    pub end_reason: EndReason,
    /// Where this node saw the connection's sockets: `client`, `server`, both, or neither
    /// (seen on the wire only).
    pub observed_at: Vec<&'static str>,
    pub fwd: Traffic,
    pub rev: Traffic,
    /// The node whose agent saw the flow (`--node-name`), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Policy verdict fields (`verdict`, `ingress`, `egress`), merged into the record.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub policy: Option<serde_json::Map<String, serde_json::Value>>,
}

impl FlowRecord {
    pub fn new(finished: &FinishedFlow, clock: WallClock) -> FlowRecord {
        let f = &finished.flow;
        let mut observed_at = Vec::new();
        if f.seen_at_client {
            observed_at.push("client");
        }
        if f.seen_at_server {
            observed_at.push("server");
        }
        FlowRecord {
            schema_version: SCHEMA_VERSION,
            start: clock.to_rfc3339(f.first_seen),
            end: clock.to_rfc3339(f.last_seen),
            protocol: f.key.protocol,
            src: EndpointRecord {
                ip: f.key.src.ip(),
                port: f.key.src.port(),
                identity: None,
            },
            dst: EndpointRecord {
                ip: f.key.dst.ip(),
                port: f.key.dst.port(),
                identity: None,
            },
            outcome: f.outcome,
            end_reason: finished.reason,
            observed_at,
            fwd: Traffic {
                packets: f.counters.fwd_packets,
                bytes: f.counters.fwd_bytes,
            },
            rev: Traffic {
                packets: f.counters.rev_packets,
                bytes: f.counters.rev_bytes,
            },
            node: None,
            policy: None,
        }
    }

    /// Adds both ends' identities and the policy verdict, in the offline CLI's shape
    /// (`verdict`, and `ingress`/`egress` with `verdict`, `policies`, `rules`, `reason`).
    pub fn classified(mut self, class: &Classification) -> FlowRecord {
        self.src.identity = as_object(&class.src);
        self.dst.identity = as_object(&class.dst);
        let Some(v) = &class.verdict else {
            // Not judged (a Service whose backend is unknown): say so rather than guess.
            let mut policy = serde_json::Map::new();
            policy.insert("verdict".into(), "unknown".into());
            self.policy = Some(policy);
            return self;
        };
        let mut policy = serde_json::Map::new();
        policy.insert("verdict".into(), v.verdict.as_str().into());
        policy.insert("ingress".into(), v.ingress.to_json());
        policy.insert("egress".into(), v.egress.to_json());
        self.policy = Some(policy);
        self
    }

    /// The record as one JSON line (without the newline).
    pub fn to_json_line(&self) -> String {
        // Serializing plain data with string keys cannot fail; fall back to an error object
        // rather than panic if that ever changes.
        serde_json::to_string(self)
            .unwrap_or_else(|e| format!("{{\"error\":\"flow record not serializable: {e}\"}}"))
    }
}

fn as_object(v: &impl Serialize) -> Option<serde_json::Map<String, serde_json::Value>> {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::Object(m)) => Some(m),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Counters, Flow, FlowKey};

    #[test]
    fn record_has_the_documented_shape() {
        let key = FlowKey {
            src: "10.0.0.1:40000".parse().unwrap(),
            dst: "[fd00::2]:80".parse().unwrap(),
            protocol: Protocol::Tcp,
        };
        let mut flow = Flow::new(key, 1_000_000_000);
        flow.last_seen = 3_500_000_000;
        flow.outcome = Outcome::Established;
        flow.seen_at_client = true;
        flow.counters = Counters {
            fwd_packets: 6,
            fwd_bytes: 412,
            rev_packets: 4,
            rev_bytes: 1480,
        };
        let clock = WallClock::new(
            UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            1_000_000_000,
        );
        let record = FlowRecord::new(
            &FinishedFlow {
                flow,
                reason: EndReason::Closed,
            },
            clock,
        );
        let line = record.to_json_line();
        assert!(line.starts_with("{\"schema_version\":1,"), "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["start"], "2023-11-14T22:13:20.000Z");
        assert_eq!(v["end"], "2023-11-14T22:13:22.500Z");
        assert_eq!(v["protocol"], "TCP");
        assert_eq!(v["src"]["ip"], "10.0.0.1");
        assert_eq!(v["src"]["port"], 40000);
        assert_eq!(v["dst"]["ip"], "fd00::2");
        assert_eq!(v["outcome"], "established");
        assert_eq!(v["end_reason"], "closed");
        assert_eq!(v["observed_at"], serde_json::json!(["client"]));
        assert_eq!(v["fwd"], serde_json::json!({"packets": 6, "bytes": 412}));
        assert_eq!(v["rev"], serde_json::json!({"packets": 4, "bytes": 1480}));
        assert!(v.get("verdict").is_none());
    }

    #[test]
    fn a_service_end_keeps_its_numeric_port_beside_the_port_name() {
        let key = FlowKey {
            src: "10.0.0.1:40000".parse().unwrap(),
            dst: "10.96.0.10:80".parse().unwrap(),
            protocol: Protocol::Tcp,
        };
        let clock = WallClock::new(UNIX_EPOCH, 0);
        let mut record = FlowRecord::new(
            &FinishedFlow {
                flow: Flow::new(key, 0),
                reason: EndReason::Closed,
            },
            clock,
        );
        record.dst.identity = as_object(&crate::enrich::Endpoint::Service {
            namespace: "shop".into(),
            name: "web".into(),
            port: Some("http".into()),
            backend: None,
        });
        let line = record.to_json_line();
        assert_eq!(line.matches("\"port\":").count(), 2, "one per end: {line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["dst"]["port"], 80);
        assert_eq!(v["dst"]["port_name"], "http");
        assert_eq!(v["dst"]["kind"], "service");
    }

    #[test]
    fn an_unjudged_flow_says_unknown_and_nothing_more() {
        let (metrics_edge_src, metrics_edge_dst) = (
            crate::metrics::EdgeEnd::external(),
            crate::metrics::EdgeEnd::external(),
        );
        let class = crate::classify::Classification {
            src: crate::enrich::Endpoint::External {
                class: crate::enrich::ExternalClass::Private,
                network: None,
            },
            dst: crate::enrich::Endpoint::Service {
                namespace: "shop".into(),
                name: "api".into(),
                port: None,
                backend: None,
            },
            verdict: None,
            edge: crate::metrics::FlowEdge {
                src: metrics_edge_src,
                dst: metrics_edge_dst,
                dst_port: 80,
                protocol: Protocol::Tcp,
                verdict: crate::metrics::Verdict::Unknown,
                egress: crate::metrics::Verdict::Unknown,
                ingress: crate::metrics::Verdict::Unknown,
                tier: crate::metrics::TierLabel::None,
                cni_policy_present: crate::metrics::CniPresence::No,
            },
        };
        let key = FlowKey {
            src: "10.0.0.1:40000".parse().unwrap(),
            dst: "10.96.0.20:80".parse().unwrap(),
            protocol: Protocol::Tcp,
        };
        let record = FlowRecord::new(
            &FinishedFlow {
                flow: Flow::new(key, 0),
                reason: EndReason::Closed,
            },
            WallClock::new(UNIX_EPOCH, 0),
        )
        .classified(&class);
        let v: serde_json::Value = serde_json::from_str(&record.to_json_line()).unwrap();
        assert_eq!(v["verdict"], "unknown");
        assert!(
            v.get("ingress").is_none() && v.get("egress").is_none(),
            "{v}"
        );
    }

    /// The keys of a JSON object and, one level down, of its object members (`src.kind`).
    fn shape(v: &serde_json::Value) -> std::collections::BTreeSet<String> {
        let mut keys = std::collections::BTreeSet::new();
        for (k, inner) in v.as_object().into_iter().flatten() {
            keys.insert(k.clone());
            for inner_key in inner.as_object().into_iter().flat_map(|o| o.keys()) {
                keys.insert(format!("{k}.{inner_key}"));
            }
        }
        keys
    }

    #[test]
    fn the_module_doc_example_has_the_fields_of_a_real_record() {
        let source = include_str!("flowlog.rs");
        let example: String = source
            .lines()
            .skip_while(|l| *l != "//! ```json")
            .skip(1)
            .take_while(|l| *l != "//! ```")
            .map(|l| l.trim_start_matches("//!"))
            .collect();
        let example: serde_json::Value = serde_json::from_str(&example)
            .unwrap_or_else(|e| panic!("the module doc example is not JSON: {e}\n{example}"));

        // web -> postgres in the demo cluster, as the agent on a node logs it.
        let (inventory, _) = crate::inventory::snapshot::parse(
            include_str!("../../deploy/demo/snapshot.yaml"),
            "demo",
        )
        .unwrap();
        let mut classifier = crate::classify::Classifier::new(
            crate::enrich::EnrichOptions::default(),
            crate::policy::PolicyOptions::default(),
        );
        classifier.update(&inventory, &crate::enrich::OwnerIndex::default(), 1, 0);
        let mut flow = Flow::new(
            FlowKey {
                src: "10.213.0.10:48504".parse().unwrap(),
                dst: "10.213.0.30:5432".parse().unwrap(),
                protocol: Protocol::Tcp,
            },
            1,
        );
        flow.outcome = Outcome::Established;
        let (class, _) = classifier.classify(&flow, None).unwrap();
        let finished = FinishedFlow {
            flow,
            reason: EndReason::Closed,
        };
        let mut record =
            FlowRecord::new(&finished, WallClock::new(UNIX_EPOCH, 0)).classified(&class);
        record.node = Some("node-a".into());
        let real: serde_json::Value = serde_json::from_str(&record.to_json_line()).unwrap();

        assert_eq!(shape(&example), shape(&real), "{real}");
    }
}
