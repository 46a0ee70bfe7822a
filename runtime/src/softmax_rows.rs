//! Row helpers generated code calls where a whole row is better done at the CPU's full
//! vector width than at the 128 bits Cranelift emits: exp of a row in place, returning its
//! sum (a softmax's middle pass), the max of a row (its first pass), and the sum of a row
//! and of its squared distances to a value (a normalization's mean and variance passes),
//! with AVX-512 and AVX2/FMA twins chosen at run time.
//!
//! The exp is the generated code's formula (`smelt-cpu`'s `math.rs`): n = round(x log2 e),
//! r = x - n ln 2 in two steps, a degree-5 polynomial, n added to the exponent field;
//! +inf above ln(f32::MAX) (NaN stays NaN), 0 below the normal range.

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits.
const MAGIC: f32 = 12_582_912.0;
const LN2_HI: f32 = -0.693_359_4;
const LN2_LO: f32 = 2.121_944_4e-4;
const C2: f32 = 0.499_992_3;
const C3: f32 = 0.166_671_14;
const C4: f32 = 0.041_890_12;
const C5: f32 = 0.008_312_528;
const HI: f32 = 88.72283;
const LO: f32 = -87.33654;

/// Replaces `row[0..n]` by its exp and returns the sum of the results.
///
/// # Safety
/// `row` points at `n` (>= 0) writable, initialized f32 values.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smelt_rt_exp_sum_f32(row: *mut f32, n: i64) -> f32 {
    // SAFETY: per the contract; reading and writing the same row is what `exp_shifted_sum`
    // allows.
    unsafe { exp_shifted_sum(row, row, 0.0, n) }
}

/// `dst[i] = exp(src[i] - shift)` for `i < n`, returning the sum of the results: a
/// softmax's middle pass reading the input row directly.
///
/// # Safety
/// `src` points at `n` (>= 0) initialized f32 values and `dst` at `n` writable ones; the
/// rows are the same or do not overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smelt_rt_exp_shifted_sum_f32(
    dst: *mut f32,
    src: *const f32,
    shift: f32,
    n: i64,
) -> f32 {
    // SAFETY: per the contract.
    unsafe { exp_shifted_sum(dst, src, shift, n) }
}

/// The helpers' common body (subtracting 0 changes no value, NaN and -0 included).
///
/// # Safety
/// As `smelt_rt_exp_shifted_sum_f32`.
unsafe fn exp_shifted_sum(dst: *mut f32, src: *const f32, shift: f32, n: i64) -> f32 {
    if n <= 0 {
        return 0.0;
    }
    let n = n as usize;
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F; the rows per the contract.
            return unsafe { exp_sum_avx512(dst, src, shift, n) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA; the rows per the contract.
            return unsafe { exp_sum_avx2(dst, src, shift, n) };
        }
    }
    // SAFETY: the rows per the contract.
    unsafe { exp_sum_tail(dst, src, shift, 0, n) }
}

/// Elements `from..n` one by one, returning their sum.
///
/// # Safety
/// As `smelt_rt_exp_shifted_sum_f32`.
unsafe fn exp_sum_tail(dst: *mut f32, src: *const f32, shift: f32, from: usize, n: usize) -> f32 {
    let mut sum = 0.0;
    for i in from..n {
        // SAFETY: i < n, per the contract.
        unsafe {
            let y = exp_scalar(*src.add(i) - shift);
            *dst.add(i) = y;
            sum += y;
        }
    }
    sum
}

/// `row[i] = exp(row[i])`, returning the sum.
pub fn exp_sum(row: &mut [f32]) -> f32 {
    // SAFETY: one row of row.len() floats, read and written in place.
    unsafe { exp_shifted_sum(row.as_mut_ptr(), row.as_ptr(), 0.0, row.len() as i64) }
}

/// One element, by the same formula.
pub(crate) fn exp_scalar(x: f32) -> f32 {
    let shifted = x * LOG2E + MAGIC;
    let n = shifted - MAGIC;
    let r = n.mul_add(LN2_HI, x);
    let r = n.mul_add(LN2_LO, r);
    let p = [C4, C3, C2, 1.0, 1.0]
        .iter()
        .fold(C5, |acc, &c| acc.mul_add(r, c));
    let y = f32::from_bits(p.to_bits().wrapping_add(shifted.to_bits() << 23));
    if x > HI || x.is_nan() {
        x + f32::INFINITY
    } else if x < LO {
        0.0
    } else {
        y
    }
}

/// The exp of eight lanes by the formula above, on AVX2 with FMA.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) fn exp_avx2(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let s = _mm256_set1_ps;
    let shifted = _mm256_fmadd_ps(x, s(LOG2E), s(MAGIC));
    let n = _mm256_sub_ps(shifted, s(MAGIC));
    let r = _mm256_fmadd_ps(n, s(LN2_HI), x);
    let r = _mm256_fmadd_ps(n, s(LN2_LO), r);
    let p = _mm256_fmadd_ps(s(C5), r, s(C4));
    let p = _mm256_fmadd_ps(p, r, s(C3));
    let p = _mm256_fmadd_ps(p, r, s(C2));
    let p = _mm256_fmadd_ps(p, r, s(1.0));
    let p = _mm256_fmadd_ps(p, r, s(1.0));
    let exponent = _mm256_slli_epi32::<23>(_mm256_castps_si256(shifted));
    let y = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), exponent));
    let over = _mm256_cmp_ps::<_CMP_NLE_UQ>(x, s(HI));
    let y = _mm256_blendv_ps(y, _mm256_add_ps(x, s(f32::INFINITY)), over);
    let keep = _mm256_cmp_ps::<_CMP_NLT_UQ>(x, s(LO));
    _mm256_and_ps(y, keep)
}

/// The exp of sixteen lanes by the formula above (the same operations as [`exp_avx2`]
/// and [`exp_scalar`], so every lane agrees bit for bit), on AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
pub(crate) fn exp_avx512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let s = _mm512_set1_ps;
    let shifted = _mm512_fmadd_ps(x, s(LOG2E), s(MAGIC));
    let n = _mm512_sub_ps(shifted, s(MAGIC));
    let r = _mm512_fmadd_ps(n, s(LN2_HI), x);
    let r = _mm512_fmadd_ps(n, s(LN2_LO), r);
    let p = _mm512_fmadd_ps(s(C5), r, s(C4));
    let p = _mm512_fmadd_ps(p, r, s(C3));
    let p = _mm512_fmadd_ps(p, r, s(C2));
    let p = _mm512_fmadd_ps(p, r, s(1.0));
    let p = _mm512_fmadd_ps(p, r, s(1.0));
    let exponent = _mm512_slli_epi32::<23>(_mm512_castps_si512(shifted));
    let y = _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(p), exponent));
    let over = _mm512_cmp_ps_mask::<_CMP_NLE_UQ>(x, s(HI));
    let y = _mm512_mask_blend_ps(over, y, _mm512_add_ps(x, s(f32::INFINITY)));
    let keep = _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(x, s(LO));
    _mm512_maskz_mov_ps(keep, y)
}

/// # Safety
/// As `smelt_rt_exp_shifted_sum_f32`, on a CPU with AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_sum_avx2(dst: *mut f32, src: *const f32, shift: f32, n: usize) -> f32 {
    use std::arch::x86_64::*;
    let shift_v = _mm256_set1_ps(shift);
    let mut acc = _mm256_setzero_ps();
    let full = n / 8 * 8;
    for i in (0..full).step_by(8) {
        // SAFETY: i + 8 <= n, per the contract.
        let x = _mm256_sub_ps(unsafe { _mm256_loadu_ps(src.add(i)) }, shift_v);
        let y = exp_avx2(x);
        // SAFETY: i + 8 <= n, per the contract.
        unsafe { _mm256_storeu_ps(dst.add(i), y) };
        acc = _mm256_add_ps(acc, y);
    }
    let mut lanes = [0f32; 8];
    // SAFETY: eight floats.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
    // SAFETY: per the contract.
    lanes.iter().sum::<f32>() + unsafe { exp_sum_tail(dst, src, shift, full, n) }
}

/// # Safety
/// As `smelt_rt_exp_shifted_sum_f32`, on a CPU with AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_sum_avx512(dst: *mut f32, src: *const f32, shift: f32, n: usize) -> f32 {
    use std::arch::x86_64::*;
    let shift_v = _mm512_set1_ps(shift);
    let mut acc = _mm512_setzero_ps();
    let full = n / 16 * 16;
    for i in (0..full).step_by(16) {
        // SAFETY: i + 16 <= n, per the contract.
        let x = _mm512_sub_ps(unsafe { _mm512_loadu_ps(src.add(i)) }, shift_v);
        let y = exp_avx512(x);
        // SAFETY: i + 16 <= n, per the contract.
        unsafe { _mm512_storeu_ps(dst.add(i), y) };
        acc = _mm512_add_ps(acc, y);
    }
    // SAFETY: per the contract.
    _mm512_reduce_add_ps(acc) + unsafe { exp_sum_tail(dst, src, shift, full, n) }
}

/// The largest of `src[0..n]`, NaN if any is NaN, -inf for an empty row (the generated
/// max reduction's rules; either zero may come out of a row whose max is a zero).
///
/// # Safety
/// `src` points at `n` (>= 0) initialized f32 values.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smelt_rt_row_max_f32(src: *const f32, n: i64) -> f32 {
    if n <= 0 {
        return f32::NEG_INFINITY;
    }
    let n = n as usize;
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: per the contract, and the CPU has AVX-512F.
            return unsafe { row_max_avx512(src, n) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: per the contract, and the CPU has AVX2.
            return unsafe { row_max_avx2(src, n) };
        }
    }
    // SAFETY: per the contract.
    unsafe { row_max_tail(f32::NEG_INFINITY, src, 0, n) }
}

/// `best` combined with the max of `src[from..n]`, NaN-propagating.
///
/// # Safety
/// As `smelt_rt_row_max_f32`.
#[inline(always)]
unsafe fn row_max_tail(mut best: f32, src: *const f32, from: usize, n: usize) -> f32 {
    for i in from..n {
        // SAFETY: i < n, per the contract.
        let x = unsafe { *src.add(i) };
        if x.is_nan() {
            return f32::NAN;
        }
        if x > best {
            best = x;
        }
    }
    best
}

/// # Safety
/// As `smelt_rt_row_max_f32`, on a CPU with AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn row_max_avx512(src: *const f32, n: usize) -> f32 {
    use std::arch::x86_64::*;
    // Two accumulators to overlap the max latency; NaNs tracked in a mask (maxps keeps
    // a NaN only from its second operand).
    let (mut a0, mut a1) = (
        _mm512_set1_ps(f32::NEG_INFINITY),
        _mm512_set1_ps(f32::NEG_INFINITY),
    );
    let mut nan: u16 = 0;
    let full = n / 32 * 32;
    for i in (0..full).step_by(32) {
        // SAFETY: i + 32 <= n, per the contract.
        let (x0, x1) = unsafe {
            (
                _mm512_loadu_ps(src.add(i)),
                _mm512_loadu_ps(src.add(i + 16)),
            )
        };
        nan |= _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x0, x1);
        a0 = _mm512_max_ps(x0, a0);
        a1 = _mm512_max_ps(x1, a1);
    }
    if nan != 0 {
        return f32::NAN;
    }
    let best = _mm512_reduce_max_ps(_mm512_max_ps(a0, a1));
    // SAFETY: per the contract.
    unsafe { row_max_tail(best, src, full, n) }
}

/// # Safety
/// As `smelt_rt_row_max_f32`, on a CPU with AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn row_max_avx2(src: *const f32, n: usize) -> f32 {
    use std::arch::x86_64::*;
    let (mut a0, mut a1) = (
        _mm256_set1_ps(f32::NEG_INFINITY),
        _mm256_set1_ps(f32::NEG_INFINITY),
    );
    let mut nan = _mm256_setzero_ps();
    let full = n / 16 * 16;
    for i in (0..full).step_by(16) {
        // SAFETY: i + 16 <= n, per the contract.
        let (x0, x1) = unsafe { (_mm256_loadu_ps(src.add(i)), _mm256_loadu_ps(src.add(i + 8))) };
        nan = _mm256_or_ps(nan, _mm256_cmp_ps::<_CMP_UNORD_Q>(x0, x1));
        a0 = _mm256_max_ps(x0, a0);
        a1 = _mm256_max_ps(x1, a1);
    }
    if _mm256_movemask_ps(nan) != 0 {
        return f32::NAN;
    }
    let mut lanes = [0.0f32; 8];
    // SAFETY: eight lanes into eight floats.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_max_ps(a0, a1)) };
    let best = lanes.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    // SAFETY: per the contract.
    unsafe { row_max_tail(best, src, full, n) }
}

/// The sum of `src[0..n]` (0 for an empty row), in an order of its own: a mean's pass
/// (a layer normalization's first, a global average pool's).
///
/// # Safety
/// `src` points at `n` (>= 0) initialized f32 values.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smelt_rt_row_sum_f32(src: *const f32, n: i64) -> f32 {
    // SAFETY: per the contract; with no center the squares are not taken.
    unsafe { row_sum_dispatch::<false>(src, n, 0.0) }
}

/// The sum of `(src[i] - center)^2` over `src[0..n]` (0 for an empty row), in an order
/// of its own: a variance's pass (a layer normalization's second).
///
/// # Safety
/// `src` points at `n` (>= 0) initialized f32 values.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smelt_rt_row_sq_dev_sum_f32(src: *const f32, n: i64, center: f32) -> f32 {
    // SAFETY: per the contract.
    unsafe { row_sum_dispatch::<true>(src, n, center) }
}

/// [`smelt_rt_row_sum_f32`] (`SQUARES` false) or [`smelt_rt_row_sq_dev_sum_f32`] on the
/// widest path this CPU has.
///
/// # Safety
/// As the two helpers.
unsafe fn row_sum_dispatch<const SQUARES: bool>(src: *const f32, n: i64, center: f32) -> f32 {
    if n <= 0 {
        return 0.0;
    }
    let n = n as usize;
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: per the contract, and the CPU has AVX-512F.
            return unsafe { row_sum_avx512::<SQUARES>(src, n, center) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: per the contract, and the CPU has AVX2.
            return unsafe { row_sum_avx2::<SQUARES>(src, n, center) };
        }
    }
    // SAFETY: per the contract.
    unsafe { row_sum_tail::<SQUARES>(0.0, src, 0, n, center) }
}

/// `sum` plus the terms of `src[from..n]`.
///
/// # Safety
/// As [`smelt_rt_row_sum_f32`].
#[inline(always)]
unsafe fn row_sum_tail<const SQUARES: bool>(
    mut sum: f32,
    src: *const f32,
    from: usize,
    n: usize,
    center: f32,
) -> f32 {
    for i in from..n {
        // SAFETY: i < n, per the contract.
        let x = unsafe { *src.add(i) };
        sum += if SQUARES {
            (x - center) * (x - center)
        } else {
            x
        };
    }
    sum
}

/// # Safety
/// As [`smelt_rt_row_sum_f32`], on a CPU with AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn row_sum_avx512<const SQUARES: bool>(src: *const f32, n: usize, center: f32) -> f32 {
    use std::arch::x86_64::*;
    let c = _mm512_set1_ps(center);
    let term = |x: __m512| {
        if SQUARES {
            let d = _mm512_sub_ps(x, c);
            _mm512_mul_ps(d, d)
        } else {
            x
        }
    };
    // Two accumulators to overlap the add latency; the last vector under a mask.
    let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let full = n / 32 * 32;
    for i in (0..full).step_by(32) {
        // SAFETY: i + 32 <= n, per the contract.
        let (x0, x1) = unsafe {
            (
                _mm512_loadu_ps(src.add(i)),
                _mm512_loadu_ps(src.add(i + 16)),
            )
        };
        a0 = _mm512_add_ps(a0, term(x0));
        a1 = _mm512_add_ps(a1, term(x1));
    }
    let mut i = full;
    while i < n {
        let width = (n - i).min(16);
        let mask = (u32::MAX >> (32 - width)) as __mmask16;
        // SAFETY: the unmasked lanes are below n, per the contract.
        let x = unsafe { _mm512_maskz_loadu_ps(mask, src.add(i)) };
        a0 = _mm512_mask_add_ps(a0, mask, a0, term(x));
        i += width;
    }
    _mm512_reduce_add_ps(_mm512_add_ps(a0, a1))
}

/// # Safety
/// As [`smelt_rt_row_sum_f32`], on a CPU with AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn row_sum_avx2<const SQUARES: bool>(src: *const f32, n: usize, center: f32) -> f32 {
    use std::arch::x86_64::*;
    let c = _mm256_set1_ps(center);
    let term = |x: __m256| {
        if SQUARES {
            let d = _mm256_sub_ps(x, c);
            _mm256_mul_ps(d, d)
        } else {
            x
        }
    };
    let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let full = n / 16 * 16;
    for i in (0..full).step_by(16) {
        // SAFETY: i + 16 <= n, per the contract.
        let (x0, x1) = unsafe { (_mm256_loadu_ps(src.add(i)), _mm256_loadu_ps(src.add(i + 8))) };
        a0 = _mm256_add_ps(a0, term(x0));
        a1 = _mm256_add_ps(a1, term(x1));
    }
    let mut lanes = [0.0f32; 8];
    // SAFETY: eight lanes into eight floats.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(a0, a1)) };
    let sum = (lanes[0] + lanes[1])
        + (lanes[2] + lanes[3])
        + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
    // SAFETY: per the contract.
    unsafe { row_sum_tail::<SQUARES>(sum, src, full, n, center) }
}

/// The helpers by symbol name, for a JIT to resolve.
pub fn symbols() -> Vec<(&'static str, *const u8)> {
    vec![
        ("smelt_rt_exp_sum_f32", smelt_rt_exp_sum_f32 as *const u8),
        (
            "smelt_rt_exp_shifted_sum_f32",
            smelt_rt_exp_shifted_sum_f32 as *const u8,
        ),
        ("smelt_rt_row_max_f32", smelt_rt_row_max_f32 as *const u8),
        ("smelt_rt_row_sum_f32", smelt_rt_row_sum_f32 as *const u8),
        (
            "smelt_rt_row_sq_dev_sum_f32",
            smelt_rt_row_sq_dev_sum_f32 as *const u8,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reading one row and writing another: exp(src - shift), and the sum.
    #[test]
    fn shifted_exp_sum_reads_the_source_row() {
        let src: Vec<f32> = (0..1003).map(|i| (i % 97) as f32 / 9.0).collect();
        let shift = 3.5;
        let mut dst = vec![f32::NAN; src.len()];
        // SAFETY: two rows of src.len() floats.
        let sum = unsafe {
            smelt_rt_exp_shifted_sum_f32(dst.as_mut_ptr(), src.as_ptr(), shift, src.len() as i64)
        };
        let mut want_sum = 0.0;
        for (&x, &y) in src.iter().zip(&dst) {
            let want = ((x - shift) as f64).exp();
            want_sum += want;
            assert!(
                ((y as f64 - want) / want).abs() < 1e-6,
                "exp({x} - {shift}) = {y}"
            );
        }
        assert!((sum as f64 - want_sum).abs() < 1e-5 * want_sum);
    }

    /// Every length around the vector blocks, the max anywhere, NaN anywhere, all -inf,
    /// and the empty row; through each path this CPU has.
    #[test]
    fn row_max_finds_the_max_and_keeps_nan() {
        type RowMax = unsafe fn(*const f32, usize) -> f32;
        let paths: Vec<(&str, RowMax)> = {
            let mut p: Vec<(&str, RowMax)> = vec![("scalar", |src, n| unsafe {
                row_max_tail(f32::NEG_INFINITY, src, 0, n)
            })];
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx512f") {
                    p.push(("avx512", |src, n| unsafe { row_max_avx512(src, n) }));
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    p.push(("avx2", |src, n| unsafe { row_max_avx2(src, n) }));
                }
            }
            p
        };
        for n in [1usize, 7, 15, 16, 17, 31, 32, 33, 64, 100, 1024, 1031] {
            for at in [0, n / 2, n - 1] {
                let mut row: Vec<f32> = (0..n).map(|i| -((i * 37 % 101) as f32) - 1.0).collect();
                row[at] = 5.5;
                for (name, f) in &paths {
                    // SAFETY: the row holds n values.
                    assert_eq!(unsafe { f(row.as_ptr(), n) }, 5.5, "{name} n {n} at {at}");
                }
                row[at] = f32::NAN;
                for (name, f) in &paths {
                    // SAFETY: as above.
                    assert!(
                        unsafe { f(row.as_ptr(), n) }.is_nan(),
                        "{name} NaN n {n} at {at}"
                    );
                }
            }
            let all = vec![f32::NEG_INFINITY; n];
            // SAFETY: as above.
            assert_eq!(
                unsafe { smelt_rt_row_max_f32(all.as_ptr(), n as i64) },
                f32::NEG_INFINITY
            );
        }
        // SAFETY: an empty row reads nothing.
        assert_eq!(
            unsafe { smelt_rt_row_max_f32(std::ptr::null(), 0) },
            f32::NEG_INFINITY
        );
    }

    /// Sums and sums of squared distances to a center, of every length around the
    /// vector blocks, through each path this CPU has, against f64; NaN and infinities
    /// propagate, and an empty row sums to 0.
    #[test]
    fn row_sums_match_f64() {
        type RowSum = unsafe fn(*const f32, usize, f32) -> f32;
        let mut paths: Vec<(&str, RowSum, RowSum)> = vec![(
            "scalar",
            |src, n, c| unsafe { row_sum_tail::<false>(0.0, src, 0, n, c) },
            |src, n, c| unsafe { row_sum_tail::<true>(0.0, src, 0, n, c) },
        )];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                paths.push((
                    "avx512",
                    |src, n, c| unsafe { row_sum_avx512::<false>(src, n, c) },
                    |src, n, c| unsafe { row_sum_avx512::<true>(src, n, c) },
                ));
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                paths.push((
                    "avx2",
                    |src, n, c| unsafe { row_sum_avx2::<false>(src, n, c) },
                    |src, n, c| unsafe { row_sum_avx2::<true>(src, n, c) },
                ));
            }
        }
        let center = 0.75f32;
        for n in [1usize, 7, 15, 16, 17, 31, 32, 33, 47, 96, 100, 768, 1031] {
            let row: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let sum: f64 = row.iter().map(|&x| x as f64).sum();
            let squares: f64 = row
                .iter()
                .map(|&x| (x as f64 - center as f64).powi(2))
                .sum();
            for (name, plain, sq) in &paths {
                // SAFETY: the row holds n values.
                let (got, got_sq) =
                    unsafe { (plain(row.as_ptr(), n, center), sq(row.as_ptr(), n, center)) };
                assert!(
                    (got as f64 - sum).abs() <= 1e-5 * (1.0 + sum.abs()),
                    "{name} sum n {n}: {got} vs {sum}"
                );
                assert!(
                    (got_sq as f64 - squares).abs() <= 1e-5 * (1.0 + squares),
                    "{name} squares n {n}: {got_sq} vs {squares}"
                );
            }
            for special in [f32::NAN, f32::INFINITY] {
                let mut with = row.clone();
                with[n / 2] = special;
                for (name, plain, sq) in &paths {
                    // SAFETY: as above.
                    let (got, got_sq) = unsafe {
                        (
                            plain(with.as_ptr(), n, center),
                            sq(with.as_ptr(), n, center),
                        )
                    };
                    assert!(
                        got.is_nan() == special.is_nan() && got_sq.is_nan() == special.is_nan(),
                        "{name} {special} n {n}: {got} {got_sq}"
                    );
                    assert!(special.is_nan() || got_sq == f32::INFINITY, "{name} n {n}");
                }
            }
        }
        // SAFETY: an empty row reads nothing.
        unsafe {
            assert_eq!(smelt_rt_row_sum_f32(std::ptr::null(), 0), 0.0);
            assert_eq!(smelt_rt_row_sq_dev_sum_f32(std::ptr::null(), 0, 1.0), 0.0);
        }
    }

    /// Every code path (AVX-512, AVX2, scalar tail) against f64, specials included.
    #[test]
    fn exp_sum_matches_f64() {
        let mut xs: Vec<f32> = (0..4001)
            .map(|i| -90.0 + 180.0 * i as f32 / 4000.0)
            .collect();
        xs.extend([
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            88.72283,
            -87.33654,
        ]);
        let mut got = xs.clone();
        exp_sum(&mut got);
        // Sums over rows around 0 whose lengths leave scalar tails, and over a whole
        // finite range (of sixteens and eights, rows of 1000 and 1001).
        for slice in [
            &xs[1990..1997],
            &xs[2003..2026],
            &xs[100..1100],
            &xs[100..1101],
        ] {
            let mut part = slice.to_vec();
            let sum = exp_sum(&mut part) as f64;
            let want: f64 = slice.iter().map(|&x| (x as f64).exp()).sum();
            assert!(
                (sum - want).abs() <= 1e-5 * want,
                "sum of {}: {sum} vs {want}",
                slice.len()
            );
        }
        let mut scalar = xs.clone();
        scalar.iter_mut().for_each(|x| *x = exp_scalar(*x));
        // The AVX2 twin too, where the dispatch above took AVX-512.
        let mut avx2 = scalar.clone();
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            avx2.clone_from(&xs);
            // SAFETY: the CPU has AVX2 and FMA; one row in place.
            unsafe { exp_sum_avx2(avx2.as_mut_ptr(), avx2.as_ptr(), 0.0, avx2.len()) };
        }
        for (((&x, &y), &z), &w) in xs.iter().zip(&got).zip(&scalar).zip(&avx2) {
            let want = (x as f64).exp();
            for v in [y, z, w] {
                let ok = if x.is_nan() {
                    v.is_nan()
                } else if want > f32::MAX as f64 {
                    v == f32::INFINITY
                } else if want < f32::MIN_POSITIVE as f64 {
                    v == 0.0
                } else {
                    ((v as f64 - want) / want).abs() < 1e-6
                };
                assert!(ok, "exp({x}) = {v}, expected {want}");
            }
        }
    }
}
