//! The GPU back end without a GPU: snapshots of the LLVM IR and PTX of the classic
//! models, and `ptxas --gpu-name sm_90` over every kernel generated for the classic and
//! light models and the conformance cases (ptxas from the `nvidia-cuda-nvcc-cu12` wheel
//! that `cargo xtask setup` installs in the test venv).
#![cfg(feature = "cuda")]

use smelt_fuse::Kernel;
use smelt_gpu::{GpuModule, GpuOptions};
use std::path::Path;
use std::process::Command;

/// The classic models of the brief (the text classifier's unrolled LSTM is left out of
/// the snapshots for its size; ptxas still checks it).
const CLASSIC: [&str; 5] = [
    "mlp_784_64_64_1",
    "mlp_784_128_10",
    "mnist_cnn",
    "lenet5_b1",
    "logistic_regression",
];

/// sm_90 with the test venv's libdevice, as the driver takes it.
fn driver_gpu_options() -> smelt::GpuOptions {
    smelt::GpuOptions::new("sm_90", Some(smelt_tests::libdevice()))
}

/// sm_90 with the test venv's libdevice, as the back end takes it.
fn gpu_options() -> GpuOptions {
    GpuOptions {
        libdevice: Some(smelt_tests::libdevice()),
        ..Default::default()
    }
}

fn gpu_module(dir: &Path) -> GpuModule {
    let model = smelt::Model::load(dir.join("model.onnx")).unwrap();
    let compiled = model
        .compile(&smelt::Options {
            gpu: driver_gpu_options(),
            ..Default::default()
        })
        .unwrap();
    compiled
        .gpu_module(&smelt_tests::model_input_shapes(dir))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

#[test]
fn classic_model_llvm_and_ptx() {
    let models = smelt_tests::require_data("models");
    for name in CLASSIC {
        let module = gpu_module(&models.join(name));
        insta::assert_snapshot!(format!("llvm_{name}"), module.llvm_ir);
        insta::assert_snapshot!(format!("ptx_{name}"), module.ptx);
    }
}

/// The PTX of each entry of a module: (name, text up to the next entry).
fn entries(ptx: &str) -> Vec<(String, &str)> {
    let starts: Vec<usize> = ptx
        .match_indices(".visible .entry ")
        .map(|(i, _)| i)
        .collect();
    starts
        .iter()
        .enumerate()
        .map(|(k, &at)| {
            let text = &ptx[at..starts.get(k + 1).copied().unwrap_or(ptx.len())];
            let name = text[".visible .entry ".len()..]
                .split('(')
                .next()
                .unwrap_or_default()
                .to_string();
            (name, text)
        })
        .collect()
}

/// The innermost loops of an entry's PTX: the lines between a label and a branch back to
/// it with no other label between (a straight-line loop body).
fn innermost_loops(entry: &str) -> Vec<Vec<&str>> {
    let lines: Vec<&str> = entry.lines().map(str::trim).collect();
    let mut loops = Vec::new();
    for (j, line) in lines.iter().enumerate() {
        let Some(target) = line
            .split("bra")
            .nth(1)
            .map(|t| t.trim().trim_end_matches(';'))
        else {
            continue;
        };
        let Some(i) = lines[..j].iter().position(|l| *l == format!("{target}:")) else {
            continue;
        };
        let body = &lines[i + 1..j];
        if !body.iter().any(|l| l.ends_with(':')) {
            loops.push(body.to_vec());
        }
    }
    loops
}

/// Every MatMul and convolution kernel of the classic models accumulates its products
/// with fused multiply-adds in its inner loop: a separately rounded `mul.rn.f32` and
/// `add.rn.f32` (which ptxas never contracts) would halve the peak.
#[test]
fn products_accumulate_with_fused_multiply_adds() {
    let models = smelt_tests::require_data("models");
    let mut checked = 0;
    for name in CLASSIC {
        let module = gpu_module(&models.join(name));
        for (entry, text) in entries(&module.ptx) {
            if !(entry.contains("matmul") || entry.contains("conv")) {
                continue;
            }
            // A short reduction is unrolled whole (no loop); a long one is a loop.
            assert!(
                text.contains("fma.rn.f32"),
                "{name}: {entry} has no fma.rn.f32:\n{text}"
            );
            for body in innermost_loops(text) {
                let loads = body.iter().any(|l| l.starts_with("ld.global.f32"));
                let fused = body.iter().any(|l| l.starts_with("fma.rn.f32"));
                assert!(
                    !body.iter().any(|l| l.starts_with("mul.rn.f32")) && (fused || !loads),
                    "{name}: {entry} has an inner loop of products without fused multiply-adds:\n{}",
                    body.join("\n")
                );
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 10,
        "only {checked} product kernels in the classic models"
    );
}

/// Assembles `ptx` for sm_90 and returns ptxas's complaint, if any.
fn assemble(ptx: &str, tag: &str) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("smelt-ptxas-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join(format!("{tag}.ptx"));
    std::fs::write(&src, ptx).unwrap();
    let out = Command::new(smelt_tests::ptxas())
        .args(["--gpu-name", "sm_90", "-o"])
        .arg(dir.join(format!("{tag}.cubin")))
        .arg(&src)
        .output()
        .expect("ptxas runs");
    if out.status.success() {
        let _ = std::fs::remove_file(&src);
        Ok(())
    } else {
        Err(format!(
            "ptxas rejects {}: {}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[test]
fn ptxas_accepts_the_classic_and_light_models() {
    let models = smelt_tests::require_data("models");
    let names = smelt_tests::model_names();
    assert!(
        names.len() >= 17,
        "every classic and light model: {names:?}"
    );
    let mut kernels = 0;
    for name in &names {
        let module = gpu_module(&models.join(name));
        assert!(!module.kernels.is_empty(), "{name} has kernels");
        assemble(&module.ptx, name).unwrap();
        kernels += module.kernels.len();
    }
    println!(
        "ptxas assembled {kernels} kernels of {} models",
        names.len()
    );
}

/// Kernels of many cases go into one module (renamed apart), so ptxas runs a few dozen
/// times rather than once per case.
const CASES_PER_MODULE: usize = 100;

#[test]
fn ptxas_accepts_every_conformance_kernel() {
    let data = smelt_tests::require_data("");
    let mut cases = smelt_tests::conformance::load_manifest(&data.join("node")).unwrap();
    cases.extend(smelt_tests::conformance::load_manifest(&data.join("suites")).unwrap());
    let mut lowered = 0;
    let mut all: Vec<Kernel> = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        // Cases the GPU target cannot compile (unsupported ops and types) are counted by
        // the conformance expectations; here every kernel that is generated must assemble.
        let Ok(model) = smelt::Model::load(case.dir.join("model.onnx")) else {
            continue;
        };
        let Ok(inputs) = smelt_tests::conformance::first_inputs(case) else {
            continue;
        };
        let compiled = model
            .compile(&smelt::Options {
                gpu: driver_gpu_options(),
                ..Default::default()
            })
            .unwrap();
        let Ok(kernels) = compiled.kernels_for_inputs(&inputs, smelt::Target::GpuEmulator) else {
            continue;
        };
        lowered += 1;
        for mut k in kernels {
            k.kernel.name = format!("c{i}_{}", k.kernel.name);
            all.push(k.kernel);
        }
    }
    assert!(lowered > 1400, "only {lowered} cases lowered");
    let chunks: Vec<&[Kernel]> = all.chunks(CASES_PER_MODULE * 4).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .iter()
            .enumerate()
            .map(|(c, chunk)| {
                s.spawn(move || {
                    let refs: Vec<&Kernel> = chunk.iter().collect();
                    let module = smelt_gpu::compile(&refs, &gpu_options())
                        .unwrap_or_else(|e| panic!("chunk {c}: {e}"));
                    assemble(&module.ptx, &format!("conformance_{c}"))
                })
            })
            .collect();
        for h in handles {
            h.join().expect("no panic").unwrap();
        }
    });
    println!(
        "ptxas assembled {} kernels of {lowered} conformance cases in {} modules",
        all.len(),
        chunks.len()
    );
}
