//! The error type of `smelt-opt`.

use thiserror::Error;

/// Errors of optimization passes.
#[derive(Debug, Error)]
pub enum OptError {
    #[error("pass '{pass}': {source}")]
    Ir {
        pass: &'static str,
        source: smelt_ir::IrError,
    },
    #[error("unknown pass '{0}' (passes: specialize, identity, fold, cse, egraph, dce)")]
    UnknownPass(String),
    #[error("pass '{pass}': {reason}")]
    Pass { pass: &'static str, reason: String },
}
