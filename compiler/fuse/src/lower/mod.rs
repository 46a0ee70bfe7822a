//! Lowers the groups of a fusion plan to Kernel IR.
//!
//! Every group output is computed by asking for the value "at" a coordinate vector of
//! expressions: an op inside the group turns that into requests for its operands at
//! mapped coordinates (broadcast, transpose, slice, gather ...), a reduction binds a fresh
//! variable, and a value from outside the group becomes a load of a buffer parameter.
//! Requests are memoized and expressions hash-consed, so a value used twice at the same
//! coordinates is computed once.

use crate::kernel::{
    Body, Combine, Const, Contraction, Expr, ExprId, FoldedActivation, Kernel, KernelError,
    LoopNest, Node, Param, Role, Store, contiguous_strides,
};
use crate::plan::{FusionPlan, Group, GroupKind};
use smelt_ir::{
    ArgKind, BinaryOp, DType, Graph, Op, PadMode, PoolKind, ReduceKind, ScatterReduction, ValueId,
    slice_bounds,
};
use std::collections::HashMap;

mod indexing;
mod linalg;
mod movement;
mod ops;
mod reduce;
mod resize;
mod simplify;

/// A kernel with the graph value each parameter holds.
#[derive(Debug, Clone, PartialEq)]
pub struct LoweredKernel {
    pub kernel: Kernel,
    pub args: Vec<ValueId>,
}

/// An expression built for a value at some coordinates, or why it cannot be.
pub(super) type Built = Result<ExprId, KernelError>;

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
            k.kernel.fold_activation_epilogue();
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
    if calls && grp.kind == GroupKind::Opaque && resize::runtime_resize(g, first) {
        return resize::lower_resize_call(g, producer, &base, grp).map(|k| vec![k]);
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
            activation: FoldedActivation::None,
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
            activation: FoldedActivation::None,
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
    pub(super) fn new(
        g: &'g Graph,
        producer: &'g [Option<usize>],
        grp: &Group,
        name: &str,
    ) -> Self {
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

    pub(super) fn finish(self, call: Option<(Contraction, u32)>) -> LoweredKernel {
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

    pub(super) fn unsupported(&self, v: ValueId, reason: impl Into<String>) -> KernelError {
        let node = self.producer[v.index()].map(|n| &self.g.nodes[n]);
        KernelError::Unsupported {
            node: node.map_or_else(|| self.g.value(v).name.clone(), |n| n.name.clone()),
            op: node.map_or("input", |n| n.op.mnemonic()).to_string(),
            reason: reason.into(),
        }
    }

    pub(super) fn param(&mut self, v: ValueId, role: Role) -> Result<u32, KernelError> {
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

    pub(super) fn add(&mut self, expr: Expr, dtype: DType) -> ExprId {
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

    pub(super) fn const_of(&self, e: ExprId) -> Option<i64> {
        match self.nest.nodes[e as usize].expr {
            Expr::Const(Const::Int(v)) if self.nest.nodes[e as usize].dtype == DType::I64 => {
                Some(v)
            }
            _ => None,
        }
    }

    pub(super) fn range_of(&self, expr: Expr) -> Option<(i64, i64)> {
        crate::kernel::int_range(expr, &self.nest.domain, |e| self.range[e as usize])
    }

    /// A bool constant's value.
    pub(super) fn bool_of(&self, e: ExprId) -> Option<bool> {
        match self.nest.nodes[e as usize] {
            Node {
                expr: Expr::Const(Const::Int(v)),
                dtype: DType::Bool,
            } => Some(v != 0),
            _ => None,
        }
    }

    pub(super) fn var(&mut self, k: u32) -> ExprId {
        if self.nest.domain.get(k as usize) == Some(&1) {
            return self.int(0);
        }
        self.add(Expr::Var(k), DType::I64)
    }

    pub(super) fn int(&mut self, v: i64) -> ExprId {
        self.add(Expr::Const(Const::Int(v)), DType::I64)
    }

    pub(super) fn constant(&mut self, dtype: DType, v: f64) -> ExprId {
        let c = if dtype.is_float() {
            Const::float(v)
        } else {
            Const::Int(v as i64)
        };
        self.add(Expr::Const(c), dtype)
    }

    pub(super) fn bin(&mut self, op: BinaryOp, a: ExprId, b: ExprId) -> ExprId {
        let dtype = if op.is_comparison() || op.is_logical() {
            DType::Bool
        } else {
            self.nest.nodes[a as usize].dtype
        };
        self.add(Expr::Binary(op, a, b), dtype)
    }

    pub(super) fn iadd(&mut self, a: ExprId, b: ExprId) -> ExprId {
        self.bin(BinaryOp::Add, a, b)
    }

    pub(super) fn imul_c(&mut self, a: ExprId, c: i64) -> ExprId {
        let c = self.int(c);
        self.bin(BinaryOp::Mul, a, c)
    }

    pub(super) fn iadd_c(&mut self, a: ExprId, c: i64) -> ExprId {
        let c = self.int(c);
        self.bin(BinaryOp::Add, a, c)
    }

    /// `lo <= a < hi` as a bool expression.
    pub(super) fn in_range(&mut self, a: ExprId, lo: i64, hi: i64) -> ExprId {
        let (l, h) = (self.int(lo), self.int(hi));
        let ge = self.bin(BinaryOp::GreaterEqual, a, l);
        let lt = self.bin(BinaryOp::Less, a, h);
        self.bin(BinaryOp::And, ge, lt)
    }

    pub(super) fn select(&mut self, c: ExprId, a: ExprId, b: ExprId) -> ExprId {
        let dtype = self.nest.nodes[a as usize].dtype;
        self.add(Expr::Select(c, a, b), dtype)
    }

    pub(super) fn reduce(
        &mut self,
        combine: Combine,
        extent: usize,
        var: u32,
        body: ExprId,
    ) -> ExprId {
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

    pub(super) fn fresh_var(&mut self, extent: usize) -> (u32, ExprId) {
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
    pub(super) fn flatten(&mut self, coords: &[ExprId], shape: &[usize]) -> ExprId {
        let strides = contiguous_strides(shape);
        let mut acc = self.int(0);
        for (&c, &s) in coords.iter().zip(&strides) {
            let t = self.imul_c(c, s as i64);
            acc = self.iadd(acc, t);
        }
        acc
    }

    /// The coordinates of flat index `lin` in `shape`.
    pub(super) fn unflatten(&mut self, lin: ExprId, shape: &[usize]) -> Vec<ExprId> {
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
    pub(super) fn broadcast(&mut self, coords: &[ExprId], shape: &[usize]) -> Vec<ExprId> {
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

    pub(super) fn check_size(&self) -> Result<(), KernelError> {
        if self.nest.nodes.len() > MAX_NODES {
            return Err(KernelError::TooLarge {
                kernel: self.name.clone(),
                limit: MAX_NODES,
            });
        }
        Ok(())
    }

    pub(super) fn external(&self, v: ValueId) -> bool {
        self.producer[v.index()].is_none_or(|n| !self.in_group[n])
    }

    /// A value from outside the group: an inlined scalar constant or a parameter load.
    pub(super) fn load(&mut self, v: ValueId, index: ExprId) -> Result<ExprId, KernelError> {
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
    pub(super) fn at_linear(&mut self, v: ValueId, lin: ExprId) -> Result<ExprId, KernelError> {
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
    pub(super) fn pointwise(&mut self, v: ValueId, ops: &[ExprId]) -> Result<ExprId, KernelError> {
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
    pub(super) fn convert(&mut self, e: ExprId, dtype: DType) -> ExprId {
        if self.nest.nodes[e as usize].dtype == dtype {
            e
        } else {
            self.add(Expr::Cast(e), dtype)
        }
    }

    /// `v` at `coords` (one expression per axis of `v`).
    pub(super) fn at(&mut self, v: ValueId, coords: &[ExprId]) -> Result<ExprId, KernelError> {
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
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a.abs() } else { gcd(b, a % b) }
}
