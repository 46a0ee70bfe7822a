//! `smelt-gpu-check`: the check program of a GPU session (`cargo xtask gpu-bundle` builds
//! it with the feature `cuda` and carries it to a lent GPU, where `xtask/gpu/session.sh`
//! runs it). Every path is an argument, so that nothing of the machine it was built on
//! is needed where it runs:
//!
//! - `conformance`: the ONNX node cases and suite models on a runtime, in worker
//!   processes, so that a kernel fault (a sticky CUDA error) loses one case, not the run;
//! - `models`: the classic and light models against their reference outputs;
//! - `time`: one model's device time (CUDA events) after warm-up, its outputs written for
//!   the timing script to check;
//! - `worker`: the worker process of the first two.

use clap::{Parser, Subcommand};
use smelt::GpuOptions;
use smelt_runtime::{HostTensor, read_npy, write_npy};
use smelt_tests::conformance::{self, CaseInfo, Runtime};
use smelt_tests::isolate::{
    Isolation, Outcome, RESTART_STATUS, outcome_of, record_panics, report, run_isolated_until,
};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "smelt-gpu-check",
    about = "smelt's checks and timings on a GPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// What every subcommand that compiles takes.
#[derive(clap::Args, Clone)]
struct Target {
    /// cuda (the first NVIDIA GPU) or gpu-emulator (this CPU, for the dry run).
    #[arg(long, default_value = "cuda", value_parser = ["cuda", "gpu-emulator"])]
    runtime: String,
    /// libdevice.10.bc, the CUDA math library.
    #[arg(long, value_name = "FILE")]
    libdevice: PathBuf,
    /// The GPU architecture.
    #[arg(long, default_value = "sm_90", value_name = "sm_XX")]
    gpu_arch: String,
}

impl Target {
    fn runtime(&self) -> Runtime {
        Runtime::parse(&self.runtime).expect("clap checked the name")
    }

    fn gpu(&self) -> GpuOptions {
        GpuOptions::new(self.gpu_arch.clone(), Some(self.libdevice.clone()))
    }

    /// The arguments that give a worker the same target.
    fn args(&self) -> Vec<String> {
        vec![
            "--runtime".into(),
            self.runtime.clone(),
            "--libdevice".into(),
            self.libdevice.display().to_string(),
            "--gpu-arch".into(),
            self.gpu_arch.clone(),
        ]
    }
}

/// How the cases of `conformance` and `models` are run.
#[derive(clap::Args, Clone)]
struct Cases {
    /// The test data (`node/`, `suites/`, `models/` as `cargo xtask onnx-data` writes them).
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Only every Nth case (the dry run's subset).
    #[arg(long, default_value_t = 1)]
    every: usize,
    /// Worker processes at once.
    #[arg(long, default_value_t = 4)]
    jobs: usize,
    /// Seconds one case may take before its worker is killed.
    #[arg(long, default_value_t = 120)]
    case_seconds: u64,
    /// Seconds after which no further block of cases starts; the cases not run are
    /// reported as such, so that a run under a time limit keeps what it finished.
    #[arg(long)]
    deadline: Option<u64>,
}

#[derive(Subcommand)]
enum Command {
    /// The node cases and suite models: one line per case into OUT
    /// (`case<TAB>pass` or `case<TAB>fail<TAB>reason`, the expectations files' form).
    Conformance {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        cases: Cases,
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// The classic and light models against their expected outputs (rtol 1e-4, atol
    /// 1e-5): one line per model into OUT, as for `conformance`.
    Models {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        cases: Cases,
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// One model's time: compiles it for the inputs given, runs it `warmup` times, then
    /// `iterations` times with every launch between two device marks (CUDA events); prints
    /// one JSON line and writes the last run's outputs as output_N.npy into OUTPUTS.
    Time {
        #[command(flatten)]
        target: Target,
        model: PathBuf,
        /// An input as NAME=FILE.npy (repeatable; every input).
        #[arg(long = "input", value_name = "NAME=FILE")]
        inputs: Vec<String>,
        #[arg(long, default_value_t = 20)]
        iterations: usize,
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        #[arg(long, value_name = "DIR")]
        outputs: PathBuf,
    },
    /// A worker: runs cases FIRST..END of a list and reports each on one line.
    #[command(hide = true)]
    Worker {
        #[arg(value_parser = ["conformance", "models"])]
        kind: String,
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        cases: Cases,
        first: usize,
        end: usize,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Conformance { target, cases, out } => {
            run_cases("conformance", &target, &cases, &out)
        }
        Command::Models { target, cases, out } => run_cases("models", &target, &cases, &out),
        Command::Time {
            target,
            model,
            inputs,
            iterations,
            warmup,
            outputs,
        } => time(&target, &model, &inputs, iterations, warmup, &outputs),
        Command::Worker {
            kind,
            target,
            cases,
            first,
            end,
        } => worker(&kind, &target, &cases, first, end),
    };
    if let Err(e) = result {
        eprintln!("smelt-gpu-check: {e}");
        std::process::exit(2);
    }
}

/// A case of either list: a conformance case, or a model directory (with `io.tsv`).
enum Case {
    Conformance(CaseInfo),
    Model { name: String, dir: PathBuf },
}

impl Case {
    fn name(&self) -> &str {
        match self {
            Case::Conformance(c) => &c.name,
            Case::Model { name, .. } => name,
        }
    }
}

/// The cases of `kind` under the data directory, every `every`th.
fn load_cases(kind: &str, cases: &Cases) -> Result<Vec<Case>, String> {
    let all: Vec<Case> = if kind == "conformance" {
        let mut infos = conformance::load_manifest(&cases.data.join("node"))?;
        infos.extend(conformance::load_manifest(&cases.data.join("suites"))?);
        infos.into_iter().map(Case::Conformance).collect()
    } else {
        let models = cases.data.join("models");
        let mut names: Vec<String> = std::fs::read_dir(&models)
            .map_err(|e| format!("{}: {e}", models.display()))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("io.tsv").is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|name| Case::Model {
                dir: models.join(&name),
                name,
            })
            .collect()
    };
    Ok(all
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % cases.every.max(1) == 0)
        .map(|(_, c)| c)
        .collect())
}

/// Runs every case of `kind` in worker processes and writes one line per case to `out`.
fn run_cases(kind: &str, target: &Target, cases: &Cases, out: &Path) -> Result<(), String> {
    let list = load_cases(kind, cases)?;
    let me = std::env::current_exe().map_err(|e| format!("this program's path: {e}"))?;
    let mut args = vec!["worker".to_string(), kind.to_string()];
    args.extend(target.args());
    args.extend([
        "--data".into(),
        cases.data.display().to_string(),
        "--every".into(),
        cases.every.to_string(),
    ]);
    let started = Instant::now();
    let deadline = cases.deadline.map(|s| started + Duration::from_secs(s));
    let outcomes = run_isolated_until(
        &Isolation {
            worker: me,
            args,
            jobs: cases.jobs,
            // Small blocks: a CUDA context costs a worker about a second to make, and a
            // block's cases are what a worker fault can cost.
            block: 16,
            hang_limit: Duration::from_secs(cases.case_seconds),
        },
        list.len(),
        deadline,
    );
    let mut text = String::new();
    let mut passed = 0;
    for (case, outcome) in list.iter().zip(&outcomes) {
        let line = match outcome {
            None => "fail\tnot run: the time limit ran out".to_string(),
            Some(outcome) => match outcome {
                Outcome::Finished(word) if word == "pass" => {
                    passed += 1;
                    "pass".to_string()
                }
                Outcome::Finished(word) => {
                    format!("fail\t{}", word.strip_prefix("fail ").unwrap_or(word))
                }
                Outcome::Panicked(m) => format!("fail\tpanic (a bug): {m}"),
                Outcome::Crashed(m) => format!("fail\tthe worker died: {m}"),
                Outcome::Hung => format!("fail\tran over {} s", cases.case_seconds),
            },
        };
        text.push_str(&format!("{}\t{line}\n", case.name()));
    }
    std::fs::write(out, text).map_err(|e| format!("{}: {e}", out.display()))?;
    println!(
        "{}: {passed} of {} {kind} cases pass ({:.0} s)",
        target.runtime,
        list.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A failure's reason as one word-line for the report (no tabs or newlines).
fn one_line(reason: &str) -> String {
    reason.escape_debug().to_string()
}

/// Whether an error leaves the CUDA context unusable for the cases after it.
fn sticky(reason: &str) -> bool {
    reason.contains("CUDA:")
}

fn worker(
    kind: &str,
    target: &Target,
    cases: &Cases,
    first: usize,
    end: usize,
) -> Result<(), String> {
    let list = load_cases(kind, cases)?;
    record_panics();
    if target.runtime() == Runtime::Cuda {
        // One context for the worker's cases, not one per case.
        smelt_runtime::cuda::retain_primary_context(0).map_err(|e| e.to_string())?;
    }
    let gpu = target.gpu();
    for (index, case) in list.iter().enumerate().take(end).skip(first) {
        let outcome = outcome_of(|| {
            let result = match case {
                Case::Conformance(c) => conformance::run_case_with(c, target.runtime(), &gpu),
                Case::Model { dir, .. } => run_model(dir, target, &gpu),
            };
            match result {
                Ok(()) => "pass".to_string(),
                Err(e) => format!("fail {}", one_line(&e)),
            }
        });
        report(index, &outcome);
        let word = match &outcome {
            Outcome::Finished(w) => w.as_str(),
            _ => "",
        };
        if sticky(word) || outcome.is_fault() {
            // The context may be broken: the rest of the block gets a fresh process.
            let _ = std::io::stdout().flush();
            std::process::exit(RESTART_STATUS);
        }
    }
    Ok(())
}

/// Tolerances of the model check (the models' expected outputs are onnxruntime's).
const MODEL_RTOL: f64 = 1e-4;
const MODEL_ATOL: f64 = 1e-5;

/// Runs a model directory's inputs and compares with its expected outputs.
fn run_model(dir: &Path, target: &Target, gpu: &GpuOptions) -> Result<(), String> {
    let model = smelt::Model::load(dir.join("model.onnx")).map_err(|e| e.to_string())?;
    let read = |kind: &str| -> Result<Vec<(String, HostTensor)>, String> {
        smelt_tests::model_case_files(dir, kind)
            .into_iter()
            .map(|(name, path)| {
                let t = read_npy(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                Ok((name, t))
            })
            .collect()
    };
    let (inputs, expected) = (read("input")?, read("output")?);
    let compiled = model
        .compile(&smelt::Options {
            target: smelt_target(target),
            gpu: gpu.clone(),
            ..Default::default()
        })
        .map_err(|e| e.to_string())?;
    let results = compiled.run_named(&inputs).map_err(|e| e.to_string())?;
    for (name, want) in &expected {
        let got = results
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
            .ok_or_else(|| format!("no output '{name}'"))?;
        let (want, got) = (smelt::to_ir_tensor(want)?, smelt::to_ir_tensor(got)?);
        smelt_tests::compare::compare(&want, &got, MODEL_RTOL, MODEL_ATOL)
            .map_err(|e| format!("output '{name}': {e}"))?;
    }
    Ok(())
}

fn smelt_target(target: &Target) -> smelt::Target {
    match target.runtime() {
        Runtime::Cuda => smelt::Target::Cuda,
        _ => smelt::Target::GpuEmulator,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn time(
    target: &Target,
    model_path: &Path,
    input_args: &[String],
    iterations: usize,
    warmup: usize,
    outputs_dir: &Path,
) -> Result<(), String> {
    if iterations == 0 {
        return Err("--iterations must be at least 1".into());
    }
    let model = smelt::Model::load(model_path).map_err(|e| e.to_string())?;
    let mut feeds: Vec<(String, HostTensor)> = Vec::new();
    for arg in input_args {
        let (name, file) = arg
            .split_once('=')
            .ok_or_else(|| format!("--input expects NAME=FILE, got '{arg}'"))?;
        let t = read_npy(Path::new(file)).map_err(|e| format!("{file}: {e}"))?;
        feeds.push((name.to_string(), t));
    }
    let compiled = model
        .compile(&smelt::Options {
            target: smelt_target(target),
            gpu: target.gpu(),
            ..Default::default()
        })
        .map_err(|e| e.to_string())?;
    let exe = compiled.prepare(&feeds).map_err(|e| e.to_string())?;
    let inputs = exe.ordered_inputs(&feeds);
    let mut outputs = exe.program.new_outputs();
    for _ in 0..warmup {
        compiled
            .run_prepared_into(&exe, &inputs, &mut outputs, None)
            .map_err(|e| e.to_string())?;
    }
    let (mut device_ms, mut wall_ms) = (Vec::new(), Vec::new());
    for _ in 0..iterations {
        let mut launches = Vec::new();
        let started = Instant::now();
        compiled
            .run_prepared_into(&exe, &inputs, &mut outputs, Some(&mut launches))
            .map_err(|e| e.to_string())?;
        wall_ms.push(started.elapsed().as_secs_f64() * 1e3);
        device_ms.push(launches.iter().map(Duration::as_secs_f64).sum::<f64>() * 1e3);
    }
    std::fs::create_dir_all(outputs_dir).map_err(|e| format!("{}: {e}", outputs_dir.display()))?;
    for (i, t) in outputs.iter().enumerate() {
        let path = outputs_dir.join(format!("output_{i}.npy"));
        write_npy(&path, t).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let min = device_ms.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "{{\"median_ms\": {:.5}, \"min_ms\": {min:.5}, \"wall_median_ms\": {:.5}, \"compile_ms\": {:.1}, \"launches\": {}, \"iterations\": {iterations}}}",
        median(device_ms),
        median(wall_ms),
        exe.compile_time.as_secs_f64() * 1e3,
        exe.program.launches.len(),
    );
    Ok(())
}
