//! Reductions: scalar loops, unrolled small ones, f32 sums, products, max and min along a
//! contiguous axis in two f32x4 accumulators, arg reductions, and the softmax row helpers.

use super::*;

impl<M: Module> Gen<'_, '_, M> {
    pub(super) fn emit_reduce(&mut self, e: ExprId) -> Result<(), CpuError> {
        let Expr::Reduce {
            combine,
            extent,
            var,
            body,
        } = self.nest.node(e).expr
        else {
            unreachable!("emit_reduce of a reduction")
        };
        let dtype = self.nest.node(body).dtype;
        let ty = reg(dtype);
        let arg = matches!(combine, Combine::ArgMax { .. } | Combine::ArgMin { .. });
        let init = self.identity(combine, dtype);
        let zero = self.b.ins().iconst(types::I64, 0);
        let body_size = self.members.get(&Scope::Reduce(var)).map_or(0, Vec::len);
        if self.inner_lanes && self.varies[e as usize] {
            let acc = self.lanes_reduce(combine, extent, var, body, body_size)?;
            self.set(e, Val::V(acc));
            return Ok(());
        }
        let outer_inner_lanes = self.inner_lanes;
        self.inner_lanes = false;
        let outer_lanes = self.lanes_scope;
        // A reduction never sits in a vectorized inner loop (see `vectorizable`); its own
        // body runs in lanes only through `vector_reduce`.
        self.lanes_scope = None;
        let (out_acc, out_best) = if self.vector_reductions.contains(&e) {
            let stash = self.stash.is_some_and(|st| st.reduction == e);
            (self.vector_reduce(combine, extent, var, body, stash)?, zero)
        } else if extent <= MAX_UNROLL && extent as usize * body_size <= MAX_UNROLLED {
            // Small windows (pooling, small kernels) unroll: the index arithmetic on a
            // constant variable then folds away.
            let (mut acc, mut best) = (init, zero);
            let mut leaves = Vec::with_capacity(extent as usize);
            for k in 0..extent {
                let i = self.b.ins().iconst(types::I64, k as i64);
                self.rvars.insert(var, i);
                self.frames.push(HashMap::new());
                self.emit_scope(Scope::Reduce(var))?;
                let x = self.scalar(body);
                self.frames.pop();
                if arg {
                    (acc, best) = self.accumulate(combine, dtype, acc, best, x, i);
                } else {
                    leaves.push(x);
                }
            }
            if !arg {
                acc = self.combine_tree(combine, dtype, init, leaves);
            }
            (acc, best)
        } else {
            let (header, bb, exit) = (
                self.b.create_block(),
                self.b.create_block(),
                self.b.create_block(),
            );
            let i = self.b.append_block_param(header, types::I64);
            let acc = self.b.append_block_param(header, ty);
            let best = self.b.append_block_param(header, types::I64);
            let out_acc = self.b.append_block_param(exit, ty);
            let out_best = self.b.append_block_param(exit, types::I64);
            self.b
                .ins()
                .jump(header, &[zero.into(), init.into(), zero.into()]);
            self.b.switch_to_block(header);
            let more = self
                .b
                .ins()
                .icmp_imm(IntCC::SignedLessThan, i, extent as i64);
            self.b
                .ins()
                .brif(more, bb, &[], exit, &[acc.into(), best.into()]);
            self.b.switch_to_block(bb);
            self.rvars.insert(var, i);
            self.frames.push(HashMap::new());
            self.emit_scope(Scope::Reduce(var))?;
            let x = self.scalar(body);
            self.frames.pop();
            let (acc2, best2) = self.accumulate(combine, dtype, acc, best, x, i);
            let next = self.b.ins().iadd_imm(i, 1);
            self.b
                .ins()
                .jump(header, &[next.into(), acc2.into(), best2.into()]);
            self.b.switch_to_block(exit);
            (out_acc, out_best)
        };
        self.lanes_scope = outer_lanes;
        self.inner_lanes = outer_inner_lanes;
        let result = if arg {
            out_best
        } else {
            let r = self.wrap(out_acc, dtype);
            self.round_half(r, dtype)?
        };
        let result = self.pin_row_value(e, result);
        self.set(e, Val::S(result));
        Ok(())
    }

    /// An f32 reduction over `extent` elements of `body` along `var`, four lanes at a time:
    /// two vector accumulators (to overlap the combine latency) over blocks of eight, one
    /// more block of four if it fits, the lanes combined pairwise, then the scalar tail.
    /// Sums therefore add in a different order than the sequential loop.
    pub(super) fn vector_reduce(
        &mut self,
        combine: Combine,
        extent: u64,
        var: u32,
        body: ExprId,
        stash: bool,
    ) -> Result<Value, CpuError> {
        if stash
            && combine == Combine::Sum
            && let Expr::Unary(UnaryOp::Exp, arg) = self.nest.node(body).expr
        {
            return self.stashed_exp_sum(extent, var, arg);
        }
        // The max of a contiguous, in-bounds f32 row (a softmax's first pass): the
        // runtime's helper at the CPU's full vector width.
        if !stash
            && combine == Combine::Max
            && extent >= ROW_HELPER_MIN
            && let Some((param, index)) = self.contiguous_f32_row(body, var)
        {
            return self.call_row_helper("smelt_rt_row_max_f32", (param, index), var, extent, &[]);
        }
        // The sum of a contiguous, in-bounds f32 row, or of its squared distances to a
        // value fixed along the row (a normalization's mean and variance passes): the
        // runtime's helpers at the CPU's full vector width (ConvNeXt's layer norms over
        // rows of 96 ran at about 4 cycles an element here).
        if !stash && combine == Combine::Sum && extent >= ROW_HELPER_MIN {
            if let Some(row) = self.contiguous_f32_row(body, var) {
                return self.call_row_helper("smelt_rt_row_sum_f32", row, var, extent, &[]);
            }
            if let Some((param, index, center)) = self.squared_distances_row(body, var) {
                let row = (param, index);
                return self.call_row_helper(
                    "smelt_rt_row_sq_dev_sum_f32",
                    row,
                    var,
                    extent,
                    &[center],
                );
            }
        }
        let scope = Scope::Reduce(var);
        let init = self.identity(combine, DType::F32);
        let init = self.b.ins().splat(types::F32X4, init);
        let zero = self.b.ins().iconst(types::I64, 0);
        let blocks = (extent / (2 * LANES as u64)) as i64 * 2 * LANES;
        let (header, bb, exit) = (
            self.b.create_block(),
            self.b.create_block(),
            self.b.create_block(),
        );
        let i = self.b.append_block_param(header, types::I64);
        let acc0 = self.b.append_block_param(header, types::F32X4);
        let acc1 = self.b.append_block_param(header, types::F32X4);
        let out0 = self.b.append_block_param(exit, types::F32X4);
        let out1 = self.b.append_block_param(exit, types::F32X4);
        self.b
            .ins()
            .jump(header, &[zero.into(), init.into(), init.into()]);
        self.b.switch_to_block(header);
        let more = self.b.ins().icmp_imm(IntCC::SignedLessThan, i, blocks);
        self.b
            .ins()
            .brif(more, bb, &[], exit, &[acc0.into(), acc1.into()]);
        self.b.switch_to_block(bb);
        self.lanes_scope = Some(scope);
        let x0 = self.reduce_step(var, i, body)?;
        let i4 = self.b.ins().iadd_imm(i, LANES);
        let x1 = self.reduce_step(var, i4, body)?;
        if stash {
            self.stash_step(i, x0);
            self.stash_step(i4, x1);
        }
        let next0 = self.combine(combine, DType::F32, acc0, x0);
        let next1 = self.combine(combine, DType::F32, acc1, x1);
        let next = self.b.ins().iadd_imm(i, 2 * LANES);
        self.b
            .ins()
            .jump(header, &[next.into(), next0.into(), next1.into()]);
        self.b.switch_to_block(exit);
        let mut acc = self.combine(combine, DType::F32, out0, out1);
        let mut done = blocks;
        if extent as i64 - done >= LANES {
            let at = self.b.ins().iconst(types::I64, done);
            let x = self.reduce_step(var, at, body)?;
            if stash {
                self.stash_step(at, x);
            }
            acc = self.combine(combine, DType::F32, acc, x);
            done += LANES;
        }
        self.lanes_scope = None;
        let lane = |g: &mut Self, k: u8| g.b.ins().extractlane(acc, k);
        let (l0, l1, l2, l3) = (lane(self, 0), lane(self, 1), lane(self, 2), lane(self, 3));
        let low = self.combine(combine, DType::F32, l0, l1);
        let high = self.combine(combine, DType::F32, l2, l3);
        let mut total = self.combine(combine, DType::F32, low, high);
        for k in done..extent as i64 {
            let at = self.b.ins().iconst(types::I64, k);
            let x = self.reduce_step(var, at, body)?;
            if stash {
                self.stash_step(at, x);
            }
            total = self.combine(combine, DType::F32, total, x);
        }
        Ok(total)
    }

    /// A stashed sum of exps (a softmax's denominator): the exponents are stashed in the
    /// output row four lanes at a time, then the runtime's `smelt_rt_exp_sum_f32` takes
    /// the exp of the row in place at the CPU's full vector width and returns the sum.
    pub(super) fn stashed_exp_sum(
        &mut self,
        extent: u64,
        var: u32,
        arg: ExprId,
    ) -> Result<Value, CpuError> {
        // exp(x - m) of a contiguous, in-bounds f32 row x and a per-row m (a plain
        // softmax): the helper reads the row itself, so there is no stashing pass.
        if let Expr::Binary(BinaryOp::Sub, x, m) = self.nest.node(arg).expr
            && matches!(self.place[m as usize], Scope::Row | Scope::Entry)
            && let Some((param, index)) = self.contiguous_f32_row(x, var)
        {
            let shift = self.scalar(m);
            let zero = self.b.ins().iconst(types::I64, 0);
            let start = self.reduce_step(var, zero, index)?;
            let (src, _) = self.address(param, start, true);
            let dst = self.stash_address(zero);
            let n = self.b.ins().iconst(types::I64, extent as i64);
            return self.call(
                "smelt_rt_exp_shifted_sum_f32",
                &[dst, src, shift, n],
                types::F32,
            );
        }
        let blocks = (extent / LANES as u64) as i64 * LANES;
        let zero = self.b.ins().iconst(types::I64, 0);
        let end = self.b.ins().iconst(types::I64, blocks);
        self.lanes_scope = Some(Scope::Reduce(var));
        self.counted_loop(zero, end, LANES, |g, i| {
            let x = g.reduce_step(var, i, arg)?;
            g.stash_step(i, x);
            Ok(())
        })?;
        self.lanes_scope = None;
        for k in blocks..extent as i64 {
            let at = self.b.ins().iconst(types::I64, k);
            let x = self.reduce_step(var, at, arg)?;
            self.stash_step(at, x);
        }
        let row = self.stash_address(zero);
        let n = self.b.ins().iconst(types::I64, extent as i64);
        self.call("smelt_rt_exp_sum_f32", &[row, n], types::F32)
    }

    /// `expr` as a load of an f32 parameter that stays in bounds and walks reduction
    /// `var` one element per step (a contiguous row a runtime row helper can read), as
    /// (parameter, index).
    pub(super) fn contiguous_f32_row(&self, expr: ExprId, var: u32) -> Option<(u32, ExprId)> {
        let Expr::Load { param, index } = self.nest.node(expr).expr else {
            return None;
        };
        (self.kernel.params[param as usize].dtype == DType::F32
            && self.in_bounds(param, index)
            && self
                .nest
                .coefficient(index, Variable::Reduction(var), &mut HashMap::new())
                == Some(1))
        .then_some((param, index))
    }

    /// Calls row helper `name` (an f32 result) on the contiguous row `(param, index)` of
    /// reduction `var` ([`Self::contiguous_f32_row`]): its first element's address, its
    /// `extent`, then `extra`.
    fn call_row_helper(
        &mut self,
        name: &str,
        (param, index): (u32, ExprId),
        var: u32,
        extent: u64,
        extra: &[Value],
    ) -> Result<Value, CpuError> {
        let zero = self.b.ins().iconst(types::I64, 0);
        let start = self.reduce_step(var, zero, index)?;
        let (src, _) = self.address(param, start, true);
        let n = self.b.ins().iconst(types::I64, extent as i64);
        let args: Vec<Value> = [src, n].into_iter().chain(extra.iter().copied()).collect();
        self.call(name, &args, types::F32)
    }

    /// `expr` as `(x - c) * (x - c)` with `x` a contiguous f32 row along reduction `var`
    /// ([`Self::contiguous_f32_row`]) and `c` an f32 value already computed outside the
    /// reduction, as (parameter, index, the value of `c`).
    fn squared_distances_row(&self, expr: ExprId, var: u32) -> Option<(u32, ExprId, Value)> {
        let Expr::Binary(BinaryOp::Mul, d, d2) = self.nest.node(expr).expr else {
            return None;
        };
        let Expr::Binary(BinaryOp::Sub, x, c) = self.nest.node(d).expr else {
            return None;
        };
        if d != d2 || self.nest.node(c).dtype != DType::F32 {
            return None;
        }
        let (param, index) = self.contiguous_f32_row(x, var)?;
        let fixed = self
            .nest
            .coefficient(c, Variable::Reduction(var), &mut HashMap::new())
            == Some(0);
        match self.emitted(c) {
            Some(Val::S(center)) if fixed => Some((param, index, center)),
            _ => None,
        }
    }

    /// The address of position `at` of the stash's output row.
    pub(super) fn stash_address(&mut self, at: Value) -> Value {
        let st = self.stash.expect("a stash");
        let index = match st.row_base {
            Some(base) => {
                let base = self.scalar(base);
                self.b.ins().iadd(base, at)
            }
            None => at,
        };
        let scaled = self.b.ins().imul_imm(index, 4);
        self.b.ins().iadd(self.params[st.param as usize], scaled)
    }

    /// Stores the stashed reduction's step `x` (lanes or a scalar) at position `at` of
    /// the output row.
    pub(super) fn stash_step(&mut self, at: Value, x: Value) {
        let addr = self.stash_address(at);
        self.b.ins().store(mem(), x, addr, 0);
    }

    /// The unrolled values of a reduction combined as a balanced tree instead of a chain,
    /// so the combines of a window overlap (a 3x3 max is 4 dependent steps, not 9); sums
    /// also add the identity, as the sequential loop does (so -0 sums to +0).
    pub(super) fn combine_tree(
        &mut self,
        combine: Combine,
        dtype: DType,
        init: Value,
        mut leaves: Vec<Value>,
    ) -> Value {
        if leaves.is_empty() {
            return init;
        }
        while leaves.len() > 1 {
            let mut next = Vec::with_capacity(leaves.len().div_ceil(2));
            for pair in leaves.chunks(2) {
                next.push(match pair {
                    [x, y] => self.combine(combine, dtype, *x, *y),
                    [x] => *x,
                    _ => unreachable!("chunks of two"),
                });
            }
            leaves = next;
        }
        if combine == Combine::Sum {
            self.combine(combine, dtype, init, leaves[0])
        } else {
            leaves[0]
        }
    }

    /// `v` through a stack slot, so it is computed here once: Cranelift re-places pure
    /// instructions at their uses and left a softmax row's horizontal sum (and a layer
    /// norm's mean and 1/sqrt) inside the inner loops that use them (block parameters get
    /// folded away); a store and a load are fixed in place.
    pub(super) fn pin(&mut self, v: Value) -> Value {
        let ty = self.b.func.dfg.value_type(v);
        let slot = self.b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            ty.bytes(),
            4,
        ));
        self.b.ins().stack_store(v, slot, 0);
        self.b.ins().stack_load(ty, slot, 0)
    }

    /// Per-row value `v` of `e` pinned (`pin`), and, where `e` divides per-element values,
    /// its reciprocal too (the inner loop multiplies by it).
    pub(super) fn pin_row_value(&mut self, e: ExprId, v: Value) -> Value {
        let v = self.pin(v);
        if self.row_divisors.contains(&e) {
            let one = self.b.ins().f32const(1.0);
            let r = self.b.ins().fdiv(one, v);
            let r = self.pin(r);
            self.reciprocals.insert(e, r);
        }
        v
    }

    /// A reduction inside a vectorized inner loop: four independent accumulators, one per
    /// output lane (a pooling window or a small contraction per output element).
    pub(super) fn lanes_reduce(
        &mut self,
        combine: Combine,
        extent: u64,
        var: u32,
        body: ExprId,
        body_size: usize,
    ) -> Result<Value, CpuError> {
        let init = self.identity(combine, DType::F32);
        let init = self.b.ins().splat(types::F32X4, init);
        if extent <= MAX_UNROLL && extent as usize * body_size <= MAX_UNROLLED {
            let mut leaves = Vec::with_capacity(extent as usize);
            for k in 0..extent {
                let at = self.b.ins().iconst(types::I64, k as i64);
                leaves.push(self.reduce_step(var, at, body)?);
            }
            return Ok(self.combine_tree(combine, DType::F32, init, leaves));
        }
        let (header, bb, exit) = (
            self.b.create_block(),
            self.b.create_block(),
            self.b.create_block(),
        );
        let zero = self.b.ins().iconst(types::I64, 0);
        let i = self.b.append_block_param(header, types::I64);
        let acc = self.b.append_block_param(header, types::F32X4);
        let out = self.b.append_block_param(exit, types::F32X4);
        self.b.ins().jump(header, &[zero.into(), init.into()]);
        self.b.switch_to_block(header);
        let more = self
            .b
            .ins()
            .icmp_imm(IntCC::SignedLessThan, i, extent as i64);
        self.b.ins().brif(more, bb, &[], exit, &[acc.into()]);
        self.b.switch_to_block(bb);
        let x = self.reduce_step(var, i, body)?;
        let next_acc = self.combine(combine, DType::F32, acc, x);
        let next = self.b.ins().iadd_imm(i, 1);
        self.b.ins().jump(header, &[next.into(), next_acc.into()]);
        self.b.switch_to_block(exit);
        Ok(out)
    }

    /// The body of a reduction at `var = at`, in lanes or scalar as `lanes_scope` says.
    pub(super) fn reduce_step(
        &mut self,
        var: u32,
        at: Value,
        body: ExprId,
    ) -> Result<Value, CpuError> {
        self.rvars.insert(var, at);
        self.frames.push(HashMap::new());
        self.emit_scope(Scope::Reduce(var))?;
        let x = if self.lanes_scope.is_some() || self.inner_lanes {
            self.lanes(body)
        } else {
            self.scalar(body)
        };
        self.frames.pop();
        Ok(x)
    }

    /// One step of a reduction: the new accumulator and (for arg reductions) best index.
    pub(super) fn accumulate(
        &mut self,
        combine: Combine,
        dtype: DType,
        acc: Value,
        best: Value,
        x: Value,
        i: Value,
    ) -> (Value, Value) {
        if matches!(combine, Combine::ArgMax { .. } | Combine::ArgMin { .. }) {
            let better = self.arg_better(combine, dtype, x, acc);
            let a = self.b.ins().select(better, x, acc);
            let bi = self.b.ins().select(better, i, best);
            (a, bi)
        } else {
            (self.combine(combine, dtype, acc, x), best)
        }
    }

    pub(super) fn identity(&mut self, combine: Combine, dtype: DType) -> Value {
        let ty = reg(dtype);
        let float = |b: &mut FunctionBuilder, v: f64| {
            if ty == types::F64 {
                b.ins().f64const(v)
            } else {
                b.ins().f32const(v as f32)
            }
        };
        let unsigned = dtype.is_unsigned_int() || dtype == DType::Bool;
        let (lowest, highest): (i64, i64) = if unsigned {
            (0, -1)
        } else {
            (i64::MIN, i64::MAX)
        };
        let int = |b: &mut FunctionBuilder, v: i64| {
            b.ins()
                .iconst(ty, if ty == types::I8 { v & 0xff } else { v })
        };
        let is_float = ty == types::F32 || ty == types::F64;
        match (combine, is_float) {
            (Combine::Sum, true) => float(&mut self.b, 0.0),
            (Combine::Sum, false) => int(&mut self.b, 0),
            (Combine::Prod, true) => float(&mut self.b, 1.0),
            (Combine::Prod, false) => int(&mut self.b, 1),
            (Combine::Max | Combine::ArgMax { .. }, true) => float(&mut self.b, f64::NEG_INFINITY),
            (Combine::Max | Combine::ArgMax { .. }, false) => int(&mut self.b, lowest),
            (Combine::Min | Combine::ArgMin { .. }, true) => float(&mut self.b, f64::INFINITY),
            (Combine::Min | Combine::ArgMin { .. }, false) => int(&mut self.b, highest),
        }
    }

    /// Whether `e` is a float constant that is not NaN.
    pub(super) fn ordered_const(&self, e: ExprId) -> bool {
        matches!(self.nest.node(e).expr, Expr::Const(Const::Float(bits)) if !f64::from_bits(bits).is_nan())
    }

    /// Max or min that keeps NaN (`lanes_extreme`). Scalars go through the vector
    /// instructions: x86's scalar `fmax` lowering branches on equality and NaN, and equal
    /// operands are common (a max pool over ReLU zeros), so it mispredicts.
    pub(super) fn float_extreme(&mut self, max: bool, x: Value, y: Value) -> Value {
        let ty = self.b.func.dfg.value_type(x);
        let vector = match ty {
            t if t == types::F32 => Some(types::F32X4),
            t if t == types::F64 => Some(types::F64X2),
            _ => None,
        };
        let b = &mut self.b;
        match vector {
            Some(vt) => {
                let (xv, yv) = (b.ins().splat(vt, x), b.ins().splat(vt, y));
                let r = self.lanes_extreme(max, xv, yv, vt, false);
                self.b.ins().extractlane(r, 0)
            }
            None if ty == types::F32X4 || ty == types::F64X2 => {
                self.lanes_extreme(max, x, y, ty, false)
            }
            None if max => b.ins().fmax(x, y),
            None => b.ins().fmin(x, y),
        }
    }

    /// Lane-wise max or min that keeps a NaN from either operand, in three instructions
    /// where Cranelift's `fmax` takes eight: one maxps/minps (which keeps a NaN only from
    /// its second operand, `x` here, matched from the `x < y ? y : x` select) and a blend
    /// for a NaN in `y`, left out when `y_ordered` says `y` is never NaN (a constant).
    /// Unlike `fmax` it does not order -0 below +0; its users (reductions, pooling
    /// windows, activations) give either.
    pub(super) fn lanes_extreme(
        &mut self,
        max: bool,
        x: Value,
        y: Value,
        vt: Type,
        y_ordered: bool,
    ) -> Value {
        let b = &mut self.b;
        let take_y = if max {
            b.ins().fcmp(FloatCC::LessThan, x, y)
        } else {
            b.ins().fcmp(FloatCC::LessThan, y, x)
        };
        let take_y = b.ins().bitcast(vt, MemFlags::new(), take_y);
        let r = b.ins().bitselect(take_y, y, x);
        if y_ordered {
            return r;
        }
        let y_nan = b.ins().fcmp(FloatCC::Unordered, y, y);
        let y_nan = b.ins().bitcast(vt, MemFlags::new(), y_nan);
        b.ins().bitselect(y_nan, y, r)
    }

    pub(super) fn combine(
        &mut self,
        combine: Combine,
        dtype: DType,
        acc: Value,
        x: Value,
    ) -> Value {
        let float = dtype.is_float();
        let unsigned = dtype.is_unsigned_int() || dtype == DType::Bool;
        let b = &mut self.b;
        match (combine, float) {
            (Combine::Sum, true) => b.ins().fadd(acc, x),
            (Combine::Sum, false) => b.ins().iadd(acc, x),
            (Combine::Prod, true) => b.ins().fmul(acc, x),
            (Combine::Prod, false) => b.ins().imul(acc, x),
            (Combine::Max, true) => self.float_extreme(true, acc, x),
            (Combine::Min, true) => self.float_extreme(false, acc, x),
            (Combine::Max, false) if unsigned => b.ins().umax(acc, x),
            (Combine::Max, false) => b.ins().smax(acc, x),
            (Combine::Min, false) if unsigned => b.ins().umin(acc, x),
            (Combine::Min, false) => b.ins().smin(acc, x),
            _ => unreachable!("arg reductions combine through arg_better"),
        }
    }

    /// Whether `x` replaces the current best of an arg reduction.
    pub(super) fn arg_better(
        &mut self,
        combine: Combine,
        dtype: DType,
        x: Value,
        best: Value,
    ) -> Value {
        let unsigned = dtype.is_unsigned_int() || dtype == DType::Bool;
        let (max, last) = match combine {
            Combine::ArgMax { last } => (true, last),
            Combine::ArgMin { last } => (false, last),
            _ => unreachable!("only arg reductions"),
        };
        if dtype.is_float() {
            let cc = match (max, last) {
                (true, false) => FloatCC::GreaterThan,
                (true, true) => FloatCC::GreaterThanOrEqual,
                (false, false) => FloatCC::LessThan,
                (false, true) => FloatCC::LessThanOrEqual,
            };
            self.b.ins().fcmp(cc, x, best)
        } else {
            let cc = match (max, last, unsigned) {
                (true, false, false) => IntCC::SignedGreaterThan,
                (true, true, false) => IntCC::SignedGreaterThanOrEqual,
                (false, false, false) => IntCC::SignedLessThan,
                (false, true, false) => IntCC::SignedLessThanOrEqual,
                (true, false, true) => IntCC::UnsignedGreaterThan,
                (true, true, true) => IntCC::UnsignedGreaterThanOrEqual,
                (false, false, true) => IntCC::UnsignedLessThan,
                (false, true, true) => IntCC::UnsignedLessThanOrEqual,
            };
            self.b.ins().icmp(cc, x, best)
        }
    }
}
