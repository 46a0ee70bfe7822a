//! ONNX graph to Graph IR: the import context, node wrapper, function inlining and specialization.

use crate::error::{OnnxError, Result, UnsupportedOp};
use crate::model::OnnxModel;
use crate::proto::{AttributeProto, FunctionProto, NodeProto, attribute_proto::AttributeType};
use crate::tensor::{dtype_from_onnx, onnx_type_name, tensor_from_proto};
use smelt_ir::{Compose, Dim, Graph, Op, Tensor, TensorType, ValueId};
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// Lowest and highest opset of the default domain the importer accepts.
/// Opsets 25 to 28 were reviewed op by op against the ONNX 1.23.2 schemas: apart from
/// new element types (refused when a tensor is decoded), only Mod (floored modulo of
/// floats), BitShift (signed types), SpaceToDepth (`mode`) and Range (`stash_type`)
/// changed, and their handlers implement the new versions. See docs/decisions.md.
/// Opset 6 (the pytorch model suites) differs from 7 in the legacy `broadcast`/`axis`
/// attributes of binary ops, BatchNormalization's `is_test` and PRelu's slope
/// alignment, which the handlers implement.
pub const OPSET_RANGE: std::ops::RangeInclusive<i64> = 6..=28;
/// How deeply local functions may call each other before the importer refuses the model.
const MAX_FUNCTION_DEPTH: usize = 32;

/// What the caller knows at import time, used to specialize the graph.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Concrete shapes for inputs (replacing symbolic dims; fixed dims must agree).
    pub input_shapes: HashMap<String, Vec<usize>>,
    /// Values of inputs; an input whose value decides a shape or attribute (the
    /// `shape` operand of Reshape, say) is bound to this value as a constant.
    pub input_values: HashMap<String, Tensor>,
}

/// An imported model.
#[derive(Debug, Clone)]
pub struct Imported {
    pub graph: Graph,
    /// ONNX names of the graph's inputs, in `graph.inputs` order.
    pub input_names: Vec<String>,
    /// ONNX names of the graph's outputs, in `graph.outputs` order.
    pub output_names: Vec<String>,
    /// Inputs that were specialized to the values given in [`ImportOptions::input_values`].
    pub bound_inputs: Vec<String>,
}

/// An ONNX node with resolved operands and attributes, as op handlers see it.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub op_type: String,
    pub opset: i64,
    pub inputs: Vec<Option<ValueId>>,
    pub num_outputs: usize,
    pub attrs: Vec<AttributeProto>,
}

fn attr_kind(a: &AttributeProto) -> Option<AttributeType> {
    if let Some(t) = a
        .r#type
        .and_then(|t| AttributeType::try_from(t).ok())
        .filter(|t| *t != AttributeType::Undefined)
    {
        return Some(t);
    }
    // IR versions before 2 leave the type out; infer it from the field in use.
    Some(if a.f.is_some() {
        AttributeType::Float
    } else if a.i.is_some() {
        AttributeType::Int
    } else if a.s.is_some() {
        AttributeType::String
    } else if a.t.is_some() {
        AttributeType::Tensor
    } else if a.g.is_some() {
        AttributeType::Graph
    } else if !a.floats.is_empty() {
        AttributeType::Floats
    } else if !a.ints.is_empty() {
        AttributeType::Ints
    } else if !a.strings.is_empty() {
        AttributeType::Strings
    } else {
        return None;
    })
}

impl Node {
    pub fn err(&self, reason: impl Into<String>) -> OnnxError {
        OnnxError::Node {
            node: self.name.clone(),
            op: self.op_type.clone(),
            reason: reason.into(),
        }
    }

    /// A required operand.
    pub fn input(&self, i: usize) -> Result<ValueId> {
        self.opt_input(i)
            .ok_or_else(|| self.err(format!("input {i} is required")))
    }

    /// An optional operand (absent or empty name).
    pub fn opt_input(&self, i: usize) -> Option<ValueId> {
        self.inputs.get(i).copied().flatten()
    }

    pub fn attr(&self, name: &str) -> Option<&AttributeProto> {
        self.attrs.iter().find(|a| a.name.as_deref() == Some(name))
    }

    fn typed(&self, name: &str, want: AttributeType) -> Result<Option<&AttributeProto>> {
        match self.attr(name) {
            None => Ok(None),
            Some(a) if attr_kind(a) == Some(want) => Ok(Some(a)),
            Some(a) => Err(self.err(format!(
                "attribute '{name}' must be {}, got {}",
                want.as_str_name(),
                attr_kind(a).map_or("nothing", |k| k.as_str_name())
            ))),
        }
    }

    pub fn opt_int(&self, name: &str) -> Result<Option<i64>> {
        Ok(self
            .typed(name, AttributeType::Int)?
            .map(|a| a.i.unwrap_or(0)))
    }

    pub fn int(&self, name: &str, default: i64) -> Result<i64> {
        Ok(self.opt_int(name)?.unwrap_or(default))
    }

    pub fn float(&self, name: &str, default: f32) -> Result<f32> {
        Ok(self
            .typed(name, AttributeType::Float)?
            .map_or(default, |a| a.f.unwrap_or(0.0)))
    }

    pub fn opt_float(&self, name: &str) -> Result<Option<f32>> {
        Ok(self
            .typed(name, AttributeType::Float)?
            .map(|a| a.f.unwrap_or(0.0)))
    }

    pub fn ints(&self, name: &str) -> Result<Option<Vec<i64>>> {
        Ok(self
            .typed(name, AttributeType::Ints)?
            .map(|a| a.ints.clone()))
    }

    pub fn floats(&self, name: &str) -> Result<Option<Vec<f32>>> {
        Ok(self
            .typed(name, AttributeType::Floats)?
            .map(|a| a.floats.clone()))
    }

    pub fn string(&self, name: &str, default: &str) -> Result<String> {
        match self.typed(name, AttributeType::String)? {
            None => Ok(default.to_string()),
            Some(a) => String::from_utf8(a.s.clone().unwrap_or_default())
                .map_err(|_| self.err(format!("attribute '{name}' is not UTF-8"))),
        }
    }

    pub fn strings(&self, name: &str) -> Result<Option<Vec<String>>> {
        Ok(self.typed(name, AttributeType::Strings)?.map(|a| {
            a.strings
                .iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        }))
    }

    pub fn tensor(&self, name: &str) -> Result<Option<Tensor>> {
        match self.typed(name, AttributeType::Tensor)? {
            None => Ok(None),
            Some(a) => {
                let t =
                    a.t.as_ref()
                        .ok_or_else(|| self.err(format!("attribute '{name}' holds no tensor")))?;
                Ok(Some(
                    tensor_from_proto(t, None).map_err(|e| self.err(e.to_string()))?,
                ))
            }
        }
    }
}

/// The import state: the graph being built and what is known to be constant.
#[derive(Debug)]
pub struct Ctx<'m> {
    pub g: Graph,
    node: String,
    op_type: String,
    producer: HashMap<ValueId, usize>,
    const_cache: HashMap<ValueId, Tensor>,
    input_values: &'m HashMap<String, Tensor>,
    bound: Vec<(ValueId, Tensor)>,
}

impl Compose for Ctx<'_> {
    type Error = OnnxError;

    fn op(&mut self, op: Op, inputs: &[ValueId]) -> Result<ValueId> {
        Ok(self.op_n(op, inputs)?[0])
    }

    fn constant(&mut self, t: Tensor) -> ValueId {
        self.op(Op::Constant(t), &[])
            // Its tensor exists, so it passed the memory limit when it was made (decoded
            // tensors are checked in `tensor_from_proto`, computed ones by inference).
            .expect("a constant always type-checks")
    }

    fn ty(&self, v: ValueId) -> &TensorType {
        self.g.ty(v)
    }
}

impl<'m> Ctx<'m> {
    pub fn err(&self, reason: impl Into<String>) -> OnnxError {
        OnnxError::Node {
            node: self.node.clone(),
            op: self.op_type.clone(),
            reason: reason.into(),
        }
    }

    fn lift(&self, e: smelt_ir::IrError) -> OnnxError {
        match e {
            smelt_ir::IrError::Invalid { op, reason, .. } => self.err(format!("{op}: {reason}")),
            other => self.err(other.to_string()),
        }
    }

    /// Emits a core op with the current node's name; returns all results.
    pub fn op_n(&mut self, op: Op, inputs: &[ValueId]) -> Result<Vec<ValueId>> {
        let name = self.node.clone();
        let outs = self
            .g
            .add_node(&name, op, inputs, &[])
            .map_err(|e| self.lift(e))?;
        let idx = self.g.nodes.len() - 1;
        for &o in &outs {
            self.producer.insert(o, idx);
        }
        Ok(outs)
    }

    /// The concrete shape of a value, or an error naming the node.
    pub fn fixed_shape(&self, v: ValueId) -> Result<Vec<usize>> {
        self.ty(v).fixed_shape().ok_or_else(|| {
            self.err(format!(
                "needs a concrete shape for '{}' ({}); give input shapes",
                self.g.value(v).name,
                self.ty(v)
            ))
        })
    }

    /// Normalizes a possibly negative axis.
    pub fn axis(&self, axis: i64, rank: usize) -> Result<usize> {
        let a = if axis < 0 { axis + rank as i64 } else { axis };
        if a < 0 || a >= rank as i64 {
            return Err(self.err(format!("axis {axis} is out of range for rank {rank}")));
        }
        Ok(a as usize)
    }

    /// The `axes` attribute normalized against `rank`, or every axis when absent.
    pub fn axes_attr(&self, n: &Node, rank: usize) -> Result<Vec<usize>> {
        match n.ints("axes")? {
            Some(a) => a.iter().map(|&a| self.axis(a, rank)).collect(),
            None => Ok((0..rank).collect()),
        }
    }

    /// The value of `v` when it is computable at import time (constants, shape
    /// arithmetic, and inputs whose values were supplied for specialization).
    pub fn const_value(&mut self, v: ValueId) -> Result<Option<Tensor>> {
        self.const_value_at(v, 0)
    }

    fn const_value_at(&mut self, v: ValueId, depth: usize) -> Result<Option<Tensor>> {
        if let Some(t) = self.const_cache.get(&v) {
            return Ok(Some(t.clone()));
        }
        if depth > 200 {
            return Ok(None);
        }
        let Some(&ni) = self.producer.get(&v) else {
            let name = self.g.value(v).name.clone();
            let Some(t) = self.input_values.get(&name) else {
                return Ok(None);
            };
            if !self.g.inputs.contains(&v) {
                return Ok(None);
            }
            let declared = self.ty(v);
            if t.tensor_type() != *declared {
                return Err(OnnxError::Input {
                    name,
                    reason: format!("expects {declared}, got {}", t.tensor_type()),
                });
            }
            self.bound.push((v, t.clone()));
            self.const_cache.insert(v, t.clone());
            return Ok(Some(t.clone()));
        };
        if let Op::Constant(t) = &self.g.nodes[ni].op {
            return Ok(Some(t.clone()));
        }
        let (op, inputs, outputs) = {
            let n = &self.g.nodes[ni];
            (n.op.clone(), n.inputs.clone(), n.outputs.clone())
        };
        let mut args = Vec::with_capacity(inputs.len());
        for i in inputs {
            match self.const_value_at(i, depth + 1)? {
                Some(t) => args.push(t),
                None => return Ok(None),
            }
        }
        let refs: Vec<&Tensor> = args.iter().collect();
        let results = smelt_ir::interp::eval_op(&op, &refs).map_err(|e| self.lift(e))?;
        for (o, t) in outputs.into_iter().zip(results) {
            self.const_cache.insert(o, t);
        }
        Ok(self.const_cache.get(&v).cloned())
    }

    /// The value of an operand that must be known at import time.
    pub fn require_const(&mut self, v: ValueId, what: &str) -> Result<Tensor> {
        self.const_value(v)?.ok_or_else(|| {
            self.err(format!(
                "{what} ('{}') must be a constant or computable from constants and input values",
                self.g.value(v).name
            ))
        })
    }

    /// An i64 list operand known at import time.
    pub fn require_ints(&mut self, v: ValueId, what: &str) -> Result<Vec<i64>> {
        Ok(self.require_const(v, what)?.to_i64())
    }
}

/// The default-domain check.
fn is_default_domain(d: &str) -> bool {
    d.is_empty() || d == "ai.onnx"
}

fn find_function<'a>(model: &'a OnnxModel, node: &NodeProto) -> Option<&'a FunctionProto> {
    let domain = node.domain.as_deref().unwrap_or("");
    model.proto.functions.iter().find(|f| {
        f.name.as_deref() == node.op_type.as_deref() && f.domain.as_deref().unwrap_or("") == domain
    })
}

/// Every node the importer cannot handle, across the graph and the local functions it calls.
pub fn unsupported_ops(model: &OnnxModel) -> Vec<UnsupportedOp> {
    let opset = model.default_opset().unwrap_or(0);
    let mut out = Vec::new();
    let mut visited = HashSet::new();
    let graph = model.proto.graph.as_ref().expect("checked when decoded");
    collect_unsupported(model, &graph.node, opset, &mut out, &mut visited);
    out
}

fn collect_unsupported(
    model: &OnnxModel,
    nodes: &[NodeProto],
    opset: i64,
    out: &mut Vec<UnsupportedOp>,
    visited: &mut HashSet<String>,
) {
    for n in nodes {
        let op_type = n.op_type.clone().unwrap_or_default();
        let domain = n.domain.clone().unwrap_or_default();
        if let Some(f) = find_function(model, n) {
            let key = format!("{domain}::{op_type}");
            if visited.insert(key) {
                let fopset = function_opset(f).unwrap_or(opset);
                collect_unsupported(model, &f.node, fopset, out, visited);
            }
            continue;
        }
        if is_default_domain(&domain) && crate::ops::handler(&op_type).is_some() {
            continue;
        }
        out.push(UnsupportedOp {
            op_type,
            domain: domain.clone(),
            node: n.name.clone().unwrap_or_default(),
            opset,
        });
    }
}

fn function_opset(f: &FunctionProto) -> Option<i64> {
    f.opset_import
        .iter()
        .find(|o| is_default_domain(o.domain.as_deref().unwrap_or("")))
        .and_then(|o| o.version)
}

/// Resolves attribute references (`ref_attr_name`) of a node inside a function body.
fn substitute_attrs(attrs: &[AttributeProto], outer: &[AttributeProto]) -> Vec<AttributeProto> {
    attrs
        .iter()
        .filter_map(|a| match &a.ref_attr_name {
            Some(r) if !r.is_empty() => outer
                .iter()
                .find(|o| o.name.as_deref() == Some(r.as_str()))
                .map(|o| {
                    let mut o = o.clone();
                    o.name = a.name.clone();
                    o
                }),
            _ => Some(a.clone()),
        })
        .collect()
}

struct Importer<'a, 'm> {
    model: &'a OnnxModel,
    cx: Ctx<'m>,
    onnx_named: HashSet<ValueId>,
}

impl Importer<'_, '_> {
    fn nodes(
        &mut self,
        nodes: &[NodeProto],
        scope: &mut HashMap<String, ValueId>,
        opset: i64,
        outer_attrs: &[AttributeProto],
        depth: usize,
    ) -> Result<()> {
        for (index, n) in nodes.iter().enumerate() {
            let op_type = n.op_type.clone().unwrap_or_default();
            let name = n
                .name
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| format!("{op_type}_{index}"));
            let mut inputs = Vec::with_capacity(n.input.len());
            for i in &n.input {
                if i.is_empty() {
                    inputs.push(None);
                } else {
                    let v = scope.get(i).copied().ok_or_else(|| OnnxError::Node {
                        node: name.clone(),
                        op: op_type.clone(),
                        reason: format!("input '{i}' is not defined before this node (missing initializer, or nodes not in topological order)"),
                    })?;
                    inputs.push(Some(v));
                }
            }
            let attrs = if depth == 0 {
                n.attribute.clone()
            } else {
                substitute_attrs(&n.attribute, outer_attrs)
            };
            let node = Node {
                name: name.clone(),
                op_type: op_type.clone(),
                opset,
                inputs,
                num_outputs: n.output.len(),
                attrs,
            };
            self.cx.node = name.clone();
            self.cx.op_type = op_type.clone();
            let values_before = self.cx.g.values.len();
            let outputs = if let Some(f) = find_function(self.model, n) {
                if depth >= MAX_FUNCTION_DEPTH {
                    return Err(node.err(format!(
                        "local functions nest deeper than {MAX_FUNCTION_DEPTH} levels"
                    )));
                }
                self.inline(f, &node, opset, depth)?
            } else {
                let domain = n.domain.as_deref().unwrap_or("");
                let handler = crate::ops::handler(&op_type)
                    .filter(|_| is_default_domain(domain))
                    .ok_or_else(|| {
                        OnnxError::Unsupported(vec![UnsupportedOp {
                            op_type: op_type.clone(),
                            domain: domain.to_string(),
                            node: name.clone(),
                            opset,
                        }])
                    })?;
                handler(&mut self.cx, &node)?
            };
            for (i, out_name) in n.output.iter().enumerate() {
                if out_name.is_empty() {
                    continue;
                }
                let v = *outputs.get(i).ok_or_else(|| {
                    node.err(format!("output {i} ('{out_name}') is not supported"))
                })?;
                if scope.contains_key(out_name) {
                    return Err(node.err(format!(
                        "output '{out_name}' is already defined (ONNX assigns each value once)"
                    )));
                }
                if depth == 0 && v.index() >= values_before && self.onnx_named.insert(v) {
                    let _ = self.cx.g.rename(v, out_name);
                }
                scope.insert(out_name.clone(), v);
            }
        }
        Ok(())
    }

    fn inline(
        &mut self,
        f: &FunctionProto,
        node: &Node,
        opset: i64,
        depth: usize,
    ) -> Result<Vec<ValueId>> {
        let mut scope = HashMap::new();
        for (i, name) in f.input.iter().enumerate() {
            if let Some(v) = node.opt_input(i) {
                scope.insert(name.clone(), v);
            }
        }
        // Attributes of the call, then the function's declared defaults.
        let mut attrs = node.attrs.clone();
        for d in &f.attribute_proto {
            if !attrs.iter().any(|a| a.name == d.name) {
                attrs.push(d.clone());
            }
        }
        let fopset = function_opset(f).unwrap_or(opset);
        self.nodes(&f.node, &mut scope, fopset, &attrs, depth + 1)?;
        f.output
            .iter()
            .map(|o| {
                scope
                    .get(o)
                    .copied()
                    .ok_or_else(|| node.err(format!("function output '{o}' is never defined")))
            })
            .collect()
    }
}

fn input_type(
    name: &str,
    vi: &crate::proto::ValueInfoProto,
    given: Option<&Vec<usize>>,
    syms: &mut HashMap<String, usize>,
) -> Result<TensorType> {
    use crate::proto::tensor_shape_proto::dimension::Value as DimValue;
    use crate::proto::type_proto::Value;
    let err = |reason: String| OnnxError::Input {
        name: name.to_string(),
        reason,
    };
    let Some(Value::TensorType(tt)) = vi.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return Err(err("only tensor inputs are supported".into()));
    };
    let code = tt.elem_type.unwrap_or(0);
    let dtype = dtype_from_onnx(code).ok_or_else(|| {
        err(format!(
            "element type {} is not supported",
            onnx_type_name(code)
        ))
    })?;
    let declared: Vec<Dim> = match &tt.shape {
        Some(s) => s
            .dim
            .iter()
            .enumerate()
            .map(|(i, d)| match &d.value {
                Some(DimValue::DimValue(v)) if *v >= 0 => Ok(Dim::Fixed(*v as usize)),
                Some(DimValue::DimValue(v)) => Err(err(format!("dimension {i} is negative ({v})"))),
                Some(DimValue::DimParam(p)) if !p.is_empty() => Ok(Dim::Sym(p.clone())),
                _ => Ok(Dim::Sym(format!("{name}_d{i}"))),
            })
            .collect::<Result<_>>()?,
        None => match given {
            Some(g) => g.iter().map(|&d| Dim::Fixed(d)).collect(),
            None => return Err(err("has no shape; give one with --input-shape".into())),
        },
    };
    let shape: Vec<Dim> = match given {
        Some(given) => {
            smelt_ir::shape::bind_shape(&declared, given, syms).map_err(err)?;
            given.iter().map(|&d| Dim::Fixed(d)).collect()
        }
        None => declared,
    };
    // Held to the memory limit like every other value, so that no op sizes anything by
    // dims whose product overflows.
    let fixed: Option<Vec<usize>> = shape.iter().map(Dim::fixed).collect();
    if let Some(fixed) = fixed {
        smelt_ir::limits::value_bytes(&fixed, dtype).map_err(err)?;
    }
    Ok(TensorType::new(dtype, shape))
}

/// Imports a model into the Graph IR.
pub fn import(model: &OnnxModel, opts: &ImportOptions) -> Result<Imported> {
    model.check_unchanged()?;
    let graph = model.proto.graph.as_ref().expect("checked when decoded");
    let opset = model
        .default_opset()
        .ok_or_else(|| OnnxError::Model("no opset import for the default domain".into()))?;
    if !OPSET_RANGE.contains(&opset) {
        return Err(OnnxError::Model(format!(
            "opset {opset} of the default domain is not supported (supported: {} to {})",
            OPSET_RANGE.start(),
            OPSET_RANGE.end()
        )));
    }
    let unsupported = unsupported_ops(model);
    if !unsupported.is_empty() {
        return Err(OnnxError::Unsupported(unsupported));
    }
    let base_dir = model.base_dir.as_deref();
    let mut cx = Ctx {
        g: Graph::new(graph.name.clone().unwrap_or_else(|| "main".into())),
        node: String::new(),
        op_type: String::new(),
        producer: HashMap::new(),
        const_cache: HashMap::new(),
        input_values: &opts.input_values,
        bound: Vec::new(),
    };
    let mut scope: HashMap<String, ValueId> = HashMap::new();
    let init_names: HashSet<&str> = graph
        .initializer
        .iter()
        .filter_map(|t| t.name.as_deref())
        .collect();
    // Graph inputs first, so that their IR names are exactly their ONNX names.
    let mut syms = HashMap::new();
    for vi in &graph.input {
        let name = vi.name.clone().unwrap_or_default();
        if init_names.contains(name.as_str()) {
            continue;
        }
        if scope.contains_key(&name) {
            return Err(OnnxError::Model(format!(
                "graph input '{name}' is declared twice"
            )));
        }
        let ty = input_type(&name, vi, opts.input_shapes.get(&name), &mut syms)?;
        let id = cx.g.add_input(&name, ty);
        scope.insert(name, id);
    }
    for name in opts.input_shapes.keys().chain(opts.input_values.keys()) {
        if !scope.contains_key(name) {
            return Err(OnnxError::Input {
                name: name.clone(),
                reason: "the model has no such input".into(),
            });
        }
    }
    for t in &graph.initializer {
        let name = t.name.clone().unwrap_or_default();
        let tensor = tensor_from_proto(t, base_dir)?;
        model.release(t);
        cx.node = name.clone();
        cx.op_type = "initializer".into();
        let id = cx.constant(tensor);
        let _ = cx.g.rename(id, &name);
        scope.insert(name, id);
    }
    let onnx_named = scope.values().copied().collect();
    let mut imp = Importer {
        model,
        cx,
        onnx_named,
    };
    imp.nodes(&graph.node, &mut scope, opset, &[], 0)?;
    let mut cx = imp.cx;
    let mut output_names = Vec::new();
    for o in &graph.output {
        let name = o.name.clone().unwrap_or_default();
        let v = *scope
            .get(&name)
            .ok_or_else(|| OnnxError::Model(format!("graph output '{name}' is never computed")))?;
        cx.g.outputs.push(v);
        output_names.push(name);
    }
    let mut bound_inputs = Vec::new();
    for (v, t) in std::mem::take(&mut cx.bound) {
        bound_inputs.push(cx.g.value(v).name.clone());
        cx.g.bind_input(v, t)?;
    }
    let input_names =
        cx.g.inputs
            .iter()
            .map(|&i| cx.g.value(i).name.clone())
            .collect();
    cx.g.verify()?;
    Ok(Imported {
        graph: cx.g,
        input_names,
        output_names,
        bound_inputs,
    })
}

/// Loads and imports a model file in one step.
pub fn import_file(path: &Path, opts: &ImportOptions) -> Result<Imported> {
    import(&OnnxModel::load(path)?, opts)
}
