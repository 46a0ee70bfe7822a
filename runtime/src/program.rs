//! The compiled `Program` and its executor: buffers in one arena, constants, and the
//! ordered launches (generated loop kernels split over the thread pool, contraction
//! microkernels, copies).

use crate::kernels::{
    Activation, ConvGeometry, KernelError, MatrixOperand, PoolGeometry, ResizeGeometry,
    apply_in_blocks, batched_matmul, conv, conv_prepacked, pool2d, prepack_conv_filters, resize2d,
    skinny_matmul,
};
use crate::tensor::{ElemType, HostTensor};
use crate::threads::ThreadPool;
use std::time::{Duration, Instant};
use thiserror::Error;

/// A generated loop kernel: `args` holds one pointer per parameter, `[begin, end)` is the
/// share of the outer range to compute.
pub type KernelFn = unsafe extern "C" fn(args: *const *mut u8, begin: i64, end: i64);

#[derive(Debug, Error, PartialEq)]
pub enum RuntimeError {
    #[error("the model takes {expected} inputs, {got} were given")]
    InputCount { expected: usize, got: usize },
    #[error("input {name}: expected {expected}, got {got}")]
    InputMismatch {
        name: String,
        expected: String,
        got: String,
    },
    #[error("input {name}: index {value} at position {position} is out of range (allowed: {lo} to {})", hi - 1)]
    IndexOutOfRange {
        name: String,
        position: usize,
        value: i64,
        lo: i64,
        hi: i64,
    },
    #[error("output {name}: expected {expected}, got {got}")]
    OutputMismatch {
        name: String,
        expected: String,
        got: String,
    },
    #[error("kernel {name}: {reason}")]
    Kernel { name: String, reason: String },
}

/// A model input or output.
#[derive(Debug, Clone, PartialEq)]
pub struct IoSpec {
    pub name: String,
    pub elem: ElemType,
    pub shape: Vec<usize>,
    pub buffer: usize,
    /// For an input used as indices (of a gather or scatter): the values its elements may
    /// hold, `[lo, hi)`, taken in turn along the innermost axis. One entry for ops that
    /// index one axis; one per indexed axis for GatherND/ScatterND, whose last index axis
    /// addresses several data axes. Empty when the input is not checked. Checked before
    /// every run, since kernels clamp what they load.
    pub index_bounds: Vec<(i64, i64)>,
}

impl IoSpec {
    /// An error naming the first element of `bytes` (this input's data) outside its
    /// `index_bounds`, if any.
    fn check_indices(&self, bytes: &[u8]) -> Result<(), RuntimeError> {
        if self.index_bounds.is_empty() {
            return Ok(());
        }
        // Index inputs are i32 or i64 (the compiler gives bounds to no other type); the
        // element type is decided once, not per element. Chunks have the type's width.
        let value: fn(&[u8]) -> i64 = match self.elem {
            ElemType::I32 => |c| i32::from_le_bytes(c.try_into().unwrap_or_default()) as i64,
            ElemType::I64 => |c| i64::from_le_bytes(c.try_into().unwrap_or_default()),
            _ => return Ok(()),
        };
        let width = self.elem.size_bytes();
        for (position, chunk) in bytes.chunks_exact(width).enumerate() {
            let value = value(chunk);
            let (lo, hi) = self.index_bounds[position % self.index_bounds.len()];
            if value < lo || value >= hi {
                return Err(RuntimeError::IndexOutOfRange {
                    name: self.name.clone(),
                    position,
                    value,
                    lo,
                    hi,
                });
            }
        }
        Ok(())
    }
}

/// Alignment a caller's input or output bytes need to be used in place (enough for every
/// element type the kernels view them as).
const EXTERNAL_ALIGN: usize = 16;

/// Where a run's buffers are: the arena, and the caller's inputs and outputs used in place.
struct Memory<'a> {
    arena: *mut u8,
    /// Per buffer, the caller's bytes standing in for its arena place.
    external: &'a [Option<*mut u8>],
}

/// Where a buffer lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Arena { offset: usize },
    Constant { offset: usize },
}

#[derive(Debug, Clone, PartialEq)]
pub struct BufferSpec {
    pub name: String,
    pub elem: ElemType,
    pub shape: Vec<usize>,
    pub place: Place,
}

impl BufferSpec {
    pub fn bytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.elem.size_bytes()
    }
}

/// One step of a program.
#[derive(Debug, Clone, PartialEq)]
pub enum Launch {
    /// Generated kernel `function` over `[0, extent)`, in chunks of at least `min_chunk`.
    Loop {
        name: String,
        function: usize,
        args: Vec<usize>,
        extent: usize,
        min_chunk: usize,
    },
    MatMul {
        name: String,
        a: usize,
        b: usize,
        bias: Option<usize>,
        out: usize,
        a_shape: Vec<usize>,
        b_shape: Vec<usize>,
        trans_a: bool,
        trans_b: bool,
        /// `b` holds the constant weight packed by the compiler into column panels
        /// (`kernels::skinny`): every batch of `a` is then a row of one product, and
        /// `b_shape` stays the weight's own shape.
        b_packed: bool,
        /// The activation that followed the product, applied over the output after it.
        activation: Activation,
    },
    Conv {
        name: String,
        x: usize,
        w: usize,
        bias: Option<usize>,
        out: usize,
        geometry: ConvGeometry,
    },
    Copy {
        name: String,
        src: usize,
        dst: usize,
    },
    /// 2-D f32 max or average pooling (`kernels::pooling`).
    Pool {
        name: String,
        x: usize,
        out: usize,
        geometry: PoolGeometry,
    },
    /// f32 resize along the two innermost axes (`kernels::resize`).
    Resize {
        name: String,
        x: usize,
        out: usize,
        geometry: ResizeGeometry,
    },
}

impl Launch {
    pub fn name(&self) -> &str {
        match self {
            Launch::Loop { name, .. }
            | Launch::MatMul { name, .. }
            | Launch::Conv { name, .. }
            | Launch::Copy { name, .. }
            | Launch::Pool { name, .. }
            | Launch::Resize { name, .. } => name,
        }
    }
}

/// The alignment of [`AlignedBytes`].
const BLOB_ALIGN: usize = 64;

/// Bytes aligned to 64 (so every buffer offset that is a multiple of 64 is too), from
/// zeroed pages: none counts towards the process's resident memory until written.
///
/// The allocation asks the system allocator for 16-byte alignment and 64 spare bytes,
/// and starts the bytes at the first 64-byte boundary: the system allocator zeroes an
/// over-aligned request by writing every byte (which made a constant blob resident in
/// full before the weights it replaces were freed), but a plain one by taking fresh pages.
pub struct AlignedBytes {
    allocation: std::ptr::NonNull<u8>,
    /// From `allocation` to the first 64-byte boundary.
    skip: usize,
    len: usize,
}

// SAFETY: the bytes are owned, as in a `Vec<u8>`, and shared only through `&self`.
unsafe impl Send for AlignedBytes {}
// SAFETY: as above.
unsafe impl Sync for AlignedBytes {}

impl std::fmt::Debug for AlignedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBytes({} bytes)", self.len)
    }
}

impl AlignedBytes {
    fn layout(len: usize) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(len + BLOB_ALIGN, 16)
            .expect("a blob's size fits memory")
    }

    /// `len` zero bytes.
    pub fn zeroed(len: usize) -> AlignedBytes {
        let layout = Self::layout(len);
        // SAFETY: the layout's size is non-zero.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(allocation) = std::ptr::NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout)
        };
        let skip = raw.align_offset(BLOB_ALIGN);
        assert!(skip < BLOB_ALIGN, "a byte pointer can always be aligned");
        AlignedBytes {
            allocation,
            skip,
            len,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `len` bytes from `base` lie inside the allocation (64 spare bytes cover
        // `skip`), initialized (zeroed, then written through `as_mut_slice`).
        unsafe { std::slice::from_raw_parts(self.base(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.base(), self.len) }
    }

    fn base(&self) -> *mut u8 {
        // SAFETY: `skip` is less than the 64 spare bytes of the allocation.
        unsafe { self.allocation.as_ptr().add(self.skip) }
    }
}

impl Clone for AlignedBytes {
    fn clone(&self) -> AlignedBytes {
        let mut copy = AlignedBytes::zeroed(self.len);
        copy.as_mut_slice().copy_from_slice(self.as_slice());
        copy
    }
}

impl Drop for AlignedBytes {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this layout, and freed once.
        unsafe { std::alloc::dealloc(self.allocation.as_ptr(), Self::layout(self.len)) }
    }
}

/// The constants of a program: owned (JIT) or linked into the executable (AOT).
#[derive(Debug, Clone)]
pub enum Constants {
    Owned(AlignedBytes),
    /// 64-byte aligned bytes that live as long as the program (a linked data symbol).
    Static(&'static [u8]),
}

impl Constants {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Constants::Owned(b) => b.as_slice(),
            Constants::Static(s) => s,
        }
    }

    fn base(&self) -> *mut u8 {
        match self {
            Constants::Owned(b) => b.base(),
            // Kernels only read constants; the pointer is mutable for the ABI's sake.
            Constants::Static(s) => s.as_ptr().cast_mut(),
        }
    }
}

/// A byte count that is not the one the program wants.
fn wrong_size(name: &str, what: &str, expected: usize, got: usize) -> RuntimeError {
    RuntimeError::InputMismatch {
        name: name.to_string(),
        expected: format!("{expected} {what}"),
        got: format!("{got} {what}"),
    }
}

/// A compiled model, ready to run.
#[derive(Debug, Clone)]
pub struct Program {
    pub inputs: Vec<IoSpec>,
    pub outputs: Vec<IoSpec>,
    pub buffers: Vec<BufferSpec>,
    pub constants: Constants,
    pub arena_bytes: usize,
    /// What the arena buffers would take without reuse.
    pub intermediate_bytes: usize,
    pub launches: Vec<Launch>,
    /// Filters of convolutions with constant weights, packed on their first run.
    pub packed_filters: PackedFilters,
}

/// Per launch, the packed filters of a convolution whose weights are constants: packed
/// once (on the launch's first run) instead of on every run. Cloning gives an empty
/// cache (the clone packs again on its first run).
#[derive(Default)]
pub struct PackedFilters {
    slots: std::sync::OnceLock<Vec<std::sync::OnceLock<Option<Vec<f32>>>>>,
}

impl Clone for PackedFilters {
    fn clone(&self) -> Self {
        PackedFilters::default()
    }
}

impl std::fmt::Debug for PackedFilters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let packed = self.slots.get().map_or(0, |slots| {
            slots
                .iter()
                .filter(|s| s.get().is_some_and(|p| p.is_some()))
                .count()
        });
        write!(f, "PackedFilters({packed} packed)")
    }
}

impl PackedFilters {
    /// The packed filters of launch `index` of `launches`, packing them with `pack` on
    /// the first call.
    fn get(
        &self,
        index: usize,
        launches: usize,
        pack: impl FnOnce() -> Option<Vec<f32>>,
    ) -> Option<&[f32]> {
        let slots = self
            .slots
            .get_or_init(|| (0..launches).map(|_| std::sync::OnceLock::new()).collect());
        slots.get(index)?.get_or_init(pack).as_deref()
    }
}

/// `[rows, k, n]` of a MatMul whose weight is packed: every batch of `a` is a row.
fn packed_product_sizes(a_shape: &[usize], b_shape: &[usize], trans_b: bool) -> Option<[usize; 3]> {
    let (ra, rb) = (a_shape.len(), b_shape.len());
    if ra < 2 || rb < 2 {
        return None;
    }
    let n = if trans_b {
        b_shape[rb - 2]
    } else {
        b_shape[rb - 1]
    };
    Some([a_shape[..ra - 1].iter().product(), a_shape[ra - 1], n])
}

/// Pointers that the pool's threads share; each launch writes disjoint elements.
struct Args<'a>(&'a [*mut u8]);
// SAFETY: the kernels write disjoint parts of their outputs per range, and the buffers
// outlive the launch, which waits for all threads.
unsafe impl Sync for Args<'_> {}

impl Program {
    /// Checks inputs and outputs against the program's signature: their count, element
    /// types, shapes and (outputs) byte lengths, and the values of inputs that index.
    pub fn check_tensors(
        &self,
        inputs: &[&HostTensor],
        outputs: &[HostTensor],
    ) -> Result<(), RuntimeError> {
        if inputs.len() != self.inputs.len() {
            return Err(RuntimeError::InputCount {
                expected: self.inputs.len(),
                got: inputs.len(),
            });
        }
        let mismatch = |spec: &IoSpec, t: &HostTensor| RuntimeError::InputMismatch {
            name: spec.name.clone(),
            expected: format!("{}{:?}", spec.elem.name(), spec.shape),
            got: format!("{}{:?}", t.elem.name(), t.shape),
        };
        for (spec, t) in self.inputs.iter().zip(inputs) {
            if spec.elem != t.elem || spec.shape != t.shape {
                return Err(mismatch(spec, t));
            }
            spec.check_indices(&t.bytes)?;
        }
        if outputs.len() != self.outputs.len() {
            return Err(RuntimeError::OutputMismatch {
                name: "(outputs)".into(),
                expected: format!("{} outputs", self.outputs.len()),
                got: format!("{} outputs", outputs.len()),
            });
        }
        for (spec, t) in self.outputs.iter().zip(outputs.iter()) {
            if spec.elem != t.elem
                || spec.shape != t.shape
                || t.bytes.len() != self.buffers[spec.buffer].bytes()
            {
                return Err(RuntimeError::OutputMismatch {
                    name: spec.name.clone(),
                    expected: format!("{}{:?}", spec.elem.name(), spec.shape),
                    got: format!("{}{:?} ({} bytes)", t.elem.name(), t.shape, t.bytes.len()),
                });
            }
        }
        Ok(())
    }

    /// Checks raw input and output bytes against the program's signature: their count
    /// and lengths, and the values of inputs that index.
    pub fn check_bytes(&self, inputs: &[&[u8]], outputs: &[&mut [u8]]) -> Result<(), RuntimeError> {
        if inputs.len() != self.inputs.len() {
            return Err(RuntimeError::InputCount {
                expected: self.inputs.len(),
                got: inputs.len(),
            });
        }
        for (spec, t) in self.inputs.iter().zip(inputs) {
            let want = self.buffers[spec.buffer].bytes();
            if t.len() != want {
                return Err(wrong_size(&spec.name, "bytes", want, t.len()));
            }
            spec.check_indices(t)?;
        }
        if outputs.len() != self.outputs.len() {
            return Err(wrong_size(
                "(outputs)",
                "outputs",
                self.outputs.len(),
                outputs.len(),
            ));
        }
        for (spec, o) in self.outputs.iter().zip(outputs.iter()) {
            let want = self.buffers[spec.buffer].bytes();
            if o.len() != want {
                return Err(wrong_size(&spec.name, "output bytes", want, o.len()));
            }
        }
        Ok(())
    }

    /// Runs the program on `inputs` (in declaration order) with `arena` as scratch memory
    /// (grown to `arena_bytes` if shorter; its contents need not be zero, so one arena can
    /// serve many runs). With `profile`, the time of every launch is added to it (one
    /// entry per launch).
    pub fn run(
        &self,
        functions: &dyn Fn(usize) -> Option<KernelFn>,
        pool: &ThreadPool,
        inputs: &[&HostTensor],
        arena: &mut AlignedBytes,
        profile: Option<&mut Vec<Duration>>,
    ) -> Result<Vec<HostTensor>, RuntimeError> {
        let mut outputs = self.new_outputs();
        self.run_into(functions, pool, inputs, &mut outputs, arena, profile)?;
        Ok(outputs)
    }

    /// Zeroed tensors of the outputs' types, in declaration order: what
    /// [`Program::run_into`] writes.
    pub fn new_outputs(&self) -> Vec<HostTensor> {
        self.outputs
            .iter()
            .map(|spec| HostTensor {
                elem: spec.elem,
                shape: spec.shape.clone(),
                bytes: vec![0; self.buffers[spec.buffer].bytes()],
            })
            .collect()
    }

    /// As [`Program::run`], writing into `outputs` (an earlier run's results, or tensors
    /// of the outputs' types), so that repeated runs allocate nothing.
    pub fn run_into(
        &self,
        functions: &dyn Fn(usize) -> Option<KernelFn>,
        pool: &ThreadPool,
        inputs: &[&HostTensor],
        outputs: &mut [HostTensor],
        arena: &mut AlignedBytes,
        profile: Option<&mut Vec<Duration>>,
    ) -> Result<(), RuntimeError> {
        self.check_tensors(inputs, outputs)?;
        if arena.len() < self.arena_bytes {
            *arena = AlignedBytes::zeroed(self.arena_bytes);
        }
        let ins: Vec<&[u8]> = inputs.iter().map(|t| t.bytes.as_slice()).collect();
        let mut outs: Vec<&mut [u8]> = outputs.iter_mut().map(|t| t.bytes.as_mut_slice()).collect();
        self.run_in(
            functions,
            pool,
            &ins,
            &mut outs,
            arena.as_mut_slice(),
            profile,
        )
    }

    /// Runs the program on raw input and output bytes (in declaration order), using
    /// `arena` (64-byte aligned, at least `arena_bytes` long) as scratch memory.
    pub fn run_in(
        &self,
        functions: &dyn Fn(usize) -> Option<KernelFn>,
        pool: &ThreadPool,
        inputs: &[&[u8]],
        outputs: &mut [&mut [u8]],
        arena: &mut [u8],
        mut profile: Option<&mut Vec<Duration>>,
    ) -> Result<(), RuntimeError> {
        self.check_bytes(inputs, outputs)?;
        if arena.len() < self.arena_bytes || !(arena.as_ptr() as usize).is_multiple_of(64) {
            return Err(wrong_size(
                "(scratch)",
                "bytes, 64-byte aligned",
                self.arena_bytes,
                arena.len(),
            ));
        }
        // Inputs are read and outputs written where the caller has them, without copies,
        // when their buffers are suitably aligned and none is both an input and an output
        // (or two outputs); the rest go through the arena as planned.
        let mut external: Vec<Option<*mut u8>> = vec![None; self.buffers.len()];
        let aligned = |p: *const u8| (p as usize).is_multiple_of(EXTERNAL_ALIGN);
        let mut uses = vec![0usize; self.buffers.len()];
        for spec in self.inputs.iter().chain(&self.outputs) {
            uses[spec.buffer] += 1;
        }
        let in_arena = |b: usize| matches!(self.buffers[b].place, Place::Arena { .. });
        for (spec, t) in self.inputs.iter().zip(inputs) {
            if uses[spec.buffer] == 1 && in_arena(spec.buffer) && aligned(t.as_ptr()) {
                // Never written: no launch writes a graph input's buffer.
                external[spec.buffer] = Some(t.as_ptr().cast_mut());
            }
        }
        // Callers through the C ABI may pass an output that overlaps an input; such an
        // output is written in the arena and copied out at the end, as the plan has it.
        let overlaps_input = |o: &[u8]| {
            let (lo, hi) = (o.as_ptr() as usize, o.as_ptr() as usize + o.len());
            inputs.iter().any(|t| {
                let (a, b) = (t.as_ptr() as usize, t.as_ptr() as usize + t.len());
                a < hi && lo < b
            })
        };
        for (spec, o) in self.outputs.iter().zip(outputs.iter_mut()) {
            if uses[spec.buffer] == 1
                && in_arena(spec.buffer)
                && aligned(o.as_ptr())
                && !overlaps_input(o)
            {
                external[spec.buffer] = Some(o.as_mut_ptr());
            }
        }
        let base = arena.as_mut_ptr();
        for (spec, t) in self.inputs.iter().zip(inputs) {
            if external[spec.buffer].is_none() {
                let off = self.arena_offset(spec.buffer);
                arena[off..off + t.len()].copy_from_slice(t);
            }
        }
        let mem = Memory {
            arena: base,
            external: &external,
        };
        if let Some(p) = profile.as_deref_mut() {
            p.resize(self.launches.len(), Duration::ZERO);
        }
        for (li, launch) in self.launches.iter().enumerate() {
            // Timed only when profiling (a clock read per launch shows in recurrences).
            let start = profile.is_some().then(Instant::now);
            self.launch(li, launch, functions, pool, &mem)?;
            if let (Some(p), Some(start)) = (profile.as_deref_mut(), start) {
                p[li] += start.elapsed();
            }
        }
        for (spec, o) in self.outputs.iter().zip(outputs.iter_mut()) {
            if external[spec.buffer].is_some() {
                continue;
            }
            let b = &self.buffers[spec.buffer];
            let bytes = b.bytes();
            let src = match b.place {
                Place::Arena { offset } => &arena[offset..offset + bytes],
                Place::Constant { offset } => &self.constants.as_slice()[offset..offset + bytes],
            };
            o.copy_from_slice(src);
        }
        Ok(())
    }

    fn arena_offset(&self, buffer: usize) -> usize {
        match self.buffers[buffer].place {
            Place::Arena { offset } => offset,
            Place::Constant { .. } => unreachable!("inputs live in the arena"),
        }
    }

    fn ptr(&self, mem: &Memory, buffer: usize) -> *mut u8 {
        if let Some(p) = mem.external[buffer] {
            return p;
        }
        match self.buffers[buffer].place {
            // SAFETY (both): offsets and sizes were planned inside the allocations.
            Place::Arena { offset } => unsafe { mem.arena.add(offset) },
            Place::Constant { offset } => unsafe { self.constants.base().add(offset) },
        }
    }

    fn launch(
        &self,
        index: usize,
        launch: &Launch,
        functions: &dyn Fn(usize) -> Option<KernelFn>,
        pool: &ThreadPool,
        mem: &Memory,
    ) -> Result<(), RuntimeError> {
        let fail = |reason: String| RuntimeError::Kernel {
            name: launch.name().to_string(),
            reason,
        };
        match launch {
            Launch::Loop {
                function,
                args,
                extent,
                min_chunk,
                ..
            } => {
                let f = functions(*function)
                    .ok_or_else(|| fail(format!("no code for function {function}")))?;
                // On the stack for the usual few parameters: a launch is ~1 us for the
                // small kernels of an unrolled recurrence, where an allocation shows.
                let mut stack = [std::ptr::null_mut(); 16];
                let heap: Vec<*mut u8>;
                let pointers: &[*mut u8] = if args.len() <= stack.len() {
                    for (slot, &b) in stack.iter_mut().zip(args) {
                        *slot = self.ptr(mem, b);
                    }
                    &stack[..args.len()]
                } else {
                    heap = args.iter().map(|&b| self.ptr(mem, b)).collect();
                    &heap
                };
                let args = Args(pointers);
                let body = |r: std::ops::Range<usize>| {
                    let a = &args;
                    // SAFETY: the kernel reads and writes inside its planned buffers.
                    unsafe { f(a.0.as_ptr(), r.start as i64, r.end as i64) }
                };
                pool.run(*extent, *min_chunk, &body);
            }
            Launch::MatMul {
                a,
                b,
                bias,
                out,
                a_shape,
                b_shape,
                trans_a,
                trans_b,
                b_packed,
                activation,
                ..
            } => {
                // One call for either float type: the operands' slices as `$t`.
                macro_rules! matmul_as {
                    ($t:ty) => {{
                        let (av, bv, bias, ov) = self.slices::<$t>(mem, *a, *b, *bias, *out);
                        let (a, b) = (
                            MatrixOperand::new(av, a_shape, *trans_a),
                            MatrixOperand::new(bv, b_shape, *trans_b),
                        );
                        batched_matmul(a, b, bias, ov, pool).map_err(|e| fail(e.to_string()))?
                    }};
                }
                match self.buffers[*out].elem {
                    ElemType::F32 if *b_packed => {
                        let [rows, k, n] = packed_product_sizes(a_shape, b_shape, *trans_b)
                            .ok_or_else(|| {
                                fail("a packed weight needs rank >= 2 operands".into())
                            })?;
                        let (av, bv, bias, ov) = self.slices::<f32>(mem, *a, *b, *bias, *out);
                        skinny_matmul(av, [rows, k, n], bv, bias, ov, pool)
                            .map_err(|e| fail(e.to_string()))?
                    }
                    _ if *b_packed => return Err(fail("a packed weight must be f32".into())),
                    ElemType::F32 => matmul_as!(f32),
                    ElemType::F64 => matmul_as!(f64),
                    e => return Err(fail(format!("matmul of {}", e.name()))),
                }
                if *activation != Activation::None {
                    if self.buffers[*out].elem != ElemType::F32 {
                        return Err(fail("a folded activation on other than f32".into()));
                    }
                    let n = self.buffers[*out].shape.iter().product::<usize>();
                    // SAFETY: the output buffer, f32 and aligned, which nothing else
                    // accesses until this launch ends.
                    let ov = unsafe {
                        std::slice::from_raw_parts_mut(self.ptr(mem, *out).cast::<f32>(), n)
                    };
                    apply_in_blocks(*activation, ov, pool);
                }
            }
            Launch::Conv {
                x,
                w,
                bias,
                out,
                geometry,
                ..
            } => match self.buffers[*out].elem {
                ElemType::F32 => {
                    let (xv, wv, bias, ov) = self.slices::<f32>(mem, *x, *w, *bias, *out);
                    let constant = matches!(self.buffers[*w].place, Place::Constant { .. });
                    let packed = constant
                        .then(|| {
                            self.packed_filters.get(index, self.launches.len(), || {
                                prepack_conv_filters(wv, geometry)
                            })
                        })
                        .flatten();
                    match packed {
                        Some(packed) => conv_prepacked(xv, wv, packed, bias, geometry, ov, pool),
                        None => conv(xv, wv, bias, geometry, ov, pool),
                    }
                    .map_err(|e: KernelError| fail(e.to_string()))?
                }
                ElemType::F64 => {
                    let (xv, wv, bias, ov) = self.slices::<f64>(mem, *x, *w, *bias, *out);
                    conv(xv, wv, bias, geometry, ov, pool)
                        .map_err(|e: KernelError| fail(e.to_string()))?
                }
                e => return Err(fail(format!("conv of {}", e.name()))),
            },
            Launch::Pool {
                x, out, geometry, ..
            } => {
                if self.buffers[*out].elem != ElemType::F32
                    || self.buffers[*x].elem != ElemType::F32
                {
                    return Err(fail("pooling of other than f32".into()));
                }
                let (xv, _, _, ov) = self.slices::<f32>(mem, *x, *x, None, *out);
                pool2d(xv, geometry, ov, pool).map_err(|e: KernelError| fail(e.to_string()))?
            }
            Launch::Resize {
                x, out, geometry, ..
            } => {
                if self.buffers[*out].elem != ElemType::F32
                    || self.buffers[*x].elem != ElemType::F32
                {
                    return Err(fail("resizing of other than f32".into()));
                }
                let (xv, _, _, ov) = self.slices::<f32>(mem, *x, *x, None, *out);
                resize2d(xv, geometry, ov, pool).map_err(|e: KernelError| fail(e.to_string()))?
            }
            Launch::Copy { src, dst, .. } => {
                let n = self.buffers[*src].bytes();
                if self.buffers[*dst].bytes() != n {
                    return Err(fail("copy between buffers of different sizes".into()));
                }
                let (s, d) = (self.ptr(mem, *src), self.ptr(mem, *dst));
                // SAFETY: distinct planned buffers of `n` bytes each.
                unsafe { std::ptr::copy(s, d, n) };
            }
        }
        Ok(())
    }

    /// Typed views of a contraction's operands. The output never overlaps an operand:
    /// the memory plan keeps buffers that are live together apart.
    #[allow(clippy::type_complexity)]
    fn slices<'a, T>(
        &self,
        mem: &Memory,
        a: usize,
        b: usize,
        bias: Option<usize>,
        out: usize,
    ) -> (&'a [T], &'a [T], Option<&'a [T]>, &'a mut [T]) {
        let view = |buf: usize| {
            let n = self.buffers[buf].shape.iter().product::<usize>();
            (self.ptr(mem, buf).cast::<T>(), n)
        };
        let (pa, na) = view(a);
        let (pb, nb) = view(b);
        let (po, no) = view(out);
        // SAFETY: aligned (arena offsets are multiples of 64, caller bytes used in place
        // of 16), in bounds, and `out` is disjoint from the operands (the plan keeps live
        // buffers apart; a caller output overlapping an input stays in the arena), so the
        // one mutable view aliases nothing.
        unsafe {
            (
                std::slice::from_raw_parts(pa, na),
                std::slice::from_raw_parts(pb, nb),
                bias.map(|bb| {
                    let (p, n) = view(bb);
                    std::slice::from_raw_parts(p as *const T, n)
                }),
                std::slice::from_raw_parts_mut(po, no),
            )
        }
    }
}
