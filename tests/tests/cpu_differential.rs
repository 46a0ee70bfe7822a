//! Differential testing of the CPU back end: on random well-typed graphs, compiled code
//! (optimized, fused, Cranelift-generated) agrees with the reference interpreter on the
//! unoptimized graph, and so does compiled code without the optimizer.

use proptest::prelude::*;
use smelt::Executable;
use smelt_ir::DType;
use smelt_runtime::threads::ThreadPool;
use smelt_tests::compare::compare;
use smelt_tests::random_graph::{konst, on_random_graphs};

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

/// Compiles `text` (optimized or not) and runs it on `inputs` on two threads; panics
/// with the graph and its kernels unless every output matches the reference interpreter
/// within `rtol`/`atol` (NaN matching NaN).
fn agrees_with_reference(
    text: &str,
    inputs: &[smelt_ir::Tensor],
    optimize: bool,
    rtol: f64,
    atol: f64,
) {
    let g = smelt_ir::text::parse_graph(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let want = smelt_ir::interp::run(&g, inputs).unwrap();
    let exe = Executable::from_graph(g, optimize).unwrap();
    let host: Vec<_> = inputs.iter().map(smelt::to_host_tensor).collect();
    let refs: Vec<_> = host.iter().collect();
    let got = exe.run(&ThreadPool::new(2), &refs, None).unwrap();
    for (w, a) in want.iter().zip(&got) {
        let a = smelt::to_ir_tensor(a).unwrap();
        if let Err(e) = compare(w, &a, rtol, atol) {
            panic!(
                "{e} (optimize: {optimize})\n{text}\nkernels:\n{}",
                exe.kernel_text()
            );
        }
    }
}

/// `program` as a deployable carries it: written to a manifest, encoded, decoded and
/// loaded again with the same constants.
fn through_manifest(
    program: &smelt_runtime::program::Program,
    name: &str,
) -> smelt_runtime::program::Program {
    let manifest = program.manifest(name, "x86-64", &[], 1);
    let decoded =
        smelt_runtime::manifest::ManifestProto::decode_bytes(&manifest.encode_bytes()).unwrap();
    smelt_runtime::program::Program::from_manifest(&decoded, program.constants.clone()).unwrap()
}

/// The activation the first Conv or MatMul launch of `program` folds in.
fn folded_activation(
    program: &smelt_runtime::program::Program,
) -> Option<smelt_runtime::kernels::Activation> {
    use smelt_runtime::program::Launch;
    program.launches.iter().find_map(|l| match l {
        Launch::Conv { geometry, .. } => Some(geometry.activation),
        Launch::MatMul { activation, .. } => Some(*activation),
        _ => None,
    })
}

/// `n` weights for the activation-folding graphs, as a text list: multiples of 1/16 in
/// [-0.875, 0.875].
fn weight_list(n: usize) -> String {
    (0..n)
        .map(|i| format!("{:.3}", ((i * 37 + 5) % 29) as f64 / 16.0 - 0.875))
        .collect::<Vec<_>>()
        .join(", ")
}

#[test]
fn compiled_code_matches_the_reference() {
    let pool = ThreadPool::new(2);
    on_random_graphs(file!(), |g| {
        check(g, true, &pool)?;
        check(g, false, &pool)
    });
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

/// Row reductions whose per-step values the inner loop needs again (a softmax's exponentials,
/// and variants where the stash must not apply or must keep other users working) agree
/// with the reference for row lengths around the vector block sizes, including tails.
#[test]
fn stashed_row_reductions_match_the_reference() {
    // (name, body over %x: f32[R, N] and %m = its row max, output %y)
    let bodies = [
        // softmax: exp(x - max) stashed in the output, then divided by the row sum.
        "%e = exp(%d) : f32[R, N]\n  %s = reduce_sum<axes=[1], keep_dims=true>(%e) : f32[R, 1]\n  %y = div(%e, %s) : f32[R, N]",
        // The exponent is not the row minus its max: stashed, then exponentiated in place.
        "%h = tanh(%d) : f32[R, N]\n  %e = exp(%h) : f32[R, N]\n  %s = reduce_sum<axes=[1], keep_dims=true>(%e) : f32[R, 1]\n  %y = div(%e, %s) : f32[R, N]",
        // The twin also feeds another output element-wise expression.
        "%e = exp(%d) : f32[R, N]\n  %s = reduce_sum<axes=[1], keep_dims=true>(%e) : f32[R, 1]\n  %q = div(%e, %s) : f32[R, N]\n  %y = add(%q, %e) : f32[R, N]",
        // log-softmax: the sum's body has no inner-loop twin.
        "%e = exp(%d) : f32[R, N]\n  %s = reduce_sum<axes=[1], keep_dims=true>(%e) : f32[R, 1]\n  %l = log(%s) : f32[R, 1]\n  %y = sub(%d, %l) : f32[R, N]",
        // Two reductions of the same body (sum and max of the exponentials).
        "%e = exp(%d) : f32[R, N]\n  %s = reduce_sum<axes=[1], keep_dims=true>(%e) : f32[R, 1]\n  %t = reduce_max<axes=[1], keep_dims=true>(%e) : f32[R, 1]\n  %u = add(%s, %t) : f32[R, 1]\n  %y = div(%e, %u) : f32[R, N]",
    ];
    for body in bodies {
        for rows in [1usize, 3] {
            // 64 and longer: the row max is the runtime's full-width helper.
            for n in [
                1usize, 3, 4, 5, 7, 8, 9, 12, 15, 16, 17, 31, 33, 63, 64, 100, 1031,
            ] {
                let text = format!(
                    "graph stash (%x: f32[R, N]) {{\n  %m = reduce_max<axes=[1], keep_dims=true>(%x) : f32[R, 1]\n  %d = sub(%x, %m) : f32[R, N]\n  {body}\n  return %y\n}}\n"
                )
                .replace('R', &rows.to_string())
                .replace('N', &n.to_string());
                let x = konst(vec![rows, n], 5, None);
                let x = smelt_ir::Tensor::from_f64(
                    smelt_ir::DType::F32,
                    vec![rows, n],
                    x.to_f64()
                        .iter()
                        .enumerate()
                        .map(|(i, v)| v * (1 + i % 7) as f64 * 9.0)
                        .collect(),
                )
                .unwrap();
                agrees_with_reference(&text, &[x], true, 1e-4, 1e-6);
            }
        }
    }
}

/// A NaN anywhere in a max or min window (vectorized row reductions, stride-1 and
/// stride-2 pooling windows walked four outputs at a time) comes out as NaN, and the
/// other outputs match the reference.
#[test]
fn nan_propagates_through_max_and_min_windows() {
    let graphs = [
        "graph r (%x: f32[3, 37]) {\n  %y = reduce_max<axes=[1], keep_dims=true>(%x) : f32[3, 1]\n  return %y\n}\n",
        "graph r (%x: f32[3, 37]) {\n  %y = reduce_min<axes=[1], keep_dims=true>(%x) : f32[3, 1]\n  return %y\n}\n",
        // Rows of 64 and more: the runtime's full-width max helper.
        "graph r (%x: f32[3, 100]) {\n  %y = reduce_max<axes=[1], keep_dims=true>(%x) : f32[3, 1]\n  return %y\n}\n",
        "graph p (%x: f32[1, 2, 19, 23]) {\n  %y = max_pool<kernel=[3, 3], strides=[2, 2], pads=[0, 0, 0, 0], dilations=[1, 1]>(%x) : f32[1, 2, 9, 11]\n  return %y\n}\n",
        "graph p (%x: f32[1, 2, 19, 23]) {\n  %y = max_pool<kernel=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1]>(%x) : f32[1, 2, 19, 23]\n  return %y\n}\n",
        // Generated window loops (f64; the f32 ones above run the runtime's pooling).
        "graph p (%x: f64[1, 2, 19, 23]) {\n  %y = max_pool<kernel=[3, 3], strides=[2, 2], pads=[0, 0, 0, 0], dilations=[1, 1]>(%x) : f64[1, 2, 9, 11]\n  return %y\n}\n",
        "graph p (%x: f64[1, 2, 19, 23]) {\n  %y = max_pool<kernel=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1]>(%x) : f64[1, 2, 19, 23]\n  return %y\n}\n",
    ];
    for text in graphs {
        let g = smelt_ir::text::parse_graph(text).unwrap();
        let shape = g.ty(g.inputs[0]).fixed_shape().unwrap();
        let n: usize = shape.iter().product();
        for nan_at in [0, 1, 5, n / 2, n - 1] {
            let v: Vec<f64> = (0..n)
                .map(|i| {
                    if i == nan_at {
                        f64::NAN
                    } else {
                        ((i * 37) % 23) as f64 - 11.0
                    }
                })
                .collect();
            let dtype = g.ty(g.inputs[0]).dtype;
            let x = smelt_ir::Tensor::from_f64(dtype, shape.clone(), v).unwrap();
            let want = smelt_ir::interp::run(&g, std::slice::from_ref(&x)).unwrap();
            assert!(
                want[0].to_f64().iter().any(|v| v.is_nan()),
                "the NaN at {nan_at} reaches an output"
            );
            agrees_with_reference(text, &[x], true, 0.0, 0.0);
        }
    }
}

/// Concatenations (whose part is chosen per row, so the inner loop is emitted once per
/// part) agree with the reference: three parts, a part that another output also reads,
/// a part read through a window, and a concat along the last axis (chosen per element).
#[test]
fn concatenations_choose_their_part_per_row() {
    let graphs = [
        "graph c (%a: f32[1, 2, 5, 7], %b: f32[1, 3, 5, 7], %c: f32[1, 1, 5, 7]) {\n  %x = concat<axis=1>(%a, %b, %c) : f32[1, 6, 5, 7]\n  %y = neg(%x) : f32[1, 6, 5, 7]\n  return %y\n}\n",
        "graph c (%a: f32[2, 3, 9], %b: f32[2, 1, 9]) {\n  %e = exp(%b) : f32[2, 1, 9]\n  %x = concat<axis=1>(%a, %e) : f32[2, 4, 9]\n  %z = mul(%e, %e) : f32[2, 1, 9]\n  return %x, %z\n}\n",
        "graph c (%a: f32[1, 2, 6, 6], %b: f32[1, 2, 6, 6]) {\n  %p = max_pool<kernel=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1]>(%b) : f32[1, 2, 6, 6]\n  %x = concat<axis=1>(%a, %p) : f32[1, 4, 6, 6]\n  return %x\n}\n",
        "graph c (%a: f32[3, 5], %b: f32[3, 6]) {\n  %x = concat<axis=1>(%a, %b) : f32[3, 11]\n  return %x\n}\n",
    ];
    for text in graphs {
        let g = smelt_ir::text::parse_graph(text).unwrap();
        let inputs: Vec<smelt_ir::Tensor> = g
            .inputs
            .iter()
            .enumerate()
            .map(|(k, &v)| konst(g.ty(v).fixed_shape().unwrap(), 7 * k as u16 + 1, None))
            .collect();
        for optimize in [false, true] {
            agrees_with_reference(text, &inputs, optimize, 1e-6, 1e-6);
        }
    }
}

/// A concatenation of many parts (a DenseNet block's) reads one part per row: each
/// version of the inner loop knows, from the one condition it split on, every other
/// part's condition, so the generated loads grow with the parts, not with their square
/// (with the versions capped at 8 and no such inference, the 25-part concatenation of
/// DenseNet-121 ran at 0.4 Gvalues/s).
#[test]
fn long_concatenations_read_one_part_per_row() {
    let parts = 20;
    let params: Vec<String> = (0..parts)
        .map(|i| format!("%p{i}: f32[1, 2, 3, 8]"))
        .collect();
    let names: Vec<String> = (0..parts).map(|i| format!("%p{i}")).collect();
    let text = format!(
        "graph c ({}) {{\n  %x = concat<axis=1>({}) : f32[1, {c}, 3, 8]\n  %y = neg(%x) : f32[1, {c}, 3, 8]\n  return %y\n}}\n",
        params.join(", "),
        names.join(", "),
        c = 2 * parts
    );
    let inputs: Vec<smelt_ir::Tensor> = (0..parts)
        .map(|k| konst(vec![1, 2, 3, 8], 5 * k as u16 + 1, None))
        .collect();
    for optimize in [false, true] {
        agrees_with_reference(&text, &inputs, optimize, 1e-6, 1e-6);
    }
    let exe = Executable::from_graph(smelt_ir::text::parse_graph(&text).unwrap(), false).unwrap();
    assert_eq!(exe.kernels.len(), 1, "{}", exe.kernel_text());
    let clif = smelt_cpu::clif_for(&exe.kernels[0].kernel, true).unwrap();
    let loads = clif.matches("load.f32").count();
    assert!(
        loads <= 4 * parts,
        "{loads} loads for {parts} parts: versions read parts they do not store"
    );
}

/// Padded windows agree with the reference: max, average (with and without the padding
/// counted), strides 1 and 2, asymmetric pads, dilation, and rows too short for an
/// interior; in f32 (the runtime's separable pooling, or with dilation a generated
/// loop) and f64 (generated window loops, whose inner loop splits into edges and an
/// interior where the edge checks are known to hold).
#[test]
fn padded_windows_match_the_reference_at_edges_and_inside() {
    let geometries = [
        (
            [1usize, 2, 9, 30],
            [3usize, 3],
            [1usize, 1],
            [1usize, 1, 1, 1],
            [1usize, 1],
        ),
        ([1, 3, 11, 29], [3, 3], [2, 2], [0, 0, 1, 1], [1, 1]),
        ([1, 2, 8, 33], [3, 5], [1, 1], [2, 1, 0, 3], [1, 1]),
        ([1, 1, 7, 40], [3, 3], [1, 2], [2, 2, 2, 2], [2, 2]),
        ([1, 2, 6, 5], [3, 3], [1, 1], [1, 1, 1, 1], [1, 1]),
    ];
    for (input, kernel, strides, pads, dilations) in geometries {
        let out = |d: usize| {
            (input[2 + d] + pads[d] + pads[d + 2] - dilations[d] * (kernel[d] - 1) - 1) / strides[d]
                + 1
        };
        let (oh, ow) = (out(0), out(1));
        for (op, dtype) in ["max_pool", "avg_pool", "avg_pool_include_pad"]
            .into_iter()
            .flat_map(|op| [(op, DType::F32), (op, DType::F64)])
        {
            let t = dtype.name();
            let text = format!(
                "graph w (%x: {t}[{}, {}, {}, {}]) {{\n  %y = {op}<kernel={kernel:?}, strides={strides:?}, pads={pads:?}, dilations={dilations:?}>(%x) : {t}[{}, {}, {oh}, {ow}]\n  return %y\n}}\n",
                input[0], input[1], input[2], input[3], input[0], input[1]
            );
            let x = konst(input.to_vec(), 9, None);
            let x = smelt_ir::Tensor::from_f64(dtype, input.to_vec(), x.to_f64()).unwrap();
            agrees_with_reference(&text, &[x], true, 1e-5, 1e-6);
        }
    }
}

/// Concatenations along the channels of computed values are written in place by the
/// operands' producers, a concatenation of a concatenation too (DenseNet's pattern), one
/// fused with a consumer as well, and give the reference's result.
#[test]
fn concatenations_of_computed_values_need_no_copy() {
    let text = "graph d (%x: f32[1, 16, 6, 6]) {
  %p = max_pool<kernel=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1]>(%x) : f32[1, 16, 6, 6]
  %q = reduce_sum<axes=[1], keep_dims=true>(%x) : f32[1, 1, 6, 6]
  %z = sub(%x, %q) : f32[1, 16, 6, 6]
  %c = concat<axis=1>(%p, %z) : f32[1, 32, 6, 6]
  %r = max_pool<kernel=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1]>(%c) : f32[1, 32, 6, 6]
  %e = concat<axis=1>(%c, %r) : f32[1, 64, 6, 6]
  %s = reduce_sum<axes=[2, 3], keep_dims=true>(%e) : f32[1, 64, 1, 1]
  %w = max_pool<kernel=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1]>(%e) : f32[1, 64, 6, 6]
  return %s, %w
}
";
    let x = konst(vec![1, 16, 6, 6], 5, None);
    agrees_with_reference(text, std::slice::from_ref(&x), false, 1e-5, 1e-6);
    let g = smelt_ir::text::parse_graph(text).unwrap();
    let exe = Executable::from_graph(g, false).unwrap();
    let stores: Vec<String> = exe
        .kernels
        .iter()
        .flat_map(|k| {
            k.kernel
                .params
                .iter()
                .zip(&k.args)
                .filter(|(p, _)| p.role == smelt_fuse::kernel::Role::Output)
                .map(|(_, &v)| exe.graph.value(v).name.clone())
        })
        .collect();
    assert!(
        !stores.iter().any(|v| v == "c" || v == "e") && stores.iter().any(|v| v == "s"),
        "no kernel stores a concatenation; the one fused with the reduction still stores \
         the sum: {stores:?}\n{}",
        exe.plan.print(&exe.graph)
    );
}

/// Steps of a recurrence that slice a computed sequence read their slice in place (a view
/// of the sequence's buffer, no copy kernel), so their kernels are identical and share
/// one function, and the results are the reference's. Slices that are not one aligned,
/// contiguous range still copy.
#[test]
fn contiguous_slices_are_views_and_identical_steps_share_code() {
    let path = smelt_tests::workspace_root().join("tests/fusion/slice_views.graph");
    let text = std::fs::read_to_string(path).unwrap();
    let inputs = [
        konst(vec![3, 1, 8], 1, None),
        konst(vec![8, 64], 2, None),
        konst(vec![16, 64], 3, None),
        konst(vec![1, 16], 4, None),
    ];
    agrees_with_reference(&text, &inputs, false, 1e-5, 1e-6);
    let g = smelt_ir::text::parse_graph(&text).unwrap();
    let exe = Executable::from_graph(g, false).unwrap();
    let params: Vec<String> = exe
        .kernels
        .iter()
        .flat_map(|k| k.args.iter().map(|&v| exe.graph.value(v).name.clone()))
        .collect();
    for step in ["s0", "s1", "s2"] {
        assert!(
            params.contains(&step.to_string()),
            "{step} read as a view: {params:?}"
        );
    }
    let steps: Vec<usize> = exe
        .kernels
        .iter()
        .enumerate()
        .filter(|(_, k)| k.kernel.name.ends_with("_reshape"))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(steps.len(), 3, "{}", exe.kernel_text());
    let functions_of_steps: std::collections::BTreeSet<usize> = exe
        .program
        .launches
        .iter()
        .filter_map(|l| match l {
            smelt_runtime::program::Launch::Loop { name, function, .. }
                if name.ends_with("_reshape") =>
            {
                Some(*function)
            }
            _ => None,
        })
        .collect();
    assert_eq!(functions_of_steps.len(), 1, "{}", exe.kernel_text());
    // 3 matmuls of the same shape share one entry too; each remaining loop is distinct.
    assert!(
        exe.functions.len() < exe.kernels.len(),
        "{:?}",
        exe.functions
    );
    let copies = exe
        .kernels
        .iter()
        .filter(|k| k.kernel.name.contains("slice"))
        .count();
    assert_eq!(
        copies,
        2,
        "column and unaligned slices copy: {}",
        exe.kernel_text()
    );
}

/// Products of a few rows with a constant weight run on the weight packed into panels at
/// compile time: transposed or not, with a bias, with batches folded into rows, and with
/// a last panel of 10 columns. The constants hold the packed form instead of the weight
/// (not both), the results are the reference's, and a manifest (what deployables carry)
/// keeps the packed launch.
#[test]
fn skinny_products_run_on_weights_packed_at_compile_time() {
    let (k, n) = (300usize, 250usize);
    for (trans_b, a_shape) in [(true, vec![24usize, k]), (false, vec![2, 5, k])] {
        let w_shape = if trans_b { [n, k] } else { [k, n] };
        let list = |len: usize, seed: usize| {
            (0..len)
                .map(|i| format!("{:.3}", ((i * 37 + seed) % 29) as f64 / 16.0 - 0.875))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let dims = |s: &[usize]| {
            s.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut out_shape = a_shape.clone();
        *out_shape.last_mut().unwrap() = n;
        let text = format!(
            "graph skinny (%x: f32[{}]) {{\n  %w = constant f32[{}] [{}]\n  %b = constant f32[{n}] [{}]\n  %y = matmul{}(%x, %w, %b) : f32[{}]\n  return %y\n}}\n",
            dims(&a_shape),
            dims(&w_shape),
            list(k * n, 3),
            list(n, 5),
            if trans_b { "<trans_b=true>" } else { "" },
            dims(&out_shape),
        );
        let x = konst(a_shape.clone(), 7, None);
        agrees_with_reference(&text, std::slice::from_ref(&x), true, 1e-4, 1e-5);
        let g = smelt_ir::text::parse_graph(&text).unwrap();
        let exe = Executable::from_graph(g, true).unwrap();
        let program = &exe.program;
        let packed: Vec<&str> = program
            .buffers
            .iter()
            .map(|b| b.name.as_str())
            .filter(|name| name.ends_with("(packed)"))
            .collect();
        assert_eq!(packed.len(), 1, "one packed weight: {:?}", program.buffers);
        let weight_bytes = k * n * 4;
        let constants = program.constants.as_slice().len();
        assert!(
            constants < weight_bytes + weight_bytes / 4,
            "the constants ({constants} bytes) hold the {weight_bytes}-byte weight once"
        );
        let launch_packed = |p: &smelt_runtime::program::Program| {
            p.launches.iter().any(|l| {
                matches!(
                    l,
                    smelt_runtime::program::Launch::MatMul { b_packed: true, .. }
                )
            })
        };
        assert!(launch_packed(program));
        let back = through_manifest(program, "skinny");
        assert!(launch_packed(&back), "the manifest keeps the packed launch");
    }
}

/// A compiled executable holds its weights once: the constants it stores move from its
/// graph into the program's blob, leaving `program_constant` nodes that still name and
/// type them (for profiles and plans) but refuse to be evaluated or compiled again.
#[test]
fn weights_move_from_the_graph_into_the_program() {
    let (k, n) = (48usize, 40usize);
    let list = |len: usize| {
        (0..len)
            .map(|i| format!("{:.3}", ((i * 13) % 23) as f64 / 16.0 - 0.7))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let text = format!(
        "graph weights (%x: f32[64, {k}]) {{\n  %w = constant f32[{k}, {n}] [{}]\n  %y = matmul(%x, %w) : f32[64, {n}]\n  %z = tanh(%y) : f32[64, {n}]\n  return %z\n}}\n",
        list(k * n)
    );
    let x = konst(vec![64, k], 3, None);
    agrees_with_reference(&text, std::slice::from_ref(&x), true, 1e-4, 1e-5);
    let g = smelt_ir::text::parse_graph(&text).unwrap();
    let exe = Executable::from_graph(g, true).unwrap();
    let weight = exe
        .graph
        .nodes
        .iter()
        .find(|node| matches!(&node.op, smelt_ir::Op::ProgramConstant(ty) if ty.num_elements() == Some(k * n)))
        .unwrap_or_else(|| {
            panic!(
                "no program_constant holds the weight:\n{}",
                smelt_ir::text::print_graph(&exe.graph, Default::default())
            )
        });
    let smelt_ir::Op::ProgramConstant(ty) = &weight.op else {
        unreachable!()
    };
    let name = &exe.graph.value(weight.outputs[0]).name;
    let weight_bytes = k * n * 4;
    assert!(exe.program.constants.as_slice().len() >= weight_bytes);
    let left: usize = exe
        .graph
        .nodes
        .iter()
        .filter_map(|node| match &node.op {
            smelt_ir::Op::Constant(t) => Some(t.byte_len()),
            _ => None,
        })
        .sum();
    assert!(left < 64, "{left} bytes of constants stay in the graph");
    let printed = smelt_ir::text::print_graph(&exe.graph, Default::default());
    assert!(
        printed.contains(&format!("%{name} = program_constant {ty}")),
        "{printed}"
    );
    let err = smelt_ir::interp::run(&exe.graph, std::slice::from_ref(&x)).unwrap_err();
    assert!(err.to_string().contains("program_constant"), "{err}");
    let err = Executable::from_graph(exe.graph.clone(), false).unwrap_err();
    assert!(
        err.to_string().contains("moved into a compiled program"),
        "{err}"
    );
}

/// f32 resizes of the two innermost axes run the runtime's separable kernel (nearest,
/// linear and cubic sampling, up and down, rank 3 and 4) and match the reference; a
/// resize of an outer axis and crop-and-resize stay generated loops. A manifest keeps
/// the kernel's taps.
#[test]
fn inner_axis_resizes_run_the_runtime_kernel() {
    use smelt_runtime::program::{Launch, Program};
    let cases = [
        // (input, sizes, scales, mode, coord, nearest, exclude_outside, runs the kernel)
        (
            vec![1, 2, 5, 7],
            vec![1, 2, 12, 10],
            "linear",
            "half_pixel",
            "floor",
            false,
            true,
        ),
        (
            vec![2, 3, 4, 4],
            vec![2, 3, 8, 8],
            "nearest",
            "asymmetric",
            "floor",
            false,
            true,
        ),
        (
            vec![1, 2, 6, 5],
            vec![1, 2, 4, 9],
            "cubic",
            "align_corners",
            "round_prefer_floor",
            true,
            true,
        ),
        (
            vec![1, 1, 6, 5],
            vec![1, 1, 7, 3],
            "cubic",
            "half_pixel",
            "round_prefer_floor",
            false,
            true,
        ),
        (
            vec![3, 4, 6],
            vec![3, 8, 3],
            "linear",
            "pytorch_half_pixel",
            "floor",
            false,
            true,
        ),
        (
            vec![1, 2, 4, 4],
            vec![1, 4, 4, 4],
            "nearest",
            "asymmetric",
            "floor",
            false,
            false,
        ),
        (
            vec![1, 1, 4, 4],
            vec![1, 1, 3, 3],
            "linear",
            "tf_crop_and_resize",
            "floor",
            false,
            false,
        ),
    ];
    let dims = |s: &[usize]| {
        s.iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (input, sizes, mode, coord, nearest, exclude, runs_kernel) in cases {
        let scales: Vec<String> = input
            .iter()
            .zip(&sizes)
            .map(|(&i, &o)| format!("{:?}", o as f64 / i as f64))
            .collect();
        let text = format!(
            "graph resize (%x: f32[{}]) {{\n  %roi = constant f32[{}] [{}]\n  %y = resize<sizes=[{}], scales=[{}], mode={mode}, coord={coord}, nearest={nearest}, cubic_coeff=-0.75, exclude_outside={exclude}, extrapolation=0.5>(%x, %roi) : f32[{}]\n  return %y\n}}\n",
            dims(&input),
            2 * input.len(),
            // Crop-and-resize reads the middle half and a bit outside (the extrapolation).
            (0..2 * input.len())
                .map(|i| if i < input.len() { "-0.1" } else { "0.6" })
                .collect::<Vec<_>>()
                .join(", "),
            dims(&sizes),
            scales.join(", "),
            dims(&sizes),
        );
        let x = konst(input.clone(), 5, None);
        agrees_with_reference(&text, std::slice::from_ref(&x), false, 1e-5, 1e-6);
        let g = smelt_ir::text::parse_graph(&text).unwrap();
        let exe = Executable::from_graph(g, false).unwrap();
        let resize_launch = |p: &Program| {
            p.launches.iter().find_map(|l| match l {
                Launch::Resize { geometry, .. } => Some(geometry.clone()),
                _ => None,
            })
        };
        let geometry = resize_launch(&exe.program);
        assert_eq!(
            geometry.is_some(),
            runs_kernel,
            "{input:?} -> {sizes:?} {mode} {coord}:\n{}",
            exe.kernel_text()
        );
        let back = through_manifest(&exe.program, "resize");
        assert_eq!(
            resize_launch(&back),
            geometry,
            "the manifest keeps the taps"
        );
    }
}

/// A SiLU after an f32 convolution is folded into the call on every convolution path
/// (im2col, pointwise, channels-last depthwise and grouped, sparse taps) and matches
/// the reference; a manifest keeps it. The same graph in f64 keeps its epilogue loop.
#[test]
fn silu_after_a_convolution_is_folded_into_the_call() {
    use smelt_runtime::kernels::Activation;
    // (channels in, filters, kernel, group, pads, dilation)
    let cases = [
        (4, 6, 3, 1, 1, 1),
        (4, 6, 1, 1, 0, 1),
        (16, 16, 3, 16, 1, 1),
        (16, 16, 3, 2, 1, 1),
        (4, 6, 3, 1, 6, 6),
    ];
    for (c, m, k, group, pad, dilation) in cases {
        for dtype in ["f32", "f64"] {
            let text = format!(
                "graph silu (%x: {dtype}[1, {c}, 7, 7]) {{\n  %w = constant {dtype}[{m}, {}, {k}, {k}] [{}]\n  %c = conv<strides=[1, 1], pads=[{pad}, {pad}, {pad}, {pad}], dilations=[{dilation}, {dilation}], group={group}>(%x, %w) : {dtype}[1, {m}, 7, 7]\n  %s = sigmoid(%c) : {dtype}[1, {m}, 7, 7]\n  %y = mul(%c, %s) : {dtype}[1, {m}, 7, 7]\n  return %y\n}}\n",
                c / group,
                weight_list(m * (c / group) * k * k),
            );
            let mut x = konst(vec![1, c, 7, 7], 3, None);
            if dtype == "f64" {
                x = x.cast(DType::F64);
            }
            agrees_with_reference(&text, std::slice::from_ref(&x), false, 1e-5, 1e-6);
            let g = smelt_ir::text::parse_graph(&text).unwrap();
            let exe = Executable::from_graph(g, false).unwrap();
            let want = if dtype == "f32" {
                Activation::Silu
            } else {
                Activation::None
            };
            assert_eq!(
                folded_activation(&exe.program),
                Some(want),
                "{dtype} c={c} m={m} k={k} group={group}:\n{}",
                exe.kernel_text()
            );
            let back = through_manifest(&exe.program, "silu");
            assert_eq!(
                folded_activation(&back),
                Some(want),
                "the manifest keeps the activation"
            );
        }
    }
}

/// The exact GELU after an f32 MatMul or Conv, in the orders exporters write it, is
/// folded into the call and matches the reference; the manifest keeps it; in f64 the
/// epilogue stays a loop.
#[test]
fn gelu_after_a_product_is_folded_into_the_call() {
    use smelt_runtime::kernels::Activation;
    // The GELU of %h, as lines producing %y.
    let forms = [
        "  %c = constant {t}[] [1.4142135]\n  %d = div(%h, %c) : {t}[{s}]\n  %e = erf(%d) : {t}[{s}]\n  %one = constant {t}[] [1.0]\n  %p = add(%e, %one) : {t}[{s}]\n  %q = mul(%h, %p) : {t}[{s}]\n  %half = constant {t}[] [0.5]\n  %y = mul(%q, %half) : {t}[{s}]\n",
        "  %c = constant {t}[] [0.70710677]\n  %d = mul(%h, %c) : {t}[{s}]\n  %e = erf(%d) : {t}[{s}]\n  %one = constant {t}[] [1.0]\n  %p = add(%one, %e) : {t}[{s}]\n  %half = constant {t}[] [0.5]\n  %q = mul(%h, %half) : {t}[{s}]\n  %y = mul(%q, %p) : {t}[{s}]\n",
    ];
    let products = [
        // (input shape, the lines producing %h, the shape of %h)
        (
            "4, 24",
            "  %w = constant {t}[24, 40] [{w960}]\n  %h = matmul(%x, %w) : {t}[4, 40]\n",
            "4, 40",
        ),
        (
            "1, 6, 5, 5",
            "  %w = constant {t}[8, 6, 3, 3] [{w432}]\n  %h = conv<strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1], group=1>(%x, %w) : {t}[1, 8, 5, 5]\n",
            "1, 8, 5, 5",
        ),
    ];
    for (input, product, shape) in products {
        for form in forms {
            for dtype in ["f32", "f64"] {
                let text = format!(
                    "graph gelu (%x: {dtype}[{input}]) {{\n{}{}  return %y\n}}\n",
                    product
                        .replace("{w960}", &weight_list(960))
                        .replace("{w432}", &weight_list(432)),
                    form.replace("{s}", shape)
                )
                .replace("{t}", dtype);
                let dims: Vec<usize> = input.split(", ").map(|d| d.parse().unwrap()).collect();
                let mut x = konst(dims, 9, None);
                if dtype == "f64" {
                    x = x.cast(DType::F64);
                }
                agrees_with_reference(&text, std::slice::from_ref(&x), false, 1e-5, 1e-6);
                let g = smelt_ir::text::parse_graph(&text).unwrap();
                let exe = Executable::from_graph(g, false).unwrap();
                let want = if dtype == "f32" {
                    Activation::Gelu
                } else {
                    Activation::None
                };
                assert_eq!(
                    folded_activation(&exe.program),
                    Some(want),
                    "{text}\n{}",
                    exe.kernel_text()
                );
                let back = through_manifest(&exe.program, "gelu");
                assert_eq!(folded_activation(&back), Some(want));
            }
        }
    }
}

/// A clip to constant bounds after an f32 Conv or MatMul (ReLU6 and the like, in either
/// nesting) is folded into the call on every convolution path and matches the
/// reference; the manifest keeps its bounds. In f64, and where the low bound exceeds the
/// high one (every value is then the high bound), the epilogue stays a loop.
#[test]
fn clip_after_a_product_is_folded_into_the_call() {
    use smelt_runtime::kernels::Activation;
    // (input shape, the lines producing %h, the shape of %h): implicit or im2col,
    // pointwise, depthwise, sparse taps, and a MatMul.
    let conv = |c: usize, m: usize, k: usize, group: usize, pad: usize| {
        (
            format!("1, {c}, 7, 7"),
            format!(
                "  %w = constant {{t}}[{m}, {}, {k}, {k}] [{}]\n  %h = conv<strides=[1, 1], pads=[{pad}, {pad}, {pad}, {pad}], dilations=[{pad}, {pad}], group={group}>(%x, %w) : {{t}}[1, {m}, 7, 7]\n",
                c / group,
                weight_list(m * (c / group) * k * k)
            )
            .replace("dilations=[0, 0]", "dilations=[1, 1]"),
            format!("1, {m}, 7, 7"),
        )
    };
    let products = [
        conv(4, 6, 3, 1, 1),
        conv(4, 6, 1, 1, 0),
        conv(16, 16, 3, 16, 1),
        conv(4, 6, 3, 1, 6),
        (
            "4, 24".to_string(),
            format!(
                "  %w = constant {{t}}[24, 40] [{}]\n  %h = matmul(%x, %w) : {{t}}[4, 40]\n",
                weight_list(960)
            ),
            "4, 40".to_string(),
        ),
    ];
    // (low, high, max first)
    let clips = [
        (0.0f32, 6.0f32, true),
        (-0.5, 0.75, false),
        (0.5, -0.5, true),
    ];
    for (input, product, shape) in &products {
        for (low, high, max_first) in clips {
            let (first, second) = if max_first {
                (("max", low), ("min", high))
            } else {
                (("min", high), ("max", low))
            };
            for dtype in ["f32", "f64"] {
                let text = format!(
                    "graph clip (%x: {dtype}[{input}]) {{\n{product}  %a = constant {{t}}[] [{:?}]\n  %m = {}(%h, %a) : {{t}}[{shape}]\n  %b = constant {{t}}[] [{:?}]\n  %y = {}(%b, %m) : {{t}}[{shape}]\n  return %y\n}}\n",
                    first.1, first.0, second.1, second.0,
                )
                .replace("{t}", dtype);
                let dims: Vec<usize> = input.split(", ").map(|d| d.parse().unwrap()).collect();
                let mut x = konst(dims, 11, None);
                if dtype == "f64" {
                    x = x.cast(DType::F64);
                }
                agrees_with_reference(&text, std::slice::from_ref(&x), false, 1e-5, 1e-6);
                let g = smelt_ir::text::parse_graph(&text).unwrap();
                let exe = Executable::from_graph(g, false).unwrap();
                let want = if dtype == "f32" && low <= high {
                    Activation::Clip { low, high }
                } else {
                    Activation::None
                };
                assert_eq!(
                    folded_activation(&exe.program),
                    Some(want),
                    "{text}\n{}",
                    exe.kernel_text()
                );
                let back = through_manifest(&exe.program, "clip");
                assert_eq!(
                    folded_activation(&back),
                    Some(want),
                    "the manifest keeps the bounds"
                );
            }
        }
    }
}

/// `pow` by a constant whole exponent of 2, 3 or 4 runs as products, and keeps pow's
/// special values: signed zeros and infinities by the exponent's parity, NaN, overflow;
/// other exponents still go through log and exp. Against the reference interpreter.
#[test]
fn small_whole_powers_keep_pow_special_values() {
    let values = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.0,
        -0.0,
        1.0,
        -1.0,
        2.5,
        -2.5,
        1.0e13,
        -1.0e13,
        0.3,
    ];
    for exponent in ["2.0", "3.0", "4.0", "0.5", "-1.0"] {
        let text = format!(
            "graph p (%x: f32[3, 4]) {{\n  %c = constant f32[] [{exponent}]\n  %y = pow(%x, %c) : f32[3, 4]\n  return %y\n}}\n"
        );
        let x = smelt_ir::Tensor::from_f64(
            DType::F32,
            vec![3, 4],
            values.iter().map(|&v| f64::from(v)).collect(),
        )
        .unwrap();
        // Products round once or twice; log and exp a few ulp more.
        let products = ["2.0", "3.0", "4.0"].contains(&exponent);
        let rtol = if products { 1e-6 } else { 1e-5 };
        agrees_with_reference(&text, std::slice::from_ref(&x), false, rtol, 0.0);
        let g = smelt_ir::text::parse_graph(&text).unwrap();
        let exe = Executable::from_graph(g, false).unwrap();
        let host = smelt::to_host_tensor(&x);
        let got = exe.run(&ThreadPool::new(1), &[&host], None).unwrap();
        let got = smelt::to_ir_tensor(&got[0]).unwrap().to_f64();
        if exponent == "3.0" {
            // Odd: the sign survives, on zeros too.
            assert!(
                got[4] == 0.0 && got[4].is_sign_negative(),
                "(-0)^3 = {}",
                got[4]
            );
            assert_eq!(got[2], f64::NEG_INFINITY);
            assert_eq!(got[8], -15.625);
            assert_eq!(got[10], f64::NEG_INFINITY, "(-1e13)^3 overflows f32");
        }
        if exponent == "2.0" || exponent == "4.0" {
            assert!(
                got[4] == 0.0 && got[4].is_sign_positive(),
                "(-0)^even = {}",
                got[4]
            );
            assert_eq!(got[2], f64::INFINITY);
        }
    }
}

/// A reduction of large planes to few values (a squeeze-and-excitation block's global
/// average pool: 8 planes of 64x64 to 8 values) may be split over the threads: its
/// chunks are sized by the inputs each value reads, not by the values computed (by
/// those, 16384 values a chunk, it never left one thread). An elementwise kernel of as
/// few values stays whole, and both agree with the reference on two threads.
#[test]
fn reductions_of_large_inputs_split_over_the_threads() {
    let text = "graph pool (%x: f32[1, 8, 64, 64], %y: f32[8, 64]) {
  %m = reduce_mean<axes=[2, 3], keep_dims=true>(%x) : f32[1, 8, 1, 1]
  %r = tanh(%y) : f32[8, 64]
  return %m, %r
}";
    let inputs = [
        konst(vec![1, 8, 64, 64], 1, None),
        konst(vec![8, 64], 2, None),
    ];
    agrees_with_reference(text, &inputs, false, 1e-5, 1e-6);
    let g = smelt_ir::text::parse_graph(text).unwrap();
    let exe = Executable::from_graph(g, false).unwrap();
    let loops: Vec<(String, usize, usize)> = exe
        .program
        .launches
        .iter()
        .filter_map(|l| match l {
            smelt_runtime::program::Launch::Loop {
                name,
                extent,
                min_chunk,
                ..
            } => Some((name.clone(), *extent, *min_chunk)),
            _ => None,
        })
        .collect();
    let find = |op: &str| {
        loops
            .iter()
            .find(|(name, ..)| name.contains(op))
            .unwrap_or_else(|| panic!("no {op} loop: {loops:?}\n{}", exe.kernel_text()))
    };
    let (_, extent, min_chunk) = find("reduce_mean");
    assert!(
        min_chunk * 2 <= *extent,
        "the pool's chunks can split it: {loops:?}"
    );
    let (_, extent, min_chunk) = find("tanh");
    assert!(min_chunk >= extent, "stays whole: {loops:?}");
}

/// A layer normalization's mean and variance passes over rows of at least 64 call the
/// runtime's full-width row helpers (shorter rows keep the generated loop), and every
/// length matches the reference, NaN and infinite inputs included.
#[test]
fn normalization_rows_match_the_reference() {
    for n in [63usize, 64, 96, 100, 768, 1031] {
        for rows in [1usize, 3] {
            let text = format!(
                "graph ln (%x: f32[{rows}, {n}]) {{
  %m = reduce_mean<axes=[1], keep_dims=true>(%x) : f32[{rows}, 1]
  %d = sub(%x, %m) : f32[{rows}, {n}]
  %q = mul(%d, %d) : f32[{rows}, {n}]
  %v = reduce_mean<axes=[1], keep_dims=true>(%q) : f32[{rows}, 1]
  %eps = constant f32[1] [0.00001]
  %ve = add(%v, %eps) : f32[{rows}, 1]
  %s = sqrt(%ve) : f32[{rows}, 1]
  %y = div(%d, %s) : f32[{rows}, {n}]
  return %y, %m
}}
"
            );
            let x = konst(vec![rows, n], 7, None);
            agrees_with_reference(&text, std::slice::from_ref(&x), true, 1e-4, 1e-5);
            let mut values = x.to_f64();
            values[n / 2] = f64::NAN;
            if rows > 1 {
                values[n + 1] = f64::INFINITY;
            }
            let special =
                smelt_ir::Tensor::from_f64(smelt_ir::DType::F32, vec![rows, n], values).unwrap();
            agrees_with_reference(&text, &[special], true, 1e-4, 1e-5);
            let g = smelt_ir::text::parse_graph(&text).unwrap();
            let exe = Executable::from_graph(g, true).unwrap();
            let clif: String = exe
                .kernels
                .iter()
                .map(|k| smelt_cpu::clif(&k.kernel).unwrap())
                .collect();
            // CLIF names imported functions by number: the helpers by their signatures,
            // the sum's (pointer, length) and the squared distances' (pointer, length,
            // center); this graph calls nothing else.
            for signature in ["(i64, i64) -> f32", "(i64, i64, f32) -> f32"] {
                assert_eq!(
                    clif.contains(signature),
                    n >= 64,
                    "a helper {signature} at {rows} x {n}:\n{clif}"
                );
            }
        }
    }
}
