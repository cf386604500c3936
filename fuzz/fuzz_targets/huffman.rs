#![no_main]
//! Fuzz target: see `weft_splice::fuzzing::huffman`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| weft_splice::fuzzing::huffman(data));
