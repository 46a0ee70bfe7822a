//! `cargo xtask fuzz [--seconds N] [--targets a,b]`: runs each cargo-fuzz target of `fuzz/`
//! for N seconds (libFuzzer, coverage-guided, on the stable toolchain with
//! `--sanitizer none`), from a seed corpus of the conformance models, the generated
//! models, the hostile corpus and the graph test files. Installs cargo-fuzz when missing.
//! A crash fails the task; its input is under `fuzz/artifacts/<target>/` and belongs in
//! `tests/fuzz-regressions/<target>/`, which `tests/tests/fuzz_regressions.rs` replays.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The targets in `fuzz/Cargo.toml`, and which seeds each starts from.
const TARGETS: &[(&str, Seeds)] = &[
    ("onnx_import", Seeds::Models),
    ("graph_text", Seeds::GraphText),
    ("compile_model", Seeds::Models),
];

#[derive(Clone, Copy)]
enum Seeds {
    Models,
    GraphText,
}

/// The cargo-fuzz release this project is tested with.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let mut seconds = 60u64;
    let mut only: Option<Vec<String>> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => {
                seconds = it
                    .next()
                    .context("--seconds needs a value")?
                    .parse()
                    .context("--seconds")?
            }
            "--targets" => {
                only = Some(
                    it.next()
                        .context("--targets needs a value")?
                        .split(',')
                        .map(String::from)
                        .collect(),
                )
            }
            other => bail!("unknown fuzz option '{other}' (options: --seconds N, --targets a,b)"),
        }
    }
    ensure_cargo_fuzz()?;
    crate::data::ensure(root)?;
    let mut summary = Vec::new();
    for &(target, seeds) in TARGETS {
        if only
            .as_ref()
            .is_some_and(|o| !o.iter().any(|t| t == target))
        {
            continue;
        }
        let corpus = root.join("target/fuzz-corpus").join(target);
        seed_corpus(target, &corpus, seeds)?;
        let before = file_count(&corpus);
        let log = root.join(format!("target/fuzz-{target}.log"));
        println!(
            "$ cargo fuzz run {target} ({seconds} s, {before} seeds; log {})",
            log.display()
        );
        let status = Command::new("cargo")
            .current_dir(root)
            .args(["fuzz", "run", "--sanitizer", "none", target])
            .arg(&corpus)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            // A single input may take this long (compile_model generates code) and this much.
            .args(["-timeout=60", "-rss_limit_mb=4096", "-print_final_stats=1"])
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::options().append(true).open(&log)?)
            .status()
            .context("running cargo fuzz")?;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let runs = text
            .lines()
            .filter_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
            .next_back()
            .map_or("?".into(), |v| v.trim().to_string());
        let after = file_count(&corpus);
        summary.push(format!(
            "{target}: {runs} executions in {seconds} s, corpus {before} -> {after} inputs"
        ));
        if !status.success() {
            let tail: Vec<&str> = text
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            bail!(
                "fuzz target {target} failed ({status}); the input is under fuzz/artifacts/{target}/:\n{}",
                tail.join("\n")
            );
        }
    }
    for line in summary {
        println!("{line}");
    }
    Ok(())
}

fn ensure_cargo_fuzz() -> Result<()> {
    let ok = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Ok(());
    }
    println!("$ cargo install cargo-fuzz --version {CARGO_FUZZ_VERSION} --locked");
    let status = Command::new("cargo")
        .args([
            "install",
            "cargo-fuzz",
            "--version",
            CARGO_FUZZ_VERSION,
            "--locked",
        ])
        .status()
        .context("installing cargo-fuzz")?;
    if !status.success() {
        bail!("cargo install cargo-fuzz failed ({status})");
    }
    Ok(())
}

fn file_count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

/// Copies the seeds of a target into `corpus` (the corpus keeps what libFuzzer adds).
fn seed_corpus(target: &str, corpus: &Path, seeds: Seeds) -> Result<()> {
    std::fs::create_dir_all(corpus)?;
    let mut files: Vec<PathBuf> = Vec::new();
    match seeds {
        Seeds::Models => {
            let data = smelt_tests::data_dir();
            for sub in [
                "node",
                "suites/simple",
                "suites/pytorch-converted",
                "suites/pytorch-operator",
            ] {
                let Ok(dir) = std::fs::read_dir(data.join(sub)) else {
                    continue;
                };
                files.extend(dir.flatten().map(|e| e.path().join("model.onnx")));
            }
            for name in smelt_tests::CLASSIC_MODELS {
                files.push(data.join("models").join(name).join("model.onnx"));
            }
            // Per target, so that targets fuzzed at once do not lay it out over each other.
            let hostile = corpus.with_extension("hostile");
            for case in smelt_tests::hostile::corpus() {
                files.push(smelt_tests::hostile::write_case(&hostile, &case)?);
            }
        }
        Seeds::GraphText => {
            for dir in ["passes", "fusion"] {
                files.extend(smelt_tests::graph_files(dir));
            }
        }
    }
    files.extend(
        smelt_tests::fuzz::saved_inputs(target)
            .with_context(|| format!("reading the saved inputs of {target}"))?,
    );
    for (i, f) in files.iter().filter(|f| f.is_file()).enumerate() {
        let dest = corpus.join(format!("seed-{i:05}"));
        if !dest.exists() {
            std::fs::copy(f, &dest).with_context(|| format!("copying {}", f.display()))?;
        }
    }
    Ok(())
}
