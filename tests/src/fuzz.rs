//! The bodies of the fuzz targets (`fuzz/fuzz_targets/*.rs` call them on libFuzzer's
//! inputs; `tests/tests/fuzz_regressions.rs` on every saved crash input): each feeds
//! arbitrary bytes to a front door of smelt and may return errors, never panic.

use crate::mutate::InputKind;
use smelt_ir::text::{PrintOptions, parse_graph, print_graph};
use std::collections::HashMap;
use std::path::PathBuf;

/// The saved inputs of a fuzz target (`tests/fuzz-regressions/<target>/`: every crash a
/// fuzzing run found, kept once fixed), sorted by name. `cargo xtask fuzz` seeds the
/// target with them and `tests/tests/fuzz_regressions.rs` replays them.
pub fn saved_inputs(target: &str) -> std::io::Result<Vec<PathBuf>> {
    let dir = crate::workspace_root()
        .join("tests/fuzz-regressions")
        .join(target);
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.is_file() && path.file_name().is_some_and(|n| n != ".gitkeep") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The memory limit (bytes of one value) while fuzzing. Under the default 16 GiB, a
/// mutated model can ask for several values of gigabytes each, all legitimately under
/// the limit, and exhaust libFuzzer's 4 GiB budget (a 4 GiB Range read as Reduce axes
/// did). Fuzzing looks for panics; the limit itself is tested with the hostile corpus.
pub const FUZZ_MEMORY_LIMIT: u64 = 64 << 20;

fn limit_memory() {
    smelt_ir::limits::set_max_value_bytes(FUZZ_MEMORY_LIMIT);
}

/// The fuzz targets of `fuzz/Cargo.toml`, by name, and the kind of input each takes.
pub const TARGETS: [(&str, InputKind); 3] = [
    ("onnx_import", InputKind::OnnxModel),
    ("graph_text", InputKind::GraphText),
    ("compile_model", InputKind::OnnxModel),
];

/// Runs the body of fuzz target `target` on `data`; returns how far it got in a word
/// (`Ran` where a body does not say), or `None` for an unknown target.
pub fn run_target(target: &str, data: &[u8]) -> Option<String> {
    match target {
        "onnx_import" => onnx_import(data),
        "graph_text" => graph_text(data),
        "compile_model" => return Some(format!("{:?}", compile_bytes(data))),
        _ => return None,
    }
    Some("Ran".into())
}

/// ONNX import from arbitrary bytes: decoding, the summary, and import as declared.
pub fn onnx_import(data: &[u8]) {
    limit_memory();
    let Ok(model) = smelt_onnx::OnnxModel::from_bytes(data) else {
        return;
    };
    let _ = model.info();
    if let Ok(imported) = smelt_onnx::import(&model, &Default::default()) {
        imported
            .graph
            .verify()
            .expect("the importer returns verified graphs");
    }
}

/// The graph text parser: whatever parses and verifies prints and parses back to the
/// same text.
pub fn graph_text(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(graph) = parse_graph(text) else {
        return;
    };
    if graph.verify().is_err() {
        return;
    }
    let printed = print_graph(&graph, PrintOptions::full());
    let again = parse_graph(&printed)
        .unwrap_or_else(|e| panic!("a printed graph does not parse: {e}\n{printed}"));
    assert_eq!(
        print_graph(&again, PrintOptions::full()),
        printed,
        "printing is not stable"
    );
}

/// How far a model got through import, optimization and compilation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reached {
    /// Not an ONNX model.
    Undecodable,
    /// Refused by the importer.
    ImportError,
    /// Refused by the optimizer.
    OptimizeError,
    /// Refused by code generation.
    CompileError,
    /// Compiled for the CPU.
    Compiled,
    /// Compiled, and refused by its run (an input check).
    RunError,
    /// Compiled and run.
    Ran,
}

/// Import, optimization and CPU compilation of a model (mutations of the conformance
/// models): symbolic input dims are bound to 2, then the standard pipeline runs and
/// code is generated. Values over the memory limit ([`FUZZ_MEMORY_LIMIT`]) are refused by
/// shape inference before anything allocates them.
pub fn compile_model(data: &[u8]) {
    compile_bytes(data);
}

/// The body of [`compile_model`], saying how far the model got.
pub fn compile_bytes(data: &[u8]) -> Reached {
    compile_executable(data).map_or_else(|r| r, |_| Reached::Compiled)
}

/// [`compile_bytes`], then one run of the compiled code on zeros (what the op sweep does).
pub fn compile_and_run(data: &[u8]) -> Reached {
    let exe = match compile_executable(data) {
        Ok(exe) => exe,
        Err(r) => return r,
    };
    let inputs: Vec<smelt_runtime::HostTensor> = exe
        .program
        .inputs
        .iter()
        .map(|spec| smelt_runtime::HostTensor::zeros(spec.elem, spec.shape.clone()))
        .collect();
    let pool = smelt_runtime::threads::ThreadPool::new(1);
    match exe.run(&pool, &inputs.iter().collect::<Vec<_>>(), None) {
        Ok(_) => Reached::Ran,
        Err(_) => Reached::RunError,
    }
}

/// Import, optimization and compilation of a model, or how far it got.
fn compile_executable(data: &[u8]) -> Result<smelt::Executable, Reached> {
    limit_memory();
    let Ok(model) = smelt_onnx::OnnxModel::from_bytes(data) else {
        return Err(Reached::Undecodable);
    };
    let info = model.info();
    let shapes: HashMap<String, Vec<usize>> = info
        .inputs
        .iter()
        .map(|i| {
            let dims = i.dims.iter().map(|d| d.parse().unwrap_or(2)).collect();
            (i.name.clone(), dims)
        })
        .collect();
    let options = smelt_onnx::ImportOptions {
        input_shapes: shapes,
        ..Default::default()
    };
    let Ok(imported) = smelt_onnx::import(&model, &options) else {
        return Err(Reached::ImportError);
    };
    let mut graph = imported.graph;
    if smelt_opt::Pipeline::standard(Default::default())
        .run(&mut graph)
        .is_err()
    {
        return Err(Reached::OptimizeError);
    }
    smelt::Executable::from_graph(graph, false).map_err(|_| Reached::CompileError)
}
