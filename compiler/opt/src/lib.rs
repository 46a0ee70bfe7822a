//! smelt's graph optimizer: a pass manager with a fixed, documented pipeline over the
//! Graph IR. Each pass also runs alone on a graph (in text form for file-based tests).
//!
//! The pipeline today: `specialize` (when shapes are bound) -> `identity` -> `fold` ->
//! `cse` -> `dce`. The e-graph stage (egg rewriting with a cost model) joins it next.

pub mod error;
pub mod pass;
pub mod passes;

pub use error::OptError;
pub use pass::{Pass, PassRecord, Pipeline};
