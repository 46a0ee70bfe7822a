//! Scalar expressions: loads clamped to their buffer unless proven inside, stores, and
//! each op in Cranelift IR (integers in i64 wrapped to their type, f16/bf16 rounded).

use super::*;

impl<M: Module> Gen<'_, '_, M> {
    /// Wraps an i64 register to the range of `dtype` (two's complement, as a cast does).
    pub(super) fn wrap(&mut self, v: Value, dtype: DType) -> Value {
        let narrow = match dtype {
            DType::I8 | DType::U8 => types::I8,
            DType::I16 | DType::U16 => types::I16,
            DType::I32 | DType::U32 => types::I32,
            _ => return v,
        };
        let r = self.b.ins().ireduce(narrow, v);
        if dtype.is_unsigned_int() {
            self.b.ins().uextend(types::I64, r)
        } else {
            self.b.ins().sextend(types::I64, r)
        }
    }

    pub(super) fn round_half(&mut self, v: Value, dtype: DType) -> Result<Value, CpuError> {
        match dtype {
            DType::F16 => self.call("smelt_rt_round_f16", &[v], types::F32),
            DType::BF16 => self.call("smelt_rt_round_bf16", &[v], types::F32),
            _ => Ok(v),
        }
    }

    /// Whether the index expression `index` stays inside parameter `param` everywhere in
    /// the domain (so its accesses need no clamp).
    pub(super) fn in_bounds(&self, param: u32, index: ExprId) -> bool {
        let len = self.kernel.params[param as usize].len() as i64;
        self.ranges[index as usize].is_some_and(|(lo, hi)| lo >= 0 && hi < len)
    }

    pub(super) fn address(&mut self, param: u32, index: Value, in_bounds: bool) -> (Value, DType) {
        let p = &self.kernel.params[param as usize];
        let (dtype, len) = (p.dtype, p.len().max(1) as i64);
        // Clamp (unsigned, so negatives clamp too) to keep every access in bounds, unless
        // the index's range proves it is.
        let idx = if in_bounds {
            index
        } else {
            let max = self.b.ins().iconst(types::I64, len - 1);
            self.b.ins().umin(index, max)
        };
        let scaled = self.b.ins().imul_imm(idx, dtype.size_bytes() as i64);
        (
            self.b.ins().iadd(self.params[param as usize], scaled),
            dtype,
        )
    }

    pub(super) fn load_scalar(
        &mut self,
        param: u32,
        index: Value,
        in_bounds: bool,
    ) -> Result<Value, CpuError> {
        let (addr, dtype) = self.address(param, index, in_bounds);
        let f = mem();
        let b = &mut self.b;
        Ok(match dtype {
            DType::F32 => b.ins().load(types::F32, f, addr, 0),
            DType::F64 => b.ins().load(types::F64, f, addr, 0),
            DType::I8 => b.ins().sload8(types::I64, f, addr, 0),
            DType::U8 => b.ins().uload8(types::I64, f, addr, 0),
            DType::Bool => b.ins().load(types::I8, f, addr, 0),
            DType::I16 => b.ins().sload16(types::I64, f, addr, 0),
            DType::U16 => b.ins().uload16(types::I64, f, addr, 0),
            DType::I32 => b.ins().sload32(f, addr, 0),
            DType::U32 => b.ins().uload32(f, addr, 0),
            DType::I64 | DType::U64 => b.ins().load(types::I64, f, addr, 0),
            DType::F16 | DType::BF16 => {
                let bits = b.ins().uload16(types::I32, f, addr, 0);
                let name = if dtype == DType::F16 {
                    "smelt_rt_f16_to_f32"
                } else {
                    "smelt_rt_bf16_to_f32"
                };
                self.call(name, &[bits], types::F32)?
            }
        })
    }

    pub(super) fn emit_store(&mut self, i: usize) -> Result<(), CpuError> {
        let s = self.nest.stores[i];
        let p = &self.kernel.params[s.param as usize];
        let dtype = p.dtype;
        if self.inner_lanes {
            let base = self.scalar(s.index);
            let v = self.lanes(s.value);
            let scaled = self.b.ins().imul_imm(base, 4);
            let addr = self.b.ins().iadd(self.params[s.param as usize], scaled);
            self.b.ins().store(mem(), v, addr, 0);
            return Ok(());
        }
        let index = self.scalar(s.index);
        let v = match self.get(s.value) {
            Val::S(v) => v,
            Val::V(_) => unreachable!("vector values only in vector mode"),
        };
        let in_bounds = self.in_bounds(s.param, s.index);
        let (addr, _) = self.address(s.param, index, in_bounds);
        let f = mem();
        match dtype {
            DType::F32 | DType::F64 | DType::Bool | DType::I64 | DType::U64 => {
                self.b.ins().store(f, v, addr, 0);
            }
            DType::I8 | DType::U8 => {
                self.b.ins().istore8(f, v, addr, 0);
            }
            DType::I16 | DType::U16 => {
                self.b.ins().istore16(f, v, addr, 0);
            }
            DType::I32 | DType::U32 => {
                self.b.ins().istore32(f, v, addr, 0);
            }
            DType::F16 | DType::BF16 => {
                let name = if dtype == DType::F16 {
                    "smelt_rt_f32_to_f16"
                } else {
                    "smelt_rt_f32_to_bf16"
                };
                let bits = self.call(name, &[v], types::I32)?;
                self.b.ins().istore16(f, bits, addr, 0);
            }
        }
        Ok(())
    }

    pub(super) fn emit_op(&mut self, e: ExprId) -> Result<(), CpuError> {
        if self.emit_known(e) {
            return Ok(());
        }
        let node = *self.nest.node(e);
        let place = self.place[e as usize];
        let in_lanes = self.lanes_scope == Some(place)
            || (self.inner_lanes && self.inner_scopes.contains(&place) && self.varies[e as usize]);
        if let Some(st) = self.stash.filter(|st| st.twin == e) {
            // The reduction left this element's value in the output (`find_stash`).
            let index = self.scalar(st.index);
            let in_bounds = self.in_bounds(st.param, st.index);
            let v = if self.inner_lanes {
                Val::V(self.vector_load(st.param, index, in_bounds)?)
            } else {
                Val::S(self.load_scalar(st.param, index, in_bounds)?)
            };
            self.set(e, v);
            return Ok(());
        }
        if in_lanes && node.dtype != DType::I64 {
            let v = self.emit_vector(e)?;
            self.set(e, Val::V(v));
            return Ok(());
        }
        let mut v = self.emit_scalar(e)?;
        if place == Scope::Row && node.dtype.is_float() && !matches!(node.expr, Expr::Const(_)) {
            // Per-row float values (a mean, a reciprocal standard deviation) would otherwise
            // be recomputed inside the loops that use them (see `pin`).
            v = self.pin_row_value(e, v);
        }
        self.set(e, Val::S(v));
        Ok(())
    }

    /// An i64 quotient or remainder of a non-negative value by a positive constant (index
    /// arithmetic: channel shuffles, pooling taps) as an unsigned division by an immediate,
    /// which Cranelift turns into a multiply and shifts; the general path guards its divisor
    /// with selects, which keeps it a hardware division of ~40 cycles.
    pub(super) fn divide_by_constant(
        &mut self,
        op: BinaryOp,
        a: ExprId,
        c: ExprId,
        x: Value,
    ) -> Option<Value> {
        if !matches!(op, BinaryOp::Div | BinaryOp::Rem | BinaryOp::Mod)
            || self.nest.node(a).dtype != DType::I64
        {
            return None;
        }
        let Expr::Const(Const::Int(d)) = self.nest.node(c).expr else {
            return None;
        };
        let (lo, _) = self.ranges[a as usize]?;
        if d <= 0 || lo < 0 {
            return None;
        }
        let b = &mut self.b;
        Some(match op {
            BinaryOp::Div => b.ins().udiv_imm(x, d),
            // Floor and truncating remainders agree for a non-negative dividend.
            _ => b.ins().urem_imm(x, d),
        })
    }

    pub(super) fn emit_scalar(&mut self, e: ExprId) -> Result<Value, CpuError> {
        let node = *self.nest.node(e);
        let dtype = node.dtype;
        let rank = self.nest.domain.len() as u32;
        Ok(match node.expr {
            Expr::Var(k) => {
                if k + 1 == rank {
                    self.inner.expect("inner variable inside the inner loop")
                } else {
                    self.row_coords[k as usize]
                }
            }
            Expr::RVar(v) => self.rvars[&v],
            Expr::Const(c) => match reg(dtype) {
                t if t == types::F32 => self.b.ins().f32const(c.as_f64() as f32),
                t if t == types::F64 => self.b.ins().f64const(c.as_f64()),
                t if t == types::I8 => self.b.ins().iconst(types::I8, (c.as_i64() != 0) as i64),
                _ => self.b.ins().iconst(types::I64, c.as_i64()),
            },
            Expr::Load { param, index } => {
                let idx = self.scalar(index);
                let in_bounds = self.in_bounds(param, index);
                self.load_scalar(param, idx, in_bounds)?
            }
            Expr::Unary(op, a) => {
                let x = self.scalar(a);
                let src = self.nest.node(a).dtype;
                self.unary(op, src, x)?
            }
            Expr::Binary(op, a, c) => {
                let x = self.scalar(a);
                if let Some(v) = self.divide_by_constant(op, a, c, x) {
                    return Ok(v);
                }
                if let Some(k) = pow_exponent(self.nest, &node) {
                    // As the vector lanes compute it, so tails agree with them.
                    let m = Math {
                        ty: types::F32,
                        fma: self.fma,
                    };
                    return Ok(m.pow_const(&mut self.b, x, k));
                }
                let y = self.scalar(c);
                let src = self.nest.node(a).dtype;
                self.binary(op, src, dtype, x, y)?
            }
            Expr::Select(c, a, d) => {
                let (cv, x, y) = (self.scalar(c), self.scalar(a), self.scalar(d));
                self.b.ins().select(cv, x, y)
            }
            Expr::Cast(a) => {
                let x = self.scalar(a);
                let src = self.nest.node(a).dtype;
                self.cast(x, src, dtype)?
            }
            Expr::Reduce { .. } => unreachable!("reductions are emitted by emit_reduce"),
        })
    }

    pub(super) fn unary(&mut self, op: UnaryOp, dtype: DType, x: Value) -> Result<Value, CpuError> {
        if dtype == DType::Bool {
            return Ok(match op {
                UnaryOp::Not | UnaryOp::BitNot => self.b.ins().bxor_imm(x, 1),
                _ => x,
            });
        }
        if !dtype.is_float() {
            let unsigned = dtype.is_unsigned_int();
            let b = &mut self.b;
            let v = match op {
                UnaryOp::Neg => b.ins().ineg(x),
                UnaryOp::Abs if unsigned => x,
                UnaryOp::Abs => b.ins().iabs(x),
                UnaryOp::Sign if unsigned => {
                    let nz = b.ins().icmp_imm(IntCC::NotEqual, x, 0);
                    b.ins().uextend(types::I64, nz)
                }
                UnaryOp::Sign => {
                    let pos = b.ins().icmp_imm(IntCC::SignedGreaterThan, x, 0);
                    let neg = b.ins().icmp_imm(IntCC::SignedLessThan, x, 0);
                    let p = b.ins().uextend(types::I64, pos);
                    let n = b.ins().uextend(types::I64, neg);
                    b.ins().isub(p, n)
                }
                UnaryOp::Not => {
                    let z = b.ins().icmp_imm(IntCC::Equal, x, 0);
                    b.ins().uextend(types::I64, z)
                }
                UnaryOp::BitNot => b.ins().bnot(x),
                _ => {
                    return Err(CpuError::Unsupported(format!(
                        "{} of {}",
                        op.name(),
                        dtype.name()
                    )));
                }
            };
            return Ok(self.wrap(v, dtype));
        }
        let ty = reg(dtype);
        let f32_math = ty == types::F32;
        let m = Math {
            ty: types::F32,
            fma: self.fma,
        };
        let suffix = if f32_math { "f32" } else { "f64" };
        let fconst = |b: &mut FunctionBuilder, v: f64| {
            if f32_math {
                b.ins().f32const(v as f32)
            } else {
                b.ins().f64const(v)
            }
        };
        let v = match op {
            UnaryOp::Neg => self.b.ins().fneg(x),
            UnaryOp::Abs => self.b.ins().fabs(x),
            UnaryOp::Sqrt => self.b.ins().sqrt(x),
            UnaryOp::Floor => self.b.ins().floor(x),
            UnaryOp::Ceil => self.b.ins().ceil(x),
            UnaryOp::Round => self.b.ins().nearest(x),
            UnaryOp::Reciprocal => {
                let one = fconst(&mut self.b, 1.0);
                self.b.ins().fdiv(one, x)
            }
            UnaryOp::Exp if f32_math => m.exp(&mut self.b, x),
            UnaryOp::Log if f32_math => m.log(&mut self.b, x),
            UnaryOp::Tanh if f32_math => m.tanh(&mut self.b, x),
            UnaryOp::Sigmoid if f32_math && dtype == DType::F32 => m.sigmoid(&mut self.b, x),
            UnaryOp::Erf if f32_math => m.erf(&mut self.b, x),
            UnaryOp::Sign => {
                let (one, neg, zero) = (
                    fconst(&mut self.b, 1.0),
                    fconst(&mut self.b, -1.0),
                    fconst(&mut self.b, 0.0),
                );
                let pos = self.b.ins().fcmp(FloatCC::GreaterThan, x, zero);
                let lt = self.b.ins().fcmp(FloatCC::LessThan, x, zero);
                let t = self.b.ins().select(lt, neg, x);
                self.b.ins().select(pos, one, t)
            }
            UnaryOp::IsNan => return Ok(self.b.ins().fcmp(FloatCC::Unordered, x, x)),
            UnaryOp::IsInf => {
                let a = self.b.ins().fabs(x);
                let inf = fconst(&mut self.b, f64::INFINITY);
                return Ok(self.b.ins().fcmp(FloatCC::Equal, a, inf));
            }
            UnaryOp::Not | UnaryOp::BitNot => {
                return Err(CpuError::Unsupported(format!(
                    "{} of {}",
                    op.name(),
                    dtype.name()
                )));
            }
            other => {
                let name = format!("smelt_rt_{}_{suffix}", other.name());
                self.call(&name, &[x], ty)?
            }
        };
        self.round_half(v, dtype)
    }

    pub(super) fn binary(
        &mut self,
        op: BinaryOp,
        src: DType,
        out: DType,
        x: Value,
        y: Value,
    ) -> Result<Value, CpuError> {
        if src.is_float() {
            let ty = reg(src);
            let suffix = if ty == types::F32 { "f32" } else { "f64" };
            let v = match op {
                BinaryOp::Add => self.b.ins().fadd(x, y),
                BinaryOp::Sub => self.b.ins().fsub(x, y),
                BinaryOp::Mul => self.b.ins().fmul(x, y),
                BinaryOp::Div => self.b.ins().fdiv(x, y),
                BinaryOp::Max => self.float_extreme(true, x, y),
                BinaryOp::Min => self.float_extreme(false, x, y),
                BinaryOp::Pow => self.call(&format!("smelt_rt_pow_{suffix}"), &[x, y], ty)?,
                BinaryOp::Rem => self.call(&format!("smelt_rt_fmod_{suffix}"), &[x, y], ty)?,
                BinaryOp::Mod => {
                    let r = self.call(&format!("smelt_rt_fmod_{suffix}"), &[x, y], ty)?;
                    let zero = if ty == types::F32 {
                        self.b.ins().f32const(0.0)
                    } else {
                        self.b.ins().f64const(0.0)
                    };
                    let nz = self.b.ins().fcmp(FloatCC::NotEqual, r, zero);
                    let rneg = self.b.ins().fcmp(FloatCC::LessThan, r, zero);
                    let yneg = self.b.ins().fcmp(FloatCC::LessThan, y, zero);
                    let differ = self.b.ins().bxor(rneg, yneg);
                    let fix = self.b.ins().band(nz, differ);
                    let shifted = self.b.ins().fadd(r, y);
                    self.b.ins().select(fix, shifted, r)
                }
                c if c.is_comparison() => return Ok(self.b.ins().fcmp(float_cc(c), x, y)),
                _ => {
                    return Err(CpuError::Unsupported(format!(
                        "{} of {}",
                        op.name(),
                        src.name()
                    )));
                }
            };
            return self.round_half(v, out);
        }
        if src == DType::Bool {
            let b = &mut self.b;
            return Ok(match op {
                BinaryOp::And | BinaryOp::BitAnd => b.ins().band(x, y),
                BinaryOp::Or | BinaryOp::BitOr => b.ins().bor(x, y),
                BinaryOp::Xor | BinaryOp::BitXor => b.ins().bxor(x, y),
                c if c.is_comparison() => b.ins().icmp(int_cc(c, true), x, y),
                BinaryOp::Max => b.ins().umax(x, y),
                BinaryOp::Min => b.ins().umin(x, y),
                _ => {
                    return Err(CpuError::Unsupported(format!("{} of bool", op.name())));
                }
            });
        }
        let unsigned = src.is_unsigned_int();
        if op == BinaryOp::Pow {
            let v = self.call("smelt_rt_pow_i64", &[x, y], types::I64)?;
            return Ok(self.wrap(v, out));
        }
        let b = &mut self.b;
        let v = match op {
            BinaryOp::Add => b.ins().iadd(x, y),
            BinaryOp::Sub => b.ins().isub(x, y),
            BinaryOp::Mul => b.ins().imul(x, y),
            BinaryOp::Div | BinaryOp::Rem | BinaryOp::Mod => {
                let (zero, one) = (b.ins().iconst(types::I64, 0), b.ins().iconst(types::I64, 1));
                // Divisors of 0 (and, signed, -1, whose MIN / -1 traps) are replaced before
                // dividing; a zero divisor gives 0.
                let y_zero = b.ins().icmp_imm(IntCC::Equal, y, 0);
                let r = if unsigned {
                    let safe = b.ins().select(y_zero, one, y);
                    if op == BinaryOp::Div {
                        b.ins().udiv(x, safe)
                    } else {
                        b.ins().urem(x, safe)
                    }
                } else {
                    let y_neg1 = b.ins().icmp_imm(IntCC::Equal, y, -1);
                    let special = b.ins().bor(y_zero, y_neg1);
                    let safe = b.ins().select(special, one, y);
                    match op {
                        BinaryOp::Div => {
                            let q = b.ins().sdiv(x, safe);
                            let neg = b.ins().ineg(x);
                            b.ins().select(y_neg1, neg, q)
                        }
                        BinaryOp::Rem => {
                            let r = b.ins().srem(x, safe);
                            b.ins().select(y_neg1, zero, r)
                        }
                        _ => {
                            let r = b.ins().srem(x, safe);
                            let r = b.ins().select(y_neg1, zero, r);
                            let nz = b.ins().icmp_imm(IntCC::NotEqual, r, 0);
                            let rneg = b.ins().icmp_imm(IntCC::SignedLessThan, r, 0);
                            let yneg = b.ins().icmp_imm(IntCC::SignedLessThan, y, 0);
                            let differ = b.ins().bxor(rneg, yneg);
                            let fix = b.ins().band(nz, differ);
                            let shifted = b.ins().iadd(r, y);
                            b.ins().select(fix, shifted, r)
                        }
                    }
                };
                b.ins().select(y_zero, zero, r)
            }
            BinaryOp::Max if unsigned => b.ins().umax(x, y),
            BinaryOp::Max => b.ins().smax(x, y),
            BinaryOp::Min if unsigned => b.ins().umin(x, y),
            BinaryOp::Min => b.ins().smin(x, y),
            BinaryOp::BitAnd => b.ins().band(x, y),
            BinaryOp::BitOr => b.ins().bor(x, y),
            BinaryOp::BitXor => b.ins().bxor(x, y),
            BinaryOp::Shl | BinaryOp::Shr => {
                let big = b.ins().icmp_imm(IntCC::UnsignedGreaterThanOrEqual, y, 64);
                if op == BinaryOp::Shl || unsigned {
                    let s = if op == BinaryOp::Shl {
                        b.ins().ishl(x, y)
                    } else {
                        b.ins().ushr(x, y)
                    };
                    let zero = b.ins().iconst(types::I64, 0);
                    b.ins().select(big, zero, s)
                } else {
                    let sixty3 = b.ins().iconst(types::I64, 63);
                    let amt = b.ins().select(big, sixty3, y);
                    b.ins().sshr(x, amt)
                }
            }
            BinaryOp::And | BinaryOp::Or | BinaryOp::Xor => {
                let xa = b.ins().icmp_imm(IntCC::NotEqual, x, 0);
                let ya = b.ins().icmp_imm(IntCC::NotEqual, y, 0);
                return Ok(match op {
                    BinaryOp::And => b.ins().band(xa, ya),
                    BinaryOp::Or => b.ins().bor(xa, ya),
                    _ => b.ins().bxor(xa, ya),
                });
            }
            c => return Ok(b.ins().icmp(int_cc(c, unsigned), x, y)),
        };
        Ok(self.wrap(v, out))
    }

    pub(super) fn cast(&mut self, x: Value, src: DType, dst: DType) -> Result<Value, CpuError> {
        if src == dst {
            return Ok(x);
        }
        let (st, dt) = (reg(src), reg(dst));
        let b = &mut self.b;
        if src.is_float() {
            if dst.is_float() {
                let v = if st == dt {
                    x
                } else if dt == types::F64 {
                    b.ins().fpromote(types::F64, x)
                } else {
                    b.ins().fdemote(types::F32, x)
                };
                return self.round_half(v, dst);
            }
            if dst == DType::Bool {
                let zero = if st == types::F32 {
                    b.ins().f32const(0.0)
                } else {
                    b.ins().f64const(0.0)
                };
                return Ok(b.ins().fcmp(FloatCC::NotEqual, x, zero));
            }
            let wide = if st == types::F32 {
                b.ins().fpromote(types::F64, x)
            } else {
                x
            };
            if dst == DType::U64 {
                return Ok(b.ins().fcvt_to_uint_sat(types::I64, wide));
            }
            if dst.is_unsigned_int() {
                let v = b.ins().fcvt_to_uint_sat(types::I64, wide);
                let max = b.ins().iconst(types::I64, dst.int_limits().1);
                return Ok(b.ins().umin(v, max));
            }
            let v = b.ins().fcvt_to_sint_sat(types::I64, wide);
            let (lo, hi) = dst.int_limits();
            let lo = b.ins().iconst(types::I64, lo);
            let hi = b.ins().iconst(types::I64, hi);
            let v = b.ins().smax(v, lo);
            return Ok(b.ins().smin(v, hi));
        }
        // Integer or bool source, as i64.
        let (wide, unsigned) = if src == DType::Bool {
            (b.ins().uextend(types::I64, x), true)
        } else {
            (x, src.is_unsigned_int())
        };
        if dst == DType::Bool {
            return Ok(b.ins().icmp_imm(IntCC::NotEqual, wide, 0));
        }
        if dst.is_float() {
            let ft = if dt == types::F64 {
                types::F64
            } else {
                types::F32
            };
            let v = if unsigned {
                b.ins().fcvt_from_uint(ft, wide)
            } else {
                b.ins().fcvt_from_sint(ft, wide)
            };
            return self.round_half(v, dst);
        }
        Ok(self.wrap(wide, dst))
    }
}
