//! NetworkPolicy specs added to the fixture cluster: `flowwatch::fuzzing::policy_spec`.
//! The harness is in the library so that `tests/fuzz_corpus.rs` runs the seeds through it on stable.
#![no_main]

use std::sync::OnceLock;

use flowwatch::fuzzing::{self, Fixture};
use libfuzzer_sys::fuzz_target;

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        Fixture::new(include_str!(
            "../../flowwatch/tests/fixtures/policy/cluster.yaml"
        ))
    })
}

fuzz_target!(|data: &[u8]| {
    fuzzing::policy_spec(fixture(), data);
});
