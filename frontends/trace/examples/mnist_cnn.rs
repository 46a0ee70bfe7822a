//! The MNIST CNN traced from Rust: two 3x3 convolutions with ReLU and 2x2 max pooling,
//! then two dense layers and a softmax over the ten digits.
//!
//! `cargo run -p smelt-trace --example mnist_cnn -- [--weights model.onnx] [--onnx out.onnx]`

mod common;

use smelt_trace::{DType, Traced, Weights, random_weights, trace};

/// `probs: [1, 10]` for an image `x: [1, 1, 28, 28]`.
pub fn mnist_cnn(weights: &Weights) -> smelt_trace::Result<Traced> {
    trace("mnist_cnn", |t| {
        let w = |name: &str| t.weight(weights, name);
        let x = t.input("x", DType::F32, [1, 1, 28, 28]);
        let h = x
            .conv2d(w("conv1_w"), Some(w("conv1_b")), 1, 0)
            .relu()
            .max_pool2d(2, 2, 0);
        let h = h
            .conv2d(w("conv2_w"), Some(w("conv2_b")), 1, 0)
            .relu()
            .max_pool2d(2, 2, 0);
        let h = (h.flatten(1).matmul(w("fc1_w")) + w("fc1_b")).relu();
        let logits = h.matmul(w("fc2_w")) + w("fc2_b");
        t.output("probs", logits.softmax(-1));
    })
}

/// The shapes of `mnist_cnn`'s weights.
pub const MNIST_CNN_SHAPES: &[(&str, &[usize])] = &[
    ("conv1_w", &[32, 1, 3, 3]),
    ("conv1_b", &[32]),
    ("conv2_w", &[64, 32, 3, 3]),
    ("conv2_b", &[64]),
    ("fc1_w", &[1600, 128]),
    ("fc1_b", &[128]),
    ("fc2_w", &[128, 10]),
    ("fc2_b", &[10]),
];

#[allow(dead_code)]
fn main() -> anyhow::Result<()> {
    let weights = common::weights_or(|| random_weights(MNIST_CNN_SHAPES, 7))?;
    // A bright vertical bar on a dark background.
    let x = ndarray::ArrayD::<f32>::from_shape_fn(ndarray::IxDyn(&[1, 1, 28, 28]), |i| {
        if (12..16).contains(&i[3]) { 1.0 } else { 0.0 }
    });
    common::show_export_and_run(mnist_cnn(&weights)?, x, "digit probabilities")
}
