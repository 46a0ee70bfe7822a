//! Random well-typed graphs for soundness tests (optimizer vs reference, compiled vs
//! reference): a list of steps, each picking an op and operands among earlier values.

use proptest::prelude::*;
use smelt_ir::op::{BinaryOp, PadMode, PoolKind, ReduceKind, UnaryOp};
use smelt_ir::{DType, Dim, Graph, Op, Tensor, TensorType, ValueId};

/// One step of a random graph.
#[derive(Debug, Clone)]
pub struct Step {
    kind: u8,
    a: u16,
    b: u16,
    c: u16,
}

pub fn step() -> impl Strategy<Value = Step> {
    (any::<u8>(), any::<u16>(), any::<u16>(), any::<u16>()).prop_map(|(kind, a, b, c)| Step {
        kind,
        a,
        b,
        c,
    })
}

/// A deterministic f32 constant (values in [-1, 1] in steps of 1/8, or `special` everywhere).
pub fn konst(shape: Vec<usize>, seed: u16, special: Option<f64>) -> Tensor {
    let n: usize = shape.iter().product();
    let v = (0..n)
        .map(|i| special.unwrap_or(((i as u64 * 2654435761 + seed as u64) % 17) as f64 / 8.0 - 1.0))
        .collect();
    Tensor::from_f64(DType::F32, shape, v).unwrap()
}

/// Builds a graph over one f32 input of shape [2, 3, 4, 4] from the steps; steps that do not type-check are skipped.
pub fn build(steps: &[Step]) -> Graph {
    let mut g = Graph::new("random");
    let x = g.add_input(
        "x",
        TensorType::new(DType::F32, [2, 3, 4, 4].map(Dim::Fixed).to_vec()),
    );
    let mut vals: Vec<ValueId> = vec![x];
    for s in steps {
        let v = vals[s.a as usize % vals.len()];
        let w = vals[s.b as usize % vals.len()];
        let ty = g.ty(v).clone();
        let shape = ty.fixed_shape().unwrap();
        let rank = shape.len();
        let special = [Some(1.0), Some(0.0), None, None][s.c as usize % 4];
        let (op, operands) = match s.kind % 16 {
            0 => (
                Op::Unary(
                    [
                        UnaryOp::Exp,
                        UnaryOp::Neg,
                        UnaryOp::Tanh,
                        UnaryOp::Sigmoid,
                        UnaryOp::Abs,
                        UnaryOp::Erf,
                    ][s.c as usize % 6],
                ),
                vec![v],
            ),
            1 => (
                Op::Binary(
                    [
                        BinaryOp::Add,
                        BinaryOp::Sub,
                        BinaryOp::Mul,
                        BinaryOp::Max,
                        BinaryOp::Min,
                    ][s.c as usize % 5],
                ),
                vec![v, w],
            ),
            2 => {
                // A broadcast constant: per-channel, scalar, or full, possibly 0 or 1 everywhere.
                let cshape = match s.b % 3 {
                    0 if rank == 4 => vec![1, shape[1], 1, 1],
                    1 => vec![],
                    _ => shape.clone(),
                };
                let c = g
                    .add("", Op::Constant(konst(cshape, s.c, special)), &[])
                    .unwrap();
                (
                    Op::Binary(
                        [BinaryOp::Add, BinaryOp::Mul, BinaryOp::Sub, BinaryOp::Div]
                            [s.a as usize % 4],
                    ),
                    vec![v, c],
                )
            }
            3 if rank > 0 => (
                Op::Reduce {
                    kind: [ReduceKind::Sum, ReduceKind::Max, ReduceKind::Mean][s.c as usize % 3],
                    axes: vec![s.b as usize % rank],
                    keep_dims: s.c % 2 == 0,
                },
                vec![v],
            ),
            4 if rank >= 2 => {
                let mut perm: Vec<usize> = (0..rank).collect();
                perm.swap(s.b as usize % rank, s.c as usize % rank);
                (Op::Transpose { perm }, vec![v])
            }
            5 => {
                let n: usize = shape.iter().product();
                // Rank-0 values (full reductions) have no leading axis to keep.
                let lead = shape.first().copied().unwrap_or(1);
                let target = if s.b % 2 == 0 {
                    vec![n]
                } else {
                    vec![lead, n / lead.max(1)]
                };
                (
                    Op::Reshape {
                        shape: target.into_iter().map(Dim::Fixed).collect(),
                    },
                    vec![v],
                )
            }
            6 if rank >= 2 => {
                let k = shape[rank - 1];
                let n = 1 + s.c as usize % 3;
                let wc = g
                    .add("", Op::Constant(konst(vec![k, n], s.b, None)), &[])
                    .unwrap();
                (Op::MATMUL, vec![v, wc])
            }
            7 if rank == 4 => {
                let m = 1 + s.c as usize % 3;
                let wc = g
                    .add(
                        "",
                        Op::Constant(konst(
                            vec![m, shape[1], 1 + s.b as usize % 2, 1 + s.b as usize % 2],
                            s.a,
                            None,
                        )),
                        &[],
                    )
                    .unwrap();
                (
                    Op::Conv {
                        strides: vec![1, 1],
                        pads: vec![0, 0, 0, 0],
                        dilations: vec![1, 1],
                        group: 1,
                    },
                    vec![v, wc],
                )
            }
            8 if rank >= 2 => {
                // Three MatMuls sharing their operand, summed (the merge case).
                let k = shape[rank - 1];
                let parts: Vec<ValueId> = (0..3)
                    .map(|i| {
                        let wc = g
                            .add(
                                "",
                                Op::Constant(konst(vec![k, 2], s.b.wrapping_add(i), None)),
                                &[],
                            )
                            .unwrap();
                        g.add("", Op::MATMUL, &[v, wc]).unwrap()
                    })
                    .collect();
                let ab = g
                    .add("", Op::Binary(BinaryOp::Add), &[parts[0], parts[1]])
                    .unwrap();
                (Op::Binary(BinaryOp::Mul), vec![ab, parts[2]])
            }
            9 => (Op::Unary(UnaryOp::Neg), vec![v]),
            10 if rank >= 1 => (
                Op::Slice {
                    starts: vec![0; rank],
                    ends: shape.iter().map(|&d| (d as i64 + 1) / 2).collect(),
                    steps: vec![1; rank],
                },
                vec![v],
            ),
            11 if rank == 4 => (
                Op::Pool {
                    kind: [PoolKind::Max, PoolKind::Avg, PoolKind::AvgIncludePad][s.c as usize % 3],
                    kernel: vec![2, 2],
                    strides: vec![1 + s.b as usize % 2; 2],
                    pads: vec![s.a as usize % 2; 4],
                    dilations: vec![1, 1],
                },
                vec![v],
            ),
            12 if rank >= 1 => (
                Op::Pad {
                    pads: (0..2 * rank)
                        .map(|i| ((s.b as usize >> i) & 1) as i64)
                        .collect(),
                    mode: [
                        PadMode::Constant,
                        PadMode::Edge,
                        PadMode::Reflect,
                        PadMode::Wrap,
                    ][s.c as usize % 4],
                },
                vec![v],
            ),
            13 if rank >= 1 && g.ty(w).shape == ty.shape => (
                Op::Concat {
                    axis: s.c as usize % rank,
                },
                vec![v, w],
            ),
            14 => {
                // where(v > w, v, 2 w): compare, select, broadcasting.
                let gt = g.add("", Op::Binary(BinaryOp::Greater), &[v, w]);
                let two = g
                    .add("", Op::Constant(konst(vec![], 0, Some(2.0))), &[])
                    .unwrap();
                match gt {
                    Ok(gt) => {
                        let w2 = g.add("", Op::Binary(BinaryOp::Mul), &[w, two]).unwrap();
                        (Op::Select, vec![gt, v, w2])
                    }
                    Err(_) => (Op::Unary(UnaryOp::Abs), vec![v]),
                }
            }
            15 => {
                // Through i32 and back: truncation, and the integer code paths. Casting
                // NaN or a float outside i32 is undefined in ONNX (and ill-conditioned
                // downstream), so NaN becomes 0 and the rest is clamped to +-1e6 first.
                let scalar = |g: &mut Graph, x: f64| {
                    g.add("", Op::Constant(konst(vec![], 0, Some(x))), &[])
                        .unwrap()
                };
                let (zero, hi, lo) = (
                    scalar(&mut g, 0.0),
                    scalar(&mut g, 1e6),
                    scalar(&mut g, -1e6),
                );
                let same = g.add("", Op::Binary(BinaryOp::Equal), &[v, v]).unwrap();
                let finite = g.add("", Op::Select, &[same, v, zero]).unwrap();
                let low = g.add("", Op::Binary(BinaryOp::Min), &[finite, hi]).unwrap();
                let within = g.add("", Op::Binary(BinaryOp::Max), &[low, lo]).unwrap();
                let i = g.add("", Op::Cast { to: DType::I32 }, &[within]).unwrap();
                (Op::Cast { to: DType::F32 }, vec![i])
            }
            _ => (Op::Cast { to: DType::F32 }, vec![v]),
        };
        if let Ok(out) = g.add("", op, &operands) {
            vals.push(out);
        }
    }
    g.outputs = vec![*vals.last().unwrap()];
    g
}

/// Runs `test` on random well-typed graphs of 1 to 15 steps: 192 from a fixed seed and 64
/// from a fresh, printed one (`crate::seeded`).
pub fn on_random_graphs(
    source_file: &'static str,
    test: impl Fn(&Graph) -> Result<(), TestCaseError>,
) {
    crate::seeded::run_seeded(
        source_file,
        prop::collection::vec(step(), 1..16),
        192,
        64,
        |steps| test(&build(&steps)),
    );
}
