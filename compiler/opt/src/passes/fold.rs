//! Constant folding through the reference interpreter, within a size budget: a node
//! whose operands are all constants becomes a constant, unless its results would
//! exceed the budget (so folding never blows up memory; the op then runs at run time).

use crate::error::OptError;
use crate::pass::{Pass, PassOutcome};
use smelt_ir::{Graph, Node, Op, Tensor, ValueId};
use std::collections::HashMap;

/// Default largest folded result: 64 MiB.
pub const DEFAULT_BUDGET_BYTES: usize = 64 << 20;

#[derive(Debug, Clone, Copy)]
pub struct Fold {
    pub budget_bytes: usize,
}

impl Default for Fold {
    fn default() -> Self {
        Fold {
            budget_bytes: DEFAULT_BUDGET_BYTES,
        }
    }
}

impl Pass for Fold {
    fn name(&self) -> &'static str {
        "fold"
    }

    fn run(&self, g: &mut Graph) -> Result<PassOutcome, OptError> {
        // Where each constant value's node sits in `out`, so operands are borrowed, not copied.
        let mut constant_at: HashMap<ValueId, usize> = HashMap::new();
        let mut changes = 0;
        let nodes = std::mem::take(&mut g.nodes);
        let mut out: Vec<Node> = Vec::with_capacity(nodes.len());
        for node in nodes {
            if let Op::Constant(_) = &node.op {
                constant_at.insert(node.outputs[0], out.len());
                out.push(node);
                continue;
            }
            let bytes: Option<usize> = node
                .outputs
                .iter()
                .map(|&o| {
                    g.ty(o)
                        .num_elements()
                        .and_then(|n| n.checked_mul(g.ty(o).dtype.size_bytes()))
                })
                .sum();
            let folded = match bytes {
                Some(b) if b <= self.budget_bytes => {
                    let args: Option<Vec<&Tensor>> = node
                        .inputs
                        .iter()
                        .map(|v| {
                            constant_at.get(v).map(|&i| match &out[i].op {
                                Op::Constant(t) => t,
                                _ => unreachable!("constant_at points at constants"),
                            })
                        })
                        .collect();
                    args.and_then(|a| smelt_ir::interp::eval_op(&node.op, &a).ok())
                }
                _ => None,
            };
            match folded {
                Some(results) => {
                    changes += 1;
                    for (&o, t) in node.outputs.iter().zip(results) {
                        constant_at.insert(o, out.len());
                        out.push(Node {
                            name: node.name.clone(),
                            op: Op::Constant(t),
                            inputs: vec![],
                            outputs: vec![o],
                        });
                    }
                }
                None => out.push(node),
            }
        }
        g.nodes = out;
        if changes > 0 {
            g.compact();
        }
        Ok(changes.into())
    }
}
