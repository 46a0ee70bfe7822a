//! The JIT API: `Model::compile` gives a `Compiled` model that runs tensors through
//! Cranelift-generated code, compiling once per input shape signature.

use crate::compile::{Executable, compile_graph};
use crate::{Model, Result, SmeltError, to_ir_tensor};
use smelt_onnx::ImportOptions;
use smelt_runtime::threads::ThreadPool;
use smelt_runtime::{ElemType, HostTensor};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Input shapes by input name.
type InputShapes = HashMap<String, Vec<usize>>;
/// Input values by input name (for inputs that decide shapes).
type InputValues = HashMap<String, smelt_ir::Tensor>;

/// How to compile a model.
#[derive(Debug, Clone)]
pub struct Options {
    /// Threads that run a model (the caller's included); `None` means every available core.
    pub threads: Option<usize>,
    /// Run the optimizer's pipeline (on by default).
    pub optimize: bool,
    /// Pins input shapes, by input name (needed only where the inputs at run time do not
    /// decide them).
    pub input_shapes: HashMap<String, Vec<usize>>,
    /// What the code runs on (the CPU by default).
    pub target: crate::Target,
    /// The GPU architecture, for `Target::Cuda`.
    pub gpu: crate::GpuOptions,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            threads: None,
            optimize: true,
            input_shapes: HashMap::new(),
            target: crate::Target::Cpu,
            gpu: Default::default(),
        }
    }
}

/// A tensor going into or coming out of a compiled model.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor(pub HostTensor);

/// Element types a [`Tensor`] converts to and from.
pub trait Element: Copy + 'static {
    const ELEM: ElemType;
    fn write(self, out: &mut Vec<u8>);
    fn read(bytes: &[u8]) -> Self;
}

macro_rules! element {
    ($($t:ty => $e:ident),*) => {$(
        impl Element for $t {
            const ELEM: ElemType = ElemType::$e;
            fn write(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn read(bytes: &[u8]) -> Self {
                <$t>::from_le_bytes(bytes.try_into().expect("element width"))
            }
        }
    )*};
}
element!(f32 => F32, f64 => F64, i8 => I8, i16 => I16, i32 => I32, i64 => I64, u8 => U8, u16 => U16, u32 => U32, u64 => U64);

impl Element for bool {
    const ELEM: ElemType = ElemType::Bool;
    fn write(self, out: &mut Vec<u8>) {
        out.push(self as u8);
    }
    fn read(bytes: &[u8]) -> Self {
        bytes[0] != 0
    }
}

impl Tensor {
    /// A tensor of `shape` from row-major `data`.
    pub fn from_vec<T: Element>(shape: Vec<usize>, data: Vec<T>) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(SmeltError::Compile(format!(
                "a tensor of shape {shape:?} needs {n} elements, got {}",
                data.len()
            )));
        }
        let mut bytes = Vec::with_capacity(n * T::ELEM.size_bytes());
        for x in data {
            x.write(&mut bytes);
        }
        Ok(Tensor(HostTensor {
            elem: T::ELEM,
            shape,
            bytes,
        }))
    }

    /// The elements, if they are of type `T`.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        if self.0.elem != T::ELEM {
            return Err(SmeltError::Output {
                name: "tensor".into(),
                reason: format!("holds {}, not {}", self.0.elem.name(), T::ELEM.name()),
            });
        }
        Ok(self
            .0
            .bytes
            .chunks_exact(T::ELEM.size_bytes())
            .map(T::read)
            .collect())
    }

    pub fn shape(&self) -> &[usize] {
        &self.0.shape
    }

    pub fn elem(&self) -> ElemType {
        self.0.elem
    }

    /// Zeros of the element type named `dtype` (`f32`, `i64`, `bool`, ...).
    pub fn zeros(dtype: &str, shape: Vec<usize>) -> Result<Tensor> {
        let elem = ElemType::from_name(dtype)
            .ok_or_else(|| SmeltError::Compile(format!("unsupported element type {dtype}")))?;
        Ok(Tensor(HostTensor::zeros(elem, shape)))
    }

    /// The tensor a NumPy `.npy` file holds.
    pub fn read_npy(path: &std::path::Path) -> Result<Tensor> {
        Ok(Tensor(smelt_runtime::read_npy(path)?))
    }

    /// Writes the tensor as a NumPy `.npy` file.
    pub fn write_npy(&self, path: &std::path::Path) -> Result<()> {
        Ok(smelt_runtime::write_npy(path, &self.0)?)
    }

    /// One line naming the tensor, its shape and a few statistics (what `smelt run` prints).
    pub fn summary(&self, name: &str) -> String {
        self.0.summary(name)
    }
}

/// The `.npy` file name `smelt run --output-dir` gives output `name`: every character
/// outside `[A-Za-z0-9_.-]` becomes `_`.
pub fn output_file_name(name: &str) -> String {
    smelt_runtime::output_file_name(name)
}

impl<T: Element> From<ndarray::ArrayD<T>> for Tensor {
    fn from(a: ndarray::ArrayD<T>) -> Tensor {
        let shape = a.shape().to_vec();
        let data: Vec<T> = a.iter().copied().collect();
        Tensor::from_vec(shape, data).expect("an array's element count matches its shape")
    }
}

impl<T: Element> TryFrom<&Tensor> for ndarray::ArrayD<T> {
    type Error = SmeltError;
    fn try_from(t: &Tensor) -> Result<ndarray::ArrayD<T>> {
        let data = t.to_vec::<T>()?;
        ndarray::ArrayD::from_shape_vec(t.shape().to_vec(), data)
            .map_err(|e| SmeltError::Compile(e.to_string()))
    }
}

impl<T: Element> TryFrom<Tensor> for ndarray::ArrayD<T> {
    type Error = SmeltError;
    fn try_from(t: Tensor) -> Result<ndarray::ArrayD<T>> {
        ndarray::ArrayD::try_from(&t)
    }
}

/// One compiled shape signature, with the bound input values it was specialized to.
#[derive(Debug)]
struct Entry {
    shapes: Vec<Vec<usize>>,
    bound: Vec<(usize, Vec<u8>)>,
    exe: Arc<Executable>,
}

/// A model compiled for a target. `Send + Sync`: runs may come from several threads at once.
#[derive(Debug)]
pub struct Compiled {
    model: Model,
    options: Options,
    pool: ThreadPool,
    cache: Mutex<Vec<Entry>>,
}

impl Model {
    /// Prepares the model for compiled execution; code is generated for each input shape
    /// signature on first use (or eagerly with [`Compiled::prepare`]).
    pub fn compile(&self, options: &Options) -> Result<Compiled> {
        let threads = match options.threads {
            Some(0) => {
                return Err(SmeltError::Compile("--threads must be at least 1".into()));
            }
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        Ok(Compiled {
            model: self.clone(),
            options: options.clone(),
            pool: ThreadPool::new(threads),
            cache: Mutex::new(Vec::new()),
        })
    }
}

impl Compiled {
    /// Threads a run uses.
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// The model's input names, in order.
    pub fn input_names(&self) -> Vec<String> {
        self.model
            .info()
            .inputs
            .into_iter()
            .map(|i| i.name)
            .collect()
    }

    /// Runs the model on inputs in declaration order.
    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        let names = self.input_names();
        if inputs.len() != names.len() {
            return Err(SmeltError::Input {
                name: names.join(", "),
                reason: format!(
                    "the model takes {} inputs, got {}",
                    names.len(),
                    inputs.len()
                ),
            });
        }
        let named: Vec<(String, HostTensor)> = names
            .into_iter()
            .zip(inputs.iter().map(|t| t.0.clone()))
            .collect();
        Ok(self
            .run_named(&named)?
            .into_iter()
            .map(|(_, t)| Tensor(t))
            .collect())
    }

    /// Runs the model on named inputs; returns the outputs with their names.
    pub fn run_named(&self, inputs: &[(String, HostTensor)]) -> Result<Vec<(String, HostTensor)>> {
        self.run_profiled(inputs, None)
    }

    /// As [`Compiled::run_named`], adding each launch's time to `profile`.
    pub fn run_profiled(
        &self,
        inputs: &[(String, HostTensor)],
        profile: Option<&mut Vec<Duration>>,
    ) -> Result<Vec<(String, HostTensor)>> {
        let exe = self.prepare(inputs)?;
        let outs = exe.run(&self.pool, &exe.ordered_inputs(inputs), profile)?;
        Ok(exe.output_names.iter().cloned().zip(outs).collect())
    }

    /// Runs code from [`Compiled::prepare`] on its inputs in declaration order, writing
    /// into `outputs` (an earlier run's results, in declaration order): repeated runs
    /// allocate nothing and skip the lookup by input shapes.
    pub fn run_prepared_into(
        &self,
        exe: &Executable,
        inputs: &[&HostTensor],
        outputs: &mut [HostTensor],
        profile: Option<&mut Vec<Duration>>,
    ) -> Result<()> {
        exe.run_into(&self.pool, inputs, outputs, profile)
    }

    /// Compiles (or finds) the code for these inputs.
    pub fn prepare(&self, inputs: &[(String, HostTensor)]) -> Result<Arc<Executable>> {
        let info = self.model.info();
        if let Some((name, _)) = inputs
            .iter()
            .find(|(n, _)| !info.inputs.iter().any(|i| &i.name == n))
        {
            return Err(crate::compile::no_such_input(
                name,
                info.inputs.iter().map(|i| i.name.as_str()),
            ));
        }
        let mut ordered: Vec<&HostTensor> = Vec::with_capacity(info.inputs.len());
        for i in &info.inputs {
            let t = inputs
                .iter()
                .find(|(n, _)| n == &i.name)
                .map(|(_, t)| t)
                .ok_or_else(|| SmeltError::Input {
                    name: i.name.clone(),
                    reason: format!("missing (expects {}[{}])", i.dtype, i.dims.join(", ")),
                })?;
            if i.dtype != t.elem.name() {
                return Err(SmeltError::Input {
                    name: i.name.clone(),
                    reason: format!("expects dtype {}, got {}", i.dtype, t.elem.name()),
                });
            }
            if let Some(pinned) = self.options.input_shapes.get(&i.name)
                && pinned != &t.shape
            {
                return Err(SmeltError::Input {
                    name: i.name.clone(),
                    reason: format!(
                        "--input-shape says {pinned:?} but the data has shape {:?}",
                        t.shape
                    ),
                });
            }
            ordered.push(t);
        }
        let shapes: Vec<Vec<usize>> = ordered.iter().map(|t| t.shape.clone()).collect();
        {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(e) = cache.iter().find(|e| {
                e.shapes == shapes && e.bound.iter().all(|(i, b)| &ordered[*i].bytes == b)
            }) {
                return Ok(e.exe.clone());
            }
        }
        let (shape_map, values) = self.specialization(
            info.inputs
                .iter()
                .map(|i| i.name.as_str())
                .zip(ordered.iter().copied()),
        )?;
        let (exe, bound_names) = self.build(shape_map, values)?;
        let bound: Vec<(usize, Vec<u8>)> = bound_names
            .iter()
            .filter_map(|n| info.inputs.iter().position(|i| &i.name == n))
            .map(|i| (i, ordered[i].bytes.clone()))
            .collect();
        let exe = Arc::new(exe);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.push(Entry {
            shapes,
            bound,
            exe: exe.clone(),
        });
        Ok(exe)
    }

    /// Compiles for input shapes alone (inputs whose values decide shapes must not be
    /// among them): what `smelt explain --stage kernel` shows.
    pub fn executable_for_shapes(
        &self,
        shapes: &HashMap<String, Vec<usize>>,
    ) -> Result<Executable> {
        Ok(self.build(self.pinned_with(shapes), HashMap::new())?.0)
    }

    fn build(
        &self,
        input_shapes: HashMap<String, Vec<usize>>,
        input_values: HashMap<String, smelt_ir::Tensor>,
    ) -> Result<(Executable, Vec<String>)> {
        let started = Instant::now();
        let (graph, imported) = self.optimized(input_shapes, input_values)?;
        let exe = compile_graph(
            graph,
            imported.input_names,
            imported.output_names,
            started,
            self.options.target,
            &self.options.gpu,
        )?;
        Ok((exe, imported.bound_inputs))
    }

    /// The model imported with these shapes and values and optimized (or only
    /// specialized); the import's names come with it (its graph is moved out).
    fn optimized(
        &self,
        input_shapes: HashMap<String, Vec<usize>>,
        input_values: HashMap<String, smelt_ir::Tensor>,
    ) -> Result<(smelt_ir::Graph, smelt_onnx::Imported)> {
        let mut imported = self.model.import(&ImportOptions {
            input_shapes,
            input_values,
        })?;
        let mut graph = std::mem::take(&mut imported.graph);
        crate::compile::optimize_or_specialize(&mut graph, self.options.optimize)?;
        Ok((graph, imported))
    }

    /// The kernels of the model for input shapes alone, lowered for `target` (in launch
    /// order), without generating code: what `smelt explain --stage kernel` shows.
    pub fn kernels_for_shapes(
        &self,
        shapes: &HashMap<String, Vec<usize>>,
        target: crate::Target,
    ) -> Result<Vec<smelt_fuse::LoweredKernel>> {
        Ok(self
            .lowered(self.pinned_with(shapes), HashMap::new(), target)?
            .kernels)
    }

    /// As [`Compiled::kernels_for_shapes`], specialized to these inputs (their shapes,
    /// and their values where the model needs them to decide shapes).
    pub fn kernels_for_inputs(
        &self,
        inputs: &[(String, HostTensor)],
        target: crate::Target,
    ) -> Result<Vec<smelt_fuse::LoweredKernel>> {
        let (shapes, values) =
            self.specialization(inputs.iter().map(|(name, t)| (name.as_str(), t)))?;
        Ok(self.lowered(shapes, values, target)?.kernels)
    }

    /// The PTX module of the model for input shapes alone (one function per set of
    /// identical kernels): what `smelt explain --stage llvm|ptx` prints.
    pub fn gpu_module(&self, shapes: &HashMap<String, Vec<usize>>) -> Result<smelt_gpu::GpuModule> {
        let lowered = self.lowered(
            self.pinned_with(shapes),
            HashMap::new(),
            crate::Target::Cuda,
        )?;
        Ok(smelt_gpu::compile(
            &lowered.function_kernels(),
            &self.options.gpu.0,
        )?)
    }

    /// The pinned input shapes (`Options::input_shapes`) with `shapes` over them.
    fn pinned_with(&self, shapes: &HashMap<String, Vec<usize>>) -> InputShapes {
        let mut pinned = self.options.input_shapes.clone();
        pinned.extend(shapes.iter().map(|(k, v)| (k.clone(), v.clone())));
        pinned
    }

    /// The shapes and values of named inputs as import options take them, over the
    /// pinned shapes.
    fn specialization<'a>(
        &self,
        inputs: impl IntoIterator<Item = (&'a str, &'a HostTensor)>,
    ) -> Result<(InputShapes, InputValues)> {
        let mut shapes = self.options.input_shapes.clone();
        let mut values = HashMap::new();
        for (name, t) in inputs {
            shapes.insert(name.to_string(), t.shape.clone());
            let v = to_ir_tensor(t).map_err(|reason| SmeltError::Input {
                name: name.to_string(),
                reason,
            })?;
            values.insert(name.to_string(), v);
        }
        Ok((shapes, values))
    }

    /// The model imported, optimized, planned and lowered for `target`, without code.
    fn lowered(
        &self,
        shapes: InputShapes,
        values: InputValues,
        target: crate::Target,
    ) -> Result<crate::compile::Lowered> {
        let (mut graph, imported) = self.optimized(shapes, values)?;
        crate::compile::lower_graph(
            &mut graph,
            &imported.input_names,
            &imported.output_names,
            target.lowering(),
        )
    }
}
