//! Batched MatMul with transposes and bias on `gemm`, and one-row products on a
//! register-blocked kernel of our own (AVX-512 and AVX2/FMA twins), split over a thread pool.

use super::{
    Float, KernelError, SERIAL_MACS, Simd, StridedMatrix, SyncPtr, as_f32, as_f32_mut, f32_with,
    gemm_into,
};
use crate::threads::ThreadPool;

/// Output columns a [`row_times_matrix`] block keeps in registers: eight 8-lane
/// accumulators, enough independent FMAs to cover their latency.
const ROW_BLOCK: usize = 64;

/// `c = a * b` for one row `a` (`k` elements `a_cs` apart) and a row-major `b` (rows
/// `b_rs` apart): the 1 x k x n products of a recurrence step, where `gemm`'s packing and
/// dispatch cost more than the arithmetic. Columns go in blocks whose sums stay in
/// registers while `k` runs.
pub(super) fn row_times_matrix<T: Float>(
    a: &[T],
    a_cs: usize,
    b: &[T],
    b_rs: usize,
    k: usize,
    c: &mut [T],
) {
    #[cfg(target_arch = "x86_64")]
    if f32_with::<T>(Simd::Avx512) {
        // SAFETY: T is f32 and the CPU has AVX-512F.
        unsafe { row_times_matrix_avx512(as_f32(a), a_cs, as_f32(b), b_rs, k, as_f32_mut(c)) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if f32_with::<T>(Simd::Avx2Fma) {
        // SAFETY: T is f32, and the CPU has the features enabled below.
        unsafe { row_times_matrix_fma(as_f32(a), a_cs, as_f32(b), b_rs, k, as_f32_mut(c)) };
        return;
    }
    row_times_matrix_in(a, a_cs, b, b_rs, k, c, |s, x, y| s + x * y);
}

/// [`row_times_matrix`] for f32 with AVX2 and FMA, whatever the build's baseline.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn row_times_matrix_fma(a: &[f32], a_cs: usize, b: &[f32], b_rs: usize, k: usize, c: &mut [f32]) {
    row_times_matrix_in(a, a_cs, b, b_rs, k, c, |s, x, y| x.mul_add(y, s));
}

/// [`row_times_matrix`] for f32 with AVX-512: blocks of 128 columns keep eight 16-lane
/// sums in registers while `k` runs (one broadcast of `a` per eight FMAs), then masked
/// vectors of 16 for the rest. A recurrence step's 64 x 256 matrix is twice the L1, so
/// what counts is streaming `b` once with few instructions.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn row_times_matrix_avx512(
    a: &[f32],
    a_cs: usize,
    b: &[f32],
    b_rs: usize,
    k: usize,
    c: &mut [f32],
) {
    use std::arch::x86_64::*;
    let n = c.len();
    if k == 0 || n == 0 {
        c.fill(0.0);
        return;
    }
    // Every access below is inside these bounds.
    assert!(a.len() > (k - 1) * a_cs && b.len() >= (k - 1) * b_rs + n);
    #[inline]
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    fn block<const V: usize>(
        a: &[f32],
        a_cs: usize,
        b: &[f32],
        b_rs: usize,
        k: usize,
        c: &mut [f32],
        first: usize,
        last_mask: u16,
    ) {
        let mask = |v: usize| if v + 1 == V { last_mask } else { u16::MAX };
        // SAFETY (all): AVX-512F is enabled by the caller's target feature; lanes past
        // `c.len()` are masked off, and the assert above bounds rows `0..k` of `b`.
        let mut sums = [_mm512_setzero_ps(); V];
        for kk in 0..k {
            let x = unsafe { _mm512_set1_ps(*a.get_unchecked(kk * a_cs)) };
            let row = unsafe { b.as_ptr().add(kk * b_rs + first) };
            for (v, sum) in sums.iter_mut().enumerate() {
                let y = unsafe { _mm512_maskz_loadu_ps(mask(v), row.add(16 * v)) };
                *sum = _mm512_fmadd_ps(x, y, *sum);
            }
        }
        for (v, sum) in sums.iter().enumerate() {
            unsafe { _mm512_mask_storeu_ps(c.as_mut_ptr().add(first + 16 * v), mask(v), *sum) };
        }
    }
    let mut first = 0;
    while first + 128 <= n {
        block::<8>(a, a_cs, b, b_rs, k, c, first, u16::MAX);
        first += 128;
    }
    while first < n {
        let w = (n - first).min(16);
        block::<1>(a, a_cs, b, b_rs, k, c, first, ((1u32 << w) - 1) as u16);
        first += w;
    }
}

#[inline(always)]
fn row_times_matrix_in<T: Float>(
    a: &[T],
    a_cs: usize,
    b: &[T],
    b_rs: usize,
    k: usize,
    c: &mut [T],
    fma: impl Fn(T, T, T) -> T,
) {
    for (block, out) in c.chunks_mut(ROW_BLOCK).enumerate() {
        let first = block * ROW_BLOCK;
        let mut sums = [T::ZERO; ROW_BLOCK];
        if out.len() == ROW_BLOCK {
            for kk in 0..k {
                let x = a[kk * a_cs];
                let row = &b[kk * b_rs + first..kk * b_rs + first + ROW_BLOCK];
                for (s, &y) in sums.iter_mut().zip(row) {
                    *s = fma(*s, x, y);
                }
            }
        } else {
            let w = out.len();
            for kk in 0..k {
                let x = a[kk * a_cs];
                let row = &b[kk * b_rs + first..kk * b_rs + first + w];
                for (s, &y) in sums[..w].iter_mut().zip(row) {
                    *s = fma(*s, x, y);
                }
            }
        }
        out.copy_from_slice(&sums[..out.len()]);
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

/// One factor of [`batched_matmul`]: its elements, its shape (rank >= 2) and whether it
/// is used transposed in its last two axes.
#[derive(Debug, Clone, Copy)]
pub struct MatrixOperand<'a, T> {
    pub data: &'a [T],
    pub shape: &'a [usize],
    pub transposed: bool,
}

impl<'a, T> MatrixOperand<'a, T> {
    pub fn new(data: &'a [T], shape: &'a [usize], transposed: bool) -> Self {
        MatrixOperand {
            data,
            shape,
            transposed,
        }
    }
}

/// NumPy `matmul` of `a` and `b`, each optionally transposed in its last two axes, plus
/// an optional `bias[n]`, into `out`. Work is split over `threads` by batch, or by rows
/// for a single batch.
pub fn batched_matmul<T: Float>(
    a: MatrixOperand<'_, T>,
    b: MatrixOperand<'_, T>,
    bias: Option<&[T]>,
    out: &mut [T],
    pool: &ThreadPool,
) -> Result<(), KernelError> {
    let MatrixOperand {
        data: a,
        shape: a_shape,
        transposed: trans_a,
    } = a;
    let MatrixOperand {
        data: b,
        shape: b_shape,
        transposed: trans_b,
    } = b;
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
    let b_shared = bb.iter().product::<usize>() == 1;
    if batches > 1 && b_shared && !trans_a && ba.iter().product::<usize>() == batches {
        // Every batch of `a` times the same `b`: one (batches * m) x k product, whose rows
        // are laid out exactly as the batched result (a sequence model's projection of
        // every time step, which per batch would be a hundred 1-row products).
        return batched_matmul(
            MatrixOperand::new(a, &[batches * m, k], false),
            MatrixOperand::new(b, &b_shape[rb - 2..], trans_b),
            bias,
            out,
            pool,
        );
    }
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
    // Rows `rows` by columns `cols` of batch `bi` into `c` (that block of `out`, rows `n`
    // apart).
    let run = |bi: usize, rows: std::ops::Range<usize>, cols: std::ops::Range<usize>, c: *mut T| {
        let ai = batch_index(bi, &batch, ba) * m * k;
        let bj = batch_index(bi, &batch, bb) * k * n;
        let row_offset = rows.start as isize * a_rs;
        let a_part = &a[(ai as isize + row_offset) as usize..];
        let b_part = &b[(bj as isize + cols.start as isize * b_cs) as usize..];
        // SAFETY: `c` is this item's block, rows n apart; the strides stay in `a` and `b`.
        unsafe {
            gemm_into(
                [rows.len(), cols.len(), k],
                c,
                n,
                StridedMatrix {
                    data: a_part,
                    rs: a_rs,
                    cs: a_cs,
                },
                StridedMatrix {
                    data: b_part,
                    rs: b_rs,
                    cs: b_cs,
                },
            );
            if let Some(bias) = bias {
                for r in 0..rows.len() {
                    let row = std::slice::from_raw_parts_mut(c.add(r * n), cols.len());
                    row.iter_mut()
                        .zip(&bias[cols.clone()])
                        .for_each(|(x, &b)| *x = *x + b);
                }
            }
        }
    };
    // Work items: (batch, block of rows, block of columns); the pool runs them on its
    // threads. Columns split only where rows cannot give every thread work (one-row
    // products: a classifier's dense layers, memory-bound on their weights).
    let threads = pool.threads();
    let small = threads == 1 || batches * m * n * k < SERIAL_MACS;
    let rows_per = if small || batches >= threads {
        m.max(1)
    } else {
        m.div_ceil(threads).max(1)
    };
    let blocks = m.div_ceil(rows_per).max(1);
    let cols_per = if small || batches * blocks >= threads {
        n.max(1)
    } else {
        n.div_ceil(2 * threads)
            .next_multiple_of(16)
            .clamp(1, n.max(1))
    };
    let col_blocks = n.div_ceil(cols_per).max(1);
    let items = batches * blocks * col_blocks;
    let base = SyncPtr(out.as_mut_ptr());
    let body = |range: std::ops::Range<usize>| {
        for item in range {
            let (bi, blk, cb) = (
                item / (blocks * col_blocks),
                item / col_blocks % blocks,
                item % col_blocks,
            );
            let rows = blk * rows_per..((blk + 1) * rows_per).min(m);
            let cols = cb * cols_per..((cb + 1) * cols_per).min(n);
            // SAFETY: items cover disjoint blocks of `out`, which outlives the run.
            let c = unsafe { base.get().add((bi * m + rows.start) * n + cols.start) };
            // `a` rows for a transposed `a` start at a column offset, which the row
            // stride of 1 gives.
            run(bi, rows, cols, c);
        }
    };
    pool.run(items, if small { items.max(1) } else { 1 }, &body);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch of transposed `a` times a single column (the shape a folded transpose and
    /// a matrix-vector product give), against the definition.
    #[test]
    fn transposed_a_times_one_column() {
        let (m, k, n) = (4usize, 4usize, 1usize);
        let a: Vec<f32> = (0..6 * k * m).map(|i| (i % 7) as f32 - 3.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| i as f32 - 1.0).collect();
        let mut out = vec![0f32; 6 * m * n];
        batched_matmul(
            MatrixOperand::new(&a, &[6, k, m], true),
            MatrixOperand::new(&b, &[k, n], false),
            None,
            &mut out,
            &ThreadPool::new(2),
        )
        .unwrap();
        for bi in 0..6 {
            for i in 0..m {
                for j in 0..n {
                    let want: f32 = (0..k)
                        .map(|p| a[bi * k * m + p * m + i] * b[p * n + j])
                        .sum();
                    assert_eq!(out[bi * m * n + i * n + j], want, "b{bi} i{i} j{j}");
                }
            }
        }
    }

    /// One row times a matrix (the register-blocked path, not `gemm`) for widths around its
    /// block size, a strided row (transposed `a`), with bias, in f32 (the FMA path where
    /// the CPU has it) and f64, against the definition.
    #[test]
    fn one_row_times_a_matrix() {
        fn check<T: Float + Into<f64> + From<f32>>() {
            for (k, n) in [
                (1usize, 1usize),
                (7, 63),
                (64, 64),
                (13, 65),
                (3, 130),
                (64, 256),
            ] {
                for trans_a in [false, true] {
                    let a: Vec<T> = (0..k).map(|i| T::from((i % 5) as f32 - 2.0)).collect();
                    let b: Vec<T> = (0..k * n)
                        .map(|i| T::from((i % 11) as f32 * 0.25 - 1.0))
                        .collect();
                    let bias: Vec<T> = (0..n).map(|j| T::from(j as f32 * 0.5)).collect();
                    let mut out = vec![T::ZERO; n];
                    let a_shape = if trans_a { [k, 1] } else { [1, k] };
                    batched_matmul(
                        MatrixOperand::new(&a, &a_shape, trans_a),
                        MatrixOperand::new(&b, &[k, n], false),
                        Some(&bias),
                        &mut out,
                        &ThreadPool::new(1),
                    )
                    .unwrap();
                    for j in 0..n {
                        let want: f64 = (0..k)
                            .map(|p| a[p].into() * b[p * n + j].into())
                            .sum::<f64>()
                            + bias[j].into();
                        let got: f64 = out[j].into();
                        assert!(
                            (got - want).abs() < 1e-4,
                            "k{k} n{n} trans_a {trans_a} [{j}]: {got} vs {want}"
                        );
                    }
                }
            }
        }
        check::<f32>();
        check::<f64>();
    }

    /// One-row products big enough for the threads split their columns (blocks of 16,
    /// the last one short), with `b` plain or transposed and a bias.
    #[test]
    fn one_row_products_split_their_columns_over_threads() {
        let (k, n) = (1024usize, 600usize);
        let a: Vec<f32> = (0..k).map(|i| (i % 5) as f32 - 2.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 11) as f32 * 0.25 - 1.0).collect();
        let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.5).collect();
        for trans_b in [false, true] {
            for threads in [2, 3] {
                let mut out = vec![f32::NAN; n];
                let b_shape = if trans_b { [n, k] } else { [k, n] };
                batched_matmul(
                    MatrixOperand::new(&a, &[1, k], false),
                    MatrixOperand::new(&b, &b_shape, trans_b),
                    Some(&bias),
                    &mut out,
                    &ThreadPool::new(threads),
                )
                .unwrap();
                for j in 0..n {
                    let weight = |p: usize| if trans_b { b[j * k + p] } else { b[p * n + j] };
                    let want: f64 = (0..k).map(|p| a[p] as f64 * weight(p) as f64).sum::<f64>()
                        + bias[j] as f64;
                    assert!(
                        (out[j] as f64 - want).abs() < 1e-3,
                        "trans_b {trans_b}, {threads} threads, [{j}]: {} vs {want}",
                        out[j]
                    );
                }
            }
        }
    }

    /// Batches of `a` sharing one `b` fold into a single product; the result must equal
    /// the per-batch definition, with bias, on one and two threads.
    #[test]
    fn shared_b_batches_fold_into_one_product() {
        let (batches, m, k, n) = (5usize, 3usize, 7usize, 9usize);
        let a: Vec<f64> = (0..batches * m * k)
            .map(|i| (i % 11) as f64 - 5.0)
            .collect();
        let b: Vec<f64> = (0..k * n).map(|i| (i % 5) as f64 - 2.0).collect();
        let bias: Vec<f64> = (0..n).map(|i| i as f64).collect();
        for threads in [1, 2] {
            let mut out = vec![f64::NAN; batches * m * n];
            batched_matmul(
                MatrixOperand::new(&a, &[batches, m, k], false),
                MatrixOperand::new(&b, &[1, k, n], false),
                Some(&bias),
                &mut out,
                &ThreadPool::new(threads),
            )
            .unwrap();
            for bi in 0..batches {
                for i in 0..m {
                    for j in 0..n {
                        let want: f64 = bias[j]
                            + (0..k)
                                .map(|p| a[(bi * m + i) * k + p] * b[p * n + j])
                                .sum::<f64>();
                        assert_eq!(out[(bi * m + i) * n + j], want, "b{bi} i{i} j{j}");
                    }
                }
            }
        }
    }
}
