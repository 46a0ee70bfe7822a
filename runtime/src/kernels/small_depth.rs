//! f32 matrix products of a small depth (`k` up to [`MAX_DEPTH`]) on AVX2 with FMA or
//! on AVX-512, without packing: the convolutions of a network's first layer (3 input
//! channels, a 3x3 window: depth 27) multiply their filters by im2col tiles this
//! shallow, and `gemm` spent more on packing both operands and on its loop overhead than
//! on the products (SqueezeNet's and MobileNetV3's stems ran at 10-12 GFLOP/s). Here a
//! 6 x 16 block of sums (8 x 32 on AVX-512) stays in registers over the whole depth,
//! reading the right operand's rows in place and broadcasting the left operand's values.

use super::StridedMatrix;

/// Deepest product this path takes: beyond it `gemm`'s packing pays for itself.
pub(super) const MAX_DEPTH: usize = 64;

/// Rows of one register block: 6 x 2 sums, two right-hand vectors and a broadcast take
/// 15 of the 16 vector registers.
const ROWS: usize = 6;

/// Whether this path runs a product of depth `k` and width `n` with a right operand
/// whose rows are contiguous (`b_cs == 1`), on this CPU.
pub(super) fn applies(k: usize, n: usize, b_cs: isize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        (1..=MAX_DEPTH).contains(&k)
            && n >= 16
            && b_cs == 1
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (k, n, b_cs);
        false
    }
}

/// `c[m, n] = a[m, k] * b[k, n]`, for a product [`applies`] accepts.
///
/// # Safety
/// As `gemm_into`: `c` addresses `m` rows of `n` elements `c_rs` apart that nothing else
/// accesses meanwhile, and the strides keep `a` and `b` inside their slices (`b`'s rows
/// contiguous, `b.rs >= 0`); the CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn product(
    [m, n, k]: [usize; 3],
    c: *mut f32,
    c_rs: usize,
    a: StridedMatrix<'_, f32>,
    b: StridedMatrix<'_, f32>,
) {
    // SAFETY (both): per this function's contract, and the CPU has the features.
    if std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512vl")
    {
        unsafe { product_avx512([m, n, k], c, c_rs, a, b) };
    } else {
        unsafe { product_avx2([m, n, k], c, c_rs, a, b) };
    }
}

/// [`product`] on AVX2 with FMA: blocks of 6 rows by 16 columns, then 8, then single
/// columns.
///
/// # Safety
/// As [`product`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn product_avx2(
    [m, n, k]: [usize; 3],
    c: *mut f32,
    c_rs: usize,
    a: StridedMatrix<'_, f32>,
    b: StridedMatrix<'_, f32>,
) {
    let mut i = 0;
    while i < m {
        let rows = ROWS.min(m - i);
        // SAFETY: rows i..i + rows exist in `a` and `c`, per the contract.
        unsafe {
            match rows {
                6 => rows_block::<6>(i, [n, k], c, c_rs, &a, &b),
                5 => rows_block::<5>(i, [n, k], c, c_rs, &a, &b),
                4 => rows_block::<4>(i, [n, k], c, c_rs, &a, &b),
                3 => rows_block::<3>(i, [n, k], c, c_rs, &a, &b),
                2 => rows_block::<2>(i, [n, k], c, c_rs, &a, &b),
                _ => rows_block::<1>(i, [n, k], c, c_rs, &a, &b),
            }
        }
        i += rows;
    }
}

/// Rows `i..i + R` of the product: 16 columns at a time, then 8, then one by one.
///
/// # Safety
/// As [`product`], with rows `i..i + R` inside `a` and `c`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_block<const R: usize>(
    i: usize,
    [n, k]: [usize; 2],
    c: *mut f32,
    c_rs: usize,
    a: &StridedMatrix<'_, f32>,
    b: &StridedMatrix<'_, f32>,
) {
    use std::arch::x86_64::*;
    let a_at = |r: usize, d: usize| (i + r) as isize * a.rs + d as isize * a.cs;
    let b_row = |d: usize| d as isize * b.rs;
    let mut j = 0;
    // SAFETY (of every access): a[i + r, d] and b[d, j..j + 16 or 8] lie inside the
    // slices per the contract (the strides keep them there), and c's rows i..i + R hold
    // n elements.
    unsafe {
        while j + 16 <= n {
            let mut acc = [[_mm256_setzero_ps(); 2]; R];
            for d in 0..k {
                let row = b.data.as_ptr().offset(b_row(d)).add(j);
                let (b0, b1) = (_mm256_loadu_ps(row), _mm256_loadu_ps(row.add(8)));
                for (r, sums) in acc.iter_mut().enumerate() {
                    let x = _mm256_broadcast_ss(&*a.data.as_ptr().offset(a_at(r, d)));
                    sums[0] = _mm256_fmadd_ps(x, b0, sums[0]);
                    sums[1] = _mm256_fmadd_ps(x, b1, sums[1]);
                }
            }
            for (r, sums) in acc.iter().enumerate() {
                let out = c.add((i + r) * c_rs + j);
                _mm256_storeu_ps(out, sums[0]);
                _mm256_storeu_ps(out.add(8), sums[1]);
            }
            j += 16;
        }
        if j + 8 <= n {
            let mut acc = [_mm256_setzero_ps(); R];
            for d in 0..k {
                let b0 = _mm256_loadu_ps(b.data.as_ptr().offset(b_row(d)).add(j));
                for (r, sum) in acc.iter_mut().enumerate() {
                    let x = _mm256_broadcast_ss(&*a.data.as_ptr().offset(a_at(r, d)));
                    *sum = _mm256_fmadd_ps(x, b0, *sum);
                }
            }
            for (r, sum) in acc.iter().enumerate() {
                _mm256_storeu_ps(c.add((i + r) * c_rs + j), *sum);
            }
            j += 8;
        }
        for col in j..n {
            for r in 0..R {
                let mut sum = 0.0f32;
                for d in 0..k {
                    let x = *a.data.as_ptr().offset(a_at(r, d));
                    sum = x.mul_add(*b.data.as_ptr().offset(b_row(d)).add(col), sum);
                }
                *c.add((i + r) * c_rs + col) = sum;
            }
        }
    }
}

/// Rows of one AVX-512 register block: 8 x 2 sums of 16 lanes and two right-hand
/// vectors take 18 of the 32 vector registers (the broadcasts are memory operands).
const ROWS_AVX512: usize = 8;

/// [`product`] on AVX-512: blocks of 8 rows by 32 columns, then 16, then one masked
/// vector for the last columns (a 197-wide attention product spent 40% of its time on
/// the AVX2 path's scalar tail).
///
/// # Safety
/// As [`product`], and the CPU has AVX-512F and AVX-512VL.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn product_avx512(
    [m, n, k]: [usize; 3],
    c: *mut f32,
    c_rs: usize,
    a: StridedMatrix<'_, f32>,
    b: StridedMatrix<'_, f32>,
) {
    let mut i = 0;
    while i < m {
        let rows = ROWS_AVX512.min(m - i);
        // SAFETY: rows i..i + rows exist in `a` and `c`, per the contract.
        unsafe {
            match rows {
                8 => rows_block_avx512::<8>(i, [n, k], c, c_rs, &a, &b),
                7 => rows_block_avx512::<7>(i, [n, k], c, c_rs, &a, &b),
                6 => rows_block_avx512::<6>(i, [n, k], c, c_rs, &a, &b),
                5 => rows_block_avx512::<5>(i, [n, k], c, c_rs, &a, &b),
                4 => rows_block_avx512::<4>(i, [n, k], c, c_rs, &a, &b),
                3 => rows_block_avx512::<3>(i, [n, k], c, c_rs, &a, &b),
                2 => rows_block_avx512::<2>(i, [n, k], c, c_rs, &a, &b),
                _ => rows_block_avx512::<1>(i, [n, k], c, c_rs, &a, &b),
            }
        }
        i += rows;
    }
}

/// Rows `i..i + R` of the product on AVX-512: 32 columns at a time, then 16, then the
/// rest under a mask.
///
/// # Safety
/// As [`product_avx512`], with rows `i..i + R` inside `a` and `c`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn rows_block_avx512<const R: usize>(
    i: usize,
    [n, k]: [usize; 2],
    c: *mut f32,
    c_rs: usize,
    a: &StridedMatrix<'_, f32>,
    b: &StridedMatrix<'_, f32>,
) {
    use std::arch::x86_64::*;
    let a_at = |r: usize, d: usize| (i + r) as isize * a.rs + d as isize * a.cs;
    let b_row = |d: usize| d as isize * b.rs;
    let mut j = 0;
    // SAFETY (of every access): a[i + r, d] and b[d, j..j + 32, 16 or the masked rest]
    // lie inside the slices per the contract (the strides keep them there), masked lanes
    // are not accessed, and c's rows i..i + R hold n elements.
    unsafe {
        while j + 32 <= n {
            let mut acc = [[_mm512_setzero_ps(); 2]; R];
            for d in 0..k {
                let row = b.data.as_ptr().offset(b_row(d)).add(j);
                let (b0, b1) = (_mm512_loadu_ps(row), _mm512_loadu_ps(row.add(16)));
                for (r, sums) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_ps(*a.data.as_ptr().offset(a_at(r, d)));
                    sums[0] = _mm512_fmadd_ps(x, b0, sums[0]);
                    sums[1] = _mm512_fmadd_ps(x, b1, sums[1]);
                }
            }
            for (r, sums) in acc.iter().enumerate() {
                let out = c.add((i + r) * c_rs + j);
                _mm512_storeu_ps(out, sums[0]);
                _mm512_storeu_ps(out.add(16), sums[1]);
            }
            j += 32;
        }
        while j + 8 < n {
            let width = (n - j).min(16);
            let mask = (u32::MAX >> (32 - width)) as __mmask16;
            let mut acc = [_mm512_setzero_ps(); R];
            for d in 0..k {
                let b0 = _mm512_maskz_loadu_ps(mask, b.data.as_ptr().offset(b_row(d)).add(j));
                for (r, sum) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_ps(*a.data.as_ptr().offset(a_at(r, d)));
                    *sum = _mm512_fmadd_ps(x, b0, *sum);
                }
            }
            for (r, sum) in acc.iter().enumerate() {
                _mm512_mask_storeu_ps(c.add((i + r) * c_rs + j), mask, *sum);
            }
            j += width;
        }
        if j < n {
            // Eight columns or fewer: half-width vectors, not half-empty full ones.
            let mask = (u32::MAX >> (32 - (n - j))) as __mmask8;
            let mut acc = [_mm256_setzero_ps(); R];
            for d in 0..k {
                let b0 = _mm256_maskz_loadu_ps(mask, b.data.as_ptr().offset(b_row(d)).add(j));
                for (r, sum) in acc.iter_mut().enumerate() {
                    let x = _mm256_set1_ps(*a.data.as_ptr().offset(a_at(r, d)));
                    *sum = _mm256_fmadd_ps(x, b0, *sum);
                }
            }
            for (r, sum) in acc.iter().enumerate() {
                _mm256_mask_storeu_ps(c.add((i + r) * c_rs + j), mask, *sum);
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn matches_the_definition() {
        // (m, n, k, a transposed): rows of every block height of both paths, columns in
        // 32s, 16s, 8s, masked rests of 9-16 and of at most 8 and single ones, depths of
        // 1 to the most.
        let with_avx512 = std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl");
        type Product =
            unsafe fn([usize; 3], *mut f32, usize, StridedMatrix<'_, f32>, StridedMatrix<'_, f32>);
        let variants: [(&str, Product, bool); 2] = [
            ("avx2", product_avx2, true),
            ("avx512", product_avx512, with_avx512),
        ];
        for (m, n, k, a_transposed) in [
            (64, 300, 27, false),
            (7, 16, 1, false),
            (13, 41, 64, true),
            (1, 25, 9, false),
            (6, 24, 33, true),
            (17, 70, 20, false),
            (23, 3, 5, false),
        ] {
            assert!(
                applies(k, n.max(16), 1),
                "this CPU runs the path under test"
            );
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0)
                .collect();
            let b: Vec<f32> = (0..k * (n + 3))
                .map(|i| ((i * 11 % 17) as f32 - 8.0) / 3.0)
                .collect();
            let (a_rs, a_cs) = if a_transposed { (1, m) } else { (k, 1) };
            for (name, variant, available) in variants {
                if !available {
                    continue;
                }
                let mut c = vec![f32::NAN; m * (n + 2)];
                // SAFETY: the shapes above; the CPU has the features (`applies`, and
                // checked above for AVX-512).
                unsafe {
                    variant(
                        [m, n, k],
                        c.as_mut_ptr(),
                        n + 2,
                        StridedMatrix {
                            data: &a,
                            rs: a_rs as isize,
                            cs: a_cs as isize,
                        },
                        StridedMatrix {
                            data: &b,
                            rs: (n + 3) as isize,
                            cs: 1,
                        },
                    )
                };
                for i in 0..m {
                    for j in 0..n {
                        let want: f64 = (0..k)
                            .map(|d| a[i * a_rs + d * a_cs] as f64 * b[d * (n + 3) + j] as f64)
                            .sum();
                        let got = c[i * (n + 2) + j];
                        assert!(
                            (got as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "{name} {m}x{n}x{k}: [{i}, {j}] {got} vs {want}"
                        );
                    }
                    assert!(c[i * (n + 2) + n].is_nan(), "{name} wrote past the row");
                }
            }
        }
    }
}
