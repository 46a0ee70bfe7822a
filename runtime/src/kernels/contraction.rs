//! Batched MatMul and N-d convolution (im2col, or a plain MatMul for 1x1 kernels) on
//! `gemm`, for f32 and f64, split over a thread pool.

use super::implicit;
use crate::threads::ThreadPool;
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
    Copy
    + Send
    + Sync
    + Default
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Mul<Output = Self>
    + 'static
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

/// `c[m, n] = a[m, k] * b[k, n]` through `gemm`; operands given by base slices and
/// strides, `c` by a pointer and its row stride.
///
/// # Safety
/// `c` must address `m` rows of `n` elements `c_rs` apart that nothing else accesses
/// during the call, and the strides must keep `a` and `b` inside their slices.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_into<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    c: *mut T,
    c_rs: usize,
    a: &[T],
    a_rs: isize,
    a_cs: isize,
    b: &[T],
    b_rs: isize,
    b_cs: isize,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for i in 0..m {
            // SAFETY: row i of `c`, per the contract.
            unsafe { std::slice::from_raw_parts_mut(c.add(i * c_rs), n) }.fill(T::ZERO);
        }
        return;
    }
    if m == 1 && b_cs == 1 && b_rs >= 0 && a_cs >= 0 {
        // SAFETY: row 0 of `c`, per the contract.
        let row = unsafe { std::slice::from_raw_parts_mut(c, n) };
        row_times_matrix(a, a_cs as usize, b, b_rs as usize, k, row);
        return;
    }
    // SAFETY: per the contract.
    unsafe {
        gemm(
            m,
            n,
            k,
            c,
            1,
            c_rs as isize,
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

/// Instruction sets the runtime's own loops have `#[target_feature]` twins for (the crate
/// builds for the x86-64 baseline, whose vectors are 128 bits).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
enum Simd {
    Avx2,
    Avx2Fma,
    Avx512,
}

/// Whether `T` is f32 and the CPU has `simd`, so a twin built for it may run on `T`s
/// viewed as f32 (`as_f32`).
#[cfg(target_arch = "x86_64")]
fn f32_with<T: Float>(simd: Simd) -> bool {
    is_f32::<T>()
        && match simd {
            Simd::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            Simd::Avx2Fma => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            Simd::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
        }
}

/// `x` as f32.
///
/// # Safety
/// `T` must be f32 (`f32_with` checked it).
unsafe fn as_f32<T>(x: &[T]) -> &[f32] {
    // SAFETY: per the contract, the same type.
    unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<f32>(), x.len()) }
}

/// `x` as f32, mutably.
///
/// # Safety
/// `T` must be f32 (`f32_with` checked it).
unsafe fn as_f32_mut<T>(x: &mut [T]) -> &mut [f32] {
    // SAFETY: per the contract, the same type.
    unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr().cast::<f32>(), x.len()) }
}

/// `acc += w * x`, element by element (AVX2 and FMA for f32 where the CPU has them).
fn multiply_add<T: Float>(acc: &mut [T], w: T, x: &[T]) {
    #[cfg(target_arch = "x86_64")]
    if f32_with::<T>(Simd::Avx2Fma) {
        // SAFETY: T is f32, and the CPU has the features enabled below.
        unsafe { multiply_add_fma(as_f32_mut(acc), as_f32(&[w])[0], as_f32(x)) };
        return;
    }
    for (a, &v) in acc.iter_mut().zip(x) {
        *a = *a + w * v;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn multiply_add_fma(acc: &mut [f32], w: f32, x: &[f32]) {
    for (a, &v) in acc.iter_mut().zip(x) {
        *a = w.mul_add(v, *a);
    }
}

/// Output columns a [`row_times_matrix`] block keeps in registers: eight 8-lane
/// accumulators, enough independent FMAs to cover their latency.
const ROW_BLOCK: usize = 64;

/// `c = a * b` for one row `a` (`k` elements `a_cs` apart) and a row-major `b` (rows
/// `b_rs` apart): the 1 x k x n products of a recurrence step, where `gemm`'s packing and
/// dispatch cost more than the arithmetic. Columns go in blocks whose sums stay in
/// registers while `k` runs.
fn row_times_matrix<T: Float>(a: &[T], a_cs: usize, b: &[T], b_rs: usize, k: usize, c: &mut [T]) {
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
    let b_shared = bb.iter().product::<usize>() == 1;
    if batches > 1 && b_shared && !trans_a && ba.iter().product::<usize>() == batches {
        // Every batch of `a` times the same `b`: one (batches * m) x k product, whose rows
        // are laid out exactly as the batched result (a sequence model's projection of
        // every time step, which per batch would be a hundred 1-row products).
        return batched_matmul(
            a,
            &[batches * m, k],
            false,
            b,
            &b_shape[rb - 2..],
            trans_b,
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
                rows.len(),
                cols.len(),
                k,
                c,
                n,
                a_part,
                a_rs,
                a_cs,
                b_part,
                b_rs,
                b_cs,
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

/// A pointer the pool's threads share; each writes a disjoint part of the buffer.
pub(crate) struct SyncPtr<T>(pub(crate) *mut T);
// SAFETY: used only for disjoint writes while the owner waits for the pool.
unsafe impl<T> Sync for SyncPtr<T> {}
unsafe impl<T> Send for SyncPtr<T> {}

impl<T> SyncPtr<T> {
    pub(crate) fn get(&self) -> *mut T {
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
    /// Negative results are stored as zero (NaN stays NaN): a ReLU that followed the
    /// convolution, folded into its stores.
    pub relu: bool,
}

/// A stride cut to the most that still places a second window inside the padded extent:
/// any larger stride yields the same single window (`(extent - span) / stride == 0`),
/// while kernels size scratch buffers by the stride (a stride of 2^40 asked for terabytes).
pub(crate) fn useful_stride(stride: usize, extent: usize, span: usize) -> usize {
    match extent.checked_sub(span) {
        Some(room) => stride.min(room.saturating_add(1)),
        None => stride,
    }
}

impl ConvGeometry {
    /// The same convolution with each stride no larger than it needs to be
    /// ([`useful_stride`]): the output and every value in it stay the same.
    pub fn with_useful_strides(mut self) -> ConvGeometry {
        let s = self.strides.len();
        for d in 0..s.min(self.weight.len().saturating_sub(2)) {
            let span = self.dilations[d]
                .saturating_mul(self.weight[2 + d].saturating_sub(1))
                .saturating_add(1);
            let extent = self.input[2 + d]
                .saturating_add(self.pads[d])
                .saturating_add(self.pads[s + d]);
            self.strides[d] = useful_stride(self.strides[d], extent, span);
        }
        self
    }

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
    conv_tiled(x, w, None, bias, geo, out, pool, TILE_ELEMENTS)
}

/// The filters `w` of convolution `geo` packed once for [`conv_prepacked`] (for weights
/// that do not change between runs), or `None` where this CPU and geometry do not use
/// packed filters (plain [`conv`] then).
pub fn prepack_conv_filters(w: &[f32], geo: &ConvGeometry) -> Option<Vec<f32>> {
    let size: usize = geo.weight.iter().product();
    (implicit::handles(geo) && w.len() == size).then(|| implicit::pack_filters(w, geo))
}

/// [`conv`] with the filters also given packed by [`prepack_conv_filters`].
pub fn conv_prepacked(
    x: &[f32],
    w: &[f32],
    packed: &[f32],
    bias: Option<&[f32]>,
    geo: &ConvGeometry,
    out: &mut [f32],
    pool: &ThreadPool,
) -> Result<(), KernelError> {
    conv_tiled(x, w, Some(packed), bias, geo, out, pool, TILE_ELEMENTS)
}

/// [`conv`] with work items of about `tile_elements` im2col elements, and the ReLU of
/// `geo.relu`: in the stores of the implicit products, as a pass over the output after
/// the other paths.
#[allow(clippy::too_many_arguments)]
fn conv_tiled<T: Float>(
    x: &[T],
    w: &[T],
    prepacked: Option<&[T]>,
    bias: Option<&[T]>,
    geo: &ConvGeometry,
    out: &mut [T],
    pool: &ThreadPool,
    tile_elements: usize,
) -> Result<(), KernelError> {
    conv_paths(x, w, prepacked, bias, geo, out, pool, tile_elements)?;
    if geo.relu && !(is_f32::<T>() && implicit::handles(geo)) {
        let dst = SyncPtr(out.as_mut_ptr());
        let len = out.len();
        pool.run(len, 16 * 1024, &|r: std::ops::Range<usize>| {
            // SAFETY: the pool hands out disjoint ranges of `out`.
            let part = unsafe { std::slice::from_raw_parts_mut(dst.get().add(r.start), r.len()) };
            for v in part {
                // NaN stays NaN (the comparison is false).
                if *v < T::ZERO {
                    *v = T::ZERO;
                }
            }
        });
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn conv_paths<T: Float>(
    x: &[T],
    w: &[T],
    prepacked: Option<&[T]>,
    bias: Option<&[T]>,
    geo: &ConvGeometry,
    out: &mut [T],
    pool: &ThreadPool,
    tile_elements: usize,
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
    if kernel.is_empty() || kernel.len() > MAX_SPATIAL {
        return Err(KernelError::Shape(format!(
            "{} spatial axes (1 to {MAX_SPATIAL} supported)",
            kernel.len()
        )));
    }
    let kc: usize = kernel.iter().product();
    if out.len() != n * m * out_count || x.len() != n * c * in_count || w.len() != m * cg * kc {
        return Err(KernelError::Shape(
            "buffer sizes do not match the convolution".into(),
        ));
    }
    let pointwise =
        kc == 1 && geo.strides.iter().all(|&st| st == 1) && geo.pads.iter().all(|&p| p == 0);
    let window = Window {
        kernel: &kernel,
        out_sp: &out_sp,
        in_sp: &geo.input[2..],
        strides: &geo.strides,
        dilations: &geo.dilations,
        pads: &geo.pads,
        taps: Vec::new(),
        phases: None,
    }
    .with_taps();
    let base = SyncPtr(out.as_mut_ptr());
    if cg == 1 && mg == 1 && !pointwise {
        // Depthwise: each output channel reads one input channel; a tiny GEMM per
        // channel would cost more than the arithmetic, so accumulate tap by tap.
        let per_channel = |items: std::ops::Range<usize>| {
            let mut row = vec![T::ZERO; out_count];
            let (mut padded, mut sums) = (Vec::new(), Vec::new());
            for item in items {
                let (b, ch) = (item / m, item % m);
                let plane = &x[(b * c + ch) * in_count..(b * c + ch + 1) * in_count];
                // SAFETY: each (batch, channel) plane of `out` is written by one item.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(base.get().add(item * out_count), out_count)
                };
                let start = bias.map_or(T::ZERO, |bs| bs[ch]);
                let taps = &w[ch * kc..(ch + 1) * kc];
                if kernel.len() == 2 && window.undilated() {
                    window.depthwise_planes(plane, taps, start, dst, &mut padded, &mut sums);
                    continue;
                }
                dst.iter_mut().for_each(|v| *v = start);
                if kernel.len() == 2 {
                    window.depthwise_2d(plane, taps, dst);
                    continue;
                }
                for (kk, &wv) in taps.iter().enumerate() {
                    window.columns(plane, kk, 0..out_count, &mut row);
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
    if is_f32::<T>() && implicit::handles(geo) {
        // SAFETY: T is f32.
        return unsafe {
            implicit::conv2d(
                as_f32(x),
                as_f32(w),
                prepacked.map(|p| as_f32(p)),
                bias.map(|b| as_f32(b)),
                geo,
                as_f32_mut(out),
                pool,
                tile_elements,
            )
        };
    }
    // A stride along the rows makes every im2col run a strided copy; split the input rows
    // by column phase once, and the runs are contiguous again.
    let last = kernel.len() - 1;
    let phased_input;
    let (window, x, in_count) = if !pointwise && geo.strides[last] > 1 && geo.dilations[last] == 1 {
        let phased = Window {
            phases: Some(geo.strides[last]),
            taps: Vec::new(),
            ..window
        }
        .with_taps();
        phased_input = phased.phased_rows(x);
        let plane = in_count / geo.input[2 + last].max(1) * phased.row_len();
        (phased, &phased_input[..], plane)
    } else {
        (window, x, in_count)
    };
    // Work items are (batch, group, block of output columns, block of filters): each
    // builds the im2col matrix of its columns only (small enough to stay in cache until
    // the GEMM reads it) and multiplies its filters by it. Every column tile repacks all
    // its filters, and every filter block its columns, so where the filters outweigh the
    // columns (more filters than output positions: small late-stage feature maps) the
    // columns stay in one tile and the threads split the filters instead.
    let depth = cg * kc;
    // One thread gains nothing from more work items, and every filter block repacks the
    // columns once more (MNIST CNN's 32->64 conv at 1 thread: 0.124 -> 0.108 ms).
    let small = pool.threads() == 1 || n * m * out_count * depth < SERIAL_MACS;
    let wanted = 2 * pool.threads();
    let filters_outweigh = mg > out_count;
    let cols_per = if filters_outweigh {
        out_count.max(1)
    } else {
        tile_columns(
            // A 1x1 convolution builds no im2col matrix to keep in cache.
            if pointwise { usize::MAX } else { tile_elements },
            depth,
            out_count,
            if small { 1 } else { wanted.div_ceil(n * g) },
        )
    };
    let tiles = out_count.div_ceil(cols_per);
    let column_items = n * g * tiles;
    let filter_blocks = if small || column_items >= wanted {
        1
    } else if filters_outweigh {
        // One block per thread: each more block repacks the columns once more.
        pool.threads()
            .div_ceil(column_items)
            .min(mg.div_ceil(MIN_FILTER_BLOCK))
            .max(1)
    } else {
        wanted
            .div_ceil(column_items)
            .min(mg.div_ceil(MIN_FILTER_BLOCK))
            .max(1)
    };
    let filters_per = mg.div_ceil(filter_blocks);
    let filter_blocks = mg.div_ceil(filters_per).max(1);
    // Filters `filters` of group `gi` times one column tile's matrix `rhs` (rows `rhs_rs`
    // apart), plus their bias, into their rows of `out` at the tile's columns.
    //
    // Callers make sure no other call writes the same filters at the same columns while
    // this one runs (the SAFETY of the writes below); `out` outlives the run.
    let multiply_tile = |b: usize,
                         gi: usize,
                         filters: std::ops::Range<usize>,
                         cols: &std::ops::Range<usize>,
                         rhs: &[T],
                         rhs_rs: usize| unsafe {
        let width = cols.len();
        let first_filter = gi * mg + filters.start;
        let wg = &w[first_filter * depth..(gi * mg + filters.end) * depth];
        let dst = base
            .get()
            .add((b * m + first_filter) * out_count + cols.start);
        gemm_into(
            filters.len(),
            width,
            depth,
            dst,
            out_count,
            wg,
            depth as isize,
            1,
            rhs,
            rhs_rs as isize,
            1,
        );
        if let Some(bias) = bias {
            let own = &bias[first_filter..gi * mg + filters.end];
            for (r, &bv) in own.iter().enumerate() {
                let row = std::slice::from_raw_parts_mut(dst.add(r * out_count), width);
                row.iter_mut().for_each(|v| *v = *v + bv);
            }
        }
    };
    if filter_blocks > 1 && !pointwise {
        // Few, deep column tiles (small late-stage feature maps): each tile's im2col
        // matrix is built once, its rows split over the threads, and then shared by the
        // threads' filter blocks, instead of every block building the same matrix.
        let mut shared = vec![T::ZERO; depth * cols_per];
        for column_item in 0..column_items {
            let (b, gi, t) = (
                column_item / (g * tiles),
                column_item / tiles % g,
                column_item % tiles,
            );
            let cols = t * cols_per..((t + 1) * cols_per).min(out_count);
            let width = cols.len();
            let xs = &x[(b * c + gi * cg) * in_count..(b * c + (gi + 1) * cg) * in_count];
            let matrix = SyncPtr(shared.as_mut_ptr());
            let build = |rows: std::ops::Range<usize>| {
                for r in rows {
                    let plane = &xs[(r / kc) * in_count..(r / kc + 1) * in_count];
                    // SAFETY: row r of the matrix is written by this call only.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(matrix.get().add(r * width), width)
                    };
                    window.im2col_row(plane, r % kc, cols.clone(), dst);
                }
            };
            pool.run(depth, 1, &build);
            let rhs = &shared[..depth * width];
            let multiply = |blocks: std::ops::Range<usize>| {
                for fb in blocks {
                    let filters = fb * filters_per..((fb + 1) * filters_per).min(mg);
                    // Each block of filters is multiplied by one call only, as
                    // `multiply_tile` requires.
                    multiply_tile(b, gi, filters, &cols, rhs, width);
                }
            };
            pool.run(filter_blocks, 1, &multiply);
        }
        return Ok(());
    }
    let items = column_items * filter_blocks;
    let body = |range: std::ops::Range<usize>| {
        with_scratch::<T>(if pointwise { 0 } else { depth * cols_per }, |col| {
            for item in range {
                let (fb, column_item) = (item % filter_blocks, item / filter_blocks);
                let (b, gi, t) = (
                    column_item / (g * tiles),
                    column_item / tiles % g,
                    column_item % tiles,
                );
                let filters = fb * filters_per..((fb + 1) * filters_per).min(mg);
                let cols = t * cols_per..((t + 1) * cols_per).min(out_count);
                let width = cols.len();
                let xs = &x[(b * c + gi * cg) * in_count..(b * c + (gi + 1) * cg) * in_count];
                let (rhs, rhs_rs): (&[T], usize) = if pointwise {
                    (&xs[cols.start..], in_count)
                } else {
                    for r in 0..depth {
                        let plane = &xs[(r / kc) * in_count..(r / kc + 1) * in_count];
                        let dst = &mut col[r * width..(r + 1) * width];
                        window.im2col_row(plane, r % kc, cols.clone(), dst);
                    }
                    (&col[..depth * width], width)
                };
                // Each (column tile, filter block) item is multiplied by one call only, as
                // `multiply_tile` requires.
                multiply_tile(b, gi, filters, &cols, rhs, rhs_rs);
            }
        });
    };
    let min_items = if small { items } else { 1 };
    pool.run(items, min_items.max(1), &body);
    Ok(())
}

/// How a row of `width` inputs, `left` columns into its zero-padded row, splits into
/// `step` column phases (padded column c goes to phase c % step at c / step): for each
/// phase that gets a column, (phase, its first input column, how many, where the first
/// lands in the phase row). Worked out once per row shape: rows are short, and divisions
/// cost more than their copies.
pub(crate) fn column_phases(
    width: usize,
    left: usize,
    step: usize,
) -> Vec<(usize, usize, usize, usize)> {
    (0..step)
        .filter_map(|phase| {
            let first = (phase + step - left % step) % step;
            (first < width).then(|| {
                (
                    phase,
                    first,
                    (width - first).div_ceil(step),
                    (first + left) / step,
                )
            })
        })
        .collect()
}

/// `dst[j] = src[j * step]` for every `j < dst.len()` (`src` holds them): a row's
/// column phase. Steps 1 and 2 as a copy and a plain index loop (an iterator with
/// `step_by` compiled to a scalar loop with a division per element, 80% of a stride-2
/// depthwise convolution).
#[inline]
pub(crate) fn every_nth<T: Copy>(dst: &mut [T], src: &[T], step: usize) {
    match step {
        1 => dst.copy_from_slice(&src[..dst.len()]),
        2 => {
            let whole = dst.len().min(src.len() / 2);
            let (body, tail) = dst.split_at_mut(whole);
            let pairs = &src[..2 * whole];
            for (j, d) in body.iter_mut().enumerate() {
                *d = pairs[2 * j];
            }
            if let (Some(&v), Some(d)) = (src.get(2 * whole), tail.first_mut()) {
                *d = v;
            }
        }
        _ => {
            for (d, run) in dst.iter_mut().zip(src.chunks(step)) {
                *d = run[0];
            }
        }
    }
}

/// Whether `T` is f32.
fn is_f32<T: Float>() -> bool {
    std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
}

/// Contractions with fewer multiply-adds than this run on the calling thread: about 10 us
/// of work, less than waking the pool's workers costs.
pub(crate) const SERIAL_MACS: usize = 1 << 19;

/// Fewest filters a work item multiplies (below this the GEMM's packing dominates).
const MIN_FILTER_BLOCK: usize = 32;

/// Spatial axes a convolution may have.
const MAX_SPATIAL: usize = 8;

/// Elements of im2col matrix a work item aims for (256 KiB of f32, about half an L2).
const TILE_ELEMENTS: usize = 64 * 1024;

/// Output columns per work item for an im2col matrix `depth` rows deep: tiles of about
/// `tile_elements`, at least `min_tiles` of them while each keeps 64 columns, and all of
/// about the same width (so threads finish together).
fn tile_columns(tile_elements: usize, depth: usize, out_count: usize, min_tiles: usize) -> usize {
    let widest = (tile_elements / depth.max(1)).max(64);
    let tiles = out_count
        .div_ceil(widest)
        .max(min_tiles.min(out_count / 64))
        .max(1);
    out_count
        .div_ceil(tiles)
        .next_multiple_of(16)
        .clamp(1, out_count.max(1))
}

thread_local! {
    /// Per-thread im2col scratch, reused across calls (f64 cells so f32 and f64 fit).
    static SCRATCH: std::cell::RefCell<Vec<f64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's scratch buffer as `len` elements of `T` (contents
/// unspecified: the callers overwrite what they read).
fn with_scratch<T: Float>(len: usize, f: impl FnOnce(&mut [T])) {
    SCRATCH.with(|cell| {
        let mut cells = cell.borrow_mut();
        let need = (len * std::mem::size_of::<T>()).div_ceil(8);
        if cells.len() < need {
            cells.resize(need, 0.0);
        }
        // SAFETY: T is f32 or f64 (plain bits, alignment <= 8) and the buffer holds at
        // least `len` of them.
        let buf = unsafe { std::slice::from_raw_parts_mut(cells.as_mut_ptr().cast::<T>(), len) };
        f(buf);
    });
}

/// The sliding window of a convolution over one input plane.
struct Window<'a> {
    kernel: &'a [usize],
    out_sp: &'a [usize],
    in_sp: &'a [usize],
    strides: &'a [usize],
    dilations: &'a [usize],
    /// All begin pads, then all end pads.
    pads: &'a [usize],
    /// Every kernel tap, flat index first (see [`Window::with_taps`]).
    taps: Vec<Tap>,
    /// Where the last axis has a stride `s` > 1: the input rows are read split by column
    /// phase (`phased_rows`), each row `s` sub-rows of `ceil(width / s)`, so that every
    /// im2col run is a contiguous copy instead of a strided one.
    phases: Option<usize>,
}

/// A kernel tap's position on every spatial axis and, along the last axis, its input
/// offset and the output positions `lo..hi` whose input lies inside the plane: computed
/// once per convolution instead of once per im2col row (they take divisions).
#[derive(Debug, Clone, Copy)]
struct Tap {
    at: [usize; MAX_SPATIAL],
    off: i64,
    lo: usize,
    hi: usize,
}

impl Window<'_> {
    /// The window with its tap table filled in.
    fn with_taps(mut self) -> Self {
        let s = self.kernel.len();
        let count: usize = self.kernel.iter().product();
        let phase_width = self.in_sp[s - 1].div_ceil(self.strides[s - 1].max(1));
        self.taps = (0..count)
            .map(|kk| {
                let mut at = [0usize; MAX_SPATIAL];
                let mut rest = kk;
                for d in (0..s).rev() {
                    at[d] = rest % self.kernel[d];
                    rest /= self.kernel[d];
                }
                let (mut off, lo, hi) = self.inside(s - 1, at[s - 1]);
                if let Some(step) = self.phases {
                    // Input column a * step + off is column a + off / step (rounded down)
                    // of phase off mod step.
                    let step = step as i64;
                    off = off.rem_euclid(step) * phase_width as i64 + off.div_euclid(step);
                }
                Tap { at, off, lo, hi }
            })
            .collect();
        self
    }

    /// The length of an input row as `columns` reads it (split by phase or not).
    fn row_len(&self) -> usize {
        let last = self.in_sp.len() - 1;
        match self.phases {
            Some(step) => step * self.in_sp[last].div_ceil(step),
            None => self.in_sp[last],
        }
    }

    /// `x` (planes of `in_count` elements, rows of the last axis) with each row split by
    /// column phase for `phases`: row r becomes sub-rows b = 0..step, sub-row b holding
    /// columns b, b + step, ... (zero-filled to equal lengths).
    fn phased_rows<T: Float>(&self, x: &[T]) -> Vec<T> {
        let (Some(step), last) = (self.phases, self.in_sp.len() - 1) else {
            return x.to_vec();
        };
        let width = self.in_sp[last];
        let sub = width.div_ceil(step);
        let mut out = vec![T::ZERO; x.len() / width.max(1) * step * sub];
        for (row, dst) in x.chunks(width).zip(out.chunks_mut(step * sub)) {
            for (b, part) in dst.chunks_mut(sub).enumerate() {
                for (d, &v) in part.iter_mut().zip(row.iter().skip(b).step_by(step)) {
                    *d = v;
                }
            }
        }
        out
    }

    /// `dst += conv(plane, taps)` for one channel of a two-dimensional depthwise
    /// convolution, straight from the input rows (no im2col row per tap): per output row
    /// and tap, the output positions whose input lies inside the plane accumulate
    /// `weight * input`, contiguously for unit stride.
    fn depthwise_2d<T: Float>(&self, plane: &[T], taps: &[T], dst: &mut [T]) {
        let (kh_n, kw_n) = (self.kernel[0], self.kernel[1]);
        let (oh_n, ow_n) = (self.out_sp[0], self.out_sp[1]);
        let (ih_n, iw_n) = (self.in_sp[0], self.in_sp[1]);
        let (sh, sw) = (self.strides[0], self.strides[1]);
        for kw in 0..kw_n {
            let (off, lo, hi) = self.inside(1, kw);
            if lo >= hi {
                continue;
            }
            let first = (lo * sw) as i64 + off;
            for kh in 0..kh_n {
                let wv = taps[kh * kw_n + kw];
                let off_h = self.offset(0, kh);
                for oh in 0..oh_n {
                    let ih = (oh * sh) as i64 + off_h;
                    if ih < 0 || ih >= ih_n as i64 {
                        continue;
                    }
                    let src = &plane[ih as usize * iw_n + first as usize..(ih as usize + 1) * iw_n];
                    let out = &mut dst[oh * ow_n + lo..oh * ow_n + hi];
                    if sw == 1 {
                        for (d, &x) in out.iter_mut().zip(src) {
                            *d = *d + wv * x;
                        }
                    } else {
                        for (d, &x) in out.iter_mut().zip(src.iter().step_by(sw)) {
                            *d = *d + wv * x;
                        }
                    }
                }
            }
        }
    }

    /// Whether every dilation is 1.
    fn undilated(&self) -> bool {
        self.dilations.iter().all(|&v| v == 1)
    }

    /// [`Window::depthwise_2d`] for undilated windows: the plane is copied once into a
    /// zero-bordered buffer and split by stride phase (for strides `sh, sw`, phase
    /// `(a, b)` holds padded rows `sh * r + a` and columns `sw * c + b`), after which each
    /// tap is one multiply-add over a whole phase plane at a fixed offset (into `sums`,
    /// whose rows have the phase pitch and whose extra columns are dropped): one long
    /// vector loop per tap instead of a short (or strided) one per output row.
    #[allow(clippy::too_many_arguments)]
    fn depthwise_planes<T: Float>(
        &self,
        plane: &[T],
        taps: &[T],
        start: T,
        dst: &mut [T],
        padded: &mut Vec<T>,
        sums: &mut Vec<T>,
    ) {
        let (ih, iw) = (self.in_sp[0], self.in_sp[1]);
        let (oh, ow) = (self.out_sp[0], self.out_sp[1]);
        let (kh_n, kw_n) = (self.kernel[0], self.kernel[1]);
        let (sh, sw) = (self.strides[0].max(1), self.strides[1].max(1));
        let (top, left, right) = (self.pads[0], self.pads[1], self.pads[3]);
        if oh == 0 || ow == 0 {
            dst.fill(start);
            return;
        }
        let pitch = iw + left + right;
        let rows = ((oh - 1) * sh + kh_n).max(ih + top);
        // Phase planes of `rows_p` rows of `pitch_p`, one after another in `padded`.
        let (rows_p, pitch_p) = (rows.div_ceil(sh), pitch.div_ceil(sw));
        let phase_len = rows_p * pitch_p;
        // Every channel writes the same positions, so the zero border a buffer of this
        // size got once is still in place.
        if padded.len() != sh * sw * phase_len {
            padded.clear();
            padded.resize(sh * sw * phase_len, T::ZERO);
        }
        let column_phases = column_phases(iw, left, sw);
        // Padded row r + top is row pr of row phase a.
        let (mut pr, mut a) = (top / sh, top % sh);
        for r in 0..ih {
            let src = &plane[r * iw..(r + 1) * iw];
            let row_at = |b: usize| (a * sw + b) * phase_len + pr * pitch_p;
            if sw == 1 {
                let at = row_at(0) + left;
                padded[at..at + iw].copy_from_slice(src);
            } else {
                for &(b, first, count, column) in &column_phases {
                    let at = row_at(b) + column;
                    every_nth(&mut padded[at..at + count], &src[first..], sw);
                }
            }
            a += 1;
            if a == sh {
                (pr, a) = (pr + 1, 0);
            }
        }
        // Output position j (row j / pitch_p) reads phase (kh % sh, kw % sw) at
        // j + (kh / sh) * pitch_p + kw / sw.
        let len = (oh - 1) * pitch_p + ow;
        sums.clear();
        sums.resize(len, start);
        for kh in 0..kh_n {
            for kw in 0..kw_n {
                let phase = ((kh % sh) * sw + kw % sw) * phase_len;
                let shift = phase + (kh / sh) * pitch_p + kw / sw;
                multiply_add(sums, taps[kh * kw_n + kw], &padded[shift..shift + len]);
            }
        }
        for (y, out) in dst.chunks_mut(ow).enumerate() {
            out.copy_from_slice(&sums[y * pitch_p..y * pitch_p + ow]);
        }
    }

    /// Input offset of kernel tap `tap` on axis `d` (negative: in the begin padding).
    fn offset(&self, d: usize, tap: usize) -> i64 {
        (tap * self.dilations[d]) as i64 - self.pads[d] as i64
    }

    /// The offset of tap `tap` on axis `d`, and the output positions `lo..hi` along `d`
    /// whose input lies inside the plane (`lo == hi` when none do).
    #[inline(always)]
    fn inside(&self, d: usize, tap: usize) -> (i64, usize, usize) {
        let (off, step) = (self.offset(d, tap), self.strides[d]);
        let (outs, ins) = (self.out_sp[d] as i64, self.in_sp[d] as i64);
        let lo = if off >= 0 {
            0
        } else {
            ((-off) as usize).div_ceil(step)
        };
        let hi = if off > ins - 1 {
            0
        } else {
            (((ins - 1 - off) as usize) / step + 1).min(outs as usize)
        };
        (off, lo, hi.max(lo))
    }

    /// [`Window::columns`], with 256-bit moves for f32 where the CPU has AVX2 (the
    /// runtime is built for the x86-64 baseline, whose copies move 128 bits).
    fn im2col_row<T: Float>(
        &self,
        plane: &[T],
        kk: usize,
        cols: std::ops::Range<usize>,
        dst: &mut [T],
    ) {
        #[cfg(target_arch = "x86_64")]
        if f32_with::<T>(Simd::Avx2) {
            // SAFETY: T is f32, and the CPU has AVX2.
            unsafe { self.columns_avx2(as_f32(plane), kk, cols, as_f32_mut(dst)) };
            return;
        }
        self.columns(plane, kk, cols, dst);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn columns_avx2(
        &self,
        plane: &[f32],
        kk: usize,
        cols: std::ops::Range<usize>,
        dst: &mut [f32],
    ) {
        self.columns(plane, kk, cols, dst);
    }

    /// Columns `cols` (flat output positions) of the im2col row of `plane` at kernel tap
    /// `kk`, into `dst`: the input under the tap, zero in the padding.
    #[inline(always)]
    fn columns<T: Float>(
        &self,
        plane: &[T],
        kk: usize,
        cols: std::ops::Range<usize>,
        dst: &mut [T],
    ) {
        let last = self.kernel.len() - 1;
        let Tap {
            at: taps,
            off,
            lo,
            hi,
        } = self.taps[kk];
        let (ol, il) = (self.out_sp[last], self.row_len());
        let step = if self.phases.is_some() {
            1
        } else {
            self.strides[last]
        };
        let last_axis = LastAxis { lo, hi, step, off };
        if last == 1 {
            // Two spatial axes (the common case): the same walk without the odometer.
            let (rows_in, stride, off_h) =
                (self.in_sp[0], self.strides[0], self.offset(0, taps[0]));
            let (mut oh, mut j0) = (cols.start / ol, cols.start % ol);
            let (mut o, mut written) = (cols.start, 0);
            if step == 1 && last_axis.lo == 0 && last_axis.hi == ol && j0 == 0 {
                // Unit stride and no padding along the row for this tap (the bulk of
                // unpadded convolutions): whole output rows are plain copies.
                let off = off as usize;
                for run in dst[..cols.len()].chunks_mut(ol) {
                    let ih = (oh * stride) as i64 + off_h;
                    if ih >= 0 && ih < rows_in as i64 {
                        let start = ih as usize * il + off;
                        copy_short(run, &plane[start..start + run.len()]);
                    } else {
                        run.fill(T::ZERO);
                    }
                    oh += 1;
                }
                return;
            }
            while o < cols.end {
                let j1 = ol.min(j0 + cols.end - o);
                let run = &mut dst[written..written + (j1 - j0)];
                let ih = (oh * stride) as i64 + off_h;
                if ih >= 0 && ih < rows_in as i64 {
                    let ih = ih as usize;
                    last_axis.fill(run, &plane[ih * il..(ih + 1) * il], j0, j1);
                } else {
                    run.fill(T::ZERO);
                }
                written += j1 - j0;
                o += j1 - j0;
                oh += 1;
                j0 = 0;
            }
            return;
        }
        // Output coordinates (all axes but the last) of the first column, advanced like an
        // odometer from run to run, and each axis's input offset under the tap.
        let mut coord = [0usize; MAX_SPATIAL];
        let mut offs = [0i64; MAX_SPATIAL];
        let mut q = cols.start / ol;
        for d in (0..last).rev() {
            coord[d] = q % self.out_sp[d];
            q /= self.out_sp[d];
            offs[d] = self.offset(d, taps[d]);
        }
        let mut o = cols.start;
        let mut written = 0;
        // Only the first run may start inside an output row.
        let mut j0 = cols.start % ol;
        while o < cols.end {
            let j1 = ol.min(j0 + cols.end - o);
            let run = &mut dst[written..written + (j1 - j0)];
            // Row of the input plane under these outer coordinates, if inside it.
            let mut row = 0usize;
            let mut inside_plane = true;
            for d in 0..last {
                let pos = (coord[d] * self.strides[d]) as i64 + offs[d];
                inside_plane &= pos >= 0 && pos < self.in_sp[d] as i64;
                row = row * self.in_sp[d] + pos.max(0) as usize;
            }
            if inside_plane {
                let src = &plane[row * il..(row + 1) * il];
                last_axis.fill(run, src, j0, j1);
            } else {
                run.fill(T::ZERO);
            }
            for d in (0..last).rev() {
                coord[d] += 1;
                if coord[d] < self.out_sp[d] {
                    break;
                }
                coord[d] = 0;
            }
            written += j1 - j0;
            o += j1 - j0;
            j0 = 0;
        }
    }
}

/// The part of an output row (last axis) whose input lies inside the plane for one tap.
struct LastAxis {
    /// Output positions `lo..hi` read the input; the rest are padding.
    lo: usize,
    hi: usize,
    step: usize,
    /// Input position of output position 0.
    off: i64,
}

impl LastAxis {
    /// Output positions `j0..j1` of one row into `run`, reading the input row `src`.
    #[inline(always)]
    fn fill<T: Float>(&self, run: &mut [T], src: &[T], j0: usize, j1: usize) {
        let (a, b) = (self.lo.clamp(j0, j1), self.hi.clamp(j0, j1));
        // Most runs have no padding; skip the (call-sized) fills then.
        if a > j0 {
            run[..a - j0].fill(T::ZERO);
        }
        if b < j1 {
            run[b - j0..].fill(T::ZERO);
        }
        let inside = &mut run[a - j0..b - j0];
        if inside.is_empty() {
            return;
        }
        let first = ((a * self.step) as i64 + self.off) as usize;
        if self.step == 1 {
            copy_short(inside, &src[first..]);
        } else {
            for (v, &x) in inside
                .iter_mut()
                .zip(src[first..].iter().step_by(self.step))
            {
                *v = x;
            }
        }
    }
}

/// `dst.copy_from_slice(&src[..dst.len()])` for the short runs of im2col, in blocks of
/// eight moved inline (a `memcpy` call costs more than a 7-element copy).
#[inline(always)]
pub(crate) fn copy_short<T: Float>(dst: &mut [T], src: &[T]) {
    let src = &src[..dst.len()];
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (a, b) in (&mut d).zip(&mut s) {
        let block: [T; 8] = b.try_into().expect("chunks of eight");
        a.copy_from_slice(&block);
    }
    // The remainder in blocks of 4, 2 and 1 (a loop here would become `memcpy` again).
    let (mut rest, mut from) = (d.into_remainder(), s.remainder());
    for width in [4, 2, 1] {
        if rest.len() >= width {
            let (head, tail) = rest.split_at_mut(width);
            match width {
                4 => head.copy_from_slice(&<[T; 4]>::try_from(&from[..4]).expect("four")),
                2 => head.copy_from_slice(&<[T; 2]>::try_from(&from[..2]).expect("two")),
                _ => head[0] = from[0],
            }
            rest = tail;
            from = &from[width..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct convolution by definition, for checking the im2col path.
    pub(super) fn reference(x: &[f64], w: &[f64], bias: &[f64], geo: &ConvGeometry) -> Vec<f64> {
        let (n, c, m) = (geo.input[0], geo.input[1], geo.weight[0]);
        let g = geo.group;
        let (cg, mg) = (c / g, m / g);
        let s = geo.weight.len() - 2;
        let out_sp = geo.out_spatial().unwrap();
        let in_sp = &geo.input[2..];
        let kernel = &geo.weight[2..];
        let out_count: usize = out_sp.iter().product();
        let kc: usize = kernel.iter().product();
        let in_count: usize = in_sp.iter().product();
        let unflatten = |mut i: usize, dims: &[usize]| {
            let mut v = vec![0; dims.len()];
            for d in (0..dims.len()).rev() {
                v[d] = i % dims[d];
                i /= dims[d];
            }
            v
        };
        let mut out = vec![0.0; n * m * out_count];
        for b in 0..n {
            for f in 0..m {
                let gi = f / mg;
                for o in 0..out_count {
                    let op = unflatten(o, &out_sp);
                    let mut acc = bias[f];
                    for ci in 0..cg {
                        for t in 0..kc {
                            let tp = unflatten(t, kernel);
                            let mut flat = 0usize;
                            let mut inside = true;
                            for d in 0..s {
                                let pos = (op[d] * geo.strides[d] + tp[d] * geo.dilations[d])
                                    as i64
                                    - geo.pads[d] as i64;
                                inside &= (0..in_sp[d] as i64).contains(&pos);
                                flat = flat * in_sp[d] + pos.max(0) as usize;
                            }
                            if inside {
                                let xv = x[(b * c + gi * cg + ci) * in_count + flat];
                                acc += xv * w[(f * cg + ci) * kc + t];
                            }
                        }
                    }
                    out[(b * m + f) * out_count + o] = acc;
                }
            }
        }
        out
    }

    /// Input shape, weight shape, strides, pads, dilations, group.
    type Case = (
        Vec<usize>,
        Vec<usize>,
        Vec<usize>,
        Vec<usize>,
        Vec<usize>,
        usize,
    );

    #[test]
    fn tiled_im2col_matches_the_definition() {
        // (input, weight, strides, pads, dilations, group): 1-, 2- and 3-d windows,
        // strides, asymmetric pads, dilation, groups, depthwise and pointwise.
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            (vec![1, 3, 11, 14], vec![4, 3, 3, 3], vec![1, 1], vec![1, 1, 1, 1], vec![1, 1], 1),
            (vec![2, 4, 13, 12], vec![6, 2, 3, 2], vec![2, 1], vec![0, 2, 1, 0], vec![1, 2], 2),
            (vec![1, 5, 40], vec![3, 5, 5], vec![3], vec![4, 2], vec![2], 1),
            (vec![1, 2, 5, 6, 7], vec![2, 2, 2, 3, 2], vec![1, 2, 1], vec![1, 0, 1, 0, 1, 1], vec![1, 1, 2], 1),
            (vec![1, 6, 9, 10], vec![6, 1, 3, 3], vec![1, 1], vec![2, 2, 2, 2], vec![1, 1], 6),
            (vec![2, 3, 7, 13], vec![3, 1, 3, 5], vec![1, 1], vec![0, 2, 1, 1], vec![1, 1], 3),
            // Strided rows, read split by column phase.
            (vec![1, 3, 15, 17], vec![4, 3, 7, 7], vec![2, 2], vec![3, 3, 3, 3], vec![1, 1], 1),
            (vec![1, 2, 23, 25], vec![3, 2, 11, 11], vec![4, 4], vec![2, 2, 1, 0], vec![1, 1], 1),
            (vec![1, 4, 9, 11], vec![6, 4, 1, 1], vec![2, 2], vec![0, 0, 0, 0], vec![1, 1], 1),
            (vec![1, 2, 5, 6, 9], vec![2, 2, 2, 3, 3], vec![1, 1, 2], vec![0, 1, 1, 0, 1, 1], vec![1, 1, 1], 1),
            (vec![1, 4, 10, 13], vec![6, 2, 3, 3], vec![2, 3], vec![1, 1, 1, 1], vec![1, 1], 2),
            (vec![1, 2, 1, 9], vec![2, 1, 1, 3], vec![1, 1], vec![0, 0, 0, 0], vec![1, 1], 2),
            (vec![2, 4, 11, 12], vec![4, 1, 3, 2], vec![2, 3], vec![1, 0, 0, 1], vec![1, 2], 4),
            (vec![1, 3, 20], vec![3, 1, 4], vec![2], vec![1, 2], vec![1], 3),
            (vec![1, 8, 10, 10], vec![5, 8, 1, 1], vec![1, 1], vec![0, 0, 0, 0], vec![1, 1], 1),
            (vec![1, 2, 4, 4], vec![1, 2, 3, 3], vec![1, 1], vec![5, 5, 5, 5], vec![1, 1], 1),
            // Large enough to split filters into blocks when there are few columns.
            (vec![1, 16, 9, 9], vec![96, 16, 3, 3], vec![1, 1], vec![1, 1, 1, 1], vec![1, 1], 1),
            (vec![1, 64, 7, 7], vec![80, 64, 1, 1], vec![1, 1], vec![0, 0, 0, 0], vec![1, 1], 1),
        ];
        for (input, weight, strides, pads, dilations, group) in cases {
            let geo = ConvGeometry {
                input,
                weight,
                strides,
                pads,
                dilations,
                group,
                relu: false,
            };
            let numel = |d: &[usize]| d.iter().product::<usize>();
            let value =
                |i: usize, salt: usize| ((i * 7919 + salt * 104_729) % 199) as f64 / 50.0 - 2.0;
            let x: Vec<f64> = (0..numel(&geo.input)).map(|i| value(i, 1)).collect();
            let w: Vec<f64> = (0..numel(&geo.weight)).map(|i| value(i, 2)).collect();
            let bias: Vec<f64> = (0..geo.weight[0]).map(|i| value(i, 3)).collect();
            let want = reference(&x, &w, &bias, &geo);
            for (threads, tile) in [(1, TILE_ELEMENTS), (2, 1), (3, 200)] {
                let mut got = vec![f64::NAN; want.len()];
                let pool = ThreadPool::new(threads);
                conv_tiled(&x, &w, None, Some(&bias), &geo, &mut got, &pool, tile).unwrap();
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() < 1e-9,
                        "{geo:?} threads {threads} tile {tile}: [{i}] {a} vs {b}"
                    );
                }
                // The same in f32: the implicit convolution where the CPU has AVX-512.
                let narrow = |v: &[f64]| v.iter().map(|&e| e as f32).collect::<Vec<f32>>();
                let mut got = vec![f32::NAN; want.len()];
                let bias = narrow(&bias);
                conv_tiled(
                    &narrow(&x),
                    &narrow(&w),
                    None,
                    Some(&bias),
                    &geo,
                    &mut got,
                    &pool,
                    tile,
                )
                .unwrap();
                for (i, (&a, b)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (f64::from(a) - b).abs() < 1e-4 * b.abs().max(1.0),
                        "f32 {geo:?} threads {threads} tile {tile}: [{i}] {a} vs {b}"
                    );
                }
            }
        }
    }

    /// A ReLU folded into the convolution stores exactly what a clamp after it gives,
    /// NaN kept: on the implicit products (positions and filter lanes), the depthwise
    /// path, the `gemm` path and in f64.
    #[test]
    fn folded_relu_clamps_like_a_pass_after() {
        let geometries = [
            (
                vec![1usize, 8, 12, 12],
                vec![16usize, 8, 3, 3],
                1usize,
                vec![1usize; 4],
            ),
            (vec![1, 64, 7, 7], vec![40, 64, 1, 1], 1, vec![0; 4]),
            (vec![1, 256, 7, 7], vec![32, 256, 1, 1], 1, vec![0; 4]),
            (vec![1, 6, 9, 9], vec![6, 1, 3, 3], 6, vec![1; 4]),
            (vec![1, 4, 10], vec![5, 4, 3], 1, vec![1; 2]),
        ];
        let mut layouts = [false; 2];
        for (input, weight, group, pads) in geometries {
            let rank = input.len() - 2;
            let geo = ConvGeometry {
                input: input.clone(),
                weight: weight.clone(),
                strides: vec![1; rank],
                pads,
                dilations: vec![1; rank],
                group,
                relu: false,
            };
            if implicit::handles(&geo) {
                layouts[usize::from(implicit::filters_as_lanes(&geo))] = true;
            }
            let numel = |d: &[usize]| d.iter().product::<usize>();
            let value =
                |i: usize, salt: usize| ((i * 7919 + salt * 104_729) % 199) as f32 / 50.0 - 2.0;
            let mut x: Vec<f32> = (0..numel(&input)).map(|i| value(i, 1)).collect();
            x[3] = f32::NAN;
            let w: Vec<f32> = (0..numel(&weight)).map(|i| value(i, 2)).collect();
            let out_len = input[0] * weight[0] * numel(&geo.out_spatial().unwrap());
            let pool = ThreadPool::new(2);
            let mut plain = vec![0f32; out_len];
            conv(&x, &w, None, &geo, &mut plain, &pool).unwrap();
            let folded_geo = ConvGeometry {
                relu: true,
                ..geo.clone()
            };
            let mut folded = vec![0f32; out_len];
            conv(&x, &w, None, &folded_geo, &mut folded, &pool).unwrap();
            assert!(plain.iter().any(|v| v.is_nan()) && plain.iter().any(|&v| v < 0.0));
            for (i, (&p, &f)) in plain.iter().zip(&folded).enumerate() {
                let want = if p < 0.0 { 0.0 } else { p };
                assert!(
                    (want.is_nan() && f.is_nan()) || want == f,
                    "{geo:?} [{i}]: {f}, expected {want}"
                );
            }
            let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            let w64: Vec<f64> = w.iter().map(|&v| v as f64).collect();
            let mut folded64 = vec![0f64; out_len];
            conv(&x64, &w64, None, &folded_geo, &mut folded64, &pool).unwrap();
            assert!(folded64.iter().all(|&v| v.is_nan() || v >= 0.0));
            assert!(folded64.iter().any(|v| v.is_nan()));
        }
        if implicit::available() {
            assert_eq!(layouts, [true, true], "both implicit layouts");
        }
    }
}

#[cfg(test)]
mod depthwise_tests {
    use super::*;

    #[test]
    fn every_nth_takes_each_phase_of_a_row() {
        for len in [11usize, 32, 33, 67, 112] {
            let src: Vec<u32> = (0..len as u32).collect();
            let floats: Vec<f32> = src.iter().map(|&v| v as f32).collect();
            for step in 1..=4 {
                for first in 0..step {
                    let count = (len - first).div_ceil(step);
                    let mut dst = vec![99; count];
                    every_nth(&mut dst, &src[first..], step);
                    let want: Vec<u32> = src[first..].iter().step_by(step).copied().collect();
                    assert_eq!(dst, want, "len {len} step {step} first {first}");
                    let mut dst = vec![-1.0f32; count];
                    every_nth(&mut dst, &floats[first..], step);
                    let want: Vec<f32> = want.iter().map(|&v| v as f32).collect();
                    assert_eq!(dst, want, "f32 len {len} step {step} first {first}");
                }
            }
        }
    }

    /// Undilated depthwise convolutions in f32 (the FMA path where the CPU has it) against
    /// the f64 definition: same, valid and asymmetric padding, odd kernels, strides 1 to 3.
    #[test]
    fn undilated_depthwise_in_f32() {
        for (input, kernel, pads, strides) in [
            (
                [1usize, 4, 28, 28],
                [3usize, 3],
                [1usize, 1, 1, 1],
                [1usize, 1],
            ),
            ([2, 3, 7, 7], [3, 3], [1, 1, 1, 1], [1, 1]),
            ([1, 2, 9, 17], [5, 3], [2, 0, 1, 2], [1, 1]),
            ([1, 2, 6, 6], [3, 3], [0, 0, 0, 0], [1, 1]),
            ([1, 4, 28, 28], [3, 3], [1, 1, 1, 1], [2, 2]),
            ([1, 3, 15, 14], [3, 3], [1, 1, 1, 1], [2, 2]),
            ([2, 2, 11, 13], [3, 2], [0, 1, 2, 0], [3, 2]),
            ([1, 2, 5, 9], [1, 3], [0, 0, 0, 0], [1, 3]),
        ] {
            let c = input[1];
            let geo = ConvGeometry {
                input: input.to_vec(),
                weight: vec![c, 1, kernel[0], kernel[1]],
                strides: strides.to_vec(),
                pads: pads.to_vec(),
                dilations: vec![1, 1],
                group: c,
                relu: false,
            };
            let numel = |d: &[usize]| d.iter().product::<usize>();
            let value =
                |i: usize, salt: usize| ((i * 7919 + salt * 104_729) % 199) as f32 / 50.0 - 2.0;
            let x: Vec<f32> = (0..numel(&geo.input)).map(|i| value(i, 1)).collect();
            let w: Vec<f32> = (0..numel(&geo.weight)).map(|i| value(i, 2)).collect();
            let bias: Vec<f32> = (0..c).map(|i| value(i, 3)).collect();
            let wide = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
            let want = super::tests::reference(&wide(&x), &wide(&w), &wide(&bias), &geo);
            let mut got = vec![f32::NAN; want.len()];
            conv(&x, &w, Some(&bias), &geo, &mut got, &ThreadPool::new(2)).unwrap();
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!((*a as f64 - b).abs() < 1e-4, "{geo:?}: [{i}] {a} vs {b}");
            }
        }
    }
}

#[cfg(test)]
mod matmul_tests {
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
            &a,
            &[6, k, m],
            true,
            &b,
            &[k, n],
            false,
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
                        &a,
                        &a_shape,
                        trans_a,
                        &b,
                        &[k, n],
                        false,
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
                    &a,
                    &[1, k],
                    false,
                    &b,
                    &b_shape,
                    trans_b,
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
                &a,
                &[batches, m, k],
                false,
                &b,
                &[1, k, n],
                false,
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
