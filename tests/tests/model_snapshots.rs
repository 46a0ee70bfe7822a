//! Snapshots of the optimized graph of every classic and `light` model, so that any
//! change in what the optimizer produces shows up in review.

use smelt_ir::text::{PrintOptions, print_graph};

#[test]
fn optimized_model_graphs() {
    let models = smelt_tests::require_data("models");
    let names = smelt_tests::model_names();
    assert_eq!(
        names.len(),
        17,
        "expected the 8 classic and 9 light models, found {names:?}"
    );
    for name in names {
        let dir = models.join(&name);
        let model = smelt::Model::load(dir.join("model.onnx")).unwrap();
        let e = model
            .explain(smelt::Stage::Opt, &smelt_tests::model_input_shapes(&dir))
            .unwrap();
        let before: usize = e.before.values().sum();
        let after: usize = e.after.values().sum();
        assert!(
            after <= before,
            "{name}: optimization grew the graph from {before} to {after} nodes"
        );
        insta::assert_snapshot!(
            format!("optimized_{name}"),
            print_graph(&e.graph, PrintOptions::default())
        );
    }
}
