//! Trace-time errors: shape and dtype mistakes are reported when `trace` returns, naming the
//! caller's file, line and column, the op, and the operands' types.

use ndarray::{Array1, Array2};
use smelt_trace::{DType, TraceError, sym, trace};
use std::cell::Cell;

/// The `file:line:` prefix of an error made on `line` of this file.
fn at(line: u32) -> String {
    format!("{}:{line}:", file!())
}

#[test]
fn a_matmul_shape_error_names_the_callers_line_and_both_shapes() {
    let line = Cell::new(0);
    let err = trace("bad_matmul", |t| {
        let x = t.input("x", DType::F32, [2, 784]);
        let w = t.param("w", &Array2::<f32>::zeros((100, 64)));
        line.set(line!() + 1);
        let y = x.matmul(w);
        t.output("y", y);
    })
    .unwrap_err();
    let message = err.to_string();
    assert!(message.starts_with(&at(line.get())), "{message}");
    assert!(message.contains("matmul"), "{message}");
    assert!(
        message.contains("f32[2, 784]") && message.contains("f32[100, 64]"),
        "{message}"
    );
    match err {
        TraceError::Op {
            file, line: l, op, ..
        } => {
            assert_eq!(
                (file.as_str(), l, op.as_str()),
                (file!(), line.get(), "matmul")
            );
        }
        other => panic!("expected an op error, got {other:?}"),
    }
}

#[test]
fn an_operator_broadcast_error_points_at_the_operator() {
    let line = Cell::new(0);
    let err = trace("bad_add", |t| {
        let a = t.input("a", DType::F32, [sym("N"), 3.into()]);
        let b = t.input("b", DType::F32, [4]);
        line.set(line!() + 1);
        let c = a + b;
        t.output("c", c.relu());
    })
    .unwrap_err()
    .to_string();
    assert!(err.starts_with(&at(line.get())), "{err}");
    assert!(
        err.contains("add") && err.contains("f32[N, 3]") && err.contains("f32[4]"),
        "{err}"
    );
}

#[test]
fn a_dtype_error_names_both_types() {
    let err = trace("bad_dtype", |t| {
        let a = t.input("a", DType::F32, [3]);
        let i = t.input("i", DType::I64, [3]);
        t.output("y", a * i);
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("f32[3]") && err.contains("i64[3]"), "{err}");
}

#[test]
fn the_first_error_wins_and_later_calls_record_nothing() {
    let first = Cell::new(0);
    let err = trace("two_errors", |t| {
        let x = t.input("x", DType::F32, [2, 3]);
        first.set(line!() + 1);
        let bad = x.softmax(5);
        // Every later call sees a failed operand or trace and records nothing more.
        let worse = bad.matmul(x).reshape(&[7, 7]);
        let _ = x.reshape(&[4, 4]);
        t.output("y", worse);
    })
    .unwrap_err()
    .to_string();
    assert!(err.starts_with(&at(first.get())), "{err}");
    assert!(err.contains("axis 5 is out of range for rank 2"), "{err}");
}

/// A traced function under test.
type TracedFn = dyn Fn(&smelt_trace::Tracer);

#[test]
fn argument_errors_are_reported_at_the_call() {
    let cases: Vec<(&str, Box<TracedFn>, &str)> = vec![
        (
            "reshape",
            Box::new(|t| {
                let x = t.input("x", DType::F32, [2, 3]);
                t.output("y", x.reshape(&[4, -1]));
            }),
            "cannot reshape [2, 3] to [4, -1]",
        ),
        (
            "reshape of a symbolic shape",
            Box::new(|t| {
                let x = t.input("x", DType::F32, [sym("N"), 3.into()]);
                t.output("y", x.reshape(&[-1]));
            }),
            "-1 needs a fixed input shape",
        ),
        (
            "huge reshape",
            Box::new(|t| {
                let x = t.input("x", DType::F32, [2, 3]);
                t.output("y", x.reshape(&[i64::MAX, 4, -1]));
            }),
            "more elements than memory can address",
        ),
        (
            "squeeze",
            Box::new(|t| {
                let x = t.input("x", DType::F32, [2, 3]);
                t.output("y", x.squeeze(0));
            }),
            "axis 0 has size 2, not 1",
        ),
        (
            "max_pool2d",
            Box::new(|t| {
                let x = t.input("x", DType::F32, [2, 3]);
                t.output("y", x.max_pool2d(2, 2, 0));
            }),
            "expects an input of shape [N, C, H, W]",
        ),
        (
            "weight",
            Box::new(|t| {
                let x = t.input("x", DType::F32, [2, 3]);
                t.output("y", x * t.weight(&Default::default(), "missing"));
            }),
            "no weight named 'missing'",
        ),
        (
            "duplicate input",
            Box::new(|t| {
                let x = t.input("x", DType::F32, [2]);
                let y = t.input("x", DType::F32, [2]);
                t.output("y", x + y);
            }),
            "the name 'x' is already used",
        ),
        (
            "output of an input",
            Box::new(|t| {
                let x = t.input("x", DType::F32, [2]);
                t.output("y", x);
            }),
            "already a graph input or output",
        ),
        (
            "concat of nothing",
            Box::new(|t| {
                let x = t.input("x", DType::F32, [2]);
                t.output("y", t.concat(&[], 0) + x);
            }),
            "needs at least one tensor",
        ),
        (
            "conv",
            Box::new(|t| {
                let x = t.input("x", DType::F32, [1, 3, 8, 8]);
                let w = t.param("w", &ndarray::Array4::<f32>::zeros((4, 2, 3, 3)));
                t.output("y", x.conv2d(w, None, 1, 0));
            }),
            "f32[1, 3, 8, 8]",
        ),
        (
            "layer_norm",
            Box::new(|t| {
                let x = t.input("x", DType::F32, [4]);
                let g = t.param("g", &Array2::<f32>::ones((2, 4)));
                t.output("y", x.layer_norm(g, None, 1e-5));
            }),
            "the scale has rank 2, above the input's 1",
        ),
    ];
    for (what, f, expected) in cases {
        let err = trace(what, |t| f(t)).unwrap_err().to_string();
        assert!(err.starts_with(file!()), "{what}: {err}");
        assert!(
            err.contains(expected),
            "{what}: expected '{expected}' in: {err}"
        );
    }
}

#[test]
fn a_trace_without_outputs_is_an_error() {
    let err = trace("empty", |t| {
        let _ = t.input("x", DType::F32, [2]);
    })
    .unwrap_err();
    assert_eq!(err, TraceError::NoOutputs("empty".into()));
}

#[test]
fn a_good_trace_records_typed_values_and_source_locations() {
    let b = Array1::<f32>::from_elem(3, 1.0);
    let traced = trace("good", |t| {
        let x = t.input("x", DType::F32, [sym("N"), 3.into()]);
        let y = (x + t.param("b", &b)).relu();
        assert_eq!(y.shape(), vec![sym("N"), 3.into()]);
        assert_eq!(y.dtype(), DType::F32);
        t.output("y", y);
    })
    .unwrap();
    assert_eq!(traced.graph.value(traced.graph.inputs[0]).name, "x");
    assert!(traced.text().contains("%y = max("), "{}", traced.text());
    // Node names are the caller's locations, so later errors point into the model code.
    for node in &traced.graph.nodes {
        assert!(
            node.name.starts_with(&format!("{}:", file!())),
            "node named '{}'",
            node.name
        );
    }
}
