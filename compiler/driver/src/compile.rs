//! The compile pipeline of one shape signature: optimize, plan fusion and its buffer
//! layout, lower to Kernel IR, assemble the runtime `Program` (`program.rs`) and generate
//! code for it.

use crate::program::{IoNames, build_program};
use crate::{GpuOptions, SmeltError, Target};
use smelt_fuse::{FusionPlan, Layout, LoweredKernel};
use smelt_ir::{Graph, Op, ValueId};
use smelt_runtime::HostTensor;
use smelt_runtime::program::{AlignedBytes, Launch, Program};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Generated code: CPU functions, or a GPU program with the device it is resident on.
pub(crate) enum Code {
    Cpu(Box<smelt_cpu::JitCode>),
    Gpu(Box<Mutex<GpuRun>>),
}

impl std::fmt::Debug for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Code::Cpu(c) => c.fmt(f),
            Code::Gpu(_) => f.write_str("Gpu"),
        }
    }
}

/// A program on a device: the launches, the device, and its memory there.
pub(crate) struct GpuRun {
    program: smelt_runtime::gpu::GpuProgram,
    device: Box<dyn smelt_runtime::gpu::Device + Send>,
    resident: smelt_runtime::gpu::Resident,
}

/// Everything compiled for one shape signature.
#[derive(Debug)]
pub struct Executable {
    /// The optimized, shape-specialized graph, its constants that the program stores
    /// moved into `program` (each left an `Op::ProgramConstant` of its type).
    pub graph: Graph,
    pub plan: FusionPlan,
    pub kernels: Vec<LoweredKernel>,
    /// The kernels that got code, as indices into `kernels`: one per set of identical
    /// kernels (see `shared_functions`).
    pub functions: Vec<usize>,
    pub program: Program,
    pub target: Target,
    /// The PTX module (GPU targets; the emulator has none).
    pub gpu: Option<smelt_gpu::GpuModule>,
    pub(crate) code: Code,
    /// ONNX names of the program's inputs and outputs, in order.
    pub input_names: Vec<String>,
    pub output_names: Vec<String>,
    /// Wall time from import to runnable code.
    pub compile_time: Duration,
    /// Arenas of finished runs, reused by the next ones (one per concurrent run).
    pub(crate) scratch: Mutex<Vec<AlignedBytes>>,
}

/// The standard pipeline, or with `optimize` off only the specialization to fixed shapes,
/// which compilation needs either way.
pub(crate) fn optimize_or_specialize(graph: &mut Graph, optimize: bool) -> Result<(), SmeltError> {
    if optimize {
        smelt_opt::Pipeline::standard(Default::default()).run(graph)?;
    } else {
        smelt_opt::Pipeline::new(vec![smelt_opt::passes::by_name("specialize")?]).run(graph)?;
    }
    Ok(())
}

/// The error for an input the model does not have, listing the ones it has.
pub(crate) fn no_such_input<'a>(
    name: &str,
    inputs: impl IntoIterator<Item = &'a str>,
) -> SmeltError {
    SmeltError::Input {
        name: name.to_string(),
        reason: format!(
            "the model has no such input (inputs: {})",
            inputs.into_iter().collect::<Vec<_>>().join(", ")
        ),
    }
}

impl Executable {
    /// Optimizes (optionally) and compiles a graph whose inputs have fixed shapes; its
    /// inputs and outputs keep their value names.
    pub fn from_graph(graph: Graph, optimize: bool) -> Result<Executable, SmeltError> {
        Executable::from_graph_for(graph, optimize, Target::Cpu, &Default::default())
    }

    /// As [`Executable::from_graph`], for `target`.
    pub fn from_graph_for(
        mut graph: Graph,
        optimize: bool,
        target: Target,
        gpu: &GpuOptions,
    ) -> Result<Executable, SmeltError> {
        let started = Instant::now();
        optimize_or_specialize(&mut graph, optimize)?;
        let names = |ids: &[ValueId]| -> Vec<String> {
            ids.iter().map(|&v| graph.value(v).name.clone()).collect()
        };
        let (inputs, outputs) = (names(&graph.inputs), names(&graph.outputs));
        compile_graph(graph, inputs, outputs, started, target, gpu)
    }

    /// Runs the program; `profile` collects the time of every launch.
    pub fn run(
        &self,
        pool: &smelt_runtime::threads::ThreadPool,
        inputs: &[&HostTensor],
        profile: Option<&mut Vec<Duration>>,
    ) -> Result<Vec<HostTensor>, SmeltError> {
        let mut outputs = self.program.new_outputs();
        self.run_into(pool, inputs, &mut outputs, profile)?;
        Ok(outputs)
    }

    /// The tensors of `named` inputs in the order the program takes them.
    ///
    /// # Panics
    /// If an input the program takes is missing from `named` (callers check the names
    /// first, as [`crate::Compiled::prepare`] does).
    pub fn ordered_inputs<'a>(&self, named: &'a [(String, HostTensor)]) -> Vec<&'a HostTensor> {
        let by_name: HashMap<&str, &HostTensor> =
            named.iter().map(|(n, t)| (n.as_str(), t)).collect();
        self.input_names
            .iter()
            .map(|n| by_name[n.as_str()])
            .collect()
    }

    /// As [`Executable::run`], writing into `outputs` (an earlier run's results), so that
    /// repeated runs allocate nothing: what a serving loop, and `smelt bench`, do.
    pub fn run_into(
        &self,
        pool: &smelt_runtime::threads::ThreadPool,
        inputs: &[&HostTensor],
        outputs: &mut [HostTensor],
        profile: Option<&mut Vec<Duration>>,
    ) -> Result<(), SmeltError> {
        let code = match &self.code {
            Code::Cpu(code) => code,
            Code::Gpu(run) => {
                let mut run = run.lock().unwrap_or_else(|e| e.into_inner());
                let GpuRun {
                    program,
                    device,
                    resident,
                } = &mut *run;
                program.run_into(device.as_mut(), resident, inputs, outputs, profile)?;
                return Ok(());
            }
        };
        let functions = |i: usize| code.function(i);
        // A run takes an arena from the pool (or makes one) and gives it back, so repeated
        // runs neither allocate nor fault in fresh pages.
        let taken = self.scratch.lock().map(|mut s| s.pop()).unwrap_or(None);
        let mut arena = taken.unwrap_or_else(|| AlignedBytes::zeroed(0));
        let result = self
            .program
            .run_into(&functions, pool, inputs, outputs, &mut arena, profile);
        if let Ok(mut s) = self.scratch.lock() {
            s.push(arena);
        }
        Ok(result?)
    }

    /// Floating-point operations of the contractions (2 per multiply-add of every
    /// MatMul, Conv and ConvTranspose), the figure GFLOP/s are computed from.
    pub fn contraction_flops(&self) -> u64 {
        let g = &self.graph;
        let numel = |v: smelt_ir::ValueId| g.ty(v).num_elements().unwrap_or(0) as u64;
        g.nodes
            .iter()
            .map(|n| {
                let shape = |i: usize| g.ty(n.inputs[i]).fixed_shape().unwrap_or_default();
                match &n.op {
                    smelt_ir::Op::MatMul { trans_a, .. } => {
                        let a = shape(0);
                        let k = match (a.len(), trans_a) {
                            (0, _) => 0,
                            (1, _) => a[0],
                            (r, true) => a[r - 2],
                            (r, false) => a[r - 1],
                        };
                        2 * numel(n.outputs[0]) * k as u64
                    }
                    smelt_ir::Op::Conv { .. } => {
                        let w = shape(1);
                        let per_output: usize = w.iter().skip(1).product();
                        2 * numel(n.outputs[0]) * per_output as u64
                    }
                    smelt_ir::Op::ConvTranspose { .. } => {
                        let w = shape(1);
                        let per_input: usize = w.iter().skip(1).product();
                        2 * numel(n.inputs[0]) * per_input as u64
                    }
                    _ => 0,
                }
            })
            .sum()
    }

    /// Every launch in order, as a profile shows it: name, kind and, for a runtime
    /// MatMul or Conv, its floating-point operations.
    pub fn launch_summaries(&self) -> Vec<LaunchSummary> {
        self.program
            .launches
            .iter()
            .map(|l| LaunchSummary {
                name: l.name().to_string(),
                kind: match l {
                    Launch::Loop { .. } => "loop",
                    Launch::MatMul { .. } => "matmul",
                    Launch::Conv { .. } => "conv",
                    Launch::Copy { .. } => "copy",
                    Launch::Pool { .. } => "pool",
                    Launch::Resize { .. } => "resize",
                },
                flops: launch_flops(l),
            })
            .collect()
    }

    /// The Kernel IR of every kernel, in launch order.
    pub fn kernel_text(&self) -> String {
        self.kernels
            .iter()
            .map(|k| k.kernel.print())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// One launch of a program as a profile shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchSummary {
    pub name: String,
    /// `loop`, `matmul`, `conv`, `copy` or `pool`.
    pub kind: &'static str,
    /// Floating-point operations (2 per multiply-add) of a runtime MatMul or Conv.
    pub flops: Option<u64>,
}

/// Floating-point operations of a contraction launch (2 per multiply-add), for a
/// profile's GFLOP/s.
fn launch_flops(l: &Launch) -> Option<u64> {
    match l {
        Launch::Conv { geometry: g, .. } => {
            let out: usize = g.out_spatial().ok()?.iter().product();
            let per_output: usize = g.weight.iter().skip(1).product();
            Some(2 * (g.input[0] * g.weight[0] * out * per_output) as u64)
        }
        Launch::MatMul {
            a_shape,
            b_shape,
            trans_a,
            trans_b,
            ..
        } => {
            let (ra, rb) = (a_shape.len(), b_shape.len());
            if ra < 2 || rb < 2 {
                return None;
            }
            let (m, k) = if *trans_a {
                (a_shape[ra - 1], a_shape[ra - 2])
            } else {
                (a_shape[ra - 2], a_shape[ra - 1])
            };
            let n = if *trans_b {
                b_shape[rb - 2]
            } else {
                b_shape[rb - 1]
            };
            let batches = a_shape[..ra - 2]
                .iter()
                .product::<usize>()
                .max(b_shape[..rb - 2].iter().product::<usize>());
            Some(2 * (batches * m * n * k) as u64)
        }
        _ => None,
    }
}

/// An optimized graph planned, lowered and assembled: what the JIT and the ahead-of-time
/// path share.
pub(crate) struct Lowered {
    pub plan: FusionPlan,
    /// The views and the plan the kernels store under, as the program places them.
    pub layout: Layout,
    /// Every kernel, in launch order.
    pub kernels: Vec<LoweredKernel>,
    /// The kernels that get code, as indices into `kernels`: one of each set of identical
    /// kernels (the program's launches name their function by position in this list).
    pub functions: Vec<usize>,
    pub program: Program,
}

impl Lowered {
    /// The kernels to generate code for, in function order.
    pub fn function_kernels(&self) -> Vec<&smelt_fuse::Kernel> {
        self.functions
            .iter()
            .map(|&k| &self.kernels[k].kernel)
            .collect()
    }
}

/// Plans, lowers and assembles an optimized graph whose shapes are all fixed. The
/// graph's constants move into the program: the nodes that held them are left
/// `Op::ProgramConstant`s, so the graph can name and describe the program but not be
/// lowered or run again.
pub(crate) fn lower_graph(
    graph: &mut Graph,
    input_names: &[String],
    output_names: &[String],
    target: smelt_fuse::LowerTarget,
) -> Result<Lowered, SmeltError> {
    if let Some(n) = graph
        .nodes
        .iter()
        .find(|n| matches!(n.op, Op::ProgramConstant(_)))
    {
        return Err(SmeltError::Compile(format!(
            "node '{}' (program_constant): this graph's constants were moved into a compiled program; compile the model again",
            n.name
        )));
    }
    for v in &graph.values {
        if v.ty.fixed_shape().is_none() {
            return Err(SmeltError::Compile(format!(
                "value {} has shape {} after specialization; give its inputs' shapes (--input-shape)",
                v.name, v.ty
            )));
        }
    }
    let plan = smelt_fuse::plan(graph)?;
    let layout = Layout::new(graph, &plan);
    let kernels = smelt_fuse::lower_for(graph, &layout.storing, target)?;
    let (functions, function_of) = shared_functions(&kernels);
    let names = IoNames {
        inputs: input_names,
        outputs: output_names,
    };
    let program = build_program(graph, &names, &kernels, &function_of, &layout)?;
    Ok(Lowered {
        plan,
        layout,
        kernels,
        functions,
        program,
    })
}

/// One function per set of kernels identical but for their names and the values their
/// parameters hold (the steps of an unrolled recurrence, repeated blocks of a network):
/// returns the kernels that get code and, for every kernel, its function's position
/// among them.
fn shared_functions(kernels: &[LoweredKernel]) -> (Vec<usize>, Vec<usize>) {
    let mut functions: Vec<usize> = Vec::new();
    let mut function_of = Vec::with_capacity(kernels.len());
    // Printed text finds candidates; structural equality decides.
    let mut by_text: HashMap<String, Vec<usize>> = HashMap::new();
    let anonymous: Vec<smelt_fuse::Kernel> = kernels.iter().map(|k| k.kernel.anonymous()).collect();
    for (ki, k) in anonymous.iter().enumerate() {
        let candidates = by_text.entry(k.print()).or_default();
        let same = candidates
            .iter()
            .copied()
            .find(|&f| anonymous[functions[f]] == *k);
        function_of.push(same.unwrap_or_else(|| {
            functions.push(ki);
            candidates.push(functions.len() - 1);
            functions.len() - 1
        }));
    }
    (functions, function_of)
}

/// Compiles an optimized graph whose shapes are all fixed.
pub(crate) fn compile_graph(
    mut graph: Graph,
    input_names: Vec<String>,
    output_names: Vec<String>,
    started: Instant,
    target: Target,
    gpu_options: &GpuOptions,
) -> Result<Executable, SmeltError> {
    let lowered = lower_graph(&mut graph, &input_names, &output_names, target.lowering())?;
    let (code, gpu) = match target {
        Target::Cpu => (
            Code::Cpu(Box::new(smelt_cpu::compile(&lowered.function_kernels())?)),
            None,
        ),
        Target::Cuda => {
            let module = smelt_gpu::compile(&lowered.function_kernels(), &gpu_options.0)?;
            let run = cuda_run(&lowered.program, &module)?;
            (Code::Gpu(Box::new(Mutex::new(run))), Some(module))
        }
        Target::GpuEmulator => (
            Code::Gpu(Box::new(Mutex::new(emulated_run(&lowered)?))),
            None,
        ),
    };
    Ok(Executable {
        graph,
        plan: lowered.plan,
        kernels: lowered.kernels,
        functions: lowered.functions,
        program: lowered.program,
        target,
        gpu,
        code,
        input_names,
        output_names,
        compile_time: started.elapsed(),
        scratch: Mutex::new(Vec::new()),
    })
}

/// The program on the first CUDA GPU, its module loaded and its memory allocated.
#[cfg(feature = "cuda")]
fn cuda_run(program: &Program, module: &smelt_gpu::GpuModule) -> Result<GpuRun, SmeltError> {
    let symbols: Vec<String> = module.kernels.iter().map(|k| k.symbol.clone()).collect();
    let device = smelt_runtime::cuda::CudaDevice::new(0, &module.ptx, &symbols)?;
    gpu_run(program, &module.kernels, Box::new(device))
}

/// The program on `device`, its memory allocated and its constants uploaded.
#[cfg(feature = "cuda")]
fn gpu_run(
    program: &Program,
    kernels: &[smelt_gpu::GpuKernelCode],
    mut device: Box<dyn smelt_runtime::gpu::Device + Send>,
) -> Result<GpuRun, SmeltError> {
    let threads = kernels.iter().map(|k| k.threads).collect();
    let program = smelt_runtime::gpu::GpuProgram::new(program.clone(), threads)?;
    let resident = program.make_resident(device.as_mut())?;
    Ok(GpuRun {
        program,
        device,
        resident,
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda_run(_program: &Program, _module: &smelt_gpu::GpuModule) -> Result<GpuRun, SmeltError> {
    Err(smelt_gpu::GpuError::NotBuilt.into())
}

/// The program on the emulated device: its kernels compiled for this CPU.
#[cfg(feature = "cuda")]
fn emulated_run(lowered: &Lowered) -> Result<GpuRun, SmeltError> {
    let (code, entries) = smelt_gpu::host_code(&lowered.function_kernels())?;
    let device = smelt_gpu::emulate::HostDevice::new(code);
    gpu_run(&lowered.program, &entries, Box::new(device))
}

#[cfg(not(feature = "cuda"))]
fn emulated_run(_lowered: &Lowered) -> Result<GpuRun, SmeltError> {
    Err(smelt_gpu::GpuError::NotBuilt.into())
}
