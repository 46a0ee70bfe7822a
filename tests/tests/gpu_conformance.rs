//! The ONNX node cases and suite models on the GPU target, checked against
//! `tests/conformance/<runtime>.tsv`. In CI the runtime is the emulated device (the GPU
//! kernels compiled for this CPU, run through the GPU executor); `cargo xtask gpu-check`
//! runs it with `SMELT_GPU_RUNTIME=cuda` on a real GPU. `SMELT_UPDATE_EXPECTATIONS=1`
//! rewrites the runtime's expectations file from the run instead of checking it.
#![cfg(feature = "cuda")]

use smelt_tests::conformance::{
    Runtime, check, counts, expectations_path, load_expectations, run_all, write_expectations,
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
    let (node, node_pass, suite, suite_pass) = counts(&results);
    println!(
        "{}: {node_pass} of {node} node cases pass, {suite_pass} of {suite} suite models",
        runtime.name()
    );
    let path = expectations_path(runtime);
    let expected = if path.exists() {
        load_expectations(&path).expect("expectations readable")
    } else {
        Default::default()
    };
    if std::env::var_os("SMELT_UPDATE_EXPECTATIONS").is_some() {
        write_expectations(&path, runtime, &results, &expected).expect("expectations written");
        println!("wrote {}", path.display());
        return;
    }
    let d = check(&results, &expected);
    for n in &d.unexpected_passes {
        println!("  passes but not marked pass: {n}");
    }
    let regressions: Vec<String> = d
        .regressions
        .iter()
        .map(|(n, e)| format!("  {n}: {e}"))
        .collect();
    assert!(
        regressions.is_empty(),
        "{} cases marked pass now fail on {}:\n{}",
        regressions.len(),
        runtime.name(),
        regressions.join("\n")
    );
    assert!(
        d.stale.is_empty(),
        "expectations list cases the data lacks: {:?}",
        d.stale
    );
    assert!(
        d.unexpected_passes.is_empty(),
        "{} cases pass but are not marked pass; rerun with SMELT_UPDATE_EXPECTATIONS=1",
        d.unexpected_passes.len()
    );
}
