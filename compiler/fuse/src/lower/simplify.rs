//! Index arithmetic simplified by value ranges: constant folding, recombined divisions
//! and remainders, boolean conditions known from ranges.

use super::*;

impl<'g> Builder<'g> {
    /// Comparisons decided by the operands' ranges (bounds checks of windows that never
    /// leave the input), and `and`/`or` with a decided operand.
    pub(super) fn simplify_bool(&mut self, op: BinaryOp, a: ExprId, b: ExprId) -> Option<ExprId> {
        let known = |g: &mut Self, v: bool| g.add(Expr::Const(Const::Int(v.into())), DType::Bool);
        match op {
            BinaryOp::And | BinaryOp::Or => {
                let and = op == BinaryOp::And;
                match (self.bool_of(a), self.bool_of(b)) {
                    (Some(x), _) if x == and => Some(b),
                    (_, Some(y)) if y == and => Some(a),
                    (Some(_), _) | (_, Some(_)) => Some(known(self, !and)),
                    _ => None,
                }
            }
            _ if op.is_comparison() && self.nest.nodes[a as usize].dtype == DType::I64 => {
                let ((a0, a1), (b0, b1)) = (self.range[a as usize]?, self.range[b as usize]?);
                let v = match op {
                    BinaryOp::Less if a1 < b0 => true,
                    BinaryOp::Less if a0 >= b1 => false,
                    BinaryOp::LessEqual if a1 <= b0 => true,
                    BinaryOp::LessEqual if a0 > b1 => false,
                    BinaryOp::Greater if a0 > b1 => true,
                    BinaryOp::Greater if a1 <= b0 => false,
                    BinaryOp::GreaterEqual if a0 >= b1 => true,
                    BinaryOp::GreaterEqual if a1 < b0 => false,
                    _ => return None,
                };
                Some(known(self, v))
            }
            _ => None,
        }
    }

    pub(super) fn simplify(&mut self, expr: Expr, dtype: DType) -> Option<ExprId> {
        if dtype == DType::Bool
            && let Expr::Binary(op, a, b) = expr
        {
            return self.simplify_bool(op, a, b);
        }
        if let Expr::Select(c, a, b) = expr {
            return self.bool_of(c).map(|v| if v { a } else { b });
        }
        if dtype != DType::I64 {
            return None;
        }
        let Expr::Binary(op, a, b) = expr else {
            return None;
        };
        let (ca, cb) = (self.const_of(a), self.const_of(b));
        if let (Some(x), Some(y)) = (ca, cb) {
            let v = match op {
                BinaryOp::Add => x.wrapping_add(y),
                BinaryOp::Sub => x.wrapping_sub(y),
                BinaryOp::Mul => x.wrapping_mul(y),
                BinaryOp::Div if y != 0 => x.wrapping_div(y),
                BinaryOp::Rem if y != 0 => x.wrapping_rem(y),
                _ => return None,
            };
            return Some(self.int(v));
        }
        if op == BinaryOp::Add
            && let Some(e) = self.recombine(a, b).or_else(|| self.recombine(b, a))
        {
            return Some(e);
        }
        let ra = self.range[a as usize];
        match (op, ca, cb) {
            (BinaryOp::Add, Some(0), _) => Some(b),
            (BinaryOp::Add | BinaryOp::Sub, _, Some(0)) => Some(a),
            (BinaryOp::Mul, Some(1), _) => Some(b),
            (BinaryOp::Mul | BinaryOp::Div, _, Some(1)) => Some(a),
            (BinaryOp::Mul, Some(0), _) | (BinaryOp::Mul, _, Some(0)) => Some(self.int(0)),
            (BinaryOp::Div, _, Some(c))
                if c > 0 && ra.is_some_and(|(lo, hi)| lo >= 0 && hi < c) =>
            {
                Some(self.int(0))
            }
            (BinaryOp::Rem, _, Some(c))
                if c > 0 && ra.is_some_and(|(lo, hi)| lo >= 0 && hi < c) =>
            {
                Some(a)
            }
            (BinaryOp::Div | BinaryOp::Rem, _, Some(c)) if c > 0 => {
                self.split_div_rem(op == BinaryOp::Div, a, c)
            }
            // Clamps the operand's range already satisfies.
            (BinaryOp::Max, _, Some(c)) if ra.is_some_and(|(lo, _)| lo >= c) => Some(a),
            (BinaryOp::Min, _, Some(c)) if ra.is_some_and(|(_, hi)| hi <= c) => Some(a),
            _ => None,
        }
    }

    /// `p + q` as `x` (or `s + x`) when `q` is `x % c` and `p` is `(x / c) * c` (or a sum
    /// holding it): a flattened reduction variable split into coordinates and linearized
    /// again, as in a reduction over the trailing axes of a contiguous tensor. Exact for
    /// every `x` under truncated division with a nonzero constant `c`.
    pub(super) fn recombine(&mut self, p: ExprId, q: ExprId) -> Option<ExprId> {
        let Expr::Binary(BinaryOp::Rem, x, c) = self.nest.nodes[q as usize].expr else {
            return None;
        };
        if self.const_of(c).is_none_or(|c| c == 0) {
            return None;
        }
        let is_quotient_times_c = |g: &Self, e: ExprId| match g.nest.nodes[e as usize].expr {
            Expr::Binary(BinaryOp::Mul, m, n) => [(m, n), (n, m)].into_iter().any(|(d, k)| {
                k == c && g.nest.nodes[d as usize].expr == Expr::Binary(BinaryOp::Div, x, c)
            }),
            _ => false,
        };
        if is_quotient_times_c(self, p) {
            return Some(x);
        }
        if let Expr::Binary(BinaryOp::Add, s, t) = self.nest.nodes[p as usize].expr {
            for (rest, part) in [(s, t), (t, s)] {
                if is_quotient_times_c(self, part) {
                    return Some(self.iadd(rest, x));
                }
            }
        }
        None
    }

    /// A known divisor of every value of `e` (0: `e` is always 0).
    pub(super) fn multiple_of(&self, e: ExprId) -> i64 {
        match self.nest.nodes[e as usize].expr {
            Expr::Const(Const::Int(v)) => v.checked_abs().unwrap_or(1),
            Expr::Binary(BinaryOp::Mul, a, b) => self
                .multiple_of(a)
                .checked_mul(self.multiple_of(b))
                .unwrap_or(1),
            Expr::Binary(BinaryOp::Add, a, b) => gcd(self.multiple_of(a), self.multiple_of(b)),
            _ => 1,
        }
    }

    pub(super) fn non_negative(&self, e: ExprId) -> bool {
        self.range[e as usize].is_some_and(|(lo, _)| lo >= 0)
    }

    /// `a / c` or `a % c` (c > 0, a >= 0) through the structure of `a`: flattened and
    /// re-split coordinates (`(i * 3136 + j * 56 + k) / 56`) become the coordinates again,
    /// so a reshape of a transpose of a reshape indexes without division.
    pub(super) fn split_div_rem(&mut self, div: bool, a: ExprId, c: i64) -> Option<ExprId> {
        if !self.non_negative(a) {
            return None;
        }
        match self.nest.nodes[a as usize].expr {
            Expr::Binary(BinaryOp::Add, x, y) if self.non_negative(x) && self.non_negative(y) => {
                for (big, small) in [(x, y), (y, x)] {
                    let m = self.multiple_of(big);
                    if m % c == 0 {
                        // big is a multiple of c.
                        let cv = self.int(c);
                        return Some(if div {
                            let q = self.bin(BinaryOp::Div, big, cv);
                            let r = self.bin(BinaryOp::Div, small, cv);
                            self.iadd(q, r)
                        } else {
                            self.bin(BinaryOp::Rem, small, cv)
                        });
                    }
                    let fits = self.range[small as usize].is_some_and(|(_, hi)| hi < m);
                    if m > 0 && c % m == 0 && fits {
                        // big = m t, c = m q and small < m: small never carries.
                        let cv = self.int(c);
                        return Some(if div {
                            self.bin(BinaryOp::Div, big, cv)
                        } else {
                            let r = self.bin(BinaryOp::Rem, big, cv);
                            self.iadd(r, small)
                        });
                    }
                }
                None
            }
            Expr::Binary(BinaryOp::Mul, z, k) if self.non_negative(z) => {
                let k = self.const_of(k)?;
                if k <= 0 {
                    return None;
                }
                if k % c == 0 {
                    Some(if div {
                        self.imul_c(z, k / c)
                    } else {
                        self.int(0)
                    })
                } else if c % k == 0 {
                    let q = self.int(c / k);
                    Some(if div {
                        self.bin(BinaryOp::Div, z, q)
                    } else {
                        let r = self.bin(BinaryOp::Rem, z, q);
                        self.imul_c(r, k)
                    })
                } else {
                    None
                }
            }
            _ => None,
        }
    }
}
