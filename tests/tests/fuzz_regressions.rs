//! Replays the fuzz targets' saved inputs (`tests/fuzz-regressions/<target>/`, every crash a
//! fuzzing run found, kept once fixed) and the hostile corpus through the targets'
//! bodies (`smelt_tests::fuzz`): none may panic.

use smelt_tests::fuzz::{
    TARGETS, compile_model, graph_text, onnx_import, run_target, saved_inputs,
};

#[test]
fn saved_fuzz_inputs_do_not_panic() {
    for (target, _) in TARGETS {
        let files = saved_inputs(target).unwrap_or_else(|e| panic!("{target}: {e}"));
        for file in files {
            let data = std::fs::read(&file).unwrap();
            match std::panic::catch_unwind(|| run_target(target, &data)) {
                Ok(Some(_)) => {}
                Ok(None) => panic!("{target} is not a fuzz target"),
                Err(_) => panic!("{target} panics on {}", file.display()),
            }
        }
    }
}

#[test]
fn the_hostile_corpus_passes_through_the_fuzz_targets() {
    let root = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("hostile-fuzz");
    for case in smelt_tests::hostile::corpus() {
        let model = smelt_tests::hostile::write_case(&root, &case).unwrap();
        let data = std::fs::read(&model).unwrap();
        onnx_import(&data);
        compile_model(&data);
    }
    for file in smelt_tests::graph_files("passes") {
        graph_text(&std::fs::read(file).unwrap());
    }
}
