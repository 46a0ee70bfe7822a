//! LeNet-5 traced from Rust, for 3x32x32 images: two 5x5 convolutions with ReLU and 2x2
//! max pooling, then three dense layers giving ten logits. The batch size is a parameter.
//!
//! `cargo run -p smelt-trace --example lenet5 -- [--weights model.onnx] [--onnx out.onnx] [--batch N]`

mod common;

use smelt_trace::{DType, Traced, Weights, random_weights, trace};

/// `fc3_y: [batch, 10]` logits for images `x: [batch, 3, 32, 32]`.
pub fn lenet5(weights: &Weights, batch: usize) -> smelt_trace::Result<Traced> {
    trace(&format!("lenet5_b{batch}"), |t| {
        let w = |name: &str| t.weight(weights, name);
        let x = t.input("x", DType::F32, [batch, 3, 32, 32]);
        let h = x
            .conv2d(w("conv1_w"), Some(w("conv1_b")), 1, 0)
            .relu()
            .max_pool2d(2, 2, 0);
        let h = h
            .conv2d(w("conv2_w"), Some(w("conv2_b")), 1, 0)
            .relu()
            .max_pool2d(2, 2, 0);
        let h = h.reshape(&[-1, 400]);
        let h = (h.matmul(w("fc1_w")) + w("fc1_b")).relu();
        let h = (h.matmul(w("fc2_w")) + w("fc2_b")).relu();
        t.output("fc3_y", h.matmul(w("fc3_w")) + w("fc3_b"));
    })
}

/// The shapes of `lenet5`'s weights.
pub const LENET5_SHAPES: &[(&str, &[usize])] = &[
    ("conv1_w", &[6, 3, 5, 5]),
    ("conv1_b", &[6]),
    ("conv2_w", &[16, 6, 5, 5]),
    ("conv2_b", &[16]),
    ("fc1_w", &[400, 120]),
    ("fc1_b", &[120]),
    ("fc2_w", &[120, 84]),
    ("fc2_b", &[84]),
    ("fc3_w", &[84, 10]),
    ("fc3_b", &[10]),
];

#[allow(dead_code)]
fn main() -> anyhow::Result<()> {
    let batch: usize = common::flag("--batch").map_or(Ok(1), |b| b.parse())?;
    let weights = common::weights_or(|| random_weights(LENET5_SHAPES, 7))?;
    let x = ndarray::ArrayD::<f32>::from_shape_fn(ndarray::IxDyn(&[batch, 3, 32, 32]), |i| {
        ((i[0] + i[1] * 3 + i[2] + i[3]) % 5) as f32 / 5.0
    });
    common::show_export_and_run(lenet5(&weights, batch)?, x, "logits")
}
