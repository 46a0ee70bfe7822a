//! The targets a model compiles for and their options, as the driver's users name them:
//! [`Target`], [`GpuOptions`] and [`CpuTarget`]. The back ends' own option types stay
//! inside; these wrap them so that no caller depends on a back-end crate.

use std::path::{Path, PathBuf};

/// What the code runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Target {
    /// This CPU, through Cranelift and the runtime's kernels.
    #[default]
    Cpu,
    /// An NVIDIA GPU (the first one), through PTX and the CUDA driver (feature `cuda`).
    Cuda,
    /// The GPU target's kernels compiled for this CPU and run through the GPU executor
    /// by an emulated device: checks the GPU path on machines without a GPU (slow).
    GpuEmulator,
}

impl Target {
    pub fn parse(s: &str) -> Option<Target> {
        match s {
            "cpu" => Some(Target::Cpu),
            "cuda" => Some(Target::Cuda),
            "gpu-emulator" => Some(Target::GpuEmulator),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Target::Cpu => "cpu",
            Target::Cuda => "cuda",
            Target::GpuEmulator => "gpu-emulator",
        }
    }

    pub fn is_gpu(self) -> bool {
        self != Target::Cpu
    }

    /// How fusion groups are lowered for this target.
    pub fn lowering(self) -> smelt_fuse::LowerTarget {
        if self.is_gpu() {
            smelt_fuse::LowerTarget::Gpu
        } else {
            smelt_fuse::LowerTarget::Cpu
        }
    }
}

/// The GPU code generator's options: the architecture and where libdevice is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GpuOptions(pub(crate) smelt_gpu::GpuOptions);

impl GpuOptions {
    /// Options for `arch` (`sm_90` for the H100), with libdevice at `libdevice` or, when
    /// `None`, looked up in `SMELT_LIBDEVICE` and then a CUDA installation.
    pub fn new(arch: impl Into<String>, libdevice: Option<PathBuf>) -> GpuOptions {
        GpuOptions(smelt_gpu::GpuOptions {
            arch: arch.into(),
            libdevice,
        })
    }

    /// The compute capability, e.g. `sm_90`.
    pub fn arch(&self) -> &str {
        &self.0.arch
    }

    /// The libdevice file given, if any.
    pub fn libdevice(&self) -> Option<&Path> {
        self.0.libdevice.as_deref()
    }
}

/// The CPU an ahead-of-time compiled model is built for: `native` or an x86-64 level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTarget(pub(crate) smelt_cpu::object::CpuTarget);

impl Default for CpuTarget {
    fn default() -> Self {
        CpuTarget(smelt_cpu::object::CpuTarget::Native)
    }
}

impl CpuTarget {
    /// `native`, `x86-64-v2`, `x86-64-v3` or `x86-64-v4`.
    pub fn parse(name: &str) -> Option<CpuTarget> {
        smelt_cpu::object::CpuTarget::parse(name).map(CpuTarget)
    }

    pub fn name(self) -> &'static str {
        self.0.name()
    }

    /// The cpuid names of the features the generated code may use.
    pub fn features(self) -> Vec<String> {
        self.0.features()
    }
}
