//! Fusion: classifies ops and groups nodes into kernels (elementwise and injective chains
//! into one loop, producers and epilogues around reductions, elementwise epilogues into
//! contractions). The Kernel IR that the back ends lower arrives next (issue 4).

pub mod classify;
pub mod plan;

pub use classify::{OpClass, classify};
pub use plan::{FusionError, FusionPlan, Group, GroupKind, plan};
