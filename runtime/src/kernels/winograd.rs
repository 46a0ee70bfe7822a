//! 3x3, unit-stride, undilated, ungrouped f32 convolutions by Winograd's minimal
//! filtering F(4x4, 3x3) on AVX-512: 36 multiplications per 4x4 output tile and
//! input-filter channel pair instead of 144, at the price of three transforms; on maps
//! too small for 4x4 tiles (7x7), F(2x2, 3x3): 16 instead of 36.
//!
//! Following Lavin and Gray ("Fast Algorithms for Convolutional Neural Networks", 2015),
//! each 4x4 output tile `Y` of a channel pair is `A^T [(G g G^T) ⊙ (B^T d B)] A` for the
//! 3x3 filter `g` and the 6x6 input patch `d` the tile reads. Summed over the input
//! channels, the element-wise products become 36 matrix products, one per point `ξ` of
//! the 6x6 transformed tile: `M[ξ] = U[ξ] V[ξ]`, with `U[ξ]` the transformed filters
//! (output channels by input channels, packed once per program for constant weights)
//! and `V[ξ]` the transformed input (input channels by tiles). F(2x2, 3x3) is the same
//! with 2x2 tiles, 4x4 patches and 16 points.
//!
//! The tiles of all images are numbered in one sequence and taken in chunks whose
//! transformed input and products fit in the cache; each chunk runs three passes over
//! the threads: the input transform (channel by channel, 16 tiles to a vector), the 36
//! products (a micro-kernel of up to 12 output channels by 32 or 16 tiles, its sums in
//! registers over the whole depth), and the output transform with the bias and a folded
//! ReLU or Clip (output channel by output channel). The transformed filters are computed
//! in f64 and rounded once; the input and output transforms round at each step, as a
//! direct convolution's sums do.

use super::conv::ConvOperands;
use super::implicit::{pack_rows, panels};
use super::{ConvGeometry, KernelError, SyncPtr};
use crate::threads::ThreadPool;
use std::cell::RefCell;

/// The two algorithms: F(4x4, 3x3) and F(2x2, 3x3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Minimal {
    F4,
    F2,
}

impl Minimal {
    /// Outputs along each side of a tile.
    const fn tile(self) -> usize {
        match self {
            Minimal::F4 => 4,
            Minimal::F2 => 2,
        }
    }

    /// Inputs along each side of the patch a tile reads: `tile + 3 - 1`.
    const fn alpha(self) -> usize {
        self.tile() + 2
    }

    /// Points of a transformed tile: one matrix product each.
    const fn points(self) -> usize {
        self.alpha() * self.alpha()
    }

    /// `G`, the filter transform `U = G g G^T` (`alpha` rows).
    fn g(self) -> &'static [[f64; 3]] {
        match self {
            Minimal::F4 => &G4,
            Minimal::F2 => &G2,
        }
    }
}
/// Tiles one product micro-kernel call computes (two 16-lane vectors).
const LANES: usize = 32;
/// Tiles one transform step handles (one vector).
const GROUP: usize = 16;
/// Most output channels one product micro-kernel call computes.
const MOST_ROWS: usize = 12;
/// Bytes per thread that a chunk's transformed input and products may take together.
/// Each chunk costs three passes over the threads, so chunks are as large as the
/// caches allow: on Zen 4 (1 MB of L2 per core, 32 MB of L3) 64 -> 64 at 56x56 ran as
/// fast at 1 and 2 MB on one thread, and at two threads in 0.58 ms at 1 MB a thread,
/// 0.47 at 2 and 0.43 at 4 (the implicit product: 1.12 ms).
const CHUNK_BYTES: usize = 2 << 20;

/// `G` of F(4x4, 3x3).
const G4: [[f64; 3]; 6] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// `G` of F(2x2, 3x3).
const G2: [[f64; 3]; 4] = [
    [1.0, 0.0, 0.0],
    [0.5, 0.5, 0.5],
    [0.5, -0.5, 0.5],
    [0.0, 0.0, 1.0],
];

thread_local! {
    /// The calling thread's transformed input and products, kept between calls.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Each thread's zero-padded input strips for the input transform.
    static STRIPS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The algorithm [`conv`] runs the convolution `geo` (output spatial sizes `out_sp`) by
/// on this CPU, if any: one it can run ([`fits`]) with enough
/// work to pay for the transforms ([`pays`]), F(4x4, 3x3) where it pays.
pub(crate) fn choose(geo: &ConvGeometry, out_sp: &[usize]) -> Option<Minimal> {
    if !fits(geo, out_sp) {
        return None;
    }
    pick(
        geo.input[1],
        geo.weight[0],
        geo.input[0],
        [out_sp[0], out_sp[1]],
    )
}

/// [`choose`] for `cin -> cout` channels over `images` output maps of `out` positions.
fn pick(cin: usize, cout: usize, images: usize, out: [usize; 2]) -> Option<Minimal> {
    [Minimal::F4, Minimal::F2].into_iter().find(|&minimal| {
        let tile = minimal.tile();
        let tiles = images * out[0].div_ceil(tile) * out[1].div_ceil(tile);
        pays(minimal, cin, cout, images * out[0] * out[1], tiles)
    })
}

/// Whether the Winograd algorithms compute `geo` on this CPU: AVX-512, two spatial
/// axes, a 3x3 window at unit strides and dilations, one group.
fn fits(geo: &ConvGeometry, out_sp: &[usize]) -> bool {
    #[cfg(target_arch = "x86_64")]
    let avx512 = std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    let avx512 = false;
    avx512
        && geo.input.len() == 4
        && geo.weight.len() == 4
        && geo.weight[2..] == [3, 3]
        && geo.strides == [1, 1]
        && geo.dilations == [1, 1]
        && geo.group.max(1) == 1
        && out_sp.len() == 2
}

/// Whether `cin -> cout` channels over `outputs` output positions in `tiles` tiles run
/// faster by `minimal` than as an implicit product (timings on Zen 4, both paths
/// interleaved in one process, at one and two threads). The products' depth is `cin`
/// and the transforms cost per channel and tile, yet even thin layers gain from F(4x4,
/// 3x3) (8 -> 16 at 112x112: 0.89x the time at one thread, 0.91x at two; 16 -> 16 at
/// 56x56: 0.71x and 0.94x). The tiles are computed whole, 16 to a vector: where too few
/// of the computed positions are outputs, the waste eats the saving (64 -> 64 at 10x10,
/// 9 tiles of which 39% are outputs: 0.82x and 0.96x; at 9x9, 32%: 0.96x and 1.17x; 512
/// -> 512 at 7x7, 19%: 1.93x). F(2x2, 3x3) saves less (16 products instead of 36 per
/// four outputs) and, on the small maps it is for, has little work to split over the
/// threads: it pays on wide layers (7x7: 512 -> 512 0.82x and 0.78x, 256 -> 256 0.66x
/// and 0.93x, 160 -> 320 0.67x and 1.04x; 8x8: 128 -> 128 0.55x and 0.79x) but not thin
/// ones (7x7: 32 -> 128 0.95x and 1.45x; 9x9: 64 -> 64 0.94x and 1.42x).
fn pays(minimal: Minimal, cin: usize, cout: usize, outputs: usize, tiles: usize) -> bool {
    let tile = minimal.tile();
    let computed = tiles.next_multiple_of(GROUP) * tile * tile;
    match minimal {
        Minimal::F4 => cin >= 8 && cout >= 16 && 8 * outputs >= 3 * computed,
        Minimal::F2 => {
            cin >= 64 && cout >= 64 && cin * cout >= 128 * 128 && 8 * outputs >= 3 * computed
        }
    }
}

/// Elements of [`pack_filters`]'s result: a transformed filter per point and channel
/// pair.
pub(crate) fn packed_len(geo: &ConvGeometry, minimal: Minimal) -> usize {
    minimal.points() * geo.weight[0] * geo.weight[1]
}

/// The transformed filters `U[ξ] = (G g G^T)[ξ]` of `w` (`[M, C, 3, 3]`): point by
/// point, `M x C` matrices packed in panels of up to 12 output channels, depth (input
/// channel) by depth.
pub(crate) fn pack_filters(w: &[f32], geo: &ConvGeometry, minimal: Minimal) -> Vec<f32> {
    let (m, c) = (geo.weight[0], geo.weight[1]);
    let (g_matrix, alpha) = (minimal.g(), minimal.alpha());
    let mut points = vec![0.0f32; packed_len(geo, minimal)];
    for (pair, g) in w.chunks_exact(9).enumerate() {
        // G g (alpha x 3), then (G g) G^T (alpha x alpha), in f64.
        let gg: Vec<[f64; 3]> = g_matrix
            .iter()
            .map(|row| {
                std::array::from_fn(|j| (0..3).map(|i| row[i] * f64::from(g[i * 3 + j])).sum())
            })
            .collect();
        for a in 0..alpha {
            for b in 0..alpha {
                let u: f64 = (0..3).map(|j| gg[a][j] * g_matrix[b][j]).sum();
                points[(a * alpha + b) * m * c + pair] = u as f32;
            }
        }
    }
    let mut packed = vec![0.0f32; points.len()];
    for (point, packed) in points
        .chunks_exact(m * c)
        .zip(packed.chunks_exact_mut(m * c))
    {
        pack_rows(point, m, c, MOST_ROWS, packed);
    }
    packed
}

/// Where the tiles lie: per image `rows x cols` tiles of `tile x tile` outputs.
#[derive(Clone, Copy)]
struct Tiling {
    tile: usize,
    rows: usize,
    cols: usize,
    in_h: usize,
    in_w: usize,
    out_h: usize,
    out_w: usize,
    pad_top: usize,
    pad_left: usize,
}

impl Tiling {
    /// Where tile `t` lies.
    fn place(&self, t: usize) -> TilePlace {
        let per_image = self.rows * self.cols;
        let (image, row, col) = (t / per_image, t % per_image / self.cols, t % self.cols);
        let (out_y, out_x) = (row * self.tile, col * self.tile);
        TilePlace {
            image,
            out_y,
            out_x,
            strip: 0,
        }
    }
}

/// Where a tile lies: its image, its first output row and column, and the chunk's strip
/// of input rows that holds its patch.
#[derive(Clone, Copy, Debug)]
struct TilePlace {
    image: usize,
    out_y: usize,
    out_x: usize,
    strip: usize,
}

/// Floats from one point's matrix of `rows` rows of `stride` to the next: one cache line
/// more than the matrix, so the 36 rows that a transform reads or writes for a channel
/// do not all fall in one set of the first-level cache (at 64 rows of 64 tiles, the
/// matrices are 16 KB apart, a multiple of the 4 KB that the set index spans).
fn point_block(rows: usize, stride: usize) -> usize {
    rows * stride + GROUP
}

/// The shapes of one call: channels, tiles, and the chunk's padded lane count.
struct Chunk<'a> {
    cin: usize,
    cout: usize,
    /// The chunk's tile count.
    tiles: usize,
    /// `tiles` rounded up to whole vectors: the row length of `V` and `M`.
    stride: usize,
    /// Floats from one point's matrix of `V` (and of `M`) to the next ([`point_block`]).
    v_block: usize,
    m_block: usize,
    /// Where each of the chunk's tiles lies (worked out once, not per channel).
    places: &'a [TilePlace],
    /// The chunk's tile rows, in order: image and first input row (negative in the
    /// padding) of each strip of `alpha` input rows.
    strips: &'a [(usize, isize)],
}

/// The convolution `geo` (validated by the caller) by `minimal`, the algorithm
/// [`choose`] gave; `operands.prepacked` are [`pack_filters`]'s for constant weights,
/// packed here otherwise. Applies a ReLU or Clip of `geo.activation` as it stores; the
/// caller applies any other activation.
pub(crate) fn conv(
    operands: ConvOperands<'_, f32>,
    geo: &ConvGeometry,
    out_sp: &[usize],
    minimal: Minimal,
    out: &mut [f32],
    pool: &ThreadPool,
) -> Result<(), KernelError> {
    let chunk_bytes = CHUNK_BYTES * pool.threads();
    conv_in_chunks(operands, geo, out_sp, out, pool, minimal, chunk_bytes)
}

/// [`conv`] with chunks of transformed input and products of about `chunk_bytes`.
fn conv_in_chunks(
    operands: ConvOperands<'_, f32>,
    geo: &ConvGeometry,
    out_sp: &[usize],
    out: &mut [f32],
    pool: &ThreadPool,
    minimal: Minimal,
    chunk_bytes: usize,
) -> Result<(), KernelError> {
    if !fits(geo, out_sp) {
        return Err(KernelError::Shape(
            "the Winograd convolution needs AVX-512 and a 3x3, unit-stride, ungrouped window"
                .into(),
        ));
    }
    let ConvOperands {
        x,
        w,
        prepacked,
        bias,
    } = operands;
    let (n, cin, in_h, in_w) = (geo.input[0], geo.input[1], geo.input[2], geo.input[3]);
    let cout = geo.weight[0];
    let (out_h, out_w) = (out_sp[0], out_sp[1]);
    let packed_here;
    let filters = match prepacked {
        Some(p) if p.len() == packed_len(geo, minimal) => p,
        Some(_) => {
            return Err(KernelError::Shape(
                "the prepacked Winograd filters do not match the convolution".into(),
            ));
        }
        None => {
            packed_here = pack_filters(w, geo, minimal);
            &packed_here[..]
        }
    };
    if bias.is_some_and(|b| b.len() != cout) {
        return Err(KernelError::Shape(format!(
            "{} bias values for {cout} filters",
            bias.map_or(0, <[f32]>::len)
        )));
    }
    let tiling = Tiling {
        tile: minimal.tile(),
        rows: out_h.div_ceil(minimal.tile()),
        cols: out_w.div_ceil(minimal.tile()),
        in_h,
        in_w,
        out_h,
        out_w,
        pad_top: geo.pads[0],
        pad_left: geo.pads[1],
    };
    let total = n * tiling.rows * tiling.cols;
    let points = minimal.points();
    let per_tile = points * (cin + cout) * std::mem::size_of::<f32>();
    let chunk_tiles = (chunk_bytes / per_tile / LANES * LANES).max(LANES);
    let clamp = geo.activation.clamp_bounds();
    SCRATCH.with(|cell| {
        let mut scratch = cell.borrow_mut();
        let stride = chunk_tiles.min(total).next_multiple_of(GROUP);
        let v_len = points * point_block(cin, stride);
        let need = v_len + points * point_block(cout, stride);
        if scratch.len() < need {
            scratch.resize(need, 0.0);
        }
        let (v, m) = scratch[..need].split_at_mut(v_len);
        let (v, m) = (SyncPtr(v.as_mut_ptr()), SyncPtr(m.as_mut_ptr()));
        let out = SyncPtr(out.as_mut_ptr());
        let mut places = Vec::with_capacity(chunk_tiles.min(total));
        let mut strips = Vec::new();
        let row_panels: Vec<(usize, usize)> = panels(cout, MOST_ROWS).collect();
        for first in (0..total).step_by(chunk_tiles) {
            let tiles = chunk_tiles.min(total - first);
            let stride = tiles.next_multiple_of(GROUP);
            places.clear();
            strips.clear();
            for t in first..first + tiles {
                let mut place = tiling.place(t);
                let y0 = place.out_y as isize - tiling.pad_top as isize;
                if strips.last() != Some(&(place.image, y0)) {
                    strips.push((place.image, y0));
                }
                place.strip = strips.len() - 1;
                places.push(place);
            }
            let chunk = Chunk {
                cin,
                cout,
                tiles,
                stride,
                v_block: point_block(cin, stride),
                m_block: point_block(cout, stride),
                places: &places,
                strips: &strips,
            };
            pool.run(cin, 1, &|channels| {
                for ch in channels {
                    // SAFETY: AVX-512 (fits); each channel's rows of V are written by
                    // one item, inside the scratch (need).
                    unsafe {
                        match minimal {
                            Minimal::F4 => transform_input::<6>(x, ch, &tiling, &chunk, v.get()),
                            Minimal::F2 => transform_input::<4>(x, ch, &tiling, &chunk, v.get()),
                        }
                    };
                }
            });
            pool.run_each(points * row_panels.len(), &|items| {
                for item in items {
                    let (point, (first_row, height)) =
                        (item / row_panels.len(), row_panels[item % row_panels.len()]);
                    // SAFETY: AVX-512; point `point`'s V rows were written by the pass
                    // above; each (point, panel) block of M is written by one item.
                    unsafe {
                        multiply(
                            &filters[point * cout * cin + first_row * cin..][..height * cin],
                            height,
                            v.get().add(point * chunk.v_block),
                            m.get()
                                .add(point * chunk.m_block + first_row * chunk.stride),
                            &chunk,
                        )
                    };
                }
            });
            pool.run(cout, 1, &|filters| {
                for f in filters {
                    let start = bias.map_or(0.0, |b| b[f]);
                    // SAFETY: AVX-512; M was written by the pass above; each output
                    // channel's tiles are stored by one item, inside `out` (validated by
                    // the caller).
                    let (m, out) = (m.get(), out.get());
                    unsafe {
                        match minimal {
                            Minimal::F4 => {
                                transform_output::<4, 6>(m, f, start, clamp, &tiling, &chunk, out)
                            }
                            Minimal::F2 => {
                                transform_output::<2, 4>(m, f, start, clamp, &tiling, &chunk, out)
                            }
                        }
                    };
                }
            });
        }
    });
    Ok(())
}

/// Input channel `ch`'s transformed patches `B^T d B` of the chunk's tiles into `V[ξ][ch]`
/// (zeros in the lanes past the chunk's last tile).
///
/// The `A` input rows of each tile row in the chunk are first copied into a strip
/// `tile * tiling.cols + 2` wide with the padding as zeros, so every patch is `A` runs of
/// `A` floats: each run is read as 4-float loads (floats 0-3, and 2-5 for six-wide
/// patches), and a 4x4 transpose in each 128-bit lane of four tiles' loads gives a
/// column of the patch as a vector of 16 tiles.
///
/// # Safety
/// The CPU has AVX-512F; `v` addresses `A * A * chunk.v_block` floats; `A` is the
/// algorithm's patch side (6 or 4).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transform_input<const A: usize>(
    x: &[f32],
    ch: usize,
    tiling: &Tiling,
    chunk: &Chunk,
    v: *mut f32,
) {
    use std::arch::x86_64::*;
    let plane_len = tiling.in_h * tiling.in_w;
    let width = tiling.cols * tiling.tile + 2;
    STRIPS.with(|cell| {
        let mut strips = cell.borrow_mut();
        // One more strip of zeros, read by the lanes past the chunk's last tile.
        let len = (chunk.strips.len() + 1) * A * width;
        strips.clear();
        strips.resize(len, 0.0);
        let copied = tiling.in_w.min(width.saturating_sub(tiling.pad_left));
        for (strip, &(image, y0)) in chunk.strips.iter().enumerate() {
            let plane = &x[(image * chunk.cin + ch) * plane_len..][..plane_len];
            for i in 0..A {
                let y = y0 + i as isize;
                if (0..tiling.in_h as isize).contains(&y) && copied > 0 {
                    let row = &plane[y as usize * tiling.in_w..][..copied];
                    let at = (strip * A + i) * width + tiling.pad_left;
                    strips[at..at + copied].copy_from_slice(row);
                }
            }
        }
        let zeros = chunk.strips.len() * A * width;
        for lane0 in (0..chunk.stride).step_by(GROUP) {
            let corners: [usize; GROUP] = std::array::from_fn(|lane| {
                chunk
                    .places
                    .get(lane0 + lane)
                    .map_or(zeros, |place| place.strip * A * width + place.out_x)
            });
            // patch[i][j]: row i, column j of the 16 tiles' patches.
            let mut patch = [[_mm512_setzero_ps(); A]; A];
            for (i, row) in patch.iter_mut().enumerate() {
                // SAFETY: each corner's strip holds A rows of `width` floats, and a
                // patch's columns end at its corner plus A <= width.
                let load = |offset: usize| -> [__m512; 4] {
                    let runs: [__m128; GROUP] = std::array::from_fn(|lane| unsafe {
                        _mm_loadu_ps(strips.as_ptr().add(corners[lane] + i * width + offset))
                    });
                    transpose_in_lanes(std::array::from_fn(|l| {
                        let v = _mm512_castps128_ps512(runs[l]);
                        let v = _mm512_insertf32x4::<1>(v, runs[4 + l]);
                        let v = _mm512_insertf32x4::<2>(v, runs[8 + l]);
                        _mm512_insertf32x4::<3>(v, runs[12 + l])
                    }))
                };
                // Columns 0-3, and for six-wide patches 4-5 from the run at 2.
                let first = load(0);
                let last = if A > 4 { load(2) } else { first };
                *row = std::array::from_fn(|j| if j < 4 { first[j] } else { last[j - 2] });
            }
            // B^T d: down each patch column; then (B^T d) B: along each row.
            let mut columns = [[_mm512_setzero_ps(); A]; A];
            for j in 0..A {
                let t = input_rows::<A>(std::array::from_fn(|i| patch[i][j]));
                for (column, value) in columns.iter_mut().zip(t) {
                    column[j] = value;
                }
            }
            for (a, row) in columns.iter().enumerate() {
                for (b, value) in input_rows::<A>(*row).into_iter().enumerate() {
                    let point = a * A + b;
                    // SAFETY: lane0 + 16 <= stride; the row lies inside V (contract).
                    unsafe {
                        _mm512_storeu_ps(
                            v.add(point * chunk.v_block + ch * chunk.stride + lane0),
                            value,
                        )
                    };
                }
            }
        }
    });
}

/// A 4x4 transpose within each 128-bit lane of `rows`: float `j` of lane `k` of row `l`
/// becomes float `l` of lane `k` of row `j`.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
fn transpose_in_lanes(rows: [std::arch::x86_64::__m512; 4]) -> [std::arch::x86_64::__m512; 4] {
    use std::arch::x86_64::*;
    let (low01, high01) = (
        _mm512_unpacklo_ps(rows[0], rows[1]),
        _mm512_unpackhi_ps(rows[0], rows[1]),
    );
    let (low23, high23) = (
        _mm512_unpacklo_ps(rows[2], rows[3]),
        _mm512_unpackhi_ps(rows[2], rows[3]),
    );
    [
        _mm512_shuffle_ps::<0x44>(low01, low23),
        _mm512_shuffle_ps::<0xEE>(low01, low23),
        _mm512_shuffle_ps::<0x44>(high01, high23),
        _mm512_shuffle_ps::<0xEE>(high01, high23),
    ]
}

/// `B^T d` for the `A` values `d` of a patch column (one vector of tiles each).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
fn input_rows<const A: usize>(d: [std::arch::x86_64::__m512; A]) -> [std::arch::x86_64::__m512; A] {
    use std::arch::x86_64::*;
    if A == 4 {
        // F(2x2, 3x3): d0 - d2, d1 + d2, d2 - d1, d1 - d3.
        let rows = [
            _mm512_sub_ps(d[0], d[2]),
            _mm512_add_ps(d[1], d[2]),
            _mm512_sub_ps(d[2], d[1]),
            _mm512_sub_ps(d[1], d[3]),
        ];
        return std::array::from_fn(|i| rows[i]);
    }
    let k = |v: f32| _mm512_set1_ps(v);
    let d4_d2 = _mm512_sub_ps(d[4], d[2]);
    let rows = [
        // 4 d0 - 5 d2 + d4
        _mm512_fmadd_ps(k(4.0), d[0], _mm512_fmadd_ps(k(-5.0), d[2], d[4])),
        // -4 (d1 + d2) + (d3 + d4)
        _mm512_fmadd_ps(
            k(-4.0),
            _mm512_add_ps(d[1], d[2]),
            _mm512_add_ps(d[3], d[4]),
        ),
        // 4 (d1 - d2) + (d4 - d3)
        _mm512_fmadd_ps(k(4.0), _mm512_sub_ps(d[1], d[2]), _mm512_sub_ps(d[4], d[3])),
        // 2 (d3 - d1) + (d4 - d2)
        _mm512_fmadd_ps(k(2.0), _mm512_sub_ps(d[3], d[1]), d4_d2),
        // 2 (d1 - d3) + (d4 - d2)
        _mm512_fmadd_ps(k(2.0), _mm512_sub_ps(d[1], d[3]), d4_d2),
        // 4 d1 - 5 d3 + d5
        _mm512_fmadd_ps(k(4.0), d[1], _mm512_fmadd_ps(k(-5.0), d[3], d[5])),
    ];
    std::array::from_fn(|i| rows[i])
}

/// `A^T m` for the `A` values `m` of a transformed column (one vector of tiles each):
/// `T` outputs.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
fn output_rows<const T: usize, const A: usize>(
    m: [std::arch::x86_64::__m512; A],
) -> [std::arch::x86_64::__m512; T] {
    use std::arch::x86_64::*;
    if A == 4 {
        // F(2x2, 3x3): m0 + m1 + m2, m1 - m2 - m3.
        let rows = [
            _mm512_add_ps(_mm512_add_ps(m[0], m[1]), m[2]),
            _mm512_sub_ps(_mm512_sub_ps(m[1], m[2]), m[3]),
        ];
        return std::array::from_fn(|i| rows[i]);
    }
    let k = |v: f32| _mm512_set1_ps(v);
    let (sum12, diff12) = (_mm512_add_ps(m[1], m[2]), _mm512_sub_ps(m[1], m[2]));
    let (sum34, diff34) = (_mm512_add_ps(m[3], m[4]), _mm512_sub_ps(m[3], m[4]));
    let rows = [
        // m0 + m1 + m2 + m3 + m4
        _mm512_add_ps(_mm512_add_ps(m[0], sum12), sum34),
        // (m1 - m2) + 2 (m3 - m4)
        _mm512_fmadd_ps(k(2.0), diff34, diff12),
        // (m1 + m2) + 4 (m3 + m4)
        _mm512_fmadd_ps(k(4.0), sum34, sum12),
        // (m1 - m2) + 8 (m3 - m4) + m5
        _mm512_add_ps(_mm512_fmadd_ps(k(8.0), diff34, diff12), m[5]),
    ];
    std::array::from_fn(|i| rows[i])
}

/// `M[ξ]` rows `first_row..first_row + height` for one point: the packed filter panel
/// `panel` (`height` rows, depth by depth) times that point's `V` (`chunk.cin` rows of
/// `chunk.stride` tiles), 32 tiles per micro-kernel call and 16 for the last where the
/// stride leaves 16.
///
/// # Safety
/// The CPU has AVX-512F; `v` addresses `chunk.cin` rows and `m` `height` rows of
/// `chunk.stride` floats.
#[cfg(target_arch = "x86_64")]
unsafe fn multiply(panel: &[f32], height: usize, v: *const f32, m: *mut f32, chunk: &Chunk) {
    let (wide, narrow) = (kernel::<2>(height), kernel::<1>(height));
    let mut lane0 = 0;
    while lane0 < chunk.stride {
        let call = if lane0 + LANES <= chunk.stride {
            wide
        } else {
            narrow
        };
        // SAFETY: per the contract; the stride is a multiple of 16, so a narrow call's 16
        // lanes lie inside it.
        unsafe {
            call(
                panel.as_ptr(),
                v.add(lane0),
                chunk.stride,
                chunk.cin,
                m.add(lane0),
            )
        };
        lane0 += if lane0 + LANES <= chunk.stride {
            LANES
        } else {
            GROUP
        };
    }
}

/// A micro-kernel call: panel, `V`, stride, depth, `M`.
#[cfg(target_arch = "x86_64")]
type Product = unsafe fn(*const f32, *const f32, usize, usize, *mut f32);

/// [`product`] for panels of `height` rows, `VECTORS` vectors of 16 tiles wide.
#[cfg(target_arch = "x86_64")]
fn kernel<const VECTORS: usize>(height: usize) -> Product {
    match height {
        1 => product::<1, VECTORS>,
        2 => product::<2, VECTORS>,
        3 => product::<3, VECTORS>,
        4 => product::<4, VECTORS>,
        5 => product::<5, VECTORS>,
        6 => product::<6, VECTORS>,
        7 => product::<7, VECTORS>,
        8 => product::<8, VECTORS>,
        9 => product::<9, VECTORS>,
        10 => product::<10, VECTORS>,
        11 => product::<11, VECTORS>,
        _ => product::<12, VECTORS>,
    }
}

/// The micro-kernel: `H` rows of `16 * VECTORS` sums over the whole depth, each step
/// `VECTORS` loads of `V` and one broadcast filter value per row.
///
/// # Safety
/// The CPU has AVX-512F; `panel` holds `depth * H` floats, `v` addresses `depth` rows
/// and `m` `H` rows of `16 * VECTORS` floats, `stride` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn product<const H: usize, const VECTORS: usize>(
    panel: *const f32,
    v: *const f32,
    stride: usize,
    depth: usize,
    m: *mut f32,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); VECTORS]; H];
    let (mut a, mut row) = (panel, v);
    for _ in 0..depth {
        // SAFETY: per the contract.
        unsafe {
            let x: [__m512; VECTORS] = std::array::from_fn(|i| _mm512_loadu_ps(row.add(16 * i)));
            for (r, sums) in acc.iter_mut().enumerate() {
                let w = _mm512_set1_ps(*a.add(r));
                for (sum, x) in sums.iter_mut().zip(x) {
                    *sum = _mm512_fmadd_ps(w, x, *sum);
                }
            }
            a = a.add(H);
            row = row.add(stride);
        }
    }
    for (r, sums) in acc.iter().enumerate() {
        for (i, sum) in sums.iter().enumerate() {
            // SAFETY: per the contract.
            unsafe { _mm512_storeu_ps(m.add(r * stride + 16 * i), *sum) };
        }
    }
}

/// Output channel `f`'s tiles of the chunk: `A^T M A` of its products per tile (`T x T`
/// outputs from `A x A` points), plus `start` (its bias), clamped to `clamp`, stored
/// where they fall inside the output.
///
/// # Safety
/// The CPU has AVX-512F; `m` holds the chunk's products (`A * A` blocks of
/// `chunk.m_block`, rows of `chunk.stride`), `out` the whole output.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transform_output<const T: usize, const A: usize>(
    m: *const f32,
    f: usize,
    start: f32,
    clamp: Option<(f32, f32)>,
    tiling: &Tiling,
    chunk: &Chunk,
    out: *mut f32,
) {
    use std::arch::x86_64::*;
    let plane_len = tiling.out_h * tiling.out_w;
    // Row i of tile `4k + l` of the group: floats `4k..4k + T` of `by_tile[i][l]`.
    let mut by_tile = [[[0.0f32; GROUP]; 4]; T];
    for lane0 in (0..chunk.tiles).step_by(GROUP) {
        // A^T m: down each transformed column; then (A^T m) A: along each row.
        let mut rows = [[_mm512_setzero_ps(); A]; T];
        for b in 0..A {
            // SAFETY: per the contract; lane0 + 16 <= stride.
            let column: [__m512; A] = std::array::from_fn(|a| unsafe {
                _mm512_loadu_ps(m.add((a * A + b) * chunk.m_block + f * chunk.stride + lane0))
            });
            for (row, value) in rows.iter_mut().zip(output_rows::<T, A>(column)) {
                row[b] = value;
            }
        }
        let bias = _mm512_set1_ps(start);
        for (row, by_tile) in rows.iter().zip(by_tile.iter_mut()) {
            let y = output_rows::<T, A>(*row).map(|value| {
                let y = _mm512_add_ps(value, bias);
                match clamp {
                    // `max(low, y)` and `min(high, ..)` return y when y is NaN, as the
                    // reference's NaN-propagating max and min.
                    Some((low, high)) => {
                        _mm512_min_ps(_mm512_set1_ps(high), _mm512_max_ps(_mm512_set1_ps(low), y))
                    }
                    None => y,
                }
            });
            // The row's columns of each tile side by side (zeros past a 2-wide tile's).
            let transposed = transpose_in_lanes(std::array::from_fn(|j| {
                if j < T { y[j] } else { _mm512_setzero_ps() }
            }));
            for (stored, value) in by_tile.iter_mut().zip(transposed) {
                // SAFETY: 16 floats per row.
                unsafe { _mm512_storeu_ps(stored.as_mut_ptr(), value) };
            }
        }
        let placed = &chunk.places[lane0..(lane0 + GROUP).min(chunk.tiles)];
        for (lane, place) in placed.iter().enumerate() {
            let plane = (place.image * chunk.cout + f) * plane_len;
            let (y0, x0) = (place.out_y, place.out_x);
            let (rows_in, cols_in) = (T.min(tiling.out_h - y0), T.min(tiling.out_w - x0));
            let (l, k) = (lane % 4, lane / 4);
            for (i, by_tile) in by_tile.iter().enumerate().take(rows_in) {
                let at = plane + (y0 + i) * tiling.out_w + x0;
                let row = &by_tile[l][4 * k..4 * k + 4];
                if cols_in == 4 {
                    // SAFETY: the tile's four columns lie inside the output row.
                    unsafe { _mm_storeu_ps(out.add(at), _mm_loadu_ps(row.as_ptr())) };
                } else {
                    for (j, &value) in row.iter().enumerate().take(cols_in) {
                        // SAFETY: inside output channel f's plane of this image.
                        unsafe { *out.add(at + j) = value };
                    }
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn transform_input<const A: usize>(_: &[f32], _: usize, _: &Tiling, _: &Chunk, _: *mut f32) {
    unreachable!("fits() refuses every convolution without AVX-512")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn multiply(_: &[f32], _: usize, _: *const f32, _: *mut f32, _: &Chunk) {
    unreachable!("fits() refuses every convolution without AVX-512")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn transform_output<const T: usize, const A: usize>(
    _: *const f32,
    _: usize,
    _: f32,
    _: Option<(f32, f32)>,
    _: &Tiling,
    _: &Chunk,
    _: *mut f32,
) {
    unreachable!("fits() refuses every convolution without AVX-512")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Activation;
    use crate::kernels::conv::tests::reference;

    /// Input, filters, pads (top, left, bottom, right), bias, activation, chunk bytes.
    struct Case {
        input: [usize; 4],
        filters: usize,
        pads: [usize; 4],
        bias: bool,
        activation: Activation,
        chunk_bytes: usize,
    }

    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed;
        (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// The largest difference from the definition (in f64), over the largest magnitude
    /// of its sums.
    /// A 3x3 unit-stride convolution of `input` by `filters` filters.
    fn geometry(
        input: [usize; 4],
        filters: usize,
        pads: [usize; 4],
        activation: Activation,
    ) -> ConvGeometry {
        ConvGeometry {
            input: input.to_vec(),
            weight: vec![filters, input[1], 3, 3],
            strides: vec![1, 1],
            pads: pads.to_vec(),
            dilations: vec![1, 1],
            group: 1,
            activation,
        }
    }

    fn relative_error(case: &Case, threads: usize, minimal: Minimal) -> f64 {
        let [n, c, h, w] = case.input;
        let geo = geometry(case.input, case.filters, case.pads, case.activation);
        let out_sp = geo.out_spatial().unwrap();
        assert!(fits(&geo, &out_sp), "AVX-512 is detected, so 3x3 runs here");
        let x = values(n * c * h * w, 1);
        let filters = values(case.filters * c * 9, 2);
        let bias = if case.bias {
            values(case.filters, 3)
        } else {
            vec![0.0; case.filters]
        };
        let wide = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>();
        let mut expected = reference(&wide(&x), &wide(&filters), &wide(&bias), &geo);
        // The scale of the sums, before a clamp.
        let scale = expected.iter().fold(0.0f64, |a, v| a.max(v.abs()));
        if let Some((low, high)) = case.activation.clamp_bounds() {
            expected
                .iter_mut()
                .for_each(|v| *v = v.max(f64::from(low)).min(f64::from(high)));
        }
        let mut got = vec![f32::NAN; expected.len()];
        let packed = pack_filters(&filters, &geo, minimal);
        let operands = ConvOperands {
            x: &x,
            w: &filters,
            prepacked: Some(&packed),
            bias: case.bias.then_some(&bias[..]),
        };
        let pool = ThreadPool::new(threads);
        conv_in_chunks(
            operands,
            &geo,
            &out_sp,
            &mut got,
            &pool,
            minimal,
            case.chunk_bytes,
        )
        .unwrap();
        got.iter()
            .zip(&expected)
            .map(|(&g, &e)| (f64::from(g) - e).abs() / scale)
            .fold(0.0, |a, e| if e.is_nan() || e > a { e } else { a })
    }

    #[test]
    fn winograd_matches_the_definition() {
        #[cfg(target_arch = "x86_64")]
        if !std::arch::is_x86_feature_detected!("avx512f") {
            // The path exists only on AVX-512; `fits` refuses it elsewhere.
            let geo = geometry([1, 16, 8, 8], 16, [1; 4], Activation::None);
            assert!(!fits(&geo, &[8, 8]));
            return;
        }
        let big = CHUNK_BYTES;
        // Output sides that are and are not multiples of the tile, no, symmetric and
        // asymmetric pads, two images, filter counts that leave short panels, 16-tile
        // micro-kernel calls, chunks of one micro-kernel call (tiles split across chunks
        // and images), bias, ReLU and Clip.
        #[rustfmt::skip]
        let cases = [
            Case { input: [1, 16, 8, 8], filters: 16, pads: [1, 1, 1, 1], bias: false, activation: Activation::None, chunk_bytes: big },
            Case { input: [1, 17, 13, 11], filters: 25, pads: [1, 1, 1, 1], bias: true, activation: Activation::None, chunk_bytes: big },
            Case { input: [2, 20, 12, 19], filters: 16, pads: [0, 2, 1, 0], bias: true, activation: Activation::Relu, chunk_bytes: big },
            Case { input: [2, 16, 30, 22], filters: 40, pads: [1, 1, 1, 1], bias: true, activation: Activation::Clip { low: -0.5, high: 0.75 }, chunk_bytes: 1 },
            Case { input: [1, 24, 24, 32], filters: 30, pads: [1, 1, 1, 1], bias: true, activation: Activation::None, chunk_bytes: big },
            Case { input: [1, 32, 10, 10], filters: 24, pads: [0, 0, 0, 0], bias: false, activation: Activation::None, chunk_bytes: 1 },
        ];
        for (i, case) in cases.iter().enumerate() {
            for (threads, minimal) in [1, 2]
                .into_iter()
                .flat_map(|t| [(t, Minimal::F4), (t, Minimal::F2)])
            {
                let error = relative_error(case, threads, minimal);
                // Wrong coefficients or tiles are off by the outputs' own size; the
                // transforms' roundings stay within a few tens of f32's epsilon.
                eprintln!("case {i} threads {threads} {minimal:?}: {error:e}");
                assert!(
                    error < 1e-5,
                    "case {i} at {threads} threads by {minimal:?}: relative error {error:e}"
                );
            }
        }
    }

    #[test]
    fn mismatched_prepacked_filters_are_refused() {
        let geo = geometry([1, 16, 16, 16], 16, [1; 4], Activation::None);
        let Some(minimal) = choose(&geo, &[16, 16]) else {
            assert!(
                !fits(&geo, &[16, 16]),
                "16 -> 16 at 16x16 pays where it fits"
            );
            return;
        };
        let (x, w) = (vec![0.0; 16 * 256], vec![0.0; 16 * 16 * 9]);
        let short = vec![0.0; packed_len(&geo, minimal) - 1];
        let operands = ConvOperands {
            x: &x,
            w: &w,
            prepacked: Some(&short),
            bias: None,
        };
        let mut out = vec![0.0; 16 * 256];
        let err = conv(
            operands,
            &geo,
            &[16, 16],
            minimal,
            &mut out,
            &ThreadPool::new(1),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("prepacked Winograd filters"),
            "{err}"
        );
    }

    #[test]
    fn the_transforms_are_paid_for_where_channels_and_outputs_fill_them() {
        // (cin, cout, output side, algorithm): ResNet-18's 56x56, 28x28 and 14x14 layers
        // take F(4x4, 3x3), its 7x7 layers F(2x2, 3x3), the thinnest layers neither.
        let decisions = [
            (64, 64, 56, Some(Minimal::F4)),
            (128, 128, 28, Some(Minimal::F4)),
            (256, 256, 14, Some(Minimal::F4)),
            (64, 64, 10, Some(Minimal::F4)),
            (512, 512, 7, Some(Minimal::F2)),
            (128, 128, 8, Some(Minimal::F2)),
            (64, 64, 9, None),
            (32, 128, 7, None),
            (8, 16, 112, Some(Minimal::F4)),
            (4, 16, 112, None),
            (16, 8, 112, None),
        ];
        for (cin, cout, side, minimal) in decisions {
            assert_eq!(
                pick(cin, cout, 1, [side, side]),
                minimal,
                "{cin} -> {cout} at {side}x{side}"
            );
        }
    }
}
