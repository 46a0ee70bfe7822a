//! Dead convolution taps: a kernel tap that reads only padding at every output position
//! contributes nothing, so the constant weight is cut to the taps that read the input
//! and the pads shrink to match. DeepLabV3's atrous pyramid at rates 24 and 36 on a
//! 14 x 14 map is then a 1x1 convolution: 9x fewer multiply-adds, all of them on zeros.
//!
//! Along one spatial axis (input `h`, kernel `k`, stride `s`, dilation `d`, pads `pb`,
//! `pe`, output `o`), output `y` reads input `y*s - pb + t*d` at tap `t`; tap `t` is live
//! when some `y` in `[0, o)` lands in `[0, h)`, i.e. `t*d - pb < h` and
//! `(o-1)*s + t*d - pb >= 0`. Keeping taps `[t0, t1]` with `pb' = pb - t0*d` reads the
//! same positions; `pe'` is the least padding that still gives `o` outputs. An axis is
//! left alone where either pad would be negative (the cut would crop the input).

use crate::error::OptError;
use crate::pass::{Pass, PassOutcome};
use smelt_ir::{Graph, Op, Tensor};

#[derive(Debug, Clone, Copy)]
pub struct ConvTaps;

/// The taps `[t0, t1]` to keep along one axis and their pads, or `None` to keep all.
fn live_taps([h, k, s, d, pb, pe]: [usize; 6]) -> Option<(usize, usize, usize, usize)> {
    let span = d * (k - 1) + 1;
    let o = (h + pb + pe).checked_sub(span)? / s + 1;
    let live = |t: usize| t * d < h + pb && (o - 1) * s + t * d >= pb;
    let first = (0..k).find(|&t| live(t))?;
    let last = (0..k).rev().find(|&t| live(t))?;
    if first == 0 && last == k - 1 {
        return None;
    }
    // A cut that would need a negative begin pad starts earlier instead.
    let t0 = first.min(pb / d);
    let pb2 = pb - t0 * d;
    let k2 = last - t0 + 1;
    // The end pad giving exactly `o` outputs: (h + pb2 + pe2 - span2) / s + 1 == o.
    let needed = (o - 1) * s + d * (k2 - 1) + 1;
    let pe2 = needed.saturating_sub(h + pb2);
    let outputs = (h + pb2 + pe2).checked_sub(d * (k2 - 1) + 1)? / s + 1;
    (outputs == o && (t0, last) != (0, k - 1)).then_some((t0, last, pb2, pe2))
}

impl Pass for ConvTaps {
    fn name(&self) -> &'static str {
        "conv-taps"
    }

    fn run(&self, g: &mut Graph) -> Result<PassOutcome, OptError> {
        let producers = g.producers();
        let mut uses = vec![0usize; g.values.len()];
        for v in g.nodes.iter().flat_map(|n| &n.inputs).chain(&g.outputs) {
            uses[v.index()] += 1;
        }
        let mut changes = 0;
        for i in 0..g.nodes.len() {
            let Op::Conv {
                strides,
                pads,
                dilations,
                ..
            } = &g.nodes[i].op
            else {
                continue;
            };
            let (x, w) = (g.nodes[i].inputs[0], g.nodes[i].inputs[1]);
            let (Some(xs), Some(ws)) = (g.ty(x).fixed_shape(), g.ty(w).fixed_shape()) else {
                continue;
            };
            let Some(wn) = producers[w.index()] else {
                continue;
            };
            // The weight is cut in place, so no other node may read it.
            if uses[w.index()] != 1 || !matches!(g.nodes[wn].op, Op::Constant(_)) {
                continue;
            }
            let rank = ws.len();
            let spatial = rank.saturating_sub(2);
            let mut new_pads = pads.clone();
            let mut cuts = Vec::new();
            for a in 0..spatial {
                let axis = [
                    xs[2 + a],
                    ws[2 + a],
                    strides[a],
                    dilations[a],
                    pads[a],
                    pads[spatial + a],
                ];
                if strides[a] == 0 || dilations[a] == 0 || ws[2 + a] == 0 {
                    continue;
                }
                if let Some((t0, t1, pb, pe)) = live_taps(axis) {
                    new_pads[a] = pb;
                    new_pads[spatial + a] = pe;
                    cuts.push(Op::slice_along(rank, 2 + a, t0 as i64, t1 as i64 + 1, 1));
                }
            }
            if cuts.is_empty() {
                continue;
            }
            let Op::Constant(weight) = &g.nodes[wn].op else {
                continue;
            };
            // Each cut reads the previous one (the first the weight itself, not a copy).
            let mut cut: Option<Tensor> = None;
            for op in &cuts {
                let from = cut.as_ref().unwrap_or(weight);
                let next = smelt_ir::interp::eval_op(op, &[from])
                    .map_err(|source| OptError::Ir {
                        pass: "conv-taps",
                        source,
                    })?
                    .remove(0);
                cut = Some(next);
            }
            let cut = cut.expect("at least one cut");
            g.values[w.index()].ty = cut.tensor_type();
            g.nodes[wn].op = Op::Constant(cut);
            if let Op::Conv { pads, .. } = &mut g.nodes[i].op {
                *pads = new_pads;
            }
            changes += 1;
        }
        Ok(changes.into())
    }
}

#[cfg(test)]
mod tests {
    use super::live_taps;

    #[test]
    fn taps_in_padding_are_cut() {
        // DeepLabV3's rate-24 branch: 14 wide, 3 taps 24 apart, pads 24 -> the middle tap.
        assert_eq!(live_taps([14, 3, 1, 24, 24, 24]), Some((1, 1, 0, 0)));
        // Rate 12 on 14: every tap reads the input somewhere.
        assert_eq!(live_taps([14, 3, 1, 12, 12, 12]), None);
        // Only the last two of 5 taps (dilation 2, pads 8 before) reach a 4-wide input:
        // output y reads y - 8 + 2t, so taps 3 and 4 with pads 2 read y - 2 and y.
        assert_eq!(live_taps([4, 5, 1, 2, 8, 0]), Some((3, 4, 2, 0)));
        // Dead taps at the end: 5 taps 3 apart with pads 2 and 10 on a 4-wide input keep
        // taps 0 and 1, the end pad shrinking from 10 to 1.
        assert_eq!(live_taps([4, 5, 1, 3, 2, 10]), Some((0, 1, 2, 1)));
        // One output reading only tap 3 (input 1): taps from 2 on keep the begin pad
        // non-negative, and then the end pad would have to be negative; no cut.
        assert_eq!(live_taps([4, 5, 1, 3, 8, 1]), None);
        // Nothing to cut in an ordinary 3x3 with pads 1.
        assert_eq!(live_taps([8, 3, 1, 1, 1, 1]), None);
    }
}
