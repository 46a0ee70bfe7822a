//! Host tensors: element type, shape and little-endian bytes.

/// Element types the runtime moves around (mirrors the IR's dtypes by name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElemType {
    F16,
    BF16,
    F32,
    F64,
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    Bool,
}

impl ElemType {
    pub const ALL: [ElemType; 13] = [
        ElemType::F16,
        ElemType::BF16,
        ElemType::F32,
        ElemType::F64,
        ElemType::I8,
        ElemType::I16,
        ElemType::I32,
        ElemType::I64,
        ElemType::U8,
        ElemType::U16,
        ElemType::U32,
        ElemType::U64,
        ElemType::Bool,
    ];

    /// Short name, identical to the IR dtype names (`f32`, `i64`, `bool`, ...).
    pub fn name(self) -> &'static str {
        match self {
            ElemType::F16 => "f16",
            ElemType::BF16 => "bf16",
            ElemType::F32 => "f32",
            ElemType::F64 => "f64",
            ElemType::I8 => "i8",
            ElemType::I16 => "i16",
            ElemType::I32 => "i32",
            ElemType::I64 => "i64",
            ElemType::U8 => "u8",
            ElemType::U16 => "u16",
            ElemType::U32 => "u32",
            ElemType::U64 => "u64",
            ElemType::Bool => "bool",
        }
    }

    pub fn from_name(s: &str) -> Option<ElemType> {
        ElemType::ALL.into_iter().find(|e| e.name() == s)
    }

    pub fn size_bytes(self) -> usize {
        match self {
            ElemType::I8 | ElemType::U8 | ElemType::Bool => 1,
            ElemType::F16 | ElemType::BF16 | ElemType::I16 | ElemType::U16 => 2,
            ElemType::F32 | ElemType::I32 | ElemType::U32 => 4,
            ElemType::F64 | ElemType::I64 | ElemType::U64 => 8,
        }
    }
}

/// A tensor in host memory.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub elem: ElemType,
    pub shape: Vec<usize>,
    /// Little-endian element bytes, row-major.
    pub bytes: Vec<u8>,
}

impl HostTensor {
    /// A tensor of `elem` and `shape` whose every byte is zero (0, 0.0 or false).
    pub fn zeros(elem: ElemType, shape: Vec<usize>) -> HostTensor {
        let bytes = vec![0; elem.size_bytes() * shape.iter().product::<usize>()];
        HostTensor { elem, shape, bytes }
    }

    pub fn num_elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// Every element as `f64` (for summaries).
    pub fn to_f64(&self) -> Vec<f64> {
        let b = &self.bytes;
        let w = self.elem.size_bytes();
        let chunk = |i: usize| &b[i * w..(i + 1) * w];
        (0..self.num_elements())
            .map(|i| {
                let c = chunk(i);
                match self.elem {
                    ElemType::F16 => half::f16::from_le_bytes([c[0], c[1]]).to_f64(),
                    ElemType::BF16 => half::bf16::from_le_bytes([c[0], c[1]]).to_f64(),
                    ElemType::F32 => f32::from_le_bytes(c.try_into().expect("4 bytes")) as f64,
                    ElemType::F64 => f64::from_le_bytes(c.try_into().expect("8 bytes")),
                    ElemType::I8 => c[0] as i8 as f64,
                    ElemType::I16 => i16::from_le_bytes([c[0], c[1]]) as f64,
                    ElemType::I32 => i32::from_le_bytes(c.try_into().expect("4 bytes")) as f64,
                    ElemType::I64 => i64::from_le_bytes(c.try_into().expect("8 bytes")) as f64,
                    ElemType::U8 | ElemType::Bool => c[0] as f64,
                    ElemType::U16 => u16::from_le_bytes([c[0], c[1]]) as f64,
                    ElemType::U32 => u32::from_le_bytes(c.try_into().expect("4 bytes")) as f64,
                    ElemType::U64 => u64::from_le_bytes(c.try_into().expect("8 bytes")) as f64,
                }
            })
            .collect()
    }
}

impl HostTensor {
    /// One line: `NAME: dtype[shape] min=.. max=.. mean=..` (what `smelt run` prints).
    pub fn summary(&self, name: &str) -> String {
        let v = self.to_f64();
        let shape = self
            .shape
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        if v.is_empty() {
            return format!("{name}: {}[{shape}] (empty)", self.elem.name());
        }
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        format!(
            "{name}: {}[{shape}] min={min:.6} max={max:.6} mean={mean:.6}",
            self.elem.name()
        )
    }
}

/// The `.npy` file name of an output in an output directory: every character outside
/// `[A-Za-z0-9_.-]` becomes `_`.
pub fn output_file_name(output: &str) -> String {
    let safe: String = output
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}.npy")
}
