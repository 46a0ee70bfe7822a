//! Op classes as fusion sees them.

use smelt_ir::{Graph, Node, Op};

/// How an op can fuse with its neighbours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpClass {
    /// A constant: no kernel; it is a parameter of the kernels that read it.
    Constant,
    /// One output element from the same element of every operand.
    Elementwise,
    /// Elementwise with at least one operand broadcast (a bias, a scalar).
    Broadcast,
    /// Each output element is one input element at a computed index (transpose,
    /// reshape, slice, concat, pad, gathers, expand).
    Injective,
    /// Combines elements along axes (reduce, arg-reduce).
    Reduction,
    /// MatMul, Conv, ConvTranspose: run by contraction microkernels.
    Contraction,
    /// Everything else runs as its own kernel (pooling windows, scans, top-k, scatters, resize, shape).
    Opaque,
}

impl OpClass {
    pub fn name(self) -> &'static str {
        match self {
            OpClass::Constant => "constant",
            OpClass::Elementwise => "elementwise",
            OpClass::Broadcast => "broadcast",
            OpClass::Injective => "injective",
            OpClass::Reduction => "reduction",
            OpClass::Contraction => "contraction",
            OpClass::Opaque => "opaque",
        }
    }

    /// Elementwise, broadcast and injective ops form loops together.
    pub fn is_loop(self) -> bool {
        matches!(
            self,
            OpClass::Elementwise | OpClass::Broadcast | OpClass::Injective
        )
    }

    /// Ops that can follow a contraction or reduction in its epilogue.
    pub fn is_pointwise(self) -> bool {
        matches!(self, OpClass::Elementwise | OpClass::Broadcast)
    }
}

/// The class of a node of `g`.
pub fn classify(g: &Graph, node: &Node) -> OpClass {
    match &node.op {
        Op::Constant(_) | Op::ProgramConstant(_) => OpClass::Constant,
        Op::Unary(_) | Op::Binary(_) | Op::Select | Op::Cast { .. } => {
            let out = &g.ty(node.outputs[0]).shape;
            if node.inputs.iter().all(|&i| &g.ty(i).shape == out) {
                OpClass::Elementwise
            } else {
                OpClass::Broadcast
            }
        }
        Op::Expand { .. } => OpClass::Broadcast,
        Op::Reshape { .. }
        | Op::Transpose { .. }
        | Op::Slice { .. }
        | Op::Concat { .. }
        | Op::Pad { .. }
        | Op::Gather { .. }
        | Op::GatherElements { .. }
        | Op::GatherNd { .. } => OpClass::Injective,
        Op::Reduce { .. } | Op::ArgReduce { .. } => OpClass::Reduction,
        Op::MatMul { .. } | Op::Conv { .. } | Op::ConvTranspose { .. } => OpClass::Contraction,
        Op::CumSum { .. }
        | Op::TopK { .. }
        | Op::Pool { .. }
        | Op::ScatterElements { .. }
        | Op::ScatterNd { .. }
        | Op::Shape
        | Op::Resize { .. } => OpClass::Opaque,
    }
}
