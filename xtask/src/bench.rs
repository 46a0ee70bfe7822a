//! `cargo xtask bench`: every benchmark model on smelt, onnxruntime and tract, at 1 and 2
//! threads, in one run on this machine; writes `bench/results/<date>.json`, the table in
//! `docs/performance.md` and the chart `docs/performance.svg`; `--compare OLD.json`
//! prints per-model changes against an earlier run, of the median and of the ratio to
//! onnxruntime.
//!
//! The baseline is onnxruntime's C API, called in process by `ort-capi` (bench crate)
//! on the pinned wheel's library: the Python bindings add some microseconds a call,
//! which made sub-10-microsecond models look 20x faster on smelt than they are. The
//! Python figure stays as an extra column.

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;

const THREADS: [usize; 2] = [1, 2];
/// Timed work per measurement, spread over as many iterations as fit (5 to 2000: a
/// sub-millisecond model gets enough runs that a burst of host noise does not move its
/// median).
const TARGET_MS: f64 = 2000.0;
/// Rounds per measurement: smelt and onnxruntime take turns, each round a fifth of the
/// iterations, and the reported figures are the median round's (the ratio the median of
/// the per-round ratios). On a shared host a burst of noise then hits one round of both
/// runtimes instead of all of one (single back-to-back runs moved ratios by up to 0.5);
/// five rounds outvote two slow processes (whole processes ran 1.6x slower at times).
/// Each round starts once the host is quiet (`quiet`), which covers noise that lasts
/// longer than all the rounds.
const ROUNDS: usize = 5;

struct Case {
    name: String,
    dir: PathBuf,
    /// `--input NAME=FILE` arguments for smelt.
    inputs: Vec<String>,
    /// Where the model comes from: its directory's `source.txt`, else the generator of
    /// its folder.
    source: String,
}

/// Where `bench/py/export_zoo.py` puts the architectures exported by torch.
const ZOO: &str = "target/bench-zoo";

/// Exports the torch-made models that are missing (in the bench-only export venv). A
/// model that fails to export is left out of the run, and said so.
fn ensure_zoo(root: &Path) -> Result<()> {
    let python = crate::data::export_venv(root)?;
    let status = Command::new(&python)
        .arg(root.join("bench/py/export_zoo.py"))
        .arg(root.join(ZOO))
        .status()
        .context("running bench/py/export_zoo.py")?;
    if !status.success() {
        println!("warning: some models failed to export (above); the run goes on without them");
    }
    Ok(())
}

fn cases(root: &Path, filter: Option<&str>) -> Result<Vec<Case>> {
    let mut dirs = Vec::new();
    for base in ["target/onnx-data/models", "target/bench-models", ZOO] {
        if base == ZOO && !root.join(base).is_dir() {
            continue;
        }
        let mut names: Vec<_> = std::fs::read_dir(root.join(base))
            .with_context(|| format!("reading {base}"))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("model.onnx").exists())
            .map(|e| e.path())
            .collect();
        names.sort();
        dirs.extend(names);
    }
    let mut out = Vec::new();
    for dir in dirs {
        let name = dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if filter.is_some_and(|f| !f.split(',').any(|w| name.contains(w))) {
            continue;
        }
        let io = std::fs::read_to_string(dir.join("io.tsv"))?;
        let inputs = io
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                (f.first() == Some(&"input"))
                    .then(|| format!("{}={}", f[1], dir.join(f[2]).display()))
            })
            .collect();
        let source = std::fs::read_to_string(dir.join("source.txt"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| {
                if dir.starts_with(root.join("target/bench-models")) {
                    "bench/py/gen_models.py".into()
                } else {
                    "xtask/py/gen_data.py (cargo xtask onnx-data)".into()
                }
            });
        out.push(Case {
            name,
            dir,
            inputs,
            source,
        });
    }
    Ok(out)
}

/// Runs `cmd`; an error naming `what` and the last line of its stderr unless it succeeds.
fn output_of(cmd: &mut Command, what: &str) -> Result<std::process::Output> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
    }
    Ok(out)
}

fn json_of(cmd: &mut Command, what: &str) -> Result<Value> {
    let out = output_of(cmd, what)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().rfind(|l| l.starts_with('{')).unwrap_or("");
    serde_json::from_str(line).with_context(|| format!("{what} printed {text}"))
}

/// `smelt SUBCOMMAND MODEL --input ...` for the case.
fn smelt_command(root: &Path, subcommand: &str, case: &Case) -> Command {
    let mut cmd = Command::new(root.join("target/release/smelt"));
    cmd.arg(subcommand).arg(case.dir.join("model.onnx"));
    for i in &case.inputs {
        cmd.arg("--input").arg(i);
    }
    cmd
}

fn smelt(root: &Path, case: &Case, threads: usize, iterations: usize) -> Result<Value> {
    let mut cmd = smelt_command(root, "bench", case);
    cmd.args([
        "--threads",
        &threads.to_string(),
        "--iterations",
        &iterations.to_string(),
        "--json",
    ]);
    json_of(&mut cmd, &format!("smelt bench {}", case.name))
}

fn peer(
    python: &Path,
    root: &Path,
    runtime: &str,
    case: &Case,
    threads: usize,
    iterations: usize,
) -> Result<Value> {
    json_of(
        Command::new(python)
            .arg(root.join("bench/py/peers.py"))
            .arg(runtime)
            .arg(&case.dir)
            .arg(threads.to_string())
            .arg(iterations.to_string()),
        &format!("{runtime} {}", case.name),
    )
}

/// Whether smelt's outputs of the case match onnxruntime's (`bench/py/check_outputs.py`
/// on `smelt run`'s files; its tolerance is in the script): a timing of wrong results
/// would say nothing.
fn check_outputs(root: &Path, python: &Path, case: &Case) -> Value {
    let out = root.join("target/bench-check").join(&case.name);
    let _ = std::fs::remove_dir_all(&out);
    let run = || -> Result<Value> {
        std::fs::create_dir_all(&out)?;
        output_of(
            smelt_command(root, "run", case)
                .arg("--output-dir")
                .arg(&out),
            "smelt run",
        )?;
        json_of(
            Command::new(python)
                .arg(root.join("bench/py/check_outputs.py"))
                .arg(&case.dir)
                .arg(&out),
            &format!("checking {}", case.name),
        )
    };
    let result = run().unwrap_or_else(|e| json!({ "matches": false, "error": format!("{e:#}") }));
    let _ = std::fs::remove_dir_all(&out);
    result
}

/// onnxruntime through its C API (`ort-capi` on the pinned wheel's library).
fn ort_capi(
    root: &Path,
    lib: &Path,
    case: &Case,
    threads: usize,
    iterations: usize,
) -> Result<Value> {
    json_of(
        Command::new(root.join("target/release/ort-capi"))
            .arg(lib)
            .arg(&case.dir)
            .arg(threads.to_string())
            .arg(iterations.to_string()),
        &format!("onnxruntime C API {}", case.name),
    )
}

/// The pinned onnxruntime wheel's shared library in the test venv.
fn onnxruntime_library(python: &Path) -> Result<PathBuf> {
    let out = Command::new(python)
        .args([
            "-c",
            "import onnxruntime, glob, os; print(sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi', 'libonnxruntime.so.*')))[-1])",
        ])
        .output()
        .context("asking the venv's Python for onnxruntime's library")?;
    if !out.status.success() {
        bail!(
            "the venv has no onnxruntime library: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn iterations_for(ms: f64) -> usize {
    ((TARGET_MS / ms.max(0.01)) as usize).clamp(5, 2000)
}

/// smelt's peak resident memory over onnxruntime's, each process measured alone.
fn rss_ratio(smelt: &Value, ort: &Value) -> Option<f64> {
    let rss = |v: &Value| v.get("peak_rss_bytes").and_then(Value::as_f64);
    rss(smelt).zip(rss(ort)).map(|(s, o)| s / o)
}

fn median(v: &Value) -> Option<f64> {
    v.get("median_ms").and_then(Value::as_f64)
}

/// The round whose median latency is the median of the rounds' (an error if any round
/// failed: a runtime that fails once is not measured).
fn median_round(rounds: &[Value]) -> Value {
    if let Some(failed) = rounds.iter().find(|r| median(r).is_none()) {
        return failed.clone();
    }
    let mut sorted: Vec<&Value> = rounds.iter().collect();
    sorted.sort_by(|a, b| {
        median(a)
            .unwrap_or(0.0)
            .total_cmp(&median(b).unwrap_or(0.0))
    });
    sorted[sorted.len() / 2].clone()
}

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(String::as_str)
    };
    if let Some(json) = flag("--render") {
        // The table and chart again from a results file (after a change of format).
        let result: Value = serde_json::from_str(
            &std::fs::read_to_string(json).with_context(|| format!("reading {json}"))?,
        )?;
        write_docs(root, &result)?;
        println!("wrote docs/performance.md, docs/performance.svg from {json}");
        return Ok(());
    }
    if let Some(old) = flag("--compare") {
        return compare(root, Path::new(old));
    }
    crate::data::ensure(root)?;
    let python = crate::data::venv(root)?;
    let models_dir = root.join("target/bench-models");
    let status = Command::new(&python)
        .arg(root.join("bench/py/gen_models.py"))
        .arg(&models_dir)
        .status()
        .context("generating benchmark models")?;
    if !status.success() {
        bail!("bench/py/gen_models.py failed");
    }
    if !args.iter().any(|a| a == "--no-zoo") {
        ensure_zoo(root)?;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .current_dir(root)
        .args(["build", "--release", "-p", "smelt-cli", "-p", "smelt-bench"])
        .status()?;
    if !status.success() {
        bail!("building smelt failed");
    }
    let peak = json_of(
        &mut Command::new(root.join("target/release/smelt-peak")),
        "smelt-peak",
    )?;
    println!("peak: {peak}");
    let ort_lib = onnxruntime_library(&python)?;
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let mut rows = Vec::new();
    let mut host = crate::quiet::QuietHost::new();
    for case in cases(root, flag("--models"))? {
        let check = check_outputs(root, &python, &case);
        println!(
            "{:<22} outputs match onnxruntime: {}",
            case.name, check["matches"]
        );
        let mut tract_once: Option<Value> = None;
        for threads in THREADS {
            let probe = smelt(root, &case, threads, 3);
            let n = probe
                .as_ref()
                .ok()
                .and_then(median)
                .map_or(5, |ms| (iterations_for(ms) / ROUNDS).max(5));
            let mut smelt_rounds = Vec::new();
            let mut ort_rounds = Vec::new();
            let (mut waited_s, mut noisy_rounds) = (0.0, 0);
            let mut settle = || {
                let wait = host.wait();
                waited_s += wait.seconds;
                noisy_rounds += usize::from(!wait.quiet);
            };
            for _ in 0..ROUNDS {
                settle();
                smelt_rounds.push(
                    smelt(root, &case, threads, n)
                        .unwrap_or_else(|e| json!({ "error": format!("{e:#}") })),
                );
                settle();
                ort_rounds.push(
                    ort_capi(root, &ort_lib, &case, threads, n)
                        .unwrap_or_else(|e| json!({ "error": format!("{e:#}") })),
                );
            }
            let smelt_result = median_round(&smelt_rounds);
            let ort = median_round(&ort_rounds);
            // The Python bindings once, as the extra column earlier results used.
            let ort_python = peer(&python, root, "onnxruntime", &case, threads, n)
                .unwrap_or_else(|e| json!({ "error": format!("{e:#}") }));
            // tract's bindings run on one thread: measured once, shown at both counts.
            let tract = match &tract_once {
                Some(t) => t.clone(),
                None => {
                    let t = peer(&python, root, "tract", &case, 1, n)
                        .unwrap_or_else(|e| json!({ "error": format!("{e:#}") }));
                    tract_once = Some(t.clone());
                    t
                }
            };
            let (s, o, t) = (median(&smelt_result), median(&ort), median(&tract));
            // Each round's smelt/onnxruntime ratio; the median of them.
            let mut paired: Vec<f64> = smelt_rounds
                .iter()
                .zip(&ort_rounds)
                .filter_map(|(a, b)| median(a).zip(median(b)).map(|(a, b)| a / b))
                .collect();
            paired.sort_by(f64::total_cmp);
            let over_ort = (paired.len() == ROUNDS).then(|| paired[ROUNDS / 2]);
            let flops = smelt_result
                .get("flops")
                .and_then(Value::as_f64)
                .unwrap_or(0.0);
            let gflops = s.map(|ms| flops / (ms * 1e6));
            let peak_all = if threads == 1 {
                "gflops_one_core"
            } else {
                "gflops_all_cores"
            };
            let share = gflops
                .zip(peak.get(peak_all).and_then(Value::as_f64))
                .map(|(g, p)| g / p);
            let row = json!({
                "model": case.name, "threads": threads,
                "source": case.source, "parameters": smelt_result.get("parameters"),
                "check": check,
                "smelt": smelt_result, "onnxruntime": ort, "onnxruntime_python": ort_python,
                "tract": tract,
                "smelt_over_onnxruntime": over_ort,
                "smelt_rss_over_onnxruntime": rss_ratio(&smelt_result, &ort),
                "rounds": {
                    "smelt_median_ms": smelt_rounds.iter().map(median).collect::<Vec<_>>(),
                    "onnxruntime_median_ms": ort_rounds.iter().map(median).collect::<Vec<_>>(),
                    "waited_for_quiet_s": waited_s,
                    "started_while_busy": noisy_rounds,
                },
                "smelt_over_tract": s.zip(t).map(|(a, b)| a / b),
                "gflops": gflops, "share_of_peak": share,
            });
            println!(
                "{:<22} {threads}T smelt {:>9} ort {:>9} tract {:>9}  ratio ort {:>5} tract {:>5}",
                case.name,
                fmt_ms(s),
                fmt_ms(o),
                fmt_ms(t),
                fmt_ratio(row["smelt_over_onnxruntime"].as_f64()),
                fmt_ratio(row["smelt_over_tract"].as_f64()),
            );
            rows.push(row);
        }
    }
    let date = today();
    let result = json!({
        "date": date, "cpu": cpu, "peak": peak,
        "baseline": "onnxruntime C API (ort-capi, in process)",
        "versions": { "smelt": env!("CARGO_PKG_VERSION"), "onnxruntime": "1.31.1", "tract": "0.23.9" },
        "results": rows,
    });
    if flag("--models").is_some() {
        // A subset is a check, not a result: the committed files stay the full run's.
        let path = root.join("target/bench-subset.json");
        std::fs::write(&path, serde_json::to_string_pretty(&result)?)?;
        println!("wrote {} (a subset: docs untouched)", path.display());
        return Ok(());
    }
    let dir = root.join("bench/results");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{date}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&result)?)?;
    write_docs(root, &result)?;
    println!(
        "wrote {}, docs/performance.md, docs/performance.svg",
        path.display()
    );
    Ok(())
}

/// The table `docs/performance.md` and the chart `docs/performance.svg` of a results file.
fn write_docs(root: &Path, result: &Value) -> Result<()> {
    std::fs::write(root.join("docs/performance.md"), markdown(result))?;
    std::fs::write(root.join("docs/performance.svg"), svg(result))?;
    Ok(())
}

fn fmt_ms(v: Option<f64>) -> String {
    // Sub-10-microsecond models keep four decimals, so they do not print as 0.000.
    v.map_or("-".into(), |v| {
        if v < 0.01 {
            format!("{v:.4}")
        } else {
            format!("{v:.3}")
        }
    })
}

fn fmt_ratio(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2}"))
}

pub(crate) fn today() -> String {
    let out = Command::new("date").arg("+%Y-%m-%d").output();
    out.ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "undated".into())
}

fn geomean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| (v.iter().map(|x| x.ln()).sum::<f64>() / v.len() as f64).exp())
}

/// A model counts as sizeable where onnxruntime's C API takes at least this long: below
/// it, fixed per-run costs decide the ratio more than the kernels do.
const SIZEABLE_MS: f64 = 1.0;

fn markdown(r: &Value) -> String {
    let baseline = r["baseline"]
        .as_str()
        .unwrap_or("onnxruntime through its Python bindings");
    let mut s = format!(
        "# Performance\n\nGenerated by `cargo xtask bench` on {} ({}; measured peak: {}). Median latency in ms \
         at batch 1 after warm-up. The baseline is {baseline}; smelt and it take turns in {ROUNDS} rounds, each \
         started once every core runs a fixed probe within 1.1x of the quietest time seen, and each figure is the median round's (smelt/ort is the median of the per-round ratios); ratios are smelt / peer \
         (below 1: smelt is faster). `ort py` is onnxruntime through its Python bindings, measured once. tract's \
         Python bindings run on one thread, so its 2-thread column repeats the 1-thread figure. GFLOP/s count the \
         contractions (MatMul, Conv) only; the share is of the measured fp32 FMA peak for that many threads. \
         `load ms` is smelt's import to runnable code (JIT); peak RSS is each process's, and the RSS ratio \
         smelt's over onnxruntime's C API harness's. Before timing, each model's outputs from `smelt run` are \
         compared with onnxruntime's (rtol 1e-4, atol 1e-5 times the output's largest magnitude above 1; the table \
         after the timings).\n\n\
         ![ratios](performance.svg)\n\n\
         | model | threads | smelt | onnxruntime | ort py | tract | smelt/ort | smelt/tract | GFLOP/s | share of peak | load ms | smelt RSS MB | ort RSS MB | RSS ratio |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        r["date"].as_str().unwrap_or(""),
        r["cpu"].as_str().unwrap_or(""),
        r["peak"]
    );
    let rows = r["results"].as_array().cloned().unwrap_or_default();
    let mb = |v: &Value| {
        v["peak_rss_bytes"]
            .as_f64()
            .map_or("-".into(), |g| format!("{:.0}", g / 1e6))
    };
    for row in &rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            row["model"].as_str().unwrap_or(""),
            row["threads"],
            fmt_ms(median(&row["smelt"])),
            fmt_ms(median(&row["onnxruntime"])),
            fmt_ms(median(&row["onnxruntime_python"])),
            fmt_ms(median(&row["tract"])),
            fmt_ratio(row["smelt_over_onnxruntime"].as_f64()),
            fmt_ratio(row["smelt_over_tract"].as_f64()),
            row["gflops"]
                .as_f64()
                .map_or("-".into(), |g| format!("{g:.1}")),
            row["share_of_peak"]
                .as_f64()
                .map_or("-".into(), |g| format!("{:.0}%", g * 100.0)),
            row["smelt"]["load_ms"]
                .as_f64()
                .or(row["smelt"]["compile_ms"].as_f64())
                .map_or("-".into(), |g| format!("{g:.0}")),
            mb(&row["smelt"]),
            mb(&row["onnxruntime"]),
            fmt_ratio(row["smelt_rss_over_onnxruntime"].as_f64()),
        ));
    }
    if rows.iter().any(|r| r["parameters"].is_u64()) {
        s.push_str("\n| model | parameters | contraction GFLOP | outputs match onnxruntime | source |\n|---|---|---|---|---|\n");
        for row in rows.iter().filter(|r| r["threads"] == THREADS[0]) {
            let check = &row["check"];
            let matches = match check["matches"].as_bool() {
                Some(true) => format!(
                    "yes ({:.2} of the tolerance)",
                    check["worst_error_over_tolerance"].as_f64().unwrap_or(0.0)
                ),
                Some(false) => format!(
                    "NO: {}",
                    check["error"]
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| check["problems"].to_string())
                ),
                None => "-".into(),
            };
            s.push_str(&format!(
                "| {} | {} | {} | {matches} | {} |\n",
                row["model"].as_str().unwrap_or(""),
                row["parameters"]
                    .as_u64()
                    .map_or("-".into(), |p| p.to_string()),
                row["smelt"]["flops"]
                    .as_f64()
                    .map_or("-".into(), |f| format!("{:.3}", f / 1e9)),
                row["source"].as_str().unwrap_or("-"),
            ));
        }
    }
    for threads in THREADS {
        let at: Vec<&Value> = rows.iter().filter(|r| r["threads"] == threads).collect();
        let ratios = |sizeable: bool| -> Vec<f64> {
            at.iter()
                .filter(|r| {
                    !sizeable || median(&r["onnxruntime"]).is_some_and(|ms| ms >= SIZEABLE_MS)
                })
                .filter_map(|r| r["smelt_over_onnxruntime"].as_f64())
                .collect()
        };
        let (all, sizeable) = (ratios(false), ratios(true));
        let tract: Vec<f64> = at
            .iter()
            .filter_map(|r| r["smelt_over_tract"].as_f64())
            .collect();
        let rss: Vec<f64> = at
            .iter()
            .filter_map(|r| r["smelt_rss_over_onnxruntime"].as_f64())
            .collect();
        s.push_str(&format!(
            "\nAt {threads} thread(s): geometric mean of smelt/onnxruntime {} over {} models, {} over the {} \
             models of at least {SIZEABLE_MS} ms; worst {}; smelt/tract {}; peak RSS smelt/onnxruntime worst {}.\n",
            fmt_ratio(geomean(&all)),
            all.len(),
            fmt_ratio(geomean(&sizeable)),
            sizeable.len(),
            fmt_ratio(all.iter().copied().reduce(f64::max)),
            fmt_ratio(geomean(&tract)),
            fmt_ratio(rss.iter().copied().reduce(f64::max)),
        ));
        let failed: Vec<String> = at
            .iter()
            .flat_map(|r| {
                ["smelt", "onnxruntime", "onnxruntime_python", "tract"]
                    .into_iter()
                    .filter_map(move |k| {
                        r[k]["error"]
                            .as_str()
                            .map(|e| format!("{} on {k}: {e}", r["model"].as_str().unwrap_or("")))
                    })
            })
            .collect();
        if !failed.is_empty() {
            s.push_str(&format!("Not measured: {}.\n", failed.join("; ")));
        }
    }
    s
}

/// A horizontal bar chart of smelt/onnxruntime at 2 threads, with the parity line.
fn svg(r: &Value) -> String {
    let rows: Vec<(String, f64)> = r["results"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|row| row["threads"] == 2)
        .filter_map(|row| {
            Some((
                row["model"].as_str()?.to_string(),
                row["smelt_over_onnxruntime"].as_f64()?,
            ))
        })
        .collect();
    let (left, bar_h, width) = (170.0, 18.0, 420.0);
    let max = rows.iter().map(|r| r.1).fold(1.5f64, f64::max);
    let h = 40.0 + rows.len() as f64 * (bar_h + 4.0);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n<text x=\"4\" y=\"14\">smelt / onnxruntime median latency, 2 threads (below 1: smelt faster)</text>\n",
        left + width + 60.0
    );
    for (i, (name, ratio)) in rows.iter().enumerate() {
        let y = 26.0 + i as f64 * (bar_h + 4.0);
        let w = ratio / max * width;
        let color = if *ratio <= 1.0 { "#2a9d4b" } else { "#d1495b" };
        s.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{name}</text><rect x=\"{left}\" y=\"{y}\" width=\"{w:.1}\" height=\"{bar_h}\" fill=\"{color}\"/><text x=\"{:.1}\" y=\"{}\">{ratio:.2}</text>\n",
            left - 4.0,
            y + 13.0,
            left + w + 3.0,
            y + 13.0
        ));
    }
    let x1 = left + width / max;
    s.push_str(&format!(
        "<line x1=\"{x1:.1}\" y1=\"22\" x2=\"{x1:.1}\" y2=\"{h}\" stroke=\"black\" stroke-dasharray=\"3,3\"/>\n</svg>\n"
    ));
    s
}

/// Per-model changes against an earlier results file (the newest file in bench/results
/// other than OLD is the new run): smelt's median, and smelt's ratio to onnxruntime
/// measured in the same run. The ratio cancels a machine that is faster or busier as a
/// whole, so a model counts as slower only where both grew by more than `NOISE`.
fn compare(root: &Path, old: &Path) -> Result<()> {
    /// Changes up to this (10%) are within what two runs of the same code differ by on a
    /// shared 2-core host.
    const NOISE: f64 = 0.10;
    let read = |p: &Path| -> Result<Value> {
        serde_json::from_str(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("parsing {}", p.display()))
    };
    let old_v = read(old)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("bench/results"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == "json")
                && p.canonicalize().ok() != old.canonicalize().ok()
        })
        .collect();
    files.sort();
    let new_path = files.last().context("no newer results in bench/results")?;
    let new_v = read(new_path)?;
    println!("{} -> {}", old.display(), new_path.display());
    if old_v["baseline"] != new_v["baseline"] {
        // Files from before the C API harness have no baseline field: Python bindings.
        println!(
            "note: the onnxruntime baselines differ ({} -> {}); ratio changes mix the two",
            old_v["baseline"].as_str().unwrap_or("Python bindings"),
            new_v["baseline"].as_str().unwrap_or("Python bindings")
        );
    }
    println!(
        "{:<22} {:>3} {:>21} {:>8}   {:>15} {:>8}",
        "model", "thr", "smelt ms (old -> new)", "change", "/ onnxruntime", "change"
    );
    let mut slower = 0;
    let mut ratio_changes = Vec::new();
    for row in new_v["results"].as_array().cloned().unwrap_or_default() {
        let before = old_v["results"].as_array().and_then(|rs| {
            rs.iter()
                .find(|r| r["model"] == row["model"] && r["threads"] == row["threads"])
                .cloned()
        });
        let (Some(b), Some(a)) = (
            before.as_ref().and_then(|b| median(&b["smelt"])),
            median(&row["smelt"]),
        ) else {
            continue;
        };
        let ratio = |r: &Value| r["smelt_over_onnxruntime"].as_f64();
        let (rb, ra) = (before.as_ref().and_then(ratio), ratio(&row));
        let change = a / b - 1.0;
        let ratio_change = rb.zip(ra).map(|(rb, ra)| ra / rb - 1.0);
        if let Some(c) = ratio_change {
            ratio_changes.push(1.0 + c);
        }
        let mark = match ratio_change {
            Some(rc) if change > NOISE && rc > NOISE => {
                slower += 1;
                "SLOWER"
            }
            Some(rc) if change < -NOISE && rc < -NOISE => "faster",
            _ => "",
        };
        println!(
            "{:<22} {:>3} {b:>9.3} -> {a:>9.3} {:>+7.1}%   {:>6} -> {:>6} {:>8} {mark}",
            row["model"].as_str().unwrap_or(""),
            row["threads"],
            change * 100.0,
            fmt_ratio(rb),
            fmt_ratio(ra),
            ratio_change.map_or("-".into(), |c| format!("{:+.1}%", c * 100.0)),
        );
    }
    if let Some(g) = geomean(&ratio_changes) {
        println!(
            "geometric mean of the change of smelt/onnxruntime: {:+.1}% over {} rows",
            (g - 1.0) * 100.0,
            ratio_changes.len()
        );
    }
    println!(
        "{slower} models slower beyond noise ({:.0}% in both)",
        NOISE * 100.0
    );
    Ok(())
}
