//! Algebraic identities. No blanket commutativity or associativity: constants are
//! only regrouped with constants.

use super::{add_like, is_splat, konst, rule, var};
use crate::egraph::lang::{Analysis, ENode};
use egg::Rewrite;
use smelt_ir::Op;
use smelt_ir::op::{BinaryOp, UnaryOp};

/// `?x` for a match when `?c` is a splat of `v` and the result has `?x`'s type.
fn drop_splat(name: &str, pattern: &str, v: f64) -> Rewrite<ENode, Analysis> {
    let (x, c) = (var("?x"), var("?c"));
    rule(name, pattern, move |eg, root, s| {
        (is_splat(eg, s[c], v) && eg[s[x]].data.ty == eg[root].data.ty).then_some(s[x])
    })
}

pub fn rules() -> Vec<Rewrite<ENode, Analysis>> {
    let (x, a, b, c1, c2) = (var("?x"), var("?a"), var("?b"), var("?c1"), var("?c2"));
    vec![
        // x * 1 = x
        drop_splat("mul-one", "(mul ?x ?c)", 1.0),
        // 1 * x = x
        drop_splat("one-mul", "(mul ?c ?x)", 1.0),
        // x + 0 = x
        drop_splat("add-zero", "(add ?x ?c)", 0.0),
        // 0 + x = x
        drop_splat("zero-add", "(add ?c ?x)", 0.0),
        // x - 0 = x
        drop_splat("sub-zero", "(sub ?x ?c)", 0.0),
        // x / 1 = x
        drop_splat("div-one", "(div ?x ?c)", 1.0),
        // -(-x) = x
        rule("neg-neg", "(neg (neg ?x))", move |_, _, s| Some(s[x])),
        // a + (-b) = a - b
        rule("add-neg", "(add ?a (neg ?b))", move |eg, root, s| {
            add_like(eg, root, Op::Binary(BinaryOp::Sub), vec![s[a], s[b]])
        }),
        // a - (-b) = a + b
        rule("sub-neg", "(sub ?a (neg ?b))", move |eg, root, s| {
            add_like(eg, root, Op::Binary(BinaryOp::Add), vec![s[a], s[b]])
        }),
        // (x * c1) * c2 = x * (c1 * c2) for constants c1, c2
        rule(
            "mul-const-mul-const",
            "(mul (mul ?x ?c1) ?c2)",
            move |eg, root, s| {
                konst(eg, s[c1])?;
                konst(eg, s[c2])?;
                let c = super::add_finite_const(eg, Op::Binary(BinaryOp::Mul), vec![s[c1], s[c2]])?;
                add_like(eg, root, Op::Binary(BinaryOp::Mul), vec![s[x], c])
            },
        ),
        // (x * c1) / c2 = x * (c1 / c2) for float constants
        rule(
            "mul-const-div-const",
            "(div (mul ?x ?c1) ?c2)",
            move |eg, root, s| {
                if !konst(eg, s[c1])?.dtype().is_float() || konst(eg, s[c2]).is_none() {
                    return None;
                }
                let c = super::add_finite_const(eg, Op::Binary(BinaryOp::Div), vec![s[c1], s[c2]])?;
                add_like(eg, root, Op::Binary(BinaryOp::Mul), vec![s[x], c])
            },
        ),
        // x / c = x * (1 / c) for a float constant c (one rounding apart)
        rule("div-const", "(div ?x ?c1)", move |eg, root, s| {
            if !konst(eg, s[c1])?.dtype().is_float() {
                return None;
            }
            let r = super::add_finite_const(eg, Op::Unary(UnaryOp::Reciprocal), vec![s[c1]])?;
            add_like(eg, root, Op::Binary(BinaryOp::Mul), vec![s[x], r])
        }),
        // log(exp(x)) = x: exact in real arithmetic, and avoids exp's overflow in floats
        rule("log-exp", "(log (exp ?x))", move |eg, root, s| {
            (eg[s[x]].data.ty == eg[root].data.ty).then_some(s[x])
        }),
        // sqrt(x * x) = |x|: sound for every float x (x*x is never negative)
        rule("sqrt-square", "(sqrt (mul ?x ?x))", move |eg, root, s| {
            add_like(eg, root, Op::Unary(UnaryOp::Abs), vec![s[x]])
        }),
    ]
}
