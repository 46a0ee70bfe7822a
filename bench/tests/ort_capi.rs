//! The onnxruntime baseline harness runs a model through the C API of the test venv's
//! onnxruntime wheel and reports its timing; a bad model directory is an error.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench lives in the workspace")
        .to_path_buf()
}

/// The pinned wheel's library in the test venv (`cargo xtask onnx-data` installs it).
fn library() -> PathBuf {
    let lib = workspace().join("target/smelt-venv/lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|pythons| {
        pythons.flatten().find_map(|python| {
            let capi = python.path().join("site-packages/onnxruntime/capi");
            std::fs::read_dir(capi)
                .ok()?
                .flatten()
                .map(|e| e.path())
                .find(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("libonnxruntime.so."))
                })
        })
    });
    found.unwrap_or_else(|| {
        panic!(
            "no libonnxruntime.so.* under {}: run `cargo xtask onnx-data` (the README's test command does)",
            lib.display()
        )
    })
}

fn harness(model_dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ort-capi"))
        .arg(library())
        .arg(model_dir)
        .args(["1", "3"])
        .output()
        .expect("ort-capi starts")
}

#[test]
fn times_a_model_through_the_c_api() {
    let dir = workspace().join("target/onnx-data/models/mlp_784_128_10");
    assert!(
        dir.join("model.onnx").is_file(),
        "test data {} is missing: run `cargo xtask onnx-data`",
        dir.display()
    );
    let out = harness(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(v["runtime"], "onnxruntime-capi");
    assert_eq!(v["iterations"], 3);
    assert_eq!(v["threads"], 1);
    assert!(
        v["version"].as_str().is_some_and(|s| s.starts_with("1.")),
        "{v}"
    );
    let (min, median, max) = (
        v["min_ms"].as_f64().unwrap(),
        v["median_ms"].as_f64().unwrap(),
        v["max_ms"].as_f64().unwrap(),
    );
    assert!(0.0 < min && min <= median && median <= max, "{v}");
    assert!(v["peak_rss_bytes"].as_u64().unwrap() > 1 << 20, "{v}");
}

#[test]
fn a_missing_model_is_an_error() {
    let out = harness(&workspace().join("target/no-such-model"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("ort-capi: "), "{err}");
}
