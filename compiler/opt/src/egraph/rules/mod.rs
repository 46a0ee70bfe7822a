//! Rewrite rules by topic. Each rule has a name and a one-line comment; each is a
//! pattern (matching ops by mnemonic) and an applier that checks types, constants and
//! attributes before adding anything, so every e-node the rules add is well typed.

pub mod activation;
pub mod algebra;
pub mod contraction;
pub mod layout;
pub mod weights;

use super::convert::try_add;
use super::lang::{EGraph, ENode, Head};
use egg::{Applier, Id, PatternAst, Rewrite, Subst, Symbol, Var};
use smelt_ir::{Op, Tensor};

/// An applier from a closure returning the class to union with the match, if any.
pub struct FnApplier<F>(pub F);

impl<F> std::fmt::Debug for FnApplier<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnApplier")
    }
}

impl<F> Applier<ENode, super::lang::Analysis> for FnApplier<F>
where
    F: Fn(&mut EGraph, Id, &Subst) -> Option<Id> + Send + Sync,
{
    fn apply_one(
        &self,
        egraph: &mut EGraph,
        eclass: Id,
        subst: &Subst,
        _ast: Option<&PatternAst<ENode>>,
        _rule: Symbol,
    ) -> Vec<Id> {
        match (self.0)(egraph, eclass, subst) {
            Some(new) if egraph.union(eclass, new) => vec![eclass],
            _ => vec![],
        }
    }
}

/// A rewrite from a pattern and a closure applier.
pub fn rule<F>(name: &str, pattern: &str, apply: F) -> Rewrite<ENode, super::lang::Analysis>
where
    F: Fn(&mut EGraph, Id, &Subst) -> Option<Id> + Send + Sync + 'static,
{
    let searcher: egg::Pattern<ENode> = pattern
        .parse()
        .unwrap_or_else(|e| panic!("rule {name}: bad pattern {pattern}: {e}"));
    Rewrite::new(name, searcher, FnApplier(apply)).unwrap_or_else(|e| panic!("rule {name}: {e}"))
}

pub fn var(s: &str) -> Var {
    s.parse().expect("variable names start with '?'")
}

/// The constant a class holds, if known.
pub fn konst(eg: &EGraph, id: Id) -> Option<&Tensor> {
    eg[id].data.konst.map(|k| &eg.analysis.consts[k as usize])
}

/// True when the class is a constant whose every element equals `v`.
pub fn is_splat(eg: &EGraph, id: Id, v: f64) -> bool {
    facts(eg, id).is_some_and(|f| f.splat == Some(v))
}

/// The interned facts of the class's constant, if it is one.
fn facts(eg: &EGraph, id: Id) -> Option<crate::egraph::lang::ConstFacts> {
    eg[id].data.konst.map(|k| eg.analysis.facts[k as usize])
}

/// True when the class is a constant with only finite elements (folding constants into
/// other constants is sound only then: `inf * 0` terms would turn into NaN).
pub fn is_finite_const(eg: &EGraph, id: Id) -> bool {
    facts(eg, id).is_some_and(|f| f.finite)
}

/// Adds `op(children)` over constants when it folds to a constant with only finite
/// elements; the constant-combining rules use it so that no rule introduces an infinity.
pub fn add_finite_const(eg: &mut EGraph, op: Op, children: Vec<Id>) -> Option<Id> {
    if !children.iter().all(|&c| is_finite_const(eg, c)) {
        return None;
    }
    let id = try_add(eg, op, children)?;
    is_finite_const(eg, id).then_some(id)
}

/// Adds a constant class.
pub fn add_const(eg: &mut EGraph, t: Tensor) -> Id {
    let k = eg.analysis.intern_const(t);
    eg.add(ENode {
        head: Head::Const(k),
        children: vec![],
    })
}

/// The nodes of class `id` whose op has mnemonic `m`, with their ops.
pub fn ops_in(eg: &EGraph, id: Id, m: &str) -> Vec<(Op, Vec<Id>)> {
    eg[id]
        .nodes
        .iter()
        .filter_map(|n| match &n.head {
            Head::Op(mn, _) if *mn == m => Some((
                eg.analysis.op(&n.head).expect("op").clone(),
                n.children.clone(),
            )),
            _ => None,
        })
        .collect()
}

/// Adds `op(children)` when it type-checks and has the type of `like`.
pub fn add_like(eg: &mut EGraph, like: Id, op: Op, children: Vec<Id>) -> Option<Id> {
    let id = try_add(eg, op, children)?;
    (eg[id].data.ty == eg[like].data.ty).then_some(id)
}

/// Every rule, in topic order.
pub fn all() -> Vec<Rewrite<ENode, super::lang::Analysis>> {
    let mut r = algebra::rules();
    r.extend(layout::rules());
    r.extend(weights::rules());
    r.extend(activation::rules());
    r.extend(contraction::rules());
    r
}
