//! NetworkPolicy specs: a fuzzed policy (YAML or JSON text, through the snapshot loader) added
//! to the fixture cluster; building the engine and evaluating flows between its pods never
//! panics.
#![no_main]

use flowwatch::inventory::snapshot;
use flowwatch::model::Protocol;
use flowwatch::policy::{Peer, PolicyEngine, PolicyOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let cluster = include_str!("../../flowwatch/tests/fixtures/policy/cluster.yaml");
    let Ok((mut inventory, _)) = snapshot::parse(cluster, "cluster.yaml") else {
        return;
    };
    let Ok((fuzzed, _)) = snapshot::parse(text, "policy.yaml") else {
        return;
    };
    inventory.network_policies.extend(fuzzed.network_policies);
    inventory.pods.extend(fuzzed.pods);
    inventory.namespaces.extend(fuzzed.namespaces);
    for options in [
        PolicyOptions::default(),
        PolicyOptions {
            ipblock_matches_pod_ips: false,
        },
    ] {
        let (engine, _) = PolicyEngine::build(&inventory, options);
        let pods: Vec<Peer> = inventory
            .pods
            .iter()
            .take(6)
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
        for src in &pods {
            for dst in &pods {
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
});
