//! Resize: a call of the runtime's separable kernel where it applies (f32, only the two
//! innermost axes resized, no crop-and-resize), otherwise arithmetic on the output
//! coordinate in f64 (nearest, linear and cubic modes, every coordinate transformation),
//! as ONNX defines it.

use super::*;
use smelt_ir::{ResizeAxis, Sampling};

/// Whether the runtime's resize kernel runs this node: f32, at least two axes, no
/// crop-and-resize, and every axis but the two innermost mapped onto itself.
pub(super) fn runtime_resize(g: &Graph, node: &smelt_ir::Node) -> bool {
    let (
        Op::Resize {
            sizes,
            scales,
            coord,
            ..
        },
        Some(sampling),
    ) = (&node.op, Sampling::of(&node.op))
    else {
        return false;
    };
    let Some(x) = g.ty(node.inputs[0]).fixed_shape() else {
        return false;
    };
    let r = x.len();
    g.ty(node.outputs[0]).dtype == DType::F32
        && g.ty(node.inputs[0]).dtype == DType::F32
        && r >= 2
        && *coord != smelt_ir::CoordMode::TfCropAndResize
        && (0..r - 2).all(|a| {
            x[a] == sizes[a]
                && sampling
                    .taps(ResizeAxis {
                        n_in: x[a],
                        n_out: sizes[a],
                        scale: scales[a],
                        roi: (0.0, 1.0),
                    })
                    .iter()
                    .enumerate()
                    .all(|(o, taps)| {
                        taps.as_ref().is_some_and(|t| {
                            t.iter().filter(|(_, w)| *w != 0.0).eq([(o, 1.0)].iter())
                        })
                    })
        })
}

/// A resize group: one call of the runtime's resize kernel.
pub(super) fn lower_resize_call(
    g: &Graph,
    producer: &[Option<usize>],
    name: &str,
    grp: &Group,
) -> Result<LoweredKernel, KernelError> {
    let node = &g.nodes[grp.nodes[0]];
    let (Op::Resize { sizes, scales, .. }, Some(sampling)) = (&node.op, Sampling::of(&node.op))
    else {
        unreachable!("runtime_resize admits only Resize")
    };
    let mut b = Builder::new(g, producer, grp, name);
    b.in_group[grp.nodes[0]] = false;
    let out = b.param(node.outputs[0], Role::Output)?;
    let x = b.param(node.inputs[0], Role::Input)?;
    let call = Contraction::Resize {
        x,
        sampling,
        scales: scales.clone(),
        sizes: sizes.clone(),
    };
    Ok(b.finish(Some((call, out))))
}

impl<'g> Builder<'g> {
    /// Resize as arithmetic on the output coordinates, in f64 as the reference computes
    /// it: per axis the source coordinate, then the taps (input index, weight), then the
    /// weighted sum over every combination of taps.
    pub(super) fn resize(
        &mut self,
        v: ValueId,
        op: &Op,
        ins: &[ValueId],
        coords: &[ExprId],
    ) -> Result<ExprId, KernelError> {
        let Op::Resize {
            sizes,
            scales,
            mode,
            coord,
            nearest,
            cubic_coeff,
            exclude_outside,
            extrapolation,
        } = op
        else {
            unreachable!("resize lowering of a resize")
        };
        let x = fixed(self.g, ins[0])?;
        let r = x.len();
        let roi: Vec<f64> = match ins.get(1).and_then(|&i| self.producer[i.index()]) {
            Some(n) => match &self.g.nodes[n].op {
                Op::Constant(t) => t.to_f64(),
                _ => return Err(self.unsupported(v, "a resize roi that is not constant")),
            },
            None if ins.len() > 1 => {
                return Err(self.unsupported(v, "a resize roi that is not constant"));
            }
            None => vec![],
        };
        let f = |b: &mut Self, c: f64| b.constant(DType::F64, c);
        let mut valid: Option<ExprId> = None;
        let mut per_axis: Vec<Vec<(ExprId, ExprId)>> = Vec::with_capacity(r);
        for a in 0..r {
            let (n_in, n_out, scale) = (x[a], sizes[a], scales[a]);
            let last = n_in as i64 - 1;
            let o = coords[a];
            if n_in == n_out
                && scale == 1.0
                && *mode != smelt_ir::ResizeMode::Cubic
                && *coord != smelt_ir::CoordMode::TfCropAndResize
            {
                let one = f(self, 1.0);
                per_axis.push(vec![(o, one)]);
                continue;
            }
            let of = self.convert(o, DType::F64);
            let fb = |b: &mut Self, op: BinaryOp, x: ExprId, y: ExprId| {
                b.add(Expr::Binary(op, x, y), DType::F64)
            };
            let half_pixel = |b: &mut Self| {
                let h = f(b, 0.5);
                let sc = f(b, scale);
                let t = fb(b, BinaryOp::Add, of, h);
                let t = fb(b, BinaryOp::Div, t, sc);
                fb(b, BinaryOp::Sub, t, h)
            };
            use smelt_ir::CoordMode as C;
            let src = match coord {
                C::HalfPixel => half_pixel(self),
                C::HalfPixelSymmetric => {
                    let adj = n_out as f64 / (scale * n_in as f64);
                    let center = n_in as f64 / 2.0;
                    let off = f(self, center * (1.0 - adj));
                    let hp = half_pixel(self);
                    fb(self, BinaryOp::Add, off, hp)
                }
                C::PytorchHalfPixel if n_out > 1 => half_pixel(self),
                C::PytorchHalfPixel => f(self, 0.0),
                C::AlignCorners => {
                    let len = n_in as f64 * scale;
                    if len > 1.0 {
                        let m = f(self, n_in as f64 - 1.0);
                        let d = f(self, len - 1.0);
                        let t = fb(self, BinaryOp::Mul, of, m);
                        fb(self, BinaryOp::Div, t, d)
                    } else {
                        f(self, 0.0)
                    }
                }
                C::Asymmetric => {
                    let sc = f(self, scale);
                    fb(self, BinaryOp::Div, of, sc)
                }
                C::TfCropAndResize => {
                    let (s0, e0) = if roi.len() == 2 * r {
                        (roi[a], roi[r + a])
                    } else {
                        (0.0, 1.0)
                    };
                    let span = n_in as f64 - 1.0;
                    let src = if n_out > 1 {
                        let start = f(self, s0 * span);
                        let k1 = f(self, e0 - s0);
                        let k2 = f(self, span);
                        let k3 = f(self, n_out as f64 - 1.0);
                        let t = fb(self, BinaryOp::Mul, of, k1);
                        let t = fb(self, BinaryOp::Mul, t, k2);
                        let t = fb(self, BinaryOp::Div, t, k3);
                        fb(self, BinaryOp::Add, start, t)
                    } else {
                        f(self, 0.5 * (s0 + e0) * span)
                    };
                    let (lo, hi) = (f(self, 0.0), f(self, span));
                    let ge = self.bin(BinaryOp::GreaterEqual, src, lo);
                    let le = self.bin(BinaryOp::LessEqual, src, hi);
                    let ok = self.bin(BinaryOp::And, ge, le);
                    valid = Some(self.and_also(valid, ok));
                    src
                }
            };
            let floor = |b: &mut Self, e: ExprId| {
                b.add(Expr::Unary(smelt_ir::UnaryOp::Floor, e), DType::F64)
            };
            let clamp_index = |b: &mut Self, i: ExprId| {
                let (lo, hi) = (b.int(0), b.int(last));
                let t = b.bin(BinaryOp::Max, i, lo);
                b.bin(BinaryOp::Min, t, hi)
            };
            let taps = match mode {
                smelt_ir::ResizeMode::Nearest => {
                    use smelt_ir::NearestMode as N;
                    let h = f(self, 0.5);
                    let rounded = |b: &mut Self| {
                        let t = fb(b, BinaryOp::Add, src, h);
                        floor(b, t)
                    };
                    let pos = match nearest {
                        N::RoundPreferFloor => {
                            let fl = floor(self, src);
                            let frac = fb(self, BinaryOp::Sub, src, fl);
                            let is_half = self.bin(BinaryOp::Equal, frac, h);
                            let rd = rounded(self);
                            self.select(is_half, fl, rd)
                        }
                        N::RoundPreferCeil => rounded(self),
                        N::Floor => floor(self, src),
                        N::Ceil => self.add(Expr::Unary(smelt_ir::UnaryOp::Ceil, src), DType::F64),
                    };
                    let i = self.convert(pos, DType::I64);
                    let one = f(self, 1.0);
                    vec![(clamp_index(self, i), one)]
                }
                smelt_ir::ResizeMode::Linear => {
                    let (z, l) = (f(self, 0.0), f(self, last as f64));
                    let s = fb(self, BinaryOp::Max, src, z);
                    let s = fb(self, BinaryOp::Min, s, l);
                    let fl = floor(self, s);
                    let lo = self.convert(fl, DType::I64);
                    let lo1 = self.iadd_c(lo, 1);
                    let lastc = self.int(last);
                    let hi = self.bin(BinaryOp::Min, lo1, lastc);
                    let lof = self.convert(lo, DType::F64);
                    let t = fb(self, BinaryOp::Sub, s, lof);
                    let one = f(self, 1.0);
                    let wlo = fb(self, BinaryOp::Sub, one, t);
                    vec![(lo, wlo), (hi, t)]
                }
                smelt_ir::ResizeMode::Cubic => {
                    let fl = floor(self, src);
                    let base = self.convert(fl, DType::I64);
                    let t = fb(self, BinaryOp::Sub, src, fl);
                    let a_ = *cubic_coeff;
                    let one = f(self, 1.0);
                    let two = f(self, 2.0);
                    let args = [
                        fb(self, BinaryOp::Add, t, one),
                        t,
                        fb(self, BinaryOp::Sub, one, t),
                        fb(self, BinaryOp::Sub, two, t),
                    ];
                    let mut taps = Vec::with_capacity(4);
                    let mut inside = Vec::with_capacity(4);
                    for (k, &xarg) in args.iter().enumerate() {
                        let w = self.cubic_weight(xarg, a_);
                        let i = self.iadd_c(base, k as i64 - 1);
                        inside.push(self.in_range(i, 0, last + 1));
                        taps.push((clamp_index(self, i), w));
                    }
                    if *exclude_outside {
                        let zero = f(self, 0.0);
                        let kept: Vec<ExprId> = taps
                            .iter()
                            .zip(&inside)
                            .map(|(&(_, w), &ok)| self.select(ok, w, zero))
                            .collect();
                        let mut total = kept[0];
                        for &w in &kept[1..] {
                            total = fb(self, BinaryOp::Add, total, w);
                        }
                        for (tap, &w) in taps.iter_mut().zip(&kept) {
                            tap.1 = fb(self, BinaryOp::Div, w, total);
                        }
                    }
                    taps
                }
            };
            per_axis.push(taps);
        }
        // Sum over every combination of taps.
        let combos: usize = per_axis.iter().map(Vec::len).product();
        let mut acc: Option<ExprId> = None;
        for combo in 0..combos {
            let mut rest = combo;
            let mut c = Vec::with_capacity(r);
            let mut w: Option<ExprId> = None;
            for taps in &per_axis {
                let (i, wt) = taps[rest % taps.len()];
                rest /= taps.len();
                c.push(i);
                w = Some(match w {
                    None => wt,
                    Some(p) => self.add(Expr::Binary(BinaryOp::Mul, p, wt), DType::F64),
                });
            }
            let xv = self.at(ins[0], &c)?;
            let xv = self.convert(xv, DType::F64);
            let term = match w {
                Some(w) => {
                    // Zero-weight taps are skipped, so an inf there does not make a NaN.
                    let product = self.add(Expr::Binary(BinaryOp::Mul, xv, w), DType::F64);
                    let zero = self.constant(DType::F64, 0.0);
                    let nonzero = self.bin(BinaryOp::Equal, w, zero);
                    self.select(nonzero, zero, product)
                }
                None => xv,
            };
            acc = Some(match acc {
                None => term,
                Some(p) => self.add(Expr::Binary(BinaryOp::Add, p, term), DType::F64),
            });
        }
        let mut out = acc.ok_or_else(|| self.unsupported(v, "resize of an empty tensor"))?;
        if let Some(ok) = valid {
            let e = self.constant(DType::F64, *extrapolation);
            out = self.select(ok, out, e);
        }
        let dtype = self.g.ty(v).dtype;
        if !dtype.is_float() {
            // Integers round half away from zero, as the reference does.
            let (h, z) = (
                self.constant(DType::F64, 0.5),
                self.constant(DType::F64, 0.0),
            );
            let up = self.add(Expr::Binary(BinaryOp::Add, out, h), DType::F64);
            let up = self.add(Expr::Unary(smelt_ir::UnaryOp::Floor, up), DType::F64);
            let down = self.add(Expr::Binary(BinaryOp::Sub, out, h), DType::F64);
            let down = self.add(Expr::Unary(smelt_ir::UnaryOp::Ceil, down), DType::F64);
            let pos = self.bin(BinaryOp::GreaterEqual, out, z);
            out = self.select(pos, up, down);
        }
        Ok(self.convert(out, dtype))
    }

    /// The cubic convolution kernel at distance `x` (coefficient `a`).
    pub(super) fn cubic_weight(&mut self, x: ExprId, a: f64) -> ExprId {
        let fb = |b: &mut Self, op: BinaryOp, x: ExprId, y: ExprId| {
            b.add(Expr::Binary(op, x, y), DType::F64)
        };
        let c = |b: &mut Self, v: f64| b.constant(DType::F64, v);
        let x = self.add(Expr::Unary(smelt_ir::UnaryOp::Abs, x), DType::F64);
        // ((a + 2) x - (a + 3)) x x + 1
        let (k1, k2, one) = (c(self, a + 2.0), c(self, a + 3.0), c(self, 1.0));
        let t = fb(self, BinaryOp::Mul, k1, x);
        let t = fb(self, BinaryOp::Sub, t, k2);
        let t = fb(self, BinaryOp::Mul, t, x);
        let t = fb(self, BinaryOp::Mul, t, x);
        let near = fb(self, BinaryOp::Add, t, one);
        // ((a x - 5a) x + 8a) x - 4a
        let (ka, k5, k8, k4) = (
            c(self, a),
            c(self, 5.0 * a),
            c(self, 8.0 * a),
            c(self, 4.0 * a),
        );
        let t = fb(self, BinaryOp::Mul, ka, x);
        let t = fb(self, BinaryOp::Sub, t, k5);
        let t = fb(self, BinaryOp::Mul, t, x);
        let t = fb(self, BinaryOp::Add, t, k8);
        let t = fb(self, BinaryOp::Mul, t, x);
        let far = fb(self, BinaryOp::Sub, t, k4);
        let (one_c, two_c, zero) = (c(self, 1.0), c(self, 2.0), c(self, 0.0));
        let is_near = self.bin(BinaryOp::LessEqual, x, one_c);
        let is_far = self.bin(BinaryOp::Less, x, two_c);
        let w = self.select(is_far, far, zero);
        self.select(is_near, near, w)
    }

    /// A gather index made non-negative (ONNX counts negative indices from the end).
    pub(super) fn index_value(&mut self, i: ExprId, n: usize) -> ExprId {
        let i = if self.nest.nodes[i as usize].dtype == DType::I64 {
            i
        } else {
            self.add(Expr::Cast(i), DType::I64)
        };
        let zero = self.int(0);
        let neg = self.bin(BinaryOp::Less, i, zero);
        let wrapped = self.iadd_c(i, n as i64);
        self.select(neg, wrapped, i)
    }
}
