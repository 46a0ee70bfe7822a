//! The analytic cost model: time estimated from FLOPs against peak compute and bytes
//! against memory bandwidth. Constants live here so they can be calibrated.

use smelt_ir::{Op, TensorType};

/// Peak fp32 throughput assumed for one core, FLOP/s (measured: about 211e9 with AVX-512).
pub const PEAK_FLOPS: f64 = 211e9;
/// Sustained memory bandwidth assumed, bytes/s.
pub const BANDWIDTH: f64 = 20e9;
/// Fixed cost of launching one kernel, seconds; makes fewer nodes cheaper at equal work.
pub const LAUNCH_OVERHEAD: f64 = 1e-7;
/// The cost of a view (a reshape, a unit-step slice): it moves no data, but it ends a
/// contraction's epilogue and splits loops, so of two equal graphs the one with fewer
/// views is taken (GPT-2's GELU sits between a reshape and its inverse; with the
/// reshapes sunk past it and cancelled, it becomes its MatMul's epilogue).
pub const VIEW_COST: f64 = 1e-10;

fn elems(t: &TensorType) -> f64 {
    t.num_elements().unwrap_or(1) as f64
}

fn bytes(t: &TensorType) -> f64 {
    elems(t) * t.dtype.size_bytes() as f64
}

fn is_view(op: &Op) -> bool {
    match op {
        Op::Reshape { .. } => true,
        Op::Slice { steps, .. } => steps.iter().all(|&s| s == 1),
        _ => false,
    }
}

/// Estimated seconds to run `op` on operands of types `inputs` producing `out`.
/// Constant operands are free to read only once; they are counted like any operand.
pub fn node_cost(op: &Op, inputs: &[&TensorType], out: &TensorType) -> f64 {
    let flops = match op {
        Op::Constant(_) => return 0.0,
        Op::MatMul { trans_a, .. } => {
            let a = &inputs[0].shape;
            let axis = if *trans_a {
                a.len().saturating_sub(2)
            } else {
                a.len().saturating_sub(1)
            };
            let k = a.get(axis).and_then(|d| d.fixed()).unwrap_or(1) as f64;
            2.0 * elems(out) * k
        }
        Op::Conv { group, .. } => {
            let w = inputs[1];
            let per_out: f64 = w
                .shape
                .iter()
                .skip(1)
                .map(|d| d.fixed().unwrap_or(1) as f64)
                .product();
            let _ = group;
            2.0 * elems(out) * per_out
        }
        Op::ConvTranspose { .. } => {
            2.0 * elems(inputs[0]) * inputs[1].num_elements().unwrap_or(1) as f64
        }
        Op::Pool { kernel, .. } => elems(out) * kernel.iter().product::<usize>() as f64,
        Op::Reduce { .. } | Op::ArgReduce { .. } | Op::CumSum { .. } => elems(inputs[0]),
        Op::Unary(_) => 4.0 * elems(out),
        Op::Binary(_) | Op::Select | Op::Cast { .. } => elems(out),
        // Reshapes and unit-step slices become views (strided access in the Kernel
        // IR), so they cost a launch at most and move no data.
        op if is_view(op) => 0.0,
        _ => elems(out),
    };
    if is_view(op) {
        return VIEW_COST;
    }
    let moved: f64 = if is_view(op) {
        0.0
    } else {
        inputs.iter().map(|t| bytes(t)).sum::<f64>() + bytes(out)
    };
    LAUNCH_OVERHEAD + flops / PEAK_FLOPS + moved / BANDWIDTH
}

/// The estimated cost of a whole graph: the sum over its nodes.
pub fn graph_cost(g: &smelt_ir::Graph) -> f64 {
    g.nodes
        .iter()
        .map(|n| {
            let ins: Vec<&TensorType> = n.inputs.iter().map(|&v| g.ty(v)).collect();
            node_cost(&n.op, &ins, g.ty(n.outputs[0]))
        })
        .sum()
}
