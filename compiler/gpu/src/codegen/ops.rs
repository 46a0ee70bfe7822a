//! Each op of the scalar DAG in LLVM IR with the CPU back end's semantics: unary and
//! binary ops (math from libdevice or the runtime's helpers), powers, casts.

use super::*;

impl<'ctx> Emitter<'_, 'ctx> {
    pub(super) fn unary(
        &mut self,
        op: UnaryOp,
        dtype: DType,
        x: BasicValueEnum<'ctx>,
    ) -> R<BasicValueEnum<'ctx>> {
        let b = self.b;
        let unsupported = || GpuError::Unsupported {
            kernel: self.kernel.name.clone(),
            reason: format!("{} of {}", op.name(), dtype.name()),
        };
        if dtype == DType::Bool {
            return Ok(match op {
                UnaryOp::Not | UnaryOp::BitNot => {
                    b.build_not(x.into_int_value(), "").map_err(llvm)?.into()
                }
                _ => x,
            });
        }
        if !dtype.is_float() {
            let x = x.into_int_value();
            let i64t = self.ctx.i64_type();
            let zero = i64t.const_zero();
            let unsigned = dtype.is_unsigned_int();
            let v = match op {
                UnaryOp::Neg => b.build_int_neg(x, "").map_err(llvm)?,
                UnaryOp::Abs if unsigned => x,
                UnaryOp::Abs => {
                    let neg = b.build_int_neg(x, "").map_err(llvm)?;
                    let lt = b
                        .build_int_compare(IntPredicate::SLT, x, zero, "")
                        .map_err(llvm)?;
                    b.build_select(lt, neg, x, "")
                        .map_err(llvm)?
                        .into_int_value()
                }
                UnaryOp::Sign => {
                    let pos = b
                        .build_int_compare(
                            if unsigned {
                                IntPredicate::NE
                            } else {
                                IntPredicate::SGT
                            },
                            x,
                            zero,
                            "",
                        )
                        .map_err(llvm)?;
                    let p = b.build_int_z_extend(pos, i64t, "").map_err(llvm)?;
                    if unsigned {
                        p
                    } else {
                        let neg = b
                            .build_int_compare(IntPredicate::SLT, x, zero, "")
                            .map_err(llvm)?;
                        let n = b.build_int_z_extend(neg, i64t, "").map_err(llvm)?;
                        b.build_int_sub(p, n, "").map_err(llvm)?
                    }
                }
                UnaryOp::Not => {
                    let z = b
                        .build_int_compare(IntPredicate::EQ, x, zero, "")
                        .map_err(llvm)?;
                    b.build_int_z_extend(z, i64t, "").map_err(llvm)?
                }
                UnaryOp::BitNot => b.build_not(x, "").map_err(llvm)?,
                _ => return Err(unsupported()),
            };
            return self.wrap(v, dtype);
        }
        let xf = x.into_float_value();
        let is_f64 = reg(dtype) == Reg::F64;
        let ty = self.reg_type(reg(dtype));
        let v: BasicValueEnum = match op {
            UnaryOp::Neg => b.build_float_neg(xf, "").map_err(llvm)?.into(),
            UnaryOp::Abs => self.intrinsic("fabs", &[x])?,
            UnaryOp::Sqrt => self.intrinsic("sqrt", &[x])?,
            UnaryOp::Floor => self.intrinsic("floor", &[x])?,
            UnaryOp::Ceil => self.intrinsic("ceil", &[x])?,
            UnaryOp::Round => self.intrinsic("roundeven", &[x])?,
            UnaryOp::Reciprocal => b
                .build_float_div(self.fconst(xf, 1.0), xf, "")
                .map_err(llvm)?
                .into(),
            UnaryOp::Sigmoid => {
                let neg = b.build_float_neg(xf, "").map_err(llvm)?;
                let e = self.call(&math_symbol("exp", is_f64, self.flavor), ty, &[neg.into()])?;
                let d = b
                    .build_float_add(self.fconst(xf, 1.0), e.into_float_value(), "")
                    .map_err(llvm)?;
                b.build_float_div(self.fconst(xf, 1.0), d, "")
                    .map_err(llvm)?
                    .into()
            }
            UnaryOp::Sign => {
                let (one, neg, zero) = (
                    self.fconst(xf, 1.0),
                    self.fconst(xf, -1.0),
                    self.fconst(xf, 0.0),
                );
                let pos = b
                    .build_float_compare(FloatPredicate::OGT, xf, zero, "")
                    .map_err(llvm)?;
                let lt = b
                    .build_float_compare(FloatPredicate::OLT, xf, zero, "")
                    .map_err(llvm)?;
                let t = b.build_select(lt, neg, xf, "").map_err(llvm)?;
                b.build_select(pos, one.into(), t, "").map_err(llvm)?
            }
            UnaryOp::IsNan => {
                return Ok(b
                    .build_float_compare(FloatPredicate::UNO, xf, xf, "")
                    .map_err(llvm)?
                    .into());
            }
            UnaryOp::IsInf => {
                let a = self.intrinsic("fabs", &[x])?.into_float_value();
                let inf = self.fconst(xf, f64::INFINITY);
                return Ok(b
                    .build_float_compare(FloatPredicate::OEQ, a, inf, "")
                    .map_err(llvm)?
                    .into());
            }
            UnaryOp::Not | UnaryOp::BitNot => return Err(unsupported()),
            other => {
                let base = unary_math(other).ok_or_else(unsupported)?;
                self.call(&math_symbol(base, is_f64, self.flavor), ty, &[x])?
            }
        };
        self.round_half(v, dtype)
    }

    pub(super) fn binary(
        &mut self,
        op: BinaryOp,
        src: DType,
        out: DType,
        x: BasicValueEnum<'ctx>,
        y: BasicValueEnum<'ctx>,
    ) -> R<BasicValueEnum<'ctx>> {
        let b = self.b;
        let unsupported = || GpuError::Unsupported {
            kernel: self.kernel.name.clone(),
            reason: format!("{} of {}", op.name(), src.name()),
        };
        if src.is_float() {
            let (xf, yf) = (x.into_float_value(), y.into_float_value());
            let is_f64 = reg(src) == Reg::F64;
            let ty = self.reg_type(reg(src));
            let v: BasicValueEnum = match op {
                BinaryOp::Add => b.build_float_add(xf, yf, "").map_err(llvm)?.into(),
                BinaryOp::Sub => b.build_float_sub(xf, yf, "").map_err(llvm)?.into(),
                BinaryOp::Mul => b.build_float_mul(xf, yf, "").map_err(llvm)?.into(),
                BinaryOp::Div => b.build_float_div(xf, yf, "").map_err(llvm)?.into(),
                BinaryOp::Max => self.intrinsic("maximum", &[x, y])?,
                BinaryOp::Min => self.intrinsic("minimum", &[x, y])?,
                BinaryOp::Pow => {
                    self.call(&math_symbol("pow", is_f64, self.flavor), ty, &[x, y])?
                }
                BinaryOp::Rem => {
                    self.call(&math_symbol("fmod", is_f64, self.flavor), ty, &[x, y])?
                }
                BinaryOp::Mod => {
                    let r = self
                        .call(&math_symbol("fmod", is_f64, self.flavor), ty, &[x, y])?
                        .into_float_value();
                    let zero = self.fconst(xf, 0.0);
                    let nz = b
                        .build_float_compare(FloatPredicate::UNE, r, zero, "")
                        .map_err(llvm)?;
                    let rneg = b
                        .build_float_compare(FloatPredicate::OLT, r, zero, "")
                        .map_err(llvm)?;
                    let yneg = b
                        .build_float_compare(FloatPredicate::OLT, yf, zero, "")
                        .map_err(llvm)?;
                    let differ = b.build_xor(rneg, yneg, "").map_err(llvm)?;
                    let fix = b.build_and(nz, differ, "").map_err(llvm)?;
                    let shifted = b.build_float_add(r, yf, "").map_err(llvm)?;
                    b.build_select(fix, shifted, r, "").map_err(llvm)?
                }
                c if c.is_comparison() => {
                    let p = match c {
                        BinaryOp::Equal => FloatPredicate::OEQ,
                        BinaryOp::Less => FloatPredicate::OLT,
                        BinaryOp::LessEqual => FloatPredicate::OLE,
                        BinaryOp::Greater => FloatPredicate::OGT,
                        _ => FloatPredicate::OGE,
                    };
                    return Ok(b.build_float_compare(p, xf, yf, "").map_err(llvm)?.into());
                }
                _ => return Err(unsupported()),
            };
            return self.round_half(v, out);
        }
        let (xi, yi) = (x.into_int_value(), y.into_int_value());
        if src == DType::Bool {
            return Ok(match op {
                BinaryOp::And | BinaryOp::BitAnd | BinaryOp::Min => b.build_and(xi, yi, ""),
                BinaryOp::Or | BinaryOp::BitOr | BinaryOp::Max => b.build_or(xi, yi, ""),
                BinaryOp::Xor | BinaryOp::BitXor => b.build_xor(xi, yi, ""),
                c if c.is_comparison() => b.build_int_compare(int_predicate(c, true), xi, yi, ""),
                _ => return Err(unsupported()),
            }
            .map_err(llvm)?
            .into());
        }
        let unsigned = src.is_unsigned_int();
        let i64t = self.ctx.i64_type();
        let (zero, one) = (i64t.const_zero(), i64t.const_int(1, false));
        let v: IntValue = match op {
            BinaryOp::Add => b.build_int_add(xi, yi, "").map_err(llvm)?,
            BinaryOp::Sub => b.build_int_sub(xi, yi, "").map_err(llvm)?,
            BinaryOp::Mul => b.build_int_mul(xi, yi, "").map_err(llvm)?,
            BinaryOp::Pow => self.pow_i64(xi, yi)?,
            BinaryOp::Div | BinaryOp::Rem | BinaryOp::Mod => {
                // Divisors of 0 (and, signed, -1, whose MIN / -1 overflows) are replaced
                // before dividing; a zero divisor gives 0.
                let y_zero = b
                    .build_int_compare(IntPredicate::EQ, yi, zero, "")
                    .map_err(llvm)?;
                let r = if unsigned {
                    let safe = b
                        .build_select(y_zero, one, yi, "")
                        .map_err(llvm)?
                        .into_int_value();
                    if op == BinaryOp::Div {
                        b.build_int_unsigned_div(xi, safe, "").map_err(llvm)?
                    } else {
                        b.build_int_unsigned_rem(xi, safe, "").map_err(llvm)?
                    }
                } else {
                    let y_neg1 = b
                        .build_int_compare(IntPredicate::EQ, yi, i64t.const_all_ones(), "")
                        .map_err(llvm)?;
                    let special = b.build_or(y_zero, y_neg1, "").map_err(llvm)?;
                    let safe = b
                        .build_select(special, one, yi, "")
                        .map_err(llvm)?
                        .into_int_value();
                    match op {
                        BinaryOp::Div => {
                            let q = b.build_int_signed_div(xi, safe, "").map_err(llvm)?;
                            let neg = b.build_int_neg(xi, "").map_err(llvm)?;
                            b.build_select(y_neg1, neg, q, "")
                                .map_err(llvm)?
                                .into_int_value()
                        }
                        BinaryOp::Rem => {
                            let r = b.build_int_signed_rem(xi, safe, "").map_err(llvm)?;
                            b.build_select(y_neg1, zero, r, "")
                                .map_err(llvm)?
                                .into_int_value()
                        }
                        _ => {
                            let r = b.build_int_signed_rem(xi, safe, "").map_err(llvm)?;
                            let r = b
                                .build_select(y_neg1, zero, r, "")
                                .map_err(llvm)?
                                .into_int_value();
                            let nz = b
                                .build_int_compare(IntPredicate::NE, r, zero, "")
                                .map_err(llvm)?;
                            let rneg = b
                                .build_int_compare(IntPredicate::SLT, r, zero, "")
                                .map_err(llvm)?;
                            let yneg = b
                                .build_int_compare(IntPredicate::SLT, yi, zero, "")
                                .map_err(llvm)?;
                            let differ = b.build_xor(rneg, yneg, "").map_err(llvm)?;
                            let fix = b.build_and(nz, differ, "").map_err(llvm)?;
                            let shifted = b.build_int_add(r, yi, "").map_err(llvm)?;
                            b.build_select(fix, shifted, r, "")
                                .map_err(llvm)?
                                .into_int_value()
                        }
                    }
                };
                b.build_select(y_zero, zero, r, "")
                    .map_err(llvm)?
                    .into_int_value()
            }
            BinaryOp::Max => self
                .intrinsic(if unsigned { "umax" } else { "smax" }, &[x, y])?
                .into_int_value(),
            BinaryOp::Min => self
                .intrinsic(if unsigned { "umin" } else { "smin" }, &[x, y])?
                .into_int_value(),
            BinaryOp::BitAnd => b.build_and(xi, yi, "").map_err(llvm)?,
            BinaryOp::BitOr => b.build_or(xi, yi, "").map_err(llvm)?,
            BinaryOp::BitXor => b.build_xor(xi, yi, "").map_err(llvm)?,
            BinaryOp::Shl | BinaryOp::Shr => {
                let big = b
                    .build_int_compare(IntPredicate::UGE, yi, i64t.const_int(64, false), "")
                    .map_err(llvm)?;
                if op == BinaryOp::Shl || unsigned {
                    let safe = b
                        .build_select(big, zero, yi, "")
                        .map_err(llvm)?
                        .into_int_value();
                    let s = if op == BinaryOp::Shl {
                        b.build_left_shift(xi, safe, "").map_err(llvm)?
                    } else {
                        b.build_right_shift(xi, safe, false, "").map_err(llvm)?
                    };
                    b.build_select(big, zero, s, "")
                        .map_err(llvm)?
                        .into_int_value()
                } else {
                    let amt = b
                        .build_select(big, i64t.const_int(63, false), yi, "")
                        .map_err(llvm)?
                        .into_int_value();
                    b.build_right_shift(xi, amt, true, "").map_err(llvm)?
                }
            }
            BinaryOp::And | BinaryOp::Or | BinaryOp::Xor => {
                let xa = b
                    .build_int_compare(IntPredicate::NE, xi, zero, "")
                    .map_err(llvm)?;
                let ya = b
                    .build_int_compare(IntPredicate::NE, yi, zero, "")
                    .map_err(llvm)?;
                return Ok(match op {
                    BinaryOp::And => b.build_and(xa, ya, ""),
                    BinaryOp::Or => b.build_or(xa, ya, ""),
                    _ => b.build_xor(xa, ya, ""),
                }
                .map_err(llvm)?
                .into());
            }
            c => {
                return Ok(b
                    .build_int_compare(int_predicate(c, unsigned), xi, yi, "")
                    .map_err(llvm)?
                    .into());
            }
        };
        self.wrap(v, out)
    }

    /// `x` to the power `y` in i64 as the runtime's `smelt_rt_pow_i64`: wrapping
    /// repeated squaring for `y >= 0`; for `y < 0`, what the f64 power truncates to
    /// (1 for x = 1, +-1 for x = -1, i64::MAX for x = 0, else 0).
    pub(super) fn pow_i64(&self, x: IntValue<'ctx>, y: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        let f = self.pow_helper()?;
        Ok(self
            .b
            .build_call(f, &[x.into(), y.into()], "")
            .map_err(llvm)?
            .try_as_basic_value()
            .unwrap_basic()
            .into_int_value())
    }

    pub(super) fn pow_helper(&self) -> R<FunctionValue<'ctx>> {
        const NAME: &str = "smelt_pow_i64";
        if let Some(f) = self.module.get_function(NAME) {
            return Ok(f);
        }
        let c = self.ctx;
        let i64t = c.i64_type();
        let f = self.module.add_function(
            NAME,
            i64t.fn_type(&[i64t.into(), i64t.into()], false),
            Some(Linkage::Internal),
        );
        let b = c.create_builder();
        let entry = c.append_basic_block(f, "entry");
        let negative = c.append_basic_block(f, "negative");
        let prepare = c.append_basic_block(f, "prepare");
        let step = c.append_basic_block(f, "step");
        let done = c.append_basic_block(f, "done");
        let (x, y) = (
            f.get_nth_param(0).expect("x").into_int_value(),
            f.get_nth_param(1).expect("y").into_int_value(),
        );
        let k = |v: i64| i64t.const_int(v as u64, true);
        b.position_at_end(entry);
        let neg = b
            .build_int_compare(IntPredicate::SLT, y, k(0), "")
            .map_err(llvm)?;
        b.build_conditional_branch(neg, negative, prepare)
            .map_err(llvm)?;
        b.position_at_end(negative);
        let is_one = b
            .build_int_compare(IntPredicate::EQ, x, k(1), "")
            .map_err(llvm)?;
        let is_m1 = b
            .build_int_compare(IntPredicate::EQ, x, k(-1), "")
            .map_err(llvm)?;
        let is_zero = b
            .build_int_compare(IntPredicate::EQ, x, k(0), "")
            .map_err(llvm)?;
        let odd = b.build_and(y, k(1), "").map_err(llvm)?;
        let odd = b
            .build_int_compare(IntPredicate::NE, odd, k(0), "")
            .map_err(llvm)?;
        let m1 = b
            .build_select(odd, k(-1), k(1), "")
            .map_err(llvm)?
            .into_int_value();
        let r = b
            .build_select(is_zero, k(i64::MAX), k(0), "")
            .map_err(llvm)?
            .into_int_value();
        let r = b
            .build_select(is_m1, m1, r, "")
            .map_err(llvm)?
            .into_int_value();
        let r = b
            .build_select(is_one, k(1), r, "")
            .map_err(llvm)?
            .into_int_value();
        b.build_return(Some(&r)).map_err(llvm)?;
        // The exponent clamped to u32, as the runtime does; then squaring over its bits
        // (an exponent of 0 takes one step and leaves 1).
        b.position_at_end(prepare);
        let big = b
            .build_int_compare(IntPredicate::UGT, y, k(u32::MAX as i64), "")
            .map_err(llvm)?;
        let y_capped = b
            .build_select(big, k(u32::MAX as i64), y, "")
            .map_err(llvm)?
            .into_int_value();
        b.build_unconditional_branch(step).map_err(llvm)?;
        b.position_at_end(step);
        let acc = b.build_phi(i64t, "acc").map_err(llvm)?;
        let base = b.build_phi(i64t, "base").map_err(llvm)?;
        let e = b.build_phi(i64t, "e").map_err(llvm)?;
        let (accv, basev, ev) = (
            acc.as_basic_value().into_int_value(),
            base.as_basic_value().into_int_value(),
            e.as_basic_value().into_int_value(),
        );
        let bit = b.build_and(ev, k(1), "").map_err(llvm)?;
        let bit = b
            .build_int_compare(IntPredicate::NE, bit, k(0), "")
            .map_err(llvm)?;
        let times = b.build_int_mul(accv, basev, "").map_err(llvm)?;
        let acc2 = b
            .build_select(bit, times, accv, "")
            .map_err(llvm)?
            .into_int_value();
        let base2 = b.build_int_mul(basev, basev, "").map_err(llvm)?;
        let e2 = b.build_right_shift(ev, k(1), false, "").map_err(llvm)?;
        let more = b
            .build_int_compare(IntPredicate::NE, e2, k(0), "")
            .map_err(llvm)?;
        b.build_conditional_branch(more, step, done).map_err(llvm)?;
        acc.add_incoming(&[(&k(1), prepare), (&acc2, step)]);
        base.add_incoming(&[(&x, prepare), (&base2, step)]);
        e.add_incoming(&[(&y_capped, prepare), (&e2, step)]);
        b.position_at_end(done);
        b.build_return(Some(&acc2)).map_err(llvm)?;
        Ok(f)
    }

    pub(super) fn cast(
        &mut self,
        x: BasicValueEnum<'ctx>,
        src: DType,
        dst: DType,
    ) -> R<BasicValueEnum<'ctx>> {
        if src == dst {
            return Ok(x);
        }
        let b = self.b;
        let c = self.ctx;
        let i64t = c.i64_type();
        if src.is_float() {
            let xf = x.into_float_value();
            if dst.is_float() {
                let v: BasicValueEnum = match (reg(src), reg(dst)) {
                    (s, d) if s == d => x,
                    (_, Reg::F64) => b
                        .build_float_ext(xf, c.f64_type(), "")
                        .map_err(llvm)?
                        .into(),
                    _ => b
                        .build_float_trunc(xf, c.f32_type(), "")
                        .map_err(llvm)?
                        .into(),
                };
                return self.round_half(v, dst);
            }
            if dst == DType::Bool {
                let zero = self.fconst(xf, 0.0);
                return Ok(b
                    .build_float_compare(FloatPredicate::UNE, xf, zero, "")
                    .map_err(llvm)?
                    .into());
            }
            let wide = if reg(src) == Reg::F32 {
                b.build_float_ext(xf, c.f64_type(), "").map_err(llvm)?
            } else {
                xf
            };
            if dst.is_unsigned_int() {
                let v = self
                    .call("llvm.fptoui.sat.i64.f64", i64t.into(), &[wide.into()])?
                    .into_int_value();
                if dst == DType::U64 {
                    return Ok(v.into());
                }
                let max = i64t.const_int(dst.int_limits().1 as u64, false);
                return self.intrinsic("umin", &[v.into(), max.into()]);
            }
            let v = self.call("llvm.fptosi.sat.i64.f64", i64t.into(), &[wide.into()])?;
            let (lo, hi) = dst.int_limits();
            let v = self.intrinsic("smax", &[v, i64t.const_int(lo as u64, true).into()])?;
            return self.intrinsic("smin", &[v, i64t.const_int(hi as u64, true).into()]);
        }
        let xi = x.into_int_value();
        let (wide, unsigned) = if src == DType::Bool {
            (b.build_int_z_extend(xi, i64t, "").map_err(llvm)?, true)
        } else {
            (xi, src.is_unsigned_int())
        };
        if dst == DType::Bool {
            return Ok(b
                .build_int_compare(IntPredicate::NE, wide, i64t.const_zero(), "")
                .map_err(llvm)?
                .into());
        }
        if dst.is_float() {
            let ft = if reg(dst) == Reg::F64 {
                c.f64_type()
            } else {
                c.f32_type()
            };
            let v = if unsigned {
                b.build_unsigned_int_to_float(wide, ft, "").map_err(llvm)?
            } else {
                b.build_signed_int_to_float(wide, ft, "").map_err(llvm)?
            };
            return self.round_half(v.into(), dst);
        }
        self.wrap(wide, dst)
    }
}
