//! Two-dimensional f32 depthwise convolutions channels-last, on AVX2 with FMA: eight
//! channels at a time are copied into a zero-bordered `[rows, columns, 8]` block (the
//! layout onnxruntime calls NCHWc, one block at a time), and each vector holds the eight
//! channels of one position, so that every tap of every stride, dilation and kernel
//! size is one multiply-add per vector and a row of positions reads consecutive vectors.
//!
//! The plane-at-a-time path (`depthwise.rs`) runs one multiply-add over a whole plane per
//! tap: on the small planes of late layers (7x7 and 14x14 with 5x5 kernels) and strided
//! ones, those loops are a few dozen elements long, and MobileNetV3's depthwise layers
//! ran at 2-8 GFLOP/s. Here the sums of eight positions stay in registers over all taps,
//! and a block's copy, products and stores follow each other while it is in cache.
//!
//! Grouped convolutions whose groups are eight channels wide in and out (RegNet's) run
//! the same way with one group per block: each tap is then eight multiply-adds per
//! position, a filter column over the group's outputs times one input channel
//! broadcast. As im2col products of 8 filters by 72 rows they ran at 4-15 GFLOP/s.

use super::{ConvGeometry, SyncPtr};
use crate::threads::ThreadPool;

/// Channels in one vector (an AVX2 register of f32), and in one block.
const LANES: usize = 8;

/// Output positions whose sums one micro-kernel call keeps in registers: eight chains of
/// multiply-adds keep both FMA units busy through their latency (four left them half
/// idle), and with the filter and input vectors take 10 of the 16 registers.
const POSITIONS: usize = 8;

/// What one unit of this kernel's work (a multiply-add, or a value copied in) costs in
/// multiply-adds of a packed matrix product, the unit of `SERIAL_MACS`: on one Zen 4
/// core, 0.12 ns against 0.017. Counted as one, late layers (960 channels at 7x7, 576
/// at 14x14 with stride 2) stayed on one thread though they take 45-60 us, and at two
/// threads ran slower than at one; counted as eight, they take 26-34 us there.
const COST_PER_UNIT: usize = 8;

/// Channels per group of the grouped convolutions this file runs (one block).
pub(super) const GROUP_WIDTH: usize = LANES;

/// Whether this CPU runs the channels-last depthwise convolution, and the geometry is
/// one it takes: two spatial axes. (The caller checks that the convolution is depthwise
/// or in groups of [`GROUP_WIDTH`].)
pub(super) fn handles(geo: &ConvGeometry) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        geo.weight.len() == 4
            && geo.strides.len() == 2
            && geo.dilations.len() == 2
            && geo.pads.len() == 4
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = geo;
        false
    }
}

/// The shape of the channels-last problem.
#[derive(Clone, Copy)]
struct Shape {
    /// Input channels each output reads: 1 (depthwise) or [`GROUP_WIDTH`].
    group_width: usize,
    channels: usize,
    /// Channels rounded up to whole blocks (the padding lanes hold zeros).
    lanes: usize,
    in_h: usize,
    in_w: usize,
    /// The bordered block's rows and columns.
    rows: usize,
    cols: usize,
    top: usize,
    left: usize,
    out_h: usize,
    out_w: usize,
    k_h: usize,
    k_w: usize,
    s_h: usize,
    s_w: usize,
    d_h: usize,
    d_w: usize,
}

/// The filters `w` (`[channels, width, k_h, k_w]`, `width` 1 or [`GROUP_WIDTH`]) as
/// `[tap, input channel of the group, channel]` with the channels rounded up to whole
/// blocks (zeros in the padding lanes): what [`conv`] reads, packed once for constant
/// weights.
pub(super) fn pack_filters(w: &[f32], geo: &ConvGeometry) -> Vec<f32> {
    let (channels, width) = (geo.weight[0], geo.weight[1]);
    let lanes = channels.div_ceil(LANES) * LANES;
    let taps = geo.weight[2..].iter().product::<usize>();
    let mut filters = vec![0.0f32; taps * width * lanes];
    for (row_index, row) in filters.chunks_exact_mut(lanes).enumerate() {
        let (t, i) = (row_index / width, row_index % width);
        for (ch, f) in row[..channels].iter_mut().enumerate() {
            *f = w[(ch * width + i) * taps + t];
        }
    }
    filters
}

/// The length of [`pack_filters`]' result.
pub(super) fn packed_len(geo: &ConvGeometry) -> usize {
    geo.weight[0].div_ceil(LANES) * LANES * geo.weight[1..].iter().product::<usize>()
}

thread_local! {
    /// The calling thread's bordered block and its layout (rows, columns, top and left
    /// border), reused across calls: the copy writes the interior only, so the border a
    /// buffer of this layout got once stays zero.
    static BLOCK: std::cell::RefCell<(Option<[usize; 4]>, Vec<f32>)> =
        const { std::cell::RefCell::new((None, Vec::new())) };
}

/// `out = depthwise_conv(x, w) + bias` with the activation of `geo`, for a geometry that
/// [`handles`] accepts, with `out_sp` its output size, and the filters also given packed
/// by [`pack_filters`] where they were packed once. The caller has checked the buffer
/// sizes (the packed filters' included) against the geometry.
///
/// Work items are (batch, channel block, range of output rows): each copies the input
/// rows its outputs read, then computes and stores those outputs.
#[allow(clippy::too_many_arguments)]
pub(super) fn conv(
    x: &[f32],
    w: &[f32],
    prepacked: Option<&[f32]>,
    bias: Option<&[f32]>,
    geo: &ConvGeometry,
    out_sp: &[usize],
    out: &mut [f32],
    pool: &ThreadPool,
) {
    let n = geo.input[0];
    let channels = geo.input[1];
    let lanes = channels.div_ceil(LANES) * LANES;
    let s = Shape {
        group_width: geo.weight[1],
        channels,
        lanes,
        in_h: geo.input[2],
        in_w: geo.input[3],
        rows: geo.input[2] + geo.pads[0] + geo.pads[2],
        cols: geo.input[3] + geo.pads[1] + geo.pads[3],
        top: geo.pads[0],
        left: geo.pads[1],
        out_h: out_sp[0],
        out_w: out_sp[1],
        k_h: geo.weight[2],
        k_w: geo.weight[3],
        s_h: geo.strides[0].max(1),
        s_w: geo.strides[1].max(1),
        d_h: geo.dilations[0].max(1),
        d_w: geo.dilations[1].max(1),
    };
    if s.out_h == 0 || s.out_w == 0 || n == 0 || channels == 0 {
        return;
    }
    let packed_here;
    let filters = match prepacked {
        Some(p) => p,
        None => {
            packed_here = pack_filters(w, geo);
            &packed_here
        }
    };
    let mut start = vec![0.0f32; lanes];
    if let Some(b) = bias {
        start[..channels].copy_from_slice(&b[..channels]);
    }
    let start = start.as_slice();
    let blocks = lanes / LANES;
    // Output rows are split only as far as every thread gets work (a first layer has
    // two or four channel blocks).
    let splits = (2 * pool.threads()).div_ceil(n * blocks).clamp(1, s.out_h);
    let per_split = s.out_h.div_ceil(splits);
    let splits = s.out_h.div_ceil(per_split);
    let base = SyncPtr(out.as_mut_ptr());
    // A ReLU or Clip is folded into the stores; another activation goes over each
    // row's sums before they are stored.
    let clamp = geo.activation.clamp_bounds();
    let after = geo.activation.after_stores();
    let body = |items: std::ops::Range<usize>| {
        BLOCK.with(|cell| {
            let (key, block) = &mut *cell.borrow_mut();
            let layout = [s.rows, s.cols, s.top, s.left];
            if *key != Some(layout) {
                block.clear();
                block.resize(s.rows * s.cols * LANES, 0.0);
                *key = Some(layout);
            }
            let mut sums = vec![0.0f32; s.out_w * LANES];
            for item in items {
                let (b, cb, part) = (
                    item / (blocks * splits),
                    item / splits % blocks,
                    item % splits,
                );
                let c0 = cb * LANES;
                let oy0 = part * per_split;
                let oy1 = (oy0 + per_split).min(s.out_h);
                // The bordered rows these outputs read, as input rows.
                let first = oy0 * s.s_h;
                let last = (oy1 - 1) * s.s_h + (s.k_h - 1) * s.d_h + 1;
                let ys =
                    first.saturating_sub(s.top).min(s.in_h)..last.saturating_sub(s.top).min(s.in_h);
                // SAFETY: the CPU has AVX2 and FMA (`handles`); the block, filters, start
                // and sums have the sizes the shape gives them; this item alone writes
                // rows oy0..oy1 of channels c0..c0 + 8 of batch b, inside `out`.
                unsafe {
                    block_in(x, &s, b, c0, ys, block);
                    for oy in oy0..oy1 {
                        output_row(&s, block, filters, start, oy, c0, &mut sums);
                        // Over the row's sums, whole vectors of positions by channels:
                        // per stored row, a 7x7 map's were single short runs.
                        after.apply(&mut sums);
                        row_out(&sums, &s, b, oy, c0, base.get(), clamp);
                    }
                }
            }
        });
    };
    let total = n * blocks * splits;
    // The copies in and out count with the products: a strided 3x3 layer reads four
    // input values per output and multiplies nine. Each unit costs about as much as
    // COST_PER_UNIT multiply-adds of a packed product (SERIAL_MACS's unit).
    let work =
        n * lanes * (s.out_h * s.out_w * (s.k_h * s.k_w * s.group_width + 1) + s.in_h * s.in_w);
    let min_items = if work * COST_PER_UNIT < super::SERIAL_MACS {
        total
    } else {
        1
    };
    pool.run(total, min_items, &body);
}

/// Copies input rows `ys` of channels `c0..c0 + 8` of batch `b` (those that exist; the
/// other lanes get zeros) into the bordered block, at rows `y + top`: eight columns at a
/// time through a register transpose, a row's last columns under a lane mask.
///
/// # Safety
/// The CPU must have AVX2; `x` holds the `[n, channels, in_h, in_w]` input and `block`
/// `rows * cols * 8` elements.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn block_in(
    x: &[f32],
    s: &Shape,
    b: usize,
    c0: usize,
    ys: std::ops::Range<usize>,
    block: &mut [f32],
) {
    use std::arch::x86_64::*;
    let valid = LANES.min(s.channels - c0);
    for y in ys {
        let from = |i: usize| ((b * s.channels + c0 + i) * s.in_h + y) * s.in_w;
        let to = (y + s.top) * s.cols + s.left;
        for x0 in (0..s.in_w).step_by(LANES) {
            let width = LANES.min(s.in_w - x0);
            // SAFETY: channels c0..c0 + valid and columns x0..x0 + width exist in `x`
            // (masked-off lanes read nothing); the block holds columns left + x0 +
            // width - 1 < cols of row y + top < rows.
            unsafe {
                let mask = lane_mask(width);
                let rows: [__m256; LANES] = std::array::from_fn(|i| {
                    let at = x.as_ptr().add(from(i.min(valid - 1)) + x0);
                    if i >= valid {
                        _mm256_setzero_ps()
                    } else if width == LANES {
                        _mm256_loadu_ps(at)
                    } else {
                        _mm256_maskload_ps(at, mask)
                    }
                });
                let columns = transpose(rows);
                let dst = block.as_mut_ptr().add((to + x0) * LANES);
                if width == LANES {
                    // Spelled out: as a loop, the compiler made eight consecutive stores a
                    // call to memcpy from the stack (a third of a strided layer's time).
                    _mm256_storeu_ps(dst, columns[0]);
                    _mm256_storeu_ps(dst.add(LANES), columns[1]);
                    _mm256_storeu_ps(dst.add(2 * LANES), columns[2]);
                    _mm256_storeu_ps(dst.add(3 * LANES), columns[3]);
                    _mm256_storeu_ps(dst.add(4 * LANES), columns[4]);
                    _mm256_storeu_ps(dst.add(5 * LANES), columns[5]);
                    _mm256_storeu_ps(dst.add(6 * LANES), columns[6]);
                    _mm256_storeu_ps(dst.add(7 * LANES), columns[7]);
                } else {
                    for (j, v) in columns.iter().take(width).enumerate() {
                        _mm256_storeu_ps(dst.add(j * LANES), *v);
                    }
                }
            }
        }
    }
}

/// The sums of output row `oy` at every position for channels `c0..c0 + 8`, as
/// `[position, 8]` into `sums`, [`positions`] eight positions at a time.
///
/// # Safety
/// The CPU must have AVX2 and FMA; `block` holds the bordered block with the rows this
/// output row reads, `filters` `k_h * k_w * lanes`, `start` `lanes` and `sums` `out_w *
/// 8` elements.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn output_row(
    s: &Shape,
    block: &[f32],
    filters: &[f32],
    start: &[f32],
    oy: usize,
    c0: usize,
    sums: &mut [f32],
) {
    // SAFETY (of each call): per this function's contract.
    unsafe {
        // Grouped rows keep the stride a run-time value (`group_positions` reads it from
        // the shape): specialized, RegNet ran 1-3% slower.
        let (depthwise, fixed) = (s.group_width == 1, s.group_width == 1 && s.d_w == 1);
        match (
            if depthwise { s.s_w } else { 0 },
            if fixed { s.k_w } else { 0 },
        ) {
            (1, 3) => output_row_with::<1, 3>(s, block, filters, start, oy, c0, sums),
            (1, 5) => output_row_with::<1, 5>(s, block, filters, start, oy, c0, sums),
            (2, 3) => output_row_with::<2, 3>(s, block, filters, start, oy, c0, sums),
            (2, 5) => output_row_with::<2, 5>(s, block, filters, start, oy, c0, sums),
            (1, _) => output_row_with::<1, 0>(s, block, filters, start, oy, c0, sums),
            (2, _) => output_row_with::<2, 0>(s, block, filters, start, oy, c0, sums),
            _ => output_row_with::<0, 0>(s, block, filters, start, oy, c0, sums),
        }
    }
}

/// [`output_row`] with the column stride `SW` known to the compiler (0: read from the
/// shape), and for an undilated depthwise row the kernel width `KW` (0: any geometry):
/// see [`positions_fixed`].
///
/// # Safety
/// As [`output_row`], with `SW` 0 or `s.s_w`, and `KW` 0 or `s.k_w` of a depthwise
/// convolution with `s.d_w == 1`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn output_row_with<const SW: usize, const KW: usize>(
    s: &Shape,
    block: &[f32],
    filters: &[f32],
    start: &[f32],
    oy: usize,
    c0: usize,
    sums: &mut [f32],
) {
    debug_assert!(block.len() == s.rows * s.cols * LANES && sums.len() == s.out_w * LANES);
    debug_assert!(
        filters.len() == s.k_h * s.k_w * s.group_width * s.lanes && start.len() == s.lanes
    );
    let grouped = s.group_width == GROUP_WIDTH;
    let mut ox = 0;
    while ox + POSITIONS <= s.out_w {
        // SAFETY: per this function's contract; the positions exist.
        unsafe {
            if grouped {
                group_positions::<POSITIONS>(s, block, filters, start, oy, ox, c0, sums)
            } else if KW != 0 {
                positions_fixed::<POSITIONS, SW, KW>(s, block, filters, start, oy, ox, c0, sums)
            } else {
                positions::<POSITIONS, SW>(s, block, filters, start, oy, ox, c0, sums)
            }
        };
        ox += POSITIONS;
    }
    // The rest of the row in one call (a 7-wide row is one call of 7, not 7 of 1).
    macro_rules! rest {
        ($($p:literal)*) => {
            match s.out_w - ox {
                0 => {}
                // SAFETY: as above.
                $($p => unsafe {
                    if grouped {
                        group_positions::<$p>(s, block, filters, start, oy, ox, c0, sums)
                    } else if KW != 0 {
                        positions_fixed::<$p, SW, KW>(s, block, filters, start, oy, ox, c0, sums)
                    } else {
                        positions::<$p, SW>(s, block, filters, start, oy, ox, c0, sums)
                    }
                },)*
                _ => unreachable!("fewer than {POSITIONS} positions remain"),
            }
        };
    }
    rest!(1 2 3 4 5 6 7);
}

/// The sums of `P` consecutive output positions from `ox` of row `oy`, for the eight
/// channels from `c0`: `P` vectors of sums over every tap, each step one filter vector
/// and `P` input vectors.
///
/// # Safety
/// As [`output_row_with`], with `ox + P <= out_w`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn positions<const P: usize, const SW: usize>(
    s: &Shape,
    block: &[f32],
    filters: &[f32],
    start: &[f32],
    oy: usize,
    ox: usize,
    c0: usize,
    sums: &mut [f32],
) {
    use std::arch::x86_64::*;
    // SAFETY (of every access): output (oy, ox + j) reads bordered row oy * s_h + ky * d_h
    // < rows and column (ox + j) * s_w + kx * d_w < cols (the output size is computed so);
    // filters, start and sums as the contract gives them.
    unsafe {
        let sw = if SW == 0 { s.s_w } else { SW };
        let first = _mm256_loadu_ps(start.as_ptr().add(c0));
        let mut acc = [first; P];
        let pixel = |row: usize, col: usize| block.as_ptr().add((row * s.cols + col) * LANES);
        for ky in 0..s.k_h {
            let row = oy * s.s_h + ky * s.d_h;
            for kx in 0..s.k_w {
                let tap = ky * s.k_w + kx;
                let wv = _mm256_loadu_ps(filters.as_ptr().add(tap * s.lanes + c0));
                let col = ox * sw + kx * s.d_w;
                for (j, a) in acc.iter_mut().enumerate() {
                    let xv = _mm256_loadu_ps(pixel(row, col + j * sw));
                    *a = _mm256_fmadd_ps(wv, xv, *a);
                }
            }
        }
        for (j, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(sums.as_mut_ptr().add((ox + j) * LANES), *a);
        }
    }
}

/// [`positions`] for a stride `SW` and width `KW` known to the compiler, undilated: the
/// loops then have constant counts and unroll, each position's input is a fixed
/// displacement (computed at run time, the addresses were a chain of dependent adds),
/// the `KW` filter vectors of a filter row are loaded once, and the compiler merges the
/// loads of one input vector by several taps (a 3-wide stride-1 row of eight positions:
/// 10 loads for 24 multiply-adds). Each sum takes its taps in the same order as in
/// [`positions`], so the results are the same to the bit. A 32-channel 112x112 3x3
/// layer went from 0.22 to 0.15 ms on one Zen 4 core.
///
/// # Safety
/// As [`output_row_with`], with `ox + P <= out_w`, `s.s_w == SW`, `s.k_w == KW` and
/// `s.d_w == 1`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn positions_fixed<const P: usize, const SW: usize, const KW: usize>(
    s: &Shape,
    block: &[f32],
    filters: &[f32],
    start: &[f32],
    oy: usize,
    ox: usize,
    c0: usize,
    sums: &mut [f32],
) {
    use std::arch::x86_64::*;
    debug_assert!(s.s_w == SW && s.k_w == KW && s.d_w == 1);
    // SAFETY (of every access): as in `positions`; span column c is (ox * SW + c) < cols
    // for c < (P - 1) * SW + KW, the last column the last position reads.
    unsafe {
        let first = _mm256_loadu_ps(start.as_ptr().add(c0));
        let mut acc = [first; P];
        for ky in 0..s.k_h {
            let row = oy * s.s_h + ky * s.d_h;
            let taps: [__m256; KW] = std::array::from_fn(|kx| {
                _mm256_loadu_ps(filters.as_ptr().add((ky * KW + kx) * s.lanes + c0))
            });
            let line = block.as_ptr().add((row * s.cols + ox * SW) * LANES);
            // Loops of constant counts the compiler unrolls; the loads of one column by
            // several taps are then one load.
            for (kx, wv) in taps.iter().enumerate() {
                for (j, a) in acc.iter_mut().enumerate() {
                    let xv = _mm256_loadu_ps(line.add((j * SW + kx) * LANES));
                    *a = _mm256_fmadd_ps(*wv, xv, *a);
                }
            }
        }
        for (j, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(sums.as_mut_ptr().add((ox + j) * LANES), *a);
        }
    }
}

/// [`positions`] for a group of eight channels in and out: per tap and input channel of
/// the group, one filter vector (that channel's weight for each output channel) times
/// the input channel broadcast at each position.
///
/// # Safety
/// As [`output_row_with`], with `ox + P <= out_w` and `s.group_width == GROUP_WIDTH`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn group_positions<const P: usize>(
    s: &Shape,
    block: &[f32],
    filters: &[f32],
    start: &[f32],
    oy: usize,
    ox: usize,
    c0: usize,
    sums: &mut [f32],
) {
    use std::arch::x86_64::*;
    // SAFETY (of every access): as in `positions`; each position's vector holds the
    // group's GROUP_WIDTH input channels, and the filters `taps * GROUP_WIDTH * lanes`.
    unsafe {
        let first = _mm256_loadu_ps(start.as_ptr().add(c0));
        let mut acc = [first; P];
        let pixel = |row: usize, col: usize| block.as_ptr().add((row * s.cols + col) * LANES);
        for ky in 0..s.k_h {
            let row = oy * s.s_h + ky * s.d_h;
            for kx in 0..s.k_w {
                let tap = ky * s.k_w + kx;
                let col = ox * s.s_w + kx * s.d_w;
                for i in 0..GROUP_WIDTH {
                    let wv = _mm256_loadu_ps(
                        filters.as_ptr().add((tap * GROUP_WIDTH + i) * s.lanes + c0),
                    );
                    for (j, a) in acc.iter_mut().enumerate() {
                        let xv = _mm256_broadcast_ss(&*pixel(row, col + j * s.s_w).add(i));
                        *a = _mm256_fmadd_ps(wv, xv, *a);
                    }
                }
            }
        }
        for (j, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(sums.as_mut_ptr().add((ox + j) * LANES), *a);
        }
    }
}

/// Stores the sums of output row `oy` (`[position, 8]`, channels `c0..c0 + 8`) into row
/// `oy` of those channels' planes of batch `b` at `out` (the channels that exist),
/// clamped to the folded ReLU's or Clip's bounds (`clamp`): eight positions at a time
/// through a register transpose, a row's last positions by four, two and one lanes.
///
/// # Safety
/// The CPU must have AVX2; `out` addresses the whole `[n, channels, out_h, out_w]` output
/// and nothing else writes these rows meanwhile.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn row_out(
    sums: &[f32],
    s: &Shape,
    b: usize,
    oy: usize,
    c0: usize,
    out: *mut f32,
    clamp: Option<(f32, f32)>,
) {
    use std::arch::x86_64::*;
    let valid = LANES.min(s.channels - c0);
    let at = |i: usize| ((b * s.channels + c0 + i) * s.out_h + oy) * s.out_w;
    for x0 in (0..s.out_w).step_by(LANES) {
        let width = LANES.min(s.out_w - x0);
        // SAFETY: positions x0..x0 + width exist in the sums, and channels c0..c0 + valid
        // at those positions in the output, per the contract.
        unsafe {
            let rows: [__m256; LANES] = std::array::from_fn(|j| {
                if j < width {
                    _mm256_loadu_ps(sums.as_ptr().add((x0 + j) * LANES))
                } else {
                    _mm256_setzero_ps()
                }
            });
            for (i, v) in transpose(rows).iter().take(valid).enumerate() {
                // NaN stays NaN: max and min return their second operand when either
                // is NaN.
                let v = match clamp {
                    Some((low, high)) => {
                        _mm256_min_ps(_mm256_set1_ps(high), _mm256_max_ps(_mm256_set1_ps(low), *v))
                    }
                    None => *v,
                };
                let dst = out.add(at(i) + x0);
                if width == LANES {
                    _mm256_storeu_ps(dst, v);
                } else {
                    // Four, two and one lanes: a masked store is microcoded on some
                    // CPUs (AMD Zen 2 took a quarter of a 7x7 layer's time in it), and
                    // a copy through the stack became a call to memcpy.
                    let (mut part, mut done) = (_mm256_castps256_ps128(v), 0);
                    if width >= 4 {
                        _mm_storeu_ps(dst, part);
                        (part, done) = (_mm256_extractf128_ps::<1>(v), 4);
                    }
                    if width - done >= 2 {
                        _mm_storel_epi64(dst.add(done).cast(), _mm_castps_si128(part));
                        (part, done) = (_mm_movehl_ps(part, part), done + 2);
                    }
                    if width > done {
                        _mm_store_ss(dst.add(done), part);
                    }
                }
            }
        }
    }
}

/// The mask of the first `width` (at most eight) lanes.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2")]
fn lane_mask(width: usize) -> std::arch::x86_64::__m256i {
    const ONES_THEN_ZEROS: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];
    // SAFETY: 8 - width is 0 to 8, so the eight lanes read lie inside the table.
    unsafe {
        std::arch::x86_64::_mm256_loadu_si256(ONES_THEN_ZEROS.as_ptr().add(LANES - width).cast())
    }
}

/// The transpose of an 8 x 8 block held as eight row vectors.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2")]
fn transpose(r: [std::arch::x86_64::__m256; 8]) -> [std::arch::x86_64::__m256; 8] {
    use std::arch::x86_64::*;
    // Pairs of rows interleaved, then pairs of pairs, then the 128-bit halves swapped.
    let t = [
        _mm256_unpacklo_ps(r[0], r[1]),
        _mm256_unpackhi_ps(r[0], r[1]),
        _mm256_unpacklo_ps(r[2], r[3]),
        _mm256_unpackhi_ps(r[2], r[3]),
        _mm256_unpacklo_ps(r[4], r[5]),
        _mm256_unpackhi_ps(r[4], r[5]),
        _mm256_unpacklo_ps(r[6], r[7]),
        _mm256_unpackhi_ps(r[6], r[7]),
    ];
    let u = [
        _mm256_shuffle_ps::<0x44>(t[0], t[2]),
        _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
        _mm256_shuffle_ps::<0x44>(t[1], t[3]),
        _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
        _mm256_shuffle_ps::<0x44>(t[4], t[6]),
        _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
        _mm256_shuffle_ps::<0x44>(t[5], t[7]),
        _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
    ];
    [
        _mm256_permute2f128_ps::<0x20>(u[0], u[4]),
        _mm256_permute2f128_ps::<0x20>(u[1], u[5]),
        _mm256_permute2f128_ps::<0x20>(u[2], u[6]),
        _mm256_permute2f128_ps::<0x20>(u[3], u[7]),
        _mm256_permute2f128_ps::<0x31>(u[0], u[4]),
        _mm256_permute2f128_ps::<0x31>(u[1], u[5]),
        _mm256_permute2f128_ps::<0x31>(u[2], u[6]),
        _mm256_permute2f128_ps::<0x31>(u[3], u[7]),
    ]
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn block_in(
    _x: &[f32],
    _s: &Shape,
    _b: usize,
    _c0: usize,
    _ys: std::ops::Range<usize>,
    _block: &mut [f32],
) {
    unreachable!("the channels-last depthwise convolution needs x86-64")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn output_row(
    _s: &Shape,
    _block: &[f32],
    _filters: &[f32],
    _start: &[f32],
    _oy: usize,
    _c0: usize,
    _sums: &mut [f32],
) {
    unreachable!("the channels-last depthwise convolution needs x86-64")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn row_out(
    _sums: &[f32],
    _s: &Shape,
    _b: usize,
    _oy: usize,
    _c0: usize,
    _out: *mut f32,
    _clamp: Option<(f32, f32)>,
) {
    unreachable!("the channels-last depthwise convolution needs x86-64")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Activation;
    use crate::kernels::conv::tests::reference;

    /// Against the f64 definition: whole and partial channel blocks, rows shorter and
    /// longer than a vector, strides (column strides 1 and 2 with 3- and 5-wide kernels
    /// specialized, others not), dilations, asymmetric pads, batches, the folded ReLU,
    /// Clip and SiLU (with a NaN input, which stays NaN), filters packed once or per call, one and
    /// three threads (whose row splits copy only the rows they read); depthwise and in
    /// groups of eight channels.
    #[test]
    fn matches_the_definition() {
        // Input, kernel, strides, dilations, pads.
        type Case = ([usize; 4], [usize; 2], [usize; 2], [usize; 2], [usize; 4]);
        let cases: [Case; 10] = [
            ([1, 8, 7, 7], [5, 5], [1, 1], [1, 1], [2, 2, 2, 2]),
            ([2, 13, 9, 17], [3, 3], [2, 2], [1, 1], [1, 1, 1, 1]),
            ([1, 20, 14, 14], [5, 5], [2, 2], [1, 1], [2, 2, 2, 2]),
            ([1, 7, 12, 11], [3, 3], [1, 1], [2, 3], [2, 3, 2, 3]),
            ([1, 1, 5, 3], [3, 2], [1, 2], [1, 1], [0, 1, 2, 0]),
            ([2, 9, 16, 16], [7, 7], [1, 1], [1, 1], [3, 3, 3, 3]),
            ([1, 16, 23, 8], [3, 3], [3, 1], [1, 1], [1, 0, 1, 0]),
            ([1, 24, 1, 1], [3, 3], [1, 1], [1, 1], [1, 1, 1, 1]),
            ([1, 32, 40, 40], [3, 3], [1, 1], [1, 1], [1, 1, 1, 1]),
            // A column stride the kernels do not specialize.
            ([1, 5, 10, 29], [3, 3], [2, 3], [1, 1], [1, 1, 1, 1]),
        ];
        let numel = |d: &[usize]| d.iter().product::<usize>();
        let value = |i: usize, salt: usize| ((i * 7919 + salt * 104_729) % 199) as f32 / 50.0 - 2.0;
        // Groups of eight channels: RegNet's 3x3 (plain and strided), and odd sizes.
        let grouped: [Case; 4] = [
            ([1, 48, 14, 14], [3, 3], [1, 1], [1, 1], [1, 1, 1, 1]),
            ([2, 16, 15, 9], [3, 3], [2, 2], [1, 1], [1, 1, 1, 1]),
            ([1, 24, 5, 12], [3, 1], [1, 3], [2, 1], [2, 0, 1, 1]),
            ([1, 8, 1, 1], [1, 1], [1, 1], [1, 1], [0, 0, 0, 0]),
        ];
        let all = cases
            .iter()
            .map(|c| (c, 1))
            .chain(grouped.iter().map(|c| (c, GROUP_WIDTH)));
        for (&(input, kernel, strides, dilations, pads), width) in all {
            let c = input[1];
            let relu6 = Activation::Clip {
                low: 0.0,
                high: 6.0,
            };
            for activation in [Activation::None, Activation::Relu, Activation::Silu, relu6] {
                let geo = ConvGeometry {
                    input: input.to_vec(),
                    weight: vec![c, width, kernel[0], kernel[1]],
                    strides: strides.to_vec(),
                    pads: pads.to_vec(),
                    dilations: dilations.to_vec(),
                    group: c / width,
                    activation,
                };
                if !handles(&geo) {
                    return;
                }
                let out_sp = geo.out_spatial().unwrap();
                let mut x: Vec<f32> = (0..numel(&geo.input)).map(|i| value(i, 1)).collect();
                x[numel(&input) / 2] = f32::NAN;
                let w: Vec<f32> = (0..numel(&geo.weight)).map(|i| value(i, 2)).collect();
                let bias: Vec<f32> = (0..c).map(|i| value(i, 3)).collect();
                let wide = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
                let mut want = reference(&wide(&x), &wide(&w), &wide(&bias), &geo);
                match activation {
                    Activation::None => {}
                    Activation::Relu => want
                        .iter_mut()
                        .for_each(|v| *v = if *v < 0.0 { 0.0 } else { *v }),
                    Activation::Silu => want.iter_mut().for_each(|v| *v /= 1.0 + (-*v).exp()),
                    Activation::Clip { low, high } => want.iter_mut().for_each(|v| {
                        let up = if *v < f64::from(low) {
                            f64::from(low)
                        } else {
                            *v
                        };
                        *v = if up > f64::from(high) {
                            f64::from(high)
                        } else {
                            up
                        };
                    }),
                    Activation::Gelu => unreachable!("not among the cases"),
                }
                let packed = pack_filters(&w, &geo);
                assert_eq!(packed.len(), packed_len(&geo));
                for threads in [1, 3] {
                    let pool = ThreadPool::new(threads);
                    for prepacked in [None, Some(packed.as_slice())] {
                        let mut got = vec![-7.0f32; want.len()];
                        conv(
                            &x,
                            &w,
                            prepacked,
                            Some(&bias),
                            &geo,
                            &out_sp,
                            &mut got,
                            &pool,
                        );
                        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                            let close = if b.is_nan() {
                                a.is_nan()
                            } else {
                                (*a as f64 - b).abs() < 1e-4 * b.abs().max(1.0)
                            };
                            assert!(close, "{geo:?} threads {threads}: [{i}] {a} vs {b}");
                        }
                    }
                }
            }
        }
    }
}
