//! Reduction ONNX ops: the Reduce family, ArgMax/ArgMin, CumSum, TopK.

use super::{Handler, one};
use crate::error::Result;
use crate::import::{Ctx, Node};
use smelt_ir::Compose as _;
use smelt_ir::op::{ArgKind, BinaryOp, ReduceKind, UnaryOp};
use smelt_ir::{Op, ValueId};

pub(super) const OPS: &[(&str, Handler)] = &[
    ("ReduceSum", reduce),
    ("ReduceMean", reduce),
    ("ReduceMax", reduce),
    ("ReduceMin", reduce),
    ("ReduceProd", reduce),
    ("ReduceL1", reduce),
    ("ReduceL2", reduce),
    ("ReduceLogSum", reduce),
    ("ReduceLogSumExp", reduce),
    ("ReduceSumSquare", reduce),
    ("ArgMax", arg_reduce),
    ("ArgMin", arg_reduce),
    ("CumSum", cumsum),
    ("TopK", topk),
];

fn reduce(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let rank = cx.rank(x);
    // ReduceSum takes axes as an input from opset 13, the others from opset 18.
    let axes_from_input = if n.op_type == "ReduceSum" {
        n.opset >= 13
    } else {
        n.opset >= 18
    };
    let axes = if axes_from_input {
        match n.opt_input(1) {
            Some(a) => Some(cx.require_ints(a, "axes")?),
            None => None,
        }
    } else {
        n.ints("axes")?
    };
    let keep = n.int("keepdims", 1)? != 0;
    let noop = n.int("noop_with_empty_axes", 0)? != 0;
    let axes = match axes {
        Some(a) if !a.is_empty() => {
            let mut v = a
                .iter()
                .map(|&a| cx.axis(a, rank))
                .collect::<Result<Vec<_>>>()?;
            v.sort_unstable();
            v.dedup();
            v
        }
        _ if noop => return one(x),
        _ => (0..rank).collect(),
    };
    let sum = |cx: &mut Ctx, v: ValueId| cx.reduce(ReduceKind::Sum, v, axes.clone(), keep);
    let y = match n.op_type.as_str() {
        "ReduceSum" => sum(cx, x)?,
        "ReduceMean" => cx.reduce(ReduceKind::Mean, x, axes.clone(), keep)?,
        "ReduceMax" => cx.reduce(ReduceKind::Max, x, axes.clone(), keep)?,
        "ReduceMin" => cx.reduce(ReduceKind::Min, x, axes.clone(), keep)?,
        "ReduceProd" => cx.reduce(ReduceKind::Prod, x, axes.clone(), keep)?,
        "ReduceL1" => {
            let a = cx.unary(UnaryOp::Abs, x)?;
            sum(cx, a)?
        }
        "ReduceL2" => {
            let sq = cx.binary(BinaryOp::Mul, x, x)?;
            let s = sum(cx, sq)?;
            if cx.dtype(s).is_float() {
                cx.unary(UnaryOp::Sqrt, s)?
            } else {
                let f = cx.cast(s, smelt_ir::DType::F64)?;
                let r = cx.unary(UnaryOp::Sqrt, f)?;
                cx.cast(r, cx.dtype(x))?
            }
        }
        "ReduceLogSum" => {
            let s = sum(cx, x)?;
            cx.unary(UnaryOp::Log, s)?
        }
        "ReduceLogSumExp" => {
            // log(sum(exp(x - max))) + max: no overflow for large inputs.
            let m = cx.reduce(ReduceKind::Max, x, axes.clone(), true)?;
            let shifted = cx.binary(BinaryOp::Sub, x, m)?;
            let e = cx.unary(UnaryOp::Exp, shifted)?;
            let s = cx.reduce(ReduceKind::Sum, e, axes.clone(), true)?;
            let l = cx.unary(UnaryOp::Log, s)?;
            let y = cx.binary(BinaryOp::Add, l, m)?;
            if keep {
                y
            } else {
                let shape: Vec<smelt_ir::Dim> = cx
                    .ty(x)
                    .shape
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !axes.contains(i))
                    .map(|(_, d)| d.clone())
                    .collect();
                cx.reshape(y, shape)?
            }
        }
        _ => {
            let sq = cx.binary(BinaryOp::Mul, x, x)?;
            sum(cx, sq)?
        }
    };
    one(y)
}

fn arg_reduce(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let axis = cx.axis(n.int("axis", 0)?, cx.rank(x))?;
    let kind = if n.op_type == "ArgMax" {
        ArgKind::Max
    } else {
        ArgKind::Min
    };
    let keep_dims = n.int("keepdims", 1)? != 0;
    let select_last = n.int("select_last_index", 0)? != 0;
    one(cx.op(
        Op::ArgReduce {
            kind,
            axis,
            keep_dims,
            select_last,
        },
        &[x],
    )?)
}

fn cumsum(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let a = cx.require_ints(n.input(1)?, "axis")?;
    let axis = cx.axis(
        *a.first().ok_or_else(|| n.err("axis is empty"))?,
        cx.rank(x),
    )?;
    let exclusive = n.int("exclusive", 0)? != 0;
    let reverse = n.int("reverse", 0)? != 0;
    one(cx.op(
        Op::CumSum {
            axis,
            exclusive,
            reverse,
        },
        &[x],
    )?)
}

fn topk(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let axis = cx.axis(n.int("axis", -1)?, cx.rank(x))?;
    let k = if n.opset < 10 {
        n.opt_int("k")?.ok_or_else(|| n.err("k is required"))?
    } else {
        *cx.require_ints(n.input(1)?, "k")?
            .first()
            .ok_or_else(|| n.err("k is empty"))?
    };
    let k = usize::try_from(k).map_err(|_| n.err(format!("k must be non-negative, got {k}")))?;
    let largest = n.int("largest", 1)? != 0;
    if n.int("sorted", 1)? == 0 {
        // Unsorted order is implementation-defined; sorted output is a valid answer.
    }
    cx.op_n(Op::TopK { axis, k, largest }, &[x])
}
