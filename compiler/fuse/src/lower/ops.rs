//! Each op inside a group at a coordinate vector: the one match over the core ops that
//! maps the coordinates to its operands' (movement, elementwise, gathers) or binds a
//! reduction, and the scatters.

use super::*;

impl<'g> Builder<'g> {
    pub(super) fn at_uncached(
        &mut self,
        v: ValueId,
        coords: &[ExprId],
    ) -> Result<ExprId, KernelError> {
        let g = self.g;
        let n = self.producer[v.index()].expect("internal values have producers");
        let node = &g.nodes[n];
        let ins = node.inputs.clone();
        let shape_of = |i: usize| fixed(g, ins[i]);
        let dtype = g.ty(v).dtype;
        match &node.op {
            Op::Unary(_) | Op::Binary(_) | Op::Select | Op::Cast { .. } => {
                let mut ops = Vec::with_capacity(ins.len());
                for &input in &ins {
                    let c = self.broadcast(coords, &fixed(g, input)?);
                    ops.push(self.at(input, &c)?);
                }
                self.pointwise(v, &ops)
            }
            Op::Expand { .. } => {
                let c = self.broadcast(coords, &shape_of(0)?);
                self.at(ins[0], &c)
            }
            Op::Reshape { .. } => {
                let out = fixed(g, v)?;
                let lin = self.flatten(coords, &out);
                self.at_linear(ins[0], lin)
            }
            Op::Transpose { perm } => {
                let mut c = vec![0; coords.len()];
                for (k, &p) in perm.iter().enumerate() {
                    c[p] = coords[k];
                }
                self.at(ins[0], &c)
            }
            Op::Slice {
                starts,
                ends,
                steps,
            } => {
                let x = shape_of(0)?;
                let mut c = Vec::with_capacity(x.len());
                for a in 0..x.len() {
                    let (s, _) = slice_bounds(x[a], starts[a], ends[a], steps[a]);
                    let t = self.imul_c(coords[a], steps[a]);
                    c.push(self.iadd_c(t, s));
                }
                self.at(ins[0], &c)
            }
            Op::Concat { axis } => {
                let axis = *axis;
                let mut offsets = Vec::with_capacity(ins.len());
                let mut off = 0usize;
                for i in 0..ins.len() {
                    offsets.push(off);
                    off += shape_of(i)?[axis];
                }
                // Last part first, so each earlier part overrides below its end.
                let mut acc: Option<ExprId> = None;
                for i in (0..ins.len()).rev() {
                    if shape_of(i)?[axis] == 0 {
                        continue;
                    }
                    let mut c = coords.to_vec();
                    c[axis] = self.iadd_c(coords[axis], -(offsets[i] as i64));
                    if axis + 1 < coords.len() {
                        // Clamped into the part, so its loads are provably in bounds (and
                        // vector loads need no edge check) where the select discards them;
                        // along the innermost axis the clamp would stop vectorization.
                        let (lo, hi) = (self.int(0), self.int(shape_of(i)?[axis] as i64 - 1));
                        let at_least = self.bin(BinaryOp::Max, c[axis], lo);
                        c[axis] = self.bin(BinaryOp::Min, at_least, hi);
                    }
                    let part = self.at(ins[i], &c)?;
                    acc = Some(match acc {
                        None => part,
                        Some(later) => {
                            let end = self.int((offsets[i] + shape_of(i)?[axis]) as i64);
                            let cond = self.bin(BinaryOp::Less, coords[axis], end);
                            self.select(cond, part, later)
                        }
                    });
                }
                acc.ok_or_else(|| self.unsupported(v, "concat of empty parts"))
            }
            Op::Pad { pads, mode } => {
                let x = shape_of(0)?;
                let r = x.len();
                let mut c = Vec::with_capacity(r);
                let mut inside: Option<ExprId> = None;
                for a in 0..r {
                    let n = x[a] as i64;
                    let p = self.iadd_c(coords[a], -pads[a]);
                    let mapped = match mode {
                        PadMode::Constant => {
                            let ok = self.in_range(p, 0, n);
                            inside = Some(match inside {
                                None => ok,
                                Some(prev) => self.bin(BinaryOp::And, prev, ok),
                            });
                            p
                        }
                        PadMode::Edge => {
                            let (lo, hi) = (self.int(0), self.int(n - 1));
                            let t = self.bin(BinaryOp::Max, p, lo);
                            self.bin(BinaryOp::Min, t, hi)
                        }
                        PadMode::Wrap => {
                            let m = self.int(n.max(1));
                            self.bin(BinaryOp::Mod, p, m)
                        }
                        PadMode::Reflect => {
                            if n <= 1 {
                                self.int(0)
                            } else {
                                // Fold into one period of 2(n-1), then mirror the back half.
                                let period = self.int(2 * (n - 1));
                                let q = self.bin(BinaryOp::Mod, p, period);
                                let back = self.int(n - 1);
                                let is_back = self.bin(BinaryOp::Greater, q, back);
                                let two = self.int(2 * (n - 1));
                                let mirrored = self.bin(BinaryOp::Sub, two, q);
                                self.select(is_back, mirrored, q)
                            }
                        }
                    };
                    c.push(mapped);
                }
                let value = self.at(ins[0], &c)?;
                match inside {
                    Some(ok) => {
                        let fill = match ins.get(1) {
                            Some(&pv) => {
                                let zeros: Vec<ExprId> =
                                    fixed(g, pv)?.iter().map(|_| self.int(0)).collect();
                                self.at(pv, &zeros)?
                            }
                            None => self.constant(dtype, 0.0),
                        };
                        Ok(self.select(ok, value, fill))
                    }
                    None => Ok(value),
                }
            }
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
            Op::Pool {
                kind,
                kernel,
                strides,
                pads,
                dilations,
            } => {
                let x = shape_of(0)?;
                let s = kernel.len();
                let lead = x.len() - s;
                let extent: usize = kernel.iter().product();
                let window = |b: &mut Self| -> Result<(u32, ExprId, ExprId), KernelError> {
                    let (var, rv) = b.fresh_var(extent);
                    let ks = b.unflatten(rv, kernel);
                    let mut c = coords[..lead].to_vec();
                    let mut valid: Option<ExprId> = None;
                    for a in 0..s {
                        let base = b.imul_c(coords[lead + a], strides[a] as i64);
                        let off = b.imul_c(ks[a], dilations[a] as i64);
                        let pos = b.iadd(base, off);
                        let pos = b.iadd_c(pos, -(pads[a] as i64));
                        let ok = b.in_range(pos, 0, x[lead + a] as i64);
                        valid = Some(b.and_also(valid, ok));
                        c.push(pos);
                    }
                    let valid =
                        valid.unwrap_or_else(|| b.add(Expr::Const(Const::Int(1)), DType::Bool));
                    let value = b.at(ins[0], &c)?;
                    Ok((var, valid, value))
                };
                let (var, valid, value) = window(self)?;
                match kind {
                    PoolKind::Max => {
                        let low = if dtype.is_float() {
                            self.constant(dtype, f64::NEG_INFINITY)
                        } else {
                            let low = if dtype.is_unsigned_int() { 0 } else { i64::MIN };
                            self.add(Expr::Const(Const::Int(low)), dtype)
                        };
                        let body = self.select(valid, value, low);
                        Ok(self.reduce(Combine::Max, extent, var, body))
                    }
                    PoolKind::Avg | PoolKind::AvgIncludePad => {
                        let zero = self.constant(dtype, 0.0);
                        let body = self.select(valid, value, zero);
                        let sum = self.reduce(Combine::Sum, extent, var, body);
                        let count = if *kind == PoolKind::Avg {
                            // The taps inside the input, counted axis by axis and
                            // multiplied (exact: small integers): the outer axes' counts
                            // depend on the row only, and the innermost one takes its
                            // kernel width of taps instead of the whole window's.
                            let (one, zero) =
                                (self.constant(dtype, 1.0), self.constant(dtype, 0.0));
                            let mut count: Option<ExprId> = None;
                            for a in 0..s {
                                let (cvar, rv) = self.fresh_var(kernel[a]);
                                let base = self.imul_c(coords[lead + a], strides[a] as i64);
                                let off = self.imul_c(rv, dilations[a] as i64);
                                let pos = self.iadd(base, off);
                                let pos = self.iadd_c(pos, -(pads[a] as i64));
                                let ok = self.in_range(pos, 0, x[lead + a] as i64);
                                let body = self.select(ok, one, zero);
                                let n = self.reduce(Combine::Sum, kernel[a], cvar, body);
                                count = Some(match count {
                                    None => n,
                                    Some(c) => self.add(Expr::Binary(BinaryOp::Mul, c, n), dtype),
                                });
                            }
                            count.unwrap_or(one)
                        } else {
                            self.constant(dtype, extent as f64)
                        };
                        Ok(self.add(Expr::Binary(BinaryOp::Div, sum, count), dtype))
                    }
                }
            }
            Op::MatMul { trans_a, trans_b } => self.matmul(v, &ins, coords, *trans_a, *trans_b),
            Op::Conv {
                strides,
                pads,
                dilations,
                group,
            }
            | Op::ConvTranspose {
                strides,
                pads,
                dilations,
                group,
                ..
            } => {
                let attrs = linalg::ConvAttrs {
                    strides,
                    pads,
                    dilations,
                    group: *group,
                };
                if matches!(node.op, Op::Conv { .. }) {
                    self.conv(v, &ins, coords, attrs)
                } else {
                    self.conv_transpose(v, &ins, coords, attrs)
                }
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
                self.scatter(*reduction, base, var, rv, u[axis], hit, update_at)
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
                self.scatter(*reduction, base, var, rv, count, hit, update_at)
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
            Op::Resize { .. } => self.resize(v, &node.op, &ins, coords),
            op => Err(self.unsupported(
                v,
                format!(
                    "{} is not supported by the compiled back ends yet",
                    op.mnemonic()
                ),
            )),
        }
    }

    /// The result of a scatter at one element: `base` combined with the updates that hit
    /// it (`hit` over reduction variable `rv` in `0..extent`); without a reduction the
    /// last update that hits wins.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn scatter(
        &mut self,
        reduction: ScatterReduction,
        base: ExprId,
        var: u32,
        rv: ExprId,
        extent: usize,
        hit: ExprId,
        update_at: impl Fn(&mut Self, ExprId) -> Result<ExprId, KernelError>,
    ) -> Result<ExprId, KernelError> {
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
