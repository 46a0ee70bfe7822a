//! Dimensions (fixed or symbolic), shapes and tensor types.

use crate::dtype::DType;
use std::fmt;

/// One dimension of a shape: a known size or a named unknown.
///
/// A symbolic name may be an expression such as `(H-3)/2+1` produced by shape
/// inference; it is opaque to the IR and becomes concrete at specialization.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dim {
    Fixed(usize),
    Sym(String),
}

impl Dim {
    pub fn fixed(&self) -> Option<usize> {
        match self {
            Dim::Fixed(n) => Some(*n),
            Dim::Sym(_) => None,
        }
    }

    pub fn is_one(&self) -> bool {
        *self == Dim::Fixed(1)
    }
}

impl From<usize> for Dim {
    fn from(n: usize) -> Self {
        Dim::Fixed(n)
    }
}

/// A symbolic dim named `s` (a batch size `"N"`, say).
impl From<&str> for Dim {
    fn from(s: &str) -> Self {
        Dim::Sym(s.to_string())
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Sym(s) if is_plain_ident(s) => f.write_str(s),
            Dim::Sym(s) => write!(f, "{s:?}"),
        }
    }
}

/// True when `s` can be printed without quotes as a symbolic dim.
pub fn is_plain_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A shape: one [`Dim`] per axis.
pub type Shape = Vec<Dim>;

/// Fixed sizes of a shape, or `None` when any dim is symbolic.
pub fn fixed_shape(shape: &[Dim]) -> Option<Vec<usize>> {
    shape.iter().map(Dim::fixed).collect()
}

/// Checks `given` sizes against a `declared` shape and records what its symbolic dims
/// are bound to: fixed dims must match, and a symbol already in `bindings` (shared by
/// all the inputs of one graph) must get the same size again.
pub fn bind_shape(
    declared: &[Dim],
    given: &[usize],
    bindings: &mut std::collections::HashMap<String, usize>,
) -> Result<(), String> {
    let mismatch = || {
        format!(
            "expects shape {} but got {given:?}",
            crate::infer::show_shape(declared)
        )
    };
    if given.len() != declared.len() {
        return Err(mismatch());
    }
    for (d, &g) in declared.iter().zip(given) {
        match d {
            Dim::Fixed(n) if *n != g => return Err(mismatch()),
            Dim::Fixed(_) => {}
            Dim::Sym(s) => {
                if let Some(&prev) = bindings.get(s)
                    && prev != g
                {
                    return Err(format!(
                        "dimension '{s}' is {g} here but {prev} in another input"
                    ));
                }
                bindings.insert(s.clone(), g);
            }
        }
    }
    Ok(())
}

/// Turns concrete sizes into a shape.
pub fn shape_of(sizes: &[usize]) -> Shape {
    sizes.iter().map(|&n| Dim::Fixed(n)).collect()
}

/// The type of a value: element type and shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Shape,
}

impl TensorType {
    pub fn new(dtype: DType, shape: Shape) -> Self {
        TensorType { dtype, shape }
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Element count when every dim is fixed.
    pub fn num_elements(&self) -> Option<usize> {
        self.shape
            .iter()
            .try_fold(1usize, |acc, d| acc.checked_mul(d.fixed()?))
    }

    pub fn fixed_shape(&self) -> Option<Vec<usize>> {
        fixed_shape(&self.shape)
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[", self.dtype)?;
        for (i, d) in self.shape.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}
