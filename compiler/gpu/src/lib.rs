//! NVPTX back end: Kernel IR to LLVM IR (inkwell) to PTX for NVIDIA GPUs, and a host
//! emulator that runs the same kernels compiled for the CPU. The LLVM parts are behind
//! the cargo feature `cuda`, the only place the project links LLVM; without it,
//! [`compile`] reports that the back end is not built in.

#[cfg(feature = "cuda")]
mod codegen;
#[cfg(feature = "cuda")]
pub mod emulate;
#[cfg(feature = "cuda")]
mod ptx;

use smelt_fuse::Kernel;
use std::path::PathBuf;
use thiserror::Error;

#[cfg(feature = "cuda")]
pub use ptx::{compile, host_code};

/// Why GPU code could not be generated.
#[derive(Debug, Error)]
pub enum GpuError {
    #[error("this build has no GPU back end; rebuild with the cargo feature `cuda`")]
    NotBuilt,
    #[error("kernel {kernel}: {reason}")]
    Unsupported { kernel: String, reason: String },
    #[error("unknown GPU architecture {0:?}; expected sm_XX with XX from 60 to 90 (e.g. sm_90)")]
    Arch(String),
    #[error(
        "libdevice.10.bc (the CUDA math library) not found; give --libdevice PATH or set SMELT_LIBDEVICE (or CUDA_HOME) to a CUDA installation's"
    )]
    NoLibdevice,
    #[error("libdevice {path}: {reason}")]
    Libdevice { path: PathBuf, reason: String },
    #[error("LLVM: {0}")]
    Llvm(String),
}

/// What to generate code for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuOptions {
    /// The compute capability, `sm_90` for the H100.
    pub arch: String,
    /// `libdevice.10.bc`, the CUDA math library kernels that call exp, tanh, erf, ...
    /// link; `None` looks it up (see [`libdevice_path`]).
    pub libdevice: Option<PathBuf>,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            arch: "sm_90".into(),
            libdevice: None,
        }
    }
}

impl GpuOptions {
    /// The architecture's number (90 for `sm_90`), checked against what LLVM 19 targets.
    pub fn arch_number(&self) -> Result<u32, GpuError> {
        self.arch
            .strip_prefix("sm_")
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|n| (60..=90).contains(n))
            .ok_or_else(|| GpuError::Arch(self.arch.clone()))
    }
}

/// One kernel of a module: its PTX entry symbol and the logical threads a launch runs
/// (its domain's element count).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuKernelCode {
    pub symbol: String,
    pub threads: u64,
}

/// The GPU code of a set of kernels.
#[derive(Debug, Clone)]
pub struct GpuModule {
    pub arch: String,
    /// The LLVM IR as generated, before libdevice is linked and before optimization.
    pub llvm_ir: String,
    /// The PTX module, exactly as `ptxas` and the driver take it.
    pub ptx: String,
    /// One entry per kernel, in the order given.
    pub kernels: Vec<GpuKernelCode>,
}

/// The PTX entry symbol of a kernel: its name with anything but ASCII letters, digits
/// and `_` replaced by `_` (kernel names are unique within a program).
pub fn symbol(kernel: &Kernel) -> String {
    kernel
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Where `libdevice.10.bc` is: `options.libdevice` when given, then `SMELT_LIBDEVICE`,
/// then a CUDA installation (`CUDA_HOME`, `CUDA_PATH`, `/usr/local/cuda`). Nothing of
/// the machine the compiler was built on is looked at, so a binary carried to another
/// machine finds the same file there as a fresh build would (`cargo xtask setup` puts
/// the pinned wheel's copy in the test venv, and the test task points
/// `SMELT_LIBDEVICE` at it).
pub fn libdevice_path(options: &GpuOptions) -> Option<PathBuf> {
    const IN_CUDA: &str = "nvvm/libdevice/libdevice.10.bc";
    if let Some(p) = &options.libdevice {
        return Some(p.clone());
    }
    if let Some(p) = std::env::var_os("SMELT_LIBDEVICE") {
        return Some(PathBuf::from(p));
    }
    let mut candidates: Vec<PathBuf> = ["CUDA_HOME", "CUDA_PATH"]
        .iter()
        .filter_map(std::env::var_os)
        .map(|d| PathBuf::from(d).join(IN_CUDA))
        .collect();
    candidates.push(PathBuf::from("/usr/local/cuda").join(IN_CUDA));
    candidates.into_iter().find(|p| p.is_file())
}

/// Without the feature there is no code generator.
#[cfg(not(feature = "cuda"))]
pub fn compile(_kernels: &[&Kernel], _options: &GpuOptions) -> Result<GpuModule, GpuError> {
    Err(GpuError::NotBuilt)
}
