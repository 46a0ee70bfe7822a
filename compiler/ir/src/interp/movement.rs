//! Data movement: transpose, slice, concat, pad, gathers, scatters, resize.

use super::{Vals, for_each_index, from_vals, strides, vals};
use crate::error::{IrError, Result};
use crate::infer::slice_bounds;
use crate::op::{Op, PadMode, ScatterReduction};
use crate::resize::{ResizeAxis, Sampling, Taps};
use crate::tensor::{FILL, Tensor};

pub(super) fn transpose(x: &Tensor, perm: &[usize]) -> Result<Tensor> {
    let in_strides = strides(x.shape());
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape()[p]).collect();
    let mut idx = Vec::with_capacity(x.len());
    for_each_index(&shape, |_, i| {
        idx.push(i.iter().zip(perm).map(|(&v, &p)| v * in_strides[p]).sum())
    });
    x.take(shape, &idx, None)
}

pub(super) fn slice(x: &Tensor, starts: &[i64], ends: &[i64], steps: &[i64]) -> Result<Tensor> {
    let in_strides = strides(x.shape());
    let mut per_axis: Vec<Vec<usize>> = Vec::with_capacity(x.rank());
    for (a, &n) in x.shape().iter().enumerate() {
        let (s, e) = slice_bounds(n, starts[a], ends[a], steps[a]);
        let mut v = Vec::new();
        let mut i = s;
        while (steps[a] > 0 && i < e) || (steps[a] < 0 && i > e) {
            v.push(i as usize);
            i += steps[a];
        }
        per_axis.push(v);
    }
    let shape: Vec<usize> = per_axis.iter().map(Vec::len).collect();
    let mut idx = Vec::with_capacity(shape.iter().product());
    for_each_index(&shape, |_, i| {
        idx.push(
            (0..i.len())
                .map(|a| per_axis[a][i[a]] * in_strides[a])
                .sum(),
        )
    });
    x.take(shape, &idx, None)
}

pub(super) fn concat(parts: &[&Tensor], axis: usize) -> Result<Tensor> {
    let outer: usize = parts[0].shape()[..axis].iter().product();
    let mut shape = parts[0].shape().to_vec();
    shape[axis] = parts.iter().map(|p| p.shape()[axis]).sum();
    if outer == 1 {
        // Along the first non-unit axis: the parts one after another.
        return Tensor::concat_flat(parts)?.reshaped(shape);
    }
    // Each part's rows of `chunk` elements, interleaved: contiguous runs copied whole
    // (a merged Q/K/V weight is 1.8 M elements, whose index list took 14 MB).
    let chunks: Vec<usize> = parts
        .iter()
        .map(|p| p.shape()[axis..].iter().product())
        .collect();
    Tensor::interleave_rows(parts, &chunks, outer)?.reshaped(shape)
}

pub(super) fn pad(x: &Tensor, value: &Tensor, pads: &[i64], mode: PadMode) -> Result<Tensor> {
    let r = x.rank();
    let in_strides = strides(x.shape());
    let shape: Vec<usize> = (0..r)
        .map(|a| (x.shape()[a] as i64 + pads[a] + pads[r + a]) as usize)
        .collect();
    if mode != PadMode::Constant && x.shape().iter().zip(&shape).any(|(&n, &m)| n == 0 && m > 0) {
        return Err(IrError::Eval(format!(
            "{} padding of an empty axis",
            mode.name()
        )));
    }
    let mut idx = Vec::with_capacity(shape.iter().product());
    for_each_index(&shape, |_, i| {
        let mut lin = 0usize;
        for a in 0..r {
            let n = x.shape()[a] as i64;
            let mut p = i[a] as i64 - pads[a];
            if p < 0 || p >= n {
                p = match mode {
                    PadMode::Constant => {
                        lin = FILL;
                        break;
                    }
                    PadMode::Edge => p.clamp(0, n - 1),
                    PadMode::Wrap => p.rem_euclid(n),
                    PadMode::Reflect => {
                        if n == 1 {
                            0
                        } else {
                            let period = 2 * (n - 1);
                            let q = p.rem_euclid(period);
                            if q < n { q } else { period - q }
                        }
                    }
                };
            }
            lin += p as usize * in_strides[a];
        }
        idx.push(lin);
    });
    x.take(shape, &idx, Some(value))
}

/// Normalizes a possibly negative index into `[0, n)`, or reports it.
fn norm_index(i: i64, n: usize, what: &str) -> Result<usize> {
    let j = if i < 0 { i + n as i64 } else { i };
    if j < 0 || j >= n as i64 {
        return Err(IrError::Eval(format!(
            "{what} index {i} is out of range for axis of size {n}"
        )));
    }
    Ok(j as usize)
}

pub(super) fn gather(x: &Tensor, indices: &Tensor, axis: usize) -> Result<Tensor> {
    let (outer, n, inner) = (
        x.shape()[..axis].iter().product::<usize>(),
        x.shape()[axis],
        x.shape()[axis + 1..].iter().product::<usize>(),
    );
    let ids: Vec<usize> = indices
        .to_i64()
        .into_iter()
        .map(|i| norm_index(i, n, "gather"))
        .collect::<Result<_>>()?;
    let mut shape = x.shape()[..axis].to_vec();
    shape.extend_from_slice(indices.shape());
    shape.extend_from_slice(&x.shape()[axis + 1..]);
    let mut idx = Vec::with_capacity(outer * ids.len() * inner);
    for o in 0..outer {
        for &j in &ids {
            idx.extend((0..inner).map(|i| (o * n + j) * inner + i));
        }
    }
    x.take(shape, &idx, None)
}

pub(super) fn gather_elements(x: &Tensor, indices: &Tensor, axis: usize) -> Result<Tensor> {
    let xs = strides(x.shape());
    let ids = indices.to_i64();
    let mut idx = Vec::with_capacity(ids.len());
    let mut err = None;
    for_each_index(indices.shape(), |lin, i| {
        let mut off = 0;
        for a in 0..i.len() {
            let p = if a == axis {
                match norm_index(ids[lin], x.shape()[a], "gather_elements") {
                    Ok(p) => p,
                    Err(e) => {
                        err.get_or_insert(e);
                        0
                    }
                }
            } else {
                i[a]
            };
            off += p * xs[a];
        }
        idx.push(off);
    });
    if let Some(e) = err {
        return Err(e);
    }
    x.take(indices.shape().to_vec(), &idx, None)
}

/// Linear offsets of the slices addressed by GatherND/ScatterND indices, and the slice size.
fn nd_offsets(
    data_shape: &[usize],
    indices: &Tensor,
    batch_dims: usize,
) -> Result<(Vec<usize>, usize)> {
    let q = indices.rank();
    let last = indices.shape()[q - 1];
    let ds = strides(data_shape);
    let slice: usize = data_shape[batch_dims + last..].iter().product();
    let batch_count: usize = indices.shape()[..batch_dims].iter().product();
    let per_batch: usize = indices.shape()[batch_dims..q - 1].iter().product();
    let ids = indices.to_i64();
    let mut offsets = Vec::with_capacity(batch_count * per_batch);
    for b in 0..batch_count {
        // The batch index into data, from the multi-index over the batch dims.
        let mut rem = b;
        let mut base = 0;
        for a in (0..batch_dims).rev() {
            base += (rem % data_shape[a]) * ds[a];
            rem /= data_shape[a];
        }
        for t in 0..per_batch {
            let tuple = &ids[(b * per_batch + t) * last..][..last];
            let mut off = base;
            for (j, &v) in tuple.iter().enumerate() {
                off += norm_index(v, data_shape[batch_dims + j], "gather_nd")? * ds[batch_dims + j];
            }
            offsets.push(off);
        }
    }
    Ok((offsets, slice))
}

pub(super) fn gather_nd(x: &Tensor, indices: &Tensor, batch_dims: usize) -> Result<Tensor> {
    let (offsets, slice) = nd_offsets(x.shape(), indices, batch_dims)?;
    let q = indices.rank();
    let last = indices.shape()[q - 1];
    let mut shape = indices.shape()[..q - 1].to_vec();
    shape.extend_from_slice(&x.shape()[batch_dims + last..]);
    let idx: Vec<usize> = offsets.iter().flat_map(|&o| o..o + slice).collect();
    x.take(shape, &idx, None)
}

fn combine(r: ScatterReduction, old: &mut Vals, at: usize, upd: &Vals, j: usize) {
    match (old, upd) {
        (Vals::F(o), Vals::F(u)) => {
            let (a, b) = (o[at], u[j]);
            o[at] = match r {
                ScatterReduction::None => b,
                ScatterReduction::Add => a + b,
                ScatterReduction::Mul => a * b,
                ScatterReduction::Max => a.max(b),
                ScatterReduction::Min => a.min(b),
            }
        }
        (Vals::I(o), Vals::I(u)) => {
            let (a, b) = (o[at], u[j]);
            o[at] = match r {
                ScatterReduction::None => b,
                ScatterReduction::Add => a.wrapping_add(b),
                ScatterReduction::Mul => a.wrapping_mul(b),
                ScatterReduction::Max => a.max(b),
                ScatterReduction::Min => a.min(b),
            }
        }
        _ => {}
    }
}

pub(super) fn scatter_elements(
    x: &Tensor,
    indices: &Tensor,
    updates: &Tensor,
    axis: usize,
    r: ScatterReduction,
) -> Result<Tensor> {
    let xs = strides(x.shape());
    let ids = indices.to_i64();
    let mut out = vals(x);
    let upd = vals(updates);
    let mut targets = Vec::with_capacity(ids.len());
    let mut err = None;
    for_each_index(indices.shape(), |lin, i| {
        let mut off = 0;
        for a in 0..i.len() {
            let p = if a == axis {
                norm_index(ids[lin], x.shape()[a], "scatter_elements").unwrap_or_else(|e| {
                    err.get_or_insert(e);
                    0
                })
            } else {
                i[a]
            };
            off += p * xs[a];
        }
        targets.push(off);
    });
    if let Some(e) = err {
        return Err(e);
    }
    for (j, &t) in targets.iter().enumerate() {
        combine(r, &mut out, t, &upd, j);
    }
    from_vals(x.dtype(), x.shape().to_vec(), out)
}

pub(super) fn scatter_nd(
    x: &Tensor,
    indices: &Tensor,
    updates: &Tensor,
    r: ScatterReduction,
) -> Result<Tensor> {
    let (offsets, slice) = nd_offsets(x.shape(), indices, 0)?;
    if updates.len() != offsets.len() * slice {
        return Err(IrError::Eval(format!(
            "scatter_nd updates have {} elements, expected {}",
            updates.len(),
            offsets.len() * slice
        )));
    }
    let mut out = vals(x);
    let upd = vals(updates);
    for (t, &o) in offsets.iter().enumerate() {
        for s in 0..slice {
            combine(r, &mut out, o + s, &upd, t * slice + s);
        }
    }
    from_vals(x.dtype(), x.shape().to_vec(), out)
}

pub(super) fn resize(op: &Op, x: &Tensor, roi: &Tensor) -> Result<Tensor> {
    let (
        Op::Resize {
            sizes,
            scales,
            extrapolation,
            ..
        },
        Some(sampling),
    ) = (op, Sampling::of(op))
    else {
        return Err(IrError::Eval("resize called with another op".into()));
    };
    let r = x.rank();
    let roi = roi.to_f64();
    let xs = strides(x.shape());
    // Per axis and output index: the contributing (input index, weight) pairs, or None when outside (crop-and-resize).
    let taps: Vec<Vec<Option<Taps>>> = (0..r)
        .map(|a| {
            sampling.taps(ResizeAxis {
                n_in: x.shape()[a],
                n_out: sizes[a],
                scale: scales[a],
                roi: if roi.len() == 2 * r {
                    (roi[a], roi[r + a])
                } else {
                    (0.0, 1.0)
                },
            })
        })
        .collect();
    let xv = x.to_f64();
    let mut out = Vec::with_capacity(sizes.iter().product());
    for_each_index(sizes, |_, o| {
        let per: Vec<&Option<Vec<(usize, f64)>>> = (0..r).map(|a| &taps[a][o[a]]).collect();
        if per.iter().any(|t| t.is_none()) {
            out.push(*extrapolation);
            return;
        }
        let lists: Vec<&Vec<(usize, f64)>> =
            per.iter().map(|t| t.as_ref().expect("checked")).collect();
        let counts: Vec<usize> = lists.iter().map(|l| l.len()).collect();
        let mut acc = 0.0;
        for_each_index(&counts, |_, c| {
            let mut off = 0;
            let mut w = 1.0;
            for a in 0..r {
                let (i, wt) = lists[a][c[a]];
                off += i * xs[a];
                w *= wt;
            }
            if w != 0.0 {
                acc += w * xv[off];
            }
        });
        out.push(acc);
    });
    if x.dtype().is_float() {
        from_vals(x.dtype(), sizes.clone(), Vals::F(out))
    } else {
        from_vals(
            x.dtype(),
            sizes.clone(),
            Vals::I(out.into_iter().map(|v| v.round() as i64).collect()),
        )
    }
}
