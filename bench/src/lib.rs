//! The benchmark harness: the machine's peak (`peak`), and (issue 6) models measured
//! with smelt beside onnxruntime and tract.

pub mod peak;
