//! Symbolic tensors: handles to values of the graph being traced, and the conversions that
//! bring shapes and `ndarray` parameters in.

use crate::tracer::Tracer;
use smelt_ir::{DType, Data, Dim, Tensor as IrTensor, ValueId};

/// A value of the traced graph. Cheap to copy; operators and methods record ops.
///
/// After a failed op the result is a placeholder that records nothing: the trace reports
/// the first error when it returns.
#[derive(Clone, Copy)]
pub struct Tensor<'t> {
    tracer: &'t Tracer,
    id: Option<ValueId>,
}

impl std::fmt::Debug for Tensor<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.id {
            Some(id) => self.tracer.with_graph(|g| {
                let v = g.value(id);
                write!(f, "Tensor(%{}: {})", v.name, v.ty)
            }),
            None => f.write_str("Tensor(<after an error>)"),
        }
    }
}

impl<'t> Tensor<'t> {
    pub(crate) fn new(tracer: &'t Tracer, id: ValueId) -> Self {
        Tensor {
            tracer,
            id: Some(id),
        }
    }

    pub(crate) fn poisoned(tracer: &'t Tracer) -> Self {
        Tensor { tracer, id: None }
    }

    pub(crate) fn tracer(&self) -> &'t Tracer {
        self.tracer
    }

    pub(crate) fn id(&self) -> Option<ValueId> {
        self.id
    }

    /// The shape (empty after an error).
    pub fn shape(&self) -> Vec<Dim> {
        self.id
            .map(|id| self.tracer.with_graph(|g| g.ty(id).shape.clone()))
            .unwrap_or_default()
    }

    /// The element type (f32 after an error).
    pub fn dtype(&self) -> DType {
        self.id
            .map(|id| self.tracer.with_graph(|g| g.ty(id).dtype))
            .unwrap_or(DType::F32)
    }

    pub fn rank(&self) -> usize {
        self.shape().len()
    }
}

/// Element types of `ndarray` parameters.
pub trait Element: Copy + 'static {
    const DTYPE: DType;
    /// An IR tensor of `shape` holding `values` in row-major order.
    fn tensor(shape: Vec<usize>, values: Vec<Self>) -> smelt_ir::Result<IrTensor>;
}

macro_rules! element {
    ($($t:ty => $d:ident),* $(,)?) => {$(
        impl Element for $t {
            const DTYPE: DType = DType::$d;
            fn tensor(shape: Vec<usize>, values: Vec<Self>) -> smelt_ir::Result<IrTensor> {
                IrTensor::new(shape, Data::$d(values))
            }
        }
    )*};
}
element!(
    f32 => F32, f64 => F64, i8 => I8, i16 => I16, i32 => I32, i64 => I64,
    u8 => U8, u16 => U16, u32 => U32, u64 => U64, bool => Bool,
    half::f16 => F16, half::bf16 => BF16,
);

/// Shapes as tracer methods take them: sizes (`[1, 784]`), or dims mixing sizes and
/// symbolic names (`[sym("N"), 784.into()]`).
pub trait IntoShape {
    fn into_shape(self) -> Vec<Dim>;
}

impl<D: Into<Dim>> IntoShape for Vec<D> {
    fn into_shape(self) -> Vec<Dim> {
        self.into_iter().map(Into::into).collect()
    }
}

impl<D: Into<Dim> + Clone> IntoShape for &[D] {
    fn into_shape(self) -> Vec<Dim> {
        self.iter().cloned().map(Into::into).collect()
    }
}

impl<D: Into<Dim>, const N: usize> IntoShape for [D; N] {
    fn into_shape(self) -> Vec<Dim> {
        self.into_iter().map(Into::into).collect()
    }
}

/// A symbolic dim named `name` (a batch size `"N"`, say), bound when the model is compiled
/// for inputs: `t.input("x", DType::F32, [sym("N"), 784.into()])`.
pub fn sym(name: &str) -> Dim {
    Dim::Sym(name.to_string())
}
