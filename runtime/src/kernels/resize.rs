//! f32 Resize over the two innermost axes of a tensor, separably: each input row the
//! output reads is first interpolated along the columns once (kept in a small cache
//! while consecutive output rows read it), then every output row is a weighted sum of
//! such rows. The taps (input index and weight per output index and axis) come from the
//! compiler, which works them out as ONNX's reference does; this kernel only combines
//! them. The generated loop it replaces computed every coordinate transformation, in
//! f64, for every output element: 21 ns an element where this takes about one.

use super::{KernelError, SyncPtr};
use crate::threads::ThreadPool;

/// The taps of one axis: output index `o` reads input indices
/// `index[o * taps..(o + 1) * taps]` with the weights at the same places. A weight of
/// zero is skipped, so that an infinite input there makes no NaN (as in the reference).
#[derive(Debug, Clone, PartialEq)]
pub struct AxisTaps {
    pub taps: usize,
    pub index: Vec<u32>,
    pub weight: Vec<f32>,
}

impl AxisTaps {
    /// Output indices along the axis.
    pub fn len(&self) -> usize {
        self.index.len().checked_div(self.taps).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The taps of output index `o`.
    fn at(&self, o: usize) -> impl Iterator<Item = (usize, f32)> + '_ {
        let r = o * self.taps..(o + 1) * self.taps;
        self.index[r.clone()]
            .iter()
            .zip(&self.weight[r])
            .map(|(&i, &w)| (i as usize, w))
    }

    fn check(&self, what: &str, n_in: usize) -> Result<(), KernelError> {
        let bad = |why: String| Err(KernelError::Shape(format!("resize {what}: {why}")));
        if self.taps == 0 || !self.index.len().is_multiple_of(self.taps) {
            return bad(format!(
                "{} indices are not a whole number of {}-tap outputs",
                self.index.len(),
                self.taps
            ));
        }
        if self.weight.len() != self.index.len() {
            return bad(format!(
                "{} weights for {} indices",
                self.weight.len(),
                self.index.len()
            ));
        }
        match self.index.iter().find(|&&i| i as usize >= n_in) {
            Some(i) => bad(format!("index {i} outside the input's {n_in}")),
            None => Ok(()),
        }
    }
}

/// A resize of `input` (rank at least 2) along its two innermost axes.
#[derive(Debug, Clone, PartialEq)]
pub struct ResizeGeometry {
    pub input: Vec<usize>,
    pub rows: AxisTaps,
    pub cols: AxisTaps,
}

impl ResizeGeometry {
    /// The output's shape, or why the geometry is invalid.
    pub fn output(&self) -> Result<Vec<usize>, KernelError> {
        let r = self.input.len();
        if r < 2 {
            return Err(KernelError::Shape(format!(
                "resize: a rank-{r} input has no two innermost axes"
            )));
        }
        self.rows.check("rows", self.input[r - 2])?;
        self.cols.check("columns", self.input[r - 1])?;
        let mut out = self.input[..r - 2].to_vec();
        out.extend([self.rows.len(), self.cols.len()]);
        Ok(out)
    }
}

/// Output rows per work item: enough to reuse the cached input rows, few enough that a
/// single large plane still spreads over the threads.
const ROWS_PER_ITEM: usize = 32;

/// Resizes `x` into `out` per `geo`, blocks of output rows split over the pool's threads.
pub fn resize2d(
    x: &[f32],
    geo: &ResizeGeometry,
    out: &mut [f32],
    pool: &ThreadPool,
) -> Result<(), KernelError> {
    let shape = geo.output()?;
    let r = shape.len();
    let (h, w) = (geo.input[r - 2], geo.input[r - 1]);
    let (oh, ow) = (shape[r - 2], shape[r - 1]);
    let planes: usize = shape[..r - 2].iter().product();
    if x.len() != planes * h * w || out.len() != planes * oh * ow {
        return Err(KernelError::Shape(
            "resize: buffer sizes do not match the geometry".into(),
        ));
    }
    if out.is_empty() {
        return Ok(());
    }
    let blocks = oh.div_ceil(ROWS_PER_ITEM);
    let dst = SyncPtr(out.as_mut_ptr());
    let body = |items: std::ops::Range<usize>| {
        let mut cache = RowCache::new(geo.rows.taps, ow);
        let mut last_plane = usize::MAX;
        for item in items {
            let (p, b) = (item / blocks, item % blocks);
            if p != last_plane {
                cache.forget();
                last_plane = p;
            }
            let src = &x[p * h * w..(p + 1) * h * w];
            let rows = b * ROWS_PER_ITEM..((b + 1) * ROWS_PER_ITEM).min(oh);
            // SAFETY: rows `rows` of plane `p` of `out`, which only this item writes.
            let block = unsafe {
                std::slice::from_raw_parts_mut(
                    dst.get().add((p * oh + rows.start) * ow),
                    rows.len() * ow,
                )
            };
            for (oy, line) in rows.zip(block.chunks_exact_mut(ow)) {
                line.fill(0.0);
                for (iy, wy) in geo.rows.at(oy) {
                    if wy == 0.0 {
                        continue;
                    }
                    let interpolated = cache.row(iy, |row| {
                        interpolate_columns(&src[iy * w..(iy + 1) * w], &geo.cols, row)
                    });
                    for (o, &v) in line.iter_mut().zip(interpolated) {
                        *o += wy * v;
                    }
                }
            }
        }
    };
    let min_chunk = (16 * 1024 / (ROWS_PER_ITEM.min(oh) * ow)).max(1);
    pool.run(planes * blocks, min_chunk, &body);
    Ok(())
}

/// `out[o] = sum of weight * row[index]` over the column taps of every output column.
fn interpolate_columns(row: &[f32], cols: &AxisTaps, out: &mut [f32]) {
    if cols.taps == 2 {
        // Linear: the common case, without the inner loop.
        for ((o, i), wt) in out
            .iter_mut()
            .zip(cols.index.chunks_exact(2))
            .zip(cols.weight.chunks_exact(2))
        {
            let mut s = 0.0;
            if wt[0] != 0.0 {
                s += wt[0] * row[i[0] as usize];
            }
            if wt[1] != 0.0 {
                s += wt[1] * row[i[1] as usize];
            }
            *o = s;
        }
        return;
    }
    for (ox, o) in out.iter_mut().enumerate() {
        let mut s = 0.0;
        for (ix, wx) in cols.at(ox) {
            if wx != 0.0 {
                s += wx * row[ix];
            }
        }
        *o = s;
    }
}

/// Input rows interpolated along the columns, one slot per row tap: the rows an output
/// row reads are consecutive, so `row % taps` keeps them apart, and the next output
/// row mostly reads the same ones.
struct RowCache {
    rows: Vec<f32>,
    held: Vec<usize>,
    width: usize,
}

impl RowCache {
    fn new(taps: usize, width: usize) -> RowCache {
        RowCache {
            rows: vec![0.0; taps * width],
            held: vec![usize::MAX; taps],
            width,
        }
    }

    fn forget(&mut self) {
        self.held.fill(usize::MAX);
    }

    /// Input row `iy` interpolated, computed by `fill` unless its slot holds it.
    fn row(&mut self, iy: usize, fill: impl FnOnce(&mut [f32])) -> &[f32] {
        let slot = iy % self.held.len();
        let line = &mut self.rows[slot * self.width..(slot + 1) * self.width];
        if self.held[slot] != iy {
            fill(line);
            self.held[slot] = iy;
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every output as the sum over both axes' taps of the product of their weights.
    fn reference(x: &[f32], geo: &ResizeGeometry) -> Vec<f32> {
        let shape = geo.output().unwrap();
        let r = shape.len();
        let (h, w) = (geo.input[r - 2], geo.input[r - 1]);
        let planes: usize = shape[..r - 2].iter().product();
        let mut out = Vec::new();
        for p in 0..planes {
            for oy in 0..geo.rows.len() {
                for ox in 0..geo.cols.len() {
                    let mut s = 0.0f64;
                    for (iy, wy) in geo.rows.at(oy) {
                        for (ix, wx) in geo.cols.at(ox) {
                            if wy != 0.0 && wx != 0.0 {
                                s += wy as f64 * wx as f64 * x[p * h * w + iy * w + ix] as f64;
                            }
                        }
                    }
                    out.push(s as f32);
                }
            }
        }
        out
    }

    /// Taps of a linear half-pixel resize from `n_in` to `n_out`.
    fn linear(n_in: usize, n_out: usize) -> AxisTaps {
        let scale = n_out as f64 / n_in as f64;
        let mut t = AxisTaps {
            taps: 2,
            index: vec![],
            weight: vec![],
        };
        for o in 0..n_out {
            let s = ((o as f64 + 0.5) / scale - 0.5).clamp(0.0, n_in as f64 - 1.0);
            let lo = s.floor() as usize;
            let f = s - lo as f64;
            t.index.extend([lo as u32, (lo + 1).min(n_in - 1) as u32]);
            t.weight.extend([(1.0 - f) as f32, f as f32]);
        }
        t
    }

    /// Cubic-like taps: four neighbours with made-up weights, clamped at the borders.
    fn four(n_in: usize, n_out: usize) -> AxisTaps {
        let mut t = AxisTaps {
            taps: 4,
            index: vec![],
            weight: vec![],
        };
        for o in 0..n_out {
            let base = o * n_in / n_out;
            for k in 0..4 {
                let i = (base + k).saturating_sub(1).min(n_in - 1);
                t.index.push(i as u32);
                t.weight.push([-0.1, 0.6, 0.6, -0.1][k]);
            }
        }
        t
    }

    #[test]
    fn matches_the_sum_over_both_axes() {
        let pool = ThreadPool::new(3);
        let cases = [
            (vec![2, 3, 14, 14], linear(14, 224), linear(14, 224)),
            (vec![1, 1, 70, 9], linear(70, 33), linear(9, 9)),
            (vec![5, 3, 1], linear(3, 7), four(1, 2)),
            (vec![2, 9, 11], four(9, 20), four(11, 5)),
        ];
        for (input, rows, cols) in cases {
            let geo = ResizeGeometry { input, rows, cols };
            let n: usize = geo.input.iter().product();
            let x: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let want = reference(&x, &geo);
            let mut got = vec![f32::NAN; want.len()];
            resize2d(&x, &geo, &mut got, &pool).unwrap();
            for (i, (g, r)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - r).abs() <= 1e-5 * (1.0 + r.abs()),
                    "{:?}: element {i}: {g} vs {r}",
                    geo.input
                );
            }
        }
    }

    #[test]
    fn zero_weights_skip_infinite_inputs() {
        let geo = ResizeGeometry {
            input: vec![1, 2],
            rows: linear(1, 1),
            cols: AxisTaps {
                taps: 2,
                index: vec![0, 1],
                weight: vec![1.0, 0.0],
            },
        };
        let mut out = [0.0];
        resize2d(&[3.0, f32::INFINITY], &geo, &mut out, &ThreadPool::new(1)).unwrap();
        assert_eq!(out, [3.0]);
    }

    #[test]
    fn refuses_an_index_outside_the_input() {
        let geo = ResizeGeometry {
            input: vec![2, 2],
            rows: linear(2, 4),
            cols: AxisTaps {
                taps: 1,
                index: vec![0, 2],
                weight: vec![1.0, 1.0],
            },
        };
        let err = resize2d(&[0.0; 4], &geo, &mut [0.0; 8], &ThreadPool::new(1)).unwrap_err();
        assert!(err.to_string().contains("index 2 outside"), "{err}");
    }
}
