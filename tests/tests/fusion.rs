//! The fusion planner: plans of hand-written graphs (snapshots) and a valid plan for
//! every optimized classic and light model.

use smelt_ir::text::parse_graph;

#[test]
fn fusion_files() {
    let files = smelt_tests::graph_files("fusion");
    assert!(files.len() >= 4);
    for file in files {
        let name = file.file_stem().unwrap().to_string_lossy().to_string();
        let g = parse_graph(&std::fs::read_to_string(&file).unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let plan = smelt_fuse::plan(&g).unwrap();
        plan.verify(&g).unwrap_or_else(|e| panic!("{name}: {e}"));
        insta::assert_snapshot!(format!("fusion_{name}"), plan.print(&g));
    }
}

#[test]
fn softmax_and_layernorm_are_one_kernel_each() {
    for name in ["softmax", "layernorm"] {
        let path = smelt_tests::workspace_root().join(format!("tests/fusion/{name}.graph"));
        let g = parse_graph(&std::fs::read_to_string(path).unwrap()).unwrap();
        let plan = smelt_fuse::plan(&g).unwrap();
        assert_eq!(plan.groups.len(), 1, "{name}:\n{}", plan.print(&g));
        assert_eq!(plan.groups[0].kind, smelt_fuse::GroupKind::Reduction);
    }
}

#[test]
fn every_model_gets_a_valid_plan() {
    let models = smelt_tests::require_data("models");
    let names = smelt_tests::model_names();
    for name in names {
        let model = smelt::Model::load(models.join(&name).join("model.onnx")).unwrap();
        let e = model
            .explain(smelt::Stage::Opt, &Default::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let plan = smelt_fuse::plan(&e.graph).unwrap();
        plan.verify(&e.graph)
            .unwrap_or_else(|err| panic!("{name}: {err}"));
        let kernels = plan.groups.len();
        let nodes = e
            .graph
            .nodes
            .iter()
            .filter(|n| !matches!(n.op, smelt_ir::Op::Constant(_)))
            .count();
        assert!(
            kernels <= nodes,
            "{name}: {kernels} kernels for {nodes} nodes"
        );
        if name == "mnist_cnn" {
            let text = plan.print(&e.graph);
            // Conv + bias + ReLU is one contraction group; the softmax at the end is one reduction group.
            assert_eq!(
                text.matches("(contraction): conv, max").count(),
                2,
                "{text}"
            );
            assert!(
                text.contains("(reduction): reduce_max, sub, exp, reduce_sum, div"),
                "{text}"
            );
        }
    }
}

/// A channel shuffle (reshape, transpose, reshape) reads its input through the split
/// coordinates again: the lowering sees through the flattening, so the only division left
/// is the one the shuffle itself needs (channel / groups), and the load is contiguous.
#[test]
fn channel_shuffle_indexes_without_flattening() {
    let g = parse_graph(
        "graph shuffle (%x: f32[1, 8, 6, 5]) {
  %a = neg(%x) : f32[1, 8, 6, 5]
  %r = reshape<shape=[1, 2, 4, 6, 5]>(%a) : f32[1, 2, 4, 6, 5]
  %t = transpose<perm=[0, 2, 1, 3, 4]>(%r) : f32[1, 4, 2, 6, 5]
  %y = reshape<shape=[1, 8, 6, 5]>(%t) : f32[1, 8, 6, 5]
  return %y
}",
    )
    .unwrap();
    let plan = smelt_fuse::plan(&g).unwrap();
    let kernels = smelt_fuse::lower(&g, &plan).unwrap();
    let text: String = kernels.iter().map(|k| k.kernel.print()).collect();
    assert_eq!(text.matches(" div ").count(), 1, "{text}");
    assert_eq!(text.matches(" rem ").count(), 1, "{text}");
}

/// Axes that every index walks as one merge into one loop axis (elementwise kernels become
/// one flat loop; a channel concat keeps its channel axis and merges height and width),
/// while a padded window's checks on height and width keep them apart; the compiled
/// kernels still compute what the reference does.
#[test]
fn contiguous_axes_merge_into_one_loop() {
    let cases = [
        (
            "graph e (%x: f32[2, 3, 5, 7], %y: f32[3, 1, 7]) {
  %a = add(%x, %y) : f32[2, 3, 5, 7]
  %z = exp(%a) : f32[2, 3, 5, 7]
  return %z
}",
            "for [2, 3, 5, 7]",
            "for [2, 3, 35]",
        ),
        (
            "graph e (%x: f32[2, 3, 5, 7]) {
  %z = exp(%x) : f32[2, 3, 5, 7]
  return %z
}",
            "for [210]",
            "for [2, 3, 5, 7]",
        ),
        (
            "graph c (%x: f32[1, 2, 5, 7], %y: f32[1, 3, 5, 7]) {
  %z = concat<axis=1>(%x, %y) : f32[1, 5, 5, 7]
  return %z
}",
            "for [1, 5, 35]",
            "for [1, 5, 5, 7]",
        ),
        (
            // Dilated, so a generated window loop rather than the runtime's pooling.
            "graph p (%x: f32[1, 2, 9, 11]) {
  %z = max_pool<kernel=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 2]>(%x) : f32[1, 2, 9, 9]
  return %z
}",
            "for [1, 2, 9, 9]",
            "for [1, 2, 81]",
        ),
        (
            // A reduction over trailing axes reads them as one run: the flattened
            // variable's split into coordinates and their linearization cancel.
            "graph m (%x: f32[1, 4, 5, 7]) {
  %z = reduce_mean<axes=[2, 3], keep_dims=true>(%x) : f32[1, 4, 1, 1]
  return %z
}",
            "reduce_sum r0 < 35",
            "rem ",
        ),
    ];
    let pool = smelt_runtime::threads::ThreadPool::new(2);
    for (text, want, not) in cases {
        let g = parse_graph(text).unwrap();
        let plan = smelt_fuse::plan(&g).unwrap();
        let kernels = smelt_fuse::lower(&g, &plan).unwrap();
        let printed: String = kernels.iter().map(|k| k.kernel.print()).collect();
        assert!(printed.contains(want), "{want} expected:\n{printed}");
        assert!(!printed.contains(not), "{not} unexpected:\n{printed}");
        let inputs: Vec<smelt_ir::Tensor> = g
            .inputs
            .iter()
            .enumerate()
            .map(|(k, &v)| {
                smelt_tests::random_graph::konst(g.ty(v).fixed_shape().unwrap(), k as u16 + 3, None)
            })
            .collect();
        let expected = smelt_ir::interp::run(&g, &inputs).unwrap();
        let exe = smelt::Executable::from_graph(g.clone(), false).unwrap();
        let host: Vec<_> = inputs.iter().map(smelt::to_host_tensor).collect();
        let refs: Vec<_> = host.iter().collect();
        let got = exe.run(&pool, &refs, None).unwrap();
        let got = smelt::to_ir_tensor(&got[0]).unwrap();
        smelt_tests::compare::compare(&expected[0], &got, 1e-6, 1e-6).unwrap();
    }
}
