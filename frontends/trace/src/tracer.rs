//! The tracer: owns the graph being recorded, hands out symbolic tensors, and records each
//! op with the caller's source location (the node's name) or keeps the first error.

use crate::error::{Result, TraceError};
use crate::tensor::{Element, IntoShape, Tensor};
use smelt_ir::{Compose, DType, Graph, Op, Tensor as IrTensor, TensorType, ValueId};
use std::cell::RefCell;
use std::panic::Location;

/// Records the ops of a traced function. Handed to the closure of [`crate::trace`].
#[derive(Debug)]
pub struct Tracer {
    state: RefCell<State>,
}

#[derive(Debug)]
struct State {
    graph: Graph,
    /// The first error; once set, nothing more is recorded.
    error: Option<TraceError>,
}

/// Emits core ops into the graph on behalf of one traced call; node names are its location.
pub(crate) struct Recorder<'g> {
    graph: &'g mut Graph,
    node_name: String,
}

impl Compose for Recorder<'_> {
    /// The reason only: the tracer adds the location and the operands' types.
    type Error = String;

    fn op(&mut self, op: Op, inputs: &[ValueId]) -> Result<ValueId, String> {
        let outs = self
            .graph
            .add_node("", op, inputs, &[])
            .map_err(|e| match e {
                smelt_ir::IrError::Invalid { reason, .. } => reason,
                other => other.to_string(),
            })?;
        if let Some(node) = self.graph.nodes.last_mut() {
            node.name = self.node_name.clone();
        }
        Ok(outs[0])
    }

    fn constant(&mut self, t: IrTensor) -> ValueId {
        self.op(Op::Constant(t), &[])
            .expect("a constant always type-checks")
    }

    fn ty(&self, v: ValueId) -> &TensorType {
        self.graph.ty(v)
    }
}

impl Recorder<'_> {
    /// `axis` (negative counts from the end) as an index into `rank` axes.
    pub(crate) fn axis(&self, axis: i64, rank: usize) -> Result<usize, String> {
        let resolved = if axis < 0 { axis + rank as i64 } else { axis };
        if (0..rank as i64).contains(&resolved) {
            Ok(resolved as usize)
        } else {
            Err(format!("axis {axis} is out of range for rank {rank}"))
        }
    }

    /// Whether `name` may be given to `id` (`None`: a value about to be made): not when
    /// another value has it.
    fn check_name(&self, name: &str, id: Option<ValueId>) -> Result<(), String> {
        match self.graph.find(name) {
            Some(other) if Some(other) != id => Err(format!("the name '{name}' is already used")),
            _ => Ok(()),
        }
    }
}

fn location_error(location: &Location<'_>, op: &str, reason: String) -> TraceError {
    TraceError::Op {
        file: location.file().to_string(),
        line: location.line(),
        column: location.column(),
        op: op.to_string(),
        reason,
    }
}

impl Tracer {
    pub(crate) fn new(name: &str) -> Tracer {
        Tracer {
            state: RefCell::new(State {
                graph: Graph::new(name),
                error: None,
            }),
        }
    }

    /// The recorded graph, verified, or the first error.
    pub(crate) fn finish(self) -> Result<Graph> {
        let state = self.state.into_inner();
        if let Some(e) = state.error {
            return Err(e);
        }
        if state.graph.outputs.is_empty() {
            return Err(TraceError::NoOutputs(state.graph.name));
        }
        state.graph.verify()?;
        Ok(state.graph)
    }

    /// Records one traced call `op` on `operands`: `build` emits its core ops. On failure the
    /// error names the caller's location, the op, the reason and the operands' types.
    #[track_caller]
    pub(crate) fn record<'t>(
        &'t self,
        op: &str,
        operands: &[Tensor<'t>],
        build: impl FnOnce(&mut Recorder<'_>, &[ValueId]) -> Result<ValueId, String>,
    ) -> Tensor<'t> {
        let location = Location::caller();
        let mut state = self.state.borrow_mut();
        if state.error.is_some() {
            return Tensor::poisoned(self);
        }
        let mut ids = Vec::with_capacity(operands.len());
        for t in operands {
            if !std::ptr::eq(t.tracer(), self) {
                state.error = Some(location_error(
                    location,
                    op,
                    "an operand belongs to another trace".into(),
                ));
                return Tensor::poisoned(self);
            }
            match t.id() {
                Some(id) => ids.push(id),
                None => return Tensor::poisoned(self),
            }
        }
        let mut recorder = Recorder {
            graph: &mut state.graph,
            node_name: format!(
                "{}:{}:{}",
                location.file(),
                location.line(),
                location.column()
            ),
        };
        match build(&mut recorder, &ids) {
            Ok(id) => Tensor::new(self, id),
            Err(reason) => {
                let types: Vec<String> =
                    ids.iter().map(|&v| state.graph.ty(v).to_string()).collect();
                let reason = match types.len() {
                    0 => reason,
                    1 => format!("{reason} (operand {})", types[0]),
                    _ => format!("{reason} (operands {})", types.join(", ")),
                };
                state.error = Some(location_error(location, op, reason));
                Tensor::poisoned(self)
            }
        }
    }

    /// Records `reason` as the error of a call `op` at the caller's location.
    #[track_caller]
    pub(crate) fn fail(&self, op: &str, reason: String) -> Tensor<'_> {
        self.record(op, &[], |_, _| Err(reason))
    }

    /// Reads the graph (for a tensor's type).
    pub(crate) fn with_graph<R>(&self, f: impl FnOnce(&Graph) -> R) -> R {
        f(&self.state.borrow().graph)
    }

    /// A graph input named `name` of `dtype` and `shape` (fixed or symbolic dims:
    /// `[sym("N"), 784.into()]`).
    #[track_caller]
    pub fn input(&self, name: &str, dtype: DType, shape: impl IntoShape) -> Tensor<'_> {
        let shape = shape.into_shape();
        self.record("input", &[], |r, _| {
            r.check_name(name, None)?;
            Ok(r.graph.add_input(name, TensorType::new(dtype, shape)))
        })
    }

    /// A named constant parameter holding `array` (weights, biases, tables).
    #[track_caller]
    pub fn param<A, S, D>(&self, name: &str, array: &ndarray::ArrayBase<S, D>) -> Tensor<'_>
    where
        A: Element,
        S: ndarray::Data<Elem = A>,
        D: ndarray::Dimension,
    {
        let tensor = A::tensor(array.shape().to_vec(), array.iter().copied().collect());
        self.record("param", &[], |r, _| {
            r.check_name(name, None)?;
            let tensor = tensor.map_err(|e| e.to_string())?;
            let id = r.constant(tensor);
            r.graph.rename(id, name).map_err(|e| e.to_string())?;
            Ok(id)
        })
    }

    /// An unnamed constant holding `array`.
    #[track_caller]
    pub fn constant<A, S, D>(&self, array: &ndarray::ArrayBase<S, D>) -> Tensor<'_>
    where
        A: Element,
        S: ndarray::Data<Elem = A>,
        D: ndarray::Dimension,
    {
        let tensor = A::tensor(array.shape().to_vec(), array.iter().copied().collect());
        self.record("constant", &[], |r, _| {
            Ok(r.constant(tensor.map_err(|e| e.to_string())?))
        })
    }

    /// A rank-0 constant.
    #[track_caller]
    pub fn scalar(&self, dtype: DType, value: f64) -> Tensor<'_> {
        self.record("scalar", &[], |r, _| Ok(r.scalar(dtype, value)))
    }

    /// `parts` joined along `axis` (negative counts from the end).
    #[track_caller]
    pub fn concat<'t>(&'t self, parts: &[Tensor<'t>], axis: i64) -> Tensor<'t> {
        self.record("concat", parts, |r, ids| {
            let first = ids.first().ok_or("needs at least one tensor")?;
            let axis = r.axis(axis, r.rank(*first))?;
            r.op(Op::Concat { axis }, ids)
        })
    }

    /// Makes `tensor` a graph output named `name`.
    #[track_caller]
    pub fn output<'t>(&'t self, name: &str, tensor: Tensor<'t>) {
        self.record("output", &[tensor], |r, ids| {
            let id = ids[0];
            if r.graph.inputs.contains(&id) || r.graph.outputs.contains(&id) {
                return Err(format!(
                    "'{}' is already a graph input or output; compute a new value",
                    r.graph.value(id).name
                ));
            }
            r.check_name(name, Some(id))?;
            let g = &mut r.graph;
            g.rename(id, name).map_err(|e| e.to_string())?;
            g.outputs.push(id);
            Ok(id)
        });
    }
}
