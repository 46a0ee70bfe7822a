//! Importer behaviour on hand-made models: local functions, nesting limits, every
//! dtype in typed and raw fields, symbolic dims and specialization.

use prost::Message;
use smelt_ir::{DType, Dim, Tensor};
use smelt_onnx::proto::attribute_proto::AttributeType;
use smelt_onnx::proto::{FunctionProto, TensorProto};
use smelt_onnx::tensor::{dtype_to_onnx, tensor_from_proto, tensor_to_proto};
use smelt_onnx::{ImportOptions, OnnxError, OnnxModel, import};
use smelt_tests::builder::{D, f32_info, float_attr, model_with, node, ref_attr, value_info};
use std::collections::HashMap;

fn run(m: &OnnxModel, inputs: &[(&str, Tensor)]) -> Result<Vec<Tensor>, String> {
    let opts = ImportOptions {
        input_shapes: inputs
            .iter()
            .map(|(n, t)| (n.to_string(), t.shape().to_vec()))
            .collect(),
        input_values: inputs
            .iter()
            .map(|(n, t)| (n.to_string(), t.clone()))
            .collect(),
    };
    let imported = import(m, &opts).map_err(|e| e.to_string())?;
    let feeds: Vec<Tensor> = imported
        .input_names
        .iter()
        .map(|n| inputs.iter().find(|(k, _)| k == n).unwrap().1.clone())
        .collect();
    smelt_ir::interp::run(&imported.graph, &feeds).map_err(|e| e.to_string())
}

fn f32s(shape: Vec<usize>, v: &[f64]) -> Tensor {
    Tensor::from_f64(DType::F32, shape, v.to_vec()).unwrap()
}

/// `Scale(x) = x * factor`, with `factor` an attribute of the call.
fn scale_function() -> FunctionProto {
    let mut c = node("Constant", "c", &[], &["c"]);
    c.attribute
        .push(ref_attr("value_float", "factor", AttributeType::Float));
    FunctionProto {
        name: Some("Scale".into()),
        domain: Some("my.fns".into()),
        input: vec!["x".into()],
        output: vec!["y".into()],
        attribute: vec!["factor".into()],
        node: vec![c, node("Mul", "m", &["x", "c"], &["y"])],
        opset_import: vec![smelt_onnx::proto::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        ..Default::default()
    }
}

fn call(
    op: &str,
    name: &str,
    inputs: &[&str],
    outputs: &[&str],
    factor: Option<f32>,
) -> smelt_onnx::proto::NodeProto {
    let mut n = node(op, name, inputs, outputs);
    n.domain = Some("my.fns".into());
    if let Some(f) = factor {
        n.attribute.push(float_attr("factor", f));
    }
    n
}

#[test]
fn local_functions_are_inlined_with_their_attributes() {
    // Twice(x) = Scale<factor=2>(Scale<factor=@f>(x)), a function calling a function.
    let mut inner = call("Scale", "inner", &["x"], &["t"], None);
    inner
        .attribute
        .push(ref_attr("factor", "f", AttributeType::Float));
    let twice = FunctionProto {
        name: Some("Twice".into()),
        domain: Some("my.fns".into()),
        input: vec!["x".into()],
        output: vec!["y".into()],
        attribute: vec!["f".into()],
        node: vec![inner, call("Scale", "outer", &["t"], &["y"], Some(2.0))],
        ..Default::default()
    };
    let mut top = call("Twice", "top", &["x"], &["y"], None);
    top.attribute.push(float_attr("f", 3.0));
    let m = model_with(
        vec![top],
        vec![f32_info("x", &[2])],
        vec![f32_info("y", &[2])],
        vec![],
        vec![scale_function(), twice],
        &["my.fns"],
    );
    let m = OnnxModel::from_bytes(&m.encode_to_vec()).unwrap();
    let out = run(&m, &[("x", f32s(vec![2], &[1.0, -2.0]))]).unwrap();
    assert_eq!(out[0].to_f64(), vec![6.0, -12.0]);
}

#[test]
fn recursive_functions_are_refused_not_overflowing_the_stack() {
    let looping = FunctionProto {
        name: Some("Loopy".into()),
        domain: Some("my.fns".into()),
        input: vec!["x".into()],
        output: vec!["y".into()],
        node: vec![call("Loopy", "again", &["x"], &["y"], None)],
        ..Default::default()
    };
    let m = model_with(
        vec![call("Loopy", "top", &["x"], &["y"], None)],
        vec![f32_info("x", &[2])],
        vec![f32_info("y", &[2])],
        vec![],
        vec![looping],
        &["my.fns"],
    );
    let m = OnnxModel::from_bytes(&m.encode_to_vec()).unwrap();
    let e = run(&m, &[("x", f32s(vec![2], &[1.0, 2.0]))]).unwrap_err();
    assert!(
        e.contains("local functions nest deeper than 32 levels"),
        "{e}"
    );
}

#[test]
fn unsupported_ops_inside_functions_are_listed() {
    let f = FunctionProto {
        name: Some("Odd".into()),
        domain: Some("my.fns".into()),
        input: vec!["x".into()],
        output: vec!["y".into()],
        node: vec![node("NoSuchOp", "inside", &["x"], &["y"])],
        ..Default::default()
    };
    let m = model_with(
        vec![call("Odd", "top", &["x"], &["y"], None)],
        vec![f32_info("x", &[2])],
        vec![f32_info("y", &[2])],
        vec![],
        vec![f],
        &["my.fns"],
    );
    let m = OnnxModel::from_bytes(&m.encode_to_vec()).unwrap();
    match import(&m, &ImportOptions::default()) {
        Err(OnnxError::Unsupported(list)) => {
            assert_eq!(list.len(), 1);
            assert_eq!(list[0].op_type, "NoSuchOp");
            assert_eq!(list[0].node, "inside");
        }
        other => panic!("expected unsupported ops, got {other:?}"),
    }
}

fn sample(dtype: DType) -> Tensor {
    let v: Vec<f64> = vec![0.0, 1.0, 2.0, 3.0, 100.0, 7.0];
    match dtype {
        DType::Bool => {
            Tensor::from_bool(vec![2, 3], vec![true, false, true, true, false, false]).unwrap()
        }
        d if d.is_float() => {
            Tensor::from_f64(d, vec![2, 3], vec![-1.5, 0.0, 2.25, 1e-3, 65000.0, -7.0]).unwrap()
        }
        d if d.is_signed_int() => {
            Tensor::from_f64(d, vec![2, 3], vec![-5.0, 0.0, 1.0, 100.0, -100.0, 7.0]).unwrap()
        }
        d => Tensor::from_f64(d, vec![2, 3], v).unwrap(),
    }
}

/// The same tensor in the typed field ONNX assigns to its dtype.
fn typed_proto(t: &Tensor) -> TensorProto {
    let mut p = TensorProto {
        dims: t.shape().iter().map(|&d| d as i64).collect(),
        data_type: Some(dtype_to_onnx(t.dtype())),
        ..Default::default()
    };
    let bits16 = |b: Vec<u8>| {
        b.chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]) as i32)
            .collect::<Vec<i32>>()
    };
    match t.dtype() {
        DType::F32 => p.float_data = t.to_f64().iter().map(|&v| v as f32).collect(),
        DType::F64 => p.double_data = t.to_f64(),
        DType::I64 => p.int64_data = t.to_i64(),
        DType::U32 | DType::U64 => p.uint64_data = t.to_i64().iter().map(|&v| v as u64).collect(),
        DType::F16 | DType::BF16 => p.int32_data = bits16(t.to_le_bytes()),
        _ => p.int32_data = t.to_i64().iter().map(|&v| v as i32).collect(),
    }
    p
}

#[test]
fn every_dtype_decodes_from_typed_fields_and_raw_data() {
    for dtype in DType::ALL {
        let t = sample(dtype);
        let from_raw = tensor_from_proto(&tensor_to_proto(&t, "t"), None).unwrap();
        assert!(from_raw.bits_eq(&t), "{dtype} raw: {from_raw:?} vs {t:?}");
        let from_typed = tensor_from_proto(&typed_proto(&t), None).unwrap();
        assert!(
            from_typed.bits_eq(&t),
            "{dtype} typed: {from_typed:?} vs {t:?}"
        );
    }
}

#[test]
fn short_initializer_data_is_refused() {
    let mut p = tensor_to_proto(&sample(DType::F32), "w");
    p.raw_data.as_mut().unwrap().truncate(20);
    let e = tensor_from_proto(&p, None).unwrap_err().to_string();
    assert_eq!(
        e,
        "tensor 'w': raw_data has 20 bytes, shape [2, 3] of f32 needs 24"
    );
    let mut q = typed_proto(&sample(DType::I64));
    q.int64_data.pop();
    let e = tensor_from_proto(&q, None).unwrap_err().to_string();
    assert_eq!(e, "tensor '': holds 5 values, shape [2, 3] needs 6");
}

#[test]
fn symbolic_dims_survive_import_and_specialize() {
    let inputs = vec![
        value_info("a", 1, &[D::S("N"), D::N(3)]),
        value_info("b", 1, &[D::S("N"), D::N(3)]),
    ];
    let m = model_with(
        vec![node("Add", "add", &["a", "b"], &["y"])],
        inputs,
        vec![value_info("y", 1, &[D::S("N"), D::N(3)])],
        vec![],
        vec![],
        &[],
    );
    let m = OnnxModel::from_bytes(&m.encode_to_vec()).unwrap();
    let g = import(&m, &ImportOptions::default()).unwrap().graph;
    assert_eq!(
        g.ty(g.outputs[0]).shape,
        vec![Dim::Sym("N".into()), Dim::Fixed(3)]
    );
    let x = f32s(vec![2, 3], &[1.0; 6]);
    assert_eq!(
        run(&m, &[("a", x.clone()), ("b", x.clone())]).unwrap()[0].shape(),
        &[2, 3]
    );
    // The same symbol must get the same size in every input.
    let opts = ImportOptions {
        input_shapes: HashMap::from([("a".into(), vec![2, 3]), ("b".into(), vec![4, 3])]),
        ..Default::default()
    };
    let e = import(&m, &opts).unwrap_err().to_string();
    assert_eq!(
        e,
        "input 'b': dimension 'N' is 4 here but 2 in another input"
    );
}

#[test]
fn shape_inputs_are_bound_to_their_values() {
    let inputs = vec![f32_info("x", &[2, 3]), value_info("shape", 7, &[D::N(2)])];
    let m = model_with(
        vec![node("Reshape", "r", &["x", "shape"], &["y"])],
        inputs,
        vec![f32_info("y", &[3, 2])],
        vec![],
        vec![],
        &[],
    );
    let m = OnnxModel::from_bytes(&m.encode_to_vec()).unwrap();
    let shape = Tensor::from_i64(DType::I64, vec![2], vec![3, -1]).unwrap();
    let x = f32s(vec![2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let opts = ImportOptions {
        input_values: HashMap::from([("x".into(), x.clone()), ("shape".into(), shape.clone())]),
        ..Default::default()
    };
    let imported = import(&m, &opts).unwrap();
    assert_eq!(imported.bound_inputs, vec!["shape".to_string()]);
    assert_eq!(imported.input_names, vec!["x".to_string()]);
    assert_eq!(
        run(&m, &[("x", x), ("shape", shape)]).unwrap()[0].shape(),
        &[3, 2]
    );
    // Without the value the importer says what it needs.
    let e = import(&m, &ImportOptions::default())
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "node 'r' (Reshape): shape ('shape') must be a constant or computable from constants and input values"
    );
}

/// `Range(start, limit, delta)` over initializers with the given shapes and values, of
/// ONNX type `elem` (1: f32, 7: i64).
fn range_model(elem: i32, operands: [(&[i64], &[i64]); 3]) -> OnnxModel {
    let inits = ["start", "limit", "delta"]
        .iter()
        .zip(operands)
        .map(|(name, (dims, values))| TensorProto {
            name: Some(name.to_string()),
            dims: dims.to_vec(),
            data_type: Some(elem),
            int64_data: if elem == 7 { values.to_vec() } else { vec![] },
            float_data: if elem == 1 {
                values.iter().map(|&v| v as f32).collect()
            } else {
                vec![]
            },
            ..Default::default()
        })
        .collect();
    let m = model_with(
        vec![node("Range", "r", &["start", "limit", "delta"], &["y"])],
        vec![],
        vec![value_info("y", elem, &[D::S("n")])],
        inits,
        vec![],
        &[],
    );
    OnnxModel::from_bytes(&m.encode_to_vec()).unwrap()
}

#[test]
fn range_counts_exactly_at_the_extremes_and_needs_scalars() {
    // ceil((MAX - MIN) / MAX) = 3 elements; the span overflows i64 if computed there.
    let wide = range_model(
        7,
        [(&[], &[i64::MIN]), (&[], &[i64::MAX]), (&[], &[i64::MAX])],
    );
    let y = run(&wide, &[]).unwrap();
    assert_eq!(y[0].to_i64(), [i64::MIN, -1, i64::MAX - 1]);
    // Counting down, with a span that is not a multiple of the step: 10, 7, 4, 1.
    let down = range_model(7, [(&[], &[10]), (&[], &[0]), (&[], &[-3])]);
    assert_eq!(run(&down, &[]).unwrap()[0].to_i64(), [10, 7, 4, 1]);
    // A step away from the limit gives no elements.
    let away = range_model(7, [(&[], &[0]), (&[], &[5]), (&[], &[-1])]);
    assert_eq!(run(&away, &[]).unwrap()[0].len(), 0);
    // An empty start was a panic found by fuzzing (tests/fuzz-regressions/onnx_import).
    let empty = range_model(7, [(&[0], &[]), (&[], &[5]), (&[], &[1])]);
    assert_eq!(
        run(&empty, &[]).unwrap_err(),
        "node 'r' (Range): start must be a scalar, got shape [0]"
    );
    // A float step of 0 asks for infinitely many elements: refused by the size check,
    // not attempted; with equal bounds (0 / 0) it asks for none.
    let endless = range_model(1, [(&[], &[0]), (&[], &[1]), (&[], &[0])]);
    assert_eq!(
        run(&endless, &[]).unwrap_err(),
        "node 'r' (Range): the element count of f64[18446744073709551615] overflows"
    );
    let none = range_model(1, [(&[], &[1]), (&[], &[1]), (&[], &[0])]);
    assert_eq!(run(&none, &[]).unwrap()[0].len(), 0);
}

/// Attention (opset 23) of 4-D f32 `q`, `k`, `v` of shape `[1, 2, 3, 4]` with the given
/// extra inputs (`past_key`, `past_value` or `nonpad_kv_seqlen`) as graph inputs.
fn attention_model(extra: &[(&str, usize, i32, &[i64])]) -> OnnxModel {
    let mut slots = ["q", "k", "v", "", "", "", ""];
    let mut inputs: Vec<_> = ["q", "k", "v"]
        .iter()
        .map(|name| value_info(name, 1, &[D::N(1), D::N(2), D::N(3), D::N(4)]))
        .collect();
    for &(name, slot, elem, dims) in extra {
        slots[slot] = name;
        let dims: Vec<D> = dims.iter().map(|&d| D::N(d)).collect();
        inputs.push(value_info(name, elem, &dims));
    }
    let last = slots.iter().rposition(|s| !s.is_empty()).unwrap();
    let mut m = model_with(
        vec![node("Attention", "attn", &slots[..=last], &["y"])],
        inputs,
        vec![f32_info("y", &[1, 2, 3, 4])],
        vec![],
        vec![],
        &[],
    );
    m.opset_import[0].version = Some(23);
    OnnxModel::from_bytes(&m.encode_to_vec()).unwrap()
}

#[test]
fn attention_checks_past_ranks_and_nonpad_lengths() {
    let f32s_of = |dims: &[usize]| f32s(dims.to_vec(), &vec![0.0; dims.iter().product()]);
    let qkv = |extra: Vec<(&'static str, Tensor)>| {
        let mut feeds: Vec<(&str, Tensor)> = ["q", "k", "v"]
            .into_iter()
            .map(|name| (name, f32s_of(&[1, 2, 3, 4])))
            .collect();
        feeds.extend(extra);
        feeds
    };
    // A past key without the sequence axis was an index panic.
    let flat_past = attention_model(&[("past_key", 4, 1, &[4]), ("past_value", 5, 1, &[4])]);
    let err = run(
        &flat_past,
        &qkv(vec![
            ("past_key", f32s_of(&[4])),
            ("past_value", f32s_of(&[4])),
        ]),
    )
    .unwrap_err();
    assert_eq!(
        err,
        "node 'attn' (Attention): past_key and past_value must be 4-D, got rank 1"
    );
    // One sequence length per batch entry; none was an index panic.
    let nonpad = attention_model(&[("nonpad_kv_seqlen", 6, 7, &[0])]);
    let none = Tensor::from_i64(DType::I64, vec![0], vec![]).unwrap();
    let err = run(&nonpad, &qkv(vec![("nonpad_kv_seqlen", none)])).unwrap_err();
    assert_eq!(
        err,
        "node 'attn' (Attention): nonpad_kv_seqlen has 0 values, one per batch entry (1) expected"
    );
    // Extreme lengths saturate instead of overflowing.
    let nonpad = attention_model(&[("nonpad_kv_seqlen", 6, 7, &[1])]);
    let extreme = Tensor::from_i64(DType::I64, vec![1], vec![i64::MIN]).unwrap();
    assert!(run(&nonpad, &qkv(vec![("nonpad_kv_seqlen", extreme)])).is_ok());
}

/// A model `y = x + w` whose weight `w` (64 Ki floats, 64 pages) is stored in
/// `raw_data`, written to `file`; returns the weight.
fn write_add_model(file: &std::path::Path, seed: f32) -> Tensor {
    let n = 65536;
    let values: Vec<f64> = (0..n)
        .map(|i| (i % 97) as f64 * 0.25 + seed as f64)
        .collect();
    let w = f32s(vec![n], &values);
    let proto = tensor_to_proto(&w, "w");
    let bytes = smelt_tests::builder::model(
        vec![node("Add", "add", &["x", "w"], &["y"])],
        vec![f32_info("x", &[n as i64])],
        vec![f32_info("y", &[n as i64])],
        vec![proto],
    );
    std::fs::write(file, bytes).unwrap();
    w
}

fn scratch_file(name: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("mapped-models");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// The weight constant of an imported `write_add_model` model.
fn imported_weight(m: &OnnxModel) -> Result<Tensor, OnnxError> {
    let imported = import(m, &ImportOptions::default())?;
    let g = &imported.graph;
    Ok(g.nodes
        .iter()
        .find_map(|n| match &n.op {
            smelt_ir::Op::Constant(t) => Some(t.clone()),
            _ => None,
        })
        .expect("the weight"))
}

#[test]
fn a_loaded_model_imports_again_after_its_weight_pages_are_handed_back() {
    let file = scratch_file("twice.onnx");
    let w = write_add_model(&file, 0.5);
    let m = OnnxModel::load(&file).unwrap();
    // The first import converts the weight and hands its pages back; the second reads
    // them again from the file.
    for _ in 0..2 {
        let got = imported_weight(&m).unwrap();
        assert!(got.bits_eq(&w), "the weight changed between imports");
    }
}

#[test]
fn a_model_file_written_in_place_after_loading_is_refused() {
    let file = scratch_file("written.onnx");
    write_add_model(&file, 0.5);
    let m = OnnxModel::load(&file).unwrap();
    imported_weight(&m).unwrap();
    // Another model written over the same file: a mapping would read its weights.
    let other = scratch_file("written.tmp");
    write_add_model(&other, 1.5);
    let mut bytes = std::fs::read(&other).unwrap();
    bytes.extend_from_slice(&[0; 8]);
    std::fs::write(&file, bytes).unwrap();
    let err = imported_weight(&m).unwrap_err().to_string();
    assert!(
        err.contains("was written since it was loaded") && err.contains("written.onnx"),
        "{err}"
    );
}

#[test]
fn a_model_file_replaced_by_rename_after_loading_keeps_the_loaded_weights() {
    let file = scratch_file("renamed.onnx");
    let w = write_add_model(&file, 0.5);
    let m = OnnxModel::load(&file).unwrap();
    let other = scratch_file("renamed.tmp");
    write_add_model(&other, 2.5);
    std::fs::rename(&other, &file).unwrap();
    assert!(imported_weight(&m).unwrap().bits_eq(&w));
}
