//! Contractions and windows: matmul, convolution, transposed convolution, pooling.

use super::{Vals, broadcast_map, broadcast_shapes, for_each_index, from_vals, strides, vals};
use crate::error::{IrError, Result};
use crate::op::PoolKind;
use crate::tensor::Tensor;

/// `c[m, n] += a[m, k] * b[k, n]` in `f64`, blocked over columns and split over threads.
fn gemm_f64(m: usize, k: usize, n: usize, a: &[f64], b: &[f64], c: &mut [f64]) {
    const BLOCK: usize = 512;
    let rows_kernel = |row0: usize, c: &mut [f64]| {
        let rows = c.len() / n.max(1);
        for j0 in (0..n).step_by(BLOCK) {
            let j1 = (j0 + BLOCK).min(n);
            for r in 0..rows {
                let i = row0 + r;
                let crow = &mut c[r * n + j0..r * n + j1];
                for p in 0..k {
                    // No skipping of zero entries: 0 * inf must give NaN, as IEEE and
                    // onnxruntime have it.
                    let aip = a[i * k + p];
                    let brow = &b[p * n + j0..p * n + j1];
                    for (cv, bv) in crow.iter_mut().zip(brow) {
                        *cv += aip * bv;
                    }
                }
            }
        }
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, |t| t.get())
        .min(m);
    if threads <= 1 || m * n * k < 1 << 20 {
        rows_kernel(0, c);
        return;
    }
    let per = m.div_ceil(threads);
    std::thread::scope(|s| {
        for (t, chunk) in c.chunks_mut(per * n).enumerate() {
            s.spawn(move || rows_kernel(t * per, chunk));
        }
    });
}

fn gemm_i64(m: usize, k: usize, n: usize, a: &[i64], b: &[i64], c: &mut [i64]) {
    for i in 0..m {
        for p in 0..k {
            let aip = a[i * k + p];
            for j in 0..n {
                c[i * n + j] = c[i * n + j].wrapping_add(aip.wrapping_mul(b[p * n + j]));
            }
        }
    }
}

pub(super) fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let a_shape: Vec<usize> = if a.rank() == 1 {
        vec![1, a.shape()[0]]
    } else {
        a.shape().to_vec()
    };
    let b_shape: Vec<usize> = if b.rank() == 1 {
        vec![b.shape()[0], 1]
    } else {
        b.shape().to_vec()
    };
    let (ra, rb) = (a_shape.len(), b_shape.len());
    let (m, k, n) = (a_shape[ra - 2], a_shape[ra - 1], b_shape[rb - 1]);
    if b_shape[rb - 2] != k {
        return Err(IrError::Eval(format!(
            "matmul inner dims differ: {:?} x {:?}",
            a.shape(),
            b.shape()
        )));
    }
    let batch = broadcast_shapes(&[&a_shape[..ra - 2], &b_shape[..rb - 2]])?;
    let (map_a, map_b) = (
        broadcast_map(&batch, &a_shape[..ra - 2]),
        broadcast_map(&batch, &b_shape[..rb - 2]),
    );
    let nb = map_a.len();
    let mut shape = batch.clone();
    if a.rank() > 1 {
        shape.push(m);
    }
    if b.rank() > 1 {
        shape.push(n);
    }
    let out = match (vals(a), vals(b)) {
        (Vals::F(x), Vals::F(y)) => {
            let mut c = vec![0.0; nb * m * n];
            for bi in 0..nb {
                let (xa, yb) = (map_a[bi] * m * k, map_b[bi] * k * n);
                gemm_f64(
                    m,
                    k,
                    n,
                    &x[xa..xa + m * k],
                    &y[yb..yb + k * n],
                    &mut c[bi * m * n..(bi + 1) * m * n],
                );
            }
            Vals::F(c)
        }
        (Vals::I(x), Vals::I(y)) => {
            let mut c = vec![0; nb * m * n];
            for bi in 0..nb {
                let (xa, yb) = (map_a[bi] * m * k, map_b[bi] * k * n);
                gemm_i64(
                    m,
                    k,
                    n,
                    &x[xa..xa + m * k],
                    &y[yb..yb + k * n],
                    &mut c[bi * m * n..(bi + 1) * m * n],
                );
            }
            Vals::I(c)
        }
        _ => return Err(IrError::Eval("matmul operands differ in kind".into())),
    };
    from_vals(a.dtype(), shape, out)
}

/// For each (kernel offset, output position) pair, the input spatial offset or `None` when it falls in padding.
struct WindowTable {
    out_spatial: Vec<usize>,
    kernel_count: usize,
    out_count: usize,
    offsets: Vec<Option<usize>>,
}

fn window_table(
    in_spatial: &[usize],
    kernel: &[usize],
    strides_: &[usize],
    pads: &[usize],
    dilations: &[usize],
) -> Result<WindowTable> {
    let s = kernel.len();
    let mut out_spatial = Vec::with_capacity(s);
    for d in 0..s {
        let span = dilations[d] * (kernel[d] - 1) + 1;
        let padded = in_spatial[d] + pads[d] + pads[s + d];
        if padded < span {
            return Err(IrError::Eval("window larger than padded input".into()));
        }
        out_spatial.push((padded - span) / strides_[d] + 1);
    }
    let in_strides = strides(in_spatial);
    let kernel_count: usize = kernel.iter().product();
    let out_count: usize = out_spatial.iter().product();
    let mut offsets = Vec::with_capacity(kernel_count * out_count);
    for_each_index(kernel, |_, kidx| {
        for_each_index(&out_spatial, |_, oidx| {
            let mut off = 0usize;
            let mut valid = true;
            for d in 0..s {
                let pos = (oidx[d] * strides_[d] + kidx[d] * dilations[d]) as i64 - pads[d] as i64;
                if pos < 0 || pos >= in_spatial[d] as i64 {
                    valid = false;
                    break;
                }
                off += pos as usize * in_strides[d];
            }
            offsets.push(valid.then_some(off));
        });
    });
    Ok(WindowTable {
        out_spatial,
        kernel_count,
        out_count,
        offsets,
    })
}

pub(super) fn conv(
    x: &Tensor,
    w: &Tensor,
    strides_: &[usize],
    pads: &[usize],
    dilations: &[usize],
    group: usize,
) -> Result<Tensor> {
    if !x.dtype().is_float() {
        return Err(IrError::Eval(format!(
            "conv of {} is not supported",
            x.dtype()
        )));
    }
    let (xs, ws) = (x.shape(), w.shape());
    let (n, c, m) = (xs[0], xs[1], ws[0]);
    let (cg, mg) = (c / group, m / group);
    let table = window_table(&xs[2..], &ws[2..], strides_, pads, dilations)?;
    let (kc, oc) = (table.kernel_count, table.out_count);
    let in_sp: usize = xs[2..].iter().product();
    let (xv, wv) = (x.to_f64(), w.to_f64());
    let mut out = vec![0.0; n * m * oc];
    let mut col = vec![0.0; cg * kc * oc];
    for b in 0..n {
        for g in 0..group {
            for ci in 0..cg {
                let plane = &xv[(b * c + g * cg + ci) * in_sp..][..in_sp];
                for kk in 0..kc {
                    let row = &mut col[(ci * kc + kk) * oc..][..oc];
                    for (dst, off) in row.iter_mut().zip(&table.offsets[kk * oc..(kk + 1) * oc]) {
                        *dst = off.map_or(0.0, |o| plane[o]);
                    }
                }
            }
            let wg = &wv[g * mg * cg * kc..(g + 1) * mg * cg * kc];
            let og = &mut out[(b * m + g * mg) * oc..(b * m + (g + 1) * mg) * oc];
            gemm_f64(mg, cg * kc, oc, wg, &col, og);
        }
    }
    let mut shape = vec![n, m];
    shape.extend(table.out_spatial);
    Tensor::from_f64(x.dtype(), shape, out)
}

pub(super) fn conv_transpose(
    x: &Tensor,
    w: &Tensor,
    strides_: &[usize],
    pads: &[usize],
    dilations: &[usize],
    group: usize,
    out_shape: Vec<usize>,
) -> Result<Tensor> {
    let (xs, ws) = (x.shape(), w.shape());
    let s = xs.len() - 2;
    let (n, c) = (xs[0], xs[1]);
    let (cg, mg) = (c / group, ws[1]);
    let m = mg * group;
    let in_spatial = &xs[2..];
    let out_spatial = &out_shape[2..];
    let kernel = &ws[2..];
    let out_strides = strides(out_spatial);
    let (in_count, out_count, kc) = (
        in_spatial.iter().product::<usize>(),
        out_spatial.iter().product::<usize>(),
        kernel.iter().product::<usize>(),
    );
    // Target output offset of each (input position, kernel offset) pair.
    let mut targets = Vec::with_capacity(in_count * kc);
    for_each_index(in_spatial, |_, iidx| {
        for_each_index(kernel, |_, kidx| {
            let mut off = 0usize;
            let mut valid = true;
            for d in 0..s {
                let pos = (iidx[d] * strides_[d] + kidx[d] * dilations[d]) as i64 - pads[d] as i64;
                if pos < 0 || pos >= out_spatial[d] as i64 {
                    valid = false;
                    break;
                }
                off += pos as usize * out_strides[d];
            }
            targets.push(valid.then_some(off));
        });
    });
    let (xv, wv) = (x.to_f64(), w.to_f64());
    let mut out = vec![0.0; n * m * out_count];
    for b in 0..n {
        for g in 0..group {
            for ci in 0..cg {
                let ch = g * cg + ci;
                let plane = &xv[(b * c + ch) * in_count..][..in_count];
                for mi in 0..mg {
                    let wk = &wv[(ch * mg + mi) * kc..][..kc];
                    let dst = &mut out[(b * m + g * mg + mi) * out_count..][..out_count];
                    for (ip, &xval) in plane.iter().enumerate() {
                        for (kk, &wval) in wk.iter().enumerate() {
                            if let Some(o) = targets[ip * kc + kk] {
                                dst[o] += xval * wval;
                            }
                        }
                    }
                }
            }
        }
    }
    Tensor::from_f64(x.dtype(), out_shape, out)
}

pub(super) fn pool(
    kind: PoolKind,
    x: &Tensor,
    kernel: &[usize],
    strides_: &[usize],
    pads: &[usize],
    dilations: &[usize],
) -> Result<Tensor> {
    let s = kernel.len();
    let lead = x.rank() - s;
    let table = window_table(&x.shape()[lead..], kernel, strides_, pads, dilations)?;
    let (kc, oc) = (table.kernel_count, table.out_count);
    let planes: usize = x.shape()[..lead].iter().product();
    let in_sp: usize = x.shape()[lead..].iter().product();
    let v = vals(x);
    let mut shape = x.shape()[..lead].to_vec();
    shape.extend(table.out_spatial.iter().copied());
    let offsets = &table.offsets;
    let window = move |p: usize, o: usize| {
        (0..kc).filter_map(move |k| offsets[k * oc + o].map(|off| p * in_sp + off))
    };
    let out = match (kind, &v) {
        (PoolKind::Max, Vals::F(f)) => Vals::F(
            (0..planes * oc)
                .map(|i| {
                    window(i / oc, i % oc)
                        .map(|j| f[j])
                        .fold(f64::NEG_INFINITY, |a, b| {
                            if b.is_nan() || a.is_nan() {
                                f64::NAN
                            } else {
                                a.max(b)
                            }
                        })
                })
                .collect(),
        ),
        (PoolKind::Max, Vals::I(iv)) => Vals::I(
            (0..planes * oc)
                .map(|i| {
                    window(i / oc, i % oc)
                        .map(|j| iv[j])
                        .max()
                        .unwrap_or(i64::MIN)
                })
                .collect(),
        ),
        (PoolKind::Avg | PoolKind::AvgIncludePad, Vals::F(f)) => Vals::F(
            (0..planes * oc)
                .map(|i| {
                    let (sum, count) =
                        window(i / oc, i % oc).fold((0.0, 0usize), |(s, c), j| (s + f[j], c + 1));
                    let denom = if kind == PoolKind::Avg { count } else { kc };
                    sum / denom as f64
                })
                .collect(),
        ),
        _ => {
            return Err(IrError::Eval(format!(
                "{} of {} is not supported",
                kind.name(),
                x.dtype()
            )));
        }
    };
    from_vals(x.dtype(), shape, out)
}
