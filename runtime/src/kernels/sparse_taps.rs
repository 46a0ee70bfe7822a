//! Convolutions whose taps mostly read padding, as one matrix product per tap over only
//! the box of outputs where that tap reads the input, accumulated into the output.
//! Dilated convolutions on small feature maps are the case: DeepLabV3's atrous 3x3 at
//! rate 12 on a 14x14 map reads the input at 18% of its nominal taps, and the im2col
//! paths multiply the other 82%, zeros, as well.

use super::{
    ConvGeometry, Float, KernelError, StridedMatrix, SyncPtr, copy_short, gemm_into, with_scratch,
};
use crate::threads::ThreadPool;

/// Use this path where at most this fraction of the (output, tap) pairs read the input.
const MAX_USEFUL_FRACTION: f64 = 0.5;

/// Fewest filters a work item multiplies.
const MIN_FILTERS: usize = 32;

/// One tap and the box of outputs where it reads the input.
struct TapBox {
    /// The tap's index among the kernel's positions (row-major).
    tap: usize,
    /// Per spatial axis: the outputs `[lo, hi)` whose tap position is inside the input.
    range: Vec<(usize, usize)>,
    /// Outputs in the box.
    count: usize,
    /// The box's runs along the last axis: (first output, input position it reads),
    /// each `run_len` outputs long, reading the input every `run_step`.
    runs: Vec<(usize, usize)>,
    run_len: usize,
    run_step: usize,
    /// The box is the whole output and each output reads the input at its own
    /// position (the centre tap of a same-size convolution): the input is the matrix.
    identity: bool,
    /// Where its gathered input starts in the shared matrix (unless `identity`).
    offset: usize,
}

/// The taps of `geo` that read the input somewhere, with their boxes; a box of the
/// whole output first, if there is one.
fn tap_boxes(geo: &ConvGeometry, out_sp: &[usize]) -> Vec<TapBox> {
    let kernel = &geo.weight[2..];
    let in_sp = &geo.input[2..];
    let s = kernel.len();
    let kc: usize = kernel.iter().product();
    let out_count: usize = out_sp.iter().product();
    let mut boxes = Vec::new();
    for tap in 0..kc {
        let mut rest = tap;
        let mut range = vec![(0, 0); s];
        let mut shift = vec![0isize; s];
        for a in (0..s).rev() {
            let k = rest % kernel[a];
            rest /= kernel[a];
            // Output o reads input o * stride + shift along this axis.
            shift[a] = (k * geo.dilations[a]) as isize - geo.pads[a] as isize;
            let (n_in, stride) = (in_sp[a] as isize, geo.strides[a] as isize);
            let lo = if shift[a] >= 0 {
                0
            } else {
                (-shift[a] + stride - 1) / stride
            };
            let hi = if n_in - 1 - shift[a] >= 0 {
                (n_in - 1 - shift[a]) / stride + 1
            } else {
                0
            };
            let hi = (hi as usize).min(out_sp[a]);
            range[a] = ((lo as usize).min(hi), hi);
        }
        let count: usize = range.iter().map(|&(lo, hi)| hi - lo).product();
        if count == 0 {
            continue;
        }
        let input_at = |o: &[usize]| {
            o.iter().enumerate().fold(0, |at, (a, &oa)| {
                at * in_sp[a] + (oa as isize * geo.strides[a] as isize + shift[a]) as usize
            })
        };
        let mut runs = Vec::new();
        let mut o: Vec<usize> = range.iter().map(|&(lo, _)| lo).collect();
        let rows = count / (range[s - 1].1 - range[s - 1].0);
        for _ in 0..rows {
            let out_at = o.iter().zip(out_sp).fold(0, |at, (&oa, &n)| at * n + oa);
            runs.push((out_at, input_at(&o)));
            for a in (0..s - 1).rev() {
                o[a] += 1;
                if o[a] < range[a].1 {
                    break;
                }
                o[a] = range[a].0;
            }
        }
        let identity = count == out_count
            && in_sp == out_sp
            && geo.strides.iter().all(|&st| st == 1)
            && shift.iter().all(|&sh| sh == 0);
        boxes.push(TapBox {
            tap,
            range,
            count,
            runs,
            run_len: 0,
            run_step: geo.strides[s - 1],
            identity,
            offset: 0,
        });
    }
    // The whole-output box first: its product writes the output instead of adding.
    if let Some(i) = boxes.iter().position(|b| b.count == out_count) {
        boxes[..=i].rotate_right(1);
    }
    let mut offset = 0;
    for b in &mut boxes {
        b.run_len = b.range[s - 1].1 - b.range[s - 1].0;
        if !b.identity {
            b.offset = offset;
            offset += geo.input[1] * b.count;
        }
    }
    boxes
}

/// Whether this path runs `geo`: one group, and few enough taps reading the input.
pub(super) fn handles(geo: &ConvGeometry, out_sp: &[usize]) -> bool {
    if geo.group != 1 || geo.weight.len() < 3 {
        return false;
    }
    let kc: usize = geo.weight[2..].iter().product();
    let out_count: usize = out_sp.iter().product();
    let useful: usize = tap_boxes(geo, out_sp).iter().map(|b| b.count).sum();
    kc > 1 && (useful as f64) <= MAX_USEFUL_FRACTION * (kc * out_count) as f64
}

/// The filters `w: [M, C, taps]` of `geo` tap by tap, `[taps, M, C]`: each tap's
/// filters one row-major matrix, which the products read without packing them again.
pub(super) fn pack_filters<T: Float>(w: &[T], geo: &ConvGeometry) -> Vec<T> {
    let (m, c) = (geo.weight[0], geo.weight[1]);
    let kc: usize = geo.weight[2..].iter().product();
    let mut packed = vec![T::ZERO; w.len()];
    for (f, filter) in w.chunks_exact(c * kc).enumerate() {
        for (ci, taps) in filter.chunks_exact(kc).enumerate() {
            for (t, &v) in taps.iter().enumerate() {
                packed[(t * m + f) * c + ci] = v;
            }
        }
    }
    packed
}

/// The convolution `geo` (one group) of `x` with `w` plus `bias`, into `out`; `packed`
/// is `w` by [`pack_filters`] if the caller kept it (else it is packed here).
#[allow(clippy::too_many_arguments)]
pub(super) fn conv<T: Float>(
    x: &[T],
    w: &[T],
    packed: Option<&[T]>,
    bias: Option<&[T]>,
    geo: &ConvGeometry,
    out_sp: &[usize],
    out: &mut [T],
    pool: &ThreadPool,
) -> Result<(), KernelError> {
    let (n, c, m) = (geo.input[0], geo.input[1], geo.weight[0]);
    let in_sp = &geo.input[2..];
    let (in_count, out_count): (usize, usize) = (in_sp.iter().product(), out_sp.iter().product());
    let boxes = tap_boxes(geo, out_sp);
    let packed_here;
    let packed = match packed {
        Some(p) if p.len() == w.len() => p,
        Some(_) => {
            return Err(KernelError::Shape(
                "the prepacked filters do not match the convolution".into(),
            ));
        }
        None => {
            packed_here = pack_filters(w, geo);
            &packed_here[..]
        }
    };
    let gathered: usize = boxes
        .iter()
        .filter(|b| !b.identity)
        .map(|b| c * b.count)
        .sum();
    let largest = boxes.iter().map(|b| b.count).max().unwrap_or(0);
    let filter_blocks = pool.threads().min(m.div_ceil(MIN_FILTERS)).max(1);
    let filters_per = m.div_ceil(filter_blocks);
    let filter_blocks = m.div_ceil(filters_per);
    let base = SyncPtr(out.as_mut_ptr());
    // Filters `filters` of batch `b` over every tap's box, given the gathered `matrix`.
    //
    // Callers give each call its own filters (the SAFETY of the writes below).
    let multiply = |b: usize, filters: std::ops::Range<usize>, matrix: &[T], scratch: &mut [T]| {
        let rows = filters.len();
        // SAFETY: the rows of filters `filters` of batch `b`, which only this call writes.
        let dst = unsafe {
            std::slice::from_raw_parts_mut(
                base.get().add((b * m + filters.start) * out_count),
                rows * out_count,
            )
        };
        let xb = &x[b * c * in_count..(b + 1) * c * in_count];
        for (i, tb) in boxes.iter().enumerate() {
            let lhs = StridedMatrix {
                data: &packed[(tb.tap * m + filters.start) * c..],
                rs: c as isize,
                cs: 1,
            };
            let rhs = if tb.identity {
                StridedMatrix {
                    data: xb,
                    rs: in_count as isize,
                    cs: 1,
                }
            } else {
                StridedMatrix {
                    data: &matrix[tb.offset..tb.offset + c * tb.count],
                    rs: tb.count as isize,
                    cs: 1,
                }
            };
            if i == 0 && tb.count == out_count {
                // SAFETY: `dst` holds `rows` rows of `out_count`.
                unsafe { gemm_into([rows, out_count, c], dst.as_mut_ptr(), out_count, lhs, rhs) };
                continue;
            }
            if i == 0 {
                dst.fill(T::ZERO);
            }
            let part = &mut scratch[..rows * tb.count];
            // SAFETY: `part` holds `rows` rows of `tb.count`.
            unsafe { gemm_into([rows, tb.count, c], part.as_mut_ptr(), tb.count, lhs, rhs) };
            for (row, sums) in dst
                .chunks_exact_mut(out_count)
                .zip(part.chunks_exact(tb.count))
            {
                for (&(at, _), run) in tb.runs.iter().zip(sums.chunks_exact(tb.run_len)) {
                    for (v, &sum) in row[at..at + tb.run_len].iter_mut().zip(run) {
                        *v = *v + sum;
                    }
                }
            }
        }
        if boxes.is_empty() {
            dst.fill(T::ZERO);
        }
        for (r, row) in dst.chunks_exact_mut(out_count).enumerate() {
            if let Some(bias) = bias {
                let bv = bias[filters.start + r];
                row.iter_mut().for_each(|v| *v = *v + bv);
            }
            geo.activation.apply(row);
        }
    };
    with_scratch::<T>(gathered, |matrix| {
        for b in 0..n {
            let xb = &x[b * c * in_count..(b + 1) * c * in_count];
            for tb in boxes.iter().filter(|tb| !tb.identity) {
                gather(
                    xb,
                    in_count,
                    tb,
                    &mut matrix[tb.offset..tb.offset + c * tb.count],
                );
            }
            let matrix = &matrix[..];
            let body = |items: std::ops::Range<usize>| {
                let mut scratch = vec![T::ZERO; filters_per * largest];
                for fb in items {
                    let filters = fb * filters_per..((fb + 1) * filters_per).min(m);
                    // Each block of filters goes to one call, as `multiply` requires.
                    multiply(b, filters, matrix, &mut scratch);
                }
            };
            pool.run(filter_blocks, 1, &body);
        }
    });
    Ok(())
}

/// `dst[ci][p]` = input channel `ci` of `x` (planes of `in_count`) where tap `tb`
/// reads it for the `p`-th output of its box (row-major).
fn gather<T: Float>(x: &[T], in_count: usize, tb: &TapBox, dst: &mut [T]) {
    for (plane, row) in x.chunks_exact(in_count).zip(dst.chunks_exact_mut(tb.count)) {
        for (&(_, from), run) in tb.runs.iter().zip(row.chunks_exact_mut(tb.run_len)) {
            if tb.run_step == 1 {
                copy_short(run, &plane[from..]);
            } else {
                for (j, d) in run.iter_mut().enumerate() {
                    *d = plane[from + j * tb.run_step];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::conv::tests::reference;
    use super::*;
    use crate::kernels::Activation;

    #[test]
    fn matches_the_definition() {
        let pool = ThreadPool::new(3);
        let geometry = |input: &[usize],
                        weight: &[usize],
                        strides: &[usize],
                        pads: &[usize],
                        dilations: &[usize]| ConvGeometry {
            input: input.to_vec(),
            weight: weight.to_vec(),
            strides: strides.to_vec(),
            pads: pads.to_vec(),
            dilations: dilations.to_vec(),
            group: 1,
            activation: Activation::Relu,
        };
        let cases = [
            // DeepLab's atrous 3x3 at rate 12 on a small map.
            geometry(
                &[1, 40, 14, 14],
                &[70, 40, 3, 3],
                &[1, 1],
                &[12; 4],
                &[12, 12],
            ),
            // Strided and asymmetric.
            geometry(
                &[2, 5, 9, 11],
                &[33, 5, 3, 3],
                &[2, 1],
                &[6, 7, 5, 8],
                &[6, 7],
            ),
            // One spatial axis.
            geometry(&[1, 6, 10], &[8, 6, 3], &[1], &[9, 9], &[9]),
            // Three.
            geometry(
                &[1, 3, 4, 5, 6],
                &[4, 3, 3, 3, 3],
                &[1, 1, 1],
                &[4; 6],
                &[4, 5, 6],
            ),
        ];
        for geo in cases {
            let out_sp = geo.out_spatial().unwrap();
            assert!(handles(&geo, &out_sp), "{geo:?}");
            let nx: usize = geo.input.iter().product();
            let nw: usize = geo.weight.iter().product();
            let x: Vec<f32> = (0..nx)
                .map(|i| ((i * 13 % 23) as f32 - 11.0) / 9.0)
                .collect();
            let w: Vec<f32> = (0..nw)
                .map(|i| ((i * 7 % 19) as f32 - 9.0) / 11.0)
                .collect();
            let bias: Vec<f32> = (0..geo.weight[0]).map(|i| i as f32 / 10.0 - 1.0).collect();
            let wide = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
            let want = reference(&wide(&x), &wide(&w), &wide(&bias), &geo);
            let mut got = vec![f32::NAN; want.len()];
            conv(&x, &w, None, Some(&bias), &geo, &out_sp, &mut got, &pool).unwrap();
            let packed = pack_filters(&w, &geo);
            let mut again = vec![f32::NAN; want.len()];
            conv(
                &x,
                &w,
                Some(&packed),
                Some(&bias),
                &geo,
                &out_sp,
                &mut again,
                &pool,
            )
            .unwrap();
            assert_eq!(got, again, "{geo:?}: packed once or per call");
            for (i, (&g, &r)) in got.iter().zip(&want).enumerate() {
                let r = if geo.activation == Activation::Relu {
                    r.max(0.0)
                } else {
                    r
                };
                assert!(
                    (g as f64 - r).abs() <= 1e-4 * (1.0 + r.abs()),
                    "{geo:?}: {i}: {g} vs {r}"
                );
            }
        }
    }

    #[test]
    fn leaves_dense_taps_to_the_other_paths() {
        let geo = ConvGeometry {
            input: vec![1, 8, 14, 14],
            weight: vec![8, 8, 3, 3],
            strides: vec![1, 1],
            pads: vec![1; 4],
            dilations: vec![1, 1],
            group: 1,
            activation: Activation::None,
        };
        assert!(!handles(&geo, &geo.out_spatial().unwrap()));
    }
}
