//! `main` of a compiled executable: the I/O contract of `smelt run`, plus `--info` and
//! `--bench`, on the model linked into it.

use crate::{Loaded, SmeltModel, load};
use smelt_runtime::program::AlignedBytes;
use smelt_runtime::threads::ThreadPool;
use smelt_runtime::{HostTensor, read_npy, write_npy};
use std::ffi::{CStr, c_char, c_int};
use std::path::PathBuf;
use std::time::Instant;

const HELP: &str =
    "usage: MODEL --input NAME=FILE.npy ... (--output NAME=FILE.npy ... | --output-dir DIR)
       MODEL --info
       MODEL --bench N [--input NAME=FILE.npy ...] [--json]
options:
  --input NAME=FILE.npy   an input (repeatable); every input is required, except with --bench
  --output NAME=FILE.npy  where to write an output (repeatable)
  --output-dir DIR        write every output to DIR/NAME.npy
  --threads N             threads (default: the compiled setting, else every core)
  --info                  print the model's inputs, outputs, CPU target and smelt version
  --bench N               run N times after warm-up and print the latency
  --json                  with --bench: print one JSON object
  --help                  this text";

/// The entry point the generated `main` calls.
///
/// # Safety
/// `argv` holds `argc` C strings; `model` is the descriptor linked into the executable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn smelt_exe_main(
    argc: c_int,
    argv: *const *const c_char,
    model: *const SmeltModel,
) -> c_int {
    let args: Vec<String> = (1..argc.max(1) as usize)
        .map(|i| {
            unsafe { CStr::from_ptr(*argv.add(i)) }
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let m = match unsafe { load(model) } {
        Ok(m) => m,
        Err(e) => return error(&e),
    };
    match main(m, &args) {
        Ok(()) => 0,
        Err(e) => error(&e),
    }
}

fn error(msg: &str) -> c_int {
    eprintln!("error: {}", msg.replace('\n', " "));
    2
}

fn shape_text(shape: &[usize]) -> String {
    shape
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn main(m: &Loaded, args: &[String]) -> Result<(), String> {
    let missing: Vec<&str> = m
        .manifest
        .cpu_features
        .iter()
        .map(String::as_str)
        .filter(|f| !smelt_runtime::cpu_features::has_feature(f))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "this executable was compiled for {} and needs CPU features this CPU lacks: {}",
            m.manifest.cpu,
            missing.join(", ")
        ));
    }
    let mut inputs: Vec<(String, PathBuf)> = Vec::new();
    let mut outputs: Vec<(String, PathBuf)> = Vec::new();
    let (mut output_dir, mut bench, mut json, mut info, mut threads) =
        (None, None, false, false, 0usize);
    let mut it = args.iter();
    let pair = |flag: &str, v: Option<&String>| -> Result<(String, PathBuf), String> {
        let v = v.ok_or_else(|| format!("{flag} needs NAME=FILE"))?;
        match v.split_once('=') {
            Some((n, f)) if !n.is_empty() && !f.is_empty() => Ok((n.to_string(), PathBuf::from(f))),
            _ => Err(format!("{flag} expects NAME=FILE, got '{v}'")),
        }
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--help" | "-h" => {
                println!("{HELP}");
                return Ok(());
            }
            "--info" => info = true,
            "--json" => json = true,
            "--input" => inputs.push(pair("--input", it.next())?),
            "--output" => outputs.push(pair("--output", it.next())?),
            "--output-dir" => {
                output_dir = Some(PathBuf::from(it.next().ok_or("--output-dir needs DIR")?));
            }
            "--bench" => {
                let n = it.next().ok_or("--bench needs N")?;
                bench = Some(
                    n.parse::<usize>()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or_else(|| format!("--bench expects a positive count, got '{n}'"))?,
                );
            }
            "--threads" => {
                let n = it.next().ok_or("--threads needs N")?;
                threads = n
                    .parse::<usize>()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("--threads expects a positive count, got '{n}'"))?;
            }
            other => return Err(format!("unknown argument '{other}' (see --help)")),
        }
    }
    let p = &m.program;
    if info {
        println!("model: {}", m.manifest.model_name);
        println!("inputs:");
        for s in &p.inputs {
            println!("  {}: {}[{}]", s.name, s.elem.name(), shape_text(&s.shape));
        }
        println!("outputs:");
        for s in &p.outputs {
            println!("  {}: {}[{}]", s.name, s.elem.name(), shape_text(&s.shape));
        }
        match &m.manifest.gpu {
            Some(g) => println!("gpu: cuda {} ({} kernels of PTX)", g.arch, g.symbols.len()),
            None => println!(
                "cpu: {} ({})",
                m.manifest.cpu,
                m.manifest.cpu_features.join(", ")
            ),
        }
        println!(
            "constants: {} bytes; scratch: {} bytes",
            p.constants.as_slice().len(),
            p.arena_bytes
        );
        println!("smelt: {}", m.manifest.smelt_version);
        return Ok(());
    }
    for (name, _) in inputs.iter().chain(&outputs) {
        let known = p.inputs.iter().chain(&p.outputs).any(|s| &s.name == name);
        if !known {
            return Err(format!("'{name}': the model has no such input or output"));
        }
    }
    // Inputs, checked against the compiled signature.
    let mut feeds: Vec<HostTensor> = Vec::with_capacity(p.inputs.len());
    for spec in &p.inputs {
        let given = inputs.iter().find(|(n, _)| n == &spec.name);
        let t = match given {
            Some((_, file)) => {
                let t = read_npy(file).map_err(|e| format!("input '{}': {e}", spec.name))?;
                if t.elem != spec.elem {
                    return Err(format!(
                        "input '{}': expects dtype {}, got {}",
                        spec.name,
                        spec.elem.name(),
                        t.elem.name()
                    ));
                }
                if t.shape != spec.shape {
                    return Err(format!(
                        "input '{}': expects shape [{}] but got [{}]",
                        spec.name,
                        shape_text(&spec.shape),
                        shape_text(&t.shape)
                    ));
                }
                t
            }
            None if bench.is_some() => HostTensor {
                elem: spec.elem,
                shape: spec.shape.clone(),
                bytes: vec![0; p.buffers[spec.buffer].bytes()],
            },
            None => {
                return Err(format!(
                    "input '{}': missing (expects {}[{}])",
                    spec.name,
                    spec.elem.name(),
                    shape_text(&spec.shape)
                ));
            }
        };
        feeds.push(t);
    }
    let threads = if threads > 0 {
        threads
    } else {
        crate::threads_or_default(m, 0)
    };
    let pool = ThreadPool::new(threads);
    let mut arena = AlignedBytes::zeroed(p.arena_bytes);
    let mut results = p.new_outputs();
    let mut run_once = |results: &mut Vec<HostTensor>| -> Result<(), String> {
        let ins: Vec<&[u8]> = feeds.iter().map(|t| t.bytes.as_slice()).collect();
        let mut outs: Vec<&mut [u8]> = results.iter_mut().map(|t| t.bytes.as_mut_slice()).collect();
        m.run(&pool, &ins, &mut outs, arena.as_mut_slice())
    };
    if let Some(n) = bench {
        for _ in 0..n.clamp(1, 5) {
            run_once(&mut results)?;
        }
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let start = Instant::now();
            run_once(&mut results)?;
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        let median = if n % 2 == 1 {
            times[n / 2]
        } else {
            (times[n / 2 - 1] + times[n / 2]) / 2.0
        };
        let (min, max) = (times[0], times[n - 1]);
        if json {
            let round = |v: f64| (v * 1e4).round() / 1e4;
            let object = serde_json::json!({
                "model": m.manifest.model_name,
                "median_ms": round(median),
                "min_ms": round(min),
                "max_ms": round(max),
                "iterations": n,
                "threads": threads,
                "compile_ms": 0.0,
                "arena_bytes": p.arena_bytes,
            });
            println!("{object}");
        } else {
            println!("threads: {threads}, iterations: {n}");
            println!("median: {median:.3} ms  min: {min:.3} ms  max: {max:.3} ms");
        }
        return Ok(());
    }
    run_once(&mut results)?;
    if let Some(dir) = &output_dir {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    for (spec, t) in p.outputs.iter().zip(&results) {
        let dest = match (outputs.iter().find(|(n, _)| n == &spec.name), &output_dir) {
            (Some((_, f)), _) => Some(f.clone()),
            (None, Some(dir)) => Some(dir.join(smelt_runtime::output_file_name(&spec.name))),
            (None, None) => None,
        };
        if let Some(dest) = dest {
            write_npy(&dest, t).map_err(|e| e.to_string())?;
        }
        println!("{}", t.summary(&spec.name));
    }
    Ok(())
}
