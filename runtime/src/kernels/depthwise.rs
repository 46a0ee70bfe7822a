//! Two-dimensional depthwise convolutions: one long multiply-add per tap over a
//! zero-bordered, phase-split copy of each plane (rows split into column phases by
//! `every_nth`, shared with the implicit convolution).

use super::window::Window;
use super::{Float, column_phases, every_nth, multiply_add};

impl Window<'_> {
    /// `x` (planes of `in_count` elements, rows of the last axis) with each row split by
    /// column phase for `phases`: row r becomes sub-rows b = 0..step, sub-row b holding
    /// columns b, b + step, ... (zero-filled to equal lengths).
    pub(super) fn phased_rows<T: Float>(&self, x: &[T]) -> Vec<T> {
        let (Some(step), last) = (self.phases, self.in_sp.len() - 1) else {
            return x.to_vec();
        };
        let width = self.in_sp[last];
        let sub = width.div_ceil(step);
        let mut out = vec![T::ZERO; x.len() / width.max(1) * step * sub];
        for (row, dst) in x.chunks(width).zip(out.chunks_mut(step * sub)) {
            for (b, part) in dst.chunks_mut(sub).enumerate() {
                for (d, &v) in part.iter_mut().zip(row.iter().skip(b).step_by(step)) {
                    *d = v;
                }
            }
        }
        out
    }

    /// `dst += conv(plane, taps)` for one channel of a two-dimensional depthwise
    /// convolution, straight from the input rows (no im2col row per tap): per output row
    /// and tap, the output positions whose input lies inside the plane accumulate
    /// `weight * input`, contiguously for unit stride.
    pub(super) fn depthwise_2d<T: Float>(&self, plane: &[T], taps: &[T], dst: &mut [T]) {
        let (kh_n, kw_n) = (self.kernel[0], self.kernel[1]);
        let (oh_n, ow_n) = (self.out_sp[0], self.out_sp[1]);
        let (ih_n, iw_n) = (self.in_sp[0], self.in_sp[1]);
        let (sh, sw) = (self.strides[0], self.strides[1]);
        for kw in 0..kw_n {
            let (off, lo, hi) = self.inside(1, kw);
            if lo >= hi {
                continue;
            }
            let first = (lo * sw) as i64 + off;
            for kh in 0..kh_n {
                let wv = taps[kh * kw_n + kw];
                let off_h = self.offset(0, kh);
                for oh in 0..oh_n {
                    let ih = (oh * sh) as i64 + off_h;
                    if ih < 0 || ih >= ih_n as i64 {
                        continue;
                    }
                    let src = &plane[ih as usize * iw_n + first as usize..(ih as usize + 1) * iw_n];
                    let out = &mut dst[oh * ow_n + lo..oh * ow_n + hi];
                    if sw == 1 {
                        for (d, &x) in out.iter_mut().zip(src) {
                            *d = *d + wv * x;
                        }
                    } else {
                        for (d, &x) in out.iter_mut().zip(src.iter().step_by(sw)) {
                            *d = *d + wv * x;
                        }
                    }
                }
            }
        }
    }

    /// Whether every dilation is 1.
    pub(super) fn undilated(&self) -> bool {
        self.dilations.iter().all(|&v| v == 1)
    }

    /// [`Window::depthwise_2d`] for undilated windows: the plane is copied once into a
    /// zero-bordered buffer and split by stride phase (for strides `sh, sw`, phase
    /// `(a, b)` holds padded rows `sh * r + a` and columns `sw * c + b`), after which each
    /// tap is one multiply-add over a whole phase plane at a fixed offset (into `sums`,
    /// whose rows have the phase pitch and whose extra columns are dropped): one long
    /// vector loop per tap instead of a short (or strided) one per output row.
    pub(super) fn depthwise_planes<T: Float>(
        &self,
        plane: &[T],
        taps: &[T],
        start: T,
        dst: &mut [T],
        padded: &mut Vec<T>,
        sums: &mut Vec<T>,
    ) {
        let (ih, iw) = (self.in_sp[0], self.in_sp[1]);
        let (oh, ow) = (self.out_sp[0], self.out_sp[1]);
        let (kh_n, kw_n) = (self.kernel[0], self.kernel[1]);
        let (sh, sw) = (self.strides[0].max(1), self.strides[1].max(1));
        let (top, left, right) = (self.pads[0], self.pads[1], self.pads[3]);
        if oh == 0 || ow == 0 {
            dst.fill(start);
            return;
        }
        let pitch = iw + left + right;
        let rows = ((oh - 1) * sh + kh_n).max(ih + top);
        // Phase planes of `rows_p` rows of `pitch_p`, one after another in `padded`.
        let (rows_p, pitch_p) = (rows.div_ceil(sh), pitch.div_ceil(sw));
        let phase_len = rows_p * pitch_p;
        // Every channel writes the same positions, so the zero border a buffer of this
        // size got once is still in place.
        if padded.len() != sh * sw * phase_len {
            padded.clear();
            padded.resize(sh * sw * phase_len, T::ZERO);
        }
        let column_phases = column_phases(iw, left, sw);
        // Padded row r + top is row pr of row phase a.
        let (mut pr, mut a) = (top / sh, top % sh);
        for r in 0..ih {
            let src = &plane[r * iw..(r + 1) * iw];
            let row_at = |b: usize| (a * sw + b) * phase_len + pr * pitch_p;
            if sw == 1 {
                let at = row_at(0) + left;
                padded[at..at + iw].copy_from_slice(src);
            } else {
                for &(b, first, count, column) in &column_phases {
                    let at = row_at(b) + column;
                    every_nth(&mut padded[at..at + count], &src[first..], sw);
                }
            }
            a += 1;
            if a == sh {
                (pr, a) = (pr + 1, 0);
            }
        }
        // Output position j (row j / pitch_p) reads phase (kh % sh, kw % sw) at
        // j + (kh / sh) * pitch_p + kw / sw.
        let len = (oh - 1) * pitch_p + ow;
        sums.clear();
        sums.resize(len, start);
        for kh in 0..kh_n {
            for kw in 0..kw_n {
                let phase = ((kh % sh) * sw + kw % sw) * phase_len;
                let shift = phase + (kh / sh) * pitch_p + kw / sw;
                multiply_add(sums, taps[kh * kw_n + kw], &padded[shift..shift + len]);
            }
        }
        for (y, out) in dst.chunks_mut(ow).enumerate() {
            out.copy_from_slice(&sums[y * pitch_p..y * pitch_p + ow]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{Activation, ConvGeometry, conv};
    use crate::threads::ThreadPool;

    #[test]
    fn every_nth_takes_each_phase_of_a_row() {
        for len in [11usize, 32, 33, 67, 112] {
            let src: Vec<u32> = (0..len as u32).collect();
            let floats: Vec<f32> = src.iter().map(|&v| v as f32).collect();
            for step in 1..=4 {
                for first in 0..step {
                    let count = (len - first).div_ceil(step);
                    let mut dst = vec![99; count];
                    every_nth(&mut dst, &src[first..], step);
                    let want: Vec<u32> = src[first..].iter().step_by(step).copied().collect();
                    assert_eq!(dst, want, "len {len} step {step} first {first}");
                    let mut dst = vec![-1.0f32; count];
                    every_nth(&mut dst, &floats[first..], step);
                    let want: Vec<f32> = want.iter().map(|&v| v as f32).collect();
                    assert_eq!(dst, want, "f32 len {len} step {step} first {first}");
                }
            }
        }
    }

    /// Undilated depthwise convolutions in f32 (the FMA path where the CPU has it) against
    /// the f64 definition: same, valid and asymmetric padding, odd kernels, strides 1 to 3.
    #[test]
    fn undilated_depthwise_in_f32() {
        for (input, kernel, pads, strides) in [
            (
                [1usize, 4, 28, 28],
                [3usize, 3],
                [1usize, 1, 1, 1],
                [1usize, 1],
            ),
            ([2, 3, 7, 7], [3, 3], [1, 1, 1, 1], [1, 1]),
            ([1, 2, 9, 17], [5, 3], [2, 0, 1, 2], [1, 1]),
            ([1, 2, 6, 6], [3, 3], [0, 0, 0, 0], [1, 1]),
            ([1, 4, 28, 28], [3, 3], [1, 1, 1, 1], [2, 2]),
            ([1, 3, 15, 14], [3, 3], [1, 1, 1, 1], [2, 2]),
            ([2, 2, 11, 13], [3, 2], [0, 1, 2, 0], [3, 2]),
            ([1, 2, 5, 9], [1, 3], [0, 0, 0, 0], [1, 3]),
        ] {
            let c = input[1];
            let geo = ConvGeometry {
                input: input.to_vec(),
                weight: vec![c, 1, kernel[0], kernel[1]],
                strides: strides.to_vec(),
                pads: pads.to_vec(),
                dilations: vec![1, 1],
                group: c,
                activation: Activation::None,
            };
            let numel = |d: &[usize]| d.iter().product::<usize>();
            let value =
                |i: usize, salt: usize| ((i * 7919 + salt * 104_729) % 199) as f32 / 50.0 - 2.0;
            let x: Vec<f32> = (0..numel(&geo.input)).map(|i| value(i, 1)).collect();
            let w: Vec<f32> = (0..numel(&geo.weight)).map(|i| value(i, 2)).collect();
            let bias: Vec<f32> = (0..c).map(|i| value(i, 3)).collect();
            let wide = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
            let want =
                crate::kernels::conv::tests::reference(&wide(&x), &wide(&w), &wide(&bias), &geo);
            let mut got = vec![f32::NAN; want.len()];
            conv(&x, &w, Some(&bias), &geo, &mut got, &ThreadPool::new(2)).unwrap();
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!((*a as f64 - b).abs() < 1e-4, "{geo:?}: [{i}] {a} vs {b}");
            }
        }
    }
}
