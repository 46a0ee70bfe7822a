//! The ONNX exporter: writes a Graph IR graph as an ONNX model (opset 20) so that a graph
//! built in Rust (the tracer's) can be checked in other runtimes and deployed like any model.

use crate::error::{OnnxError, Result};
use crate::proto::attribute_proto::AttributeType;
use crate::proto::tensor_shape_proto::{Dimension, dimension};
use crate::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorShapeProto,
    TypeProto, ValueInfoProto, type_proto,
};
use crate::tensor::{dtype_to_onnx, tensor_to_proto};
use prost::Message;
use smelt_ir::op::{ArgKind, BinaryOp, PoolKind, ReduceKind, UnaryOp};
use smelt_ir::{DType, Dim, Graph, Node, Op, Tensor, TensorType, ValueId};
use std::collections::HashSet;

/// The opset the exporter writes (AveragePool's dilations and Pad's `wrap` need 19, IsInf of
/// f16 and ReduceMax of bool 20).
pub const EXPORT_OPSET: i64 = 20;
/// The IR version that goes with opset 20.
const EXPORT_IR_VERSION: i64 = 9;

/// Writes `graph` as an ONNX model; every node of the graph becomes one or a few ONNX nodes
/// with the same semantics, constants become initializers.
pub fn export(graph: &Graph) -> Result<ModelProto> {
    graph.verify()?;
    let mut ex = Exporter {
        g: graph,
        used: graph.values.iter().map(|v| v.name.clone()).collect(),
        nodes: Vec::new(),
        initializers: Vec::new(),
        node_name: String::new(),
        op: "",
    };
    for (i, node) in graph.nodes.iter().enumerate() {
        ex.node_name = if node.name.is_empty() {
            format!("{}_{i}", node.op.mnemonic())
        } else {
            node.name.clone()
        };
        ex.op = node.op.mnemonic();
        ex.node(node)?;
    }
    let input = graph.inputs.iter().map(|&v| value_info(graph, v)).collect();
    let output = graph
        .outputs
        .iter()
        .map(|&v| value_info(graph, v))
        .collect();
    let graph_proto = GraphProto {
        node: ex.nodes,
        name: Some(graph.name.clone()),
        initializer: ex.initializers,
        input,
        output,
        ..Default::default()
    };
    Ok(ModelProto {
        ir_version: Some(EXPORT_IR_VERSION),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(EXPORT_OPSET),
        }],
        producer_name: Some("smelt".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        graph: Some(graph_proto),
        ..Default::default()
    })
}

/// [`export`], encoded as protobuf bytes (what an `.onnx` file holds).
pub fn export_bytes(graph: &Graph) -> Result<Vec<u8>> {
    Ok(export(graph)?.encode_to_vec())
}

fn value_info(g: &Graph, v: ValueId) -> ValueInfoProto {
    let value = g.value(v);
    ValueInfoProto {
        name: Some(value.name.clone()),
        r#type: Some(tensor_type(&value.ty)),
        ..Default::default()
    }
}

fn tensor_type(ty: &TensorType) -> TypeProto {
    let dim = ty
        .shape
        .iter()
        .map(|d| Dimension {
            value: match d {
                Dim::Fixed(n) => Some(dimension::Value::DimValue(*n as i64)),
                // Derived dims such as `(H+2-3)/1+1` are left unknown: ONNX dim params are names.
                Dim::Sym(s) if smelt_ir::shape::is_plain_ident(s) => {
                    Some(dimension::Value::DimParam(s.clone()))
                }
                Dim::Sym(_) => None,
            },
            ..Default::default()
        })
        .collect();
    TypeProto {
        value: Some(type_proto::Value::TensorType(type_proto::Tensor {
            elem_type: Some(dtype_to_onnx(ty.dtype)),
            shape: Some(TensorShapeProto { dim }),
        })),
        ..Default::default()
    }
}

/// An ONNX attribute value.
enum AttrValue {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
    Str(&'static str),
}

fn attr(name: &str, value: AttrValue) -> AttributeProto {
    let mut a = AttributeProto {
        name: Some(name.to_string()),
        ..Default::default()
    };
    let kind = match value {
        AttrValue::Int(i) => {
            a.i = Some(i);
            AttributeType::Int
        }
        AttrValue::Ints(v) => {
            a.ints = v;
            AttributeType::Ints
        }
        AttrValue::Float(f) => {
            a.f = Some(f);
            AttributeType::Float
        }
        AttrValue::Str(s) => {
            a.s = Some(s.as_bytes().to_vec());
            AttributeType::String
        }
    };
    a.r#type = Some(kind as i32);
    a
}

/// The window attributes ONNX's Conv and ConvTranspose share.
fn window_attrs(
    strides: &[usize],
    pads: &[usize],
    dilations: &[usize],
    group: usize,
) -> Vec<AttributeProto> {
    vec![
        attr("strides", ints(strides)),
        attr("pads", ints(pads)),
        attr("dilations", ints(dilations)),
        attr("group", AttrValue::Int(group as i64)),
    ]
}

fn ints(v: &[usize]) -> AttrValue {
    AttrValue::Ints(v.iter().map(|&x| x as i64).collect())
}

struct Exporter<'g> {
    g: &'g Graph,
    /// Every name in use, so that helper values get fresh ones.
    used: HashSet<String>,
    nodes: Vec<NodeProto>,
    initializers: Vec<crate::proto::TensorProto>,
    node_name: String,
    op: &'static str,
}

impl Exporter<'_> {
    fn err(&self, reason: impl Into<String>) -> OnnxError {
        OnnxError::Node {
            node: self.node_name.clone(),
            op: self.op.to_string(),
            reason: reason.into(),
        }
    }

    fn fresh(&mut self, base: &str) -> String {
        let name = (0..)
            .map(|i| {
                if i == 0 {
                    base.to_string()
                } else {
                    format!("{base}_{i}")
                }
            })
            .find(|n| !self.used.contains(n))
            .expect("unbounded");
        self.used.insert(name.clone());
        name
    }

    fn name(&self, v: ValueId) -> String {
        self.g.value(v).name.clone()
    }

    /// Adds an initializer under a fresh name derived from `base`; returns the name.
    fn initializer(&mut self, base: &str, t: &Tensor) -> String {
        let name = self.fresh(base);
        self.initializers.push(tensor_to_proto(t, &name));
        name
    }

    fn i64s(&mut self, base: &str, v: &[i64]) -> Result<String> {
        let t = Tensor::from_i64(DType::I64, vec![v.len()], v.to_vec())
            .map_err(|e| self.err(e.to_string()))?;
        Ok(self.initializer(base, &t))
    }

    fn emit(
        &mut self,
        op_type: &str,
        inputs: Vec<String>,
        outputs: Vec<String>,
        attributes: Vec<AttributeProto>,
    ) {
        let name = self.fresh(&self.node_name.clone());
        self.nodes.push(NodeProto {
            input: inputs,
            output: outputs,
            name: Some(name),
            op_type: Some(op_type.to_string()),
            domain: Some(String::new()),
            attribute: attributes,
            ..Default::default()
        });
    }

    /// Emits a single-output node writing a fresh intermediate; returns its name.
    fn temp(
        &mut self,
        op_type: &str,
        inputs: Vec<String>,
        base: &str,
        attributes: Vec<AttributeProto>,
    ) -> String {
        let out = self.fresh(base);
        self.emit(op_type, inputs, vec![out.clone()], attributes);
        out
    }

    fn node(&mut self, n: &Node) -> Result<()> {
        let ins: Vec<String> = n.inputs.iter().map(|&v| self.name(v)).collect();
        let outs: Vec<String> = n.outputs.iter().map(|&v| self.name(v)).collect();
        let out = outs[0].clone();
        let in_ty = |i: usize| self.g.ty(n.inputs[i]).clone();
        match &n.op {
            Op::Constant(t) => {
                if self.g.outputs.contains(&n.outputs[0]) {
                    // A graph output must be produced by a node.
                    let init = self.initializer(&format!("{out}_value"), t);
                    self.emit("Identity", vec![init], vec![out], vec![]);
                } else {
                    self.initializers.push(tensor_to_proto(t, &out));
                }
            }
            Op::ProgramConstant(_) => {
                return Err(self.err(format!(
                    "constant '{out}' has its values in a compiled program; export the graph before compiling it"
                )));
            }
            Op::Unary(u) => self.emit(unary_name(*u), ins, outs, vec![]),
            Op::Binary(b) => self.binary(*b, ins, out, &in_ty(0))?,
            Op::Select => self.emit("Where", ins, outs, vec![]),
            Op::Cast { to } => self.emit(
                "Cast",
                ins,
                outs,
                vec![attr("to", AttrValue::Int(dtype_to_onnx(*to) as i64))],
            ),
            Op::Reduce {
                kind,
                axes,
                keep_dims,
            } => {
                let op_type = match kind {
                    ReduceKind::Sum => "ReduceSum",
                    ReduceKind::Prod => "ReduceProd",
                    ReduceKind::Max => "ReduceMax",
                    ReduceKind::Min => "ReduceMin",
                    ReduceKind::Mean => "ReduceMean",
                };
                let axes: Vec<i64> = axes.iter().map(|&a| a as i64).collect();
                let axes = self.i64s(&format!("{out}_axes"), &axes)?;
                self.emit(
                    op_type,
                    vec![ins[0].clone(), axes],
                    outs,
                    vec![
                        attr("keepdims", AttrValue::Int(*keep_dims as i64)),
                        // No axes means no reduction in the IR, everything in ONNX.
                        attr("noop_with_empty_axes", AttrValue::Int(1)),
                    ],
                );
            }
            Op::ArgReduce {
                kind,
                axis,
                keep_dims,
                select_last,
            } => self.emit(
                match kind {
                    ArgKind::Max => "ArgMax",
                    ArgKind::Min => "ArgMin",
                },
                ins,
                outs,
                vec![
                    attr("axis", AttrValue::Int(*axis as i64)),
                    attr("keepdims", AttrValue::Int(*keep_dims as i64)),
                    attr("select_last_index", AttrValue::Int(*select_last as i64)),
                ],
            ),
            Op::CumSum {
                axis,
                exclusive,
                reverse,
            } => {
                let axis_t = Tensor::from_i64(DType::I64, vec![], vec![*axis as i64])
                    .map_err(|e| self.err(e.to_string()))?;
                let axis_name = self.initializer(&format!("{out}_axis"), &axis_t);
                self.emit(
                    "CumSum",
                    vec![ins[0].clone(), axis_name],
                    outs,
                    vec![
                        attr("exclusive", AttrValue::Int(*exclusive as i64)),
                        attr("reverse", AttrValue::Int(*reverse as i64)),
                    ],
                );
            }
            Op::TopK { axis, k, largest } => {
                let k = self.i64s(&format!("{out}_k"), &[*k as i64])?;
                self.emit(
                    "TopK",
                    vec![ins[0].clone(), k],
                    outs,
                    vec![
                        attr("axis", AttrValue::Int(*axis as i64)),
                        attr("largest", AttrValue::Int(*largest as i64)),
                        attr("sorted", AttrValue::Int(1)),
                    ],
                );
            }
            Op::MatMul { trans_a, trans_b } => {
                let a = self.swap_last_axes(&ins[0], in_ty(0).rank(), *trans_a, &out)?;
                let b = self.swap_last_axes(&ins[1], in_ty(1).rank(), *trans_b, &out)?;
                match ins.get(2) {
                    None => self.emit("MatMul", vec![a, b], outs, vec![]),
                    Some(bias) => {
                        let product =
                            self.temp("MatMul", vec![a, b], &format!("{out}_product"), vec![]);
                        self.emit("Add", vec![product, bias.clone()], outs, vec![]);
                    }
                }
            }
            Op::Conv {
                strides,
                pads,
                dilations,
                group,
            } => self.emit(
                "Conv",
                ins,
                outs,
                window_attrs(strides, pads, dilations, *group),
            ),
            Op::ConvTranspose {
                strides,
                pads,
                dilations,
                group,
                output_padding,
            } => {
                let mut attributes = window_attrs(strides, pads, dilations, *group);
                attributes.push(attr("output_padding", ints(output_padding)));
                self.emit("ConvTranspose", ins, outs, attributes);
            }
            Op::Pool {
                kind,
                kernel,
                strides,
                pads,
                dilations,
            } => {
                if in_ty(0).rank() != kernel.len() + 2 {
                    return Err(self.err(format!(
                        "ONNX pools over all axes after the first two; this pool has a {}-d window over {}",
                        kernel.len(),
                        in_ty(0)
                    )));
                }
                let mut attributes = vec![
                    attr("kernel_shape", ints(kernel)),
                    attr("strides", ints(strides)),
                    attr("pads", ints(pads)),
                    attr("dilations", ints(dilations)),
                ];
                let op_type = match kind {
                    PoolKind::Max => "MaxPool",
                    PoolKind::Avg | PoolKind::AvgIncludePad => {
                        let include = *kind == PoolKind::AvgIncludePad;
                        attributes.push(attr("count_include_pad", AttrValue::Int(include as i64)));
                        "AveragePool"
                    }
                };
                self.emit(op_type, ins, outs, attributes);
            }
            Op::Reshape { shape } => {
                let (target, allow_zero) = self.reshape_target(&in_ty(0).shape, shape)?;
                let shape_name = self.i64s(&format!("{out}_shape"), &target)?;
                self.emit(
                    "Reshape",
                    vec![ins[0].clone(), shape_name],
                    outs,
                    vec![attr("allowzero", AttrValue::Int(allow_zero as i64))],
                );
            }
            Op::Expand { shape } => {
                let from = in_ty(0).shape;
                let offset = shape.len().saturating_sub(from.len());
                let mut target = Vec::with_capacity(shape.len());
                for (i, d) in shape.iter().enumerate() {
                    target.push(match d {
                        Dim::Fixed(n) => *n as i64,
                        // A dim the operand already has: 1 keeps it.
                        Dim::Sym(_) if i >= offset && &from[i - offset] == d => 1,
                        Dim::Sym(s) => {
                            return Err(self.err(format!(
                                "cannot expand {} to the symbolic dim {s} in ONNX",
                                in_ty(0)
                            )));
                        }
                    });
                }
                let shape_name = self.i64s(&format!("{out}_shape"), &target)?;
                self.emit("Expand", vec![ins[0].clone(), shape_name], outs, vec![]);
            }
            Op::Transpose { perm } => {
                self.emit("Transpose", ins, outs, vec![attr("perm", ints(perm))])
            }
            Op::Slice {
                starts,
                ends,
                steps,
            } => {
                let axes: Vec<i64> = (0..starts.len() as i64).collect();
                let s = self.i64s(&format!("{out}_starts"), starts)?;
                let e = self.i64s(&format!("{out}_ends"), ends)?;
                let a = self.i64s(&format!("{out}_axes"), &axes)?;
                let st = self.i64s(&format!("{out}_steps"), steps)?;
                self.emit("Slice", vec![ins[0].clone(), s, e, a, st], outs, vec![]);
            }
            Op::Concat { axis } => self.emit(
                "Concat",
                ins,
                outs,
                vec![attr("axis", AttrValue::Int(*axis as i64))],
            ),
            Op::Pad { pads, mode } => {
                let p = self.i64s(&format!("{out}_pads"), pads)?;
                let mut inputs = vec![ins[0].clone(), p];
                inputs.extend(ins.get(1).cloned());
                self.emit(
                    "Pad",
                    inputs,
                    outs,
                    vec![attr("mode", AttrValue::Str(mode.name()))],
                );
            }
            Op::Gather { axis } => self.emit(
                "Gather",
                ins,
                outs,
                vec![attr("axis", AttrValue::Int(*axis as i64))],
            ),
            Op::GatherElements { axis } => self.emit(
                "GatherElements",
                ins,
                outs,
                vec![attr("axis", AttrValue::Int(*axis as i64))],
            ),
            Op::GatherNd { batch_dims } => self.emit(
                "GatherND",
                ins,
                outs,
                vec![attr("batch_dims", AttrValue::Int(*batch_dims as i64))],
            ),
            Op::ScatterElements { axis, reduction } => self.emit(
                "ScatterElements",
                ins,
                outs,
                vec![
                    attr("axis", AttrValue::Int(*axis as i64)),
                    attr("reduction", AttrValue::Str(reduction.name())),
                ],
            ),
            Op::ScatterNd { reduction } => self.emit(
                "ScatterND",
                ins,
                outs,
                vec![attr("reduction", AttrValue::Str(reduction.name()))],
            ),
            Op::Shape => self.emit("Shape", ins, outs, vec![]),
            Op::Resize {
                sizes,
                scales,
                mode,
                coord,
                nearest,
                cubic_coeff,
                exclude_outside,
                extrapolation,
            } => {
                let mut roi = ins.get(1).cloned().unwrap_or_default();
                if n.inputs.len() > 1 && in_ty(1).dtype != DType::F32 {
                    // onnxruntime reads the region of interest as f32 only.
                    let to = AttrValue::Int(dtype_to_onnx(DType::F32) as i64);
                    roi = self.temp(
                        "Cast",
                        vec![roi],
                        &format!("{out}_roi"),
                        vec![attr("to", to)],
                    );
                }
                let from = in_ty(0).fixed_shape();
                let floor_of_scales = |from: &[usize]| {
                    from.iter()
                        .zip(scales)
                        .map(|(&d, &s)| (d as f64 * s).floor() as usize)
                        .collect::<Vec<_>>()
                };
                let mut attributes = Vec::new();
                let inputs = match from {
                    _ if scales.is_empty() => {
                        let sizes: Vec<i64> = sizes.iter().map(|&s| s as i64).collect();
                        let s = self.i64s(&format!("{out}_sizes"), &sizes)?;
                        vec![ins[0].clone(), roi, String::new(), s]
                    }
                    Some(from) if floor_of_scales(&from) != *sizes => {
                        // Sizes from a scale kept equal across axes (keep_aspect_ratio_policy).
                        let (axes, requested) = self.aspect_request(&from, sizes, scales)?;
                        attributes.push(attr("axes", ints(&axes)));
                        attributes.push(attr(
                            "keep_aspect_ratio_policy",
                            AttrValue::Str("not_smaller"),
                        ));
                        let s = self.i64s(&format!("{out}_sizes"), &requested)?;
                        vec![ins[0].clone(), roi, String::new(), s]
                    }
                    _ => {
                        let t = Tensor::from_f64(DType::F32, vec![scales.len()], scales.clone())
                            .map_err(|e| self.err(e.to_string()))?;
                        let s = self.initializer(&format!("{out}_scales"), &t);
                        vec![ins[0].clone(), roi, s]
                    }
                };
                attributes.extend([
                    attr("mode", AttrValue::Str(mode.name())),
                    attr(
                        "coordinate_transformation_mode",
                        AttrValue::Str(coord.name()),
                    ),
                    attr("nearest_mode", AttrValue::Str(nearest.name())),
                    attr("cubic_coeff_a", AttrValue::Float(*cubic_coeff as f32)),
                    attr("exclude_outside", AttrValue::Int(*exclude_outside as i64)),
                    attr(
                        "extrapolation_value",
                        AttrValue::Float(*extrapolation as f32),
                    ),
                ]);
                self.emit("Resize", inputs, outs, attributes);
            }
        }
        Ok(())
    }

    fn binary(
        &mut self,
        b: BinaryOp,
        ins: Vec<String>,
        out: String,
        lhs: &TensorType,
    ) -> Result<()> {
        let simple = match b {
            BinaryOp::Add => "Add",
            BinaryOp::Sub => "Sub",
            BinaryOp::Mul => "Mul",
            BinaryOp::Div => "Div",
            BinaryOp::Pow => "Pow",
            BinaryOp::Max => "Max",
            BinaryOp::Min => "Min",
            BinaryOp::And => "And",
            BinaryOp::Or => "Or",
            BinaryOp::Xor => "Xor",
            BinaryOp::BitAnd => "BitwiseAnd",
            BinaryOp::BitOr => "BitwiseOr",
            BinaryOp::BitXor => "BitwiseXor",
            BinaryOp::Equal => "Equal",
            BinaryOp::Less => "Less",
            BinaryOp::LessEqual => "LessOrEqual",
            BinaryOp::Greater => "Greater",
            BinaryOp::GreaterEqual => "GreaterOrEqual",
            BinaryOp::Rem => {
                self.emit("Mod", ins, vec![out], vec![attr("fmod", AttrValue::Int(1))]);
                return Ok(());
            }
            BinaryOp::Mod if lhs.dtype.is_float() => {
                // ONNX's floored Mod is for integers only: the truncated remainder, moved
                // by the divisor when it is non-zero and its sign differs from the divisor's.
                let r = self.temp(
                    "Mod",
                    ins.clone(),
                    &format!("{out}_rem"),
                    vec![attr("fmod", AttrValue::Int(1))],
                );
                let zero =
                    self.initializer(&format!("{out}_zero"), &Tensor::scalar(lhs.dtype, 0.0));
                let r_neg = self.temp(
                    "Less",
                    vec![r.clone(), zero.clone()],
                    &format!("{out}_rem_neg"),
                    vec![],
                );
                let y_neg = self.temp(
                    "Less",
                    vec![ins[1].clone(), zero.clone()],
                    &format!("{out}_div_neg"),
                    vec![],
                );
                let differ = self.temp(
                    "Xor",
                    vec![r_neg, y_neg],
                    &format!("{out}_signs_differ"),
                    vec![],
                );
                let is_zero = self.temp(
                    "Equal",
                    vec![r.clone(), zero],
                    &format!("{out}_rem_zero"),
                    vec![],
                );
                let nonzero =
                    self.temp("Not", vec![is_zero], &format!("{out}_rem_nonzero"), vec![]);
                let fix = self.temp("And", vec![differ, nonzero], &format!("{out}_fix"), vec![]);
                let moved = self.temp(
                    "Add",
                    vec![r.clone(), ins[1].clone()],
                    &format!("{out}_moved"),
                    vec![],
                );
                self.emit("Where", vec![fix, moved, r], vec![out], vec![]);
                return Ok(());
            }
            BinaryOp::Mod => {
                self.emit("Mod", ins, vec![out], vec![attr("fmod", AttrValue::Int(0))]);
                return Ok(());
            }
            BinaryOp::Shl | BinaryOp::Shr => {
                if !lhs.dtype.is_unsigned_int() {
                    return Err(self.err(format!(
                        "ONNX's BitShift takes unsigned integers, not {}",
                        lhs.dtype
                    )));
                }
                let direction = if b == BinaryOp::Shl { "LEFT" } else { "RIGHT" };
                self.emit(
                    "BitShift",
                    ins,
                    vec![out],
                    vec![attr("direction", AttrValue::Str(direction))],
                );
                return Ok(());
            }
        };
        self.emit(simple, ins, vec![out], vec![]);
        Ok(())
    }

    /// A Resize whose output sizes are not `floor(input * scale)` came from sizes requested
    /// with one scale for all resized axes: the axes, and requested sizes from which ONNX's
    /// `not_smaller` policy derives that scale again (an axis whose size is exactly
    /// `scale * input` sets it; the others ask for no more than that).
    fn aspect_request(
        &self,
        from: &[usize],
        sizes: &[usize],
        scales: &[f64],
    ) -> Result<(Vec<usize>, Vec<i64>)> {
        let axes: Vec<usize> = (0..from.len())
            .filter(|&i| scales[i] != 1.0 || sizes[i] != from[i])
            .collect();
        let scale = axes.first().map(|&i| scales[i]);
        let cannot = || {
            self.err(format!(
                "sizes {sizes:?} of input {from:?} at scales {scales:?} have no ONNX form"
            ))
        };
        let scale = scale
            .filter(|&s| axes.iter().all(|&i| scales[i] == s))
            .ok_or_else(cannot)?;
        let exact = |i: usize| from[i] as f64 * scale == sizes[i] as f64;
        if !axes.iter().any(|&i| exact(i)) {
            return Err(cannot());
        }
        let requested = axes
            .iter()
            .map(|&i| {
                if exact(i) {
                    sizes[i] as i64
                } else {
                    (from[i] as f64 * scale).floor() as i64
                }
            })
            .collect();
        Ok((axes, requested))
    }

    /// `x` with its last two axes swapped when `swap` (MatMul's transpose flags).
    fn swap_last_axes(&mut self, x: &str, rank: usize, swap: bool, out: &str) -> Result<String> {
        if !swap {
            return Ok(x.to_string());
        }
        if rank < 2 {
            return Err(self.err("a transposed MatMul operand must have rank >= 2"));
        }
        let mut perm: Vec<usize> = (0..rank).collect();
        perm.swap(rank - 2, rank - 1);
        Ok(self.temp(
            "Transpose",
            vec![x.to_string()],
            &format!("{out}_{x}_t"),
            vec![attr("perm", ints(&perm))],
        ))
    }

    /// Reshape's target as ONNX takes it, and its `allowzero`: fixed dims as numbers, a
    /// symbolic dim the input has at the same position as 0 (copy it), at most one other
    /// symbolic dim as -1 (inferred).
    fn reshape_target(&self, from: &[Dim], to: &[Dim]) -> Result<(Vec<i64>, bool)> {
        let show = smelt_ir::infer::show_shape;
        let mut target = Vec::with_capacity(to.len());
        let (mut copies, mut inferred) = (false, false);
        for (i, d) in to.iter().enumerate() {
            target.push(match d {
                Dim::Fixed(n) => *n as i64,
                Dim::Sym(_) if from.get(i) == Some(d) => {
                    copies = true;
                    0
                }
                Dim::Sym(_) if !inferred => {
                    inferred = true;
                    -1
                }
                Dim::Sym(_) => {
                    return Err(self.err(format!(
                        "a reshape of {} to {} has more than one new symbolic dim, which ONNX cannot write",
                        show(from),
                        show(to)
                    )));
                }
            });
        }
        let empty = to.iter().any(|d| d.fixed() == Some(0));
        if copies && empty {
            return Err(self.err(format!(
                "a reshape of {} to {} both copies dims and makes an empty one, which ONNX cannot write",
                show(from),
                show(to)
            )));
        }
        Ok((target, empty))
    }
}

fn unary_name(u: UnaryOp) -> &'static str {
    match u {
        UnaryOp::Neg => "Neg",
        UnaryOp::Abs => "Abs",
        UnaryOp::Exp => "Exp",
        UnaryOp::Log => "Log",
        UnaryOp::Sqrt => "Sqrt",
        UnaryOp::Reciprocal => "Reciprocal",
        UnaryOp::Sin => "Sin",
        UnaryOp::Cos => "Cos",
        UnaryOp::Tan => "Tan",
        UnaryOp::Asin => "Asin",
        UnaryOp::Acos => "Acos",
        UnaryOp::Atan => "Atan",
        UnaryOp::Sinh => "Sinh",
        UnaryOp::Cosh => "Cosh",
        UnaryOp::Asinh => "Asinh",
        UnaryOp::Acosh => "Acosh",
        UnaryOp::Atanh => "Atanh",
        UnaryOp::Tanh => "Tanh",
        UnaryOp::Sigmoid => "Sigmoid",
        UnaryOp::Erf => "Erf",
        UnaryOp::Floor => "Floor",
        UnaryOp::Ceil => "Ceil",
        UnaryOp::Round => "Round",
        UnaryOp::Sign => "Sign",
        UnaryOp::Not => "Not",
        UnaryOp::BitNot => "BitwiseNot",
        UnaryOp::IsNan => "IsNaN",
        UnaryOp::IsInf => "IsInf",
    }
}
