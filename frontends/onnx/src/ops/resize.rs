//! Resize and its predecessor Upsample.

use super::{Handler, one};
use crate::error::Result;
use crate::import::{Ctx, Node};
use smelt_ir::Compose as _;
use smelt_ir::op::{CoordMode, NearestMode, ResizeMode};
use smelt_ir::{DType, Op, Tensor, ValueId};

pub(super) const OPS: &[(&str, Handler)] = &[("Resize", resize), ("Upsample", upsample)];

fn mode(n: &Node, name: &str) -> Result<ResizeMode> {
    match name {
        "nearest" => Ok(ResizeMode::Nearest),
        "linear" | "bilinear" => Ok(ResizeMode::Linear),
        "cubic" => Ok(ResizeMode::Cubic),
        other => Err(n.err(format!("unknown mode '{other}'"))),
    }
}

/// How a Resize samples its input: output sizes and scales per axis, and the modes.
struct Sampling {
    sizes: Vec<usize>,
    scales: Vec<f64>,
    mode: ResizeMode,
    coord: CoordMode,
    nearest: NearestMode,
}

/// The Resize op of `n` on `x`, with its region of interest (constant, if any) and the
/// attributes `sampling` leaves to the node (cubic coefficient, extrapolation).
fn emit(
    cx: &mut Ctx,
    n: &Node,
    x: ValueId,
    roi: Option<ValueId>,
    sampling: Sampling,
) -> Result<Vec<ValueId>> {
    let Sampling {
        sizes,
        scales,
        mode,
        coord,
        nearest,
    } = sampling;
    let roi = match roi {
        Some(r) => {
            let t = cx.require_const(r, "roi")?.cast(DType::F64);
            cx.constant(t)
        }
        None => cx.constant(
            Tensor::from_f64(DType::F64, vec![0], vec![]).map_err(|e| n.err(e.to_string()))?,
        ),
    };
    let op = Op::Resize {
        sizes,
        scales,
        mode,
        coord,
        nearest,
        cubic_coeff: n.float("cubic_coeff_a", -0.75)? as f64,
        exclude_outside: n.int("exclude_outside", 0)? != 0,
        extrapolation: n.float("extrapolation_value", 0.0)? as f64,
    };
    one(cx.op(op, &[x, roi])?)
}

fn resize(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let in_shape = cx.fixed_shape(x)?;
    let rank = in_shape.len();
    if n.int("antialias", 0)? != 0 {
        return Err(n.err("antialias is not supported"));
    }
    let (roi, scales_in, sizes_in) = if n.opset < 11 {
        (None, n.opt_input(1), None)
    } else {
        (n.opt_input(1), n.opt_input(2), n.opt_input(3))
    };
    let axes = cx.axes_attr(n, rank)?;
    let mut scales = vec![1.0; rank];
    let mut sizes = in_shape.clone();
    let given_sizes = match sizes_in {
        Some(s) if cx.fixed_shape(s)?.iter().product::<usize>() > 0 => {
            Some(cx.require_ints(s, "sizes")?)
        }
        _ => None,
    };
    let scales_given = match scales_in {
        Some(s) => cx.fixed_shape(s)?.iter().product::<usize>() > 0,
        None => false,
    };
    if given_sizes.is_some() && scales_given {
        return Err(n.err("takes scales or sizes, not both"));
    }
    if let Some(given) = given_sizes {
        if given.len() != axes.len() || given.iter().any(|&s| s < 0) {
            return Err(n.err(format!(
                "sizes {given:?} must be one non-negative size per axis {axes:?}"
            )));
        }
        let policy = n.string("keep_aspect_ratio_policy", "stretch")?;
        let ratios: Vec<f64> = axes
            .iter()
            .zip(&given)
            .map(|(&a, &s)| s as f64 / in_shape[a] as f64)
            .collect();
        let common = match policy.as_str() {
            "stretch" => None,
            "not_larger" => Some(ratios.iter().copied().fold(f64::INFINITY, f64::min)),
            "not_smaller" => Some(ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max)),
            other => return Err(n.err(format!("unknown keep_aspect_ratio_policy '{other}'"))),
        };
        for (i, &a) in axes.iter().enumerate() {
            match common {
                Some(r) => {
                    scales[a] = r;
                    sizes[a] = (r * in_shape[a] as f64).round() as usize;
                }
                None => {
                    scales[a] = ratios[i];
                    sizes[a] = given[i] as usize;
                }
            }
        }
    } else {
        let s = scales_in.ok_or_else(|| n.err("needs scales or sizes"))?;
        let given = cx.require_const(s, "scales")?.to_f64();
        if given.len() != axes.len() {
            return Err(n.err(format!(
                "scales {given:?} must have one entry per axis {axes:?}"
            )));
        }
        for (i, &a) in axes.iter().enumerate() {
            if !(given[i] > 0.0 && given[i].is_finite()) {
                return Err(n.err(format!("scales must be positive and finite, got {given:?}")));
            }
            scales[a] = given[i];
            sizes[a] = (in_shape[a] as f64 * given[i]).floor() as usize;
        }
    }
    let mode = mode(n, &n.string("mode", "nearest")?)?;
    let (coord, nearest) = if n.opset < 11 {
        (CoordMode::Asymmetric, NearestMode::Floor)
    } else {
        let c = n.string("coordinate_transformation_mode", "half_pixel")?;
        let coord = CoordMode::from_name(&c)
            .ok_or_else(|| n.err(format!("unknown coordinate_transformation_mode '{c}'")))?;
        let nm = n.string("nearest_mode", "round_prefer_floor")?;
        (
            coord,
            NearestMode::from_name(&nm)
                .ok_or_else(|| n.err(format!("unknown nearest_mode '{nm}'")))?,
        )
    };
    // A roi matters only for tf_crop_and_resize, and then covers the resized axes.
    let roi = match roi {
        Some(r) if coord == CoordMode::TfCropAndResize => {
            let v = cx.require_const(r, "roi")?.to_f64();
            let mut full: Vec<f64> = (0..rank)
                .map(|_| 0.0)
                .chain((0..rank).map(|_| 1.0))
                .collect();
            if v.len() != 2 * axes.len() {
                return Err(n.err(format!("roi must have {} values", 2 * axes.len())));
            }
            for (i, &a) in axes.iter().enumerate() {
                full[a] = v[i];
                full[rank + a] = v[axes.len() + i];
            }
            Some(
                cx.constant(
                    Tensor::from_f64(DType::F64, vec![2 * rank], full)
                        .map_err(|e| n.err(e.to_string()))?,
                ),
            )
        }
        _ => None,
    };
    let sampling = Sampling {
        sizes,
        scales,
        mode,
        coord,
        nearest,
    };
    emit(cx, n, x, roi, sampling)
}

fn upsample(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let in_shape = cx.fixed_shape(x)?;
    let scales: Vec<f64> = if n.opset < 9 {
        n.floats("scales")?
            .ok_or_else(|| n.err("scales are required"))?
            .iter()
            .map(|&s| s as f64)
            .collect()
    } else {
        cx.require_const(n.input(1)?, "scales")?.to_f64()
    };
    if scales.len() != in_shape.len() || scales.iter().any(|&s| !(s >= 1.0 && s.is_finite())) {
        return Err(n.err(format!(
            "scales {scales:?} must be finite and >= 1, one per axis of {in_shape:?}"
        )));
    }
    let sizes = in_shape
        .iter()
        .zip(&scales)
        .map(|(&d, &s)| (d as f64 * s).floor() as usize)
        .collect();
    let mode = mode(n, &n.string("mode", "nearest")?)?;
    let sampling = Sampling {
        sizes,
        scales,
        mode,
        coord: CoordMode::Asymmetric,
        nearest: NearestMode::Floor,
    };
    emit(cx, n, x, None, sampling)
}
