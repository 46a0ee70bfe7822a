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

/// Most versions of an inner loop unswitched on per-row select conditions.
const MAX_VERSIONS: usize = 8;

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

fn scope_depth(s: Scope, place: &[Scope], reduce_of: &HashMap<u32, ExprId>) -> usize {
    match s {
        Scope::Entry => 0,
        Scope::Row => 1,
        Scope::Inner => 2,
        Scope::Reduce(v) => 1 + scope_depth(place[reduce_of[&v] as usize], place, reduce_of),
    }
}

/// The scope of every expression, and the reduction expression binding each variable.
fn placement(nest: &LoopNest, live: &[bool]) -> (Vec<Scope>, HashMap<u32, ExprId>) {
    let rank = nest.domain.len() as u32;
    let n = nest.nodes.len();
    let mut reduce_of = HashMap::new();
    for (i, node) in nest.nodes.iter().enumerate() {
        if let Expr::Reduce { var, .. } = node.expr {
            reduce_of.insert(var, i as ExprId);
        }
    }
    // Free reduction variables and the deepest domain level used, per expression.
    let mut free: Vec<Vec<u32>> = Vec::with_capacity(n);
    let mut level: Vec<u8> = Vec::with_capacity(n);
    for (i, node) in nest.nodes.iter().enumerate() {
        let ops = nest.operands(i as ExprId);
        let mut f: Vec<u32> = ops.iter().flat_map(|&o| free[o as usize].clone()).collect();
        let mut l = ops.iter().map(|&o| level[o as usize]).max().unwrap_or(0);
        match node.expr {
            Expr::Var(k) => l = l.max(if k + 1 == rank { 2 } else { 1 }),
            Expr::RVar(v) => f.push(v),
            Expr::Reduce { var, .. } => f.retain(|&x| x != var),
            _ => {}
        }
        f.sort_unstable();
        f.dedup();
        free.push(f);
        level.push(l);
    }
    // Resolve scopes from the outside in: a reduction's scope must be known before the
    // scopes nested in it, and reductions come after their bodies, so iterate to a fixpoint.
    let mut place = vec![Scope::Entry; n];
    let base = |l: u8| match l {
        0 => Scope::Entry,
        1 => Scope::Row,
        _ => Scope::Inner,
    };
    for i in 0..n {
        place[i] = base(level[i]);
    }
    let mut depth_memo: HashMap<u32, usize> = HashMap::new();
    fn depth_of(
        v: u32,
        free: &[Vec<u32>],
        level: &[u8],
        reduce_of: &HashMap<u32, ExprId>,
        memo: &mut HashMap<u32, usize>,
    ) -> usize {
        if let Some(&d) = memo.get(&v) {
            return d;
        }
        let r = reduce_of[&v] as usize;
        let mut d = level[r] as usize;
        for &w in &free[r] {
            d = d.max(depth_of(w, free, level, reduce_of, memo));
        }
        let d = d + 1;
        memo.insert(v, d);
        d
    }
    for i in 0..n {
        if !live[i] && !matches!(nest.nodes[i].expr, Expr::RVar(_)) {
            continue;
        }
        let mut best = place[i];
        let mut best_depth = level[i] as usize;
        for &v in &free[i] {
            let d = depth_of(v, &free, &level, &reduce_of, &mut depth_memo);
            if d > best_depth {
                best_depth = d;
                best = Scope::Reduce(v);
            }
        }
        place[i] = best;
    }
    (place, reduce_of)
}

/// The loop variable a vector of lanes runs along.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Axis {
    /// The innermost domain variable.
    Inner,
    /// A reduction variable.
    Reduction(u32),
}

/// The coefficient of `axis` in an index expression, if the expression is affine in it
/// (`LoopNest::coefficient`).
fn axis_coef(
    nest: &LoopNest,
    e: ExprId,
    axis: Axis,
    memo: &mut HashMap<ExprId, Option<i64>>,
) -> Option<i64> {
    let var = match axis {
        Axis::Inner => Variable::Domain(nest.domain.len() as u32 - 1),
        Axis::Reduction(v) => Variable::Reduction(v),
    };
    nest.coefficient(e, var, memo)
}

/// Users of every live expression.
fn users_of(nest: &LoopNest, live: &[bool]) -> Vec<Vec<ExprId>> {
    let mut users: Vec<Vec<ExprId>> = vec![vec![]; nest.nodes.len()];
    for (i, &l) in live.iter().enumerate() {
        if l {
            for o in nest.operands(i as ExprId) {
                users[o as usize].push(i as ExprId);
            }
        }
    }
    users
}

/// The inner-loop positions `[lo, hi)` where every comparison that is affine in the inner
/// variable holds whatever values the other variables (rows, reduction taps) take, and
/// those comparisons: inside a padded window's plane, its edge checks. None when fewer
/// than two vector blocks of positions qualify.
fn interior_of(
    nest: &LoopNest,
    live: &[bool],
    varies: &[bool],
    inner_coefs: &HashMap<ExprId, Option<i64>>,
) -> Option<(i64, i64, HashSet<ExprId>)> {
    let rank = nest.domain.len();
    let n = *nest.domain.last()? as i64;
    // Ranges with the inner variable pinned to 0: an affine `x` is `x(0) + c * i`.
    let mut pinned = nest.domain.clone();
    pinned[rank - 1] = 1;
    let rest = nest.index_ranges_over(&pinned);
    let (mut lo, mut hi) = (0i64, n - 1);
    let mut holds = HashSet::new();
    for (e, node) in nest.nodes.iter().enumerate() {
        let Expr::Binary(op, a, b) = node.expr else {
            continue;
        };
        if !live[e]
            || !varies[e]
            || nest.node(a).dtype != DType::I64
            || !matches!(
                op,
                BinaryOp::Less | BinaryOp::LessEqual | BinaryOp::Greater | BinaryOp::GreaterEqual
            )
        {
            continue;
        }
        let coef = |x: ExprId| inner_coefs.get(&x).copied().flatten();
        let (Some(ca), Some(cb), Some((alo, ahi)), Some((blo, bhi))) =
            (coef(a), coef(b), rest[a as usize], rest[b as usize])
        else {
            continue;
        };
        // a - b = c * i + d with d in [dlo, dhi].
        let (Some(c), Some(dlo), Some(dhi)) = (
            ca.checked_sub(cb),
            alo.checked_sub(bhi),
            ahi.checked_sub(blo),
        ) else {
            continue;
        };
        if c == 0 {
            continue;
        }
        // The comparison as `c * i >= t` (at least) or `c * i <= t` (at most), for the
        // worst d.
        let (at_least, t) = match op {
            BinaryOp::GreaterEqual => (true, -dlo),
            BinaryOp::Greater => (true, 1 - dlo),
            BinaryOp::LessEqual => (false, -dhi),
            _ => (false, -1 - dhi),
        };
        let floor = |x: i64, y: i64| x.div_euclid(y) - i64::from(y < 0 && x.rem_euclid(y) != 0);
        let ceil = |x: i64, y: i64| -floor(-x, y);
        // Dividing by a negative c flips the inequality.
        if at_least == (c > 0) {
            lo = lo.max(ceil(t, c));
        } else {
            hi = hi.min(floor(t, c));
        }
        holds.insert(e as ExprId);
    }
    (!holds.is_empty() && hi + 1 - lo >= 2 * LANES).then_some((lo, hi + 1, holds))
}

/// A per-row reduction whose per-step values an inner-loop expression (its twin) computes
/// again, as a softmax's `exp(x - max)` for its sum and for its output: the reduction
/// stores its steps into the output row, and the inner loop loads the twin from there
/// instead of recomputing it (the store then overwrites each element after its load).
#[derive(Debug, Clone, Copy)]
struct Stash {
    reduction: ExprId,
    twin: ExprId,
    /// The output parameter and its store's index, `row_base + inner variable`.
    param: u32,
    index: ExprId,
    row_base: Option<ExprId>,
}

/// The stash of `nest`, if it has one: a vectorized f32 reduction placed per row over the
/// inner extent whose body is more than a load, an inner-loop twin of that body (the same
/// expression with the reduction variable for the inner one), and an f32 output stored
/// contiguously along the inner variable that nothing in the kernel loads or stores again.
fn find_stash(
    nest: &LoopNest,
    live: &[bool],
    place: &[Scope],
    users: &[Vec<ExprId>],
    vector_reductions: &HashSet<ExprId>,
    kernel: &Kernel,
) -> Option<Stash> {
    let rank = nest.domain.len();
    if rank < 2 {
        return None;
    }
    let inner = (rank - 1) as u32;
    let store = nest
        .stores
        .iter()
        .find(|st| place[st.index as usize] == Scope::Inner)?;
    let param = store.param;
    if kernel.params[param as usize].dtype != DType::F32
        || nest.stores.iter().filter(|st| st.param == param).count() != 1
        || nest
            .nodes
            .iter()
            .enumerate()
            .any(|(e, n)| live[e] && matches!(n.expr, Expr::Load { param: q, .. } if q == param))
    {
        return None;
    }
    let is_inner = |e: ExprId| nest.node(e).expr == Expr::Var(inner);
    let row_base = match nest.node(store.index).expr {
        Expr::Var(k) if k == inner => None,
        Expr::Binary(BinaryOp::Add, a, b) if is_inner(a) || is_inner(b) => {
            let base = if is_inner(a) { b } else { a };
            if !matches!(place[base as usize], Scope::Row | Scope::Entry) {
                return None;
            }
            Some(base)
        }
        _ => return None,
    };
    for (r, node) in nest.nodes.iter().enumerate() {
        let r = r as ExprId;
        let Expr::Reduce {
            extent, var, body, ..
        } = node.expr
        else {
            continue;
        };
        if !vector_reductions.contains(&r)
            || place[r as usize] != Scope::Row
            || extent != nest.domain[rank - 1] as u64
            || nest.node(body).dtype != DType::F32
            || matches!(nest.node(body).expr, Expr::Load { .. })
            || row_base.is_some_and(|b| b > r)
        {
            continue;
        }
        let mut memo = HashMap::new();
        let twin = (0..nest.nodes.len() as ExprId).find(|&x| {
            live[x as usize]
                && place[x as usize] == Scope::Inner
                && x > store.index
                && twins(nest, x, body, inner, var, &mut memo)
        });
        if let Some(twin) = twin {
            // The twin must be read by the inner loop only (not by reductions nested
            // there, whose bodies would see it before the inner loop loads it).
            if users[twin as usize]
                .iter()
                .all(|&u| place[u as usize] == Scope::Inner)
            {
                return Some(Stash {
                    reduction: r,
                    twin,
                    param,
                    index: store.index,
                    row_base,
                });
            }
        }
    }
    None
}

/// Whether `x` (in the inner loop) computes what `b` (a reduction body) does, with the
/// inner variable `inner` in place of the reduction variable `var`.
fn twins(
    nest: &LoopNest,
    x: ExprId,
    b: ExprId,
    inner: u32,
    var: u32,
    memo: &mut HashMap<(ExprId, ExprId), bool>,
) -> bool {
    if x == b {
        // Shared: it uses neither variable.
        return true;
    }
    if let Some(&v) = memo.get(&(x, b)) {
        return v;
    }
    let (nx, nb) = (nest.node(x), nest.node(b));
    let same = nx.dtype == nb.dtype
        && match (nx.expr, nb.expr) {
            (Expr::Var(k), Expr::RVar(v)) => k == inner && v == var,
            (Expr::Load { param: p, index: i }, Expr::Load { param: q, index: j }) => {
                p == q && twins(nest, i, j, inner, var, memo)
            }
            (Expr::Unary(o, a), Expr::Unary(p, c)) => o == p && twins(nest, a, c, inner, var, memo),
            (Expr::Cast(a), Expr::Cast(c)) => twins(nest, a, c, inner, var, memo),
            (Expr::Binary(o, a, a2), Expr::Binary(p, c, c2)) => {
                o == p
                    && twins(nest, a, c, inner, var, memo)
                    && twins(nest, a2, c2, inner, var, memo)
            }
            (Expr::Select(k, a, a2), Expr::Select(l, c, c2)) => {
                twins(nest, k, l, inner, var, memo)
                    && twins(nest, a, c, inner, var, memo)
                    && twins(nest, a2, c2, inner, var, memo)
            }
            _ => false,
        };
    memo.insert((x, b), same);
    same
}

/// Inner-loop expressions that only feed `twin` (which the stash replaces by a load).
fn only_for(
    nest: &LoopNest,
    live: &[bool],
    users: &[Vec<ExprId>],
    twin: ExprId,
) -> HashSet<ExprId> {
    let stored: HashSet<ExprId> = nest
        .stores
        .iter()
        .flat_map(|s| [s.index, s.value])
        .collect();
    let mut only = HashSet::new();
    for e in (0..twin).rev() {
        if live[e as usize]
            && !stored.contains(&e)
            && !users[e as usize].is_empty()
            && users[e as usize]
                .iter()
                .all(|&u| u == twin || only.contains(&u))
        {
            only.insert(e);
        }
    }
    only
}

/// Whether each expression depends on the innermost domain variable.
fn varies_with_inner(nest: &LoopNest) -> Vec<bool> {
    let rank = nest.domain.len() as u32;
    let mut varies = Vec::with_capacity(nest.nodes.len());
    for (i, node) in nest.nodes.iter().enumerate() {
        let v = match node.expr {
            Expr::Var(k) => k + 1 == rank,
            _ => nest
                .operands(i as ExprId)
                .iter()
                .any(|&o| varies[o as usize]),
        };
        varies.push(v);
    }
    varies
}

/// The inner scope and the bodies of every reduction placed inside it (transitively).
fn scopes_within_inner(nest: &LoopNest, live: &[bool], place: &[Scope]) -> HashSet<Scope> {
    let mut set = HashSet::from([Scope::Inner]);
    loop {
        let before = set.len();
        for (e, node) in nest.nodes.iter().enumerate() {
            if let Expr::Reduce { var, .. } = node.expr
                && live[e]
                && set.contains(&place[e])
            {
                set.insert(Scope::Reduce(var));
            }
        }
        if set.len() == before {
            return set;
        }
    }
}

/// Whether the inner loop of `nest` can run four output elements at a time: every
/// expression that varies with the inner variable (in the inner scope or in the bodies of
/// reductions there) has a four-lane form (f32 arithmetic, loads affine in the inner
/// variable, f32 sum/product/max/min reductions, index arithmetic feeding loads), and
/// stores are contiguous f32.
fn vectorizable(
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
struct LaneRules<'a> {
    /// The variable the lanes run along.
    axis: Axis,
    /// Loads may step by any constant along the axis (gathered), not only by one.
    strided_loads: bool,
    /// f32 sum/product/max/min reductions may appear (one accumulator per lane).
    reductions: bool,
    /// Value ranges that let i64 comparisons run in i32 lanes; none: no such compares.
    compare_ranges: Option<&'a [Option<(i64, i64)>]>,
}

/// Whether every live expression `in_set` takes has a four-lane form along the rules'
/// axis: f32 arithmetic, loads affine in the axis, and index arithmetic that only feeds
/// loads, stores and lane comparisons.
fn lanes_fit(
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
fn lane_value(
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

fn lane_unary(op: UnaryOp) -> bool {
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
fn pow_exponent(nest: &LoopNest, node: &smelt_fuse::kernel::Node) -> Option<f32> {
    let Expr::Binary(BinaryOp::Pow, _, c) = node.expr else {
        return None;
    };
    let Expr::Const(Const::Float(bits)) = nest.node(c).expr else {
        return None;
    };
    let v = f64::from_bits(bits) as f32;
    (node.dtype == DType::F32 && nest.node(c).dtype == DType::F32 && v.is_finite()).then_some(v)
}

fn lane_binary(op: BinaryOp) -> bool {
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
fn reduction_vectorizes(
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
    fn get(&self, e: ExprId) -> Val {
        for f in self.frames.iter().rev() {
            if let Some(&v) = f.get(&e) {
                return v;
            }
        }
        panic!("expression e{e} used before it was emitted (placement bug)")
    }

    fn scalar(&self, e: ExprId) -> Value {
        match self.get(e) {
            Val::S(v) => v,
            Val::V(_) => panic!("e{e} is a vector where a scalar is needed"),
        }
    }

    /// `e` as lanes: vectors as they are, uniform scalars splatted.
    fn lanes(&mut self, e: ExprId) -> Value {
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

    fn set(&mut self, e: ExprId, v: Val) {
        self.frames.last_mut().expect("a frame").insert(e, v);
    }

    fn helper(&mut self, name: &str, params: &[Type], ret: Type) -> Result<FuncRef, CpuError> {
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

    fn call(&mut self, name: &str, args: &[Value], ret: Type) -> Result<Value, CpuError> {
        let params: Vec<Type> = args
            .iter()
            .map(|&a| self.b.func.dfg.value_type(a))
            .collect();
        let f = self.helper(name, &params, ret)?;
        let inst = self.b.ins().call(f, args);
        Ok(self.b.inst_results(inst)[0])
    }

    fn emit_scope(&mut self, scope: Scope) -> Result<(), CpuError> {
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

    /// The inner loop, once per outcome of the per-row select conditions it needs (at most
    /// `MAX_VERSIONS` versions: each split spends one of `splits`): each version computes
    /// only the arms its outcome picks, so a concatenation reads one part per row instead
    /// of all of them.
    fn inner_loop_versions(
        &mut self,
        lo: Value,
        hi: Value,
        vectorize: bool,
        splits: &mut usize,
    ) -> Result<(), CpuError> {
        let needed = self.needed_in_inner();
        let open = self
            .row_selects
            .iter()
            .find_map(|&e| match self.nest.node(e).expr {
                Expr::Select(c, _, _) if needed.contains(&e) && !self.known.contains_key(&c) => {
                    Some(c)
                }
                _ => None,
            });
        match open {
            Some(c) if *splits > 0 => {
                *splits -= 1;
                let cond = self.scalar(c);
                let (then, other, join) = (
                    self.b.create_block(),
                    self.b.create_block(),
                    self.b.create_block(),
                );
                self.b.ins().brif(cond, then, &[], other, &[]);
                for (block, pick) in [(then, true), (other, false)] {
                    self.b.switch_to_block(block);
                    self.known.insert(c, pick);
                    self.inner_loop_versions(lo, hi, vectorize, splits)?;
                    self.known.remove(&c);
                    self.b.ins().jump(join, &[]);
                }
                self.b.switch_to_block(join);
                Ok(())
            }
            _ => {
                self.needed = (!self.known.is_empty()).then_some(needed);
                let r = self.inner_loop_split(lo, hi, vectorize);
                self.needed = None;
                r
            }
        }
    }

    /// The inner-loop expressions the inner stores need when the selects on known
    /// conditions take the arms those say.
    fn needed_in_inner(&self) -> HashSet<ExprId> {
        let (mut needed, mut seen) = (HashSet::new(), HashSet::new());
        let mut stack: Vec<ExprId> = self
            .stores_at
            .get(&Scope::Inner)
            .into_iter()
            .flatten()
            .flat_map(|&i| [self.nest.stores[i].index, self.nest.stores[i].value])
            .collect();
        // Through every scope: the bodies of reductions placed in the inner loop may read
        // inner-loop values.
        while let Some(e) = stack.pop() {
            if !seen.insert(e) {
                continue;
            }
            if self.place[e as usize] == Scope::Inner {
                needed.insert(e);
            }
            match self.nest.node(e).expr {
                Expr::Select(c, a, b) if self.known.contains_key(&c) => {
                    stack.push(if self.known[&c] { a } else { b })
                }
                _ => stack.extend(self.nest.operands(e)),
            }
        }
        needed
    }

    /// The inner loop over `[lo, hi)`, in three parts where it has an interior
    /// (`interior_of`): before it, the interior (where the edge comparisons are known
    /// true, so their masks and selects vanish), and after it.
    fn inner_loop_split(&mut self, lo: Value, hi: Value, vectorize: bool) -> Result<(), CpuError> {
        let saved = self.known.clone();
        let Some((first, end, holds)) = self.interior.clone() else {
            let r = self.inner_loop(lo, hi, vectorize);
            self.known = saved;
            return r;
        };
        let b = &mut self.b;
        let first = b.ins().iconst(types::I64, first);
        let end = b.ins().iconst(types::I64, end);
        let first = b.ins().smax(first, lo);
        let first = b.ins().smin(first, hi);
        let end = b.ins().smax(end, first);
        let end = b.ins().smin(end, hi);
        self.inner_loop(lo, first, vectorize)?;
        self.known = saved.clone();
        self.known.extend(holds.into_iter().map(|h| (h, true)));
        let r = self.inner_loop(first, end, vectorize);
        self.known = saved.clone();
        r?;
        let r = self.inner_loop(end, hi, vectorize);
        self.known = saved;
        r
    }

    /// Emits `e` from the booleans known where it is being emitted, if they decide it: a
    /// known boolean is a constant, an `and` with a false side is false and with a true
    /// side is its other side, a select on a known condition is the arm it picks.
    fn emit_known(&mut self, e: ExprId) -> bool {
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
    fn alias(&mut self, e: ExprId, of: ExprId) -> bool {
        let v = self.get(of);
        self.set(e, v);
        true
    }

    fn inner_loop(&mut self, lo: Value, hi: Value, vectorize: bool) -> Result<(), CpuError> {
        let mut start = lo;
        if vectorize {
            let (header, body, exit) = (
                self.b.create_block(),
                self.b.create_block(),
                self.b.create_block(),
            );
            // Two vectors a step, then at most one more: the loop's own instructions
            // (index, compare, branch) are a large share of a short body.
            let i = self.b.append_block_param(header, types::I64);
            let done = self.b.append_block_param(exit, types::I64);
            self.b.ins().jump(header, &[lo.into()]);
            self.b.switch_to_block(header);
            let last = self.b.ins().iadd_imm(i, 2 * LANES);
            let more = self.b.ins().icmp(IntCC::SignedLessThanOrEqual, last, hi);
            self.b.ins().brif(more, body, &[], exit, &[i.into()]);
            self.b.switch_to_block(body);
            for at in [i, self.b.ins().iadd_imm(i, LANES)] {
                self.inner_step(at, true)?;
            }
            self.b.ins().jump(header, &[last.into()]);
            self.b.switch_to_block(exit);
            let (once, after) = (self.b.create_block(), self.b.create_block());
            let rest = self.b.append_block_param(after, types::I64);
            let last = self.b.ins().iadd_imm(done, LANES);
            let fits = self.b.ins().icmp(IntCC::SignedLessThanOrEqual, last, hi);
            self.b.ins().brif(fits, once, &[], after, &[done.into()]);
            self.b.switch_to_block(once);
            self.inner_step(done, true)?;
            self.b.ins().jump(after, &[last.into()]);
            self.b.switch_to_block(after);
            start = rest;
        }
        self.counted_loop(start, hi, 1, |g, i| g.inner_step(i, false))
    }

    /// A loop of `body(i)` for `i` from `start` while `i < end`, `step` at a time, with no
    /// values carried between iterations; the builder continues after it.
    fn counted_loop(
        &mut self,
        start: Value,
        end: Value,
        step: i64,
        mut body: impl FnMut(&mut Self, Value) -> Result<(), CpuError>,
    ) -> Result<(), CpuError> {
        let (header, bb, exit) = (
            self.b.create_block(),
            self.b.create_block(),
            self.b.create_block(),
        );
        let i = self.b.append_block_param(header, types::I64);
        self.b.ins().jump(header, &[start.into()]);
        self.b.switch_to_block(header);
        let more = self.b.ins().icmp(IntCC::SignedLessThan, i, end);
        self.b.ins().brif(more, bb, &[], exit, &[]);
        self.b.switch_to_block(bb);
        body(self, i)?;
        let next = self.b.ins().iadd_imm(i, step);
        self.b.ins().jump(header, &[next.into()]);
        self.b.switch_to_block(exit);
        Ok(())
    }

    /// The inner loop's body at inner index `at`: four lanes from it, or one element.
    fn inner_step(&mut self, at: Value, lanes: bool) -> Result<(), CpuError> {
        self.inner = Some(at);
        self.inner_lanes = lanes;
        self.frames.push(HashMap::new());
        self.emit_scope(Scope::Inner)?;
        self.frames.pop();
        self.inner_lanes = false;
        Ok(())
    }

    fn emit_reduce(&mut self, e: ExprId) -> Result<(), CpuError> {
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
    fn vector_reduce(
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
            let zero = self.b.ins().iconst(types::I64, 0);
            let start = self.reduce_step(var, zero, index)?;
            let (src, _) = self.address(param, start, true);
            let n = self.b.ins().iconst(types::I64, extent as i64);
            return self.call("smelt_rt_row_max_f32", &[src, n], types::F32);
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
    fn stashed_exp_sum(&mut self, extent: u64, var: u32, arg: ExprId) -> Result<Value, CpuError> {
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
    fn contiguous_f32_row(&self, expr: ExprId, var: u32) -> Option<(u32, ExprId)> {
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

    /// The address of position `at` of the stash's output row.
    fn stash_address(&mut self, at: Value) -> Value {
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
    fn stash_step(&mut self, at: Value, x: Value) {
        let addr = self.stash_address(at);
        self.b.ins().store(mem(), x, addr, 0);
    }

    /// The unrolled values of a reduction combined as a balanced tree instead of a chain,
    /// so the combines of a window overlap (a 3x3 max is 4 dependent steps, not 9); sums
    /// also add the identity, as the sequential loop does (so -0 sums to +0).
    fn combine_tree(
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
    fn pin(&mut self, v: Value) -> Value {
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
    fn pin_row_value(&mut self, e: ExprId, v: Value) -> Value {
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
    fn lanes_reduce(
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
    fn reduce_step(&mut self, var: u32, at: Value, body: ExprId) -> Result<Value, CpuError> {
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
    fn accumulate(
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

    fn identity(&mut self, combine: Combine, dtype: DType) -> Value {
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
    fn ordered_const(&self, e: ExprId) -> bool {
        matches!(self.nest.node(e).expr, Expr::Const(Const::Float(bits)) if !f64::from_bits(bits).is_nan())
    }

    /// Max or min that keeps NaN (`lanes_extreme`). Scalars go through the vector
    /// instructions: x86's scalar `fmax` lowering branches on equality and NaN, and equal
    /// operands are common (a max pool over ReLU zeros), so it mispredicts.
    fn float_extreme(&mut self, max: bool, x: Value, y: Value) -> Value {
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
    fn lanes_extreme(&mut self, max: bool, x: Value, y: Value, vt: Type, y_ordered: bool) -> Value {
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

    fn combine(&mut self, combine: Combine, dtype: DType, acc: Value, x: Value) -> Value {
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
    fn arg_better(&mut self, combine: Combine, dtype: DType, x: Value, best: Value) -> Value {
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

    /// Wraps an i64 register to the range of `dtype` (two's complement, as a cast does).
    fn wrap(&mut self, v: Value, dtype: DType) -> Value {
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

    fn round_half(&mut self, v: Value, dtype: DType) -> Result<Value, CpuError> {
        match dtype {
            DType::F16 => self.call("smelt_rt_round_f16", &[v], types::F32),
            DType::BF16 => self.call("smelt_rt_round_bf16", &[v], types::F32),
            _ => Ok(v),
        }
    }

    /// Whether the index expression `index` stays inside parameter `param` everywhere in
    /// the domain (so its accesses need no clamp).
    fn in_bounds(&self, param: u32, index: ExprId) -> bool {
        let len = self.kernel.params[param as usize].len() as i64;
        self.ranges[index as usize].is_some_and(|(lo, hi)| lo >= 0 && hi < len)
    }

    fn address(&mut self, param: u32, index: Value, in_bounds: bool) -> (Value, DType) {
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

    fn load_scalar(
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

    fn emit_store(&mut self, i: usize) -> Result<(), CpuError> {
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

    fn emit_op(&mut self, e: ExprId) -> Result<(), CpuError> {
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

    fn emit_vector(&mut self, e: ExprId) -> Result<Value, CpuError> {
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
    fn int_lanes(&mut self, e: ExprId) -> Value {
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
    fn gather(
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
    fn lane_loads(
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
    fn when_inside(&mut self, param: u32, base: Value, span: i64) -> (Block, Block, Value) {
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
    fn even_lanes(&mut self, param: u32, base: Value, in_bounds: bool) -> Result<Value, CpuError> {
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
    fn vector_load(&mut self, param: u32, base: Value, in_bounds: bool) -> Result<Value, CpuError> {
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

    /// An i64 quotient or remainder of a non-negative value by a positive constant (index
    /// arithmetic: channel shuffles, pooling taps) as an unsigned division by an immediate,
    /// which Cranelift turns into a multiply and shifts; the general path guards its divisor
    /// with selects, which keeps it a hardware division of ~40 cycles.
    fn divide_by_constant(
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

    fn emit_scalar(&mut self, e: ExprId) -> Result<Value, CpuError> {
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

    fn unary(&mut self, op: UnaryOp, dtype: DType, x: Value) -> Result<Value, CpuError> {
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

    fn binary(
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

    fn cast(&mut self, x: Value, src: DType, dst: DType) -> Result<Value, CpuError> {
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
