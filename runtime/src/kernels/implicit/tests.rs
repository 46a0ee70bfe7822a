//! Tests of the implicit convolution: both layouts on every instruction set this CPU
//! runs, against the definition, and the panel and tile bookkeeping.

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

/// The instruction sets this CPU runs; an x86-64 CPU without AVX2 and FMA fails the
/// tests, which would otherwise check nothing.
fn supported_isas() -> Vec<Isa> {
    let isas: Vec<Isa> = Isa::ALL.into_iter().filter(|isa| isa.supported()).collect();
    #[cfg(target_arch = "x86_64")]
    assert!(!isas.is_empty(), "no AVX2 with FMA on this CPU");
    isas
}

/// Both layouts (filters or positions as lanes), with filters packed per call and
/// prepacked, on one and three threads, on every instruction set this CPU runs, against
/// the definition.
#[test]
fn both_layouts_match_the_definition() {
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
        // A 14x14 pointwise map: six tiles of 32 positions and a last one of 4, which
        // the AVX-512 kernel computes as one vector.
        (
            vec![1, 24, 14, 14],
            vec![40, 24, 1, 1],
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
    for isa in supported_isas() {
        let mut layouts = [false; 2];
        for (input, weight, strides, pads, dilations, group) in cases.clone() {
            let geo = ConvGeometry {
                input,
                weight,
                strides: strides.to_vec(),
                pads: pads.to_vec(),
                dilations: dilations.to_vec(),
                group,
                activation: Activation::None,
            };
            layouts[usize::from(filters_as_lanes_on(&geo, isa))] = true;
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
            let packed = pack_filters_for(&w, &geo, isa);
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
                    conv2d_on(isa, operands, &geo, &mut got, &pool, 1 << 16).unwrap();
                    for (i, (&a, &b)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (f64::from(a) - b).abs() < 1e-4 * b.abs().max(1.0),
                            "{isa:?} {geo:?} threads {threads} prepacked {}: [{i}] {a} vs {b}",
                            prepacked.is_some()
                        );
                    }
                }
            }
        }
        assert_eq!(
            layouts,
            [true, true],
            "{isa:?}: the cases cover both layouts"
        );
    }
}

/// AVX2 leaves the plain matrix products (1x1, unit strides, no pads) to `gemm`;
/// AVX-512 takes them; both take the other convolutions.
#[test]
fn which_convolutions_run_here() {
    let geo = |k: usize, pad: usize| ConvGeometry {
        input: vec![1, 16, 9, 9],
        weight: vec![32, 16, k, k],
        strides: vec![1, 1],
        pads: vec![pad; 4],
        dilations: vec![1, 1],
        group: 1,
        activation: Activation::None,
    };
    let isa = Isa::detect();
    assert_eq!(handles(&geo(3, 1)), isa.is_some());
    assert_eq!(handles(&geo(1, 1)), isa.is_some());
    assert_eq!(handles(&geo(1, 0)), isa == Some(Isa::Avx512));
    // Depthwise convolutions have their own paths.
    let depthwise = ConvGeometry {
        input: vec![1, 32, 9, 9],
        weight: vec![32, 1, 3, 3],
        group: 32,
        ..geo(3, 1)
    };
    assert!(!handles(&depthwise));
}

#[test]
fn a_short_prepacked_buffer_is_an_error() {
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
    for isa in supported_isas() {
        let err = conv2d_on(isa, operands, &geo, &mut out, &ThreadPool::new(1), 1 << 16);
        assert!(
            matches!(err, Err(KernelError::Shape(_))),
            "{isa:?}: {err:?}"
        );
    }
}

#[test]
fn panels_are_about_as_tall() {
    let heights = |rows: usize| panels(rows, 12).map(|(_, h)| h).collect::<Vec<_>>();
    assert_eq!(heights(64), [11, 11, 11, 11, 10, 10]);
    assert_eq!(heights(12), [12]);
    assert_eq!(heights(13), [7, 6]);
    assert_eq!(heights(169).iter().filter(|&&h| h == 12).count(), 4);
    assert_eq!(heights(169).iter().sum::<usize>(), 169);
    assert_eq!(heights(1), [1]);
    assert!(heights(0).is_empty());
    assert_eq!(
        panels(40, 12).map(|(s, _)| s).collect::<Vec<_>>(),
        [0, 10, 20, 30]
    );
    // Six rows at most (AVX2): 64 filters in eleven panels, nine of six and two of five.
    let six = |rows: usize| panels(rows, 6).map(|(_, h)| h).collect::<Vec<_>>();
    assert_eq!(six(64), [6, 6, 6, 6, 6, 6, 6, 6, 6, 5, 5]);
    assert_eq!(six(6), [6]);
    assert_eq!(six(7), [4, 3]);
}

#[test]
fn packed_panels_interleave_their_rows() {
    // 13 rows of depth 2 -> panels of 7 and 6 rows.
    let a: Vec<f32> = (0..26).map(|i| i as f32).collect();
    let mut packed = vec![0.0; 26];
    pack_rows(&a, 13, 2, 12, &mut packed);
    let first: Vec<f32> = (0..7).flat_map(|r| [2.0 * r as f32]).collect();
    assert_eq!(packed[..7], first[..]);
    assert_eq!(packed[7], 1.0);
    assert_eq!(packed[14], 14.0);
    assert_eq!(packed[14 + 6], 15.0);
}

#[test]
fn tiles_split_at_rows_and_skip_the_lanes_past_the_width() {
    let mut segs = Vec::new();
    let span = |q0, q_end, row, out_w| TileSpan {
        q0,
        lanes: 32,
        q_end,
        row,
        out_w,
    };
    // Rows of 10 positions, 8 of them outputs: the tile at 0 covers rows 0-3.
    segments(span(0, 100, 10, 8), &mut segs);
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
    segments(span(32, 35, 10, 8), &mut segs);
    assert_eq!(
        segs,
        vec![Segment {
            offset: 26,
            mask: 0b111
        }]
    );
    // One wide row: all lanes in one segment.
    segments(span(64, 1000, 500, 500), &mut segs);
    assert_eq!(
        segs,
        vec![Segment {
            offset: 64,
            mask: u32::MAX
        }]
    );
    // Sixteen lanes (AVX2): the tile at 16 covers the last two outputs of row 1, all of
    // row 2 and the first two of row 3.
    segments(
        TileSpan {
            lanes: 16,
            ..span(16, 100, 10, 8)
        },
        &mut segs,
    );
    assert_eq!(
        segs,
        vec![
            Segment {
                offset: 14,
                mask: 0b11
            },
            Segment {
                offset: 16 - 4,
                mask: 0xff << 4
            },
            Segment {
                offset: 24 - 14,
                mask: 0b11 << 14
            },
        ]
    );
}
