//! smelt's runtime: what a deployed model carries. The `Program` and its executor
//! (`program`, with its serialized form in `manifest`), the kernels generated code calls or
//! launches beside it (`kernels`, the softmax row helpers in `softmax_rows`, the scalar math
//! in `mathfns`), the memory plan (`memory`), the thread pool (`threads`), the CPU feature
//! check (`cpu_features`), host tensors and their `.npy` codec, and the GPU executor (`gpu`) with the
//! CUDA device (`cuda`, feature `cuda`). It depends on no compiler crate.

pub mod cpu_features;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod erf;
pub mod gpu;
pub mod kernels;
pub mod manifest;
pub mod mathfns;
pub mod memory;
pub mod npy;
pub mod program;
pub mod softmax_rows;
pub mod tensor;
pub mod threads;

pub use npy::{NpyError, read_npy, write_npy};
pub use tensor::{ElemType, HostTensor, output_file_name};
