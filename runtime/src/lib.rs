//! smelt's runtime: what a deployed model carries. For now: host tensors, their `.npy`
//! codec, and the contraction kernels (`kernels`); the program format, memory arena and
//! thread pool arrive with the CPU back end. It depends on no compiler crate.

pub mod kernels;
pub mod memory;
pub mod npy;
pub mod tensor;

pub use npy::{NpyError, read_npy, write_npy};
pub use tensor::{ElemType, HostTensor};
