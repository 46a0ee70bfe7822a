//! Parameters by name for traced models: read from an ONNX file's initializers (to trace
//! a model with the weights it was trained with) or drawn deterministically (to try one).

use crate::error::{Result, TraceError};
use crate::tensor::Tensor;
use crate::tracer::Tracer;
use ndarray::{ArrayD, IxDyn};
use std::collections::BTreeMap;
use std::path::Path;

/// f32 parameters by name.
pub type Weights = BTreeMap<String, ArrayD<f32>>;

/// The f32 initializers of the ONNX model at `path` (external data resolved next to it).
/// Initializers of other types (shape vectors, index tables) are structure, not weights,
/// and are left out.
pub fn onnx_weights(path: impl AsRef<Path>) -> Result<Weights> {
    let model = smelt_onnx::OnnxModel::load(path.as_ref())
        .map_err(|e| TraceError::Weights(e.to_string()))?;
    let graph = model
        .proto
        .graph
        .as_ref()
        .ok_or_else(|| TraceError::Weights("the model has no graph".into()))?;
    let mut weights = Weights::new();
    for t in &graph.initializer {
        let tensor = smelt_onnx::tensor::tensor_from_proto(t, model.base_dir.as_deref())
            .map_err(|e| TraceError::Weights(e.to_string()))?;
        if let smelt_ir::Data::F32(values) = tensor.data() {
            let array = ArrayD::from_shape_vec(IxDyn(tensor.shape()), values.clone())
                .map_err(|e| TraceError::Weights(e.to_string()))?;
            weights.insert(t.name.clone().unwrap_or_default(), array);
        }
    }
    Ok(weights)
}

/// Deterministic pseudo-random weights of the given shapes, scaled by `1/sqrt(fan_in)`
/// (the product of all dims but the first, or the first for a 2-D `[in, out]` matrix):
/// the same `seed` always gives the same values.
pub fn random_weights(shapes: &[(&str, &[usize])], seed: u64) -> Weights {
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        // SplitMix64, mapped to [-1, 1).
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    };
    shapes
        .iter()
        .map(|&(name, shape)| {
            let fan_in = match shape {
                [rows, _] => *rows,
                [_, rest @ ..] => rest.iter().product(),
                [] => 1,
            };
            let scale = 1.0 / (fan_in.max(1) as f64).sqrt();
            let values = (0..shape.iter().product::<usize>())
                .map(|_| (next() * scale) as f32)
                .collect();
            let array = ArrayD::from_shape_vec(IxDyn(shape), values)
                .expect("length is the product of the shape");
            (name.to_string(), array)
        })
        .collect()
}

impl Tracer {
    /// The parameter `name` from `weights` (an error at the caller's line when missing).
    #[track_caller]
    pub fn weight<'t>(&'t self, weights: &Weights, name: &str) -> Tensor<'t> {
        match weights.get(name) {
            Some(array) => self.param(name, array),
            None => self.fail(
                "weight",
                format!("no weight named '{name}' ({} weights given)", weights.len()),
            ),
        }
    }
}
