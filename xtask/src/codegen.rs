//! `cargo xtask codegen`: regenerates the committed prost types of `onnx.proto` with protox (no protoc needed).

use anyhow::{Context, Result};
use std::path::Path;

pub fn run(root: &Path) -> Result<()> {
    let proto_dir = root.join("frontends/onnx/proto");
    let fds = protox::compile([proto_dir.join("onnx.proto")], [&proto_dir])
        .context("compiling onnx.proto with protox")?;
    let out_dir = root.join("frontends/onnx/src/proto");
    std::fs::create_dir_all(&out_dir)?;
    let tmp = tempdir(root)?;
    prost_build::Config::new()
        // Weights decode as slices of the file's buffer instead of copies of it.
        .bytes([".onnx.TensorProto.raw_data"])
        .out_dir(&tmp)
        .compile_fds(fds)
        .context("generating Rust types with prost-build")?;
    let generated =
        std::fs::read_to_string(tmp.join("onnx.rs")).context("reading generated onnx.rs")?;
    let header = "// Prost types generated from `onnx.proto` of onnx 1.23.2 by `cargo xtask codegen`; do not edit.\n\n";
    std::fs::write(out_dir.join("onnx.rs"), format!("{header}{generated}"))?;
    std::fs::remove_dir_all(&tmp)?;
    println!("wrote {}", out_dir.join("onnx.rs").display());
    Ok(())
}

fn tempdir(root: &Path) -> Result<std::path::PathBuf> {
    let dir = root.join("target/xtask-codegen");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
