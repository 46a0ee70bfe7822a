//! Identity removal: ops that return their operand unchanged (Cast to the same type,
//! Reshape/Expand to the same shape, identity Transpose, full Slice, zero Pad,
//! one-operand Concat, Reduce over no axes) are bypassed; DCE removes them.
//! ONNX Identity and inference-time Dropout never reach the IR: the importer maps them
//! to their operand.

use crate::error::OptError;
use crate::pass::{Pass, PassOutcome};
use smelt_ir::{Graph, Op};

#[derive(Debug, Clone, Copy)]
pub struct Identity;

fn is_identity(
    g: &Graph,
    op: &Op,
    inputs: &[smelt_ir::ValueId],
    output: smelt_ir::ValueId,
) -> bool {
    let same_type = inputs.first().is_some_and(|&x| g.ty(x) == g.ty(output));
    match op {
        Op::Cast { .. } | Op::Reshape { .. } | Op::Expand { .. } => same_type,
        Op::Transpose { perm } => perm.iter().enumerate().all(|(i, &p)| i == p),
        // Same shape with unit steps can only be the whole axis.
        Op::Slice { steps, .. } => same_type && steps.iter().all(|&s| s == 1),
        Op::Pad { pads, .. } => pads.iter().all(|&p| p == 0),
        Op::Concat { .. } => inputs.len() == 1,
        Op::Reduce { axes, .. } => axes.is_empty() && same_type,
        _ => false,
    }
}

impl Pass for Identity {
    fn name(&self) -> &'static str {
        "identity"
    }

    fn run(&self, g: &mut Graph) -> Result<PassOutcome, OptError> {
        let mut changes = 0;
        for i in 0..g.nodes.len() {
            let n = &g.nodes[i];
            if n.outputs.len() == 1 && is_identity(g, &n.op, &n.inputs, n.outputs[0]) {
                let (from, to) = (n.outputs[0], n.inputs[0]);
                g.replace_uses(from, to);
                changes += 1;
            }
        }
        if changes > 0 {
            g.compact();
        }
        Ok(changes.into())
    }
}
