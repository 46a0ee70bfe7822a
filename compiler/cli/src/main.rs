//! The `smelt` command: inspect, run, explain and benchmark ONNX models.

mod bench;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand};
use smelt::Model;
use smelt::Tensor;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "smelt",
    version,
    about = "A neural-network compiler: ONNX in, native code out"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a model's IR version, opsets, inputs and outputs, ops and parameters.
    Inspect {
        /// The ONNX model file.
        model: PathBuf,
    },
    /// Run a model on .npy inputs and write .npy outputs.
    Run {
        /// The ONNX model file.
        model: PathBuf,
        /// An input as NAME=FILE.npy (repeatable).
        #[arg(long = "input", value_name = "NAME=FILE")]
        inputs: Vec<String>,
        /// Where to write an output, as NAME=FILE.npy (repeatable).
        #[arg(
            long = "output",
            value_name = "NAME=FILE",
            conflicts_with = "output_dir"
        )]
        outputs: Vec<String>,
        /// Write every output into DIR, named after the output.
        #[arg(long, value_name = "DIR")]
        output_dir: Option<PathBuf>,
        /// Pin an input's shape, as NAME=1,3,224,224 (repeatable).
        #[arg(long = "input-shape", value_name = "NAME=DIMS")]
        input_shapes: Vec<String>,
        /// Run on the reference interpreter instead of compiled code.
        #[arg(long)]
        reference: bool,
        /// Skip the optimizer.
        #[arg(long)]
        no_opt: bool,
        /// Threads for compiled code (default: every available core).
        #[arg(long)]
        threads: Option<usize>,
        /// Where the code runs: cpu, cuda (an NVIDIA GPU; needs a build with the
        /// feature `cuda`) or gpu-emulator (the GPU kernels run on this CPU, for checking).
        #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda", "gpu-emulator"])]
        target: String,
        #[command(flatten)]
        gpu: GpuArgs,
    },
    /// Compile a model into a standalone executable, a static library with a C header,
    /// or an object file.
    Compile {
        /// The ONNX model file.
        model: PathBuf,
        /// The file to write (for `lib`, `libNAME.a`; the header `NAME.h` goes beside it).
        #[arg(short = 'o', long = "output", value_name = "OUT")]
        output: PathBuf,
        /// What to write.
        #[arg(long, default_value = "exe", value_parser = ["exe", "lib", "obj"])]
        emit: String,
        /// Pin an input's shape, as NAME=1,3,224,224 (repeatable); every shape must be known.
        #[arg(long = "input-shape", value_name = "NAME=DIMS")]
        input_shapes: Vec<String>,
        /// The CPU the code is for.
        #[arg(long, default_value = "native", value_parser = ["native", "x86-64-v2", "x86-64-v3", "x86-64-v4"])]
        cpu: String,
        /// The deployable's default thread count (default: every core where it runs).
        #[arg(long)]
        threads: Option<usize>,
        /// Skip the optimizer.
        #[arg(long)]
        no_opt: bool,
        /// Where the code runs: cpu, or cuda (the deployable embeds PTX and needs the
        /// NVIDIA driver and a GPU where it runs; a build with the feature `cuda`).
        #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda"])]
        target: String,
        #[command(flatten)]
        gpu: GpuArgs,
    },
    /// Measure a model's latency on compiled code.
    Bench {
        /// The ONNX model file.
        model: PathBuf,
        /// An input as NAME=FILE.npy (repeatable); inputs not given are generated.
        #[arg(long = "input", value_name = "NAME=FILE")]
        inputs: Vec<String>,
        /// Pin an input's shape, as NAME=1,3,224,224 (repeatable).
        #[arg(long = "input-shape", value_name = "NAME=DIMS")]
        input_shapes: Vec<String>,
        /// Threads (default: every available core).
        #[arg(long)]
        threads: Option<usize>,
        /// Timed runs.
        #[arg(long, default_value_t = 50)]
        iterations: usize,
        /// Untimed runs first.
        #[arg(long, default_value_t = 5)]
        warmup: usize,
        /// Also print the time per kernel.
        #[arg(long)]
        profile: bool,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Where the code runs: cpu, cuda (an NVIDIA GPU; needs a build with the
        /// feature `cuda`) or gpu-emulator (the GPU kernels run on this CPU, for checking).
        #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda", "gpu-emulator"])]
        target: String,
        #[command(flatten)]
        gpu: GpuArgs,
    },
    /// Print the graph at a compilation stage and what the optimizer did.
    Explain {
        /// The ONNX model file.
        model: PathBuf,
        /// The stage to print: import (as imported), opt (after the optimizer), fuse (the
        /// kernels fusion plans), kernel (their Kernel IR), clif (their Cranelift IR), llvm
        /// (the GPU kernels' LLVM IR) or ptx (the whole PTX module, exactly as ptxas takes
        /// it). llvm and ptx need a build with the feature `cuda`.
        #[arg(long, default_value = "opt", value_parser = ["import", "opt", "fuse", "kernel", "clif", "llvm", "ptx"])]
        stage: String,
        /// The Kernel IR of which target (kernel stage; llvm and ptx imply cuda).
        #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda"])]
        target: String,
        #[command(flatten)]
        gpu: GpuArgs,
        /// Pin an input's shape, as NAME=1,3,224,224 (repeatable).
        #[arg(long = "input-shape", value_name = "NAME=DIMS")]
        input_shapes: Vec<String>,
        /// Print constants in full (the text then parses back).
        #[arg(long)]
        full_constants: bool,
    },
}

/// Which engine `smelt run` uses.
#[derive(Debug, Clone)]
enum Engine {
    Reference,
    Compiled {
        threads: Option<usize>,
        target: smelt::Target,
        gpu: smelt::GpuOptions,
    },
}

/// The GPU code generator's flags, shared by every command that compiles.
#[derive(Debug, clap::Args)]
struct GpuArgs {
    /// The GPU architecture (for --target cuda, and the llvm and ptx stages).
    #[arg(long, default_value = "sm_90", value_name = "sm_XX")]
    gpu_arch: String,
    /// libdevice.10.bc, the CUDA math library, for kernels that call exp, tanh, erf, ...
    /// (default: SMELT_LIBDEVICE, then CUDA_HOME, CUDA_PATH, /usr/local/cuda).
    #[arg(long, value_name = "FILE")]
    libdevice: Option<PathBuf>,
}

impl GpuArgs {
    fn options(&self) -> smelt::GpuOptions {
        smelt::GpuOptions::new(self.gpu_arch.clone(), self.libdevice.clone())
    }
}

fn target(name: &str) -> Result<smelt::Target> {
    smelt::Target::parse(name).ok_or_else(|| anyhow!("--target: unknown target '{name}'"))
}

pub(crate) fn split_pair<'a>(arg: &'a str, flag: &str) -> Result<(&'a str, &'a str)> {
    arg.split_once('=')
        .filter(|(k, v)| !k.is_empty() && !v.is_empty())
        .ok_or_else(|| anyhow!("{flag} expects NAME=VALUE, got '{arg}'"))
}

fn inspect(path: &PathBuf) -> Result<()> {
    let model = Model::load(path)?;
    let info = model.info();
    println!("model: {}", path.display());
    println!("ir_version: {}", info.ir_version);
    let opsets: Vec<String> = info
        .opsets
        .iter()
        .map(|(d, v)| format!("{d} {v}"))
        .collect();
    println!("opsets: {}", opsets.join(", "));
    println!(
        "producer: {}",
        if info.producer.is_empty() {
            "(none)"
        } else {
            &info.producer
        }
    );
    println!("graph: {}", info.graph_name);
    println!("inputs:");
    for i in &info.inputs {
        println!("  {}: {}[{}]", i.name, i.dtype, i.dims.join(", "));
    }
    println!("outputs:");
    for o in &info.outputs {
        println!("  {}: {}[{}]", o.name, o.dtype, o.dims.join(", "));
    }
    println!("ops ({} nodes):", info.op_histogram.values().sum::<usize>());
    for (op, count) in &info.op_histogram {
        println!("  {op}: {count}");
    }
    println!(
        "parameters: {} ({} bytes)",
        info.parameter_count, info.parameter_bytes
    );
    if info.unsupported.is_empty() {
        println!("unsupported ops: none");
        Ok(())
    } else {
        let list: Vec<String> = info.unsupported.iter().map(|u| u.to_string()).collect();
        println!("unsupported ops: {}", list.join(", "));
        bail!("unsupported ops: {}", list.join(", "))
    }
}

pub(crate) fn parse_shapes(input_shapes: &[String]) -> Result<HashMap<String, Vec<usize>>> {
    let mut shapes = HashMap::new();
    for arg in input_shapes {
        let (name, dims) = split_pair(arg, "--input-shape")?;
        let dims = dims
            .split(',')
            .map(|d| {
                d.trim()
                    .parse::<usize>()
                    .with_context(|| format!("--input-shape {name}: bad dimension '{d}'"))
            })
            .collect::<Result<Vec<_>>>()?;
        shapes.insert(name.to_string(), dims);
    }
    Ok(shapes)
}

fn explain(
    path: &PathBuf,
    stage: &str,
    input_shapes: &[String],
    full_constants: bool,
    target: smelt::Target,
    gpu: smelt::GpuOptions,
) -> Result<()> {
    let model = Model::load(path)?;
    let stage = smelt::ExplainStage::parse(stage)
        .ok_or_else(|| anyhow!("--stage: unknown stage '{stage}'"))?;
    let text = model.explain_text(
        stage,
        &smelt::ExplainOptions {
            input_shapes: parse_shapes(input_shapes)?,
            full_constants,
            target,
            gpu,
        },
    )?;
    print!("{text}");
    Ok(())
}

/// The options of `smelt compile`, checked.
fn aot_options(
    emit: &str,
    input_shapes: &[String],
    cpu: &str,
    threads: Option<usize>,
    optimize: bool,
    target: smelt::Target,
    gpu: smelt::GpuOptions,
) -> Result<smelt::aot::AotOptions> {
    use smelt::aot::{AotOptions, Emit};
    Ok(AotOptions {
        emit: Emit::parse(emit).ok_or_else(|| anyhow!("--emit: unknown kind '{emit}'"))?,
        cpu: smelt::CpuTarget::parse(cpu)
            .ok_or_else(|| anyhow!("--cpu: unknown target '{cpu}'"))?,
        threads,
        input_shapes: parse_shapes(input_shapes)?,
        optimize,
        target,
        gpu,
    })
}

fn compile(path: &PathBuf, output: &std::path::Path, opts: &smelt::aot::AotOptions) -> Result<()> {
    let model = Model::load(path)?;
    let a = model.compile_to(output, opts)?;
    for f in &a.files {
        println!("wrote {}", f.display());
    }
    let runs_on = if opts.target == smelt::Target::Cuda {
        format!("cuda {}", opts.gpu.arch())
    } else {
        format!("cpu {}", opts.cpu.name())
    };
    println!(
        "model smelt_{}_model: {} kernels, {} bytes of constants, {} bytes of scratch, {runs_on}",
        a.name, a.kernels, a.constant_bytes, a.scratch_bytes
    );
    Ok(())
}

fn run(
    path: &PathBuf,
    inputs: &[String],
    outputs: &[String],
    output_dir: Option<&PathBuf>,
    input_shapes: &[String],
    optimize: bool,
    engine: Engine,
) -> Result<()> {
    let model = Model::load(path)?;
    let mut feeds = Vec::new();
    for arg in inputs {
        let (name, file) = split_pair(arg, "--input")?;
        feeds.push((name.to_string(), Tensor::read_npy(file.as_ref())?.0));
    }
    let shapes = parse_shapes(input_shapes)?;
    let mut targets = HashMap::new();
    for arg in outputs {
        let (name, file) = split_pair(arg, "--output")?;
        targets.insert(name.to_string(), PathBuf::from(file));
    }
    let results = match engine {
        Engine::Reference => {
            model.run_reference(&feeds, &shapes, &smelt::RunOptions { optimize })?
        }
        Engine::Compiled {
            threads,
            target,
            gpu,
        } => model
            .compile(&smelt::Options {
                threads,
                optimize,
                input_shapes: shapes,
                target,
                gpu,
            })?
            .run_named(&feeds)?,
    };
    for name in targets.keys() {
        if !results.iter().any(|(n, _)| n == name) {
            let names: Vec<&str> = results.iter().map(|(n, _)| n.as_str()).collect();
            bail!(
                "output '{name}': the model has no such output (outputs: {})",
                names.join(", ")
            );
        }
    }
    if let Some(dir) = output_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    for (name, t) in results {
        let t = Tensor(t);
        let dest = match (targets.get(&name), output_dir) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(dir)) => Some(dir.join(smelt::output_file_name(&name))),
            (None, None) => None,
        };
        if let Some(dest) = dest {
            t.write_npy(&dest)?;
        }
        println!("{}", t.summary(&name));
    }
    Ok(())
}

/// Applies `SMELT_MEMORY_LIMIT` (bytes, or with a K, M, G or T suffix), the most one value
/// or one run's arena may take; 16G when unset.
fn memory_limit_from_env() -> Result<()> {
    let Some(text) = std::env::var_os("SMELT_MEMORY_LIMIT") else {
        return Ok(());
    };
    let text = text.to_string_lossy();
    let bytes = smelt::parse_bytes(&text).ok_or_else(|| {
        anyhow::anyhow!("SMELT_MEMORY_LIMIT must be a byte count such as 8G, got '{text}'")
    })?;
    smelt::set_memory_limit(bytes);
    Ok(())
}

fn main() -> ExitCode {
    // Output piped into `head` and closed early ends the process quietly, as for any
    // Unix tool, instead of a panic in `println!`.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    if let Err(e) = memory_limit_from_env() {
        eprintln!("smelt: error: {e:#}");
        return ExitCode::from(2);
    }
    let result = match &cli.command {
        Command::Inspect { model } => inspect(model),
        Command::Run {
            model,
            inputs,
            outputs,
            output_dir,
            input_shapes,
            reference,
            no_opt,
            threads,
            target: target_name,
            gpu,
        } => target(target_name).and_then(|target| {
            run(
                model,
                inputs,
                outputs,
                output_dir.as_ref(),
                input_shapes,
                !no_opt,
                if *reference {
                    Engine::Reference
                } else {
                    Engine::Compiled {
                        threads: *threads,
                        target,
                        gpu: gpu.options(),
                    }
                },
            )
        }),
        Command::Compile {
            model,
            output,
            emit,
            input_shapes,
            cpu,
            threads,
            no_opt,
            target: target_name,
            gpu,
        } => target(target_name).and_then(|target| {
            let opts = aot_options(
                emit,
                input_shapes,
                cpu,
                *threads,
                !no_opt,
                target,
                gpu.options(),
            )?;
            compile(model, output, &opts)
        }),
        Command::Bench {
            model,
            inputs,
            input_shapes,
            threads,
            iterations,
            warmup,
            profile,
            json,
            target: target_name,
            gpu,
        } => target(target_name).and_then(|target| {
            bench::bench(&bench::BenchArgs {
                model,
                inputs,
                input_shapes,
                threads: *threads,
                iterations: *iterations,
                warmup: *warmup,
                profile: *profile,
                json: *json,
                target,
                gpu: gpu.options(),
            })
        }),
        Command::Explain {
            model,
            stage,
            input_shapes,
            full_constants,
            target: target_name,
            gpu,
        } => target(target_name).and_then(|target| {
            explain(
                model,
                stage,
                input_shapes,
                *full_constants,
                target,
                gpu.options(),
            )
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the whole cause chain, newlines folded.
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("smelt: error: {msg}");
            ExitCode::from(2)
        }
    }
}
