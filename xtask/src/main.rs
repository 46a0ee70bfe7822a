//! Project automation: `cargo xtask <setup|test|onnx-data|conformance|gpu-bundle|gpu-dry-run|gpu-results|fuzz|fuzz-worker|opt-stats|peak|bench|codegen>`.

mod bench;
mod codegen;
mod data;
mod disk;
mod fuzz;
mod gpu;
mod quiet;

use anyhow::{Context, Result, bail};
use smelt_tests::conformance::{self, Runtime};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = root();
    match args.first().map(String::as_str) {
        Some("codegen") => codegen::run(&root),
        Some("conformance") => {
            data::ensure(&root)?;
            run_conformance(&root, args.iter().any(|a| a == "--update"))
        }
        Some("onnx-data") => data::ensure(&root),
        Some("setup") => setup(&root).map(|_| ()),
        Some("test") => test(&root),
        Some("gpu-bundle") => gpu::bundle(&root).map(|_| ()),
        Some("gpu-dry-run") => gpu::dry_run(&root),
        Some("gpu-results") => gpu::results(&root, &args[1..]),
        Some("fuzz") => fuzz::run(&root, &args[1..]),
        Some("fuzz-worker") => fuzz::worker(&args[1..]),
        Some("peak") => peak(&root),
        Some("bench") => bench::run(&root, &args[1..]),
        Some("opt-stats") => {
            data::ensure(&root)?;
            opt_stats(&root)
        }
        other => bail!(
            "unknown task {other:?}; tasks: setup, onnx-data, test, conformance [--update], gpu-bundle, gpu-dry-run, gpu-results DIR, fuzz [--seconds N] [--targets a,b] [--ci], opt-stats, peak, bench [--models A,B] [--no-zoo] [--compare OLD.json], codegen"
        ),
    }
}

fn run_conformance(root: &Path, update: bool) -> Result<()> {
    let data_dir = smelt_tests::require_data("");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut all = Vec::new();
    let mut disagree = false;
    for rt in Runtime::ALL {
        let results = conformance::run_all(&data_dir, rt, threads).map_err(anyhow::Error::msg)?;
        let path = conformance::expectations_path(rt);
        let expected = if path.exists() {
            conformance::load_expectations(&path).map_err(anyhow::Error::msg)?
        } else {
            Default::default()
        };
        let (node, node_pass, suite, suite_pass) = smelt_tests::conformance::counts(&results);
        println!(
            "{}: {node_pass} of {node} node cases pass, {suite_pass} of {suite} suite models",
            rt.name()
        );
        if update {
            conformance::write_expectations(&path, rt, &results, &expected)
                .map_err(anyhow::Error::msg)?;
            println!("wrote {}", path.display());
        } else {
            let d = conformance::check(&results, &expected);
            for (n, e) in &d.regressions {
                println!("  REGRESSION {n}: {e}");
            }
            for n in &d.unexpected_passes {
                println!("  passes but not marked pass: {n}");
            }
            disagree |= !d.is_empty();
        }
        all.push((rt, results));
    }
    let md = conformance::conformance_markdown(&all);
    std::fs::write(root.join("docs/conformance.md"), md).context("writing docs/conformance.md")?;
    println!("wrote docs/conformance.md");
    if disagree {
        bail!(
            "the run disagrees with the expectations file; fix the regressions or run `cargo xtask conformance --update`"
        );
    }
    Ok(())
}

/// The machine's fp32 FMA peak and copy bandwidth (release build of `smelt-peak`),
/// printed and written to `target/smelt-peak.json` for the benchmarks to read.
fn peak(root: &Path) -> Result<()> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .args([
            "run",
            "--quiet",
            "--release",
            "-p",
            "smelt-bench",
            "--bin",
            "smelt-peak",
        ])
        .output()
        .context("running smelt-peak")?;
    if !out.status.success() {
        bail!(
            "smelt-peak failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let json = String::from_utf8(out.stdout)?;
    print!("{json}");
    std::fs::write(root.join("target/smelt-peak.json"), &json)
        .context("writing target/smelt-peak.json")?;
    Ok(())
}

/// Optimization time and node counts of every classic and light model; writes docs/opt-stats.md.
fn opt_stats(root: &Path) -> Result<()> {
    let models = smelt_tests::require_data("models");
    let mut names: Vec<String> = std::fs::read_dir(&models)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    names.sort();
    let profile = if cfg!(debug_assertions) {
        "dev"
    } else {
        "release"
    };
    let mut md = format!(
        "# Optimizer statistics\n\nGenerated by `cargo xtask opt-stats` ({profile} build): the standard pipeline on each model, best of 3 runs.\n\n| model | nodes after import | nodes after opt | opt time (ms) | e-graph stop | rules fired |\n|---|---|---|---|---|---|\n"
    );
    for name in names {
        let dir = models.join(&name);
        let io = std::fs::read_to_string(dir.join("io.tsv"))?;
        let mut shapes = std::collections::HashMap::new();
        for line in io.lines() {
            let f: Vec<&str> = line.split('\t').collect();
            if f[0] == "input" {
                shapes.insert(
                    f[1].to_string(),
                    smelt_runtime::read_npy(&dir.join(f[2]))?.shape,
                );
            }
        }
        let model = smelt::Model::load(dir.join("model.onnx"))?;
        let imported = model.import(&smelt_onnx::ImportOptions {
            input_shapes: shapes,
            ..Default::default()
        })?;
        let mut best = f64::INFINITY;
        let mut last = None;
        for _ in 0..3 {
            let mut g = imported.graph.clone();
            let start = std::time::Instant::now();
            let records = smelt_opt::Pipeline::standard(Default::default()).run(&mut g)?;
            best = best.min(start.elapsed().as_secs_f64() * 1e3);
            last = Some((g, records));
        }
        let (g, records) = last.expect("ran three times");
        let egraph = records.iter().find(|r| r.name == "egraph");
        let detail = |key: &str| {
            egraph
                .and_then(|r| {
                    r.details
                        .iter()
                        .find(|(k, _)| k == key)
                        .map(|(_, v)| v.clone())
                })
                .unwrap_or_default()
        };
        let rules: usize = egraph.map(|r| r.changes).unwrap_or(0);
        let line = format!(
            "| {name} | {} | {} | {best:.1} | {} | {rules} |",
            imported.graph.nodes.len(),
            g.nodes.len(),
            detail("stop reason")
        );
        println!("{line}");
        md.push_str(&line);
        md.push('\n');
    }
    std::fs::write(root.join("docs/opt-stats.md"), md)?;
    println!("wrote docs/opt-stats.md");
    Ok(())
}

fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    println!("$ cargo {}", args.join(" "));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(root)
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Passed and failed counts of a `test result:` line's rest, e.g. `ok. 9 passed; 0 failed; ...`.
fn result_counts(rest: &str) -> (usize, usize) {
    let words: Vec<&str> = rest
        .split(|c: char| c.is_whitespace() || c == ';' || c == '.')
        .filter(|w| !w.is_empty())
        .collect();
    let count = |word: &str| {
        words
            .windows(2)
            .find(|w| w[1] == word)
            .and_then(|w| w[0].parse().ok())
            .unwrap_or(0)
    };
    (count("passed"), count("failed"))
}

/// Runs `cargo test`, echoing its output, and returns the passed and failed totals
/// summed over every test binary (the `test result:` lines).
fn cargo_test(root: &Path, args: &[&str]) -> Result<(usize, usize, bool)> {
    let (text, ok) = run_echo(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(args)
            .current_dir(root),
    )?;
    let (mut passed, mut failed) = (0, 0);
    for rest in text.lines().filter_map(|l| l.strip_prefix("test result: ")) {
        let (p, f) = result_counts(rest);
        passed += p;
        failed += f;
    }
    Ok((passed, failed, ok))
}

/// Everything the tests need: the venv and test data, LLVM 19 for the `cuda` feature, and
/// the GPU tools' wheel (ptxas, libdevice). Returns ptxas.
fn setup(root: &Path) -> Result<PathBuf> {
    data::ensure(root)?;
    data::ensure_llvm()?;
    let python = data::venv(root)?;
    data::ensure_gpu_tools(root, &python)
}

/// The crates' `cuda` features, which the whole suite is built and linted with.
const CUDA_FEATURES: &str =
    "smelt-gpu/cuda,smelt-runtime/cuda,smelt/cuda,smelt-cli/cuda,smelt-tests/cuda";

/// The README's test command: installs what the tests need, then runs every check CI runs.
fn test(root: &Path) -> Result<()> {
    disk::report_before(root);
    let ptxas = setup(root)?;
    // SAFETY: set before any thread starts; the cargo children inherit them.
    unsafe {
        std::env::set_var("SMELT_PTXAS", &ptxas);
        std::env::set_var("SMELT_LIBDEVICE", gpu::libdevice_beside(&ptxas));
    }
    cargo(root, &["fmt", "--all", "--check"])?;
    // The default build (no LLVM) must stay clean too.
    cargo(
        root,
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    cargo(
        root,
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--features",
            CUDA_FEATURES,
            "--",
            "-D",
            "warnings",
        ],
    )?;
    // The GPU session's bundle and its dry run on the emulated device, before the tests
    // that check them.
    gpu::bundle(root)?;
    let dry_run = gpu::dry_run(root);
    let (passed, failed, ok) = cargo_test(
        root,
        &[
            "test",
            "--workspace",
            "--features",
            CUDA_FEATURES,
            "--no-fail-fast",
        ],
    )?;
    // The op sweep's counts (the test writes them; cargo test captures what it prints).
    if let Ok(summary) = std::fs::read_to_string(root.join("target/op-sweep-summary.txt")) {
        print!("{summary}");
    }
    let conformance = run_conformance(root, false);
    // The deterministic fuzz pass: the same inputs on every run, so that it cannot fail
    // a change for a fault the change did not make.
    let fuzzing = fuzz::run(root, &["--ci".into()]);
    disk::report_after(root);
    // One closing line with the totals of every test binary.
    println!("{passed} passed, {failed} failed");
    if !ok || failed > 0 {
        bail!("cargo test failed");
    }
    dry_run.and(conformance).and(fuzzing)
}

/// Runs `cmd`, echoing its output, and returns its stdout and whether it succeeded.
fn run_echo(cmd: &mut Command) -> Result<(String, bool)> {
    use std::io::{BufRead, BufReader};
    println!("$ {cmd:?}");
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cmd:?}"))?;
    let mut text = String::new();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        text.push_str(&line);
        text.push('\n');
    }
    Ok((text, child.wait()?.success()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_cargo_test_result_lines() {
        assert_eq!(
            super::result_counts(
                "ok. 9 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.02s"
            ),
            (9, 0)
        );
        assert_eq!(
            super::result_counts("FAILED. 2 passed; 1 failed; 0 ignored"),
            (2, 1)
        );
    }
}
