//! The text form round-trips: printing a random graph and parsing it back gives the same graph.

use proptest::prelude::*;
use smelt_ir::op::{BinaryOp, PadMode, ReduceKind, UnaryOp};
use smelt_ir::text::{PrintOptions, parse_graph, print_graph};
use smelt_ir::{DType, Dim, Graph, Op, Tensor, TensorType, ValueId};

/// One step of graph construction, interpreted by [`build`]; steps that do not type-check are skipped.
#[derive(Debug, Clone)]
struct Step {
    kind: u8,
    a: u16,
    b: u16,
    c: i64,
    name: String,
}

fn step() -> impl Strategy<Value = Step> {
    (
        any::<u8>(),
        any::<u16>(),
        any::<u16>(),
        any::<i64>(),
        "[a-z]{0,3}|.{0,6}",
    )
        .prop_map(|(kind, a, b, c, name)| Step {
            kind,
            a,
            b,
            c,
            name,
        })
}

fn input_type() -> impl Strategy<Value = TensorType> {
    let dtype = prop::sample::select(vec![
        DType::F32,
        DType::F64,
        DType::F16,
        DType::I64,
        DType::I32,
        DType::U8,
        DType::Bool,
    ]);
    let dim = prop_oneof![
        (1usize..5).prop_map(Dim::Fixed),
        prop::sample::select(vec!["N", "batch", "seq len", "a+b"])
            .prop_map(|s| Dim::Sym(s.to_string()))
    ];
    (dtype, prop::collection::vec(dim, 0..5)).prop_map(|(d, s)| TensorType::new(d, s))
}

fn special_value(i: i64) -> f64 {
    match i.rem_euclid(7) {
        0 => f64::INFINITY,
        1 => f64::NEG_INFINITY,
        2 => -0.0,
        3 => 1e-30,
        4 => 123456.789,
        5 => (i % 1000) as f64 / 7.0,
        _ => i as f64,
    }
}

/// Operands of a contraction: `x`, a constant weight of `wshape` filled with `fill`, and,
/// when given, a constant bias of `channels` values all equal to `value`.
fn operands(
    g: &mut Graph,
    name: &str,
    x: ValueId,
    dtype: DType,
    wshape: Vec<usize>,
    fill: f64,
    bias: Option<(usize, f64)>,
) -> Vec<ValueId> {
    let w = g
        .add(
            name,
            Op::Constant(Tensor::full(dtype, wshape, fill).unwrap()),
            &[],
        )
        .unwrap();
    let mut v = vec![x, w];
    if let Some((channels, value)) = bias {
        v.push(
            g.add(
                name,
                Op::Constant(Tensor::full(dtype, vec![channels], value).unwrap()),
                &[],
            )
            .unwrap(),
        );
    }
    v
}

fn build(inputs: &[TensorType], steps: &[Step]) -> Graph {
    let mut g = Graph::new("random graph");
    let mut vals: Vec<ValueId> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| g.add_input(&format!("in{i}"), t.clone()))
        .collect();
    for s in steps {
        let pick = |k: u16| vals[k as usize % vals.len()];
        let x = pick(s.a);
        let y = pick(s.b);
        let ty = g.ty(x).clone();
        let rank = ty.rank();
        let op = match s.kind % 14 {
            0 => Op::Unary(UnaryOp::ALL[s.a as usize % UnaryOp::ALL.len()]),
            1 => Op::Binary(BinaryOp::ALL[s.b as usize % BinaryOp::ALL.len()]),
            2 => {
                let dtype = DType::ALL[s.a as usize % DType::ALL.len()];
                let n = (s.b % 4) as usize;
                let vals: Vec<f64> = (0..n)
                    .map(|i| special_value(s.c.wrapping_add(i as i64)))
                    .collect();
                let t = if dtype.is_float() {
                    Tensor::from_f64(dtype, vec![n], vals)
                } else {
                    Tensor::from_i64(
                        dtype,
                        vec![n],
                        (0..n as i64).map(|i| s.c.wrapping_mul(i + 1)).collect(),
                    )
                };
                Op::Constant(t.unwrap())
            }
            3 => Op::Cast {
                to: DType::ALL[s.b as usize % DType::ALL.len()],
            },
            4 if rank > 0 => Op::Reduce {
                kind: [ReduceKind::Sum, ReduceKind::Max, ReduceKind::Mean][s.b as usize % 3],
                axes: vec![s.b as usize % rank],
                keep_dims: s.c % 2 == 0,
            },
            5 => Op::Transpose {
                perm: (0..rank)
                    .map(|i| (i + s.b as usize) % rank.max(1))
                    .collect(),
            },
            6 => Op::Slice {
                starts: (0..rank).map(|i| s.c.wrapping_add(i as i64) % 3).collect(),
                ends: (0..rank)
                    .map(|_| if s.b % 2 == 0 { i64::MAX } else { -1 })
                    .collect(),
                steps: (0..rank)
                    .map(|_| if s.a % 3 == 0 { -1 } else { 1 })
                    .collect(),
            },
            7 => Op::Pad {
                pads: (0..2 * rank)
                    .map(|i| (s.c.wrapping_add(i as i64)).rem_euclid(3))
                    .collect(),
                mode: PadMode::ALL[s.b as usize % 4],
            },
            8 => Op::Reshape {
                shape: ty.shape.iter().rev().cloned().collect(),
            },
            9 => Op::Expand {
                shape: vec![Dim::Fixed(2); rank],
            },
            10 if rank > 0 => Op::Concat {
                axis: s.b as usize % rank,
            },
            12 if rank >= 2 => Op::MatMul {
                trans_a: s.a % 2 == 0,
                trans_b: s.b % 2 == 0,
            },
            13 if rank == 4 => Op::Conv {
                strides: vec![1, 1],
                pads: vec![0, 0, 0, 0],
                dilations: vec![1, 1],
                group: 1,
            },
            11 if rank > 0 => Op::TopK {
                axis: 0,
                k: 1,
                largest: s.c % 2 == 0,
            },
            _ => Op::Shape,
        };
        let operands = match &op {
            Op::Constant(_) => vec![],
            Op::Binary(_) | Op::Concat { .. } => vec![x, y],
            // A weight shaped to fit, and (sometimes) a bias for the epilogue.
            Op::MatMul { trans_a, trans_b } => {
                let k = if *trans_a {
                    &ty.shape[rank - 2]
                } else {
                    &ty.shape[rank - 1]
                };
                let kn = k.fixed().unwrap_or(2);
                let wshape = if *trans_b { vec![3, kn] } else { vec![kn, 3] };
                operands(
                    &mut g,
                    &s.name,
                    x,
                    ty.dtype,
                    wshape,
                    0.5,
                    (s.c % 2 == 0).then_some((3, 1.0)),
                )
            }
            Op::Conv { .. } => {
                let c = ty.shape[1].fixed().unwrap_or(1);
                operands(
                    &mut g,
                    &s.name,
                    x,
                    ty.dtype,
                    vec![2, c, 1, 1],
                    0.25,
                    (s.c % 2 == 0).then_some((2, -1.0)),
                )
            }
            Op::Pad { .. } => {
                let v = g
                    .add(
                        &s.name,
                        Op::Constant(Tensor::full(ty.dtype, vec![], 0.0).unwrap()),
                        &[],
                    )
                    .unwrap();
                vec![x, v]
            }
            _ => vec![x],
        };
        if let Ok(outs) = g.add_node(&s.name, op, &operands, &[]) {
            vals.extend(outs);
        }
    }
    g.outputs = vec![*vals.last().unwrap()];
    g
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn print_then_parse_is_identity(inputs in prop::collection::vec(input_type(), 1..3), steps in prop::collection::vec(step(), 0..24)) {
        let g = build(&inputs, &steps);
        g.verify().unwrap();
        let text = print_graph(&g, PrintOptions::full());
        let parsed = parse_graph(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let again = print_graph(&parsed, PrintOptions::full());
        prop_assert_eq!(&text, &again);
        prop_assert_eq!(parsed.values.len(), g.values.len());
        prop_assert_eq!(parsed.nodes.len(), g.nodes.len());
        for (a, b) in g.nodes.iter().zip(&parsed.nodes) {
            prop_assert_eq!(&a.name, &b.name);
            prop_assert_eq!(&a.inputs, &b.inputs);
            match (&a.op, &b.op) {
                (Op::Constant(x), Op::Constant(y)) => prop_assert!(x.bits_eq(y), "constant changed: {:?} vs {:?}", x, y),
                (x, y) => prop_assert_eq!(x, y),
            }
        }
        for (a, b) in g.values.iter().zip(&parsed.values) {
            prop_assert_eq!(a, b);
        }
    }
}

#[test]
fn parse_errors_name_line_and_column() {
    let cases = [
        (
            "graph g (%x: f32[2]) {\n  %y = exp(%z) : f32[2]\n  return %y\n}\n",
            "line 2",
            "undefined value %z",
        ),
        (
            "graph g (%x: f32[2]) {\n  %y = frob(%x) : f32[2]\n  return %y\n}\n",
            "line 2",
            "unknown op 'frob'",
        ),
        (
            "graph g (%x: f32[2]) {\n  %y = exp(%x) : f32[3]\n  return %y\n}\n",
            "line 2",
            "declared f32[3] but inference gives f32[2]",
        ),
        (
            "graph g (%x: q8[2]) {\n  return %x\n}\n",
            "line 1",
            "unknown dtype 'q8'",
        ),
        (
            "graph g (%x: f32[2]) {\n  %c = constant f32[2] ...\n  return %c\n}\n",
            "line 2",
            "elided constant",
        ),
        (
            "graph g (%x: f32[2, 3]) {\n  %y = transpose<perm=[0, 0]>(%x) : f32[2, 2]\n  return %y\n}\n",
            "",
            "not a permutation",
        ),
        (
            "graph g (%x: f32[2]) {\n  %y = reduce_sum<axes=[0]>(%x) : f32[]\n  return %y\n}\n",
            "line 2",
            "missing attribute 'keep_dims'",
        ),
    ];
    for (text, line, needle) in cases {
        let e = parse_graph(text).unwrap_err().to_string();
        assert!(
            e.contains(needle) && e.contains(line),
            "expected '{needle}' at {line}, got: {e}"
        );
    }
}

#[test]
fn printed_form_is_stable() {
    let mut g = Graph::new("mlp");
    let x = g.add_input(
        "x",
        TensorType::new(DType::F32, vec![Dim::Sym("N".into()), Dim::Fixed(2)]),
    );
    let w = g
        .add(
            "fc/w",
            Op::Constant(
                Tensor::from_f64(DType::F32, vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap(),
            ),
            &[],
        )
        .unwrap();
    g.rename(w, "fc/w").unwrap();
    let y = g.add("fc", Op::MATMUL, &[x, w]).unwrap();
    let s = g.add("act", Op::Unary(UnaryOp::Sigmoid), &[y]).unwrap();
    g.outputs = vec![s];
    let text = print_graph(&g, PrintOptions::default());
    assert_eq!(
        text,
        "graph mlp (%x: f32[N, 2]) {\n  %\"fc/w\" = constant f32[2, 2] [1.0, 2.0, 3.0, 4.0] @\"fc/w\"\n  %\"fc:0\" = matmul(%x, %\"fc/w\") : f32[N, 2] @\"fc\"\n  %\"act:0\" = sigmoid(%\"fc:0\") : f32[N, 2] @\"act\"\n  return %\"act:0\"\n}\n"
    );
}
