//! Lowers the groups of a fusion plan to Kernel IR.
//!
//! Every group output is computed by asking for the value "at" a coordinate vector of
//! expressions: an op inside the group turns that into requests for its operands at
//! mapped coordinates (broadcast, transpose, slice, gather ...), a reduction binds a fresh
//! variable, and a value from outside the group becomes a load of a buffer parameter.
//! Requests are memoized and expressions hash-consed, so a value used twice at the same
//! coordinates is computed once.

use crate::kernel::{
    Body, Combine, Const, Contraction, Expr, ExprId, Kernel, KernelError, LoopNest, Node, Param,
    Role, Store, contiguous_strides,
};
use crate::plan::{FusionPlan, Group, GroupKind};
use smelt_ir::{
    ArgKind, BinaryOp, DType, Graph, Op, PadMode, PoolKind, ReduceKind, ScatterReduction, ValueId,
    slice_bounds,
};
use std::collections::HashMap;

/// A kernel with the graph value each parameter holds.
#[derive(Debug, Clone, PartialEq)]
pub struct LoweredKernel {
    pub kernel: Kernel,
    pub args: Vec<ValueId>,
}

/// Largest loop body (in expressions) a kernel may have; a fused group beyond it is
/// lowered node by node instead.
const MAX_NODES: usize = 50_000;

/// Which back end the kernels are for: what the runtime runs as calls differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LowerTarget {
    /// MatMul, Conv and 2-D f32 pooling become calls of the runtime's CPU kernels.
    #[default]
    Cpu,
    /// Every group becomes a loop nest (a convolution one reduction per output element),
    /// which the GPU back end runs one thread per element.
    Gpu,
}

/// Lowers every group of `plan` (over a graph whose shapes are all fixed) for the CPU.
pub fn lower(g: &Graph, plan: &FusionPlan) -> Result<Vec<LoweredKernel>, KernelError> {
    lower_for(g, plan, LowerTarget::Cpu)
}

/// Lowers every group of `plan` for `target`.
pub fn lower_for(
    g: &Graph,
    plan: &FusionPlan,
    target: LowerTarget,
) -> Result<Vec<LoweredKernel>, KernelError> {
    let producer = g.producers();
    let mut out = Vec::new();
    for (gi, grp) in plan.groups.iter().enumerate() {
        if grp.kind == GroupKind::View {
            continue;
        }
        let kernels = match lower_group(g, &producer, gi, grp, target) {
            Err(KernelError::TooLarge { .. }) if grp.nodes.len() > 1 => {
                // Values read at many different coordinates multiply the fused
                // expression; unfused, each node is its own kernel and stays small.
                let mut all = Vec::new();
                for (j, &n) in grp.nodes.iter().enumerate() {
                    let node = &g.nodes[n];
                    let single = Group {
                        kind: if crate::classify(g, node) == crate::OpClass::Contraction {
                            GroupKind::Contraction
                        } else {
                            GroupKind::Loop
                        },
                        nodes: vec![n],
                        inputs: node.inputs.clone(),
                        outputs: node.outputs.clone(),
                    };
                    for mut k in lower_group(g, &producer, gi, &single, target)? {
                        k.kernel.name = format!("{}_{j}", k.kernel.name);
                        all.push(k);
                    }
                }
                all
            }
            other => other?,
        };
        for mut k in kernels {
            match &mut k.kernel.body {
                Body::Loop(nest) => nest.collapse_inner_axes(),
                Body::Contraction {
                    epilogue: Some(nest),
                    ..
                } => nest.collapse_inner_axes(),
                Body::Contraction { epilogue: None, .. } => {}
            }
            k.kernel.fold_relu_epilogue();
            k.kernel.verify()?;
            out.push(k);
        }
    }
    Ok(out)
}

fn fixed(g: &Graph, v: ValueId) -> Result<Vec<usize>, KernelError> {
    g.ty(v).fixed_shape().ok_or_else(|| KernelError::Invalid {
        kernel: g.value(v).name.clone(),
        reason: format!("shape {} is not fixed", g.ty(v)),
    })
}

/// Whether the runtime's microkernels run this contraction node.
fn runtime_contraction(g: &Graph, node: &smelt_ir::Node) -> bool {
    let dtype = g.ty(node.outputs[0]).dtype;
    matches!(dtype, DType::F32 | DType::F64)
        && matches!(node.op, Op::MatMul { .. } | Op::Conv { .. })
}

/// Pooling the runtime's kernel runs: f32, two spatial axes of an NCHW tensor, no
/// dilation.
fn runtime_pool(g: &Graph, node: &smelt_ir::Node) -> bool {
    let Op::Pool { dilations, .. } = &node.op else {
        return false;
    };
    g.ty(node.outputs[0]).dtype == DType::F32
        && g.ty(node.inputs[0]).rank() == 4
        && dilations.iter().all(|&d| d == 1)
}

/// A pooling group: one call of the runtime's pooling kernel.
fn lower_pool(
    g: &Graph,
    producer: &[Option<usize>],
    name: &str,
    grp: &Group,
) -> Result<LoweredKernel, KernelError> {
    let node = &g.nodes[grp.nodes[0]];
    let Op::Pool {
        kind,
        kernel,
        strides,
        pads,
        ..
    } = &node.op
    else {
        unreachable!("runtime_pool admits only Pool")
    };
    let mut b = Builder::new(g, producer, grp, name);
    b.in_group[grp.nodes[0]] = false;
    let out = b.param(node.outputs[0], Role::Output)?;
    let x = b.param(node.inputs[0], Role::Input)?;
    let call = Contraction::Pool {
        x,
        kind: *kind,
        kernel: kernel.clone(),
        strides: strides.clone(),
        pads: pads.clone(),
    };
    Ok(b.finish(Some((call, out))))
}

fn lower_group(
    g: &Graph,
    producer: &[Option<usize>],
    gi: usize,
    grp: &Group,
    target: LowerTarget,
) -> Result<Vec<LoweredKernel>, KernelError> {
    let first = &g.nodes[grp.nodes[0]];
    let base = format!("k{gi}_{}", first.op.mnemonic());
    let calls = target == LowerTarget::Cpu;
    if calls && grp.kind == GroupKind::Contraction && runtime_contraction(g, first) {
        return lower_contraction(g, producer, &base, grp).map(|k| vec![k]);
    }
    if calls && grp.kind == GroupKind::Opaque && runtime_pool(g, first) {
        return lower_pool(g, producer, &base, grp).map(|k| vec![k]);
    }
    // One kernel per distinct output shape: each iterates its own domain.
    let mut by_shape: Vec<(Vec<usize>, Vec<ValueId>)> = Vec::new();
    for &o in &grp.outputs {
        let shape = fixed(g, o)?;
        match by_shape.iter_mut().find(|(s, _)| *s == shape) {
            Some((_, vs)) => vs.push(o),
            None => by_shape.push((shape, vec![o])),
        }
    }
    let linear = grp.nodes.iter().all(|&n| {
        let node = &g.nodes[n];
        matches!(node.op, Op::Reshape { .. }) || is_same_shape_elementwise(g, node)
    });
    let mut kernels = Vec::new();
    for (i, (shape, outs)) in by_shape.into_iter().enumerate() {
        let name = if i == 0 {
            base.clone()
        } else {
            format!("{base}_{i}")
        };
        let mut b = Builder::new(g, producer, grp, &name);
        let domain = if linear {
            vec![shape.iter().product::<usize>()]
        } else if shape.is_empty() {
            vec![1]
        } else {
            shape.clone()
        };
        b.nest.domain = domain;
        for o in outs {
            let p = b.param(o, Role::Output)?;
            if linear {
                let lin = b.var(0);
                let value = b.at_linear(o, lin)?;
                b.nest.stores.push(Store {
                    param: p,
                    index: lin,
                    value,
                });
            } else {
                let coords: Vec<ExprId> = (0..shape.len()).map(|k| b.var(k as u32)).collect();
                let value = b.at(o, &coords)?;
                let index = b.flatten(&coords, &shape);
                b.nest.stores.push(Store {
                    param: p,
                    index,
                    value,
                });
            }
        }
        kernels.push(b.finish(None));
    }
    Ok(kernels)
}

fn is_same_shape_elementwise(g: &Graph, node: &smelt_ir::Node) -> bool {
    matches!(
        node.op,
        Op::Unary(_) | Op::Binary(_) | Op::Select | Op::Cast { .. }
    ) && node
        .inputs
        .iter()
        .all(|&i| g.ty(i).shape == g.ty(node.outputs[0]).shape)
}

fn lower_contraction(
    g: &Graph,
    producer: &[Option<usize>],
    name: &str,
    grp: &Group,
) -> Result<LoweredKernel, KernelError> {
    let node = &g.nodes[grp.nodes[0]];
    let cv = node.outputs[0];
    let shape = fixed(g, cv)?;
    let mut b = Builder::new(g, producer, grp, name);
    // The epilogue reads the contraction's result from its buffer.
    b.in_group[grp.nodes[0]] = false;
    let in_place = grp.nodes.len() > 1
        && grp.outputs.len() == 1
        && grp.outputs[0] != cv
        && g.ty(grp.outputs[0]).dtype == g.ty(cv).dtype;
    let out = if in_place {
        // The epilogue rewrites the contraction's result into the group's only output.
        let p = b.param(grp.outputs[0], Role::Output)?;
        b.param_of.insert(cv, p);
        p
    } else {
        b.param(cv, Role::Output)?
    };
    let a = b.param(node.inputs[0], Role::Input)?;
    let w = b.param(node.inputs[1], Role::Input)?;
    let bias = match node.inputs.get(2) {
        Some(&v) => Some(b.param(v, Role::Input)?),
        None => None,
    };
    let call = match &node.op {
        Op::MatMul { trans_a, trans_b } => Contraction::MatMul {
            a,
            b: w,
            bias,
            trans_a: *trans_a,
            trans_b: *trans_b,
        },
        Op::Conv {
            strides,
            pads,
            dilations,
            group,
        } => Contraction::Conv {
            x: a,
            w,
            bias,
            strides: strides.clone(),
            pads: pads.clone(),
            dilations: dilations.clone(),
            group: *group,
            relu: false,
        },
        _ => unreachable!("runtime_contraction admits only MatMul and Conv"),
    };
    let epilogue = if grp.nodes.len() > 1 {
        b.nest.domain = if shape.is_empty() {
            vec![1]
        } else {
            shape.clone()
        };
        let coords: Vec<ExprId> = (0..shape.len()).map(|k| b.var(k as u32)).collect();
        let index = b.flatten(&coords, &shape);
        for &o in grp.outputs.iter().filter(|&&o| o != cv) {
            let p = if in_place {
                out
            } else {
                b.param(o, Role::Output)?
            };
            let value = b.at(o, &coords)?;
            b.nest.stores.push(Store {
                param: p,
                index,
                value,
            });
        }
        Some(std::mem::take(&mut b.nest))
    } else {
        None
    };
    let mut k = b.finish(Some((call, out)));
    if let Body::Contraction { epilogue: e, .. } = &mut k.kernel.body {
        *e = epilogue;
    }
    Ok(k)
}

struct Builder<'g> {
    g: &'g Graph,
    producer: &'g [Option<usize>],
    in_group: Vec<bool>,
    name: String,
    params: Vec<Param>,
    args: Vec<ValueId>,
    param_of: HashMap<ValueId, u32>,
    nest: LoopNest,
    dedup: HashMap<Node, ExprId>,
    /// Known value range of each i64 expression (for simplifying index arithmetic).
    range: Vec<Option<(i64, i64)>>,
    memo: HashMap<(ValueId, Vec<ExprId>), ExprId>,
    next_var: u32,
}

impl<'g> Builder<'g> {
    fn new(g: &'g Graph, producer: &'g [Option<usize>], grp: &Group, name: &str) -> Self {
        let mut in_group = vec![false; g.nodes.len()];
        for &n in &grp.nodes {
            in_group[n] = true;
        }
        Builder {
            g,
            producer,
            in_group,
            name: name.to_string(),
            params: vec![],
            args: vec![],
            param_of: HashMap::new(),
            nest: LoopNest::default(),
            dedup: HashMap::new(),
            range: vec![],
            memo: HashMap::new(),
            next_var: 0,
        }
    }

    fn finish(self, call: Option<(Contraction, u32)>) -> LoweredKernel {
        let body = match call {
            Some((call, out)) => Body::Contraction {
                call,
                out,
                epilogue: None,
            },
            None => Body::Loop(self.nest),
        };
        LoweredKernel {
            kernel: Kernel {
                name: self.name,
                params: self.params,
                body,
            },
            args: self.args,
        }
    }

    fn unsupported(&self, v: ValueId, reason: impl Into<String>) -> KernelError {
        let node = self.producer[v.index()].map(|n| &self.g.nodes[n]);
        KernelError::Unsupported {
            node: node.map_or_else(|| self.g.value(v).name.clone(), |n| n.name.clone()),
            op: node.map_or("input", |n| n.op.mnemonic()).to_string(),
            reason: reason.into(),
        }
    }

    fn param(&mut self, v: ValueId, role: Role) -> Result<u32, KernelError> {
        if let Some(&p) = self.param_of.get(&v) {
            return Ok(p);
        }
        let p = self.params.len() as u32;
        self.params.push(Param {
            value: self.g.value(v).name.clone(),
            dtype: self.g.ty(v).dtype,
            shape: fixed(self.g, v)?,
            role,
        });
        self.args.push(v);
        self.param_of.insert(v, p);
        Ok(p)
    }

    // ---- expression construction with simplification ----

    fn add(&mut self, expr: Expr, dtype: DType) -> ExprId {
        if let Some(e) = self.simplify(expr, dtype) {
            return e;
        }
        let node = Node { expr, dtype };
        if let Some(&e) = self.dedup.get(&node) {
            return e;
        }
        let id = self.nest.nodes.len() as ExprId;
        let r = if dtype == DType::I64 {
            self.range_of(expr)
        } else {
            None
        };
        self.nest.nodes.push(node);
        self.range.push(r);
        if !matches!(expr, Expr::Reduce { .. }) {
            self.dedup.insert(node, id);
        }
        id
    }

    fn const_of(&self, e: ExprId) -> Option<i64> {
        match self.nest.nodes[e as usize].expr {
            Expr::Const(Const::Int(v)) if self.nest.nodes[e as usize].dtype == DType::I64 => {
                Some(v)
            }
            _ => None,
        }
    }

    fn range_of(&self, expr: Expr) -> Option<(i64, i64)> {
        crate::kernel::int_range(expr, &self.nest.domain, |e| self.range[e as usize])
    }

    /// A bool constant's value.
    fn bool_of(&self, e: ExprId) -> Option<bool> {
        match self.nest.nodes[e as usize] {
            Node {
                expr: Expr::Const(Const::Int(v)),
                dtype: DType::Bool,
            } => Some(v != 0),
            _ => None,
        }
    }

    /// Comparisons decided by the operands' ranges (bounds checks of windows that never
    /// leave the input), and `and`/`or` with a decided operand.
    fn simplify_bool(&mut self, op: BinaryOp, a: ExprId, b: ExprId) -> Option<ExprId> {
        let known = |g: &mut Self, v: bool| g.add(Expr::Const(Const::Int(v.into())), DType::Bool);
        match op {
            BinaryOp::And | BinaryOp::Or => {
                let and = op == BinaryOp::And;
                match (self.bool_of(a), self.bool_of(b)) {
                    (Some(x), _) if x == and => Some(b),
                    (_, Some(y)) if y == and => Some(a),
                    (Some(_), _) | (_, Some(_)) => Some(known(self, !and)),
                    _ => None,
                }
            }
            _ if op.is_comparison() && self.nest.nodes[a as usize].dtype == DType::I64 => {
                let ((a0, a1), (b0, b1)) = (self.range[a as usize]?, self.range[b as usize]?);
                let v = match op {
                    BinaryOp::Less if a1 < b0 => true,
                    BinaryOp::Less if a0 >= b1 => false,
                    BinaryOp::LessEqual if a1 <= b0 => true,
                    BinaryOp::LessEqual if a0 > b1 => false,
                    BinaryOp::Greater if a0 > b1 => true,
                    BinaryOp::Greater if a1 <= b0 => false,
                    BinaryOp::GreaterEqual if a0 >= b1 => true,
                    BinaryOp::GreaterEqual if a1 < b0 => false,
                    _ => return None,
                };
                Some(known(self, v))
            }
            _ => None,
        }
    }

    fn simplify(&mut self, expr: Expr, dtype: DType) -> Option<ExprId> {
        if dtype == DType::Bool
            && let Expr::Binary(op, a, b) = expr
        {
            return self.simplify_bool(op, a, b);
        }
        if let Expr::Select(c, a, b) = expr {
            return self.bool_of(c).map(|v| if v { a } else { b });
        }
        if dtype != DType::I64 {
            return None;
        }
        let Expr::Binary(op, a, b) = expr else {
            return None;
        };
        let (ca, cb) = (self.const_of(a), self.const_of(b));
        if let (Some(x), Some(y)) = (ca, cb) {
            let v = match op {
                BinaryOp::Add => x.wrapping_add(y),
                BinaryOp::Sub => x.wrapping_sub(y),
                BinaryOp::Mul => x.wrapping_mul(y),
                BinaryOp::Div if y != 0 => x.wrapping_div(y),
                BinaryOp::Rem if y != 0 => x.wrapping_rem(y),
                _ => return None,
            };
            return Some(self.int(v));
        }
        if op == BinaryOp::Add
            && let Some(e) = self.recombine(a, b).or_else(|| self.recombine(b, a))
        {
            return Some(e);
        }
        let ra = self.range[a as usize];
        match (op, ca, cb) {
            (BinaryOp::Add, Some(0), _) => Some(b),
            (BinaryOp::Add | BinaryOp::Sub, _, Some(0)) => Some(a),
            (BinaryOp::Mul, Some(1), _) => Some(b),
            (BinaryOp::Mul | BinaryOp::Div, _, Some(1)) => Some(a),
            (BinaryOp::Mul, Some(0), _) | (BinaryOp::Mul, _, Some(0)) => Some(self.int(0)),
            (BinaryOp::Div, _, Some(c))
                if c > 0 && ra.is_some_and(|(lo, hi)| lo >= 0 && hi < c) =>
            {
                Some(self.int(0))
            }
            (BinaryOp::Rem, _, Some(c))
                if c > 0 && ra.is_some_and(|(lo, hi)| lo >= 0 && hi < c) =>
            {
                Some(a)
            }
            (BinaryOp::Div | BinaryOp::Rem, _, Some(c)) if c > 0 => {
                self.split_div_rem(op == BinaryOp::Div, a, c)
            }
            // Clamps the operand's range already satisfies.
            (BinaryOp::Max, _, Some(c)) if ra.is_some_and(|(lo, _)| lo >= c) => Some(a),
            (BinaryOp::Min, _, Some(c)) if ra.is_some_and(|(_, hi)| hi <= c) => Some(a),
            _ => None,
        }
    }

    /// `p + q` as `x` (or `s + x`) when `q` is `x % c` and `p` is `(x / c) * c` (or a sum
    /// holding it): a flattened reduction variable split into coordinates and linearized
    /// again, as in a reduction over the trailing axes of a contiguous tensor. Exact for
    /// every `x` under truncated division with a nonzero constant `c`.
    fn recombine(&mut self, p: ExprId, q: ExprId) -> Option<ExprId> {
        let Expr::Binary(BinaryOp::Rem, x, c) = self.nest.nodes[q as usize].expr else {
            return None;
        };
        if self.const_of(c).is_none_or(|c| c == 0) {
            return None;
        }
        let is_quotient_times_c = |g: &Self, e: ExprId| match g.nest.nodes[e as usize].expr {
            Expr::Binary(BinaryOp::Mul, m, n) => [(m, n), (n, m)].into_iter().any(|(d, k)| {
                k == c && g.nest.nodes[d as usize].expr == Expr::Binary(BinaryOp::Div, x, c)
            }),
            _ => false,
        };
        if is_quotient_times_c(self, p) {
            return Some(x);
        }
        if let Expr::Binary(BinaryOp::Add, s, t) = self.nest.nodes[p as usize].expr {
            for (rest, part) in [(s, t), (t, s)] {
                if is_quotient_times_c(self, part) {
                    return Some(self.iadd(rest, x));
                }
            }
        }
        None
    }

    /// A known divisor of every value of `e` (0: `e` is always 0).
    fn multiple_of(&self, e: ExprId) -> i64 {
        match self.nest.nodes[e as usize].expr {
            Expr::Const(Const::Int(v)) => v.checked_abs().unwrap_or(1),
            Expr::Binary(BinaryOp::Mul, a, b) => self
                .multiple_of(a)
                .checked_mul(self.multiple_of(b))
                .unwrap_or(1),
            Expr::Binary(BinaryOp::Add, a, b) => gcd(self.multiple_of(a), self.multiple_of(b)),
            _ => 1,
        }
    }

    fn non_negative(&self, e: ExprId) -> bool {
        self.range[e as usize].is_some_and(|(lo, _)| lo >= 0)
    }

    /// `a / c` or `a % c` (c > 0, a >= 0) through the structure of `a`: flattened and
    /// re-split coordinates (`(i * 3136 + j * 56 + k) / 56`) become the coordinates again,
    /// so a reshape of a transpose of a reshape indexes without division.
    fn split_div_rem(&mut self, div: bool, a: ExprId, c: i64) -> Option<ExprId> {
        if !self.non_negative(a) {
            return None;
        }
        match self.nest.nodes[a as usize].expr {
            Expr::Binary(BinaryOp::Add, x, y) if self.non_negative(x) && self.non_negative(y) => {
                for (big, small) in [(x, y), (y, x)] {
                    let m = self.multiple_of(big);
                    if m % c == 0 {
                        // big is a multiple of c.
                        let cv = self.int(c);
                        return Some(if div {
                            let q = self.bin(BinaryOp::Div, big, cv);
                            let r = self.bin(BinaryOp::Div, small, cv);
                            self.iadd(q, r)
                        } else {
                            self.bin(BinaryOp::Rem, small, cv)
                        });
                    }
                    let fits = self.range[small as usize].is_some_and(|(_, hi)| hi < m);
                    if m > 0 && c % m == 0 && fits {
                        // big = m t, c = m q and small < m: small never carries.
                        let cv = self.int(c);
                        return Some(if div {
                            self.bin(BinaryOp::Div, big, cv)
                        } else {
                            let r = self.bin(BinaryOp::Rem, big, cv);
                            self.iadd(r, small)
                        });
                    }
                }
                None
            }
            Expr::Binary(BinaryOp::Mul, z, k) if self.non_negative(z) => {
                let k = self.const_of(k)?;
                if k <= 0 {
                    return None;
                }
                if k % c == 0 {
                    Some(if div {
                        self.imul_c(z, k / c)
                    } else {
                        self.int(0)
                    })
                } else if c % k == 0 {
                    let q = self.int(c / k);
                    Some(if div {
                        self.bin(BinaryOp::Div, z, q)
                    } else {
                        let r = self.bin(BinaryOp::Rem, z, q);
                        self.imul_c(r, k)
                    })
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    fn var(&mut self, k: u32) -> ExprId {
        if self.nest.domain.get(k as usize) == Some(&1) {
            return self.int(0);
        }
        self.add(Expr::Var(k), DType::I64)
    }

    fn int(&mut self, v: i64) -> ExprId {
        self.add(Expr::Const(Const::Int(v)), DType::I64)
    }

    fn constant(&mut self, dtype: DType, v: f64) -> ExprId {
        let c = if dtype.is_float() {
            Const::float(v)
        } else {
            Const::Int(v as i64)
        };
        self.add(Expr::Const(c), dtype)
    }

    fn bin(&mut self, op: BinaryOp, a: ExprId, b: ExprId) -> ExprId {
        let dtype = if op.is_comparison() || op.is_logical() {
            DType::Bool
        } else {
            self.nest.nodes[a as usize].dtype
        };
        self.add(Expr::Binary(op, a, b), dtype)
    }

    fn iadd(&mut self, a: ExprId, b: ExprId) -> ExprId {
        self.bin(BinaryOp::Add, a, b)
    }

    fn imul_c(&mut self, a: ExprId, c: i64) -> ExprId {
        let c = self.int(c);
        self.bin(BinaryOp::Mul, a, c)
    }

    fn iadd_c(&mut self, a: ExprId, c: i64) -> ExprId {
        let c = self.int(c);
        self.bin(BinaryOp::Add, a, c)
    }

    /// `lo <= a < hi` as a bool expression.
    fn in_range(&mut self, a: ExprId, lo: i64, hi: i64) -> ExprId {
        let (l, h) = (self.int(lo), self.int(hi));
        let ge = self.bin(BinaryOp::GreaterEqual, a, l);
        let lt = self.bin(BinaryOp::Less, a, h);
        self.bin(BinaryOp::And, ge, lt)
    }

    fn select(&mut self, c: ExprId, a: ExprId, b: ExprId) -> ExprId {
        let dtype = self.nest.nodes[a as usize].dtype;
        self.add(Expr::Select(c, a, b), dtype)
    }

    fn reduce(&mut self, combine: Combine, extent: usize, var: u32, body: ExprId) -> ExprId {
        let dtype = match combine {
            Combine::ArgMax { .. } | Combine::ArgMin { .. } => DType::I64,
            _ => self.nest.nodes[body as usize].dtype,
        };
        self.add(
            Expr::Reduce {
                combine,
                extent: extent as u64,
                var,
                body,
            },
            dtype,
        )
    }

    fn fresh_var(&mut self, extent: usize) -> (u32, ExprId) {
        let v = self.next_var;
        self.next_var += 1;
        let id = self.nest.nodes.len() as ExprId;
        self.nest.nodes.push(Node {
            expr: Expr::RVar(v),
            dtype: DType::I64,
        });
        self.range.push(Some((0, extent as i64 - 1)));
        (v, id)
    }

    /// The flat row-major index of `coords` in `shape`.
    fn flatten(&mut self, coords: &[ExprId], shape: &[usize]) -> ExprId {
        let strides = contiguous_strides(shape);
        let mut acc = self.int(0);
        for (&c, &s) in coords.iter().zip(&strides) {
            let t = self.imul_c(c, s as i64);
            acc = self.iadd(acc, t);
        }
        acc
    }

    /// The coordinates of flat index `lin` in `shape`.
    fn unflatten(&mut self, lin: ExprId, shape: &[usize]) -> Vec<ExprId> {
        let strides = contiguous_strides(shape);
        (0..shape.len())
            .map(|a| {
                let s = self.int(strides[a] as i64);
                let q = self.bin(BinaryOp::Div, lin, s);
                if a == 0 {
                    q
                } else {
                    let n = self.int(shape[a] as i64);
                    self.bin(BinaryOp::Rem, q, n)
                }
            })
            .collect()
    }

    /// Coordinates of an operand of shape `shape` broadcast to `coords` (right-aligned).
    fn broadcast(&mut self, coords: &[ExprId], shape: &[usize]) -> Vec<ExprId> {
        let lead = coords.len() - shape.len();
        shape
            .iter()
            .enumerate()
            .map(|(i, &d)| {
                if d == 1 {
                    self.int(0)
                } else {
                    coords[lead + i]
                }
            })
            .collect()
    }

    fn check_size(&self) -> Result<(), KernelError> {
        if self.nest.nodes.len() > MAX_NODES {
            return Err(KernelError::TooLarge {
                kernel: self.name.clone(),
                limit: MAX_NODES,
            });
        }
        Ok(())
    }

    fn external(&self, v: ValueId) -> bool {
        self.producer[v.index()].is_none_or(|n| !self.in_group[n])
    }

    /// A value from outside the group: an inlined scalar constant or a parameter load.
    fn load(&mut self, v: ValueId, index: ExprId) -> Result<ExprId, KernelError> {
        if let Some(n) = self.producer[v.index()]
            && let Op::Constant(t) = &self.g.nodes[n].op
            && t.len() == 1
        {
            let dtype = t.dtype();
            let c = if dtype.is_float() {
                Const::float(t.to_f64()[0])
            } else {
                Const::Int(t.to_i64()[0])
            };
            return Ok(self.add(Expr::Const(c), dtype));
        }
        let param = self.param(v, Role::Input)?;
        Ok(self.add(Expr::Load { param, index }, self.g.ty(v).dtype))
    }

    /// `v` at flat index `lin`, keeping reshapes and same-shape elementwise ops flat.
    fn at_linear(&mut self, v: ValueId, lin: ExprId) -> Result<ExprId, KernelError> {
        if self.external(v) {
            return self.load(v, lin);
        }
        let n = self.producer[v.index()].expect("internal values have producers");
        let node = &self.g.nodes[n];
        if let Op::Reshape { .. } = node.op {
            return self.at_linear(node.inputs[0], lin);
        }
        if is_same_shape_elementwise(self.g, node) {
            let key = (v, vec![lin, u32::MAX]);
            if let Some(&e) = self.memo.get(&key) {
                return Ok(e);
            }
            let ops: Vec<ExprId> = node
                .inputs
                .clone()
                .iter()
                .map(|&i| self.at_linear(i, lin))
                .collect::<Result<_, _>>()?;
            let e = self.pointwise(v, &ops)?;
            self.memo.insert(key, e);
            return Ok(e);
        }
        let shape = fixed(self.g, v)?;
        let coords = self.unflatten(lin, &shape);
        self.at(v, &coords)
    }

    /// The elementwise op that produces `v` applied to operand expressions.
    fn pointwise(&mut self, v: ValueId, ops: &[ExprId]) -> Result<ExprId, KernelError> {
        let n = self.producer[v.index()].expect("internal values have producers");
        let dtype = self.g.ty(v).dtype;
        Ok(match &self.g.nodes[n].op {
            Op::Unary(u) => self.add(Expr::Unary(*u, ops[0]), dtype),
            Op::Binary(BinaryOp::Pow)
                if self.nest.nodes[ops[0] as usize].dtype
                    != self.nest.nodes[ops[1] as usize].dtype =>
            {
                // Mixed-type powers compute in f64 (or the float base's type), as the
                // reference does, and convert back.
                let base_ty = self.nest.nodes[ops[0] as usize].dtype;
                let wide = if base_ty.is_float() {
                    base_ty
                } else {
                    DType::F64
                };
                let a = self.convert(ops[0], wide);
                let b = self.convert(ops[1], wide);
                let p = self.add(Expr::Binary(BinaryOp::Pow, a, b), wide);
                self.convert(p, dtype)
            }
            Op::Binary(b) => self.add(Expr::Binary(*b, ops[0], ops[1]), dtype),
            Op::Select => self.add(Expr::Select(ops[0], ops[1], ops[2]), dtype),
            Op::Cast { .. } => {
                if self.nest.nodes[ops[0] as usize].dtype == dtype {
                    ops[0]
                } else {
                    self.add(Expr::Cast(ops[0]), dtype)
                }
            }
            op => return Err(self.unsupported(v, format!("{} is not pointwise", op.mnemonic()))),
        })
    }

    /// `e` converted to `dtype` (no-op when it already has it).
    fn convert(&mut self, e: ExprId, dtype: DType) -> ExprId {
        if self.nest.nodes[e as usize].dtype == dtype {
            e
        } else {
            self.add(Expr::Cast(e), dtype)
        }
    }

    /// `v` at `coords` (one expression per axis of `v`).
    fn at(&mut self, v: ValueId, coords: &[ExprId]) -> Result<ExprId, KernelError> {
        if self.external(v) {
            let shape = fixed(self.g, v)?;
            let index = self.flatten(coords, &shape);
            return self.load(v, index);
        }
        let key = (v, coords.to_vec());
        if let Some(&e) = self.memo.get(&key) {
            return Ok(e);
        }
        self.check_size()?;
        let e = self.at_uncached(v, coords)?;
        self.memo.insert(key, e);
        Ok(e)
    }

    fn at_uncached(&mut self, v: ValueId, coords: &[ExprId]) -> Result<ExprId, KernelError> {
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
            } => self.conv(v, &ins, coords, strides, pads, dilations, *group),
            Op::ConvTranspose {
                strides,
                pads,
                dilations,
                group,
                ..
            } => self.conv_transpose(v, &ins, coords, strides, pads, dilations, *group),
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
    fn scatter(
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

    /// Resize as arithmetic on the output coordinates, in f64 as the reference computes
    /// it: per axis the source coordinate, then the taps (input index, weight), then the
    /// weighted sum over every combination of taps.
    fn resize(
        &mut self,
        v: ValueId,
        op: &Op,
        ins: &[ValueId],
        coords: &[ExprId],
    ) -> Result<ExprId, KernelError> {
        let Op::Resize {
            sizes,
            scales,
            mode,
            coord,
            nearest,
            cubic_coeff,
            exclude_outside,
            extrapolation,
        } = op
        else {
            unreachable!("resize lowering of a resize")
        };
        let x = fixed(self.g, ins[0])?;
        let r = x.len();
        let roi: Vec<f64> = match ins.get(1).and_then(|&i| self.producer[i.index()]) {
            Some(n) => match &self.g.nodes[n].op {
                Op::Constant(t) => t.to_f64(),
                _ => return Err(self.unsupported(v, "a resize roi that is not constant")),
            },
            None if ins.len() > 1 => {
                return Err(self.unsupported(v, "a resize roi that is not constant"));
            }
            None => vec![],
        };
        let f = |b: &mut Self, c: f64| b.constant(DType::F64, c);
        let mut valid: Option<ExprId> = None;
        let mut per_axis: Vec<Vec<(ExprId, ExprId)>> = Vec::with_capacity(r);
        for a in 0..r {
            let (n_in, n_out, scale) = (x[a], sizes[a], scales[a]);
            let last = n_in as i64 - 1;
            let o = coords[a];
            if n_in == n_out
                && scale == 1.0
                && *mode != smelt_ir::ResizeMode::Cubic
                && *coord != smelt_ir::CoordMode::TfCropAndResize
            {
                let one = f(self, 1.0);
                per_axis.push(vec![(o, one)]);
                continue;
            }
            let of = self.convert(o, DType::F64);
            let fb = |b: &mut Self, op: BinaryOp, x: ExprId, y: ExprId| {
                b.add(Expr::Binary(op, x, y), DType::F64)
            };
            let half_pixel = |b: &mut Self| {
                let h = f(b, 0.5);
                let sc = f(b, scale);
                let t = fb(b, BinaryOp::Add, of, h);
                let t = fb(b, BinaryOp::Div, t, sc);
                fb(b, BinaryOp::Sub, t, h)
            };
            use smelt_ir::CoordMode as C;
            let src = match coord {
                C::HalfPixel => half_pixel(self),
                C::HalfPixelSymmetric => {
                    let adj = n_out as f64 / (scale * n_in as f64);
                    let center = n_in as f64 / 2.0;
                    let off = f(self, center * (1.0 - adj));
                    let hp = half_pixel(self);
                    fb(self, BinaryOp::Add, off, hp)
                }
                C::PytorchHalfPixel if n_out > 1 => half_pixel(self),
                C::PytorchHalfPixel => f(self, 0.0),
                C::AlignCorners => {
                    let len = n_in as f64 * scale;
                    if len > 1.0 {
                        let m = f(self, n_in as f64 - 1.0);
                        let d = f(self, len - 1.0);
                        let t = fb(self, BinaryOp::Mul, of, m);
                        fb(self, BinaryOp::Div, t, d)
                    } else {
                        f(self, 0.0)
                    }
                }
                C::Asymmetric => {
                    let sc = f(self, scale);
                    fb(self, BinaryOp::Div, of, sc)
                }
                C::TfCropAndResize => {
                    let (s0, e0) = if roi.len() == 2 * r {
                        (roi[a], roi[r + a])
                    } else {
                        (0.0, 1.0)
                    };
                    let span = n_in as f64 - 1.0;
                    let src = if n_out > 1 {
                        let start = f(self, s0 * span);
                        let k1 = f(self, e0 - s0);
                        let k2 = f(self, span);
                        let k3 = f(self, n_out as f64 - 1.0);
                        let t = fb(self, BinaryOp::Mul, of, k1);
                        let t = fb(self, BinaryOp::Mul, t, k2);
                        let t = fb(self, BinaryOp::Div, t, k3);
                        fb(self, BinaryOp::Add, start, t)
                    } else {
                        f(self, 0.5 * (s0 + e0) * span)
                    };
                    let (lo, hi) = (f(self, 0.0), f(self, span));
                    let ge = self.bin(BinaryOp::GreaterEqual, src, lo);
                    let le = self.bin(BinaryOp::LessEqual, src, hi);
                    let ok = self.bin(BinaryOp::And, ge, le);
                    valid = Some(self.and_also(valid, ok));
                    src
                }
            };
            let floor = |b: &mut Self, e: ExprId| {
                b.add(Expr::Unary(smelt_ir::UnaryOp::Floor, e), DType::F64)
            };
            let clamp_index = |b: &mut Self, i: ExprId| {
                let (lo, hi) = (b.int(0), b.int(last));
                let t = b.bin(BinaryOp::Max, i, lo);
                b.bin(BinaryOp::Min, t, hi)
            };
            let taps = match mode {
                smelt_ir::ResizeMode::Nearest => {
                    use smelt_ir::NearestMode as N;
                    let h = f(self, 0.5);
                    let rounded = |b: &mut Self| {
                        let t = fb(b, BinaryOp::Add, src, h);
                        floor(b, t)
                    };
                    let pos = match nearest {
                        N::RoundPreferFloor => {
                            let fl = floor(self, src);
                            let frac = fb(self, BinaryOp::Sub, src, fl);
                            let is_half = self.bin(BinaryOp::Equal, frac, h);
                            let rd = rounded(self);
                            self.select(is_half, fl, rd)
                        }
                        N::RoundPreferCeil => rounded(self),
                        N::Floor => floor(self, src),
                        N::Ceil => self.add(Expr::Unary(smelt_ir::UnaryOp::Ceil, src), DType::F64),
                    };
                    let i = self.convert(pos, DType::I64);
                    let one = f(self, 1.0);
                    vec![(clamp_index(self, i), one)]
                }
                smelt_ir::ResizeMode::Linear => {
                    let (z, l) = (f(self, 0.0), f(self, last as f64));
                    let s = fb(self, BinaryOp::Max, src, z);
                    let s = fb(self, BinaryOp::Min, s, l);
                    let fl = floor(self, s);
                    let lo = self.convert(fl, DType::I64);
                    let lo1 = self.iadd_c(lo, 1);
                    let lastc = self.int(last);
                    let hi = self.bin(BinaryOp::Min, lo1, lastc);
                    let lof = self.convert(lo, DType::F64);
                    let t = fb(self, BinaryOp::Sub, s, lof);
                    let one = f(self, 1.0);
                    let wlo = fb(self, BinaryOp::Sub, one, t);
                    vec![(lo, wlo), (hi, t)]
                }
                smelt_ir::ResizeMode::Cubic => {
                    let fl = floor(self, src);
                    let base = self.convert(fl, DType::I64);
                    let t = fb(self, BinaryOp::Sub, src, fl);
                    let a_ = *cubic_coeff;
                    let one = f(self, 1.0);
                    let two = f(self, 2.0);
                    let args = [
                        fb(self, BinaryOp::Add, t, one),
                        t,
                        fb(self, BinaryOp::Sub, one, t),
                        fb(self, BinaryOp::Sub, two, t),
                    ];
                    let mut taps = Vec::with_capacity(4);
                    let mut inside = Vec::with_capacity(4);
                    for (k, &xarg) in args.iter().enumerate() {
                        let w = self.cubic_weight(xarg, a_);
                        let i = self.iadd_c(base, k as i64 - 1);
                        inside.push(self.in_range(i, 0, last + 1));
                        taps.push((clamp_index(self, i), w));
                    }
                    if *exclude_outside {
                        let zero = f(self, 0.0);
                        let kept: Vec<ExprId> = taps
                            .iter()
                            .zip(&inside)
                            .map(|(&(_, w), &ok)| self.select(ok, w, zero))
                            .collect();
                        let mut total = kept[0];
                        for &w in &kept[1..] {
                            total = fb(self, BinaryOp::Add, total, w);
                        }
                        for (tap, &w) in taps.iter_mut().zip(&kept) {
                            tap.1 = fb(self, BinaryOp::Div, w, total);
                        }
                    }
                    taps
                }
            };
            per_axis.push(taps);
        }
        // Sum over every combination of taps.
        let combos: usize = per_axis.iter().map(Vec::len).product();
        let mut acc: Option<ExprId> = None;
        for combo in 0..combos {
            let mut rest = combo;
            let mut c = Vec::with_capacity(r);
            let mut w: Option<ExprId> = None;
            for taps in &per_axis {
                let (i, wt) = taps[rest % taps.len()];
                rest /= taps.len();
                c.push(i);
                w = Some(match w {
                    None => wt,
                    Some(p) => self.add(Expr::Binary(BinaryOp::Mul, p, wt), DType::F64),
                });
            }
            let xv = self.at(ins[0], &c)?;
            let xv = self.convert(xv, DType::F64);
            let term = match w {
                Some(w) => {
                    // Zero-weight taps are skipped, so an inf there does not make a NaN.
                    let product = self.add(Expr::Binary(BinaryOp::Mul, xv, w), DType::F64);
                    let zero = self.constant(DType::F64, 0.0);
                    let nonzero = self.bin(BinaryOp::Equal, w, zero);
                    self.select(nonzero, zero, product)
                }
                None => xv,
            };
            acc = Some(match acc {
                None => term,
                Some(p) => self.add(Expr::Binary(BinaryOp::Add, p, term), DType::F64),
            });
        }
        let mut out = acc.ok_or_else(|| self.unsupported(v, "resize of an empty tensor"))?;
        if let Some(ok) = valid {
            let e = self.constant(DType::F64, *extrapolation);
            out = self.select(ok, out, e);
        }
        let dtype = self.g.ty(v).dtype;
        if !dtype.is_float() {
            // Integers round half away from zero, as the reference does.
            let (h, z) = (
                self.constant(DType::F64, 0.5),
                self.constant(DType::F64, 0.0),
            );
            let up = self.add(Expr::Binary(BinaryOp::Add, out, h), DType::F64);
            let up = self.add(Expr::Unary(smelt_ir::UnaryOp::Floor, up), DType::F64);
            let down = self.add(Expr::Binary(BinaryOp::Sub, out, h), DType::F64);
            let down = self.add(Expr::Unary(smelt_ir::UnaryOp::Ceil, down), DType::F64);
            let pos = self.bin(BinaryOp::GreaterEqual, out, z);
            out = self.select(pos, up, down);
        }
        Ok(self.convert(out, dtype))
    }

    /// The cubic convolution kernel at distance `x` (coefficient `a`).
    fn cubic_weight(&mut self, x: ExprId, a: f64) -> ExprId {
        let fb = |b: &mut Self, op: BinaryOp, x: ExprId, y: ExprId| {
            b.add(Expr::Binary(op, x, y), DType::F64)
        };
        let c = |b: &mut Self, v: f64| b.constant(DType::F64, v);
        let x = self.add(Expr::Unary(smelt_ir::UnaryOp::Abs, x), DType::F64);
        // ((a + 2) x - (a + 3)) x x + 1
        let (k1, k2, one) = (c(self, a + 2.0), c(self, a + 3.0), c(self, 1.0));
        let t = fb(self, BinaryOp::Mul, k1, x);
        let t = fb(self, BinaryOp::Sub, t, k2);
        let t = fb(self, BinaryOp::Mul, t, x);
        let t = fb(self, BinaryOp::Mul, t, x);
        let near = fb(self, BinaryOp::Add, t, one);
        // ((a x - 5a) x + 8a) x - 4a
        let (ka, k5, k8, k4) = (
            c(self, a),
            c(self, 5.0 * a),
            c(self, 8.0 * a),
            c(self, 4.0 * a),
        );
        let t = fb(self, BinaryOp::Mul, ka, x);
        let t = fb(self, BinaryOp::Sub, t, k5);
        let t = fb(self, BinaryOp::Mul, t, x);
        let t = fb(self, BinaryOp::Add, t, k8);
        let t = fb(self, BinaryOp::Mul, t, x);
        let far = fb(self, BinaryOp::Sub, t, k4);
        let (one_c, two_c, zero) = (c(self, 1.0), c(self, 2.0), c(self, 0.0));
        let is_near = self.bin(BinaryOp::LessEqual, x, one_c);
        let is_far = self.bin(BinaryOp::Less, x, two_c);
        let w = self.select(is_far, far, zero);
        self.select(is_near, near, w)
    }

    /// A gather index made non-negative (ONNX counts negative indices from the end).
    fn index_value(&mut self, i: ExprId, n: usize) -> ExprId {
        let i = if self.nest.nodes[i as usize].dtype == DType::I64 {
            i
        } else {
            self.add(Expr::Cast(i), DType::I64)
        };
        let zero = self.int(0);
        let neg = self.bin(BinaryOp::Less, i, zero);
        let wrapped = self.iadd_c(i, n as i64);
        self.select(neg, wrapped, i)
    }

    /// Input coordinates of a reduction: kept axes from `coords`, reduced ones from `inner`.
    fn expand_reduced(
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
    fn widen(&mut self, v: ValueId, x: ExprId, y: ExprId) -> (ExprId, ExprId) {
        let dtype = self.g.ty(v).dtype;
        if matches!(dtype, DType::F16 | DType::BF16) {
            (self.convert(x, DType::F32), self.convert(y, DType::F32))
        } else {
            (x, y)
        }
    }

    /// Adds the optional bias operand to an accumulated sum and converts to `v`'s dtype.
    fn add_bias(
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

    fn matmul(
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

    #[allow(clippy::too_many_arguments)]
    fn conv(
        &mut self,
        v: ValueId,
        ins: &[ValueId],
        coords: &[ExprId],
        strides: &[usize],
        pads: &[usize],
        dilations: &[usize],
        group: usize,
    ) -> Result<ExprId, KernelError> {
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

    #[allow(clippy::too_many_arguments)]
    fn conv_transpose(
        &mut self,
        v: ValueId,
        ins: &[ValueId],
        coords: &[ExprId],
        strides: &[usize],
        pads: &[usize],
        dilations: &[usize],
        group: usize,
    ) -> Result<ExprId, KernelError> {
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
    fn window_sum(
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
    fn and_also(&mut self, acc: Option<ExprId>, ok: ExprId) -> ExprId {
        match acc {
            None => ok,
            Some(p) => self.bin(BinaryOp::And, p, ok),
        }
    }
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a.abs() } else { gcd(b, a % b) }
}
