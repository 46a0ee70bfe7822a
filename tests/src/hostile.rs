//! The hostile-model corpus: ONNX files built to break a careless importer (truncated or
//! mistyped protobuf, negative dims, element counts that overflow or exceed the memory
//! limit, cycles, duplicate names, missing or short initializers, external data escaping
//! the model's directory, opsets out of range, runaway function nesting, mistyped
//! attributes, an input of a rank the op cannot take). `tests/hostile/expected.tsv` gives
//! the exact error each must produce.

use crate::builder::{D, f32_info, f32_tensor, model, model_with, node, value_info};
use prost::Message;
use smelt_onnx::proto::{
    AttributeProto, FunctionProto, OperatorSetIdProto, TensorProto, attribute_proto::AttributeType,
};
use smelt_runtime::{ElemType, HostTensor};
use std::path::{Path, PathBuf};

/// One hostile case: the files of its model directory, and files beside that directory
/// (in `outside/`) that the model tries to reach.
#[derive(Debug)]
pub struct HostileCase {
    pub name: &'static str,
    /// `model.onnx` and any data files, relative to the model's directory.
    pub model_files: Vec<(&'static str, Vec<u8>)>,
    /// Files in the sibling directory `outside/`, which must never be read.
    pub outside_files: Vec<(&'static str, Vec<u8>)>,
    /// Symlinks in the model's directory: (link name, target relative to the link).
    pub symlinks: Vec<(&'static str, &'static str)>,
    /// Whether `model.onnx` names an external-data file by an absolute path into `outside/`
    /// (written when the case is laid out, since the path depends on where).
    pub absolute_external: bool,
    /// The inputs `smelt run` gets (zeros of these types and shapes); empty: `x: f32[1, 4]`.
    pub run_inputs: Vec<(&'static str, ElemType, Vec<usize>)>,
}

impl HostileCase {
    /// The inputs `smelt run` gets, zero-filled.
    pub fn inputs(&self) -> Vec<(&'static str, HostTensor)> {
        let default = [("x", ElemType::F32, vec![1, 4])];
        let listed = if self.run_inputs.is_empty() {
            &default[..]
        } else {
            &self.run_inputs[..]
        };
        listed
            .iter()
            .map(|(name, elem, shape)| (*name, HostTensor::zeros(*elem, shape.clone())))
            .collect()
    }
}

fn ints_attr(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    }
}

/// A model from `x: f32[1, 4]` to `y: f32[1, 4]`.
fn vector_model(nodes: Vec<smelt_onnx::proto::NodeProto>, inits: Vec<TensorProto>) -> Vec<u8> {
    model(
        nodes,
        vec![f32_info("x", &[1, 4])],
        vec![f32_info("y", &[1, 4])],
        inits,
    )
}

/// `y = relu(x)` over `x: f32[1, 4]`: the well-formed base most cases break one thing of.
fn relu_model() -> Vec<u8> {
    vector_model(vec![node("Relu", "relu", &["x"], &["y"])], vec![])
}

/// `y = x + w` with `w` an initializer stored in `location` as external data.
fn external_model(location: &str, length: i64) -> Vec<u8> {
    let entry = |k: &str, v: String| smelt_onnx::proto::StringStringEntryProto {
        key: Some(k.into()),
        value: Some(v),
    };
    let w = TensorProto {
        name: Some("w".into()),
        dims: vec![1, 4],
        data_type: Some(1),
        data_location: Some(1),
        external_data: vec![
            entry("location", location.into()),
            entry("length", length.to_string()),
        ],
        ..Default::default()
    };
    vector_model(vec![node("Add", "add", &["x", "w"], &["y"])], vec![w])
}

/// Functions that call each other `depth` deep (each `fK` calls `fK+1`; the last is Relu).
fn nested_functions(depth: usize) -> Vec<u8> {
    let functions = (0..depth)
        .map(|k| {
            let call = if k + 1 == depth {
                node("Relu", "leaf", &["a"], &["b"])
            } else {
                let mut n = node(&format!("f{}", k + 1), "call", &["a"], &["b"]);
                n.domain = Some("local".into());
                n
            };
            FunctionProto {
                name: Some(format!("f{k}")),
                domain: Some("local".into()),
                input: vec!["a".into()],
                output: vec!["b".into()],
                node: vec![call],
                opset_import: vec![OperatorSetIdProto {
                    domain: Some(String::new()),
                    version: Some(17),
                }],
                ..Default::default()
            }
        })
        .collect();
    let mut call = node("f0", "top", &["x"], &["y"]);
    call.domain = Some("local".into());
    model_with(
        vec![call],
        vec![f32_info("x", &[1, 4])],
        vec![f32_info("y", &[1, 4])],
        vec![],
        functions,
        &["local"],
    )
    .encode_to_vec()
}

/// ConvInteger over `x: u8[1, 1, 3, 3]` whose weight is a scalar and whose weight zero
/// point is per filter (`[1]`): the importer indexed the weight's first dim (a panic).
fn convinteger_scalar_weight() -> Vec<u8> {
    let u8_tensor = |name: &str, dims: &[i64], values: &[u8]| TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(2),
        raw_data: Some(values.to_vec().into()),
        ..Default::default()
    };
    model(
        vec![node(
            "ConvInteger",
            "convint",
            &["x", "w", "", "w_zero"],
            &["y"],
        )],
        vec![value_info("x", 2, &[D::N(1), D::N(1), D::N(3), D::N(3)])],
        vec![value_info("y", 6, &[D::N(1), D::N(1), D::N(3), D::N(3)])],
        vec![u8_tensor("w", &[], &[3]), u8_tensor("w_zero", &[1], &[1])],
    )
}

/// Every hostile case.
pub fn corpus() -> Vec<HostileCase> {
    let plain = |name: &'static str, bytes: Vec<u8>| HostileCase {
        name,
        model_files: vec![("model.onnx", bytes)],
        outside_files: vec![],
        symlinks: vec![],
        absolute_external: false,
        run_inputs: vec![],
    };
    let secret = || vec![("secret.bin", vec![7u8; 16])];
    let base = relu_model();
    let mut cases = vec![
        plain("truncated_protobuf", base[..base.len() / 2].to_vec()),
        // Field 7 (graph, a message) written with the varint wire type.
        plain("wrong_wire_type", vec![0x08, 0x08, 0x38, 0x01]),
        plain(
            "negative_dim",
            model(
                vec![node("Relu", "relu", &["x"], &["y"])],
                vec![value_info("x", 1, &[D::N(-1), D::N(4)])],
                vec![f32_info("y", &[1, 4])],
                vec![],
            ),
        ),
        plain("zero_stride", {
            let mut conv = node("Conv", "conv", &["image", "w"], &["y"]);
            conv.attribute.push(ints_attr("strides", &[0, 0]));
            let shape = TensorProto {
                name: Some("shape".into()),
                dims: vec![4],
                data_type: Some(7),
                int64_data: vec![1, 1, 2, 2],
                ..Default::default()
            };
            model(
                vec![node("Reshape", "image", &["x", "shape"], &["image"]), conv],
                vec![f32_info("x", &[1, 4])],
                vec![f32_info("y", &[1, 1, 2, 2])],
                vec![f32_tensor("w", &[1, 1, 1, 1], &[1.0]), shape],
            )
        }),
        plain("element_count_overflows", {
            let w = TensorProto {
                name: Some("w".into()),
                dims: vec![1 << 40, 1 << 40],
                data_type: Some(1),
                ..Default::default()
            };
            model(
                vec![node("Add", "add", &["x", "w"], &["y"])],
                vec![f32_info("x", &[1, 4])],
                vec![f32_info("y", &[1, 4])],
                vec![w],
            )
        }),
        plain("over_the_memory_limit", {
            // An 8 TiB constant from a 3-element shape vector.
            let shape = TensorProto {
                name: Some("shape".into()),
                dims: vec![3],
                data_type: Some(7),
                int64_data: vec![1 << 20, 1 << 20, 1 << 1],
                ..Default::default()
            };
            vector_model(
                vec![
                    node("ConstantOfShape", "big", &["shape"], &["c"]),
                    node("Add", "add", &["x", "c"], &["y"]),
                ],
                vec![shape],
            )
        }),
        plain(
            "cycle",
            model(
                vec![
                    node("Relu", "a", &["x", "z"], &["y"]),
                    node("Relu", "b", &["y"], &["z"]),
                ],
                vec![f32_info("x", &[1, 4])],
                vec![f32_info("z", &[1, 4])],
                vec![],
            ),
        ),
        plain(
            "duplicate_value_names",
            vector_model(
                vec![
                    node("Relu", "a", &["x"], &["y"]),
                    node("Neg", "b", &["x"], &["y"]),
                ],
                vec![],
            ),
        ),
        plain(
            "missing_initializer",
            vector_model(vec![node("Add", "add", &["x", "w"], &["y"])], vec![]),
        ),
        plain(
            "short_initializer",
            vector_model(
                vec![node("Add", "add", &["x", "w"], &["y"])],
                vec![f32_tensor("w", &[1, 4], &[1.0, 2.0])],
            ),
        ),
        plain("opset_out_of_range", {
            let mut m =
                smelt_onnx::proto::ModelProto::decode(base.as_slice()).expect("the base decodes");
            m.opset_import[0].version = Some(99);
            m.encode_to_vec()
        }),
        plain("functions_nested_too_deep", nested_functions(40)),
        plain("attribute_of_wrong_type", {
            let mut n = node("Softmax", "sm", &["x"], &["y"]);
            n.attribute.push(AttributeProto {
                name: Some("axis".into()),
                r#type: Some(AttributeType::Float as i32),
                f: Some(1.5),
                ..Default::default()
            });
            vector_model(vec![n], vec![])
        }),
    ];
    cases.push(HostileCase {
        run_inputs: vec![("x", ElemType::U8, vec![1, 1, 3, 3])],
        ..plain("convinteger_scalar_weight", convinteger_scalar_weight())
    });
    // The fuzzing find that `convinteger_scalar_weight` is written after, as it was saved:
    // a QLinearConv test model turned ConvInteger, so its weight is the scalar `x_scale`.
    let crash = crate::workspace_root()
        .join("tests/fuzz-regressions/onnx_import/convinteger-weight-rank-0");
    let scalar = Vec::new;
    cases.push(HostileCase {
        run_inputs: vec![
            ("x", ElemType::U8, vec![1, 1, 7, 7]),
            ("x_scale", ElemType::F32, scalar()),
            ("x_zero_point", ElemType::U8, scalar()),
            ("w", ElemType::U8, vec![1, 1, 1, 1]),
            ("w_scale", ElemType::F32, vec![1]),
            ("w_zero_point", ElemType::U8, vec![1]),
            ("y_scale", ElemType::F32, scalar()),
            ("y_zero_point", ElemType::U8, scalar()),
        ],
        ..plain(
            "fuzz_crash_convinteger",
            std::fs::read(&crash).unwrap_or_else(|e| panic!("{}: {e}", crash.display())),
        )
    });
    let escaping = |name: &'static str, location: &str| HostileCase {
        name,
        model_files: vec![("model.onnx", external_model(location, 16))],
        outside_files: secret(),
        symlinks: vec![],
        absolute_external: false,
        run_inputs: vec![],
    };
    cases.push(escaping("external_data_dot_dot", "../outside/secret.bin"));
    cases.push(escaping(
        "external_data_dot_dot_inside",
        "sub/../../outside/secret.bin",
    ));
    cases.push(HostileCase {
        name: "external_data_absolute",
        model_files: vec![],
        outside_files: secret(),
        symlinks: vec![],
        absolute_external: true,
        run_inputs: vec![],
    });
    cases.push(HostileCase {
        name: "external_data_symlink_escape",
        model_files: vec![("model.onnx", external_model("link.bin", 16))],
        outside_files: secret(),
        symlinks: vec![("link.bin", "../outside/secret.bin")],
        absolute_external: false,
        run_inputs: vec![],
    });
    cases.push(HostileCase {
        name: "external_data_past_the_end",
        model_files: vec![
            ("model.onnx", external_model("weights.bin", 16)),
            ("weights.bin", vec![0u8; 8]),
        ],
        outside_files: vec![],
        symlinks: vec![],
        absolute_external: false,
        run_inputs: vec![],
    });
    cases
}

/// Lays `case` out under `root/<name>/` (`model/` and `outside/`); returns the model path.
pub fn write_case(root: &Path, case: &HostileCase) -> std::io::Result<PathBuf> {
    let dir = root.join(case.name);
    let (model_dir, outside) = (dir.join("model"), dir.join("outside"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&model_dir)?;
    std::fs::create_dir_all(&outside)?;
    for (name, bytes) in &case.outside_files {
        std::fs::write(outside.join(name), bytes)?;
    }
    for (name, bytes) in &case.model_files {
        std::fs::write(model_dir.join(name), bytes)?;
    }
    for (link, target) in &case.symlinks {
        std::os::unix::fs::symlink(target, model_dir.join(link))?;
    }
    if case.absolute_external {
        let target = outside.join("secret.bin").canonicalize()?;
        std::fs::write(
            model_dir.join("model.onnx"),
            external_model(&target.display().to_string(), 16),
        )?;
    }
    Ok(model_dir.join("model.onnx"))
}
