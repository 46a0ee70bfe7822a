//! The compile pipeline of one shape signature: optimize, plan fusion, lower to Kernel
//! IR, generate code, and assemble the runtime `Program` (buffers, memory plan, launches).

use crate::SmeltError;
use smelt_fuse::kernel::{Body, Contraction, Role};
use smelt_fuse::plan::VIEW_ALIGN;
use smelt_fuse::{FusionPlan, GroupKind, LoweredKernel};
use smelt_ir::{DType, Graph, Op, PoolKind, ValueId};
use smelt_runtime::kernels::{ConvGeometry, PoolGeometry, PoolMode};
use smelt_runtime::memory::{BufferLife, plan_arena};
use smelt_runtime::program::{AlignedBytes, BufferSpec, IoSpec, Launch, Place, Program};
use smelt_runtime::{ElemType, HostTensor};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What the code runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Target {
    /// This CPU, through Cranelift and the runtime's kernels.
    #[default]
    Cpu,
    /// An NVIDIA GPU (the first one), through PTX and the CUDA driver (feature `cuda`).
    Cuda,
    /// The GPU target's kernels compiled for this CPU and run through the GPU executor
    /// by an emulated device: checks the GPU path on machines without a GPU (slow).
    GpuEmulator,
}

impl Target {
    pub fn parse(s: &str) -> Option<Target> {
        match s {
            "cpu" => Some(Target::Cpu),
            "cuda" => Some(Target::Cuda),
            "gpu-emulator" => Some(Target::GpuEmulator),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Target::Cpu => "cpu",
            Target::Cuda => "cuda",
            Target::GpuEmulator => "gpu-emulator",
        }
    }

    pub fn is_gpu(self) -> bool {
        self != Target::Cpu
    }

    /// How fusion groups are lowered for this target.
    pub fn lowering(self) -> smelt_fuse::LowerTarget {
        if self.is_gpu() {
            smelt_fuse::LowerTarget::Gpu
        } else {
            smelt_fuse::LowerTarget::Cpu
        }
    }
}

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
    /// The optimized, shape-specialized graph.
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
        gpu: &smelt_gpu::GpuOptions,
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

fn elem(g: &Graph, v: ValueId) -> ElemType {
    ElemType::from_name(g.ty(v).dtype.name()).expect("runtime and IR share dtype names")
}

/// An optimized graph planned, lowered and assembled: what the JIT and the ahead-of-time
/// path share.
pub(crate) struct Lowered {
    pub plan: FusionPlan,
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

/// Plans, lowers and assembles an optimized graph whose shapes are all fixed.
pub(crate) fn lower_graph(
    graph: &Graph,
    input_names: &[String],
    output_names: &[String],
    target: smelt_fuse::LowerTarget,
) -> Result<Lowered, SmeltError> {
    for v in &graph.values {
        if v.ty.fixed_shape().is_none() {
            return Err(SmeltError::Compile(format!(
                "value {} has shape {} after specialization; give its inputs' shapes (--input-shape)",
                v.name, v.ty
            )));
        }
    }
    let plan = smelt_fuse::plan(graph)?;
    // Concatenations their operands' producers write in place are no group's to store.
    let (mut views, in_place) = concat_views(graph, &plan);
    views.extend(slice_views(graph, &plan));
    let mut storing = plan.clone();
    for group in &mut storing.groups {
        group.outputs.retain(|v| !in_place.contains(v));
    }
    let kernels = smelt_fuse::lower_for(graph, &storing, target)?;
    let (functions, function_of) = shared_functions(&kernels);
    let program = build_program(
        graph,
        input_names,
        output_names,
        &kernels,
        &function_of,
        &views,
    )?;
    Ok(Lowered {
        plan,
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
    graph: Graph,
    input_names: Vec<String>,
    output_names: Vec<String>,
    started: Instant,
    target: Target,
    gpu_options: &smelt_gpu::GpuOptions,
) -> Result<Executable, SmeltError> {
    let lowered = lower_graph(&graph, &input_names, &output_names, target.lowering())?;
    let (code, gpu) = match target {
        Target::Cpu => (
            Code::Cpu(Box::new(smelt_cpu::compile(&lowered.function_kernels())?)),
            None,
        ),
        Target::Cuda => {
            let module = smelt_gpu::compile(&lowered.function_kernels(), gpu_options)?;
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

/// Elements of work per chunk that make a thread hand-off worth it.
const MIN_CHUNK_ELEMENTS: usize = 16 * 1024;

/// Values that are part of another value's buffer: value -> (the value whose buffer
/// holds it, byte offset). Concatenation operands in their concatenation, and slices
/// in their operand.
type Views = HashMap<ValueId, (ValueId, usize)>;

/// The slices the fusion plan made views: each in its operand's buffer.
fn slice_views(g: &Graph, plan: &FusionPlan) -> Views {
    plan.groups
        .iter()
        .filter(|grp| grp.kind == GroupKind::View)
        .filter_map(|grp| {
            let node = &g.nodes[grp.nodes[0]];
            let offset = smelt_fuse::plan::view_offset(g, node)?;
            Some((node.outputs[0], (node.inputs[0], offset)))
        })
        .collect()
}

/// The values an integer graph input may hold when it indexes a gather or scatter
/// (directly or through a cast), as `IoSpec::index_bounds`: `[-n, n)` for an indexed axis
/// of `n`, the tightest over its uses. Gather, GatherElements and ScatterElements index
/// one axis; GatherND and ScatterND index one data axis per position of the indices' last
/// axis. Kernels clamp their loads, so an index outside would silently read a wrong
/// element; the program checks these inputs before each run instead. Empty when the
/// input indexes nothing, or an indexed axis is symbolic.
fn index_bounds(g: &Graph, input: ValueId) -> Vec<(i64, i64)> {
    if !matches!(g.ty(input).dtype, DType::I32 | DType::I64) {
        return Vec::new();
    }
    let mut indices = vec![input];
    for n in &g.nodes {
        if matches!(n.op, Op::Cast { to } if to.is_int()) && n.inputs[0] == input {
            indices.push(n.outputs[0]);
        }
    }
    let fixed = |v: ValueId, axis: usize| g.ty(v).shape.get(axis)?.fixed().map(|n| n as i64);
    let mut bounds: Vec<(i64, i64)> = Vec::new();
    for n in &g.nodes {
        if n.inputs.len() < 2 || !indices.contains(&n.inputs[1]) {
            continue;
        }
        let (data, idx) = (n.inputs[0], n.inputs[1]);
        // GatherND and ScatterND: one data axis per position of the last index axis,
        // from `first` (after GatherND's batch axes).
        let nd_sizes = |first: usize| {
            let last = g.ty(idx).shape.len().checked_sub(1)?;
            let depth = fixed(idx, last)? as usize;
            let sizes: Option<Vec<i64>> = (0..depth).map(|j| fixed(data, first + j)).collect();
            sizes.filter(|sizes| !sizes.is_empty())
        };
        // The sizes of the data axes that successive innermost index positions address.
        let axis_sizes = match n.op {
            Op::Gather { axis }
            | Op::GatherElements { axis }
            | Op::ScatterElements { axis, .. } => fixed(data, axis).map(|size| vec![size]),
            Op::GatherNd { batch_dims } => nd_sizes(batch_dims),
            Op::ScatterNd { .. } => nd_sizes(0),
            _ => continue,
        };
        let Some(axis_sizes) = axis_sizes else {
            return Vec::new();
        };
        let use_bounds: Vec<(i64, i64)> = axis_sizes.iter().map(|&n| (-n, n)).collect();
        bounds = intersect_bounds(&bounds, &use_bounds);
    }
    bounds
}

/// The tighter of two `index_bounds` lists of one input, each cycling along its
/// innermost axis, as one list cycling over the least common multiple of their lengths
/// (in practice the longer one's: a one-entry list applies to every position, and an ND
/// use's length is the input's innermost size).
fn intersect_bounds(a: &[(i64, i64)], b: &[(i64, i64)]) -> Vec<(i64, i64)> {
    if a.is_empty() {
        return b.to_vec();
    }
    let gcd = |mut x: usize, mut y: usize| {
        while y != 0 {
            (x, y) = (y, x % y);
        }
        x
    };
    let len = a.len() / gcd(a.len(), b.len()) * b.len();
    (0..len)
        .map(|i| {
            let (alo, ahi) = a[i % a.len()];
            let (blo, bhi) = b[i % b.len()];
            (alo.max(blo), ahi.min(bhi))
        })
        .collect()
}

/// Concatenations that need no copy: a concatenation along an axis with only 1s before it
/// whose output its group stores and is not a graph output, and whose operands are
/// distinct values that other groups store (not graph inputs, outputs or constants),
/// each at an offset that keeps the arena's alignment. Their operands become views of
/// the concatenation's buffer, where their producers write directly, and the
/// concatenation's group no longer stores it (a group that only concatenated is not
/// launched at all). Returns the views and the concatenations written in place.
fn concat_views(g: &Graph, plan: &FusionPlan) -> (Views, Vec<ValueId>) {
    let producer = g.producers();
    let mut group_of = vec![usize::MAX; g.nodes.len()];
    for (gi, group) in plan.groups.iter().enumerate() {
        for &n in &group.nodes {
            group_of[n] = gi;
        }
    }
    let stored = |v: ValueId| {
        producer[v.index()].is_some_and(|p| {
            !matches!(g.nodes[p].op, Op::Constant(_))
                && plan
                    .groups
                    .get(group_of[p])
                    .is_some_and(|grp| grp.outputs.contains(&v))
        })
    };
    let mut views = HashMap::new();
    let mut in_place = Vec::new();
    for (gi, group) in plan.groups.iter().enumerate() {
        for &node in &group.nodes {
            let n = &g.nodes[node];
            let Op::Concat { axis } = n.op else { continue };
            let out = n.outputs[0];
            let shape = g.ty(out).fixed_shape().expect("shapes are fixed");
            // Produced by another group, and not a slice's view (a value is part of one
            // buffer only).
            let operand_ok = |v: ValueId| {
                !g.inputs.contains(&v)
                    && !g.outputs.contains(&v)
                    && stored(v)
                    && producer[v.index()].is_some_and(|p| {
                        group_of[p] != gi && plan.groups[group_of[p]].kind != GroupKind::View
                    })
                    && !views.contains_key(&v)
            };
            let distinct = n
                .inputs
                .iter()
                .enumerate()
                .all(|(i, v)| !n.inputs[..i].contains(v));
            if shape[..axis].iter().any(|&d| d != 1)
                || g.outputs.contains(&out)
                || !group.outputs.contains(&out)
                || !distinct
                || !n.inputs.iter().all(|&v| operand_ok(v))
            {
                continue;
            }
            let elem = g.ty(out).dtype.size_bytes();
            let mut offsets = Vec::with_capacity(n.inputs.len());
            let mut offset = 0;
            for &v in &n.inputs {
                offsets.push(offset);
                let count: usize = g
                    .ty(v)
                    .fixed_shape()
                    .expect("shapes are fixed")
                    .iter()
                    .product();
                offset += count * elem;
            }
            if offsets.iter().any(|o| o % VIEW_ALIGN != 0) {
                continue;
            }
            for (&v, o) in n.inputs.iter().zip(offsets) {
                views.insert(v, (out, o));
            }
            in_place.push(out);
        }
    }
    (views, in_place)
}

fn build_program(
    g: &Graph,
    input_names: &[String],
    output_names: &[String],
    kernels: &[LoweredKernel],
    function_of: &[usize],
    views: &Views,
) -> Result<Program, SmeltError> {
    let producer = g.producers();
    let mut buffers: Vec<BufferSpec> = Vec::new();
    let mut buffer_of: HashMap<ValueId, usize> = HashMap::new();
    let mut constants: Vec<u8> = Vec::new();
    let shape = |v: ValueId| g.ty(v).fixed_shape().expect("shapes are fixed");
    let mut buffer =
        |v: ValueId, buffers: &mut Vec<BufferSpec>, constants: &mut Vec<u8>| -> usize {
            if let Some(&b) = buffer_of.get(&v) {
                return b;
            }
            let place = match producer[v.index()].map(|n| &g.nodes[n].op) {
                Some(Op::Constant(t)) => {
                    let offset = constants.len().div_ceil(64) * 64;
                    constants.resize(offset, 0);
                    constants.extend_from_slice(&t.to_le_bytes());
                    Place::Constant { offset }
                }
                _ => Place::Arena { offset: 0 },
            };
            buffers.push(BufferSpec {
                name: g.value(v).name.clone(),
                elem: elem(g, v),
                shape: shape(v),
                place,
            });
            buffer_of.insert(v, buffers.len() - 1);
            buffers.len() - 1
        };
    let inputs: Vec<IoSpec> = g
        .inputs
        .iter()
        .zip(input_names)
        .map(|(&v, name)| IoSpec {
            name: name.clone(),
            elem: elem(g, v),
            shape: shape(v),
            buffer: buffer(v, &mut buffers, &mut constants),
            index_bounds: index_bounds(g, v),
        })
        .collect();
    let mut launches = Vec::new();
    for (ki, lk) in kernels.iter().enumerate() {
        let k = &lk.kernel;
        let args: Vec<usize> = lk
            .args
            .iter()
            .map(|&v| buffer(v, &mut buffers, &mut constants))
            .collect();
        let loop_launch = |nest: &smelt_fuse::LoopNest| Launch::Loop {
            name: k.name.clone(),
            function: function_of[ki],
            args: args.clone(),
            extent: nest.outer_extent(),
            min_chunk: MIN_CHUNK_ELEMENTS.div_ceil(nest.inner_extent().max(1)),
        };
        match &k.body {
            Body::Loop(nest) => launches.push(loop_launch(nest)),
            Body::Contraction {
                call,
                out,
                epilogue,
            } => {
                let p = |i: u32| args[i as usize];
                let pshape = |i: u32| k.params[i as usize].shape.clone();
                launches.push(match call {
                    Contraction::MatMul {
                        a,
                        b,
                        bias,
                        trans_a,
                        trans_b,
                    } => {
                        // Rank-1 operands are matrices of one row (a) or one column (b).
                        let mut a_shape = pshape(*a);
                        if a_shape.len() == 1 {
                            a_shape.insert(0, 1);
                        }
                        let mut b_shape = pshape(*b);
                        if b_shape.len() == 1 {
                            b_shape.push(1);
                        }
                        Launch::MatMul {
                            name: k.name.clone(),
                            a: p(*a),
                            b: p(*b),
                            bias: bias.map(p),
                            out: p(*out),
                            a_shape,
                            b_shape,
                            trans_a: *trans_a,
                            trans_b: *trans_b,
                        }
                    }
                    Contraction::Conv {
                        x,
                        w,
                        bias,
                        strides,
                        pads,
                        dilations,
                        group,
                        relu,
                    } => Launch::Conv {
                        name: k.name.clone(),
                        x: p(*x),
                        w: p(*w),
                        bias: bias.map(p),
                        out: p(*out),
                        geometry: ConvGeometry {
                            input: pshape(*x),
                            weight: pshape(*w),
                            strides: strides.clone(),
                            pads: pads.clone(),
                            dilations: dilations.clone(),
                            group: *group,
                            relu: *relu,
                        }
                        .with_useful_strides(),
                    },
                    Contraction::Pool {
                        x,
                        kind,
                        kernel,
                        strides,
                        pads,
                    } => Launch::Pool {
                        name: k.name.clone(),
                        x: p(*x),
                        out: p(*out),
                        geometry: PoolGeometry {
                            mode: match kind {
                                PoolKind::Max => PoolMode::Max,
                                PoolKind::Avg => PoolMode::Avg,
                                PoolKind::AvgIncludePad => PoolMode::AvgIncludePad,
                            },
                            input: pshape(*x),
                            kernel: kernel.clone(),
                            strides: strides.clone(),
                            pads: pads.clone(),
                        }
                        .with_useful_strides(),
                    },
                });
                if let Some(nest) = epilogue {
                    launches.push(loop_launch(nest));
                }
            }
        }
        debug_assert!(
            k.params
                .iter()
                .all(|p| p.role == Role::Input || p.role == Role::Output)
        );
    }
    // Outputs: values that are inputs or constants are copied into a buffer of their own,
    // so that every output is written by the program.
    let mut outputs = Vec::new();
    for (&v, name) in g.outputs.iter().zip(output_names) {
        let src = buffer(v, &mut buffers, &mut constants);
        let computed =
            !g.inputs.contains(&v) && !matches!(buffers[src].place, Place::Constant { .. });
        let buf = if computed {
            src
        } else {
            buffers.push(BufferSpec {
                name: format!("{name}.copy"),
                ..buffers[src].clone()
            });
            let dst = buffers.len() - 1;
            buffers[dst].place = Place::Arena { offset: 0 };
            launches.push(Launch::Copy {
                name: format!("copy_{name}"),
                src,
                dst,
            });
            dst
        };
        outputs.push(IoSpec {
            name: name.clone(),
            elem: elem(g, v),
            shape: shape(v),
            buffer: buf,
            index_bounds: Vec::new(),
        });
    }
    // Every buffer a view is part of exists, even one no launch names (a concatenation
    // written in place that only slices read).
    for &(whole, _) in views.values() {
        buffer(whole, &mut buffers, &mut constants);
    }
    // Lifetimes over launches, then one arena for every non-constant buffer.
    let n = launches.len();
    let mut first = vec![usize::MAX; buffers.len()];
    let mut last = vec![0usize; buffers.len()];
    let mut touch = |b: usize, i: usize| {
        first[b] = first[b].min(i);
        last[b] = last[b].max(i);
    };
    for (i, l) in launches.iter().enumerate() {
        let used: Vec<usize> = match l {
            Launch::Loop { args, .. } => args.clone(),
            Launch::MatMul {
                a, b, bias, out, ..
            } => [Some(*a), Some(*b), *bias, Some(*out)]
                .into_iter()
                .flatten()
                .collect(),
            Launch::Conv {
                x, w, bias, out, ..
            } => [Some(*x), Some(*w), *bias, Some(*out)]
                .into_iter()
                .flatten()
                .collect(),
            Launch::Copy { src, dst, .. } => vec![*src, *dst],
            Launch::Pool { x, out, .. } => vec![*x, *out],
        };
        for b in used {
            touch(b, i);
        }
    }
    for io in &inputs {
        touch(io.buffer, 0);
    }
    for io in &outputs {
        touch(io.buffer, n);
    }
    // A view lives as long as the buffer it is part of (the concatenation's, or the
    // buffer that one is part of in turn) and takes no room of its own.
    let value_of_buffer: HashMap<usize, ValueId> =
        buffer_of.iter().map(|(&v, &b)| (b, v)).collect();
    let view_of = |b: usize| -> Option<(usize, usize)> {
        let (mut whole, mut offset) = *views.get(value_of_buffer.get(&b)?)?;
        while let Some(&(outer, o)) = views.get(&whole) {
            (whole, offset) = (outer, offset + o);
        }
        Some((*buffer_of.get(&whole)?, offset))
    };
    let view_place: Vec<Option<(usize, usize)>> = (0..buffers.len()).map(view_of).collect();
    for (b, place) in view_place.iter().enumerate() {
        if let Some((whole, _)) = *place
            && first[b] != usize::MAX
        {
            first[whole] = first[whole].min(first[b]);
            last[whole] = last[whole].max(last[b]);
        }
    }
    let arena_ids: Vec<usize> = (0..buffers.len())
        .filter(|&b| matches!(buffers[b].place, Place::Arena { .. }) && view_place[b].is_none())
        .collect();
    let lives: Vec<BufferLife> = arena_ids
        .iter()
        .map(|&b| BufferLife {
            bytes: buffers[b].bytes(),
            first: if first[b] == usize::MAX { 0 } else { first[b] },
            last: last[b].max(if first[b] == usize::MAX { 0 } else { first[b] }),
        })
        .collect();
    let plan = plan_arena(&lives);
    // The arena is one allocation per run: it must fit the memory limit like any value.
    let limit = smelt_ir::limits::max_value_bytes();
    if plan.total_bytes as u64 > limit {
        return Err(SmeltError::Compile(format!(
            "the model's intermediate values need {} bytes at once, over the memory limit of {limit} bytes (SMELT_MEMORY_LIMIT)",
            plan.total_bytes
        )));
    }
    for (j, &b) in arena_ids.iter().enumerate() {
        buffers[b].place = Place::Arena {
            offset: plan.offsets[j],
        };
    }
    for (b, place) in view_place.iter().enumerate() {
        if let Some((whole, offset)) = *place {
            let Place::Arena { offset: base } = buffers[whole].place else {
                unreachable!("views are of computed values, so in the arena")
            };
            buffers[b].place = Place::Arena {
                offset: base + offset,
            };
        }
    }
    let mut blob = AlignedBytes::zeroed(constants.len());
    blob.as_mut_slice().copy_from_slice(&constants);
    Ok(Program {
        inputs,
        outputs,
        buffers,
        constants: smelt_runtime::program::Constants::Owned(blob),
        arena_bytes: plan.arena_bytes,
        intermediate_bytes: plan.total_bytes,
        launches,
        packed_filters: Default::default(),
    })
}
