#![no_main]
//! Fuzz target: see `weft_proxy::fuzzing::detect`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| weft_proxy::fuzzing::detect(data));
