//! `smelt bench`: latency of compiled code after warm-up, and a per-kernel profile.

use crate::{parse_shapes, split_pair};
use anyhow::{Result, bail};
use smelt::Model;
use smelt::Tensor;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub struct BenchArgs<'a> {
    pub model: &'a PathBuf,
    pub inputs: &'a [String],
    pub input_shapes: &'a [String],
    pub threads: Option<usize>,
    pub iterations: usize,
    pub warmup: usize,
    pub profile: bool,
    pub json: bool,
    pub target: smelt::Target,
    pub gpu: smelt::GpuOptions,
}

/// A deterministic input: uniform values in [-1, 1) for floats, zeros otherwise.
fn synthetic(dtype: &str, shape: Vec<usize>, seed: u64) -> smelt::Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 40) as f64 / (1u64 << 24) as f64) * 2.0 - 1.0
    };
    match dtype {
        "f32" => Tensor::from_vec(shape, (0..n).map(|_| next() as f32).collect()),
        "f64" => Tensor::from_vec(shape, (0..n).map(|_| next()).collect()),
        _ => Tensor::zeros(dtype, shape),
    }
}

/// `v` to 4 decimals, as the text output prints milliseconds.
fn round4(v: f64) -> f64 {
    (v * 1e4).round() / 1e4
}

/// The process's peak resident memory (Linux `VmHWM`), 0 where unknown.
fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

pub fn bench(a: &BenchArgs) -> Result<()> {
    if a.iterations == 0 {
        bail!("--iterations must be at least 1");
    }
    // Import to runnable code: what a user waits for before the first run.
    let load_start = Instant::now();
    let model = Model::load(a.model)?;
    let shapes = parse_shapes(a.input_shapes)?;
    let mut feeds = Vec::new();
    for arg in a.inputs {
        let (name, file) = split_pair(arg, "--input")?;
        feeds.push((name.to_string(), Tensor::read_npy(file.as_ref())?.0));
    }
    for (k, i) in model.info().inputs.iter().enumerate() {
        if feeds.iter().any(|(n, _)| n == &i.name) {
            continue;
        }
        let shape = match shapes.get(&i.name) {
            Some(s) => s.clone(),
            None => i
                .dims
                .iter()
                .map(|d| d.parse::<usize>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| {
                    anyhow::anyhow!(
                        "input '{}' has shape [{}]: give --input or --input-shape",
                        i.name,
                        i.dims.join(", ")
                    )
                })?,
        };
        let tensor = synthetic(&i.dtype, shape, k as u64)
            .map_err(|e| anyhow::anyhow!("input '{}': {e}", i.name))?;
        feeds.push((i.name.clone(), tensor.0));
    }
    let compiled = model.compile(&smelt::Options {
        threads: a.threads,
        optimize: true,
        input_shapes: shapes,
        target: a.target,
        gpu: a.gpu.clone(),
    })?;
    let exe = compiled.prepare(&feeds)?;
    let compile_ms = exe.compile_time.as_secs_f64() * 1e3;
    let load_ms = load_start.elapsed().as_secs_f64() * 1e3;
    // Runs reuse the first run's output tensors, as a serving loop (and the deployable
    // executable's --bench) would: an allocation per run would time the allocator
    // (zeroing a softmax's 512 KiB output took a sixth of its run).
    let inputs = exe.ordered_inputs(&feeds);
    let mut outputs = exe.program.new_outputs();
    for _ in 0..a.warmup {
        compiled.run_prepared_into(&exe, &inputs, &mut outputs, None)?;
    }
    let mut times = Vec::with_capacity(a.iterations);
    let mut profile: Vec<Duration> = Vec::new();
    for _ in 0..a.iterations {
        let start = Instant::now();
        let record = a.profile.then_some(&mut profile);
        compiled.run_prepared_into(&exe, &inputs, &mut outputs, record)?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let median = if times.len() % 2 == 1 {
        times[times.len() / 2]
    } else {
        (times[times.len() / 2 - 1] + times[times.len() / 2]) / 2.0
    };
    let (min, max) = (times[0], times[times.len() - 1]);
    // A GPU's runs do not use the CPU thread pool, so its size says nothing there.
    let threads = match a.target {
        smelt::Target::Cpu => Some(compiled.threads()),
        _ => None,
    };
    if a.json {
        // serde_json quotes the path: a quote or a control character in it stays valid JSON.
        let object = serde_json::json!({
            "model": a.model.display().to_string(),
            "target": a.target.name(),
            "median_ms": round4(median),
            "min_ms": round4(min),
            "max_ms": round4(max),
            "iterations": a.iterations,
            "threads": threads,
            "compile_ms": (compile_ms * 100.0).round() / 100.0,
            "load_ms": (load_ms * 100.0).round() / 100.0,
            "parameters": model.info().parameter_count,
            "arena_bytes": exe.program.arena_bytes,
            "flops": exe.contraction_flops(),
            "peak_rss_bytes": peak_rss_bytes(),
        });
        println!("{object}");
    } else {
        println!("model: {}", a.model.display());
        let runs_on = match (a.target, threads) {
            (_, Some(t)) => format!("threads: {t}"),
            (smelt::Target::Cuda, None) => "device: CUDA GPU 0".to_string(),
            (_, None) => "device: the GPU emulator (this CPU)".to_string(),
        };
        println!(
            "{runs_on}, iterations: {} after {} warm-up",
            a.iterations, a.warmup
        );
        println!("median: {median:.3} ms  min: {min:.3} ms  max: {max:.3} ms");
        println!(
            "compile: {compile_ms:.1} ms ({load_ms:.1} ms from import to runnable code); {} kernels ({} distinct), {} launches; arena {} bytes",
            exe.kernels.len(),
            exe.functions.len(),
            exe.program.launches.len(),
            exe.program.arena_bytes
        );
    }
    if a.profile {
        let total: f64 = profile.iter().map(Duration::as_secs_f64).sum();
        let mut rows: Vec<(usize, f64)> = profile
            .iter()
            .enumerate()
            .map(|(i, d)| (i, d.as_secs_f64() / a.iterations as f64 * 1e3))
            .collect();
        rows.sort_by(|x, y| y.1.total_cmp(&x.1));
        let clock = match a.target {
            smelt::Target::Cuda => "device time between CUDA events",
            smelt::Target::GpuEmulator => "host time, synchronized after each launch",
            smelt::Target::Cpu => "host time",
        };
        println!("profile (mean ms per run, by launch, slowest first; {clock}):");
        let launches = exe.launch_summaries();
        for (i, ms) in rows {
            let l = &launches[i];
            let rate = l
                .flops
                .map(|f| format!("  {:7.1} GFLOP/s", f as f64 / (ms * 1e6).max(1e-12)))
                .unwrap_or_default();
            println!(
                "  {ms:9.4} ms {:5.1}%  {:<6} {}{rate}",
                ms / (total / a.iterations as f64 * 1e3).max(1e-12) * 100.0,
                l.kind,
                l.name
            );
        }
    }
    Ok(())
}
