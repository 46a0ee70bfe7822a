//! The tracing front end against the ONNX importer and onnxruntime: traced classic models
//! (the examples under frontends/trace/examples) optimize to the same graph as their ONNX
//! files, and their ONNX exports run on onnxruntime with the JIT's results.

// Each example declares the examples' shared `common` module, so it is loaded once per example.
#![allow(clippy::duplicate_mod)]

#[path = "../../frontends/trace/examples/lenet5.rs"]
mod lenet5_example;
#[path = "../../frontends/trace/examples/logistic_regression.rs"]
mod logistic_regression_example;
#[path = "../../frontends/trace/examples/mlp.rs"]
mod mlp_example;
#[path = "../../frontends/trace/examples/mnist_cnn.rs"]
mod mnist_cnn_example;

use anyhow::{Context, Result, anyhow, bail};
use smelt::{Model, Options, Stage, to_ir_tensor};
use smelt_ir::text::{PrintOptions, print_graph};
use smelt_ir::{Graph, Op};
use smelt_runtime::HostTensor;
use smelt_tests::compare::compare;
use smelt_tests::{model_case_files, require_data, run_onnxruntime, workspace_root};
use smelt_trace::{DType, GeluForm, Traced, onnx_weights, random_weights, sym, trace};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A classic model traced with the weights of its generated ONNX file.
fn traced_classic(name: &str) -> Result<Traced> {
    let weights = onnx_weights(model_dir(name).join("model.onnx"))?;
    Ok(match name {
        "mlp_784_64_64_1" => mlp_example::mlp(name, &weights, &[784, 64, 64, 1], sym("N"), false)?,
        "mlp_784_128_10" => mlp_example::mlp(name, &weights, &[784, 128, 10], 1usize.into(), true)?,
        "mnist_cnn" => mnist_cnn_example::mnist_cnn(&weights)?,
        "lenet5_b1" => lenet5_example::lenet5(&weights, 1)?,
        "lenet5_b4" => lenet5_example::lenet5(&weights, 4)?,
        "logistic_regression" => logistic_regression_example::logistic_regression(&weights)?,
        other => bail!("no traced version of {other}"),
    })
}

fn model_dir(name: &str) -> PathBuf {
    require_data("models").join(name)
}

/// The optimized graph of a model for no pinned shapes.
fn optimized(model: &Model) -> Result<Graph> {
    Ok(model.explain(Stage::Opt, &HashMap::new())?.graph)
}

#[test]
fn traced_graphs_optimize_to_the_imported_onnx_graphs() -> Result<()> {
    for name in ["mlp_784_64_64_1", "mnist_cnn"] {
        let imported = optimized(&Model::load(model_dir(name).join("model.onnx"))?)?;
        let traced = optimized(&Model::from_graph(traced_classic(name)?.graph)?)?;
        let text = print_graph(&traced, PrintOptions::default());
        assert_eq!(
            print_graph(&imported, PrintOptions::default()),
            text,
            "{name}: the traced graph optimizes differently from the imported one"
        );
        // The text abbreviates big constants: their values must agree bit for bit too.
        let constants = |g: &Graph| -> Vec<smelt_ir::Tensor> {
            g.nodes
                .iter()
                .filter_map(|n| match &n.op {
                    Op::Constant(t) => Some(t.clone()),
                    _ => None,
                })
                .collect()
        };
        let (a, b) = (constants(&imported), constants(&traced));
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(x.bits_eq(y), "{name}: constant {i} differs");
        }
        insta::assert_snapshot!(format!("traced_{name}_optimized"), text);
    }
    Ok(())
}

fn work_dir(name: &str) -> Result<PathBuf> {
    let dir = workspace_root().join("target/tmp/trace-onnx").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Exports `traced`, runs it on onnxruntime and on the JIT (from the traced graph and
/// from the exported file), and checks that all three agree; returns the JIT's outputs.
fn check_against_onnxruntime(
    name: &str,
    traced: &Traced,
    inputs: &[(String, PathBuf)],
) -> Result<Vec<HostTensor>> {
    let dir = work_dir(name)?;
    traced.write_onnx(dir.join("model.onnx"))?;
    let feeds: Vec<(String, HostTensor)> = inputs
        .iter()
        .map(|(n, p)| Ok((n.clone(), smelt_runtime::read_npy(p)?)))
        .collect::<Result<_>>()?;
    let options = Options {
        threads: Some(2),
        ..Default::default()
    };
    let jit = Model::from_graph(traced.graph.clone())?
        .compile(&options)?
        .run_named(&feeds)?;
    let reimported = Model::load(dir.join("model.onnx"))?
        .compile(&options)?
        .run_named(&feeds)?;
    let run = run_onnxruntime(&dir, inputs).map_err(|e| anyhow!(e))?;
    assert!(run.opset >= 17, "exported opset {} is below 17", run.opset);
    let ort = run.outputs;
    assert_eq!(ort.len(), jit.len(), "{name}: output count");
    for (i, ((out_name, j), o)) in jit.iter().zip(&ort).enumerate() {
        let (j, o) = (
            to_ir_tensor(j).map_err(|e| anyhow!(e))?,
            to_ir_tensor(o).map_err(|e| anyhow!(e))?,
        );
        compare(&o, &j, 1e-4, 1e-5)
            .map_err(|e| anyhow!("{name}: output {i} ({out_name}), JIT vs onnxruntime: {e}"))?;
        let r = to_ir_tensor(&reimported[i].1).map_err(|e| anyhow!(e))?;
        compare(&j, &r, 1e-5, 1e-6)
            .map_err(|e| anyhow!("{name}: output {i}, traced vs re-imported export: {e}"))?;
    }
    Ok(jit.into_iter().map(|(_, t)| t).collect())
}

#[test]
fn exported_classic_models_run_on_onnxruntime_like_the_jit() -> Result<()> {
    for name in smelt_tests::CLASSIC_MODELS {
        let dir = model_dir(name);
        let traced = traced_classic(name)?;
        let inputs = model_case_files(&dir, "input");
        let jit =
            check_against_onnxruntime(name, &traced, &inputs).with_context(|| name.to_string())?;
        // And the traced model computes what the original ONNX model does.
        for ((_, expected), actual) in model_case_files(&dir, "output").iter().zip(&jit) {
            let e = to_ir_tensor(&smelt_runtime::read_npy(expected)?).map_err(|e| anyhow!(e))?;
            let a = to_ir_tensor(actual).map_err(|e| anyhow!(e))?;
            compare(&e, &a, 1e-4, 1e-5)
                .map_err(|e| anyhow!("{name}: traced vs the original model: {e}"))?;
        }
    }
    Ok(())
}

/// Deterministic inputs in [-2, 2) (or indices) written as `.npy` files under `dir`.
fn write_inputs(dir: &Path, specs: &[(&str, Vec<usize>, DType)]) -> Result<Vec<(String, PathBuf)>> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    specs
        .iter()
        .map(|(name, shape, dtype)| {
            let n: usize = shape.iter().product();
            let t = match dtype {
                DType::I64 => smelt_ir::Tensor::from_i64(
                    *dtype,
                    shape.clone(),
                    (0..n).map(|i| (i % 3) as i64 - 1).collect(),
                )?,
                _ => smelt_ir::Tensor::from_f64(
                    *dtype,
                    shape.clone(),
                    (0..n).map(|_| next() * 4.0 - 2.0).collect(),
                )?,
            };
            let path = dir.join(format!("{name}.npy"));
            smelt_runtime::write_npy(&path, &smelt::to_host_tensor(&t))?;
            Ok((name.to_string(), path))
        })
        .collect()
}

/// Every tensor method of the tracer in one graph, exported and run on onnxruntime: the
/// tracer's ops and the exporter's ONNX forms must mean what onnxruntime computes.
#[test]
fn every_tracer_op_runs_on_onnxruntime_like_the_jit() -> Result<()> {
    let weights = random_weights(
        &[
            ("w", &[4, 5]),
            ("k", &[3, 2, 3, 3]),
            ("kb", &[3]),
            ("g", &[5]),
            ("beta", &[5]),
        ],
        11,
    );
    let traced = trace("tracer_ops", |t| {
        let a = t.input("a", DType::F32, [sym("B"), 3.into(), 4.into()]);
        let b = t.input("b", DType::F32, [4]);
        let idx = t.input("idx", DType::I64, [2]);
        let img = t.input("img", DType::F32, [1, 2, 6, 6]);
        let w = |n: &str| t.weight(&weights, n);
        let arith = ((a + b) * 0.5 - 1.0 / (a.abs() + 1.0) + (2.0 - b) / 3.0)
            .maximum(-a)
            .minimum(a * 4.0);
        let math = (a.abs() + 1.0).log()
            + a.exp().sqrt().recip()
            + a.tanh() * a.sigmoid()
            + a.erf()
            + a.floor()
            + a.ceil()
            + (a * 3.0).round()
            + a.sign()
            + a.abs().powf(1.5)
            + a.sin()
            + a.cos();
        let acts = a.relu()
            + a.leaky_relu(0.1)
            + a.gelu(GeluForm::Exact)
            + a.gelu(GeluForm::Tanh)
            + a.silu();
        let soft = a.softmax(-1) + a.log_softmax(1) * 0.25;
        // Ties on purpose: floor(a) == ceil(a) - 1 for every non-integer a.
        let (lo, hi) = (a.floor(), a.ceil() - 1.0);
        let ties = lo.le(hi).cast(DType::F32)
            + lo.ge(hi).cast(DType::F32) * 2.0
            + lo.eq(hi).cast(DType::F32) * 4.0
            + lo.lt(hi).cast(DType::F32) * 8.0
            + (!lo.gt(hi)).and(lo.is_nan().or(lo.ge(hi))).cast(DType::F32) * 16.0;
        let chosen = a.gt(b).select(a, b * 2.0) + ties;
        t.output("elementwise", arith + math + acts + soft + chosen);
        let h = a.matmul(w("w"));
        t.output("normed", h.layer_norm(w("g"), Some(w("beta")), 1e-5));
        t.output(
            "reduced",
            h.reduce_sum(&[-1], false)
                + h.reduce_mean(&[1], true).reduce_max(&[2], false)
                + h.reduce_min(&[1, 2], true).squeeze(-1)
                + (h * 0.1).reduce_prod(&[2], false),
        );
        t.output("argmax", h.argmax(-1, false));
        let moved = h
            .transpose(&[0, 2, 1])
            .slice(1, 1, 5, 2)
            .pad(&[(0, 0), (1, 0), (0, 2)], 0.5);
        t.output(
            "moved",
            t.concat(&[moved, moved.gather(idx, 2)], 2)
                .unsqueeze(0)
                .flatten(2),
        );
        t.output(
            "expanded",
            b.unsqueeze(0).expand([3, 4]).reshape(&[2, -1]) - t.scalar(DType::F32, 1.5),
        );
        let conv = img.conv2d(w("k"), Some(w("kb")), 1, 1);
        t.output(
            "pooled",
            conv.max_pool2d(2, 2, 0).avg_pool2d(3, 1, 1) + conv.global_avg_pool(),
        );
        t.output("neg", -(img.avg_pool2d(2, 2, 0)));
    })?;
    let dir = work_dir("tracer_ops_inputs")?;
    let inputs = write_inputs(
        &dir,
        &[
            ("a", vec![2, 3, 4], DType::F32),
            ("b", vec![4], DType::F32),
            ("idx", vec![2], DType::I64),
            ("img", vec![1, 2, 6, 6], DType::F32),
        ],
    )?;
    check_against_onnxruntime("tracer_ops", &traced, &inputs)?;
    Ok(())
}

/// Traced models on the GPU targets: the emulated device always, CUDA where a driver is.
#[cfg(feature = "cuda")]
#[test]
fn traced_models_run_on_the_gpu_targets_like_on_the_cpu() -> Result<()> {
    use smelt::Target;
    let mut targets = vec![Target::GpuEmulator];
    if smelt_runtime::cuda::driver_present() {
        targets.push(Target::Cuda);
    }
    for name in ["mlp_784_64_64_1", "mnist_cnn", "lenet5_b4"] {
        let model = Model::from_graph(traced_classic(name)?.graph)?;
        let feeds: Vec<(String, HostTensor)> = model_case_files(&model_dir(name), "input")
            .iter()
            .map(|(n, p)| Ok((n.clone(), smelt_runtime::read_npy(p)?)))
            .collect::<Result<_>>()?;
        let cpu = model
            .compile(&Options {
                threads: Some(2),
                ..Default::default()
            })?
            .run_named(&feeds)?;
        for &target in &targets {
            let gpu = model
                .compile(&Options {
                    target,
                    ..Default::default()
                })?
                .run_named(&feeds)?;
            for ((_, c), (_, g)) in cpu.iter().zip(&gpu) {
                let (c, g) = (
                    to_ir_tensor(c).map_err(|e| anyhow!(e))?,
                    to_ir_tensor(g).map_err(|e| anyhow!(e))?,
                );
                compare(&c, &g, 1e-4, 1e-5)
                    .map_err(|e| anyhow!("{name} on {}: {e}", target.name()))?;
            }
        }
    }
    Ok(())
}
