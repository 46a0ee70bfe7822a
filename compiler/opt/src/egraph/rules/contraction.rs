//! Contraction rules. Parallel MatMuls that share their left operand and multiply it by
//! constant weights (the Q, K and V projections) become one MatMul on the concatenated
//! weights followed by slices. The rewrite spans several e-classes, so it runs as a
//! runner hook between rule iterations rather than as a pattern rule.

use super::konst;
use crate::egraph::convert::try_add;
use crate::egraph::lang::{EGraph, Head};
use egg::Id;
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

/// Merges every group of MatMuls with one left operand and constant 2-D right operands
/// of equal inner size; `merged` remembers the classes this created, so they are not
/// merged again. Returns the groups merged.
pub fn merge_parallel_matmuls(eg: &mut EGraph, merged: &mut HashSet<Id>) -> Vec<MergeGroup> {
    let mut groups: BTreeMap<Id, Vec<(Id, Id)>> = BTreeMap::new();
    for class in eg.classes() {
        if merged.contains(&eg.find(class.id)) {
            continue;
        }
        for n in &class.nodes {
            if matches!(n.head, Head::Op("matmul", _))
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
        members.sort();
        members.dedup_by_key(|m| m.1);
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
            let mut starts = vec![0; rank];
            let mut ends = vec![i64::MAX; rank];
            starts[rank - 1] = offset;
            ends[rank - 1] = offset + n;
            offset += n;
            if let Some(slice) = try_add(
                eg,
                Op::Slice {
                    starts,
                    ends,
                    steps: vec![1; rank],
                },
                vec![mm],
            ) && eg[slice].data.ty == eg[*class].data.ty
            {
                eg.union(*class, slice);
            }
        }
        merged.insert(eg.find(mm));
        merged.insert(eg.find(concat));
        done.push(MergeGroup {
            members: members.iter().map(|m| m.0).collect(),
            matmul: mm,
        });
    }
    eg.rebuild();
    done
}
