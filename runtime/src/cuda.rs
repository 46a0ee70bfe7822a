//! The CUDA device (feature `cuda`): a PTX module run through the driver API, which
//! `cudarc` loads at run time (`libcuda.so`), so building needs nothing from CUDA.

use crate::gpu::{Device, DeviceAddr, Mark};
use crate::program::RuntimeError;
use cudarc::driver::{result, sys};
use std::ffi::{CString, c_void};
use std::time::Duration;

/// Threads per block of every launch.
const BLOCK: u64 = 256;
/// Most blocks of one launch; the kernels stride over the rest.
const MAX_BLOCKS: u64 = 1 << 16;

/// One GPU with a PTX module loaded: the functions a program launches by index.
#[derive(Debug)]
pub struct CudaDevice {
    context: sys::CUcontext,
    device: sys::CUdevice,
    module: sys::CUmodule,
    stream: sys::CUstream,
    functions: Vec<sys::CUfunction>,
    allocations: Vec<sys::CUdeviceptr>,
    /// Timing events, created as marks need them and reused after `forget_marks`.
    events: Vec<sys::CUevent>,
    /// How many of `events` the marks since `forget_marks` use.
    events_used: usize,
    name: String,
}

// SAFETY: the handles are the driver's; every call first makes the context current on
// the calling thread, and `&mut self` serializes the calls.
unsafe impl Send for CudaDevice {}

fn driver_error(what: &str, e: result::DriverError) -> RuntimeError {
    let what = what.to_string();
    let detail = e
        .error_string()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| format!("{e:?}"));
    RuntimeError::Kernel {
        name: what,
        reason: format!("CUDA: {detail}"),
    }
}

/// Maps a driver error to one naming the call.
fn err(what: &str) -> impl Fn(result::DriverError) -> RuntimeError + '_ {
    move |e| driver_error(what, e)
}

/// Whether the CUDA driver library can be loaded on this machine.
pub fn driver_present() -> bool {
    // SAFETY: only tries to open the library.
    unsafe { sys::is_culib_present() }
}

/// Retains GPU `ordinal`'s primary context until the process ends, so that devices made
/// and dropped one after another (a harness compiling case after case) share it instead
/// of each creating the context anew when the last one released it.
pub fn retain_primary_context(ordinal: usize) -> Result<(), RuntimeError> {
    let device = open_device(ordinal)?;
    // SAFETY: a valid device; the reference is kept on purpose (released at exit).
    unsafe { result::primary_ctx::retain(device) }.map_err(err("cuDevicePrimaryCtxRetain"))?;
    Ok(())
}

/// GPU `ordinal` with the driver initialized: the driver library present, the ordinal
/// one of the GPUs there.
fn open_device(ordinal: usize) -> Result<sys::CUdevice, RuntimeError> {
    if !driver_present() {
        return Err(RuntimeError::Kernel {
            name: "(device)".into(),
            reason: "the CUDA driver (libcuda.so) is not installed on this machine".into(),
        });
    }
    result::init().map_err(err("cuInit"))?;
    let count = result::device::get_count().map_err(err("cuDeviceGetCount"))?;
    if ordinal >= count.max(0) as usize {
        return Err(RuntimeError::Kernel {
            name: "(device)".into(),
            reason: format!("GPU {ordinal} requested, {count} present"),
        });
    }
    result::device::get(ordinal as i32).map_err(err("cuDeviceGet"))
}

impl CudaDevice {
    /// Opens GPU `ordinal`, loads `ptx` and looks up the kernels `symbols` (in the
    /// program's function order).
    pub fn new(ordinal: usize, ptx: &str, symbols: &[String]) -> Result<CudaDevice, RuntimeError> {
        let device = open_device(ordinal)?;
        let name = result::device::get_name(device).map_err(err("cuDeviceGetName"))?;
        // SAFETY: `device` is a valid ordinal; the primary context is released on drop.
        let context = unsafe { result::primary_ctx::retain(device) }
            .map_err(err("cuDevicePrimaryCtxRetain"))?;
        unsafe { result::ctx::set_current(context) }.map_err(err("cuCtxSetCurrent"))?;
        let image = CString::new(ptx).map_err(|_| RuntimeError::Kernel {
            name: "(module)".into(),
            reason: "the PTX text contains a NUL byte".into(),
        })?;
        // SAFETY: a NUL-terminated PTX string.
        let module = unsafe { result::module::load_data(image.as_ptr().cast()) }
            .map_err(err("cuModuleLoadData (PTX JIT)"))?;
        let mut functions = Vec::with_capacity(symbols.len());
        for s in symbols {
            let c = CString::new(s.as_str()).map_err(|_| RuntimeError::Kernel {
                name: s.clone(),
                reason: "symbol contains a NUL byte".into(),
            })?;
            // SAFETY: `module` was just loaded.
            functions.push(unsafe { result::module::get_function(module, c) }.map_err(err(s))?);
        }
        let stream = result::stream::create(result::stream::StreamKind::NonBlocking)
            .map_err(err("cuStreamCreate"))?;
        Ok(CudaDevice {
            context,
            device,
            module,
            stream,
            functions,
            allocations: Vec::new(),
            events: Vec::new(),
            events_used: 0,
            name,
        })
    }

    /// The GPU's name, as the driver reports it.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn current(&self) -> Result<(), RuntimeError> {
        // SAFETY: the context is retained for the device's lifetime.
        unsafe { result::ctx::set_current(self.context) }
            .map_err(|e| driver_error("cuCtxSetCurrent", e))
    }
}

impl Device for CudaDevice {
    fn alloc(&mut self, bytes: usize) -> Result<DeviceAddr, RuntimeError> {
        self.current()?;
        // SAFETY: plain allocation, freed on drop.
        let p = unsafe { result::malloc_sync(bytes) }.map_err(|e| driver_error("cuMemAlloc", e))?;
        self.allocations.push(p);
        Ok(p)
    }

    fn upload(&mut self, dst: DeviceAddr, src: &[u8]) -> Result<(), RuntimeError> {
        self.current()?;
        // Every copy goes on the device's own stream, so it is ordered with the launches
        // (a non-blocking stream does not wait for the legacy stream's synchronous
        // copies); waiting for it keeps `src` borrowed only for the call.
        // SAFETY: `dst` lies in an allocation of this device at least `src.len()` long
        // (the executor's memory plan); the stream is synchronized before returning.
        unsafe { result::memcpy_htod_async(dst, src, self.stream) }
            .map_err(|e| driver_error("cuMemcpyHtoDAsync", e))?;
        self.synchronize()
    }

    fn download(&mut self, src: DeviceAddr, dst: &mut [u8]) -> Result<(), RuntimeError> {
        self.current()?;
        // SAFETY: as above: ordered after the launches on the stream, `src` covers
        // `dst.len()` bytes, and the stream is synchronized before `dst` is read.
        unsafe { result::memcpy_dtoh_async(dst, src, self.stream) }
            .map_err(|e| driver_error("cuMemcpyDtoHAsync", e))?;
        self.synchronize()
    }

    fn copy(&mut self, src: DeviceAddr, dst: DeviceAddr, bytes: usize) -> Result<(), RuntimeError> {
        self.current()?;
        // SAFETY: both ranges lie in this device's allocations.
        unsafe { result::memcpy_dtod_async(dst, src, bytes, self.stream) }
            .map_err(|e| driver_error("cuMemcpyDtoDAsync", e))
    }

    fn launch(
        &mut self,
        name: &str,
        function: usize,
        threads: u64,
        args: &[DeviceAddr],
    ) -> Result<(), RuntimeError> {
        self.current()?;
        let f = *self
            .functions
            .get(function)
            .ok_or_else(|| RuntimeError::Kernel {
                name: name.to_string(),
                reason: format!("function {function} is not in the module"),
            })?;
        let blocks = threads.div_ceil(BLOCK).clamp(1, MAX_BLOCKS) as u32;
        let mut values: Vec<DeviceAddr> = args.to_vec();
        let mut params: Vec<*mut c_void> = values
            .iter_mut()
            .map(|v| (v as *mut DeviceAddr).cast::<c_void>())
            .collect();
        // SAFETY: every kernel takes exactly its buffers' pointers, in this order; the
        // parameter values are copied by the driver before the call returns.
        unsafe {
            result::launch_kernel(
                f,
                (blocks, 1, 1),
                (BLOCK as u32, 1, 1),
                0,
                self.stream,
                &mut params,
            )
        }
        .map_err(|e| driver_error(name, e))
    }

    fn synchronize(&mut self) -> Result<(), RuntimeError> {
        self.current()?;
        // SAFETY: the stream belongs to this device.
        unsafe { result::stream::synchronize(self.stream) }
            .map_err(|e| driver_error("cuStreamSynchronize (a kernel failed)", e))
    }

    fn mark(&mut self) -> Result<Mark, RuntimeError> {
        self.current()?;
        if self.events_used == self.events.len() {
            let event = result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT)
                .map_err(err("cuEventCreate"))?;
            self.events.push(event);
        }
        let index = self.events_used;
        // SAFETY: the event and the stream belong to this device's context.
        unsafe { result::event::record(self.events[index], self.stream) }
            .map_err(err("cuEventRecord"))?;
        self.events_used += 1;
        Ok(Mark::Event(index))
    }

    fn elapsed(&mut self, from: Mark, to: Mark) -> Result<Duration, RuntimeError> {
        let (Mark::Event(a), Mark::Event(b)) = (from, to) else {
            return Err(RuntimeError::Kernel {
                name: "(timer)".into(),
                reason: "marks of another device".into(),
            });
        };
        let (Some(&start), Some(&end)) = (self.events.get(a), self.events.get(b)) else {
            return Err(RuntimeError::Kernel {
                name: "(timer)".into(),
                reason: "a mark taken before the last forget_marks".into(),
            });
        };
        self.current()?;
        // SAFETY: both events were recorded on this device's stream.
        let ms = unsafe {
            result::event::synchronize(end).map_err(err("cuEventSynchronize (a kernel failed)"))?;
            result::event::elapsed(start, end).map_err(err("cuEventElapsedTime"))?
        };
        Ok(Duration::from_secs_f64(f64::from(ms.max(0.0)) / 1e3))
    }

    fn forget_marks(&mut self) {
        self.events_used = 0;
    }
}

impl Drop for CudaDevice {
    fn drop(&mut self) {
        // SAFETY: the handles were created by `new` and are released once.
        unsafe {
            let _ = result::ctx::set_current(self.context);
            let _ = result::stream::synchronize(self.stream);
            for &p in &self.allocations {
                let _ = result::free_sync(p);
            }
            for &e in &self.events {
                let _ = result::event::destroy(e);
            }
            let _ = result::stream::destroy(self.stream);
            let _ = result::module::unload(self.module);
            let _ = result::primary_ctx::release(self.device);
        }
    }
}
