//! The reference interpreter: evaluates any graph op by op in plain Rust.
//!
//! It serves constant folding and is the oracle of the test suite (rewrite
//! soundness, back end versus reference). It is **never** the product's execution
//! path: `smelt run --reference` reaches it explicitly; compiled code runs otherwise.
//! It favours clarity over speed, computing floats in `f64` and integers in `i64`
//! (`u64` bit-cast), rounding to the value's dtype after every op.

mod elementwise;
mod linalg;
mod movement;
mod reduce;

use crate::dtype::DType;
use crate::error::{IrError, Result};
use crate::graph::Graph;
use crate::op::Op;
use crate::tensor::Tensor;

/// Working values of one tensor: floats as `f64`, integers and bools as `i64`.
#[derive(Debug, Clone)]
pub(crate) enum Vals {
    F(Vec<f64>),
    I(Vec<i64>),
}

pub(crate) fn vals(t: &Tensor) -> Vals {
    if t.dtype().is_float() {
        Vals::F(t.to_f64())
    } else {
        Vals::I(t.to_i64())
    }
}

pub(crate) fn from_vals(dtype: DType, shape: Vec<usize>, v: Vals) -> Result<Tensor> {
    match v {
        Vals::F(v) => Tensor::from_f64(dtype, shape, v),
        Vals::I(v) => Tensor::from_i64(dtype, shape, v),
    }
}

/// Row-major strides of a shape.
pub(crate) fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Calls `f(linear, index)` for every multi-index of `shape` in row-major order.
pub(crate) fn for_each_index(shape: &[usize], mut f: impl FnMut(usize, &[usize])) {
    let n: usize = shape.iter().product();
    if n == 0 {
        return;
    }
    let mut idx = vec![0usize; shape.len()];
    for lin in 0..n {
        f(lin, &idx);
        for a in (0..shape.len()).rev() {
            idx[a] += 1;
            if idx[a] < shape[a] {
                break;
            }
            idx[a] = 0;
        }
    }
}

/// For each element of `out_shape`, the linear index of the element of `in_shape` that broadcasts to it.
pub(crate) fn broadcast_map(out_shape: &[usize], in_shape: &[usize]) -> Vec<usize> {
    let lead = out_shape.len() - in_shape.len();
    let in_strides = strides(in_shape);
    let eff: Vec<usize> = (0..out_shape.len())
        .map(|a| {
            if a < lead || in_shape[a - lead] == 1 {
                0
            } else {
                in_strides[a - lead]
            }
        })
        .collect();
    let mut map = Vec::with_capacity(out_shape.iter().product());
    for_each_index(out_shape, |_, idx| {
        map.push(idx.iter().zip(&eff).map(|(i, s)| i * s).sum())
    });
    map
}

/// NumPy broadcast of concrete shapes.
pub(crate) fn broadcast_shapes(shapes: &[&[usize]]) -> Result<Vec<usize>> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![1usize; rank];
    for s in shapes {
        for (i, &d) in s.iter().enumerate() {
            let o = &mut out[rank - s.len() + i];
            if *o == 1 {
                *o = d;
            } else if d != 1 && d != *o {
                return Err(IrError::Eval(format!("cannot broadcast shapes {shapes:?}")));
            }
        }
    }
    Ok(out)
}

/// Adds an epilogue bias `[n]` along the axis followed by `trailing` axes.
fn add_epilogue_bias(y: Tensor, bias: Option<&Tensor>, trailing: usize) -> Result<Tensor> {
    let Some(b) = bias else { return Ok(y) };
    let mut shape = vec![b.len()];
    shape.extend(std::iter::repeat_n(1, trailing));
    let b = b.clone().reshaped(shape)?;
    elementwise::binary(crate::op::BinaryOp::Add, &y, &b)
}

/// Evaluates one op on concrete operands.
pub fn eval_op(op: &Op, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
    let types: Vec<_> = inputs.iter().map(|t| t.tensor_type()).collect();
    let type_refs: Vec<_> = types.iter().collect();
    crate::infer::infer(op, &type_refs).map_err(|r| IrError::invalid("", op.mnemonic(), r))?;
    let one = |t: Result<Tensor>| t.map(|t| vec![t]);
    match op {
        Op::Constant(t) => Ok(vec![t.clone()]),
        Op::ProgramConstant(_) => Err(IrError::invalid(
            "",
            op.mnemonic(),
            "its values were moved into a compiled program",
        )),
        Op::Unary(u) => one(elementwise::unary(*u, inputs[0])),
        Op::Binary(b) => one(elementwise::binary(*b, inputs[0], inputs[1])),
        Op::Select => one(elementwise::select(inputs[0], inputs[1], inputs[2])),
        Op::Cast { to } => Ok(vec![inputs[0].cast(*to)]),
        Op::Reduce {
            kind,
            axes,
            keep_dims,
        } => one(reduce::reduce(*kind, inputs[0], axes, *keep_dims)),
        Op::ArgReduce {
            kind,
            axis,
            keep_dims,
            select_last,
        } => one(reduce::arg_reduce(
            *kind,
            inputs[0],
            *axis,
            *keep_dims,
            *select_last,
        )),
        Op::CumSum {
            axis,
            exclusive,
            reverse,
        } => one(reduce::cumsum(inputs[0], *axis, *exclusive, *reverse)),
        Op::TopK { axis, k, largest } => reduce::topk(inputs[0], *axis, *k, *largest),
        Op::MatMul { trans_a, trans_b } => {
            let swap = |t: &Tensor, on: bool| -> Result<Option<Tensor>> {
                if !on {
                    return Ok(None);
                }
                let r = t.rank();
                let mut perm: Vec<usize> = (0..r).collect();
                perm.swap(r - 2, r - 1);
                movement::transpose(t, &perm).map(Some)
            };
            let (ta, tb) = (swap(inputs[0], *trans_a)?, swap(inputs[1], *trans_b)?);
            let y = linalg::matmul(
                ta.as_ref().unwrap_or(inputs[0]),
                tb.as_ref().unwrap_or(inputs[1]),
            )?;
            one(add_epilogue_bias(y, inputs.get(2).copied(), 0))
        }
        Op::Conv {
            strides,
            pads,
            dilations,
            group,
        } => {
            let y = linalg::conv(inputs[0], inputs[1], strides, pads, dilations, *group)?;
            let spatial = y.rank().saturating_sub(2);
            one(add_epilogue_bias(y, inputs.get(2).copied(), spatial))
        }
        Op::ConvTranspose {
            strides,
            pads,
            dilations,
            group,
            output_padding,
        } => {
            let out_type = crate::infer::infer(op, &type_refs).map_err(IrError::Eval)?;
            let shape = out_type[0]
                .fixed_shape()
                .expect("concrete operands give a concrete shape");
            let _ = output_padding;
            one(linalg::conv_transpose(
                inputs[0], inputs[1], strides, pads, dilations, *group, shape,
            ))
        }
        Op::Pool {
            kind,
            kernel,
            strides,
            pads,
            dilations,
        } => one(linalg::pool(
            *kind, inputs[0], kernel, strides, pads, dilations,
        )),
        Op::Reshape { shape } => {
            let out = crate::shape::fixed_shape(shape)
                .ok_or_else(|| IrError::Eval("reshape to a symbolic shape".into()))?;
            one(inputs[0].clone().reshaped(out))
        }
        Op::Transpose { perm } => one(movement::transpose(inputs[0], perm)),
        Op::Slice {
            starts,
            ends,
            steps,
        } => one(movement::slice(inputs[0], starts, ends, steps)),
        Op::Concat { axis } => one(movement::concat(inputs, *axis)),
        Op::Pad { pads, mode } => one(movement::pad(inputs[0], inputs[1], pads, *mode)),
        Op::Gather { axis } => one(movement::gather(inputs[0], inputs[1], *axis)),
        Op::GatherElements { axis } => one(movement::gather_elements(inputs[0], inputs[1], *axis)),
        Op::GatherNd { batch_dims } => one(movement::gather_nd(inputs[0], inputs[1], *batch_dims)),
        Op::ScatterElements { axis, reduction } => one(movement::scatter_elements(
            inputs[0], inputs[1], inputs[2], *axis, *reduction,
        )),
        Op::ScatterNd { reduction } => one(movement::scatter_nd(
            inputs[0], inputs[1], inputs[2], *reduction,
        )),
        Op::Expand { shape } => {
            let target = crate::shape::fixed_shape(shape)
                .ok_or_else(|| IrError::Eval("expand to a symbolic shape".into()))?;
            let out = broadcast_shapes(&[inputs[0].shape(), &target])?;
            let map = broadcast_map(&out, inputs[0].shape());
            one(inputs[0].take(out, &map, None))
        }
        Op::Shape => {
            let dims = inputs[0].shape().iter().map(|&d| d as i64).collect();
            one(Tensor::from_i64(DType::I64, vec![inputs[0].rank()], dims))
        }
        Op::Resize { .. } => one(movement::resize(op, inputs[0], inputs[1])),
    }
}

/// Runs a whole graph on concrete inputs (in `graph.inputs` order), returning its outputs.
pub fn run(graph: &Graph, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
    if inputs.len() != graph.inputs.len() {
        return Err(IrError::Eval(format!(
            "graph takes {} inputs, got {}",
            graph.inputs.len(),
            inputs.len()
        )));
    }
    let mut slots: Vec<Option<Tensor>> = vec![None; graph.values.len()];
    for (&id, t) in graph.inputs.iter().zip(inputs) {
        let v = graph.value(id);
        let ty = t.tensor_type();
        let fits = ty.dtype == v.ty.dtype
            && ty.rank() == v.ty.rank()
            && ty
                .shape
                .iter()
                .zip(&v.ty.shape)
                .all(|(a, b)| b.fixed().is_none() || a == b);
        if !fits {
            return Err(IrError::Eval(format!(
                "input '{}' expects {}, got {ty}",
                v.name, v.ty
            )));
        }
        slots[id.index()] = Some(t.clone());
    }
    // Free each value after its last use so that big graphs run in bounded memory.
    let mut last_use = vec![usize::MAX; graph.values.len()];
    for (i, n) in graph.nodes.iter().enumerate() {
        for v in &n.inputs {
            last_use[v.index()] = i;
        }
    }
    for o in &graph.outputs {
        last_use[o.index()] = usize::MAX;
    }
    for (i, node) in graph.nodes.iter().enumerate() {
        let args: Vec<&Tensor> = node
            .inputs
            .iter()
            .map(|v| {
                slots[v.index()].as_ref().ok_or_else(|| {
                    IrError::Eval(format!("value '{}' is not computed", graph.value(*v).name))
                })
            })
            .collect::<Result<_>>()?;
        let results = eval_op(&node.op, &args).map_err(|e| match e {
            IrError::Invalid { reason, .. } | IrError::Eval(reason) => {
                IrError::invalid(&node.name, node.op.mnemonic(), reason)
            }
            other => other,
        })?;
        for (&o, t) in node.outputs.iter().zip(results) {
            slots[o.index()] = Some(t);
        }
        for v in &node.inputs {
            if last_use[v.index()] == i {
                slots[v.index()] = None;
            }
        }
    }
    graph
        .outputs
        .iter()
        .map(|o| {
            slots[o.index()].clone().ok_or_else(|| {
                IrError::Eval(format!("output '{}' is not computed", graph.value(*o).name))
            })
        })
        .collect()
}
