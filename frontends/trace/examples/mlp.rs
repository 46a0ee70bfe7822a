//! Multilayer perceptrons traced from Rust: the brief's MLP 784-64-64-1 (ReLU, a sigmoid
//! score, batch size symbolic) and MLP 784-128-10 (a softmax over ten classes).
//!
//! `cargo run -p smelt-trace --example mlp -- [--weights model.onnx] [--onnx out.onnx] [--wide]`

mod common;

use smelt_trace::{DType, Traced, Weights, random_weights, sym, trace};

/// `sizes[0] -> sizes[1] -> ...` dense layers named `fc1`, `fc2`, ... (weights `fcK_w` of
/// shape `[in, out]` and biases `fcK_b`), ReLU between them and `final_softmax` choosing
/// softmax or sigmoid at the end; the input `x: [batch, sizes[0]]`, the output `aK` for
/// the last layer `K`.
pub fn mlp(
    name: &str,
    weights: &Weights,
    sizes: &[usize],
    batch: smelt_trace::Dim,
    final_softmax: bool,
) -> smelt_trace::Result<Traced> {
    trace(name, |t| {
        let mut h = t.input("x", DType::F32, [batch, sizes[0].into()]);
        let layers = sizes.len() - 1;
        for k in 1..=layers {
            let z = h.matmul(t.weight(weights, &format!("fc{k}_w")))
                + t.weight(weights, &format!("fc{k}_b"));
            h = match (k == layers, final_softmax) {
                (false, _) => z.relu(),
                (true, true) => z.softmax(-1),
                (true, false) => z.sigmoid(),
            };
        }
        t.output(&format!("a{layers}"), h);
    })
}

/// Random weights for `mlp` with these layer sizes.
pub fn mlp_random_weights(sizes: &[usize], seed: u64) -> Weights {
    let names: Vec<(String, Vec<usize>)> = (1..sizes.len())
        .flat_map(|k| {
            [
                (format!("fc{k}_w"), vec![sizes[k - 1], sizes[k]]),
                (format!("fc{k}_b"), vec![sizes[k]]),
            ]
        })
        .collect();
    let shapes: Vec<(&str, &[usize])> = names
        .iter()
        .map(|(n, s)| (n.as_str(), s.as_slice()))
        .collect();
    random_weights(&shapes, seed)
}

#[allow(dead_code)]
fn main() -> anyhow::Result<()> {
    let wide = common::switch("--wide");
    let (name, sizes, batch, softmax) = if wide {
        ("mlp_784_128_10", vec![784, 128, 10], 1usize.into(), true)
    } else {
        ("mlp_784_64_64_1", vec![784, 64, 64, 1], sym("N"), false)
    };
    let weights = common::weights_or(|| mlp_random_weights(&sizes, 7))?;
    let rows = if wide { 1 } else { 2 };
    let x = ndarray::ArrayD::<f32>::from_shape_fn(ndarray::IxDyn(&[rows, 784]), |i| {
        ((i[0] + i[1]) % 7) as f32 / 3.0 - 1.0
    });
    common::show_export_and_run(mlp(name, &weights, &sizes, batch, softmax)?, x, "output")
}
