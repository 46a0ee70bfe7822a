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
//! Filters are packed once per call into panels of up to 12 rows, laid out depth by
//! depth, so the micro-kernel broadcasts one filter value per row and step and keeps
//! 2 x 12 sums in registers over the whole depth.

use super::contraction::{ConvGeometry, KernelError, SyncPtr};
use crate::pool::ThreadPool;

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

/// Rows per panel for `rows` filters: as few panels as hold them, all about as tall
/// (64 filters: five of 11 and one of 9, not five of 12 and one of 4, whose micro-kernel
/// would keep too few sums in flight).
fn panel_rows(rows: usize) -> usize {
    rows.div_ceil(rows.div_ceil(MOST_PANEL_ROWS).max(1)).max(1)
}

/// Packs `rows` filters (`a`, row-major, `depth` apart) into panels of `panel_rows(rows)`
/// rows: panel by panel, depth by depth, the panel's rows side by side. `packed` holds
/// `rows * depth` elements; a panel starting at row `r` starts at `r * depth`.
fn pack_rows(a: &[f32], rows: usize, depth: usize, packed: &mut [f32]) {
    let per = panel_rows(rows);
    for first in (0..rows).step_by(per) {
        let height = per.min(rows - first);
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

/// The filters `w` of `geo` packed for [`conv2d`]: per group, panels of
/// `panel_rows(filters per group)` rows (see [`pack_rows`]).
pub(crate) fn pack_filters(w: &[f32], geo: &ConvGeometry) -> Vec<f32> {
    let (m, g) = (geo.weight[0], geo.group.max(1));
    let depth: usize = geo.weight[1..].iter().product();
    let mut packed = vec![0.0; m * depth];
    pack_groups(w, g, m / g, depth, &mut packed);
    packed
}

/// Packs the `g` groups of `mg` filters each.
fn pack_groups(w: &[f32], g: usize, mg: usize, depth: usize, packed: &mut [f32]) {
    for gi in 0..g {
        let span = gi * mg * depth..(gi + 1) * mg * depth;
        pack_rows(&w[span.clone()], mg, depth, &mut packed[span]);
    }
}

/// `conv` for a convolution [`handles`] takes; `geo` validated by the caller (groups
/// divide the channels, buffer sizes match). `prepacked` are the filters from
/// [`pack_filters`] where the caller keeps them (constant weights); without, they are
/// packed here. `tile_elements` sizes the work items as for im2col tiles.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv2d(
    x: &[f32],
    w: &[f32],
    prepacked: Option<&[f32]>,
    bias: Option<&[f32]>,
    geo: &ConvGeometry,
    out: &mut [f32],
    pool: &ThreadPool,
    tile_elements: usize,
) -> Result<(), KernelError> {
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
            let split = |planes: std::ops::Range<usize>| {
                for p in planes {
                    let src = &x[p * h * wd..(p + 1) * h * wd];
                    for y in 0..h {
                        let py = y + pt;
                        if !read_y[py % sy] {
                            continue;
                        }
                        let row_base = p * plane
                            + ((py % sy) * sx) * phased.rows * phased.cols
                            + (py / sy) * phased.cols;
                        let src_row = &src[y * wd..(y + 1) * wd];
                        if sx == 1 {
                            // SAFETY: as below; the row lies inside plane p.
                            let dst = unsafe {
                                std::slice::from_raw_parts_mut(dst.get().add(row_base + pl), wd)
                            };
                            dst.copy_from_slice(src_row);
                            continue;
                        }
                        for phase in (0..sx).filter(|&p| read_x[p]) {
                            // The first column of this phase, and where it lands.
                            let first = (phase + sx - pl % sx) % sx;
                            let at =
                                row_base + phase * phased.rows * phased.cols + (first + pl) / sx;
                            for (j, &v) in src_row.iter().skip(first).step_by(sx).enumerate() {
                                // SAFETY: plane p of the buffer is written by this call
                                // only, and every position lies inside it.
                                unsafe { *dst.get().add(at + j) = v };
                            }
                        }
                    }
                }
            };
            pool.run(n * c, (n * c).div_ceil(pool.threads()).max(16), &split);
            // SAFETY: the buffer is this thread's and is not touched again until this
            // call returns (the slice is used only inside it).
            unsafe { std::slice::from_raw_parts(buf.as_ptr(), buf.len()) }
        })
    };

    // Output positions along the phase rows, and the tiles covering them.
    let q_end = (out_h - 1) * phased.cols + out_w;
    let tiles = q_end.div_ceil(TILE_LANES);
    let threads = pool.threads();
    let small = threads == 1 || n * m * out_count * depth < super::contraction::SERIAL_MACS;
    let wanted = 2 * threads;
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
    let per = panel_rows(mg);
    let panels = mg.div_ceil(per);
    let filter_blocks = if small || column_items >= wanted {
        1
    } else {
        wanted.div_ceil(column_items).min(panels).max(1)
    };
    let panels_per_block = panels.div_ceil(filter_blocks);
    let filter_blocks = panels.div_ceil(panels_per_block);
    let block_filters = |gi: usize, fb: usize| {
        gi * mg + fb * panels_per_block * per..gi * mg + ((fb + 1) * panels_per_block * per).min(mg)
    };
    let packed_filters = match prepacked {
        Some(packed) if packed.len() == m * depth => SyncPtr(packed.as_ptr().cast_mut()),
        Some(packed) => {
            return Err(KernelError::Shape(format!(
                "{} prepacked filter values for {} filters of depth {depth}",
                packed.len(),
                m
            )));
        }
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
            let rows = block_filters(gi, fb);
            let input = source[(b * c + gi * cg) * plane..].as_ptr();
            for first in (rows.start..rows.end).step_by(per) {
                let height = per.min(rows.end - first);
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
                        segments: &segs,
                    };
                    // SAFETY: this item alone writes these filters' planes at these
                    // tiles' outputs; the segments keep the stores inside the rows.
                    unsafe { job.run(height) };
                }
            }
        }
    };
    pool.run(items, if small { items } else { 1 }, &body);
    Ok(())
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
            macro_rules! by_height {
                ($($h:literal)*) => {
                    match height {
                        $($h => unsafe { self.kernel::<$h>() },)*
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
    /// whole depth (each step: one offset, two input loads and one broadcast per row).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn kernel<const H: usize>(&self) {
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
        if self.load_mask == u32::MAX {
            for k in 0..self.depth {
                // SAFETY: per `run`'s contract.
                unsafe {
                    let at = self.input.add(*self.offsets.add(k) as usize);
                    let lo = _mm512_loadu_ps(at);
                    let hi = _mm512_loadu_ps(at.add(16));
                    for (r, sums) in acc.iter_mut().enumerate() {
                        let w = _mm512_set1_ps(*a.add(r));
                        sums[0] = _mm512_fmadd_ps(w, lo, sums[0]);
                        sums[1] = _mm512_fmadd_ps(w, hi, sums[1]);
                    }
                    a = a.add(H);
                }
            }
        } else {
            for k in 0..self.depth {
                // SAFETY: per `run`'s contract; masked-off lanes read nothing.
                unsafe {
                    let at = self.input.wrapping_add(*self.offsets.add(k) as usize);
                    let lo = _mm512_maskz_loadu_ps(lo_mask, at);
                    let hi = _mm512_maskz_loadu_ps(hi_mask, at.wrapping_add(16));
                    for (r, sums) in acc.iter_mut().enumerate() {
                        let w = _mm512_set1_ps(*a.add(r));
                        sums[0] = _mm512_fmadd_ps(w, lo, sums[0]);
                        sums[1] = _mm512_fmadd_ps(w, hi, sums[1]);
                    }
                    a = a.add(H);
                }
            }
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

    #[test]
    fn panels_are_about_as_tall() {
        assert_eq!(panel_rows(64), 11);
        assert_eq!(panel_rows(12), 12);
        assert_eq!(panel_rows(13), 7);
        assert_eq!(panel_rows(1), 1);
        assert_eq!(panel_rows(0), 1);
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
