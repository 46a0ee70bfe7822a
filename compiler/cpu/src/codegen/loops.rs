//! The loops of a kernel: the row loop's inner loop, versioned per outcome of per-row
//! select conditions and split into edges and an interior, and counted loops.

use super::*;

impl<M: Module> Gen<'_, '_, M> {
    /// The inner loop, once per outcome of the per-row select conditions it needs (at most
    /// `MAX_VERSIONS` versions: each split spends one of `splits`): each version computes
    /// only the arms its outcome picks, so a concatenation reads one part per row instead
    /// of all of them.
    pub(super) fn inner_loop_versions(
        &mut self,
        lo: Value,
        hi: Value,
        vectorize: bool,
        splits: &mut usize,
    ) -> Result<(), CpuError> {
        let needed = self.needed_in_inner();
        let open = self
            .row_selects
            .iter()
            .find_map(|&e| match self.nest.node(e).expr {
                Expr::Select(c, _, _) if needed.contains(&e) && !self.known.contains_key(&c) => {
                    Some(c)
                }
                _ => None,
            });
        match open {
            Some(c) if *splits > 0 => {
                *splits -= 1;
                let cond = self.scalar(c);
                let (then, other, join) = (
                    self.b.create_block(),
                    self.b.create_block(),
                    self.b.create_block(),
                );
                self.b.ins().brif(cond, then, &[], other, &[]);
                for (block, pick) in [(then, true), (other, false)] {
                    self.b.switch_to_block(block);
                    let decided = self.decided_by(c, pick);
                    self.known.extend(decided.iter().copied());
                    self.inner_loop_versions(lo, hi, vectorize, splits)?;
                    for (d, _) in decided {
                        self.known.remove(&d);
                    }
                    self.b.ins().jump(join, &[]);
                }
                self.b.switch_to_block(join);
                Ok(())
            }
            _ => {
                self.needed = (!self.known.is_empty()).then_some(needed);
                let r = self.inner_loop_split(lo, hi, vectorize);
                self.needed = None;
                r
            }
        }
    }

    /// `c` known to be `pick`, with the other open per-row select conditions that this
    /// decides: where `c` is `x < k`, each `x < k2` is true if `x < k` and `k2 >= k`, and
    /// false if not and `k2 <= k`. A concatenation's chain of selects (`x < end` of each
    /// part) then needs one split per part, each version reading one part; without this
    /// the version of `x >= k` still read every part before `k`.
    fn decided_by(&self, c: ExprId, pick: bool) -> Vec<(ExprId, bool)> {
        let less_than = |e: ExprId| match self.nest.node(e).expr {
            Expr::Binary(BinaryOp::Less, x, k) => match self.nest.node(k).expr {
                Expr::Const(Const::Int(k)) => Some((x, k)),
                _ => None,
            },
            _ => None,
        };
        let mut decided = vec![(c, pick)];
        let Some((x, k)) = less_than(c) else {
            return decided;
        };
        for &e in &self.row_selects {
            let Expr::Select(c2, _, _) = self.nest.node(e).expr else {
                continue;
            };
            if c2 == c || self.known.contains_key(&c2) || decided.iter().any(|&(d, _)| d == c2) {
                continue;
            }
            match less_than(c2) {
                Some((x2, k2)) if x2 == x && pick && k2 >= k => decided.push((c2, true)),
                Some((x2, k2)) if x2 == x && !pick && k2 <= k => decided.push((c2, false)),
                _ => {}
            }
        }
        decided
    }

    /// The inner-loop expressions the inner stores need when the selects on known
    /// conditions take the arms those say.
    pub(super) fn needed_in_inner(&self) -> HashSet<ExprId> {
        let (mut needed, mut seen) = (HashSet::new(), HashSet::new());
        let mut stack: Vec<ExprId> = self
            .stores_at
            .get(&Scope::Inner)
            .into_iter()
            .flatten()
            .flat_map(|&i| [self.nest.stores[i].index, self.nest.stores[i].value])
            .collect();
        // Through every scope: the bodies of reductions placed in the inner loop may read
        // inner-loop values.
        while let Some(e) = stack.pop() {
            if !seen.insert(e) {
                continue;
            }
            if self.place[e as usize] == Scope::Inner {
                needed.insert(e);
            }
            match self.nest.node(e).expr {
                Expr::Select(c, a, b) if self.known.contains_key(&c) => {
                    stack.push(if self.known[&c] { a } else { b })
                }
                _ => stack.extend(self.nest.operands(e)),
            }
        }
        needed
    }

    /// The inner loop over `[lo, hi)`, in three parts where it has an interior
    /// (`interior_of`): before it, the interior (where the edge comparisons are known
    /// true, so their masks and selects vanish), and after it.
    pub(super) fn inner_loop_split(
        &mut self,
        lo: Value,
        hi: Value,
        vectorize: bool,
    ) -> Result<(), CpuError> {
        let saved = self.known.clone();
        let Some((first, end, holds)) = self.interior.clone() else {
            let r = self.inner_loop(lo, hi, vectorize);
            self.known = saved;
            return r;
        };
        let b = &mut self.b;
        let first = b.ins().iconst(types::I64, first);
        let end = b.ins().iconst(types::I64, end);
        let first = b.ins().smax(first, lo);
        let first = b.ins().smin(first, hi);
        let end = b.ins().smax(end, first);
        let end = b.ins().smin(end, hi);
        self.inner_loop(lo, first, vectorize)?;
        self.known = saved.clone();
        self.known.extend(holds.into_iter().map(|h| (h, true)));
        let r = self.inner_loop(first, end, vectorize);
        self.known = saved.clone();
        r?;
        let r = self.inner_loop(end, hi, vectorize);
        self.known = saved;
        r
    }

    pub(super) fn inner_loop(
        &mut self,
        lo: Value,
        hi: Value,
        vectorize: bool,
    ) -> Result<(), CpuError> {
        let mut start = lo;
        if vectorize {
            let (header, body, exit) = (
                self.b.create_block(),
                self.b.create_block(),
                self.b.create_block(),
            );
            // Two vectors a step, then at most one more: the loop's own instructions
            // (index, compare, branch) are a large share of a short body.
            let i = self.b.append_block_param(header, types::I64);
            let done = self.b.append_block_param(exit, types::I64);
            self.b.ins().jump(header, &[lo.into()]);
            self.b.switch_to_block(header);
            let last = self.b.ins().iadd_imm(i, 2 * LANES);
            let more = self.b.ins().icmp(IntCC::SignedLessThanOrEqual, last, hi);
            self.b.ins().brif(more, body, &[], exit, &[i.into()]);
            self.b.switch_to_block(body);
            for at in [i, self.b.ins().iadd_imm(i, LANES)] {
                self.inner_step(at, true)?;
            }
            self.b.ins().jump(header, &[last.into()]);
            self.b.switch_to_block(exit);
            let (once, after) = (self.b.create_block(), self.b.create_block());
            let rest = self.b.append_block_param(after, types::I64);
            let last = self.b.ins().iadd_imm(done, LANES);
            let fits = self.b.ins().icmp(IntCC::SignedLessThanOrEqual, last, hi);
            self.b.ins().brif(fits, once, &[], after, &[done.into()]);
            self.b.switch_to_block(once);
            self.inner_step(done, true)?;
            self.b.ins().jump(after, &[last.into()]);
            self.b.switch_to_block(after);
            start = rest;
        }
        self.counted_loop(start, hi, 1, |g, i| g.inner_step(i, false))
    }

    /// A loop of `body(i)` for `i` from `start` while `i < end`, `step` at a time, with no
    /// values carried between iterations; the builder continues after it.
    pub(super) fn counted_loop(
        &mut self,
        start: Value,
        end: Value,
        step: i64,
        mut body: impl FnMut(&mut Self, Value) -> Result<(), CpuError>,
    ) -> Result<(), CpuError> {
        let (header, bb, exit) = (
            self.b.create_block(),
            self.b.create_block(),
            self.b.create_block(),
        );
        let i = self.b.append_block_param(header, types::I64);
        self.b.ins().jump(header, &[start.into()]);
        self.b.switch_to_block(header);
        let more = self.b.ins().icmp(IntCC::SignedLessThan, i, end);
        self.b.ins().brif(more, bb, &[], exit, &[]);
        self.b.switch_to_block(bb);
        body(self, i)?;
        let next = self.b.ins().iadd_imm(i, step);
        self.b.ins().jump(header, &[next.into()]);
        self.b.switch_to_block(exit);
        Ok(())
    }

    /// The inner loop's body at inner index `at`: four lanes from it, or one element.
    pub(super) fn inner_step(&mut self, at: Value, lanes: bool) -> Result<(), CpuError> {
        self.inner = Some(at);
        self.inner_lanes = lanes;
        self.frames.push(HashMap::new());
        self.emit_scope(Scope::Inner)?;
        self.frames.pop();
        self.inner_lanes = false;
        Ok(())
    }
}
