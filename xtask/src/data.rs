//! `cargo xtask onnx-data`: the Python venv with pinned onnx/onnxruntime/numpy, and the
//! generated test data cached under `target/onnx-data` (regenerated only when its inputs change).

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

fn run(cmd: &mut Command) -> Result<()> {
    println!("$ {cmd:?}");
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn python_has_venv() -> bool {
    Command::new("python3")
        .args(["-c", "import venv, ensurepip"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Installs a requirements file into the venv of `python`.
fn pip_install(python: &Path, requirements: &Path) -> Result<()> {
    run(Command::new(python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(requirements))
}

/// Creates (or reuses) the test venv and returns its python.
pub fn venv(root: &Path) -> Result<PathBuf> {
    venv_from(root, "target/smelt-venv", "xtask/py/requirements.txt")
}

/// Creates (or reuses) the bench-only export venv (pinned torch, torchvision and
/// transformers: several GB, so never the test venv) and returns its python.
pub fn export_venv(root: &Path) -> Result<PathBuf> {
    venv_from(
        root,
        "target/bench-venv",
        "bench/py/requirements-export.txt",
    )
}

/// The venv in `dir` with the packages of `requirements` (both relative to `root`),
/// reinstalled when the requirements change.
fn venv_from(root: &Path, dir: &str, requirements: &str) -> Result<PathBuf> {
    let dir = root.join(dir);
    let python = dir.join("bin/python");
    let requirements = root.join(requirements);
    let wanted = std::fs::read_to_string(&requirements)?;
    let stamp = dir.join("smelt-requirements.txt");
    if python.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(python);
    }
    if !python_has_venv() {
        // A bare Debian machine: install Python's venv support (CI runs as root).
        run(Command::new("apt-get").arg("update"))?;
        run(Command::new("apt-get").args([
            "install",
            "-y",
            "python3",
            "python3-venv",
            "python3-pip",
        ]))?;
    }
    if !python.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&dir))?;
    }
    pip_install(&python, &requirements)?;
    std::fs::write(&stamp, wanted)?;
    Ok(python)
}

/// Debian packages the `cuda` feature builds against: LLVM 19 and what its static
/// libraries link with.
const LLVM_PACKAGES: [&str; 3] = ["llvm-19-dev", "libpolly-19-dev", "libzstd-dev"];

fn package_installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", name])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Installs LLVM 19 for the GPU back end (CI runs as root on Debian); checks that
/// `llvm-config` is where `.cargo/config.toml` says.
pub fn ensure_llvm() -> Result<()> {
    let missing: Vec<&str> = LLVM_PACKAGES
        .iter()
        .copied()
        .filter(|p| !package_installed(p))
        .collect();
    if !missing.is_empty() {
        println!("installing {}", missing.join(" "));
        run(Command::new("apt-get").arg("update"))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing))?;
    }
    let config = Path::new("/usr/lib/llvm-19/bin/llvm-config");
    if !config.exists() {
        bail!(
            "{} is missing after installing {}; the cuda feature needs LLVM 19 there",
            config.display(),
            LLVM_PACKAGES.join(" ")
        );
    }
    Ok(())
}

/// Installs the GPU tools' wheel (ptxas, libdevice) into the venv; returns `ptxas`.
pub fn ensure_gpu_tools(root: &Path, python: &Path) -> Result<PathBuf> {
    let requirements = root.join("xtask/py/gpu-requirements.txt");
    let wanted = std::fs::read_to_string(&requirements)?;
    let venv = root.join("target/smelt-venv");
    let stamp = venv.join("smelt-gpu-requirements.txt");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        pip_install(python, &requirements)?;
        std::fs::write(&stamp, &wanted)?;
    }
    ptxas_in(&venv).with_context(|| {
        format!(
            "ptxas not found in {} after installing {}",
            venv.display(),
            requirements.display()
        )
    })
}

/// `nvidia/cuda_nvcc/bin/ptxas` of the venv's site-packages.
pub fn ptxas_in(venv: &Path) -> Option<PathBuf> {
    std::fs::read_dir(venv.join("lib"))
        .ok()?
        .flatten()
        .map(|d| d.path().join("site-packages/nvidia/cuda_nvcc/bin/ptxas"))
        .find(|p| p.is_file())
}

/// Makes sure the venv and the generated data exist and are current.
pub fn ensure(root: &Path) -> Result<()> {
    let python = venv(root)?;
    let script = root.join("xtask/py/gen_data.py");
    let out = root.join("target/onnx-data");
    let stamp_path = out.join(".stamp");
    let stamp = format!(
        "{}\n{}",
        std::fs::read_to_string(&script)?,
        std::fs::read_to_string(root.join("xtask/py/requirements.txt"))?
    );
    if std::fs::read_to_string(&stamp_path).ok().as_deref() == Some(stamp.as_str()) {
        println!("test data in {} is current", out.display());
        return Ok(());
    }
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    run(Command::new(&python).arg(&script).arg(&out))?;
    std::fs::write(&stamp_path, stamp)?;
    Ok(())
}
