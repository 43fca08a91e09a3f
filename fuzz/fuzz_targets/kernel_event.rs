//! The eBPF ring-buffer record decoder: any bytes give an observation or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = flowwatch::datapath::fuzzing::decode_event(data);
});
