//! NaN, infinities, signed zeros and overflow through elementwise ops, reductions and
//! softmax: the compiled code gives what onnxruntime gives (NaN where NaN, the same
//! infinities), on one ONNX model run by both, except that smelt's max and min
//! reductions propagate NaN where onnxruntime drops it.

use smelt_onnx::proto::{AttributeProto, attribute_proto::AttributeType};
use smelt_tests::builder::{f32_info, model, node};
use smelt_tests::compare::compare;
use smelt_tests::{run_onnxruntime, workspace_root};

const UNARY: &[&str] = &[
    "Relu",
    "Neg",
    "Abs",
    "Exp",
    "Log",
    "Sqrt",
    "Tanh",
    "Sigmoid",
    "Reciprocal",
    "Floor",
    "Ceil",
    "Sign",
    "Erf",
    "Sin",
    "Cos",
    "Softplus",
    "IsNaN",
];
const BINARY: &[&str] = &["Add", "Sub", "Mul", "Div", "Max", "Min", "Pow"];
const REDUCE: &[&str] = &[
    "ReduceMax",
    "ReduceMin",
    "ReduceSum",
    "ReduceMean",
    "Softmax",
    "LogSoftmax",
];

/// Reductions of the NaN-holding `y` where onnxruntime drops the NaN.
const NAN_PROPAGATING: &[&str] = &["ReduceMax_y", "ReduceMin_y"];

#[test]
fn special_values_propagate_as_in_onnxruntime() {
    let x = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.0,
        -0.0,
        1.0,
        -1.0,
        3.0e38,
    ];
    let y = [
        1.0,
        f32::NAN,
        0.0,
        0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        -0.0,
        3.0e38,
    ];
    let mut nodes = Vec::new();
    let mut outputs = Vec::new();
    for op in UNARY {
        let out = format!("{op}_x");
        nodes.push(node(op, op, &["x"], &[&out]));
        outputs.push(out);
    }
    for op in BINARY {
        let out = format!("{op}_xy");
        nodes.push(node(op, op, &["x", "y"], &[&out]));
        outputs.push(out);
    }
    for op in REDUCE {
        for input in ["x", "y"] {
            let out = format!("{op}_{input}");
            let mut n = node(op, &out, &[input], &[&out]);
            if op.starts_with("Reduce") {
                n.attribute.push(AttributeProto {
                    name: Some("keepdims".into()),
                    r#type: Some(AttributeType::Int as i32),
                    i: Some(1),
                    ..Default::default()
                });
            }
            nodes.push(n);
            outputs.push(out);
        }
    }
    let out_info = outputs
        .iter()
        .map(|o| {
            let dims = if o.starts_with("Reduce") { [1] } else { [8] };
            let elem = if o.starts_with("IsNaN") { 9 } else { 1 };
            smelt_tests::builder::value_info(o, elem, &[smelt_tests::builder::D::N(dims[0])])
        })
        .collect();
    let bytes = model(
        nodes,
        vec![f32_info("x", &[8]), f32_info("y", &[8])],
        out_info,
        vec![],
    );
    let dir = workspace_root().join("target/tmp/special-values");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("model.onnx"), &bytes).unwrap();
    let tensor = |v: &[f32]| smelt_runtime::HostTensor {
        elem: smelt_runtime::ElemType::F32,
        shape: vec![8],
        bytes: v.iter().flat_map(|f| f.to_le_bytes()).collect(),
    };
    let mut files = Vec::new();
    let mut feeds = Vec::new();
    for (name, v) in [("x", &x), ("y", &y)] {
        let path = dir.join(format!("{name}.npy"));
        smelt_runtime::write_npy(&path, &tensor(v)).unwrap();
        files.push((name.to_string(), path));
        feeds.push((name.to_string(), tensor(v)));
    }
    let ort = run_onnxruntime(&dir, &files).unwrap_or_else(|e| panic!("{e}"));

    let compiled = smelt::Model::from_bytes(&bytes)
        .unwrap()
        .compile(&smelt::Options {
            threads: Some(2),
            ..Default::default()
        })
        .unwrap();
    let ours = compiled.run_named(&feeds).unwrap();
    let mut failures = Vec::new();
    for (i, (name, got)) in ours.iter().enumerate() {
        let want = &ort.outputs[i];
        let (want, got) = (
            smelt::to_ir_tensor(want).unwrap(),
            smelt::to_ir_tensor(got).unwrap(),
        );
        if NAN_PROPAGATING.contains(&name.as_str()) {
            // onnxruntime skips or mishandles the NaN here (ReduceMin even gives 0 for
            // [1, NaN, 0, 0, inf, -inf, -0, 3e38]); smelt propagates it, as NumPy and
            // ONNX's reference implementation do.
            assert!(
                got.to_f64().iter().all(|v| v.is_nan()),
                "{name}: {:?}",
                got.to_f64()
            );
            continue;
        }
        if let Err(e) = compare(&want, &got, 1e-5, 1e-6) {
            failures.push(format!(
                "{name}: {e}\n  onnxruntime {:?}\n  smelt       {:?}",
                want.to_f64(),
                got.to_f64()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} outputs differ:\n{}",
        failures.len(),
        ours.len(),
        failures.join("\n")
    );
}

/// Integer division and remainder by zero are defined (0) in compiled code and the
/// reference interpreter alike, never a trap, for every integer width and signedness.
#[test]
fn integer_division_by_zero_gives_zero() {
    for dtype in ["i8", "i16", "i32", "i64", "u8", "u16", "u32", "u64"] {
        let text = format!(
            "graph divide (%a: {dtype}[4], %b: {dtype}[4]) {{\n  %q = div(%a, %b) : {dtype}[4]\n  %r = rem(%a, %b) : {dtype}[4]\n  %m = mod(%a, %b) : {dtype}[4]\n  return %q, %r, %m\n}}\n"
        );
        let g = smelt_ir::text::parse_graph(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let dt = smelt_ir::DType::from_name(dtype).unwrap();
        let a = smelt_ir::Tensor::from_i64(dt, vec![4], vec![7, 0, 5, 100]).unwrap();
        let b = smelt_ir::Tensor::from_i64(dt, vec![4], vec![0, 0, 2, 0]).unwrap();
        let reference = smelt_ir::interp::run(&g, &[a.clone(), b.clone()]).unwrap();
        let exe = smelt::Executable::from_graph(g, true).unwrap();
        let host = [smelt::to_host_tensor(&a), smelt::to_host_tensor(&b)];
        let got = exe
            .run(
                &smelt_runtime::threads::ThreadPool::new(2),
                &[&host[0], &host[1]],
                None,
            )
            .unwrap();
        let want = [[0, 0, 2, 0], [0, 0, 1, 0], [0, 0, 1, 0]];
        for ((w, r), g) in want.iter().zip(&reference).zip(&got) {
            assert_eq!(r.to_i64(), w.to_vec(), "{dtype}: reference");
            assert_eq!(
                smelt::to_ir_tensor(g).unwrap().to_i64(),
                w.to_vec(),
                "{dtype}: compiled"
            );
        }
    }
}
