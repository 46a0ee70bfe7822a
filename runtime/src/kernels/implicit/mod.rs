//! Two-dimensional f32 convolutions as implicit matrix products on AVX-512 or AVX2 with
//! FMA: no im2col matrix; a register-blocked micro-kernel reads each filter tap's input
//! run in place.
//!
//! The input is copied once into a zero-padded, phase-split form (skipped when there is
//! no padding and no stride): input position `(y, x)` goes to phase `(y % sy, x % sx)`,
//! row `y / sy`, column `x / sx`. In that form output `(oy, ox)` reads tap `(ky, kx)` at
//! one fixed offset from `oy * row + ox`, for every stride and dilation, so a tile of
//! consecutive outputs of a row reads as many consecutive inputs. Outputs are numbered
//! `q = oy * row + ox` over the phase's rows (`row` may exceed the output width: those
//! few lanes are computed and not stored), and the kernel walks q in tiles of
//! [`Isa::lanes`] (32 on AVX-512, 16 on AVX2).
//!
//! Filters are packed into panels of up to [`Isa::most_rows`] rows (12, or 6), laid out
//! depth by depth, so the micro-kernel broadcasts one filter value per row and step and
//! keeps two vectors of sums per row in registers over the whole depth: once per program
//! for constant weights (the caller keeps [`pack_filters`]'s result), per call otherwise.
//! Where output rows are short, the lanes are filters instead ([`filters_as_lanes`]).
//! The micro-kernels of each instruction set have a file of their own; everything else
//! (packing, tiling, the work split) is shared and takes the blocking from [`Isa`].

use super::conv::ConvOperands;
use super::{ConvGeometry, KernelError, SyncPtr, column_phases, every_nth};
use crate::threads::ThreadPool;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(test)]
mod tests;

/// The instruction sets with micro-kernels, each with its blocking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    /// 32 lanes (two 16-lane vectors) by up to 12 rows.
    Avx512,
    /// 16 lanes (two 8-lane vectors) by up to 6 rows.
    Avx2Fma,
}

impl Isa {
    /// The widest this CPU runs, if any.
    pub(crate) fn detect() -> Option<Isa> {
        Isa::ALL.into_iter().find(|isa| isa.supported())
    }

    /// Every instruction set, widest first.
    pub(crate) const ALL: [Isa; 2] = [Isa::Avx512, Isa::Avx2Fma];

    /// Whether this CPU runs `self`.
    pub(crate) fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Isa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
                Isa::Avx2Fma => {
                    std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("fma")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// Output positions (or filters) one micro-kernel call computes in its lanes.
    pub(crate) const fn lanes(self) -> usize {
        match self {
            Isa::Avx512 => 32,
            Isa::Avx2Fma => 16,
        }
    }

    /// Most filters (or positions) one micro-kernel call computes: two vectors of sums
    /// each, and room left for two input vectors and a broadcast.
    pub(crate) const fn most_rows(self) -> usize {
        match self {
            Isa::Avx512 => 12,
            Isa::Avx2Fma => 6,
        }
    }
}

/// Whether this CPU runs the implicit convolution.
#[cfg(test)]
pub(crate) fn available() -> bool {
    Isa::detect().is_some()
}

/// Panels for `rows` filters (or runs for `rows` positions): as few as hold them at up
/// to `most` each, all as tall as can be (64 filters at 12: four of 11 and two of 10, not
/// five of 12 and one of 4, whose micro-kernel would keep too few sums in flight). Panel
/// `i` starts at `panel_start(rows, most, i)`.
fn panel_count(rows: usize, most: usize) -> usize {
    rows.div_ceil(most).max(1)
}

/// Where panel `i` of [`panel_count`] starts (`i == panel_count` gives `rows`).
fn panel_start(rows: usize, most: usize, i: usize) -> usize {
    let count = panel_count(rows, most);
    i * (rows / count) + i.min(rows % count)
}

/// The panels of `rows` at up to `most` rows each, as (start, height).
pub(super) fn panels(rows: usize, most: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..panel_count(rows, most))
        .map(move |i| {
            let start = panel_start(rows, most, i);
            (start, panel_start(rows, most, i + 1) - start)
        })
        .filter(|&(_, height)| height > 0)
}

/// Packs `rows` filters (`a`, row-major, `depth` apart) into the panels of [`panels`]:
/// panel by panel, depth by depth, the panel's rows side by side. `packed` holds
/// `rows * depth` elements; a panel starting at row `r` starts at `r * depth`.
pub(super) fn pack_rows(a: &[f32], rows: usize, depth: usize, most: usize, packed: &mut [f32]) {
    for (first, height) in panels(rows, most) {
        let panel = &mut packed[first * depth..(first + height) * depth];
        for r in 0..height {
            let row = &a[(first + r) * depth..(first + r + 1) * depth];
            for (k, &v) in row.iter().enumerate() {
                panel[k * height + r] = v;
            }
        }
    }
}

/// Where a tile's lanes go in an output plane: lanes whose mask bit is set are stored at
/// `offset + lane`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Segment {
    offset: isize,
    mask: u32,
}

/// The positions along the phase rows that a tile covers, and the output plane's shape.
#[derive(Clone, Copy, Debug)]
struct TileSpan {
    q0: usize,
    lanes: usize,
    q_end: usize,
    row: usize,
    out_w: usize,
}

/// The segments of the tile of `span.lanes` starting at `span.q0`: one per output row it
/// touches, without the lanes past the output width or past `q_end`.
fn segments(span: TileSpan, into: &mut Vec<Segment>) {
    let TileSpan {
        q0,
        lanes,
        q_end,
        row,
        out_w,
    } = span;
    into.clear();
    let end = (q0 + lanes).min(q_end);
    let mut q = q0;
    while q < end {
        let (oy, ox) = (q / row, q % row);
        let row_end = ((oy + 1) * row).min(end);
        if ox < out_w {
            let count = (out_w - ox).min(row_end - q);
            let lane = q - q0;
            into.push(Segment {
                offset: (oy * out_w + ox) as isize - lane as isize,
                mask: (((1u64 << count) - 1) << lane) as u32,
            });
        }
        q = row_end;
    }
}

/// The geometry of the phase-split padded input and the conv's reads from it.
struct Phased {
    /// Rows and columns of one phase.
    rows: usize,
    cols: usize,
    /// Phases along y and x (the strides).
    sy: usize,
    sx: usize,
    /// Whether the input is used as it is (no padding, unit strides).
    in_place: bool,
}

impl Phased {
    /// Elements of one channel: all its phases.
    fn plane(&self) -> usize {
        self.sy * self.sx * self.rows * self.cols
    }
}

/// Whether [`conv2d`] runs the convolution `geo` on this CPU: two spatial axes, not
/// depthwise (one channel per group and one filter per group with a kernel larger than
/// 1x1 or a stride: those have their own loop), AVX-512, or AVX2 with FMA where the
/// convolution is not a plain matrix product of the input (1x1, unit strides, no pads):
/// those `gemm`'s packed panels run faster than 16-lane tiles (MobileNetV2 ran 1.11x and
/// EfficientNet-B0 1.09x slower with them, runs interleaved), while the other
/// convolutions gain (ResNet-18 0.93x).
pub(crate) fn handles(geo: &ConvGeometry) -> bool {
    let (g, m) = (geo.group.max(1), geo.weight[0]);
    let pointwise = super::conv::pointwise(geo);
    let depthwise = geo.weight[1] == 1 && m == g && !pointwise;
    let runs = match Isa::detect() {
        Some(Isa::Avx512) => true,
        Some(Isa::Avx2Fma) => !pointwise,
        None => false,
    };
    geo.weight.len() == 4 && geo.input.len() == 4 && !depthwise && runs
}

/// The filters `w` of `geo` packed for [`conv2d`] on this CPU (see [`pack_filters_for`]).
pub(crate) fn pack_filters(w: &[f32], geo: &ConvGeometry) -> Vec<f32> {
    Isa::detect().map_or_else(Vec::new, |isa| pack_filters_for(w, geo, isa))
}

/// The filters `w` of `geo` packed for the micro-kernels of `isa`: per group, the panels
/// of [`panels`] (see [`pack_rows`]), or where the filters are the lanes
/// ([`filters_as_lanes`]), panels of [`Isa::lanes`] filters (see [`pack_lanes`]).
pub(crate) fn pack_filters_for(w: &[f32], geo: &ConvGeometry, isa: Isa) -> Vec<f32> {
    let (m, g) = (geo.weight[0], geo.group.max(1));
    let depth: usize = geo.weight[1..].iter().product();
    let lanes = filters_as_lanes_on(geo, isa);
    let mut packed = vec![0.0; packed_len(geo, lanes, isa)];
    if lanes {
        pack_lanes(w, g, m / g, depth, isa.lanes(), &mut packed);
    } else {
        pack_groups(w, g, m / g, depth, isa.most_rows(), &mut packed);
    }
    packed
}

/// Elements of [`pack_filters_for`]'s result; `lanes` is [`filters_as_lanes_on`]`(geo,
/// isa)`.
fn packed_len(geo: &ConvGeometry, lanes: bool, isa: Isa) -> usize {
    let (m, g) = (geo.weight[0], geo.group.max(1));
    let depth: usize = geo.weight[1..].iter().product();
    if lanes {
        g * (m / g).div_ceil(isa.lanes()) * isa.lanes() * depth
    } else {
        m * depth
    }
}

/// Packs the `g` groups of `mg` filters each as lane panels: panel by panel, depth by
/// depth, `width` filters side by side (zeros past the group's last filter).
fn pack_lanes(w: &[f32], g: usize, mg: usize, depth: usize, width: usize, packed: &mut [f32]) {
    let panels = mg.div_ceil(width);
    for gi in 0..g {
        for j in 0..panels {
            let panel = &mut packed[(gi * panels + j) * depth * width..][..depth * width];
            panel.fill(0.0);
            for l in 0..width.min(mg - j * width) {
                let filter = gi * mg + j * width + l;
                for (k, &v) in w[filter * depth..(filter + 1) * depth].iter().enumerate() {
                    panel[k * width + l] = v;
                }
            }
        }
    }
}

/// [`filters_as_lanes_on`] this CPU.
#[cfg(test)]
pub(crate) fn filters_as_lanes(geo: &ConvGeometry) -> bool {
    Isa::detect().is_some_and(|isa| filters_as_lanes_on(geo, isa))
}

/// Whether [`conv2d`] on `isa` makes the filters its vector lanes (and runs of output
/// positions its rows) rather than the other way round: where the output rows are short,
/// position lanes compute many lanes past a row's end (a 7x7 map fills 49 of 64 at 32
/// lanes), while filter lanes waste none where the filters come in whole vectors, at the
/// price of transposing each result tile into the output planes (about a cycle per
/// value, the multiply-adds of 16 more steps of depth on either instruction set; 1x1
/// 256->1024 at 14x14 ran 4% faster with filter lanes on AVX-512, which 24 would not
/// have chosen).
pub(crate) fn filters_as_lanes_on(geo: &ConvGeometry, isa: Isa) -> bool {
    let Ok(out_sp) = geo.out_spatial() else {
        return false;
    };
    let (out_h, out_w) = (out_sp[0], out_sp[1]);
    if out_h == 0 || out_w == 0 {
        return false;
    }
    let (g, m) = (geo.group.max(1), geo.weight[0]);
    let mg = m / g;
    let depth: usize = geo.weight[1..].iter().product();
    let row = (geo.input[3] + geo.pads[1] + geo.pads[3]).div_ceil(geo.strides[1]);
    let q_end = (out_h - 1) * row + out_w;
    let position_lanes = q_end.next_multiple_of(isa.lanes()) * mg * depth;
    let filter_lanes = out_h * out_w * mg.next_multiple_of(isa.lanes()) * (depth + 16);
    // Ties go to position lanes, which store without a transpose.
    filter_lanes * 20 < position_lanes * 19
}

/// Packs the `g` groups of `mg` filters each.
fn pack_groups(w: &[f32], g: usize, mg: usize, depth: usize, most: usize, packed: &mut [f32]) {
    for gi in 0..g {
        let span = gi * mg * depth..(gi + 1) * mg * depth;
        pack_rows(&w[span.clone()], mg, depth, most, &mut packed[span]);
    }
}

/// `conv` for a convolution [`handles`] takes; `geo` validated by the caller (groups
/// divide the channels, buffer sizes match). `operands.prepacked` are the filters from
/// [`pack_filters`] where the caller keeps them (constant weights); without, they are
/// packed here. `tile_elements` sizes the work items as for im2col tiles.
pub(crate) fn conv2d(
    operands: ConvOperands<'_, f32>,
    geo: &ConvGeometry,
    out: &mut [f32],
    pool: &ThreadPool,
    tile_elements: usize,
) -> Result<(), KernelError> {
    let isa = Isa::detect().ok_or_else(|| {
        KernelError::Shape("the implicit convolution needs AVX-512 or AVX2 with FMA".into())
    })?;
    conv2d_on(isa, operands, geo, out, pool, tile_elements)
}

/// [`conv2d`] on the micro-kernels of `isa`, which the CPU must run (checked).
pub(crate) fn conv2d_on(
    isa: Isa,
    operands: ConvOperands<'_, f32>,
    geo: &ConvGeometry,
    out: &mut [f32],
    pool: &ThreadPool,
    tile_elements: usize,
) -> Result<(), KernelError> {
    if !isa.supported() {
        return Err(KernelError::Shape(format!(
            "this CPU does not run the {isa:?} implicit convolution"
        )));
    }
    let (width, most) = (isa.lanes(), isa.most_rows());
    let ConvOperands {
        x,
        w,
        prepacked,
        bias,
    } = operands;
    let (n, c, h, wd) = (geo.input[0], geo.input[1], geo.input[2], geo.input[3]);
    let (m, cg, kh, kw) = (geo.weight[0], geo.weight[1], geo.weight[2], geo.weight[3]);
    let g = geo.group.max(1);
    let mg = m / g;
    let (sy, sx, dy, dx) = (
        geo.strides[0],
        geo.strides[1],
        geo.dilations[0],
        geo.dilations[1],
    );
    let (pt, pl, pb, pr) = (geo.pads[0], geo.pads[1], geo.pads[2], geo.pads[3]);
    let out_sp = geo.out_spatial()?;
    let (out_h, out_w) = (out_sp[0], out_sp[1]);
    let (padded_h, padded_w) = (h + pt + pb, wd + pl + pr);
    let phased = Phased {
        rows: padded_h.div_ceil(sy),
        cols: padded_w.div_ceil(sx),
        sy,
        sx,
        in_place: sy == 1 && sx == 1 && pt == 0 && pl == 0 && pb == 0 && pr == 0,
    };
    let plane = phased.plane();
    let depth = cg * kh * kw;
    let out_count = out_h * out_w;
    if out_count == 0 || m == 0 || n == 0 {
        return Ok(());
    }
    // Offsets are 32-bit to keep the table small in L1.
    let offsets: Vec<u32> = (0..depth)
        .map(|k| {
            let (ci, ky, kx) = (k / (kh * kw), k / kw % kh, k % kw);
            let (y, xx) = (ky * dy, kx * dx);
            ci * plane
                + ((y % sy) * sx + xx % sx) * phased.rows * phased.cols
                + (y / sy) * phased.cols
                + xx / sx
        })
        .map(u32::try_from)
        .collect::<Result<_, _>>()
        .map_err(|_| KernelError::Shape("convolution input too large for 32-bit offsets".into()))?;

    let source: &[f32] = if phased.in_place {
        x
    } else {
        PHASED_INPUT.with(|cell| {
            let mut buf = cell.borrow_mut();
            buf.clear();
            buf.resize(n * c * plane, 0.0);
            let dst = SyncPtr(buf.as_mut_ptr());
            // Only the phases some tap reads are copied (a 1x1 stride-2 conv reads one of
            // four).
            let read_y: Vec<bool> = (0..sy)
                .map(|p| (0..kh).any(|ky| ky * dy % sy == p))
                .collect();
            let read_x: Vec<bool> = (0..sx)
                .map(|p| (0..kw).any(|kx| kx * dx % sx == p))
                .collect();
            let phases: Vec<_> = column_phases(wd, pl, sx)
                .into_iter()
                .filter(|&(phase, ..)| read_x[phase])
                .collect();
            // Row by row (every input row of every channel), split over the threads.
            let split = |rows: std::ops::Range<usize>| {
                for r in rows {
                    let (p, y) = (r / h, r % h);
                    let py = y + pt;
                    if !read_y[py % sy] {
                        continue;
                    }
                    let row_base = p * plane
                        + ((py % sy) * sx) * phased.rows * phased.cols
                        + (py / sy) * phased.cols;
                    let src_row = &x[r * wd..(r + 1) * wd];
                    for &(phase, first, count, column) in &phases {
                        let at = row_base + phase * phased.rows * phased.cols + column;
                        // SAFETY: this input row's phase row, written by this call only,
                        // lies inside plane p of the buffer.
                        let dst_row =
                            unsafe { std::slice::from_raw_parts_mut(dst.get().add(at), count) };
                        every_nth(dst_row, &src_row[first..], sx);
                    }
                }
            };
            pool.run(n * c * h, 64, &split);
            // SAFETY: the buffer is this thread's and is not touched again until this
            // call returns (the slice is used only inside it).
            unsafe { std::slice::from_raw_parts(buf.as_ptr(), buf.len()) }
        })
    };

    // Output positions along the phase rows, and the tiles covering them.
    let q_end = (out_h - 1) * phased.cols + out_w;
    let lanes = filters_as_lanes_on(geo, isa);
    let want_packed = packed_len(geo, lanes, isa);
    if let Some(packed) = prepacked
        && packed.len() != want_packed
    {
        return Err(KernelError::Shape(format!(
            "{} prepacked filter values for {m} filters of depth {depth} (want {want_packed})",
            packed.len(),
        )));
    }
    let small = pool.threads() == 1 || n * m * out_count * depth < super::SERIAL_MACS;
    if lanes {
        let lanes = FilterLanes {
            isa,
            source,
            offsets: &offsets,
            plane,
            row: phased.cols,
            c,
            cg,
            m,
            mg,
            g,
            n,
            depth,
            out_h,
            out_w,
            small,
            clamp: geo.activation.clamp_bounds(),
        };
        return lanes.run(w, prepacked, bias, out, pool);
    }
    let tiles = q_end.div_ceil(width);
    // Items enough that the threads finish within a small one of each other.
    let wanted = 8 * pool.threads();
    // Tiles per work item: about `tile_elements` of input read (depth x lanes), and
    // enough items to share among the threads.
    let mut chunk = (tile_elements / depth.max(1) / width).max(1).min(tiles);
    if !small {
        let want_chunks = wanted.div_ceil(n * g).min(tiles);
        chunk = chunk.min(tiles.div_ceil(want_chunks.max(1)));
    }
    let chunks = tiles.div_ceil(chunk);
    let column_items = n * g * chunks;
    // Filter blocks are whole panels, so one packing serves every split.
    let panel_total = panel_count(mg, most);
    let filter_blocks = if small || column_items >= wanted {
        1
    } else {
        wanted.div_ceil(column_items).min(panel_total).max(1)
    };
    let panels_per_block = panel_total.div_ceil(filter_blocks);
    let filter_blocks = panel_total.div_ceil(panels_per_block);
    // Block fb of group gi: its panels, as (first filter, height).
    let block_panels = |gi: usize, fb: usize| {
        panels(mg, most)
            .skip(fb * panels_per_block)
            .take(panels_per_block)
            .map(move |(start, height)| (gi * mg + start, height))
    };
    let packed_filters = match prepacked {
        Some(packed) => SyncPtr(packed.as_ptr().cast_mut()),
        None => PACKED_FILTERS.with(|cell| {
            let mut filters = cell.borrow_mut();
            filters.clear();
            filters.resize(m * depth, 0.0);
            pack_groups(w, g, mg, depth, most, &mut filters);
            SyncPtr(filters.as_mut_ptr())
        }),
    };
    let base = SyncPtr(out.as_mut_ptr());
    let items = column_items * filter_blocks;
    let body = |range: std::ops::Range<usize>| {
        let mut segs = Vec::with_capacity(width + 1);
        for item in range {
            let (fb, column_item) = (item % filter_blocks, item / filter_blocks);
            let (b, gi, t) = (
                column_item / (g * chunks),
                column_item / chunks % g,
                column_item % chunks,
            );
            let input = source[(b * c + gi * cg) * plane..].as_ptr();
            // Panel by panel, each over the item's tiles: the stores go to the panel's
            // few filter planes at a time, in long runs, where taking every panel at each
            // tile wrote to all the filters' planes at once (96 planes for a 16 -> 96
            // pointwise expansion at 112x112: 0.75 -> 0.54 ms on one Zen 4 core). The
            // item's input stays in cache for the panels that read it again.
            for (first, height) in block_panels(gi, fb) {
                for tile in t * chunk..((t + 1) * chunk).min(tiles) {
                    let q0 = tile * width;
                    let span = TileSpan {
                        q0,
                        lanes: width,
                        q_end,
                        row: phased.cols,
                        out_w,
                    };
                    segments(span, &mut segs);
                    if segs.is_empty() {
                        continue;
                    }
                    let lanes = (q_end - q0).min(width);
                    let job = Tile {
                        depth,
                        // SAFETY: the packed filters hold `m * depth` elements (checked
                        // above) and are not written while the pool runs.
                        filters: unsafe { packed_filters.get().add(first * depth) },
                        // SAFETY (of the reads): every offset plus every unmasked
                        // lane stays inside this batch's group of channels.
                        input: input.wrapping_add(q0),
                        offsets: offsets.as_ptr(),
                        load_mask: ((1u64 << lanes) - 1) as u32,
                        out: base.get().wrapping_add((b * m + first) * out_count),
                        out_rs: out_count,
                        bias: bias.map(|bs| bs[first..].as_ptr()),
                        clamp: geo.activation.clamp_bounds(),
                        segments: &segs,
                    };
                    // SAFETY: this item alone writes these filters' planes at these
                    // tiles' outputs; the segments keep the stores inside the rows.
                    unsafe { job.run(isa, height) };
                }
            }
        }
    };
    if small {
        body(0..items);
    } else {
        pool.run_each(items, &body);
    }
    Ok(())
}

/// A convolution whose vector lanes are filters and whose rows are runs of output
/// positions (see [`filters_as_lanes_on`]), set up by [`conv2d_on`].
struct FilterLanes<'a> {
    /// The micro-kernels, and with them the lanes and the longest run.
    isa: Isa,
    /// The (phase-split) input, the offset of every tap from a position's first read,
    /// and the elements per channel.
    source: &'a [f32],
    offsets: &'a [u32],
    plane: usize,
    /// Positions per phase row (at least the output width).
    row: usize,
    c: usize,
    cg: usize,
    m: usize,
    mg: usize,
    g: usize,
    n: usize,
    depth: usize,
    out_h: usize,
    out_w: usize,
    /// Whether the convolution runs on the calling thread alone.
    small: bool,
    /// Bounds the sums are clamped to before they are stored (a ReLU or Clip folded into
    /// the convolution, [`super::Activation::clamp_bounds`]).
    clamp: Option<(f32, f32)>,
}

impl FilterLanes<'_> {
    /// Runs of output positions a micro-kernel call takes, as (first position along the
    /// phase rows, first output position, length): within output rows where the phase
    /// rows are wider (the lanes past the width are not computed), else across them; of
    /// up to [`Isa::most_rows`] positions, all about as long.
    fn runs(&self) -> Vec<(usize, usize, usize)> {
        let most = self.isa.most_rows();
        let split = |len: usize| -> Vec<(usize, usize)> { panels(len, most).collect() };
        if self.row == self.out_w {
            split(self.out_h * self.out_w)
                .into_iter()
                .map(|(s, len)| (s, s, len))
                .collect()
        } else {
            let within = split(self.out_w);
            (0..self.out_h)
                .flat_map(|oy| {
                    within
                        .iter()
                        .map(move |&(s, len)| (oy * self.row + s, oy * self.out_w + s, len))
                })
                .collect()
        }
    }

    fn run(
        &self,
        w: &[f32],
        prepacked: Option<&[f32]>,
        bias: Option<&[f32]>,
        out: &mut [f32],
        pool: &ThreadPool,
    ) -> Result<(), KernelError> {
        let (depth, mg, g, width) = (self.depth, self.mg, self.g, self.isa.lanes());
        let panels = mg.div_ceil(width);
        let weights = match prepacked {
            Some(packed) => SyncPtr(packed.as_ptr().cast_mut()),
            None => PACKED_FILTERS.with(|cell| {
                let mut filters = cell.borrow_mut();
                filters.clear();
                filters.resize(g * panels * width * depth, 0.0);
                pack_lanes(w, g, mg, depth, width, &mut filters);
                SyncPtr(filters.as_mut_ptr())
            }),
        };
        let runs = self.runs();
        let out_count = self.out_h * self.out_w;
        let small = self.small;
        // Work items: (batch, group, filter panel, block of runs); a panel's weights stay
        // in cache over its block.
        let panel_items = self.n * g * panels;
        let blocks = if small {
            1
        } else {
            (8 * pool.threads())
                .div_ceil(panel_items)
                .min(runs.len())
                .max(1)
        };
        let per_block = runs.len().div_ceil(blocks);
        let blocks = runs.len().div_ceil(per_block);
        let base = SyncPtr(out.as_mut_ptr());
        let body = |items: std::ops::Range<usize>| {
            for item in items {
                let (block, panel_item) = (item % blocks, item / blocks);
                let (b, gi, j) = (
                    panel_item / (g * panels),
                    panel_item / panels % g,
                    panel_item % panels,
                );
                let first = gi * mg + j * width;
                let filters = width.min(mg - j * width);
                let input = self.source[(b * self.c + gi * self.cg) * self.plane..].as_ptr();
                for &(q0, p0, len) in runs.iter().skip(block * per_block).take(per_block) {
                    let job = LaneTile {
                        depth,
                        // SAFETY (of the reads): the panel lies inside the packed weights.
                        weights: weights
                            .get()
                            .wrapping_add((gi * panels + j) * depth * width),
                        input: input.wrapping_add(q0),
                        offsets: self.offsets.as_ptr(),
                        out: base
                            .get()
                            .wrapping_add((b * self.m + first) * out_count + p0),
                        out_rs: out_count,
                        bias: bias.map(|bs| bs[first..].as_ptr()),
                        clamp: self.clamp,
                        filters,
                    };
                    // SAFETY: this item alone writes these filters' planes at these runs'
                    // positions, all inside the output.
                    unsafe { job.run(self.isa, len) };
                }
            }
        };
        let items = panel_items * blocks;
        if small {
            body(0..items);
        } else {
            pool.run_each(items, &body);
        }
        Ok(())
    }
}

/// One micro-kernel call with filters as lanes: up to [`Isa::lanes`] filters times a run
/// of up to [`Isa::most_rows`] consecutive output positions.
struct LaneTile {
    depth: usize,
    /// The filter panel: depth by depth, [`Isa::lanes`] filters side by side.
    weights: *const f32,
    /// The run's first input position; tap k of position r reads `input + offsets[k] + r`.
    input: *const f32,
    offsets: *const u32,
    /// The first filter's output plane at the run's first position.
    out: *mut f32,
    out_rs: usize,
    bias: Option<*const f32>,
    /// Bounds the sums are clamped to before they are stored (a ReLU or Clip folded into
    /// the convolution, [`super::Activation::clamp_bounds`]).
    clamp: Option<(f32, f32)>,
    /// Filters of the panel that exist (the rest of the lanes are not stored).
    filters: usize,
}

impl LaneTile {
    /// # Safety
    /// The weights, offsets, input and output must address memory as
    /// [`FilterLanes::run`] sets them up for `isa`, for a run of `len` positions, and
    /// nothing else may write those outputs meanwhile.
    unsafe fn run(&self, isa: Isa, len: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            macro_rules! by_len {
                ($isa:ident; $($h:literal)*) => {
                    match len {
                        $($h => unsafe { $isa::lane_tile::<$h>(self) },)*
                        _ => unreachable!("runs hold 1 to {} positions", isa.most_rows()),
                    }
                };
            }
            match isa {
                Isa::Avx512 => by_len!(avx512; 1 2 3 4 5 6 7 8 9 10 11 12),
                Isa::Avx2Fma => by_len!(avx2; 1 2 3 4 5 6),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("the implicit convolution needs x86-64 ({isa:?}, {len} positions)");
    }

    /// Stores the micro-kernel's sums, one row of lanes per position, into the planes of
    /// the panel's existing filters.
    ///
    /// # Safety
    /// As [`LaneTile::run`], for a run of `tile.len()` positions.
    #[cfg(target_arch = "x86_64")]
    unsafe fn store_transposed<const LANES: usize>(&self, tile: &[[f32; LANES]]) {
        for l in 0..self.filters {
            // SAFETY: filter l's plane holds the run's positions, per `run`'s contract.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(self.out.add(l * self.out_rs), tile.len())
            };
            for (d, row) in dst.iter_mut().zip(tile) {
                *d = row[l];
            }
        }
    }
}

thread_local! {
    /// The calling thread's packed filters of the convolution it runs, reused across calls.
    static PACKED_FILTERS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The calling thread's padded, phase-split input, reused across calls.
    static PHASED_INPUT: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One micro-kernel call: a panel of filters times one tile of output positions.
struct Tile<'a> {
    depth: usize,
    filters: *const f32,
    /// The tile's first input position; tap k reads at `input + offsets[k]`.
    input: *const f32,
    offsets: *const u32,
    /// Lanes that read (the last tile's lanes past the end read nothing).
    load_mask: u32,
    /// The panel's first output plane, and the distance between planes.
    out: *mut f32,
    out_rs: usize,
    bias: Option<*const f32>,
    /// Bounds the sums are clamped to before they are stored (a ReLU or Clip folded into
    /// the convolution, [`super::Activation::clamp_bounds`]).
    clamp: Option<(f32, f32)>,
    segments: &'a [Segment],
}

impl Tile<'_> {
    /// # Safety
    /// The filters, offsets, input lanes and segments must address memory as
    /// [`conv2d_on`] sets them up for `isa`, for this tile's `height` rows, and nothing
    /// else may write the stored lanes meanwhile.
    unsafe fn run(&self, isa: Isa, height: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            let masked = self.load_mask != ((1u64 << isa.lanes()) - 1) as u32;
            match isa {
                Isa::Avx512 => {
                    // A last tile of at most 16 lanes computes one vector per row.
                    let half = self.load_mask >> 16 == 0;
                    macro_rules! by_height {
                        ($($h:literal)*) => {
                            match height {
                                // The last tile's loads are masked; the others need no
                                // mask.
                                $($h if half => unsafe { avx512::tile::<$h, true, true>(self) },)*
                                $($h if masked => unsafe {
                                    avx512::tile::<$h, true, false>(self)
                                },)*
                                $($h => unsafe { avx512::tile::<$h, false, false>(self) },)*
                                _ => unreachable!("panels hold 1 to 12 rows"),
                            }
                        };
                    }
                    by_height!(1 2 3 4 5 6 7 8 9 10 11 12)
                }
                Isa::Avx2Fma => {
                    macro_rules! by_height {
                        ($($h:literal)*) => {
                            match height {
                                $($h if masked => unsafe { avx2::tile::<$h, true>(self) },)*
                                $($h => unsafe { avx2::tile::<$h, false>(self) },)*
                                _ => unreachable!("panels hold 1 to 6 rows"),
                            }
                        };
                    }
                    by_height!(1 2 3 4 5 6)
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("the implicit convolution needs x86-64 ({isa:?}, {height} rows)");
    }
}
