//! Indexing ONNX ops: gathers, scatters, OneHot, Trilu, Compress.

use super::{Handler, one};
use crate::error::Result;
use crate::import::{Ctx, Node};
use smelt_ir::Compose as _;
use smelt_ir::op::{BinaryOp, ScatterReduction};
use smelt_ir::{DType, Dim, Op, Tensor, ValueId};

pub(super) const OPS: &[(&str, Handler)] = &[
    ("Gather", gather),
    ("GatherElements", gather_elements),
    ("GatherND", gather_nd),
    ("ScatterElements", scatter_elements),
    ("Scatter", scatter_elements),
    ("ScatterND", scatter_nd),
    ("OneHot", one_hot),
    ("Trilu", trilu),
    ("Compress", compress),
];

fn gather(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let axis = cx.axis(n.int("axis", 0)?, cx.rank(x))?;
    one(cx.op(Op::Gather { axis }, &[x, n.input(1)?])?)
}

fn gather_elements(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let axis = cx.axis(n.int("axis", 0)?, cx.rank(x))?;
    one(cx.op(Op::GatherElements { axis }, &[x, n.input(1)?])?)
}

fn gather_nd(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let batch_dims = n.int("batch_dims", 0)?;
    let batch_dims =
        usize::try_from(batch_dims).map_err(|_| n.err("batch_dims must be non-negative"))?;
    one(cx.op(Op::GatherNd { batch_dims }, &[n.input(0)?, n.input(1)?])?)
}

fn reduction(n: &Node) -> Result<ScatterReduction> {
    let r = n.string("reduction", "none")?;
    ScatterReduction::from_name(&r).ok_or_else(|| n.err(format!("unknown reduction '{r}'")))
}

fn scatter_elements(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let axis = cx.axis(n.int("axis", 0)?, cx.rank(x))?;
    let reduction = reduction(n)?;
    one(cx.op(
        Op::ScatterElements { axis, reduction },
        &[x, n.input(1)?, n.input(2)?],
    )?)
}

fn scatter_nd(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let reduction = reduction(n)?;
    one(cx.op(
        Op::ScatterNd { reduction },
        &[n.input(0)?, n.input(1)?, n.input(2)?],
    )?)
}

/// `values[1]` where `indices == iota` along the new axis, else `values[0]`.
fn one_hot(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let indices = n.input(0)?;
    let depth = cx.require_const(n.input(1)?, "depth")?.to_f64();
    let depth = *depth.first().ok_or_else(|| n.err("depth is empty"))? as i64;
    if depth <= 0 {
        return Err(n.err(format!("depth must be positive, got {depth}")));
    }
    super::check_constant(n, &[depth as usize], DType::I64)?;
    let values = n.input(2)?;
    let rank = cx.rank(indices) + 1;
    let axis = cx.axis(n.int("axis", -1)?, rank)?;
    let idx = cx.cast(indices, DType::I64)?;
    // Negative indices count from the end: i + depth where i < 0.
    let zero = cx.scalar(DType::I64, 0.0);
    let neg = cx.binary(BinaryOp::Less, idx, zero)?;
    let shifted = cx.binary_scalar(BinaryOp::Add, idx, depth as f64)?;
    let idx = cx.op(Op::Select, &[neg, shifted, idx])?;
    let mut shape: Vec<Dim> = cx.ty(idx).shape.clone();
    shape.insert(axis, Dim::Fixed(1));
    let idx = cx.reshape(idx, shape)?;
    let mut iota_shape = vec![1usize; rank];
    iota_shape[axis] = depth as usize;
    let iota = Tensor::from_i64(DType::I64, iota_shape, (0..depth).collect())
        .map_err(|e| n.err(e.to_string()))?;
    let iota = cx.constant(iota);
    let hit = cx.binary(BinaryOp::Equal, idx, iota)?;
    let off = layout_slice(cx, values, 0)?;
    let on = layout_slice(cx, values, 1)?;
    one(cx.op(Op::Select, &[hit, on, off])?)
}

/// Element `i` of a 1-D tensor as a scalar.
fn layout_slice(cx: &mut Ctx, v: ValueId, i: i64) -> Result<ValueId> {
    let s = cx.op(
        Op::Slice {
            starts: vec![i],
            ends: vec![i + 1],
            steps: vec![1],
        },
        &[v],
    )?;
    cx.reshape(s, vec![])
}

fn trilu(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let shape = cx.fixed_shape(x)?;
    if shape.len() < 2 {
        return Err(n.err(format!("input must have rank >= 2, got {shape:?}")));
    }
    let k = match n.opt_input(1) {
        Some(k) => *cx
            .require_ints(k, "k")?
            .first()
            .ok_or_else(|| n.err("k is empty"))?,
        None => 0,
    };
    let upper = n.int("upper", 1)? != 0;
    let (rows, cols) = (shape[shape.len() - 2], shape[shape.len() - 1]);
    super::check_constant(n, &[rows, cols], DType::Bool)?;
    let mask: Vec<bool> = (0..rows * cols)
        .map(|i| {
            let d = (i % cols) as i64 - (i / cols) as i64;
            if upper { d >= k } else { d <= k }
        })
        .collect();
    let mask =
        cx.constant(Tensor::from_bool(vec![rows, cols], mask).map_err(|e| n.err(e.to_string()))?);
    let zero = cx.scalar_like(x, 0.0);
    one(cx.op(Op::Select, &[mask, x, zero])?)
}

/// Compress with a condition known at import time is a gather of the selected indices.
fn compress(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let mut x = n.input(0)?;
    let cond = cx.require_const(n.input(1)?, "condition")?.to_bool();
    let axis = match n.opt_int("axis")? {
        Some(a) => cx.axis(a, cx.rank(x))?,
        None => {
            let count: usize = cx.fixed_shape(x)?.iter().product();
            x = cx.reshape_fixed(x, &[count])?;
            0
        }
    };
    let len = cx.fixed_shape(x)?[axis];
    let picked: Vec<i64> = cond
        .iter()
        .take(len)
        .enumerate()
        .filter(|(_, c)| **c)
        .map(|(i, _)| i as i64)
        .collect();
    let idx = Tensor::from_i64(DType::I64, vec![picked.len()], picked)
        .map_err(|e| n.err(e.to_string()))?;
    let idx = cx.constant(idx);
    one(cx.op(Op::Gather { axis }, &[x, idx])?)
}
