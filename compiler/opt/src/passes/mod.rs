//! The cheap deterministic passes, one per file.

mod conv_taps;
mod cse;
mod dce;
pub(crate) mod fold;
mod identity;
mod specialize;

pub use conv_taps::ConvTaps;
pub use cse::Cse;
pub use dce::Dce;
pub use fold::Fold;
pub use identity::Identity;
pub use specialize::Specialize;

use crate::error::OptError;
use crate::pass::Pass;

/// A pass by name, with default settings (for file-based tests and `smelt explain`).
pub fn by_name(name: &str) -> Result<Box<dyn Pass>, OptError> {
    Ok(match name {
        "identity" => Box::new(Identity),
        "fold" => Box::new(Fold::default()),
        "cse" => Box::new(Cse),
        "conv-taps" => Box::new(ConvTaps),
        "dce" => Box::new(Dce),
        "specialize" => Box::new(Specialize::default()),
        "egraph" => Box::new(crate::egraph::EGraphPass::default()),
        other => {
            // `fold:budget=BYTES` sets the folding budget.
            if let Some(b) = other.strip_prefix("fold:budget=") {
                let budget_bytes = b
                    .trim()
                    .parse()
                    .map_err(|_| OptError::UnknownPass(other.into()))?;
                return Ok(Box::new(Fold { budget_bytes }));
            }
            // `specialize:N=2,M=3` binds symbolic dims.
            if let Some(spec) = other.strip_prefix("specialize:") {
                let mut bindings = std::collections::HashMap::new();
                for pair in spec.split(',') {
                    let (k, v) = pair
                        .split_once('=')
                        .ok_or_else(|| OptError::UnknownPass(other.into()))?;
                    let v = v
                        .trim()
                        .parse()
                        .map_err(|_| OptError::UnknownPass(other.into()))?;
                    bindings.insert(k.trim().to_string(), v);
                }
                return Ok(Box::new(Specialize { bindings }));
            }
            return Err(OptError::UnknownPass(other.into()));
        }
    })
}
