//! Times one benchmark model on onnxruntime through its C API, in this process (no Python
//! bindings between the timer and the run), and prints one JSON object like `peers.py`'s:
//! median/min/max latency after warm-up, iterations, threads, load time, peak RSS.
//!
//! usage: ort-capi LIBONNXRUNTIME MODEL_DIR THREADS ITERATIONS
//!
//! The library is the pinned wheel's `libonnxruntime.so.*`, loaded at run time, so the
//! workspace builds without onnxruntime. Session options are the Python bindings'
//! defaults that `peers.py` sets: all graph optimizations, `THREADS` intra-op threads,
//! one inter-op thread (sequential execution).

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{DynValue, Tensor};
use smelt_runtime::{ElemType, HostTensor};
use std::path::Path;
use std::time::Instant;

type Error = Box<dyn std::error::Error>;

fn main() {
    if let Err(e) = run() {
        eprintln!("ort-capi: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [lib, dir, threads, iterations] = args.as_slice() else {
        return Err("usage: ort-capi LIBONNXRUNTIME MODEL_DIR THREADS ITERATIONS".into());
    };
    let threads: usize = threads.parse()?;
    let iterations: usize = iterations.parse()?;
    let dir = Path::new(dir);
    let start = Instant::now();
    let environment = ort::init_from(lib)?.with_name("smelt-bench").build()?;
    let mut session = Session::builder(&environment)?
        .with_optimization_level(GraphOptimizationLevel::All)?
        .with_intra_threads(threads)?
        .with_inter_threads(1)?
        .commit_from_file(dir.join("model.onnx"))?;
    let load_ms = start.elapsed().as_secs_f64() * 1e3;
    let feeds = inputs(dir)?;
    let named =
        || -> Vec<(&str, &DynValue)> { feeds.iter().map(|(n, v)| (n.as_str(), v)).collect() };
    for _ in 0..iterations.min(5) {
        session.run(named())?;
    }
    let mut times = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t = Instant::now();
        let outputs = session.run(named())?;
        // Dropping the outputs frees them; Python's `sess.run` returns them too, so both
        // harnesses time the run with its output allocation.
        drop(outputs);
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let n = times.len();
    if n == 0 {
        return Err("ITERATIONS must be at least 1".into());
    }
    let median = if n % 2 == 1 {
        times[n / 2]
    } else {
        (times[n / 2 - 1] + times[n / 2]) / 2.0
    };
    println!(
        "{{\"runtime\": \"onnxruntime-capi\", \"version\": \"{}\", \"median_ms\": {median}, \"min_ms\": {}, \"max_ms\": {}, \"iterations\": {n}, \"threads\": {threads}, \"load_ms\": {load_ms}, \"peak_rss_bytes\": {}}}",
        version(lib),
        times[0],
        times[n - 1],
        peak_rss_bytes(),
    );
    Ok(())
}

/// The version in the library's file name (`libonnxruntime.so.1.31.1`), or `unknown`.
fn version(lib: &str) -> String {
    lib.rsplit_once(".so.")
        .map_or("unknown".into(), |(_, v)| v.to_string())
}

/// The model's inputs, in `io.tsv`'s order, as onnxruntime values.
fn inputs(dir: &Path) -> Result<Vec<(String, DynValue)>, Error> {
    let io = std::fs::read_to_string(dir.join("io.tsv"))?;
    let mut feeds = Vec::new();
    for line in io.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        if let ["input", name, file] = fields.as_slice() {
            let tensor = smelt_runtime::read_npy(&dir.join(file))?;
            feeds.push((
                name.to_string(),
                value(&tensor).map_err(|e| format!("input {name}: {e}"))?,
            ));
        }
    }
    Ok(feeds)
}

fn value(t: &HostTensor) -> Result<DynValue, Error> {
    fn typed<T: ort::value::PrimitiveTensorElementType + Clone + std::fmt::Debug + 'static>(
        shape: &[usize],
        bytes: &[u8],
        read: fn(&[u8]) -> T,
    ) -> Result<DynValue, Error> {
        let width = std::mem::size_of::<T>();
        let data: Vec<T> = bytes.chunks_exact(width).map(read).collect();
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        Ok(Tensor::from_array((dims, data))?.into_dyn())
    }
    let (shape, b) = (t.shape.as_slice(), t.bytes.as_slice());
    match t.elem {
        ElemType::F32 => typed(shape, b, |c| f32::from_le_bytes(c.try_into().unwrap())),
        ElemType::F64 => typed(shape, b, |c| f64::from_le_bytes(c.try_into().unwrap())),
        ElemType::I64 => typed(shape, b, |c| i64::from_le_bytes(c.try_into().unwrap())),
        ElemType::I32 => typed(shape, b, |c| i32::from_le_bytes(c.try_into().unwrap())),
        ElemType::U8 => typed(shape, b, |c| c[0]),
        ElemType::I8 => typed(shape, b, |c| c[0] as i8),
        ElemType::Bool => typed(shape, b, |c| c[0] != 0),
        other => Err(format!("element type {} is not fed by this harness", other.name()).into()),
    }
}

/// The process's peak resident memory (Linux `VmHWM`), 0 where unknown.
fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?.to_string();
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kb| kb * 1024)
}
