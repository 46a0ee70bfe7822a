//! Common-subexpression elimination: nodes with the same op, attributes and operands
//! compute the same values, and constants with the same bits are one constant.

use crate::error::OptError;
use crate::pass::{Pass, PassOutcome};
use smelt_ir::{Graph, Op, ValueId};
use std::collections::HashMap;

#[derive(Debug, Clone, Copy)]
pub struct Cse;

/// A key that identifies a node's computation.
fn key(op: &Op, inputs: &[ValueId]) -> (u64, String) {
    match op {
        Op::Constant(t) => (
            t.content_hash(),
            format!("const {} {:?}", t.dtype(), t.shape()),
        ),
        // Attributes, not operand types, determine the result given equal operands.
        _ => (
            0,
            format!("{} {:?} {:?}", op.mnemonic(), op.attrs(), inputs),
        ),
    }
}

impl Pass for Cse {
    fn name(&self) -> &'static str {
        "cse"
    }

    fn run(&self, g: &mut Graph) -> Result<PassOutcome, OptError> {
        let mut seen: HashMap<(u64, String), Vec<usize>> = HashMap::new();
        let mut changes = 0;
        for i in 0..g.nodes.len() {
            let k = key(&g.nodes[i].op, &g.nodes[i].inputs);
            let twin = seen.get(&k).and_then(|cands| {
                cands
                    .iter()
                    .copied()
                    .find(|&j| match (&g.nodes[j].op, &g.nodes[i].op) {
                        (Op::Constant(a), Op::Constant(b)) => a.bits_eq(b),
                        _ => true,
                    })
            });
            match twin {
                Some(j) => {
                    let pairs: Vec<(ValueId, ValueId)> = g.nodes[i]
                        .outputs
                        .iter()
                        .copied()
                        .zip(g.nodes[j].outputs.iter().copied())
                        .collect();
                    for (from, to) in pairs {
                        g.replace_uses(from, to);
                    }
                    changes += 1;
                }
                None => seen.entry(k).or_default().push(i),
            }
        }
        if changes > 0 {
            g.compact();
        }
        Ok(changes.into())
    }
}
