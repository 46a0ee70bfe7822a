//! smelt's tracing front end: build a model in Rust by calling tensor methods on symbolic
//! tensors; every call records core ops into the same Graph IR the ONNX importer produces,
//! with the same decompositions (`smelt_ir::Compose`), like `jax.jit` traces a function.
//!
//! ```
//! use smelt_trace::{DType, sym, trace};
//! use ndarray::{Array1, Array2};
//!
//! let w = Array2::<f32>::from_elem((4, 3), 0.5);
//! let b = Array1::<f32>::from_elem(3, 0.1);
//! let traced = trace("dense", |t| {
//!     let x = t.input("x", DType::F32, [sym("N"), 4.into()]);
//!     let y = (x.matmul(t.param("w", &w)) + t.param("b", &b)).relu();
//!     t.output("y", y);
//! })
//! .unwrap();
//! assert_eq!(traced.graph.outputs.len(), 1);
//! let onnx = traced.to_onnx().unwrap(); // an opset-20 ModelProto, encoded
//! assert!(!onnx.is_empty());
//! ```
//!
//! Shape and dtype errors surface when `trace` returns, naming the line that made them:
//! tensor methods and operators never panic; after the first error they record nothing
//! more, and the error is what `trace` gives back.

mod error;
mod tensor;
mod tracer;
mod weights;

mod elementwise;
mod layout;
mod nn;
mod reduction;

pub use error::{Result, TraceError};
pub use nn::ConvOptions;
pub use smelt_ir::{DType, Dim, GeluForm, Graph};
pub use tensor::{Element, IntoShape, Tensor, sym};
pub use tracer::Tracer;
pub use weights::{Weights, onnx_weights, random_weights};

use std::path::Path;

/// A traced function: its graph, ready for `smelt::Model::from_graph` or ONNX export.
#[derive(Debug, Clone)]
pub struct Traced {
    pub graph: Graph,
}

impl Traced {
    /// The graph as an ONNX model (opset [`smelt_onnx::EXPORT_OPSET`]), encoded.
    pub fn to_onnx(&self) -> Result<Vec<u8>> {
        smelt_onnx::export_bytes(&self.graph).map_err(|e| TraceError::Export(e.to_string()))
    }

    /// Writes [`Traced::to_onnx`] to `path`.
    pub fn write_onnx(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        std::fs::write(path, self.to_onnx()?).map_err(|e| TraceError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// The graph's text form (constants abbreviated).
    pub fn text(&self) -> String {
        smelt_ir::text::print_graph(&self.graph, Default::default())
    }
}

/// Traces `f` into a graph named `name`: `f` declares inputs and parameters on the
/// [`Tracer`], computes with [`Tensor`]s and names its results with [`Tracer::output`].
/// Returns the first error any call made, with the caller's file and line.
pub fn trace(name: &str, f: impl FnOnce(&Tracer)) -> Result<Traced> {
    let tracer = Tracer::new(name);
    f(&tracer);
    tracer.finish().map(|graph| Traced { graph })
}
