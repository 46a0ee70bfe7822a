//! The core op set of the Graph IR: a small, orthogonal set onto which front ends decompose.

use crate::dtype::DType;
use crate::shape::{Dim, Shape, TensorType};
use crate::tensor::Tensor;

/// Elementwise ops of one operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    Neg,
    Abs,
    Exp,
    Log,
    Sqrt,
    Reciprocal,
    Sin,
    Cos,
    Tan,
    Asin,
    Acos,
    Atan,
    Sinh,
    Cosh,
    Asinh,
    Acosh,
    Atanh,
    Tanh,
    Sigmoid,
    Erf,
    Floor,
    Ceil,
    /// Round half to even, as ONNX `Round`.
    Round,
    Sign,
    /// Logical not of bool.
    Not,
    /// Bitwise not of integers.
    BitNot,
    /// NaN test; produces bool.
    IsNan,
    /// Infinity test of either sign; produces bool.
    IsInf,
}

/// Elementwise ops of two operands with NumPy broadcasting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    /// Remainder with the sign of the dividend (C `fmod`, truncated division).
    Rem,
    /// Remainder with the sign of the divisor (Python `%`, floored division).
    Mod,
    Pow,
    Max,
    Min,
    And,
    Or,
    Xor,
    BitAnd,
    BitOr,
    BitXor,
    Shl,
    Shr,
    Equal,
    Less,
    LessEqual,
    Greater,
    GreaterEqual,
}

/// How a reduction combines elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReduceKind {
    Sum,
    Prod,
    Max,
    Min,
    Mean,
}

/// Which extreme an arg-reduction looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArgKind {
    Max,
    Min,
}

/// Sliding-window pooling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoolKind {
    Max,
    /// Average over the window elements that fall inside the unpadded input.
    Avg,
    /// Average over the whole window, padding counted as zeros.
    AvgIncludePad,
}

/// How `Pad` fills the border.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PadMode {
    Constant,
    Reflect,
    Edge,
    Wrap,
}

/// How scatters combine an update with the existing element.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScatterReduction {
    None,
    Add,
    Mul,
    Max,
    Min,
}

/// Interpolation of `Resize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResizeMode {
    Nearest,
    Linear,
    Cubic,
}

/// Maps output to input coordinates in `Resize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CoordMode {
    HalfPixel,
    HalfPixelSymmetric,
    PytorchHalfPixel,
    AlignCorners,
    Asymmetric,
    TfCropAndResize,
}

/// Rounds the source coordinate of `Resize` in nearest mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NearestMode {
    RoundPreferFloor,
    RoundPreferCeil,
    Floor,
    Ceil,
}

/// One operation of the graph.
///
/// Attributes are fully resolved (axes non-negative, pads explicit) so that
/// every consumer sees one form. Operand order is documented per variant.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// A constant tensor; no operands.
    Constant(Tensor),
    /// A constant of this type whose payload a compiled program holds: an executable
    /// keeps its graph this way, so that weights are held once, in the program. No
    /// operands; evaluating or lowering it is an error.
    ProgramConstant(TensorType),
    Unary(UnaryOp),
    Binary(BinaryOp),
    /// `(cond, a, b)`: `a` where `cond` else `b`, broadcasting all three.
    Select,
    Cast {
        to: DType,
    },
    Reduce {
        kind: ReduceKind,
        axes: Vec<usize>,
        keep_dims: bool,
    },
    /// Index of the extreme along `axis`, as i64.
    ArgReduce {
        kind: ArgKind,
        axis: usize,
        keep_dims: bool,
        select_last: bool,
    },
    CumSum {
        axis: usize,
        exclusive: bool,
        reverse: bool,
    },
    /// Outputs `(values, indices: i64)`, sorted, ties broken by lower index.
    TopK {
        axis: usize,
        k: usize,
        largest: bool,
    },
    /// `(a, b)`: NumPy `matmul` semantics, batch dims broadcast; `trans_a`/`trans_b`
    /// swap the last two axes of an operand (rank >= 2) before multiplying.
    MatMul {
        trans_a: bool,
        trans_b: bool,
    },
    /// `(x: [N, C, spatial..], w: [M, C/group, kernel..])`; pads are all begins then all ends.
    Conv {
        strides: Vec<usize>,
        pads: Vec<usize>,
        dilations: Vec<usize>,
        group: usize,
    },
    /// `(x: [N, C, spatial..], w: [C, M/group, kernel..])`.
    ConvTranspose {
        strides: Vec<usize>,
        pads: Vec<usize>,
        dilations: Vec<usize>,
        group: usize,
        output_padding: Vec<usize>,
    },
    /// Pools over the trailing `kernel.len()` axes.
    Pool {
        kind: PoolKind,
        kernel: Vec<usize>,
        strides: Vec<usize>,
        pads: Vec<usize>,
        dilations: Vec<usize>,
    },
    Reshape {
        shape: Shape,
    },
    Transpose {
        perm: Vec<usize>,
    },
    /// One `(start, end, step)` per axis, ONNX semantics (negative counts from the end, clamped).
    Slice {
        starts: Vec<i64>,
        ends: Vec<i64>,
        steps: Vec<i64>,
    },
    Concat {
        axis: usize,
    },
    /// `(x, value)`: pads are all begins then all ends; negative pads crop.
    Pad {
        pads: Vec<i64>,
        mode: PadMode,
    },
    /// `(data, indices)`; negative indices count from the end.
    Gather {
        axis: usize,
    },
    GatherElements {
        axis: usize,
    },
    GatherNd {
        batch_dims: usize,
    },
    /// `(data, indices, updates)`.
    ScatterElements {
        axis: usize,
        reduction: ScatterReduction,
    },
    /// `(data, indices, updates)`.
    ScatterNd {
        reduction: ScatterReduction,
    },
    /// Broadcasts the operand to `shape` (NumPy rules, the result rank is the larger).
    Expand {
        shape: Shape,
    },
    /// The shape of the operand as an i64 vector.
    Shape,
    /// `(x, roi: f32/f64 [2*rank] or empty)` resized to `sizes`.
    Resize {
        sizes: Vec<usize>,
        scales: Vec<f64>,
        mode: ResizeMode,
        coord: CoordMode,
        nearest: NearestMode,
        cubic_coeff: f64,
        exclude_outside: bool,
        extrapolation: f64,
    },
}

/// An attribute value in the text form.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Int(i64),
    Float(f64),
    Bool(bool),
    Ints(Vec<i64>),
    Floats(Vec<f64>),
    Dims(Vec<Dim>),
    DType(DType),
    Word(&'static str),
}

macro_rules! names {
    ($ty:ident { $($v:ident = $s:literal),* $(,)? }) => {
        impl $ty {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$ty] = &[$($ty::$v),*];
            /// The name used in the text form.
            pub fn name(self) -> &'static str { match self { $($ty::$v => $s),* } }
            /// Inverse of [`Self::name`].
            pub fn from_name(s: &str) -> Option<Self> { Self::ALL.iter().copied().find(|v| v.name() == s) }
        }
    };
}

names!(UnaryOp {
    Neg = "neg", Abs = "abs", Exp = "exp", Log = "log", Sqrt = "sqrt", Reciprocal = "reciprocal",
    Sin = "sin", Cos = "cos", Tan = "tan", Asin = "asin", Acos = "acos", Atan = "atan",
    Sinh = "sinh", Cosh = "cosh", Asinh = "asinh", Acosh = "acosh", Atanh = "atanh",
    Tanh = "tanh", Sigmoid = "sigmoid", Erf = "erf", Floor = "floor", Ceil = "ceil",
    Round = "round", Sign = "sign", Not = "not", BitNot = "bit_not", IsNan = "is_nan", IsInf = "is_inf",
});
names!(BinaryOp {
    Add = "add", Sub = "sub", Mul = "mul", Div = "div", Rem = "rem", Mod = "mod", Pow = "pow",
    Max = "max", Min = "min", And = "and", Or = "or", Xor = "xor", BitAnd = "bit_and",
    BitOr = "bit_or", BitXor = "bit_xor", Shl = "shl", Shr = "shr", Equal = "equal",
    Less = "less", LessEqual = "less_equal", Greater = "greater", GreaterEqual = "greater_equal",
});
names!(ReduceKind { Sum = "reduce_sum", Prod = "reduce_prod", Max = "reduce_max", Min = "reduce_min", Mean = "reduce_mean" });
names!(ArgKind { Max = "argmax", Min = "argmin" });
names!(PoolKind { Max = "max_pool", Avg = "avg_pool", AvgIncludePad = "avg_pool_include_pad" });
names!(PadMode { Constant = "constant", Reflect = "reflect", Edge = "edge", Wrap = "wrap" });
names!(ScatterReduction { None = "none", Add = "add", Mul = "mul", Max = "max", Min = "min" });
names!(ResizeMode { Nearest = "nearest", Linear = "linear", Cubic = "cubic" });
names!(CoordMode {
    HalfPixel = "half_pixel", HalfPixelSymmetric = "half_pixel_symmetric",
    PytorchHalfPixel = "pytorch_half_pixel", AlignCorners = "align_corners",
    Asymmetric = "asymmetric", TfCropAndResize = "tf_crop_and_resize",
});
names!(NearestMode { RoundPreferFloor = "round_prefer_floor", RoundPreferCeil = "round_prefer_ceil", Floor = "floor", Ceil = "ceil" });

impl BinaryOp {
    /// Comparison ops produce bool.
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinaryOp::Equal
                | BinaryOp::Less
                | BinaryOp::LessEqual
                | BinaryOp::Greater
                | BinaryOp::GreaterEqual
        )
    }

    /// Logical ops take and produce bool.
    pub fn is_logical(self) -> bool {
        matches!(self, BinaryOp::And | BinaryOp::Or | BinaryOp::Xor)
    }

    /// Bitwise and shift ops take integers.
    pub fn is_bitwise(self) -> bool {
        matches!(
            self,
            BinaryOp::BitAnd | BinaryOp::BitOr | BinaryOp::BitXor | BinaryOp::Shl | BinaryOp::Shr
        )
    }
}

fn ints(v: &[usize]) -> Attr {
    Attr::Ints(v.iter().map(|&x| x as i64).collect())
}

impl Op {
    /// A MatMul of untransposed operands.
    pub const MATMUL: Op = Op::MatMul {
        trans_a: false,
        trans_b: false,
    };

    /// A slice of a rank-`rank` operand along `axis` alone: `start..end` by `step`
    /// there, every other axis whole.
    pub fn slice_along(rank: usize, axis: usize, start: i64, end: i64, step: i64) -> Op {
        let (mut starts, mut ends, mut steps) =
            (vec![0; rank], vec![i64::MAX; rank], vec![1; rank]);
        starts[axis] = start;
        ends[axis] = end;
        steps[axis] = step;
        Op::Slice {
            starts,
            ends,
            steps,
        }
    }

    /// Whether the op is a constant: its values in the graph, or in a compiled program.
    pub fn is_constant(&self) -> bool {
        matches!(self, Op::Constant(_) | Op::ProgramConstant(_))
    }

    /// The op's name in the text form.
    pub fn mnemonic(&self) -> &'static str {
        match self {
            Op::Constant(_) => "constant",
            Op::ProgramConstant(_) => "program_constant",
            Op::Unary(u) => u.name(),
            Op::Binary(b) => b.name(),
            Op::Select => "select",
            Op::Cast { .. } => "cast",
            Op::Reduce { kind, .. } => kind.name(),
            Op::ArgReduce { kind, .. } => kind.name(),
            Op::CumSum { .. } => "cumsum",
            Op::TopK { .. } => "topk",
            Op::MatMul { .. } => "matmul",
            Op::Conv { .. } => "conv",
            Op::ConvTranspose { .. } => "conv_transpose",
            Op::Pool { kind, .. } => kind.name(),
            Op::Reshape { .. } => "reshape",
            Op::Transpose { .. } => "transpose",
            Op::Slice { .. } => "slice",
            Op::Concat { .. } => "concat",
            Op::Pad { .. } => "pad",
            Op::Gather { .. } => "gather",
            Op::GatherElements { .. } => "gather_elements",
            Op::GatherNd { .. } => "gather_nd",
            Op::ScatterElements { .. } => "scatter_elements",
            Op::ScatterNd { .. } => "scatter_nd",
            Op::Expand { .. } => "expand",
            Op::Shape => "shape",
            Op::Resize { .. } => "resize",
        }
    }

    /// How many operands the op takes. MatMul and Conv take an optional third, the bias
    /// of their epilogue (added along the last axis for MatMul, per output channel for Conv).
    pub fn arity(&self) -> std::ops::RangeInclusive<usize> {
        match self {
            Op::Constant(_) | Op::ProgramConstant(_) => 0..=0,
            Op::Unary(_)
            | Op::Cast { .. }
            | Op::Reduce { .. }
            | Op::ArgReduce { .. }
            | Op::CumSum { .. } => 1..=1,
            Op::TopK { .. } | Op::Pool { .. } | Op::Reshape { .. } | Op::Transpose { .. } => 1..=1,
            Op::Slice { .. } | Op::Expand { .. } | Op::Shape => 1..=1,
            Op::MatMul { .. } | Op::Conv { .. } => 2..=3,
            Op::Binary(_) | Op::ConvTranspose { .. } | Op::Pad { .. } => 2..=2,
            Op::Gather { .. }
            | Op::GatherElements { .. }
            | Op::GatherNd { .. }
            | Op::Resize { .. } => 2..=2,
            Op::Select | Op::ScatterElements { .. } | Op::ScatterNd { .. } => 3..=3,
            Op::Concat { .. } => 1..=usize::MAX,
        }
    }

    /// Number of results.
    pub fn num_outputs(&self) -> usize {
        match self {
            Op::TopK { .. } => 2,
            _ => 1,
        }
    }

    /// Attributes in text-form order (the constant's tensor is printed separately).
    pub fn attrs(&self) -> Vec<(&'static str, Attr)> {
        match self {
            Op::Constant(_)
            | Op::ProgramConstant(_)
            | Op::Unary(_)
            | Op::Binary(_)
            | Op::Select
            | Op::Shape => vec![],
            // Printed only when set, so plain matmuls read `matmul(%a, %b)`.
            Op::MatMul { trans_a, trans_b } => {
                let mut v = vec![];
                if *trans_a {
                    v.push(("trans_a", Attr::Bool(true)));
                }
                if *trans_b {
                    v.push(("trans_b", Attr::Bool(true)));
                }
                v
            }
            Op::Cast { to } => vec![("to", Attr::DType(*to))],
            Op::Reduce {
                axes, keep_dims, ..
            } => vec![("axes", ints(axes)), ("keep_dims", Attr::Bool(*keep_dims))],
            Op::ArgReduce {
                axis,
                keep_dims,
                select_last,
                ..
            } => vec![
                ("axis", Attr::Int(*axis as i64)),
                ("keep_dims", Attr::Bool(*keep_dims)),
                ("select_last", Attr::Bool(*select_last)),
            ],
            Op::CumSum {
                axis,
                exclusive,
                reverse,
            } => vec![
                ("axis", Attr::Int(*axis as i64)),
                ("exclusive", Attr::Bool(*exclusive)),
                ("reverse", Attr::Bool(*reverse)),
            ],
            Op::TopK { axis, k, largest } => vec![
                ("axis", Attr::Int(*axis as i64)),
                ("k", Attr::Int(*k as i64)),
                ("largest", Attr::Bool(*largest)),
            ],
            Op::Conv {
                strides,
                pads,
                dilations,
                group,
            } => vec![
                ("strides", ints(strides)),
                ("pads", ints(pads)),
                ("dilations", ints(dilations)),
                ("group", Attr::Int(*group as i64)),
            ],
            Op::ConvTranspose {
                strides,
                pads,
                dilations,
                group,
                output_padding,
            } => vec![
                ("strides", ints(strides)),
                ("pads", ints(pads)),
                ("dilations", ints(dilations)),
                ("group", Attr::Int(*group as i64)),
                ("output_padding", ints(output_padding)),
            ],
            Op::Pool {
                kernel,
                strides,
                pads,
                dilations,
                ..
            } => vec![
                ("kernel", ints(kernel)),
                ("strides", ints(strides)),
                ("pads", ints(pads)),
                ("dilations", ints(dilations)),
            ],
            Op::Reshape { shape } | Op::Expand { shape } => {
                vec![("shape", Attr::Dims(shape.clone()))]
            }
            Op::Transpose { perm } => vec![("perm", ints(perm))],
            Op::Slice {
                starts,
                ends,
                steps,
            } => vec![
                ("starts", Attr::Ints(starts.clone())),
                ("ends", Attr::Ints(ends.clone())),
                ("steps", Attr::Ints(steps.clone())),
            ],
            Op::Concat { axis } | Op::Gather { axis } | Op::GatherElements { axis } => {
                vec![("axis", Attr::Int(*axis as i64))]
            }
            Op::Pad { pads, mode } => vec![
                ("pads", Attr::Ints(pads.clone())),
                ("mode", Attr::Word(mode.name())),
            ],
            Op::GatherNd { batch_dims } => vec![("batch_dims", Attr::Int(*batch_dims as i64))],
            Op::ScatterElements { axis, reduction } => vec![
                ("axis", Attr::Int(*axis as i64)),
                ("reduction", Attr::Word(reduction.name())),
            ],
            Op::ScatterNd { reduction } => vec![("reduction", Attr::Word(reduction.name()))],
            Op::Resize {
                sizes,
                scales,
                mode,
                coord,
                nearest,
                cubic_coeff,
                exclude_outside,
                extrapolation,
            } => vec![
                ("sizes", ints(sizes)),
                ("scales", Attr::Floats(scales.clone())),
                ("mode", Attr::Word(mode.name())),
                ("coord", Attr::Word(coord.name())),
                ("nearest", Attr::Word(nearest.name())),
                ("cubic_coeff", Attr::Float(*cubic_coeff)),
                ("exclude_outside", Attr::Bool(*exclude_outside)),
                ("extrapolation", Attr::Float(*extrapolation)),
            ],
        }
    }
}
