//! smelt's runtime: what a deployed model carries. For now: host tensors and their `.npy`
//! codec, the contraction kernels (`kernels`), the memory plan (`memory`) and the thread
//! pool (`pool`); the program format arrives with the CPU back end. It depends on no
//! compiler crate.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod gpu;
pub mod kernels;
pub mod manifest;
pub mod mathfns;
pub mod memory;
pub mod npy;
pub mod pool;
pub mod program;
pub mod rows;
pub mod tensor;

pub use npy::{NpyError, read_npy, write_npy};
pub use tensor::{ElemType, HostTensor, output_file_name};
