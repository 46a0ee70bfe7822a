//! Elementwise ops on traced tensors: math functions, arithmetic operators with NumPy
//! broadcasting (tensor with tensor, tensor with scalar), comparisons, select and cast.

use crate::tensor::Tensor;
use smelt_ir::{BinaryOp, Compose, DType, Op, UnaryOp};
use std::ops::{Add, Div, Mul, Neg, Not, Sub};

macro_rules! unary_methods {
    ($($(#[$doc:meta])* $name:ident => $op:ident),* $(,)?) => {$(
        $(#[$doc])*
        #[track_caller]
        pub fn $name(self) -> Tensor<'t> {
            self.tracer().record(stringify!($name), &[self], |r, ids| r.unary(UnaryOp::$op, ids[0]))
        }
    )*};
}

macro_rules! binary_methods {
    ($($(#[$doc:meta])* $name:ident => $op:ident),* $(,)?) => {$(
        $(#[$doc])*
        #[track_caller]
        pub fn $name(self, other: Tensor<'t>) -> Tensor<'t> {
            self.binary(stringify!($name), BinaryOp::$op, other)
        }
    )*};
}

impl<'t> Tensor<'t> {
    unary_methods!(
        abs => Abs, exp => Exp, log => Log, sqrt => Sqrt,
        /// `1 / x`.
        recip => Reciprocal,
        sin => Sin, cos => Cos, tan => Tan, tanh => Tanh, sigmoid => Sigmoid, erf => Erf,
        floor => Floor, ceil => Ceil,
        /// Rounds half to even.
        round => Round,
        sign => Sign,
        is_nan => IsNan,
    );

    binary_methods!(
        /// Elementwise maximum (NaN propagates).
        maximum => Max,
        /// Elementwise minimum (NaN propagates).
        minimum => Min,
        /// `self` raised to `other`, elementwise.
        pow => Pow,
        eq => Equal, lt => Less, le => LessEqual, gt => Greater, ge => GreaterEqual,
        /// Logical and of bool tensors.
        and => And,
        /// Logical or of bool tensors.
        or => Or,
    );

    /// `self` raised to a constant power.
    #[track_caller]
    pub fn powf(self, exponent: f64) -> Tensor<'t> {
        self.binary_scalar("powf", BinaryOp::Pow, exponent)
    }

    /// Where `self` (bool) holds, `a`, else `b`; all three broadcast.
    #[track_caller]
    pub fn select(self, a: Tensor<'t>, b: Tensor<'t>) -> Tensor<'t> {
        self.tracer()
            .record("select", &[self, a, b], |r, ids| r.op(Op::Select, ids))
    }

    /// The elements converted to `dtype`.
    #[track_caller]
    pub fn cast(self, dtype: DType) -> Tensor<'t> {
        self.tracer()
            .record("cast", &[self], |r, ids| r.cast(ids[0], dtype))
    }

    #[track_caller]
    pub(crate) fn binary(self, name: &str, op: BinaryOp, other: Tensor<'t>) -> Tensor<'t> {
        self.tracer()
            .record(name, &[self, other], |r, ids| r.binary(op, ids[0], ids[1]))
    }

    /// `self (op) value` with `value` in self's dtype.
    #[track_caller]
    pub(crate) fn binary_scalar(self, name: &str, op: BinaryOp, value: f64) -> Tensor<'t> {
        self.tracer()
            .record(name, &[self], |r, ids| r.binary_scalar(op, ids[0], value))
    }

    /// `value (op) self` with `value` in self's dtype.
    #[track_caller]
    pub(crate) fn scalar_binary(self, name: &str, op: BinaryOp, value: f64) -> Tensor<'t> {
        self.tracer().record(name, &[self], |r, ids| {
            let s = r.scalar_like(ids[0], value);
            r.binary(op, s, ids[0])
        })
    }
}

macro_rules! operator {
    ($trait:ident, $method:ident, $op:ident) => {
        impl<'t> $trait for Tensor<'t> {
            type Output = Tensor<'t>;
            #[track_caller]
            fn $method(self, other: Tensor<'t>) -> Tensor<'t> {
                self.binary(stringify!($method), BinaryOp::$op, other)
            }
        }
        // f64 only: with an f32 impl beside it, float literals (`x * 0.5`) would be ambiguous.
        operator!(@scalar $trait, $method, $op, f64);
    };
    (@scalar $trait:ident, $method:ident, $op:ident, $s:ty) => {
        impl<'t> $trait<$s> for Tensor<'t> {
            type Output = Tensor<'t>;
            #[track_caller]
            fn $method(self, value: $s) -> Tensor<'t> {
                self.binary_scalar(stringify!($method), BinaryOp::$op, value)
            }
        }
        impl<'t> $trait<Tensor<'t>> for $s {
            type Output = Tensor<'t>;
            #[track_caller]
            fn $method(self, t: Tensor<'t>) -> Tensor<'t> {
                t.scalar_binary(stringify!($method), BinaryOp::$op, self)
            }
        }
    };
}

operator!(Add, add, Add);
operator!(Sub, sub, Sub);
operator!(Mul, mul, Mul);
operator!(Div, div, Div);

impl<'t> Neg for Tensor<'t> {
    type Output = Tensor<'t>;
    #[track_caller]
    fn neg(self) -> Tensor<'t> {
        self.tracer()
            .record("neg", &[self], |r, ids| r.unary(UnaryOp::Neg, ids[0]))
    }
}

/// Logical not of a bool tensor.
impl<'t> Not for Tensor<'t> {
    type Output = Tensor<'t>;
    #[track_caller]
    fn not(self) -> Tensor<'t> {
        self.tracer()
            .record("not", &[self], |r, ids| r.unary(UnaryOp::Not, ids[0]))
    }
}
