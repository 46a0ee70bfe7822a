//! Fuzz target `onnx_import`: see `smelt_tests::fuzz::onnx_import`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| smelt_tests::fuzz::onnx_import(data));
