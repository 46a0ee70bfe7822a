//! Weight folding: per-channel constant scales after Conv or MatMul (what
//! BatchNormalization decomposes into) folded into the constant weights.

use super::{add_like, konst, ops_in, rule, var};
use crate::egraph::convert::try_add;
use crate::egraph::lang::{Analysis, EGraph, ENode, Head};
use egg::{Id, Rewrite};
use smelt_ir::op::BinaryOp;
use smelt_ir::{Dim, Op};

/// The number of output channels `m` when `shape` broadcasts as one value per channel
/// along `axis` of a rank-`rank` result (all other dims 1).
pub(super) fn per_channel(shape: &[Dim], rank: usize, axis: usize, m: usize) -> bool {
    if shape.len() > rank {
        return false;
    }
    let lead = rank - shape.len();
    shape.iter().enumerate().all(|(i, d)| {
        if lead + i == axis {
            *d == Dim::Fixed(m) || d.is_one()
        } else {
            d.is_one()
        }
    })
}

/// Whether every use of class `id` adds, subtracts, multiplies or divides it by a
/// constant (a bias or a scale): folding a scale into its weights then replaces it. With
/// another use (HardSwish's `y * hardsigmoid(y)`), the unscaled result stays needed, and
/// the extraction, which counts each use's cost apart, would keep both: MobileNetV3's
/// first convolution ran twice, once with the weights over 6.
fn only_affine_uses(eg: &EGraph, id: Id) -> bool {
    let id = eg.find(id);
    eg[id].parents().all(|p| {
        let node = eg.id_to_node(p);
        matches!(node.head, Head::Op("add" | "sub" | "mul" | "div", _))
            && node
                .children
                .iter()
                .any(|&c| eg.find(c) != id && konst(eg, c).is_some())
    })
}

pub fn rules() -> Vec<Rewrite<ENode, Analysis>> {
    let (x, w, sc) = (var("?x"), var("?w"), var("?s"));
    vec![
        // conv(x, w) * s = conv(x, w * s') for a constant per-output-channel s, s' = s as [M, 1, ...]
        rule(
            "conv-scale-into-weights",
            "(mul (conv ?x ?w) ?s)",
            move |eg, root, s| {
                konst(eg, s[w])?;
                let scale = konst(eg, s[sc])?.clone();
                let c = eg[root].data.ty.clone();
                let (_, mul_ch) = ops_in(eg, root, "mul")
                    .into_iter()
                    .find(|(_, ch)| eg.find(ch[1]) == eg.find(s[sc]))?;
                if !only_affine_uses(eg, mul_ch[0]) {
                    return None;
                }
                // The conv whose operands the pattern bound (its attributes go with them).
                let (conv, _) = ops_in(eg, mul_ch[0], "conv").into_iter().find(|(_, ch)| {
                    ch.len() == 2
                        && eg.find(ch[0]) == eg.find(s[x])
                        && eg.find(ch[1]) == eg.find(s[w])
                })?;
                let m = c.shape.get(1)?.fixed()?;
                if !per_channel(&scale.tensor_type().shape, c.rank(), 1, m) {
                    return None;
                }
                let wr = eg[s[w]].data.ty.rank();
                let mut shape = vec![Dim::Fixed(1); wr];
                shape[0] = Dim::Fixed(if scale.len() == 1 { 1 } else { m });
                let s_r = super::add_finite_const(eg, Op::Reshape { shape }, vec![s[sc]])?;
                let w2 = super::add_finite_const(eg, Op::Binary(BinaryOp::Mul), vec![s[w], s_r])?;
                if eg[w2].data.ty != eg[s[w]].data.ty {
                    return None;
                }
                add_like(eg, root, conv, vec![s[x], w2])
            },
        ),
        // matmul(x, w) * s = matmul(x, w * s) for constant 2-D w and a constant s per column
        rule(
            "matmul-scale-into-weights",
            "(mul (matmul ?x ?w) ?s)",
            move |eg, root, s| {
                if konst(eg, s[w])?.rank() != 2 {
                    return None;
                }
                // Only an untransposed MatMul scales the columns of its constant operand.
                let (_, mul_ch) = ops_in(eg, root, "mul")
                    .into_iter()
                    .find(|(_, ch)| eg.find(ch[1]) == eg.find(s[sc]))?;
                if !only_affine_uses(eg, mul_ch[0]) {
                    return None;
                }
                // The node whose operands the pattern bound: another matmul of the same
                // class may read the same weights with other flags (a folded transpose).
                let (op, _) = ops_in(eg, mul_ch[0], "matmul")
                    .into_iter()
                    .find(|(_, ch)| {
                        eg.find(ch[0]) == eg.find(s[x]) && eg.find(ch[1]) == eg.find(s[w])
                    })?;
                if op != Op::MATMUL {
                    return None;
                }
                let scale = konst(eg, s[sc])?.clone();
                let n = eg[s[w]].data.ty.shape[1].fixed()?;
                let st = scale.tensor_type().shape;
                if !per_channel(&st, 2, 1, n) {
                    return None;
                }
                let w2 = super::add_finite_const(eg, Op::Binary(BinaryOp::Mul), vec![s[w], s[sc]])?;
                if eg[w2].data.ty != eg[s[w]].data.ty {
                    return None;
                }
                add_like(eg, root, Op::MATMUL, vec![s[x], w2])
            },
        ),
        // (conv(x, w) + b) * s = conv(x, w * s') + b * s: distributes a constant scale over a constant bias
        rule(
            "scale-over-bias",
            "(mul (add ?y ?b) ?s)",
            move |eg, root, s| {
                let (y, b) = (var("?y"), var("?b"));
                konst(eg, s[b])?;
                konst(eg, s[sc])?;
                if ops_in(eg, s[y], "conv").is_empty() && ops_in(eg, s[y], "matmul").is_empty() {
                    return None;
                }
                let (_, mul_ch) = ops_in(eg, root, "mul")
                    .into_iter()
                    .find(|(_, ch)| eg.find(ch[1]) == eg.find(s[sc]))?;
                if !only_affine_uses(eg, mul_ch[0]) {
                    return None;
                }
                let ys = try_add(eg, Op::Binary(BinaryOp::Mul), vec![s[y], s[sc]])?;
                let bs = super::add_finite_const(eg, Op::Binary(BinaryOp::Mul), vec![s[b], s[sc]])?;
                add_like(eg, root, Op::Binary(BinaryOp::Add), vec![ys, bs])
            },
        ),
        // (y + b1) + b2 = y + (b1 + b2) for constant biases
        rule(
            "bias-add-bias",
            "(add (add ?y ?b1) ?b2)",
            move |eg, root, s| {
                let (y, b1, b2) = (var("?y"), var("?b1"), var("?b2"));
                konst(eg, s[b1])?;
                konst(eg, s[b2])?;
                let b = super::add_finite_const(eg, Op::Binary(BinaryOp::Add), vec![s[b1], s[b2]])?;
                add_like(eg, root, Op::Binary(BinaryOp::Add), vec![s[y], b])
            },
        ),
    ]
}
