//! Project automation: `cargo xtask <setup|test|onnx-data|conformance|codegen>`.

mod codegen;
mod data;

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
        Some("setup") => data::ensure(&root),
        Some("test") => test(&root),
        other => bail!(
            "unknown task {other:?}; tasks: setup, onnx-data, test, conformance [--update], codegen"
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
    use std::io::{BufRead, BufReader};
    println!("$ cargo {}", args.join(" "));
    let mut child = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(root)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let (p, f) = result_counts(rest);
            passed += p;
            failed += f;
        }
    }
    Ok((passed, failed, child.wait()?.success()))
}

/// The README's test command: installs what the tests need, then runs every check CI runs.
fn test(root: &Path) -> Result<()> {
    data::ensure(root)?;
    cargo(root, &["fmt", "--all", "--check"])?;
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
    let (passed, failed, ok) = cargo_test(root, &["test", "--workspace", "--no-fail-fast"])?;
    let conformance = run_conformance(root, false);
    // One closing line with the totals of every test binary.
    println!("{passed} passed, {failed} failed");
    if !ok || failed > 0 {
        bail!("cargo test failed");
    }
    conformance
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
