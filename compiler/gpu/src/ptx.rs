//! Module-level steps: emit every kernel, link libdevice, optimize, and write PTX (or,
//! for the emulator, JIT-compile the host flavor).

use crate::codegen::{Flavor, emit_kernel};
use crate::{GpuError, GpuKernelCode, GpuModule, GpuOptions, libdevice_path, symbol};
use inkwell::OptimizationLevel;
use inkwell::context::Context;
use inkwell::execution_engine::ExecutionEngine;
use inkwell::module::{Linkage, Module};
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{
    CodeModel, FileType, InitializationConfig, RelocMode, Target, TargetMachine, TargetTriple,
};
use smelt_fuse::Kernel;

fn llvm(e: impl ToString) -> GpuError {
    GpuError::Llvm(e.to_string())
}

fn nvptx_machine(options: &GpuOptions) -> Result<TargetMachine, GpuError> {
    options.arch_number()?;
    Target::initialize_nvptx(&InitializationConfig::default());
    let triple = TargetTriple::create("nvptx64-nvidia-cuda");
    let target = Target::from_triple(&triple).map_err(llvm)?;
    // PTX ISA 8.0 (CUDA 12.0) covers every architecture up to sm_90.
    target
        .create_target_machine(
            &triple,
            &options.arch,
            "+ptx80",
            OptimizationLevel::Aggressive,
            RelocMode::Default,
            CodeModel::Default,
        )
        .ok_or_else(|| {
            llvm(format!(
                "LLVM has no NVPTX target machine for {}",
                options.arch
            ))
        })
}

/// Generates the PTX module of `kernels` (loop kernels; see `smelt_fuse::LowerTarget`).
pub fn compile(kernels: &[&Kernel], options: &GpuOptions) -> Result<GpuModule, GpuError> {
    let machine = nvptx_machine(options)?;
    let ctx = Context::create();
    let module = ctx.create_module("smelt");
    module.set_triple(&machine.get_triple());
    module.set_data_layout(&machine.get_target_data().get_data_layout());
    let mut entries = Vec::with_capacity(kernels.len());
    for k in kernels {
        let sym = symbol(k);
        let threads = emit_kernel(&ctx, &module, k, &sym, Flavor::Nvptx)?;
        entries.push(GpuKernelCode {
            symbol: sym,
            threads,
        });
    }
    module.verify().map_err(llvm)?;
    let llvm_ir = module.print_to_string().to_string();
    link_libdevice(&ctx, &module, options)?;
    // Everything but the kernels is internal, so what the kernels do not call goes.
    let mut f = module.get_first_function();
    while let Some(func) = f {
        let name = func.get_name().to_string_lossy().into_owned();
        if func.count_basic_blocks() > 0 && !entries.iter().any(|e| e.symbol == name) {
            func.set_linkage(Linkage::Internal);
        }
        f = func.get_next_function();
    }
    module
        .run_passes("default<O3>", &machine, PassBuilderOptions::create())
        .map_err(llvm)?;
    let buffer = machine
        .write_to_memory_buffer(&module, FileType::Assembly)
        .map_err(llvm)?;
    let ptx = String::from_utf8_lossy(buffer.as_slice())
        .trim_end_matches('\0')
        .to_string();
    Ok(GpuModule {
        arch: options.arch.clone(),
        llvm_ir,
        ptx,
        kernels: entries,
    })
}

/// Links libdevice into `module` when a kernel calls one of its functions.
fn link_libdevice<'ctx>(
    ctx: &'ctx Context,
    module: &Module<'ctx>,
    options: &GpuOptions,
) -> Result<(), GpuError> {
    let mut needs = false;
    let mut f = module.get_first_function();
    while let Some(func) = f {
        needs |= func.get_name().to_bytes().starts_with(b"__nv_");
        f = func.get_next_function();
    }
    if !needs {
        return Ok(());
    }
    let path = libdevice_path(options).ok_or(GpuError::NoLibdevice)?;
    let lib = Module::parse_bitcode_from_path(&path, ctx).map_err(|e| GpuError::Libdevice {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    // libdevice is built for a generic NVPTX triple; take the module's.
    lib.set_triple(&module.get_triple());
    lib.set_data_layout(&module.get_data_layout());
    module.link_in_module(lib).map_err(llvm)
}

/// Kernels compiled for this CPU: the emulator's code (see [`crate::emulate`]).
pub struct HostCode {
    /// Keeps the code alive; only the function addresses are used.
    _engine: ExecutionEngine<'static>,
    /// Entry of every kernel: `(args, first, stride)`.
    pub functions: Vec<HostKernel>,
}

impl std::fmt::Debug for HostCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostCode({} kernels)", self.functions.len())
    }
}

// SAFETY: after construction the engine is only dropped; the functions are plain
// machine code that reads its arguments, so calls from any thread are fine.
unsafe impl Send for HostCode {}
unsafe impl Sync for HostCode {}

/// A kernel's host entry: `(pointer to the buffer pointers, first thread, stride)`.
pub type HostKernel = unsafe extern "C" fn(*const *mut u8, i64, i64);

/// JIT-compiles `kernels` for the host with the code generator's host flavor.
pub fn host_code(kernels: &[&Kernel]) -> Result<(HostCode, Vec<GpuKernelCode>), GpuError> {
    Target::initialize_native(&InitializationConfig::default()).map_err(llvm)?;
    // The engine borrows its context for as long as the code lives; the code lives as
    // long as the emulator, so the context is leaked (a few kilobytes per compile).
    let ctx: &'static Context = Box::leak(Box::new(Context::create()));
    let module = ctx.create_module("smelt_host");
    let mut entries = Vec::with_capacity(kernels.len());
    for k in kernels {
        let sym = symbol(k);
        let threads = emit_kernel(ctx, &module, k, &sym, Flavor::Host)?;
        entries.push(GpuKernelCode {
            symbol: sym,
            threads,
        });
    }
    module.verify().map_err(llvm)?;
    let engine = module
        .create_jit_execution_engine(OptimizationLevel::Default)
        .map_err(llvm)?;
    // The runtime's helpers by address, so nothing is looked up in the process.
    for (name, addr) in smelt_runtime::mathfns::symbols() {
        if let Some(f) = module.get_function(name) {
            engine.add_global_mapping(&f, addr as usize);
        }
    }
    let mut functions = Vec::with_capacity(entries.len());
    for e in &entries {
        let addr = engine.get_function_address(&e.symbol).map_err(llvm)?;
        // SAFETY: the function was emitted with exactly this signature.
        functions.push(unsafe { std::mem::transmute::<usize, HostKernel>(addr) });
    }
    Ok((
        HostCode {
            _engine: engine,
            functions,
        },
        entries,
    ))
}
