//! Runs the ONNX backend node cases on each runtime and checks them against the expectations file.

use smelt_tests::conformance::{Runtime, check_against_expectations, run_all};

#[test]
fn node_cases_match_expectations() {
    let data_dir = smelt_tests::require_data("");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    for runtime in Runtime::ALL {
        let results = run_all(&data_dir, runtime, threads).expect("manifest readable");
        check_against_expectations(runtime, &results).unwrap_or_else(|e| panic!("{e}"));
    }
}
