//! Lowers one Kernel IR loop nest to a CLIF function `fn(args: *const *mut u8, begin, end)`.
//!
//! Every expression is placed in the outermost scope where its variables are defined
//! (kernel entry, row loop, inner loop, or the body of a reduction), so reductions over a
//! row are computed once per row and constants once per call. The innermost loop runs
//! four f32 lanes at a time when every expression in it vectorizes (f32 arithmetic,
//! contiguous loads and stores, index arithmetic evaluated for lane 0), then a scalar
//! tail; otherwise it runs scalar.

use crate::CpuError;
use crate::math::Math;
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{
    AbiParam, Block, FuncRef, Function, InstBuilder, MemFlags, Signature, StackSlotData,
    StackSlotKind, Type, Value, types,
};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::{Linkage, Module};
use smelt_fuse::kernel::{Combine, Const, Expr, ExprId, Kernel, LoopNest, Variable};
use smelt_ir::{BinaryOp, DType, UnaryOp};
use std::collections::{HashMap, HashSet};

mod loops;
mod placement;
mod reduce;
mod scalar;
mod vector;

use placement::*;
use vector::*;

/// The kernel ABI: argument pointer table, then the `[begin, end)` outer range.
pub fn kernel_signature(module: &impl Module) -> Signature {
    let mut sig = module.make_signature();
    for _ in 0..3 {
        sig.params.push(AbiParam::new(types::I64));
    }
    sig
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Scope {
    Entry,
    Row,
    Inner,
    Reduce(u32),
}

#[derive(Debug, Clone, Copy)]
enum Val {
    /// A scalar (uniform across lanes in vector mode; lane 0 for index arithmetic).
    S(Value),
    /// Four f32 lanes, or an i32x4 mask for bools.
    V(Value),
}

/// Shortest row whose max goes to the runtime's full-width helper: below it the call
/// costs about what the 128-bit loop does.
const ROW_HELPER_MIN: u64 = 64;

const LANES: i64 = 4;

/// Most versions of an inner loop unswitched on per-row select conditions: a
/// concatenation of up to this many parts reads one part per row (decision 62).
const MAX_VERSIONS: usize = 64;

/// Reductions over at most this many elements unroll...
const MAX_UNROLL: u64 = 16;
/// ...when their unrolled body has at most this many expressions.
const MAX_UNROLLED: usize = 1024;

/// Register type of a dtype's values: ints compute in i64, bools in i8, halves in f32.
fn reg(dtype: DType) -> Type {
    match dtype {
        DType::F32 | DType::F16 | DType::BF16 => types::F32,
        DType::F64 => types::F64,
        DType::Bool => types::I8,
        _ => types::I64,
    }
}

fn mem() -> MemFlags {
    MemFlags::new().with_notrap()
}

struct Gen<'a, 'm, M: Module> {
    b: FunctionBuilder<'a>,
    module: &'m mut M,
    helpers: HashMap<String, FuncRef>,
    kernel: &'a Kernel,
    nest: &'a LoopNest,
    place: Vec<Scope>,
    members: HashMap<Scope, Vec<ExprId>>,
    stores_at: HashMap<Scope, Vec<usize>>,
    params: Vec<Value>,
    row_coords: Vec<Value>,
    inner: Option<Value>,
    rvars: HashMap<u32, Value>,
    frames: Vec<HashMap<ExprId, Val>>,
    /// The scope whose f32 expressions are being emitted as four lanes along a reduction
    /// variable, if any (`vector_reduce`).
    lanes_scope: Option<Scope>,
    /// Whether the inner loop is being emitted four output elements at a time: then every
    /// expression that varies with the inner variable (in the inner scope or the bodies of
    /// reductions nested there) is a vector.
    inner_lanes: bool,
    /// The inner scope and the bodies of the reductions placed in it, transitively.
    inner_scopes: HashSet<Scope>,
    /// Whether each expression depends on the inner variable.
    varies: Vec<bool>,
    /// Coefficient of the inner variable in each index expression (affine ones).
    inner_coefs: HashMap<ExprId, Option<i64>>,
    /// Per-row f32 values that divide per-element ones (a softmax's sum), and their
    /// reciprocals once emitted: the inner loop multiplies instead of dividing.
    row_divisors: HashSet<ExprId>,
    reciprocals: HashMap<ExprId, Value>,
    /// Reductions that accumulate four lanes at a time.
    vector_reductions: HashSet<ExprId>,
    /// Value range of each i64 expression over the whole domain, where known.
    ranges: Vec<Option<(i64, i64)>>,
    /// A reduction that stores its steps for the inner loop (`find_stash`), and the
    /// inner-loop expressions its twin no longer needs.
    stash: Option<Stash>,
    stash_skip: HashSet<ExprId>,
    /// Inner-loop selects whose condition is fixed per row (a concat choosing its part):
    /// the inner loop is emitted once per outcome of those conditions
    /// (`inner_loop_versions`), and `needed` lists the inner-loop expressions the version
    /// being emitted computes (None: all).
    row_selects: Vec<ExprId>,
    needed: Option<HashSet<ExprId>>,
    /// Inner-loop positions where the comparisons in `interior.2` hold whatever the other
    /// variables are (`interior_of`).
    interior: Option<(i64, i64, HashSet<ExprId>)>,
    /// Booleans known in the part of the inner loop being emitted: the per-row conditions
    /// of its version, the edge comparisons in the interior, and what `emit_known`
    /// derives from them.
    known: HashMap<ExprId, bool>,
    fma: bool,
}

/// Whether the host has FMA (Cranelift may emit `fma` only then).
pub fn host_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Builds the CLIF of `nest` (the loop nest of `kernel`) into `func`.
pub fn build<M: Module>(
    module: &mut M,
    func: &mut Function,
    fctx: &mut FunctionBuilderContext,
    kernel: &Kernel,
    nest: &LoopNest,
    fma: bool,
) -> Result<(), CpuError> {
    let rank = nest.domain.len();
    let live = nest.live();
    let (place, reduce_of) = placement(nest, &live);
    let mut members: HashMap<Scope, Vec<ExprId>> = HashMap::new();
    for (e, &l) in live.iter().enumerate() {
        if l {
            members.entry(place[e]).or_default().push(e as ExprId);
        }
    }
    let depth = |s: Scope, place: &[Scope]| scope_depth(s, place, &reduce_of);
    let mut stores_at: HashMap<Scope, Vec<usize>> = HashMap::new();
    for (i, s) in nest.stores.iter().enumerate() {
        let (a, b) = (place[s.index as usize], place[s.value as usize]);
        let at = if depth(a, &place) >= depth(b, &place) {
            a
        } else {
            b
        };
        stores_at.entry(at).or_default().push(i);
    }
    let varies = varies_with_inner(nest);
    let inner_scopes = scopes_within_inner(nest, &live, &place);
    let ranges = nest.index_ranges();
    let users = users_of(nest, &live);
    let vectorize = vectorizable(nest, &live, &users, &place, &varies, &inner_scopes, &ranges);
    let mut inner_coefs = HashMap::new();
    for (e, node) in nest.nodes.iter().enumerate() {
        if !live[e] {
            continue;
        }
        match node.expr {
            Expr::Load { index, .. } => {
                axis_coef(nest, index, Axis::Inner, &mut inner_coefs);
            }
            Expr::Binary(op, a, b) if op.is_comparison() => {
                axis_coef(nest, a, Axis::Inner, &mut inner_coefs);
                axis_coef(nest, b, Axis::Inner, &mut inner_coefs);
            }
            _ => {}
        }
    }
    let vector_reductions = (0..nest.nodes.len() as ExprId)
        .filter(|&e| {
            live[e as usize] && reduction_vectorizes(nest, &live, &users, &place, &stores_at, e)
        })
        .collect();
    let stash = find_stash(nest, &live, &place, &users, &vector_reductions, kernel);
    let row_selects: Vec<ExprId> = (0..nest.nodes.len() as ExprId)
        .filter(|&e| {
            live[e as usize]
                && place[e as usize] == Scope::Inner
                && matches!(nest.node(e).expr, Expr::Select(c, _, _)
                    if matches!(place[c as usize], Scope::Row | Scope::Entry))
        })
        .collect();
    let stash_skip = stash.map_or_else(HashSet::new, |st| only_for(nest, &live, &users, st.twin));
    let row_divisors: HashSet<ExprId> = (0..nest.nodes.len())
        .filter_map(|e| match nest.nodes[e].expr {
            Expr::Binary(BinaryOp::Div, a, d)
                if live[e]
                    && nest.nodes[e].dtype == DType::F32
                    && place[a as usize] == Scope::Inner
                    && place[d as usize] == Scope::Row =>
            {
                Some(d)
            }
            _ => None,
        })
        .collect();
    let interior = interior_of(nest, &live, &varies, &inner_coefs);
    let b = FunctionBuilder::new(func, fctx);
    let mut g = Gen {
        b,
        module,
        helpers: HashMap::new(),
        kernel,
        nest,
        place,
        members,
        stores_at,
        params: vec![],
        row_coords: vec![],
        inner: None,
        rvars: HashMap::new(),
        frames: vec![HashMap::new()],
        row_divisors,
        reciprocals: HashMap::new(),
        lanes_scope: None,
        inner_lanes: false,
        inner_scopes,
        varies,
        inner_coefs,
        vector_reductions,
        ranges,
        stash,
        stash_skip,
        row_selects,
        needed: None,
        interior,
        known: HashMap::new(),
        fma,
    };
    let entry = g.b.create_block();
    g.b.append_block_params_for_function_params(entry);
    g.b.switch_to_block(entry);
    let args = g.b.block_params(entry).to_vec();
    let (argv, begin, end) = (args[0], args[1], args[2]);
    for i in 0..kernel.params.len() {
        let p = g.b.ins().load(types::I64, mem(), argv, (i * 8) as i32);
        g.params.push(p);
    }
    g.emit_scope(Scope::Entry)?;
    if rank >= 2 {
        let inner_dims = &nest.domain[..rank - 1];
        let (header, body, exit) = (g.b.create_block(), g.b.create_block(), g.b.create_block());
        let r = g.b.append_block_param(header, types::I64);
        g.b.ins().jump(header, &[begin.into()]);
        g.b.switch_to_block(header);
        let more = g.b.ins().icmp(IntCC::SignedLessThan, r, end);
        g.b.ins().brif(more, body, &[], exit, &[]);
        g.b.switch_to_block(body);
        // Row coordinates from the flat row index.
        let mut coords = Vec::with_capacity(rank - 1);
        for k in 0..inner_dims.len() {
            let stride: usize = inner_dims[k + 1..].iter().product();
            let q = if stride == 1 {
                r
            } else {
                g.b.ins().udiv_imm(r, stride as i64)
            };
            let c = if k == 0 {
                q
            } else {
                g.b.ins().urem_imm(q, inner_dims[k] as i64)
            };
            coords.push(c);
        }
        g.row_coords = coords;
        g.frames.push(HashMap::new());
        g.emit_scope(Scope::Row)?;
        let zero = g.b.ins().iconst(types::I64, 0);
        let n = g.b.ins().iconst(types::I64, nest.domain[rank - 1] as i64);
        g.inner_loop_versions(zero, n, vectorize, &mut (MAX_VERSIONS - 1))?;
        g.frames.pop();
        let next = g.b.ins().iadd_imm(r, 1);
        g.b.ins().jump(header, &[next.into()]);
        g.b.switch_to_block(exit);
    } else {
        g.inner_loop_versions(begin, end, vectorize, &mut (MAX_VERSIONS - 1))?;
    }
    g.b.ins().return_(&[]);
    g.b.seal_all_blocks();
    g.b.finalize();
    Ok(())
}

impl<M: Module> Gen<'_, '_, M> {
    /// The value of `e` if it has been emitted in an enclosing scope.
    pub(super) fn emitted(&self, e: ExprId) -> Option<Val> {
        self.frames.iter().rev().find_map(|f| f.get(&e).copied())
    }

    pub(super) fn get(&self, e: ExprId) -> Val {
        for f in self.frames.iter().rev() {
            if let Some(&v) = f.get(&e) {
                return v;
            }
        }
        panic!("expression e{e} used before it was emitted (placement bug)")
    }

    pub(super) fn scalar(&self, e: ExprId) -> Value {
        match self.get(e) {
            Val::S(v) => v,
            Val::V(_) => panic!("e{e} is a vector where a scalar is needed"),
        }
    }

    /// `e` as lanes: vectors as they are, uniform scalars splatted.
    pub(super) fn lanes(&mut self, e: ExprId) -> Value {
        match self.get(e) {
            Val::V(v) => v,
            Val::S(s) => {
                if self.nest.node(e).dtype == DType::Bool {
                    let t = self.b.ins().iconst(types::I32, -1);
                    let f = self.b.ins().iconst(types::I32, 0);
                    let m = self.b.ins().select(s, t, f);
                    self.b.ins().splat(types::I32X4, m)
                } else {
                    self.b.ins().splat(types::F32X4, s)
                }
            }
        }
    }

    pub(super) fn set(&mut self, e: ExprId, v: Val) {
        self.frames.last_mut().expect("a frame").insert(e, v);
    }

    pub(super) fn helper(
        &mut self,
        name: &str,
        params: &[Type],
        ret: Type,
    ) -> Result<FuncRef, CpuError> {
        if let Some(&f) = self.helpers.get(name) {
            return Ok(f);
        }
        let mut sig = self.module.make_signature();
        for &p in params {
            sig.params.push(AbiParam::new(p));
        }
        sig.returns.push(AbiParam::new(ret));
        let id = self
            .module
            .declare_function(name, Linkage::Import, &sig)
            .map_err(|e| CpuError::Codegen(format!("declaring {name}: {e}")))?;
        let f = self.module.declare_func_in_func(id, self.b.func);
        self.helpers.insert(name.to_string(), f);
        Ok(f)
    }

    pub(super) fn call(
        &mut self,
        name: &str,
        args: &[Value],
        ret: Type,
    ) -> Result<Value, CpuError> {
        let params: Vec<Type> = args
            .iter()
            .map(|&a| self.b.func.dfg.value_type(a))
            .collect();
        let f = self.helper(name, &params, ret)?;
        let inst = self.b.ins().call(f, args);
        Ok(self.b.inst_results(inst)[0])
    }

    pub(super) fn emit_scope(&mut self, scope: Scope) -> Result<(), CpuError> {
        let exprs = self.members.get(&scope).cloned().unwrap_or_default();
        for e in exprs {
            if scope == Scope::Inner
                && (self.stash_skip.contains(&e)
                    || self.needed.as_ref().is_some_and(|n| !n.contains(&e)))
            {
                continue;
            }
            if matches!(self.nest.node(e).expr, Expr::Reduce { .. }) {
                self.emit_reduce(e)?;
            } else {
                self.emit_op(e)?;
            }
        }
        let stores = self.stores_at.get(&scope).cloned().unwrap_or_default();
        for i in stores {
            self.emit_store(i)?;
        }
        Ok(())
    }

    /// Emits `e` from the booleans known where it is being emitted, if they decide it: a
    /// known boolean is a constant, an `and` with a false side is false and with a true
    /// side is its other side, a select on a known condition is the arm it picks.
    pub(super) fn emit_known(&mut self, e: ExprId) -> bool {
        if self.known.is_empty() {
            return false;
        }
        let known = |x: ExprId| self.known.get(&x).copied();
        let constant = match (known(e), self.nest.node(e).expr) {
            (Some(v), _) => Some(v),
            (None, Expr::Binary(BinaryOp::And, a, b)) => match (known(a), known(b)) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                (Some(true), None) => return self.alias(e, b),
                (None, Some(true)) => return self.alias(e, a),
                (None, None) => None,
            },
            (None, Expr::Select(c, a, b)) => {
                return match known(c) {
                    Some(pick) => self.alias(e, if pick { a } else { b }),
                    None => false,
                };
            }
            _ => None,
        };
        let Some(v) = constant else {
            return false;
        };
        self.known.insert(e, v);
        let t = self.b.ins().iconst(types::I8, i64::from(v));
        self.set(e, Val::S(t));
        true
    }

    /// Makes `e` the value `of` already has; true, for `emit_known`.
    pub(super) fn alias(&mut self, e: ExprId, of: ExprId) -> bool {
        let v = self.get(of);
        self.set(e, v);
        true
    }
}

fn float_cc(op: BinaryOp) -> FloatCC {
    match op {
        BinaryOp::Equal => FloatCC::Equal,
        BinaryOp::Less => FloatCC::LessThan,
        BinaryOp::LessEqual => FloatCC::LessThanOrEqual,
        BinaryOp::Greater => FloatCC::GreaterThan,
        _ => FloatCC::GreaterThanOrEqual,
    }
}

fn int_cc(op: BinaryOp, unsigned: bool) -> IntCC {
    match (op, unsigned) {
        (BinaryOp::Equal, _) => IntCC::Equal,
        (BinaryOp::Less, false) => IntCC::SignedLessThan,
        (BinaryOp::LessEqual, false) => IntCC::SignedLessThanOrEqual,
        (BinaryOp::Greater, false) => IntCC::SignedGreaterThan,
        (BinaryOp::GreaterEqual, false) => IntCC::SignedGreaterThanOrEqual,
        (BinaryOp::Less, true) => IntCC::UnsignedLessThan,
        (BinaryOp::LessEqual, true) => IntCC::UnsignedLessThanOrEqual,
        (BinaryOp::Greater, true) => IntCC::UnsignedGreaterThan,
        _ => IntCC::UnsignedGreaterThanOrEqual,
    }
}
