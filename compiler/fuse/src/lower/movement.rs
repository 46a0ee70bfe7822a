//! Movement ops inside a group: broadcast, reshape, transpose, slice, concatenation and
//! padding map the result's coordinates to their operand's.

use super::*;

impl<'g> Builder<'g> {
    /// Movement ops: the operand at coordinates mapped from the result's (broadcast, reshape,
    /// transpose, slice, concatenation, padding).
    pub(super) fn movement_at(&mut self, v: ValueId, coords: &[ExprId]) -> Built {
        let (g, node) = (self.g, self.node_of(v));
        let ins = &node.inputs;
        let shape_of = |i: usize| fixed(g, ins[i]);
        let dtype = g.ty(v).dtype;
        match &node.op {
            Op::Expand { .. } => {
                let c = self.broadcast(coords, &shape_of(0)?);
                self.at(ins[0], &c)
            }
            Op::Reshape { .. } => {
                let out = fixed(g, v)?;
                let lin = self.flatten(coords, &out);
                self.at_linear(ins[0], lin)
            }
            Op::Transpose { perm } => {
                let mut c = vec![0; coords.len()];
                for (k, &p) in perm.iter().enumerate() {
                    c[p] = coords[k];
                }
                self.at(ins[0], &c)
            }
            Op::Slice {
                starts,
                ends,
                steps,
            } => {
                let x = shape_of(0)?;
                let mut c = Vec::with_capacity(x.len());
                for a in 0..x.len() {
                    let (s, _) = slice_bounds(x[a], starts[a], ends[a], steps[a]);
                    let t = self.imul_c(coords[a], steps[a]);
                    c.push(self.iadd_c(t, s));
                }
                self.at(ins[0], &c)
            }
            Op::Concat { axis } => {
                let axis = *axis;
                let mut offsets = Vec::with_capacity(ins.len());
                let mut off = 0usize;
                for i in 0..ins.len() {
                    offsets.push(off);
                    off += shape_of(i)?[axis];
                }
                // Last part first, so each earlier part overrides below its end.
                let mut acc: Option<ExprId> = None;
                for i in (0..ins.len()).rev() {
                    if shape_of(i)?[axis] == 0 {
                        continue;
                    }
                    let mut c = coords.to_vec();
                    c[axis] = self.iadd_c(coords[axis], -(offsets[i] as i64));
                    if axis + 1 < coords.len() {
                        // Clamped into the part, so its loads are provably in bounds (and
                        // vector loads need no edge check) where the select discards them;
                        // along the innermost axis the clamp would stop vectorization.
                        let (lo, hi) = (self.int(0), self.int(shape_of(i)?[axis] as i64 - 1));
                        let at_least = self.bin(BinaryOp::Max, c[axis], lo);
                        c[axis] = self.bin(BinaryOp::Min, at_least, hi);
                    }
                    let part = self.at(ins[i], &c)?;
                    acc = Some(match acc {
                        None => part,
                        Some(later) => {
                            let end = self.int((offsets[i] + shape_of(i)?[axis]) as i64);
                            let cond = self.bin(BinaryOp::Less, coords[axis], end);
                            self.select(cond, part, later)
                        }
                    });
                }
                acc.ok_or_else(|| self.unsupported(v, "concat of empty parts"))
            }
            Op::Pad { pads, mode } => {
                let x = shape_of(0)?;
                let r = x.len();
                let mut c = Vec::with_capacity(r);
                let mut inside: Option<ExprId> = None;
                for a in 0..r {
                    let n = x[a] as i64;
                    let p = self.iadd_c(coords[a], -pads[a]);
                    let mapped = match mode {
                        PadMode::Constant => {
                            let ok = self.in_range(p, 0, n);
                            inside = Some(match inside {
                                None => ok,
                                Some(prev) => self.bin(BinaryOp::And, prev, ok),
                            });
                            p
                        }
                        PadMode::Edge => {
                            let (lo, hi) = (self.int(0), self.int(n - 1));
                            let t = self.bin(BinaryOp::Max, p, lo);
                            self.bin(BinaryOp::Min, t, hi)
                        }
                        PadMode::Wrap => {
                            let m = self.int(n.max(1));
                            self.bin(BinaryOp::Mod, p, m)
                        }
                        PadMode::Reflect => {
                            if n <= 1 {
                                self.int(0)
                            } else {
                                // Fold into one period of 2(n-1), then mirror the back half.
                                let period = self.int(2 * (n - 1));
                                let q = self.bin(BinaryOp::Mod, p, period);
                                let back = self.int(n - 1);
                                let is_back = self.bin(BinaryOp::Greater, q, back);
                                let two = self.int(2 * (n - 1));
                                let mirrored = self.bin(BinaryOp::Sub, two, q);
                                self.select(is_back, mirrored, q)
                            }
                        }
                    };
                    c.push(mapped);
                }
                let value = self.at(ins[0], &c)?;
                match inside {
                    Some(ok) => {
                        let fill = match ins.get(1) {
                            Some(&pv) => {
                                let zeros: Vec<ExprId> =
                                    fixed(g, pv)?.iter().map(|_| self.int(0)).collect();
                                self.at(pv, &zeros)?
                            }
                            None => self.constant(dtype, 0.0),
                        };
                        Ok(self.select(ok, value, fill))
                    }
                    None => Ok(value),
                }
            }
            op => Err(self.not_compiled(v, op)),
        }
    }
}
