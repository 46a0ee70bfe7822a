//! Kernel IR alone: its text form round-trips (print -> parse -> print), on random graphs'
//! kernels and on every kernel of the bundled models, and the hand-written kernels of
//! `tests/lower/*.kernel` go through the CPU back end to CLIF snapshots (and, with
//! `cuda`, through the NVPTX back end to LLVM IR and PTX snapshots) without any graph.

use proptest::test_runner::TestCaseError;
use smelt_fuse::{Kernel, LowerTarget};
use smelt_tests::random_graph::{build, step};
use std::path::Path;

/// Every kernel `g` lowers to for `target`, unoptimized and optimized.
fn kernels_of(g: &smelt_ir::Graph, target: LowerTarget) -> Result<Vec<Kernel>, String> {
    let mut kernels = Vec::new();
    for optimize in [false, true] {
        let mut g = g.clone();
        if optimize {
            smelt_opt::Pipeline::standard(Default::default())
                .run(&mut g)
                .map_err(|e| e.to_string())?;
        }
        let plan = smelt_fuse::plan(&g).map_err(|e| e.to_string())?;
        let lowered = smelt_fuse::lower_for(&g, &plan, target).map_err(|e| e.to_string())?;
        kernels.extend(lowered.into_iter().map(|k| k.kernel));
    }
    Ok(kernels)
}

/// The text of `kernel` parses back to a kernel that prints the same text and, for the
/// CPU, generates the same CLIF.
fn round_trips(kernel: &Kernel) -> Result<(), String> {
    let text = kernel.print();
    let parsed = Kernel::parse(&text).map_err(|e| format!("{e}\n{text}"))?;
    let again = parsed.print();
    if again != text {
        return Err(format!("printed differently:\n{text}\nthen:\n{again}"));
    }
    let clif = |k: &Kernel| smelt_cpu::clif_for(k, true).map_err(|e| e.to_string());
    if clif(kernel)? != clif(&parsed)? {
        return Err(format!("the parsed kernel generates other CLIF:\n{text}"));
    }
    Ok(())
}

/// Print, parse, print on the kernels of random well-typed graphs (a fixed seed only:
/// the cases are the same on every run).
#[test]
fn kernel_text_round_trips_on_random_graphs() {
    smelt_tests::seeded::run_seeded(
        file!(),
        proptest::collection::vec(step(), 1..16),
        192,
        0,
        |steps| {
            let g = build(&steps);
            for target in [LowerTarget::Cpu, LowerTarget::Gpu] {
                // A graph the back ends refuse has no kernels to print.
                let Ok(kernels) = kernels_of(&g, target) else {
                    continue;
                };
                for k in &kernels {
                    round_trips(k).map_err(TestCaseError::fail)?;
                }
            }
            Ok(())
        },
    );
}

/// Every kernel of the bundled models, for the CPU and for the GPU, round-trips.
#[test]
fn every_model_kernel_round_trips() {
    let models = smelt_tests::require_data("models");
    let mut count = 0;
    for entry in std::fs::read_dir(&models).unwrap() {
        let dir = entry.unwrap().path();
        let model = smelt::Model::load(dir.join("model.onnx")).unwrap();
        let compiled = model.compile(&smelt::Options::default()).unwrap();
        let shapes = smelt_tests::model_input_shapes(&dir);
        for target in [smelt::Target::Cpu, smelt::Target::GpuEmulator] {
            let kernels = compiled.kernels_for_shapes(&shapes, target).unwrap();
            for k in &kernels {
                round_trips(&k.kernel)
                    .unwrap_or_else(|e| panic!("{} ({}): {e}", dir.display(), target.name()));
                count += 1;
            }
        }
    }
    assert!(count > 1000, "only {count} kernels");
}

/// The `.kernel` files of `tests/lower`, sorted.
fn kernel_files() -> Vec<std::path::PathBuf> {
    let dir = smelt_tests::workspace_root().join("tests/lower");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "kernel"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 8,
        "{} kernel files in {}",
        files.len(),
        dir.display()
    );
    files
}

fn load(path: &Path) -> (String, Kernel) {
    let text = std::fs::read_to_string(path).unwrap();
    let kernel = Kernel::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let name = path.file_stem().unwrap().to_string_lossy().into_owned();
    (name, kernel)
}

/// Each file's kernel through the CPU back end: its CLIF (with FMA, as on any x86-64-v3
/// machine), and its text as the printer writes it.
#[test]
fn lower_files_to_clif() {
    for path in kernel_files() {
        let (name, kernel) = load(&path);
        let clif = smelt_cpu::clif_for(&kernel, true)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let shown = if clif.is_empty() {
            "; contraction only, run by the runtime's microkernels\n".to_string()
        } else {
            clif
        };
        insta::assert_snapshot!(
            format!("lower_{name}_clif"),
            format!("{}\n{shown}", kernel.print())
        );
    }
}

/// Each file's kernel, lowered for the GPU target (a loop nest), through the NVPTX back
/// end: the LLVM IR as generated and the PTX. Contraction calls are the CPU's only, and
/// are refused here with an error naming the kernel.
#[cfg(feature = "cuda")]
#[test]
fn lower_files_to_llvm_and_ptx() {
    let options = smelt_gpu::GpuOptions {
        libdevice: Some(smelt_tests::libdevice()),
        ..Default::default()
    };
    for path in kernel_files() {
        let (name, kernel) = load(&path);
        match smelt_gpu::compile(&[&kernel], &options) {
            Ok(module) => {
                insta::assert_snapshot!(format!("lower_{name}_llvm"), module.llvm_ir);
                insta::assert_snapshot!(format!("lower_{name}_ptx"), module.ptx);
            }
            Err(e) => {
                assert!(
                    matches!(kernel.body, smelt_fuse::Body::Contraction { .. }),
                    "{}: {e}",
                    path.display()
                );
                assert!(e.to_string().contains(&kernel.name), "{e}");
            }
        }
    }
}

/// Malformed text is refused with the line at fault and the reason.
#[test]
fn malformed_kernel_text_names_the_line() {
    let conv = |flag: &str| {
        format!(
            "kernel k {{\n  p0: out f32[1, 1, 2, 2]  // y\n  p1: in f32[1, 1, 2, 2]  // x\n  p2: in f32[1, 1, 1, 1]  // w\n  p0 = conv(p1, p2) strides [1, 1] pads [0, 0, 0, 0] dilations [1, 1] group 1 {flag}\n}}\n"
        )
    };
    let clips = [
        (conv("clip(6.0, 0.0)"), "clip bounds 6 > 0"),
        (conv("clip(1.0)"), "clip takes 2 bounds, not 1"),
        (conv("clip(0.0, six)"), "clip bound 'six' is not a number"),
        (conv("clip(0.0, 6.0"), "'clip(' without ')'"),
    ];
    for (text, reason) in &clips {
        let e = Kernel::parse(text).expect_err(text);
        assert_eq!(e.line, 5, "{e}\n{text}");
        assert!(e.reason.contains(reason), "{e}\n{text}");
    }
    let cases: [(&str, usize, &str); 7] = [
        ("kernel k\n", 1, "expected 'kernel NAME {'"),
        (
            "kernel k {\n  p0: in f32[2] strides [2]  // x\n",
            2,
            "not the row-major strides",
        ),
        (
            "kernel k {\n  p0: sideways f32[2]  // x\n",
            2,
            "unknown role 'sideways'",
        ),
        (
            "kernel k {\n  p0: out f32[2]  // y\n  for [2] {\n    e0: f32 = neg e1\n",
            4,
            "uses e1, which does not precede it",
        ),
        (
            "kernel k {\n  p0: out f32[2]  // y\n  for [2] {\n    e0: i64 = i0\n    e1: f32 = frobnicate e0\n",
            5,
            "unknown unary op 'frobnicate'",
        ),
        (
            "kernel k {\n  p0: out f32[2]  // y\n  for [2] {\n    e0: i64 = i0\n    e1: f32 = 1.5\n    store p0[e0] = e1\n  }\n",
            8,
            "expected '}', found the end",
        ),
        (
            "kernel k {\n  p0: out f32[2]  // y\n  for [2] {\n    e0: i64 = i0\n    e1: f64 = 1.5\n    store p0[e0] = e1\n  }\n}\n",
            8,
            "store of e1 into y (f32) disagrees",
        ),
    ];
    for (text, line, reason) in cases {
        let e = Kernel::parse(text).expect_err(text);
        assert_eq!(e.line, line, "{e}\n{text}");
        assert!(e.reason.contains(reason), "{e}\n{text}");
    }
}
