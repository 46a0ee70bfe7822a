//! The rank and arity sweep (`smelt_tests::sweep`): every op type the importer accepts, in
//! every schema version from opset 6 to 28, as one-node models with inputs of rank 0 to 5,
//! every allowed element type and one more, optional inputs absent, empty and present, an
//! input too many and too few, and attributes missing, mistyped and out of range. Each
//! model is imported, optimized, compiled and run once on zeros in a worker process; an
//! error or a success is fine, a panic, an abort or a hang fails the test.

use smelt_tests::isolate::{Isolation, Outcome, run_isolated};
use smelt_tests::sweep::{all_cases, load_schemas, only_ops, schemas_path};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const WORKER: &str = env!("CARGO_BIN_EXE_op_sweep_worker");

fn isolation(args: Vec<String>, hang_limit: Duration) -> Isolation {
    Isolation {
        worker: WORKER.into(),
        args,
        jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
        block: 400,
        hang_limit,
    }
}

#[test]
fn the_isolation_pins_panics_aborts_and_hangs_on_their_case() {
    let outcomes = run_isolated(
        &isolation(vec!["self-test".into()], Duration::from_secs(2)),
        10,
    );
    let kinds: Vec<&str> = outcomes
        .iter()
        .map(|o| match o {
            Outcome::Finished(w) if w == "Compiled" => "compiled",
            Outcome::Finished(_) => "error",
            Outcome::Panicked(m) if m.contains("self-test panic at case") => "panic",
            Outcome::Panicked(_) => "panic without its message",
            Outcome::Crashed(m) if m.contains("SIGABRT") => "abort",
            Outcome::Crashed(_) => "crash without its signal",
            Outcome::Hung => "hang",
        })
        .collect();
    assert_eq!(
        kinds,
        ["compiled", "panic", "abort", "hang", "error"].repeat(2)
    );
}

#[test]
fn every_op_handler_survives_the_rank_and_arity_sweep() {
    let path = schemas_path();
    let schemas = load_schemas(&path).unwrap();
    let swept: BTreeSet<&str> = schemas.iter().map(|s| s.op_type.as_str()).collect();
    let unswept: Vec<&str> = smelt_onnx::ops::supported_ops()
        .into_iter()
        .filter(|op| !swept.contains(op))
        .collect();
    assert!(
        unswept.is_empty() || only_ops().is_some(),
        "op types the importer accepts without a schema in {}: {unswept:?}",
        path.display()
    );
    let cases = all_cases(&schemas);
    let names: BTreeSet<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names.len(), cases.len(), "sweep case names must be unique");

    let started = std::time::Instant::now();
    let outcomes = run_isolated(
        &isolation(vec![path.display().to_string()], Duration::from_secs(120)),
        cases.len(),
    );
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    let mut faults = Vec::new();
    for (case, outcome) in cases.iter().zip(&outcomes) {
        let key = match outcome {
            Outcome::Finished(word) => word.clone(),
            Outcome::Panicked(_) => "Panicked".into(),
            Outcome::Crashed(_) => "Crashed".into(),
            Outcome::Hung => "Hung".into(),
        };
        *tally.entry(key).or_default() += 1;
        if outcome.is_fault() {
            faults.push(format!("{}: {outcome:?}", case.name));
        }
    }
    let summary = format!(
        "op sweep: {} models from {} schema versions of {} op types in {:.0} s: {tally:?}",
        cases.len(),
        schemas.len(),
        swept.len(),
        started.elapsed().as_secs_f64()
    );
    println!("{summary}");
    // `cargo xtask test` prints it after the tests, whose own output is captured.
    std::fs::write(
        smelt_tests::workspace_root().join("target/op-sweep-summary.txt"),
        format!("{summary}\n"),
    )
    .unwrap();
    assert!(
        faults.is_empty(),
        "{} sweep models panicked, crashed or hung:\n{}",
        faults.len(),
        faults.join("\n")
    );
}
