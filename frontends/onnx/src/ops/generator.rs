//! Generator ONNX ops (Constant, ConstantOfShape, Range, EyeLike), folded to constants at import.

use super::{Handler, one};
use crate::error::Result;
use crate::import::{Ctx, Node};
use crate::tensor::{dtype_from_onnx, onnx_type_name};
use smelt_ir::Compose as _;
use smelt_ir::{DType, Tensor, ValueId};

pub(super) const OPS: &[(&str, Handler)] = &[
    ("Constant", constant),
    ("ConstantOfShape", constant_of_shape),
    ("Range", range),
    ("EyeLike", eye_like),
];

fn constant(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let t = if let Some(t) = n.tensor("value")? {
        t
    } else if let Some(v) = n.opt_float("value_float")? {
        Tensor::scalar(DType::F32, v as f64)
    } else if let Some(v) = n.floats("value_floats")? {
        Tensor::from_f64(
            DType::F32,
            vec![v.len()],
            v.iter().map(|&x| x as f64).collect(),
        )
        .map_err(|e| n.err(e.to_string()))?
    } else if let Some(v) = n.opt_int("value_int")? {
        Tensor::from_i64(DType::I64, vec![], vec![v]).map_err(|e| n.err(e.to_string()))?
    } else if let Some(v) = n.ints("value_ints")? {
        Tensor::from_i64(DType::I64, vec![v.len()], v).map_err(|e| n.err(e.to_string()))?
    } else if n.attr("sparse_value").is_some() {
        return Err(n.err("sparse constants are not supported"));
    } else if n.attr("value_string").is_some() || n.attr("value_strings").is_some() {
        return Err(n.err("string constants are not supported"));
    } else {
        return Err(n.err("needs one of value, value_float(s), value_int(s)"));
    };
    one(cx.constant(t))
}

fn constant_of_shape(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let dims = cx.require_ints(n.input(0)?, "shape")?;
    let shape = dims
        .iter()
        .map(|&d| {
            usize::try_from(d)
                .map_err(|_| n.err(format!("negative dimension {d} in shape {dims:?}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let value = n
        .tensor("value")?
        .unwrap_or_else(|| Tensor::scalar(DType::F32, 0.0));
    if value.len() != 1 {
        return Err(n.err("value must hold exactly one element"));
    }
    smelt_ir::limits::value_bytes(&shape, value.dtype()).map_err(|e| n.err(e))?;
    // The index vector costs 8 bytes an element: check it as a u64 tensor too.
    smelt_ir::limits::value_bytes(&shape, DType::U64).map_err(|e| n.err(e))?;
    let count = shape.iter().product();
    let idx = vec![0usize; count];
    let t = value
        .reshaped(vec![1])
        .and_then(|v| v.take(shape, &idx, None))
        .map_err(|e| n.err(e.to_string()))?;
    one(cx.constant(t))
}

fn range(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let start = cx.require_const(n.input(0)?, "start")?;
    let limit = cx.require_const(n.input(1)?, "limit")?;
    let delta = cx.require_const(n.input(2)?, "delta")?;
    for (t, what) in [(&start, "start"), (&limit, "limit"), (&delta, "delta")] {
        if t.len() != 1 {
            return Err(n.err(format!(
                "{what} must be a scalar, got shape {:?}",
                t.shape()
            )));
        }
    }
    let dtype = start.dtype();
    let t = if dtype.is_float() {
        let (s, l, d) = (start.to_f64()[0], limit.to_f64()[0], delta.to_f64()[0]);
        // A NaN count becomes 0 (`max` drops it), an infinite one usize::MAX, which the
        // memory limit refuses.
        let count = ((l - s) / d).ceil().max(0.0) as usize;
        smelt_ir::limits::value_bytes(&[count], DType::F64).map_err(|e| n.err(e))?;
        Tensor::from_f64(
            dtype,
            vec![count],
            (0..count).map(|i| s + i as f64 * d).collect(),
        )
    } else {
        let (s, l, d) = (start.to_i64()[0], limit.to_i64()[0], delta.to_i64()[0]);
        if d == 0 {
            return Err(n.err("delta must not be zero"));
        }
        // In i128 so that bounds at the ends of i64 do not overflow; every element lies
        // between start and limit, so it fits the type.
        let (s, l, d) = (s as i128, l as i128, d as i128);
        let (span, step) = if d > 0 { (l - s, d) } else { (s - l, -d) };
        let count = (span + step - 1).div_euclid(step).max(0);
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        smelt_ir::limits::value_bytes(&[count], DType::I64).map_err(|e| n.err(e))?;
        Tensor::from_i64(
            dtype,
            vec![count],
            (0..count as i128).map(|i| (s + i * d) as i64).collect(),
        )
    };
    one(cx.constant(t.map_err(|e| n.err(e.to_string()))?))
}

fn eye_like(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let shape = cx.fixed_shape(x)?;
    if shape.len() != 2 {
        return Err(n.err(format!("input must be 2-D, got shape {shape:?}")));
    }
    let dtype = match n.opt_int("dtype")? {
        Some(code) => dtype_from_onnx(code as i32).ok_or_else(|| {
            n.err(format!(
                "dtype {} is not supported",
                onnx_type_name(code as i32)
            ))
        })?,
        None => cx.dtype(x),
    };
    let k = n.int("k", 0)?;
    let (rows, cols) = (shape[0], shape[1]);
    super::check_constant(n, &shape, DType::F64)?;
    let v = (0..rows * cols)
        .map(|i| {
            if (i % cols) as i64 - (i / cols) as i64 == k {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    one(cx.constant(Tensor::from_f64(dtype, shape, v).map_err(|e| n.err(e.to_string()))?))
}
