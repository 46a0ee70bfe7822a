//! smelt's Graph IR: dtypes, dims and shapes, the core op set, the SSA graph with its
//! verifier and shape inference, a parseable text form, and the reference interpreter.
//!
//! This crate knows nothing of ONNX, egg, Cranelift or LLVM.

pub mod compose;
pub mod dtype;
pub mod error;
pub mod graph;
pub mod infer;
pub mod interp;
pub mod limits;
pub mod op;
pub mod resize;
pub mod shape;
pub mod tensor;
pub mod text;

pub use compose::{Compose, GeluForm};
pub use dtype::DType;
pub use error::{IrError, Result};
pub use graph::{Graph, Node, Value, ValueId};
pub use infer::slice_bounds;
pub use op::{
    ArgKind, BinaryOp, CoordMode, NearestMode, Op, PadMode, PoolKind, ReduceKind, ResizeMode,
    ScatterReduction, UnaryOp,
};
pub use resize::{ResizeAxis, Sampling, Taps};
pub use shape::{Dim, Shape, TensorType};
pub use tensor::{Data, Tensor};
