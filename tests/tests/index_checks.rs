//! Out-of-range indices are an error, not a clamped read: inputs that index a gather or
//! scatter are checked against the indexed axes before every run (on the CPU, and on the
//! emulated GPU with the `cuda` feature), and in-range ones, negative included, still work.

use smelt::{Model, Options, Target, Tensor};
use smelt_onnx::proto::AttributeProto;
use smelt_onnx::proto::attribute_proto::AttributeType;
use smelt_tests::builder::{D, f32_info, f32_tensor, model, node, value_info};

/// `y = op(table: f32[5, 3], idx)` with `idx` an input of ONNX type `elem` and shape
/// `idx_dims`, cast to i64 first when `cast`.
fn indexing_model(op: &str, elem: i32, idx_dims: &[i64], out_dims: &[i64], cast: bool) -> Model {
    let table: Vec<f32> = (0..15).map(|i| i as f32).collect();
    let mut nodes = Vec::new();
    let idx = if cast {
        let mut c = node("Cast", "cast", &["idx"], &["idx64"]);
        c.attribute.push(AttributeProto {
            name: Some("to".into()),
            r#type: Some(AttributeType::Int as i32),
            i: Some(7),
            ..Default::default()
        });
        nodes.push(c);
        "idx64"
    } else {
        "idx"
    };
    let mut inputs = vec!["table", idx];
    let dims: Vec<D> = idx_dims.iter().map(|&d| D::N(d)).collect();
    let mut inits = vec![f32_tensor("table", &[5, 3], &table)];
    // ScatterElements updates one element per index; ScatterND one slice of the table
    // per index tuple along the indices' last axis.
    let updates_dims: Option<Vec<i64>> = match op {
        "ScatterElements" => Some(idx_dims.to_vec()),
        "ScatterND" => {
            let (depth, tuples) = idx_dims.split_last().expect("indices have a last axis");
            Some([tuples, &[5i64, 3][*depth as usize..]].concat())
        }
        _ => None,
    };
    if let Some(updates_dims) = updates_dims {
        inputs.push("updates");
        inits.push(f32_tensor(
            "updates",
            &updates_dims,
            &vec![-1.0; updates_dims.iter().product::<i64>() as usize],
        ));
    }
    nodes.push(node(op, "indexing", &inputs, &["y"]));
    let bytes = model(
        nodes,
        vec![value_info("idx", elem, &dims)],
        vec![f32_info("y", out_dims)],
        inits,
    );
    Model::from_bytes(&bytes).unwrap()
}

fn run(model: &Model, target: Target, idx: Tensor) -> Result<Vec<f32>, String> {
    let compiled = model
        .compile(&Options {
            threads: Some(2),
            target,
            ..Default::default()
        })
        .unwrap();
    compiled
        .run(&[idx])
        .map(|out| out[0].to_vec::<f32>().unwrap())
        .map_err(|e| e.to_string())
}

fn targets() -> Vec<Target> {
    let mut targets = vec![Target::Cpu];
    if cfg!(feature = "cuda") {
        targets.push(Target::GpuEmulator);
    }
    targets
}

#[test]
fn gather_indices_are_checked_before_the_run() {
    let gather = indexing_model("Gather", 7, &[4], &[4, 3], false);
    for target in targets() {
        // In range, negative ones counting from the end.
        let rows = run(
            &gather,
            target,
            Tensor::from_vec(vec![4], vec![0i64, 4, -1, -5]).unwrap(),
        )
        .unwrap();
        assert_eq!(&rows[3..6], &[12.0, 13.0, 14.0]);
        assert_eq!(&rows[6..9], &[12.0, 13.0, 14.0]);
        assert_eq!(&rows[9..12], &[0.0, 1.0, 2.0]);
        for (bad, position, value) in [(vec![0i64, 5, 1, 1], 1, 5), (vec![1, 1, 1, -6], 3, -6)] {
            let err = run(&gather, target, Tensor::from_vec(vec![4], bad).unwrap()).unwrap_err();
            assert_eq!(
                err,
                format!(
                    "input idx: index {value} at position {position} is out of range (allowed: -5 to 4)"
                ),
                "{}",
                target.name()
            );
        }
    }
}

#[test]
fn indices_through_a_cast_and_of_other_indexing_ops_are_checked() {
    let cast = indexing_model("Gather", 6, &[2], &[2, 3], true);
    let elements = indexing_model("GatherElements", 7, &[2, 3], &[2, 3], false);
    let scatter = indexing_model("ScatterElements", 7, &[2, 3], &[5, 3], false);
    for target in targets() {
        assert!(
            run(
                &cast,
                target,
                Tensor::from_vec(vec![2], vec![1i32, 2]).unwrap()
            )
            .is_ok()
        );
        let err = run(
            &cast,
            target,
            Tensor::from_vec(vec![2], vec![1i32, 9]).unwrap(),
        )
        .unwrap_err();
        assert!(
            err.contains("index 9 at position 1 is out of range"),
            "{err}"
        );
        for m in [&elements, &scatter] {
            assert!(
                run(
                    m,
                    target,
                    Tensor::from_vec(vec![2, 3], vec![0i64, 1, 2, 3, 4, -5]).unwrap()
                )
                .is_ok()
            );
            let err = run(
                m,
                target,
                Tensor::from_vec(vec![2, 3], vec![0i64, 1, 2, 3, 4, 7]).unwrap(),
            )
            .unwrap_err();
            assert!(
                err.contains("index 7 at position 5 is out of range (allowed: -5 to 4)"),
                "{err}"
            );
        }
    }
}

#[test]
fn nd_indices_are_checked_per_indexed_axis() {
    // Each index pair addresses one table element: the first against 5 rows, the second
    // against 3 columns.
    let gather = indexing_model("GatherND", 7, &[2, 2], &[2], false);
    let scatter = indexing_model("ScatterND", 7, &[2, 2], &[5, 3], false);
    // One index per row: the last axis has length 1 and is checked against the rows.
    let scatter_rows = indexing_model("ScatterND", 6, &[2, 1], &[5, 3], true);
    for target in targets() {
        let picked = run(
            &gather,
            target,
            Tensor::from_vec(vec![2, 2], vec![4i64, 2, -5, -3]).unwrap(),
        )
        .unwrap();
        assert_eq!(picked, [14.0, 0.0], "{}", target.name());
        let written = run(
            &scatter,
            target,
            Tensor::from_vec(vec![2, 2], vec![4i64, 2, -5, -3]).unwrap(),
        )
        .unwrap();
        assert_eq!((written[14], written[0], written[1]), (-1.0, -1.0, 1.0));
        for m in [&gather, &scatter] {
            // Each position is held to its own axis: 3 is a valid row but not a valid
            // column.
            for (bad, position, value, bounds) in [
                (vec![1i64, 3, 0, 0], 1, 3, "-3 to 2"),
                (vec![0i64, 0, 5, 0], 2, 5, "-5 to 4"),
                (vec![0i64, 0, 0, -4], 3, -4, "-3 to 2"),
            ] {
                let err = run(m, target, Tensor::from_vec(vec![2, 2], bad).unwrap()).unwrap_err();
                assert_eq!(
                    err,
                    format!(
                        "input idx: index {value} at position {position} is out of range (allowed: {bounds})"
                    ),
                    "{}",
                    target.name()
                );
            }
        }
        let rows = run(
            &scatter_rows,
            target,
            Tensor::from_vec(vec![2, 1], vec![4i32, -5]).unwrap(),
        )
        .unwrap();
        assert_eq!((rows[12], rows[0], rows[3]), (-1.0, -1.0, 3.0));
        let in_range = run(
            &scatter_rows,
            target,
            Tensor::from_vec(vec![2, 1], vec![3i32, 4]).unwrap(),
        );
        assert!(in_range.is_ok(), "{in_range:?}");
        let err = run(
            &scatter_rows,
            target,
            Tensor::from_vec(vec![2, 1], vec![3i32, 5]).unwrap(),
        )
        .unwrap_err();
        assert_eq!(
            err,
            "input idx: index 5 at position 1 is out of range (allowed: -5 to 4)"
        );
    }
}
