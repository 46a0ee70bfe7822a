//! The implicit convolution's micro-kernels on AVX-512: 32 lanes (two 16-lane vectors)
//! by up to 12 rows, 24 sums in registers over the whole depth.

use super::{Isa, LaneTile, Tile};
use std::arch::x86_64::*;

/// The lanes of one micro-kernel call.
const LANES: usize = Isa::Avx512.lanes();

/// [`LaneTile`]'s micro-kernel for runs of `H` positions: `2 * H` sums over the whole
/// depth, each step two weight loads and one broadcast input per position; the sums are
/// then transposed into the filters' planes through a stack tile.
///
/// # Safety
/// The CPU has AVX-512F, and `t` addresses memory as [`LaneTile::run`] requires.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn lane_tile<const H: usize>(t: &LaneTile) {
    let filter_mask = ((1u64 << t.filters) - 1) as u32;
    let start = match t.bias {
        // SAFETY: one bias value per existing filter; masked lanes read nothing.
        Some(bias) => unsafe {
            [
                _mm512_maskz_loadu_ps(filter_mask as u16, bias),
                _mm512_maskz_loadu_ps((filter_mask >> 16) as u16, bias.wrapping_add(16)),
            ]
        },
        None => [_mm512_setzero_ps(); 2],
    };
    let mut acc = [start; H];
    let mut weights = t.weights;
    for k in 0..t.depth {
        // SAFETY: per `run`'s contract.
        unsafe {
            let lo = _mm512_loadu_ps(weights);
            let hi = _mm512_loadu_ps(weights.add(16));
            let at = t.input.add(*t.offsets.add(k) as usize);
            for (r, sums) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*at.add(r));
                sums[0] = _mm512_fmadd_ps(x, lo, sums[0]);
                sums[1] = _mm512_fmadd_ps(x, hi, sums[1]);
            }
            weights = weights.add(LANES);
        }
    }
    if let Some((low, high)) = t.clamp {
        clamp(&mut acc, low, high);
    }
    let mut tile = [[0.0f32; LANES]; H];
    for (sums, row) in acc.iter().zip(tile.iter_mut()) {
        // SAFETY: each stack row holds 32 values.
        unsafe {
            _mm512_storeu_ps(row.as_mut_ptr(), sums[0]);
            _mm512_storeu_ps(row.as_mut_ptr().add(16), sums[1]);
        }
    }
    // SAFETY: per `run`'s contract.
    unsafe { t.store_transposed::<LANES>(&tile) };
}

/// A folded ReLU or Clip on a micro-kernel's register sums: `max(low, x)` returns x when
/// x is NaN (the second operand), and so does `min(high, ..)`, as the reference's
/// NaN-propagating max and min.
#[inline]
#[target_feature(enable = "avx512f")]
fn clamp(acc: &mut [[__m512; 2]], low: f32, high: f32) {
    let (low, high) = (_mm512_set1_ps(low), _mm512_set1_ps(high));
    for sums in acc {
        *sums = [
            _mm512_min_ps(high, _mm512_max_ps(low, sums[0])),
            _mm512_min_ps(high, _mm512_max_ps(low, sums[1])),
        ];
    }
}

/// [`Tile`]'s micro-kernel for panels of `H` rows: `2 * H` sums stay in registers over
/// the whole depth (each step: one offset, two input loads and one broadcast per row);
/// `MASKED` loads only the lanes of `load_mask`; `HALF` (a last tile of at most 16
/// lanes, whose upper vector has nothing to compute) leaves the upper vector out: a
/// 14x14 map is six tiles of 32 positions and one of 4.
///
/// # Safety
/// The CPU has AVX-512F, and `t` addresses memory as [`Tile::run`] requires; with `HALF`,
/// `load_mask` and every segment's mask leave lanes 16 to 31 out.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn tile<const H: usize, const MASKED: bool, const HALF: bool>(t: &Tile) {
    let mut acc = [[_mm512_setzero_ps(); 2]; H];
    if let Some(bias) = t.bias {
        for (r, sums) in acc.iter_mut().enumerate() {
            // SAFETY: one bias value per row of the panel.
            let v = _mm512_set1_ps(unsafe { *bias.add(r) });
            *sums = [v, v];
        }
    }
    let (lo_mask, hi_mask) = (t.load_mask as u16, (t.load_mask >> 16) as u16);
    let mut a = t.filters;
    for k in 0..t.depth {
        // SAFETY: per `run`'s contract; masked-off lanes read nothing.
        unsafe {
            let at = t.input.wrapping_add(*t.offsets.add(k) as usize);
            let (lo, hi) = if HALF {
                (_mm512_maskz_loadu_ps(lo_mask, at), _mm512_setzero_ps())
            } else if MASKED {
                (
                    _mm512_maskz_loadu_ps(lo_mask, at),
                    _mm512_maskz_loadu_ps(hi_mask, at.wrapping_add(16)),
                )
            } else {
                (_mm512_loadu_ps(at), _mm512_loadu_ps(at.wrapping_add(16)))
            };
            for (r, sums) in acc.iter_mut().enumerate() {
                let w = _mm512_set1_ps(*a.add(r));
                sums[0] = _mm512_fmadd_ps(w, lo, sums[0]);
                if !HALF {
                    sums[1] = _mm512_fmadd_ps(w, hi, sums[1]);
                }
            }
            a = a.add(H);
        }
    }
    if let Some((low, high)) = t.clamp {
        clamp(&mut acc, low, high);
    }
    for (r, sums) in acc.iter().enumerate() {
        let plane = t.out.wrapping_add(r * t.out_rs);
        for seg in t.segments {
            let at = plane.wrapping_offset(seg.offset);
            // SAFETY: per `run`'s contract; masked-off lanes store nothing.
            unsafe {
                _mm512_mask_storeu_ps(at, seg.mask as u16, sums[0]);
                if !HALF {
                    _mm512_mask_storeu_ps(at.wrapping_add(16), (seg.mask >> 16) as u16, sums[1]);
                }
            }
        }
    }
}
