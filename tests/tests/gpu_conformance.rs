//! The ONNX node cases and suite models on the GPU target, checked against
//! `tests/conformance/<runtime>.tsv`. In CI the runtime is the emulated device (the GPU
//! kernels compiled for this CPU, run through the GPU executor); on a machine with a GPU
//! and Rust, `SMELT_GPU_RUNTIME=cuda` runs it there (the lent GPU machines, without Rust,
//! run the same cases through the GPU session's check program instead, docs/gpu.md). `SMELT_UPDATE_EXPECTATIONS=1`
//! rewrites the runtime's expectations file from the run instead of checking it.
#![cfg(feature = "cuda")]

use smelt_tests::conformance::{
    Runtime, check_against_expectations, counts, expectations_path, load_expectations, run_all,
    write_expectations,
};

#[test]
fn gpu_cases_match_expectations() {
    let name = std::env::var("SMELT_GPU_RUNTIME").unwrap_or_else(|_| "gpu-emulator".into());
    let runtime = Runtime::parse(&name)
        .filter(|r| matches!(r, Runtime::GpuEmulator | Runtime::Cuda))
        .unwrap_or_else(|| panic!("SMELT_GPU_RUNTIME={name}: expected gpu-emulator or cuda"));
    let data_dir = smelt_tests::require_data("");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let results = run_all(&data_dir, runtime, threads).expect("manifest readable");
    if std::env::var_os("SMELT_UPDATE_EXPECTATIONS").is_some() {
        let (node, node_pass, suite, suite_pass) = counts(&results);
        println!(
            "{}: {node_pass} of {node} node cases pass, {suite_pass} of {suite} suite models",
            runtime.name()
        );
        let path = expectations_path(runtime);
        let keep = if path.exists() {
            load_expectations(&path).expect("expectations readable")
        } else {
            Default::default()
        };
        write_expectations(&path, runtime, &results, &keep).expect("expectations written");
        println!("wrote {}", path.display());
        return;
    }
    check_against_expectations(runtime, &results).unwrap_or_else(|e| panic!("{e}"));
}
