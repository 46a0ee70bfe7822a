//! End to end: the classic models and the nine ONNX `light` models through
//! `smelt run` (compiled code, and the reference interpreter for some), compared with
//! onnxruntime's outputs; `explain` and `bench` on real models.

use smelt::to_ir_tensor;
use smelt_runtime::read_npy;
use smelt_tests::compare::compare;
use std::path::Path;
use std::process::Command;

const RTOL: f64 = 1e-4;
const ATOL: f64 = 1e-5;

fn run_model_case(name: &str) {
    run_model_case_with(name, &[]);
}

fn run_model_case_with(name: &str, extra: &[&str]) {
    let dir = smelt_tests::require_data("models").join(name);
    let io = std::fs::read_to_string(dir.join("io.tsv")).expect("io.tsv");
    let out_dir = tempdir(&format!("{name}{}", extra.join("")));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_smelt"));
    cmd.arg("run")
        .arg(dir.join("model.onnx"))
        .arg("--output-dir")
        .arg(&out_dir)
        .args(extra);
    let mut expected = Vec::new();
    for line in io.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        match f.as_slice() {
            ["input", n, file] => {
                cmd.arg("--input")
                    .arg(format!("{n}={}", dir.join(file).display()));
            }
            ["output", n, file] => expected.push((n.to_string(), dir.join(file))),
            _ => panic!("bad io.tsv line '{line}'"),
        }
    }
    let out = cmd.output().expect("smelt runs");
    assert!(
        out.status.success(),
        "smelt run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!expected.is_empty());
    for (output, file) in expected {
        let want = to_ir_tensor(&read_npy(&file).unwrap()).unwrap();
        let got_path = out_dir.join(smelt_runtime::output_file_name(&output));
        let got = to_ir_tensor(&read_npy(&got_path).unwrap_or_else(|e| panic!("{e}"))).unwrap();
        compare(&want, &got, RTOL, ATOL).unwrap_or_else(|e| panic!("{name}, output {output}: {e}"));
        assert!(
            stdout.contains(&format!("{output}: ")),
            "no summary line for {output} in:\n{stdout}"
        );
    }
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("models-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

macro_rules! model_tests {
    ($($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            run_model_case(stringify!($name));
        }
    )*};
}

model_tests!(
    mlp_784_64_64_1,
    mlp_784_128_10,
    mnist_cnn,
    lenet5_b1,
    lenet5_b4,
    logistic_regression,
    text_classifier,
    worked_check,
    light_bvlc_alexnet,
    light_densenet121,
    light_inception_v1,
    light_inception_v2,
    light_resnet50,
    light_shufflenet,
    light_squeezenet,
    light_vgg19,
    light_zfnet512,
);

/// The reference interpreter stays available behind `--reference`, and so do thread counts.
#[test]
fn reference_and_single_thread_runs_match_onnxruntime() {
    for name in ["mnist_cnn", "lenet5_b4", "worked_check"] {
        run_model_case_with(name, &["--reference"]);
        run_model_case_with(name, &["--threads", "1"]);
    }
}

/// `smelt explain --stage kernel` on the MNIST CNN: Conv + bias + ReLU are one contraction
/// (the ReLU folded into its stores, no epilogue left), and the softmax is at most two
/// kernels.
#[test]
fn explain_kernel_shows_conv_epilogues_and_one_softmax_kernel() {
    let model = smelt_tests::require_data("models").join("mnist_cnn/model.onnx");
    let text = explain(&model, &["--stage", "kernel"]);
    let kernels: Vec<&str> = text.split("kernel ").skip(1).collect();
    let conv_epilogues = kernels
        .iter()
        .filter(|k| {
            k.contains("= conv(")
                && k.contains(", bias p")
                && k.contains(" relu\n")
                && !k.contains("epilogue:")
        })
        .count();
    assert_eq!(conv_epilogues, 2, "{text}");
    let softmax = kernels.iter().filter(|k| k.contains(" = exp ")).count();
    assert!((1..=2).contains(&softmax), "{text}");
    let clif = explain(&model, &["--stage", "clif"]);
    assert!(
        clif.contains("function %k5_matmul(i64, i64, i64)"),
        "{clif}"
    );
}

/// `smelt bench --json` prints one object with the documented fields.
#[test]
fn bench_prints_json_figures() {
    let dir = smelt_tests::require_data("models").join("lenet5_b1");
    let out = Command::new(env!("CARGO_BIN_EXE_smelt"))
        .arg("bench")
        .arg(dir.join("model.onnx"))
        .args([
            "--threads",
            "2",
            "--iterations",
            "5",
            "--warmup",
            "1",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.trim();
    assert!(
        line.starts_with('{') && line.ends_with('}') && !line.contains('\n'),
        "{text}"
    );
    for field in [
        "median_ms",
        "min_ms",
        "max_ms",
        "iterations",
        "threads",
        "compile_ms",
    ] {
        assert!(
            line.contains(&format!("\"{field}\": ")),
            "{field} missing: {line}"
        );
    }
    assert!(
        line.contains("\"threads\": 2") && line.contains("\"iterations\": 5"),
        "{line}"
    );
    let profile = Command::new(env!("CARGO_BIN_EXE_smelt"))
        .arg("bench")
        .arg(dir.join("model.onnx"))
        .args(["--iterations", "3", "--profile"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&profile.stdout);
    assert!(
        text.contains("profile (mean ms per run") && text.contains(" conv "),
        "{text}"
    );
}

/// The brief's worked check: sigmoid(Wᵀx + b) with x = [1, 2], W = [[1, 2], [3, 4]], b = [1, 2] is sigmoid([8, 12]).
#[test]
fn worked_check_is_sigmoid_of_8_and_12() {
    let dir = smelt_tests::require_data("models").join("worked_check");
    let out_dir = tempdir("worked-check-exact");
    let y = run_single(&dir, "x", "y", &out_dir.join("y.npy"), &[]).to_f64();
    let sig = |z: f64| 1.0 / (1.0 + (-z).exp());
    assert_eq!(y.len(), 2);
    assert!(
        (y[0] - sig(8.0)).abs() < 1e-7 && (y[1] - sig(12.0)).abs() < 1e-7,
        "{y:?}"
    );
}

/// `smelt explain` on the light ResNet-50: BatchNormalization's scales are folded into
/// the Conv weights, nothing of ConstantOfShape is left, and the e-graph reports.
#[test]
fn explain_resnet50_folds_batchnorm_into_conv() {
    let model = smelt_tests::require_data("models").join("light_resnet50/model.onnx");
    let text = explain(&model, &[]);
    let graph: Vec<&str> = text.lines().take_while(|l| !l.starts_with('#')).collect();
    let count = |op: &str| {
        graph
            .iter()
            .filter(|l| l.contains(&format!(" = {op}(")) || l.contains(&format!(" = {op}<")))
            .count()
    };
    assert_eq!(count("conv"), 53);
    assert_eq!(
        count("mul"),
        0,
        "a BatchNormalization scale is left:\n{}",
        graph.join("\n")
    );
    assert_eq!(count("sqrt"), 0);
    // What adds remain are the 16 residual connections: every BatchNormalization shift
    // became a Conv bias epilogue.
    assert_eq!(
        count("add"),
        16,
        "a BatchNormalization shift is left:\n{}",
        graph.join("\n")
    );
    assert!(
        !text.to_lowercase().contains("constant_of_shape") && !text.contains("ConstantOfShape")
    );
    for needle in [
        "#     stop reason: ",
        "#     rule conv-scale-into-weights: 53",
        "#     rule conv-bias-epilogue: 53",
        "#     e-graph: ",
        "#     estimated cost: ",
        "#   mul: 106 -> 0",
    ] {
        assert!(
            text.contains(needle),
            "missing '{needle}' in the summary:\n{}",
            text.lines()
                .filter(|l| l.starts_with('#'))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    // The import stage still shows the decomposed BatchNormalization.
    let text = explain(&model, &["--stage", "import"]);
    assert_eq!(text.lines().filter(|l| l.contains(" = mul(")).count(), 106);
}

/// `--no-opt` runs the graph as imported and gives the same outputs.
#[test]
fn no_opt_runs_the_imported_graph_with_the_same_results() {
    let dir = smelt_tests::require_data("models").join("mnist_cnn");
    let run = |extra: &[&str], out: &Path| run_single(&dir, "x", "probs", out, extra);
    let d = tempdir("no-opt");
    let optimized = run(&[], &d.join("a.npy"));
    let plain = run(&["--no-opt"], &d.join("b.npy"));
    compare(&plain, &optimized, 1e-5, 1e-6).unwrap();
}

/// `explain --input-shape` binds the symbolic batch dim of the MLP.
#[test]
fn explain_binds_symbolic_dims_from_input_shapes() {
    let model = smelt_tests::require_data("models").join("mlp_784_64_64_1/model.onnx");
    let show = |extra: &[&str]| {
        explain(&model, extra)
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(
        show(&[]),
        "graph main_graph (%x: f32[N, 784]) {".replace("main_graph", &graph_name(&model))
    );
    assert_eq!(
        show(&["--input-shape", "x=3,784"]),
        "graph main_graph (%x: f32[3, 784]) {".replace("main_graph", &graph_name(&model))
    );
}

fn graph_name(model: &Path) -> String {
    smelt::Model::load(model).unwrap().info().graph_name
}

/// `smelt explain --stage fuse` on ResNet-50: one kernel per conv (with its epilogue)
/// and a memory plan far below the sum of the intermediates.
#[test]
fn explain_fuse_plans_kernels_and_memory() {
    let model = smelt_tests::require_data("models").join("light_resnet50/model.onnx");
    let text = explain(&model, &["--stage", "fuse"]);
    let contractions = text
        .lines()
        .filter(|l| l.starts_with("group ") && l.contains("(contraction): conv"))
        .count();
    assert_eq!(contractions, 53, "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("# memory plan: "))
        .expect("a memory plan line");
    let numbers: Vec<usize> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    let (arena, total) = (numbers[1], numbers[2]);
    assert!(arena * 2 < total, "no reuse: {line}");
}

/// `smelt explain MODEL ARGS...`, asserting success; returns stdout.
fn explain(model: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_smelt"))
        .arg("explain")
        .arg(model)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `smelt run` on a generated model case with one input (`input_0.npy`), writing output
/// `output` to `out`; asserts success and returns the output.
fn run_single(
    dir: &Path,
    input: &str,
    output: &str,
    out: &Path,
    extra: &[&str],
) -> smelt_ir::Tensor {
    let status = Command::new(env!("CARGO_BIN_EXE_smelt"))
        .arg("run")
        .arg(dir.join("model.onnx"))
        .arg("--input")
        .arg(format!("{input}={}", dir.join("input_0.npy").display()))
        .arg("--output")
        .arg(format!("{output}={}", out.display()))
        .args(extra)
        .status()
        .unwrap();
    assert!(status.success());
    to_ir_tensor(&read_npy(out).unwrap()).unwrap()
}
