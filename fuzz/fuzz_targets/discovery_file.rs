#![no_main]
//! Fuzz target: see `weft_proxy::fuzzing::discovery_file`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| weft_proxy::fuzzing::discovery_file(data));
