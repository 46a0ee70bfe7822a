//! Reductions as counted loops in the thread, their invariant part hoisted; float sums
//! over products as fused multiply-adds.

use super::*;

impl<'ctx> Emitter<'_, 'ctx> {
    pub(super) fn identity(&self, combine: Combine, dtype: DType) -> BasicValueEnum<'ctx> {
        let r = reg(dtype);
        let unsigned = dtype.is_unsigned_int() || dtype == DType::Bool;
        let (lowest, highest): (i64, i64) = if unsigned {
            (0, -1)
        } else {
            (i64::MIN, i64::MAX)
        };
        let v = match (combine, r) {
            (Combine::Sum, _) => Const::Int(0),
            (Combine::Prod, _) => Const::Int(1),
            (Combine::Max | Combine::ArgMax { .. }, Reg::F32 | Reg::F64) => {
                Const::float(f64::NEG_INFINITY)
            }
            (Combine::Max | Combine::ArgMax { .. }, _) => Const::Int(lowest),
            (Combine::Min | Combine::ArgMin { .. }, Reg::F32 | Reg::F64) => {
                Const::float(f64::INFINITY)
            }
            (Combine::Min | Combine::ArgMin { .. }, _) => Const::Int(highest),
        };
        match r {
            Reg::F32 => self.ctx.f32_type().const_float(v.as_f64()).into(),
            Reg::F64 => self.ctx.f64_type().const_float(v.as_f64()).into(),
            Reg::Bool => self
                .ctx
                .bool_type()
                .const_int(v.as_i64() as u64 & 1, false)
                .into(),
            Reg::I64 => self
                .ctx
                .i64_type()
                .const_int(v.as_i64() as u64, true)
                .into(),
        }
    }

    pub(super) fn combine(
        &self,
        combine: Combine,
        dtype: DType,
        acc: BasicValueEnum<'ctx>,
        x: BasicValueEnum<'ctx>,
    ) -> R<BasicValueEnum<'ctx>> {
        let b = self.b;
        let unsigned = dtype.is_unsigned_int() || dtype == DType::Bool;
        Ok(match (combine, dtype.is_float()) {
            (Combine::Sum, true) => b
                .build_float_add(acc.into_float_value(), x.into_float_value(), "")
                .map_err(llvm)?
                .into(),
            (Combine::Prod, true) => b
                .build_float_mul(acc.into_float_value(), x.into_float_value(), "")
                .map_err(llvm)?
                .into(),
            (Combine::Sum, false) => b
                .build_int_add(acc.into_int_value(), x.into_int_value(), "")
                .map_err(llvm)?
                .into(),
            (Combine::Prod, false) => b
                .build_int_mul(acc.into_int_value(), x.into_int_value(), "")
                .map_err(llvm)?
                .into(),
            (Combine::Max, true) => self.intrinsic("maximum", &[acc, x])?,
            (Combine::Min, true) => self.intrinsic("minimum", &[acc, x])?,
            (Combine::Max, false) => {
                self.intrinsic(if unsigned { "umax" } else { "smax" }, &[acc, x])?
            }
            (Combine::Min, false) => {
                self.intrinsic(if unsigned { "umin" } else { "smin" }, &[acc, x])?
            }
            _ => unreachable!("arg reductions combine through arg_better"),
        })
    }

    /// Whether `x` replaces the current best of an arg reduction.
    pub(super) fn arg_better(
        &self,
        combine: Combine,
        dtype: DType,
        x: BasicValueEnum<'ctx>,
        best: BasicValueEnum<'ctx>,
    ) -> R<IntValue<'ctx>> {
        let (max, last) = match combine {
            Combine::ArgMax { last } => (true, last),
            Combine::ArgMin { last } => (false, last),
            _ => unreachable!("only arg reductions"),
        };
        let b = self.b;
        if dtype.is_float() {
            let p = match (max, last) {
                (true, false) => FloatPredicate::OGT,
                (true, true) => FloatPredicate::OGE,
                (false, false) => FloatPredicate::OLT,
                (false, true) => FloatPredicate::OLE,
            };
            return b
                .build_float_compare(p, x.into_float_value(), best.into_float_value(), "")
                .map_err(llvm);
        }
        let unsigned = dtype.is_unsigned_int() || dtype == DType::Bool;
        let p = match (max, last, unsigned) {
            (true, false, false) => IntPredicate::SGT,
            (true, true, false) => IntPredicate::SGE,
            (false, false, false) => IntPredicate::SLT,
            (false, true, false) => IntPredicate::SLE,
            (true, false, true) => IntPredicate::UGT,
            (true, true, true) => IntPredicate::UGE,
            (false, false, true) => IntPredicate::ULT,
            (false, true, true) => IntPredicate::ULE,
        };
        b.build_int_compare(p, x.into_int_value(), best.into_int_value(), "")
            .map_err(llvm)
    }

    /// A reduction as a counted loop. What its body needs that does not vary with its
    /// variable is computed before the loop; what the loop computes is forgotten after it.
    pub(super) fn reduce(&mut self, e: ExprId) -> R<BasicValueEnum<'ctx>> {
        let Expr::Reduce {
            combine,
            extent,
            var,
            body,
        } = self.nest.node(e).expr
        else {
            unreachable!("called on reductions")
        };
        let body_dtype = self.nest.node(body).dtype;
        let arg = matches!(combine, Combine::ArgMax { .. } | Combine::ArgMin { .. });
        let init = self.identity(combine, body_dtype);
        let i64t = self.ctx.i64_type();
        if extent == 0 {
            return Ok(if arg { i64t.const_zero().into() } else { init });
        }
        // Hoist the invariant part of the body.
        for x in self.uncomputed_cone(body) {
            let varies = self.free[x as usize].contains(&var);
            let bound = self.free[x as usize]
                .iter()
                .all(|v| self.rvars.contains_key(v));
            if !varies && bound {
                self.ensure(x)?;
            }
        }
        let b = self.b;
        let pre = b.get_insert_block().expect("positioned");
        let looped = self.ctx.append_basic_block(self.func, "reduce");
        b.build_unconditional_branch(looped).map_err(llvm)?;
        b.position_at_end(looped);
        let r = b.build_phi(i64t, "r").map_err(llvm)?;
        let acc = b.build_phi(init.get_type(), "acc").map_err(llvm)?;
        // Arg reductions also carry the index of the best element so far.
        let best = if arg {
            let best = b.build_phi(i64t, "best").map_err(llvm)?;
            best.add_incoming(&[(&i64t.const_zero(), pre)]);
            Some(best)
        } else {
            None
        };
        r.add_incoming(&[(&i64t.const_zero(), pre)]);
        acc.add_incoming(&[(&init, pre)]);
        let rv = r.as_basic_value().into_int_value();
        let mark = self.set_log.len();
        self.rvars.insert(var, rv);
        let accv = acc.as_basic_value();
        if let Some(fused) = self.fused_sum_step(combine, body, accv)? {
            return self.close_reduction(ReductionLoop {
                var,
                extent,
                mark,
                r,
                acc,
                acc2: fused,
                best: None,
            });
        }
        let x = self.ensure(body)?;
        let (acc2, best2) = match best {
            Some(best) => {
                let bestv = best.as_basic_value().into_int_value();
                let better = self.arg_better(combine, body_dtype, x, accv)?;
                (
                    self.b.build_select(better, x, accv, "").map_err(llvm)?,
                    Some(
                        self.b
                            .build_select(better, rv, bestv, "")
                            .map_err(llvm)?
                            .into_int_value(),
                    ),
                )
            }
            None => (self.combine(combine, body_dtype, accv, x)?, None),
        };
        self.close_reduction(ReductionLoop {
            var,
            extent,
            mark,
            r,
            acc,
            acc2,
            best: best.zip(best2),
        })
    }

    /// The step of a float sum over products as one fused multiply-add (or, where the
    /// product is masked to 0, the sum kept outside the mask); `None` for other bodies.
    pub(super) fn fused_sum_step(
        &mut self,
        combine: Combine,
        body: ExprId,
        acc: BasicValueEnum<'ctx>,
    ) -> R<Option<BasicValueEnum<'ctx>>> {
        if combine != Combine::Sum || !matches!(self.nest.node(body).dtype, DType::F32 | DType::F64)
        {
            return Ok(None);
        }
        let product = |e: ExprId| match self.nest.node(e).expr {
            Expr::Binary(BinaryOp::Mul, x, y) => Some((x, y)),
            _ => None,
        };
        let (mask, (x, y)) = match self.nest.node(body).expr {
            Expr::Select(c, m, z)
                if matches!(self.nest.node(z).expr, Expr::Const(Const::Float(0))) =>
            {
                match product(m) {
                    Some(p) => (Some(c), p),
                    None => return Ok(None),
                }
            }
            _ => match product(body) {
                Some(p) => (None, p),
                None => return Ok(None),
            },
        };
        let xv = self.ensure(x)?;
        let yv = self.ensure(y)?;
        let fused = self.intrinsic("fma", &[xv, yv, acc])?;
        Ok(Some(match mask {
            None => fused,
            Some(c) => {
                let cv = self.ensure(c)?.into_int_value();
                self.b.build_select(cv, fused, acc, "").map_err(llvm)?
            }
        }))
    }

    /// Closes a reduction's loop: the phis' back edges, the exit test and the values
    /// computed inside it forgotten; returns the accumulator (or the arg's best index).
    pub(super) fn close_reduction(&mut self, l: ReductionLoop<'ctx>) -> R<BasicValueEnum<'ctx>> {
        let b = self.b;
        let i64t = self.ctx.i64_type();
        let rv = l.r.as_basic_value().into_int_value();
        let next = b
            .build_int_add(rv, i64t.const_int(1, false), "")
            .map_err(llvm)?;
        let latch = b.get_insert_block().expect("positioned");
        let looped = l.r.as_instruction().get_parent().expect("in the loop");
        let after = self.ctx.append_basic_block(self.func, "reduced");
        l.r.add_incoming(&[(&next, latch)]);
        l.acc.add_incoming(&[(&l.acc2, latch)]);
        if let Some((best, best2)) = l.best {
            best.add_incoming(&[(&best2, latch)]);
        }
        let more = b
            .build_int_compare(IntPredicate::ULT, next, i64t.const_int(l.extent, false), "")
            .map_err(llvm)?;
        b.build_conditional_branch(more, looped, after)
            .map_err(llvm)?;
        b.position_at_end(after);
        for x in self.set_log.drain(l.mark..) {
            self.values[x as usize] = None;
        }
        self.rvars.remove(&l.var);
        Ok(l.best.map_or(l.acc2, |(_, b)| b.as_basic_value_enum()))
    }
}

/// A reduction's loop as it is closed: its variable and extent, where its values'
/// log starts, the counter and accumulator phis and the accumulator's next value.
pub(super) struct ReductionLoop<'ctx> {
    pub(super) var: u32,
    pub(super) extent: u64,
    pub(super) mark: usize,
    pub(super) r: PhiValue<'ctx>,
    pub(super) acc: PhiValue<'ctx>,
    pub(super) acc2: BasicValueEnum<'ctx>,
    pub(super) best: Option<(PhiValue<'ctx>, IntValue<'ctx>)>,
}
