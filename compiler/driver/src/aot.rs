//! Ahead of time: `smelt compile` — a model into a standalone executable, a static
//! library with a C header, or a bare object file.
//!
//! The object comes from `smelt_cpu::object`; the runtime is the `smelt-bundle` static
//! library, built with this crate (build.rs) and embedded in it, so the `smelt` binary
//! needs no other file. Linking uses the system's `cc` (and `ar` for libraries).

use crate::compile::lower_graph;
use crate::{CpuTarget, GpuOptions};
use crate::{Model, Result, SmeltError};
use smelt_cpu::object::{ObjectParts, emit_object};
use smelt_onnx::ImportOptions;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The runtime library linked into every deployable.
pub static RUNTIME_LIBRARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/libsmelt_bundle.a"));

/// The runtime library with the CUDA device, for models compiled for a GPU.
#[cfg(feature = "cuda")]
pub static RUNTIME_LIBRARY_CUDA: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/libsmelt_bundle_cuda.a"));

/// What `smelt compile` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emit {
    /// A standalone executable.
    Exe,
    /// `libNAME.a` (the model and the runtime) and `NAME.h`.
    Lib,
    /// `NAME.o` (the model only) and `NAME.h`.
    Obj,
}

impl Emit {
    pub fn parse(s: &str) -> Option<Emit> {
        Some(match s {
            "exe" => Emit::Exe,
            "lib" => Emit::Lib,
            "obj" => Emit::Obj,
            _ => return None,
        })
    }
}

/// Options of an ahead-of-time compilation.
#[derive(Debug, Clone)]
pub struct AotOptions {
    pub emit: Emit,
    pub cpu: CpuTarget,
    /// The deployable's default thread count (`None`: every core of the machine it runs on).
    pub threads: Option<usize>,
    pub input_shapes: HashMap<String, Vec<usize>>,
    pub optimize: bool,
    /// `Target::Cuda` embeds the PTX; the deployable needs the NVIDIA driver and a GPU.
    pub target: crate::Target,
    pub gpu: GpuOptions,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Artifacts {
    /// The C identifier of the model (`smelt_<name>_model`).
    pub name: String,
    pub files: Vec<PathBuf>,
    pub kernels: usize,
    pub constant_bytes: usize,
    pub scratch_bytes: usize,
}

/// The model's C name from the output path: its stem without `lib`, as an identifier.
fn c_name(out: &Path, emit: Emit) -> String {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = match emit {
        Emit::Lib => stem.strip_prefix("lib").unwrap_or(&stem).to_string(),
        _ => stem,
    };
    let mut name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert_str(0, "model_");
    }
    name
}

fn io_err(what: &str, p: &Path, e: std::io::Error) -> SmeltError {
    SmeltError::Compile(format!("{what} {}: {e}", p.display()))
}

fn run_tool(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().map_err(|e| {
        SmeltError::Compile(format!("{what}: cannot run {:?}: {e}", cmd.get_program()))
    })?;
    if !out.status.success() {
        return Err(SmeltError::Compile(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).replace('\n', " ")
        )));
    }
    Ok(())
}

/// The system libraries a Rust static library needs on Linux.
pub const SYSTEM_LIBS: &[&str] = &[
    "-lgcc_s",
    "-lutil",
    "-lrt",
    "-lpthread",
    "-lm",
    "-ldl",
    "-lc",
];

impl Model {
    /// Compiles the model ahead of time into `out` (see [`Emit`]).
    pub fn compile_to(&self, out: &Path, opts: &AotOptions) -> Result<Artifacts> {
        if opts.threads == Some(0) {
            return Err(SmeltError::Compile("--threads must be at least 1".into()));
        }
        let imported = self.import(&ImportOptions {
            input_shapes: opts.input_shapes.clone(),
            ..Default::default()
        })?;
        let mut graph = imported.graph;
        crate::compile::optimize_or_specialize(&mut graph, opts.optimize)?;
        let gpu = match opts.target {
            crate::Target::Cpu => false,
            crate::Target::Cuda => true,
            crate::Target::GpuEmulator => {
                return Err(SmeltError::Compile(
                    "the GPU emulator is for checking the compiler; deployables target cpu or cuda"
                        .into(),
                ));
            }
        };
        let runtime_library = runtime_library(gpu)?;
        let lowered = lower_graph(
            &mut graph,
            &imported.input_names,
            &imported.output_names,
            opts.target.lowering(),
        )?;
        let program = &lowered.program;
        let name = c_name(out, opts.emit);
        // A GPU model's host code is the runtime alone: it needs no CPU features.
        let cpu_features = if gpu { Vec::new() } else { opts.cpu.features() };
        let mut manifest = program.manifest(
            &self.info().graph_name,
            opts.cpu.name(),
            &cpu_features,
            opts.threads.unwrap_or(0) as u32,
        );
        let cpu_kernels = if gpu {
            let module = smelt_gpu::compile(&lowered.function_kernels(), &opts.gpu.0)?;
            manifest.gpu = Some(smelt_runtime::manifest::GpuProto {
                arch: module.arch.clone(),
                ptx: module.ptx,
                symbols: module.kernels.iter().map(|k| k.symbol.clone()).collect(),
                threads: module.kernels.iter().map(|k| k.threads).collect(),
            });
            Vec::new()
        } else {
            lowered.function_kernels()
        };
        let manifest = manifest.encode_bytes();
        let object = emit_object(
            &ObjectParts {
                name: &name,
                kernels: &cpu_kernels,
                manifest: &manifest,
                constants: program.constants.as_slice(),
                main: opts.emit == Emit::Exe,
            },
            opts.cpu.0,
        )?;
        let dir = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| io_err("creating", dir, e))?;
        let header_path = dir.join(format!("{name}.h"));
        let mut files = Vec::new();
        match opts.emit {
            Emit::Obj => {
                std::fs::write(out, &object).map_err(|e| io_err("writing", out, e))?;
                files.push(out.to_path_buf());
            }
            Emit::Lib | Emit::Exe => {
                let tmp = scratch_dir(out)?;
                let obj_path = tmp.join(format!("{name}.o"));
                let lib_path = tmp.join("libsmelt_runtime.a");
                std::fs::write(&obj_path, &object).map_err(|e| io_err("writing", &obj_path, e))?;
                std::fs::write(&lib_path, runtime_library)
                    .map_err(|e| io_err("writing", &lib_path, e))?;
                let result = if opts.emit == Emit::Lib {
                    write_library(out, &object, &name, runtime_library)
                } else {
                    run_tool(
                        Command::new("cc")
                            .arg("-o")
                            .arg(out)
                            .arg(&obj_path)
                            .arg(&lib_path)
                            .arg("-Wl,--as-needed")
                            .args(SYSTEM_LIBS),
                        "linking with cc",
                    )
                };
                let _ = std::fs::remove_dir_all(&tmp);
                result?;
                files.push(out.to_path_buf());
            }
        }
        if opts.emit != Emit::Exe {
            std::fs::write(&header_path, header(&name, program, opts))
                .map_err(|e| io_err("writing", &header_path, e))?;
            files.push(header_path);
        }
        Ok(Artifacts {
            name,
            files,
            kernels: lowered.kernels.len(),
            constant_bytes: program.constants.as_slice().len(),
            scratch_bytes: program.arena_bytes,
        })
    }
}

static OBJECT_READER: ar_archive_writer::ObjectReader = ar_archive_writer::DEFAULT_OBJECT_READER;

/// `libNAME.a`: the runtime library's members plus the model's object, with a symbol
/// index written as rustc writes it (GNU `ar` re-indexing mangles Rust archives).
fn write_library(out: &Path, object: &[u8], name: &str, runtime: &[u8]) -> Result<()> {
    let bad = |e: &dyn std::fmt::Display| SmeltError::Compile(format!("runtime library: {e}"));
    let archive = object::read::archive::ArchiveFile::parse(runtime).map_err(|e| bad(&e))?;
    let mut members = Vec::new();
    for m in archive.members() {
        let m = m.map_err(|e| bad(&e))?;
        let data = m.data(runtime).map_err(|e| bad(&e))?;
        let member_name = String::from_utf8_lossy(m.name()).into_owned();
        members.push(ar_archive_writer::NewArchiveMember::new(
            data,
            &OBJECT_READER,
            member_name,
        ));
    }
    members.push(ar_archive_writer::NewArchiveMember::new(
        object,
        &OBJECT_READER,
        format!("{name}.o"),
    ));
    let mut buf = std::io::Cursor::new(Vec::new());
    ar_archive_writer::write_archive_to_stream(
        &mut buf,
        &members,
        ar_archive_writer::ArchiveKind::Gnu,
        false,
        None,
    )
    .map_err(|e| bad(&e))?;
    std::fs::write(out, buf.into_inner()).map_err(|e| io_err("writing", out, e))
}

/// The runtime library a deployable links: the one with the CUDA device for GPU models.
fn runtime_library(gpu: bool) -> Result<&'static [u8]> {
    if !gpu {
        return Ok(RUNTIME_LIBRARY);
    }
    #[cfg(feature = "cuda")]
    return Ok(RUNTIME_LIBRARY_CUDA);
    #[cfg(not(feature = "cuda"))]
    Err(smelt_gpu::GpuError::NotBuilt.into())
}

/// A private directory next to the output for intermediate files.
fn scratch_dir(out: &Path) -> Result<PathBuf> {
    let dir = out.with_extension(format!("smelt-tmp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| io_err("creating", &dir, e))?;
    Ok(dir)
}

fn shape_text(shape: &[usize]) -> String {
    shape
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The C header of a compiled model.
fn header(name: &str, program: &smelt_runtime::program::Program, opts: &AotOptions) -> String {
    let guard = format!("SMELT_{}_H", name.to_ascii_uppercase());
    let io = |specs: &[smelt_runtime::program::IoSpec]| {
        specs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                format!(
                    " *   {i}: {} {}[{}]\n",
                    s.name,
                    s.elem.name(),
                    shape_text(&s.shape)
                )
            })
            .collect::<String>()
    };
    format!(
        r#"/* {name}.h: the C interface of a model compiled by smelt {version} (cpu: {cpu}).
 *
 * Inputs:
{inputs} * Outputs:
{outputs} * Tensors are row-major, their elements of the dtype listed. Constants: {constants} bytes
 * (inside the library); scratch per run: {scratch} bytes.
 *
 * Every function returning int returns SMELT_OK (0) or an error code; smelt_last_error()
 * then describes the failure. Nothing aborts.
 */
#ifndef {guard}
#define {guard}

#include <stddef.h>

#ifdef __cplusplus
extern "C" {{
#endif

/* This model. */
const struct smelt_model *smelt_{name}_model(void);

#ifndef SMELT_API
#define SMELT_API
/* A compiled model (static data) and a session that runs it. */
typedef struct smelt_model smelt_model;
typedef struct smelt_session smelt_session;

/* Element types (smelt_input_dtype / smelt_output_dtype). */
enum {{ SMELT_F16 = 0, SMELT_BF16, SMELT_F32, SMELT_F64, SMELT_I8, SMELT_I16, SMELT_I32,
       SMELT_I64, SMELT_U8, SMELT_U16, SMELT_U32, SMELT_U64, SMELT_BOOL }};
/* Status codes. */
enum {{ SMELT_OK = 0, SMELT_ERR_ARGUMENT = 1, SMELT_ERR_MODEL = 2, SMELT_ERR_RUN = 3 }};

/* The message of this thread's last failure ("" if none). */
const char *smelt_last_error(void);

/* Inputs and outputs: count, name, dtype, shape (rank written to *rank). */
size_t smelt_num_inputs(const smelt_model *model);
size_t smelt_num_outputs(const smelt_model *model);
const char *smelt_input_name(const smelt_model *model, size_t i);
const char *smelt_output_name(const smelt_model *model, size_t i);
int smelt_input_dtype(const smelt_model *model, size_t i);
int smelt_output_dtype(const smelt_model *model, size_t i);
const size_t *smelt_input_shape(const smelt_model *model, size_t i, size_t *rank);
const size_t *smelt_output_shape(const smelt_model *model, size_t i, size_t *rank);
/* Bytes of the weights (in the binary) and of the scratch memory a run needs. */
size_t smelt_constant_bytes(const smelt_model *model);
size_t smelt_scratch_bytes(const smelt_model *model);

/* The common case: a session owns its threads (0: default) and scratch memory. */
int smelt_create(const smelt_model *model, int threads, smelt_session **session);
/* inputs[i] / outputs[i]: the elements of input / output i, in model order. */
int smelt_run(smelt_session *session, const void *const *inputs, void *const *outputs);
void smelt_destroy(smelt_session *session);

/* For callers who manage memory: scratch is smelt_scratch_bytes() bytes, 64-byte aligned. */
int smelt_run_with_scratch(const smelt_model *model, const void *const *inputs,
                           void *const *outputs, void *scratch, int threads);
#endif /* SMELT_API */

#ifdef __cplusplus
}}
#endif

#endif /* {guard} */
"#,
        version = env!("CARGO_PKG_VERSION"),
        cpu = opts.cpu.name(),
        inputs = io(&program.inputs),
        outputs = io(&program.outputs),
        constants = program.constants.as_slice().len(),
        scratch = program.arena_bytes,
    )
}
