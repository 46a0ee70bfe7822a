//! Runs the ONNX backend node cases on each runtime and checks them against the expectations file.

use smelt_tests::conformance::{Runtime, check, expectations_path, load_expectations, run_all};

#[test]
fn node_cases_match_expectations() {
    let data_dir = smelt_tests::require_data("");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    for runtime in Runtime::ALL {
        let results = run_all(&data_dir, runtime, threads).expect("manifest readable");
        let expected =
            load_expectations(&expectations_path(runtime)).expect("expectations readable");
        let d = check(&results, &expected);
        let (node, node_pass, suite, suite_pass) = smelt_tests::conformance::counts(&results);
        println!(
            "{}: {node_pass} of {node} node cases pass, {suite_pass} of {suite} suite models",
            runtime.name()
        );
        if !d.unexpected_passes.is_empty() {
            println!(
                "{} cases pass but are not marked pass (run `cargo xtask conformance --update`):",
                d.unexpected_passes.len()
            );
            for n in &d.unexpected_passes {
                println!("  {n}");
            }
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
    }
}
