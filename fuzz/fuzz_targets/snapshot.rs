//! The snapshot loader (`kubectl get -o yaml|json` text): never panics, and its linear-time
//! bounds hold (what `bound` lets through parses without the parser's own depth error).
#![no_main]

use flowwatch::inventory::{limits, snapshot};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = limits::bound(text);
    let _ = snapshot::parse(text, "fuzz.yaml");
});
