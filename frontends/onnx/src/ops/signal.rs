//! Signal ONNX ops: the window generators (Hann, Hamming, Blackman), folded to constants.

use super::{Handler, one};
use crate::error::Result;
use crate::import::{Ctx, Node};
use crate::tensor::{dtype_from_onnx, onnx_type_name};
use smelt_ir::Compose as _;
use smelt_ir::{DType, Tensor, ValueId};
use std::f64::consts::PI;

pub(super) const OPS: &[(&str, Handler)] = &[
    ("HannWindow", window),
    ("HammingWindow", window),
    ("BlackmanWindow", window),
];

fn window(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let size = cx.require_ints(n.input(0)?, "size")?;
    let size = *size.first().ok_or_else(|| n.err("size is empty"))?;
    let size = usize::try_from(size)
        .map_err(|_| n.err(format!("size must be non-negative, got {size}")))?;
    let code = n.int("output_datatype", 1)? as i32;
    let dtype = dtype_from_onnx(code).ok_or_else(|| {
        n.err(format!(
            "output_datatype {} is not supported",
            onnx_type_name(code)
        ))
    })?;
    super::check_constant(n, &[size], DType::F64)?;
    let periodic = n.int("periodic", 1)? != 0;
    let denom = if periodic {
        size as f64
    } else {
        size as f64 - 1.0
    };
    let values = (0..size)
        .map(|i| {
            let x = 2.0 * PI * i as f64 / denom;
            match n.op_type.as_str() {
                "HannWindow" => 0.5 - 0.5 * x.cos(),
                "HammingWindow" => 25.0 / 46.0 - (21.0 / 46.0) * x.cos(),
                _ => 0.42 - 0.5 * x.cos() + 0.08 * (2.0 * x).cos(),
            }
        })
        .collect();
    one(cx.constant(Tensor::from_f64(dtype, vec![size], values).map_err(|e| n.err(e.to_string()))?))
}
