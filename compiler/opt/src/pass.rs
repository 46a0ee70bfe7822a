//! The pass interface and the pipeline that runs passes in order and records what each did.

use crate::error::OptError;
use smelt_ir::Graph;
use std::time::{Duration, Instant};

/// One graph transformation.
pub trait Pass {
    /// The pass's name, as used by `smelt explain` and the file-based tests.
    fn name(&self) -> &'static str;
    /// Transforms the graph in place; reports how many changes it made.
    fn run(&self, g: &mut Graph) -> Result<PassOutcome, OptError>;
}

/// What a pass reports: a change count and optional named details (e-graph statistics, say).
#[derive(Debug, Clone, Default)]
pub struct PassOutcome {
    pub changes: usize,
    pub details: Vec<(String, String)>,
}

impl From<usize> for PassOutcome {
    fn from(changes: usize) -> Self {
        PassOutcome {
            changes,
            details: vec![],
        }
    }
}

/// What one pass did in a pipeline run.
#[derive(Debug, Clone)]
pub struct PassRecord {
    pub name: &'static str,
    pub changes: usize,
    pub nodes_before: usize,
    pub nodes_after: usize,
    pub time: Duration,
    pub details: Vec<(String, String)>,
}

/// An ordered list of passes.
pub struct Pipeline {
    passes: Vec<Box<dyn Pass>>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.passes.iter().map(|p| p.name()))
            .finish()
    }
}

impl Pipeline {
    pub fn new(passes: Vec<Box<dyn Pass>>) -> Pipeline {
        Pipeline { passes }
    }

    /// The standard pipeline; `bindings` pins symbolic dims first when not empty.
    pub fn standard(bindings: std::collections::HashMap<String, usize>) -> Pipeline {
        use crate::passes::*;
        let mut passes: Vec<Box<dyn Pass>> = Vec::new();
        if !bindings.is_empty() {
            passes.push(Box::new(Specialize { bindings }));
        }
        passes.push(Box::new(Identity));
        passes.push(Box::new(Fold::default()));
        passes.push(Box::new(Cse));
        passes.push(Box::new(ConvTaps));
        passes.push(Box::new(crate::egraph::EGraphPass::default()));
        passes.push(Box::new(Fold::default()));
        passes.push(Box::new(Cse));
        passes.push(Box::new(Dce));
        Pipeline { passes }
    }

    /// Runs every pass in order, verifying the graph after each.
    pub fn run(&self, g: &mut Graph) -> Result<Vec<PassRecord>, OptError> {
        let mut records = Vec::with_capacity(self.passes.len());
        for p in &self.passes {
            let nodes_before = g.nodes.len();
            let start = Instant::now();
            let PassOutcome { changes, details } = p.run(g)?;
            let time = start.elapsed();
            g.verify().map_err(|source| OptError::Ir {
                pass: p.name(),
                source,
            })?;
            records.push(PassRecord {
                name: p.name(),
                changes,
                nodes_before,
                nodes_after: g.nodes.len(),
                time,
                details,
            });
        }
        Ok(records)
    }
}
