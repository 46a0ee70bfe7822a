//! Contractions and windows as reductions: MatMul, convolution and its transpose with
//! their bias, and pooling windows.

use super::*;

/// A convolution's window as its op carries it: strides, all begin then all end pads,
/// dilations and group.
#[derive(Debug, Clone, Copy)]
pub(super) struct ConvAttrs<'a> {
    pub(super) strides: &'a [usize],
    pub(super) pads: &'a [usize],
    pub(super) dilations: &'a [usize],
    pub(super) group: usize,
}

impl<'g> Builder<'g> {
    /// Input coordinates of a reduction: kept axes from `coords`, reduced ones from `inner`.
    pub(super) fn expand_reduced(
        &mut self,
        coords: &[ExprId],
        x: &[usize],
        axes: &[usize],
        keep_dims: bool,
        inner: &[ExprId],
    ) -> Vec<ExprId> {
        let mut c = Vec::with_capacity(x.len());
        let mut next_out = 0;
        for a in 0..x.len() {
            if let Some(j) = axes.iter().position(|&r| r == a) {
                c.push(inner[j]);
                if keep_dims {
                    next_out += 1;
                }
            } else {
                c.push(coords[next_out]);
                next_out += 1;
            }
        }
        c
    }

    /// Contraction operands in their accumulation type: halves accumulate in f32, as
    /// the reference accumulates without rounding each product.
    pub(super) fn widen(&mut self, v: ValueId, x: ExprId, y: ExprId) -> (ExprId, ExprId) {
        let dtype = self.g.ty(v).dtype;
        if matches!(dtype, DType::F16 | DType::BF16) {
            (self.convert(x, DType::F32), self.convert(y, DType::F32))
        } else {
            (x, y)
        }
    }

    /// Adds the optional bias operand to an accumulated sum and converts to `v`'s dtype.
    pub(super) fn add_bias(
        &mut self,
        v: ValueId,
        ins: &[ValueId],
        sum: ExprId,
        channel: ExprId,
    ) -> Result<ExprId, KernelError> {
        let acc = self.nest.nodes[sum as usize].dtype;
        let sum = match ins.get(2) {
            Some(&b) => {
                let bias = self.at(b, &[channel])?;
                let bias = self.convert(bias, acc);
                self.add(Expr::Binary(BinaryOp::Add, sum, bias), acc)
            }
            None => sum,
        };
        Ok(self.convert(sum, self.g.ty(v).dtype))
    }

    pub(super) fn matmul(
        &mut self,
        v: ValueId,
        ins: &[ValueId],
        coords: &[ExprId],
        trans_a: bool,
        trans_b: bool,
    ) -> Result<ExprId, KernelError> {
        let (a, b) = (fixed(self.g, ins[0])?, fixed(self.g, ins[1])?);
        let k = if a.len() == 1 {
            a[0]
        } else if trans_a {
            a[a.len() - 2]
        } else {
            a[a.len() - 1]
        };
        let (var, rv) = self.fresh_var(k);
        let out_rank = coords.len();
        // Output axes: batch.., [i if a has rank >= 2], [j if b has rank >= 2].
        let j = (b.len() >= 2).then(|| coords[out_rank - 1]);
        let i = (a.len() >= 2).then(|| coords[out_rank - 1 - usize::from(b.len() >= 2)]);
        let batch_end = out_rank - usize::from(a.len() >= 2) - usize::from(b.len() >= 2);
        let batch = &coords[..batch_end];
        let operand =
            |b_: &mut Self, shape: &[usize], row: Option<ExprId>, first: bool, trans: bool| {
                if shape.len() == 1 {
                    return vec![rv];
                }
                let nb = shape.len() - 2;
                let mut c = b_.broadcast(batch, &shape[..nb]);
                let row = row.expect("rank >= 2 operands have a row coordinate");
                let pair = if first != trans { [row, rv] } else { [rv, row] };
                c.extend(pair);
                c
            };
        let ca = operand(self, &a, i, true, trans_a);
        let cb = operand(self, &b, j, false, trans_b);
        let x = self.at(ins[0], &ca)?;
        let y = self.at(ins[1], &cb)?;
        let (x, y) = self.widen(v, x, y);
        let acc = self.nest.nodes[x as usize].dtype;
        let prod = self.add(Expr::Binary(BinaryOp::Mul, x, y), acc);
        let sum = self.reduce(Combine::Sum, k, var, prod);
        let channel = j.unwrap_or_else(|| self.int(0));
        self.add_bias(v, ins, sum, channel)
    }

    pub(super) fn conv(
        &mut self,
        v: ValueId,
        ins: &[ValueId],
        coords: &[ExprId],
        attrs: ConvAttrs<'_>,
    ) -> Result<ExprId, KernelError> {
        let ConvAttrs {
            strides,
            pads,
            dilations,
            group,
        } = attrs;
        let (x, w) = (fixed(self.g, ins[0])?, fixed(self.g, ins[1])?);
        let s = x.len() - 2;
        let (cg, m) = (w[1], w[0]);
        let mg = (m / group.max(1)).max(1);
        let mut reduced = vec![cg];
        reduced.extend_from_slice(&w[2..]);
        let extent: usize = reduced.iter().product();
        let (var, rv) = self.fresh_var(extent);
        let r = self.unflatten(rv, &reduced);
        let mg_c = self.int(mg as i64);
        let g_idx = self.bin(BinaryOp::Div, coords[1], mg_c);
        let c_base = self.imul_c(g_idx, cg as i64);
        let ch = self.iadd(c_base, r[0]);
        let mut xc = vec![coords[0], ch];
        let mut valid: Option<ExprId> = None;
        for a in 0..s {
            let base = self.imul_c(coords[2 + a], strides[a] as i64);
            let off = self.imul_c(r[1 + a], dilations[a] as i64);
            let pos = self.iadd(base, off);
            let pos = self.iadd_c(pos, -(pads[a] as i64));
            let ok = self.in_range(pos, 0, x[2 + a] as i64);
            valid = Some(self.and_also(valid, ok));
            xc.push(pos);
        }
        let mut wc = vec![coords[1]];
        wc.extend_from_slice(&r);
        self.window_sum(v, ins, (&xc, &wc), valid, (var, extent), coords[1])
    }

    pub(super) fn conv_transpose(
        &mut self,
        v: ValueId,
        ins: &[ValueId],
        coords: &[ExprId],
        attrs: ConvAttrs<'_>,
    ) -> Result<ExprId, KernelError> {
        let ConvAttrs {
            strides,
            pads,
            dilations,
            group,
        } = attrs;
        let (x, w) = (fixed(self.g, ins[0])?, fixed(self.g, ins[1])?);
        let s = x.len() - 2;
        let c = x[1];
        let cg = c / group.max(1);
        let mg = w[1];
        let mut reduced = vec![cg];
        reduced.extend_from_slice(&w[2..]);
        let extent: usize = reduced.iter().product();
        let (var, rv) = self.fresh_var(extent);
        let r = self.unflatten(rv, &reduced);
        let mg_c = self.int(mg.max(1) as i64);
        let g_idx = self.bin(BinaryOp::Div, coords[1], mg_c);
        let m_in = self.bin(BinaryOp::Rem, coords[1], mg_c);
        let c_base = self.imul_c(g_idx, cg as i64);
        let ch = self.iadd(c_base, r[0]);
        let mut xc = vec![coords[0], ch];
        let mut valid: Option<ExprId> = None;
        for a in 0..s {
            // Output o receives input i through tap k when o + pad - k*d = i*stride.
            let off = self.imul_c(r[1 + a], dilations[a] as i64);
            let t = self.iadd_c(coords[2 + a], pads[a] as i64);
            let t = self.bin(BinaryOp::Sub, t, off);
            let st = self.int(strides[a] as i64);
            let i = self.bin(BinaryOp::Div, t, st);
            let rem = self.bin(BinaryOp::Rem, t, st);
            let zero = self.int(0);
            let divisible = self.bin(BinaryOp::Equal, rem, zero);
            let nonneg = self.bin(BinaryOp::GreaterEqual, t, zero);
            let in_bounds = self.in_range(i, 0, x[2 + a] as i64);
            let ok = self.bin(BinaryOp::And, divisible, nonneg);
            let ok = self.bin(BinaryOp::And, ok, in_bounds);
            valid = Some(self.and_also(valid, ok));
            xc.push(i);
        }
        let mut wc = vec![ch, m_in];
        wc.extend_from_slice(&r[1..]);
        self.window_sum(v, ins, (&xc, &wc), valid, (var, extent), coords[1])
    }

    /// The sum over reduction variable `var` of x[xc] * w[wc] where `valid` (zero
    /// elsewhere), plus the bias of `channel`: the body of convolutions.
    pub(super) fn window_sum(
        &mut self,
        v: ValueId,
        ins: &[ValueId],
        (xc, wc): (&[ExprId], &[ExprId]),
        valid: Option<ExprId>,
        (var, extent): (u32, usize),
        channel: ExprId,
    ) -> Result<ExprId, KernelError> {
        let xv = self.at(ins[0], xc)?;
        let wv = self.at(ins[1], wc)?;
        let (xv, wv) = self.widen(v, xv, wv);
        let acc = self.nest.nodes[xv as usize].dtype;
        let prod = self.add(Expr::Binary(BinaryOp::Mul, xv, wv), acc);
        let body = match valid {
            Some(ok) => {
                let zero = self.constant(acc, 0.0);
                self.select(ok, prod, zero)
            }
            None => prod,
        };
        let sum = self.reduce(Combine::Sum, extent, var, body);
        self.add_bias(v, ins, sum, channel)
    }

    /// `acc && ok`, where no `acc` means true.
    pub(super) fn and_also(&mut self, acc: Option<ExprId>, ok: ExprId) -> ExprId {
        match acc {
            None => ok,
            Some(p) => self.bin(BinaryOp::And, p, ok),
        }
    }

    /// Contractions and windows: pooling, MatMul, and convolutions with their transposes.
    pub(super) fn linalg_at(&mut self, v: ValueId, coords: &[ExprId]) -> Built {
        let (g, node) = (self.g, self.node_of(v));
        let ins = &node.inputs;
        let shape_of = |i: usize| fixed(g, ins[i]);
        let dtype = g.ty(v).dtype;
        match &node.op {
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
            Op::MatMul { trans_a, trans_b } => self.matmul(v, ins, coords, *trans_a, *trans_b),
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
                    self.conv(v, ins, coords, attrs)
                } else {
                    self.conv_transpose(v, ins, coords, attrs)
                }
            }
            op => Err(self.not_compiled(v, op)),
        }
    }
}
