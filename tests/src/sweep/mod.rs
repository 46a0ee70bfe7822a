//! The rank and arity sweep over every op handler of the importer: one-node models made
//! from the ONNX op schemas ([`schema`], written into the test data from `onnx.defs`) by
//! [`cases`], each imported, optimized, compiled for the CPU and run in a worker process
//! (`src/bin/op_sweep_worker.rs`, run by [`crate::isolate`]), so that a panic, an abort or
//! a hang is pinned to its model and the rest of the sweep still runs. An error is a fine
//! outcome; those three are not.

pub mod cases;
pub mod schema;

use std::path::{Path, PathBuf};

/// `schemas.tsv` of the generated test data.
pub fn schemas_path() -> PathBuf {
    crate::require_data("").join("schemas.tsv")
}

/// The op types `SMELT_SWEEP_OPS` names (`Split,Resize`), to sweep those alone while
/// mending a find; the test and its workers read it alike.
pub fn only_ops() -> Option<Vec<String>> {
    std::env::var("SMELT_SWEEP_OPS")
        .ok()
        .map(|v| v.split(',').map(String::from).collect())
}

/// The schemas of `path`: those of ops the importer handles (and [`only_ops`] names).
pub fn load_schemas(path: &Path) -> Result<Vec<schema::Schema>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let supported = smelt_onnx::ops::supported_ops();
    let only = only_ops();
    Ok(schema::parse(&text)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .into_iter()
        .filter(|s| supported.contains(&s.op_type.as_str()))
        .filter(|s| only.as_ref().is_none_or(|o| o.contains(&s.op_type)))
        .collect())
}

/// Every model of the sweep, in a fixed order.
pub fn all_cases(schemas: &[schema::Schema]) -> Vec<cases::Case> {
    schemas.iter().flat_map(cases::cases).collect()
}
