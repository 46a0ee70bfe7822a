//! Benchmark harness against onnxruntime and tract will live here (issue 6). Nothing is implemented yet.
