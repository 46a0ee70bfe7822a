//! Dense tensors with concrete values: constants in the graph and the interpreter's values.

use crate::dtype::DType;
use crate::error::{IrError, Result};
use crate::shape::{TensorType, shape_of};
use half::{bf16, f16};

/// Element storage, one variant per dtype, so that constants stay compact.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    I8(Vec<i8>),
    I16(Vec<i16>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    U8(Vec<u8>),
    U16(Vec<u16>),
    U32(Vec<u32>),
    U64(Vec<u64>),
    Bool(Vec<bool>),
}

/// Applies `$body` to the vector inside any [`Data`] variant.
macro_rules! each_data {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            Data::F16($v) => $body,
            Data::BF16($v) => $body,
            Data::F32($v) => $body,
            Data::F64($v) => $body,
            Data::I8($v) => $body,
            Data::I16($v) => $body,
            Data::I32($v) => $body,
            Data::I64($v) => $body,
            Data::U8($v) => $body,
            Data::U16($v) => $body,
            Data::U32($v) => $body,
            Data::U64($v) => $body,
            Data::Bool($v) => $body,
        }
    };
}

/// A tensor with a concrete shape and values.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Data,
}

fn checked_count(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| IrError::Eval(format!("element count of shape {shape:?} overflows")))
}

impl Tensor {
    /// Builds a tensor, checking that the data length matches the shape.
    pub fn new(shape: Vec<usize>, data: Data) -> Result<Tensor> {
        let want = checked_count(&shape)?;
        let have = each_data!(&data, v => v.len());
        if want != have {
            return Err(IrError::Eval(format!(
                "shape {shape:?} needs {want} elements but {have} were given"
            )));
        }
        Ok(Tensor { shape, data })
    }

    pub fn dtype(&self) -> DType {
        match &self.data {
            Data::F16(_) => DType::F16,
            Data::BF16(_) => DType::BF16,
            Data::F32(_) => DType::F32,
            Data::F64(_) => DType::F64,
            Data::I8(_) => DType::I8,
            Data::I16(_) => DType::I16,
            Data::I32(_) => DType::I32,
            Data::I64(_) => DType::I64,
            Data::U8(_) => DType::U8,
            Data::U16(_) => DType::U16,
            Data::U32(_) => DType::U32,
            Data::U64(_) => DType::U64,
            Data::Bool(_) => DType::Bool,
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn data(&self) -> &Data {
        &self.data
    }

    pub fn into_data(self) -> Data {
        self.data
    }

    pub fn len(&self) -> usize {
        each_data!(&self.data, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    pub fn tensor_type(&self) -> TensorType {
        TensorType::new(self.dtype(), shape_of(&self.shape))
    }

    /// Same data, another shape with the same element count.
    pub fn reshaped(mut self, shape: Vec<usize>) -> Result<Tensor> {
        if checked_count(&shape)? != self.len() {
            return Err(IrError::Eval(format!(
                "cannot reshape {:?} ({} elements) to {shape:?}",
                self.shape,
                self.len()
            )));
        }
        self.shape = shape;
        Ok(self)
    }

    /// A tensor of `dtype` with every element equal to `value` (converted as by a cast).
    pub fn full(dtype: DType, shape: Vec<usize>, value: f64) -> Result<Tensor> {
        crate::limits::value_bytes(&shape, dtype).map_err(IrError::Eval)?;
        let n = checked_count(&shape)?;
        Tensor::from_f64(dtype, shape, vec![value; n])
    }

    /// A rank-0 tensor.
    pub fn scalar(dtype: DType, value: f64) -> Tensor {
        Tensor::from_f64(dtype, vec![], vec![value]).expect("one element for a scalar")
    }

    /// Converts `f64` values into `dtype`, rounding floats and truncating (saturating) into integers.
    pub fn from_f64(dtype: DType, shape: Vec<usize>, v: Vec<f64>) -> Result<Tensor> {
        let data = match dtype {
            DType::F16 => Data::F16(v.iter().map(|&x| f16::from_f64(x)).collect()),
            DType::BF16 => Data::BF16(v.iter().map(|&x| bf16::from_f64(x)).collect()),
            DType::F32 => Data::F32(v.iter().map(|&x| x as f32).collect()),
            DType::F64 => Data::F64(v),
            DType::I8 => Data::I8(v.iter().map(|&x| x as i8).collect()),
            DType::I16 => Data::I16(v.iter().map(|&x| x as i16).collect()),
            DType::I32 => Data::I32(v.iter().map(|&x| x as i32).collect()),
            DType::I64 => Data::I64(v.iter().map(|&x| x as i64).collect()),
            DType::U8 => Data::U8(v.iter().map(|&x| x as u8).collect()),
            DType::U16 => Data::U16(v.iter().map(|&x| x as u16).collect()),
            DType::U32 => Data::U32(v.iter().map(|&x| x as u32).collect()),
            DType::U64 => Data::U64(v.iter().map(|&x| x as u64).collect()),
            DType::Bool => Data::Bool(v.iter().map(|&x| x != 0.0).collect()),
        };
        Tensor::new(shape, data)
    }

    /// Converts integer values into `dtype`, wrapping as two's complement arithmetic does.
    ///
    /// `u64` values travel bit-cast in the `i64`.
    pub fn from_i64(dtype: DType, shape: Vec<usize>, v: Vec<i64>) -> Result<Tensor> {
        let data = match dtype {
            DType::F16 => Data::F16(v.iter().map(|&x| f16::from_f64(x as f64)).collect()),
            DType::BF16 => Data::BF16(v.iter().map(|&x| bf16::from_f64(x as f64)).collect()),
            DType::F32 => Data::F32(v.iter().map(|&x| x as f32).collect()),
            DType::F64 => Data::F64(v.iter().map(|&x| x as f64).collect()),
            DType::I8 => Data::I8(v.iter().map(|&x| x as i8).collect()),
            DType::I16 => Data::I16(v.iter().map(|&x| x as i16).collect()),
            DType::I32 => Data::I32(v.iter().map(|&x| x as i32).collect()),
            DType::I64 => Data::I64(v),
            DType::U8 => Data::U8(v.iter().map(|&x| x as u8).collect()),
            DType::U16 => Data::U16(v.iter().map(|&x| x as u16).collect()),
            DType::U32 => Data::U32(v.iter().map(|&x| x as u32).collect()),
            DType::U64 => Data::U64(v.iter().map(|&x| x as u64).collect()),
            DType::Bool => Data::Bool(v.iter().map(|&x| x != 0).collect()),
        };
        Tensor::new(shape, data)
    }

    pub fn from_bool(shape: Vec<usize>, v: Vec<bool>) -> Result<Tensor> {
        Tensor::new(shape, Data::Bool(v))
    }

    /// Every element as `f64` (integers converted; `u64` as unsigned).
    pub fn to_f64(&self) -> Vec<f64> {
        match &self.data {
            Data::F16(v) => v.iter().map(|x| x.to_f64()).collect(),
            Data::BF16(v) => v.iter().map(|x| x.to_f64()).collect(),
            Data::F32(v) => v.iter().map(|&x| x as f64).collect(),
            Data::F64(v) => v.clone(),
            Data::I8(v) => v.iter().map(|&x| x as f64).collect(),
            Data::I16(v) => v.iter().map(|&x| x as f64).collect(),
            Data::I32(v) => v.iter().map(|&x| x as f64).collect(),
            Data::I64(v) => v.iter().map(|&x| x as f64).collect(),
            Data::U8(v) => v.iter().map(|&x| x as f64).collect(),
            Data::U16(v) => v.iter().map(|&x| x as f64).collect(),
            Data::U32(v) => v.iter().map(|&x| x as f64).collect(),
            Data::U64(v) => v.iter().map(|&x| x as f64).collect(),
            Data::Bool(v) => v.iter().map(|&x| if x { 1.0 } else { 0.0 }).collect(),
        }
    }

    /// Every element as `i64` (floats truncated toward zero, `u64` bit-cast).
    pub fn to_i64(&self) -> Vec<i64> {
        match &self.data {
            Data::F16(v) => v.iter().map(|x| x.to_f64() as i64).collect(),
            Data::BF16(v) => v.iter().map(|x| x.to_f64() as i64).collect(),
            Data::F32(v) => v.iter().map(|&x| x as i64).collect(),
            Data::F64(v) => v.iter().map(|&x| x as i64).collect(),
            Data::I8(v) => v.iter().map(|&x| x as i64).collect(),
            Data::I16(v) => v.iter().map(|&x| x as i64).collect(),
            Data::I32(v) => v.iter().map(|&x| x as i64).collect(),
            Data::I64(v) => v.clone(),
            Data::U8(v) => v.iter().map(|&x| x as i64).collect(),
            Data::U16(v) => v.iter().map(|&x| x as i64).collect(),
            Data::U32(v) => v.iter().map(|&x| x as i64).collect(),
            Data::U64(v) => v.iter().map(|&x| x as i64).collect(),
            Data::Bool(v) => v.iter().map(|&x| x as i64).collect(),
        }
    }

    /// Every element as bool (non-zero is true).
    pub fn to_bool(&self) -> Vec<bool> {
        match &self.data {
            Data::Bool(v) => v.clone(),
            _ if self.dtype().is_float() => self.to_f64().into_iter().map(|x| x != 0.0).collect(),
            _ => self.to_i64().into_iter().map(|x| x != 0).collect(),
        }
    }

    /// Converts to another dtype with the semantics of ONNX `Cast`.
    pub fn cast(&self, to: DType) -> Tensor {
        if to == self.dtype() {
            return self.clone();
        }
        let shape = self.shape.clone();
        // u64 goes through f64 too: its i64 form is bit-cast and would turn large values negative.
        let via_float = (self.dtype().is_float() && !to.is_bool())
            || (self.dtype() == DType::U64 && to.is_float());
        let result = if via_float {
            Tensor::from_f64(to, shape, self.to_f64())
        } else if to.is_bool() {
            Tensor::from_bool(shape, self.to_bool())
        } else {
            Tensor::from_i64(to, shape, self.to_i64())
        };
        result.expect("cast keeps the element count")
    }

    /// Reads little-endian bytes, as stored in ONNX `raw_data` and `.npy` files.
    pub fn from_le_bytes(dtype: DType, shape: Vec<usize>, bytes: &[u8]) -> Result<Tensor> {
        let n = checked_count(&shape)?;
        let need = n
            .checked_mul(dtype.size_bytes())
            .ok_or_else(|| IrError::Eval(format!("byte size of shape {shape:?} overflows")))?;
        if bytes.len() != need {
            return Err(IrError::Eval(format!(
                "{dtype} tensor of shape {shape:?} needs {need} bytes, got {}",
                bytes.len()
            )));
        }
        macro_rules! read {
            ($t:ty, $variant:ident) => {
                Data::$variant(
                    bytes
                        .chunks_exact(std::mem::size_of::<$t>())
                        .map(|c| <$t>::from_le_bytes(c.try_into().expect("exact chunk")))
                        .collect(),
                )
            };
        }
        let data = match dtype {
            DType::F16 => read!(f16, F16),
            DType::BF16 => read!(bf16, BF16),
            DType::F32 => read!(f32, F32),
            DType::F64 => read!(f64, F64),
            DType::I8 => read!(i8, I8),
            DType::I16 => read!(i16, I16),
            DType::I32 => read!(i32, I32),
            DType::I64 => read!(i64, I64),
            DType::U8 => read!(u8, U8),
            DType::U16 => read!(u16, U16),
            DType::U32 => read!(u32, U32),
            DType::U64 => read!(u64, U64),
            DType::Bool => Data::Bool(bytes.iter().map(|&b| b != 0).collect()),
        };
        Tensor::new(shape, data)
    }

    /// The elements as little-endian bytes.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        let mut out = vec![0; self.byte_len()];
        self.write_le_bytes_to(&mut out);
        out
    }

    /// Bytes the elements take.
    pub fn byte_len(&self) -> usize {
        self.len() * self.dtype().size_bytes()
    }

    /// Writes the elements as little-endian bytes over `out`, which holds
    /// [`Tensor::byte_len`] bytes, with no allocation (a 34 MB weight took 0.2 s through
    /// a vector per element).
    pub fn write_le_bytes_to(&self, out: &mut [u8]) {
        assert_eq!(out.len(), self.byte_len(), "the destination's size");
        let width = self.dtype().size_bytes();
        each_data!(&self.data, v => out
            .chunks_exact_mut(width)
            .zip(v)
            .for_each(|(o, x)| x.le_into(o)))
    }
}

/// Writes the little-endian bytes of one element of any storage type.
trait LeBytes {
    fn le_into(&self, out: &mut [u8]);
}

macro_rules! le_impl {
    ($($t:ty),*) => {$(impl LeBytes for $t {
        fn le_into(&self, out: &mut [u8]) { out.copy_from_slice(&self.to_le_bytes()) }
    })*};
}
le_impl!(f16, bf16, f32, f64, i8, i16, i32, i64, u8, u16, u32, u64);

impl LeBytes for bool {
    fn le_into(&self, out: &mut [u8]) {
        out[0] = *self as u8
    }
}

macro_rules! map_data {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            Data::F16($v) => Data::F16($body),
            Data::BF16($v) => Data::BF16($body),
            Data::F32($v) => Data::F32($body),
            Data::F64($v) => Data::F64($body),
            Data::I8($v) => Data::I8($body),
            Data::I16($v) => Data::I16($body),
            Data::I32($v) => Data::I32($body),
            Data::I64($v) => Data::I64($body),
            Data::U8($v) => Data::U8($body),
            Data::U16($v) => Data::U16($body),
            Data::U32($v) => Data::U32($body),
            Data::U64($v) => Data::U64($body),
            Data::Bool($v) => Data::Bool($body),
        }
    };
}

/// Marks a position in [`Tensor::take`] that receives the fill value.
pub const FILL: usize = usize::MAX;

impl Tensor {
    /// A tensor of `shape` whose i-th element is element `idx[i]` of `self`
    /// (or of `fill`'s first element where `idx[i] == FILL`). Every data movement
    /// op of the interpreter reduces to this.
    pub fn take(&self, shape: Vec<usize>, idx: &[usize], fill: Option<&Tensor>) -> Result<Tensor> {
        let fill = fill.map(|f| f.cast(self.dtype()));
        let n = self.len();
        if let Some(&bad) = idx
            .iter()
            .find(|&&i| i >= n && !(i == FILL && fill.is_some()))
        {
            return Err(IrError::Eval(format!(
                "index {bad} out of range for {n} elements"
            )));
        }
        let data = match (&self.data, fill.as_ref().map(|f| &f.data)) {
            (d, None) => map_data!(d, v => idx.iter().map(|&i| v[i]).collect()),
            (d, Some(f)) => {
                let d2 = d.clone();
                match (d2, f) {
                    (Data::F16(v), Data::F16(f)) => Data::F16(pick(&v, idx, f)),
                    (Data::BF16(v), Data::BF16(f)) => Data::BF16(pick(&v, idx, f)),
                    (Data::F32(v), Data::F32(f)) => Data::F32(pick(&v, idx, f)),
                    (Data::F64(v), Data::F64(f)) => Data::F64(pick(&v, idx, f)),
                    (Data::I8(v), Data::I8(f)) => Data::I8(pick(&v, idx, f)),
                    (Data::I16(v), Data::I16(f)) => Data::I16(pick(&v, idx, f)),
                    (Data::I32(v), Data::I32(f)) => Data::I32(pick(&v, idx, f)),
                    (Data::I64(v), Data::I64(f)) => Data::I64(pick(&v, idx, f)),
                    (Data::U8(v), Data::U8(f)) => Data::U8(pick(&v, idx, f)),
                    (Data::U16(v), Data::U16(f)) => Data::U16(pick(&v, idx, f)),
                    (Data::U32(v), Data::U32(f)) => Data::U32(pick(&v, idx, f)),
                    (Data::U64(v), Data::U64(f)) => Data::U64(pick(&v, idx, f)),
                    (Data::Bool(v), Data::Bool(f)) => Data::Bool(pick(&v, idx, f)),
                    _ => unreachable!("fill was cast to the data's dtype"),
                }
            }
        };
        Tensor::new(shape, data)
    }

    /// `outer` rows of each part in turn (row `o` of part `p` is its elements
    /// `o * chunks[p]..(o + 1) * chunks[p]`), flat: a concatenation along an inner axis.
    pub fn interleave_rows(parts: &[&Tensor], chunks: &[usize], outer: usize) -> Result<Tensor> {
        let first = parts
            .first()
            .ok_or_else(|| IrError::Eval("nothing to concatenate".into()))?;
        if parts.iter().any(|p| p.dtype() != first.dtype())
            || parts.len() != chunks.len()
            || parts.iter().zip(chunks).any(|(p, &c)| p.len() != c * outer)
        {
            return Err(IrError::Eval(
                "interleaved parts differ in dtype or size".into(),
            ));
        }
        let total: usize = chunks.iter().sum::<usize>() * outer;
        macro_rules! interleave {
            ($($var:ident),*) => {
                match &first.data {
                    $(Data::$var(_) => {
                        let mut out = Vec::with_capacity(total);
                        for o in 0..outer {
                            for (p, &c) in parts.iter().zip(chunks) {
                                let Data::$var(v) = &p.data else { unreachable!("dtypes checked") };
                                out.extend_from_slice(&v[o * c..(o + 1) * c]);
                            }
                        }
                        Data::$var(out)
                    })*
                }
            };
        }
        let data = interleave!(
            F16, BF16, F32, F64, I8, I16, I32, I64, U8, U16, U32, U64, Bool
        );
        Tensor::new(vec![total], data)
    }

    /// Flat concatenation of several tensors of one dtype (shape `[total]`).
    pub fn concat_flat(parts: &[&Tensor]) -> Result<Tensor> {
        let first = parts
            .first()
            .ok_or_else(|| IrError::Eval("nothing to concatenate".into()))?;
        let mut data = first.data.clone();
        for p in &parts[1..] {
            if p.dtype() != first.dtype() {
                return Err(IrError::Eval(format!(
                    "cannot concatenate {} with {}",
                    first.dtype(),
                    p.dtype()
                )));
            }
            macro_rules! ext {
                ($($var:ident),*) => {
                    match (&mut data, &p.data) {
                        $((Data::$var(a), Data::$var(b)) => a.extend_from_slice(b),)*
                        _ => unreachable!("dtypes checked above"),
                    }
                };
            }
            ext!(
                F16, BF16, F32, F64, I8, I16, I32, I64, U8, U16, U32, U64, Bool
            );
        }
        let n = each_data!(&data, v => v.len());
        Tensor::new(vec![n], data)
    }
}

fn pick<T: Copy>(v: &[T], idx: &[usize], fill: &[T]) -> Vec<T> {
    idx.iter()
        .map(|&i| if i == FILL { fill[0] } else { v[i] })
        .collect()
}

impl Tensor {
    /// A hash of dtype, shape and the bits of up to 4096 evenly spaced elements: cheap on
    /// large weights. Equal tensors hash equal; equal hashes must be confirmed with
    /// [`Tensor::bits_eq`].
    pub fn content_hash(&self) -> u64 {
        use std::hash::{DefaultHasher, Hash, Hasher};
        const SAMPLES: usize = 4096;
        let mut h = DefaultHasher::new();
        self.dtype().hash(&mut h);
        self.shape.hash(&mut h);
        let n = self.len();
        let stride = n.div_ceil(SAMPLES).max(1);
        macro_rules! sample {
            ($v:expr, $bits:expr) => {
                $v.iter()
                    .step_by(stride)
                    .for_each(|x| $bits(x).hash(&mut h))
            };
        }
        match &self.data {
            Data::F16(v) => sample!(v, |x: &f16| x.to_bits()),
            Data::BF16(v) => sample!(v, |x: &bf16| x.to_bits()),
            Data::F32(v) => sample!(v, |x: &f32| x.to_bits()),
            Data::F64(v) => sample!(v, |x: &f64| x.to_bits()),
            Data::I8(v) => sample!(v, |x: &i8| *x),
            Data::I16(v) => sample!(v, |x: &i16| *x),
            Data::I32(v) => sample!(v, |x: &i32| *x),
            Data::I64(v) => sample!(v, |x: &i64| *x),
            Data::U8(v) => sample!(v, |x: &u8| *x),
            Data::U16(v) => sample!(v, |x: &u16| *x),
            Data::U32(v) => sample!(v, |x: &u32| *x),
            Data::U64(v) => sample!(v, |x: &u64| *x),
            Data::Bool(v) => sample!(v, |x: &bool| *x),
        }
        h.finish()
    }

    /// Bit-exact equality of dtype, shape and elements (NaN equal to NaN), without copying.
    pub fn bits_eq(&self, other: &Tensor) -> bool {
        if self.shape != other.shape || self.dtype() != other.dtype() {
            return false;
        }
        match (&self.data, &other.data) {
            (Data::F16(a), Data::F16(b)) => {
                a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
            }
            (Data::BF16(a), Data::BF16(b)) => {
                a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
            }
            (Data::F32(a), Data::F32(b)) => {
                a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
            }
            (Data::F64(a), Data::F64(b)) => {
                a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
            }
            (a, b) => a == b,
        }
    }
}

impl Tensor {
    /// True when `pred` holds for every element seen as `f64`; stops at the first failure
    /// and allocates nothing.
    pub fn all_f64(&self, mut pred: impl FnMut(f64) -> bool) -> bool {
        match &self.data {
            Data::F16(v) => v.iter().all(|x| pred(x.to_f64())),
            Data::BF16(v) => v.iter().all(|x| pred(x.to_f64())),
            Data::F32(v) => v.iter().all(|&x| pred(x as f64)),
            Data::F64(v) => v.iter().all(|&x| pred(x)),
            Data::I8(v) => v.iter().all(|&x| pred(x as f64)),
            Data::I16(v) => v.iter().all(|&x| pred(x as f64)),
            Data::I32(v) => v.iter().all(|&x| pred(x as f64)),
            Data::I64(v) => v.iter().all(|&x| pred(x as f64)),
            Data::U8(v) => v.iter().all(|&x| pred(x as f64)),
            Data::U16(v) => v.iter().all(|&x| pred(x as f64)),
            Data::U32(v) => v.iter().all(|&x| pred(x as f64)),
            Data::U64(v) => v.iter().all(|&x| pred(x as f64)),
            Data::Bool(v) => v.iter().all(|&x| pred(if x { 1.0 } else { 0.0 })),
        }
    }
}
