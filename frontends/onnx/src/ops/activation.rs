//! Activation ONNX ops, decomposed into elementwise core ops, and the softmax family.

use super::{Handler, one};
use crate::error::Result;
use crate::import::{Ctx, Node};
use smelt_ir::Compose as _;
use smelt_ir::op::{ArgKind, BinaryOp, UnaryOp};
use smelt_ir::{DType, GeluForm, Op, Tensor, ValueId};

pub(super) const OPS: &[(&str, Handler)] = &[
    ("Relu", relu),
    ("LeakyRelu", leaky_relu),
    ("PRelu", prelu),
    ("Elu", elu),
    ("Selu", selu),
    ("Celu", celu),
    ("HardSigmoid", hard_sigmoid),
    ("HardSwish", hard_swish),
    ("Softplus", softplus),
    ("Softsign", softsign),
    ("Gelu", gelu),
    ("Mish", mish),
    ("ThresholdedRelu", thresholded_relu),
    ("Shrink", shrink),
    ("Swish", swish),
    ("Softmax", softmax),
    ("LogSoftmax", softmax),
    ("Hardmax", hardmax),
];

fn relu(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    one(cx.relu(n.input(0)?)?)
}

/// `x < 0 ? neg : x`.
fn where_negative(cx: &mut Ctx, x: ValueId, neg: ValueId) -> Result<ValueId> {
    let zero = cx.scalar_like(x, 0.0);
    let is_neg = cx.binary(BinaryOp::Less, x, zero)?;
    cx.op(Op::Select, &[is_neg, neg, x])
}

fn leaky_relu(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let scaled = cx.binary_scalar(BinaryOp::Mul, x, n.float("alpha", 0.01)? as f64)?;
    one(where_negative(cx, x, scaled)?)
}

fn prelu(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let mut slope = n.input(1)?;
    // Before opset 7 a 1-D slope of C values applies per channel (axis 1).
    let xs = cx.ty(x).shape.clone();
    if n.opset < 7
        && cx.rank(slope) == 1
        && xs.len() > 2
        && cx.ty(slope).shape[0] == xs[1]
        && !xs[1].is_one()
    {
        let mut shape = vec![smelt_ir::Dim::Fixed(1); xs.len() - 1];
        shape[0] = xs[1].clone();
        slope = cx.reshape(slope, shape)?;
    }
    let scaled = cx.binary(BinaryOp::Mul, x, slope)?;
    one(where_negative(cx, x, scaled)?)
}

/// `alpha * (exp(x) - 1)`.
fn exp_minus_one(cx: &mut Ctx, x: ValueId, alpha: f64) -> Result<ValueId> {
    let e = cx.unary(UnaryOp::Exp, x)?;
    let em1 = cx.binary_scalar(BinaryOp::Sub, e, 1.0)?;
    cx.binary_scalar(BinaryOp::Mul, em1, alpha)
}

fn elu(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let neg = exp_minus_one(cx, x, n.float("alpha", 1.0)? as f64)?;
    one(where_negative(cx, x, neg)?)
}

fn selu(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let alpha = n.float("alpha", 1.673_263_2)? as f64;
    let gamma = n.float("gamma", 1.050_701)? as f64;
    let neg = exp_minus_one(cx, x, alpha)?;
    let zero = cx.scalar_like(x, 0.0);
    let le = cx.binary(BinaryOp::LessEqual, x, zero)?;
    let y = cx.op(Op::Select, &[le, neg, x])?;
    one(cx.binary_scalar(BinaryOp::Mul, y, gamma)?)
}

fn celu(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let alpha = n.float("alpha", 1.0)? as f64;
    let scaled = cx.binary_scalar(BinaryOp::Div, x, alpha)?;
    let neg = exp_minus_one(cx, scaled, alpha)?;
    let neg = cx.binary_scalar(BinaryOp::Min, neg, 0.0)?;
    let pos = cx.binary_scalar(BinaryOp::Max, x, 0.0)?;
    one(cx.binary(BinaryOp::Add, pos, neg)?)
}

fn hard_sigmoid_of(cx: &mut Ctx, x: ValueId, alpha: f64, beta: f64) -> Result<ValueId> {
    let ax = cx.binary_scalar(BinaryOp::Mul, x, alpha)?;
    let axb = cx.binary_scalar(BinaryOp::Add, ax, beta)?;
    let lo = cx.binary_scalar(BinaryOp::Max, axb, 0.0)?;
    cx.binary_scalar(BinaryOp::Min, lo, 1.0)
}

fn hard_sigmoid(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let (alpha, beta) = (n.float("alpha", 0.2)? as f64, n.float("beta", 0.5)? as f64);
    one(hard_sigmoid_of(cx, n.input(0)?, alpha, beta)?)
}

fn hard_swish(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let hs = hard_sigmoid_of(cx, x, 1.0 / 6.0, 0.5)?;
    one(cx.binary(BinaryOp::Mul, x, hs)?)
}

/// `log(1 + exp(x))` as `max(x, 0) + log(1 + exp(-|x|))`, which does not overflow to
/// infinity for large `x` (onnxruntime gives `x` there too).
fn softplus_of(cx: &mut Ctx, x: ValueId) -> Result<ValueId> {
    let a = cx.unary(UnaryOp::Abs, x)?;
    let na = cx.unary(UnaryOp::Neg, a)?;
    let e = cx.unary(UnaryOp::Exp, na)?;
    let e1 = cx.binary_scalar(BinaryOp::Add, e, 1.0)?;
    let l = cx.unary(UnaryOp::Log, e1)?;
    let r = cx.relu(x)?;
    cx.binary(BinaryOp::Add, r, l)
}

fn softplus(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    one(softplus_of(cx, n.input(0)?)?)
}

fn softsign(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let a = cx.unary(UnaryOp::Abs, x)?;
    let d = cx.binary_scalar(BinaryOp::Add, a, 1.0)?;
    one(cx.binary(BinaryOp::Div, x, d)?)
}

fn gelu(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let form = match n.string("approximate", "none")?.as_str() {
        "none" => GeluForm::Exact,
        "tanh" => GeluForm::Tanh,
        other => {
            return Err(n.err(format!(
                "approximate must be 'none' or 'tanh', got '{other}'"
            )));
        }
    };
    one(cx.gelu(n.input(0)?, form)?)
}

fn mish(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let sp = softplus_of(cx, x)?;
    let t = cx.unary(UnaryOp::Tanh, sp)?;
    one(cx.binary(BinaryOp::Mul, x, t)?)
}

fn thresholded_relu(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let alpha = cx.scalar_like(x, n.float("alpha", 1.0)? as f64);
    let gt = cx.binary(BinaryOp::Greater, x, alpha)?;
    let zero = cx.scalar_like(x, 0.0);
    one(cx.op(Op::Select, &[gt, x, zero])?)
}

fn shrink(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let (lambd, bias) = (n.float("lambd", 0.5)? as f64, n.float("bias", 0.0)? as f64);
    let lo = cx.scalar_like(x, -lambd);
    let hi = cx.scalar_like(x, lambd);
    let below = cx.binary(BinaryOp::Less, x, lo)?;
    let above = cx.binary(BinaryOp::Greater, x, hi)?;
    let plus = cx.binary_scalar(BinaryOp::Add, x, bias)?;
    let minus = cx.binary_scalar(BinaryOp::Sub, x, bias)?;
    let zero = cx.scalar_like(x, 0.0);
    let upper = cx.op(Op::Select, &[above, minus, zero])?;
    one(cx.op(Op::Select, &[below, plus, upper])?)
}

fn swish(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let ax = cx.binary_scalar(BinaryOp::Mul, x, n.float("alpha", 1.0)? as f64)?;
    let s = cx.unary(UnaryOp::Sigmoid, ax)?;
    one(cx.binary(BinaryOp::Mul, x, s)?)
}

/// Before opset 13 the softmax family flattens to 2-D at `axis` and works on the trailing block.
fn softmax_axes(
    cx: &mut Ctx,
    n: &Node,
    x: ValueId,
) -> Result<(ValueId, Vec<usize>, Option<Vec<smelt_ir::Dim>>)> {
    let rank = cx.rank(x);
    if n.opset < 13 {
        let axis = cx.axis(n.int("axis", 1)?, rank.max(1))?;
        let shape = cx.fixed_shape(x)?;
        let rows: usize = shape[..axis].iter().product();
        let cols: usize = shape[axis..].iter().product();
        let flat = cx.reshape_fixed(x, &[rows, cols])?;
        Ok((flat, vec![1], Some(cx.ty(x).shape.clone())))
    } else {
        let axis = cx.axis(n.int("axis", -1)?, rank)?;
        Ok((x, vec![axis], None))
    }
}

fn softmax(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let (x2, axes, restore) = softmax_axes(cx, n, x)?;
    let y = cx.softmax(x2, axes, n.op_type == "LogSoftmax")?;
    one(match restore {
        Some(shape) => cx.reshape(y, shape)?,
        None => y,
    })
}

/// One-hot of the first maximum along the axis.
fn hardmax(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let (x2, axes, restore) = softmax_axes(cx, n, x)?;
    let axis = axes[0];
    let shape = cx.fixed_shape(x2)?;
    let idx = cx.op(
        Op::ArgReduce {
            kind: ArgKind::Max,
            axis,
            keep_dims: true,
            select_last: false,
        },
        &[x2],
    )?;
    let mut iota_shape = vec![1; shape.len()];
    iota_shape[axis] = shape[axis];
    super::check_constant(n, &iota_shape, DType::I64)?;
    let iota = Tensor::from_i64(DType::I64, iota_shape, (0..shape[axis] as i64).collect())
        .map_err(|e| n.err(e.to_string()))?;
    let iota = cx.constant(iota);
    let hit = cx.binary(BinaryOp::Equal, idx, iota)?;
    let y = cx.cast(hit, cx.dtype(x))?;
    one(match restore {
        Some(shape) => cx.reshape(y, shape)?,
        None => y,
    })
}
