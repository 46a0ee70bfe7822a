//! Neural-network ops on traced tensors: matrix products, convolutions, pooling,
//! activations, softmax and layer normalization, decomposed as the ONNX importer does.

use crate::tensor::Tensor;
use smelt_ir::{BinaryOp, Compose, GeluForm, Op, PoolKind, ReduceKind};

/// Window attributes of [`Tensor::conv`]; empty fields take their defaults (strides and
/// dilations 1, no padding, one group).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConvOptions {
    /// One per spatial axis.
    pub strides: Vec<usize>,
    /// One per spatial axis (the same before and after), or all begins then all ends.
    pub pads: Vec<usize>,
    /// One per spatial axis.
    pub dilations: Vec<usize>,
    /// Groups of input channels (1 when 0).
    pub groups: usize,
}

impl ConvOptions {
    /// `Op::Conv` for `spatial` axes, or why the options do not fit.
    fn op(&self, spatial: usize) -> Result<Op, String> {
        let per_axis = |v: &[usize], default: usize, what: &str| match v.len() {
            0 => Ok(vec![default; spatial]),
            n if n == spatial => Ok(v.to_vec()),
            n => Err(format!("{what} has {n} entries for {spatial} spatial axes")),
        };
        let pads = match self.pads.len() {
            0 => vec![0; 2 * spatial],
            n if n == spatial => self.pads.iter().chain(&self.pads).copied().collect(),
            n if n == 2 * spatial => self.pads.clone(),
            n => return Err(format!("pads has {n} entries for {spatial} spatial axes")),
        };
        Ok(Op::Conv {
            strides: per_axis(&self.strides, 1, "strides")?,
            pads,
            dilations: per_axis(&self.dilations, 1, "dilations")?,
            group: self.groups.max(1),
        })
    }
}

impl<'t> Tensor<'t> {
    /// NumPy `matmul`: batch dims broadcast.
    #[track_caller]
    pub fn matmul(self, other: Tensor<'t>) -> Tensor<'t> {
        self.tracer()
            .record("matmul", &[self, other], |r, ids| r.op(Op::MATMUL, ids))
    }

    /// Convolution of `self: [N, C, spatial..]` with `weight: [M, C/groups, kernel..]`, plus
    /// a per-channel `bias: [M]`.
    #[track_caller]
    pub fn conv(
        self,
        weight: Tensor<'t>,
        bias: Option<Tensor<'t>>,
        options: &ConvOptions,
    ) -> Tensor<'t> {
        let mut operands = vec![self, weight];
        operands.extend(bias);
        self.tracer().record("conv", &operands, |r, ids| {
            let spatial = r
                .rank(ids[1])
                .checked_sub(2)
                .filter(|&s| s > 0)
                .ok_or("the weight must have rank >= 3")?;
            let y = r.op(options.op(spatial)?, &ids[..2])?;
            match ids.get(2) {
                Some(&b) => r.add_channel_bias(y, b),
                None => Ok(y),
            }
        })
    }

    /// 2-D convolution with square stride and symmetric padding.
    #[track_caller]
    pub fn conv2d(
        self,
        weight: Tensor<'t>,
        bias: Option<Tensor<'t>>,
        stride: usize,
        padding: usize,
    ) -> Tensor<'t> {
        self.conv(
            weight,
            bias,
            &ConvOptions {
                strides: vec![stride; 2],
                pads: vec![padding; 2],
                ..Default::default()
            },
        )
    }

    /// 2-D max pooling of `[N, C, H, W]` over `kernel x kernel` windows.
    #[track_caller]
    pub fn max_pool2d(self, kernel: usize, stride: usize, padding: usize) -> Tensor<'t> {
        self.pool2d("max_pool2d", PoolKind::Max, kernel, stride, padding)
    }

    /// 2-D average pooling of `[N, C, H, W]`; padding is not counted in the average.
    #[track_caller]
    pub fn avg_pool2d(self, kernel: usize, stride: usize, padding: usize) -> Tensor<'t> {
        self.pool2d("avg_pool2d", PoolKind::Avg, kernel, stride, padding)
    }

    #[track_caller]
    fn pool2d(
        self,
        name: &str,
        kind: PoolKind,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Tensor<'t> {
        self.tracer().record(name, &[self], |r, ids| {
            if r.rank(ids[0]) != 4 {
                return Err("expects an input of shape [N, C, H, W]".into());
            }
            if kernel == 0 || stride == 0 {
                return Err(format!(
                    "kernel ({kernel}) and stride ({stride}) must be positive"
                ));
            }
            r.op(
                Op::Pool {
                    kind,
                    kernel: vec![kernel; 2],
                    strides: vec![stride; 2],
                    pads: vec![padding; 4],
                    dilations: vec![1; 2],
                },
                ids,
            )
        })
    }

    /// The mean over every axis after the first two, kept with size 1.
    #[track_caller]
    pub fn global_avg_pool(self) -> Tensor<'t> {
        self.tracer().record("global_avg_pool", &[self], |r, ids| {
            let rank = r.rank(ids[0]);
            if rank < 3 {
                return Err("expects an input of shape [N, C, spatial..]".into());
            }
            r.reduce(ReduceKind::Mean, ids[0], (2..rank).collect(), true)
        })
    }

    /// `max(x, 0)`.
    #[track_caller]
    pub fn relu(self) -> Tensor<'t> {
        self.tracer()
            .record("relu", &[self], |r, ids| r.relu(ids[0]))
    }

    /// `x` where positive, else `alpha * x`.
    #[track_caller]
    pub fn leaky_relu(self, alpha: f64) -> Tensor<'t> {
        self.tracer().record("leaky_relu", &[self], |r, ids| {
            let x = ids[0];
            let zero = r.scalar_like(x, 0.0);
            let negative = r.binary(BinaryOp::Less, x, zero)?;
            let scaled = r.binary_scalar(BinaryOp::Mul, x, alpha)?;
            r.op(Op::Select, &[negative, scaled, x])
        })
    }

    /// GELU, exact (with `erf`) or its `tanh` approximation.
    #[track_caller]
    pub fn gelu(self, form: GeluForm) -> Tensor<'t> {
        self.tracer()
            .record("gelu", &[self], |r, ids| r.gelu(ids[0], form))
    }

    /// `x * sigmoid(x)`.
    #[track_caller]
    pub fn silu(self) -> Tensor<'t> {
        self.tracer().record("silu", &[self], |r, ids| {
            let s = r.unary(smelt_ir::UnaryOp::Sigmoid, ids[0])?;
            r.binary(BinaryOp::Mul, ids[0], s)
        })
    }

    /// Softmax along `axis` (negative counts from the end).
    #[track_caller]
    pub fn softmax(self, axis: i64) -> Tensor<'t> {
        self.tracer().record("softmax", &[self], |r, ids| {
            let axis = r.axis(axis, r.rank(ids[0]))?;
            r.softmax(ids[0], vec![axis], false)
        })
    }

    /// Log-softmax along `axis` (negative counts from the end).
    #[track_caller]
    pub fn log_softmax(self, axis: i64) -> Tensor<'t> {
        self.tracer().record("log_softmax", &[self], |r, ids| {
            let axis = r.axis(axis, r.rank(ids[0]))?;
            r.softmax(ids[0], vec![axis], true)
        })
    }

    /// Layer normalization over the trailing axes that `scale` spans, then `* scale + bias`
    /// (statistics in f32 for narrower floats, as ONNX's LayerNormalization).
    #[track_caller]
    pub fn layer_norm(self, scale: Tensor<'t>, bias: Option<Tensor<'t>>, eps: f64) -> Tensor<'t> {
        let mut operands = vec![self, scale];
        operands.extend(bias);
        self.tracer().record("layer_norm", &operands, |r, ids| {
            let (rank, spanned) = (r.rank(ids[0]), r.rank(ids[1]));
            let axis = rank
                .checked_sub(spanned)
                .ok_or_else(|| format!("the scale has rank {spanned}, above the input's {rank}"))?;
            Ok(
                r.layer_norm(ids[0], axis, ids[1], ids.get(2).copied(), eps, true)?
                    .0,
            )
        })
    }
}
