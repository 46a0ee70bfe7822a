//! Where each expression of a loop nest is computed: the scope placement (kernel entry,
//! row loop, inner loop, a reduction's loop), the interior of inner loops where affine
//! edge checks hold, per-row select conditions that version the inner loop, and the
//! row reductions stashed in the output row (decisions 31, 33, 35).

use super::*;

pub(super) fn scope_depth(s: Scope, place: &[Scope], reduce_of: &HashMap<u32, ExprId>) -> usize {
    match s {
        Scope::Entry => 0,
        Scope::Row => 1,
        Scope::Inner => 2,
        Scope::Reduce(v) => 1 + scope_depth(place[reduce_of[&v] as usize], place, reduce_of),
    }
}

/// The scope of every expression, and the reduction expression binding each variable.
pub(super) fn placement(nest: &LoopNest, live: &[bool]) -> (Vec<Scope>, HashMap<u32, ExprId>) {
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
pub(super) enum Axis {
    /// The innermost domain variable.
    Inner,
    /// A reduction variable.
    Reduction(u32),
}

/// The coefficient of `axis` in an index expression, if the expression is affine in it
/// (`LoopNest::coefficient`).
pub(super) fn axis_coef(
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
pub(super) fn users_of(nest: &LoopNest, live: &[bool]) -> Vec<Vec<ExprId>> {
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
pub(super) fn interior_of(
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
pub(super) struct Stash {
    pub(super) reduction: ExprId,
    pub(super) twin: ExprId,
    /// The output parameter and its store's index, `row_base + inner variable`.
    pub(super) param: u32,
    pub(super) index: ExprId,
    pub(super) row_base: Option<ExprId>,
}

/// The stash of `nest`, if it has one: a vectorized f32 reduction placed per row over the
/// inner extent whose body is more than a load, an inner-loop twin of that body (the same
/// expression with the reduction variable for the inner one), and an f32 output stored
/// contiguously along the inner variable that nothing in the kernel loads or stores again.
pub(super) fn find_stash(
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
pub(super) fn twins(
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
pub(super) fn only_for(
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
pub(super) fn varies_with_inner(nest: &LoopNest) -> Vec<bool> {
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
pub(super) fn scopes_within_inner(
    nest: &LoopNest,
    live: &[bool],
    place: &[Scope],
) -> HashSet<Scope> {
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
