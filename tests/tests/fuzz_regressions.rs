//! Replays the fuzz targets' saved inputs (`tests/fuzz-regressions/<target>/`, every crash a
//! fuzzing run found, kept once fixed) and the hostile corpus through the targets'
//! bodies (`smelt_tests::fuzz`): none may panic.

use smelt_tests::fuzz::{compile_model, graph_text, onnx_import};
use std::path::PathBuf;

fn saved(target: &str) -> Vec<PathBuf> {
    let dir = smelt_tests::workspace_root()
        .join("tests/fuzz-regressions")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != ".gitkeep"))
        .collect();
    files.sort();
    files
}

#[test]
fn saved_fuzz_inputs_do_not_panic() {
    for (target, body) in [
        ("onnx_import", onnx_import as fn(&[u8])),
        ("graph_text", graph_text),
        ("compile_model", compile_model),
    ] {
        for file in saved(target) {
            let data = std::fs::read(&file).unwrap();
            if std::panic::catch_unwind(|| body(&data)).is_err() {
                panic!("{target} panics on {}", file.display());
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
