//! The conntrack netlink reply decoder: any bytes give an address or none.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = flowwatch::datapath::fuzzing::decode_conntrack_reply(data);
});
