//! Deployed models compiled for an NVIDIA GPU: the PTX from the manifest loaded on the
//! first GPU when the model first runs, its memory resident there for the process.

use smelt_runtime::cuda::CudaDevice;
use smelt_runtime::gpu::{GpuProgram, Resident};
use smelt_runtime::manifest::GpuProto;
use smelt_runtime::program::Program;
use std::sync::{Mutex, OnceLock};

/// A GPU model and (once it has run) its device.
pub struct GpuModel {
    program: GpuProgram,
    ptx: String,
    symbols: Vec<String>,
    /// Opened on first use; an error (no driver, no GPU) is kept and reported by every run.
    device: OnceLock<Result<Mutex<(CudaDevice, Resident)>, String>>,
}

impl std::fmt::Debug for GpuModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GpuModel({} kernels)", self.symbols.len())
    }
}

impl GpuModel {
    /// Checks the manifest's GPU section against the program.
    pub fn new(program: &Program, g: &GpuProto) -> Result<GpuModel, String> {
        if g.symbols.len() != g.threads.len() {
            return Err("bad manifest: GPU symbols and thread counts disagree".into());
        }
        let program =
            GpuProgram::new(program.clone(), g.threads.clone()).map_err(|e| e.to_string())?;
        Ok(GpuModel {
            program,
            ptx: g.ptx.clone(),
            symbols: g.symbols.clone(),
            device: OnceLock::new(),
        })
    }

    pub fn run(&self, inputs: &[&[u8]], outputs: &mut [&mut [u8]]) -> Result<(), String> {
        let device = self.device.get_or_init(|| {
            let mut device =
                CudaDevice::new(0, &self.ptx, &self.symbols).map_err(|e| e.to_string())?;
            let resident = self
                .program
                .make_resident(&mut device)
                .map_err(|e| e.to_string())?;
            Ok(Mutex::new((device, resident)))
        });
        let device = device.as_ref().map_err(Clone::clone)?;
        let mut guard = device.lock().unwrap_or_else(|e| e.into_inner());
        let (device, resident) = &mut *guard;
        self.program
            .run_bytes(device, resident, inputs, outputs, None)
            .map_err(|e| e.to_string())
    }
}
