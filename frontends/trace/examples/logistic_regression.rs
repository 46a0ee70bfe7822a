//! Logistic regression traced from Rust: `sigmoid(x @ w + b)` over ten features.
//!
//! `cargo run -p smelt-trace --example logistic_regression -- [--weights model.onnx] [--onnx out.onnx]`

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
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    let weights = match flag("--weights") {
        Some(path) => smelt_trace::onnx_weights(path)?,
        None => random_weights(&[("fc1_w", &[10, 1]), ("fc1_b", &[1])], 7),
    };
    let traced = logistic_regression(&weights)?;
    println!("{}", traced.text());
    if let Some(path) = flag("--onnx") {
        traced.write_onnx(path)?;
        println!("wrote {path}");
    }
    let compiled = smelt::Model::from_graph(traced.graph)?.compile(&Default::default())?;
    let x = ndarray::ArrayD::<f32>::from_shape_fn(ndarray::IxDyn(&[1, 10]), |i| i[1] as f32 / 10.0);
    let out = compiled.run(&[x.into()])?;
    println!(
        "probability: {:?}",
        ndarray::ArrayD::<f32>::try_from(&out[0])?
    );
    Ok(())
}
