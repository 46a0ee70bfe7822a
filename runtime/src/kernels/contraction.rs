//! Batched MatMul and N-d convolution (im2col, or a plain MatMul for 1x1 kernels) on
//! `gemm`, for f32 and f64, split over a given number of threads.

use crate::pool::ThreadPool;
use gemm::{Parallelism, gemm};
use thiserror::Error;

/// A contraction kernel refused its operands.
#[derive(Debug, Error, PartialEq)]
pub enum KernelError {
    #[error("{0}")]
    Shape(String),
}

/// Element types the contraction kernels handle.
pub trait Float:
    Copy + Send + Sync + Default + std::ops::Add<Output = Self> + std::ops::Mul<Output = Self> + 'static
{
    const ZERO: Self;
    const ONE: Self;
}

impl Float for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

impl Float for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

/// `c[m, n] = a[m, k] * b[k, n]` through `gemm`; operands given by base slices and strides.
#[allow(clippy::too_many_arguments)]
fn gemm_into<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [T],
    a: &[T],
    a_rs: isize,
    a_cs: isize,
    b: &[T],
    b_rs: isize,
    b_cs: isize,
) {
    debug_assert!(c.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c[..m * n].iter_mut().for_each(|x| *x = T::ZERO);
        return;
    }
    // SAFETY: the strides address only elements inside `a` (m x k), `b` (k x n) and
    // `c` (m x n, row-major), which the callers size accordingly; `c` is exclusive.
    unsafe {
        gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            T::ZERO,
            T::ONE,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

fn broadcast_batch(a: &[usize], b: &[usize]) -> Result<Vec<usize>, KernelError> {
    let r = a.len().max(b.len());
    (0..r)
        .map(|i| {
            let da = if i + a.len() >= r {
                a[i + a.len() - r]
            } else {
                1
            };
            let db = if i + b.len() >= r {
                b[i + b.len() - r]
            } else {
                1
            };
            match (da, db) {
                (x, y) if x == y => Ok(x),
                (1, y) => Ok(y),
                (x, 1) => Ok(x),
                (x, y) => Err(KernelError::Shape(format!(
                    "batch dims {x} and {y} do not broadcast"
                ))),
            }
        })
        .collect()
}

/// Linear index into a (possibly broadcast) batch of shape `own` for batch `i` of `full`.
fn batch_index(i: usize, full: &[usize], own: &[usize]) -> usize {
    let (mut rem, mut idx, mut stride) = (i, 0, 1);
    for d in (0..full.len()).rev() {
        let pos = rem % full[d];
        rem /= full[d];
        let od = (d + own.len()).checked_sub(full.len()).map(|j| own[j]);
        if let Some(size) = od {
            if size != 1 {
                idx += pos * stride;
            }
            stride *= size;
        }
    }
    idx
}

/// NumPy `matmul` of `a` (shape `a_shape`, rank >= 2) and `b` (rank >= 2), each optionally
/// transposed in its last two axes, plus an optional `bias[n]`, into `out`. Work is
/// split over `threads` by batch, or by rows for a single batch.
#[allow(clippy::too_many_arguments)]
pub fn batched_matmul<T: Float>(
    a: &[T],
    a_shape: &[usize],
    trans_a: bool,
    b: &[T],
    b_shape: &[usize],
    trans_b: bool,
    bias: Option<&[T]>,
    out: &mut [T],
    pool: &ThreadPool,
) -> Result<(), KernelError> {
    let (ra, rb) = (a_shape.len(), b_shape.len());
    if ra < 2 || rb < 2 {
        return Err(KernelError::Shape("matmul operands need rank >= 2".into()));
    }
    let (m, k) = if trans_a {
        (a_shape[ra - 1], a_shape[ra - 2])
    } else {
        (a_shape[ra - 2], a_shape[ra - 1])
    };
    let (kb, n) = if trans_b {
        (b_shape[rb - 1], b_shape[rb - 2])
    } else {
        (b_shape[rb - 2], b_shape[rb - 1])
    };
    if k != kb {
        return Err(KernelError::Shape(format!(
            "inner dims differ: {k} and {kb}"
        )));
    }
    let (ba, bb) = (&a_shape[..ra - 2], &b_shape[..rb - 2]);
    let batch = broadcast_batch(ba, bb)?;
    let batches: usize = batch.iter().product();
    if a.len() != ba.iter().product::<usize>() * m * k
        || b.len() != bb.iter().product::<usize>() * k * n
        || out.len() != batches * m * n
    {
        return Err(KernelError::Shape(
            "buffer sizes do not match the shapes".into(),
        ));
    }
    if bias.is_some_and(|bs| bs.len() != n) {
        return Err(KernelError::Shape(format!("bias must have {n} values")));
    }
    // Row-major strides of op(a) and op(b) within one batch.
    let (a_rs, a_cs) = if trans_a {
        (1, m as isize)
    } else {
        (k as isize, 1)
    };
    let (b_rs, b_cs) = if trans_b {
        (1, k as isize)
    } else {
        (n as isize, 1)
    };
    let run = |bi: usize, rows: std::ops::Range<usize>, c: &mut [T]| {
        let ai = batch_index(bi, &batch, ba) * m * k;
        let bj = batch_index(bi, &batch, bb) * k * n;
        let row_offset = rows.start as isize * a_rs;
        let a_part = &a[(ai as isize + row_offset) as usize..];
        gemm_into(
            rows.len(),
            n,
            k,
            c,
            a_part,
            a_rs,
            a_cs,
            &b[bj..],
            b_rs,
            b_cs,
        );
        if let Some(bias) = bias {
            for row in c.chunks_mut(n) {
                row.iter_mut().zip(bias).for_each(|(x, &b)| *x = *x + b);
            }
        }
    };
    // Work items: (batch, block of rows); the pool runs them on its threads.
    let threads = pool.threads();
    let small = threads == 1 || batches * m * n * k < 1 << 16;
    let rows_per = if small || batches >= threads {
        m.max(1)
    } else {
        m.div_ceil(threads).max(1)
    };
    let blocks = m.div_ceil(rows_per).max(1);
    let items = batches * blocks;
    let base = SyncPtr(out.as_mut_ptr());
    let body = |range: std::ops::Range<usize>| {
        for item in range {
            let (bi, blk) = (item / blocks, item % blocks);
            let rows = blk * rows_per..((blk + 1) * rows_per).min(m);
            // SAFETY: items cover disjoint rows of `out`, which outlives the run.
            let c = unsafe {
                std::slice::from_raw_parts_mut(
                    base.get().add((bi * m + rows.start) * n),
                    rows.len() * n,
                )
            };
            // `a` rows for a transposed `a` start at a column offset, which the row
            // stride of 1 gives.
            run(bi, rows, c);
        }
    };
    pool.run(items, if small { items.max(1) } else { 1 }, &body);
    Ok(())
}

/// A pointer the pool's threads share; each writes a disjoint part of the buffer.
struct SyncPtr<T>(*mut T);
// SAFETY: used only for disjoint writes while the owner waits for the pool.
unsafe impl<T> Sync for SyncPtr<T> {}
unsafe impl<T> Send for SyncPtr<T> {}

impl<T> SyncPtr<T> {
    fn get(&self) -> *mut T {
        self.0
    }
}

/// The geometry of an N-d convolution: `x: [N, C, spatial..]`, `w: [M, C/group, kernel..]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvGeometry {
    pub input: Vec<usize>,
    pub weight: Vec<usize>,
    pub strides: Vec<usize>,
    /// All begin pads, then all end pads.
    pub pads: Vec<usize>,
    pub dilations: Vec<usize>,
    pub group: usize,
}

impl ConvGeometry {
    /// The output's spatial sizes.
    pub fn out_spatial(&self) -> Result<Vec<usize>, KernelError> {
        let s = self
            .weight
            .len()
            .checked_sub(2)
            .ok_or_else(|| KernelError::Shape("weight rank < 3".into()))?;
        (0..s)
            .map(|d| {
                let span = self.dilations[d] * (self.weight[2 + d] - 1) + 1;
                let padded = self.input[2 + d] + self.pads[d] + self.pads[s + d];
                padded
                    .checked_sub(span)
                    .map(|x| x / self.strides[d] + 1)
                    .ok_or_else(|| KernelError::Shape("window larger than the padded input".into()))
            })
            .collect()
    }
}

/// Convolution with an optional per-filter bias, as `group` MatMuls of the weights with
/// the im2col matrix of the input (the input itself for 1x1, unit-stride, unpadded kernels).
pub fn conv<T: Float>(
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    geo: &ConvGeometry,
    out: &mut [T],
    pool: &ThreadPool,
) -> Result<(), KernelError> {
    let (n, c, m) = (geo.input[0], geo.input[1], geo.weight[0]);
    let g = geo.group.max(1);
    if c % g != 0 || m % g != 0 || geo.weight[1] * g != c {
        return Err(KernelError::Shape(format!(
            "{c} channels and {m} filters do not split into {g} groups"
        )));
    }
    let (cg, mg) = (c / g, m / g);
    let out_sp = geo.out_spatial()?;
    let (in_count, out_count): (usize, usize) =
        (geo.input[2..].iter().product(), out_sp.iter().product());
    let kernel: Vec<usize> = geo.weight[2..].to_vec();
    let kc: usize = kernel.iter().product();
    if out.len() != n * m * out_count || x.len() != n * c * in_count || w.len() != m * cg * kc {
        return Err(KernelError::Shape(
            "buffer sizes do not match the convolution".into(),
        ));
    }
    let pointwise =
        kc == 1 && geo.strides.iter().all(|&st| st == 1) && geo.pads.iter().all(|&p| p == 0);
    // Per spatial axis, the input coordinate of each (kernel tap, output position), or
    // None in the padding; small, so they are rebuilt per call.
    let axis_tables: Vec<Vec<Option<usize>>> = (0..kernel.len())
        .map(|d| {
            let (k, o, i) = (kernel[d], out_sp[d], geo.input[2 + d]);
            (0..k * o)
                .map(|t| {
                    let pos = ((t % o) * geo.strides[d] + (t / o) * geo.dilations[d]) as i64
                        - geo.pads[d] as i64;
                    (0..i as i64).contains(&pos).then_some(pos as usize)
                })
                .collect()
        })
        .collect();
    if cg == 1 && mg == 1 && !pointwise {
        // Depthwise: each output channel reads one input channel; a tiny GEMM per
        // channel would cost more than the arithmetic, so accumulate tap by tap.
        let base = SyncPtr(out.as_mut_ptr());
        let per_channel = |items: std::ops::Range<usize>| {
            let mut row = vec![T::ZERO; out_count];
            for item in items {
                let (b, ch) = (item / m, item % m);
                let xs = &x[(b * c + ch) * in_count..(b * c + ch + 1) * in_count];
                // SAFETY: each (batch, channel) plane of `out` is written by one item.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(base.get().add(item * out_count), out_count)
                };
                let start = bias.map_or(T::ZERO, |bs| bs[ch]);
                dst.iter_mut().for_each(|v| *v = start);
                for kk in 0..kc {
                    im2col_row(
                        xs,
                        0,
                        kk,
                        &kernel,
                        &out_sp,
                        &geo.input[2..],
                        &axis_tables,
                        &mut row,
                    );
                    let wv = w[ch * kc + kk];
                    for (d, &r) in dst.iter_mut().zip(&row) {
                        *d = *d + wv * r;
                    }
                }
            }
        };
        let min_items = if n * m * out_count * kc < 1 << 15 {
            n * m
        } else {
            1
        };
        pool.run(n * m, min_items.max(1), &per_channel);
        return Ok(());
    }
    let mut col = if pointwise {
        vec![]
    } else {
        vec![T::ZERO; cg * kc * out_count]
    };
    for b in 0..n {
        for gi in 0..g {
            let xs = &x[(b * c + gi * cg) * in_count..(b * c + (gi + 1) * cg) * in_count];
            let rhs: &[T] = if pointwise {
                xs
            } else {
                let base = SyncPtr(col.as_mut_ptr());
                let fill = |rows: std::ops::Range<usize>| {
                    for r in rows {
                        // SAFETY: each row of `col` is written by one item only.
                        let row = unsafe {
                            std::slice::from_raw_parts_mut(base.get().add(r * out_count), out_count)
                        };
                        im2col_row(
                            xs,
                            r / kc,
                            r % kc,
                            &kernel,
                            &out_sp,
                            &geo.input[2..],
                            &axis_tables,
                            row,
                        );
                    }
                };
                let rows = cg * kc;
                let min_rows = if rows * out_count < 1 << 15 { rows } else { 1 };
                pool.run(rows, min_rows, &fill);
                &col
            };
            let wg = &w[gi * mg * cg * kc..(gi + 1) * mg * cg * kc];
            let og = &mut out[(b * m + gi * mg) * out_count..(b * m + (gi + 1) * mg) * out_count];
            batched_matmul(
                wg,
                &[mg, cg * kc],
                false,
                rhs,
                &[cg * kc, out_count],
                false,
                None,
                og,
                pool,
            )?;
            if let Some(bias) = bias {
                for (row, &bv) in og.chunks_mut(out_count).zip(&bias[gi * mg..(gi + 1) * mg]) {
                    row.iter_mut().for_each(|v| *v = *v + bv);
                }
            }
        }
    }
    Ok(())
}

/// One row of the im2col matrix: input channel `ci` at kernel tap `kk` for every output
/// position (zero in the padding).
#[allow(clippy::too_many_arguments)]
fn im2col_row<T: Float>(
    xs: &[T],
    ci: usize,
    kk: usize,
    kernel: &[usize],
    out_sp: &[usize],
    in_sp: &[usize],
    axis_tables: &[Vec<Option<usize>>],
    row: &mut [T],
) {
    let s = kernel.len();
    let in_count: usize = in_sp.iter().product();
    let plane = &xs[ci * in_count..(ci + 1) * in_count];
    // Kernel tap per axis.
    let mut taps = vec![0usize; s];
    let mut rest = kk;
    for d in (0..s).rev() {
        taps[d] = rest % kernel[d];
        rest /= kernel[d];
    }
    let last = s - 1;
    let (ol, il) = (out_sp[last], in_sp[last]);
    let inner = &axis_tables[last][taps[last] * ol..(taps[last] + 1) * ol];
    // Outer output positions (all axes but the last), then a run over the last axis.
    let outer: usize = out_sp[..last].iter().product();
    let mut oidx = vec![0usize; last];
    for o in 0..outer {
        let mut base = Some(0usize);
        for d in 0..last {
            base = base.and_then(|b| {
                axis_tables[d][taps[d] * out_sp[d] + oidx[d]].map(|p| b * in_sp[d] + p)
            });
        }
        let dst = &mut row[o * ol..(o + 1) * ol];
        match base {
            None => dst.iter_mut().for_each(|v| *v = T::ZERO),
            Some(b) => {
                let src = &plane[b * il..(b + 1) * il];
                for (v, p) in dst.iter_mut().zip(inner) {
                    *v = p.map_or(T::ZERO, |p| src[p]);
                }
            }
        }
        increment(&mut oidx, &out_sp[..last]);
    }
}

fn increment(idx: &mut [usize], shape: &[usize]) {
    for d in (0..idx.len()).rev() {
        idx[d] += 1;
        if idx[d] < shape[d] {
            return;
        }
        idx[d] = 0;
    }
}
