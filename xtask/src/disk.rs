//! Disk space around the test run: a warning before it starts when the build will not fit,
//! and the space the run took when it ends, so a full disk is named instead of surfacing
//! as a linker's bus error.

use std::path::Path;
use std::process::Command;

/// What a test run from a fresh clone writes under `target/` (and `fuzz/target/`, which
/// only `cargo xtask fuzz` fills), rounded up from the 7.4 GiB that `.ci/run` measured on
/// a fresh clone (README), the GPU bundle's release build included.
pub const SUITE_NEEDS_GIB: f64 = 8.0;

const GIB: f64 = (1u64 << 30) as f64;

/// Free bytes on the file system holding `dir` (its nearest existing ancestor), from `df`.
fn free_bytes(dir: &Path) -> Option<u64> {
    let existing = dir.ancestors().find(|d| d.exists())?;
    let out = Command::new("df").arg("-Pk").arg(existing).output().ok()?;
    if !out.status.success() {
        return None;
    }
    // POSIX format: a header line, then `fs blocks used available capacity mount`.
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<&str> = text.lines().nth(1)?.split_whitespace().collect();
    fields.get(3)?.parse::<u64>().ok().map(|kib| kib * 1024)
}

/// Bytes under `dir`, not following symbolic links (0 when it does not exist).
fn used_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(t) if t.is_dir() => used_bytes(&entry.path()),
            Ok(t) if t.is_file() => entry.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// Bytes the build directories hold: `target/` and the fuzz workspace's `fuzz/target/`.
fn build_bytes(root: &Path) -> u64 {
    used_bytes(&root.join("target")) + used_bytes(&root.join("fuzz/target"))
}

/// Prints the free space under the build directories, with a warning when it is less
/// than the suite needs beyond what is already built there.
pub fn report_before(root: &Path) {
    let target = root.join("target");
    let Some(free) = free_bytes(&target) else {
        println!(
            "disk: could not read the free space at {}",
            target.display()
        );
        return;
    };
    let built = build_bytes(root) as f64;
    let missing = (SUITE_NEEDS_GIB * GIB - built).max(0.0);
    println!(
        "disk: {:.1} GiB free at {}; the suite writes about {SUITE_NEEDS_GIB} GiB in all, {:.1} GiB of it already there",
        free as f64 / GIB,
        target.display(),
        built / GIB
    );
    if (free as f64) < missing {
        println!(
            "warning: about {:.1} GiB more is needed than is free; the build may fail with `No space left on device`",
            (missing - free as f64) / GIB
        );
    }
}

/// Prints what the build directories hold after the run and what is still free.
pub fn report_after(root: &Path) {
    let target = root.join("target");
    let built = build_bytes(root);
    let free = free_bytes(&target).map_or("unknown".to_string(), |f| {
        format!("{:.1} GiB", f as f64 / GIB)
    });
    println!(
        "disk: target/ and fuzz/target/ hold {:.1} GiB; {free} free",
        built as f64 / GIB
    );
}
