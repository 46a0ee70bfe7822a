//! Shape specialization: binds symbolic dims to sizes, re-infers every type from the
//! graph inputs (so derived dims like `(H+2-3)/1+1` become numbers), and turns `shape`
//! ops of now-concrete operands into constants; `fold` then folds the shape arithmetic.

use crate::error::OptError;
use crate::pass::{Pass, PassOutcome};
use smelt_ir::{DType, Dim, Graph, Op, Tensor};
use std::collections::HashMap;

#[derive(Debug, Clone, Default)]
pub struct Specialize {
    pub bindings: HashMap<String, usize>,
}

impl Specialize {
    fn bind(&self, d: &Dim) -> Dim {
        match d {
            Dim::Sym(s) => self
                .bindings
                .get(s)
                .map_or_else(|| d.clone(), |&n| Dim::Fixed(n)),
            fixed => fixed.clone(),
        }
    }
}

impl Pass for Specialize {
    fn name(&self) -> &'static str {
        "specialize"
    }

    fn run(&self, g: &mut Graph) -> Result<PassOutcome, OptError> {
        let mut changes = 0;
        for &i in &g.inputs.clone() {
            let ty = &mut g.values[i.index()].ty;
            let bound: Vec<Dim> = ty.shape.iter().map(|d| self.bind(d)).collect();
            if bound != ty.shape {
                ty.shape = bound;
                changes += 1;
            }
        }
        for n in 0..g.nodes.len() {
            let node = &mut g.nodes[n];
            if let Op::Reshape { shape } | Op::Expand { shape } = &mut node.op {
                let bound: Vec<Dim> = shape.iter().map(|d| self.bind(d)).collect();
                if bound != *shape {
                    *shape = bound;
                    changes += 1;
                }
            }
            if let Op::Shape = node.op
                && let Some(dims) = g.values[node.inputs[0].index()].ty.fixed_shape()
            {
                let t = Tensor::from_i64(
                    DType::I64,
                    vec![dims.len()],
                    dims.iter().map(|&d| d as i64).collect(),
                )
                .map_err(|source| OptError::Ir {
                    pass: "specialize",
                    source,
                })?;
                node.op = Op::Constant(t);
                node.inputs.clear();
                changes += 1;
            }
            let node = &g.nodes[n];
            let types: Vec<&smelt_ir::TensorType> = node.inputs.iter().map(|&v| g.ty(v)).collect();
            let inferred =
                smelt_ir::infer::infer(&node.op, &types).map_err(|reason| OptError::Pass {
                    pass: "specialize",
                    reason: format!("node '{}' ({}): {reason}", node.name, node.op.mnemonic()),
                })?;
            for (o, ty) in node.outputs.clone().into_iter().zip(inferred) {
                g.values[o.index()].ty = ty;
            }
        }
        Ok(changes.into())
    }
}
