//! Two-dimensional f32 convolutions on AVX-512 as implicit matrix products: no im2col
//! matrix; a register-blocked micro-kernel reads each filter tap's input run in place.
//!
//! The input is copied once into a zero-padded, phase-split form (skipped when there is
//! no padding and no stride): input position `(y, x)` goes to phase `(y % sy, x % sx)`,
//! row `y / sy`, column `x / sx`. In that form output `(oy, ox)` reads tap `(ky, kx)` at
//! one fixed offset from `oy * row + ox`, for every stride and dilation, so 32
//! consecutive outputs of a row read 32 consecutive inputs. Outputs are numbered
//! `q = oy * row + ox` over the phase's rows (`row` may exceed the output width: those
//! few lanes are computed and not stored), and the kernel walks q in 32-lane tiles.
//!
//! Filters are packed into panels of up to 12 rows, laid out depth by depth, so the
//! micro-kernel broadcasts one filter value per row and step and keeps 2 x 12 sums in
//! registers over the whole depth: once per program for constant weights (the caller
//! keeps [`pack_filters`]'s result), per call otherwise. Where output rows are short, the
//! lanes are 32 filters instead ([`filters_as_lanes`]).

use super::conv::ConvOperands;
use super::{ConvGeometry, KernelError, SyncPtr, column_phases, every_nth};
use crate::threads::ThreadPool;

/// Output positions one micro-kernel call computes: two 16-lane vectors.
const TILE_LANES: usize = 32;

/// Most filters one micro-kernel call computes: 12 x 2 accumulators, two input vectors
/// and a broadcast leave 5 of the 32 vector registers.
const MOST_PANEL_ROWS: usize = 12;

/// Whether this CPU runs the implicit convolution.
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Panels for `rows` filters (or runs for `rows` positions): as few as hold them at up
/// to 12 each, all as tall as can be (64 filters: four of 11 and two of 10, not five of 12
/// and one of 4, whose micro-kernel would keep too few sums in flight). Panel `i` starts
/// at `panel_start(rows, i)`.
fn panel_count(rows: usize) -> usize {
    rows.div_ceil(MOST_PANEL_ROWS).max(1)
}

/// Where panel `i` of [`panel_count`]`(rows)` starts (`i == panel_count` gives `rows`).
fn panel_start(rows: usize, i: usize) -> usize {
    let count = panel_count(rows);
    i * (rows / count) + i.min(rows % count)
}

/// The panels of `rows` as (start, height).
fn panels(rows: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..panel_count(rows))
        .map(move |i| {
            let start = panel_start(rows, i);
            (start, panel_start(rows, i + 1) - start)
        })
        .filter(|&(_, height)| height > 0)
}

/// Packs `rows` filters (`a`, row-major, `depth` apart) into the panels of [`panels`]:
/// panel by panel, depth by depth, the panel's rows side by side. `packed` holds
/// `rows * depth` elements; a panel starting at row `r` starts at `r * depth`.
fn pack_rows(a: &[f32], rows: usize, depth: usize, packed: &mut [f32]) {
    for (first, height) in panels(rows) {
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

/// The segments of the tile starting at `q0`: one per output row it touches, without
/// the lanes past the output width or past `q_end`.
fn segments(q0: usize, q_end: usize, row: usize, out_w: usize, into: &mut Vec<Segment>) {
    into.clear();
    let end = (q0 + TILE_LANES).min(q_end);
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
/// 1x1 or a stride: those have their own loop), AVX-512.
pub(crate) fn handles(geo: &ConvGeometry) -> bool {
    let (g, m) = (geo.group.max(1), geo.weight[0]);
    let depthwise = geo.weight[1] == 1
        && m == g
        && (geo.weight[2..].iter().any(|&k| k != 1)
            || geo.strides.iter().any(|&s| s != 1)
            || geo.pads.iter().any(|&p| p != 0));
    geo.weight.len() == 4 && geo.input.len() == 4 && !depthwise && available()
}

/// The filters `w` of `geo` packed for [`conv2d`]: per group, the panels of [`panels`]
/// (see [`pack_rows`]), or where the filters are the lanes ([`filters_as_lanes`]),
/// panels of 32 filters (see [`pack_lanes`]).
pub(crate) fn pack_filters(w: &[f32], geo: &ConvGeometry) -> Vec<f32> {
    let (m, g) = (geo.weight[0], geo.group.max(1));
    let depth: usize = geo.weight[1..].iter().product();
    let lanes = filters_as_lanes(geo);
    let mut packed = vec![0.0; packed_len(geo, lanes)];
    if lanes {
        pack_lanes(w, g, m / g, depth, &mut packed);
    } else {
        pack_groups(w, g, m / g, depth, &mut packed);
    }
    packed
}

/// Elements of [`pack_filters`]'s result; `lanes` is [`filters_as_lanes`]`(geo)`.
fn packed_len(geo: &ConvGeometry, lanes: bool) -> usize {
    let (m, g) = (geo.weight[0], geo.group.max(1));
    let depth: usize = geo.weight[1..].iter().product();
    if lanes {
        g * (m / g).div_ceil(TILE_LANES) * TILE_LANES * depth
    } else {
        m * depth
    }
}

/// Packs the `g` groups of `mg` filters each as lane panels: panel by panel, depth by
/// depth, 32 filters side by side (zeros past the group's last filter).
fn pack_lanes(w: &[f32], g: usize, mg: usize, depth: usize, packed: &mut [f32]) {
    let panels = mg.div_ceil(TILE_LANES);
    for gi in 0..g {
        for j in 0..panels {
            let panel = &mut packed[(gi * panels + j) * depth * TILE_LANES..][..depth * TILE_LANES];
            panel.fill(0.0);
            for l in 0..TILE_LANES.min(mg - j * TILE_LANES) {
                let filter = gi * mg + j * TILE_LANES + l;
                for (k, &v) in w[filter * depth..(filter + 1) * depth].iter().enumerate() {
                    panel[k * TILE_LANES + l] = v;
                }
            }
        }
    }
}

/// Whether [`conv2d`] makes the filters its vector lanes (and runs of output positions
/// its rows) rather than the other way round: where the output rows are short, position
/// lanes compute many lanes past a row's end (a 7x7 map fills 49 of 64), while filter
/// lanes waste none where the filters come in 32s, at the price of transposing each
/// result tile into the output planes (about a cycle per value, the cost of 16 more
/// steps of depth in these units; 1x1 256->1024 at 14x14 ran 4% faster with filter lanes,
/// which 24 would not have chosen).
pub(crate) fn filters_as_lanes(geo: &ConvGeometry) -> bool {
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
    let position_lanes = q_end.next_multiple_of(TILE_LANES) * mg * depth;
    let filter_lanes = out_h * out_w * mg.next_multiple_of(TILE_LANES) * (depth + 16);
    // Ties go to position lanes, which store without a transpose.
    filter_lanes * 20 < position_lanes * 19
}

/// Packs the `g` groups of `mg` filters each.
fn pack_groups(w: &[f32], g: usize, mg: usize, depth: usize, packed: &mut [f32]) {
    for gi in 0..g {
        let span = gi * mg * depth..(gi + 1) * mg * depth;
        pack_rows(&w[span.clone()], mg, depth, &mut packed[span]);
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
    let lanes = filters_as_lanes(geo);
    let want_packed = packed_len(geo, lanes);
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
            relu: geo.activation == super::Activation::Relu,
        };
        return lanes.run(w, prepacked, bias, out, pool);
    }
    let tiles = q_end.div_ceil(TILE_LANES);
    // Items enough that the threads finish within a small one of each other.
    let wanted = 8 * pool.threads();
    // Tiles per work item: about `tile_elements` of input read (depth x lanes), and
    // enough items to share among the threads.
    let mut chunk = (tile_elements / depth.max(1) / TILE_LANES)
        .max(1)
        .min(tiles);
    if !small {
        let want_chunks = wanted.div_ceil(n * g).min(tiles);
        chunk = chunk.min(tiles.div_ceil(want_chunks.max(1)));
    }
    let chunks = tiles.div_ceil(chunk);
    let column_items = n * g * chunks;
    // Filter blocks are whole panels, so one packing serves every split.
    let panel_total = panel_count(mg);
    let filter_blocks = if small || column_items >= wanted {
        1
    } else {
        wanted.div_ceil(column_items).min(panel_total).max(1)
    };
    let panels_per_block = panel_total.div_ceil(filter_blocks);
    let filter_blocks = panel_total.div_ceil(panels_per_block);
    // Block fb of group gi: its panels, as (first filter, height).
    let block_panels = |gi: usize, fb: usize| {
        panels(mg)
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
            pack_groups(w, g, mg, depth, &mut filters);
            SyncPtr(filters.as_mut_ptr())
        }),
    };
    let base = SyncPtr(out.as_mut_ptr());
    let items = column_items * filter_blocks;
    let body = |range: std::ops::Range<usize>| {
        let mut segs = Vec::with_capacity(TILE_LANES + 1);
        for item in range {
            let (fb, column_item) = (item % filter_blocks, item / filter_blocks);
            let (b, gi, t) = (
                column_item / (g * chunks),
                column_item / chunks % g,
                column_item % chunks,
            );
            let input = source[(b * c + gi * cg) * plane..].as_ptr();
            for (first, height) in block_panels(gi, fb) {
                // SAFETY: the packed filters hold `m * depth` elements (checked above)
                // and are not written while the pool runs.
                let panel = unsafe { packed_filters.get().add(first * depth) };
                for tile in t * chunk..((t + 1) * chunk).min(tiles) {
                    let q0 = tile * TILE_LANES;
                    segments(q0, q_end, phased.cols, out_w, &mut segs);
                    if segs.is_empty() {
                        continue;
                    }
                    let lanes = (q_end - q0).min(TILE_LANES);
                    let job = Tile {
                        depth,
                        filters: panel,
                        // SAFETY (of the reads): every offset plus every unmasked
                        // lane stays inside this batch's group of channels.
                        input: input.wrapping_add(q0),
                        offsets: offsets.as_ptr(),
                        load_mask: ((1u64 << lanes) - 1) as u32,
                        out: base.get().wrapping_add((b * m + first) * out_count),
                        out_rs: out_count,
                        bias: bias.map(|bs| bs[first..].as_ptr()),
                        relu: geo.activation == super::Activation::Relu,
                        segments: &segs,
                    };
                    // SAFETY: this item alone writes these filters' planes at these
                    // tiles' outputs; the segments keep the stores inside the rows.
                    unsafe { job.run(height) };
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

/// A convolution whose vector lanes are 32 filters and whose rows are runs of up to 12
/// output positions (see [`filters_as_lanes`]), set up by [`conv2d`].
struct FilterLanes<'a> {
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
    /// Negative sums are stored as zero (a ReLU folded into the convolution).
    relu: bool,
}

impl FilterLanes<'_> {
    /// Runs of output positions a micro-kernel call takes, as (first position along the
    /// phase rows, first output position, length): within output rows where the phase
    /// rows are wider (the lanes past the width are not computed), else across them; of
    /// up to 12 positions, all about as long.
    fn runs(&self) -> Vec<(usize, usize, usize)> {
        let split = |len: usize| -> Vec<(usize, usize)> { panels(len).collect() };
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
        let (depth, mg, g) = (self.depth, self.mg, self.g);
        let panels = mg.div_ceil(TILE_LANES);
        let weights = match prepacked {
            Some(packed) => SyncPtr(packed.as_ptr().cast_mut()),
            None => PACKED_FILTERS.with(|cell| {
                let mut filters = cell.borrow_mut();
                filters.clear();
                filters.resize(g * panels * TILE_LANES * depth, 0.0);
                pack_lanes(w, g, mg, depth, &mut filters);
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
                let first = gi * mg + j * TILE_LANES;
                let filters = TILE_LANES.min(mg - j * TILE_LANES);
                let input = self.source[(b * self.c + gi * self.cg) * self.plane..].as_ptr();
                for &(q0, p0, len) in runs.iter().skip(block * per_block).take(per_block) {
                    let job = LaneTile {
                        depth,
                        // SAFETY (of the reads): the panel lies inside the packed weights.
                        weights: weights
                            .get()
                            .wrapping_add((gi * panels + j) * depth * TILE_LANES),
                        input: input.wrapping_add(q0),
                        offsets: self.offsets.as_ptr(),
                        out: base
                            .get()
                            .wrapping_add((b * self.m + first) * out_count + p0),
                        out_rs: out_count,
                        bias: bias.map(|bs| bs[first..].as_ptr()),
                        relu: self.relu,
                        filters,
                    };
                    // SAFETY: this item alone writes these filters' planes at these runs'
                    // positions, all inside the output.
                    unsafe { job.run(len) };
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

/// One micro-kernel call with filters as lanes: up to 32 filters times a run of up to 12
/// consecutive output positions.
struct LaneTile {
    depth: usize,
    /// The filter panel: depth by depth, 32 filters side by side.
    weights: *const f32,
    /// The run's first input position; tap k of position r reads `input + offsets[k] + r`.
    input: *const f32,
    offsets: *const u32,
    /// The first filter's output plane at the run's first position.
    out: *mut f32,
    out_rs: usize,
    bias: Option<*const f32>,
    /// Negative sums are stored as zero (a ReLU folded into the convolution).
    relu: bool,
    /// Filters of the panel that exist (the rest of the lanes are not stored).
    filters: usize,
}

impl LaneTile {
    /// # Safety
    /// The weights, offsets, input and output must address memory as
    /// [`FilterLanes::run`] sets them up, for a run of `len` positions, and nothing else
    /// may write those outputs meanwhile.
    unsafe fn run(&self, len: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            macro_rules! by_len {
                ($($h:literal)*) => {
                    match len {
                        $($h => unsafe { self.kernel::<$h>() },)*
                        _ => unreachable!("runs hold 1 to {MOST_PANEL_ROWS} positions"),
                    }
                };
            }
            by_len!(1 2 3 4 5 6 7 8 9 10 11 12)
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("the implicit convolution needs x86-64 ({len} positions)");
    }

    /// The micro-kernel for runs of `H` positions: `2 * H` sums over the whole depth,
    /// each step two weight loads and one broadcast input per position; the sums are then
    /// transposed into the filters' planes through a stack tile.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn kernel<const H: usize>(&self) {
        use std::arch::x86_64::*;
        let filter_mask = ((1u64 << self.filters) - 1) as u32;
        let start = match self.bias {
            // SAFETY: one bias value per existing filter; masked lanes read nothing.
            Some(bias) => unsafe {
                [
                    _mm512_maskz_loadu_ps(filter_mask as u16, bias),
                    _mm512_maskz_loadu_ps((filter_mask >> 16) as u16, bias.wrapping_add(16)),
                ]
            },
            None => [_mm512_setzero_ps(); 2],
        };
        let mut acc = [start; H];
        let mut weights = self.weights;
        for k in 0..self.depth {
            // SAFETY: per `run`'s contract.
            unsafe {
                let lo = _mm512_loadu_ps(weights);
                let hi = _mm512_loadu_ps(weights.add(16));
                let at = self.input.add(*self.offsets.add(k) as usize);
                for (r, sums) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_ps(*at.add(r));
                    sums[0] = _mm512_fmadd_ps(x, lo, sums[0]);
                    sums[1] = _mm512_fmadd_ps(x, hi, sums[1]);
                }
                weights = weights.add(TILE_LANES);
            }
        }
        if self.relu {
            clamp_at_zero(&mut acc);
        }
        let mut tile = [[0.0f32; TILE_LANES]; H];
        for (sums, row) in acc.iter().zip(tile.iter_mut()) {
            // SAFETY: each stack row holds 32 values.
            unsafe {
                _mm512_storeu_ps(row.as_mut_ptr(), sums[0]);
                _mm512_storeu_ps(row.as_mut_ptr().add(16), sums[1]);
            }
        }
        for l in 0..self.filters {
            // SAFETY: filter l's plane holds the run's H positions, per `run`'s contract.
            let dst = unsafe { std::slice::from_raw_parts_mut(self.out.add(l * self.out_rs), H) };
            for (d, row) in dst.iter_mut().zip(&tile) {
                *d = row[l];
            }
        }
    }
}

/// A folded ReLU on a micro-kernel's register sums: `max(0, x)` returns x when x is NaN
/// (the second operand), as the reference's NaN-propagating max.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
fn clamp_at_zero(acc: &mut [[std::arch::x86_64::__m512; 2]]) {
    use std::arch::x86_64::*;
    let zero = _mm512_setzero_ps();
    for sums in acc {
        *sums = [_mm512_max_ps(zero, sums[0]), _mm512_max_ps(zero, sums[1])];
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
    /// Negative sums are stored as zero (a ReLU folded into the convolution).
    relu: bool,
    segments: &'a [Segment],
}

impl Tile<'_> {
    /// # Safety
    /// The filters, offsets, input lanes and segments must address memory as
    /// [`conv2d`] sets them up, for this tile's `height` rows, and nothing else may
    /// write the stored lanes meanwhile.
    unsafe fn run(&self, height: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            let masked = self.load_mask != u32::MAX;
            macro_rules! by_height {
                ($($h:literal)*) => {
                    match height {
                        // The last tile's loads are masked; the others need no mask.
                        $($h if masked => unsafe { self.kernel::<$h, true>() },)*
                        $($h => unsafe { self.kernel::<$h, false>() },)*
                        _ => unreachable!("panels hold 1 to {MOST_PANEL_ROWS} rows"),
                    }
                };
            }
            by_height!(1 2 3 4 5 6 7 8 9 10 11 12)
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("the implicit convolution needs x86-64 ({height} rows)");
    }

    /// The micro-kernel for panels of `H` rows: `2 * H` sums stay in registers over the
    /// whole depth (each step: one offset, two input loads and one broadcast per row);
    /// `MASKED` loads only the lanes of `load_mask`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn kernel<const H: usize, const MASKED: bool>(&self) {
        use std::arch::x86_64::*;
        let mut acc = [[_mm512_setzero_ps(); 2]; H];
        if let Some(bias) = self.bias {
            for (r, sums) in acc.iter_mut().enumerate() {
                // SAFETY: one bias value per row of the panel.
                let v = _mm512_set1_ps(unsafe { *bias.add(r) });
                *sums = [v, v];
            }
        }
        let (lo_mask, hi_mask) = (self.load_mask as u16, (self.load_mask >> 16) as u16);
        let mut a = self.filters;
        for k in 0..self.depth {
            // SAFETY: per `run`'s contract; masked-off lanes read nothing.
            unsafe {
                let at = self.input.wrapping_add(*self.offsets.add(k) as usize);
                let (lo, hi) = if MASKED {
                    (
                        _mm512_maskz_loadu_ps(lo_mask, at),
                        _mm512_maskz_loadu_ps(hi_mask, at.wrapping_add(16)),
                    )
                } else {
                    (_mm512_loadu_ps(at), _mm512_loadu_ps(at.wrapping_add(16)))
                };
                for (r, sums) in acc.iter_mut().enumerate() {
                    let w = _mm512_set1_ps(*a.add(r));
                    sums[0] = _mm512_fmadd_ps(w, lo, sums[0]);
                    sums[1] = _mm512_fmadd_ps(w, hi, sums[1]);
                }
                a = a.add(H);
            }
        }
        if self.relu {
            clamp_at_zero(&mut acc);
        }
        for (r, sums) in acc.iter().enumerate() {
            let plane = self.out.wrapping_add(r * self.out_rs);
            for seg in self.segments {
                let at = plane.wrapping_offset(seg.offset);
                // SAFETY: per `run`'s contract; masked-off lanes store nothing.
                unsafe {
                    _mm512_mask_storeu_ps(at, seg.mask as u16, sums[0]);
                    _mm512_mask_storeu_ps(at.wrapping_add(16), (seg.mask >> 16) as u16, sums[1]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Activation;

    /// The definition of a 2-D convolution with bias, in f64.
    fn reference(x: &[f32], w: &[f32], bias: &[f32], geo: &ConvGeometry) -> Vec<f64> {
        let [n, c, h, wd] = geo.input[..] else {
            unreachable!()
        };
        let [m, cg, kh, kw] = geo.weight[..] else {
            unreachable!()
        };
        let out_sp = geo.out_spatial().unwrap();
        let (oh, ow, g) = (out_sp[0], out_sp[1], geo.group);
        let mut out = vec![0.0; n * m * oh * ow];
        for b in 0..n {
            for f in 0..m {
                let gi = f / (m / g);
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut sum = f64::from(bias[f]);
                        for ci in 0..cg {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let y = (oy * geo.strides[0] + ky * geo.dilations[0])
                                        .checked_sub(geo.pads[0]);
                                    let xx = (ox * geo.strides[1] + kx * geo.dilations[1])
                                        .checked_sub(geo.pads[1]);
                                    let (Some(y), Some(xx)) = (y, xx) else {
                                        continue;
                                    };
                                    if y >= h || xx >= wd {
                                        continue;
                                    }
                                    let xv = x[((b * c + gi * cg + ci) * h + y) * wd + xx];
                                    let wv = w[((f * cg + ci) * kh + ky) * kw + kx];
                                    sum += f64::from(xv) * f64::from(wv);
                                }
                            }
                        }
                        out[((b * m + f) * oh + oy) * ow + ox] = sum;
                    }
                }
            }
        }
        out
    }

    /// Both layouts (filters or positions as lanes), with filters packed per call and
    /// prepacked, on one and three threads, against the definition.
    #[test]
    fn both_layouts_match_the_definition() {
        if !available() {
            eprintln!("no AVX-512 on this CPU: the implicit convolution is not used here");
            return;
        }
        // (input, weight, strides, pads, dilations, group)
        #[allow(clippy::type_complexity)]
        let cases: Vec<(
            Vec<usize>,
            Vec<usize>,
            [usize; 2],
            [usize; 4],
            [usize; 2],
            usize,
        )> = vec![
            (
                vec![1, 16, 9, 9],
                vec![96, 16, 3, 3],
                [1, 1],
                [1, 1, 1, 1],
                [1, 1],
                1,
            ),
            (
                vec![1, 64, 7, 7],
                vec![40, 64, 1, 1],
                [1, 1],
                [0, 0, 0, 0],
                [1, 1],
                1,
            ),
            (
                vec![2, 32, 7, 7],
                vec![64, 32, 1, 1],
                [1, 1],
                [0, 0, 0, 0],
                [1, 1],
                1,
            ),
            (
                vec![1, 8, 15, 14],
                vec![70, 4, 3, 3],
                [2, 2],
                [1, 0, 2, 1],
                [1, 1],
                2,
            ),
            (
                vec![1, 6, 30, 33],
                vec![12, 6, 3, 3],
                [1, 1],
                [1, 1, 1, 1],
                [1, 1],
                1,
            ),
            (
                vec![1, 6, 30, 33],
                vec![12, 6, 3, 5],
                [2, 3],
                [2, 1, 0, 3],
                [2, 1],
                1,
            ),
            (
                vec![1, 1, 28, 28],
                vec![32, 1, 3, 3],
                [1, 1],
                [0, 0, 0, 0],
                [1, 1],
                1,
            ),
            (
                vec![1, 32, 13, 13],
                vec![64, 32, 3, 3],
                [1, 1],
                [0, 0, 0, 0],
                [1, 1],
                1,
            ),
            (
                vec![1, 12, 5, 5],
                vec![33, 12, 2, 2],
                [1, 1],
                [0, 0, 0, 0],
                [2, 2],
                1,
            ),
        ];
        let mut layouts = [false; 2];
        for (input, weight, strides, pads, dilations, group) in cases {
            let geo = ConvGeometry {
                input,
                weight,
                strides: strides.to_vec(),
                pads: pads.to_vec(),
                dilations: dilations.to_vec(),
                group,
                activation: Activation::None,
            };
            assert!(handles(&geo), "{geo:?}");
            layouts[usize::from(filters_as_lanes(&geo))] = true;
            let value =
                |i: usize, salt: usize| ((i * 7919 + salt * 104_729) % 199) as f32 / 50.0 - 2.0;
            let x: Vec<f32> = (0..geo.input.iter().product())
                .map(|i| value(i, 1))
                .collect();
            let w: Vec<f32> = (0..geo.weight.iter().product())
                .map(|i| value(i, 2))
                .collect();
            let bias: Vec<f32> = (0..geo.weight[0]).map(|i| value(i, 3)).collect();
            let want = reference(&x, &w, &bias, &geo);
            let packed = pack_filters(&w, &geo);
            for threads in [1, 3] {
                let pool = ThreadPool::new(threads);
                for prepacked in [None, Some(&packed[..])] {
                    let mut got = vec![f32::NAN; want.len()];
                    let operands = ConvOperands {
                        x: &x,
                        w: &w,
                        prepacked,
                        bias: Some(&bias),
                    };
                    conv2d(operands, &geo, &mut got, &pool, 1 << 16).unwrap();
                    for (i, (&a, &b)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (f64::from(a) - b).abs() < 1e-4 * b.abs().max(1.0),
                            "{geo:?} threads {threads} prepacked {}: [{i}] {a} vs {b}",
                            prepacked.is_some()
                        );
                    }
                }
            }
        }
        assert_eq!(layouts, [true, true], "the cases cover both layouts");
    }

    #[test]
    fn a_short_prepacked_buffer_is_an_error() {
        if !available() {
            return;
        }
        let geo = ConvGeometry {
            input: vec![1, 2, 4, 4],
            weight: vec![3, 2, 3, 3],
            strides: vec![1, 1],
            pads: vec![0; 4],
            dilations: vec![1, 1],
            group: 1,
            activation: Activation::None,
        };
        let (x, w) = (vec![1.0; 32], vec![1.0; 54]);
        let mut out = vec![0.0; 12];
        let operands = ConvOperands {
            x: &x,
            w: &w,
            prepacked: Some(&[0.0; 5]),
            bias: None,
        };
        let err = conv2d(operands, &geo, &mut out, &ThreadPool::new(1), 1 << 16);
        assert!(matches!(err, Err(KernelError::Shape(_))), "{err:?}");
    }

    #[test]
    fn panels_are_about_as_tall() {
        let heights = |rows: usize| panels(rows).map(|(_, h)| h).collect::<Vec<_>>();
        assert_eq!(heights(64), [11, 11, 11, 11, 10, 10]);
        assert_eq!(heights(12), [12]);
        assert_eq!(heights(13), [7, 6]);
        assert_eq!(heights(169).iter().filter(|&&h| h == 12).count(), 4);
        assert_eq!(heights(169).iter().sum::<usize>(), 169);
        assert_eq!(heights(1), [1]);
        assert!(heights(0).is_empty());
        assert_eq!(
            panels(40).map(|(s, _)| s).collect::<Vec<_>>(),
            [0, 10, 20, 30]
        );
    }

    #[test]
    fn packed_panels_interleave_their_rows() {
        // 13 rows of depth 2 -> panels of 7 and 6 rows.
        let a: Vec<f32> = (0..26).map(|i| i as f32).collect();
        let mut packed = vec![0.0; 26];
        pack_rows(&a, 13, 2, &mut packed);
        let first: Vec<f32> = (0..7).flat_map(|r| [2.0 * r as f32]).collect();
        assert_eq!(packed[..7], first[..]);
        assert_eq!(packed[7], 1.0);
        assert_eq!(packed[14], 14.0);
        assert_eq!(packed[14 + 6], 15.0);
    }

    #[test]
    fn tiles_split_at_rows_and_skip_the_lanes_past_the_width() {
        let mut segs = Vec::new();
        // Rows of 10 positions, 8 of them outputs: the tile at 0 covers rows 0-3.
        segments(0, 100, 10, 8, &mut segs);
        assert_eq!(
            segs,
            vec![
                Segment {
                    offset: 0,
                    mask: 0xff
                },
                Segment {
                    offset: 8 - 10,
                    mask: 0xff << 10
                },
                Segment {
                    offset: 16 - 20,
                    mask: 0xff << 20
                },
                Segment {
                    offset: 24 - 30,
                    mask: 0b11 << 30
                },
            ]
        );
        // The last tile stops at q_end.
        segments(32, 35, 10, 8, &mut segs);
        assert_eq!(
            segs,
            vec![Segment {
                offset: 26,
                mask: 0b111
            }]
        );
        // One wide row: all lanes in one segment.
        segments(64, 1000, 500, 500, &mut segs);
        assert_eq!(
            segs,
            vec![Segment {
                offset: 64,
                mask: u32::MAX
            }]
        );
    }
}
