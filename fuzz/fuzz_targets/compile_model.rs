//! Fuzz target `compile_model`: see `smelt_tests::fuzz::compile_model`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| smelt_tests::fuzz::compile_model(data));
