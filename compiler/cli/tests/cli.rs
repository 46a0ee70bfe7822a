//! The CLI's contract: `inspect` and `run` output, and one-line errors with exit status 2.

use smelt_onnx::proto::{AttributeProto, StringStringEntryProto, TensorProto, tensor_proto};
use smelt_runtime::{ElemType, HostTensor, read_npy, write_npy};
use smelt_tests::builder::{f32_info, f32_tensor, model, node};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn smelt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_smelt"))
        .args(args)
        .output()
        .expect("smelt runs")
}

/// `smelt run MODEL --input x=X`.
fn run_x(model: &Path, x: &Path) -> Output {
    smelt(&[
        "run",
        model.to_str().unwrap(),
        "--input",
        &format!("x={}", x.display()),
    ])
}

fn workdir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// y = relu(x) + b, x: f32[2, 3].
fn relu_model(dir: &Path) -> PathBuf {
    let b = f32_tensor("b", &[3], &[1.0, 2.0, 3.0]);
    let bytes = model(
        vec![
            node("Relu", "relu", &["x"], &["r"]),
            node("Add", "add", &["r", "b"], &["y/out:0"]),
        ],
        vec![f32_info("x", &[2, 3])],
        vec![f32_info("y/out:0", &[2, 3])],
        vec![b],
    );
    let p = dir.join("relu.onnx");
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Writes `model.onnx` with `nodes` mapping `x: f32[2]` to `y: f32[2]`, and `x.npy`; returns both paths.
fn vector_model(dir: &Path, nodes: Vec<smelt_onnx::proto::NodeProto>) -> (PathBuf, PathBuf) {
    let p = dir.join("model.onnx");
    std::fs::write(
        &p,
        model(
            nodes,
            vec![f32_info("x", &[2])],
            vec![f32_info("y", &[2])],
            vec![],
        ),
    )
    .unwrap();
    let x = dir.join("x.npy");
    f32_npy(&x, vec![2], &[1.0, 2.0]);
    (p, x)
}

fn f32_npy(path: &Path, shape: Vec<usize>, values: &[f32]) {
    let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_npy(
        path,
        &HostTensor {
            elem: ElemType::F32,
            shape,
            bytes,
        },
    )
    .unwrap();
}

/// Asserts exit status 2 and exactly one stderr line containing `needle`.
fn assert_error(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "not one line: {err:?}");
    assert!(err.contains(needle), "expected '{needle}' in: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{err}"
    );
}

#[test]
fn run_writes_outputs_and_summaries() {
    let d = workdir("run");
    let m = relu_model(&d);
    f32_npy(
        &d.join("x.npy"),
        vec![2, 3],
        &[-1.0, 0.5, 2.0, -3.0, 4.0, 0.0],
    );
    let out_dir = d.join("out");
    let out = smelt(&[
        "run",
        m.to_str().unwrap(),
        "--input",
        &format!("x={}", d.join("x.npy").display()),
        "--output-dir",
        out_dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The output name's '/' and ':' become '_' in the file name.
    let y = read_npy(&out_dir.join("y_out_0.npy")).unwrap();
    let v: Vec<f32> = y
        .bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(v, vec![1.0, 2.5, 5.0, 1.0, 6.0, 3.0]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.trim(),
        "y/out:0: f32[2, 3] min=1.000000 max=6.000000 mean=3.083333"
    );
}

#[test]
fn inspect_reports_the_model() {
    let d = workdir("inspect");
    let m = relu_model(&d);
    let out = smelt(&["inspect", m.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8_lossy(&out.stdout);
    for line in [
        "ir_version: 8",
        "opsets: ai.onnx 17",
        "producer: smelt-tests",
        "  x: f32[2, 3]",
        "  y/out:0: f32[2, 3]",
        "  Add: 1",
        "  Relu: 1",
        "parameters: 3 (12 bytes)",
        "unsupported ops: none",
    ] {
        assert!(
            s.lines().any(|l| l == line),
            "missing line '{line}' in:\n{s}"
        );
    }
}

#[test]
fn truncated_model_is_refused() {
    let d = workdir("truncated");
    let m = relu_model(&d);
    let bytes = std::fs::read(&m).unwrap();
    let t = d.join("truncated.onnx");
    std::fs::write(&t, &bytes[..bytes.len() / 2]).unwrap();
    for cmd in ["inspect", "run"] {
        assert_error(
            &smelt(&[cmd, t.to_str().unwrap()]),
            "not a valid ONNX model",
        );
    }
}

#[test]
fn non_onnx_file_is_refused() {
    let d = workdir("not-onnx");
    let p = d.join("notes.onnx");
    std::fs::write(&p, "these are not the weights you are looking for\n").unwrap();
    for cmd in ["inspect", "run"] {
        assert_error(
            &smelt(&[cmd, p.to_str().unwrap()]),
            "not a valid ONNX model",
        );
    }
    assert_error(
        &smelt(&["inspect", d.join("missing.onnx").to_str().unwrap()]),
        "cannot read",
    );
}

#[test]
fn unsupported_ops_are_listed_in_one_message() {
    let d = workdir("unsupported");
    let (p, x) = vector_model(
        &d,
        vec![
            node("FrobnicateA", "first", &["x"], &["a"]),
            node("Relu", "ok", &["a"], &["b"]),
            node("FrobnicateB", "second", &["b"], &["y"]),
        ],
    );
    let want = "unsupported ops: FrobnicateA (node 'first', opset 17), FrobnicateB (node 'second', opset 17)";
    assert_error(&smelt(&["inspect", p.to_str().unwrap()]), want);
    assert_error(&run_x(&p, &x), want);
}

#[test]
fn missing_input_is_refused() {
    let d = workdir("missing-input");
    let m = relu_model(&d);
    assert_error(
        &smelt(&["run", m.to_str().unwrap()]),
        "input 'x': missing (expects f32[2, 3])",
    );
}

#[test]
fn wrong_shape_and_dtype_are_refused() {
    let d = workdir("wrong-shape");
    let m = relu_model(&d);
    let x = d.join("x.npy");
    f32_npy(&x, vec![3, 2], &[0.0; 6]);
    assert_error(
        &run_x(&m, &x),
        "input 'x': expects shape [2, 3] but got [3, 2]",
    );
    let xi = d.join("xi.npy");
    write_npy(
        &xi,
        &HostTensor {
            elem: ElemType::I64,
            shape: vec![2, 3],
            bytes: vec![0; 48],
        },
    )
    .unwrap();
    assert_error(&run_x(&m, &xi), "input 'x': expects dtype f32, got i64");
    assert_error(
        &smelt(&[
            "run",
            m.to_str().unwrap(),
            "--input",
            &format!("nope={}", x.display()),
        ]),
        "input 'nope': the model has no such input",
    );
}

fn external_model(dir: &Path, location: &str) -> PathBuf {
    let w = TensorProto {
        name: Some("b".into()),
        dims: vec![3],
        data_type: Some(1),
        data_location: Some(tensor_proto::DataLocation::External as i32),
        external_data: vec![
            StringStringEntryProto {
                key: Some("location".into()),
                value: Some(location.into()),
            },
            StringStringEntryProto {
                key: Some("length".into()),
                value: Some("12".into()),
            },
        ],
        ..Default::default()
    };
    let bytes = model(
        vec![node("Add", "add", &["x", "b"], &["y"])],
        vec![f32_info("x", &[3])],
        vec![f32_info("y", &[3])],
        vec![w],
    );
    let p = dir.join("ext.onnx");
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn external_data_is_confined_to_the_model_directory() {
    let d = workdir("external");
    let x = d.join("x.npy");
    f32_npy(&x, vec![3], &[1.0, 1.0, 1.0]);
    let input = format!("x={}", x.display());
    // Inside the directory it works.
    std::fs::write(
        d.join("weights.bin"),
        [1.0f32, 2.0, 3.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let ok = external_model(&d, "weights.bin");
    let out = smelt(&["run", ok.to_str().unwrap(), "--input", &input]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("min=2.000000 max=4.000000"));
    for (location, reason) in [
        ("../../etc/passwd", "leaves the model's directory"),
        ("/etc/passwd", "is absolute"),
        ("sub/../../secret.bin", "leaves the model's directory"),
    ] {
        let m = external_model(&d, location);
        assert_error(
            &smelt(&["run", m.to_str().unwrap(), "--input", &input]),
            reason,
        );
    }
    // A symlink inside the directory that points outside it is refused too.
    std::os::unix::fs::symlink("/etc/hostname", d.join("link.bin")).unwrap();
    let m = external_model(&d, "link.bin");
    assert_error(
        &smelt(&["run", m.to_str().unwrap(), "--input", &input]),
        "resolves outside the model's directory",
    );
    // Data past the end of the file is refused.
    std::fs::write(d.join("short.bin"), [0u8; 8]).unwrap();
    let m = external_model(&d, "short.bin");
    assert_error(
        &smelt(&["run", m.to_str().unwrap(), "--input", &input]),
        "runs past the end",
    );
}

#[test]
fn attribute_of_the_wrong_type_is_refused() {
    let d = workdir("attr-type");
    let mut n = node("Softmax", "sm", &["x"], &["y"]);
    n.attribute.push(AttributeProto {
        name: Some("axis".into()),
        r#type: Some(1),
        f: Some(1.5),
        ..Default::default()
    });
    let (p, x) = vector_model(&d, vec![n]);
    assert_error(
        &run_x(&p, &x),
        "node 'sm' (Softmax): attribute 'axis' must be INT, got FLOAT",
    );
}

#[test]
fn zero_threads_are_refused() {
    let d = workdir("zero-threads");
    let m = relu_model(&d);
    let x = d.join("x.npy");
    f32_npy(&x, vec![2, 3], &[0.0; 6]);
    let out = smelt(&[
        "run",
        m.to_str().unwrap(),
        "--input",
        &format!("x={}", x.display()),
        "--threads",
        "0",
    ]);
    assert_error(&out, "--threads must be at least 1");
}
