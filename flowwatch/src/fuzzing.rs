//! The harnesses of the fuzz targets in `fuzz/`: one function per parser of
//! outside data, fed any bytes. They live in the library, not in the fuzz crate, so that the
//! same code runs under libFuzzer (`cargo xtask fuzz`, nightly-only instrumentation) and on the
//! stable toolchain, where `tests/fuzz_corpus.rs` passes every seed and every past crash of
//! `fuzz/corpus/<target>/` through it in each `cargo test`.
//!
//! A harness panics only when the parser breaks a promise (a panic of its own, or an answer
//! that contradicts its documented bounds); errors for bad input are the expected outcome.

use std::net::SocketAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::inventory::{label_rules, limits, snapshot, Inventory};
use crate::model::{KernelDataError, Observation, Protocol};
use crate::policy::{Labels, Peer, PolicyEngine, PolicyOptions, Selector};

/// A harness: the fixture cluster (used by the policy targets) and the fuzzed bytes.
pub type Harness = fn(&Fixture, &[u8]);

/// Every target: its name (a `[[bin]]` of fuzz/Cargo.toml and a folder of fuzz/corpus) and its
/// harness.
pub const TARGETS: [(&str, Harness); 6] = [
    ("snapshot", |_, data| snapshot_text(data)),
    ("flow_lines", flow_lines),
    ("label_selector", |_, data| label_selector(data)),
    ("policy_spec", policy_spec),
    ("kernel_event", |_, data| {
        let _ = kernel_event(data);
    }),
    ("conntrack_reply", |_, data| {
        let _ = conntrack_reply(data);
    }),
];

/// The cluster the policy targets evaluate against (the test fixture
/// `tests/fixtures/policy/cluster.yaml`, passed in by the caller), built once.
pub struct Fixture {
    inventory: Inventory,
    engine: PolicyEngine,
}

impl Fixture {
    /// Loads the fixture cluster; panics if it does not load (it is ours, not fuzzed input).
    pub fn new(cluster_yaml: &str) -> Fixture {
        let (inventory, errors) =
            snapshot::parse(cluster_yaml, "cluster.yaml").expect("the fixture cluster loads");
        assert!(
            errors.is_empty(),
            "the fixture cluster has bad objects: {errors:?}"
        );
        let (engine, _) = PolicyEngine::build(&inventory, PolicyOptions::default());
        Fixture { inventory, engine }
    }
}

/// The snapshot loader (`kubectl get -o yaml|json` text, any bytes that are UTF-8): never
/// panics, and the linear bounds pass never refuses what it then lets the loader see.
pub fn snapshot_text(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = limits::bound(text);
    let _ = snapshot::parse(text, "fuzz.yaml");
}

/// `policy eval --flows` input: any bytes as flow lines against the fixture cluster. Every
/// line gets an answer or the run a clean error.
pub fn flow_lines(fixture: &Fixture, data: &[u8]) {
    let _ = crate::policy_cli::eval_flows(&fixture.engine, data, std::io::sink());
}

/// Label selectors (JSON `LabelSelector`): compiling and matching never panic; label keys and
/// values (and any other string) are checked without panicking.
pub fn label_selector(data: &[u8]) {
    let Ok(selector) = serde_json::from_slice::<LabelSelector>(data) else {
        if let Ok(s) = std::str::from_utf8(data) {
            let _ = label_rules::check_key(s);
            let _ = label_rules::check_value(s);
        }
        return;
    };
    for (k, v) in selector.match_labels.iter().flatten() {
        let _ = label_rules::check_key(k);
        let _ = label_rules::check_value(v);
    }
    if let Ok(compiled) = Selector::compile(&selector) {
        let labels: Labels = selector.match_labels.clone().unwrap_or_default();
        let _ = compiled.matches(&labels);
        let _ = compiled.matches(&Labels::new());
    }
}

/// NetworkPolicy specs: the objects of a fuzzed snapshot text (policies, pods, namespaces)
/// added to the fixture cluster; building the engine under both options and evaluating flows
/// between its pods and two addresses never panics.
pub fn policy_spec(fixture: &Fixture, data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok((fuzzed, _)) = snapshot::parse(text, "policy.yaml") else {
        return;
    };
    let mut inventory = fixture.inventory.clone();
    inventory.network_policies.extend(fuzzed.network_policies);
    inventory.cluster_policies.extend(fuzzed.cluster_policies);
    inventory.pods.extend(fuzzed.pods);
    inventory.namespaces.extend(fuzzed.namespaces);
    // Some of the fixture's pods and the fuzzed ones, by name, and two addresses.
    let fixture_pods = fixture.inventory.pods.len();
    let pods = inventory.pods.iter().take(4);
    let peers: Vec<Peer> = pods
        .chain(inventory.pods.iter().skip(fixture_pods).take(4))
        .filter_map(|p| {
            let ns = p.metadata.namespace.as_deref()?;
            let name = p.metadata.name.as_deref()?;
            format!("{ns}/{name}").parse().ok()
        })
        .chain(
            ["10.0.0.1".parse().ok(), "192.168.7.7".parse().ok()]
                .into_iter()
                .flatten(),
        )
        .collect();
    for options in [
        PolicyOptions::default(),
        PolicyOptions {
            ipblock_matches_pod_ips: false,
            cni_policies_relevant: false,
        },
    ] {
        let (engine, _) = PolicyEngine::build(&inventory, options);
        for src in &peers {
            for dst in &peers {
                for (port, proto) in [
                    (80, Protocol::Tcp),
                    (53, Protocol::Udp),
                    (0, Protocol::Sctp),
                ] {
                    let _ = engine.evaluate(src, dst, port, proto);
                }
            }
        }
        let _ = engine.coverage();
    }
}

/// The eBPF ring-buffer record decoder: any bytes give an observation or an error.
pub fn kernel_event(data: &[u8]) -> Result<Observation, KernelDataError> {
    crate::datapath::decode_event(data)
}

/// The conntrack netlink reply decoder: any bytes give an address or none.
pub fn conntrack_reply(data: &[u8]) -> Option<SocketAddr> {
    crate::datapath::conntrack::decode_reply(data)
}
