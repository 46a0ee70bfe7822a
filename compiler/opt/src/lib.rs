//! smelt's graph optimizer: a pass manager with a fixed, documented pipeline over the
//! Graph IR. Each pass also runs alone on a graph (in text form for file-based tests).
//!
//! The pipeline: `specialize` (when shapes are bound) -> `identity` -> `fold` -> `cse`
//! -> `egraph` (egg rewriting, cost-model extraction) -> `fold` -> `cse` -> `dce`.

pub mod egraph;
pub mod error;
pub mod pass;
pub mod passes;

pub use error::OptError;
pub use pass::{Pass, PassOutcome, PassRecord, Pipeline};
