//! The f32x4 inner loops: which loop nests vectorize (the lane rules) and the emission of
//! their expressions four lanes at a time, contiguous and gathered loads included.

use super::*;

/// Whether the inner loop of `nest` can run four output elements at a time: every
/// expression that varies with the inner variable (in the inner scope or in the bodies of
/// reductions there) has a four-lane form (f32 arithmetic, loads affine in the inner
/// variable, f32 sum/product/max/min reductions, index arithmetic feeding loads), and
/// stores are contiguous f32.
pub(super) fn vectorizable(
    nest: &LoopNest,
    live: &[bool],
    users: &[Vec<ExprId>],
    place: &[Scope],
    varies: &[bool],
    inner_scopes: &HashSet<Scope>,
    ranges: &[Option<(i64, i64)>],
) -> bool {
    if nest.inner_extent() < LANES as usize && nest.domain.len() >= 2 {
        return false;
    }
    let mut coef = HashMap::new();
    let inner = |e: ExprId| place[e as usize] == Scope::Inner;
    for s in &nest.stores {
        if !inner(s.value) && !inner(s.index) {
            continue;
        }
        if nest.node(s.value).dtype != DType::F32
            || axis_coef(nest, s.index, Axis::Inner, &mut coef) != Some(1)
        {
            return false;
        }
    }
    let in_set = |e: usize| inner_scopes.contains(&place[e]) && varies[e];
    let rules = LaneRules {
        axis: Axis::Inner,
        strided_loads: true,
        reductions: true,
        compare_ranges: Some(ranges),
    };
    lanes_fit(nest, live, users, &in_set, &rules)
}

/// What one set of expressions may use beyond the common four-lane forms.
pub(super) struct LaneRules<'a> {
    /// The variable the lanes run along.
    pub(super) axis: Axis,
    /// Loads may step by any constant along the axis (gathered), not only by one.
    pub(super) strided_loads: bool,
    /// f32 sum/product/max/min reductions may appear (one accumulator per lane).
    pub(super) reductions: bool,
    /// Value ranges that let i64 comparisons run in i32 lanes; none: no such compares.
    pub(super) compare_ranges: Option<&'a [Option<(i64, i64)>]>,
}

/// Whether every live expression `in_set` takes has a four-lane form along the rules'
/// axis: f32 arithmetic, loads affine in the axis, and index arithmetic that only feeds
/// loads, stores and lane comparisons.
pub(super) fn lanes_fit(
    nest: &LoopNest,
    live: &[bool],
    users: &[Vec<ExprId>],
    in_set: &dyn Fn(usize) -> bool,
    rules: &LaneRules,
) -> bool {
    let mut coef = HashMap::new();
    // An i64 comparison runs in i32 lanes when both sides are affine in the axis and fit
    // in i32 (the bounds checks of padded windows).
    let mut compare_coef = HashMap::new();
    let mut lane_compare = |a: ExprId, b: ExprId| {
        rules.compare_ranges.is_some_and(|ranges| {
            [a, b].iter().all(|&x| {
                axis_coef(nest, x, rules.axis, &mut compare_coef).is_some()
                    && ranges[x as usize].is_some_and(|(lo, hi)| {
                        lo >= i32::MIN as i64 / 2 && hi <= i32::MAX as i64 / 2
                    })
            })
        })
    };
    let mut index_only = vec![false; nest.nodes.len()];
    for e in (0..nest.nodes.len()).rev() {
        let id = e as ExprId;
        if !live[e] || !in_set(e) {
            continue;
        }
        let node = nest.node(id);
        let ok = match (node.dtype, node.expr) {
            (DType::I64, Expr::Reduce { .. } | Expr::Load { .. }) => false,
            (DType::I64, _) => {
                let only = users[e].iter().all(|&u| match nest.node(u).expr {
                    Expr::Load { index, .. } => index == id && nest.node(u).dtype == DType::F32,
                    Expr::Binary(op, a, b) if op.is_comparison() => lane_compare(a, b),
                    _ => index_only[u as usize],
                });
                let is_store_index = nest.stores.iter().any(|s| s.index == id);
                let used_as_data = nest.stores.iter().any(|s| s.value == id);
                index_only[e] = (only || is_store_index) && !used_as_data;
                index_only[e]
            }
            (DType::F32, Expr::Load { index, .. }) => {
                match axis_coef(nest, index, rules.axis, &mut coef) {
                    Some(1) => true,
                    Some(_) => rules.strided_loads,
                    None => false,
                }
            }
            (DType::F32, Expr::Reduce { combine, .. }) if rules.reductions => matches!(
                combine,
                Combine::Sum | Combine::Prod | Combine::Max | Combine::Min
            ),
            _ => lane_value(nest, node, &mut lane_compare),
        };
        if !ok {
            return false;
        }
    }
    true
}

/// Whether a value expression has a four-lane form: f32 arithmetic and selects, compares
/// of f32 (or of integers where `int_compare` allows), and boolean and/or.
pub(super) fn lane_value(
    nest: &LoopNest,
    node: &smelt_fuse::kernel::Node,
    int_compare: &mut dyn FnMut(ExprId, ExprId) -> bool,
) -> bool {
    match (node.dtype, node.expr) {
        (DType::F32, Expr::Unary(op, _)) => lane_unary(op),
        (DType::F32, Expr::Binary(op, _, _)) => {
            lane_binary(op) || pow_exponent(nest, node).is_some()
        }
        (DType::F32, Expr::Select(..)) => true,
        (DType::Bool, Expr::Binary(op, a, b)) if op.is_comparison() => {
            nest.node(a).dtype == DType::F32
                || (nest.node(a).dtype == DType::I64 && int_compare(a, b))
        }
        (DType::Bool, Expr::Binary(BinaryOp::And | BinaryOp::Or, a, b)) => {
            nest.node(a).dtype == DType::Bool && nest.node(b).dtype == DType::Bool
        }
        _ => false,
    }
}

pub(super) fn lane_unary(op: UnaryOp) -> bool {
    matches!(
        op,
        UnaryOp::Neg
            | UnaryOp::Abs
            | UnaryOp::Exp
            | UnaryOp::Log
            | UnaryOp::Sqrt
            | UnaryOp::Reciprocal
            | UnaryOp::Tanh
            | UnaryOp::Sigmoid
            | UnaryOp::Erf
            | UnaryOp::Floor
            | UnaryOp::Ceil
            | UnaryOp::Round
    )
}

/// The finite f32 constant exponent of a `pow`, which then runs as `Math::pow_const`.
pub(super) fn pow_exponent(nest: &LoopNest, node: &smelt_fuse::kernel::Node) -> Option<f32> {
    let Expr::Binary(BinaryOp::Pow, _, c) = node.expr else {
        return None;
    };
    let Expr::Const(Const::Float(bits)) = nest.node(c).expr else {
        return None;
    };
    let v = f64::from_bits(bits) as f32;
    (node.dtype == DType::F32 && nest.node(c).dtype == DType::F32 && v.is_finite()).then_some(v)
}

pub(super) fn lane_binary(op: BinaryOp) -> bool {
    matches!(
        op,
        BinaryOp::Add
            | BinaryOp::Sub
            | BinaryOp::Mul
            | BinaryOp::Div
            | BinaryOp::Max
            | BinaryOp::Min
    )
}

/// Whether the reduction `e` can accumulate four f32 lanes at a time along its variable:
/// an f32 sum, product, max or min whose body vectorizes and holds no nested reduction.
pub(super) fn reduction_vectorizes(
    nest: &LoopNest,
    live: &[bool],
    users: &[Vec<ExprId>],
    place: &[Scope],
    stores_at: &HashMap<Scope, Vec<usize>>,
    e: ExprId,
) -> bool {
    let Expr::Reduce {
        combine,
        extent,
        var,
        body,
    } = nest.node(e).expr
    else {
        return false;
    };
    let scope = Scope::Reduce(var);
    let nested = place
        .iter()
        .enumerate()
        .any(|(i, &s)| s == scope && live[i] && matches!(nest.nodes[i].expr, Expr::Reduce { .. }));
    extent >= 2 * LANES as u64
        && matches!(
            combine,
            Combine::Sum | Combine::Prod | Combine::Max | Combine::Min
        )
        && nest.node(body).dtype == DType::F32
        && !nested
        && !stores_at.contains_key(&scope)
        && lanes_fit(
            nest,
            live,
            users,
            &|i| place[i] == scope,
            &LaneRules {
                axis: Axis::Reduction(var),
                strided_loads: false,
                reductions: false,
                compare_ranges: None,
            },
        )
}

impl<M: Module> Gen<'_, '_, M> {
    pub(super) fn emit_vector(&mut self, e: ExprId) -> Result<Value, CpuError> {
        let node = *self.nest.node(e);
        let m = Math {
            ty: types::F32X4,
            fma: self.fma,
        };
        Ok(match node.expr {
            Expr::Load { param, index } => {
                let base = self.scalar(index);
                let in_bounds = self.in_bounds(param, index);
                // Along a reduction variable loads are contiguous (`reduction_vectorizes`);
                // along the inner one they may step by any constant.
                let step = if self.inner_lanes && self.lanes_scope.is_none() {
                    self.inner_coefs.get(&index).copied().flatten().unwrap_or(1)
                } else {
                    1
                };
                if step == 1 {
                    self.vector_load(param, base, in_bounds)?
                } else {
                    self.gather(param, base, step, in_bounds)?
                }
            }
            Expr::Unary(op, a) => {
                let x = self.lanes(a);
                let b = &mut self.b;
                match op {
                    UnaryOp::Neg => b.ins().fneg(x),
                    UnaryOp::Abs => b.ins().fabs(x),
                    UnaryOp::Sqrt => b.ins().sqrt(x),
                    UnaryOp::Floor => b.ins().floor(x),
                    UnaryOp::Ceil => b.ins().ceil(x),
                    UnaryOp::Round => b.ins().nearest(x),
                    UnaryOp::Reciprocal => {
                        let one = m.f(b, 1.0);
                        b.ins().fdiv(one, x)
                    }
                    UnaryOp::Exp => m.exp(b, x),
                    UnaryOp::Log => m.log(b, x),
                    UnaryOp::Tanh => m.tanh(b, x),
                    UnaryOp::Sigmoid => m.sigmoid(b, x),
                    UnaryOp::Erf => m.erf(b, x),
                    _ => unreachable!("vectorizable() admits these unary ops only"),
                }
            }
            Expr::Binary(op, a, c)
                if op.is_comparison() && self.nest.node(a).dtype == DType::I64 =>
            {
                let (x, y) = (self.int_lanes(a), self.int_lanes(c));
                let unsigned = false;
                self.b.ins().icmp(int_cc(op, unsigned), x, y)
            }
            Expr::Binary(BinaryOp::Pow, a, _) if pow_exponent(self.nest, &node).is_some() => {
                let c = pow_exponent(self.nest, &node).expect("checked by the guard");
                let x = self.lanes(a);
                m.pow_const(&mut self.b, x, c)
            }
            Expr::Binary(op @ (BinaryOp::Max | BinaryOp::Min), a, c)
                if self.ordered_const(a) || self.ordered_const(c) =>
            {
                // Against a number that is never NaN, max and min are one maxps / minps.
                let (v, k) = if self.ordered_const(c) {
                    (a, c)
                } else {
                    (c, a)
                };
                let (v, k) = (self.lanes(v), self.lanes(k));
                self.lanes_extreme(op == BinaryOp::Max, v, k, types::F32X4, true)
            }
            Expr::Binary(op, a, c) => {
                let (x, y) = (self.lanes(a), self.lanes(c));
                let b = &mut self.b;
                match op {
                    BinaryOp::Add => b.ins().fadd(x, y),
                    BinaryOp::Sub => b.ins().fsub(x, y),
                    BinaryOp::Mul => b.ins().fmul(x, y),
                    BinaryOp::Div => match self.reciprocals.get(&c) {
                        // x * (1 / y), within an ulp or two of x / y.
                        Some(&r) => {
                            let r = b.ins().splat(types::F32X4, r);
                            b.ins().fmul(x, r)
                        }
                        None => b.ins().fdiv(x, y),
                    },
                    BinaryOp::Max => b.ins().fmax(x, y),
                    BinaryOp::Min => b.ins().fmin(x, y),
                    BinaryOp::And => b.ins().band(x, y),
                    BinaryOp::Or => b.ins().bor(x, y),
                    cmp => b.ins().fcmp(float_cc(cmp), x, y),
                }
            }
            Expr::Select(c, a, d) => {
                let (x, y) = (self.lanes(a), self.lanes(d));
                match self.get(c) {
                    Val::S(s) => self.b.ins().select(s, x, y),
                    Val::V(mask) => {
                        let mask = self.b.ins().bitcast(
                            types::F32X4,
                            MemFlags::new()
                                .with_endianness(cranelift_codegen::ir::Endianness::Little),
                            mask,
                        );
                        self.b.ins().bitselect(mask, x, y)
                    }
                }
            }
            _ => unreachable!("vectorizable() admits no other expressions"),
        })
    }

    /// An affine i64 index expression as i32 lanes: its lane-0 value plus `k * coefficient`
    /// (`vectorizable` checked that it is affine in the inner variable and fits in i32).
    pub(super) fn int_lanes(&mut self, e: ExprId) -> Value {
        let lane0 = self.scalar(e);
        let coef = self.inner_coefs.get(&e).copied().flatten().unwrap_or(0);
        let narrow = self.b.ins().ireduce(types::I32, lane0);
        let base = self.b.ins().splat(types::I32X4, narrow);
        if coef == 0 {
            return base;
        }
        let zero = self.b.ins().iconst(types::I32, 0);
        let mut steps = self.b.ins().splat(types::I32X4, zero);
        for lane in 1..LANES {
            let v = self.b.ins().iconst(types::I32, lane * coef);
            steps = self.b.ins().insertlane(steps, v, lane as u8);
        }
        self.b.ins().iadd(base, steps)
    }

    /// Four f32 at `base + k * step`: lane by lane, each clamped unless in bounds.
    pub(super) fn gather(
        &mut self,
        param: u32,
        base: Value,
        step: i64,
        in_bounds: bool,
    ) -> Result<Value, CpuError> {
        if step == 2 {
            return self.even_lanes(param, base, in_bounds);
        }
        self.lane_loads(param, base, step, in_bounds)
    }

    /// Four f32 loaded one by one, `step` apart from `base`.
    pub(super) fn lane_loads(
        &mut self,
        param: u32,
        base: Value,
        step: i64,
        in_bounds: bool,
    ) -> Result<Value, CpuError> {
        let zero = self.b.ins().f32const(0.0);
        let mut acc = self.b.ins().splat(types::F32X4, zero);
        for lane in 0..LANES {
            let idx = self.b.ins().iadd_imm(base, lane * step);
            let x = self.load_scalar(param, idx, in_bounds)?;
            acc = self.b.ins().insertlane(acc, x, lane as u8);
        }
        Ok(acc)
    }

    /// Branches on whether elements `base..base + span` of `param` lie in its buffer and
    /// continues in the block where they do; returns the block where they do not, and the
    /// join block with its f32x4 parameter (both paths jump there with their lanes).
    pub(super) fn when_inside(
        &mut self,
        param: u32,
        base: Value,
        span: i64,
    ) -> (Block, Block, Value) {
        let len = self.kernel.params[param as usize].len() as i64;
        let (fast, slow, join) = (
            self.b.create_block(),
            self.b.create_block(),
            self.b.create_block(),
        );
        let out = self.b.append_block_param(join, types::F32X4);
        let ge0 = self
            .b
            .ins()
            .icmp_imm(IntCC::SignedGreaterThanOrEqual, base, 0);
        let fits = self
            .b
            .ins()
            .icmp_imm(IntCC::SignedLessThanOrEqual, base, len - span);
        let ok = self.b.ins().band(ge0, fits);
        self.b.ins().brif(ok, fast, &[], slow, &[]);
        self.b.switch_to_block(fast);
        (slow, join, out)
    }

    /// The elements at `base, base + 2, base + 4, base + 6` (a stride-2 window walk): two
    /// vector loads, of `base..base + 4` and `base + 3..base + 7`, and one shuffle of lanes
    /// 0 and 2 of the first with lanes 1 and 3 of the second. They read no element past
    /// the last lane's, so lanes known in bounds need no check; otherwise lane by lane
    /// where the span leaves the buffer.
    pub(super) fn even_lanes(
        &mut self,
        param: u32,
        base: Value,
        in_bounds: bool,
    ) -> Result<Value, CpuError> {
        let ptr = self.params[param as usize];
        let span = 2 * LANES - 1;
        let edge = (!in_bounds).then(|| self.when_inside(param, base, span));
        let scaled = self.b.ins().imul_imm(base, 4);
        let addr = self.b.ins().iadd(ptr, scaled);
        let little = MemFlags::new().with_endianness(cranelift_codegen::ir::Endianness::Little);
        let low = self.b.ins().load(types::F32X4, mem(), addr, 0);
        let high = self.b.ins().load(types::F32X4, mem(), addr, 12);
        let low = self.b.ins().bitcast(types::I8X16, little, low);
        let high = self.b.ins().bitcast(types::I8X16, little, high);
        // Bytes of lanes 0 and 2 of the first operand, then of lanes 1 and 3 of the second
        // (whose bytes are 16..31).
        let picks: [u8; 16] = [0, 1, 2, 3, 8, 9, 10, 11, 20, 21, 22, 23, 28, 29, 30, 31];
        let mask = self
            .b
            .func
            .dfg
            .immediates
            .push(cranelift_codegen::ir::ConstantData::from(picks.as_ref()));
        let v = self.b.ins().shuffle(low, high, mask);
        let v = self.b.ins().bitcast(types::F32X4, little, v);
        let Some((slow, join, out)) = edge else {
            return Ok(v);
        };
        self.b.ins().jump(join, &[v.into()]);
        self.b.switch_to_block(slow);
        let v = self.lane_loads(param, base, 2, in_bounds)?;
        self.b.ins().jump(join, &[v.into()]);
        self.b.switch_to_block(join);
        Ok(out)
    }

    /// Four contiguous f32 from `base`, falling back to clamped lane loads at the edges.
    pub(super) fn vector_load(
        &mut self,
        param: u32,
        base: Value,
        in_bounds: bool,
    ) -> Result<Value, CpuError> {
        let ptr = self.params[param as usize];
        if in_bounds {
            // Every lane is the index at some point of the domain, inside the range.
            let scaled = self.b.ins().imul_imm(base, 4);
            let addr = self.b.ins().iadd(ptr, scaled);
            return Ok(self.b.ins().load(types::F32X4, mem(), addr, 0));
        }
        let (slow, join, out) = self.when_inside(param, base, LANES);
        let scaled = self.b.ins().imul_imm(base, 4);
        let addr = self.b.ins().iadd(ptr, scaled);
        let v = self.b.ins().load(types::F32X4, mem(), addr, 0);
        self.b.ins().jump(join, &[v.into()]);
        self.b.switch_to_block(slow);
        let acc = self.lane_loads(param, base, 1, false)?;
        self.b.ins().jump(join, &[acc.into()]);
        self.b.switch_to_block(join);
        Ok(out)
    }
}
