//! `smelt compile`: executables against onnxruntime's outputs, the C example against the
//! JIT, byte-identical rebuilds, `ldd`, the CPU check, and the executable's errors.

use smelt_runtime::read_npy;
use smelt_tests::compare::compare;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn smelt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_smelt"))
        .args(args)
        .output()
        .unwrap()
}

fn workdir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("deploy-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn compile(model: &Path, out: &Path, extra: &[&str]) {
    let mut args = vec![
        "compile",
        model.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    ok(&smelt(&args));
}

/// Compiles a generated model case to an executable, runs it on the case's inputs and
/// compares with onnxruntime's outputs (the tolerances of the model tests).
fn exe_matches_onnxruntime(name: &str) {
    exe_matches_onnxruntime_with(name, &[]);
}

fn exe_matches_onnxruntime_with(name: &str, compile_args: &[&str]) {
    let dir = smelt_tests::require_data("models").join(name);
    exe_of_model_matches_case(name, &dir.join("model.onnx"), &workdir(name), compile_args);
}

/// Compiles `model` to an executable in `work`, runs it on the inputs of the generated
/// model case `name` and compares with the case's outputs (onnxruntime's).
fn exe_of_model_matches_case(name: &str, model: &Path, work: &Path, compile_args: &[&str]) {
    let dir = smelt_tests::require_data("models").join(name);
    let exe = work.join(name);
    let io = std::fs::read_to_string(dir.join("io.tsv")).unwrap();
    let mut run = Command::new(&exe);
    let mut shapes = Vec::new();
    let mut expected = Vec::new();
    for line in io.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        match f.as_slice() {
            ["input", n, file] => {
                let t = read_npy(&dir.join(file)).unwrap();
                let dims: Vec<String> = t.shape.iter().map(usize::to_string).collect();
                shapes.push(format!("{n}={}", dims.join(",")));
                run.arg("--input")
                    .arg(format!("{n}={}", dir.join(file).display()));
            }
            ["output", n, file] => expected.push((n.to_string(), dir.join(file))),
            _ => panic!("bad io.tsv line {line}"),
        }
    }
    let mut extra = compile_args.to_vec();
    for s in &shapes {
        extra.push("--input-shape");
        extra.push(s.as_str());
    }
    compile(model, &exe, &extra);
    let out_dir = work.join("out");
    ok(&run.arg("--output-dir").arg(&out_dir).output().unwrap());
    for (output, file) in expected {
        let want = smelt::to_ir_tensor(&read_npy(&file).unwrap()).unwrap();
        let got = smelt::to_ir_tensor(
            &read_npy(&out_dir.join(smelt_runtime::output_file_name(&output))).unwrap(),
        )
        .unwrap();
        compare(&want, &got, 1e-4, 1e-5).unwrap_or_else(|e| panic!("{name}, output {output}: {e}"));
    }
}

/// `--target cuda`: the executable embeds the PTX and links no CUDA library (the driver
/// is loaded at run time); where a GPU and its driver are present it matches
/// onnxruntime, elsewhere it says the driver is missing, in one line with status 2.
#[cfg(feature = "cuda")]
#[test]
fn cuda_executable_embeds_ptx_and_needs_only_the_driver() {
    if smelt_runtime::cuda::driver_present() {
        exe_matches_onnxruntime_with("mnist_cnn", &["--target", "cuda"]);
        return;
    }
    let dir = smelt_tests::require_data("models").join("mnist_cnn");
    let work = workdir("cuda-exe");
    let exe = work.join("mnist_cuda");
    let out = ok(&smelt(&[
        "compile",
        dir.join("model.onnx").to_str().unwrap(),
        "-o",
        exe.to_str().unwrap(),
        "--target",
        "cuda",
        "--input-shape",
        "x=1,1,28,28",
    ]));
    assert!(
        out.contains("8 kernels") && out.contains("cuda sm_90"),
        "{out}"
    );
    let bytes = std::fs::read(&exe).unwrap();
    let needle = b".target sm_90";
    assert!(
        bytes.windows(needle.len()).any(|w| w == needle),
        "no PTX in the executable"
    );
    let info = ok(&Command::new(&exe).arg("--info").output().unwrap());
    assert!(
        info.contains("gpu: cuda sm_90 (8 kernels of PTX)"),
        "{info}"
    );
    let ldd = ok(&Command::new("ldd").arg(&exe).output().unwrap());
    assert!(!ldd.contains("cuda"), "{ldd}");
    let run = Command::new(&exe)
        .arg("--input")
        .arg(format!("x={}", dir.join("input_0.npy").display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("libcuda.so"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}

#[path = "../../../frontends/trace/examples/mnist_cnn.rs"]
mod mnist_cnn_example;

/// A traced model deploys like any other: the MNIST CNN traced with the generated model's
/// weights, exported to ONNX, compiled by `smelt compile`, gives the original's outputs.
#[test]
fn traced_and_exported_mnist_cnn_executable() {
    let dir = smelt_tests::require_data("models").join("mnist_cnn");
    let weights = smelt_trace::onnx_weights(dir.join("model.onnx")).unwrap();
    let work = workdir("traced_mnist_cnn");
    let model = work.join("traced.onnx");
    mnist_cnn_example::mnist_cnn(&weights)
        .unwrap()
        .write_onnx(&model)
        .unwrap();
    exe_of_model_matches_case("mnist_cnn", &model, &work, &[]);
}

#[test]
fn mnist_cnn_executable() {
    exe_matches_onnxruntime("mnist_cnn");
}

#[test]
fn lenet5_executables() {
    exe_matches_onnxruntime("lenet5_b1");
    exe_matches_onnxruntime("lenet5_b4");
}

#[test]
fn mlp_and_logistic_regression_executables() {
    exe_matches_onnxruntime("mlp_784_64_64_1");
    exe_matches_onnxruntime("mlp_784_128_10");
    exe_matches_onnxruntime("logistic_regression");
    exe_matches_onnxruntime("worked_check");
}

#[test]
fn light_resnet50_executable() {
    exe_matches_onnxruntime("light_resnet50");
}

/// Inception v1's local response normalization calls the runtime's `pow` helper.
#[test]
fn light_inception_v1_executable() {
    exe_matches_onnxruntime("light_inception_v1");
}

/// The executable needs nothing of smelt, LLVM or Python: only the C library and friends.
#[test]
fn executables_link_only_system_libraries() {
    let work = workdir("ldd");
    let exe = work.join("lenet5");
    compile(
        &smelt_tests::workspace_root().join("docs/examples/lenet5/model.onnx"),
        &exe,
        &[],
    );
    let ldd = ok(&Command::new("ldd").arg(&exe).output().unwrap());
    for line in ldd.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let lib = line.split_whitespace().next().unwrap();
        let allowed = [
            "linux-vdso",
            "libc.so",
            "libm.so",
            "libgcc_s.so",
            "libpthread.so",
            "libdl.so",
            "librt.so",
            "libutil.so",
            "/lib64/ld-linux",
        ];
        assert!(
            allowed.iter().any(|a| lib.starts_with(a)),
            "unexpected library {lib} in:\n{ldd}"
        );
    }
    let info = ok(&Command::new(&exe).arg("--info").output().unwrap());
    for needle in [
        "inputs:",
        "  x: f32[1, 3, 32, 32]",
        "outputs:",
        "cpu: native",
        "smelt: ",
    ] {
        assert!(
            info.contains(needle),
            "{needle} missing from --info:\n{info}"
        );
    }
    let help = ok(&Command::new(&exe).arg("--help").output().unwrap());
    assert!(help.contains("--output-dir"), "{help}");
    let bench = ok(&Command::new(&exe)
        .args(["--bench", "3", "--json"])
        .output()
        .unwrap());
    let object: serde_json::Value = serde_json::from_str(bench.trim()).expect("valid JSON");
    for field in ["median_ms", "min_ms", "max_ms", "compile_ms"] {
        assert!(object[field].as_f64().is_some(), "{field} missing: {bench}");
    }
    assert_eq!(object["iterations"], 3, "{bench}");
    assert!(object["threads"].as_u64().is_some(), "{bench}");
}

/// Same model, same options: byte-identical executables and libraries.
#[test]
fn rebuilds_are_byte_identical() {
    let model = smelt_tests::workspace_root().join("docs/examples/lenet5/model.onnx");
    let (a, b) = (workdir("repro-a"), workdir("repro-b"));
    for emit in ["exe", "lib", "obj"] {
        let file = match emit {
            "lib" => "liblenet5.a",
            "obj" => "lenet5.o",
            _ => "lenet5",
        };
        compile(&model, &a.join(file), &["--emit", emit]);
        compile(&model, &b.join(file), &["--emit", emit]);
        let (x, y) = (
            std::fs::read(a.join(file)).unwrap(),
            std::fs::read(b.join(file)).unwrap(),
        );
        assert!(x == y, "{emit}: rebuild differs");
    }
    assert_eq!(
        std::fs::read(a.join("lenet5.h")).unwrap(),
        std::fs::read(b.join("lenet5.h")).unwrap()
    );
}

/// The C example builds against `--emit lib` output and prints what the JIT computes.
#[test]
fn c_example_links_the_library_and_prints_the_outputs() {
    let root = smelt_tests::workspace_root();
    let work = workdir("c-example");
    compile(
        &root.join("docs/examples/lenet5/model.onnx"),
        &work.join("liblenet5.a"),
        &["--emit", "lib"],
    );
    let header = std::fs::read_to_string(work.join("lenet5.h")).unwrap();
    assert!(
        header.contains("const struct smelt_model *smelt_lenet5_model(void);"),
        "{header}"
    );
    let exe = work.join("lenet5-c");
    let mut cc = Command::new("cc");
    cc.arg(root.join("docs/examples/c/main.c"))
        .arg("-I")
        .arg(&work)
        .arg(work.join("liblenet5.a"))
        .args(smelt::aot::SYSTEM_LIBS)
        .arg("-o")
        .arg(&exe);
    ok(&cc.output().unwrap());
    let printed = ok(&Command::new(&exe).output().unwrap());
    // The JIT on the same input.
    let model = smelt::Model::load(root.join("docs/examples/lenet5/model.onnx")).unwrap();
    let compiled = model.compile(&smelt::Options::default()).unwrap();
    let x: Vec<f32> = (0..3 * 32 * 32)
        .map(|i| (i % 17) as f32 / 8.0 - 1.0)
        .collect();
    let y = compiled
        .run(&[smelt::Tensor::from_vec(vec![1, 3, 32, 32], x).unwrap()])
        .unwrap();
    let want = y[0].to_vec::<f32>().unwrap();
    for prefix in ["session:", "scratch:"] {
        let line = printed
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} line in:\n{printed}"));
        let got: Vec<f32> = line[prefix.len()..]
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect();
        assert_eq!(got.len(), want.len(), "{line}");
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-5 + 1e-4 * w.abs(),
                "{prefix} {got:?} vs {want:?}"
            );
        }
    }
    assert!(
        printed.contains("error check: smelt_run: null session"),
        "{printed}"
    );
}

fn assert_exit_2(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "not one line: {err:?}");
    assert!(err.contains(needle), "expected '{needle}' in: {err}");
}

#[test]
fn executables_refuse_bad_inputs_and_missing_cpu_features() {
    let root = smelt_tests::workspace_root();
    let model = root.join("docs/examples/lenet5/model.onnx");
    let work = workdir("bad-inputs");
    let exe = work.join("lenet5");
    compile(&model, &exe, &[]);
    let x = root.join("docs/examples/lenet5/x.npy");
    let run = |args: &[String]| Command::new(&exe).args(args).output().unwrap();
    let bad = work.join("bad.npy");
    std::fs::write(&bad, b"not an npy file").unwrap();
    assert_exit_2(
        &run(&["--input".into(), format!("x={}", bad.display())]),
        "input 'x'",
    );
    let wrong = work.join("wrong.npy");
    smelt_runtime::write_npy(
        &wrong,
        &smelt_runtime::HostTensor {
            elem: smelt_runtime::ElemType::F32,
            shape: vec![1, 3, 16, 16],
            bytes: vec![0; 3072],
        },
    )
    .unwrap();
    assert_exit_2(
        &run(&["--input".into(), format!("x={}", wrong.display())]),
        "expects shape [1, 3, 32, 32] but got [1, 3, 16, 16]",
    );
    let ints = work.join("ints.npy");
    smelt_runtime::write_npy(
        &ints,
        &smelt_runtime::HostTensor {
            elem: smelt_runtime::ElemType::I32,
            shape: vec![1, 3, 32, 32],
            bytes: vec![0; 4 * 3072],
        },
    )
    .unwrap();
    assert_exit_2(
        &run(&["--input".into(), format!("x={}", ints.display())]),
        "expects dtype f32, got i32",
    );
    assert_exit_2(&run(&[]), "input 'x': missing");
    assert_exit_2(
        &run(&["--input".into(), format!("y={}", x.display())]),
        "'y': the model has no such input",
    );
    // Every x86-64-v4 feature this machine lacks makes the v4 build refuse to run.
    let lacks_v4 = ["avx512f", "avx512dq", "avx512vl"]
        .iter()
        .any(|f| !smelt_cpu_has(f));
    if lacks_v4 {
        let v4 = work.join("lenet5-v4");
        compile(&model, &v4, &["--cpu", "x86-64-v4"]);
        let out = Command::new(&v4)
            .args(["--input", &format!("x={}", x.display())])
            .output()
            .unwrap();
        assert_exit_2(
            &out,
            "compiled for x86-64-v4 and needs CPU features this CPU lacks",
        );
    }
    // x86-64-v2 code runs on any x86-64-v2 machine and gives the same results.
    let v2 = work.join("lenet5-v2");
    compile(&model, &v2, &["--cpu", "x86-64-v2"]);
    let a = ok(&Command::new(&v2)
        .args(["--input", &format!("x={}", x.display())])
        .output()
        .unwrap());
    let b = ok(&run(&["--input".into(), format!("x={}", x.display())]));
    assert_eq!(a, b);
}

fn smelt_cpu_has(feature: &str) -> bool {
    match feature {
        "avx512f" => std::arch::is_x86_feature_detected!("avx512f"),
        "avx512dq" => std::arch::is_x86_feature_detected!("avx512dq"),
        "avx512vl" => std::arch::is_x86_feature_detected!("avx512vl"),
        _ => false,
    }
}

#[test]
fn compile_errors_are_one_line() {
    let root = smelt_tests::workspace_root();
    let work = workdir("compile-errors");
    let out = smelt(&[
        "compile",
        root.join("docs/examples/lenet5/model.onnx")
            .to_str()
            .unwrap(),
        "-o",
        work.join("x").to_str().unwrap(),
        "--threads",
        "0",
    ]);
    assert_exit_2(&out, "--threads must be at least 1");
    let out = smelt(&[
        "compile",
        "/nonexistent.onnx",
        "-o",
        work.join("x").to_str().unwrap(),
    ]);
    assert_exit_2(&out, "/nonexistent.onnx");
}

/// An executable checks index inputs as the JIT does: an embedding lookup with a token id
/// past the table is an error with status 2, not a clamped read.
#[test]
fn executables_refuse_out_of_range_indices() {
    use smelt_tests::builder::{D, f32_info, f32_tensor, model, node, value_info};
    let work = workdir("indices");
    let table: Vec<f32> = (0..15).map(|i| i as f32).collect();
    // `ids` index the table's rows; each (row, column) pair of `cells` one element, so
    // its bounds alternate between the two axes in the manifest.
    let bytes = model(
        vec![
            node("Gather", "embed", &["table", "ids"], &["y"]),
            node("GatherND", "pick", &["table", "cells"], &["z"]),
        ],
        vec![
            value_info("ids", 7, &[D::N(3)]),
            value_info("cells", 7, &[D::N(2), D::N(2)]),
        ],
        vec![f32_info("y", &[3, 3]), f32_info("z", &[2])],
        vec![f32_tensor("table", &[5, 3], &table)],
    );
    let onnx = work.join("embed.onnx");
    std::fs::write(&onnx, bytes).unwrap();
    let exe = work.join("embed");
    compile(&onnx, &exe, &[]);
    let indices = |name: &str, shape: &[usize], values: &[i64], file: &str| {
        let path = work.join(file);
        let t = smelt_runtime::HostTensor {
            elem: smelt_runtime::ElemType::I64,
            shape: shape.to_vec(),
            bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        };
        smelt_runtime::write_npy(&path, &t).unwrap();
        format!("{name}={}", path.display())
    };
    let out_dir = work.join("out");
    let run = |ids: &[i64], cells: &[i64]| {
        Command::new(&exe)
            .args([
                "--input",
                &indices("ids", &[3], ids, "ids.npy"),
                "--input",
                &indices("cells", &[2, 2], cells, "cells.npy"),
                "--output-dir",
            ])
            .arg(&out_dir)
            .output()
            .unwrap()
    };
    ok(&run(&[0, 4, -1], &[4, 2, -5, -3]));
    assert_exit_2(
        &run(&[0, 5, 1], &[0, 0, 0, 0]),
        "index 5 at position 1 is out of range (allowed: -5 to 4)",
    );
    assert_exit_2(
        &run(&[0, 1, 2], &[4, 3, 0, 0]),
        "index 3 at position 1 is out of range (allowed: -3 to 2)",
    );
}
