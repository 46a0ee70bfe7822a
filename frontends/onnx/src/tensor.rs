//! TensorProto to IR tensors: typed fields, `raw_data` and confined external data.

use crate::error::{OnnxError, Result};
use crate::proto::{TensorProto, tensor_proto};
use half::{bf16, f16};
use smelt_ir::{DType, Tensor};
use std::path::{Component, Path};

/// The IR dtype of an ONNX `TensorProto.DataType` code, if smelt supports it.
pub fn dtype_from_onnx(code: i32) -> Option<DType> {
    Some(match code {
        1 => DType::F32,
        2 => DType::U8,
        3 => DType::I8,
        4 => DType::U16,
        5 => DType::I16,
        6 => DType::I32,
        7 => DType::I64,
        9 => DType::Bool,
        10 => DType::F16,
        11 => DType::F64,
        12 => DType::U32,
        13 => DType::U64,
        16 => DType::BF16,
        _ => return None,
    })
}

/// The ONNX `DataType` code of an IR dtype.
pub fn dtype_to_onnx(d: DType) -> i32 {
    match d {
        DType::F32 => 1,
        DType::U8 => 2,
        DType::I8 => 3,
        DType::U16 => 4,
        DType::I16 => 5,
        DType::I32 => 6,
        DType::I64 => 7,
        DType::Bool => 9,
        DType::F16 => 10,
        DType::F64 => 11,
        DType::U32 => 12,
        DType::U64 => 13,
        DType::BF16 => 16,
    }
}

/// Human name of an ONNX data type code, for error messages.
pub fn onnx_type_name(code: i32) -> String {
    let names = [
        "UNDEFINED",
        "FLOAT",
        "UINT8",
        "INT8",
        "UINT16",
        "INT16",
        "INT32",
        "INT64",
        "STRING",
        "BOOL",
        "FLOAT16",
        "DOUBLE",
        "UINT32",
        "UINT64",
        "COMPLEX64",
        "COMPLEX128",
        "BFLOAT16",
        "FLOAT8E4M3FN",
        "FLOAT8E4M3FNUZ",
        "FLOAT8E5M2",
        "FLOAT8E5M2FNUZ",
        "UINT4",
        "INT4",
        "FLOAT4E2M1",
        "FLOAT8E8M0",
        "UINT2",
        "INT2",
    ];
    names
        .get(code as usize)
        .map_or_else(|| format!("type code {code}"), |s| s.to_string())
}

/// Decodes a TensorProto; `base_dir` is the model's directory for external data (None refuses it).
pub fn tensor_from_proto(t: &TensorProto, base_dir: Option<&Path>) -> Result<Tensor> {
    let name = t.name.clone().unwrap_or_default();
    let err = |reason: String| OnnxError::Tensor {
        name: name.clone(),
        reason,
    };
    let code = t.data_type.unwrap_or(0);
    let dtype = dtype_from_onnx(code).ok_or_else(|| {
        err(format!(
            "data type {} is not supported",
            onnx_type_name(code)
        ))
    })?;
    let mut shape = Vec::with_capacity(t.dims.len());
    for &d in &t.dims {
        shape.push(
            usize::try_from(d)
                .map_err(|_| err(format!("negative dimension {d} in {:?}", t.dims)))?,
        );
    }
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| err(format!("element count of {:?} overflows", t.dims)))?;
    let byte_len = count
        .checked_mul(dtype.size_bytes())
        .ok_or_else(|| err(format!("byte size of {:?} overflows", t.dims)))?;
    // Refused before its data is read or copied.
    smelt_ir::limits::value_bytes(&shape, dtype).map_err(err)?;
    if t.data_location == Some(tensor_proto::DataLocation::External as i32) {
        let bytes = read_external(t, base_dir, byte_len).map_err(err)?;
        return Tensor::from_le_bytes(dtype, shape, &bytes).map_err(|e| err(e.to_string()));
    }
    if let Some(raw) = &t.raw_data {
        if raw.len() != byte_len {
            return Err(err(format!(
                "raw_data has {} bytes, shape {:?} of {dtype} needs {byte_len}",
                raw.len(),
                t.dims
            )));
        }
        return Tensor::from_le_bytes(dtype, shape, raw).map_err(|e| err(e.to_string()));
    }
    let have = match dtype {
        DType::F32 => t.float_data.len(),
        DType::F64 => t.double_data.len(),
        DType::I64 => t.int64_data.len(),
        DType::U32 | DType::U64 => t.uint64_data.len(),
        _ => t.int32_data.len(),
    };
    if have != count {
        return Err(err(format!(
            "holds {have} values, shape {:?} needs {count}",
            t.dims
        )));
    }
    let result = match dtype {
        DType::F32 => Tensor::new(shape, smelt_ir::Data::F32(t.float_data.clone())),
        DType::F64 => Tensor::new(shape, smelt_ir::Data::F64(t.double_data.clone())),
        DType::I64 => Tensor::new(shape, smelt_ir::Data::I64(t.int64_data.clone())),
        DType::U32 | DType::U64 => Tensor::from_i64(
            dtype,
            shape,
            t.uint64_data.iter().map(|&v| v as i64).collect(),
        ),
        DType::F16 => Tensor::new(
            shape,
            smelt_ir::Data::F16(
                t.int32_data
                    .iter()
                    .map(|&v| f16::from_bits(v as u16))
                    .collect(),
            ),
        ),
        DType::BF16 => Tensor::new(
            shape,
            smelt_ir::Data::BF16(
                t.int32_data
                    .iter()
                    .map(|&v| bf16::from_bits(v as u16))
                    .collect(),
            ),
        ),
        _ => Tensor::from_i64(
            dtype,
            shape,
            t.int32_data.iter().map(|&v| v as i64).collect(),
        ),
    };
    result.map_err(|e| err(e.to_string()))
}

/// Reads external tensor data, confined to the model's directory.
fn read_external(
    t: &TensorProto,
    base_dir: Option<&Path>,
    byte_len: usize,
) -> std::result::Result<Vec<u8>, String> {
    let mut location = None;
    let mut offset = 0u64;
    let mut length = None;
    for kv in &t.external_data {
        let value = kv.value.clone().unwrap_or_default();
        match kv.key.as_deref() {
            Some("location") => location = Some(value),
            Some("offset") => {
                offset = value
                    .parse()
                    .map_err(|_| format!("bad external data offset '{value}'"))?
            }
            Some("length") => {
                length = Some(
                    value
                        .parse::<u64>()
                        .map_err(|_| format!("bad external data length '{value}'"))?,
                )
            }
            _ => {}
        }
    }
    let location = location.ok_or("external data without a location")?;
    let base =
        base_dir.ok_or("external data needs the model's directory (load the model from a file)")?;
    let rel = Path::new(&location);
    if rel.is_absolute() || location.starts_with('/') || location.starts_with('\\') {
        return Err(format!(
            "external data path '{location}' is absolute; only paths inside the model's directory are allowed"
        ));
    }
    if rel
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!(
            "external data path '{location}' leaves the model's directory"
        ));
    }
    let path = base.join(rel);
    let canon_base = base
        .canonicalize()
        .map_err(|e| format!("model directory: {e}"))?;
    let canon = path
        .canonicalize()
        .map_err(|e| format!("external data file '{location}': {e}"))?;
    if !canon.starts_with(&canon_base) {
        return Err(format!(
            "external data path '{location}' resolves outside the model's directory"
        ));
    }
    let want = length.unwrap_or(byte_len as u64);
    if want != byte_len as u64 {
        return Err(format!(
            "external data length {want} does not match the tensor's {byte_len} bytes"
        ));
    }
    let file_len = std::fs::metadata(&canon)
        .map_err(|e| format!("external data file '{location}': {e}"))?
        .len();
    if offset.checked_add(want).is_none_or(|end| end > file_len) {
        return Err(format!(
            "external data range {offset}+{want} runs past the end of '{location}' ({file_len} bytes)"
        ));
    }
    use std::io::{Read, Seek, SeekFrom};
    let mut f =
        std::fs::File::open(&canon).map_err(|e| format!("external data file '{location}': {e}"))?;
    f.seek(SeekFrom::Start(offset)).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; byte_len];
    f.read_exact(&mut buf)
        .map_err(|e| format!("reading external data '{location}': {e}"))?;
    Ok(buf)
}

/// Encodes an IR tensor as a TensorProto with `raw_data`.
pub fn tensor_to_proto(t: &Tensor, name: &str) -> TensorProto {
    TensorProto {
        dims: t.shape().iter().map(|&d| d as i64).collect(),
        data_type: Some(dtype_to_onnx(t.dtype())),
        name: Some(name.to_string()),
        raw_data: Some(t.to_le_bytes().into()),
        ..TensorProto::default()
    }
}
