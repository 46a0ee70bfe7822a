//! Runs a `Program` on a GPU-like device: the arena and the constants live in device
//! memory, kernels are launched by function index, inputs are copied in and outputs out.
//!
//! The executor knows nothing of CUDA: a [`Device`] does the allocation, copies and
//! launches. `cuda.rs` (feature `cuda`) is the driver-API device; the compiler's
//! `smelt-gpu` has a host emulator that runs the same kernels compiled for the CPU, which
//! is how this executor is tested on machines without a GPU.

use crate::program::{Launch, Place, Program, RuntimeError};
use crate::tensor::HostTensor;
use std::time::{Duration, Instant};

/// A device address (a `CUdeviceptr` on CUDA).
pub type DeviceAddr = u64;

/// What the executor needs from a device. Errors name the launch or copy that failed.
pub trait Device {
    /// `bytes` of device memory, 256-byte aligned (its address stays valid until the
    /// device is dropped).
    fn alloc(&mut self, bytes: usize) -> Result<DeviceAddr, RuntimeError>;
    fn upload(&mut self, dst: DeviceAddr, src: &[u8]) -> Result<(), RuntimeError>;
    fn download(&mut self, src: DeviceAddr, dst: &mut [u8]) -> Result<(), RuntimeError>;
    fn copy(&mut self, src: DeviceAddr, dst: DeviceAddr, bytes: usize) -> Result<(), RuntimeError>;
    /// Launches kernel `function` over `threads` logical threads (the kernel strides over
    /// them, so any grid is correct) with the buffer addresses `args`.
    fn launch(
        &mut self,
        name: &str,
        function: usize,
        threads: u64,
        args: &[DeviceAddr],
    ) -> Result<(), RuntimeError>;
    /// Waits for every launch and copy issued so far.
    fn synchronize(&mut self) -> Result<(), RuntimeError>;
    /// Marks the point the device's work has reached, for [`Device::elapsed`]. By default
    /// the device is synchronized and the host clock read; the CUDA device records an
    /// event instead, so that marks between launches neither stall the queue nor count
    /// the host's launch overhead.
    fn mark(&mut self) -> Result<Mark, RuntimeError> {
        self.synchronize()?;
        Ok(Mark::Host(Instant::now()))
    }
    /// The device time from `from` to `to`, waiting until `to` is reached.
    fn elapsed(&mut self, from: Mark, to: Mark) -> Result<Duration, RuntimeError> {
        match (from, to) {
            (Mark::Host(a), Mark::Host(b)) => Ok(b.saturating_duration_since(a)),
            _ => Err(RuntimeError::Kernel {
                name: "(timer)".into(),
                reason: "marks of another device".into(),
            }),
        }
    }
    /// Lets the device reuse whatever its marks hold (the CUDA device's events); marks
    /// taken before are invalid afterwards.
    fn forget_marks(&mut self) {}
}

/// A point in a device's work, taken by [`Device::mark`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// The host clock once the device had finished everything issued before.
    Host(Instant),
    /// The device's own timer: an index into its events.
    Event(usize),
}

/// A program whose loop kernels are device functions: `threads[f]` is the number of
/// logical threads function `f` runs over (its domain's element count).
#[derive(Debug, Clone)]
pub struct GpuProgram {
    pub program: Program,
    pub threads: Vec<u64>,
}

/// A program's memory on one device: the arena and the constants, uploaded once.
#[derive(Debug)]
pub struct Resident {
    arena: DeviceAddr,
    constants: DeviceAddr,
}

impl GpuProgram {
    /// Checks that every launch is one a device runs (loop kernels and copies) and that
    /// every function has a thread count.
    pub fn new(program: Program, threads: Vec<u64>) -> Result<GpuProgram, RuntimeError> {
        for l in &program.launches {
            match l {
                Launch::Loop { function, .. } if *function < threads.len() => {}
                Launch::Loop { name, function, .. } => {
                    return Err(RuntimeError::Kernel {
                        name: name.clone(),
                        reason: format!("function {function} has no device code"),
                    });
                }
                Launch::Copy { .. } => {}
                other => {
                    return Err(RuntimeError::Kernel {
                        name: other.name().to_string(),
                        reason: "a runtime CPU kernel cannot run on a GPU (the GPU target lowers every group to a loop kernel)".into(),
                    });
                }
            }
        }
        Ok(GpuProgram { program, threads })
    }

    /// Allocates the arena and uploads the constants (once per program and device).
    pub fn make_resident(&self, device: &mut dyn Device) -> Result<Resident, RuntimeError> {
        let arena = device.alloc(self.program.arena_bytes.max(1))?;
        let blob = self.program.constants.as_slice();
        let constants = device.alloc(blob.len().max(1))?;
        device.upload(constants, blob)?;
        device.synchronize()?;
        Ok(Resident { arena, constants })
    }

    fn address(&self, resident: &Resident, buffer: usize) -> DeviceAddr {
        match self.program.buffers[buffer].place {
            Place::Arena { offset } => resident.arena + offset as u64,
            Place::Constant { offset } => resident.constants + offset as u64,
        }
    }

    /// Runs the program: copies the inputs in, launches in order, copies the outputs out
    /// into `outputs` (tensors of the outputs' types, an earlier run's results, so
    /// repeated runs allocate nothing). With `profile`, the device time of every launch
    /// (between the device's marks before and after it, CUDA events on a GPU) is added to
    /// it, one entry per launch, as `Program::run` does; their sum is the time from the
    /// first launch to the end of the last, copies in and out left out.
    pub fn run_into(
        &self,
        device: &mut dyn Device,
        resident: &Resident,
        inputs: &[&HostTensor],
        outputs: &mut [HostTensor],
        profile: Option<&mut Vec<Duration>>,
    ) -> Result<(), RuntimeError> {
        self.program.check_tensors(inputs, outputs)?;
        let ins: Vec<&[u8]> = inputs.iter().map(|t| t.bytes.as_slice()).collect();
        let mut outs: Vec<&mut [u8]> = outputs.iter_mut().map(|t| t.bytes.as_mut_slice()).collect();
        self.run_bytes(device, resident, &ins, &mut outs, profile)
    }

    /// As [`GpuProgram::run_into`] on raw input and output bytes (in declaration order,
    /// each exactly as long as its tensor), as the deployable runtime calls it.
    pub fn run_bytes(
        &self,
        device: &mut dyn Device,
        resident: &Resident,
        inputs: &[&[u8]],
        outputs: &mut [&mut [u8]],
        mut profile: Option<&mut Vec<Duration>>,
    ) -> Result<(), RuntimeError> {
        let p = &self.program;
        p.check_bytes(inputs, outputs)?;
        for (spec, bytes) in p.inputs.iter().zip(inputs) {
            device.upload(self.address(resident, spec.buffer), bytes)?;
        }
        let mut marks = Vec::new();
        if let Some(times) = profile.as_deref_mut() {
            times.resize(p.launches.len(), Duration::ZERO);
            device.forget_marks();
            marks.reserve(p.launches.len() + 1);
            marks.push(device.mark()?);
        }
        for launch in &p.launches {
            match launch {
                Launch::Loop {
                    name,
                    function,
                    args,
                    ..
                } => {
                    let addrs: Vec<DeviceAddr> =
                        args.iter().map(|&b| self.address(resident, b)).collect();
                    let threads = self.threads[*function];
                    if threads > 0 {
                        device.launch(name, *function, threads, &addrs)?;
                    }
                }
                Launch::Copy { src, dst, .. } => {
                    let bytes = p.buffers[*src].bytes();
                    device.copy(
                        self.address(resident, *src),
                        self.address(resident, *dst),
                        bytes,
                    )?;
                }
                other => {
                    return Err(RuntimeError::Kernel {
                        name: other.name().to_string(),
                        reason: "not a device launch".into(),
                    });
                }
            }
            if profile.is_some() {
                marks.push(device.mark()?);
            }
        }
        for (spec, out) in p.outputs.iter().zip(outputs.iter_mut()) {
            device.download(self.address(resident, spec.buffer), out)?;
        }
        device.synchronize()?;
        if let Some(times) = profile {
            for (time, pair) in times.iter_mut().zip(marks.windows(2)) {
                *time += device.elapsed(pair[0], pair[1])?;
            }
        }
        Ok(())
    }
}
