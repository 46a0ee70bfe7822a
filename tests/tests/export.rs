//! The ONNX exporter over the conformance cases: every case the reference runtime passes
//! is imported, exported and checked twice: imported again by smelt and run on the
//! reference interpreter, and run on onnxruntime (after onnx's full checker), both against
//! the case's expected outputs. Cases that cannot pass are listed, with the reason, in
//! `tests/conformance/export.tsv`.

use smelt_tests::conformance::{
    Runtime, Status, expectations_path, export_round_trip, load_expectations, load_manifest,
};
use smelt_tests::{venv_python, workspace_root};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

#[test]
fn passing_conformance_cases_survive_an_export_round_trip_and_run_on_onnxruntime() {
    let data_dir = smelt_tests::require_data("");
    let expected = load_expectations(&expectations_path(Runtime::Reference)).expect("expectations");
    let mut cases = load_manifest(&data_dir.join("node")).expect("manifest");
    cases.extend(load_manifest(&data_dir.join("suites")).expect("manifest"));
    cases.retain(|c| expected.get(&c.name) == Some(&Status::Pass));
    let out_dir = workspace_root().join("target/tmp/export-conformance");
    let _ = std::fs::remove_dir_all(&out_dir);

    let next = AtomicUsize::new(0);
    let failures = Mutex::new(BTreeMap::new());
    std::thread::scope(|s| {
        for _ in 0..std::thread::available_parallelism().map_or(1, |n| n.get()) {
            s.spawn(|| {
                while let Some(case) = cases.get(next.fetch_add(1, Ordering::Relaxed)) {
                    if let Err(e) = export_round_trip(case, Some(&out_dir.join(&case.name))) {
                        failures
                            .lock()
                            .unwrap()
                            .insert(case.name.clone(), format!("smelt: {e}"));
                    }
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap();

    let script = workspace_root().join("tests/py/ort_conformance.py");
    let out = std::process::Command::new(venv_python())
        .arg(&script)
        .arg(&out_dir)
        .arg(&data_dir)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "ort_conformance.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let (name, reason) = line.split_once('\t').unwrap_or((line, ""));
        failures
            .entry(name.to_string())
            .or_insert_with(|| format!("onnxruntime: {reason}"));
    }

    let listed_path = workspace_root().join("tests/conformance/export.tsv");
    let listed = load_expectations(&listed_path).expect("export.tsv");
    let unexpected: Vec<String> = failures
        .iter()
        .filter(|(name, _)| !matches!(listed.get(*name), Some(Status::Fail(_))))
        .map(|(name, reason)| format!("{name}\t{reason}"))
        .collect();
    let stale: Vec<&String> = listed
        .keys()
        .filter(|name| !failures.contains_key(*name))
        .collect();
    assert!(
        unexpected.is_empty() && stale.is_empty(),
        "of {} exported cases, {} fail: {} not listed in {}:\n{}\nlisted but passing: {stale:?}",
        cases.len(),
        failures.len(),
        unexpected.len(),
        listed_path.display(),
        unexpected.join("\n")
    );
}
