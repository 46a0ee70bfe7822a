//! Each op inside a group at a coordinate vector: `at_uncached` dispatches to the op's
//! family (elementwise here; `movement.rs`, `indexing.rs`, `reduce.rs`, `linalg.rs`,
//! `resize.rs`), which maps the coordinates to its operands' or binds a reduction.

use super::*;

impl<'g> Builder<'g> {
    /// `v` at `coords`, built fresh: a dispatch to the op's family, as the interpreter
    /// dispatches (`smelt_ir::interp`).
    pub(super) fn at_uncached(
        &mut self,
        v: ValueId,
        coords: &[ExprId],
    ) -> Result<ExprId, KernelError> {
        let node = self.node_of(v);
        match &node.op {
            Op::Unary(_) | Op::Binary(_) | Op::Select | Op::Cast { .. } => {
                self.elementwise_at(v, coords)
            }
            Op::Expand { .. }
            | Op::Reshape { .. }
            | Op::Transpose { .. }
            | Op::Slice { .. }
            | Op::Concat { .. }
            | Op::Pad { .. } => self.movement_at(v, coords),
            Op::Gather { .. }
            | Op::GatherElements { .. }
            | Op::GatherNd { .. }
            | Op::ScatterElements { .. }
            | Op::ScatterNd { .. } => self.indexing_at(v, coords),
            Op::Reduce { .. } | Op::ArgReduce { .. } | Op::CumSum { .. } | Op::TopK { .. } => {
                self.reduction_at(v, coords)
            }
            Op::Pool { .. } | Op::MatMul { .. } | Op::Conv { .. } | Op::ConvTranspose { .. } => {
                self.linalg_at(v, coords)
            }
            Op::Resize { .. } => {
                let ins = node.inputs.clone();
                self.resize(v, &node.op, &ins, coords)
            }
            op => Err(self.not_compiled(v, op)),
        }
    }

    /// The node that produces internal value `v`.
    pub(super) fn node_of(&self, v: ValueId) -> &'g smelt_ir::Node {
        let n = self.producer[v.index()].expect("internal values have producers");
        &self.g.nodes[n]
    }

    /// The error for an op no lowering handles.
    pub(super) fn not_compiled(&self, v: ValueId, op: &Op) -> KernelError {
        self.unsupported(
            v,
            format!(
                "{} is not supported by the compiled back ends yet",
                op.mnemonic()
            ),
        )
    }

    /// Elementwise ops: each operand broadcast to the result's coordinates.
    fn elementwise_at(&mut self, v: ValueId, coords: &[ExprId]) -> Built {
        let g = self.g;
        let ins = &self.node_of(v).inputs;
        let mut ops = Vec::with_capacity(ins.len());
        for &input in ins {
            let c = self.broadcast(coords, &fixed(g, input)?);
            ops.push(self.at(input, &c)?);
        }
        self.pointwise(v, &ops)
    }
}
