//! The hostile-model corpus (`smelt_tests::hostile`) through `smelt run` and `smelt
//! compile`: each case ends with exit status 2 and exactly the one-line error that
//! `tests/hostile/expected.tsv` gives, and no file outside the model's directory is read
//! (their access times stay in the past). `SMELT_UPDATE_EXPECTATIONS=1` rewrites the file.

use smelt_tests::hostile::{corpus, write_case};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

/// An access time long past: reading the file moves it to now (relatime updates an
/// access time older than the modification time).
const PAST: Duration = Duration::from_secs(946_684_800);

fn age(path: &Path) {
    let file = std::fs::File::options().write(true).open(path).unwrap();
    let times = std::fs::FileTimes::new()
        .set_accessed(SystemTime::UNIX_EPOCH + PAST)
        .set_modified(SystemTime::now());
    file.set_times(times).unwrap();
}

fn was_read(path: &Path) -> bool {
    std::fs::metadata(path).unwrap().accessed().unwrap() != SystemTime::UNIX_EPOCH + PAST
}

/// What `smelt` printed on stderr (one line expected) and its exit status.
fn smelt(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_smelt"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn hostile_models_get_their_exact_errors_and_read_nothing_outside() {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("hostile");
    std::fs::create_dir_all(&root).unwrap();
    // The read check can fail: a read does move an aged access time.
    let probe = root.join("probe");
    std::fs::write(&probe, b"probe").unwrap();
    age(&probe);
    assert!(!was_read(&probe));
    std::fs::read(&probe).unwrap();
    assert!(
        was_read(&probe),
        "this file system does not record reads (noatime?)"
    );

    let expected_path = smelt_tests::workspace_root().join("tests/hostile/expected.tsv");
    let update = std::env::var_os("SMELT_UPDATE_EXPECTATIONS").is_some();
    let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
    let mut lines = vec![
        "# The hostile-model corpus (tests/src/hostile.rs): the exact error of each case from"
            .to_string(),
        "# `smelt run` and `smelt compile`, both with exit status 2.".to_string(),
    ];
    let mut failures = Vec::new();
    for case in corpus() {
        let model = write_case(&root, &case).unwrap();
        let outside = root.join(case.name).join("outside");
        let secrets: Vec<_> = std::fs::read_dir(&outside)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        secrets.iter().for_each(|p| age(p));
        let exe = root.join(case.name).join("exe");
        let model_arg = model.to_str().unwrap();
        let mut run_args = vec!["run".to_string(), model_arg.to_string()];
        for (name, tensor) in case.inputs() {
            let file = root.join(case.name).join(format!("{name}.npy"));
            smelt_runtime::write_npy(&file, &tensor).unwrap();
            run_args.extend(["--input".into(), format!("{name}={}", file.display())]);
        }
        let run = smelt(&run_args.iter().map(String::as_str).collect::<Vec<_>>());
        let compile = smelt(&["compile", model_arg, "-o", exe.to_str().unwrap()]);
        for (what, (status, stderr)) in [("run", &run), ("compile", &compile)] {
            // Paths under the corpus's directory are written relative to it, so the
            // expectations hold wherever the tests run.
            let error = stderr
                .strip_prefix("smelt: error: ")
                .unwrap_or(stderr)
                .trim_end()
                .replace(&format!("{}/", root.display()), "<corpus>/");
            if *status != Some(2) || stderr.lines().count() != 1 {
                failures.push(format!(
                    "{}: smelt {what} exited with {status:?}: {stderr}",
                    case.name
                ));
            }
            let line = format!("{}\t{what}\t{error}", case.name);
            if !update && !expected.lines().any(|l| l == line) {
                failures.push(format!(
                    "{}: smelt {what} said '{error}', not what expected.tsv has",
                    case.name
                ));
            }
            lines.push(line);
        }
        for secret in &secrets {
            if was_read(secret) {
                failures.push(format!(
                    "{}: {} outside the model's directory was read",
                    case.name,
                    secret.display()
                ));
            }
        }
    }
    if update {
        std::fs::write(&expected_path, lines.join("\n") + "\n").unwrap();
    } else {
        let stale: Vec<&str> = expected
            .lines()
            .filter(|l| !l.starts_with('#') && !lines.iter().any(|x| x == l))
            .collect();
        assert!(
            stale.is_empty(),
            "expected.tsv lines no case produced: {stale:?}"
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn values_over_a_lowered_memory_limit_are_errors() {
    use smelt_tests::builder::{f32_info, f32_tensor, model, node};
    // `y = x + w` with `x: f32[1, 4]` (16 bytes) and an initializer `w: f32[64, 4]` (1 KiB).
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("hostile-limit");
    std::fs::create_dir_all(&dir).unwrap();
    let onnx = dir.join("model.onnx");
    std::fs::write(
        &onnx,
        model(
            vec![node("Add", "add", &["x", "w"], &["y"])],
            vec![f32_info("x", &[1, 4])],
            vec![f32_info("y", &[64, 4])],
            vec![f32_tensor("w", &[64, 4], &[0.5; 256])],
        ),
    )
    .unwrap();
    let x = dir.join("x.npy");
    smelt_runtime::write_npy(
        &x,
        &smelt_runtime::HostTensor::zeros(smelt_runtime::ElemType::F32, vec![1, 4]),
    )
    .unwrap();
    let run = |limit: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_smelt"))
            .env("SMELT_MEMORY_LIMIT", limit)
            .args(["run", onnx.to_str().unwrap(), "--input"])
            .arg(format!("x={}", x.display()))
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim_end().to_string(),
        )
    };
    // An initializer over the limit was a panic where the importer made it a constant.
    assert_eq!(
        run("512"),
        (
            Some(2),
            "smelt: error: tensor 'w': f32[64, 4] would take 1024 bytes, over the memory limit of 512 bytes (SMELT_MEMORY_LIMIT)".to_string()
        )
    );
    // A declared input is held to the limit before anything is computed from its dims.
    assert_eq!(
        run("8"),
        (
            Some(2),
            "smelt: error: input 'x': f32[1, 4] would take 16 bytes, over the memory limit of 8 bytes (SMELT_MEMORY_LIMIT)".to_string()
        )
    );
}
