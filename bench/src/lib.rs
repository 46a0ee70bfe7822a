//! The machine's peak (`peak`, binary `smelt-peak`): FMA throughput and copy bandwidth,
//! the figures the benchmarks' efficiencies are computed from. The model benchmarks
//! against onnxruntime and tract are run by `cargo xtask bench` (`xtask/src/bench.rs`)
//! with the peer scripts in `bench/py/`.

pub mod peak;
