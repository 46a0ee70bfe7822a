//! The error type of `smelt-trace`: what went wrong while tracing, and where in the caller's code.

use thiserror::Error;

/// Errors of tracing and exporting. Op errors carry the caller's source location: the line
/// that called the tensor method or operator, found with `#[track_caller]`.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum TraceError {
    /// An op was given operands or arguments it cannot take (shapes, dtypes, axes, names).
    #[error("{file}:{line}:{column}: {op}: {reason}")]
    Op {
        file: String,
        line: u32,
        column: u32,
        op: String,
        reason: String,
    },
    /// The traced function produced no output.
    #[error("trace '{0}' has no outputs: call `Tracer::output`")]
    NoOutputs(String),
    /// The recorded graph broke an invariant of the Graph IR (a bug of the tracer).
    #[error(transparent)]
    Graph(#[from] smelt_ir::IrError),
    /// The graph could not be written as ONNX.
    #[error("ONNX export: {0}")]
    Export(String),
    /// Weights could not be read.
    #[error("weights: {0}")]
    Weights(String),
    #[error("cannot write '{path}': {reason}")]
    Io { path: String, reason: String },
}

/// Result with [`TraceError`].
pub type Result<T, E = TraceError> = std::result::Result<T, E>;
