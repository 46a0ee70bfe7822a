//! Buffer layout: which values are views into another value's buffer, what the plan's
//! groups store once those views are taken, and how long each buffer lives over the
//! lowered kernels. The driver places the buffers in the arena from exactly this.

use crate::lower::LoweredKernel;
use crate::plan::{FusionPlan, GroupKind, VIEW_ALIGN, view_offset};
use smelt_ir::{Graph, Op, ValueId};
use std::collections::BTreeMap;

/// The layout of one fusion plan's buffers.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The plan as the kernels are lowered from it: a concatenation written in place is
    /// no group's output any more (a group that only concatenated stores nothing).
    pub storing: FusionPlan,
    /// Values that are part of another value's buffer: value -> (the value whose buffer
    /// holds it, which is no view itself; byte offset). Slices in their operand, and
    /// operands of a concatenation written in place.
    pub views: BTreeMap<ValueId, (ValueId, usize)>,
    /// The concatenations their operands' producers write in place.
    pub in_place: Vec<ValueId>,
}

/// When one buffer is live: from the kernel that first touches it to the last, by
/// position in the lowered kernels. A graph input is live from the first kernel, a graph
/// output until `kernels.len()` (after every kernel), and a buffer that views are part
/// of as long as any of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferLife {
    pub value: ValueId,
    pub bytes: usize,
    pub first: usize,
    pub last: usize,
}

impl Layout {
    /// The views of `plan` over `g`, whose shapes are all fixed: the slices the plan made
    /// views, then the concatenations that need no copy.
    pub fn new(g: &Graph, plan: &FusionPlan) -> Layout {
        let mut views = slice_views(g, plan);
        let in_place = concat_views(g, plan, &mut views);
        // A slice of a concatenation written in place lies in the concatenation's
        // buffer's buffer in turn: point every view at the outermost buffer.
        let direct = views.clone();
        for (whole, offset) in views.values_mut() {
            while let Some(&(outer, o)) = direct.get(whole) {
                (*whole, *offset) = (outer, *offset + o);
            }
        }
        let mut storing = plan.clone();
        for group in &mut storing.groups {
            group.outputs.retain(|v| !in_place.contains(v));
        }
        Layout {
            storing,
            views,
            in_place,
        }
    }

    /// The lifetimes of the buffers `kernels` (lowered from [`Layout::storing`]) touch,
    /// of the graph's inputs and outputs, and of every buffer a view is part of; views
    /// take no room of their own and are left out, as are constants.
    pub fn lives(&self, g: &Graph, kernels: &[LoweredKernel]) -> Vec<BufferLife> {
        let producer = g.producers();
        let mut span: BTreeMap<ValueId, (usize, usize)> = BTreeMap::new();
        let mut touch = |v: ValueId, k: usize| {
            let whole = self.views.get(&v).map_or(v, |&(whole, _)| whole);
            let s = span.entry(whole).or_insert((k, k));
            *s = (s.0.min(k), s.1.max(k));
        };
        for (k, lk) in kernels.iter().enumerate() {
            for &v in &lk.args {
                touch(v, k);
            }
        }
        for &v in &g.inputs {
            touch(v, 0);
        }
        for &v in &g.outputs {
            touch(v, kernels.len());
        }
        // A buffer that views are part of exists even where nothing touches it.
        for &(whole, _) in self.views.values() {
            span.entry(whole).or_insert((0, 0));
        }
        span.into_iter()
            .filter(|(v, _)| {
                !producer[v.index()].is_some_and(|p| matches!(g.nodes[p].op, Op::Constant(_)))
            })
            .map(|(value, (first, last))| BufferLife {
                value,
                bytes: g.ty(value).num_elements().unwrap_or(0) * g.ty(value).dtype.size_bytes(),
                first,
                last,
            })
            .collect()
    }
}

/// The slices the fusion plan made views: each in its operand's buffer.
fn slice_views(g: &Graph, plan: &FusionPlan) -> BTreeMap<ValueId, (ValueId, usize)> {
    plan.groups
        .iter()
        .filter(|grp| grp.kind == GroupKind::View)
        .filter_map(|grp| {
            let node = &g.nodes[grp.nodes[0]];
            let offset = view_offset(g, node)?;
            Some((node.outputs[0], (node.inputs[0], offset)))
        })
        .collect()
}

/// Concatenations that need no copy: a concatenation along an axis with only 1s before it
/// whose output its group stores and is not a graph output, and whose operands are
/// distinct values that other groups store (not graph inputs, outputs or constants),
/// each at an offset that keeps the arena's alignment. Their operands become views of
/// the concatenation's buffer (added to `views`), where their producers write directly,
/// and the concatenation's group no longer stores it (a group that only concatenated is
/// not launched at all). Returns the concatenations written in place.
fn concat_views(
    g: &Graph,
    plan: &FusionPlan,
    views: &mut BTreeMap<ValueId, (ValueId, usize)>,
) -> Vec<ValueId> {
    let producer = g.producers();
    let mut group_of = vec![usize::MAX; g.nodes.len()];
    for (gi, group) in plan.groups.iter().enumerate() {
        for &n in &group.nodes {
            group_of[n] = gi;
        }
    }
    let stored = |v: ValueId| {
        producer[v.index()].is_some_and(|p| {
            !matches!(g.nodes[p].op, Op::Constant(_))
                && plan
                    .groups
                    .get(group_of[p])
                    .is_some_and(|grp| grp.outputs.contains(&v))
        })
    };
    let mut in_place = Vec::new();
    for (gi, group) in plan.groups.iter().enumerate() {
        for &node in &group.nodes {
            let n = &g.nodes[node];
            let Op::Concat { axis } = n.op else { continue };
            let out = n.outputs[0];
            let shape = g.ty(out).fixed_shape().expect("shapes are fixed");
            // Produced by another group, and not a slice's view (a value is part of one
            // buffer only).
            let operand_ok = |v: ValueId| {
                !g.inputs.contains(&v)
                    && !g.outputs.contains(&v)
                    && stored(v)
                    && producer[v.index()].is_some_and(|p| {
                        group_of[p] != gi && plan.groups[group_of[p]].kind != GroupKind::View
                    })
                    && !views.contains_key(&v)
            };
            let distinct = n
                .inputs
                .iter()
                .enumerate()
                .all(|(i, v)| !n.inputs[..i].contains(v));
            if shape[..axis].iter().any(|&d| d != 1)
                || g.outputs.contains(&out)
                || !group.outputs.contains(&out)
                || !distinct
                || !n.inputs.iter().all(|&v| operand_ok(v))
            {
                continue;
            }
            let elem = g.ty(out).dtype.size_bytes();
            let mut offsets = Vec::with_capacity(n.inputs.len());
            let mut offset = 0;
            for &v in &n.inputs {
                offsets.push(offset);
                let count: usize = g
                    .ty(v)
                    .fixed_shape()
                    .expect("shapes are fixed")
                    .iter()
                    .product();
                offset += count * elem;
            }
            if offsets.iter().any(|o| o % VIEW_ALIGN != 0) {
                continue;
            }
            for (&v, o) in n.inputs.iter().zip(offsets) {
                views.insert(v, (out, o));
            }
            in_place.push(out);
        }
    }
    in_place
}
