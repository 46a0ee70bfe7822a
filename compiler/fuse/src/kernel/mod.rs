//! Kernel IR: one kernel as either back end sees it (buffers, iteration domain, scalar DAG).
//!
//! A kernel has typed buffer parameters (row-major, contiguous, so strides follow from
//! shapes) and a body. A loop body iterates a domain (the shape of its outputs) and stores
//! scalar expressions. Expressions form a hash-consed DAG: loads take a flat element index
//! that is itself an expression (affine in the domain variables, with div/mod for
//! reshapes and broadcasts, or data-dependent for gathers); reductions accumulate a body
//! over a reduction variable. Every expression is pure and total (loads clamp their index,
//! integer division by zero gives 0), so a back end may evaluate any of them eagerly and
//! hoist them out of loops whose variables they do not use.
//!
//! Back ends run a loop body over an outer range `[begin, end)`: the rows (the domain
//! without its innermost axis) for rank >= 2, the elements for rank 1.

mod parse;

pub use parse::ParseError;

use smelt_ir::{BinaryOp, DType, UnaryOp};
use std::collections::HashMap;
use std::fmt::Write as _;
use thiserror::Error;

/// Why a kernel cannot be built or is malformed.
#[derive(Debug, Error, PartialEq)]
pub enum KernelError {
    #[error("kernel {kernel}: {reason}")]
    Invalid { kernel: String, reason: String },
    #[error("kernel {kernel}: more than {limit} expressions")]
    TooLarge { kernel: String, limit: usize },
    #[error("node {node} ({op}): {reason}")]
    Unsupported {
        node: String,
        op: String,
        reason: String,
    },
}

/// Index of an expression in its loop body.
pub type ExprId = u32;

/// Whether the kernel reads or writes a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Input,
    Output,
}

/// A buffer parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    /// The graph value it holds.
    pub value: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub role: Role,
}

impl Param {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Row-major element strides.
    pub fn strides(&self) -> Vec<usize> {
        contiguous_strides(&self.shape)
    }
}

pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for a in (0..shape.len().saturating_sub(1)).rev() {
        s[a] = s[a + 1] * shape[a + 1];
    }
    s
}

/// How a reduction combines its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Combine {
    Sum,
    Prod,
    /// NaN-propagating maximum.
    Max,
    Min,
    /// Index (i64) of the first (or last) maximum.
    ArgMax {
        last: bool,
    },
    ArgMin {
        last: bool,
    },
}

impl Combine {
    pub fn name(self) -> &'static str {
        match self {
            Combine::Sum => "sum",
            Combine::Prod => "prod",
            Combine::Max => "max",
            Combine::Min => "min",
            Combine::ArgMax { last: false } => "argmax",
            Combine::ArgMax { last: true } => "argmax_last",
            Combine::ArgMin { last: false } => "argmin",
            Combine::ArgMin { last: true } => "argmin_last",
        }
    }
}

/// A scalar constant, stored exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Const {
    /// A float, as the bits of its f64 value.
    Float(u64),
    Int(i64),
}

impl Const {
    pub fn float(v: f64) -> Const {
        Const::Float(v.to_bits())
    }

    pub fn as_f64(self) -> f64 {
        match self {
            Const::Float(b) => f64::from_bits(b),
            Const::Int(i) => i as f64,
        }
    }

    pub fn as_i64(self) -> i64 {
        match self {
            Const::Float(b) => f64::from_bits(b) as i64,
            Const::Int(i) => i,
        }
    }
}

/// One node of the scalar DAG. Operands always have smaller ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Expr {
    /// Domain variable `k` (0 = outermost).
    Var(u32),
    /// Reduction variable `v` (bound by the one `Reduce` whose `var` is `v`).
    RVar(u32),
    Const(Const),
    /// Element `index` (i64, clamped to the buffer) of parameter `param`.
    Load {
        param: u32,
        index: ExprId,
    },
    Unary(UnaryOp, ExprId),
    Binary(BinaryOp, ExprId, ExprId),
    /// `cond` (bool) ? `a` : `b`.
    Select(ExprId, ExprId, ExprId),
    Cast(ExprId),
    /// Combines `body` over `RVar(var)` in `0..extent`.
    Reduce {
        combine: Combine,
        extent: u64,
        var: u32,
        body: ExprId,
    },
}

/// An expression with its dtype (integers and bools compute in i64 and wrap to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Node {
    pub expr: Expr,
    pub dtype: DType,
}

/// Writes `value` to element `index` of output parameter `param`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Store {
    pub param: u32,
    pub index: ExprId,
    pub value: ExprId,
}

/// A loop over `domain` (never empty: rank 0 becomes `[1]`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LoopNest {
    pub domain: Vec<usize>,
    pub nodes: Vec<Node>,
    pub stores: Vec<Store>,
}

/// A loop variable whose coefficient `LoopNest::coefficient` finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variable {
    /// Domain variable `k`.
    Domain(u32),
    /// Reduction variable `v`.
    Reduction(u32),
}

/// The value range of an i64 expression given its operands' ranges (`operand`), where
/// the arithmetic is simple enough to bound; domain variables range over `domain`.
/// Reduction variables are left to the caller (their extents are in their `Reduce`).
pub fn int_range(
    expr: Expr,
    domain: &[usize],
    operand: impl Fn(ExprId) -> Option<(i64, i64)>,
) -> Option<(i64, i64)> {
    match expr {
        Expr::Var(k) => domain.get(k as usize).map(|&d| (0, d as i64 - 1)),
        Expr::Const(Const::Int(v)) => Some((v, v)),
        Expr::Binary(op, a, b) => {
            let ((a0, a1), (b0, b1)) = (operand(a)?, operand(b)?);
            match op {
                BinaryOp::Add => Some((a0.checked_add(b0)?, a1.checked_add(b1)?)),
                BinaryOp::Sub => Some((a0.checked_sub(b1)?, a1.checked_sub(b0)?)),
                BinaryOp::Mul => {
                    let p = [
                        a0.checked_mul(b0)?,
                        a0.checked_mul(b1)?,
                        a1.checked_mul(b0)?,
                        a1.checked_mul(b1)?,
                    ];
                    Some((*p.iter().min()?, *p.iter().max()?))
                }
                BinaryOp::Div if a0 >= 0 && b0 == b1 && b0 > 0 => Some((a0 / b0, a1 / b0)),
                BinaryOp::Rem if a0 >= 0 && b0 == b1 && b0 > 0 => Some((0, a1.min(b0 - 1))),
                BinaryOp::Min => Some((a0.min(b0), a1.min(b1))),
                BinaryOp::Max => Some((a0.max(b0), a1.max(b1))),
                _ => None,
            }
        }
        Expr::Select(_, a, b) => {
            let ((a0, a1), (b0, b1)) = (operand(a)?, operand(b)?);
            Some((a0.min(b0), a1.max(b1)))
        }
        _ => None,
    }
}

impl LoopNest {
    /// The range of every i64 expression over the domain and the reduction extents, where
    /// [`int_range`] can bound it (indices computed from loaded data it cannot).
    pub fn index_ranges(&self) -> Vec<Option<(i64, i64)>> {
        self.index_ranges_over(&self.domain)
    }

    /// [`LoopNest::index_ranges`] with the domain variables ranging over `domain` instead
    /// (an extent of 1 pins a variable to 0).
    pub fn index_ranges_over(&self, domain: &[usize]) -> Vec<Option<(i64, i64)>> {
        let extents: HashMap<u32, u64> = self
            .nodes
            .iter()
            .filter_map(|n| match n.expr {
                Expr::Reduce { var, extent, .. } => Some((var, extent)),
                _ => None,
            })
            .collect();
        let mut ranges: Vec<Option<(i64, i64)>> = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let range = match (node.dtype, node.expr) {
                (DType::I64, Expr::RVar(v)) => extents.get(&v).map(|&x| (0, x as i64 - 1)),
                (DType::I64, expr) => int_range(expr, domain, |e| ranges[e as usize]),
                _ => None,
            };
            ranges.push(range);
        }
        ranges
    }

    /// Whether any element is a reduction (a `Reduce` node).
    pub fn reduces(&self) -> bool {
        self.nodes
            .iter()
            .any(|n| matches!(n.expr, Expr::Reduce { .. }))
    }

    /// The extent of the `[begin, end)` range that the runtime splits.
    pub fn outer_extent(&self) -> usize {
        match self.domain.len() {
            0 => 1,
            1 => self.domain[0],
            n => self.domain[..n - 1].iter().product(),
        }
    }

    /// Elements computed per unit of the outer range.
    pub fn inner_extent(&self) -> usize {
        match self.domain.len() {
            0 | 1 => 1,
            n => self.domain[n - 1],
        }
    }

    pub fn node(&self, e: ExprId) -> &Node {
        &self.nodes[e as usize]
    }

    /// The operands of `e`.
    pub fn operands(&self, e: ExprId) -> Vec<ExprId> {
        match self.nodes[e as usize].expr {
            Expr::Var(_) | Expr::RVar(_) | Expr::Const(_) => vec![],
            Expr::Load { index, .. } => vec![index],
            Expr::Unary(_, a) | Expr::Cast(a) => vec![a],
            Expr::Binary(_, a, b) => vec![a, b],
            Expr::Select(c, a, b) => vec![c, a, b],
            Expr::Reduce { body, .. } => vec![body],
        }
    }

    /// Merges the two innermost axes, again and again, while every use of their
    /// variables is affine index arithmetic that walks them as one axis: in every load
    /// and store index the outer variable's coefficient is the inner one's times the inner
    /// extent (or the outer extent is 1). The result is the same kernel over longer rows:
    /// fewer row decodes and vector-loop tails (a 7x7 feature map is one row of 49, not
    /// seven rows of 7). A variable used any other way (a padding check, a channel
    /// division, a cast) stops the merging.
    pub fn collapse_inner_axes(&mut self) {
        while self.domain.len() >= 2 && self.inner_axes_merge() {
            self.merge_inner_axes();
        }
    }

    /// Whether the two innermost axes can merge (see [`LoopNest::collapse_inner_axes`]).
    fn inner_axes_merge(&self) -> bool {
        let rank = self.domain.len();
        let (outer, inner) = (rank - 2, rank - 1);
        let live = self.live();
        let mut uses = vec![false; self.nodes.len()];
        for (e, node) in self.nodes.iter().enumerate() {
            uses[e] = match node.expr {
                Expr::Var(k) => k as usize >= outer,
                _ => self.operands(e as ExprId).iter().any(|&o| uses[o as usize]),
            };
        }
        let (mut outer_memo, mut inner_memo) = (HashMap::new(), HashMap::new());
        let mut coefs = |e: ExprId| {
            let co = self.coefficient(e, Variable::Domain(outer as u32), &mut outer_memo)?;
            let ci = self.coefficient(e, Variable::Domain(inner as u32), &mut inner_memo)?;
            Some((co, ci))
        };
        for (e, node) in self.nodes.iter().enumerate() {
            if !live[e] {
                continue;
            }
            for o in self.operands(e as ExprId) {
                if !uses[o as usize] || self.node(o).dtype != DType::I64 {
                    continue;
                }
                let allowed = match node.expr {
                    Expr::Load { index, .. } => index == o && self.walks_as_one(coefs(o)),
                    Expr::Binary(BinaryOp::Add | BinaryOp::Mul, ..) => coefs(e as ExprId).is_some(),
                    _ => false,
                };
                if !allowed {
                    return false;
                }
            }
        }
        self.stores
            .iter()
            .all(|s| !uses[s.index as usize] || self.walks_as_one(coefs(s.index)))
    }

    /// Whether an index with coefficients `(outer, inner)` on the two innermost axes
    /// (None: not affine in them) walks them as one axis.
    fn walks_as_one(&self, coefs: Option<(i64, i64)>) -> bool {
        let rank = self.domain.len();
        coefs.is_some_and(|(co, ci)| {
            self.domain[rank - 2] == 1 || Some(co) == ci.checked_mul(self.domain[rank - 1] as i64)
        })
    }

    /// Replaces the two innermost axes by one of their combined extent: the outer
    /// variable becomes 0 and the inner one ranges over both (exact for the affine uses
    /// [`LoopNest::inner_axes_merge`] admits).
    fn merge_inner_axes(&mut self) {
        let rank = self.domain.len();
        let (outer, inner) = ((rank - 2) as u32, (rank - 1) as u32);
        let mut dedup: HashMap<Node, ExprId> = Default::default();
        let mut map = Vec::with_capacity(self.nodes.len());
        let mut nodes: Vec<Node> = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let m = |e: ExprId| map[e as usize];
            let expr = match node.expr {
                Expr::Var(k) if k == outer => Expr::Const(Const::Int(0)),
                Expr::Var(k) if k == inner => Expr::Var(outer),
                Expr::Load { param, index } => Expr::Load {
                    param,
                    index: m(index),
                },
                Expr::Unary(op, a) => Expr::Unary(op, m(a)),
                Expr::Binary(op, a, b) => Expr::Binary(op, m(a), m(b)),
                Expr::Select(c, a, b) => Expr::Select(m(c), m(a), m(b)),
                Expr::Cast(a) => Expr::Cast(m(a)),
                Expr::Reduce {
                    combine,
                    extent,
                    var,
                    body,
                } => Expr::Reduce {
                    combine,
                    extent,
                    var,
                    body: m(body),
                },
                other => other,
            };
            // The outer variable's terms vanish: 0 * x is 0, and x + 0 is x.
            let zero = |e: ExprId| {
                node.dtype == DType::I64 && nodes[e as usize].expr == Expr::Const(Const::Int(0))
            };
            match expr {
                Expr::Binary(BinaryOp::Mul, a, b) if zero(a) || zero(b) => {
                    map.push(if zero(a) { a } else { b });
                    continue;
                }
                Expr::Binary(BinaryOp::Add, a, b) if zero(a) || zero(b) => {
                    map.push(if zero(a) { b } else { a });
                    continue;
                }
                _ => {}
            }
            let node = Node {
                expr,
                dtype: node.dtype,
            };
            let id = *dedup.entry(node).or_insert_with(|| {
                nodes.push(node);
                (nodes.len() - 1) as ExprId
            });
            map.push(id);
        }
        for s in &mut self.stores {
            s.index = map[s.index as usize];
            s.value = map[s.value as usize];
        }
        self.nodes = nodes;
        let merged = self.domain[rank - 2] * self.domain[rank - 1];
        self.domain.truncate(rank - 1);
        self.domain[rank - 2] = merged;
    }

    /// The coefficient of `var` in `e`, where `e` is affine in it: sums, differences and
    /// constant multiples of terms, any term without `var` counting 0. Memoized per
    /// variable in `memo`.
    pub fn coefficient(
        &self,
        e: ExprId,
        var: Variable,
        memo: &mut HashMap<ExprId, Option<i64>>,
    ) -> Option<i64> {
        if let Some(&c) = memo.get(&e) {
            return c;
        }
        let node = self.node(e);
        let konst = |x: ExprId| match self.node(x).expr {
            Expr::Const(Const::Int(v)) => Some(v),
            _ => None,
        };
        let c = match node.expr {
            Expr::Var(k) => Some(i64::from(var == Variable::Domain(k))),
            Expr::RVar(v) => Some(i64::from(var == Variable::Reduction(v))),
            Expr::Const(_) => Some(0),
            Expr::Binary(BinaryOp::Add, a, b) => self
                .coefficient(a, var, memo)?
                .checked_add(self.coefficient(b, var, memo)?),
            Expr::Binary(BinaryOp::Sub, a, b) => self
                .coefficient(a, var, memo)?
                .checked_sub(self.coefficient(b, var, memo)?),
            Expr::Binary(BinaryOp::Mul, a, b) if node.dtype == DType::I64 => {
                match (
                    self.coefficient(a, var, memo)?,
                    self.coefficient(b, var, memo)?,
                ) {
                    (0, 0) => Some(0),
                    (0, cb) => konst(a).and_then(|k| k.checked_mul(cb)),
                    (ca, 0) => konst(b).and_then(|k| k.checked_mul(ca)),
                    _ => None,
                }
            }
            _ => {
                let mut all_zero = true;
                for o in self.operands(e) {
                    if self.coefficient(o, var, memo) != Some(0) {
                        all_zero = false;
                    }
                }
                all_zero.then_some(0)
            }
        };
        memo.insert(e, c);
        c
    }

    /// Which expressions the stores need.
    pub fn live(&self) -> Vec<bool> {
        let mut live = vec![false; self.nodes.len()];
        for s in &self.stores {
            live[s.index as usize] = true;
            live[s.value as usize] = true;
        }
        for e in (0..self.nodes.len()).rev() {
            if live[e] {
                for o in self.operands(e as ExprId) {
                    live[o as usize] = true;
                }
            }
        }
        live
    }
}

/// A call of one of the runtime's kernels: the contractions, and pooling and resizing,
/// which are not but are run the same way (pooling's window sums computed once per row
/// and reused, resizing's taps worked out once per axis instead of per element).
#[derive(Debug, Clone, PartialEq)]
pub enum Contraction {
    /// NumPy matmul of params `a` and `b` (transposes of their last two axes), plus an
    /// optional bias over the last output axis.
    MatMul {
        a: u32,
        b: u32,
        bias: Option<u32>,
        trans_a: bool,
        trans_b: bool,
        /// An activation epilogue folded into the call (`Kernel::fold_activation_epilogue`).
        activation: FoldedActivation,
    },
    /// Convolution of `x` with `w`, plus an optional per-filter bias.
    Conv {
        x: u32,
        w: u32,
        bias: Option<u32>,
        strides: Vec<usize>,
        pads: Vec<usize>,
        dilations: Vec<usize>,
        group: usize,
        /// An activation epilogue folded into the call
        /// (`Kernel::fold_activation_epilogue`).
        activation: FoldedActivation,
    },
    /// 2-D max or average pooling of an f32 `x: [N, C, H, W]` (dilation 1).
    Pool {
        x: u32,
        kind: smelt_ir::PoolKind,
        kernel: Vec<usize>,
        strides: Vec<usize>,
        /// All begin pads, then all end pads.
        pads: Vec<usize>,
    },
    /// f32 Resize of `x` to `sizes` that changes at most its two innermost axes (no
    /// crop-and-resize).
    Resize {
        x: u32,
        sampling: smelt_ir::Sampling,
        scales: Vec<f64>,
        sizes: Vec<usize>,
    },
}

/// An activation a Conv or MatMul call applies to its results.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum FoldedActivation {
    #[default]
    None,
    /// `max(x, 0)`.
    Relu,
    /// `x * sigmoid(x)`, f32 only.
    Silu,
    /// `(x * (erf(x / sqrt 2) + 1)) * 0.5`, f32 only.
    Gelu,
    /// `min(max(x, low), high)` (ONNX Clip; ReLU6 is 0 and 6), f32 only; `low <= high`,
    /// neither NaN.
    Clip { low: f32, high: f32 },
}

impl FoldedActivation {
    /// The flag in the text form (none for `None`): `relu`, `silu`, `gelu`, or
    /// `clip(low, high)`.
    pub fn text(self) -> Option<String> {
        match self {
            FoldedActivation::None => None,
            FoldedActivation::Relu => Some("relu".into()),
            FoldedActivation::Silu => Some("silu".into()),
            FoldedActivation::Gelu => Some("gelu".into()),
            FoldedActivation::Clip { low, high } => Some(format!("clip({low:?}, {high:?})")),
        }
    }
}

/// What a kernel does.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Loop(LoopNest),
    /// The contraction writes `out`; the epilogue (if any) then reads it back, element
    /// for element, as a launch of its own over the whole output.
    Contraction {
        call: Contraction,
        out: u32,
        epilogue: Option<LoopNest>,
    },
}

/// An epilogue's expressions, read as an activation of the value it loads in place.
struct EpilogueShape<'n> {
    nest: &'n LoopNest,
    out: u32,
    index: ExprId,
}

impl EpilogueShape<'_> {
    fn node(&self, e: ExprId) -> Option<Expr> {
        self.nest.nodes.get(e as usize).map(|n| n.expr)
    }

    /// `out[i]` itself.
    fn is_x(&self, e: ExprId) -> bool {
        matches!(self.node(e), Some(Expr::Load { param, index })
            if param == self.out && index == self.index)
    }

    /// A float constant equal to `v` in f32.
    fn is_const(&self, e: ExprId, v: f32) -> bool {
        self.const_f32(e) == Some(v)
    }

    /// The value of a float constant that f32 holds exactly.
    fn const_f32(&self, e: ExprId) -> Option<f32> {
        let Some(Expr::Const(Const::Float(bits))) = self.node(e) else {
            return None;
        };
        let v = f64::from_bits(bits);
        (f64::from(v as f32) == v).then_some(v as f32)
    }

    /// `op(a, c)` or `op(c, a)` with `c` a constant: `a` and the constant.
    fn split_const(&self, e: ExprId, op: BinaryOp) -> Option<(ExprId, f32)> {
        match self.node(e) {
            Some(Expr::Binary(o, a, b)) if o == op => self
                .const_f32(b)
                .map(|c| (a, c))
                .or_else(|| self.const_f32(a).map(|c| (b, c))),
            _ => None,
        }
    }

    /// `min(max(x, low), high)` or `max(min(x, high), low)` with constant bounds in
    /// order: the bounds.
    fn clip(&self, value: ExprId) -> Option<(f32, f32)> {
        let nested = |outer: BinaryOp, inner: BinaryOp| {
            let (inside, a) = self.split_const(value, outer)?;
            let (x, b) = self.split_const(inside, inner)?;
            self.is_x(x).then_some((a, b))
        };
        let bounds = nested(BinaryOp::Min, BinaryOp::Max)
            .map(|(high, low)| (low, high))
            .or_else(|| nested(BinaryOp::Max, BinaryOp::Min));
        // `<=` is false for NaN.
        bounds.filter(|(low, high)| low <= high)
    }

    /// `op(p, q)` with `p` and `q` in either order.
    fn either(
        &self,
        e: ExprId,
        op: BinaryOp,
        p: impl Fn(ExprId) -> bool,
        q: impl Fn(ExprId) -> bool,
    ) -> bool {
        matches!(self.node(e), Some(Expr::Binary(o, a, b))
            if o == op && ((p(a) && q(b)) || (q(a) && p(b))))
    }

    /// `erf(x / sqrt 2)` or `erf(x * (1 / sqrt 2))`.
    fn is_erf_of_scaled_x(&self, e: ExprId) -> bool {
        let Some(Expr::Unary(UnaryOp::Erf, t)) = self.node(e) else {
            return false;
        };
        matches!(self.node(t), Some(Expr::Binary(BinaryOp::Div, a, c))
            if self.is_x(a) && self.is_const(c, std::f32::consts::SQRT_2))
            || self.either(
                t,
                BinaryOp::Mul,
                |a| self.is_x(a),
                |c| self.is_const(c, std::f32::consts::FRAC_1_SQRT_2),
            )
    }

    /// Which activation `value` computes of `out[i]`, if one the calls apply.
    fn activation(&self, value: ExprId) -> Option<FoldedActivation> {
        let x = |e: ExprId| self.is_x(e);
        if self.either(value, BinaryOp::Max, x, |e| self.is_const(e, 0.0)) {
            return Some(FoldedActivation::Relu);
        }
        if let Some((low, high)) = self.clip(value) {
            return Some(FoldedActivation::Clip { low, high });
        }
        let sigmoid =
            |e: ExprId| matches!(self.node(e), Some(Expr::Unary(UnaryOp::Sigmoid, a)) if x(a));
        if self.either(value, BinaryOp::Mul, x, sigmoid) {
            return Some(FoldedActivation::Silu);
        }
        // erf(..) + 1, then times x and times 0.5 in either grouping.
        let s = |e: ExprId| {
            self.either(
                e,
                BinaryOp::Add,
                |a| self.is_erf_of_scaled_x(a),
                |c| self.is_const(c, 1.0),
            )
        };
        let half = |e: ExprId| self.is_const(e, 0.5);
        let x_times_s = |e: ExprId| self.either(e, BinaryOp::Mul, x, s);
        let half_x = |e: ExprId| self.either(e, BinaryOp::Mul, x, half);
        if self.either(value, BinaryOp::Mul, x_times_s, half)
            || self.either(value, BinaryOp::Mul, half_x, s)
        {
            return Some(FoldedActivation::Gelu);
        }
        None
    }
}

/// One kernel.
#[derive(Debug, Clone, PartialEq)]
pub struct Kernel {
    pub name: String,
    pub params: Vec<Param>,
    pub body: Body,
}

impl Kernel {
    /// Folds an epilogue that only applies an activation to a Conv's or MatMul's result
    /// in place (`out[i] = f(out[i])` over every element) into the call, instead of a
    /// generated loop over the output: a ReLU (`max(out, 0)`), or on f32 a SiLU
    /// (`out * sigmoid(out)`) or the exact GELU (`out * (erf(out / sqrt 2) + 1) * 0.5`,
    /// in the orders exporters write it), or on f32 a clip to constant bounds
    /// (`min(max(out, low), high)` in either nesting: ReLU6). A convolution applies it to
    /// each block of results while in cache, a MatMul over its output after `gemm`.
    pub fn fold_activation_epilogue(&mut self) {
        let Kernel { params, body, .. } = self;
        let Body::Contraction {
            call: Contraction::Conv { activation, .. } | Contraction::MatMul { activation, .. },
            out,
            epilogue,
        } = body
        else {
            return;
        };
        let Some(nest) = epilogue.as_ref() else {
            return;
        };
        let out_param = &params[*out as usize];
        let folded = match nest.stores.as_slice() {
            [store] if store.param == *out && nest.domain == [out_param.len()] => {
                let f32_only = out_param.dtype == DType::F32;
                EpilogueShape {
                    nest,
                    out: *out,
                    index: store.index,
                }
                .activation(store.value)
                .filter(|a| *a == FoldedActivation::Relu || f32_only)
                .filter(|_| {
                    nest.nodes.get(store.index as usize).map(|n| n.expr) == Some(Expr::Var(0))
                })
            }
            _ => None,
        };
        if let Some(a) = folded {
            *activation = a;
            *epilogue = None;
        }
    }

    /// This kernel without its name and the names of the values its parameters hold:
    /// two kernels equal in this form compile to the same code.
    pub fn anonymous(&self) -> Kernel {
        Kernel {
            name: String::new(),
            params: self
                .params
                .iter()
                .map(|p| Param {
                    value: String::new(),
                    ..p.clone()
                })
                .collect(),
            body: self.body.clone(),
        }
    }

    /// The loop nest the back ends generate code for, if any.
    pub fn loop_nest(&self) -> Option<&LoopNest> {
        match &self.body {
            Body::Loop(l) => Some(l),
            Body::Contraction { epilogue, .. } => epilogue.as_ref(),
        }
    }

    /// Checks the invariants the back ends rely on.
    pub fn verify(&self) -> Result<(), KernelError> {
        let bad = |reason: String| KernelError::Invalid {
            kernel: self.name.clone(),
            reason,
        };
        let param = |p: u32| {
            self.params
                .get(p as usize)
                .ok_or_else(|| bad(format!("parameter {p} does not exist")))
        };
        if let Body::Contraction { call, out, .. } = &self.body {
            let operands = match call {
                Contraction::MatMul { a, b, bias, .. } => [Some(*a), Some(*b), *bias],
                Contraction::Conv { x, w, bias, .. } => [Some(*x), Some(*w), *bias],
                Contraction::Pool { x, .. } | Contraction::Resize { x, .. } => {
                    [Some(*x), None, None]
                }
            };
            for p in operands.into_iter().flatten() {
                param(p)?;
            }
            if param(*out)?.role != Role::Output {
                return Err(bad("contraction result is not an output".into()));
            }
            if let Contraction::Resize {
                x,
                sampling,
                scales,
                sizes,
            } = call
            {
                let rank = param(*x)?.shape.len();
                if rank < 2 || scales.len() != rank || sizes.len() != rank {
                    return Err(bad(format!(
                        "a resize call of a rank-{rank} operand with {} scales and {} sizes",
                        scales.len(),
                        sizes.len()
                    )));
                }
                if sampling.coord == smelt_ir::CoordMode::TfCropAndResize {
                    return Err(bad("a resize call cannot crop and resize".into()));
                }
            }
        }
        let Some(nest) = self.loop_nest() else {
            return Ok(());
        };
        if nest.domain.is_empty() {
            return Err(bad("empty domain".into()));
        }
        let rank = nest.domain.len() as u32;
        // Reduction variables may be used only inside their reduction's body: track,
        // for every expression, the reduction variables it uses.
        let mut free: Vec<Vec<u32>> = Vec::with_capacity(nest.nodes.len());
        for (i, n) in nest.nodes.iter().enumerate() {
            let id = i as ExprId;
            let ops = nest.operands(id);
            if let Some(&o) = ops.iter().find(|&&o| o >= id) {
                return Err(bad(format!("e{i} uses e{o}, which does not precede it")));
            }
            let mut f: Vec<u32> = ops.iter().flat_map(|&o| free[o as usize].clone()).collect();
            let ty = |e: ExprId| nest.nodes[e as usize].dtype;
            match n.expr {
                Expr::Var(k) if k >= rank => {
                    return Err(bad(format!("e{i}: domain variable {k} out of range")));
                }
                Expr::RVar(v) => f.push(v),
                Expr::Load { param: p, index } => {
                    let p = param(p)?;
                    if p.dtype != n.dtype || ty(index) != DType::I64 {
                        return Err(bad(format!("e{i}: load types disagree")));
                    }
                }
                Expr::Select(c, a, b)
                    if (ty(c) != DType::Bool || ty(a) != n.dtype || ty(b) != n.dtype) =>
                {
                    return Err(bad(format!("e{i}: select types disagree")));
                }
                Expr::Reduce { var, .. } => f.retain(|&v| v != var),
                _ => {}
            }
            f.sort_unstable();
            f.dedup();
            free.push(f);
        }
        for s in &nest.stores {
            let p = param(s.param)?;
            if p.role != Role::Output || p.dtype != nest.node(s.value).dtype {
                return Err(bad(format!(
                    "store of e{} into {} ({}) disagrees",
                    s.value,
                    p.value,
                    p.dtype.name()
                )));
            }
            if !free[s.value as usize].is_empty() || !free[s.index as usize].is_empty() {
                return Err(bad("a store uses a reduction variable".into()));
            }
        }
        Ok(())
    }

    /// The stable text form.
    pub fn print(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "kernel {} {{", self.name);
        for (i, p) in self.params.iter().enumerate() {
            let role = match p.role {
                Role::Input => "in",
                Role::Output => "out",
            };
            let dims: Vec<String> = p.shape.iter().map(usize::to_string).collect();
            let strides: Vec<String> = p.strides().iter().map(usize::to_string).collect();
            let _ = writeln!(
                s,
                "  p{i}: {role} {}[{}] strides [{}]  // {}",
                p.dtype.name(),
                dims.join(", "),
                strides.join(", "),
                p.value
            );
        }
        match &self.body {
            Body::Loop(nest) => print_nest(&mut s, nest, "  "),
            Body::Contraction {
                call,
                out,
                epilogue,
            } => {
                let opt = |b: &Option<u32>| b.map(|b| format!(", bias p{b}")).unwrap_or_default();
                match call {
                    Contraction::MatMul {
                        a,
                        b,
                        bias,
                        trans_a,
                        trans_b,
                        activation,
                    } => {
                        let _ = writeln!(
                            s,
                            "  p{out} = matmul(p{a}{}, p{b}{}{}){}",
                            if *trans_a { "ᵀ" } else { "" },
                            if *trans_b { "ᵀ" } else { "" },
                            opt(bias),
                            activation
                                .text()
                                .map(|a| format!(" {a}"))
                                .unwrap_or_default()
                        );
                    }
                    Contraction::Conv {
                        x,
                        w,
                        bias,
                        strides,
                        pads,
                        dilations,
                        group,
                        activation,
                    } => {
                        let _ = writeln!(
                            s,
                            "  p{out} = conv(p{x}, p{w}{}) strides {strides:?} pads {pads:?} dilations {dilations:?} group {group}{}",
                            opt(bias),
                            activation
                                .text()
                                .map(|a| format!(" {a}"))
                                .unwrap_or_default()
                        );
                    }
                    Contraction::Pool {
                        x,
                        kind,
                        kernel,
                        strides,
                        pads,
                    } => {
                        let _ = writeln!(
                            s,
                            "  p{out} = {}(p{x}) kernel {kernel:?} strides {strides:?} pads {pads:?}",
                            kind.name()
                        );
                    }
                    Contraction::Resize {
                        x,
                        sampling,
                        scales,
                        sizes,
                    } => {
                        let _ = writeln!(
                            s,
                            "  p{out} = resize(p{x}) mode {} coord {} nearest {} cubic_coeff {:?}{} scales {scales:?} sizes {sizes:?}",
                            sampling.mode.name(),
                            sampling.coord.name(),
                            sampling.nearest.name(),
                            sampling.cubic_coeff,
                            if sampling.exclude_outside {
                                " exclude_outside"
                            } else {
                                ""
                            },
                        );
                    }
                }
                if let Some(nest) = epilogue {
                    let _ = writeln!(s, "  epilogue:");
                    print_nest(&mut s, nest, "    ");
                }
            }
        }
        s.push_str("}\n");
        s
    }
}

fn print_nest(s: &mut String, nest: &LoopNest, indent: &str) {
    let dims: Vec<String> = nest.domain.iter().map(usize::to_string).collect();
    let _ = writeln!(s, "{indent}for [{}] {{", dims.join(", "));
    let live = nest.live();
    for (i, n) in nest.nodes.iter().enumerate() {
        if !live[i] {
            continue;
        }
        let text = match n.expr {
            Expr::Var(k) => format!("i{k}"),
            Expr::RVar(v) => format!("r{v}"),
            Expr::Const(Const::Int(v)) => v.to_string(),
            Expr::Const(Const::Float(b)) => format!("{:?}", f64::from_bits(b)),
            Expr::Load { param, index } => format!("load p{param}[e{index}]"),
            Expr::Unary(op, a) => format!("{} e{a}", op.name()),
            Expr::Binary(op, a, b) => format!("{} e{a}, e{b}", op.name()),
            Expr::Select(c, a, b) => format!("select e{c}, e{a}, e{b}"),
            Expr::Cast(a) => format!("cast e{a}"),
            Expr::Reduce {
                combine,
                extent,
                var,
                body,
            } => format!("reduce_{} r{var} < {extent}: e{body}", combine.name()),
        };
        let _ = writeln!(s, "{indent}  e{i}: {} = {text}", n.dtype.name());
    }
    for st in &nest.stores {
        let _ = writeln!(
            s,
            "{indent}  store p{}[e{}] = e{}",
            st.param, st.index, st.value
        );
    }
    let _ = writeln!(s, "{indent}}}");
}
