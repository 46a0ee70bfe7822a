//! A traced graph runs with the JIT: docs/tracing.md's first model, compiled for two batch
//! sizes of its symbolic dim, against the same arithmetic done with ndarray.

use ndarray::{Array1, Array2, ArrayD, Axis, IxDyn};
use smelt_trace::{DType, sym, trace};

#[test]
fn the_guides_first_model_runs_for_any_batch_size() -> anyhow::Result<()> {
    let w = Array2::<f32>::from_shape_fn((784, 10), |(i, j)| {
        ((i * 7 + j * 3) % 11) as f32 / 110.0 - 0.05
    });
    let b = Array1::<f32>::from_shape_fn(10, |j| j as f32 / 10.0);
    let traced = trace("classifier", |t| {
        let x = t.input("x", DType::F32, [sym("N"), 784.into()]);
        let logits = x.matmul(t.param("w", &w)) + t.param("b", &b);
        t.output("probs", logits.softmax(-1));
    })?;
    let compiled = smelt::Model::from_graph(traced.graph.clone())?.compile(&smelt::Options {
        threads: Some(2),
        ..Default::default()
    })?;
    for batch in [1, 4] {
        let x = ArrayD::<f32>::from_shape_fn(IxDyn(&[batch, 784]), |i| {
            ((i[0] + i[1]) % 13) as f32 / 13.0
        });
        let probs = ArrayD::<f32>::try_from(&compiled.run(&[x.clone().into()])?[0])?;
        let x2 = x.into_dimensionality::<ndarray::Ix2>()?;
        let logits = x2.dot(&w) + &b;
        for (row, got) in logits.axis_iter(Axis(0)).zip(probs.axis_iter(Axis(0))) {
            let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let sum: f32 = row.iter().map(|v| (v - max).exp()).sum();
            for (l, p) in row.iter().zip(got.iter()) {
                let want = (l - max).exp() / sum;
                assert!(
                    (want - p).abs() <= 1e-5 + 1e-4 * want.abs(),
                    "batch {batch}: {p} vs {want}"
                );
            }
        }
    }
    // A batch size the fixed dims contradict is an input error, not a panic.
    let wrong = ArrayD::<f32>::zeros(IxDyn(&[2, 100]));
    let err = compiled.run(&[wrong.into()]).unwrap_err().to_string();
    assert!(err.contains("expects shape [N, 784]"), "{err}");
    Ok(())
}
