//! smelt's runtime: what a deployed model carries. For now it holds host tensors and
//! their `.npy` codec; the program format, memory arena, thread pool and kernels
//! arrive with the CPU back end. It depends on no compiler crate.

pub mod npy;
pub mod tensor;

pub use npy::{NpyError, read_npy, write_npy};
pub use tensor::{ElemType, HostTensor};
