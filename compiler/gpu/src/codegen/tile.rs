//! Products in 4 x 4 register tiles: which kernels compute one float sum of two factors
//! varying with different axes (MatMul, convolutions), and their tiled emission.

use super::*;

/// Outputs per thread along each of a matrix product's two innermost axes.
pub(super) const TILE: usize = 4;

/// A loop nest whose one store is a function of one float sum over `k` of products of
/// two factors, `a` not varying with domain axis `cols` and `b` not with axis `rows`: a
/// matrix product (rows and columns its last two axes), or a convolution (filters and
/// output columns). A thread computing a `TILE x TILE` block of outputs over those two
/// axes loads each `a` and `b` element once per `k` for the whole block.
#[derive(Debug, Clone, Copy)]
pub(super) struct Product {
    pub(super) reduce: ExprId,
    pub(super) a: ExprId,
    pub(super) b: ExprId,
    /// Where the term is the product (0 elsewhere), and which axis it varies with.
    pub(super) mask: Option<(ExprId, Along)>,
    pub(super) rows: usize,
    pub(super) cols: usize,
}

/// The tile axis a factor or mask varies with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Along {
    Rows,
    Columns,
}

/// The product `nest` computes, where it is one (see [`Product`]); the columns are the
/// innermost axis where possible, so neighbouring threads read neighbouring `b`s.
pub(super) fn tiled_product(nest: &LoopNest) -> Option<Product> {
    let rank = nest.domain.len();
    if rank < 2 {
        return None;
    }
    if nest.stores.len() != 1 {
        return None;
    }
    let live = nest.live();
    let mut reductions = (0..nest.nodes.len())
        .filter(|&e| live[e] && matches!(nest.nodes[e].expr, Expr::Reduce { .. }));
    let reduce = reductions.next()? as ExprId;
    if reductions.next().is_some() {
        return None;
    }
    let node = nest.node(reduce);
    let Expr::Reduce {
        combine: Combine::Sum,
        extent,
        body,
        ..
    } = node.expr
    else {
        return None;
    };
    if extent == 0 || !matches!(node.dtype, DType::F32 | DType::F64) {
        return None;
    }
    // The product, or the product where a condition holds and 0 elsewhere (a padded
    // convolution's border).
    let (product, mask) = match nest.node(body).expr {
        Expr::Select(c, m, z) if matches!(nest.node(z).expr, Expr::Const(Const::Float(bits)) if bits == 0) => {
            (m, Some(c))
        }
        _ => (body, None),
    };
    let Expr::Binary(BinaryOp::Mul, x, y) = nest.node(product).expr else {
        return None;
    };
    // Whether expression `e` does not vary with axis `axis` (affinely zero, or not
    // using it at all). The factors are loads, or loads masked by a padding check.
    let constant_along = |e: ExprId, axis: usize| {
        nest.coefficient(e, Variable::Domain(axis as u32), &mut HashMap::new()) == Some(0)
    };
    let axes = (0..rank).rev().filter(|&ax| nest.domain[ax] >= 2);
    for cols in axes.clone() {
        for rows in axes.clone().filter(|&r| r != cols) {
            for (a, b) in [(x, y), (y, x)] {
                let useful = !constant_along(a, rows) && !constant_along(b, cols);
                if !useful || !constant_along(a, cols) || !constant_along(b, rows) {
                    continue;
                }
                let mask = match mask {
                    None => None,
                    Some(c) if constant_along(c, rows) => Some((c, Along::Columns)),
                    Some(c) if constant_along(c, cols) => Some((c, Along::Rows)),
                    Some(_) => continue,
                };
                return Some(Product {
                    reduce,
                    a,
                    b,
                    mask,
                    rows,
                    cols,
                });
            }
        }
    }
    None
}

impl<'ctx> Emitter<'_, 'ctx> {
    /// The thread's tile of a product: `vars` hold the tile's coordinates on its row and
    /// column axes. One loop over `k` loads `TILE` elements of `a` and of `b` and
    /// accumulates the `TILE x TILE` products (in the order the one-element loop adds
    /// them); then each output of the tile inside the domain is computed from its sum as
    /// the one-element kernel would, and stored.
    pub(super) fn tiled_product(&mut self, p: Product) -> R<()> {
        let (row_axis, col_axis) = (p.rows, p.cols);
        let Expr::Reduce { extent, var, .. } = self.nest.node(p.reduce).expr else {
            unreachable!("a product's reduction")
        };
        let i64t = self.ctx.i64_type();
        let acc_type = self.reg_type(reg(self.nest.node(p.reduce).dtype));
        let b = self.b;
        let tile = i64t.const_int(TILE as u64, false);
        let first_row = b
            .build_int_mul(self.vars[row_axis], tile, "")
            .map_err(llvm)?;
        let first_col = b
            .build_int_mul(self.vars[col_axis], tile, "")
            .map_err(llvm)?;
        // Each of the tile's rows and columns, and (clamped into the domain, so every
        // load stays where the one-element kernel's would) the coordinate it computes at.
        let line =
            |first: IntValue<'ctx>, extent: usize| -> R<Vec<(IntValue<'ctx>, IntValue<'ctx>)>> {
                let last = i64t.const_int(extent as u64 - 1, false);
                (0..TILE)
                    .map(|t| {
                        let at = b
                            .build_int_add(first, i64t.const_int(t as u64, false), "")
                            .map_err(llvm)?;
                        let clamped = self.intrinsic("umin", &[at.into(), last.into()])?;
                        Ok((at, clamped.into_int_value()))
                    })
                    .collect()
            };
        let rows = line(first_row, self.nest.domain[row_axis])?;
        let cols = line(first_col, self.nest.domain[col_axis])?;
        // The sums, over k.
        let pre = b.get_insert_block().expect("positioned");
        let looped = self.ctx.append_basic_block(self.func, "tile_k");
        let after = self.ctx.append_basic_block(self.func, "tile_sums");
        b.build_unconditional_branch(looped).map_err(llvm)?;
        b.position_at_end(looped);
        let k = b.build_phi(i64t, "k").map_err(llvm)?;
        k.add_incoming(&[(&i64t.const_zero(), pre)]);
        let zero = self.identity(Combine::Sum, self.nest.node(p.reduce).dtype);
        let mut sums = Vec::with_capacity(TILE * TILE);
        for _ in 0..TILE * TILE {
            let phi = b.build_phi(acc_type, "sum").map_err(llvm)?;
            phi.add_incoming(&[(&zero, pre)]);
            sums.push(phi);
        }
        let kv = k.as_basic_value().into_int_value();
        self.rvars.insert(var, kv);
        let load_at = |em: &mut Self, e: ExprId, axis: usize, at: IntValue<'ctx>| {
            em.vars[axis] = at;
            let mark = em.set_log.len();
            let v = em.ensure(e);
            for x in em.set_log.drain(mark..) {
                em.values[x as usize] = None;
            }
            v
        };
        let (saved_row, saved_col) = (self.vars[row_axis], self.vars[col_axis]);
        // `a` does not vary with the column, nor `b` with the row: any one will do.
        self.vars[col_axis] = cols[0].1;
        let mut a = Vec::with_capacity(TILE);
        for &(_, r) in &rows {
            a.push(load_at(self, p.a, row_axis, r)?.into_float_value());
        }
        self.vars[row_axis] = rows[0].1;
        let mut bs = Vec::with_capacity(TILE);
        for &(_, c) in &cols {
            bs.push(load_at(self, p.b, col_axis, c)?.into_float_value());
        }
        // The mask per row or per column (the other coordinate is any in the tile).
        let mut masks = Vec::new();
        if let Some((mask, along)) = p.mask {
            let (axis, line) = match along {
                Along::Rows => (row_axis, &rows),
                Along::Columns => (col_axis, &cols),
            };
            for &(_, at) in line {
                masks.push(load_at(self, mask, axis, at)?.into_int_value());
            }
        }
        let b = self.b;
        let mut next_sums = Vec::with_capacity(TILE * TILE);
        for (t, av) in a.iter().enumerate() {
            for (u, bv) in bs.iter().enumerate() {
                // One fused multiply-add per product: ptxas never contracts the
                // separately rounded `mul.rn` and `add.rn` LLVM emits for a plain
                // multiply and add, which would halve the peak.
                let sum = sums[t * TILE + u].as_basic_value();
                let fused = self
                    .intrinsic("fma", &[(*av).into(), (*bv).into(), sum])?
                    .into_float_value();
                let next = match p.mask.map(|(_, along)| along) {
                    None => fused,
                    // Outside the mask the term is 0: the sum stays as it was.
                    Some(along) => {
                        let m = masks[if along == Along::Rows { t } else { u }];
                        self.b
                            .build_select(m, fused, sum.into_float_value(), "")
                            .map_err(llvm)?
                            .into_float_value()
                    }
                };
                next_sums.push(next);
            }
        }
        let next_k = b
            .build_int_add(kv, i64t.const_int(1, false), "")
            .map_err(llvm)?;
        let latch = b.get_insert_block().expect("positioned");
        k.add_incoming(&[(&next_k, latch)]);
        for (phi, v) in sums.iter().zip(&next_sums) {
            phi.add_incoming(&[(v, latch)]);
        }
        let more = b
            .build_int_compare(IntPredicate::ULT, next_k, i64t.const_int(extent, false), "")
            .map_err(llvm)?;
        b.build_conditional_branch(more, looped, after)
            .map_err(llvm)?;
        b.position_at_end(after);
        self.rvars.remove(&var);
        // Each output of the tile from its sum.
        let store = self.nest.stores[0];
        let (m, n) = (
            i64t.const_int(self.nest.domain[row_axis] as u64, false),
            i64t.const_int(self.nest.domain[col_axis] as u64, false),
        );
        for (t, &(row, row_clamped)) in rows.iter().enumerate() {
            for (u, &(col, col_clamped)) in cols.iter().enumerate() {
                let b = self.b;
                let inside_row = b
                    .build_int_compare(IntPredicate::ULT, row, m, "")
                    .map_err(llvm)?;
                let inside_col = b
                    .build_int_compare(IntPredicate::ULT, col, n, "")
                    .map_err(llvm)?;
                let inside = b.build_and(inside_row, inside_col, "").map_err(llvm)?;
                let write = self.ctx.append_basic_block(self.func, "tile_store");
                let next = self.ctx.append_basic_block(self.func, "tile_next");
                b.build_conditional_branch(inside, write, next)
                    .map_err(llvm)?;
                b.position_at_end(write);
                self.vars[row_axis] = row_clamped;
                self.vars[col_axis] = col_clamped;
                let mark = self.set_log.len();
                self.set(p.reduce, next_sums[t * TILE + u].into());
                self.ensure(store.index)?;
                self.ensure(store.value)?;
                self.store(store.param, store.index, store.value)?;
                for x in self.set_log.drain(mark..) {
                    self.values[x as usize] = None;
                }
                self.b.build_unconditional_branch(next).map_err(llvm)?;
                self.b.position_at_end(next);
            }
        }
        self.vars[row_axis] = saved_row;
        self.vars[col_axis] = saved_col;
        Ok(())
    }
}
