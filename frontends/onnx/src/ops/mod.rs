//! ONNX op handlers, one file per op family; each maps ONNX nodes onto core ops.

mod activation;
mod attention;
mod contraction;
mod elementwise;
mod generator;
mod indexing;
mod layout;
mod loss;
mod normalization;
mod pooling;
mod quantization;
mod recurrent;
mod reduction;
mod resize;
mod signal;

use crate::error::Result;
use crate::import::{Ctx, Node};
use smelt_ir::ValueId;

/// Maps one ONNX node to core ops, returning a value per ONNX output.
pub type Handler = fn(&mut Ctx, &Node) -> Result<Vec<ValueId>>;

const FAMILIES: &[&[(&str, Handler)]] = &[
    elementwise::OPS,
    activation::OPS,
    contraction::OPS,
    generator::OPS,
    indexing::OPS,
    layout::OPS,
    normalization::OPS,
    pooling::OPS,
    quantization::OPS,
    recurrent::OPS,
    reduction::OPS,
    resize::OPS,
    loss::OPS,
    signal::OPS,
    attention::OPS,
];

/// The handler of a default-domain ONNX op type.
pub fn handler(op_type: &str) -> Option<Handler> {
    FAMILIES
        .iter()
        .flat_map(|f| f.iter())
        .find(|(name, _)| *name == op_type)
        .map(|(_, h)| *h)
}

/// Every ONNX op type the importer handles, sorted.
pub fn supported_ops() -> Vec<&'static str> {
    let mut v: Vec<&str> = FAMILIES
        .iter()
        .flat_map(|f| f.iter())
        .map(|(n, _)| *n)
        .collect();
    v.sort_unstable();
    v
}

fn one(v: ValueId) -> Result<Vec<ValueId>> {
    Ok(vec![v])
}

/// Checks a constant the handler is about to compute against the memory limit, before
/// its values are allocated (its shape comes from other values' dims or from attributes).
fn check_constant(n: &Node, shape: &[usize], dtype: smelt_ir::DType) -> Result<()> {
    smelt_ir::limits::value_bytes(shape, dtype)
        .map(drop)
        .map_err(|e| n.err(e))
}
