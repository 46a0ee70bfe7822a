//! Small builders of ONNX protobuf models for tests that need hand-made (or hostile) models.

use prost::Message;
use smelt_onnx::proto::{
    AttributeProto, FunctionProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto, attribute_proto::AttributeType,
    tensor_shape_proto, type_proto,
};

/// A dimension: a size, or a symbolic name.
#[derive(Debug, Clone)]
pub enum D {
    N(i64),
    S(&'static str),
}

/// A tensor value info with ONNX element type code `elem`.
pub fn value_info(name: &str, elem: i32, dims: &[D]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                D::N(n) => tensor_shape_proto::dimension::Value::DimValue(*n),
                D::S(s) => tensor_shape_proto::dimension::Value::DimParam(s.to_string()),
            }),
            denotation: None,
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem),
                shape: Some(TensorShapeProto { dim }),
            })),
            denotation: None,
        }),
        ..Default::default()
    }
}

/// A float tensor value info with fixed dims.
pub fn f32_info(name: &str, dims: &[i64]) -> ValueInfoProto {
    value_info(name, 1, &dims.iter().map(|&d| D::N(d)).collect::<Vec<_>>())
}

pub fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        name: Some(name.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

pub fn float_attr(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(v),
        ..Default::default()
    }
}

/// An attribute that refers to an attribute of the calling node (inside function bodies).
pub fn ref_attr(name: &str, refers_to: &str, kind: AttributeType) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        ref_attr_name: Some(refers_to.into()),
        r#type: Some(kind as i32),
        ..Default::default()
    }
}

pub fn f32_tensor(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(1),
        float_data: values.to_vec(),
        ..Default::default()
    }
}

/// A model of opset `opset` (plus any extra domains) with one graph.
pub fn model_with(
    nodes: Vec<NodeProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    inits: Vec<TensorProto>,
    functions: Vec<FunctionProto>,
    extra_domains: &[&str],
) -> ModelProto {
    let mut opset_import = vec![OperatorSetIdProto {
        domain: Some(String::new()),
        version: Some(17),
    }];
    opset_import.extend(extra_domains.iter().map(|d| OperatorSetIdProto {
        domain: Some(d.to_string()),
        version: Some(1),
    }));
    ModelProto {
        ir_version: Some(8),
        opset_import,
        producer_name: Some("smelt-tests".into()),
        graph: Some(GraphProto {
            name: Some("g".into()),
            node: nodes,
            input: inputs,
            output: outputs,
            initializer: inits,
            ..Default::default()
        }),
        functions,
        ..Default::default()
    }
}

/// The encoded bytes of a one-graph model at opset 17.
pub fn model(
    nodes: Vec<NodeProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    inits: Vec<TensorProto>,
) -> Vec<u8> {
    model_with(nodes, inputs, outputs, inits, vec![], &[]).encode_to_vec()
}
