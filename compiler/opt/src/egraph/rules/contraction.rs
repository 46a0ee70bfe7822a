//! Contraction rules. A constant bias added after a Conv or MatMul becomes the
//! contraction's epilogue (its optional third operand). Parallel MatMuls that share their left operand and multiply it by
//! constant weights (the Q, K and V projections) become one MatMul on the concatenated
//! weights followed by slices. The rewrite spans several e-classes, so it runs as a
//! runner hook between rule iterations rather than as a pattern rule.

use super::weights::per_channel;
use super::{add_finite_const, konst, ops_in, rule, var};
use crate::egraph::convert::try_add;
use crate::egraph::lang::{Analysis, ENode};
use crate::egraph::lang::{EGraph, Head};
use egg::Id;
use egg::Rewrite;
use smelt_ir::Dim;
use smelt_ir::Op;
use std::collections::{BTreeMap, HashSet};

/// The name under which merges are counted.
pub const MERGE_RULE: &str = "merge-parallel-matmuls";

/// One merge: the classes of the original MatMuls, each now also a slice of `matmul`.
#[derive(Debug, Clone)]
pub struct MergeGroup {
    pub members: Vec<Id>,
    pub matmul: Id,
}

/// What earlier merges did: the classes they created (never merged again) and the left
/// operands they merged. A left operand is merged once: rules that rewrite a member
/// (a scale folded into one weight) would otherwise form a new group of the same
/// products at every iteration, each concatenating the weights again (BERT-base made 72
/// merged weights, 0.5 GB, for its 12 layers' 12 groups).
#[derive(Debug, Default)]
pub struct Merged {
    created: HashSet<Id>,
    lefts: HashSet<Id>,
}

/// Merges every group of MatMuls with one left operand and constant 2-D right operands
/// of equal inner size, once per left operand (`merged`). Returns the groups merged.
pub fn merge_parallel_matmuls(eg: &mut EGraph, merged: &mut Merged) -> Vec<MergeGroup> {
    let Merged {
        created: merged,
        lefts,
    } = merged;
    let mut groups: BTreeMap<Id, Vec<(Id, Id)>> = BTreeMap::new();
    for class in eg.classes() {
        if merged.contains(&eg.find(class.id)) {
            continue;
        }
        for n in &class.nodes {
            // Only MatMuls without an epilogue operand: the merged MatMul has none, so
            // a member's bias would be lost.
            if matches!(n.head, Head::Op("matmul", _))
                && n.children.len() == 2
                && eg.analysis.op(&n.head) == Some(&Op::MATMUL)
            {
                let (l, r) = (eg.find(n.children[0]), eg.find(n.children[1]));
                if konst(eg, r).is_some_and(|t| t.rank() == 2) && !merged.contains(&r) {
                    groups.entry(l).or_default().push((class.id, r));
                }
            }
        }
    }
    let mut done = Vec::new();
    for (left, mut members) in groups {
        if lefts.iter().any(|&l| eg.find(l) == left) {
            continue;
        }
        members.sort();
        members.dedup_by_key(|m| m.1);
        let classes: HashSet<Id> = members.iter().map(|m| eg.find(m.0)).collect();
        members.retain(|m| !scales_another(eg, m.0, &classes));
        if members.len() < 2 {
            continue;
        }
        let first = eg[members[0].1].data.ty.clone();
        if members.iter().any(|(_, r)| {
            eg[*r].data.ty.dtype != first.dtype || eg[*r].data.ty.shape[0] != first.shape[0]
        }) {
            continue;
        }
        let rights: Vec<Id> = members.iter().map(|m| m.1).collect();
        let Some(concat) = try_add(eg, Op::Concat { axis: 1 }, rights.clone()) else {
            continue;
        };
        let Some(mm) = try_add(eg, Op::MATMUL, vec![left, concat]) else {
            continue;
        };
        let rank = eg[mm].data.ty.rank();
        let mut offset = 0i64;
        for (class, r) in &members {
            let n = eg[*r].data.ty.shape[1].fixed().unwrap_or(0) as i64;
            let columns = Op::slice_along(rank, rank - 1, offset, offset + n, 1);
            offset += n;
            if let Some(slice) = try_add(eg, columns, vec![mm])
                && eg[slice].data.ty == eg[*class].data.ty
            {
                eg.union(*class, slice);
            }
        }
        merged.insert(eg.find(mm));
        merged.insert(eg.find(concat));
        lefts.insert(left);
        done.push(MergeGroup {
            members: members.iter().map(|m| m.0).collect(),
            matmul: mm,
        });
    }
    eg.rebuild();
    done
}

/// Whether class `class` is also another class of `members` times (or over) a constant:
/// a scale that rules folded into a copy of a member's weights (GELU's `x * 0.5` and
/// `x / sqrt(2)` of one product, the query scaled for attention). Merging it with the
/// product it scales would compute that product twice and concatenate its weights again
/// (BERT-base's merges held 0.4 GB of such copies, a fifth of its compile time).
fn scales_another(eg: &EGraph, class: Id, members: &HashSet<Id>) -> bool {
    let class = eg.find(class);
    eg[class].nodes.iter().any(|n| {
        matches!(n.head, Head::Op("mul" | "div", _))
            && n.children.len() == 2
            && n.children.iter().any(|&c| {
                let c = eg.find(c);
                c != class && members.contains(&c)
            })
            && n.children.iter().any(|&c| konst(eg, c).is_some())
    })
}

/// `contraction(x, w) + b = contraction(x, w, b')` for a constant `b` holding one value
/// per output channel along `axis` (b' is b flattened to `[channels]`).
fn bias_epilogue(
    name: &str,
    pattern: &str,
    mnemonic: &'static str,
    bias_first: bool,
) -> Rewrite<ENode, Analysis> {
    let (x, w, b) = (var("?x"), var("?w"), var("?b"));
    rule(name, pattern, move |eg, root, s| {
        let bias = konst(eg, s[b])?.clone();
        let out = eg[root].data.ty.clone();
        let (_, add_ch) = ops_in(eg, root, "add")
            .into_iter()
            .find(|(_, ch)| eg.find(ch[usize::from(!bias_first)]) == eg.find(s[b]))?;
        let contraction = add_ch[usize::from(bias_first)];
        let (op, _) = ops_in(eg, contraction, mnemonic)
            .into_iter()
            .find(|(_, ch)| {
                ch.len() == 2 && eg.find(ch[0]) == eg.find(s[x]) && eg.find(ch[1]) == eg.find(s[w])
            })?;
        let axis = if mnemonic == "conv" {
            1
        } else {
            out.rank().checked_sub(1)?
        };
        let channels = out.shape.get(axis)?.fixed()?;
        if bias.len() != channels
            || !per_channel(&bias.tensor_type().shape, out.rank(), axis, channels)
        {
            return None;
        }
        let flat = add_finite_const(
            eg,
            Op::Reshape {
                shape: vec![Dim::Fixed(channels)],
            },
            vec![s[b]],
        )?;
        crate::egraph::rules::add_like(eg, root, op, vec![s[x], s[w], flat])
    })
}

pub fn rules() -> Vec<Rewrite<ENode, Analysis>> {
    vec![
        // conv(x, w) + b = conv(x, w, b) for a constant per-channel b
        bias_epilogue("conv-bias-epilogue", "(add (conv ?x ?w) ?b)", "conv", false),
        // b + conv(x, w) = conv(x, w, b)
        bias_epilogue(
            "conv-bias-epilogue-left",
            "(add ?b (conv ?x ?w))",
            "conv",
            true,
        ),
        // matmul(x, w) + b = matmul(x, w, b) for a constant b along the last axis
        bias_epilogue(
            "matmul-bias-epilogue",
            "(add (matmul ?x ?w) ?b)",
            "matmul",
            false,
        ),
        // b + matmul(x, w) = matmul(x, w, b)
        bias_epilogue(
            "matmul-bias-epilogue-left",
            "(add ?b (matmul ?x ?w))",
            "matmul",
            true,
        ),
    ]
}
