//! Loss ONNX ops: NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss, as gathers,
//! masks and reductions.

use super::Handler;
use crate::error::Result;
use crate::import::{Ctx, Node};
use smelt_ir::Compose as _;
use smelt_ir::op::{BinaryOp, ReduceKind};
use smelt_ir::{DType, Dim, Op, ValueId};

pub(super) const OPS: &[(&str, Handler)] = &[
    ("NegativeLogLikelihoodLoss", nll),
    ("SoftmaxCrossEntropyLoss", softmax_cross_entropy),
];

/// `-input[n, target[n, ...], ...] * weight[target]`, reduced; ignored targets weigh 0.
fn nll_of(
    cx: &mut Ctx,
    n: &Node,
    input: ValueId,
    target: ValueId,
    weight: Option<ValueId>,
) -> Result<ValueId> {
    let shape = cx.fixed_shape(input)?;
    if shape.len() < 2 {
        return Err(n.err(format!("input must be [N, C, ...], got {shape:?}")));
    }
    if cx.rank(target) + 1 != shape.len() {
        return Err(n.err(format!(
            "target {} must have the input's shape {shape:?} without the class axis",
            cx.ty(target)
        )));
    }
    let reduction = n.string("reduction", "mean")?;
    let t = cx.cast(target, DType::I64)?;
    let (t, mask) = match n.opt_int("ignore_index")? {
        Some(ii) => {
            let ii = cx.scalar(DType::I64, ii as f64);
            let ignored = cx.binary(BinaryOp::Equal, t, ii)?;
            let zero = cx.scalar(DType::I64, 0.0);
            let safe = cx.op(Op::Select, &[ignored, zero, t])?;
            let one = cx.scalar_like(input, 1.0);
            let zero_f = cx.scalar_like(input, 0.0);
            (safe, Some(cx.op(Op::Select, &[ignored, zero_f, one])?))
        }
        None => (t, None),
    };
    let mut idx_shape: Vec<Dim> = cx.ty(t).shape.clone();
    idx_shape.insert(1, Dim::Fixed(1));
    let idx = cx.reshape(t, idx_shape)?;
    let picked = cx.op(Op::GatherElements { axis: 1 }, &[input, idx])?;
    let squeezed: Vec<Dim> = cx.ty(t).shape.clone();
    let picked = cx.reshape(picked, squeezed)?;
    let zero = cx.scalar_like(input, 0.0);
    let mut loss = cx.binary(BinaryOp::Sub, zero, picked)?;
    let mut w = match weight {
        Some(wt) => Some(cx.op(Op::Gather { axis: 0 }, &[wt, t])?),
        None => None,
    };
    if let Some(m) = mask {
        w = Some(match w {
            Some(w) => cx.binary(BinaryOp::Mul, w, m)?,
            None => cx.op(
                Op::Expand {
                    shape: cx.ty(t).shape.clone(),
                },
                &[m],
            )?,
        });
    }
    if let Some(w) = w {
        loss = cx.binary(BinaryOp::Mul, loss, w)?;
    }
    let all: Vec<usize> = (0..cx.rank(loss)).collect();
    match reduction.as_str() {
        "none" => Ok(loss),
        "sum" => cx.reduce(ReduceKind::Sum, loss, all, false),
        "mean" => match w {
            Some(w) => {
                let s = cx.reduce(ReduceKind::Sum, loss, all.clone(), false)?;
                let ws = cx.reduce(ReduceKind::Sum, w, all, false)?;
                cx.binary(BinaryOp::Div, s, ws)
            }
            None => cx.reduce(ReduceKind::Mean, loss, all, false),
        },
        other => Err(n.err(format!("unknown reduction '{other}'"))),
    }
}

fn nll(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    Ok(vec![nll_of(
        cx,
        n,
        n.input(0)?,
        n.input(1)?,
        n.opt_input(2),
    )?])
}

fn softmax_cross_entropy(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let scores = n.input(0)?;
    let m = cx.reduce(ReduceKind::Max, scores, vec![1], true)?;
    let shifted = cx.binary(BinaryOp::Sub, scores, m)?;
    let e = cx.unary(smelt_ir::op::UnaryOp::Exp, shifted)?;
    let s = cx.reduce(ReduceKind::Sum, e, vec![1], true)?;
    let ls = cx.unary(smelt_ir::op::UnaryOp::Log, s)?;
    let log_prob = cx.binary(BinaryOp::Sub, shifted, ls)?;
    let loss = nll_of(cx, n, log_prob, n.input(1)?, n.opt_input(2))?;
    Ok(vec![loss, log_prob])
}
