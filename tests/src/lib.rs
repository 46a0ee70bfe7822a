//! Shared helpers of smelt's integration tests: locating generated test data,
//! comparing tensors, and the ONNX conformance harness (also used by `cargo xtask conformance`).

pub mod builder;
pub mod compare;
pub mod conformance;
pub mod fuzz;
pub mod hostile;
pub mod isolate;
pub mod mutate;
pub mod random_graph;
pub mod seeded;
pub mod sweep;

use std::path::PathBuf;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

/// Where `cargo xtask onnx-data` writes generated test data (override with `SMELT_DATA_DIR`).
pub fn data_dir() -> PathBuf {
    std::env::var_os("SMELT_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/onnx-data"))
}

/// The data directory, or a panic telling how to create it (tests must not pass without their data).
pub fn require_data(sub: &str) -> PathBuf {
    let dir = data_dir().join(sub);
    assert!(
        dir.is_dir(),
        "test data {} is missing: run `cargo xtask onnx-data` (the README's test command does)",
        dir.display()
    );
    dir
}

/// The `.graph` files of `tests/<dir>`, sorted (the file-based tests' cases).
pub fn graph_files(dir: &str) -> Vec<PathBuf> {
    let dir = workspace_root().join("tests").join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "graph"))
        .collect();
    files.sort();
    files
}

/// The model cases of the brief's classic models (LeNet-5 at batch sizes 1 and 4).
pub const CLASSIC_MODELS: [&str; 6] = [
    "mlp_784_64_64_1",
    "mlp_784_128_10",
    "mnist_cnn",
    "lenet5_b1",
    "lenet5_b4",
    "logistic_regression",
];

/// The generated model cases (classic and light models), sorted by name.
pub fn model_names() -> Vec<String> {
    let models = require_data("models");
    let mut names: Vec<String> = std::fs::read_dir(&models)
        .unwrap_or_else(|e| panic!("{}: {e}", models.display()))
        .map(|e| {
            e.expect("readable directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// The `.npy` files of a generated model case (`target/onnx-data/models/NAME`) as its
/// `io.tsv` lists them: `kind` is `input` or `output`; returns (name, path) in order.
pub fn model_case_files(dir: &std::path::Path, kind: &str) -> Vec<(String, PathBuf)> {
    let io = std::fs::read_to_string(dir.join("io.tsv"))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    io.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[0] == kind).then(|| (f[1].to_string(), dir.join(f[2])))
        })
        .collect()
}

/// Input shapes of a generated model case, read from its `.npy` inputs.
pub fn model_input_shapes(dir: &std::path::Path) -> std::collections::HashMap<String, Vec<usize>> {
    model_case_files(dir, "input")
        .into_iter()
        .map(|(name, path)| {
            let t = smelt_runtime::read_npy(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (name, t.shape)
        })
        .collect()
}

/// The test venv's Python (with the pinned onnx, onnxruntime and numpy), made by
/// `cargo xtask setup`; a panic tells how to make it (tests must not pass without it).
pub fn venv_python() -> PathBuf {
    let python = workspace_root().join("target/smelt-venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run `cargo xtask setup` (the README's test command does)",
        python.display()
    );
    python
}

/// What `tests/py/ort_run.py` reports of one onnxruntime run.
#[derive(Debug)]
pub struct OnnxruntimeRun {
    /// The default-domain opset of the model.
    pub opset: i64,
    /// The outputs, in the model's order.
    pub outputs: Vec<smelt_runtime::HostTensor>,
}

/// Checks `dir/model.onnx` with onnx's full checker and runs it on onnxruntime (CPU,
/// graph optimizations off) with these `.npy` inputs, through the test venv; writes
/// `dir/inputs.tsv` and reads back `dir/ort_<i>.npy`.
pub fn run_onnxruntime(
    dir: &std::path::Path,
    inputs: &[(String, PathBuf)],
) -> Result<OnnxruntimeRun, String> {
    let tsv: String = inputs
        .iter()
        .map(|(name, path)| format!("{name}\t{}\n", path.display()))
        .collect();
    std::fs::write(dir.join("inputs.tsv"), tsv).map_err(|e| e.to_string())?;
    let out = std::process::Command::new(venv_python())
        .arg(workspace_root().join("tests/py/ort_run.py"))
        .arg(dir.join("model.onnx"))
        .arg(dir)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "onnxruntime failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // One line: `opset N outputs NAME...`.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = stdout.split_whitespace().collect();
    let opset = words
        .get(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("unexpected output of ort_run.py: {stdout}"))?;
    let outputs = (0..words.len().saturating_sub(3))
        .map(|i| {
            let path = dir.join(format!("ort_{i}.npy"));
            smelt_runtime::read_npy(&path).map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;
    Ok(OnnxruntimeRun { opset, outputs })
}

/// `libdevice.10.bc` of the `nvidia-cuda-nvcc-cu12` wheel in the test venv (or
/// `SMELT_LIBDEVICE`), for the tests that generate PTX: the GPU back end looks at nothing
/// of the build machine by itself.
pub fn libdevice() -> PathBuf {
    gpu_tool("SMELT_LIBDEVICE", "nvvm/libdevice/libdevice.10.bc")
}

/// `ptxas`: `SMELT_PTXAS`, else the one the `nvidia-cuda-nvcc-cu12` wheel put in the
/// test venv (`cargo xtask setup`).
pub fn ptxas() -> PathBuf {
    gpu_tool("SMELT_PTXAS", "bin/ptxas")
}

/// The file `env` names, else `file` (relative to the wheel's `nvidia/cuda_nvcc`) in the
/// test venv; a panic tells how to install it.
fn gpu_tool(env: &str, file: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let lib = workspace_root().join("target/smelt-venv/lib");
    std::fs::read_dir(&lib)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .map(|d| d.path().join("site-packages/nvidia/cuda_nvcc").join(file))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{file} not found under {}: run `cargo xtask setup` (the README's test command does)",
                lib.display()
            )
        })
}
