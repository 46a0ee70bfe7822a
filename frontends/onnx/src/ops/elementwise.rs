//! Elementwise ONNX ops: math, comparison, logic, bitwise, variadic, Where, Clip, Cast.

use super::{Handler, one};
use crate::error::Result;
use crate::import::{Ctx, Node};
use crate::tensor::{dtype_from_onnx, onnx_type_name};
use smelt_ir::Compose as _;
use smelt_ir::op::{BinaryOp, UnaryOp};
use smelt_ir::{Op, ValueId};

pub(super) const OPS: &[(&str, Handler)] = &[
    ("Abs", unary),
    ("Neg", unary),
    ("Exp", unary),
    ("Log", unary),
    ("Sqrt", unary),
    ("Reciprocal", unary),
    ("Sin", unary),
    ("Cos", unary),
    ("Tan", unary),
    ("Asin", unary),
    ("Acos", unary),
    ("Atan", unary),
    ("Sinh", unary),
    ("Cosh", unary),
    ("Asinh", unary),
    ("Acosh", unary),
    ("Atanh", unary),
    ("Tanh", unary),
    ("Sigmoid", unary),
    ("Erf", unary),
    ("Floor", unary),
    ("Ceil", unary),
    ("Round", unary),
    ("Sign", unary),
    ("Not", unary),
    ("BitwiseNot", unary),
    ("IsNaN", unary),
    ("IsInf", is_inf),
    ("Add", binary),
    ("Sub", binary),
    ("Mul", binary),
    ("Div", binary),
    ("Pow", binary),
    ("Equal", binary),
    ("Less", binary),
    ("LessOrEqual", binary),
    ("Greater", binary),
    ("GreaterOrEqual", binary),
    ("And", binary),
    ("Or", binary),
    ("Xor", binary),
    ("BitwiseAnd", binary),
    ("BitwiseOr", binary),
    ("BitwiseXor", binary),
    ("Mod", modulo),
    ("BitShift", bit_shift),
    ("Sum", variadic),
    ("Max", variadic),
    ("Min", variadic),
    ("Mean", variadic),
    ("Where", where_),
    ("Clip", clip),
    ("Cast", cast),
    ("CastLike", cast_like),
    ("Identity", identity),
    ("Dropout", dropout),
];

fn unary(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let u = match n.op_type.as_str() {
        "Abs" => UnaryOp::Abs,
        "Neg" => UnaryOp::Neg,
        "Exp" => UnaryOp::Exp,
        "Log" => UnaryOp::Log,
        "Sqrt" => UnaryOp::Sqrt,
        "Reciprocal" => UnaryOp::Reciprocal,
        "Sin" => UnaryOp::Sin,
        "Cos" => UnaryOp::Cos,
        "Tan" => UnaryOp::Tan,
        "Asin" => UnaryOp::Asin,
        "Acos" => UnaryOp::Acos,
        "Atan" => UnaryOp::Atan,
        "Sinh" => UnaryOp::Sinh,
        "Cosh" => UnaryOp::Cosh,
        "Asinh" => UnaryOp::Asinh,
        "Acosh" => UnaryOp::Acosh,
        "Atanh" => UnaryOp::Atanh,
        "Tanh" => UnaryOp::Tanh,
        "Sigmoid" => UnaryOp::Sigmoid,
        "Erf" => UnaryOp::Erf,
        "Floor" => UnaryOp::Floor,
        "Ceil" => UnaryOp::Ceil,
        "Round" => UnaryOp::Round,
        "Sign" => UnaryOp::Sign,
        "Not" => UnaryOp::Not,
        "BitwiseNot" => UnaryOp::BitNot,
        "IsNaN" => UnaryOp::IsNan,
        other => return Err(n.err(format!("{other} is not a unary op"))),
    };
    one(cx.unary(u, n.input(0)?)?)
}

fn is_inf(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let (neg, pos) = (
        n.int("detect_negative", 1)? != 0,
        n.int("detect_positive", 1)? != 0,
    );
    let inf = cx.unary(UnaryOp::IsInf, x)?;
    if neg && pos {
        return one(inf);
    }
    let zero = cx.scalar_like(x, 0.0);
    let side = match (neg, pos) {
        (true, false) => cx.binary(BinaryOp::Less, x, zero)?,
        (false, true) => cx.binary(BinaryOp::Greater, x, zero)?,
        // Neither sign detected: a comparison that is false for every element, NaN included.
        _ => cx.binary(BinaryOp::Less, x, x)?,
    };
    one(cx.binary(BinaryOp::And, inf, side)?)
}

fn binary(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let b = match n.op_type.as_str() {
        "Add" => BinaryOp::Add,
        "Sub" => BinaryOp::Sub,
        "Mul" => BinaryOp::Mul,
        "Div" => BinaryOp::Div,
        "Pow" => BinaryOp::Pow,
        "Equal" => BinaryOp::Equal,
        "Less" => BinaryOp::Less,
        "LessOrEqual" => BinaryOp::LessEqual,
        "Greater" => BinaryOp::Greater,
        "GreaterOrEqual" => BinaryOp::GreaterEqual,
        "And" => BinaryOp::And,
        "Or" => BinaryOp::Or,
        "Xor" => BinaryOp::Xor,
        "BitwiseAnd" => BinaryOp::BitAnd,
        "BitwiseOr" => BinaryOp::BitOr,
        "BitwiseXor" => BinaryOp::BitXor,
        other => return Err(n.err(format!("{other} is not a binary op"))),
    };
    let (x, y) = (n.input(0)?, n.input(1)?);
    let y = legacy_broadcast(cx, n, x, y)?;
    one(cx.binary(b, x, y)?)
}

/// Before opset 7, binary ops broadcast only with `broadcast=1`, aligning B's dims
/// with A's starting at `axis` (default: the trailing dims); reshaping B to A's rank
/// turns that into NumPy broadcasting.
pub(super) fn legacy_broadcast(cx: &mut Ctx, n: &Node, a: ValueId, b: ValueId) -> Result<ValueId> {
    if n.opset >= 7 || n.int("broadcast", 0)? == 0 {
        return Ok(b);
    }
    let (ra, rb) = (cx.rank(a), cx.rank(b));
    let axis = match n.opt_int("axis")? {
        Some(ax) => cx.axis(ax, ra.max(1))?,
        None => ra.saturating_sub(rb),
    };
    if axis + rb > ra {
        return Err(n.err(format!(
            "B of rank {rb} does not fit A of rank {ra} at axis {axis}"
        )));
    }
    let mut shape = vec![smelt_ir::Dim::Fixed(1); ra];
    for (i, d) in cx.ty(b).shape.clone().into_iter().enumerate() {
        shape[axis + i] = d;
    }
    cx.reshape(b, shape)
}

fn modulo(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    // fmod 0 on floats (allowed from opset 28) is the floored modulo, as for integers.
    let fmod = n.int("fmod", 0)? != 0;
    one(cx.binary(
        if fmod { BinaryOp::Rem } else { BinaryOp::Mod },
        x,
        n.input(1)?,
    )?)
}

fn bit_shift(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let b = match n.string("direction", "")?.as_str() {
        "LEFT" => BinaryOp::Shl,
        "RIGHT" => BinaryOp::Shr,
        d => return Err(n.err(format!("direction must be LEFT or RIGHT, got '{d}'"))),
    };
    one(cx.binary(b, n.input(0)?, n.input(1)?)?)
}

fn variadic(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let b = match n.op_type.as_str() {
        "Sum" | "Mean" => BinaryOp::Add,
        "Max" => BinaryOp::Max,
        _ => BinaryOp::Min,
    };
    let inputs: Vec<ValueId> = n.inputs.iter().flatten().copied().collect();
    let (&first, rest) = inputs
        .split_first()
        .ok_or_else(|| n.err("needs at least one input"))?;
    let mut acc = first;
    for &x in rest {
        acc = cx.binary(b, acc, x)?;
    }
    if n.op_type == "Mean" && inputs.len() > 1 {
        acc = cx.binary_scalar(BinaryOp::Div, acc, inputs.len() as f64)?;
    }
    one(acc)
}

fn where_(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    one(cx.op(Op::Select, &[n.input(0)?, n.input(1)?, n.input(2)?])?)
}

/// `min(max(x, lo), hi)`; bounds from attributes before opset 11, from inputs after.
fn clip(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let (lo, hi) = if n.opset < 11 {
        let lo = n.float("min", f32::NEG_INFINITY)?;
        let hi = n.float("max", f32::INFINITY)?;
        (
            Some(cx.scalar_like(x, lo as f64)),
            Some(cx.scalar_like(x, hi as f64)),
        )
    } else {
        (n.opt_input(1), n.opt_input(2))
    };
    let mut y = x;
    if let Some(lo) = lo {
        y = cx.binary(BinaryOp::Max, y, lo)?;
    }
    if let Some(hi) = hi {
        y = cx.binary(BinaryOp::Min, y, hi)?;
    }
    one(y)
}

fn cast(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let code = n
        .opt_int("to")?
        .ok_or_else(|| n.err("attribute 'to' is required"))? as i32;
    let to = dtype_from_onnx(code)
        .ok_or_else(|| n.err(format!("cast to {} is not supported", onnx_type_name(code))))?;
    one(cx.cast(n.input(0)?, to)?)
}

fn cast_like(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let to = cx.dtype(n.input(1)?);
    one(cx.cast(n.input(0)?, to)?)
}

fn identity(_cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    one(n.input(0)?)
}

/// Dropout at inference is the identity; its mask is all true.
fn dropout(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    if let Some(t) = n.opt_input(2) {
        let training = cx.require_const(t, "training_mode")?;
        if training.to_bool().iter().any(|&b| b) {
            return Err(n.err("training_mode is not supported (smelt compiles inference graphs)"));
        }
    }
    if n.opset < 7 && n.int("is_test", 0)? == 0 {
        return Err(n.err("training mode is not supported"));
    }
    let mut outs = vec![x];
    if n.num_outputs > 1 {
        let shape = cx.ty(x).shape.clone();
        let t = cx.constant(smelt_ir::Tensor::scalar(smelt_ir::DType::Bool, 1.0));
        outs.push(cx.op(Op::Expand { shape }, &[t])?);
    }
    Ok(outs)
}
