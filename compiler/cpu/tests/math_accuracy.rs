//! Accuracy of the generated f32 exp, log, tanh, sigmoid and erf, on both the vector
//! (f32x4) and the scalar code path, over dense sweeps against f64 references.

use smelt_fuse::kernel::{Body, Expr, Kernel, LoopNest, Node, Param, Role, Store};
use smelt_ir::{DType, UnaryOp};

/// A kernel storing the last of `values` (nodes after `[Var(0), Load x]`, node 1 being
/// the loaded element) for each of `n` f32 inputs; `vector` picks a domain whose inner
/// axis vectorizes ([n]) or one that runs scalar ([n, 1]).
fn elementwise(name: &str, n: usize, vector: bool, values: Vec<Node>) -> Kernel {
    let param = |role| Param {
        value: "x".into(),
        dtype: DType::F32,
        shape: vec![n],
        role,
    };
    let mut nodes = vec![
        Node {
            expr: Expr::Var(0),
            dtype: DType::I64,
        },
        Node {
            expr: Expr::Load { param: 1, index: 0 },
            dtype: DType::F32,
        },
    ];
    nodes.extend(values);
    Kernel {
        name: format!("{name}_{}", if vector { "vector" } else { "scalar" }),
        params: vec![param(Role::Output), param(Role::Input)],
        body: Body::Loop(LoopNest {
            domain: if vector { vec![n] } else { vec![n, 1] },
            stores: vec![Store {
                param: 0,
                index: 0,
                value: nodes.len() as u32 - 1,
            }],
            nodes,
        }),
    }
}

/// A kernel computing `op` over `n` f32 values.
fn kernel(op: UnaryOp, n: usize, vector: bool) -> Kernel {
    let value = Node {
        expr: Expr::Unary(op, 1),
        dtype: DType::F32,
    };
    elementwise(op.name(), n, vector, vec![value])
}

/// Compiles and runs `k` over `xs`.
fn run_kernel(k: &Kernel, xs: &[f32]) -> Vec<f32> {
    k.verify().unwrap();
    let code = smelt_cpu::compile(&[k]).unwrap();
    let f = code.function(0).unwrap();
    let mut out = vec![0f32; xs.len()];
    let args = [
        out.as_mut_ptr().cast::<u8>(),
        xs.as_ptr().cast_mut().cast::<u8>(),
    ];
    // SAFETY: both buffers hold xs.len() f32 values, as the kernel's parameters declare.
    unsafe { f(args.as_ptr(), 0, xs.len() as i64) };
    out
}

fn run(op: UnaryOp, xs: &[f32], vector: bool) -> Vec<f32> {
    run_kernel(&kernel(op, xs.len(), vector), xs)
}

fn sweep(lo: f64, hi: f64, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (lo + (hi - lo) * i as f64 / (n - 1) as f64) as f32)
        .collect()
}

/// The largest error of `op` over `xs`, relative to max(|reference|, floor).
fn max_error(op: UnaryOp, xs: &[f32], reference: fn(f64) -> f64, floor: f64) -> (f64, f64) {
    let mut worst = (0.0, 0.0);
    for vector in [true, false] {
        let got = run(op, xs, vector);
        for (&x, &y) in xs.iter().zip(&got) {
            let want = reference(x as f64);
            let err = (y as f64 - want).abs() / want.abs().max(floor);
            if err > worst.0 {
                worst = (err, x as f64);
            }
        }
    }
    eprintln!("{}: max error {:e} at {}", op.name(), worst.0, worst.1);
    worst
}

/// An f64 reference implementation.
type Reference = fn(f64) -> f64;

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

const POINTS: usize = 1_000_003;

#[test]
fn exp_is_within_1e6_relative() {
    let (err, at) = max_error(UnaryOp::Exp, &sweep(-87.0, 88.0, POINTS), f64::exp, 0.0);
    assert!(err < 1e-6, "exp: relative error {err:e} at {at}");
}

#[test]
fn tanh_is_within_1e6_relative() {
    let (err, at) = max_error(UnaryOp::Tanh, &sweep(-12.0, 12.0, POINTS), f64::tanh, 0.0);
    assert!(err < 1e-6, "tanh: relative error {err:e} at {at}");
    let (err, at) = max_error(UnaryOp::Tanh, &sweep(-1e-3, 1e-3, 10_001), f64::tanh, 0.0);
    assert!(err < 1e-6, "tanh near 0: relative error {err:e} at {at}");
    // Never outside [-1, 1], where rounding of the rational form would otherwise lift it.
    let xs = sweep(-12.0, 12.0, 100_001);
    for vector in [true, false] {
        for (x, y) in xs.iter().zip(run(UnaryOp::Tanh, &xs, vector)) {
            assert!(y.abs() <= 1.0, "tanh({x}) = {y} (vector: {vector})");
        }
    }
}

#[test]
fn sigmoid_is_within_1e6_relative() {
    let (err, at) = max_error(UnaryOp::Sigmoid, &sweep(-80.0, 80.0, POINTS), sigmoid, 0.0);
    assert!(err < 1e-6, "sigmoid: relative error {err:e} at {at}");
}

#[test]
fn erf_is_within_1e6_relative() {
    let (err, at) = max_error(UnaryOp::Erf, &sweep(-6.0, 6.0, POINTS), libm::erf, 0.0);
    assert!(err < 1e-6, "erf: relative error {err:e} at {at}");
    let (err, at) = max_error(UnaryOp::Erf, &sweep(-1e-3, 1e-3, 10_001), libm::erf, 0.0);
    assert!(err < 1e-6, "erf near 0: relative error {err:e} at {at}");
}

#[test]
fn log_is_within_3e7_of_max_1_and_the_value() {
    let xs: Vec<f32> = (0..POINTS)
        .map(|i| (10f64.powf(-37.5 + 75.0 * i as f64 / (POINTS - 1) as f64)) as f32)
        .chain(sweep(0.5, 2.0, 100_001))
        .chain([1e-40, 1e-44])
        .collect();
    let (err, at) = max_error(UnaryOp::Log, &xs, f64::ln, 1.0);
    assert!(err < 3e-7, "log: error {err:e} at {at}");
}

#[test]
fn special_values() {
    let xs = [
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        0.0,
        -0.0,
        100.0,
        -100.0,
    ];
    let reference: [(UnaryOp, Reference); 5] = [
        (UnaryOp::Exp, f64::exp),
        (UnaryOp::Log, f64::ln),
        (UnaryOp::Tanh, f64::tanh),
        (UnaryOp::Sigmoid, sigmoid),
        (UnaryOp::Erf, libm::erf),
    ];
    for (op, f) in reference {
        for vector in [true, false] {
            let got = run(op, &xs, vector);
            for (&x, &y) in xs.iter().zip(&got) {
                let want = f(x as f64) as f32;
                // Results below the normal range flush to zero (documented in math.rs).
                let same = (want.is_nan() && y.is_nan())
                    || want == y
                    || (want.abs() < f32::MIN_POSITIVE && y == 0.0)
                    || ((want - y).abs() <= 1e-6 * want.abs());
                assert!(
                    same,
                    "{}({x}) = {y}, expected {want} (vector: {vector})",
                    op.name()
                );
            }
        }
    }
}

/// exp at the edges of its range: the largest finite results, the smallest normal ones,
/// and the first inputs past them (+inf above, 0 below), on both code paths.
#[test]
fn exp_range_edges() {
    let cases: [(f32, Option<f32>); 8] = [
        (88.72283, None),
        (88.7, None),
        (88.722_84, Some(f32::INFINITY)),
        (1e30, Some(f32::INFINITY)),
        (-87.33654, None),
        (-87.3, None),
        (-87.336_55, Some(0.0)),
        (-1e30, Some(0.0)),
    ];
    let xs: Vec<f32> = cases.iter().map(|c| c.0).collect();
    for vector in [true, false] {
        let got = run(UnaryOp::Exp, &xs, vector);
        for (&(x, exact), &y) in cases.iter().zip(&got) {
            match exact {
                Some(want) => assert_eq!(y, want, "exp({x}) (vector: {vector})"),
                None => {
                    let want = (x as f64).exp();
                    let err = (y as f64 - want).abs() / want;
                    assert!(
                        err < 1e-6,
                        "exp({x}) = {y}, expected {want} (vector: {vector})"
                    );
                }
            }
        }
    }
}

/// `x^c` for constant exponents (LRN's 0.75 among them) on both code paths: within 1e-5
/// relative of f64 where the result is a normal float, and IEEE pow's special values
/// (signs of odd powers, NaN for negative bases of fractional ones, infinities, zeros).
#[test]
fn pow_by_a_constant() {
    use smelt_fuse::kernel::Const;
    let mut xs: Vec<f32> = sweep(-30.0, 30.0, 20_001);
    xs.extend(sweep(1e-3, 2.0, 2_001));
    xs.extend([
        0.0,
        -0.0,
        1.0,
        -1.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        1e30,
        1e-30,
    ]);
    for c in [0.75f32, -0.75, 0.5, 2.0, 3.0, -1.0, -2.0, 0.0, 1.5] {
        for vector in [true, false] {
            let values = vec![
                Node {
                    expr: Expr::Const(Const::Float((c as f64).to_bits())),
                    dtype: DType::F32,
                },
                Node {
                    expr: Expr::Binary(smelt_ir::BinaryOp::Pow, 1, 2),
                    dtype: DType::F32,
                },
            ];
            let out = run_kernel(&elementwise("pow", xs.len(), vector, values), &xs);
            for (&x, &y) in xs.iter().zip(&out) {
                let want = (x as f64).powf(c as f64);
                let w = want as f32;
                let ok = if want.is_nan() {
                    y.is_nan()
                } else if w.is_infinite() || w == 0.0 {
                    y == w && y.is_sign_negative() == w.is_sign_negative()
                } else if w.abs() < f32::MIN_POSITIVE {
                    y.abs() < f32::MIN_POSITIVE * 2.0
                } else {
                    ((y as f64 - want) / want).abs() < 1e-5
                };
                assert!(ok, "{x}^{c} = {y}, expected {want} (vector: {vector})");
            }
        }
    }
}
