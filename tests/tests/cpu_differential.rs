//! Differential testing of the CPU back end: on random well-typed graphs, compiled code
//! (optimized, fused, Cranelift-generated) agrees with the reference interpreter on the
//! unoptimized graph, and so does compiled code without the optimizer.

use proptest::prelude::*;
use smelt::Executable;
use smelt_runtime::pool::ThreadPool;
use smelt_tests::compare::compare;
use smelt_tests::random_graph::{build, konst, step};

fn check(g: &smelt_ir::Graph, optimize: bool, pool: &ThreadPool) -> Result<(), TestCaseError> {
    let x = konst(vec![2, 3, 4, 4], 11, None);
    let want = smelt_ir::interp::run(g, std::slice::from_ref(&x)).unwrap();
    let exe = Executable::from_graph(g.clone(), optimize)
        .map_err(|e| TestCaseError::fail(format!("compile: {e}")))?;
    let got = exe
        .run(pool, &[&smelt::to_host_tensor(&x)], None)
        .map_err(|e| TestCaseError::fail(format!("run: {e}")))?;
    for (w, a) in want.iter().zip(&got) {
        let a = smelt::to_ir_tensor(a).map_err(TestCaseError::fail)?;
        let (w, a) = both_non_finite_agree(w, &a);
        if let Err(e) = compare(&w, &a, 1e-4, 1e-5) {
            return Err(TestCaseError::fail(format!(
                "{e} (optimize: {optimize})\ngraph:\n{}\nkernels:\n{}",
                smelt_ir::text::print_graph(g, smelt_ir::text::PrintOptions::default()),
                exe.kernel_text()
            )));
        }
    }
    Ok(())
}

/// Division by an exact zero gives inf or NaN depending on whether the numerator is an
/// exact zero, which f32 arithmetic and the f64 reference may disagree on after
/// cancellation; where both sides are non-finite, the element counts as agreeing.
fn both_non_finite_agree(
    w: &smelt_ir::Tensor,
    a: &smelt_ir::Tensor,
) -> (smelt_ir::Tensor, smelt_ir::Tensor) {
    if !w.dtype().is_float() || w.dtype() != a.dtype() || w.shape() != a.shape() {
        return (w.clone(), a.clone());
    }
    let (mut wv, mut av) = (w.to_f64(), a.to_f64());
    for (x, y) in wv.iter_mut().zip(av.iter_mut()) {
        if !x.is_finite() && !y.is_finite() {
            (*x, *y) = (0.0, 0.0);
        }
    }
    let rebuild = |v: Vec<f64>| {
        smelt_ir::Tensor::from_f64(w.dtype(), w.shape().to_vec(), v).expect("same shape")
    };
    (rebuild(wv), rebuild(av))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn compiled_code_matches_the_reference(steps in prop::collection::vec(step(), 1..16)) {
        let g = build(&steps);
        let pool = ThreadPool::new(2);
        check(&g, true, &pool)?;
        check(&g, false, &pool)?;
    }
}

/// `a + gather(a, perm_k)` twenty times over, with a different constant permutation at
/// each level, reads each value at twice as many coordinates per level; fused, that is
/// 2^20 expressions, so the group is lowered node by node instead, and still computes
/// the same.
#[test]
fn groups_too_large_to_fuse_are_split() {
    use smelt_ir::{DType, Dim, Graph, Op, Tensor, TensorType};
    let mut g = Graph::new("doubling");
    let x = g.add_input("x", TensorType::new(DType::F32, vec![Dim::Fixed(8)]));
    let mut a = x;
    for k in 0..20i64 {
        let perm: Vec<i64> = (0..8).map(|i| (i * 3 + k) % 8).collect();
        let idx = g
            .add(
                "",
                Op::Constant(Tensor::from_i64(DType::I64, vec![8], perm).unwrap()),
                &[],
            )
            .unwrap();
        let t = g.add("", Op::Gather { axis: 0 }, &[a, idx]).unwrap();
        let s = g
            .add("", Op::Binary(smelt_ir::BinaryOp::Add), &[a, t])
            .unwrap();
        // Keep magnitudes small so the comparison stays meaningful.
        let half = g
            .add("", Op::Constant(konst(vec![], 0, Some(0.5))), &[])
            .unwrap();
        a = g
            .add("", Op::Binary(smelt_ir::BinaryOp::Mul), &[s, half])
            .unwrap();
    }
    g.outputs = vec![a];
    let exe = Executable::from_graph(g.clone(), false).unwrap();
    assert!(exe.kernels.len() > 20, "{}", exe.kernel_text());
    let xin = konst(vec![8], 3, None);
    let want = smelt_ir::interp::run(&g, std::slice::from_ref(&xin)).unwrap();
    let got = exe
        .run(&ThreadPool::new(1), &[&smelt::to_host_tensor(&xin)], None)
        .unwrap();
    compare(&want[0], &smelt::to_ir_tensor(&got[0]).unwrap(), 1e-5, 1e-6).unwrap();
}
