//! N-d convolution: work items of (output-column tile, filter block), each building only
//! its tile of the im2col matrix (the `window`) in a per-thread scratch and multiplying
//! it on `gemm`; a plain MatMul for 1x1 kernels; depthwise convolutions and, where the
//! CPU has AVX-512, 2-D f32 implicit matrix products and 3x3 Winograd products handed
//! to their own files.

use super::activation::Activation;
use super::window::Window;
use super::{
    Float, KernelError, SERIAL_MACS, StridedMatrix, SyncPtr, as_f32, as_f32_mut, depthwise_nhwc,
    gemm_into, implicit, is_f32, useful_stride, with_scratch,
};
use super::{small_depth, sparse_taps, winograd};
use crate::threads::ThreadPool;

/// The geometry of an N-d convolution: `x: [N, C, spatial..]`, `w: [M, C/group, kernel..]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvGeometry {
    pub input: Vec<usize>,
    pub weight: Vec<usize>,
    pub strides: Vec<usize>,
    /// All begin pads, then all end pads.
    pub pads: Vec<usize>,
    pub dilations: Vec<usize>,
    pub group: usize,
    /// The activation that followed the convolution, applied by each path to its
    /// results while they are in cache.
    pub activation: Activation,
}

impl ConvGeometry {
    /// The same convolution with each stride no larger than it needs to be
    /// ([`useful_stride`]): the output and every value in it stay the same.
    pub fn with_useful_strides(mut self) -> ConvGeometry {
        let s = self.strides.len();
        for d in 0..s.min(self.weight.len().saturating_sub(2)) {
            let span = self.dilations[d]
                .saturating_mul(self.weight[2 + d].saturating_sub(1))
                .saturating_add(1);
            let extent = self.input[2 + d]
                .saturating_add(self.pads[d])
                .saturating_add(self.pads[s + d]);
            self.strides[d] = useful_stride(self.strides[d], extent, span);
        }
        self
    }

    /// A one-axis convolution as the two-axis one it equals, over rows of one position
    /// (`[N, C, W]` is `[N, C, 1, W]` in memory, the filters likewise), for the
    /// implicit product, which runs two axes only; `None` for any other rank.
    pub(super) fn lifted_to_2d(&self) -> Option<ConvGeometry> {
        if self.weight.len() != 3 || self.input.len() != 3 {
            return None;
        }
        let lift = |v: &[usize], one: usize| -> Vec<usize> {
            let (head, tail) = v.split_at(v.len() - 1);
            head.iter()
                .copied()
                .chain([one])
                .chain(tail.iter().copied())
                .collect()
        };
        Some(ConvGeometry {
            input: lift(&self.input, 1),
            weight: lift(&self.weight, 1),
            strides: vec![1, self.strides[0]],
            pads: vec![0, self.pads[0], 0, self.pads[1]],
            dilations: vec![1, self.dilations[0]],
            group: self.group,
            activation: self.activation,
        })
    }

    /// The output's spatial sizes.
    pub fn out_spatial(&self) -> Result<Vec<usize>, KernelError> {
        let s = self
            .weight
            .len()
            .checked_sub(2)
            .ok_or_else(|| KernelError::Shape("weight rank < 3".into()))?;
        (0..s)
            .map(|d| {
                let span = self.dilations[d] * (self.weight[2 + d] - 1) + 1;
                let padded = self.input[2 + d] + self.pads[d] + self.pads[s + d];
                padded
                    .checked_sub(span)
                    .map(|x| x / self.strides[d] + 1)
                    .ok_or_else(|| KernelError::Shape("window larger than the padded input".into()))
            })
            .collect()
    }
}

/// Convolution with an optional per-filter bias, as `group` MatMuls of the weights with
/// the im2col matrix of the input (the input itself for 1x1, unit-stride, unpadded kernels).
pub fn conv<T: Float>(
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    geo: &ConvGeometry,
    out: &mut [T],
    pool: &ThreadPool,
) -> Result<(), KernelError> {
    let operands = ConvOperands {
        x,
        w,
        prepacked: None,
        bias,
    };
    conv_tiled(operands, geo, out, pool, TILE_ELEMENTS)
}

/// The filters `w` of convolution `geo` packed once for [`conv_prepacked`] (for weights
/// that do not change between runs), or `None` where this CPU and geometry do not use
/// packed filters (plain [`conv`] then).
pub fn prepack_conv_filters(w: &[f32], geo: &ConvGeometry) -> Option<Vec<f32>> {
    let size: usize = geo.weight.iter().product();
    if w.len() != size || geo.weight.len() < 2 {
        return None;
    }
    if (depthwise(geo) || grouped_by_eight(geo)) && depthwise_nhwc::handles(geo) {
        return Some(depthwise_nhwc::pack_filters(w, geo));
    }
    if geo
        .out_spatial()
        .is_ok_and(|out_sp| sparse_taps::handles(geo, &out_sp))
    {
        return Some(sparse_taps::pack_filters(w, geo));
    }
    if let Some(minimal) = geo
        .out_spatial()
        .ok()
        .and_then(|out_sp| winograd::choose(geo, &out_sp))
    {
        return Some(winograd::pack_filters(w, geo, minimal));
    }
    implicit_geometry(geo).map(|g| implicit::pack_filters(w, &g))
}

/// The geometry the implicit product runs `geo` as, if it runs it: a one-axis
/// convolution lifted to two axes over rows of one position (the implicit product runs
/// two axes only), any other as it is.
fn implicit_geometry(geo: &ConvGeometry) -> Option<std::borrow::Cow<'_, ConvGeometry>> {
    match geo.lifted_to_2d() {
        Some(lifted) => implicit::handles(&lifted).then_some(std::borrow::Cow::Owned(lifted)),
        None => implicit::handles(geo).then_some(std::borrow::Cow::Borrowed(geo)),
    }
}

/// Whether `geo` is a 1x1, unit-stride, unpadded convolution: a MatMul of the input
/// itself, without an im2col matrix.
pub(super) fn pointwise(geo: &ConvGeometry) -> bool {
    geo.weight[2..].iter().all(|&k| k == 1)
        && geo.strides.iter().all(|&st| st == 1)
        && geo.pads.iter().all(|&p| p == 0)
}

/// Whether each filter of `geo` reads one input channel and each channel feeds one
/// filter, with a window wider than one position (the depthwise paths).
fn depthwise(geo: &ConvGeometry) -> bool {
    let (c, m, g) = (
        geo.input.get(1).copied().unwrap_or(0),
        geo.weight[0],
        geo.group.max(1),
    );
    c == g && m == g && geo.weight[1] == 1 && !pointwise(geo)
}

/// Whether `geo` is grouped with as many input as output channels, eight of each per
/// group (RegNet's group width): the channels-last kernel takes one group per block.
fn grouped_by_eight(geo: &ConvGeometry) -> bool {
    let (c, m, g) = (
        geo.input.get(1).copied().unwrap_or(0),
        geo.weight[0],
        geo.group.max(1),
    );
    let width = depthwise_nhwc::GROUP_WIDTH;
    g > 1 && c == m && c == g * width && geo.weight[1] == width
}

/// [`conv`] with the filters also given packed by [`prepack_conv_filters`].
pub fn conv_prepacked(
    x: &[f32],
    w: &[f32],
    packed: &[f32],
    bias: Option<&[f32]>,
    geo: &ConvGeometry,
    out: &mut [f32],
    pool: &ThreadPool,
) -> Result<(), KernelError> {
    let operands = ConvOperands {
        x,
        w,
        prepacked: Some(packed),
        bias,
    };
    conv_tiled(operands, geo, out, pool, TILE_ELEMENTS)
}

/// The read-only operands of a convolution: input, filters (also packed, for the implicit
/// products, where they were packed once), and the optional per-filter bias.
#[derive(Clone, Copy)]
pub(crate) struct ConvOperands<'a, T> {
    pub(crate) x: &'a [T],
    pub(crate) w: &'a [T],
    pub(crate) prepacked: Option<&'a [T]>,
    pub(crate) bias: Option<&'a [T]>,
}

/// [`conv`] with work items of about `tile_elements` im2col elements, and the activation
/// of `geo` applied by each path as it stores its results.
fn conv_tiled<T: Float>(
    operands: ConvOperands<'_, T>,
    geo: &ConvGeometry,
    out: &mut [T],
    pool: &ThreadPool,
    tile_elements: usize,
) -> Result<(), KernelError> {
    conv_paths(operands, geo, out, pool, tile_elements)
}

fn conv_paths<T: Float>(
    operands: ConvOperands<'_, T>,
    geo: &ConvGeometry,
    out: &mut [T],
    pool: &ThreadPool,
    tile_elements: usize,
) -> Result<(), KernelError> {
    let ConvOperands {
        x,
        w,
        prepacked,
        bias,
    } = operands;
    let (n, c, m) = (geo.input[0], geo.input[1], geo.weight[0]);
    let g = geo.group.max(1);
    if c % g != 0 || m % g != 0 || geo.weight[1] * g != c {
        return Err(KernelError::Shape(format!(
            "{c} channels and {m} filters do not split into {g} groups"
        )));
    }
    let (cg, mg) = (c / g, m / g);
    let out_sp = geo.out_spatial()?;
    let (in_count, out_count): (usize, usize) =
        (geo.input[2..].iter().product(), out_sp.iter().product());
    let kernel: Vec<usize> = geo.weight[2..].to_vec();
    if kernel.is_empty() || kernel.len() > MAX_SPATIAL {
        return Err(KernelError::Shape(format!(
            "{} spatial axes (1 to {MAX_SPATIAL} supported)",
            kernel.len()
        )));
    }
    let kc: usize = kernel.iter().product();
    if out.len() != n * m * out_count || x.len() != n * c * in_count || w.len() != m * cg * kc {
        return Err(KernelError::Shape(
            "buffer sizes do not match the convolution".into(),
        ));
    }
    let pointwise = pointwise(geo);
    let window = Window {
        kernel: &kernel,
        out_sp: &out_sp,
        in_sp: &geo.input[2..],
        strides: &geo.strides,
        dilations: &geo.dilations,
        pads: &geo.pads,
        taps: Vec::new(),
        phases: None,
    }
    .with_taps();
    let base = SyncPtr(out.as_mut_ptr());
    let depthwise = depthwise(geo);
    if (depthwise || grouped_by_eight(geo)) && is_f32::<T>() && depthwise_nhwc::handles(geo) {
        if prepacked.is_some_and(|p| p.len() != depthwise_nhwc::packed_len(geo)) {
            return Err(KernelError::Shape(
                "the prepacked channels-last filters do not match the convolution".into(),
            ));
        }
        // SAFETY: T is f32.
        unsafe {
            depthwise_nhwc::conv(
                as_f32(x),
                as_f32(w),
                prepacked.map(|p| as_f32(p)),
                bias.map(|b| as_f32(b)),
                geo,
                &out_sp,
                as_f32_mut(out),
                pool,
            )
        };
        return Ok(());
    }
    if sparse_taps::handles(geo, &out_sp) {
        return sparse_taps::conv(x, w, prepacked, bias, geo, &out_sp, out, pool);
    }
    if depthwise {
        // Depthwise: each output channel reads one input channel; a tiny GEMM per
        // channel would cost more than the arithmetic, so accumulate tap by tap.
        let per_channel = |items: std::ops::Range<usize>| {
            let mut row = vec![T::ZERO; out_count];
            let (mut padded, mut sums) = (Vec::new(), Vec::new());
            for item in items {
                let (b, ch) = (item / m, item % m);
                let plane = &x[(b * c + ch) * in_count..(b * c + ch + 1) * in_count];
                // SAFETY: each (batch, channel) plane of `out` is written by one item.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(base.get().add(item * out_count), out_count)
                };
                let start = bias.map_or(T::ZERO, |bs| bs[ch]);
                let taps = &w[ch * kc..(ch + 1) * kc];
                if kernel.len() == 2 && window.undilated() {
                    window.depthwise_planes(plane, taps, start, dst, &mut padded, &mut sums);
                } else if kernel.len() == 2 {
                    dst.iter_mut().for_each(|v| *v = start);
                    window.depthwise_2d(plane, taps, dst);
                } else {
                    dst.iter_mut().for_each(|v| *v = start);
                    for (kk, &wv) in taps.iter().enumerate() {
                        window.columns(plane, kk, 0..out_count, &mut row);
                        for (d, &r) in dst.iter_mut().zip(&row) {
                            *d = *d + wv * r;
                        }
                    }
                }
                geo.activation.apply(dst);
            }
        };
        let min_items = if n * m * out_count * kc < 1 << 15 {
            n * m
        } else {
            1
        };
        pool.run(n * m, min_items.max(1), &per_channel);
        return Ok(());
    }
    let winograd = if is_f32::<T>() {
        winograd::choose(geo, &out_sp)
    } else {
        None
    };
    // A one-axis convolution (an audio encoder's) runs on the two-axis implicit product
    // over rows of one position: the im2col path repacked all its filters for every
    // tile of columns and ran Whisper's 80 -> 384 stem at 87 GFLOP/s.
    let implicit = if is_f32::<T>() {
        implicit_geometry(geo)
    } else {
        None
    };
    if winograd.is_some() || implicit.is_some() {
        let geo = implicit.as_deref().unwrap_or(geo);
        // SAFETY: T is f32.
        let (operands, out) = unsafe {
            (
                ConvOperands {
                    x: as_f32(x),
                    w: as_f32(w),
                    prepacked: prepacked.map(|p| as_f32(p)),
                    bias: bias.map(|b| as_f32(b)),
                },
                as_f32_mut(out),
            )
        };
        if let Some(minimal) = winograd {
            winograd::conv(operands, geo, &out_sp, minimal, out, pool)?;
        } else {
            implicit::conv2d(operands, geo, out, pool, tile_elements)?;
        }
        // Both clamp their results for ReLU and Clip; any other activation goes over
        // the output after them.
        super::activation::apply_in_blocks(geo.activation.after_stores(), out, pool);
        return Ok(());
    }
    // A stride along the rows makes every im2col run a strided copy; split the input rows
    // by column phase once, and the runs are contiguous again.
    let last = kernel.len() - 1;
    let phased_input;
    let (window, x, in_count) = if !pointwise && geo.strides[last] > 1 && geo.dilations[last] == 1 {
        let phased = Window {
            phases: Some(geo.strides[last]),
            taps: Vec::new(),
            ..window
        }
        .with_taps();
        phased_input = phased.phased_rows(x);
        let plane = in_count / geo.input[2 + last].max(1) * phased.row_len();
        (phased, &phased_input[..], plane)
    } else {
        (window, x, in_count)
    };
    // Work items are (batch, group, block of output columns, block of filters): each
    // builds the im2col matrix of its columns only (small enough to stay in cache until
    // the GEMM reads it) and multiplies its filters by it. Every column tile repacks all
    // its filters, and every filter block its columns, so where the filters outweigh the
    // columns (more filters than output positions: small late-stage feature maps) the
    // columns stay in one tile and the threads split the filters instead.
    let depth = cg * kc;
    // One thread gains nothing from more work items, and every filter block repacks the
    // columns once more (MNIST CNN's 32->64 conv at 1 thread: 0.124 -> 0.108 ms).
    let small = pool.threads() == 1 || n * m * out_count * depth < SERIAL_MACS;
    let wanted = 2 * pool.threads();
    let filters_outweigh = mg > out_count;
    let cols_per = if filters_outweigh {
        out_count.max(1)
    } else {
        tile_columns(
            // A 1x1 convolution builds no im2col matrix to keep in cache.
            if pointwise {
                usize::MAX
            } else if depth <= small_depth::MAX_DEPTH {
                // Shallow products read the tile in place, every block of filters again:
                // a tile that stays in L1 keeps them at twice the speed (SqueezeNet's
                // stem: 16 -> 36 GFLOP/s).
                tile_elements.min(SMALL_DEPTH_TILE_ELEMENTS)
            } else {
                tile_elements
            },
            depth,
            out_count,
            if small { 1 } else { wanted.div_ceil(n * g) },
        )
    };
    let tiles = out_count.div_ceil(cols_per);
    let column_items = n * g * tiles;
    let filter_blocks = if small || column_items >= wanted {
        1
    } else if filters_outweigh {
        // One block per thread: each more block repacks the columns once more.
        pool.threads()
            .div_ceil(column_items)
            .min(mg.div_ceil(MIN_FILTER_BLOCK))
            .max(1)
    } else {
        wanted
            .div_ceil(column_items)
            .min(mg.div_ceil(MIN_FILTER_BLOCK))
            .max(1)
    };
    let filters_per = mg.div_ceil(filter_blocks);
    let filter_blocks = mg.div_ceil(filters_per).max(1);
    // Filters `filters` of group `gi` times one column tile's matrix `rhs` (rows `rhs_rs`
    // apart), plus their bias, into their rows of `out` at the tile's columns.
    //
    // Callers make sure no other call writes the same filters at the same columns while
    // this one runs (the SAFETY of the writes below); `out` outlives the run.
    let multiply_tile = |b: usize,
                         gi: usize,
                         filters: std::ops::Range<usize>,
                         cols: &std::ops::Range<usize>,
                         rhs: &[T],
                         rhs_rs: usize| unsafe {
        let width = cols.len();
        let first_filter = gi * mg + filters.start;
        let wg = &w[first_filter * depth..(gi * mg + filters.end) * depth];
        let dst = base
            .get()
            .add((b * m + first_filter) * out_count + cols.start);
        gemm_into(
            [filters.len(), width, depth],
            dst,
            out_count,
            StridedMatrix {
                data: wg,
                rs: depth as isize,
                cs: 1,
            },
            StridedMatrix {
                data: rhs,
                rs: rhs_rs as isize,
                cs: 1,
            },
        );
        if let Some(bias) = bias {
            let own = &bias[first_filter..gi * mg + filters.end];
            for (r, &bv) in own.iter().enumerate() {
                let row = std::slice::from_raw_parts_mut(dst.add(r * out_count), width);
                row.iter_mut().for_each(|v| *v = *v + bv);
            }
        }
        // The activation over output values still in cache: as a separate pass over
        // the whole output, a ReLU took a quarter of a RegNet's run.
        if geo.activation != Activation::None {
            for r in 0..filters.len() {
                geo.activation.apply(std::slice::from_raw_parts_mut(
                    dst.add(r * out_count),
                    width,
                ));
            }
        }
    };
    if filter_blocks > 1 && !pointwise {
        // Few, deep column tiles (small late-stage feature maps): each tile's im2col
        // matrix is built once, its rows split over the threads, and then shared by the
        // threads' filter blocks, instead of every block building the same matrix.
        let mut shared = vec![T::ZERO; depth * cols_per];
        for column_item in 0..column_items {
            let (b, gi, t) = (
                column_item / (g * tiles),
                column_item / tiles % g,
                column_item % tiles,
            );
            let cols = t * cols_per..((t + 1) * cols_per).min(out_count);
            let width = cols.len();
            let xs = &x[(b * c + gi * cg) * in_count..(b * c + (gi + 1) * cg) * in_count];
            let matrix = SyncPtr(shared.as_mut_ptr());
            let build = |rows: std::ops::Range<usize>| {
                for r in rows {
                    let plane = &xs[(r / kc) * in_count..(r / kc + 1) * in_count];
                    // SAFETY: row r of the matrix is written by this call only.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(matrix.get().add(r * width), width)
                    };
                    window.im2col_row(plane, r % kc, cols.clone(), dst);
                }
            };
            pool.run(depth, 1, &build);
            let rhs = &shared[..depth * width];
            let multiply = |blocks: std::ops::Range<usize>| {
                for fb in blocks {
                    let filters = fb * filters_per..((fb + 1) * filters_per).min(mg);
                    // Each block of filters is multiplied by one call only, as
                    // `multiply_tile` requires.
                    multiply_tile(b, gi, filters, &cols, rhs, width);
                }
            };
            pool.run(filter_blocks, 1, &multiply);
        }
        return Ok(());
    }
    let items = column_items * filter_blocks;
    let body = |range: std::ops::Range<usize>| {
        with_scratch::<T>(if pointwise { 0 } else { depth * cols_per }, |col| {
            for item in range {
                let (fb, column_item) = (item % filter_blocks, item / filter_blocks);
                let (b, gi, t) = (
                    column_item / (g * tiles),
                    column_item / tiles % g,
                    column_item % tiles,
                );
                let filters = fb * filters_per..((fb + 1) * filters_per).min(mg);
                let cols = t * cols_per..((t + 1) * cols_per).min(out_count);
                let width = cols.len();
                let xs = &x[(b * c + gi * cg) * in_count..(b * c + (gi + 1) * cg) * in_count];
                let (rhs, rhs_rs): (&[T], usize) = if pointwise {
                    (&xs[cols.start..], in_count)
                } else {
                    for r in 0..depth {
                        let plane = &xs[(r / kc) * in_count..(r / kc + 1) * in_count];
                        let dst = &mut col[r * width..(r + 1) * width];
                        window.im2col_row(plane, r % kc, cols.clone(), dst);
                    }
                    (&col[..depth * width], width)
                };
                // Each (column tile, filter block) item is multiplied by one call only, as
                // `multiply_tile` requires.
                multiply_tile(b, gi, filters, &cols, rhs, rhs_rs);
            }
        });
    };
    let min_items = if small { items } else { 1 };
    pool.run(items, min_items.max(1), &body);
    Ok(())
}

/// Fewest filters a work item multiplies (below this the GEMM's packing dominates).
pub(super) const MIN_FILTER_BLOCK: usize = 32;

/// Spatial axes a convolution may have.
pub(super) const MAX_SPATIAL: usize = 8;

/// Elements of im2col matrix a work item aims for when the product is shallow enough
/// for `small_depth` (32 KiB of f32, an L1).
const SMALL_DEPTH_TILE_ELEMENTS: usize = 8 * 1024;

/// Elements of im2col matrix a work item aims for (256 KiB of f32, about half an L2).
pub(super) const TILE_ELEMENTS: usize = 64 * 1024;

/// Output columns per work item for an im2col matrix `depth` rows deep: tiles of about
/// `tile_elements`, at least `min_tiles` of them while each keeps 64 columns, and all of
/// about the same width (so threads finish together).
pub(super) fn tile_columns(
    tile_elements: usize,
    depth: usize,
    out_count: usize,
    min_tiles: usize,
) -> usize {
    let widest = (tile_elements / depth.max(1)).max(64);
    let tiles = out_count
        .div_ceil(widest)
        .max(min_tiles.min(out_count / 64))
        .max(1);
    out_count
        .div_ceil(tiles)
        .next_multiple_of(16)
        .clamp(1, out_count.max(1))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Direct convolution by definition, for checking the im2col path.
    pub(in crate::kernels) fn reference(
        x: &[f64],
        w: &[f64],
        bias: &[f64],
        geo: &ConvGeometry,
    ) -> Vec<f64> {
        let (n, c, m) = (geo.input[0], geo.input[1], geo.weight[0]);
        let g = geo.group;
        let (cg, mg) = (c / g, m / g);
        let s = geo.weight.len() - 2;
        let out_sp = geo.out_spatial().unwrap();
        let in_sp = &geo.input[2..];
        let kernel = &geo.weight[2..];
        let out_count: usize = out_sp.iter().product();
        let kc: usize = kernel.iter().product();
        let in_count: usize = in_sp.iter().product();
        let unflatten = |mut i: usize, dims: &[usize]| {
            let mut v = vec![0; dims.len()];
            for d in (0..dims.len()).rev() {
                v[d] = i % dims[d];
                i /= dims[d];
            }
            v
        };
        let mut out = vec![0.0; n * m * out_count];
        for b in 0..n {
            for f in 0..m {
                let gi = f / mg;
                for o in 0..out_count {
                    let op = unflatten(o, &out_sp);
                    let mut acc = bias[f];
                    for ci in 0..cg {
                        for t in 0..kc {
                            let tp = unflatten(t, kernel);
                            let mut flat = 0usize;
                            let mut inside = true;
                            for d in 0..s {
                                let pos = (op[d] * geo.strides[d] + tp[d] * geo.dilations[d])
                                    as i64
                                    - geo.pads[d] as i64;
                                inside &= (0..in_sp[d] as i64).contains(&pos);
                                flat = flat * in_sp[d] + pos.max(0) as usize;
                            }
                            if inside {
                                let xv = x[(b * c + gi * cg + ci) * in_count + flat];
                                acc += xv * w[(f * cg + ci) * kc + t];
                            }
                        }
                    }
                    out[(b * m + f) * out_count + o] = acc;
                }
            }
        }
        out
    }

    /// Input shape, weight shape, strides, pads, dilations, group.
    type Case = (
        Vec<usize>,
        Vec<usize>,
        Vec<usize>,
        Vec<usize>,
        Vec<usize>,
        usize,
    );

    /// A case's geometry (no activation), its input, filters and bias (fixed values in
    /// -2..2) and the output by definition.
    fn case_data(case: Case) -> (ConvGeometry, [Vec<f64>; 3], Vec<f64>) {
        let (input, weight, strides, pads, dilations, group) = case;
        let geo = ConvGeometry {
            input,
            weight,
            strides,
            pads,
            dilations,
            group,
            activation: Activation::None,
        };
        let numel = |d: &[usize]| d.iter().product::<usize>();
        let value = |i: usize, salt: usize| ((i * 7919 + salt * 104_729) % 199) as f64 / 50.0 - 2.0;
        let x: Vec<f64> = (0..numel(&geo.input)).map(|i| value(i, 1)).collect();
        let w: Vec<f64> = (0..numel(&geo.weight)).map(|i| value(i, 2)).collect();
        let bias: Vec<f64> = (0..geo.weight[0]).map(|i| value(i, 3)).collect();
        let want = reference(&x, &w, &bias, &geo);
        (geo, [x, w, bias], want)
    }

    #[test]
    fn tiled_im2col_matches_the_definition() {
        // (input, weight, strides, pads, dilations, group): 1-, 2- and 3-d windows,
        // strides, asymmetric pads, dilation, groups, depthwise and pointwise.
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            (vec![1, 3, 11, 14], vec![4, 3, 3, 3], vec![1, 1], vec![1, 1, 1, 1], vec![1, 1], 1),
            (vec![2, 4, 13, 12], vec![6, 2, 3, 2], vec![2, 1], vec![0, 2, 1, 0], vec![1, 2], 2),
            (vec![1, 5, 40], vec![3, 5, 5], vec![3], vec![4, 2], vec![2], 1),
            (vec![1, 2, 5, 6, 7], vec![2, 2, 2, 3, 2], vec![1, 2, 1], vec![1, 0, 1, 0, 1, 1], vec![1, 1, 2], 1),
            (vec![1, 6, 9, 10], vec![6, 1, 3, 3], vec![1, 1], vec![2, 2, 2, 2], vec![1, 1], 6),
            (vec![2, 3, 7, 13], vec![3, 1, 3, 5], vec![1, 1], vec![0, 2, 1, 1], vec![1, 1], 3),
            // Strided rows, read split by column phase.
            (vec![1, 3, 15, 17], vec![4, 3, 7, 7], vec![2, 2], vec![3, 3, 3, 3], vec![1, 1], 1),
            (vec![1, 2, 23, 25], vec![3, 2, 11, 11], vec![4, 4], vec![2, 2, 1, 0], vec![1, 1], 1),
            (vec![1, 4, 9, 11], vec![6, 4, 1, 1], vec![2, 2], vec![0, 0, 0, 0], vec![1, 1], 1),
            (vec![1, 2, 5, 6, 9], vec![2, 2, 2, 3, 3], vec![1, 1, 2], vec![0, 1, 1, 0, 1, 1], vec![1, 1, 1], 1),
            (vec![1, 4, 10, 13], vec![6, 2, 3, 3], vec![2, 3], vec![1, 1, 1, 1], vec![1, 1], 2),
            (vec![1, 2, 1, 9], vec![2, 1, 1, 3], vec![1, 1], vec![0, 0, 0, 0], vec![1, 1], 2),
            (vec![2, 4, 11, 12], vec![4, 1, 3, 2], vec![2, 3], vec![1, 0, 0, 1], vec![1, 2], 4),
            (vec![1, 3, 20], vec![3, 1, 4], vec![2], vec![1, 2], vec![1], 3),
            (vec![1, 8, 10, 10], vec![5, 8, 1, 1], vec![1, 1], vec![0, 0, 0, 0], vec![1, 1], 1),
            (vec![1, 2, 4, 4], vec![1, 2, 3, 3], vec![1, 1], vec![5, 5, 5, 5], vec![1, 1], 1),
            // Large enough to split filters into blocks when there are few columns.
            (vec![1, 16, 9, 9], vec![96, 16, 3, 3], vec![1, 1], vec![1, 1, 1, 1], vec![1, 1], 1),
            (vec![1, 64, 7, 7], vec![80, 64, 1, 1], vec![1, 1], vec![0, 0, 0, 0], vec![1, 1], 1),
        ];
        for case in cases {
            let (geo, [x, w, bias], want) = case_data(case);
            for (threads, tile) in [(1, TILE_ELEMENTS), (2, 1), (3, 200)] {
                let mut got = vec![f64::NAN; want.len()];
                let pool = ThreadPool::new(threads);
                let operands = ConvOperands {
                    x: &x,
                    w: &w,
                    prepacked: None,
                    bias: Some(&bias),
                };
                conv_tiled(operands, &geo, &mut got, &pool, tile).unwrap();
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() < 1e-9,
                        "{geo:?} threads {threads} tile {tile}: [{i}] {a} vs {b}"
                    );
                }
                // The same in f32: the implicit convolution where the CPU has AVX-512.
                let narrow = |v: &[f64]| v.iter().map(|&e| e as f32).collect::<Vec<f32>>();
                let mut got = vec![f32::NAN; want.len()];
                let bias = narrow(&bias);
                let (x, w) = (narrow(&x), narrow(&w));
                let operands = ConvOperands {
                    x: &x,
                    w: &w,
                    prepacked: None,
                    bias: Some(&bias),
                };
                conv_tiled(operands, &geo, &mut got, &pool, tile).unwrap();
                for (i, (&a, b)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (f64::from(a) - b).abs() < 1e-4 * b.abs().max(1.0),
                        "f32 {geo:?} threads {threads} tile {tile}: [{i}] {a} vs {b}"
                    );
                }
            }
        }
    }

    /// Filters packed once (as a program packs its constant weights) give what the
    /// definition gives on every path the packing chooses: one-axis convolutions lifted
    /// to the two-axis implicit product among them.
    #[test]
    fn prepacked_filters_match_the_definition() {
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            (vec![1, 80, 300], vec![24, 80, 3], vec![1], vec![1, 1], vec![1], 1),
            (vec![2, 12, 41], vec![20, 12, 3], vec![2], vec![1, 1], vec![1], 1),
            (vec![1, 5, 40], vec![3, 5, 5], vec![3], vec![4, 2], vec![2], 1),
            (vec![1, 8, 33], vec![16, 4, 5], vec![1], vec![2, 0], vec![1], 2),
            (vec![1, 3, 20], vec![3, 1, 4], vec![2], vec![1, 2], vec![1], 3),
            (vec![1, 6, 11, 12], vec![8, 6, 3, 3], vec![1, 1], vec![1, 1, 1, 1], vec![1, 1], 1),
        ];
        let mut lifted = 0;
        for case in cases {
            let (geo, [x, w, bias], want) = case_data(case);
            lifted += usize::from(geo.lifted_to_2d().is_some_and(|l| implicit::handles(&l)));
            let narrow = |v: &[f64]| v.iter().map(|&e| e as f32).collect::<Vec<f32>>();
            let (x, w, bias) = (narrow(&x), narrow(&w), narrow(&bias));
            let packed = prepack_conv_filters(&w, &geo);
            for threads in [1, 2] {
                let mut got = vec![f32::NAN; want.len()];
                let pool = ThreadPool::new(threads);
                match &packed {
                    Some(p) => conv_prepacked(&x, &w, p, Some(&bias), &geo, &mut got, &pool),
                    None => conv(&x, &w, Some(&bias), &geo, &mut got, &pool),
                }
                .unwrap();
                for (i, (&a, b)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (f64::from(a) - b).abs() < 1e-4 * b.abs().max(1.0),
                        "{geo:?} threads {threads}: [{i}] {a} vs {b}"
                    );
                }
            }
        }
        if implicit::handles(&ConvGeometry {
            input: vec![1, 1, 4, 4],
            weight: vec![1, 1, 3, 3],
            strides: vec![1, 1],
            pads: vec![0; 4],
            dilations: vec![1, 1],
            group: 1,
            activation: Activation::None,
        }) {
            assert_eq!(lifted, 4, "the non-depthwise one-axis cases run lifted");
        }
    }

    /// A ReLU or Clip folded into the convolution stores exactly what a clamp after it
    /// gives, NaN kept: on the implicit products (positions and filter lanes), the
    /// depthwise paths (2-D planes, 1-D taps), the `gemm` path and in f64.
    #[test]
    fn folded_clamps_match_a_pass_after() {
        let geometries = [
            (
                vec![1usize, 8, 12, 12],
                vec![16usize, 8, 3, 3],
                1usize,
                vec![1usize; 4],
            ),
            (vec![1, 64, 7, 7], vec![40, 64, 1, 1], 1, vec![0; 4]),
            (vec![1, 256, 7, 7], vec![32, 256, 1, 1], 1, vec![0; 4]),
            // Short rows: filters as lanes on either instruction set.
            (vec![1, 64, 7, 7], vec![64, 64, 3, 3], 1, vec![1; 4]),
            (vec![1, 6, 9, 9], vec![6, 1, 3, 3], 6, vec![1; 4]),
            (vec![1, 4, 10], vec![5, 4, 3], 1, vec![1; 2]),
            // Depthwise along one axis: the tap-by-tap loop.
            (vec![1, 4, 10], vec![4, 1, 3], 4, vec![1; 2]),
        ];
        let mut layouts = [false; 2];
        for (input, weight, group, pads) in geometries {
            let rank = input.len() - 2;
            let geo = ConvGeometry {
                input: input.clone(),
                weight: weight.clone(),
                strides: vec![1; rank],
                pads,
                dilations: vec![1; rank],
                group,
                activation: Activation::None,
            };
            if implicit::handles(&geo) {
                layouts[usize::from(implicit::filters_as_lanes(&geo))] = true;
            }
            let numel = |d: &[usize]| d.iter().product::<usize>();
            let value =
                |i: usize, salt: usize| ((i * 7919 + salt * 104_729) % 199) as f32 / 50.0 - 2.0;
            let mut x: Vec<f32> = (0..numel(&input)).map(|i| value(i, 1)).collect();
            x[3] = f32::NAN;
            let w: Vec<f32> = (0..numel(&weight)).map(|i| value(i, 2)).collect();
            let out_len = input[0] * weight[0] * numel(&geo.out_spatial().unwrap());
            let pool = ThreadPool::new(2);
            let mut plain = vec![0f32; out_len];
            conv(&x, &w, None, &geo, &mut plain, &pool).unwrap();
            assert!(plain.iter().any(|v| v.is_nan()) && plain.iter().any(|&v| v < 0.0));
            let clip = Activation::Clip {
                low: -0.5,
                high: 1.5,
            };
            for activation in [Activation::Relu, clip] {
                let (low, high) = activation.clamp_bounds().unwrap();
                let folded_geo = ConvGeometry {
                    activation,
                    ..geo.clone()
                };
                let mut folded = vec![0f32; out_len];
                conv(&x, &w, None, &folded_geo, &mut folded, &pool).unwrap();
                assert!(plain.iter().any(|&v| v > high) || high.is_infinite());
                for (i, (&p, &f)) in plain.iter().zip(&folded).enumerate() {
                    let up = if p < low { low } else { p };
                    let want = if up > high { high } else { up };
                    assert!(
                        (want.is_nan() && f.is_nan()) || want == f,
                        "{activation:?} {geo:?} [{i}]: {f}, expected {want}"
                    );
                }
                let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
                let w64: Vec<f64> = w.iter().map(|&v| v as f64).collect();
                let mut folded64 = vec![0f64; out_len];
                conv(&x64, &w64, None, &folded_geo, &mut folded64, &pool).unwrap();
                let (low, high) = (f64::from(low), f64::from(high));
                assert!(
                    folded64
                        .iter()
                        .all(|&v| v.is_nan() || (low..=high).contains(&v))
                );
                assert!(folded64.iter().any(|v| v.is_nan()));
            }
        }
        if implicit::available() {
            assert_eq!(layouts, [true, true], "both implicit layouts");
        }
    }
}
