//! Reductions along axes: reduce, arg-reduce, cumulative sum, top-k.

use super::{Vals, for_each_index, from_vals, strides, vals};
use crate::dtype::DType;
use crate::error::Result;
use crate::op::{ArgKind, ReduceKind};
use crate::tensor::Tensor;
use std::cmp::Ordering;

/// Smallest and largest value of an integer dtype, as stored in the interpreter's `i64`.
fn int_range(d: DType) -> (i64, i64) {
    match d {
        DType::Bool => (0, 1),
        d => d.int_limits(),
    }
}

/// Output shape with reduced axes kept as 1, and the map from input to output linear index.
fn reduce_map(shape: &[usize], mask: &[bool]) -> (Vec<usize>, Vec<usize>) {
    let kept: Vec<usize> = shape
        .iter()
        .zip(mask)
        .map(|(&d, &m)| if m { 1 } else { d })
        .collect();
    let ks = strides(&kept);
    let mut map = Vec::with_capacity(shape.iter().product());
    for_each_index(shape, |_, idx| {
        map.push(
            idx.iter()
                .zip(&ks)
                .zip(mask)
                .map(|((i, s), &m)| if m { 0 } else { i * s })
                .sum(),
        )
    });
    (kept, map)
}

fn final_shape(kept: Vec<usize>, mask: &[bool], keep_dims: bool) -> Vec<usize> {
    if keep_dims {
        kept
    } else {
        kept.into_iter()
            .zip(mask)
            .filter(|(_, m)| !**m)
            .map(|(d, _)| d)
            .collect()
    }
}

pub(super) fn reduce(
    kind: ReduceKind,
    x: &Tensor,
    axes: &[usize],
    keep_dims: bool,
) -> Result<Tensor> {
    let mut mask = vec![false; x.rank()];
    for &a in axes {
        mask[a] = true;
    }
    let (kept, map) = reduce_map(x.shape(), &mask);
    let n_out: usize = kept.iter().product();
    let count = x.len().checked_div(n_out.max(1)).unwrap_or(0);
    let unsigned = x.dtype().is_unsigned_int();
    let out = match vals(x) {
        Vals::F(v) => {
            let init = match kind {
                ReduceKind::Sum | ReduceKind::Mean => 0.0,
                ReduceKind::Prod => 1.0,
                ReduceKind::Max => f64::NEG_INFINITY,
                ReduceKind::Min => f64::INFINITY,
            };
            let mut acc = vec![init; n_out];
            for (i, &x) in v.iter().enumerate() {
                let a = &mut acc[map[i]];
                *a = match kind {
                    ReduceKind::Sum | ReduceKind::Mean => *a + x,
                    ReduceKind::Prod => *a * x,
                    ReduceKind::Max => {
                        if x.is_nan() || a.is_nan() {
                            f64::NAN
                        } else {
                            a.max(x)
                        }
                    }
                    ReduceKind::Min => {
                        if x.is_nan() || a.is_nan() {
                            f64::NAN
                        } else {
                            a.min(x)
                        }
                    }
                };
            }
            if kind == ReduceKind::Mean {
                acc.iter_mut().for_each(|a| *a /= count as f64);
            }
            Vals::F(acc)
        }
        Vals::I(v) => {
            let (lo, hi) = int_range(x.dtype());
            let init = match kind {
                ReduceKind::Sum | ReduceKind::Mean => 0,
                ReduceKind::Prod => 1,
                ReduceKind::Max => lo,
                ReduceKind::Min => hi,
            };
            let mut acc = vec![init; n_out];
            for (i, &x) in v.iter().enumerate() {
                let a = &mut acc[map[i]];
                *a = match kind {
                    ReduceKind::Sum | ReduceKind::Mean => a.wrapping_add(x),
                    ReduceKind::Prod => a.wrapping_mul(x),
                    ReduceKind::Max if unsigned => (*a as u64).max(x as u64) as i64,
                    ReduceKind::Max => (*a).max(x),
                    ReduceKind::Min if unsigned => (*a as u64).min(x as u64) as i64,
                    ReduceKind::Min => (*a).min(x),
                };
            }
            if kind == ReduceKind::Mean {
                acc.iter_mut()
                    .for_each(|a| *a = a.checked_div(count as i64).unwrap_or(0));
            }
            Vals::I(acc)
        }
    };
    from_vals(x.dtype(), final_shape(kept, &mask, keep_dims), out)
}

fn cmp_vals(v: &Vals, unsigned: bool, i: usize, j: usize) -> Ordering {
    match v {
        Vals::F(f) => f[i].partial_cmp(&f[j]).unwrap_or(Ordering::Equal),
        Vals::I(x) if unsigned => (x[i] as u64).cmp(&(x[j] as u64)),
        Vals::I(x) => x[i].cmp(&x[j]),
    }
}

/// Outer count, axis length and inner count of `shape` split at `axis`.
fn split_at_axis(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (
        shape[..axis].iter().product(),
        shape[axis],
        shape[axis + 1..].iter().product(),
    )
}

pub(super) fn arg_reduce(
    kind: ArgKind,
    x: &Tensor,
    axis: usize,
    keep_dims: bool,
    select_last: bool,
) -> Result<Tensor> {
    let (outer, len, inner) = split_at_axis(x.shape(), axis);
    let v = vals(x);
    let unsigned = x.dtype().is_unsigned_int();
    let mut out = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        for i in 0..inner {
            let at = |k: usize| (o * len + k) * inner + i;
            let mut best = 0;
            for k in 1..len {
                let c = cmp_vals(&v, unsigned, at(k), at(best));
                let better = match kind {
                    ArgKind::Max => c == Ordering::Greater,
                    ArgKind::Min => c == Ordering::Less,
                };
                if better || (select_last && c == Ordering::Equal) {
                    best = k;
                }
            }
            out.push(best as i64);
        }
    }
    let mut shape = x.shape().to_vec();
    if keep_dims {
        shape[axis] = 1;
    } else {
        shape.remove(axis);
    }
    Tensor::from_i64(DType::I64, shape, out)
}

pub(super) fn cumsum(x: &Tensor, axis: usize, exclusive: bool, reverse: bool) -> Result<Tensor> {
    let (outer, len, inner) = split_at_axis(x.shape(), axis);
    let order: Vec<usize> = if reverse {
        (0..len).rev().collect()
    } else {
        (0..len).collect()
    };
    let out = match vals(x) {
        Vals::F(v) => {
            let mut out = vec![0.0; v.len()];
            for o in 0..outer {
                for i in 0..inner {
                    let mut acc = 0.0;
                    for &k in &order {
                        let at = (o * len + k) * inner + i;
                        if exclusive {
                            out[at] = acc;
                            acc += v[at];
                        } else {
                            acc += v[at];
                            out[at] = acc;
                        }
                    }
                }
            }
            Vals::F(out)
        }
        Vals::I(v) => {
            let mut out = vec![0i64; v.len()];
            for o in 0..outer {
                for i in 0..inner {
                    let mut acc = 0i64;
                    for &k in &order {
                        let at = (o * len + k) * inner + i;
                        if exclusive {
                            out[at] = acc;
                            acc = acc.wrapping_add(v[at]);
                        } else {
                            acc = acc.wrapping_add(v[at]);
                            out[at] = acc;
                        }
                    }
                }
            }
            Vals::I(out)
        }
    };
    from_vals(x.dtype(), x.shape().to_vec(), out)
}

pub(super) fn topk(x: &Tensor, axis: usize, k: usize, largest: bool) -> Result<Vec<Tensor>> {
    let (outer, len, inner) = split_at_axis(x.shape(), axis);
    let v = vals(x);
    let unsigned = x.dtype().is_unsigned_int();
    let mut shape = x.shape().to_vec();
    shape[axis] = k;
    let mut take = vec![0usize; outer * k * inner];
    let mut indices = vec![0i64; outer * k * inner];
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| (o * len + j) * inner + i;
            let mut order: Vec<usize> = (0..len).collect();
            // Stable sort keeps the lower index first among equal values.
            order.sort_by(|&p, &q| {
                let c = cmp_vals(&v, unsigned, at(p), at(q));
                if largest { c.reverse() } else { c }
            });
            for (r, &j) in order.iter().take(k).enumerate() {
                let dst = (o * k + r) * inner + i;
                take[dst] = at(j);
                indices[dst] = j as i64;
            }
        }
    }
    Ok(vec![
        x.take(shape.clone(), &take, None)?,
        Tensor::from_i64(DType::I64, shape, indices)?,
    ])
}
