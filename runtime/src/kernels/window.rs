//! The sliding window of a convolution over one input plane: its taps, and the im2col
//! rows and columns `conv` multiplies (the depthwise kernels walk the same window).

use super::conv::MAX_SPATIAL;
use super::{Float, Simd, as_f32, as_f32_mut, copy_short, f32_with};

/// The sliding window of a convolution over one input plane.
pub(super) struct Window<'a> {
    pub(super) kernel: &'a [usize],
    pub(super) out_sp: &'a [usize],
    pub(super) in_sp: &'a [usize],
    pub(super) strides: &'a [usize],
    pub(super) dilations: &'a [usize],
    /// All begin pads, then all end pads.
    pub(super) pads: &'a [usize],
    /// Every kernel tap, flat index first (see [`Window::with_taps`]).
    pub(super) taps: Vec<Tap>,
    /// Where the last axis has a stride `s` > 1: the input rows are read split by column
    /// phase (`phased_rows`), each row `s` sub-rows of `ceil(width / s)`, so that every
    /// im2col run is a contiguous copy instead of a strided one.
    pub(super) phases: Option<usize>,
}

/// A kernel tap's position on every spatial axis and, along the last axis, its input
/// offset and the output positions `lo..hi` whose input lies inside the plane: computed
/// once per convolution instead of once per im2col row (they take divisions).
#[derive(Debug, Clone, Copy)]
pub(super) struct Tap {
    pub(super) at: [usize; MAX_SPATIAL],
    pub(super) off: i64,
    pub(super) lo: usize,
    pub(super) hi: usize,
}

impl Window<'_> {
    /// The window with its tap table filled in.
    pub(super) fn with_taps(mut self) -> Self {
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
    pub(super) fn row_len(&self) -> usize {
        let last = self.in_sp.len() - 1;
        match self.phases {
            Some(step) => step * self.in_sp[last].div_ceil(step),
            None => self.in_sp[last],
        }
    }

    /// Input offset of kernel tap `tap` on axis `d` (negative: in the begin padding).
    pub(super) fn offset(&self, d: usize, tap: usize) -> i64 {
        (tap * self.dilations[d]) as i64 - self.pads[d] as i64
    }

    /// The offset of tap `tap` on axis `d`, and the output positions `lo..hi` along `d`
    /// whose input lies inside the plane (`lo == hi` when none do).
    #[inline(always)]
    pub(super) fn inside(&self, d: usize, tap: usize) -> (i64, usize, usize) {
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
    pub(super) fn im2col_row<T: Float>(
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
    pub(super) fn columns_avx2(
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
    pub(super) fn columns<T: Float>(
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
pub(super) struct LastAxis {
    /// Output positions `lo..hi` read the input; the rest are padding.
    pub(super) lo: usize,
    pub(super) hi: usize,
    pub(super) step: usize,
    /// Input position of output position 0.
    pub(super) off: i64,
}

impl LastAxis {
    /// Output positions `j0..j1` of one row into `run`, reading the input row `src`.
    #[inline(always)]
    pub(super) fn fill<T: Float>(&self, run: &mut [T], src: &[T], j0: usize, j1: usize) {
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
