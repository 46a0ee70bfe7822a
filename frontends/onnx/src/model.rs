//! Reading ONNX model files and summarizing them (for `smelt inspect`).

use crate::error::{OnnxError, Result};
use crate::mapped::MappedFile;
use crate::proto::{ModelProto, TypeProto, type_proto};
use crate::tensor::{dtype_from_onnx, onnx_type_name};
use prost::Message;
use std::collections::BTreeMap;
use std::path::Path;

/// A decoded ONNX model and the directory its external data is resolved against.
#[derive(Debug, Clone)]
pub struct OnnxModel {
    pub proto: ModelProto,
    pub base_dir: Option<std::path::PathBuf>,
    /// The mapped file that the tensors' `raw_data` are slices of (a loaded file).
    mapped: Option<std::sync::Arc<MappedFile>>,
}

impl OnnxModel {
    /// Decodes a model from bytes (external data is refused: there is no directory).
    pub fn from_bytes(bytes: &[u8]) -> Result<OnnxModel> {
        OnnxModel::from_buffer(prost::bytes::Bytes::copy_from_slice(bytes))
    }

    /// Decodes a model from a buffer it keeps: the tensors' `raw_data` are slices of it,
    /// not copies, so a model's weights are in memory once until import converts them.
    pub fn from_buffer(bytes: prost::bytes::Bytes) -> Result<OnnxModel> {
        if bytes.is_empty() {
            return Err(OnnxError::Decode("the file is empty".into()));
        }
        let proto = ModelProto::decode(bytes).map_err(|e| OnnxError::Decode(e.to_string()))?;
        if proto.graph.is_none() {
            return Err(OnnxError::Decode(
                "no graph in the model (is this an ONNX file?)".into(),
            ));
        }
        if proto.opset_import.is_empty() && proto.ir_version.is_none() {
            return Err(OnnxError::Decode(
                "no IR version and no opset imports (is this an ONNX file?)".into(),
            ));
        }
        Ok(OnnxModel {
            proto,
            base_dir: None,
            mapped: None,
        })
    }

    /// Maps and decodes a model file; external data resolves relative to its directory.
    /// The weights stay in the file's pages until an import converts them (and hands
    /// the pages back): see [`OnnxModel::release`].
    pub fn load(path: &Path) -> Result<OnnxModel> {
        let mapped = MappedFile::open(path)?;
        let bytes = match &mapped {
            Some(m) => m.bytes(),
            None => std::fs::read(path)
                .map_err(|source| OnnxError::Io {
                    path: path.display().to_string(),
                    source,
                })?
                .into(),
        };
        let mut m = OnnxModel::from_buffer(bytes)?;
        m.mapped = mapped;
        m.base_dir = Some(path.parent().map(Path::to_path_buf).unwrap_or_default()).map(|p| {
            if p.as_os_str().is_empty() {
                std::path::PathBuf::from(".")
            } else {
                p
            }
        });
        Ok(m)
    }

    /// Refuses to go on with a mapped file that was written since it was loaded: its
    /// weights would no longer be the ones the model was loaded with.
    pub fn check_unchanged(&self) -> Result<()> {
        self.mapped.as_ref().map_or(Ok(()), |m| m.check_unchanged())
    }

    /// Hands back the memory of `t`'s `raw_data` once it has been converted, where it
    /// lies in the mapped file: the pages leave the resident set, and the next import
    /// reads them again from the page cache.
    pub fn release(&self, t: &crate::proto::TensorProto) {
        if let (Some(m), Some(raw)) = (&self.mapped, &t.raw_data) {
            m.release(raw);
        }
    }

    /// Version of the default (`ai.onnx`) domain.
    pub fn default_opset(&self) -> Option<i64> {
        self.proto
            .opset_import
            .iter()
            .find(|o| matches!(o.domain.as_deref(), None | Some("") | Some("ai.onnx")))
            .and_then(|o| o.version)
    }
}

/// One graph input or output as declared by the model.
#[derive(Debug, Clone, PartialEq)]
pub struct IoInfo {
    pub name: String,
    /// IR dtype name, or the ONNX type name when smelt does not support it.
    pub dtype: String,
    /// Dims as text: numbers, or symbolic names (`?` when unnamed).
    pub dims: Vec<String>,
}

/// What `smelt inspect` shows.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub ir_version: i64,
    pub opsets: Vec<(String, i64)>,
    pub producer: String,
    pub graph_name: String,
    pub inputs: Vec<IoInfo>,
    pub outputs: Vec<IoInfo>,
    pub op_histogram: BTreeMap<String, usize>,
    pub parameter_count: u64,
    pub parameter_bytes: u64,
    pub unsupported: Vec<crate::error::UnsupportedOp>,
}

pub(crate) fn io_info(name: &str, ty: Option<&TypeProto>) -> IoInfo {
    let (dtype, dims) = match ty.and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(tt)) => {
            let code = tt.elem_type.unwrap_or(0);
            let dtype = dtype_from_onnx(code)
                .map_or_else(|| onnx_type_name(code), |d| d.name().to_string());
            let dims = tt
                .shape
                .as_ref()
                .map(|s| {
                    s.dim
                        .iter()
                        .map(|d| match &d.value {
                            Some(crate::proto::tensor_shape_proto::dimension::Value::DimValue(
                                v,
                            )) => v.to_string(),
                            Some(crate::proto::tensor_shape_proto::dimension::Value::DimParam(
                                p,
                            )) => p.clone(),
                            None => "?".to_string(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            (dtype, dims)
        }
        Some(_) => ("non-tensor".to_string(), vec![]),
        None => ("unknown".to_string(), vec![]),
    };
    IoInfo {
        name: name.to_string(),
        dtype,
        dims,
    }
}

impl OnnxModel {
    /// Summarizes the model without importing it.
    pub fn info(&self) -> ModelInfo {
        let g = self.proto.graph.as_ref().expect("checked when decoded");
        let inits: std::collections::HashSet<&str> = g
            .initializer
            .iter()
            .filter_map(|t| t.name.as_deref())
            .collect();
        let mut op_histogram = BTreeMap::new();
        for n in &g.node {
            *op_histogram
                .entry(n.op_type.clone().unwrap_or_default())
                .or_insert(0) += 1;
        }
        let (mut parameter_count, mut parameter_bytes) = (0u64, 0u64);
        for t in &g.initializer {
            let count = t
                .dims
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(u64::try_from(d).ok()?))
                .unwrap_or(0);
            parameter_count = parameter_count.saturating_add(count);
            let size = t
                .data_type
                .and_then(dtype_from_onnx)
                .map_or(0, |d| d.size_bytes() as u64);
            parameter_bytes = parameter_bytes.saturating_add(count.saturating_mul(size));
        }
        ModelInfo {
            ir_version: self.proto.ir_version.unwrap_or(0),
            opsets: self
                .proto
                .opset_import
                .iter()
                .map(|o| {
                    (
                        o.domain
                            .clone()
                            .filter(|d| !d.is_empty())
                            .unwrap_or_else(|| "ai.onnx".into()),
                        o.version.unwrap_or(0),
                    )
                })
                .collect(),
            producer: format!(
                "{} {}",
                self.proto.producer_name.clone().unwrap_or_default(),
                self.proto.producer_version.clone().unwrap_or_default()
            )
            .trim()
            .to_string(),
            graph_name: g.name.clone().unwrap_or_default(),
            inputs: g
                .input
                .iter()
                .filter(|i| !inits.contains(i.name.as_deref().unwrap_or("")))
                .map(|i| io_info(i.name.as_deref().unwrap_or(""), i.r#type.as_ref()))
                .collect(),
            outputs: g
                .output
                .iter()
                .map(|o| io_info(o.name.as_deref().unwrap_or(""), o.r#type.as_ref()))
                .collect(),
            op_histogram,
            parameter_count,
            parameter_bytes,
            unsupported: crate::import::unsupported_ops(self),
        }
    }
}
