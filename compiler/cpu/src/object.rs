//! Ahead of time: the kernels, the manifest, the constants and the model descriptor of
//! one model in a relocatable object file (`cranelift-object`), through the same code
//! generation as the JIT.
//!
//! Symbols: `smelt_<name>_model()` returns the descriptor (`SmeltModel` in
//! `smelt-bundle`); with `main`, the object also defines the C `main` of an executable,
//! which calls `smelt_exe_main`. Everything else is local to the object, so objects of
//! several models link together.

use crate::{CpuError, codegen};
use cranelift_codegen::ir::{AbiParam, InstBuilder, types};
use cranelift_codegen::isa::TargetIsa;
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::{DataDescription, Linkage, Module, default_libcall_names};
use cranelift_object::{ObjectBuilder, ObjectModule};
use smelt_fuse::kernel::Kernel;
use std::sync::Arc;

/// The x86-64 level the code is generated for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuTarget {
    /// This machine's features.
    Native,
    /// SSE4.2, POPCNT.
    X86_64V2,
    /// V2 plus AVX, AVX2, FMA, BMI1/2, LZCNT.
    X86_64V3,
    /// V3 plus AVX-512 F/DQ/VL.
    X86_64V4,
}

/// Cranelift's flag and cpuid's name of each feature, by level.
const V2: &[(&str, &str)] = &[
    ("has_sse3", "sse3"),
    ("has_ssse3", "ssse3"),
    ("has_sse41", "sse4.1"),
    ("has_sse42", "sse4.2"),
    ("has_popcnt", "popcnt"),
];
const V3: &[(&str, &str)] = &[
    ("has_avx", "avx"),
    ("has_avx2", "avx2"),
    ("has_fma", "fma"),
    ("has_bmi1", "bmi1"),
    ("has_bmi2", "bmi2"),
    ("has_lzcnt", "lzcnt"),
];
const V4: &[(&str, &str)] = &[
    ("has_avx512f", "avx512f"),
    ("has_avx512dq", "avx512dq"),
    ("has_avx512vl", "avx512vl"),
];

impl CpuTarget {
    pub fn parse(s: &str) -> Option<CpuTarget> {
        Some(match s {
            "native" => CpuTarget::Native,
            "x86-64-v2" => CpuTarget::X86_64V2,
            "x86-64-v3" => CpuTarget::X86_64V3,
            "x86-64-v4" => CpuTarget::X86_64V4,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            CpuTarget::Native => "native",
            CpuTarget::X86_64V2 => "x86-64-v2",
            CpuTarget::X86_64V3 => "x86-64-v3",
            CpuTarget::X86_64V4 => "x86-64-v4",
        }
    }

    fn flags(self) -> Vec<(&'static str, &'static str)> {
        let levels: &[&[(&str, &str)]] = match self {
            CpuTarget::X86_64V2 => &[V2],
            CpuTarget::X86_64V3 => &[V2, V3],
            CpuTarget::X86_64V4 => &[V2, V3, V4],
            CpuTarget::Native => &[V2, V3, V4],
        };
        let all = levels.iter().flat_map(|l| l.iter().copied());
        if self == CpuTarget::Native {
            all.filter(|(_, cpuid)| smelt_runtime::cpu_features::has_feature(cpuid))
                .collect()
        } else {
            all.collect()
        }
    }

    /// The cpuid names of the features the generated code may use (what a deployed
    /// executable checks at start).
    pub fn features(self) -> Vec<String> {
        self.flags()
            .into_iter()
            .map(|(_, c)| c.to_string())
            .collect()
    }

    /// Whether the code may use FMA.
    pub fn fma(self) -> bool {
        self.flags().iter().any(|(_, c)| *c == "fma")
    }

    fn isa(self) -> Result<Arc<dyn TargetIsa>, CpuError> {
        let mut flags = settings::builder();
        let set = |f: &mut settings::Builder, k: &str, v: &str| {
            f.set(k, v)
                .map_err(|e| CpuError::Codegen(format!("setting {k}: {e}")))
        };
        set(&mut flags, "opt_level", "speed")?;
        // Position-independent, so the object links into PIE executables and shared code.
        set(&mut flags, "is_pic", "true")?;
        let mut builder = cranelift_codegen::isa::lookup(target_lexicon::Triple::host())
            .map_err(|e| CpuError::Codegen(e.to_string()))?;
        for (flag, _) in self.flags() {
            builder
                .enable(flag)
                .map_err(|e| CpuError::Codegen(format!("{flag}: {e}")))?;
        }
        builder
            .finish(settings::Flags::new(flags))
            .map_err(|e| CpuError::Codegen(e.to_string()))
    }
}

/// What goes into a model's object file.
#[derive(Debug)]
pub struct ObjectParts<'a> {
    /// The C identifier part of the symbols (`smelt_<name>_model`).
    pub name: &'a str,
    pub kernels: &'a [&'a Kernel],
    pub manifest: &'a [u8],
    pub constants: &'a [u8],
    /// Also define `main` (for an executable).
    pub main: bool,
}

/// The layout version of the descriptor (`smelt_bundle::ABI_VERSION`).
pub const DESCRIPTOR_ABI: u64 = 1;

fn err(e: impl std::fmt::Display) -> CpuError {
    CpuError::Codegen(e.to_string())
}

/// Generates the relocatable object of a model.
pub fn emit_object(parts: &ObjectParts, target: CpuTarget) -> Result<Vec<u8>, CpuError> {
    let name = parts.name;
    let builder = ObjectBuilder::new(
        target.isa()?,
        format!("smelt_{name}.o"),
        default_libcall_names(),
    )
    .map_err(err)?;
    let mut module = ObjectModule::new(builder);
    let mut ctx = module.make_context();
    let mut fctx = FunctionBuilderContext::new();
    let fma = target.fma();
    // Kernels.
    let mut funcs = Vec::with_capacity(parts.kernels.len());
    for (i, k) in parts.kernels.iter().enumerate() {
        let Some(nest) = k.loop_nest() else {
            funcs.push(None);
            continue;
        };
        ctx.func.signature = codegen::kernel_signature(&module);
        let id = module
            .declare_function(
                &format!("smelt_{name}_k{i}_{}", k.name),
                Linkage::Local,
                &ctx.func.signature,
            )
            .map_err(err)?;
        codegen::build(&mut module, &mut ctx.func, &mut fctx, k, nest, fma)?;
        module
            .define_function(id, &mut ctx)
            .map_err(|e| CpuError::Codegen(format!("{}: {e:?}", k.name)))?;
        module.clear_context(&mut ctx);
        funcs.push(Some(id));
    }
    // Data: manifest, constants (64-byte aligned), kernel table, descriptor.
    let data = |module: &mut ObjectModule, sym: &str, bytes: &[u8], align: u64| {
        let id = module
            .declare_data(sym, Linkage::Local, false, false)
            .map_err(err)?;
        let mut d = DataDescription::new();
        // An empty blob still needs an address.
        d.define(if bytes.is_empty() {
            vec![0u8].into_boxed_slice()
        } else {
            bytes.into()
        });
        d.set_align(align);
        module.define_data(id, &d).map_err(err)?;
        Ok::<_, CpuError>(id)
    };
    let manifest = data(
        &mut module,
        &format!("smelt_{name}_manifest"),
        parts.manifest,
        8,
    )?;
    let constants = data(
        &mut module,
        &format!("smelt_{name}_constants"),
        parts.constants,
        64,
    )?;
    let table = module
        .declare_data(
            &format!("smelt_{name}_kernels"),
            Linkage::Local,
            false,
            false,
        )
        .map_err(err)?;
    let mut d = DataDescription::new();
    d.define(vec![0u8; 8 * funcs.len().max(1)].into_boxed_slice());
    d.set_align(8);
    for (i, f) in funcs.iter().enumerate() {
        if let Some(f) = f {
            let r = module.declare_func_in_data(*f, &mut d);
            d.write_function_addr((8 * i) as u32, r);
        }
    }
    module.define_data(table, &d).map_err(err)?;
    let desc = module
        .declare_data(
            &format!("smelt_{name}_descriptor"),
            Linkage::Local,
            false,
            false,
        )
        .map_err(err)?;
    let mut d = DataDescription::new();
    let mut bytes = Vec::with_capacity(56);
    for v in [
        DESCRIPTOR_ABI,
        0,
        parts.manifest.len() as u64,
        0,
        parts.constants.len() as u64,
        0,
        parts.kernels.len() as u64,
    ] {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    d.define(bytes.into_boxed_slice());
    d.set_align(8);
    for (offset, target) in [(8u32, manifest), (24, constants), (40, table)] {
        let gv = module.declare_data_in_data(target, &mut d);
        d.write_data_addr(offset, gv, 0);
    }
    module.define_data(desc, &d).map_err(err)?;
    // `smelt_<name>_model()`: the descriptor's address.
    let mut sig = module.make_signature();
    sig.returns.push(AbiParam::new(types::I64));
    let accessor = module
        .declare_function(&format!("smelt_{name}_model"), Linkage::Export, &sig)
        .map_err(err)?;
    ctx.func.signature = sig;
    {
        let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
        let block = b.create_block();
        b.switch_to_block(block);
        let gv = module.declare_data_in_func(desc, b.func);
        let addr = b.ins().symbol_value(types::I64, gv);
        b.ins().return_(&[addr]);
        b.seal_all_blocks();
        b.finalize();
    }
    module.define_function(accessor, &mut ctx).map_err(err)?;
    module.clear_context(&mut ctx);
    if parts.main {
        // int main(int argc, char **argv) { return smelt_exe_main(argc, argv, &desc); }
        let mut sig = module.make_signature();
        sig.params.push(AbiParam::new(types::I32));
        sig.params.push(AbiParam::new(types::I64));
        sig.returns.push(AbiParam::new(types::I32));
        let main = module
            .declare_function("main", Linkage::Export, &sig)
            .map_err(err)?;
        let mut callee = sig.clone();
        callee.params.push(AbiParam::new(types::I64));
        let exe_main = module
            .declare_function("smelt_exe_main", Linkage::Import, &callee)
            .map_err(err)?;
        ctx.func.signature = sig;
        {
            let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
            let block = b.create_block();
            b.append_block_params_for_function_params(block);
            b.switch_to_block(block);
            let (argc, argv) = (b.block_params(block)[0], b.block_params(block)[1]);
            let gv = module.declare_data_in_func(desc, b.func);
            let addr = b.ins().symbol_value(types::I64, gv);
            let f = module.declare_func_in_func(exe_main, b.func);
            let call = b.ins().call(f, &[argc, argv, addr]);
            let status = b.inst_results(call)[0];
            b.ins().return_(&[status]);
            b.seal_all_blocks();
            b.finalize();
        }
        module.define_function(main, &mut ctx).map_err(err)?;
        module.clear_context(&mut ctx);
    }
    module.finish().emit().map_err(err)
}
