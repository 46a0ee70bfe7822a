//! The rank and arity sweep's worker process (`smelt_tests::sweep`): runs sweep cases
//! FIRST..END and prints one report line per case as it finishes, so that the parent can
//! pin a crash or a hang on the case that caused it.
//!
//! `op_sweep_worker SCHEMAS.tsv FIRST END` runs the sweep's models;
//! `op_sweep_worker self-test FIRST END` runs stand-in cases that compile, panic, abort,
//! hang and fail in turn, to show that the parent catches each.

use smelt_tests::fuzz::{Reached, compile_and_run};
use smelt_tests::isolate::{outcome_of, record_panics, report};
use smelt_tests::sweep::{all_cases, load_schemas};

fn self_test_case(index: usize) -> Reached {
    match index % 5 {
        0 => Reached::Compiled,
        1 => panic!("self-test panic at case {index}"),
        2 => std::process::abort(),
        3 => loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        },
        _ => Reached::ImportError,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [source, first, end] = &args[..] else {
        eprintln!("usage: op_sweep_worker SCHEMAS.tsv|self-test FIRST END");
        std::process::exit(2);
    };
    let (Ok(first), Ok(end)) = (first.parse::<usize>(), end.parse::<usize>()) else {
        eprintln!("FIRST and END must be case indices");
        std::process::exit(2);
    };
    record_panics();
    if source == "self-test" {
        for index in first..end {
            report(
                index,
                &outcome_of(|| format!("{:?}", self_test_case(index))),
            );
        }
        return;
    }
    let schemas = load_schemas(std::path::Path::new(source)).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2);
    });
    let cases = all_cases(&schemas);
    for (index, case) in cases.iter().enumerate().take(end).skip(first) {
        report(
            index,
            &outcome_of(|| format!("{:?}", compile_and_run(&case.model))),
        );
    }
}
