//! Composite operations (softmax, GELU, layer normalization, per-channel bias, ...) written
//! once over any builder of core ops, so that both front ends decompose them the same way.

use crate::dtype::DType;
use crate::graph::ValueId;
use crate::op::{BinaryOp, Op, ReduceKind, UnaryOp};
use crate::shape::{Dim, TensorType};
use crate::tensor::Tensor;

/// Which form of GELU: the exact one with `erf`, or the `tanh` approximation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GeluForm {
    Exact,
    Tanh,
}

/// A builder that emits core ops into a graph; the composites are default methods.
///
/// The ONNX importer and the tracer implement it with their own error types, which carry
/// where the op came from (the ONNX node, the caller's source line).
pub trait Compose {
    type Error;

    /// Emits a single-result core op, inferring its type.
    fn op(&mut self, op: Op, inputs: &[ValueId]) -> Result<ValueId, Self::Error>;

    /// Emits a constant (which always type-checks).
    fn constant(&mut self, t: Tensor) -> ValueId;

    /// The type of a value.
    fn ty(&self, v: ValueId) -> &TensorType;

    fn dtype(&self, v: ValueId) -> DType {
        self.ty(v).dtype
    }

    fn rank(&self, v: ValueId) -> usize {
        self.ty(v).rank()
    }

    /// A rank-0 constant of `dtype`.
    fn scalar(&mut self, dtype: DType, v: f64) -> ValueId {
        self.constant(Tensor::scalar(dtype, v))
    }

    /// A rank-0 constant with the dtype of `like`.
    fn scalar_like(&mut self, like: ValueId, v: f64) -> ValueId {
        let d = self.dtype(like);
        self.scalar(d, v)
    }

    fn unary(&mut self, u: UnaryOp, x: ValueId) -> Result<ValueId, Self::Error> {
        self.op(Op::Unary(u), &[x])
    }

    fn binary(&mut self, b: BinaryOp, x: ValueId, y: ValueId) -> Result<ValueId, Self::Error> {
        self.op(Op::Binary(b), &[x, y])
    }

    /// `x (op) scalar` with the scalar in x's dtype.
    fn binary_scalar(&mut self, b: BinaryOp, x: ValueId, v: f64) -> Result<ValueId, Self::Error> {
        let s = self.scalar_like(x, v);
        self.binary(b, x, s)
    }

    /// `x` converted to `to` (`x` itself when it already has that dtype).
    fn cast(&mut self, x: ValueId, to: DType) -> Result<ValueId, Self::Error> {
        if self.dtype(x) == to {
            Ok(x)
        } else {
            self.op(Op::Cast { to }, &[x])
        }
    }

    /// `x` reshaped (`x` itself when it already has that shape).
    fn reshape(&mut self, x: ValueId, shape: Vec<Dim>) -> Result<ValueId, Self::Error> {
        if self.ty(x).shape == shape {
            Ok(x)
        } else {
            self.op(Op::Reshape { shape }, &[x])
        }
    }

    fn reshape_fixed(&mut self, x: ValueId, shape: &[usize]) -> Result<ValueId, Self::Error> {
        self.reshape(x, shape.iter().map(|&d| Dim::Fixed(d)).collect())
    }

    /// `x` with its axes permuted (`x` itself for the identity permutation).
    fn transpose(&mut self, x: ValueId, perm: Vec<usize>) -> Result<ValueId, Self::Error> {
        if perm.iter().enumerate().all(|(i, &p)| i == p) {
            Ok(x)
        } else {
            self.op(Op::Transpose { perm }, &[x])
        }
    }

    fn reduce(
        &mut self,
        kind: ReduceKind,
        x: ValueId,
        axes: Vec<usize>,
        keep_dims: bool,
    ) -> Result<ValueId, Self::Error> {
        self.op(
            Op::Reduce {
                kind,
                axes,
                keep_dims,
            },
            &[x],
        )
    }

    /// `max(x, 0)`.
    fn relu(&mut self, x: ValueId) -> Result<ValueId, Self::Error> {
        self.binary_scalar(BinaryOp::Max, x, 0.0)
    }

    /// `x / 2 * (1 + erf(x / sqrt 2))`, or its `tanh` approximation.
    fn gelu(&mut self, x: ValueId, form: GeluForm) -> Result<ValueId, Self::Error> {
        let inner = match form {
            GeluForm::Exact => {
                let s = self.binary_scalar(BinaryOp::Mul, x, std::f64::consts::FRAC_1_SQRT_2)?;
                self.unary(UnaryOp::Erf, s)?
            }
            GeluForm::Tanh => {
                let x2 = self.binary(BinaryOp::Mul, x, x)?;
                let x3 = self.binary(BinaryOp::Mul, x2, x)?;
                let c = self.binary_scalar(BinaryOp::Mul, x3, 0.044715)?;
                let s = self.binary(BinaryOp::Add, x, c)?;
                let s =
                    self.binary_scalar(BinaryOp::Mul, s, (2.0 / std::f64::consts::PI).sqrt())?;
                self.unary(UnaryOp::Tanh, s)?
            }
        };
        let one_plus = self.binary_scalar(BinaryOp::Add, inner, 1.0)?;
        let half_x = self.binary_scalar(BinaryOp::Mul, x, 0.5)?;
        self.binary(BinaryOp::Mul, half_x, one_plus)
    }

    /// Softmax (or log-softmax) over `axes`, shifted by the maximum for stability.
    fn softmax(&mut self, x: ValueId, axes: Vec<usize>, log: bool) -> Result<ValueId, Self::Error> {
        let m = self.reduce(ReduceKind::Max, x, axes.clone(), true)?;
        let shifted = self.binary(BinaryOp::Sub, x, m)?;
        let e = self.unary(UnaryOp::Exp, shifted)?;
        let s = self.reduce(ReduceKind::Sum, e, axes, true)?;
        if log {
            let ls = self.unary(UnaryOp::Log, s)?;
            self.binary(BinaryOp::Sub, shifted, ls)
        } else {
            self.binary(BinaryOp::Div, e, s)
        }
    }

    /// Mean and variance over `axes` (kept): returns `(x - mean) / sqrt(var + eps)`, the
    /// mean and the inverse standard deviation.
    fn normalize(
        &mut self,
        x: ValueId,
        axes: Vec<usize>,
        eps: f64,
    ) -> Result<(ValueId, ValueId, ValueId), Self::Error> {
        let mean = self.reduce(ReduceKind::Mean, x, axes.clone(), true)?;
        let d = self.binary(BinaryOp::Sub, x, mean)?;
        let d2 = self.binary(BinaryOp::Mul, d, d)?;
        let var = self.reduce(ReduceKind::Mean, d2, axes, true)?;
        let ve = self.binary_scalar(BinaryOp::Add, var, eps)?;
        let sd = self.unary(UnaryOp::Sqrt, ve)?;
        let inv = self.unary(UnaryOp::Reciprocal, sd)?;
        let y = self.binary(BinaryOp::Mul, d, inv)?;
        Ok((y, mean, inv))
    }

    /// Layer normalization over the axes from `axis` on, statistics in f32 for narrower
    /// floats when `stash_f32` (ONNX's `stash_type = 1`), then `* scale (+ bias)`.
    /// Returns the result, the mean and the inverse standard deviation.
    fn layer_norm(
        &mut self,
        x: ValueId,
        axis: usize,
        scale: ValueId,
        bias: Option<ValueId>,
        eps: f64,
        stash_f32: bool,
    ) -> Result<(ValueId, ValueId, ValueId), Self::Error> {
        let rank = self.rank(x);
        let orig = self.dtype(x);
        let xc = if stash_f32 && orig != DType::F64 {
            self.cast(x, DType::F32)?
        } else {
            x
        };
        let (y, mean, inv) = self.normalize(xc, (axis..rank).collect(), eps)?;
        let y = self.cast(y, orig)?;
        let y = self.binary(BinaryOp::Mul, y, scale)?;
        let y = match bias {
            Some(b) => self.binary(BinaryOp::Add, y, b)?,
            None => y,
        };
        Ok((y, mean, inv))
    }

    /// A per-channel vector `[C]` reshaped to broadcast against `[N, C, ...]` of `rank`.
    fn per_channel(&mut self, v: ValueId, rank: usize) -> Result<ValueId, Self::Error> {
        let c = self.ty(v).shape.first().cloned().unwrap_or(Dim::Fixed(1));
        let mut shape = vec![Dim::Fixed(1); rank];
        if rank > 1 {
            shape[1] = c;
        }
        self.reshape(v, shape)
    }

    /// `y + bias` with a per-channel bias (a convolution's).
    fn add_channel_bias(&mut self, y: ValueId, bias: ValueId) -> Result<ValueId, Self::Error> {
        let rank = self.rank(y);
        let b = self.per_channel(bias, rank)?;
        self.binary(BinaryOp::Add, y, b)
    }
}
