//! Reductions inside a group: Reduce, ArgMax/ArgMin, CumSum and TopK bind a reduction
//! variable over the reduced axis or axes.

use super::*;

impl<'g> Builder<'g> {
    /// Reductions along axes: Reduce, ArgMax/ArgMin, CumSum and TopK (a rank count per
    /// element).
    pub(super) fn reduction_at(&mut self, v: ValueId, coords: &[ExprId]) -> Built {
        let (g, node) = (self.g, self.node_of(v));
        let ins = &node.inputs;
        let shape_of = |i: usize| fixed(g, ins[i]);
        let dtype = g.ty(v).dtype;
        match &node.op {
            Op::Reduce {
                kind,
                axes,
                keep_dims,
            } => {
                let x = shape_of(0)?;
                let reduced: Vec<usize> = axes.iter().map(|&a| x[a]).collect();
                let extent: usize = reduced.iter().product();
                let (var, rv) = self.fresh_var(extent);
                let inner = self.unflatten(rv, &reduced);
                let c = self.expand_reduced(coords, &x, axes, *keep_dims, &inner);
                let body = self.at(ins[0], &c)?;
                let combine = match kind {
                    ReduceKind::Sum | ReduceKind::Mean => Combine::Sum,
                    ReduceKind::Prod => Combine::Prod,
                    ReduceKind::Max => Combine::Max,
                    ReduceKind::Min => Combine::Min,
                };
                let r = self.reduce(combine, extent, var, body);
                if *kind == ReduceKind::Mean {
                    let count = self.constant(dtype, extent as f64);
                    Ok(self.add(Expr::Binary(BinaryOp::Div, r, count), dtype))
                } else {
                    Ok(r)
                }
            }
            Op::ArgReduce {
                kind,
                axis,
                keep_dims,
                select_last,
            } => {
                let x = shape_of(0)?;
                let (var, rv) = self.fresh_var(x[*axis]);
                let c = self.expand_reduced(coords, &x, &[*axis], *keep_dims, &[rv]);
                let body = self.at(ins[0], &c)?;
                let combine = match kind {
                    ArgKind::Max => Combine::ArgMax { last: *select_last },
                    ArgKind::Min => Combine::ArgMin { last: *select_last },
                };
                Ok(self.reduce(combine, x[*axis], var, body))
            }
            Op::CumSum {
                axis,
                exclusive,
                reverse,
            } => {
                let x = shape_of(0)?;
                let (var, rv) = self.fresh_var(x[*axis]);
                let mut c = coords.to_vec();
                c[*axis] = rv;
                let value = self.at(ins[0], &c)?;
                let cmp = match (*exclusive, *reverse) {
                    (false, false) => BinaryOp::LessEqual,
                    (true, false) => BinaryOp::Less,
                    (false, true) => BinaryOp::GreaterEqual,
                    (true, true) => BinaryOp::Greater,
                };
                let take = self.bin(cmp, rv, coords[*axis]);
                let zero = self.constant(dtype, 0.0);
                let body = self.select(take, value, zero);
                Ok(self.reduce(Combine::Sum, x[*axis], var, body))
            }
            Op::TopK { axis, largest, .. } => {
                let out_index = node.outputs.iter().position(|&o| o == v).unwrap_or(0);
                let axis = *axis;
                if out_index == 0 {
                    let idx = self.at(node.outputs[1], coords)?;
                    let mut c = coords.to_vec();
                    c[axis] = idx;
                    return self.at(ins[0], &c);
                }
                // The element of rank coords[axis]: rank(j) counts the elements that sort
                // before j (better, or equal at a lower index).
                let n = shape_of(0)?[axis];
                let (jv, j) = self.fresh_var(n);
                let (mv, m) = self.fresh_var(n);
                let mut cj = coords.to_vec();
                cj[axis] = j;
                let mut cm = coords.to_vec();
                cm[axis] = m;
                let xj = self.at(ins[0], &cj)?;
                let xm = self.at(ins[0], &cm)?;
                let cmp = if *largest {
                    BinaryOp::Greater
                } else {
                    BinaryOp::Less
                };
                let strictly = self.bin(cmp, xm, xj);
                let eq = self.bin(BinaryOp::Equal, xm, xj);
                let lower = self.bin(BinaryOp::Less, m, j);
                let tie = self.bin(BinaryOp::And, eq, lower);
                let before = self.bin(BinaryOp::Or, strictly, tie);
                let (one, zero) = (self.int(1), self.int(0));
                let count = self.select(before, one, zero);
                let rank = self.reduce(Combine::Sum, n, mv, count);
                let is_r = self.bin(BinaryOp::Equal, rank, coords[axis]);
                let pick = self.select(is_r, j, zero);
                Ok(self.reduce(Combine::Sum, n, jv, pick))
            }
            op => Err(self.not_compiled(v, op)),
        }
    }
}
