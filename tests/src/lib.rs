//! Shared helpers of smelt's integration tests: locating generated test data,
//! comparing tensors, and the ONNX conformance harness (also used by `cargo xtask conformance`).

pub mod builder;
pub mod compare;
pub mod conformance;

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
