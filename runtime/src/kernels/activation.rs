//! Activations folded into a convolution: each path applies it to a block of outputs
//! right after computing them, while they are in cache, instead of a generated loop
//! reading and writing the whole output again after the call. EfficientNet-B0's SiLU
//! epilogues took a third of its run as such loops (3.5 ms for one 96x112x112 output).
//!
//! SiLU is `x * sigmoid(x)` with `sigmoid(x) = 1 / (1 + exp(-x))` and the exp of the
//! generated code (`softmax_rows::exp_avx2`), and GELU `(x * (erf(x / sqrt 2) + 1)) *
//! 0.5` with its erf (`crate::erf`), so folded or not they compute the same formulas.

use super::{Float, SyncPtr};
use crate::threads::ThreadPool;

/// An activation a convolution applies to its outputs.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Activation {
    #[default]
    None,
    /// `max(x, 0)`; NaN stays NaN.
    Relu,
    /// `x * sigmoid(x)` (f32 only).
    Silu,
    /// `(x * (erf(x / sqrt 2) + 1)) * 0.5`, the exact GELU (f32 only).
    Gelu,
    /// `min(max(x, low), high)`, ONNX's Clip (ReLU6 is 0 and 6); NaN stays NaN.
    /// `low <= high`, neither NaN (f32 only).
    Clip { low: f32, high: f32 },
}

impl Activation {
    /// The manifest's code.
    pub fn code(self) -> u32 {
        match self {
            Activation::None => 0,
            Activation::Relu => 1,
            Activation::Silu => 2,
            Activation::Gelu => 3,
            Activation::Clip { .. } => 4,
        }
    }

    /// The bounds a [`Activation::Clip`] keeps in the manifest (empty for the others).
    pub fn clip_bounds(self) -> Vec<f32> {
        match self {
            Activation::Clip { low, high } => vec![low, high],
            _ => Vec::new(),
        }
    }

    /// Inverse of [`Self::code`] and [`Self::clip_bounds`]: `None` for an unknown code,
    /// or a Clip without two ordered bounds.
    pub fn decode(code: u32, clip_bounds: &[f32]) -> Option<Activation> {
        match (code, clip_bounds) {
            (0, []) => Some(Activation::None),
            (1, []) => Some(Activation::Relu),
            (2, []) => Some(Activation::Silu),
            (3, []) => Some(Activation::Gelu),
            // `<=` is false for NaN.
            (4, &[low, high]) if low <= high => Some(Activation::Clip { low, high }),
            _ => None,
        }
    }

    /// The bounds `(low, high)` of an activation that only clamps, `max(x, low)` then
    /// `min(.., high)` with NaN kept (ReLU and Clip): what a micro-kernel applies to its
    /// register sums before it stores them.
    pub fn clamp_bounds(self) -> Option<(f32, f32)> {
        match self {
            Activation::Relu => Some((0.0, f32::INFINITY)),
            Activation::Clip { low, high } => Some((low, high)),
            _ => None,
        }
    }

    /// The activation a path applies to its stored outputs, after clamping its sums to
    /// [`Self::clamp_bounds`]: none for a clamp, else the activation itself.
    pub fn after_stores(self) -> Activation {
        match self.clamp_bounds() {
            Some(_) => Activation::None,
            None => self,
        }
    }

    /// Applies the activation to `values` in place.
    pub fn apply<T: Float>(self, values: &mut [T]) {
        match self {
            Activation::None => {}
            Activation::Relu => {
                // A select, not a branch, so it vectorizes; NaN compares false and stays.
                for v in values {
                    *v = if *v < T::ZERO { T::ZERO } else { *v };
                }
            }
            Activation::Silu => T::silu_in_place(values),
            Activation::Gelu => T::gelu_in_place(values),
            Activation::Clip { low, high } => {
                let (low, high) = (T::from_f32(low), T::from_f32(high));
                // Selects that keep NaN, as the reference's max and min.
                for v in values {
                    let up = if *v < low { low } else { *v };
                    *v = if up > high { high } else { up };
                }
            }
        }
    }
}

/// The GELU of one f32, as the vector loop and the generated epilogue compute it.
pub(super) fn gelu_f32(x: f32) -> f32 {
    (x * (crate::erf::erf_f32(x / std::f32::consts::SQRT_2) + 1.0)) * 0.5
}

/// The GELU in place, eight lanes at a time where the CPU has AVX2 and FMA (the last
/// values under a lane mask).
pub(super) fn gelu_in_place_f32(values: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features.
        unsafe { gelu_avx2(values) };
        return;
    }
    values.iter_mut().for_each(|v| *v = gelu_f32(*v));
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn gelu_avx2(values: &mut [f32]) {
    use std::arch::x86_64::*;
    each_vector_avx2(values, |x| {
        let e = crate::erf::erf_avx2(_mm256_div_ps(x, _mm256_set1_ps(std::f32::consts::SQRT_2)));
        let y = _mm256_mul_ps(x, _mm256_add_ps(e, _mm256_set1_ps(1.0)));
        _mm256_mul_ps(y, _mm256_set1_ps(0.5))
    });
}

/// Applies `activation` over all of `values`, in blocks split over the pool's threads:
/// for calls that cannot apply it while their results are in cache (the implicit
/// convolutions' other activations, MatMul, whose products `gemm` stores).
pub fn apply_in_blocks<T: Float>(activation: Activation, values: &mut [T], pool: &ThreadPool) {
    if activation == Activation::None {
        return;
    }
    const BLOCK: usize = 16 * 1024;
    let base = SyncPtr(values.as_mut_ptr());
    let len = values.len();
    pool.run(len.div_ceil(BLOCK), 1, &|blocks: std::ops::Range<usize>| {
        for i in blocks {
            let r = i * BLOCK..((i + 1) * BLOCK).min(len);
            // SAFETY: block i of `values`, which only this item touches while the owner
            // waits for the pool.
            activation
                .apply(unsafe { std::slice::from_raw_parts_mut(base.get().add(r.start), r.len()) });
        }
    });
}

/// `x * sigmoid(x)` of one f32, as the vector loop computes it.
pub(super) fn silu_f32(x: f32) -> f32 {
    x * (1.0 / (1.0 + crate::softmax_rows::exp_scalar(-x)))
}

/// `x * sigmoid(x)` in place: sixteen lanes at a time on AVX-512F, eight on AVX2 with
/// FMA, a short slice or a slice's last values under a lane mask. Folded SiLUs run over
/// rows as short as a 7x7 map's (a depthwise layer's output rows): one at a time those
/// took 13 times as long per value as whole vectors.
pub(super) fn silu_in_place_f32(values: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the feature.
            unsafe { silu_avx512(values) };
            return;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has the features.
            unsafe { silu_avx2(values) };
            return;
        }
    }
    values.iter_mut().for_each(|v| *v = silu_f32(*v));
}

/// The lanes below `count` (at most the vector's) of an AVX2 lane mask.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2")]
fn first_lanes_avx2(count: usize) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    _mm256_cmpgt_epi32(_mm256_set1_epi32(count as i32), lane)
}

/// Runs `lanes` over `values` sixteen and then eight at a time, the last up-to-seven
/// through a lane mask (the masked-off lanes read zeros and are not written).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2")]
fn each_vector_avx2(
    values: &mut [f32],
    lanes: impl Fn(std::arch::x86_64::__m256) -> std::arch::x86_64::__m256,
) {
    use std::arch::x86_64::*;
    // Two independent vectors per step: one vector's chain of dependent multiply-adds
    // leaves the units idle through its latency.
    let mut pairs = values.chunks_exact_mut(16);
    for pair in &mut pairs {
        // SAFETY: sixteen floats.
        unsafe {
            let (a, b) = (
                _mm256_loadu_ps(pair.as_ptr()),
                _mm256_loadu_ps(pair.as_ptr().add(8)),
            );
            let (a, b) = (lanes(a), lanes(b));
            _mm256_storeu_ps(pair.as_mut_ptr(), a);
            _mm256_storeu_ps(pair.as_mut_ptr().add(8), b);
        }
    }
    let mut chunks = pairs.into_remainder().chunks_exact_mut(8);
    for chunk in &mut chunks {
        // SAFETY: eight floats.
        unsafe { _mm256_storeu_ps(chunk.as_mut_ptr(), lanes(_mm256_loadu_ps(chunk.as_ptr()))) };
    }
    let rest = chunks.into_remainder();
    if !rest.is_empty() {
        let mask = first_lanes_avx2(rest.len());
        // SAFETY: the mask covers the remainder's floats only.
        unsafe {
            let x = _mm256_maskload_ps(rest.as_ptr(), mask);
            _mm256_maskstore_ps(rest.as_mut_ptr(), mask, lanes(x));
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn silu_avx2(values: &mut [f32]) {
    use std::arch::x86_64::*;
    each_vector_avx2(values, |x| {
        let e = crate::softmax_rows::exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), x));
        let one = _mm256_set1_ps(1.0);
        _mm256_mul_ps(x, _mm256_div_ps(one, _mm256_add_ps(one, e)))
    });
}

/// SiLU of sixteen lanes, as [`silu_f32`] computes each.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
fn silu_lanes_avx512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let e = crate::softmax_rows::exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), x));
    let one = _mm512_set1_ps(1.0);
    _mm512_mul_ps(x, _mm512_div_ps(one, _mm512_add_ps(one, e)))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn silu_avx512(values: &mut [f32]) {
    use std::arch::x86_64::*;
    let (len, at) = (values.len(), values.as_mut_ptr());
    let mut i = 0;
    // Two independent vectors per step: one exp's chain of dependent multiply-adds
    // leaves the units idle through its latency.
    while i + 32 <= len {
        // SAFETY: i + 32 <= len.
        unsafe {
            let (a, b) = (_mm512_loadu_ps(at.add(i)), _mm512_loadu_ps(at.add(i + 16)));
            _mm512_storeu_ps(at.add(i), silu_lanes_avx512(a));
            _mm512_storeu_ps(at.add(i + 16), silu_lanes_avx512(b));
        }
        i += 32;
    }
    while i < len {
        let count = (len - i).min(16);
        let mask = ((1u32 << count) - 1) as __mmask16;
        // SAFETY: the mask covers values i..i + count < len only.
        unsafe {
            let x = _mm512_maskz_loadu_ps(mask, at.add(i));
            _mm512_mask_storeu_ps(at.add(i), mask, silu_lanes_avx512(x));
        }
        i += count;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silu_matches_f64_and_keeps_special_values() {
        let mut xs: Vec<f32> = (-400..400).map(|i| i as f32 / 17.0).collect();
        xs.extend([f32::NAN, f32::INFINITY, -0.0, 100.0, -100.0]);
        let mut got = xs.clone();
        Activation::Silu.apply(&mut got);
        for (&x, &g) in xs.iter().zip(&got) {
            let want = x as f64 / (1.0 + (-x as f64).exp());
            if want.is_nan() {
                assert!(g.is_nan(), "silu({x}) = {g}");
            } else if want.is_infinite() {
                assert_eq!(g as f64, want, "silu({x})");
            } else {
                let tol = 1e-6 * want.abs().max(1e-3);
                assert!(
                    (g as f64 - want).abs() <= tol,
                    "silu({x}) = {g}, want {want}"
                );
            }
            // The vector lanes and the scalar tail agree.
            assert_eq!(g.to_bits(), silu_f32(x).to_bits(), "silu({x})");
        }
        // -inf times sigmoid(-inf) = 0 is NaN, as x * sigmoid(x) is in onnxruntime.
        let mut minus_inf = [f32::NEG_INFINITY; 9];
        Activation::Silu.apply(&mut minus_inf);
        assert!(minus_inf.iter().all(|v| v.is_nan()));
    }

    /// Every instruction set's SiLU loop and the AVX2 GELU loop, on slices of every
    /// length up to three vectors (the masked remainders, and slices shorter than one
    /// vector, such as a 7x7 map's rows), agree bit for bit with one value at a time,
    /// and leave the values past the slice alone.
    #[test]
    fn short_and_ragged_slices_match_one_at_a_time() {
        let pool: Vec<f32> = (0..48)
            .map(|i| (i as f32 - 23.0) / 3.0)
            .chain([f32::NAN, f32::INFINITY, -0.0, 90.0, -90.0])
            .collect();
        // (name, the loop, one value at a time)
        type Case = (&'static str, fn(&mut [f32]), fn(f32) -> f32);
        let mut loops: Vec<Case> = vec![
            ("silu", silu_in_place_f32, silu_f32),
            ("gelu", gelu_in_place_f32, gelu_f32),
        ];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY (of the call inside): the CPU has the feature.
                loops.push(("silu avx512", |v| unsafe { silu_avx512(v) }, silu_f32));
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY (of the calls inside): the CPU has the features.
                loops.push(("silu avx2", |v| unsafe { silu_avx2(v) }, silu_f32));
                loops.push(("gelu avx2", |v| unsafe { gelu_avx2(v) }, gelu_f32));
            }
        }
        for (name, run, one) in loops {
            for len in 0..=pool.len() {
                let mut buffer = pool.clone();
                buffer.push(1234.5);
                run(&mut buffer[..len]);
                for (i, (&x, &got)) in pool.iter().zip(&buffer).enumerate().take(len) {
                    let want = one(x);
                    assert!(
                        got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                        "{name} of {len} values: lane {i}: f({x}) = {got}, want {want}"
                    );
                }
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&buffer[len..pool.len()]),
                    bits(&pool[len..]),
                    "{name} wrote past {len}"
                );
                assert_eq!(buffer[pool.len()], 1234.5, "{name} wrote past the buffer");
            }
        }
    }

    #[test]
    fn gelu_lanes_match_one_at_a_time_and_known_values() {
        let xs: Vec<f32> = (-700..700)
            .map(|i| i as f32 / 97.0)
            .chain([f32::NAN, -0.0])
            .collect();
        let mut got = xs.clone();
        Activation::Gelu.apply(&mut got);
        for (&x, &g) in xs.iter().zip(&got) {
            let one = gelu_f32(x);
            assert!(
                g.to_bits() == one.to_bits() || (g.is_nan() && one.is_nan()),
                "gelu({x})"
            );
        }
        // GELU(1) = 0.5 (1 + erf(1 / sqrt 2)) = 0.8413447; GELU(-2) = -0.0455003.
        for (x, want) in [(1.0f32, 0.841_344_7f32), (-2.0, -0.045_500_26)] {
            assert!(
                (gelu_f32(x) - want).abs() <= 1e-6,
                "gelu({x}) = {}",
                gelu_f32(x)
            );
        }
    }

    #[test]
    fn relu_keeps_nan_and_codes_round_trip() {
        let mut v = [-1.0f32, 2.0, f32::NAN, -0.0];
        Activation::Relu.apply(&mut v);
        assert_eq!(v[..2], [0.0, 2.0]);
        assert!(v[2].is_nan());
        let relu6 = Activation::Clip {
            low: 0.0,
            high: 6.0,
        };
        for a in [
            Activation::None,
            Activation::Relu,
            Activation::Silu,
            Activation::Gelu,
            relu6,
        ] {
            assert_eq!(Activation::decode(a.code(), &a.clip_bounds()), Some(a));
        }
        assert_eq!(Activation::decode(5, &[]), None);
        assert_eq!(Activation::decode(4, &[]), None);
        assert_eq!(Activation::decode(4, &[6.0, 0.0]), None);
        assert_eq!(Activation::decode(4, &[f32::NAN, 1.0]), None);
        assert_eq!(Activation::decode(1, &[0.0, 6.0]), None);
    }

    #[test]
    fn clip_clamps_and_keeps_nan() {
        let relu6 = Activation::Clip {
            low: 0.0,
            high: 6.0,
        };
        let mut v = [
            -1.0f32,
            2.5,
            7.0,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ];
        relu6.apply(&mut v);
        assert_eq!(v[..3], [0.0, 2.5, 6.0]);
        assert!(v[3].is_nan());
        assert_eq!(v[4..], [6.0, 0.0]);
        let mut w = [-3.0f64, 0.25, 9.0];
        Activation::Clip {
            low: -1.0,
            high: 0.5,
        }
        .apply(&mut w);
        assert_eq!(w, [-1.0, 0.25, 0.5]);
    }
}
