//! Kernels the compiled code calls: batched MatMul (`matmul`) and N-d convolution
//! (`conv`: im2col tiles over the sliding `window`, or a plain MatMul for 1x1 kernels) on
//! the `gemm` crate (AVX-512 kernels through its `x86-v4` feature) with their bias
//! epilogue, two-dimensional depthwise convolutions (`depthwise`), 2-D f32 convolutions as
//! implicit matrix products of our own where the CPU has AVX-512 (`implicit`), 3x3
//! convolutions by Winograd's F(4x4, 3x3) on AVX-512 (`winograd`), products
//! of a few rows with a constant weight packed once (`skinny`), products of a small
//! depth without packing (`small_depth`, under `gemm_into`), 2-D f32 pooling
//! (`pooling`) and separable f32 resizing (`resize`). This file holds what they share: the error, the element types,
//! the SIMD dispatch and the copy helpers.

mod activation;
mod conv;
mod depthwise;
mod depthwise_nhwc;
mod implicit;
mod matmul;
pub mod pooling;
mod resize;
mod skinny;
mod small_depth;
mod sparse_taps;
mod window;
mod winograd;

pub use activation::{Activation, apply_in_blocks};
pub use conv::{ConvGeometry, conv, conv_prepacked, prepack_conv_filters};
pub use matmul::{MatrixOperand, batched_matmul};
pub use pooling::{PoolGeometry, PoolMode, pool2d};
pub use resize::{AxisTaps, ResizeGeometry, resize2d};
pub use skinny::{prepack_skinny_weight_le, skinny_applies, skinny_matmul, skinny_packed_len};

use gemm::{Parallelism, gemm};
use matmul::row_times_matrix;
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

    /// `v` in this type (exact: f32 and f64 hold every f32).
    fn from_f32(v: f32) -> Self;

    /// `x * sigmoid(x)` of each value, in place.
    fn silu_in_place(values: &mut [Self]);

    /// The exact GELU of each value, in place.
    fn gelu_in_place(values: &mut [Self]);
}

impl Float for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;

    fn from_f32(v: f32) -> f32 {
        v
    }

    fn silu_in_place(values: &mut [f32]) {
        activation::silu_in_place_f32(values);
    }

    fn gelu_in_place(values: &mut [f32]) {
        activation::gelu_in_place_f32(values);
    }
}

impl Float for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;

    fn from_f32(v: f32) -> f64 {
        f64::from(v)
    }

    fn silu_in_place(values: &mut [f64]) {
        values
            .iter_mut()
            .for_each(|v| *v = *v * (1.0 / (1.0 + (-*v).exp())));
    }

    fn gelu_in_place(values: &mut [f64]) {
        // f64 products never fold a GELU (the compiler folds only f32); by the
        // f32 formula, for completeness.
        values
            .iter_mut()
            .for_each(|v| *v = activation::gelu_f32(*v as f32) as f64);
    }
}

/// A matrix operand of [`gemm_into`]: a base slice with its row and column strides.
#[derive(Clone, Copy)]
pub(super) struct StridedMatrix<'a, T> {
    pub(super) data: &'a [T],
    pub(super) rs: isize,
    pub(super) cs: isize,
}

/// `c[m, n] = a[m, k] * b[k, n]` through `gemm`; operands given by base slices and
/// strides, `c` by a pointer and its row stride.
///
/// # Safety
/// `c` must address `m` rows of `n` elements `c_rs` apart that nothing else accesses
/// during the call, and the strides must keep `a` and `b` inside their slices.
pub(super) unsafe fn gemm_into<T: Float>(
    [m, n, k]: [usize; 3],
    c: *mut T,
    c_rs: usize,
    a: StridedMatrix<'_, T>,
    b: StridedMatrix<'_, T>,
) {
    let StridedMatrix {
        data: a,
        rs: a_rs,
        cs: a_cs,
    } = a;
    let StridedMatrix {
        data: b,
        rs: b_rs,
        cs: b_cs,
    } = b;
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
    #[cfg(target_arch = "x86_64")]
    if is_f32::<T>() && b_rs >= 0 && small_depth::applies(k, n, b_cs) {
        // SAFETY: T is f32 and the CPU has the features (`applies`); the rest per the
        // contract.
        unsafe {
            small_depth::product(
                [m, n, k],
                c.cast::<f32>(),
                c_rs,
                StridedMatrix {
                    data: as_f32(a),
                    rs: a_rs,
                    cs: a_cs,
                },
                StridedMatrix {
                    data: as_f32(b),
                    rs: b_rs,
                    cs: b_cs,
                },
            )
        };
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
pub(super) enum Simd {
    Avx2,
    Avx2Fma,
    Avx512,
}

/// Whether `T` is f32 and the CPU has `simd`, so a twin built for it may run on `T`s
/// viewed as f32 (`as_f32`).
#[cfg(target_arch = "x86_64")]
pub(super) fn f32_with<T: Float>(simd: Simd) -> bool {
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
pub(super) unsafe fn as_f32<T>(x: &[T]) -> &[f32] {
    // SAFETY: per the contract, the same type.
    unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<f32>(), x.len()) }
}

/// `x` as f32, mutably.
///
/// # Safety
/// `T` must be f32 (`f32_with` checked it).
pub(super) unsafe fn as_f32_mut<T>(x: &mut [T]) -> &mut [f32] {
    // SAFETY: per the contract, the same type.
    unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr().cast::<f32>(), x.len()) }
}

/// `acc += w * x`, element by element (AVX2 and FMA for f32 where the CPU has them).
pub(super) fn multiply_add<T: Float>(acc: &mut [T], w: T, x: &[T]) {
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
pub(super) fn multiply_add_fma(acc: &mut [f32], w: f32, x: &[f32]) {
    for (a, &v) in acc.iter_mut().zip(x) {
        *a = w.mul_add(v, *a);
    }
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

/// A stride cut to the most that still places a second window inside the padded extent:
/// any larger stride yields the same single window (`(extent - span) / stride == 0`),
/// while kernels size scratch buffers by the stride (a stride of 2^40 asked for terabytes).
pub(crate) fn useful_stride(stride: usize, extent: usize, span: usize) -> usize {
    match extent.checked_sub(span) {
        Some(room) => stride.min(room.saturating_add(1)),
        None => stride,
    }
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
pub(super) fn is_f32<T: Float>() -> bool {
    std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
}

/// Contractions with fewer multiply-adds than this run on the calling thread: about 10 us
/// of work, less than waking the pool's workers costs.
pub(crate) const SERIAL_MACS: usize = 1 << 19;

thread_local! {
    /// Per-thread im2col scratch, reused across calls (f64 cells so f32 and f64 fit).
    static SCRATCH: std::cell::RefCell<Vec<f64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's scratch buffer as `len` elements of `T` (contents
/// unspecified: the callers overwrite what they read).
pub(super) fn with_scratch<T: Float>(len: usize, f: impl FnOnce(&mut [T])) {
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
