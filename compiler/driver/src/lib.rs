//! smelt: the library users call. Loads a model, specializes it to the inputs at
//! hand, optimizes it (`smelt-opt`), fuses and lowers it to Kernel IR (`smelt-fuse`),
//! generates machine code (`smelt-cpu`) and runs it on the runtime.
//!
//! ```
//! use smelt::{Model, Options, Tensor};
//! # fn main() -> Result<(), smelt::SmeltError> {
//! # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/examples/lenet5/model.onnx");
//! let model = Model::load(path)?;
//! let compiled = model.compile(&Options { threads: Some(2), ..Default::default() })?;
//! let x = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[1, 3, 32, 32]));
//! let outputs = compiled.run(&[Tensor::from(x)])?;
//! let logits = ndarray::ArrayD::<f32>::try_from(&outputs[0])?;
//! assert_eq!(logits.shape(), &[1, 10]);
//! # Ok(())
//! # }
//! ```
//!
//! The reference interpreter stays reachable through [`Model::run_reference`]; it is the
//! oracle of the tests, not the product's execution path.

pub mod aot;
mod compile;
mod explain;
mod graph_source;
mod jit;
mod program;
mod targets;

pub use compile::{Executable, LaunchSummary};
pub use explain::{ExplainOptions, ExplainStage};
pub use targets::{CpuTarget, GpuOptions, Target};

/// Sets the memory limit: the most bytes one value, or one run's arena, may take (16 GiB
/// unless set); a model over it is refused with an error naming the value.
pub fn set_memory_limit(bytes: u64) {
    smelt_ir::limits::set_max_value_bytes(bytes);
}

/// A byte count as `SMELT_MEMORY_LIMIT` takes it: digits with an optional K, M, G or T.
pub fn parse_bytes(text: &str) -> Option<u64> {
    smelt_ir::limits::parse_bytes(text)
}
pub use jit::{Compiled, Element, Options, Tensor, output_file_name};

use smelt_ir::{DType, Tensor as IrTensor};
use smelt_onnx::{ImportOptions, Imported, ModelInfo, OnnxModel};
use smelt_runtime::{ElemType, HostTensor};
use std::collections::HashMap;
use std::path::Path;
use thiserror::Error;

/// Errors of loading and running models.
#[derive(Debug, Error)]
pub enum SmeltError {
    #[error(transparent)]
    Onnx(#[from] smelt_onnx::OnnxError),
    #[error(transparent)]
    Ir(#[from] smelt_ir::IrError),
    #[error("input '{name}': {reason}")]
    Input { name: String, reason: String },
    #[error("output '{name}': {reason}")]
    Output { name: String, reason: String },
    #[error(transparent)]
    Opt(#[from] smelt_opt::OptError),
    #[error(transparent)]
    Kernel(#[from] smelt_fuse::KernelError),
    #[error(transparent)]
    Fusion(#[from] smelt_fuse::FusionError),
    #[error(transparent)]
    Cpu(#[from] smelt_cpu::CpuError),
    #[error(transparent)]
    Gpu(#[from] smelt_gpu::GpuError),
    #[error(transparent)]
    Runtime(#[from] smelt_runtime::program::RuntimeError),
    #[error(transparent)]
    Npy(#[from] smelt_runtime::NpyError),
    #[error("{0}")]
    Compile(String),
}

/// How to run a model.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Run the optimizer's pipeline before executing (on by default).
    pub optimize: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions { optimize: true }
    }
}

/// The stage whose graph `explain` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Import,
    Opt,
}

/// What `smelt explain` shows: the graph at a stage and what the optimizer did.
#[derive(Debug, Clone)]
pub struct Explanation {
    /// The graph text at the requested stage.
    pub graph: smelt_ir::Graph,
    pub before: std::collections::BTreeMap<&'static str, usize>,
    pub after: std::collections::BTreeMap<&'static str, usize>,
    pub passes: Vec<smelt_opt::PassRecord>,
}

pub type Result<T, E = SmeltError> = std::result::Result<T, E>;

/// Converts a runtime host tensor into an IR tensor.
pub fn to_ir_tensor(t: &HostTensor) -> Result<IrTensor, String> {
    let dtype = DType::from_name(t.elem.name())
        .ok_or_else(|| format!("unknown element type {}", t.elem.name()))?;
    IrTensor::from_le_bytes(dtype, t.shape.clone(), &t.bytes).map_err(|e| e.to_string())
}

/// Converts an IR tensor into a runtime host tensor.
pub fn to_host_tensor(t: &IrTensor) -> HostTensor {
    HostTensor {
        elem: ElemType::from_name(t.dtype().name()).expect("runtime and IR share dtype names"),
        shape: t.shape().to_vec(),
        bytes: t.to_le_bytes(),
    }
}

/// A model: loaded from an ONNX file, or built as a Graph IR graph (by the tracer, say).
#[derive(Debug, Clone)]
pub struct Model {
    source: Source,
}

/// Where a model's graph comes from.
#[derive(Debug, Clone)]
enum Source {
    /// Shared: a compilation holds the model, and its weights must not be copied for it.
    Onnx(std::sync::Arc<OnnxModel>),
    /// Shared: every compilation specializes a copy.
    Graph(std::sync::Arc<smelt_ir::Graph>),
}

impl Model {
    /// Reads and decodes an ONNX file (external data resolves next to it).
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        Ok(Model {
            source: Source::Onnx(std::sync::Arc::new(OnnxModel::load(path.as_ref())?)),
        })
    }

    /// Decodes an ONNX model held in memory.
    pub fn from_bytes(bytes: &[u8]) -> Result<Model> {
        Ok(Model {
            source: Source::Onnx(std::sync::Arc::new(OnnxModel::from_bytes(bytes)?)),
        })
    }

    /// A model of a Graph IR graph, such as `smelt_trace::trace` records; it compiles,
    /// runs and explains like an imported one (its symbolic dims bound by the inputs).
    pub fn from_graph(graph: smelt_ir::Graph) -> Result<Model> {
        graph.verify()?;
        Ok(Model {
            source: Source::Graph(std::sync::Arc::new(graph)),
        })
    }

    /// The model's summary (what `smelt inspect` prints).
    pub fn info(&self) -> ModelInfo {
        match &self.source {
            Source::Onnx(onnx) => onnx.info(),
            Source::Graph(g) => graph_source::graph_info(g),
        }
    }

    /// The model's graph with the given specialization (imported, for an ONNX model).
    pub fn import(&self, opts: &ImportOptions) -> Result<Imported> {
        match &self.source {
            Source::Onnx(onnx) => Ok(smelt_onnx::import(onnx, opts)?),
            Source::Graph(g) => graph_source::specialize(g, opts),
        }
    }

    /// Imports with the given input shapes, optimizes, and reports both stages.
    pub fn explain(
        &self,
        stage: Stage,
        input_shapes: &HashMap<String, Vec<usize>>,
    ) -> Result<Explanation> {
        let imported = self.import(&ImportOptions {
            input_shapes: input_shapes.clone(),
            ..Default::default()
        })?;
        let mut graph = imported.graph;
        let before = graph.op_histogram();
        // Only the import stage needs the graph as imported; copying it would copy every weight.
        let import_graph = (stage == Stage::Import).then(|| graph.clone());
        let passes = smelt_opt::Pipeline::standard(Default::default()).run(&mut graph)?;
        let after = graph.op_histogram();
        let graph = import_graph.unwrap_or(graph);
        Ok(Explanation {
            graph,
            before,
            after,
            passes,
        })
    }

    /// Runs the model on the reference interpreter.
    ///
    /// Inputs are specialized: their shapes become the graph's shapes, and inputs
    /// that decide shapes or attributes are bound to their values. `input_shapes`
    /// may pin further shapes; they must agree with the inputs given.
    pub fn run_reference(
        &self,
        inputs: &[(String, HostTensor)],
        input_shapes: &HashMap<String, Vec<usize>>,
        options: &RunOptions,
    ) -> Result<Vec<(String, HostTensor)>> {
        let info = self.info();
        let mut values = HashMap::new();
        let mut shapes = input_shapes.clone();
        for (name, t) in inputs {
            let declared = info
                .inputs
                .iter()
                .find(|i| &i.name == name)
                .ok_or_else(|| {
                    compile::no_such_input(name, info.inputs.iter().map(|i| i.name.as_str()))
                })?;
            if declared.dtype != t.elem.name() {
                return Err(SmeltError::Input {
                    name: name.clone(),
                    reason: format!("expects dtype {}, got {}", declared.dtype, t.elem.name()),
                });
            }
            if let Some(pinned) = shapes.get(name)
                && pinned != &t.shape
            {
                return Err(SmeltError::Input {
                    name: name.clone(),
                    reason: format!(
                        "--input-shape says {pinned:?} but the data has shape {:?}",
                        t.shape
                    ),
                });
            }
            shapes.insert(name.clone(), t.shape.clone());
            let tensor = to_ir_tensor(t).map_err(|reason| SmeltError::Input {
                name: name.clone(),
                reason,
            })?;
            values.insert(name.clone(), tensor);
        }
        for i in &info.inputs {
            if !values.contains_key(&i.name) {
                return Err(SmeltError::Input {
                    name: i.name.clone(),
                    reason: format!("missing (expects {}[{}])", i.dtype, i.dims.join(", ")),
                });
            }
        }
        let imported = self.import(&ImportOptions {
            input_shapes: shapes,
            input_values: values.clone(),
        })?;
        let feeds: Vec<IrTensor> = imported
            .input_names
            .iter()
            .map(|n| values[n].clone())
            .collect();
        let mut graph = imported.graph;
        if options.optimize {
            smelt_opt::Pipeline::standard(Default::default()).run(&mut graph)?;
        }
        let outputs = smelt_ir::interp::run(&graph, &feeds)?;
        Ok(imported
            .output_names
            .into_iter()
            .zip(outputs.iter().map(to_host_tensor))
            .collect())
    }
}
