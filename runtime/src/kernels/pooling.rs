//! 2-D f32 max and average pooling over the planes of an NCHW tensor, separably: each
//! output row first combines its window's input rows element by element, then each
//! output combines its window's columns of that sum from contiguous, shifted runs
//! (windows strided along the columns only read the sums split into column phases),
//! both passes over whole planes at once; windows strided along both axes take the two
//! steps row by row instead. The generated window loop computes every tap of every output
//! instead: a 3x3 window reads nine values per output where this reads about three and a
//! half. 2x2 windows every 2 without padding read their two input rows directly.

use super::KernelError;
use super::{SyncPtr, copy_short, every_nth};
use crate::threads::ThreadPool;

/// What a pooling window computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    /// The largest element inside the input (NaN if any is NaN).
    Max,
    /// The mean of the elements inside the input.
    Avg,
    /// The sum of the elements inside the input over the whole window's size.
    AvgIncludePad,
}

impl PoolMode {
    pub fn code(self) -> u32 {
        match self {
            PoolMode::Max => 0,
            PoolMode::Avg => 1,
            PoolMode::AvgIncludePad => 2,
        }
    }

    pub fn from_code(code: u32) -> Option<PoolMode> {
        [PoolMode::Max, PoolMode::Avg, PoolMode::AvgIncludePad]
            .into_iter()
            .find(|m| m.code() == code)
    }
}

/// A 2-D pooling: `input` is `[N, C, H, W]`, windows `kernel` = `[kh, kw]` every
/// `strides` = `[sh, sw]`, `pads` = `[top, left, bottom, right]` (dilation 1).
#[derive(Debug, Clone, PartialEq)]
pub struct PoolGeometry {
    pub mode: PoolMode,
    pub input: Vec<usize>,
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    pub pads: Vec<usize>,
}

impl PoolGeometry {
    /// The same pooling with each stride no larger than it needs to be (see
    /// `kernels::useful_stride`): the output and every value in it stay the same.
    pub fn with_useful_strides(mut self) -> PoolGeometry {
        let s = self.strides.len();
        for a in 0..s.min(self.kernel.len()) {
            let extent = self.input[2 + a]
                .saturating_add(self.pads[a])
                .saturating_add(self.pads[s + a]);
            self.strides[a] = super::useful_stride(self.strides[a], extent, self.kernel[a]);
        }
        self
    }

    /// The output's `[OH, OW]`, or why the geometry is invalid.
    pub fn out_spatial(&self) -> Result<[usize; 2], KernelError> {
        let bad = |what: &str| Err(KernelError::Shape(format!("pool: {what}")));
        if self.input.len() != 4
            || self.kernel.len() != 2
            || self.strides.len() != 2
            || self.pads.len() != 4
        {
            return bad("needs a rank-4 input, 2 kernel sizes, 2 strides and 4 pads");
        }
        if self.kernel.contains(&0) || self.strides.contains(&0) {
            return bad("kernel sizes and strides must be positive");
        }
        let along = |a: usize| {
            let padded = self.input[2 + a] + self.pads[a] + self.pads[2 + a];
            padded
                .checked_sub(self.kernel[a])
                .map(|reach| reach / self.strides[a] + 1)
        };
        match (along(0), along(1)) {
            (Some(oh), Some(ow)) => Ok([oh, ow]),
            _ => bad("window larger than the padded input"),
        }
    }
}

/// Pools `x` into `out` per `geo`, planes split over the pool's threads.
pub fn pool2d(
    x: &[f32],
    geo: &PoolGeometry,
    out: &mut [f32],
    pool: &ThreadPool,
) -> Result<(), KernelError> {
    let [oh, ow] = geo.out_spatial()?;
    let (h, w) = (geo.input[2], geo.input[3]);
    let planes = geo.input[0] * geo.input[1];
    if x.len() != planes * h * w || out.len() != planes * oh * ow {
        return Err(KernelError::Shape(
            "pool: buffer sizes do not match the geometry".into(),
        ));
    }
    if planes == 0 || oh * ow == 0 {
        return Ok(());
    }
    let plan = Plane::new(geo, oh, ow);
    let dst = SyncPtr(out.as_mut_ptr());
    let body = |range: std::ops::Range<usize>| {
        let mut scratch = plan.scratch();
        for p in range {
            let src = &x[p * h * w..(p + 1) * h * w];
            // SAFETY: plane `p` of `out`, which only this item writes.
            let plane =
                unsafe { std::slice::from_raw_parts_mut(dst.get().add(p * oh * ow), oh * ow) };
            plan.run(src, plane, &mut scratch);
        }
    };
    // About 16K outputs per claim: enough to cover a hand-off.
    let min_chunk = (16 * 1024 / (oh * ow)).max(1);
    pool.run(planes, min_chunk, &body);
    Ok(())
}

/// One plane's pooling, worked out once per launch. Rows are `span` wide, a multiple of
/// the column stride, with borders holding the combination's identity (written once
/// per thread, never overwritten), so every window is whole and the passes run over
/// whole planes as flat arrays instead of row by row (rows of 7 to 56 elements cost
/// more in loop overhead than in work). Unit row strides copy the plane into such rows
/// first, so that the rows of consecutive windows are one shifted run.
struct Plane {
    mode: PoolMode,
    w: usize,
    oh: usize,
    ow: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    top: usize,
    left: usize,
    h: usize,
    /// 2x2 windows every 2 without padding (see `halves`).
    is_halves: bool,
    /// Rows of the padded copy: at least as many as the windows reach.
    rows: usize,
    /// Width of the padded copy's rows.
    span: usize,
    /// For `Avg`: the input elements inside each output's window.
    inside: Vec<f32>,
}

/// Per-thread buffers of one launch (none for `Plane::halves`, one row of `columns` for
/// `Plane::rows`).
#[derive(Default)]
struct Scratch {
    padded: Vec<f32>,
    /// Column sums: `oh` rows of `span`.
    columns: Vec<f32>,
    /// Window sums: `oh` rows of `span / sw`.
    windows: Vec<f32>,
    /// Column phases of `columns` (strided windows only).
    phases: Vec<f32>,
}

impl Plane {
    fn new(geo: &PoolGeometry, oh: usize, ow: usize) -> Plane {
        let (h, w) = (geo.input[2], geo.input[3]);
        let (kh, kw) = (geo.kernel[0], geo.kernel[1]);
        let (sh, sw) = (geo.strides[0], geo.strides[1]);
        let (top, left) = (geo.pads[0], geo.pads[1]);
        let rows = (top + h + geo.pads[2]).max((oh - 1) * sh + kh);
        // Room for the last window of a row plus its reach into the next phase run.
        let span = (left + w + geo.pads[3])
            .max(ow * sw + kw)
            .next_multiple_of(sw);
        let inside_along = |o: usize, s: usize, k: usize, pad: usize, n: usize| {
            let begin = (o * s).max(pad);
            let end = (o * s + k).min(pad + n);
            end.saturating_sub(begin) as f32
        };
        let inside = match geo.mode {
            PoolMode::Avg => (0..oh * ow)
                .map(|i| {
                    inside_along(i / ow, sh, kh, top, h) * inside_along(i % ow, sw, kw, left, w)
                })
                .collect(),
            _ => Vec::new(),
        };
        Plane {
            mode: geo.mode,
            h,
            w,
            oh,
            ow,
            kh,
            kw,
            sh,
            sw,
            top,
            left,
            is_halves: geo.kernel == [2, 2]
                && geo.strides == [2, 2]
                && geo.pads.iter().all(|&p| p == 0),
            rows,
            span,
            inside,
        }
    }

    fn scratch(&self) -> Scratch {
        if self.is_halves {
            return Scratch::default();
        }
        let identity = identity(self.mode == PoolMode::Max);
        if self.by_rows() {
            return Scratch {
                columns: vec![identity; self.span],
                ..Scratch::default()
            };
        }
        let flat = self.oh * self.span;
        Scratch {
            // The padded copy serves unit row strides only (see `passes`).
            padded: if self.sh == 1 {
                vec![identity; self.rows * self.span]
            } else {
                Vec::new()
            },
            columns: vec![identity; flat],
            windows: vec![0.0; flat / self.sw],
            phases: if self.sw > 1 {
                vec![0.0; flat]
            } else {
                Vec::new()
            },
        }
    }

    fn run(&self, src: &[f32], dst: &mut [f32], scratch: &mut Scratch) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            unsafe { self.run_avx2(src, dst, scratch) };
            return;
        }
        self.run_in(src, dst, scratch);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn run_avx2(&self, src: &[f32], dst: &mut [f32], scratch: &mut Scratch) {
        self.run_in(src, dst, scratch);
    }

    #[inline(always)]
    fn run_in(&self, src: &[f32], dst: &mut [f32], scratch: &mut Scratch) {
        match (self.mode, self.is_halves) {
            (PoolMode::Max, true) => self.halves::<true>(src, dst),
            (_, true) => self.halves::<false>(src, dst),
            (PoolMode::Max, false) if self.by_rows() => self.rows::<true>(src, dst, scratch),
            (_, false) if self.by_rows() => self.rows::<false>(src, dst, scratch),
            (PoolMode::Max, false) => self.passes::<true>(src, dst, scratch),
            (_, false) => self.passes::<false>(src, dst, scratch),
        }
    }

    /// 2x2 windows every 2 without padding (every window whole, so both averages are a
    /// quarter of the sum): each output row straight from its two input rows. The
    /// separable passes' loops per row cost more than the work on the small planes
    /// such pools see (13x13 outputs: 10 us against 2 us for a 32-plane layer).
    #[inline(always)]
    fn halves<const MAX: bool>(&self, src: &[f32], dst: &mut [f32]) {
        for (oy, out) in dst.chunks_exact_mut(self.ow).enumerate() {
            let a = &src[2 * oy * self.w..][..2 * self.ow];
            let b = &src[(2 * oy + 1) * self.w..][..2 * self.ow];
            for ((o, a), b) in out.iter_mut().zip(a.chunks_exact(2)).zip(b.chunks_exact(2)) {
                *o = if MAX {
                    max_nan(max_nan(a[0], a[1]), max_nan(b[0], b[1]))
                } else {
                    ((a[0] + a[1]) + (b[0] + b[1])) * 0.25
                };
            }
        }
    }

    /// Whether `rows` serves this pooling: windows strided along both axes, where
    /// `passes` would write each plane's column sums and then their column phases, two
    /// passes over memory that this does in registers (SqueezeNet's 3x3 pool every 2 on
    /// 64 planes of 111x111: 0.25 -> 0.15 ms on one Zen 4 core).
    fn by_rows(&self) -> bool {
        self.sh > 1 && self.sw > 1
    }

    /// Output row `oy`'s window rows of the plane `src` combined element by element into
    /// the part of `row` (of the padded width) between its borders; the identity where
    /// the window lies wholly in the padding.
    #[inline(always)]
    fn window_rows<const MAX: bool>(&self, oy: usize, row: &mut [f32], src: &[f32]) {
        let first = (oy * self.sh).max(self.top) - self.top;
        let last = (oy * self.sh + self.kh).min(self.top + self.h);
        let last = last.saturating_sub(self.top).max(first);
        let inner = &mut row[self.left..self.left + self.w];
        match last - first {
            0 => inner.fill(identity(MAX)),
            n => taps::<MAX>(inner, n, |k| {
                &src[(first + k) * self.w..(first + k + 1) * self.w]
            }),
        }
    }

    /// Row by row: each output row's window rows combined into one row of the padded
    /// width (its borders hold the identity from the start), then each output from the
    /// `kw` elements of that row its window covers.
    #[inline(always)]
    fn rows<const MAX: bool>(&self, src: &[f32], dst: &mut [f32], scratch: &mut Scratch) {
        let row = &mut scratch.columns[..self.span];
        let whole = (self.kh * self.kw) as f32;
        for (oy, out) in dst.chunks_exact_mut(self.ow).enumerate() {
            self.window_rows::<MAX>(oy, row, src);
            // The common 3-wide window every 2 columns with both as constants: a stride
            // known only at run time made this loop twice as slow.
            if (self.kw, self.sw) == (3, 2) {
                for (o, w) in out.iter_mut().zip(row.windows(3).step_by(2)) {
                    *o = if MAX {
                        max_nan(max_nan(w[0], w[1]), w[2])
                    } else {
                        w[0] + w[1] + w[2]
                    };
                }
            } else {
                for (o, w) in out.iter_mut().zip(row.windows(self.kw).step_by(self.sw)) {
                    let mut acc = w[0];
                    for &v in &w[1..] {
                        acc = if MAX { max_nan(acc, v) } else { acc + v };
                    }
                    *o = acc;
                }
            }
            match self.mode {
                PoolMode::Max => {}
                PoolMode::AvgIncludePad => out.iter_mut().for_each(|o| *o /= whole),
                PoolMode::Avg => {
                    let inside = &self.inside[oy * self.ow..(oy + 1) * self.ow];
                    for (o, &c) in out.iter_mut().zip(inside) {
                        *o /= c;
                    }
                }
            }
        }
    }

    /// `MAX` picks max (else sum) as the combination.
    #[inline(always)]
    fn passes<const MAX: bool>(&self, src: &[f32], dst: &mut [f32], scratch: &mut Scratch) {
        let span = self.span;
        let Scratch {
            padded,
            columns,
            windows,
            phases,
        } = scratch;
        // Columns: each output row's window rows, combined element by element. With a row
        // stride of 1 the output rows follow each other in the padded copy, so each tap
        // row is one shifted run over the whole plane; otherwise each output row combines
        // its input rows in place, into the part of its row between the borders (which
        // hold the identity from the start).
        if self.sh == 1 {
            for (y, row) in src.chunks_exact(self.w).enumerate() {
                let at = (self.top + y) * span + self.left;
                copy_short(&mut padded[at..at + self.w], row);
            }
            let flat = self.oh * span;
            taps::<MAX>(columns, self.kh, |ky| &padded[ky * span..ky * span + flat]);
        } else {
            for (oy, row) in columns.chunks_exact_mut(span).enumerate() {
                self.window_rows::<MAX>(oy, row, src);
            }
        }
        // Windows: each output's columns. Rows of `span` (a multiple of the stride) keep
        // every column phase aligned across rows, so phase `ph` of the whole plane is
        // every `sw`-th element from `ph`, and tap `kx` of output `o` (flat, in rows of
        // `span / sw`) is element `o + kx / sw` of phase `kx % sw`. A window never
        // reaches past its row's `span` (see `new`), so the runs crossing into the next
        // row land only in outputs that are not stored.
        let per_row = span / self.sw;
        let n = self.oh * per_row;
        let reach = (self.kw - 1) / self.sw;
        let valid = n - reach;
        if self.sw == 1 {
            taps::<MAX>(&mut windows[..valid], self.kw, |kx| {
                &columns[kx..kx + valid]
            });
        } else {
            for ph in 0..self.sw {
                every_nth(&mut phases[ph * n..(ph + 1) * n], &columns[ph..], self.sw);
            }
            let tap = |kx: usize| {
                let start = (kx % self.sw) * n + kx / self.sw;
                &phases[start..start + valid]
            };
            taps::<MAX>(&mut windows[..valid], self.kw, tap);
        }
        // Each output row's first `ow` windows, averaged where asked.
        let whole = (self.kh * self.kw) as f32;
        for (oy, out) in dst.chunks_exact_mut(self.ow).enumerate() {
            let sums = &windows[oy * per_row..oy * per_row + self.ow];
            match self.mode {
                PoolMode::Max => copy_short(out, sums),
                PoolMode::AvgIncludePad => {
                    for (o, &s) in out.iter_mut().zip(sums) {
                        *o = s / whole;
                    }
                }
                PoolMode::Avg => {
                    let inside = &self.inside[oy * self.ow..(oy + 1) * self.ow];
                    for ((o, &s), &c) in out.iter_mut().zip(sums).zip(inside) {
                        *o = s / c;
                    }
                }
            }
        }
    }
}

/// `dst` = the combination of `count` runs `tap(0..count)` (each `dst.len()` long): the
/// first two in one pass, then one more pass per run.
#[inline(always)]
fn taps<'a, const MAX: bool>(dst: &mut [f32], count: usize, tap: impl Fn(usize) -> &'a [f32]) {
    if count == 1 {
        copy_short(dst, tap(0));
        return;
    }
    for ((d, &a), &b) in dst.iter_mut().zip(tap(0)).zip(tap(1)) {
        *d = if MAX { max_nan(a, b) } else { a + b };
    }
    for k in 2..count {
        combine::<MAX>(dst, tap(k));
    }
}

/// What borders and empty windows hold: -inf for max, 0 for sums.
#[inline(always)]
fn identity(max: bool) -> f32 {
    if max { f32::NEG_INFINITY } else { 0.0 }
}

/// The larger of `a` and `b`, NaN if either is. Neither branch is `a` unchanged, which
/// LLVM would turn into a masked store when `a` lives in memory (microcoded on AMD: 5x
/// slower).
#[inline(always)]
fn max_nan(a: f32, b: f32) -> f32 {
    // One unordered compare tests both; `a > b ? a : b` is a plain `maxps` (`f32::max`
    // would add its own NaN handling on top).
    if a.partial_cmp(&b).is_none() {
        a + b
    } else if a > b {
        a
    } else {
        b
    }
}

/// `acc[i] = max(acc[i], x[i])` with NaN from either side, or `acc[i] += x[i]`.
#[inline(always)]
fn combine<const MAX: bool>(acc: &mut [f32], x: &[f32]) {
    if MAX {
        for (a, &b) in acc.iter_mut().zip(x) {
            *a = max_nan(*a, b);
        }
    } else {
        for (a, &b) in acc.iter_mut().zip(x) {
            *a += b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition: every tap of every window, in f64.
    fn reference(x: &[f32], geo: &PoolGeometry) -> Vec<f32> {
        let [oh, ow] = geo.out_spatial().unwrap();
        let (h, w) = (geo.input[2], geo.input[3]);
        let planes = geo.input[0] * geo.input[1];
        let mut out = Vec::new();
        for p in 0..planes {
            for oy in 0..oh {
                for ox in 0..ow {
                    let (mut max, mut sum, mut count) = (f64::NEG_INFINITY, 0.0, 0usize);
                    for ky in 0..geo.kernel[0] {
                        for kx in 0..geo.kernel[1] {
                            let y = (oy * geo.strides[0] + ky) as isize - geo.pads[0] as isize;
                            let xx = (ox * geo.strides[1] + kx) as isize - geo.pads[1] as isize;
                            if y < 0 || xx < 0 || y >= h as isize || xx >= w as isize {
                                continue;
                            }
                            let v = x[p * h * w + y as usize * w + xx as usize] as f64;
                            max = if v.is_nan() || max.is_nan() {
                                f64::NAN
                            } else {
                                max.max(v)
                            };
                            sum += v;
                            count += 1;
                        }
                    }
                    out.push(match geo.mode {
                        PoolMode::Max => max as f32,
                        PoolMode::Avg => (sum / count as f64) as f32,
                        PoolMode::AvgIncludePad => {
                            (sum / (geo.kernel[0] * geo.kernel[1]) as f64) as f32
                        }
                    });
                }
            }
        }
        out
    }

    #[test]
    fn separable_pooling_matches_the_definition() {
        let shapes = [(7, 9), (12, 12), (5, 16), (28, 28), (1, 1), (3, 40)];
        let windows = [
            ([3, 3], [1, 1], [1, 1, 1, 1]),
            ([3, 3], [2, 2], [0, 0, 1, 1]),
            ([3, 3], [2, 2], [1, 1, 1, 1]),
            ([2, 2], [2, 2], [0, 0, 0, 0]),
            ([1, 3], [1, 3], [0, 2, 0, 2]),
            ([5, 2], [3, 1], [2, 0, 2, 1]),
            ([3, 3], [1, 1], [0, 0, 0, 0]),
            ([2, 4], [3, 2], [1, 0, 1, 2]),
            ([3, 3], [3, 3], [0, 1, 2, 1]),
        ];
        for (h, w) in shapes {
            for (kernel, strides, pads) in windows {
                for mode in [PoolMode::Max, PoolMode::Avg, PoolMode::AvgIncludePad] {
                    let geo = PoolGeometry {
                        mode,
                        input: vec![1, 3, h, w],
                        kernel: kernel.to_vec(),
                        strides: strides.to_vec(),
                        pads: pads.to_vec(),
                    };
                    let Ok([oh, ow]) = geo.out_spatial() else {
                        continue;
                    };
                    let n = 3 * h * w;
                    let mut x: Vec<f32> = (0..n)
                        .map(|i| ((i * 37 % 23) as f32 - 11.0) / 4.0)
                        .collect();
                    if n > 5 {
                        x[5] = f32::NAN;
                    }
                    let want = reference(&x, &geo);
                    for threads in [1, 2] {
                        let mut got = vec![0.0; 3 * oh * ow];
                        pool2d(&x, &geo, &mut got, &ThreadPool::new(threads)).unwrap();
                        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                            assert!(
                                (a.is_nan() && b.is_nan())
                                    || (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
                                "{geo:?} [{i}]: {a} vs {b}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn bad_geometries_are_errors() {
        let geo = PoolGeometry {
            mode: PoolMode::Max,
            input: vec![1, 1, 2, 2],
            kernel: vec![3, 3],
            strides: vec![1, 1],
            pads: vec![0, 0, 0, 0],
        };
        assert!(pool2d(&[0.0; 4], &geo, &mut [], &ThreadPool::new(1)).is_err());
        let geo = PoolGeometry {
            kernel: vec![2, 2],
            ..geo
        };
        assert!(pool2d(&[0.0; 3], &geo, &mut [0.0], &ThreadPool::new(1)).is_err());
    }
}
