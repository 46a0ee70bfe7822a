//! The error type of `smelt-ir`: every failure of verification, inference, parsing or evaluation.

use thiserror::Error;

/// Errors raised by the IR: each names the node (or text position) and the reason.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum IrError {
    /// An op was given operands it cannot accept (shape, dtype, arity or attribute).
    #[error("node '{node}' ({op}): {reason}")]
    Invalid {
        node: String,
        op: String,
        reason: String,
    },
    /// The graph as a whole breaks an invariant (undefined value, duplicate name, ...).
    #[error("graph '{graph}': {reason}")]
    Graph { graph: String, reason: String },
    /// The text form could not be parsed.
    #[error("parse error at line {line}, column {column}: {reason}")]
    Parse {
        line: usize,
        column: usize,
        reason: String,
    },
    /// Evaluation was asked to do something it cannot (missing input, bad value at run time).
    #[error("evaluation failed: {0}")]
    Eval(String),
}

impl IrError {
    /// A shortcut for [`IrError::Invalid`] used by inference and the interpreter.
    pub fn invalid(
        node: impl Into<String>,
        op: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        IrError::Invalid {
            node: node.into(),
            op: op.into(),
            reason: reason.into(),
        }
    }
}

/// Result with [`IrError`].
pub type Result<T, E = IrError> = std::result::Result<T, E>;
