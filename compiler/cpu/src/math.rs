//! Vectorizable f32 approximations of exp, log, tanh, sigmoid, erf and pow by a constant,
//! emitted as CLIF.
//!
//! Each works unchanged on `f32` and `f32x4` values (Cranelift's instructions are
//! polymorphic over lanes), so the vector loop and the scalar tail share one formula.
//! Maximum errors measured over dense sweeps against f64 on both code paths (the
//! `math_accuracy` tests, which fail above 1e-6): exp 1.7e-7 relative on [-87, 88];
//! tanh 3.6e-7 relative; sigmoid 2.3e-7 relative on [-80, 80]; erf 2.3e-7 relative;
//! log 1.2e-7 of max(1, |log x|) over positive floats, subnormals included. exp flushes
//! results below the normal f32 range (x < -87.34) to 0, and so sigmoid below -87. pow
//! by a constant is exp(c log|x|), within 1e-5 relative where the result is normal.
//! Coefficients: log is a Taylor series after range reduction; exp and erf were
//! fitted by least squares on Chebyshev nodes (relative weighting; exp's iterated toward
//! minimax) with numpy; tanh's rational function by linearized least squares with
//! relative weights reweighted toward minimax (Lawson).

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{InstBuilder, MemFlags, Type, Value, types};
use cranelift_frontend::FunctionBuilder;

/// Emits float constants and vector splats for one lane type.
#[derive(Debug, Clone, Copy)]
pub struct Math {
    pub ty: Type,
    pub fma: bool,
}

impl Math {
    fn int_ty(&self) -> Type {
        if self.ty.is_vector() {
            types::I32X4
        } else {
            types::I32
        }
    }

    pub fn f(&self, b: &mut FunctionBuilder, v: f32) -> Value {
        let c = b.ins().f32const(v);
        if self.ty.is_vector() {
            b.ins().splat(self.ty, c)
        } else {
            c
        }
    }

    fn i(&self, b: &mut FunctionBuilder, v: i32) -> Value {
        let c = b.ins().iconst(types::I32, v as i64);
        if self.ty.is_vector() {
            b.ins().splat(types::I32X4, c)
        } else {
            c
        }
    }

    /// `a * x + c`, fused where the host has FMA.
    fn mul_add(&self, b: &mut FunctionBuilder, a: Value, x: Value, c: Value) -> Value {
        if self.fma {
            b.ins().fma(a, x, c)
        } else {
            let m = b.ins().fmul(a, x);
            b.ins().fadd(m, c)
        }
    }

    /// Horner evaluation of `coeffs[0] + coeffs[1] x + ...`.
    fn poly(&self, b: &mut FunctionBuilder, x: Value, coeffs: &[f32]) -> Value {
        let mut acc = self.f(b, *coeffs.last().expect("non-empty polynomial"));
        for &c in coeffs.iter().rev().skip(1) {
            let cv = self.f(b, c);
            acc = self.mul_add(b, acc, x, cv);
        }
        acc
    }

    fn bitcast_to_float(&self, b: &mut FunctionBuilder, v: Value) -> Value {
        b.ins().bitcast(
            self.ty,
            MemFlags::new().with_endianness(cranelift_codegen::ir::Endianness::Little),
            v,
        )
    }

    fn bitcast_to_int(&self, b: &mut FunctionBuilder, v: Value) -> Value {
        let it = self.int_ty();
        b.ins().bitcast(
            it,
            MemFlags::new().with_endianness(cranelift_codegen::ir::Endianness::Little),
            v,
        )
    }

    fn select(&self, b: &mut FunctionBuilder, cond: Value, a: Value, c: Value) -> Value {
        if self.ty.is_vector() {
            let mask = self.bitcast_to_float(b, cond);
            b.ins().bitselect(mask, a, c)
        } else {
            b.ins().select(cond, a, c)
        }
    }

    fn fcmp(&self, b: &mut FunctionBuilder, cc: FloatCC, x: Value, y: Value) -> Value {
        b.ins().fcmp(cc, x, y)
    }

    /// `mag` with the sign of `sign` (x64 has no vector `fcopysign`, so through the bits).
    fn copysign(&self, b: &mut FunctionBuilder, mag: Value, sign: Value) -> Value {
        let m = self.bitcast_to_int(b, mag);
        let s = self.bitcast_to_int(b, sign);
        let abs_mask = self.i(b, 0x7fff_ffff);
        let sign_mask = self.i(b, i32::MIN);
        let m = b.ins().band(m, abs_mask);
        let s = b.ins().band(s, sign_mask);
        let r = b.ins().bor(m, s);
        self.bitcast_to_float(b, r)
    }

    pub fn exp(&self, b: &mut FunctionBuilder, x: Value) -> Value {
        // x = n ln2 + r, |r| <= ln2 / 2.
        let log2e = self.f(b, std::f32::consts::LOG2_E);
        let t = b.ins().fmul(x, log2e);
        // Round to nearest by adding 1.5 * 2^23: the sum's low mantissa bits are then the
        // integer n (exact for |t| < 2^22), so one add replaces both a rounding and a
        // float-to-int conversion.
        let magic = self.f(b, 12_582_912.0);
        let shifted = b.ins().fadd(t, magic);
        let n = b.ins().fsub(shifted, magic);
        let ln2_hi = self.f(b, -0.693_359_4);
        let ln2_lo = self.f(b, 2.121_944_4e-4);
        let r = self.mul_add(b, n, ln2_hi, x);
        let r = self.mul_add(b, n, ln2_lo, r);
        // Degree-5 minimax fit of e^r on [-ln2/2, ln2/2] with 1 + r fixed (relative error
        // 1.6e-7 in f32 arithmetic).
        let p = self.poly(
            b,
            r,
            &[
                1.0,
                1.0,
                0.499_992_3,
                0.166_671_14,
                0.041_890_12,
                0.008_312_528,
            ],
        );
        // p * 2^n by adding n to p's exponent field: `shifted`'s bits shifted left by 23
        // are n << 23 (the magic's own bits shift out). Exact while the result is a normal
        // float, which [lo, hi] ensures; outside it the selects below replace the value.
        let shifted_bits = self.bitcast_to_int(b, shifted);
        let exponent = b.ins().ishl_imm(shifted_bits, 23);
        let p_bits = self.bitcast_to_int(b, p);
        let y_bits = b.ins().iadd(p_bits, exponent);
        let y = self.bitcast_to_float(b, y_bits);
        // Above ln(f32::MAX), and for NaN: x + inf, which is +inf or the NaN.
        let hi = self.f(b, 88.72283);
        let inf = self.f(b, f32::INFINITY);
        let over = self.fcmp(b, FloatCC::UnorderedOrGreaterThan, x, hi);
        let x_inf = b.ins().fadd(x, inf);
        let y = self.select(b, over, x_inf, y);
        // Below the normal range (and at -inf): 0. "Not less than" is true for NaN, which
        // the mask keeps.
        let lo = self.f(b, -87.33654);
        let keep = self.fcmp(b, FloatCC::UnorderedOrGreaterThanOrEqual, x, lo);
        if self.ty.is_vector() {
            let bits = self.bitcast_to_int(b, y);
            let kept = b.ins().band(bits, keep);
            self.bitcast_to_float(b, kept)
        } else {
            let zero = self.f(b, 0.0);
            b.ins().select(keep, y, zero)
        }
    }

    pub fn log(&self, b: &mut FunctionBuilder, x0: Value) -> Value {
        // Subnormals are scaled by 2^23 first (and 23 ln2 taken off at the end).
        let tiny = self.f(b, f32::MIN_POSITIVE);
        let is_sub = self.fcmp(b, FloatCC::LessThan, x0, tiny);
        let scale = self.f(b, 8_388_608.0);
        let scaled = b.ins().fmul(x0, scale);
        let x = self.select(b, is_sub, scaled, x0);
        // x = m 2^e with m in [sqrt(1/2), sqrt(2)); log m = 2 atanh(s), s = (m-1)/(m+1).
        let bits = self.bitcast_to_int(b, x);
        let off = self.i(b, 0x3f35_04f3); // bits of sqrt(1/2)
        let shifted = b.ins().isub(bits, off);
        let e = b.ins().sshr_imm(shifted, 23);
        let e_shift = b.ins().ishl_imm(e, 23);
        let mbits = b.ins().isub(bits, e_shift);
        let m = self.bitcast_to_float(b, mbits);
        let ef = if self.ty.is_vector() {
            b.ins().fcvt_from_sint(types::F32X4, e)
        } else {
            b.ins().fcvt_from_sint(types::F32, e)
        };
        let one = self.f(b, 1.0);
        let num = b.ins().fsub(m, one);
        let den = b.ins().fadd(m, one);
        let s = b.ins().fdiv(num, den);
        let s2 = b.ins().fmul(s, s);
        let p = self.poly(b, s2, &[2.0, 2.0 / 3.0, 2.0 / 5.0, 2.0 / 7.0, 2.0 / 9.0]);
        let lm = b.ins().fmul(s, p);
        let ln2 = self.f(b, std::f32::consts::LN_2);
        let y = self.mul_add(b, ef, ln2, lm);
        let fix = self.f(b, 23.0 * std::f32::consts::LN_2);
        let zero = self.f(b, 0.0);
        let fix = self.select(b, is_sub, fix, zero);
        let y = b.ins().fsub(y, fix);
        let x = x0;
        // Special values: log(0) = -inf, log(<0) = NaN, log(inf) = inf, NaN stays NaN.
        let zero = self.f(b, 0.0);
        let ninf = self.f(b, f32::NEG_INFINITY);
        let inf = self.f(b, f32::INFINITY);
        let nan = self.f(b, f32::NAN);
        let is_zero = self.fcmp(b, FloatCC::Equal, x, zero);
        let is_neg = self.fcmp(b, FloatCC::LessThan, x, zero);
        let is_inf = self.fcmp(b, FloatCC::Equal, x, inf);
        let is_nan = self.fcmp(b, FloatCC::Unordered, x, x);
        let y = self.select(b, is_inf, inf, y);
        let y = self.select(b, is_zero, ninf, y);
        let y = self.select(b, is_neg, nan, y);
        self.select(b, is_nan, x, y)
    }

    /// `x^c` for a finite constant `c`, as exp(c log|x|) with the sign and domain rules of
    /// IEEE pow: an odd integer `c` keeps the sign of `x`, a non-integer one gives NaN for
    /// finite negative `x`, `c = 0` gives 1 (NaN included).
    pub fn pow_const(&self, b: &mut FunctionBuilder, x: Value, c: f32) -> Value {
        if c == 0.0 {
            return self.f(b, 1.0);
        }
        // Small whole exponents (GPT-2's GELU cubes its input) are products: exact to a
        // rounding or two where log and exp lose several ulp, with the same infinities,
        // NaN and signed zeros as pow.
        if c == 1.0 {
            return x;
        }
        if c == 2.0 || c == 3.0 || c == 4.0 {
            let square = b.ins().fmul(x, x);
            return match c as u32 {
                2 => square,
                3 => b.ins().fmul(square, x),
                _ => b.ins().fmul(square, square),
            };
        }
        let ax = b.ins().fabs(x);
        let l = self.log(b, ax);
        let cv = self.f(b, c);
        let t = b.ins().fmul(l, cv);
        let r = self.exp(b, t);
        let integer = c.fract() == 0.0;
        if integer && (c / 2.0).fract() != 0.0 {
            return self.copysign(b, r, x);
        }
        if integer {
            return r;
        }
        let zero = self.f(b, 0.0);
        let ninf = self.f(b, f32::NEG_INFINITY);
        let nan = self.f(b, f32::NAN);
        let negative = self.fcmp(b, FloatCC::LessThan, x, zero);
        let finite = self.fcmp(b, FloatCC::NotEqual, x, ninf);
        let invalid = b.ins().band(negative, finite);
        self.select(b, invalid, nan, r)
    }

    /// `x` limited to `[lo, hi]`, NaN kept: "c < x ? c : x" and "x < c ? c : x" are the
    /// forms x64 lowers to one `minps`/`maxps` whose unordered case returns `x`.
    fn clamp(&self, b: &mut FunctionBuilder, x: Value, lo: Value, hi: Value) -> Value {
        let above = self.fcmp(b, FloatCC::LessThan, hi, x);
        let x = self.select(b, above, hi, x);
        let below = self.fcmp(b, FloatCC::LessThan, x, lo);
        self.select(b, below, lo, x)
    }

    pub fn tanh(&self, b: &mut FunctionBuilder, x: Value) -> Value {
        // x P(x^2) / Q(x^2) on x clamped to [-9, 9] (tanh(9) is 1 in f32): a rational fit
        // with relative error 6.6e-9 in exact arithmetic; the result is clamped to [-1, 1]
        // because rounding can lift it a few ulp above 1. About a third of the
        // instructions of an exp-based form, with no branch between small and large |x|.
        let limit = self.f(b, 9.0);
        let neg_limit = self.f(b, -9.0);
        let xc = self.clamp(b, x, neg_limit, limit);
        let x2 = b.ins().fmul(xc, xc);
        let p = self.poly(
            b,
            x2,
            &[
                1.0,
                0.130_840_21,
                0.003_103_968,
                1.115_443e-5,
                -2.022_572_3e-8,
                5.278_188_7e-11,
                -8.489_327_4e-14,
            ],
        );
        let q = self.poly(b, x2, &[1.0, 0.464_173_47, 0.024_495_225, 2.546_162_3e-4]);
        let xp = b.ins().fmul(xc, p);
        let y = b.ins().fdiv(xp, q);
        let one = self.f(b, 1.0);
        let neg_one = self.f(b, -1.0);
        self.clamp(b, y, neg_one, one)
    }

    pub fn sigmoid(&self, b: &mut FunctionBuilder, x: Value) -> Value {
        let nx = b.ins().fneg(x);
        let e = self.exp(b, nx);
        let one = self.f(b, 1.0);
        let d = b.ins().fadd(one, e);
        b.ins().fdiv(one, d)
    }

    /// erf by the coefficients the runtime's folded GELU shares (`smelt_runtime::erf`).
    pub fn erf(&self, b: &mut FunctionBuilder, x: Value) -> Value {
        use smelt_runtime::erf::{NEAR_ZERO, PIECES};
        let ax = b.ins().fabs(x);
        let x2 = b.ins().fmul(x, x);
        let p0 = self.poly(b, x2, &NEAR_ZERO);
        let small = b.ins().fmul(ax, p0);
        let piece = |m: &Self, b: &mut FunctionBuilder, (mid, c): &(f32, [f32; 10])| {
            let midv = m.f(b, *mid);
            let t = b.ins().fsub(ax, midv);
            m.poly(b, t, c)
        };
        let p1 = piece(self, b, &PIECES[0]);
        let p2 = piece(self, b, &PIECES[1]);
        let p3 = piece(self, b, &PIECES[2]);
        let one = self.f(b, 1.0);
        let (c1, c2, c3, c4) = (
            self.f(b, 1.0),
            self.f(b, 2.0),
            self.f(b, 3.0),
            self.f(b, 4.0),
        );
        let lt1 = self.fcmp(b, FloatCC::LessThan, ax, c1);
        let lt2 = self.fcmp(b, FloatCC::LessThan, ax, c2);
        let lt3 = self.fcmp(b, FloatCC::LessThan, ax, c3);
        let lt4 = self.fcmp(b, FloatCC::LessThan, ax, c4);
        let y = self.select(b, lt4, p3, one);
        let y = self.select(b, lt3, p2, y);
        let y = self.select(b, lt2, p1, y);
        let y = self.select(b, lt1, small, y);
        let y = self.copysign(b, y, x);
        let is_nan = self.fcmp(b, FloatCC::Unordered, x, x);
        self.select(b, is_nan, x, y)
    }
}
