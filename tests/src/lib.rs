//! Shared helpers of smelt's integration tests: locating generated test data,
//! comparing tensors, and the ONNX conformance harness (also used by `cargo xtask conformance`).

pub mod builder;
pub mod compare;
pub mod conformance;
pub mod random_graph;

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
