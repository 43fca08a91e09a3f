//! Label selectors and label keys/values: `flowwatch::fuzzing::label_selector`.
//! The harness is in the library so that `tests/fuzz_corpus.rs` runs the seeds through it on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    flowwatch::fuzzing::label_selector(data);
});
