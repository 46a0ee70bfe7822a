//! Dead-code elimination: drops nodes no graph output depends on.

use crate::error::OptError;
use crate::pass::{Pass, PassOutcome};
use smelt_ir::Graph;

#[derive(Debug, Clone, Copy)]
pub struct Dce;

impl Pass for Dce {
    fn name(&self) -> &'static str {
        "dce"
    }

    fn run(&self, g: &mut Graph) -> Result<PassOutcome, OptError> {
        Ok(g.compact().into())
    }
}
