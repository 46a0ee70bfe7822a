//! `cargo xtask fuzz [--seconds N] [--targets a,b] [--keep-going]`: runs each cargo-fuzz
//! target of `fuzz/` for N seconds (libFuzzer, coverage-guided, on the stable toolchain
//! with `--sanitizer none` and debug assertions, so overflows are caught), from a seed
//! corpus of the conformance models, the generated models, the hostile corpus and the
//! graph test files. Installs cargo-fuzz when missing.
//! A crash fails the task (with `--keep-going`, libFuzzer's fork mode keeps each crash and
//! goes on); its input is under `fuzz/artifacts/<target>/` and belongs in
//! `tests/fuzz-regressions/<target>/`, which `tests/tests/fuzz_regressions.rs` replays.
//!
//! `cargo xtask fuzz --ci` is CI's pass, the same executions on every run: per target,
//! every saved input (the seeds and the regressions) and then a fixed count of mutants of
//! them from a fixed seed (`smelt_tests::mutate`), each run once through the target's body
//! in worker processes (`cargo xtask fuzz-worker`, through `smelt_tests::isolate`). It
//! prints a digest of the inputs it ran, so that two runs can be seen to agree.

use anyhow::{Context, Result, bail};
use smelt_tests::fuzz::TARGETS;
use smelt_tests::isolate::{self, Isolation, Outcome, run_isolated};
use smelt_tests::mutate::{self, InputKind};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The cargo-fuzz release this project is tested with.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let mut seconds = 60u64;
    let mut only: Option<Vec<String>> = None;
    let mut keep_going = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--ci" => return ci_pass(root),
            "--keep-going" => keep_going = true,
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
            other => bail!(
                "unknown fuzz option '{other}' (options: --seconds N, --targets a,b, --keep-going, or --ci)"
            ),
        }
    }
    ensure_cargo_fuzz()?;
    crate::data::ensure(root)?;
    let mut summary = Vec::new();
    for (target, kind) in TARGETS {
        if only
            .as_ref()
            .is_some_and(|o| !o.iter().any(|t| t == target))
        {
            continue;
        }
        let corpus = root.join("target/fuzz-corpus").join(target);
        seed_corpus(target, &corpus, kind)?;
        let before = file_count(&corpus);
        let log = root.join(format!("target/fuzz-{target}.log"));
        let artifacts = root.join("fuzz/artifacts").join(target);
        let found_before = file_count(&artifacts);
        println!(
            "$ cargo fuzz run {target} ({seconds} s, {before} seeds; log {})",
            log.display()
        );
        let mut cmd = Command::new("cargo");
        cmd.current_dir(root)
            // Debug assertions include overflow checks: an overflow in shape arithmetic
            // is a fault to find, where a release build would wrap silently.
            .args([
                "fuzz",
                "run",
                "--sanitizer",
                "none",
                "--debug-assertions",
                target,
            ])
            .arg(&corpus)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            // A single input may take this long (compile_model generates code) and this much.
            .args(["-timeout=60", "-rss_limit_mb=4096", "-print_final_stats=1"]);
        if keep_going {
            // Children run the inputs, so that a crash is kept and the run goes on.
            cmd.args([
                "-fork=1",
                "-ignore_crashes=1",
                "-ignore_timeouts=1",
                "-ignore_ooms=1",
            ]);
        }
        let status = cmd
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::options().append(true).open(&log)?)
            .status()
            .context("running cargo fuzz")?;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let runs = executions(&text);
        let after = file_count(&corpus);
        let found = file_count(&artifacts).saturating_sub(found_before);
        summary.push(format!(
            "{target}: {runs} executions in {seconds} s, corpus {before} -> {after} inputs, {found} new inputs under {}",
            artifacts.display()
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

/// The executions a libFuzzer log reports: its final stats, or in fork mode the count of
/// its last status line (`#N: cov: ...`).
fn executions(log: &str) -> String {
    let stat = log
        .lines()
        .filter_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .next_back()
        .map(|v| v.trim().to_string());
    stat.or_else(|| {
        log.lines()
            .filter_map(|l| {
                l.strip_prefix('#')?
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
            })
            .rfind(|n| !n.is_empty())
            .map(String::from)
    })
    .unwrap_or_else(|| "?".into())
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

/// The saved inputs of a target in a fixed order: its seeds (sorted within each source)
/// and then its saved crash inputs.
fn seed_files(target: &str, kind: InputKind, hostile: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = Vec::new();
    match kind {
        InputKind::OnnxModel => {
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
                let mut models: Vec<PathBuf> =
                    dir.flatten().map(|e| e.path().join("model.onnx")).collect();
                models.sort();
                files.extend(models);
            }
            for name in smelt_tests::CLASSIC_MODELS {
                files.push(data.join("models").join(name).join("model.onnx"));
            }
            // Not the case that names its data by an absolute path: its bytes hold the
            // path it is laid out at, and the seeds must be the same wherever CI clones.
            for case in smelt_tests::hostile::corpus() {
                if !case.absolute_external {
                    files.push(smelt_tests::hostile::write_case(hostile, &case)?);
                }
            }
        }
        InputKind::GraphText => {
            for dir in ["passes", "fusion"] {
                files.extend(smelt_tests::graph_files(dir));
            }
        }
    }
    files.extend(
        smelt_tests::fuzz::saved_inputs(target)
            .with_context(|| format!("reading the saved inputs of {target}"))?,
    );
    files.retain(|f| f.is_file());
    Ok(files)
}

/// Copies the seeds of a target into `corpus` (the corpus keeps what libFuzzer adds).
fn seed_corpus(target: &str, corpus: &Path, kind: InputKind) -> Result<()> {
    std::fs::create_dir_all(corpus)?;
    // Per target, so that targets fuzzed at once do not lay it out over each other.
    let files = seed_files(target, kind, &corpus.with_extension("hostile"))?;
    for (i, f) in files.iter().enumerate() {
        let dest = corpus.join(format!("seed-{i:05}"));
        if !dest.exists() {
            std::fs::copy(f, &dest).with_context(|| format!("copying {}", f.display()))?;
        }
    }
    Ok(())
}

/// The seed of CI's mutants; changing it changes every CI fuzz pass after it.
const CI_SEED: u64 = 20_261_206;

/// How many mutants CI runs of each target: about a minute each on 2 cores.
fn ci_mutants(target: &str) -> usize {
    match target {
        "compile_model" => 60_000,
        _ => 150_000,
    }
}

/// CI's deterministic fuzz pass (see the module header).
fn ci_pass(root: &Path) -> Result<()> {
    crate::data::ensure(root)?;
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut faults = Vec::new();
    for (target, kind) in TARGETS {
        let started = std::time::Instant::now();
        let work = root.join("target/fuzz-ci").join(target);
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work)?;
        let pack = work.join("inputs.pack");
        let saved: Vec<Vec<u8>> = seed_files(target, kind, &work.join("hostile"))?
            .iter()
            .map(|f| std::fs::read(f).with_context(|| format!("reading {}", f.display())))
            .collect::<Result<_>>()?;
        let mutants = mutate::mutants(&saved, kind, CI_SEED, ci_mutants(target));
        let all: Vec<&[u8]> = saved.iter().chain(&mutants).map(Vec::as_slice).collect();
        write_pack(&pack, &all)?;
        let iso = Isolation {
            worker: exe.clone(),
            args: vec![
                "fuzz-worker".into(),
                target.into(),
                pack.display().to_string(),
            ],
            jobs,
            block: 500,
            // As libFuzzer's -timeout in `cargo xtask fuzz`.
            hang_limit: std::time::Duration::from_secs(60),
        };
        let outcomes = run_isolated(&iso, all.len());
        let mut tally: BTreeMap<String, usize> = BTreeMap::new();
        for (i, outcome) in outcomes.iter().enumerate() {
            let word = match outcome {
                Outcome::Finished(w) => w.clone(),
                fault => {
                    let artifacts = root.join("fuzz/artifacts").join(target);
                    std::fs::create_dir_all(&artifacts)?;
                    let kept = artifacts.join(format!("ci-{i:06}"));
                    std::fs::write(&kept, all[i])?;
                    faults.push(format!(
                        "{target}: {fault:?} (input kept as {})",
                        kept.display()
                    ));
                    "fault".into()
                }
            };
            *tally.entry(word).or_default() += 1;
        }
        // The pack is some hundreds of megabytes; a fault's input was kept above.
        std::fs::remove_dir_all(&work)?;
        println!(
            "fuzz pass {target}: {} saved inputs (digest {:016x}) and {} mutants of seed {CI_SEED} (digest {:016x}), {:.0} s: {tally:?}",
            saved.len(),
            mutate::digest(saved.iter().map(Vec::as_slice)),
            mutants.len(),
            mutate::digest(mutants.iter().map(Vec::as_slice)),
            started.elapsed().as_secs_f64(),
        );
    }
    if !faults.is_empty() {
        bail!(
            "the fuzz pass found {} faults; fix them and keep each input in tests/fuzz-regressions/<target>/:\n{}",
            faults.len(),
            faults.join("\n")
        );
    }
    Ok(())
}

/// Writes `inputs` into one file (a pass has some 10^5 of them, which as files would take
/// a gigabyte of blocks): their count, `count + 1` offsets into the data, then the data;
/// all numbers are little-endian u64.
fn write_pack(path: &Path, inputs: &[&[u8]]) -> Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    out.write_all(&(inputs.len() as u64).to_le_bytes())?;
    let mut offset = 0u64;
    for input in inputs.iter().map(|i| i.len() as u64).chain([0]) {
        out.write_all(&offset.to_le_bytes())?;
        offset += input;
    }
    for input in inputs {
        out.write_all(input)?;
    }
    out.flush()?;
    Ok(())
}

/// Inputs `first..end` of a pack from [`write_pack`].
fn read_pack(path: &Path, first: usize, end: usize) -> Result<Vec<Vec<u8>>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    let mut word = [0u8; 8];
    file.read_exact(&mut word)?;
    let count = u64::from_le_bytes(word) as usize;
    if first > end || end > count {
        bail!("{}: inputs {first}..{end} of {count}", path.display());
    }
    let header = 8 * (count as u64 + 2);
    let mut offsets = Vec::with_capacity(end - first + 1);
    file.seek(SeekFrom::Start(8 + 8 * first as u64))?;
    for _ in first..=end {
        file.read_exact(&mut word)?;
        offsets.push(u64::from_le_bytes(word));
    }
    file.seek(SeekFrom::Start(header + offsets[0]))?;
    offsets
        .windows(2)
        .map(|w| {
            let mut data = vec![0u8; (w[1] - w[0]) as usize];
            file.read_exact(&mut data)?;
            Ok(data)
        })
        .collect()
}

/// `cargo xtask fuzz-worker TARGET PACK FIRST END`: runs the target's body on inputs
/// FIRST..END of PACK ([`write_pack`]), one report line each (`smelt_tests::isolate`).
pub fn worker(args: &[String]) -> Result<()> {
    let [target, pack, first, end] = args else {
        bail!("usage: cargo xtask fuzz-worker TARGET PACK FIRST END");
    };
    let (first, end): (usize, usize) = (first.parse()?, end.parse()?);
    let inputs = read_pack(Path::new(pack), first, end)?;
    isolate::record_panics();
    for (index, data) in (first..end).zip(inputs) {
        let outcome = isolate::outcome_of(|| {
            smelt_tests::fuzz::run_target(target, &data).unwrap_or_else(|| "NoSuchTarget".into())
        });
        isolate::report(index, &outcome);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn packs_give_back_their_inputs() {
        let path = std::env::temp_dir().join(format!("smelt-pack-{}", std::process::id()));
        let inputs: [&[u8]; 4] = [b"one", b"", b"three", b"4"];
        super::write_pack(&path, &inputs).unwrap();
        assert_eq!(
            super::read_pack(&path, 1, 3).unwrap(),
            [b"".to_vec(), b"three".to_vec()]
        );
        assert_eq!(super::read_pack(&path, 0, 4).unwrap().len(), 4);
        assert!(super::read_pack(&path, 2, 5).is_err());
        std::fs::remove_file(path).unwrap();
    }
}
