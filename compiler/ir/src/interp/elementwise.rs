//! Elementwise ops: unary, binary with broadcasting, select.

use super::{Vals, broadcast_map, broadcast_shapes, from_vals, vals};
use crate::dtype::DType;
use crate::error::{IrError, Result};
use crate::op::{BinaryOp, UnaryOp};
use crate::tensor::{Data, Tensor};

fn float_unary(op: UnaryOp, x: f64) -> f64 {
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Abs => x.abs(),
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Reciprocal => 1.0 / x,
        UnaryOp::Sin => x.sin(),
        UnaryOp::Cos => x.cos(),
        UnaryOp::Tan => x.tan(),
        UnaryOp::Asin => x.asin(),
        UnaryOp::Acos => x.acos(),
        UnaryOp::Atan => x.atan(),
        UnaryOp::Sinh => x.sinh(),
        UnaryOp::Cosh => x.cosh(),
        UnaryOp::Asinh => x.asinh(),
        UnaryOp::Acosh => x.acosh(),
        UnaryOp::Atanh => x.atanh(),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Sigmoid => {
            if x >= 0.0 {
                1.0 / (1.0 + (-x).exp())
            } else {
                let e = x.exp();
                e / (1.0 + e)
            }
        }
        UnaryOp::Erf => libm::erf(x),
        UnaryOp::Floor => x.floor(),
        UnaryOp::Ceil => x.ceil(),
        UnaryOp::Round => x.round_ties_even(),
        UnaryOp::Sign => {
            if x > 0.0 {
                1.0
            } else if x < 0.0 {
                -1.0
            } else {
                x
            }
        }
        UnaryOp::IsNan => (x.is_nan() as u8) as f64,
        UnaryOp::IsInf => (x.is_infinite() as u8) as f64,
        UnaryOp::Not | UnaryOp::BitNot => f64::NAN,
    }
}

pub(super) fn unary(op: UnaryOp, x: &Tensor) -> Result<Tensor> {
    let shape = x.shape().to_vec();
    let dtype = x.dtype();
    match (op, vals(x)) {
        (UnaryOp::IsNan | UnaryOp::IsInf, Vals::F(v)) => Tensor::from_bool(
            shape,
            v.into_iter().map(|x| float_unary(op, x) != 0.0).collect(),
        ),
        (_, Vals::F(v)) => Tensor::from_f64(
            dtype,
            shape,
            v.into_iter().map(|x| float_unary(op, x)).collect(),
        ),
        (_, Vals::I(v)) => {
            let unsigned = dtype.is_unsigned_int();
            let f: fn(i64) -> i64 = match (op, unsigned) {
                (UnaryOp::Neg, _) => i64::wrapping_neg,
                (UnaryOp::Abs, false) => i64::wrapping_abs,
                (UnaryOp::Abs, true) => |x| x,
                (UnaryOp::Sign, false) => i64::signum,
                (UnaryOp::Sign, true) => |x| (x != 0) as i64,
                (UnaryOp::Not, _) => |x| (x == 0) as i64,
                (UnaryOp::BitNot, _) => |x| !x,
                _ => {
                    return Err(IrError::Eval(format!(
                        "{} is not defined on {dtype}",
                        op.name()
                    )));
                }
            };
            Tensor::from_i64(dtype, shape, v.into_iter().map(f).collect())
        }
    }
}

fn float_binary(op: BinaryOp, a: f64, b: f64) -> f64 {
    let t = |c: bool| c as u8 as f64;
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Rem => a % b,
        BinaryOp::Mod => {
            let r = a % b;
            if r != 0.0 && (r < 0.0) != (b < 0.0) {
                r + b
            } else {
                r
            }
        }
        BinaryOp::Pow => a.powf(b),
        BinaryOp::Max => {
            if a.is_nan() || b.is_nan() {
                f64::NAN
            } else {
                a.max(b)
            }
        }
        BinaryOp::Min => {
            if a.is_nan() || b.is_nan() {
                f64::NAN
            } else {
                a.min(b)
            }
        }
        BinaryOp::Equal => t(a == b),
        BinaryOp::Less => t(a < b),
        BinaryOp::LessEqual => t(a <= b),
        BinaryOp::Greater => t(a > b),
        BinaryOp::GreaterEqual => t(a >= b),
        _ => f64::NAN,
    }
}

fn int_binary(op: BinaryOp, a: i64, b: i64, unsigned: bool) -> i64 {
    let (ua, ub) = (a as u64, b as u64);
    match op {
        BinaryOp::Add => a.wrapping_add(b),
        BinaryOp::Sub => a.wrapping_sub(b),
        BinaryOp::Mul => a.wrapping_mul(b),
        // Integer division by zero has a defined result (0) rather than trapping.
        BinaryOp::Div if unsigned => ua.checked_div(ub).unwrap_or(0) as i64,
        BinaryOp::Div => a.checked_div(b).unwrap_or(0),
        BinaryOp::Rem if unsigned => ua.checked_rem(ub).unwrap_or(0) as i64,
        BinaryOp::Rem => a.checked_rem(b).unwrap_or(0),
        BinaryOp::Mod if unsigned => ua.checked_rem(ub).unwrap_or(0) as i64,
        BinaryOp::Mod => match a.checked_rem(b) {
            Some(r) if r != 0 && (r < 0) != (b < 0) => r + b,
            Some(r) => r,
            None => 0,
        },
        BinaryOp::Pow if b >= 0 => a.wrapping_pow(b.min(u32::MAX as i64) as u32),
        BinaryOp::Pow => (a as f64).powf(b as f64) as i64,
        BinaryOp::Max if unsigned => ua.max(ub) as i64,
        BinaryOp::Max => a.max(b),
        BinaryOp::Min if unsigned => ua.min(ub) as i64,
        BinaryOp::Min => a.min(b),
        BinaryOp::And => ((a != 0) && (b != 0)) as i64,
        BinaryOp::Or => ((a != 0) || (b != 0)) as i64,
        BinaryOp::Xor => ((a != 0) ^ (b != 0)) as i64,
        BinaryOp::BitAnd => a & b,
        BinaryOp::BitOr => a | b,
        BinaryOp::BitXor => a ^ b,
        BinaryOp::Shl => {
            if ub >= 64 {
                0
            } else {
                (ua << ub) as i64
            }
        }
        BinaryOp::Shr if unsigned => {
            if ub >= 64 {
                0
            } else {
                (ua >> ub) as i64
            }
        }
        // Signed right shifts are arithmetic; out-of-range amounts leave only the sign fill.
        BinaryOp::Shr => a >> if (0..64).contains(&b) { b } else { 63 },

        BinaryOp::Equal => (a == b) as i64,
        BinaryOp::Less if unsigned => (ua < ub) as i64,
        BinaryOp::Less => (a < b) as i64,
        BinaryOp::LessEqual if unsigned => (ua <= ub) as i64,
        BinaryOp::LessEqual => (a <= b) as i64,
        BinaryOp::Greater if unsigned => (ua > ub) as i64,
        BinaryOp::Greater => (a > b) as i64,
        BinaryOp::GreaterEqual if unsigned => (ua >= ub) as i64,
        BinaryOp::GreaterEqual => (a >= b) as i64,
    }
}

/// Shifts operands so that unsigned types of less than 64 bits behave (they are
/// zero-extended in the `i64` already); `u64` compares through its bit pattern.
pub(super) fn binary(op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let out_shape = broadcast_shapes(&[a.shape(), b.shape()])?;
    // Where each output element reads an operand: the same position, the one element of
    // a scalar (folding a scale into a weight), or a computed broadcast map.
    let index_map = |t: &Tensor| {
        if t.shape() == out_shape.as_slice() {
            None
        } else if t.len() == 1 {
            Some(Vec::new())
        } else {
            Some(broadcast_map(&out_shape, t.shape()))
        }
    };
    let (ma, mb) = (index_map(a), index_map(b));
    let n: usize = out_shape.iter().product();
    let at = |m: &Option<Vec<usize>>, i: usize| match m {
        None => i,
        Some(m) if m.is_empty() => 0,
        Some(m) => m[i],
    };
    let ia = |i: usize| at(&ma, i);
    let ib = |i: usize| at(&mb, i);
    if let (Data::F32(x), Data::F32(y)) = (a.data(), b.data()) {
        let read = F32Operands {
            x,
            y,
            ia: &ia,
            ib: &ib,
            n,
        };
        let v = match op {
            BinaryOp::Add => Some(read.map(|p, q| p + q)),
            BinaryOp::Sub => Some(read.map(|p, q| p - q)),
            BinaryOp::Mul => Some(read.map(|p, q| p * q)),
            BinaryOp::Div => Some(read.map(|p, q| p / q)),
            _ => None,
        };
        if let Some(v) = v {
            return Tensor::new(out_shape, Data::F32(v));
        }
    }
    let out_dtype = if op.is_comparison() {
        DType::Bool
    } else {
        a.dtype()
    };
    let result = match (vals(a), vals(b)) {
        (Vals::F(x), Vals::F(y)) => Vals::F(
            (0..n)
                .map(|i| float_binary(op, x[ia(i)], y[ib(i)]))
                .collect(),
        ),
        (Vals::F(x), Vals::I(y)) if op == BinaryOp::Pow => {
            Vals::F((0..n).map(|i| x[ia(i)].powf(y[ib(i)] as f64)).collect())
        }
        (Vals::I(x), Vals::F(y)) if op == BinaryOp::Pow => {
            Vals::F((0..n).map(|i| (x[ia(i)] as f64).powf(y[ib(i)])).collect())
        }
        (Vals::I(x), Vals::I(y)) => {
            let unsigned = a.dtype().is_unsigned_int();
            Vals::I(
                (0..n)
                    .map(|i| int_binary(op, x[ia(i)], y[ib(i)], unsigned))
                    .collect(),
            )
        }
        _ => {
            return Err(IrError::Eval(format!(
                "{} of {} and {}",
                op.name(),
                a.dtype(),
                b.dtype()
            )));
        }
    };
    match result {
        Vals::F(v) if out_dtype == DType::Bool => {
            Tensor::from_bool(out_shape, v.into_iter().map(|x| x != 0.0).collect())
        }
        // Pow of an integer base by a float exponent computes in f64 and truncates back.
        Vals::F(v) if !out_dtype.is_float() => Tensor::from_i64(
            out_dtype,
            out_shape,
            v.into_iter().map(|x| x as i64).collect(),
        ),
        v => from_vals(out_dtype, out_shape, v),
    }
}

/// Two f32 operands of a broadcast binary op, with where each output element reads them.
///
/// Add, Sub, Mul and Div of f32 operands compute in f32: a binary64 result of binary32
/// operands rounds to the correctly rounded binary32 one (53 >= 2 * 24 + 2), so this
/// gives the general path's results without converting every element to f64 and back
/// (folding scales into BERT-base's weights spent a sixth of its compile there).
struct F32Operands<'a, A, B> {
    x: &'a [f32],
    y: &'a [f32],
    ia: &'a A,
    ib: &'a B,
    n: usize,
}

impl<A: Fn(usize) -> usize, B: Fn(usize) -> usize> F32Operands<'_, A, B> {
    fn map(&self, f: impl Fn(f32, f32) -> f32) -> Vec<f32> {
        let (x, y) = (self.x, self.y);
        if x.len() == self.n && y.len() == self.n {
            x.iter().zip(y).map(|(&p, &q)| f(p, q)).collect()
        } else if x.len() == self.n && y.len() == 1 {
            x.iter().map(|&p| f(p, y[0])).collect()
        } else {
            (0..self.n)
                .map(|i| f(x[(self.ia)(i)], y[(self.ib)(i)]))
                .collect()
        }
    }
}

pub(super) fn select(c: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let out = broadcast_shapes(&[c.shape(), a.shape(), b.shape()])?;
    let (mc, ma, mb) = (
        broadcast_map(&out, c.shape()),
        broadcast_map(&out, a.shape()),
        broadcast_map(&out, b.shape()),
    );
    let cond = c.to_bool();
    let both = Tensor::concat_flat(&[a, b])?;
    let offset = a.len();
    let idx: Vec<usize> = (0..mc.len())
        .map(|i| if cond[mc[i]] { ma[i] } else { offset + mb[i] })
        .collect();
    both.take(out, &idx, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The general path: every element through f64 and back, as before the f32 path.
    fn through_f64(op: BinaryOp, a: &Tensor, b: &Tensor) -> Tensor {
        let shape = broadcast_shapes(&[a.shape(), b.shape()]).unwrap();
        let (ma, mb) = (
            broadcast_map(&shape, a.shape()),
            broadcast_map(&shape, b.shape()),
        );
        let (x, y) = (a.to_f64(), b.to_f64());
        let v = (0..ma.len())
            .map(|i| float_binary(op, x[ma[i]], y[mb[i]]))
            .collect();
        Tensor::from_f64(DType::F32, shape, v).unwrap()
    }

    /// Each element's bits, every NaN as one (NaN payloads are not specified).
    fn bits(t: &Tensor) -> Vec<Option<u32>> {
        let Data::F32(v) = t.data() else {
            unreachable!("f32 results")
        };
        v.iter()
            .map(|f| (!f.is_nan()).then_some(f.to_bits()))
            .collect()
    }

    /// Add, Sub, Mul and Div in f32 give the bits of the f64 path (rounded once), for
    /// same-shape, scalar and broadcast operands, over fixed pseudo-random bit patterns
    /// (every magnitude, subnormals, infinities, NaN) and chosen special values.
    #[test]
    fn f32_arithmetic_matches_the_f64_path() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut draw = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            f32::from_bits((state >> 32) as u32)
        };
        let special = [
            0.0f32,
            -0.0,
            1.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MIN_POSITIVE / 4.0,
            f32::MAX,
            1.0 + f32::EPSILON,
            3.0,
        ];
        let ops = [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div];
        let shapes: [&[usize]; 4] = [&[2, 3], &[], &[3], &[2, 1]];
        for round in 0..400 {
            let mut values = |n: usize| -> Vec<f32> {
                (0..n)
                    .map(|i| {
                        if (round + i) % 4 == 0 {
                            special[(round * 7 + i) % special.len()]
                        } else {
                            draw()
                        }
                    })
                    .collect()
            };
            let x = Tensor::new(vec![2, 3], Data::F32(values(6))).unwrap();
            let shape = shapes[round % shapes.len()];
            let n = shape.iter().product();
            let y = Tensor::new(shape.to_vec(), Data::F32(values(n))).unwrap();
            for op in ops {
                for (l, r) in [(&x, &y), (&y, &x)] {
                    let got = binary(op, l, r).unwrap();
                    let want = through_f64(op, l, r);
                    assert_eq!(got.shape(), want.shape());
                    assert_eq!(bits(&got), bits(&want), "{op:?} of {l:?} and {r:?}");
                }
            }
        }
    }
}
