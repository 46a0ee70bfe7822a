//! Layout rules: transpose and reshape chains, transposes sunk through elementwise ops.

use super::{add_like, ops_in, rule, var};
use crate::egraph::convert::try_add;
use crate::egraph::lang::{Analysis, ENode};
use egg::Rewrite;
use smelt_ir::Op;
use smelt_ir::op::{BinaryOp, UnaryOp};

/// Perms of the transposes in class `t` whose operand is class `x`.
fn perms(eg: &crate::egraph::lang::EGraph, t: egg::Id, x: egg::Id) -> Vec<Vec<usize>> {
    ops_in(eg, t, "transpose")
        .into_iter()
        .filter(|(_, ch)| eg.find(ch[0]) == eg.find(x))
        .filter_map(|(op, _)| match op {
            Op::Transpose { perm } => Some(perm),
            _ => None,
        })
        .collect()
}

pub fn rules() -> Vec<Rewrite<ENode, Analysis>> {
    let (x, a, b) = (var("?x"), var("?a"), var("?b"));
    let mut rules = vec![
        // transpose(transpose(x, p1), p2) = transpose(x, p1 . p2), or x when that is the identity
        rule(
            "transpose-transpose",
            "(transpose ?t)",
            move |eg, root, s| {
                let t = s[var("?t")];
                let outer = ops_in(eg, root, "transpose")
                    .into_iter()
                    .find(|(_, ch)| eg.find(ch[0]) == eg.find(t))?;
                let Op::Transpose { perm: p2 } = outer.0 else {
                    return None;
                };
                let (inner, ch) = ops_in(eg, t, "transpose").into_iter().next()?;
                let Op::Transpose { perm: p1 } = inner else {
                    return None;
                };
                let q: Vec<usize> = p2.iter().map(|&i| p1[i]).collect();
                if q.iter().enumerate().all(|(i, &p)| i == p) {
                    return (eg[ch[0]].data.ty == eg[root].data.ty).then_some(ch[0]);
                }
                add_like(eg, root, Op::Transpose { perm: q }, vec![ch[0]])
            },
        ),
        // reshape(reshape(x)) = reshape(x) (squeeze/unsqueeze pairs are reshapes)
        rule(
            "reshape-reshape",
            "(reshape (reshape ?x))",
            move |eg, root, s| {
                let shape = eg[root].data.ty.shape.clone();
                add_like(eg, root, Op::Reshape { shape }, vec![s[x]])
            },
        ),
        // reshape(x) = x when x already has the shape
        rule("reshape-identity", "(reshape ?x)", move |eg, root, s| {
            (eg[s[x]].data.ty == eg[root].data.ty).then_some(s[x])
        }),
    ];
    // matmul(transpose(a), b) = matmul<trans_a>(a, b) when the transpose swaps just the
    // last two axes (and likewise for b): the contraction reads the operand transposed
    rules.push(rule(
        "transpose-into-matmul",
        "(matmul ?a ?b)",
        move |eg, root, s| {
            let (op, _) = ops_in(eg, root, "matmul").into_iter().find(|(_, ch)| {
                eg.find(ch[0]) == eg.find(s[a]) && eg.find(ch[1]) == eg.find(s[b])
            })?;
            let Op::MatMul { trans_a, trans_b } = op else {
                return None;
            };
            let swaps_last_two = |p: &[usize]| {
                let r = p.len();
                r >= 2
                    && p[r - 2] == r - 1
                    && p[r - 1] == r - 2
                    && p[..r - 2].iter().enumerate().all(|(i, &x)| i == x)
            };
            let inner = |eg: &crate::egraph::lang::EGraph, class: egg::Id| {
                ops_in(eg, class, "transpose")
                    .into_iter()
                    .find_map(|(t, ch)| match t {
                        Op::Transpose { perm } if swaps_last_two(&perm) => Some(ch[0]),
                        _ => None,
                    })
            };
            let (na, nb) = (inner(eg, s[a]), inner(eg, s[b]));
            if na.is_none() && nb.is_none() {
                return None;
            }
            let new = Op::MatMul {
                trans_a: trans_a ^ na.is_some(),
                trans_b: trans_b ^ nb.is_some(),
            };
            add_like(eg, root, new, vec![na.unwrap_or(s[a]), nb.unwrap_or(s[b])])
        },
    ));
    // f(transpose(x, p)) = transpose(f(x), p): moves transposes towards the outputs,
    // where they meet and cancel other transposes.
    for u in [
        UnaryOp::Exp,
        UnaryOp::Neg,
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
        UnaryOp::Abs,
        UnaryOp::Sqrt,
        UnaryOp::Erf,
    ] {
        let name = format!("transpose-sink-{}", u.name());
        rules.push(rule(
            &name,
            &format!("({} (transpose ?x))", u.name()),
            move |eg, root, s| {
                let (_, ch) = ops_in(eg, root, u.name()).into_iter().next()?;
                let p = perms(eg, ch[0], s[x]).into_iter().next()?;
                let inner = try_add(eg, Op::Unary(u), vec![s[x]])?;
                add_like(eg, root, Op::Transpose { perm: p }, vec![inner])
            },
        ));
    }
    // f(reshape(x)) = reshape(f(x)): moves reshapes towards the outputs, where a reshape
    // back cancels them and a contraction keeps the elementwise ops as its epilogue.
    for u in UnaryOp::ALL.iter().copied() {
        let name = format!("reshape-sink-{}", u.name());
        rules.push(rule(
            &name,
            &format!("({} (reshape ?x))", u.name()),
            move |eg, root, s| {
                let inner = try_add(eg, Op::Unary(u), vec![s[x]])?;
                let shape = eg[root].data.ty.shape.clone();
                add_like(eg, root, Op::Reshape { shape }, vec![inner])
            },
        ));
    }
    // f(reshape(a), c) = reshape(f(a, c)) for a scalar c (either side), and
    // f(reshape(a), reshape(b)) = reshape(f(a, b)) when a and b have one shape
    for bop in BinaryOp::ALL.iter().copied() {
        let sunk = move |eg: &mut crate::egraph::lang::EGraph, root, args: Vec<egg::Id>| {
            let inner = try_add(eg, Op::Binary(bop), args)?;
            let shape = eg[root].data.ty.shape.clone();
            add_like(eg, root, Op::Reshape { shape }, vec![inner])
        };
        let scalar = |eg: &crate::egraph::lang::EGraph, c: egg::Id| eg[c].data.ty.shape.is_empty();
        rules.push(rule(
            &format!("reshape-sink-{}-scalar", bop.name()),
            &format!("({} (reshape ?a) ?b)", bop.name()),
            move |eg, root, s| {
                if !scalar(eg, s[b]) {
                    return None;
                }
                sunk(eg, root, vec![s[a], s[b]])
            },
        ));
        rules.push(rule(
            &format!("reshape-sink-scalar-{}", bop.name()),
            &format!("({} ?a (reshape ?b))", bop.name()),
            move |eg, root, s| {
                if !scalar(eg, s[a]) {
                    return None;
                }
                sunk(eg, root, vec![s[a], s[b]])
            },
        ));
        rules.push(rule(
            &format!("reshape-sink-{}-both", bop.name()),
            &format!("({} (reshape ?a) (reshape ?b))", bop.name()),
            move |eg, root, s| {
                if eg[s[a]].data.ty.shape != eg[s[b]].data.ty.shape {
                    return None;
                }
                sunk(eg, root, vec![s[a], s[b]])
            },
        ));
    }
    // f(transpose(a, p), transpose(b, p)) = transpose(f(a, b), p)
    for bop in [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Max,
        BinaryOp::Min,
    ] {
        let name = format!("transpose-sink-{}", bop.name());
        rules.push(rule(
            &name,
            &format!("({} (transpose ?a) (transpose ?b))", bop.name()),
            move |eg, root, s| {
                let (_, ch) = ops_in(eg, root, bop.name()).into_iter().next()?;
                let pa = perms(eg, ch[0], s[a]);
                let pb = perms(eg, ch[1], s[b]);
                let p = pa.into_iter().find(|p| pb.contains(p))?;
                if eg[s[a]].data.ty.shape != eg[s[b]].data.ty.shape {
                    return None;
                }
                let inner = try_add(eg, Op::Binary(bop), vec![s[a], s[b]])?;
                add_like(eg, root, Op::Transpose { perm: p }, vec![inner])
            },
        ));
    }
    rules
}
