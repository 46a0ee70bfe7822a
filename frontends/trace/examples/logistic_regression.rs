//! Logistic regression traced from Rust: `sigmoid(x @ w + b)` over ten features.
//!
//! `cargo run -p smelt-trace --example logistic_regression -- [--weights model.onnx] [--onnx out.onnx]`

mod common;

use smelt_trace::{DType, Traced, Weights, random_weights, trace};

/// `a1 = sigmoid(x @ fc1_w + fc1_b)` for `x: [1, 10]`.
pub fn logistic_regression(weights: &Weights) -> smelt_trace::Result<Traced> {
    trace("logistic_regression", |t| {
        let x = t.input("x", DType::F32, [1, 10]);
        let z = x.matmul(t.weight(weights, "fc1_w")) + t.weight(weights, "fc1_b");
        t.output("a1", z.sigmoid());
    })
}

#[allow(dead_code)]
fn main() -> anyhow::Result<()> {
    let weights =
        common::weights_or(|| random_weights(&[("fc1_w", &[10, 1]), ("fc1_b", &[1])], 7))?;
    let x = ndarray::ArrayD::<f32>::from_shape_fn(ndarray::IxDyn(&[1, 10]), |i| i[1] as f32 / 10.0);
    common::show_export_and_run(logistic_regression(&weights)?, x, "probability")
}
