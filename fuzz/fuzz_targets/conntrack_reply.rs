//! The conntrack netlink reply decoder: `flowwatch::fuzzing::conntrack_reply`.
//! The harness is in the library so that `tests/fuzz_corpus.rs` runs the seeds through it on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = flowwatch::fuzzing::conntrack_reply(data);
});
