//! The snapshot loader (`kubectl get -o yaml|json` text): `flowwatch::fuzzing::snapshot_text`.
//! The harness is in the library so that `tests/fuzz_corpus.rs` runs the seeds through it on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    flowwatch::fuzzing::snapshot_text(data);
});
