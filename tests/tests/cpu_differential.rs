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
        .run(pool, &[smelt::to_host_tensor(&x)], None)
        .map_err(|e| TestCaseError::fail(format!("run: {e}")))?;
    for (w, a) in want.iter().zip(&got) {
        let a = smelt::to_ir_tensor(a).map_err(TestCaseError::fail)?;
        if let Err(e) = compare(w, &a, 1e-4, 1e-5) {
            return Err(TestCaseError::fail(format!(
                "{e} (optimize: {optimize})\ngraph:\n{}\nkernels:\n{}",
                smelt_ir::text::print_graph(g, smelt_ir::text::PrintOptions::default()),
                exe.kernel_text()
            )));
        }
    }
    Ok(())
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
