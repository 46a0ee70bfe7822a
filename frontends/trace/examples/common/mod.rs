//! What the examples' `main`s share: their command-line flags, the weights they trace
//! with, and printing, exporting and running the traced model.

// Each example uses part of this, and the tests that include the examples none of it.
#![allow(dead_code)]

use smelt_trace::{Traced, Weights};

/// The value after `--name` on the command line.
pub fn flag(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// Whether `--name` is on the command line.
pub fn switch(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

/// The f32 initializers of `--weights FILE.onnx`, or `random`'s weights without it.
pub fn weights_or(random: impl FnOnce() -> Weights) -> anyhow::Result<Weights> {
    Ok(match flag("--weights") {
        Some(path) => smelt_trace::onnx_weights(path)?,
        None => random(),
    })
}

/// Prints the traced graph, writes it to `--onnx FILE` when asked, compiles it with the
/// JIT and prints its first output for `input`.
pub fn show_export_and_run(
    traced: Traced,
    input: ndarray::ArrayD<f32>,
    what: &str,
) -> anyhow::Result<()> {
    println!("{}", traced.text());
    if let Some(path) = flag("--onnx") {
        traced.write_onnx(&path)?;
        println!("wrote {path}");
    }
    let compiled = smelt::Model::from_graph(traced.graph)?.compile(&Default::default())?;
    let out = compiled.run(&[input.into()])?;
    println!("{what}: {:?}", ndarray::ArrayD::<f32>::try_from(&out[0])?);
    Ok(())
}
