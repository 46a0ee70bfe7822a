//! Builds the runtime as a static library (`smelt-bundle`, release profile) so that the
//! driver can embed it and `smelt compile` can link deployables without any other file.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir.join("../..");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    println!("cargo:rerun-if-changed={}", root.join("runtime").display());
    println!(
        "cargo:rerun-if-changed={}",
        root.join("Cargo.lock").display()
    );
    // One build shared by every profile: OUT_DIR is <target>/<profile>/build/<pkg>/out.
    let in_build_dir = out
        .ancestors()
        .nth(2)
        .and_then(Path::file_name)
        .is_some_and(|n| n == "build");
    let target_dir = match out.ancestors().nth(4) {
        Some(t) if in_build_dir => t.join("smelt-bundle"),
        _ => out.join("bundle-target"),
    };
    build_bundle(&root, &target_dir, &[]);
    copy(
        &target_dir.join("release/libsmelt_bundle.a"),
        &out.join("libsmelt_bundle.a"),
    );
    // With the GPU target, deployables of GPU models link a runtime with the CUDA device.
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        let cuda_dir = target_dir.join("cuda");
        build_bundle(&root, &cuda_dir, &["--features", "cuda"]);
        copy(
            &cuda_dir.join("release/libsmelt_bundle.a"),
            &out.join("libsmelt_bundle_cuda.a"),
        );
    }
}

fn build_bundle(root: &Path, target_dir: &Path, extra: &[&str]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "smelt-bundle",
            "--manifest-path",
        ])
        .arg(root.join("runtime/bundle/Cargo.toml"))
        .args(extra)
        .arg("--target-dir")
        .arg(target_dir)
        // Under `cargo clippy` the wrapper would lint instead of just building.
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CLIPPY_ARGS")
        // The deployed runtime is built plainly: flags meant for the compiler's own build
        // (cargo-fuzz's coverage instrumentation, say) would reach its build scripts, whose
        // links then fail, and would end up in every executable smelt links.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .expect("cargo runs");
    assert!(
        status.success(),
        "building the runtime library (smelt-bundle {extra:?}) failed"
    );
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copying {}: {e}", from.display()));
}
