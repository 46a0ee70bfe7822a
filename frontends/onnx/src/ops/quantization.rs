//! Quantization ONNX ops: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear.

use super::{Handler, one};
use crate::error::Result;
use crate::import::{Ctx, Node};
use smelt_ir::Compose as _;
use smelt_ir::op::{BinaryOp, ReduceKind, UnaryOp};
use smelt_ir::{DType, Dim, ValueId};

pub(super) const OPS: &[(&str, Handler)] = &[
    ("QuantizeLinear", quantize),
    ("DequantizeLinear", dequantize),
    ("DynamicQuantizeLinear", dynamic_quantize),
    ("ConvInteger", conv_integer),
    ("QLinearConv", qlinear_conv),
    ("QLinearMatMul", qlinear_matmul),
];

fn int_bounds(d: DType) -> Option<(f64, f64)> {
    Some(match d {
        DType::U8 => (0.0, 255.0),
        DType::I8 => (-128.0, 127.0),
        DType::U16 => (0.0, 65535.0),
        DType::I16 => (-32768.0, 32767.0),
        DType::I32 => (i32::MIN as f64, i32::MAX as f64),
        _ => return None,
    })
}

/// A 1-D per-axis parameter reshaped to broadcast along `axis` of a rank-`rank` tensor.
fn along_axis(cx: &mut Ctx, n: &Node, v: ValueId, rank: usize) -> Result<ValueId> {
    if n.int("block_size", 0)? != 0 {
        return Err(n.err("blocked quantization (block_size) is not supported"));
    }
    if cx.rank(v) != 1 || rank == 0 {
        return Ok(v);
    }
    let axis = cx.axis(n.int("axis", 1)?, rank)?;
    let mut shape = vec![Dim::Fixed(1); rank];
    shape[axis] = cx.ty(v).shape[0].clone();
    cx.reshape(v, shape)
}

fn quantize(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let rank = cx.rank(x);
    let scale = along_axis(cx, n, n.input(1)?, rank)?;
    let out_dtype = match n.opt_input(2) {
        Some(z) => cx.dtype(z),
        None => match n.opt_int("output_dtype")? {
            Some(code) if code != 0 => crate::tensor::dtype_from_onnx(code as i32)
                .ok_or_else(|| n.err("unsupported output_dtype"))?,
            _ => DType::U8,
        },
    };
    let (lo, hi) = int_bounds(out_dtype)
        .ok_or_else(|| n.err(format!("quantizing to {out_dtype} is not supported")))?;
    let xf = cx.cast(x, DType::F32)?;
    let sf = cx.cast(scale, DType::F32)?;
    let q = cx.binary(BinaryOp::Div, xf, sf)?;
    let mut q = cx.unary(UnaryOp::Round, q)?;
    if let Some(z) = n.opt_input(2) {
        let z = along_axis(cx, n, z, rank)?;
        let zf = cx.cast(z, DType::F32)?;
        q = cx.binary(BinaryOp::Add, q, zf)?;
    }
    let q = cx.binary_scalar(BinaryOp::Max, q, lo)?;
    let q = cx.binary_scalar(BinaryOp::Min, q, hi)?;
    one(cx.cast(q, out_dtype)?)
}

fn dequantize(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let rank = cx.rank(x);
    let scale = along_axis(cx, n, n.input(1)?, rank)?;
    let fdt = cx.dtype(scale);
    let mut xf = cx.cast(x, DType::F32)?;
    if let Some(z) = n.opt_input(2) {
        let z = along_axis(cx, n, z, rank)?;
        let zf = cx.cast(z, DType::F32)?;
        xf = cx.binary(BinaryOp::Sub, xf, zf)?;
    }
    let sf = cx.cast(scale, DType::F32)?;
    let y = cx.binary(BinaryOp::Mul, xf, sf)?;
    one(cx.cast(y, fdt)?)
}

/// uint8 quantization with scale and zero point computed from the data range (which includes 0).
fn dynamic_quantize(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let axes: Vec<usize> = (0..cx.rank(x)).collect();
    let mn = cx.reduce(ReduceKind::Min, x, axes.clone(), false)?;
    let mx = cx.reduce(ReduceKind::Max, x, axes, false)?;
    let mn = cx.binary_scalar(BinaryOp::Min, mn, 0.0)?;
    let mx = cx.binary_scalar(BinaryOp::Max, mx, 0.0)?;
    let range = cx.binary(BinaryOp::Sub, mx, mn)?;
    let scale = cx.binary_scalar(BinaryOp::Div, range, 255.0)?;
    let zero = cx.scalar_like(x, 0.0);
    let neg_min = cx.binary(BinaryOp::Sub, zero, mn)?;
    let zp = cx.binary(BinaryOp::Div, neg_min, scale)?;
    let zp = cx.unary(UnaryOp::Round, zp)?;
    let zp = cx.binary_scalar(BinaryOp::Max, zp, 0.0)?;
    let zp = cx.binary_scalar(BinaryOp::Min, zp, 255.0)?;
    let q = cx.binary(BinaryOp::Div, x, scale)?;
    let q = cx.unary(UnaryOp::Round, q)?;
    let q = cx.binary(BinaryOp::Add, q, zp)?;
    let q = cx.binary_scalar(BinaryOp::Max, q, 0.0)?;
    let q = cx.binary_scalar(BinaryOp::Min, q, 255.0)?;
    let y = cx.cast(q, DType::U8)?;
    let zp = cx.cast(zp, DType::U8)?;
    Ok(vec![y, scale, zp])
}

/// `x - zero_point` in f64 (exact for every 8- to 32-bit integer); `zp_axis` reshapes a 1-D zero point.
fn centered(
    cx: &mut Ctx,
    x: ValueId,
    zp: Option<ValueId>,
    zp_shape: Option<Vec<Dim>>,
) -> Result<ValueId> {
    let xf = cx.cast(x, DType::F64)?;
    match zp {
        Some(z) => {
            let mut zf = cx.cast(z, DType::F64)?;
            if let (Some(shape), 1) = (zp_shape, cx.rank(zf)) {
                zf = cx.reshape(zf, shape)?;
            }
            cx.binary(BinaryOp::Sub, xf, zf)
        }
        None => Ok(xf),
    }
}

/// `[M]` reshaped to `[M, 1, 1, ...]` for a weight of `rank` (at least 3: callers check
/// the convolution's shapes first).
fn per_filter(cx: &Ctx, v: ValueId, rank: usize) -> Option<Vec<Dim>> {
    let m = cx.ty(v).shape.first().cloned()?;
    let mut shape = vec![Dim::Fixed(1); rank];
    shape[0] = m;
    Some(shape)
}

fn conv_integer(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let (x, w) = (n.input(0)?, n.input(1)?);
    let (_, ws) = super::contraction::conv_shapes(cx, n, x, w)?;
    let xc = centered(cx, x, n.opt_input(2), None)?;
    let wshape = n.opt_input(3).and_then(|z| per_filter(cx, z, ws.len()));
    let wc = centered(cx, w, n.opt_input(3), wshape)?;
    let y = super::contraction::conv_of(cx, n, xc, wc)?;
    one(cx.cast(y, DType::I32)?)
}

/// Requantizes an f64 accumulator: `round(acc * scale / y_scale) + y_zero_point`, saturated.
fn requantize(
    cx: &mut Ctx,
    n: &Node,
    acc: ValueId,
    scale: ValueId,
    y_scale: ValueId,
    y_zp: Option<ValueId>,
) -> Result<ValueId> {
    let out = y_zp.map_or(DType::U8, |z| cx.dtype(z));
    let (lo, hi) =
        int_bounds(out).ok_or_else(|| n.err(format!("quantizing to {out} is not supported")))?;
    let s = cx.binary(BinaryOp::Mul, acc, scale)?;
    let ys = cx.cast(y_scale, DType::F64)?;
    let q = cx.binary(BinaryOp::Div, s, ys)?;
    let mut q = cx.unary(UnaryOp::Round, q)?;
    if let Some(z) = y_zp {
        let zf = cx.cast(z, DType::F64)?;
        q = cx.binary(BinaryOp::Add, q, zf)?;
    }
    let q = cx.binary_scalar(BinaryOp::Max, q, lo)?;
    let q = cx.binary_scalar(BinaryOp::Min, q, hi)?;
    cx.cast(q, out)
}

fn qlinear_conv(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let (x, w) = (n.input(0)?, n.input(3)?);
    let rank = super::contraction::conv_shapes(cx, n, x, w)?.1.len();
    let xc = centered(cx, x, n.opt_input(2), None)?;
    let wshape = n.opt_input(5).and_then(|z| per_filter(cx, z, rank));
    let wc = centered(cx, w, n.opt_input(5), wshape)?;
    let mut acc = super::contraction::conv_of(cx, n, xc, wc)?;
    if let Some(b) = n.opt_input(8) {
        let bf = cx.cast(b, DType::F64)?;
        acc = cx.add_channel_bias(acc, bf)?;
    }
    let xs = cx.cast(n.input(1)?, DType::F64)?;
    let mut ws = cx.cast(n.input(4)?, DType::F64)?;
    if cx.rank(ws) == 1 {
        // A per-filter weight scale applies along the output channels.
        let mut shape = vec![Dim::Fixed(1); rank];
        shape[1] = cx.ty(ws).shape[0].clone();
        ws = cx.reshape(ws, shape)?;
    }
    let scale = cx.binary(BinaryOp::Mul, xs, ws)?;
    one(requantize(cx, n, acc, scale, n.input(6)?, n.opt_input(7))?)
}

fn qlinear_matmul(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let (a, b) = (n.input(0)?, n.input(3)?);
    let a_zp_shape = n
        .opt_input(2)
        .filter(|&z| cx.rank(z) == 1 && cx.rank(a) >= 2)
        .map(|z| vec![cx.ty(z).shape[0].clone(), Dim::Fixed(1)]);
    let ac = centered(cx, a, n.opt_input(2), a_zp_shape)?;
    let bc = centered(cx, b, n.opt_input(5), None)?;
    let acc = cx.op(smelt_ir::Op::MATMUL, &[ac, bc])?;
    let mut a_s = cx.cast(n.input(1)?, DType::F64)?;
    if cx.rank(a_s) == 1 && cx.rank(a) >= 2 {
        let m = cx.ty(a_s).shape[0].clone();
        a_s = cx.reshape(a_s, vec![m, Dim::Fixed(1)])?;
    }
    let b_s = cx.cast(n.input(4)?, DType::F64)?;
    let scale = cx.binary(BinaryOp::Mul, a_s, b_s)?;
    one(requantize(cx, n, acc, scale, n.input(6)?, n.opt_input(7))?)
}
