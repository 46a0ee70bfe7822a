//! Contraction kernels the compiled code calls: batched MatMul and Conv on the `gemm`
//! crate (AVX-512 kernels through its `x86-v4` feature), with their bias epilogue.

pub mod contraction;

pub use contraction::{ConvGeometry, KernelError, batched_matmul, conv};
