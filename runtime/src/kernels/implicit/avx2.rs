//! The implicit convolution's micro-kernels on AVX2 with FMA: 16 lanes (two 8-lane
//! vectors) by up to 6 rows, 12 sums in registers over the whole depth (the shape of the
//! usual 6 x 16 AVX2 matrix-product kernel: 12 accumulators, two inputs and a broadcast
//! fill 15 of the 16 vector registers).

use super::{Isa, LaneTile, Tile};
use std::arch::x86_64::*;

/// The lanes of one micro-kernel call.
const LANES: usize = Isa::Avx2Fma.lanes();

/// The two 8-lane masks (all ones where the bit is set) of the low 16 bits of `mask`,
/// for `maskload` and `maskstore`.
#[inline]
#[target_feature(enable = "avx2")]
fn lane_masks(mask: u32) -> [__m256i; 2] {
    let bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    let half = |b: u32| {
        let set = _mm256_and_si256(_mm256_set1_epi32((b & 0xff) as i32), bits);
        _mm256_cmpeq_epi32(set, bits)
    };
    [half(mask), half(mask >> 8)]
}

/// [`LaneTile`]'s micro-kernel for runs of `H` positions: `2 * H` sums over the whole
/// depth, each step two weight loads and one broadcast input per position; the sums are
/// then transposed into the filters' planes through a stack tile.
///
/// # Safety
/// The CPU has AVX2 and FMA, and `t` addresses memory as [`LaneTile::run`] requires.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn lane_tile<const H: usize>(t: &LaneTile) {
    let start = match t.bias {
        Some(bias) => {
            let [lo, hi] = lane_masks(((1u64 << t.filters) - 1) as u32);
            // SAFETY: one bias value per existing filter; masked lanes read nothing.
            unsafe {
                [
                    _mm256_maskload_ps(bias, lo),
                    _mm256_maskload_ps(bias.wrapping_add(8), hi),
                ]
            }
        }
        None => [_mm256_setzero_ps(); 2],
    };
    let mut acc = [start; H];
    let mut weights = t.weights;
    for k in 0..t.depth {
        // SAFETY: per `run`'s contract.
        unsafe {
            let lo = _mm256_loadu_ps(weights);
            let hi = _mm256_loadu_ps(weights.add(8));
            let at = t.input.add(*t.offsets.add(k) as usize);
            for (r, sums) in acc.iter_mut().enumerate() {
                let x = _mm256_broadcast_ss(&*at.add(r));
                sums[0] = _mm256_fmadd_ps(x, lo, sums[0]);
                sums[1] = _mm256_fmadd_ps(x, hi, sums[1]);
            }
            weights = weights.add(LANES);
        }
    }
    if let Some((low, high)) = t.clamp {
        clamp(&mut acc, low, high);
    }
    let mut tile = [[0.0f32; LANES]; H];
    for (sums, row) in acc.iter().zip(tile.iter_mut()) {
        // SAFETY: each stack row holds 16 values.
        unsafe {
            _mm256_storeu_ps(row.as_mut_ptr(), sums[0]);
            _mm256_storeu_ps(row.as_mut_ptr().add(8), sums[1]);
        }
    }
    // SAFETY: per `run`'s contract.
    unsafe { t.store_transposed::<LANES>(&tile) };
}

/// A folded ReLU or Clip on a micro-kernel's register sums: `max(low, x)` returns x when
/// x is NaN (the second operand), and so does `min(high, ..)`, as the reference's
/// NaN-propagating max and min.
#[inline]
#[target_feature(enable = "avx")]
fn clamp(acc: &mut [[__m256; 2]], low: f32, high: f32) {
    let (low, high) = (_mm256_set1_ps(low), _mm256_set1_ps(high));
    for sums in acc {
        *sums = [
            _mm256_min_ps(high, _mm256_max_ps(low, sums[0])),
            _mm256_min_ps(high, _mm256_max_ps(low, sums[1])),
        ];
    }
}

/// [`Tile`]'s micro-kernel for panels of `H` rows: `2 * H` sums stay in registers over
/// the whole depth (each step: one offset, two input loads and one broadcast per row);
/// `MASKED` loads only the lanes of `load_mask`.
///
/// # Safety
/// The CPU has AVX2 and FMA, and `t` addresses memory as [`Tile::run`] requires.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn tile<const H: usize, const MASKED: bool>(t: &Tile) {
    let mut acc = [[_mm256_setzero_ps(); 2]; H];
    if let Some(bias) = t.bias {
        for (r, sums) in acc.iter_mut().enumerate() {
            // SAFETY: one bias value per row of the panel.
            let v = _mm256_set1_ps(unsafe { *bias.add(r) });
            *sums = [v, v];
        }
    }
    let [lo_mask, hi_mask] = lane_masks(t.load_mask);
    let mut a = t.filters;
    for k in 0..t.depth {
        // SAFETY: per `run`'s contract; masked-off lanes read nothing.
        unsafe {
            let at = t.input.wrapping_add(*t.offsets.add(k) as usize);
            let (lo, hi) = if MASKED {
                (
                    _mm256_maskload_ps(at, lo_mask),
                    _mm256_maskload_ps(at.wrapping_add(8), hi_mask),
                )
            } else {
                (_mm256_loadu_ps(at), _mm256_loadu_ps(at.wrapping_add(8)))
            };
            for (r, sums) in acc.iter_mut().enumerate() {
                let w = _mm256_broadcast_ss(&*a.add(r));
                sums[0] = _mm256_fmadd_ps(w, lo, sums[0]);
                sums[1] = _mm256_fmadd_ps(w, hi, sums[1]);
            }
            a = a.add(H);
        }
    }
    if let Some((low, high)) = t.clamp {
        clamp(&mut acc, low, high);
    }
    for seg in t.segments {
        let whole = seg.mask & 0xffff == 0xffff;
        let [lo_store, hi_store] = lane_masks(seg.mask);
        for (r, sums) in acc.iter().enumerate() {
            let at = t.out.wrapping_add(r * t.out_rs).wrapping_offset(seg.offset);
            // SAFETY: per `run`'s contract; masked-off lanes store nothing.
            unsafe {
                if whole {
                    _mm256_storeu_ps(at, sums[0]);
                    _mm256_storeu_ps(at.wrapping_add(8), sums[1]);
                } else {
                    _mm256_maskstore_ps(at, lo_store, sums[0]);
                    _mm256_maskstore_ps(at.wrapping_add(8), hi_store, sums[1]);
                }
            }
        }
    }
}
