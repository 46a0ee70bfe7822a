//! Models that start as a Graph IR graph (the tracer's, say) rather than an ONNX file: their
//! summary and their specialization to input shapes, the two things the pipeline asks of a
//! model's source.

use crate::{Result, SmeltError};
use smelt_ir::{Graph, Op};
use smelt_onnx::model::IoInfo;
use smelt_onnx::{ImportOptions, Imported, ModelInfo};
use std::collections::{BTreeMap, HashMap};

/// What `smelt inspect` would show for the graph.
pub(crate) fn graph_info(g: &Graph) -> ModelInfo {
    let io = |v| {
        let value = g.value(v);
        IoInfo {
            name: value.name.clone(),
            dtype: value.ty.dtype.name().to_string(),
            dims: value.ty.shape.iter().map(|d| d.to_string()).collect(),
        }
    };
    let (mut parameter_count, mut parameter_bytes) = (0u64, 0u64);
    for n in &g.nodes {
        if let Op::Constant(t) = &n.op {
            parameter_count += t.len() as u64;
            parameter_bytes += (t.len() * t.dtype().size_bytes()) as u64;
        }
    }
    ModelInfo {
        ir_version: 0,
        opsets: Vec::new(),
        producer: "smelt graph".into(),
        graph_name: g.name.clone(),
        inputs: g.inputs.iter().map(|&v| io(v)).collect(),
        outputs: g.outputs.iter().map(|&v| io(v)).collect(),
        op_histogram: g
            .op_histogram()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect::<BTreeMap<_, _>>(),
        parameter_count,
        parameter_bytes,
        unsupported: Vec::new(),
    }
}

/// The graph specialized to the given input shapes: each given shape must keep the
/// declared fixed dims and bind every symbolic dim to one size, then every type is
/// inferred again. Graphs decide no shape from input values, so none is bound.
pub(crate) fn specialize(g: &Graph, opts: &ImportOptions) -> Result<Imported> {
    let input_err = |name: &str, reason: String| SmeltError::Input {
        name: name.to_string(),
        reason,
    };
    for name in opts.input_shapes.keys().chain(opts.input_values.keys()) {
        if !g.inputs.iter().any(|&i| &g.value(i).name == name) {
            return Err(crate::compile::no_such_input(
                name,
                g.inputs.iter().map(|&i| g.value(i).name.as_str()),
            ));
        }
    }
    let mut bindings: HashMap<String, usize> = HashMap::new();
    for &i in &g.inputs {
        let value = g.value(i);
        let Some(given) = opts.input_shapes.get(&value.name) else {
            continue;
        };
        smelt_ir::shape::bind_shape(&value.ty.shape, given, &mut bindings)
            .map_err(|reason| input_err(&value.name, reason))?;
    }
    let mut graph = g.clone();
    if !bindings.is_empty() {
        smelt_opt::Pipeline::new(vec![Box::new(smelt_opt::passes::Specialize { bindings })])
            .run(&mut graph)?;
    }
    let names =
        |ids: &[smelt_ir::ValueId]| ids.iter().map(|&v| graph.value(v).name.clone()).collect();
    Ok(Imported {
        input_names: names(&graph.inputs),
        output_names: names(&graph.outputs),
        graph,
        bound_inputs: Vec::new(),
    })
}
