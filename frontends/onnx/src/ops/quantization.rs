//! Quantization ONNX ops: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear.

use super::{Handler, one};
use crate::error::Result;
use crate::import::{Ctx, Node};
use smelt_ir::op::{BinaryOp, ReduceKind, UnaryOp};
use smelt_ir::{DType, Dim, ValueId};

pub(super) const OPS: &[(&str, Handler)] = &[
    ("QuantizeLinear", quantize),
    ("DequantizeLinear", dequantize),
    ("DynamicQuantizeLinear", dynamic_quantize),
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
    if cx.rank(v) != 1 || rank == 0 {
        return Ok(v);
    }
    if n.int("block_size", 0)? != 0 {
        return Err(n.err("blocked quantization (block_size) is not supported"));
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
