//! Gathers and scatters inside a group: indices read at run time and clamped into range,
//! scatters as reductions over their updates.

use super::*;

/// The reduction variable a scatter runs over its updates: its number, its expression
/// and its extent (the number of updates).
struct UpdateVar {
    var: u32,
    rv: ExprId,
    extent: usize,
}

impl<'g> Builder<'g> {
    /// Gathers and scatters: data at coordinates read from index tensors (clamped into
    /// range), and scatters as reductions over the updates.
    pub(super) fn indexing_at(&mut self, v: ValueId, coords: &[ExprId]) -> Built {
        let (g, node) = (self.g, self.node_of(v));
        let ins = &node.inputs;
        let shape_of = |i: usize| fixed(g, ins[i]);
        match &node.op {
            Op::Gather { axis } => {
                let (x, idx) = (shape_of(0)?, shape_of(1)?);
                let axis = *axis;
                let ic: Vec<ExprId> = coords[axis..axis + idx.len()].to_vec();
                let i = self.at(ins[1], &ic)?;
                let i = self.index_value(i, x[axis]);
                let mut c = coords[..axis].to_vec();
                c.push(i);
                c.extend_from_slice(&coords[axis + idx.len()..]);
                self.at(ins[0], &c)
            }
            Op::GatherElements { axis } => {
                let x = shape_of(0)?;
                let i = self.at(ins[1], coords)?;
                let i = self.index_value(i, x[*axis]);
                let mut c = coords.to_vec();
                c[*axis] = i;
                self.at(ins[0], &c)
            }
            Op::GatherNd { batch_dims } => {
                let (x, idx) = (shape_of(0)?, shape_of(1)?);
                let bd = *batch_dims;
                let k = *idx.last().unwrap_or(&0);
                let q = idx.len() - 1;
                let mut c = coords[..bd].to_vec();
                for j in 0..k {
                    let mut ic = coords[..q].to_vec();
                    ic.push(self.int(j as i64));
                    let i = self.at(ins[1], &ic)?;
                    c.push(self.index_value(i, x[bd + j]));
                }
                c.extend_from_slice(&coords[q..]);
                self.at(ins[0], &c)
            }
            Op::ScatterElements { axis, reduction } => {
                let (x, u) = (shape_of(0)?, shape_of(1)?);
                let axis = *axis;
                let (var, rv) = self.fresh_var(u[axis]);
                let mut uc = coords.to_vec();
                uc[axis] = rv;
                let mut ok: Option<ExprId> = None;
                for a in (0..x.len()).filter(|&a| a != axis) {
                    let inside = self.in_range(coords[a], 0, u[a] as i64);
                    ok = Some(self.and_also(ok, inside));
                }
                let idx = self.at(ins[1], &uc)?;
                let idx = self.index_value(idx, x[axis]);
                let hit = self.bin(BinaryOp::Equal, idx, coords[axis]);
                let hit = match ok {
                    Some(p) => self.bin(BinaryOp::And, p, hit),
                    None => hit,
                };
                let base = self.at(ins[0], coords)?;
                let update_at = |b: &mut Self, pos: ExprId| {
                    let mut c = coords.to_vec();
                    c[axis] = pos;
                    b.at(ins[2], &c)
                };
                let over = UpdateVar {
                    var,
                    rv,
                    extent: u[axis],
                };
                self.scatter(*reduction, base, over, hit, update_at)
            }
            Op::ScatterNd { reduction } => {
                let (x, idx) = (shape_of(0)?, shape_of(1)?);
                let k = *idx.last().unwrap_or(&0);
                let q = idx[..idx.len() - 1].to_vec();
                let count: usize = q.iter().product();
                let (var, rv) = self.fresh_var(count);
                let qc = self.unflatten(rv, &q);
                let mut hit: Option<ExprId> = None;
                for j in 0..k {
                    let mut ic = qc.clone();
                    ic.push(self.int(j as i64));
                    let i = self.at(ins[1], &ic)?;
                    let i = self.index_value(i, x[j]);
                    let eq = self.bin(BinaryOp::Equal, i, coords[j]);
                    hit = Some(self.and_also(hit, eq));
                }
                let hit = hit.unwrap_or_else(|| self.add(Expr::Const(Const::Int(1)), DType::Bool));
                let base = self.at(ins[0], coords)?;
                let update_at = |b: &mut Self, pos: ExprId| {
                    let mut c = b.unflatten(pos, &q);
                    c.extend_from_slice(&coords[k..]);
                    b.at(ins[2], &c)
                };
                let over = UpdateVar {
                    var,
                    rv,
                    extent: count,
                };
                self.scatter(*reduction, base, over, hit, update_at)
            }
            op => Err(self.not_compiled(v, op)),
        }
    }

    /// The result of a scatter at one element: `base` combined with the updates that hit
    /// it (`hit` over the update variable `over`); without a reduction the last update
    /// that hits wins.
    fn scatter(
        &mut self,
        reduction: ScatterReduction,
        base: ExprId,
        over: UpdateVar,
        hit: ExprId,
        update_at: impl Fn(&mut Self, ExprId) -> Result<ExprId, KernelError>,
    ) -> Result<ExprId, KernelError> {
        let UpdateVar { var, rv, extent } = over;
        let dtype = self.nest.nodes[base as usize].dtype;
        if reduction == ScatterReduction::None {
            let none = self.int(-1);
            let candidate = self.select(hit, rv, none);
            let last = self.reduce(Combine::Max, extent, var, candidate);
            let zero = self.int(0);
            let found = self.bin(BinaryOp::GreaterEqual, last, zero);
            let update = update_at(self, last)?;
            return Ok(self.select(found, update, base));
        }
        let update = update_at(self, rv)?;
        let (combine, identity, op) = match reduction {
            ScatterReduction::Add => (Combine::Sum, 0.0, BinaryOp::Add),
            ScatterReduction::Mul => (Combine::Prod, 1.0, BinaryOp::Mul),
            ScatterReduction::Max => (Combine::Max, f64::NEG_INFINITY, BinaryOp::Max),
            _ => (Combine::Min, f64::INFINITY, BinaryOp::Min),
        };
        let identity = if dtype.is_float() {
            self.constant(dtype, identity)
        } else {
            let v = match reduction {
                ScatterReduction::Max if dtype.is_unsigned_int() => 0,
                ScatterReduction::Max => i64::MIN,
                ScatterReduction::Min if dtype.is_unsigned_int() => -1,
                ScatterReduction::Min => i64::MAX,
                _ => identity as i64,
            };
            self.add(Expr::Const(Const::Int(v)), dtype)
        };
        let body = self.select(hit, update, identity);
        let acc = self.reduce(combine, extent, var, body);
        Ok(self.add(Expr::Binary(op, base, acc), dtype))
    }
}
