//! The text form of a graph: a readable printout that parses back to the same graph.
//!
//! ```text
//! graph "mlp" (%x: f32[N, 784]) {
//!   %w = constant f32[2] [1.0, 2.0] @"w"
//!   %y = add(%x, %w) : f32[N, 784] @"fc/add"
//!   return %y
//! }
//! ```

mod parse;
mod print;

pub use parse::parse_graph;
pub use print::{PrintOptions, print_graph};
