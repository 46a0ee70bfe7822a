//! Kernels the compiled code calls: batched MatMul and Conv on the `gemm` crate (AVX-512
//! kernels through its `x86-v4` feature), with their bias epilogue, 2-D f32
//! convolutions as implicit matrix products of our own where the CPU has AVX-512, and
//! 2-D f32 pooling.

pub mod contraction;
mod implicit;
pub mod pooling;

pub use contraction::{
    ConvGeometry, KernelError, batched_matmul, conv, conv_prepacked, prepack_conv_filters,
};
pub use pooling::{PoolGeometry, PoolMode, pool2d};
