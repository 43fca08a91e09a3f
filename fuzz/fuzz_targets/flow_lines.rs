//! `flowwatch policy eval` input: any bytes, as the flow lines of `--flows`, against the
//! fixture cluster. Never panics; every line gets an answer or the run a clean error.
#![no_main]

use std::sync::OnceLock;

use flowwatch::inventory::snapshot;
use flowwatch::policy::{PolicyEngine, PolicyOptions};
use flowwatch::policy_cli::eval_flows;
use libfuzzer_sys::fuzz_target;

fn engine() -> &'static PolicyEngine {
    static ENGINE: OnceLock<PolicyEngine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let text = include_str!("../../flowwatch/tests/fixtures/policy/cluster.yaml");
        let (inventory, _) = snapshot::parse(text, "cluster.yaml").expect("the fixture loads");
        PolicyEngine::build(&inventory, PolicyOptions::default()).0
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = eval_flows(engine(), data, std::io::sink());
});
