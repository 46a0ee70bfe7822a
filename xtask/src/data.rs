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

/// Creates (or reuses) the venv and returns its python.
pub fn venv(root: &Path) -> Result<PathBuf> {
    let dir = root.join("target/smelt-venv");
    let python = dir.join("bin/python");
    let requirements = root.join("xtask/py/requirements.txt");
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
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(&requirements))?;
    std::fs::write(&stamp, wanted)?;
    Ok(python)
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
