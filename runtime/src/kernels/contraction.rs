//! Batched MatMul and N-d convolution (im2col, or a plain MatMul for 1x1 kernels) on
//! `gemm`, for f32 and f64, split over a given number of threads.

use gemm::{Parallelism, gemm};
use thiserror::Error;

/// A contraction kernel refused its operands.
#[derive(Debug, Error, PartialEq)]
pub enum KernelError {
    #[error("{0}")]
    Shape(String),
}

/// Element types the contraction kernels handle.
pub trait Float: Copy + Send + Sync + Default + std::ops::Add<Output = Self> + 'static {
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
    threads: usize,
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
    let threads = threads.max(1);
    if threads == 1 || batches * m * n * k < 1 << 16 {
        for (bi, c) in out.chunks_mut(m * n).enumerate() {
            run(bi, 0..m, c);
        }
    } else if batches >= threads {
        let per = batches.div_ceil(threads);
        std::thread::scope(|s| {
            for (t, chunk) in out.chunks_mut(per * m * n).enumerate() {
                let run = &run;
                s.spawn(move || {
                    for (j, c) in chunk.chunks_mut(m * n).enumerate() {
                        run(t * per + j, 0..m, c);
                    }
                });
            }
        });
    } else {
        let rows_per = m.div_ceil(threads).max(1);
        for (bi, c) in out.chunks_mut(m * n).enumerate() {
            std::thread::scope(|s| {
                for (t, part) in c.chunks_mut(rows_per * n).enumerate() {
                    let run = &run;
                    let start = t * rows_per;
                    let rows = start..(start + part.len() / n);
                    // `a` rows for a transposed `a` start at a column offset, which the
                    // row stride of 1 gives.
                    s.spawn(move || run(bi, rows, part));
                }
            });
        }
    }
    Ok(())
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
    threads: usize,
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
    // Input offset of each (kernel offset, output position), or None in the padding.
    let table: Vec<Option<usize>> = if pointwise {
        vec![]
    } else {
        window_table(&geo.input[2..], &kernel, &out_sp, geo)
    };
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
                for ci in 0..cg {
                    let plane = &xs[ci * in_count..(ci + 1) * in_count];
                    for kk in 0..kc {
                        let row =
                            &mut col[(ci * kc + kk) * out_count..(ci * kc + kk + 1) * out_count];
                        for (dst, off) in row
                            .iter_mut()
                            .zip(&table[kk * out_count..(kk + 1) * out_count])
                        {
                            *dst = off.map_or(T::ZERO, |o| plane[o]);
                        }
                    }
                }
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
                threads,
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

fn window_table(
    in_sp: &[usize],
    kernel: &[usize],
    out_sp: &[usize],
    geo: &ConvGeometry,
) -> Vec<Option<usize>> {
    let s = kernel.len();
    let mut in_strides = vec![1; s];
    for d in (0..s.saturating_sub(1)).rev() {
        in_strides[d] = in_strides[d + 1] * in_sp[d + 1];
    }
    let kc: usize = kernel.iter().product();
    let oc: usize = out_sp.iter().product();
    let mut table = Vec::with_capacity(kc * oc);
    let mut kidx = vec![0usize; s];
    for _ in 0..kc {
        let mut oidx = vec![0usize; s];
        for _ in 0..oc {
            let mut off = 0usize;
            let mut valid = true;
            for d in 0..s {
                let pos = (oidx[d] * geo.strides[d] + kidx[d] * geo.dilations[d]) as i64
                    - geo.pads[d] as i64;
                if pos < 0 || pos >= in_sp[d] as i64 {
                    valid = false;
                    break;
                }
                off += pos as usize * in_strides[d];
            }
            table.push(valid.then_some(off));
            increment(&mut oidx, out_sp);
        }
        increment(&mut kidx, kernel);
    }
    table
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
