//! Normalization ONNX ops decomposed into reductions and elementwise ops.

use super::{Handler, one};
use crate::error::Result;
use crate::import::{Ctx, Node};
use smelt_ir::Compose as _;
use smelt_ir::op::{BinaryOp, PoolKind, ReduceKind, UnaryOp};
use smelt_ir::{Op, ValueId};

pub(super) const OPS: &[(&str, Handler)] = &[
    ("BatchNormalization", batch_norm),
    ("InstanceNormalization", instance_norm),
    ("LayerNormalization", layer_norm),
    ("GroupNormalization", group_norm),
    ("LRN", lrn),
    ("LpNormalization", lp_norm),
    ("MeanVarianceNormalization", mvn),
    ("RMSNormalization", rms_norm),
];

/// `y = x * scale / sqrt(var + eps) + (bias - mean * scale / sqrt(var + eps))`.
fn batch_norm(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    // Before opset 7, `is_test = 0` meant training (batch statistics).
    if n.int("training_mode", 0)? != 0 || (n.opset < 7 && n.int("is_test", 0)? == 0) {
        return Err(n.err("training_mode is not supported (smelt compiles inference graphs)"));
    }
    let (scale, bias, mean, var) = (n.input(1)?, n.input(2)?, n.input(3)?, n.input(4)?);
    let eps = n.float("epsilon", 1e-5)? as f64;
    let rank = cx.rank(x);
    let ve = cx.binary_scalar(BinaryOp::Add, var, eps)?;
    let sd = cx.unary(UnaryOp::Sqrt, ve)?;
    let k = cx.binary(BinaryOp::Div, scale, sd)?;
    let mk = cx.binary(BinaryOp::Mul, mean, k)?;
    let shift = cx.binary(BinaryOp::Sub, bias, mk)?;
    let k = cx.per_channel(k, rank)?;
    let shift = cx.per_channel(shift, rank)?;
    let xk = cx.binary(BinaryOp::Mul, x, k)?;
    let y = cx.binary(BinaryOp::Add, xk, shift)?;
    // Outputs beyond Y (running statistics) exist only in training mode.
    let mut outs = vec![y];
    if n.num_outputs > 1 {
        outs.extend([mean, var]);
    }
    Ok(outs)
}

fn instance_norm(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let rank = cx.rank(x);
    if rank < 3 {
        return Err(n.err(format!("input must have rank >= 3, got {}", cx.ty(x))));
    }
    let (y, _, _) = cx.normalize(x, (2..rank).collect(), n.float("epsilon", 1e-5)? as f64)?;
    let s = cx.per_channel(n.input(1)?, rank)?;
    let b = cx.per_channel(n.input(2)?, rank)?;
    let ys = cx.binary(BinaryOp::Mul, y, s)?;
    one(cx.binary(BinaryOp::Add, ys, b)?)
}

fn layer_norm(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let axis = cx.axis(n.int("axis", -1)?, cx.rank(x))?;
    // stash_type 1 computes the statistics in f32 whatever the input type.
    let stash_f32 = n.int("stash_type", 1)? == 1;
    let eps = n.float("epsilon", 1e-5)? as f64;
    let (y, mean, inv) = cx.layer_norm(x, axis, n.input(1)?, n.opt_input(2), eps, stash_f32)?;
    Ok(vec![y, mean, inv])
}

fn group_norm(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let xs = cx.fixed_shape(x)?;
    let groups = n
        .opt_int("num_groups")?
        .ok_or_else(|| n.err("num_groups is required"))? as usize;
    if xs.len() < 3 || groups == 0 || xs[1] % groups != 0 {
        return Err(n.err(format!(
            "channels of {xs:?} must divide into {groups} groups"
        )));
    }
    let (nb, c) = (xs[0], xs[1]);
    let rest: usize = xs[2..].iter().product();
    let grouped = cx.reshape_fixed(x, &[nb, groups, (c / groups) * rest])?;
    let (y, _, _) = cx.normalize(grouped, vec![2], n.float("epsilon", 1e-5)? as f64)?;
    let (scale, bias) = (n.input(1)?, n.input(2)?);
    let per_group = cx.fixed_shape(scale)? == [groups] && groups != c;
    let y = if per_group {
        let s = cx.reshape_fixed(scale, &[1, groups, 1])?;
        let b = cx.reshape_fixed(bias, &[1, groups, 1])?;
        let ys = cx.binary(BinaryOp::Mul, y, s)?;
        let yb = cx.binary(BinaryOp::Add, ys, b)?;
        cx.reshape_fixed(yb, &xs)?
    } else {
        let y = cx.reshape_fixed(y, &xs)?;
        let s = cx.per_channel(scale, xs.len())?;
        let b = cx.per_channel(bias, xs.len())?;
        let ys = cx.binary(BinaryOp::Mul, y, s)?;
        cx.binary(BinaryOp::Add, ys, b)?
    };
    one(y)
}

/// Local response normalization across channels: the sum of squares over a
/// channel window is an average pool (padding counted) over a `[N, 1, C, H*W]` view.
fn lrn(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let xs = cx.fixed_shape(x)?;
    let size = n
        .opt_int("size")?
        .ok_or_else(|| n.err("size is required"))?;
    if xs.len() < 3 || size <= 0 {
        return Err(n.err(format!(
            "needs input of rank >= 3 and a positive size, got {xs:?} and {size}"
        )));
    }
    let size = size as usize;
    let (alpha, beta, bias) = (
        n.float("alpha", 1e-4)? as f64,
        n.float("beta", 0.75)? as f64,
        n.float("bias", 1.0)? as f64,
    );
    let rest: usize = xs[2..].iter().product();
    let sq = cx.binary(BinaryOp::Mul, x, x)?;
    let view = cx.reshape_fixed(sq, &[xs[0], 1, xs[1], rest])?;
    // The window reaches no further than the channels: a size past 2C - 1 sums the same
    // channels, so the pool's window (and padding) is cut to them; the average is over
    // the cut window, hence the factor below.
    let reach = xs[1].saturating_sub(1);
    let (before, after) = ((size - 1) / 2, size - 1 - (size - 1) / 2);
    let (before, after) = (before.min(reach), after.min(reach));
    let window = before + after + 1;
    let avg = cx.op(
        Op::Pool {
            kind: PoolKind::AvgIncludePad,
            kernel: vec![window, 1],
            strides: vec![1, 1],
            pads: vec![before, 0, after, 0],
            dilations: vec![1, 1],
        },
        &[view],
    )?;
    let avg = cx.reshape_fixed(avg, &xs)?;
    // alpha / size * sum = alpha * window / size * average over the window.
    let scaled = cx.binary_scalar(BinaryOp::Mul, avg, alpha * window as f64 / size as f64)?;
    let base = cx.binary_scalar(BinaryOp::Add, scaled, bias)?;
    let denom = cx.binary_scalar(BinaryOp::Pow, base, beta)?;
    one(cx.binary(BinaryOp::Div, x, denom)?)
}

fn lp_norm(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let axis = cx.axis(n.int("axis", -1)?, cx.rank(x))?;
    let norm = match n.int("p", 2)? {
        1 => {
            let a = cx.unary(UnaryOp::Abs, x)?;
            cx.reduce(ReduceKind::Sum, a, vec![axis], true)?
        }
        2 => {
            let sq = cx.binary(BinaryOp::Mul, x, x)?;
            let s = cx.reduce(ReduceKind::Sum, sq, vec![axis], true)?;
            cx.unary(UnaryOp::Sqrt, s)?
        }
        p => return Err(n.err(format!("p must be 1 or 2, got {p}"))),
    };
    // A zero norm gives zeros, not NaN.
    let zero = cx.scalar_like(norm, 0.0);
    let is_zero = cx.binary(BinaryOp::Equal, norm, zero)?;
    let q = cx.binary(BinaryOp::Div, x, norm)?;
    one(cx.op(Op::Select, &[is_zero, zero, q])?)
}

/// `x / sqrt(mean(x^2 over axis..) + eps) * scale`, the statistics in f32 for stash_type 1.
fn rms_norm(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let rank = cx.rank(x);
    let axis = cx.axis(n.int("axis", -1)?, rank)?;
    let orig = cx.dtype(x);
    let xc = if n.int("stash_type", 1)? == 1 && orig != smelt_ir::DType::F64 {
        cx.cast(x, smelt_ir::DType::F32)?
    } else {
        x
    };
    let sq = cx.binary(BinaryOp::Mul, xc, xc)?;
    let ms = cx.reduce(ReduceKind::Mean, sq, (axis..rank).collect(), true)?;
    let mse = cx.binary_scalar(BinaryOp::Add, ms, n.float("epsilon", 1e-5)? as f64)?;
    let rms = cx.unary(UnaryOp::Sqrt, mse)?;
    let y = cx.binary(BinaryOp::Div, xc, rms)?;
    let y = cx.cast(y, orig)?;
    one(cx.binary(BinaryOp::Mul, y, n.input(1)?)?)
}

fn mvn(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let rank = cx.rank(x);
    let axes = n.ints("axes")?.unwrap_or_else(|| vec![0, 2, 3]);
    let axes = axes
        .iter()
        .map(|&a| cx.axis(a, rank))
        .collect::<Result<Vec<_>>>()?;
    let mean = cx.reduce(ReduceKind::Mean, x, axes.clone(), true)?;
    let d = cx.binary(BinaryOp::Sub, x, mean)?;
    let d2 = cx.binary(BinaryOp::Mul, d, d)?;
    let var = cx.reduce(ReduceKind::Mean, d2, axes, true)?;
    let sd = cx.unary(UnaryOp::Sqrt, var)?;
    let sde = cx.binary_scalar(BinaryOp::Add, sd, 1e-9)?;
    one(cx.binary(BinaryOp::Div, d, sde)?)
}
