//! Fusion: classifies ops, groups nodes into kernels (elementwise and injective chains
//! into one loop, producers and epilogues around reductions, elementwise epilogues into
//! contractions) and lowers each group to Kernel IR, which both back ends consume.

pub mod classify;
pub mod kernel;
pub mod layout;
pub mod lower;
pub mod plan;

pub use classify::{OpClass, classify};
pub use kernel::{Body, Kernel, KernelError, LoopNest};
pub use layout::{BufferLife, Layout};
pub use lower::{LowerTarget, LoweredKernel, lower, lower_for};
pub use plan::{FusionError, FusionPlan, Group, GroupKind, plan};
