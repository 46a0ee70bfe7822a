//! Canonical forms of activations, so that fusion sees one shape of each: the forms
//! the ONNX importer emits (x * sigmoid(x) for SiLU, sigmoid as one op, GELU as
//! (x * 0.5) * (1 + erf(x * c))).

use super::{add_like, is_splat, konst, rule, var};
use crate::egraph::convert::try_add;
use crate::egraph::lang::{Analysis, ENode};
use egg::Rewrite;
use smelt_ir::Op;
use smelt_ir::op::{BinaryOp, UnaryOp};

pub fn rules() -> Vec<Rewrite<ENode, Analysis>> {
    let (x, one, a, b, c) = (var("?x"), var("?one"), var("?a"), var("?b"), var("?c"));
    vec![
        // 1 / (1 + exp(-x)) = sigmoid(x)
        rule(
            "sigmoid-canonical",
            "(div ?one (add ?one (exp (neg ?x))))",
            move |eg, root, s| {
                is_splat(eg, s[one], 1.0).then_some(())?;
                add_like(eg, root, Op::Unary(UnaryOp::Sigmoid), vec![s[x]])
            },
        ),
        // x / (1 + exp(-x)) = x * sigmoid(x) (SiLU)
        rule(
            "silu-canonical",
            "(div ?x (add ?one (exp (neg ?x))))",
            move |eg, root, s| {
                is_splat(eg, s[one], 1.0).then_some(())?;
                let sg = try_add(eg, Op::Unary(UnaryOp::Sigmoid), vec![s[x]])?;
                add_like(eg, root, Op::Binary(BinaryOp::Mul), vec![s[x], sg])
            },
        ),
        // sigmoid(x) * x = x * sigmoid(x)
        rule("silu-order", "(mul (sigmoid ?x) ?x)", move |eg, root, s| {
            let sg = try_add(eg, Op::Unary(UnaryOp::Sigmoid), vec![s[x]])?;
            add_like(eg, root, Op::Binary(BinaryOp::Mul), vec![s[x], sg])
        }),
        // (a * b) * c = (a * c) * b for a constant c and a non-constant b: constant factors
        // move next to the variable they scale (GELU's 0.5 * x, whichever side it came from)
        rule(
            "const-factor-inward",
            "(mul (mul ?a ?b) ?c)",
            move |eg, root, s| {
                konst(eg, s[c])?;
                if konst(eg, s[b]).is_some() || konst(eg, s[a]).is_some() {
                    return None;
                }
                let ac = try_add(eg, Op::Binary(BinaryOp::Mul), vec![s[a], s[c]])?;
                add_like(eg, root, Op::Binary(BinaryOp::Mul), vec![ac, s[b]])
            },
        ),
        // x ^ 2 = x * x (layer normalization's variance in exported graphs)
        rule("pow-two", "(pow ?x ?c)", move |eg, root, s| {
            is_splat(eg, s[c], 2.0).then_some(())?;
            add_like(eg, root, Op::Binary(BinaryOp::Mul), vec![s[x], s[x]])
        }),
        // a / sqrt(v) = a * reciprocal(sqrt(v)) (normalizations in one form)
        rule("div-sqrt", "(div ?a (sqrt ?b))", move |eg, root, s| {
            let sq = try_add(eg, Op::Unary(UnaryOp::Sqrt), vec![s[b]])?;
            let r = try_add(eg, Op::Unary(UnaryOp::Reciprocal), vec![sq])?;
            add_like(eg, root, Op::Binary(BinaryOp::Mul), vec![s[a], r])
        }),
    ]
}
