//! The runtime as linked into deployables: a C ABI over compiled models (queries,
//! create/run/destroy, a run on caller-allocated memory) and the executable's `main`.
//!
//! A compiled model is a `SmeltModel` descriptor emitted by `smelt compile`: its
//! manifest (the serialized `Program`), its constants and its kernel table. Every entry
//! point reports failure as a status code; `smelt_last_error` gives the message.

mod exe;
#[cfg(feature = "cuda")]
mod gpu;

use smelt_runtime::manifest::ManifestProto;
use smelt_runtime::program::{AlignedBytes, Constants, KernelFn, Program};
use smelt_runtime::threads::ThreadPool;
use std::cell::RefCell;
use std::ffi::{CString, c_char, c_int, c_void};
use std::sync::{Mutex, OnceLock};

pub use exe::smelt_exe_main;

/// The ABI version of [`SmeltModel`]; the compiler writes it, the runtime checks it.
pub const ABI_VERSION: u64 = 1;

pub const SMELT_OK: c_int = 0;
pub const SMELT_ERR_ARGUMENT: c_int = 1;
pub const SMELT_ERR_MODEL: c_int = 2;
pub const SMELT_ERR_RUN: c_int = 3;

/// A compiled model as `smelt compile` lays it out in the object file.
#[repr(C)]
#[derive(Debug)]
pub struct SmeltModel {
    pub abi_version: u64,
    pub manifest: *const u8,
    pub manifest_len: u64,
    pub constants: *const u8,
    pub constants_len: u64,
    /// One entry per kernel; null for a contraction without an epilogue.
    pub kernels: *const Option<KernelFn>,
    pub kernel_count: u64,
}

/// A decoded model, kept for the life of the process (models are static data).
#[derive(Debug)]
pub struct Loaded {
    pub manifest: ManifestProto,
    pub program: Program,
    kernels: &'static [Option<KernelFn>],
    /// Input then output names, NUL-terminated for C.
    names: Vec<CString>,
    /// Input then output shapes.
    shapes: Vec<Vec<usize>>,
    /// A model compiled for an NVIDIA GPU runs there instead.
    #[cfg(feature = "cuda")]
    gpu: Option<gpu::GpuModel>,
}

impl Loaded {
    pub fn function(&self, i: usize) -> Option<KernelFn> {
        self.kernels.get(i).copied().flatten()
    }

    pub fn run(
        &self,
        pool: &ThreadPool,
        inputs: &[&[u8]],
        outputs: &mut [&mut [u8]],
        arena: &mut [u8],
    ) -> Result<(), String> {
        #[cfg(feature = "cuda")]
        if let Some(g) = &self.gpu {
            return g.run(inputs, outputs);
        }
        let f = |i: usize| self.function(i);
        self.program
            .run_in(&f, pool, inputs, outputs, arena, None)
            .map_err(|e| e.to_string())
    }
}

struct Registry(Vec<(usize, &'static Loaded)>);

fn registry() -> &'static Mutex<Registry> {
    static R: OnceLock<Mutex<Registry>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(Registry(Vec::new())))
}

/// Decodes (once) the model a descriptor points at.
///
/// # Safety
/// `desc` must point at a descriptor emitted by `smelt compile` (or be null).
pub unsafe fn load(desc: *const SmeltModel) -> Result<&'static Loaded, String> {
    if desc.is_null() {
        return Err("null model".into());
    }
    let mut reg = registry().lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, l)) = reg.0.iter().find(|(a, _)| *a == desc as usize) {
        return Ok(l);
    }
    // SAFETY: the caller vouches for the descriptor; its pointers are static data.
    let d = unsafe { &*desc };
    if d.abi_version != ABI_VERSION {
        return Err(format!(
            "model built for runtime ABI {}, this runtime has {ABI_VERSION}",
            d.abi_version
        ));
    }
    let (manifest_bytes, constants, kernels) = unsafe {
        (
            std::slice::from_raw_parts(d.manifest, d.manifest_len as usize),
            std::slice::from_raw_parts(d.constants, d.constants_len as usize),
            std::slice::from_raw_parts(d.kernels, d.kernel_count as usize),
        )
    };
    let manifest = ManifestProto::decode_bytes(manifest_bytes)?;
    let constants = if (constants.as_ptr() as usize).is_multiple_of(64) {
        Constants::Static(constants)
    } else {
        let mut b = AlignedBytes::zeroed(constants.len());
        b.as_mut_slice().copy_from_slice(constants);
        Constants::Owned(b)
    };
    let program = Program::from_manifest(&manifest, constants)?;
    #[cfg(feature = "cuda")]
    let gpu = match &manifest.gpu {
        Some(g) => Some(gpu::GpuModel::new(&program, g)?),
        None => None,
    };
    #[cfg(not(feature = "cuda"))]
    if manifest.gpu.is_some() {
        return Err(
            "the model was compiled for a GPU but this runtime library has no CUDA support (link the one `smelt compile --target cuda` embeds)"
                .into(),
        );
    }
    let io = program.inputs.iter().chain(&program.outputs);
    let names = io
        .clone()
        .map(|s| CString::new(s.name.replace('\0', "")).expect("NULs removed"))
        .collect();
    let shapes = io.map(|s| s.shape.clone()).collect();
    let loaded: &'static Loaded = Box::leak(Box::new(Loaded {
        manifest,
        program,
        kernels,
        names,
        shapes,
        #[cfg(feature = "cuda")]
        gpu,
    }));
    reg.0.push((desc as usize, loaded));
    Ok(loaded)
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn fail(code: c_int, msg: impl Into<String>) -> c_int {
    let msg = msg.into().replace('\0', " ");
    LAST_ERROR.with(|e| *e.borrow_mut() = CString::new(msg).expect("NULs removed"));
    code
}

/// The message of this thread's last failed call (empty if none). Valid until the next
/// failing call on this thread.
#[unsafe(no_mangle)]
pub extern "C" fn smelt_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

fn with_model<T>(desc: *const SmeltModel, default: T, f: impl FnOnce(&'static Loaded) -> T) -> T {
    // SAFETY: the C contract: `desc` comes from a `smelt_<name>_model()` accessor.
    match unsafe { load(desc) } {
        Ok(m) => f(m),
        Err(e) => {
            fail(SMELT_ERR_MODEL, e);
            default
        }
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn smelt_num_inputs(model: *const SmeltModel) -> usize {
    with_model(model, 0, |m| m.program.inputs.len())
}

#[unsafe(no_mangle)]
pub extern "C" fn smelt_num_outputs(model: *const SmeltModel) -> usize {
    with_model(model, 0, |m| m.program.outputs.len())
}

/// Index into the input-then-output lists, or None when out of range.
fn io_index(m: &Loaded, output: bool, i: usize) -> Option<usize> {
    let n_in = m.program.inputs.len();
    let n = if output {
        m.program.outputs.len()
    } else {
        n_in
    };
    (i < n).then_some(if output { n_in + i } else { i })
}

fn io_name(model: *const SmeltModel, output: bool, i: usize) -> *const c_char {
    with_model(model, std::ptr::null(), |m| match io_index(m, output, i) {
        Some(k) => m.names[k].as_ptr(),
        None => {
            fail(
                SMELT_ERR_ARGUMENT,
                format!("no {} {i}", if output { "output" } else { "input" }),
            );
            std::ptr::null()
        }
    })
}

fn io_dtype(model: *const SmeltModel, output: bool, i: usize) -> c_int {
    with_model(model, -1, |m| match io_index(m, output, i) {
        Some(k) => {
            let spec = if output {
                &m.program.outputs[k - m.program.inputs.len()]
            } else {
                &m.program.inputs[k]
            };
            dtype_code(spec.elem)
        }
        None => {
            fail(SMELT_ERR_ARGUMENT, format!("no tensor {i}"));
            -1
        }
    })
}

fn io_shape(model: *const SmeltModel, output: bool, i: usize, rank: *mut usize) -> *const usize {
    with_model(model, std::ptr::null(), |m| match io_index(m, output, i) {
        Some(k) => {
            if !rank.is_null() {
                // SAFETY: the caller passes a writable size_t or null.
                unsafe { *rank = m.shapes[k].len() };
            }
            m.shapes[k].as_ptr()
        }
        None => {
            fail(SMELT_ERR_ARGUMENT, format!("no tensor {i}"));
            std::ptr::null()
        }
    })
}

/// The element type codes of `smelt.h` (`SMELT_F32` ...), in `ElemType::ALL` order.
pub fn dtype_code(e: smelt_runtime::ElemType) -> c_int {
    smelt_runtime::ElemType::ALL
        .iter()
        .position(|&x| x == e)
        .map_or(-1, |p| p as c_int)
}

#[unsafe(no_mangle)]
pub extern "C" fn smelt_input_name(model: *const SmeltModel, i: usize) -> *const c_char {
    io_name(model, false, i)
}

#[unsafe(no_mangle)]
pub extern "C" fn smelt_output_name(model: *const SmeltModel, i: usize) -> *const c_char {
    io_name(model, true, i)
}

#[unsafe(no_mangle)]
pub extern "C" fn smelt_input_dtype(model: *const SmeltModel, i: usize) -> c_int {
    io_dtype(model, false, i)
}

#[unsafe(no_mangle)]
pub extern "C" fn smelt_output_dtype(model: *const SmeltModel, i: usize) -> c_int {
    io_dtype(model, true, i)
}

/// The shape of input `i` (its rank written to `*rank`); null on error.
#[unsafe(no_mangle)]
pub extern "C" fn smelt_input_shape(
    model: *const SmeltModel,
    i: usize,
    rank: *mut usize,
) -> *const usize {
    io_shape(model, false, i, rank)
}

#[unsafe(no_mangle)]
pub extern "C" fn smelt_output_shape(
    model: *const SmeltModel,
    i: usize,
    rank: *mut usize,
) -> *const usize {
    io_shape(model, true, i, rank)
}

/// Bytes of the model's constants (weights), which live in the binary.
#[unsafe(no_mangle)]
pub extern "C" fn smelt_constant_bytes(model: *const SmeltModel) -> usize {
    with_model(model, 0, |m| m.program.constants.as_slice().len())
}

/// Bytes of scratch memory a run needs (64-byte aligned), for `smelt_run_with_scratch`.
#[unsafe(no_mangle)]
pub extern "C" fn smelt_scratch_bytes(model: *const SmeltModel) -> usize {
    with_model(model, 0, |m| m.program.arena_bytes)
}

/// A model ready to run: its thread pool and scratch memory.
#[derive(Debug)]
pub struct SmeltSession {
    model: &'static Loaded,
    pool: ThreadPool,
    arena: Mutex<AlignedBytes>,
}

fn threads_or_default(m: &Loaded, threads: c_int) -> usize {
    if threads > 0 {
        threads as usize
    } else if m.manifest.threads > 0 {
        m.manifest.threads as usize
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// Creates a session with `threads` threads (0: the compiled default, else every core).
///
/// # Safety
/// `model` comes from a `smelt_<name>_model()` accessor; `out` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smelt_create(
    model: *const SmeltModel,
    threads: c_int,
    out: *mut *mut SmeltSession,
) -> c_int {
    if out.is_null() {
        return fail(SMELT_ERR_ARGUMENT, "smelt_create: null output pointer");
    }
    let m = match unsafe { load(model) } {
        Ok(m) => m,
        Err(e) => return fail(SMELT_ERR_MODEL, e),
    };
    let s = Box::new(SmeltSession {
        model: m,
        pool: ThreadPool::new(threads_or_default(m, threads)),
        arena: Mutex::new(AlignedBytes::zeroed(m.program.arena_bytes)),
    });
    unsafe { *out = Box::into_raw(s) };
    SMELT_OK
}

/// Input and output bytes of one run.
type Buffers<'a> = (Vec<&'a [u8]>, Vec<&'a mut [u8]>);

/// Gathers the caller's buffers as slices of the sizes the model declares.
///
/// # Safety
/// `inputs` and `outputs` hold one pointer per input/output, each to as many bytes as
/// that tensor has.
unsafe fn buffers<'a>(
    m: &Loaded,
    inputs: *const *const c_void,
    outputs: *const *mut c_void,
) -> Result<Buffers<'a>, String> {
    if inputs.is_null() && !m.program.inputs.is_empty() || outputs.is_null() {
        return Err("null buffer list".into());
    }
    let p = &m.program;
    let mut ins = Vec::with_capacity(p.inputs.len());
    for (i, spec) in p.inputs.iter().enumerate() {
        let ptr = unsafe { *inputs.add(i) };
        if ptr.is_null() {
            return Err(format!("input {} is null", spec.name));
        }
        ins.push(unsafe {
            std::slice::from_raw_parts(ptr.cast::<u8>(), p.buffers[spec.buffer].bytes())
        });
    }
    let mut outs = Vec::with_capacity(p.outputs.len());
    for (i, spec) in p.outputs.iter().enumerate() {
        let ptr = unsafe { *outputs.add(i) };
        if ptr.is_null() {
            return Err(format!("output {} is null", spec.name));
        }
        outs.push(unsafe {
            std::slice::from_raw_parts_mut(ptr.cast::<u8>(), p.buffers[spec.buffer].bytes())
        });
    }
    Ok((ins, outs))
}

/// Runs the model: `inputs[i]` points at input i's elements (row-major, its declared
/// dtype and shape), `outputs[i]` at room for output i's.
///
/// # Safety
/// `session` comes from `smelt_create`; the buffers are as described.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smelt_run(
    session: *mut SmeltSession,
    inputs: *const *const c_void,
    outputs: *const *mut c_void,
) -> c_int {
    if session.is_null() {
        return fail(SMELT_ERR_ARGUMENT, "smelt_run: null session");
    }
    let s = unsafe { &*session };
    let (ins, mut outs) = match unsafe { buffers(s.model, inputs, outputs) } {
        Ok(b) => b,
        Err(e) => return fail(SMELT_ERR_ARGUMENT, e),
    };
    let mut arena = s.arena.lock().unwrap_or_else(|e| e.into_inner());
    match s.model.run(&s.pool, &ins, &mut outs, arena.as_mut_slice()) {
        Ok(()) => SMELT_OK,
        Err(e) => fail(SMELT_ERR_RUN, e),
    }
}

/// Runs the model in caller-provided scratch memory (`smelt_scratch_bytes` bytes,
/// 64-byte aligned) on `threads` threads (0: default), with no allocation of the
/// arena by the runtime.
///
/// # Safety
/// As `smelt_run`; `scratch` points at that many writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smelt_run_with_scratch(
    model: *const SmeltModel,
    inputs: *const *const c_void,
    outputs: *const *mut c_void,
    scratch: *mut c_void,
    threads: c_int,
) -> c_int {
    let m = match unsafe { load(model) } {
        Ok(m) => m,
        Err(e) => return fail(SMELT_ERR_MODEL, e),
    };
    let n = m.program.arena_bytes;
    if scratch.is_null() && n > 0 {
        return fail(SMELT_ERR_ARGUMENT, "smelt_run_with_scratch: null scratch");
    }
    let (ins, mut outs) = match unsafe { buffers(m, inputs, outputs) } {
        Ok(b) => b,
        Err(e) => return fail(SMELT_ERR_ARGUMENT, e),
    };
    let mut empty = AlignedBytes::zeroed(0);
    let arena: &mut [u8] = if n == 0 {
        empty.as_mut_slice()
    } else {
        unsafe { std::slice::from_raw_parts_mut(scratch.cast::<u8>(), n) }
    };
    let pool = ThreadPool::new(threads_or_default(m, threads));
    match m.run(&pool, &ins, &mut outs, arena) {
        Ok(()) => SMELT_OK,
        Err(e) => fail(SMELT_ERR_RUN, e),
    }
}

/// Frees a session (null is ignored).
///
/// # Safety
/// `session` comes from `smelt_create` and is not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smelt_destroy(session: *mut SmeltSession) {
    if !session.is_null() {
        drop(unsafe { Box::from_raw(session) });
    }
}
