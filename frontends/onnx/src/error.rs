//! The error type of `smelt-onnx`.

use thiserror::Error;

/// One node whose op the importer cannot handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsupportedOp {
    pub op_type: String,
    pub domain: String,
    pub node: String,
    pub opset: i64,
}

impl std::fmt::Display for UnsupportedOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let domain = if self.domain.is_empty() {
            String::new()
        } else {
            format!("{}.", self.domain)
        };
        write!(
            f,
            "{domain}{} (node '{}', opset {})",
            self.op_type, self.node, self.opset
        )
    }
}

/// Errors of decoding and importing ONNX models; each names the node, op and reason where there is one.
#[derive(Debug, Error)]
pub enum OnnxError {
    #[error("cannot read '{path}': {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("not a valid ONNX model: {0}")]
    Decode(String),
    #[error("invalid model: {0}")]
    Model(String),
    #[error("unsupported ops: {}", .0.iter().map(|u| u.to_string()).collect::<Vec<_>>().join(", "))]
    Unsupported(Vec<UnsupportedOp>),
    #[error("node '{node}' ({op}): {reason}")]
    Node {
        node: String,
        op: String,
        reason: String,
    },
    #[error("tensor '{name}': {reason}")]
    Tensor { name: String, reason: String },
    #[error("input '{name}': {reason}")]
    Input { name: String, reason: String },
    #[error(transparent)]
    Ir(#[from] smelt_ir::IrError),
}

pub type Result<T, E = OnnxError> = std::result::Result<T, E>;
