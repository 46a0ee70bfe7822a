//! Products of up to a few hundred rows with a large constant weight (a CTC or
//! classifier head, a projection at batch 1, a transformer's layers over one sequence):
//! the compiler packs the weight once into panels of 16 columns (the program's constants
//! hold only the packed form), and each run streams every panel once, a chunk of depths
//! at a time that every block of rows (24 on AVX-512, 6 on AVX2) takes while it is in
//! L1, prefetching the next chunk as it goes; threads take panels. `gemm` packs the
//! whole weight again on every call and splits the work by rows, so with 24 rows each of
//! two threads packed and streamed all 34 MB of a CTC head's weight.

use super::{KernelError, SyncPtr};
use crate::threads::ThreadPool;

/// Columns in one packed panel: two 8-lane vectors, or one 16-lane vector.
const PANEL: usize = 16;
/// Rows one register block computes on AVX2 (and the portable loop): 6 x 2 accumulators,
/// 2 weight vectors and a broadcast take 15 of the 16 vector registers.
const ROW_BLOCK: usize = 6;
/// Rows one register block computes on AVX-512: one 16-lane vector per row is a panel's
/// depth, so 24 accumulators and the weight vector take 25 of the 32 registers, and each
/// weight vector loaded serves 24 rows (four AVX2 blocks read it four times).
const ROW_BLOCK_WIDE: usize = 24;
/// Depths of a panel (16 KiB) that all row blocks take in turn while it stays in L1.
const DEPTH_CHUNK: usize = 256;
/// Panels that take each chunk of depth in turn (256 columns): the sums of a group's
/// tiles stay in L2 between chunks.
const GROUP_PANELS: usize = 16;

/// At most this many rows (all batches together) take the packed path. A transformer's
/// sequence of 128 or 197 tokens still gains from a weight packed once instead of on
/// every call (BERT-base's products at 1 thread: 345-459 ms through `gemm`, 314-323 ms
/// packed); far beyond, `gemm`'s blocking of the rows wins.
pub const SKINNY_MAX_ROWS: usize = 512;
/// The packed path needs at least this many multiply-adds per row; smaller weights stay
/// plain, where `gemm`'s packing costs little.
const SKINNY_MIN_ROW_MACS: usize = 1 << 16;

/// Fewest elements of the rows for their interleaving to be split over the threads.
const PARALLEL_INTERLEAVE_MIN: usize = 1 << 15;

/// Whether a product of `rows` rows (every batch of `a` together) by a constant `k x n`
/// weight is compiled to the packed form. The form runs on any CPU (AVX2 and FMA where
/// present), so a deployable packed on one machine runs on another.
pub fn skinny_applies(rows: usize, k: usize, n: usize) -> bool {
    (1..=SKINNY_MAX_ROWS).contains(&rows)
        && k.saturating_mul(n) >= SKINNY_MIN_ROW_MACS
        && n >= PANEL
}

/// The micro-kernels of the packed product, each with its block of rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    /// Plain arrays the compiler vectorizes for the build's baseline (no FMA).
    Portable,
    /// 6 rows by two 8-lane vectors.
    Avx2Fma,
    /// 24 rows by one 16-lane vector.
    Avx512,
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    fn detect() -> Kernel {
        Kernel::ALL
            .into_iter()
            .find(|k| k.supported())
            .unwrap_or(Kernel::Portable)
    }

    const ALL: [Kernel; 3] = [Kernel::Avx512, Kernel::Avx2Fma, Kernel::Portable];

    fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Kernel::Portable => true,
                Kernel::Avx2Fma => super::f32_with::<f32>(super::Simd::Avx2Fma),
                Kernel::Avx512 => super::f32_with::<f32>(super::Simd::Avx512),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Kernel::Portable
        }
    }

    /// Rows one call of the micro-kernel takes.
    fn row_block(self) -> usize {
        match self {
            Kernel::Avx512 => ROW_BLOCK_WIDE,
            Kernel::Avx2Fma | Kernel::Portable => ROW_BLOCK,
        }
    }
}

/// Floats the packed form of a `k x n` weight takes: whole panels of 16 columns.
pub fn skinny_packed_len(k: usize, n: usize) -> usize {
    n.div_ceil(PANEL) * k * PANEL
}

/// The weight `b` (`k x n`, or `n x k` when `transposed`) as panels of 16 columns, written
/// as little-endian bytes over `out` (which holds [`skinny_packed_len`] floats), so that a
/// compiler writes it straight into the program's constants: panel `p` holds, for each of
/// the `k` depths in turn, columns `16p..16p+16` (zeros past `n`). Placed on a 64-byte
/// boundary, a depth's 16 floats are one cache line. `None` where `b` or `out` has the
/// wrong size.
pub fn prepack_skinny_weight_le(
    b: &[f32],
    k: usize,
    n: usize,
    transposed: bool,
    out: &mut [u8],
) -> Option<()> {
    if out.len() != skinny_packed_len(k, n) * 4 {
        return None;
    }
    out.fill(0);
    pack_panels(b, k, n, transposed, |i, v| {
        out[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes())
    })
}

/// Calls `put(index, value)` for every weight element's place in the panels.
fn pack_panels(
    b: &[f32],
    k: usize,
    n: usize,
    transposed: bool,
    mut put: impl FnMut(usize, f32),
) -> Option<()> {
    if b.len() != k.checked_mul(n)? {
        return None;
    }
    for p in 0..n.div_ceil(PANEL) {
        let panel = p * k * PANEL;
        let cols = p * PANEL..((p + 1) * PANEL).min(n);
        for (j, col) in cols.enumerate() {
            if transposed {
                // Column `col` of op(b) is row `col` of b: contiguous reads.
                for (kk, &v) in b[col * k..(col + 1) * k].iter().enumerate() {
                    put(panel + kk * PANEL + j, v);
                }
            } else {
                for kk in 0..k {
                    put(panel + kk * PANEL + j, b[kk * n + col]);
                }
            }
        }
    }
    Some(())
}

/// `out = a * op(b) (+ bias)` for `a: [rows, k]` row-major and `op(b): [k, n]` packed by
/// [`prepack_skinny_weight_le`]; `out: [rows, n]`. Threads take panels (column blocks).
pub fn skinny_matmul(
    a: &[f32],
    [rows, k, n]: [usize; 3],
    packed: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    pool: &ThreadPool,
) -> Result<(), KernelError> {
    if a.len() != rows * k || out.len() != rows * n || packed.len() != skinny_packed_len(k, n) {
        return Err(KernelError::Shape(
            "skinny product: buffer sizes do not match the shapes".into(),
        ));
    }
    if bias.is_some_and(|b| b.len() != n) {
        return Err(KernelError::Shape(format!("bias must have {n} values")));
    }
    skinny_matmul_on(Kernel::detect(), a, [rows, k, n], packed, bias, out, pool);
    Ok(())
}

/// [`skinny_matmul`] on `kernel`, which the CPU must run, on checked operands.
fn skinny_matmul_on(
    kernel: Kernel,
    a: &[f32],
    [rows, k, n]: [usize; 3],
    packed: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    pool: &ThreadPool,
) {
    let panels = n.div_ceil(PANEL);
    // Each block of rows interleaved by depth (`[k][block rows]`), so the broadcasts of
    // one depth share a cache line instead of reading rows 4 KiB apart, which alias in L1.
    let row_block = kernel.row_block();
    let blocks: Vec<(usize, usize)> = (0..rows)
        .step_by(row_block)
        .map(|r0| (r0, (rows - r0).min(row_block)))
        .collect();
    A_PACKED.with(|cell| {
        let mut a_packed = cell.borrow_mut();
        a_packed.clear();
        a_packed.resize(rows * k, 0.0);
        // The blocks are interleaved on every thread: done by the calling thread alone,
        // a transformer's 197 x 3072 rows (2.4 MB) took 0.3 ms of a 4.7 ms product at
        // two threads while the other thread waited.
        let dst_base = SyncPtr(a_packed.as_mut_ptr());
        let interleave = |range: std::ops::Range<usize>| {
            for &(r0, r) in &blocks[range] {
                // SAFETY: each block's rows of `a_packed` are written by this item only,
                // and the vector outlives the run.
                let dst =
                    unsafe { std::slice::from_raw_parts_mut(dst_base.get().add(r0 * k), r * k) };
                for i in 0..r {
                    for (kk, &v) in a[(r0 + i) * k..(r0 + i + 1) * k].iter().enumerate() {
                        dst[kk * r + i] = v;
                    }
                }
            }
        };
        let serial = rows * k < PARALLEL_INTERLEAVE_MIN;
        pool.run(
            blocks.len(),
            if serial { blocks.len() } else { 1 },
            &interleave,
        );
        let product = Product {
            kernel,
            k,
            n,
            packed,
            a_packed: &a_packed,
            blocks: &blocks,
            bias,
            out: SyncPtr(out.as_mut_ptr()),
        };
        pool.run(panels, 4, &|range: std::ops::Range<usize>| {
            product.panels(range)
        });
    });
}

thread_local! {
    /// The calling thread's rows interleaved by block, reused across calls (a fresh
    /// allocation of a few MiB per call cost its page faults on every run).
    static A_PACKED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Each thread's sums of a group of panels, reused likewise.
    static TILES: std::cell::RefCell<Vec<[f32; PANEL]>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// One packed product's operands, as [`skinny_matmul_on`] set them up.
struct Product<'a> {
    kernel: Kernel,
    k: usize,
    n: usize,
    packed: &'a [f32],
    /// The rows, each block of the kernel's rows interleaved by depth.
    a_packed: &'a [f32],
    /// The blocks of rows, as (first row, rows).
    blocks: &'a [(usize, usize)],
    bias: Option<&'a [f32]>,
    out: SyncPtr<f32>,
}

impl Product<'_> {
    /// Computes the output columns of `panels`, by groups of [`GROUP_PANELS`].
    fn panels(&self, panels: std::ops::Range<usize>) {
        TILES.with(|cell| {
            let mut tiles = cell.borrow_mut();
            tiles.resize(
                self.blocks.len() * GROUP_PANELS * self.kernel.row_block(),
                [0f32; PANEL],
            );
            self.panels_into(panels, &mut tiles);
        });
    }

    /// [`Self::panels`] with `tiles` for the sums of a group.
    fn panels_into(&self, panels: std::ops::Range<usize>, tiles: &mut [[f32; PANEL]]) {
        let (k, blocks, rb) = (self.k, self.blocks, self.kernel.row_block());
        let mut g0 = panels.start;
        while g0 < panels.end {
            let g1 = (g0 + GROUP_PANELS).min(panels.end);
            let nb = blocks.len();
            // Only this group's sums: a thread given a few panels of a narrow product
            // zeroed every group's (270 KB for 24-row blocks of 256 rows) per call.
            tiles[..(g1 - g0) * nb * rb]
                .iter_mut()
                .for_each(|t| *t = [0f32; PANEL]);
            // Every block of rows takes a slice of the panel's depth while it is in
            // L1: the panel then comes from memory once, overlapped with all blocks'
            // FMAs, instead of one block waiting on memory and the others reading L2.
            // A group of panels takes each slice of depth in turn, so the slice of
            // rows (`a_packed`) is read from L2 by the whole group.
            for d0 in (0..k).step_by(DEPTH_CHUNK) {
                let depth = (k - d0).min(DEPTH_CHUNK);
                for p in g0..g1 {
                    let w = &self.packed[p * k * PANEL + d0 * PANEL..][..depth * PANEL];
                    // The weights the next call of this loop reads: each block of rows
                    // prefetches its share, one line per depth step of its micro-kernel,
                    // so memory's latency hides behind this slice's multiply-adds. (The
                    // share as a burst of prefetches before each block left the CTC
                    // head's 33 MB stream waiting: 6.4 -> 4.7 ms on AVX2 on a Zen 4,
                    // and 3-6% on a transformer's products; without prefetches the first
                    // block of each chunk waited on memory.)
                    let next: &[f32] = if p + 1 < g1 {
                        &self.packed[(p + 1) * k * PANEL + d0 * PANEL..][..depth * PANEL]
                    } else if d0 + DEPTH_CHUNK < k {
                        let d1 = d0 + DEPTH_CHUNK;
                        let len = (k - d1).min(DEPTH_CHUNK) * PANEL;
                        &self.packed[g0 * k * PANEL + d1 * PANEL..][..len]
                    } else {
                        &[]
                    };
                    let lines = next.len().div_ceil(16);
                    let per_block = lines.div_ceil(nb);
                    let group_tiles = &mut tiles[(p - g0) * nb * rb..(p - g0 + 1) * nb * rb];
                    for (bi, (&(r0, r), tile)) in blocks
                        .iter()
                        .zip(group_tiles.chunks_exact_mut(rb))
                        .enumerate()
                    {
                        // This block's share of the next slice's lines.
                        let share = &next[(bi * per_block * 16).min(next.len())
                            ..((bi + 1) * per_block * 16).min(next.len())];
                        let ap = &self.a_packed[r0 * k + d0 * r..r0 * k + (d0 + depth) * r];
                        match self.kernel {
                            Kernel::Portable => block_portable(ap, r, depth, w, tile),
                            // SAFETY: the CPU runs the kernel (checked by the caller).
                            kernel => unsafe {
                                block_times_panel(kernel, ap, r, depth, w, tile, share)
                            },
                        }
                    }
                }
            }
            for p in g0..g1 {
                self.store(
                    p,
                    blocks,
                    &tiles[(p - g0) * nb * rb..(p - g0 + 1) * nb * rb],
                );
            }
            g0 = g1;
        }
    }

    /// Writes the sums of panel `p` for `blocks` of rows (plus the bias).
    fn store(&self, p: usize, blocks: &[(usize, usize)], tiles: &[[f32; PANEL]]) {
        let n = self.n;
        let c0 = p * PANEL;
        let width = (n - c0).min(PANEL);
        let rb = self.kernel.row_block();
        for (&(r0, r), tile) in blocks.iter().zip(tiles.chunks_exact(rb)) {
            for (i, sums) in tile.iter().take(r).enumerate() {
                // SAFETY: panels cover disjoint columns of `out`, which outlives the run.
                let row = unsafe {
                    std::slice::from_raw_parts_mut(self.out.get().add((r0 + i) * n + c0), width)
                };
                match self.bias {
                    Some(b) => row
                        .iter_mut()
                        .zip(&sums[..width])
                        .zip(&b[c0..c0 + width])
                        .for_each(|((o, &s), &b)| *o = s + b),
                    None => row.copy_from_slice(&sums[..width]),
                }
            }
        }
    }
}

/// [`block_times_panel`] on any CPU: the same sums in the same order (rounded after each
/// multiply, as a CPU without FMA must), as plain arrays the compiler vectorizes for the
/// build's baseline.
fn block_portable(ap: &[f32], r: usize, k: usize, panel: &[f32], tile: &mut [[f32; PANEL]]) {
    for kk in 0..k {
        let w = &panel[kk * PANEL..(kk + 1) * PANEL];
        for (i, sums) in tile.iter_mut().take(r).enumerate() {
            let x = ap[kk * r + i];
            sums.iter_mut().zip(w).for_each(|(s, &w)| *s += x * w);
        }
    }
}

/// Adds `r` (at most `kernel`'s block of rows) interleaved rows times `k` depths of a
/// panel to `tile`.
///
/// # Safety
/// The CPU must run `kernel`, which is not the portable one.
#[cfg(target_arch = "x86_64")]
unsafe fn block_times_panel(
    kernel: Kernel,
    ap: &[f32],
    r: usize,
    k: usize,
    panel: &[f32],
    tile: &mut [[f32; PANEL]],
    next: &[f32],
) {
    /// The call of `$kernel::<R>` for the row count `r`, one arm per count.
    macro_rules! by_rows {
        ($kernel:ident, $($rows:literal)*) => {
            match r {
                $($rows => $kernel::<$rows>(ap, k, panel, tile, next),)*
                _ => unreachable!("{r} rows in one block"),
            }
        };
    }
    // SAFETY: the caller checked the CPU; each call gets its exact row count.
    unsafe {
        match kernel {
            Kernel::Avx512 => {
                by_rows!(block_avx512, 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24)
            }
            Kernel::Avx2Fma => by_rows!(block_fma, 1 2 3 4 5 6),
            Kernel::Portable => unreachable!("the portable loop is no micro-kernel"),
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn block_times_panel(
    _: Kernel,
    _: &[f32],
    _: usize,
    _: usize,
    _: &[f32],
    _: &mut [[f32; PANEL]],
    _: &[f32],
) {
    unreachable!("only the portable kernel runs off x86-64")
}

/// Prefetches line `kk` of `next` (one depth of a panel, 16 floats) into L1, if it has
/// one: a micro-kernel's depth step `kk` fetches its share of the next slice this way.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_depth(next: &[f32], kk: usize) {
    if let Some(v) = next.get(kk * PANEL) {
        // SAFETY: a hint at an address inside `next`; it reads nothing.
        unsafe {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(v).cast());
        }
    }
}

/// [`block_times_panel`] for exactly `R` rows on AVX-512: `R` vector sums (loaded from
/// and stored back to `tile`) in registers while the depth runs, one weight load per depth
/// and one broadcast per row, which the multiply-add takes from memory; step `kk`
/// prefetches line `kk` of `next`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn block_avx512<const R: usize>(
    ap: &[f32],
    k: usize,
    panel: &[f32],
    tile: &mut [[f32; PANEL]],
    next: &[f32],
) {
    use std::arch::x86_64::*;
    assert!(ap.len() >= k * R && panel.len() >= k * PANEL && tile.len() >= R);
    let mut acc = [_mm512_setzero_ps(); R];
    for (sums, row) in acc.iter_mut().zip(tile.iter()) {
        // SAFETY: each row of the tile holds 16 floats.
        *sums = unsafe { _mm512_loadu_ps(row.as_ptr()) };
    }
    let (a, w) = (ap.as_ptr(), panel.as_ptr());
    for kk in 0..k {
        // SAFETY: kk < k, and the lengths were asserted above.
        unsafe {
            let wv = _mm512_loadu_ps(w.add(kk * PANEL));
            prefetch_depth(next, kk);
            for (i, sums) in acc.iter_mut().enumerate() {
                *sums = _mm512_fmadd_ps(_mm512_set1_ps(*a.add(kk * R + i)), wv, *sums);
            }
        }
    }
    for (sums, row) in acc.iter().zip(tile.iter_mut()) {
        // SAFETY: each row of the tile holds 16 floats.
        unsafe { _mm512_storeu_ps(row.as_mut_ptr(), *sums) };
    }
}

/// [`block_times_panel`] for exactly `R` rows on AVX2: `R x 2` vector sums (loaded from
/// and stored back to `tile`) in registers while the depth runs, one broadcast per row
/// and two weight loads per depth; step `kk` prefetches line `kk` of `next`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn block_fma<const R: usize>(
    ap: &[f32],
    k: usize,
    panel: &[f32],
    tile: &mut [[f32; PANEL]],
    next: &[f32],
) {
    use std::arch::x86_64::*;
    assert!(ap.len() >= k * R && panel.len() >= k * PANEL && tile.len() >= R);
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for (sums, row) in acc.iter_mut().zip(tile.iter()) {
        // SAFETY: each row of the tile holds 16 floats.
        unsafe {
            sums[0] = _mm256_loadu_ps(row.as_ptr());
            sums[1] = _mm256_loadu_ps(row.as_ptr().add(8));
        }
    }
    let (a, w) = (ap.as_ptr(), panel.as_ptr());
    for kk in 0..k {
        // SAFETY: kk < k, and the lengths were asserted above.
        unsafe {
            let w0 = _mm256_loadu_ps(w.add(kk * PANEL));
            prefetch_depth(next, kk);
            let w1 = _mm256_loadu_ps(w.add(kk * PANEL + 8));
            for (i, sums) in acc.iter_mut().enumerate() {
                let x = _mm256_broadcast_ss(&*a.add(kk * R + i));
                sums[0] = _mm256_fmadd_ps(x, w0, sums[0]);
                sums[1] = _mm256_fmadd_ps(x, w1, sums[1]);
            }
        }
    }
    for (sums, row) in acc.iter().zip(tile.iter_mut()) {
        // SAFETY: each row of the tile holds 16 floats.
        unsafe {
            _mm256_storeu_ps(row.as_mut_ptr(), sums[0]);
            _mm256_storeu_ps(row.as_mut_ptr().add(8), sums[1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{MatrixOperand, batched_matmul};

    /// The packed weight as floats (what the program's constants hold as bytes).
    fn prepack_skinny_weight(b: &[f32], k: usize, n: usize, transposed: bool) -> Option<Vec<f32>> {
        let mut packed = vec![0f32; skinny_packed_len(k, n)];
        pack_panels(b, k, n, transposed, |i, v| packed[i] = v)?;
        Some(packed)
    }

    /// Against `batched_matmul` on odd sizes: row counts that leave partial row blocks,
    /// a last panel of 5 columns, groups of panels and chunks of depth with partial ends,
    /// both weight layouts, with and without bias.
    #[test]
    fn matches_the_general_product() {
        let pool = ThreadPool::new(2);
        for (rows, k, n) in [
            (1, 300, 40),
            (2, 70, 1029),
            (7, 256, 261),
            (13, 129, 517),
            (24, 64, 1024),
            (253, 600, 300),
        ] {
            for transposed in [false, true] {
                let a: Vec<f32> = (0..rows * k).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
                let b: Vec<f32> = (0..k * n)
                    .map(|i| ((i * 5) % 11) as f32 * 0.25 - 1.0)
                    .collect();
                let bias: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
                let b_shape = if transposed { [n, k] } else { [k, n] };
                for with_bias in [false, true] {
                    let bias = with_bias.then_some(bias.as_slice());
                    let mut want = vec![0f32; rows * n];
                    batched_matmul(
                        MatrixOperand::new(&a, &[rows, k], false),
                        MatrixOperand::new(&b, &b_shape, transposed),
                        bias,
                        &mut want,
                        &pool,
                    )
                    .unwrap();
                    let packed = prepack_skinny_weight(&b, k, n, transposed).unwrap();
                    let mut got = vec![f32::NAN; rows * n];
                    skinny_matmul(&a, [rows, k, n], &packed, bias, &mut got, &pool).unwrap();
                    // Small integers and quarters: both sums are exact.
                    assert_eq!(got, want, "rows {rows} k {k} n {n} transposed {transposed}");
                    for kernel in Kernel::ALL.into_iter().filter(|k| k.supported()) {
                        let mut each = vec![f32::NAN; rows * n];
                        skinny_matmul_on(kernel, &a, [rows, k, n], &packed, bias, &mut each, &pool);
                        assert_eq!(each, want, "{kernel:?}: rows {rows} k {k} n {n}");
                    }
                }
            }
        }
    }

    #[test]
    fn refuses_mismatched_buffers() {
        let packed = prepack_skinny_weight(&[0.0; 64 * 1024], 64, 1024, false).unwrap();
        let err = skinny_matmul(
            &[0.0; 3 * 64],
            [2, 64, 1024],
            &packed,
            None,
            &mut [0.0; 2 * 1024],
            &ThreadPool::new(1),
        );
        assert!(err.is_err());
        assert!(prepack_skinny_weight(&[0.0; 10], 64, 1024, false).is_none());
        let mut short = vec![0u8; 16];
        assert!(prepack_skinny_weight_le(&[0.0; 64 * 1024], 64, 1024, false, &mut short).is_none());
    }
}
