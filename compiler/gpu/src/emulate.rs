//! A `Device` that runs the GPU kernels' host flavor on the CPU: the same loop nests,
//! index arithmetic, clamping and grid-stride walk as the PTX, with device memory in host
//! allocations. It is how the GPU executor and code generator are checked on machines
//! without a GPU (only the special registers and the math library differ).

use crate::ptx::HostCode;
use smelt_runtime::gpu::{Device, DeviceAddr};
use smelt_runtime::program::RuntimeError;

/// Fewest threads the emulator walks a launch with (each striding over the rest, so the
/// grid-stride loop is exercised, not one thread doing everything); it uses every core
/// when there are more.
const MIN_WALKERS: u64 = 3;

/// The byte fresh allocations are filled with: all-ones bytes are a NaN in every float
/// type (f16, bf16, f32, f64) and -1 in every signed integer type.
pub const POISON: u8 = 0xff;

/// The buffer pointers of one launch, shared by its walker threads.
struct Pointers(Vec<*mut u8>);
// SAFETY: each walker writes only its own elements (as GPU threads do), and the launch
// waits for all of them before the buffers are touched again.
unsafe impl Sync for Pointers {}

#[repr(C, align(256))]
#[derive(Clone, Copy)]
struct Block([u8; 256]);

/// Device memory in host allocations, and kernels as host code.
#[derive(Debug)]
pub struct HostDevice {
    code: HostCode,
    allocations: Vec<Vec<Block>>,
    /// `(address, bytes)` of every allocation, to check copies and launches against.
    ranges: Vec<(u64, usize)>,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Block")
    }
}

impl HostDevice {
    pub fn new(code: HostCode) -> HostDevice {
        HostDevice {
            code,
            allocations: Vec::new(),
            ranges: Vec::new(),
        }
    }

    /// Checks that `[addr, addr + bytes)` lies in one allocation, so a wrong address is
    /// an error instead of a stray write.
    fn check(&self, what: &str, addr: DeviceAddr, bytes: usize) -> Result<*mut u8, RuntimeError> {
        let inside = self
            .ranges
            .iter()
            .any(|&(base, len)| addr >= base && addr + bytes as u64 <= base + len as u64);
        if !inside {
            return Err(RuntimeError::Kernel {
                name: what.to_string(),
                reason: format!("{bytes} bytes at {addr:#x} are outside device memory"),
            });
        }
        Ok(addr as usize as *mut u8)
    }
}

impl Device for HostDevice {
    fn alloc(&mut self, bytes: usize) -> Result<DeviceAddr, RuntimeError> {
        // `cuMemAlloc` leaves fresh memory as it was; filling it with NaN bytes instead of
        // zeros makes a kernel that reads before anything wrote fail here as well.
        let mut v = vec![Block([POISON; 256]); bytes.div_ceil(256).max(1)];
        let addr = v.as_mut_ptr() as u64;
        self.allocations.push(v);
        self.ranges.push((addr, bytes));
        Ok(addr)
    }

    fn upload(&mut self, dst: DeviceAddr, src: &[u8]) -> Result<(), RuntimeError> {
        let p = self.check("upload", dst, src.len())?;
        // SAFETY: checked to lie inside an allocation of ours.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), p, src.len()) };
        Ok(())
    }

    fn download(&mut self, src: DeviceAddr, dst: &mut [u8]) -> Result<(), RuntimeError> {
        let p = self.check("download", src, dst.len())?;
        // SAFETY: as above.
        unsafe { std::ptr::copy_nonoverlapping(p, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    fn copy(&mut self, src: DeviceAddr, dst: DeviceAddr, bytes: usize) -> Result<(), RuntimeError> {
        let s = self.check("copy", src, bytes)?;
        let d = self.check("copy", dst, bytes)?;
        // SAFETY: both inside our allocations; `copy` allows overlap.
        unsafe { std::ptr::copy(s, d, bytes) };
        Ok(())
    }

    fn launch(
        &mut self,
        name: &str,
        function: usize,
        threads: u64,
        args: &[DeviceAddr],
    ) -> Result<(), RuntimeError> {
        let f = *self
            .code
            .functions
            .get(function)
            .ok_or_else(|| RuntimeError::Kernel {
                name: name.to_string(),
                reason: format!("function {function} is not in the module"),
            })?;
        for &a in args {
            self.check(name, a, 0)?;
        }
        let pointers = Pointers(args.iter().map(|&a| a as usize as *mut u8).collect());
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        let walkers = threads.clamp(1, MIN_WALKERS.max(cores));
        let pointers = &pointers;
        std::thread::scope(|s| {
            for first in 0..walkers {
                s.spawn(move || {
                    // SAFETY: the kernel takes its buffers' pointers, which lie in our
                    // allocations, and touches only clamped elements of them.
                    unsafe { f(pointers.0.as_ptr(), first as i64, walkers as i64) };
                });
            }
        });
        Ok(())
    }

    fn synchronize(&mut self) -> Result<(), RuntimeError> {
        Ok(())
    }
}
