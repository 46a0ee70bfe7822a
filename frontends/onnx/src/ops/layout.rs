//! Shape and layout ONNX ops: reshape family, transpose, concat/split, slice, pad, expand, tile, shape.

use super::{Handler, one};
use crate::error::Result;
use crate::import::{Ctx, Node};
use smelt_ir::Compose as _;
use smelt_ir::op::PadMode;
use smelt_ir::{DType, Dim, Op, Tensor, ValueId};

pub(super) const OPS: &[(&str, Handler)] = &[
    ("Reshape", reshape),
    ("Flatten", flatten),
    ("Squeeze", squeeze),
    ("Unsqueeze", unsqueeze),
    ("Transpose", transpose),
    ("Concat", concat),
    ("Split", split),
    ("Slice", slice),
    ("Pad", pad),
    ("Expand", expand),
    ("Tile", tile),
    ("Shape", shape),
    ("Size", size),
    ("DepthToSpace", depth_to_space),
    ("SpaceToDepth", space_to_depth),
    ("CenterCropPad", center_crop_pad),
];

fn reshape(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let target = cx.require_ints(n.input(1)?, "shape")?;
    let allow_zero = n.int("allowzero", 0)? != 0;
    let in_shape = cx.ty(x).shape.clone();
    let mut out: Vec<Option<Dim>> = Vec::with_capacity(target.len());
    let mut infer_at = None;
    for (i, &d) in target.iter().enumerate() {
        out.push(match d {
            -1 if infer_at.is_none() => {
                infer_at = Some(i);
                None
            }
            -1 => return Err(n.err(format!("shape {target:?} has more than one -1"))),
            0 if !allow_zero => Some(in_shape.get(i).cloned().ok_or_else(|| {
                n.err(format!("shape {target:?} copies dim {i} the input lacks"))
            })?),
            d if d >= 0 => Some(Dim::Fixed(d as usize)),
            d => return Err(n.err(format!("invalid dimension {d} in shape {target:?}"))),
        });
    }
    if let Some(i) = infer_at {
        let total = cx.fixed_shape(x)?.iter().product::<usize>();
        let known: usize = out
            .iter()
            .flatten()
            .map(|d| d.fixed().unwrap_or(1))
            .product();
        if known == 0 || total % known != 0 {
            return Err(n.err(format!(
                "cannot reshape {:?} to {target:?}",
                cx.fixed_shape(x)?
            )));
        }
        out[i] = Some(Dim::Fixed(total / known));
    }
    let shape: Vec<Dim> = out
        .into_iter()
        .map(|d| d.expect("every dim resolved"))
        .collect();
    one(cx.reshape(x, shape)?)
}

fn flatten(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let shape = cx.fixed_shape(x)?;
    let axis = n.int("axis", 1)?;
    let axis = if axis == shape.len() as i64 {
        shape.len()
    } else {
        cx.axis(axis, shape.len())?
    };
    let rows = shape[..axis].iter().product();
    let cols = shape[axis..].iter().product();
    one(cx.reshape_fixed(x, &[rows, cols])?)
}

/// Axes from the attribute (before opset 13) or the second input.
fn axes_param(cx: &mut Ctx, n: &Node, input_from: i64) -> Result<Option<Vec<i64>>> {
    if n.opset < input_from {
        n.ints("axes")
    } else {
        match n.opt_input(1) {
            Some(a) => Ok(Some(cx.require_ints(a, "axes")?)),
            None => Ok(None),
        }
    }
}

fn squeeze(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let shape = cx.ty(x).shape.clone();
    let axes = match axes_param(cx, n, 13)? {
        Some(a) => a
            .iter()
            .map(|&a| cx.axis(a, shape.len()))
            .collect::<Result<Vec<_>>>()?,
        None => (0..shape.len()).filter(|&i| shape[i].is_one()).collect(),
    };
    for &a in &axes {
        if !shape[a].is_one() {
            return Err(n.err(format!("cannot squeeze axis {a} of size {}", shape[a])));
        }
    }
    let out = shape
        .iter()
        .enumerate()
        .filter(|(i, _)| !axes.contains(i))
        .map(|(_, d)| d.clone())
        .collect();
    one(cx.reshape(x, out)?)
}

fn unsqueeze(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let shape = cx.ty(x).shape.clone();
    let axes = axes_param(cx, n, 13)?.ok_or_else(|| n.err("axes are required"))?;
    let rank = shape.len() + axes.len();
    let mut axes = axes
        .iter()
        .map(|&a| cx.axis(a, rank))
        .collect::<Result<Vec<_>>>()?;
    axes.sort_unstable();
    if axes.windows(2).any(|w| w[0] == w[1]) {
        return Err(n.err("axes repeat"));
    }
    let mut rest = shape.into_iter();
    let out = (0..rank)
        .map(|i| {
            if axes.contains(&i) {
                Dim::Fixed(1)
            } else {
                rest.next().expect("counted")
            }
        })
        .collect();
    one(cx.reshape(x, out)?)
}

fn transpose(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let rank = cx.rank(x);
    let perm = match n.ints("perm")? {
        Some(p) => p
            .iter()
            .map(|&a| cx.axis(a, rank))
            .collect::<Result<Vec<_>>>()?,
        None => (0..rank).rev().collect(),
    };
    one(cx.transpose(x, perm)?)
}

fn concat(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let inputs: Vec<ValueId> = n.inputs.iter().flatten().copied().collect();
    let first = *inputs
        .first()
        .ok_or_else(|| n.err("needs at least one input"))?;
    let axis = cx.axis(
        n.opt_int("axis")?
            .ok_or_else(|| n.err("attribute 'axis' is required"))?,
        cx.rank(first),
    )?;
    one(cx.op(Op::Concat { axis }, &inputs)?)
}

/// A slice of `x` along one axis, `[start, end)`.
pub(super) fn slice_axis(
    cx: &mut Ctx,
    x: ValueId,
    axis: usize,
    start: i64,
    end: i64,
) -> Result<ValueId> {
    let rank = cx.rank(x);
    if axis >= rank {
        return Err(cx.err(format!("cannot slice axis {axis} of {}", cx.ty(x))));
    }
    cx.op(Op::slice_along(rank, axis, start, end, 1), &[x])
}

fn split(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let shape = cx.fixed_shape(x)?;
    let axis = cx.axis(n.int("axis", 0)?, shape.len())?;
    let sizes = if n.opset < 13 {
        n.ints("split")?
    } else {
        match n.opt_input(1) {
            Some(s) => Some(cx.require_ints(s, "split")?),
            None => None,
        }
    };
    let len = shape[axis] as i64;
    let sizes = match sizes {
        Some(s) => s,
        None => {
            let outputs = n.num_outputs as i64;
            let parts = if n.opset >= 18 {
                n.opt_int("num_outputs")?.unwrap_or(outputs)
            } else {
                outputs
            };
            if parts <= 0 || parts != outputs {
                return Err(n.err(format!(
                    "num_outputs {parts} must be the node's output count {outputs}, at least 1"
                )));
            }
            // Equal parts, the last one smaller when the axis does not divide evenly.
            let chunk = len / parts + i64::from(len % parts != 0);
            (0..parts)
                .map(|i| {
                    chunk
                        .min(len.saturating_sub(i.saturating_mul(chunk)))
                        .max(0)
                })
                .collect()
        }
    };
    let total = sizes.iter().try_fold(0i64, |acc, &s| acc.checked_add(s));
    if total != Some(len) || sizes.iter().any(|&s| s < 0) {
        return Err(n.err(format!(
            "split sizes {sizes:?} do not add up to axis size {len}"
        )));
    }
    let mut outs = Vec::with_capacity(sizes.len());
    let mut at = 0;
    for s in sizes {
        outs.push(slice_axis(cx, x, axis, at, at + s)?);
        at += s;
    }
    Ok(outs)
}

fn slice(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let rank = cx.rank(x);
    let (starts, ends, axes, steps) = if n.opset < 10 {
        let starts = n
            .ints("starts")?
            .ok_or_else(|| n.err("starts are required"))?;
        let ends = n.ints("ends")?.ok_or_else(|| n.err("ends are required"))?;
        (starts, ends, n.ints("axes")?, None)
    } else {
        let starts = cx.require_ints(n.input(1)?, "starts")?;
        let ends = cx.require_ints(n.input(2)?, "ends")?;
        let axes = match n.opt_input(3) {
            Some(a) => Some(cx.require_ints(a, "axes")?),
            None => None,
        };
        let steps = match n.opt_input(4) {
            Some(s) => Some(cx.require_ints(s, "steps")?),
            None => None,
        };
        (starts, ends, axes, steps)
    };
    let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
    let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return Err(n.err("starts, ends, axes and steps must have equal lengths"));
    }
    let (mut s, mut e, mut st) = (vec![0; rank], vec![i64::MAX; rank], vec![1; rank]);
    let mut seen = vec![false; rank];
    for i in 0..starts.len() {
        let a = cx.axis(axes[i], rank)?;
        if std::mem::replace(&mut seen[a], true) {
            return Err(n.err(format!("axis {a} is sliced twice")));
        }
        if steps[i] == 0 {
            return Err(n.err("steps must not be zero"));
        }
        (s[a], e[a], st[a]) = (starts[i], ends[i], steps[i]);
    }
    one(cx.op(
        Op::Slice {
            starts: s,
            ends: e,
            steps: st,
        },
        &[x],
    )?)
}

fn pad(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let rank = cx.rank(x);
    let mode_name = n.string("mode", "constant")?;
    let mode = PadMode::from_name(&mode_name)
        .ok_or_else(|| n.err(format!("unknown mode '{mode_name}'")))?;
    let (raw_pads, value) = if n.opset < 11 {
        let pads = n.ints("pads")?.ok_or_else(|| n.err("pads are required"))?;
        let v = cx.scalar_like(x, n.float("value", 0.0)? as f64);
        (pads, v)
    } else {
        let pads = cx.require_ints(n.input(1)?, "pads")?;
        let v = match n.opt_input(2) {
            Some(v) => {
                let shape = cx.ty(v).shape.clone();
                if shape.iter().any(|d| !d.is_one()) {
                    return Err(n.err("constant_value must hold one element"));
                }
                cx.reshape(v, vec![])?
            }
            None => cx.scalar_like(x, 0.0),
        };
        (pads, v)
    };
    let axes = match n.opt_input(3) {
        Some(a) => cx
            .require_ints(a, "axes")?
            .iter()
            .map(|&a| cx.axis(a, rank))
            .collect::<Result<Vec<_>>>()?,
        None => (0..rank).collect(),
    };
    if raw_pads.len() != 2 * axes.len() {
        return Err(n.err(format!(
            "expected {} pads, got {}",
            2 * axes.len(),
            raw_pads.len()
        )));
    }
    let mut pads = vec![0i64; 2 * rank];
    for (i, &a) in axes.iter().enumerate() {
        pads[a] = raw_pads[i];
        pads[rank + a] = raw_pads[axes.len() + i];
    }
    one(cx.op(Op::Pad { pads, mode }, &[x, value])?)
}

fn expand(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let dims = cx.require_ints(n.input(1)?, "shape")?;
    let shape = dims
        .iter()
        .map(|&d| {
            usize::try_from(d)
                .map(Dim::Fixed)
                .map_err(|_| n.err(format!("invalid dimension {d} in {dims:?}")))
        })
        .collect::<Result<Vec<_>>>()?;
    one(cx.op(Op::Expand { shape }, &[x])?)
}

/// Tile as expand over interleaved unit axes: `[d0, d1]` repeated `[r0, r1]` is
/// `[1, d0, 1, d1]` expanded to `[r0, d0, r1, d1]` and reshaped to `[r0*d0, r1*d1]`.
fn tile(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let shape = cx.fixed_shape(x)?;
    let reps = cx.require_ints(n.input(1)?, "repeats")?;
    if reps.len() != shape.len() || reps.iter().any(|&r| r < 0) {
        return Err(n.err(format!(
            "repeats {reps:?} must be non-negative, one per axis of {shape:?}"
        )));
    }
    let inter: Vec<usize> = shape.iter().flat_map(|&d| [1, d]).collect();
    let expanded: Vec<Dim> = shape
        .iter()
        .zip(&reps)
        .flat_map(|(&d, &r)| [Dim::Fixed(r as usize), Dim::Fixed(d)])
        .collect();
    let final_shape: Vec<usize> = shape
        .iter()
        .zip(&reps)
        .map(|(&d, &r)| d.checked_mul(r as usize))
        .collect::<Option<_>>()
        .ok_or_else(|| n.err(format!("{shape:?} repeated {reps:?} overflows")))?;
    let r = cx.reshape_fixed(x, &inter)?;
    let e = cx.op(Op::Expand { shape: expanded }, &[r])?;
    one(cx.reshape_fixed(e, &final_shape)?)
}

fn shape(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let rank = cx.rank(x) as i64;
    let clamp = |v: i64| {
        if v < 0 {
            (v + rank).max(0)
        } else {
            v.min(rank)
        }
    };
    let start = clamp(n.int("start", 0)?) as usize;
    let end = clamp(n.int("end", rank)?) as usize;
    let dims = cx.ty(x).shape.clone();
    let part = &dims[start..end.max(start)];
    match smelt_ir::shape::fixed_shape(part) {
        Some(sizes) => {
            let t = Tensor::from_i64(
                DType::I64,
                vec![sizes.len()],
                sizes.iter().map(|&d| d as i64).collect(),
            )
            .map_err(|e| n.err(e.to_string()))?;
            one(cx.constant(t))
        }
        None => {
            let full = cx.op(Op::Shape, &[x])?;
            one(slice_axis(cx, full, 0, start as i64, end as i64)?)
        }
    }
}

fn size(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let count: usize = cx.fixed_shape(x)?.iter().product();
    one(cx.constant(
        Tensor::from_i64(DType::I64, vec![], vec![count as i64])
            .map_err(|e| n.err(e.to_string()))?,
    ))
}

/// DepthToSpace's and SpaceToDepth's `blocksize`: positive, its square a size.
fn block_size(n: &Node) -> Result<usize> {
    let b = n
        .opt_int("blocksize")?
        .ok_or_else(|| n.err("blocksize is required"))?;
    usize::try_from(b)
        .ok()
        .filter(|&b| b > 0 && b.checked_mul(b).is_some_and(|sq| sq <= u32::MAX as usize))
        .ok_or_else(|| n.err(format!("blocksize {b} must be a small positive size")))
}

fn depth_to_space(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let s = cx.fixed_shape(x)?;
    let b = block_size(n)?;
    if s.len() != 4 || s[1] % (b * b) != 0 {
        return Err(n.err(format!(
            "needs NCHW input with channels divisible by {b}*{b}, got {s:?}"
        )));
    }
    let (nn, c, h, w) = (s[0], s[1], s[2], s[3]);
    let cb = c / (b * b);
    let (tmp, perm) = if n.string("mode", "DCR")? == "DCR" {
        (vec![nn, b, b, cb, h, w], vec![0, 3, 4, 1, 5, 2])
    } else {
        (vec![nn, cb, b, b, h, w], vec![0, 1, 4, 2, 5, 3])
    };
    let r = cx.reshape_fixed(x, &tmp)?;
    let t = cx.transpose(r, perm)?;
    one(cx.reshape_fixed(t, &[nn, cb, h * b, w * b])?)
}

fn space_to_depth(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let s = cx.fixed_shape(x)?;
    let b = block_size(n)?;
    if s.len() != 4 || s[2] % b != 0 || s[3] % b != 0 {
        return Err(n.err(format!(
            "needs NCHW input with H and W divisible by {b}, got {s:?}"
        )));
    }
    let (nn, c, h, w) = (s[0], s[1], s[2], s[3]);
    let r = cx.reshape_fixed(x, &[nn, c, h / b, b, w / b, b])?;
    // Opset 28 added CRD ordering; DCR (depth-column-row) stays the default.
    let perm = match n.string("mode", "DCR")?.as_str() {
        "DCR" => vec![0, 3, 5, 1, 2, 4],
        "CRD" => vec![0, 1, 3, 5, 2, 4],
        other => return Err(n.err(format!("mode must be DCR or CRD, got '{other}'"))),
    };
    let t = cx.transpose(r, perm)?;
    one(cx.reshape_fixed(t, &[nn, c * b * b, h / b, w / b])?)
}

/// Crops or pads each listed axis, centered, to the target size.
fn center_crop_pad(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let x = n.input(0)?;
    let shape = cx.fixed_shape(x)?;
    let rank = shape.len();
    let target = cx.require_ints(n.input(1)?, "shape")?;
    let axes = cx.axes_attr(n, rank)?;
    if target.len() != axes.len() || target.iter().any(|&t| t < 0) {
        return Err(n.err(format!(
            "shape {target:?} must give a non-negative size per axis {axes:?}"
        )));
    }
    let mut pads = vec![0i64; 2 * rank];
    for (&a, &t) in axes.iter().zip(&target) {
        let d = shape[a] as i64;
        // Cropping removes (d - t) / 2 at the start; padding adds (t - d) / 2 there.
        let (begin, end) = if t <= d {
            (-((d - t) / 2), -((d - t) - (d - t) / 2))
        } else {
            ((t - d) / 2, (t - d) - (t - d) / 2)
        };
        pads[a] = begin;
        pads[rank + a] = end;
    }
    let zero = cx.scalar_like(x, 0.0);
    one(cx.op(
        Op::Pad {
            pads,
            mode: PadMode::Constant,
        },
        &[x, zero],
    )?)
}
