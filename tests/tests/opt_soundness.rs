//! Soundness of the optimizer: on random well-typed graphs, the reference
//! interpreter's outputs before and after the standard pipeline agree.

use proptest::prelude::*;
use smelt_tests::compare::compare;
use smelt_tests::random_graph::{konst, on_random_graphs};

#[test]
fn optimized_graphs_compute_the_same() {
    on_random_graphs(file!(), |g| {
        let x = konst(vec![2, 3, 4, 4], 11, None);
        let want = smelt_ir::interp::run(g, std::slice::from_ref(&x)).unwrap();
        let mut opt = g.clone();
        smelt_opt::Pipeline::standard(Default::default())
            .run(&mut opt)
            .unwrap();
        let got = smelt_ir::interp::run(&opt, &[x]).unwrap();
        for (w, a) in want.iter().zip(&got) {
            if let Err(e) = compare(w, a, 1e-4, 1e-5) {
                return Err(TestCaseError::fail(format!(
                    "{e}\nbefore:\n{}\nafter:\n{}",
                    smelt_ir::text::print_graph(g, smelt_ir::text::PrintOptions::default()),
                    smelt_ir::text::print_graph(&opt, smelt_ir::text::PrintOptions::default())
                )));
            }
        }
        Ok(())
    });
}
