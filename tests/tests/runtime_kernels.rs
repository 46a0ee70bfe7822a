//! The runtime's contraction kernels agree with the reference interpreter on random
//! shapes: batched MatMul (broadcast batches, transposes, bias) and Conv (groups,
//! strides, pads, dilations, bias, 1-D to 3-D).

use proptest::prelude::*;
use smelt_ir::{DType, Op, Tensor};
use smelt_runtime::kernels::{Activation, ConvGeometry, MatrixOperand, batched_matmul, conv};
use smelt_tests::compare::compare;

fn values(n: usize, seed: u64) -> Vec<f32> {
    (0..n)
        .map(|i| (((i as u64 * 2654435761 + seed * 97) % 23) as f32 - 11.0) / 7.0)
        .collect()
}

fn tensor(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_f64(
        DType::F32,
        shape.to_vec(),
        values(n, seed).iter().map(|&v| v as f64).collect(),
    )
    .unwrap()
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.to_f64().iter().map(|&v| v as f32).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn matmul_matches_the_interpreter(
        m in 1usize..9, n in 1usize..9, k in 1usize..17, batch_a in 0usize..3, batch_b in 0usize..3,
        trans_a: bool, trans_b: bool, with_bias: bool, threads in 1usize..4, seed in 0u64..1000,
    ) {
        // Batch dims: [] or [2] or [3, 2]-like, broadcasting through ones.
        let batch = |kind: usize, ones: bool| -> Vec<usize> { match kind { 0 => vec![], 1 => vec![if ones { 1 } else { 2 }], _ => vec![3, 2] } };
        let (pa, pb) = (batch(batch_a, seed % 2 == 0), batch(batch_b, seed % 3 == 0));
        let mut a_shape = pa.clone();
        a_shape.extend(if trans_a { [k, m] } else { [m, k] });
        let mut b_shape = pb.clone();
        b_shape.extend(if trans_b { [n, k] } else { [k, n] });
        let (a, b) = (tensor(&a_shape, seed), tensor(&b_shape, seed + 1));
        let bias = tensor(&[n], seed + 2);
        let mut inputs = vec![&a, &b];
        if with_bias { inputs.push(&bias); }
        let want = match smelt_ir::interp::eval_op(&Op::MatMul { trans_a, trans_b }, &inputs) {
            Ok(mut r) => r.remove(0),
            Err(_) => return Ok(()), // batch dims that do not broadcast
        };
        let mut out = vec![0f32; want.len()];
        batched_matmul(MatrixOperand::new(&f32s(&a), &a_shape, trans_a), MatrixOperand::new(&f32s(&b), &b_shape, trans_b), with_bias.then(|| f32s(&bias)).as_deref(), &mut out, &smelt_runtime::threads::ThreadPool::new(threads)).unwrap();
        let got = Tensor::from_f64(DType::F32, want.shape().to_vec(), out.iter().map(|&v| v as f64).collect()).unwrap();
        compare(&want, &got, 1e-5, 1e-5).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn conv_matches_the_interpreter(
        rank in 1usize..4, c_per_group in 1usize..4, m_per_group in 1usize..4, group in 1usize..3,
        size in 3usize..7, kernel in 1usize..4, stride in 1usize..3, pad in 0usize..2, dilation in 1usize..3,
        with_bias: bool, threads in 1usize..4, seed in 0u64..1000,
    ) {
        let (c, m) = (c_per_group * group, m_per_group * group);
        let span = dilation * (kernel - 1) + 1;
        prop_assume!(size + 2 * pad >= span);
        let mut xs = vec![2, c];
        xs.extend(std::iter::repeat_n(size, rank));
        let mut ws = vec![m, c_per_group];
        ws.extend(std::iter::repeat_n(kernel, rank));
        let (x, w, bias) = (tensor(&xs, seed), tensor(&ws, seed + 5), tensor(&[m], seed + 9));
        let op = Op::Conv { strides: vec![stride; rank], pads: vec![pad; 2 * rank], dilations: vec![dilation; rank], group };
        let mut inputs = vec![&x, &w];
        if with_bias { inputs.push(&bias); }
        let want = smelt_ir::interp::eval_op(&op, &inputs).unwrap().remove(0);
        let geo = ConvGeometry { input: xs, weight: ws, strides: vec![stride; rank], pads: vec![pad; 2 * rank], dilations: vec![dilation; rank], group, activation: Activation::None };
        let mut out = vec![0f32; want.len()];
        conv(&f32s(&x), &f32s(&w), with_bias.then(|| f32s(&bias)).as_deref(), &geo, &mut out, &smelt_runtime::threads::ThreadPool::new(threads)).unwrap();
        let got = Tensor::from_f64(DType::F32, want.shape().to_vec(), out.iter().map(|&v| v as f64).collect()).unwrap();
        compare(&want, &got, 1e-5, 1e-5).map_err(TestCaseError::fail)?;
    }
}

#[test]
fn large_matmuls_split_over_threads() {
    // One batch (rows split over threads) and four batches (batches split), each with
    // every transpose combination.
    let (m, k, n) = (67, 129, 33);
    for batch in [vec![], vec![4]] {
        for (trans_a, trans_b) in [(false, false), (true, false), (false, true), (true, true)] {
            let mut a_shape = batch.clone();
            a_shape.extend(if trans_a { [k, m] } else { [m, k] });
            let mut b_shape = batch.clone();
            b_shape.extend(if trans_b { [n, k] } else { [k, n] });
            let (a, b) = (tensor(&a_shape, 1), tensor(&b_shape, 2));
            let want = smelt_ir::interp::eval_op(&Op::MatMul { trans_a, trans_b }, &[&a, &b])
                .unwrap()
                .remove(0);
            for threads in [1, 2, 3, 8] {
                let mut out = vec![0f32; want.len()];
                batched_matmul(
                    MatrixOperand::new(&f32s(&a), &a_shape, trans_a),
                    MatrixOperand::new(&f32s(&b), &b_shape, trans_b),
                    None,
                    &mut out,
                    &smelt_runtime::threads::ThreadPool::new(threads),
                )
                .unwrap();
                let got = Tensor::from_f64(
                    DType::F32,
                    want.shape().to_vec(),
                    out.iter().map(|&v| v as f64).collect(),
                )
                .unwrap();
                compare(&want, &got, 1e-5, 1e-5).unwrap_or_else(|e| {
                    panic!("batch {batch:?} trans {trans_a}/{trans_b} threads {threads}: {e}")
                });
            }
        }
    }
}

#[test]
fn mismatched_shapes_are_errors_not_panics() {
    let mut out = vec![0f32; 4];
    let e = batched_matmul(
        MatrixOperand::new(&[0.0; 6], &[2, 3], false),
        MatrixOperand::new(&[0.0; 4], &[2, 2], false),
        None,
        &mut out,
        &smelt_runtime::threads::ThreadPool::new(1),
    )
    .unwrap_err();
    assert_eq!(e.to_string(), "inner dims differ: 3 and 2");
    let geo = ConvGeometry {
        input: vec![1, 3, 4, 4],
        weight: vec![2, 2, 1, 1],
        strides: vec![1, 1],
        pads: vec![0; 4],
        dilations: vec![1, 1],
        group: 1,
        activation: Activation::None,
    };
    let e = conv(
        &[0f32; 48],
        &[0f32; 4],
        None,
        &geo,
        &mut [0f32; 32],
        &smelt_runtime::threads::ThreadPool::new(1),
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "3 channels and 2 filters do not split into 1 groups"
    );
}
