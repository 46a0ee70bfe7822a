//! The CPU back end: Kernel IR loop nests to Cranelift IR to machine code (JIT).
//!
//! Each kernel with a loop nest (a loop kernel, or a contraction's epilogue) becomes one
//! function `fn(args: *const *mut u8, begin: i64, end: i64)`: `args` holds one pointer per
//! kernel parameter and `[begin, end)` is the share of the outer range this call computes.
//! Contractions themselves run in the runtime's microkernels.

pub mod codegen;
pub mod math;
pub mod object;

use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::FunctionBuilderContext;
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{Linkage, Module, default_libcall_names};
use smelt_fuse::kernel::Kernel;
use thiserror::Error;

#[derive(Debug, Error, PartialEq)]
pub enum CpuError {
    #[error("cpu code generation: {0}")]
    Codegen(String),
    #[error("the cpu back end does not support {0}")]
    Unsupported(String),
}

/// The generated entry point of a kernel.
pub type KernelFn = unsafe extern "C" fn(args: *const *mut u8, begin: i64, end: i64);

fn isa() -> Result<std::sync::Arc<dyn cranelift_codegen::isa::TargetIsa>, CpuError> {
    let mut flags = settings::builder();
    let set = |f: &mut settings::Builder, k: &str, v: &str| {
        f.set(k, v)
            .map_err(|e| CpuError::Codegen(format!("setting {k}: {e}")))
    };
    set(&mut flags, "opt_level", "speed")?;
    set(&mut flags, "is_pic", "false")?;
    let builder = cranelift_native::builder().map_err(|e| CpuError::Codegen(e.to_string()))?;
    builder
        .finish(settings::Flags::new(flags))
        .map_err(|e| CpuError::Codegen(e.to_string()))
}

/// Machine code for a list of kernels, owned for as long as the functions may run.
pub struct JitCode {
    module: Option<JITModule>,
    functions: Vec<Option<KernelFn>>,
}

impl std::fmt::Debug for JitCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JitCode")
            .field("functions", &self.functions.len())
            .finish()
    }
}

// SAFETY: after `finalize_definitions` the module is never mutated again; it only owns
// the executable memory, which any thread may run.
unsafe impl Send for JitCode {}
unsafe impl Sync for JitCode {}

impl JitCode {
    /// The function of kernel `i` (None for a contraction without epilogue).
    pub fn function(&self, i: usize) -> Option<KernelFn> {
        self.functions.get(i).copied().flatten()
    }
}

impl Drop for JitCode {
    fn drop(&mut self) {
        if let Some(m) = self.module.take() {
            // SAFETY: the functions are only reachable through `self`, which is going away.
            unsafe { m.free_memory() };
        }
    }
}

/// Compiles every kernel's loop nest into one JIT module.
pub fn compile(kernels: &[&Kernel]) -> Result<JitCode, CpuError> {
    let mut jb = JITBuilder::with_isa(isa()?, default_libcall_names());
    for (name, ptr) in smelt_runtime::mathfns::symbols() {
        jb.symbol(name, ptr);
    }
    let mut module = JITModule::new(jb);
    let mut ctx = module.make_context();
    let mut fctx = FunctionBuilderContext::new();
    let fma = codegen::host_fma();
    let mut ids = Vec::with_capacity(kernels.len());
    for k in kernels {
        let Some(nest) = k.loop_nest() else {
            ids.push(None);
            continue;
        };
        ctx.func.signature = codegen::kernel_signature(&module);
        let id = module
            .declare_function(&k.name, Linkage::Local, &ctx.func.signature)
            .map_err(|e| CpuError::Codegen(format!("{}: {e}", k.name)))?;
        codegen::build(&mut module, &mut ctx.func, &mut fctx, k, nest, fma)?;
        module
            .define_function(id, &mut ctx)
            .map_err(|e| CpuError::Codegen(format!("{}: {e:?}", k.name)))?;
        module.clear_context(&mut ctx);
        ids.push(Some(id));
    }
    module
        .finalize_definitions()
        .map_err(|e| CpuError::Codegen(e.to_string()))?;
    let functions = ids
        .iter()
        .map(|id| {
            id.map(|id| {
                let p = module.get_finalized_function(id);
                // SAFETY: the function was built with `kernel_signature`, the KernelFn ABI.
                unsafe { std::mem::transmute::<*const u8, KernelFn>(p) }
            })
        })
        .collect();
    Ok(JitCode {
        module: Some(module),
        functions,
    })
}

/// The CLIF text of a kernel's loop nest (empty for a bare contraction), as generated
/// for this host before Cranelift optimizes it.
pub fn clif(kernel: &Kernel) -> Result<String, CpuError> {
    clif_for(kernel, codegen::host_fma())
}

/// As [`clif`], choosing whether FMA is used (so that snapshots do not depend on the host).
pub fn clif_for(kernel: &Kernel, fma: bool) -> Result<String, CpuError> {
    let Some(nest) = kernel.loop_nest() else {
        return Ok(String::new());
    };
    let jb = JITBuilder::with_isa(isa()?, default_libcall_names());
    let mut module = JITModule::new(jb);
    let mut ctx = module.make_context();
    let mut fctx = FunctionBuilderContext::new();
    ctx.func.signature = codegen::kernel_signature(&module);
    ctx.func.name = cranelift_codegen::ir::UserFuncName::testcase(&kernel.name);
    codegen::build(&mut module, &mut ctx.func, &mut fctx, kernel, nest, fma)?;
    Ok(ctx.func.display().to_string())
}
