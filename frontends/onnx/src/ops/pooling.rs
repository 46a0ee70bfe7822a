//! Pooling ONNX ops: MaxPool, AveragePool, LpPool and their global forms.

use super::contraction::{resolve_pads, window_attr};
use super::{Handler, one};
use crate::error::Result;
use crate::import::{Ctx, Node};
use smelt_ir::Compose as _;
use smelt_ir::op::{BinaryOp, PoolKind, ReduceKind, UnaryOp};
use smelt_ir::{Op, ValueId};

pub(super) const OPS: &[(&str, Handler)] = &[
    ("MaxPool", pool),
    ("AveragePool", pool),
    ("LpPool", pool),
    ("GlobalAveragePool", global_pool),
    ("GlobalMaxPool", global_pool),
    ("GlobalLpPool", global_pool),
];

fn pool(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let xs = cx.fixed_shape(x)?;
    let kernel_attr = n
        .ints("kernel_shape")?
        .ok_or_else(|| n.err("kernel_shape is required"))?;
    let kernel: Vec<usize> = kernel_attr
        .iter()
        .map(|&k| {
            usize::try_from(k)
                .map_err(|_| n.err(format!("kernel_shape {kernel_attr:?} has a negative size")))
        })
        .collect::<Result<_>>()?;
    let s = kernel.len();
    if s == 0 || xs.len() != s + 2 || kernel.contains(&0) {
        return Err(n.err(format!("kernel {kernel:?} does not fit input {xs:?}")));
    }
    if n.num_outputs > 1 {
        return Err(n.err("the Indices output of MaxPool is not supported"));
    }
    let strides = window_attr(n, "strides", s)?;
    let dilations = window_attr(n, "dilations", s)?;
    let mut pads = resolve_pads(n, &xs[2..], &kernel, &strides, &dilations)?;
    if n.int("ceil_mode", 0)? != 0 {
        // Extra end padding so that the floor formula yields the ceil size; the last
        // window must still start inside the input or its begin padding.
        for d in 0..s {
            let sizes = dilations[d]
                .checked_mul(kernel[d] - 1)
                .and_then(|v| v.checked_add(1))
                .zip(
                    xs[2 + d]
                        .checked_add(pads[d])
                        .and_then(|v| v.checked_add(pads[s + d])),
                );
            let (span, padded) =
                sizes.ok_or_else(|| n.err(format!("the window along axis {d} overflows")))?;
            if padded < span {
                continue;
            }
            let mut out = (padded - span).div_ceil(strides[d]) + 1;
            if (out - 1) * strides[d] >= xs[2 + d] + pads[d] {
                out -= 1;
            }
            let need = (out - 1) * strides[d] + span;
            pads[s + d] += need.saturating_sub(padded);
        }
    }
    let kind = match n.op_type.as_str() {
        "MaxPool" => PoolKind::Max,
        "AveragePool" if n.int("count_include_pad", 0)? != 0 => PoolKind::AvgIncludePad,
        "AveragePool" => PoolKind::Avg,
        _ => {
            let p = n.int("p", 2)? as f64;
            let a = cx.unary(UnaryOp::Abs, x)?;
            let ap = cx.binary_scalar(BinaryOp::Pow, a, p)?;
            let count = kernel
                .iter()
                .try_fold(1usize, |acc, &k| acc.checked_mul(k))
                .ok_or_else(|| n.err(format!("kernel {kernel:?} has too many elements")))?;
            let avg = cx.op(
                Op::Pool {
                    kind: PoolKind::AvgIncludePad,
                    kernel,
                    strides,
                    pads,
                    dilations,
                },
                &[ap],
            )?;
            let sum = cx.binary_scalar(BinaryOp::Mul, avg, count as f64)?;
            return one(cx.binary_scalar(BinaryOp::Pow, sum, 1.0 / p)?);
        }
    };
    one(cx.op(
        Op::Pool {
            kind,
            kernel,
            strides,
            pads,
            dilations,
        },
        &[x],
    )?)
}

fn global_pool(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let rank = cx.rank(x);
    if rank < 3 {
        return Err(n.err(format!("input must have rank >= 3, got {}", cx.ty(x))));
    }
    let axes: Vec<usize> = (2..rank).collect();
    one(match n.op_type.as_str() {
        "GlobalAveragePool" => cx.reduce(ReduceKind::Mean, x, axes, true)?,
        "GlobalMaxPool" => cx.reduce(ReduceKind::Max, x, axes, true)?,
        _ => {
            let p = n.int("p", 2)? as f64;
            let a = cx.unary(UnaryOp::Abs, x)?;
            let ap = cx.binary_scalar(BinaryOp::Pow, a, p)?;
            let s = cx.reduce(ReduceKind::Sum, ap, axes, true)?;
            cx.binary_scalar(BinaryOp::Pow, s, 1.0 / p)?
        }
    })
}
