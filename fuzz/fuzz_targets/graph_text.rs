//! Fuzz target `graph_text`: see `smelt_tests::fuzz::graph_text`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| smelt_tests::fuzz::graph_text(data));
