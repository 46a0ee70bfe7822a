//! The GPU session (docs/gpu.md): `gpu-bundle` builds what a lent GPU machine (no Rust, no
//! network) needs into `target/gpu-bundle/`, `xtask/gpu/session.sh` is the device call
//! that uses it, `gpu-results` turns that call's files into docs/gpu.md and
//! tests/conformance/cuda.tsv, and the dry run is the same call on the emulated device.

use crate::data;
use anyhow::{Context, Result, bail};
use smelt_tests::conformance::{self, Runtime, Status};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The most the bundle may take: a device call carries 64 MiB with the working tree.
pub const BUNDLE_LIMIT: u64 = 56 << 20;
/// Where `gpu-bundle` writes the bundle and the dry run its results.
pub const BUNDLE_DIR: &str = "target/gpu-bundle";
pub const DRY_RUN_DIR: &str = "target/gpu-dry-run";
/// The files a session writes (a device call brings back at most 8).
pub const SESSION_FILES: [&str; 6] = [
    "env.txt",
    "steps.tsv",
    "conformance.tsv",
    "models.tsv",
    "timings.tsv",
    "log.txt",
];
/// The libraries the check program may load where it runs: the C runtime's.
const C_RUNTIME: [&str; 8] = [
    "linux-vdso.so.1",
    "libc.so.6",
    "libm.so.6",
    "libgcc_s.so.1",
    "libpthread.so.0",
    "libdl.so.2",
    "librt.so.1",
    "ld-linux-x86-64.so.2",
];
/// Linked from their static archives: LLVM's needs (zlib, zstd, libffi); the C++ runtime
/// comes from a search directory holding only its archive (see `static_link_dir`).
const WHOLE_ARCHIVES: [&str; 3] = ["ffi", "z", "zstd"];

/// `libdevice.10.bc` of the pinned `nvidia-cuda-nvcc-cu12` wheel, given its ptxas.
pub fn libdevice_beside(ptxas: &Path) -> PathBuf {
    ptxas
        .parent()
        .and_then(Path::parent)
        .map(|nvcc| nvcc.join("nvvm/libdevice/libdevice.10.bc"))
        .unwrap_or_default()
}

/// The shared libraries `ldd` lists that are not the C runtime's.
pub fn foreign_libraries(ldd_output: &str) -> Vec<String> {
    ldd_output
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(|lib| lib.rsplit('/').next().unwrap_or(lib).to_string())
        .filter(|lib| !C_RUNTIME.contains(&lib.as_str()) && lib != "statically")
        .collect()
}

/// The bundle's files and sizes; an error naming them when they are over `limit`.
pub fn check_size(dir: &Path, limit: u64) -> Result<u64> {
    let mut sizes = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        sizes.push((
            e.file_name().to_string_lossy().into_owned(),
            e.metadata()?.len(),
        ));
    }
    let total: u64 = sizes.iter().map(|(_, n)| n).sum();
    if total > limit {
        sizes.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        let list: Vec<String> = sizes
            .iter()
            .map(|(f, n)| format!("{f} {:.1} MiB", *n as f64 / 1048576.0))
            .collect();
        bail!(
            "the GPU bundle takes {:.1} MiB, over its {} MiB (a device call carries 64 MiB with the working tree): {}",
            total as f64 / 1048576.0,
            limit >> 20,
            list.join(", ")
        );
    }
    Ok(total)
}

/// A directory holding only `libstdc++.a`: searched before the system's, it makes the
/// linker take the archive for `-lstdc++`.
fn static_link_dir(root: &Path) -> Result<PathBuf> {
    let dir = root.join("target/gpu-bundle-link");
    std::fs::create_dir_all(&dir)?;
    let out = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .arg("-print-file-name=libstdc++.a")
        .output()
        .context("running cc to find libstdc++.a")?;
    let archive = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !archive.is_absolute() || !archive.is_file() {
        bail!(
            "libstdc++.a not found (cc -print-file-name); install the C++ compiler's development files (Debian: libstdc++-12-dev)"
        );
    }
    let link = dir.join("libstdc++.a");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&archive, &link)?;
    Ok(dir)
}

/// `cargo xtask gpu-bundle`: the check program (release, feature `cuda`, stripped, the C++
/// runtime and LLVM's libraries linked statically), libdevice from the pinned wheel, the
/// test data, the timing script and the benchmark generator, compressed.
pub fn bundle(root: &Path) -> Result<PathBuf> {
    data::ensure(root)?;
    data::ensure_llvm()?;
    let python = data::venv(root)?;
    let ptxas = data::ensure_gpu_tools(root, &python)?;
    let libdevice = libdevice_beside(&ptxas);
    if !libdevice.is_file() {
        bail!(
            "{} is missing from the GPU tools' wheel",
            libdevice.display()
        );
    }
    let link_dir = static_link_dir(root)?;
    let mut rustc = vec![
        "rustc".to_string(),
        "--release".into(),
        "-p".into(),
        "smelt-tests".into(),
        "--features".into(),
        "cuda".into(),
        "--bin".into(),
        "smelt-gpu-check".into(),
        "--".into(),
        "-C".into(),
        "strip=symbols".into(),
        "-L".into(),
        format!("native={}", link_dir.display()),
    ];
    for lib in WHOLE_ARCHIVES {
        rustc.push("-l".into());
        rustc.push(format!("static:+whole-archive={lib}"));
    }
    let args: Vec<&str> = rustc.iter().map(String::as_str).collect();
    crate::cargo(root, &args)?;
    let program = root.join("target/release/smelt-gpu-check");
    let ldd = Command::new("ldd")
        .arg(&program)
        .output()
        .context("running ldd")?;
    let listed = String::from_utf8_lossy(&ldd.stdout);
    let foreign = foreign_libraries(&listed);
    if !foreign.is_empty() {
        bail!(
            "{} loads {} at run time; the GPU machine may lack them (only the C runtime may stay dynamic):\n{listed}",
            program.display(),
            foreign.join(", ")
        );
    }
    let dir = root.join(BUNDLE_DIR);
    let status = Command::new(&python)
        .arg(root.join("xtask/gpu/pack.py"))
        .arg("pack")
        .arg(&dir)
        .arg("--program")
        .arg(&program)
        .arg("--libdevice")
        .arg(&libdevice)
        .arg("--data")
        .arg(root.join("target/onnx-data"))
        .arg("--file")
        .arg(root.join("xtask/gpu/timing.py"))
        .arg("--file")
        .arg(root.join("bench/py/gen_models.py"))
        .status()
        .context("running xtask/gpu/pack.py")?;
    if !status.success() {
        bail!("packing the GPU bundle failed ({status})");
    }
    let total = match check_size(&dir, BUNDLE_LIMIT) {
        Ok(total) => total,
        Err(e) => {
            // An oversized bundle would not travel; leave none to be carried by mistake.
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
    };
    println!(
        "wrote {} ({:.1} MiB of {} MiB); on a lent GPU: OUT=$OUT bash xtask/gpu/session.sh with carry [\"{BUNDLE_DIR}\"]",
        dir.display(),
        total as f64 / 1048576.0,
        BUNDLE_LIMIT >> 20
    );
    Ok(dir)
}

/// The dry run: the session script on the emulated device, on a subset and at small
/// sizes, into `target/gpu-dry-run`; fails unless every step finished and wrote its file.
pub fn dry_run(root: &Path) -> Result<()> {
    let out = root.join(DRY_RUN_DIR);
    let _ = std::fs::remove_dir_all(&out);
    let python = data::venv(root)?;
    let status = Command::new("bash")
        .arg(root.join("xtask/gpu/session.sh"))
        .arg(root.join(BUNDLE_DIR))
        .current_dir(root)
        .env("OUT", &out)
        .env("SMELT_GPU_RUNTIME", "gpu-emulator")
        .env("SMELT_GPU_QUICK", "1")
        .env("PYTHON", &python)
        .status()
        .context("running xtask/gpu/session.sh")?;
    if !status.success() {
        bail!("the GPU session's dry run failed ({status})");
    }
    let session = Session::read(&out)?;
    let unfinished: Vec<String> = session
        .steps
        .iter()
        .filter(|s| s.status != "ok")
        .map(|s| format!("{} {}", s.name, s.status))
        .collect();
    if !unfinished.is_empty() {
        bail!(
            "the GPU session's dry run: {} (see {}/log.txt)",
            unfinished.join(", "),
            out.display()
        );
    }
    let failing: Vec<&TimingRow> = session
        .timings
        .iter()
        .filter(|t| t.engine == "smelt" && t.check != "pass")
        .collect();
    if !failing.is_empty() {
        bail!(
            "the dry run's timings: smelt's results differ from the reference: {}",
            failing
                .iter()
                .map(|t| format!("{} ({} {})", t.bench, t.check, t.note))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let emulator = emulator_expectations()?;
    print!("{}", render(&session, &emulator));
    println!(
        "GPU session dry run: {} conformance cases ({} pass), {} models ({} pass), {} timings, in {}",
        session.conformance.len(),
        passing(&session.conformance),
        session.models.len(),
        passing(&session.models),
        session.timings.len(),
        out.display()
    );
    Ok(())
}

/// One step of steps.tsv.
#[derive(Debug)]
pub struct Step {
    pub name: String,
    pub status: String,
    pub seconds: String,
    pub limit: String,
}

/// One row of timings.tsv.
#[derive(Debug, Clone)]
pub struct TimingRow {
    pub bench: String,
    pub engine: String,
    pub median_ms: Option<f64>,
    pub gflops: Option<f64>,
    pub check: String,
    pub max_err: String,
    pub note: String,
}

/// A session's files, read.
#[derive(Debug)]
pub struct Session {
    /// `key: value` lines of env.txt (the first of each key).
    pub env: BTreeMap<String, String>,
    pub steps: Vec<Step>,
    /// `(case, None)` for a pass, `(case, Some(reason))` for a failure.
    pub conformance: Vec<(String, Option<String>)>,
    pub models: Vec<(String, Option<String>)>,
    pub timings: Vec<TimingRow>,
}

fn passing(results: &[(String, Option<String>)]) -> usize {
    results.iter().filter(|(_, r)| r.is_none()).count()
}

/// `case<TAB>pass` or `case<TAB>fail<TAB>reason` lines; a missing file (its step ran out
/// of time before writing it) is no lines.
fn read_results(path: &Path) -> Result<Vec<(String, Option<String>)>> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(Vec::new());
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.splitn(3, '\t').collect();
            match f[..] {
                [case, "pass"] => Ok((case.to_string(), None)),
                [case, "fail", reason] => Ok((case.to_string(), Some(reason.to_string()))),
                _ => bail!("{}: bad line '{l}'", path.display()),
            }
        })
        .collect()
}

impl Session {
    pub fn read(dir: &Path) -> Result<Session> {
        let missing: Vec<&str> = SESSION_FILES
            .iter()
            .copied()
            .filter(|f| !dir.join(f).is_file())
            .collect();
        let env_text = std::fs::read_to_string(dir.join("env.txt")).with_context(|| {
            format!(
                "{}/env.txt (the session's files: {SESSION_FILES:?}; missing: {missing:?})",
                dir.display()
            )
        })?;
        let mut env = BTreeMap::new();
        for line in env_text.lines() {
            if let Some((k, v)) = line.split_once(": ")
                && !k.starts_with(' ')
            {
                env.entry(k.to_string())
                    .or_insert_with(|| v.trim().to_string());
            }
        }
        let steps_text = std::fs::read_to_string(dir.join("steps.tsv"))
            .with_context(|| format!("{}/steps.tsv", dir.display()))?;
        let steps = steps_text
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                (f.len() == 4).then(|| Step {
                    name: f[0].into(),
                    status: f[1].into(),
                    seconds: f[2].into(),
                    limit: f[3].into(),
                })
            })
            .collect();
        let timings = match std::fs::read_to_string(dir.join("timings.tsv")) {
            Ok(text) => text
                .lines()
                .skip(1)
                .filter_map(|l| {
                    let f: Vec<&str> = l.split('\t').collect();
                    (f.len() == 8).then(|| TimingRow {
                        bench: f[0].into(),
                        engine: f[1].into(),
                        median_ms: f[2].parse().ok(),
                        gflops: f[4].parse().ok(),
                        check: f[5].into(),
                        max_err: f[6].into(),
                        note: f[7].into(),
                    })
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        Ok(Session {
            env,
            steps,
            conformance: read_results(&dir.join("conformance.tsv"))?,
            models: read_results(&dir.join("models.tsv"))?,
            timings,
        })
    }

    fn env(&self, key: &str) -> &str {
        self.env.get(key).map_or("(unknown)", String::as_str)
    }

    /// The GPU's name: the first field of env.txt's `gpu:` line.
    pub fn gpu_name(&self) -> String {
        self.env("gpu")
            .split(',')
            .next()
            .unwrap_or("")
            .trim()
            .to_string()
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.3}"))
}

/// The docs/gpu.md section of a session: environment, steps, conformance and model
/// counts (with what fails that passes on the emulator), and the timings beside PyTorch.
pub fn render(session: &Session, emulator: &BTreeMap<String, Status>) -> String {
    let mut md = String::new();
    let date = session
        .env("date")
        .split('T')
        .next()
        .unwrap_or("")
        .to_string();
    let _ = writeln!(
        md,
        "### {date}, {} (`{}`)\n",
        session.gpu_name(),
        session.env("runtime")
    );
    let _ = writeln!(
        md,
        "- GPU: {}\n- Host: {}\n- Python {}; torch {}; onnxruntime {}",
        session.env("gpu"),
        session.env("host"),
        session.env("python"),
        session.env("torch"),
        session.env("onnxruntime"),
    );
    let steps: Vec<String> = session
        .steps
        .iter()
        .map(|s| format!("{} {} ({} of {} s)", s.name, s.status, s.seconds, s.limit))
        .collect();
    let _ = writeln!(md, "- Steps: {}", steps.join(", "));
    let (suite, node): (Vec<_>, Vec<_>) = session
        .conformance
        .iter()
        .cloned()
        .partition(|(c, _)| c.contains('/'));
    let _ = writeln!(
        md,
        "- Conformance: {} of {} node cases and {} of {} suite models pass.",
        passing(&node),
        node.len(),
        passing(&suite),
        suite.len()
    );
    let _ = writeln!(
        md,
        "- Classic and light models against onnxruntime's outputs (rtol 1e-4, atol 1e-5): {} of {} pass.\n",
        passing(&session.models),
        session.models.len()
    );
    // What fails here but passes on the emulated device: the GPU's own faults.
    let regressions: Vec<&(String, Option<String>)> = session
        .conformance
        .iter()
        .filter(|(c, r)| r.is_some() && emulator.get(c) == Some(&Status::Pass))
        .collect();
    let failing_models: Vec<&(String, Option<String>)> =
        session.models.iter().filter(|(_, r)| r.is_some()).collect();
    if !regressions.is_empty() || !failing_models.is_empty() {
        let _ = writeln!(md, "Failing here, passing on the emulated device:\n");
        for (case, reason) in regressions.iter().chain(&failing_models).take(40) {
            let reason = reason.as_deref().unwrap_or("");
            let short: String = reason.chars().take(160).collect();
            let _ = writeln!(md, "- `{case}`: {short}");
        }
        if regressions.len() + failing_models.len() > 40 {
            let _ = writeln!(
                md,
                "- ... {} more (conformance.tsv)",
                regressions.len() + failing_models.len() - 40
            );
        }
        md.push('\n');
    }
    let mut benches: Vec<&str> = Vec::new();
    for t in &session.timings {
        if !benches.contains(&t.bench.as_str()) {
            benches.push(&t.bench);
        }
    }
    let _ = writeln!(
        md,
        "Device time per run (median, ms; CUDA events, copies in and out left out), each result checked; ratios are PyTorch's time over smelt's (above 1: smelt is faster):\n"
    );
    let _ = writeln!(
        md,
        "| benchmark | smelt | smelt GFLOP/s | PyTorch FP32 | PyTorch TF32 | FP32 / smelt | TF32 / smelt | checks (smelt, FP32, TF32) |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    for b in benches {
        let row = |engine: &str| {
            session
                .timings
                .iter()
                .find(|t| t.bench == b && t.engine == engine)
        };
        let (s, f, t) = (row("smelt"), row("torch-fp32"), row("torch-tf32"));
        let time = |r: Option<&TimingRow>| ms(r.and_then(|r| r.median_ms));
        let ratio = |r: Option<&TimingRow>| match (
            r.and_then(|r| r.median_ms),
            s.and_then(|s| s.median_ms),
        ) {
            (Some(x), Some(y)) if y > 0.0 => format!("{:.2}", x / y),
            _ => "-".into(),
        };
        let check = |r: Option<&TimingRow>| match r {
            Some(r) if r.check == "error" => "error".to_string(),
            Some(r) if r.max_err.is_empty() => r.check.clone(),
            Some(r) => format!("{} ({})", r.check, r.max_err),
            None => "-".into(),
        };
        let _ = writeln!(
            md,
            "| {b} | {} | {} | {} | {} | {} | {} | {}, {}, {} |",
            time(s),
            s.and_then(|s| s.gflops)
                .map_or("-".into(), |g| format!("{g:.0}")),
            time(f),
            time(t),
            ratio(f),
            ratio(t),
            check(s),
            check(f),
            check(t)
        );
    }
    let errors: Vec<&TimingRow> = session
        .timings
        .iter()
        .filter(|t| t.check == "error" || t.check == "skipped")
        .collect();
    if !errors.is_empty() {
        let mut notes: Vec<String> = Vec::new();
        for t in errors {
            let note = format!("{}: {}", t.engine, t.note);
            if !notes.contains(&note) {
                notes.push(note);
            }
        }
        let _ = writeln!(md, "\nNot measured: {}.", notes.join("; "));
    }
    md
}

/// The expectations file of the `cuda` runtime from a session's conformance results.
pub fn cuda_expectations(session: &Session) -> String {
    let mut text = format!(
        "# Expected status of each ONNX node case and suite model on the 'cuda' runtime.\n# Written by `cargo xtask gpu-results` from the GPU session of {} on {}.\n",
        session.env("date"),
        session.gpu_name()
    );
    let mut cases = session.conformance.clone();
    cases.sort();
    for (case, reason) in cases {
        match reason {
            None => text.push_str(&format!("{case}\tpass\n")),
            Some(r) => text.push_str(&format!("{case}\tfail\t{}\n", conformance::one_line(&r))),
        }
    }
    text
}

/// The expected status of each case on the emulated device.
fn emulator_expectations() -> Result<BTreeMap<String, Status>> {
    conformance::load_expectations(&conformance::expectations_path(Runtime::GpuEmulator))
        .map_err(anyhow::Error::msg)
}

/// Where docs/gpu.md's results begin.
pub const RESULTS_MARKER: &str = "<!-- gpu session results -->";

/// `cargo xtask gpu-results DIR`: a GPU session's files into docs/gpu.md (newest first,
/// under the results marker) and tests/conformance/cuda.tsv.
pub fn results(root: &Path, args: &[String]) -> Result<()> {
    let Some(dir) = args.first() else {
        bail!("usage: cargo xtask gpu-results DIR (the folder a GPU session wrote)");
    };
    let session = Session::read(Path::new(dir))?;
    if session.env("runtime") != "cuda" {
        bail!(
            "{dir} holds results of the '{}' runtime (a dry run?); gpu-results records a GPU's",
            session.env("runtime")
        );
    }
    let emulator = emulator_expectations()?;
    let section = render(&session, &emulator);
    let doc_path = root.join("docs/gpu.md");
    let doc = std::fs::read_to_string(&doc_path)?;
    let (head, rest) = doc
        .split_once(RESULTS_MARKER)
        .with_context(|| format!("docs/gpu.md lacks the marker {RESULTS_MARKER}"))?;
    std::fs::write(
        &doc_path,
        format!("{head}{RESULTS_MARKER}\n\n{section}{rest}"),
    )?;
    println!("wrote {}", doc_path.display());
    if !session.conformance.is_empty() {
        let path = root.join("tests/conformance/cuda.tsv");
        std::fs::write(&path, cuda_expectations(&session))?;
        println!(
            "wrote {} ({} of {} cases pass)",
            path.display(),
            passing(&session.conformance),
            session.conformance.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> PathBuf {
        crate::root()
    }

    #[test]
    fn only_the_c_runtime_may_stay_dynamic() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x1)\n\tlibstdc++.so.6 => /lib/x86_64-linux-gnu/libstdc++.so.6 (0x2)\n\tlibzstd.so.1 => /lib/x86_64-linux-gnu/libzstd.so.1 (0x3)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x4)\n\t/lib64/ld-linux-x86-64.so.2 (0x5)\n";
        assert_eq!(foreign_libraries(ldd), ["libstdc++.so.6", "libzstd.so.1"]);
    }

    #[test]
    fn an_oversized_bundle_is_refused_with_its_files() {
        let dir = std::env::temp_dir().join(format!("smelt-bundle-size-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("big"), vec![0u8; 3000]).unwrap();
        std::fs::write(dir.join("small"), vec![0u8; 100]).unwrap();
        assert_eq!(check_size(&dir, 4000).unwrap(), 3100);
        let e = check_size(&dir, 2048).unwrap_err().to_string();
        assert!(e.contains("big 0.0 MiB") && e.contains("small"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The bundle `cargo xtask gpu-bundle` made (the test task makes it first): within its
    /// size, its program loading nothing but the C runtime, every file in its manifest.
    #[test]
    fn the_bundle_is_within_its_limits() {
        let dir = root().join(BUNDLE_DIR);
        assert!(
            dir.join("MANIFEST.tsv").is_file(),
            "{} is missing: run `cargo xtask gpu-bundle` (the README's test command does)",
            dir.display()
        );
        let total = check_size(&dir, BUNDLE_LIMIT).unwrap();
        assert!(
            total > 10 << 20,
            "a bundle of {total} bytes lacks something"
        );
        let manifest = std::fs::read_to_string(dir.join("MANIFEST.tsv")).unwrap();
        let listed: Vec<&str> = manifest
            .lines()
            .filter_map(|l| l.split('\t').next())
            .collect();
        for f in [
            "smelt-gpu-check.xz",
            "data.tar.xz",
            "libdevice.10.bc",
            "timing.py",
            "gen_models.py",
        ] {
            assert!(listed.contains(&f), "{f} is not in the bundle: {listed:?}");
        }
        // Unpack the program and ask ldd what it loads.
        let python = smelt_tests::venv_python();
        let program = std::env::temp_dir().join(format!("smelt-gpu-check-{}", std::process::id()));
        let status = Command::new(&python)
            .arg("-c")
            .arg("import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))")
            .arg(dir.join("smelt-gpu-check.xz"))
            .arg(&program)
            .status()
            .unwrap();
        assert!(status.success());
        let ldd = Command::new("ldd").arg(&program).output().unwrap();
        let listed = String::from_utf8_lossy(&ldd.stdout);
        assert!(listed.contains("libc.so.6"), "{listed}");
        assert_eq!(foreign_libraries(&listed), Vec::<String>::new(), "{listed}");
        std::fs::remove_file(&program).unwrap();
    }

    /// The dry run's files (the test task runs it before the tests) turn into the docs'
    /// tables and an expectations file.
    #[test]
    fn gpu_results_render_the_dry_run() {
        let dir = root().join(DRY_RUN_DIR);
        let session = Session::read(&dir).unwrap_or_else(|e| {
            panic!(
                "{e:#}: run the dry run (`cargo xtask test` does, after `cargo xtask gpu-bundle`)"
            )
        });
        for f in SESSION_FILES {
            assert!(dir.join(f).is_file(), "the dry run did not write {f}");
        }
        assert!(
            session.conformance.len() > 150,
            "{}",
            session.conformance.len()
        );
        assert!(session.models.len() >= 17, "{:?}", session.models);
        let emulator = emulator_expectations().unwrap();
        let md = render(&session, &emulator);
        assert!(md.contains("(`gpu-emulator`)"), "{md}");
        let node = session.conformance.iter().filter(|(c, _)| !c.contains('/'));
        let node_pass = node.clone().filter(|(_, r)| r.is_none()).count();
        assert!(
            md.contains(&format!("{node_pass} of {} node cases", node.count())),
            "{md}"
        );
        // One table row per benchmark, smelt's time filled in, PyTorch's absent here.
        for bench in [
            "matmul_64",
            "softmax_64x256",
            "layernorm_64x256",
            "conv3x3_8_14_b2",
            "light_resnet50_b1",
            "bert_encoder_quick",
        ] {
            let row = md
                .lines()
                .find(|l| l.starts_with(&format!("| {bench} |")))
                .unwrap_or_else(|| panic!("no row for {bench}:\n{md}"));
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            assert!(cells[2].parse::<f64>().is_ok(), "{row}");
            assert_eq!(cells[4], "-", "{row}");
            assert!(cells[8].starts_with("pass"), "{row}");
        }
        assert!(
            md.contains("Not measured: torch-fp32: RuntimeError: torch is not installed here"),
            "{md}"
        );
        let tsv = cuda_expectations(&session);
        let lines: Vec<&str> = tsv.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(lines.len(), session.conformance.len());
        assert!(
            lines
                .iter()
                .all(|l| l.ends_with("\tpass") || l.contains("\tfail\t"))
        );
    }
}
