//! The Kernel IR verifier refuses malformed kernels, and the printer shows what matters.

use smelt_fuse::kernel::{
    Body, Combine, Const, Expr, Kernel, KernelError, LoopNest, Node, Param, Role, Store,
};
use smelt_ir::{BinaryOp, DType};

fn param(role: Role, dtype: DType) -> Param {
    Param {
        value: "v".into(),
        dtype,
        shape: vec![4, 8],
        role,
    }
}

/// Row sums of p1 into p0: out[i] = sum_j in[i, j].
fn row_sum() -> Kernel {
    let n = |expr, dtype| Node { expr, dtype };
    Kernel {
        name: "row_sum".into(),
        params: vec![
            param(Role::Output, DType::F32),
            param(Role::Input, DType::F32),
        ],
        body: Body::Loop(LoopNest {
            domain: vec![4, 1],
            nodes: vec![
                n(Expr::Var(0), DType::I64),                      // e0 = i
                n(Expr::RVar(0), DType::I64),                     // e1 = r0
                n(Expr::Const(Const::Int(8)), DType::I64),        // e2
                n(Expr::Binary(BinaryOp::Mul, 0, 2), DType::I64), // e3 = 8i
                n(Expr::Binary(BinaryOp::Add, 3, 1), DType::I64), // e4 = 8i + r
                n(Expr::Load { param: 1, index: 4 }, DType::F32), // e5
                n(
                    Expr::Reduce {
                        combine: Combine::Sum,
                        extent: 8,
                        var: 0,
                        body: 5,
                    },
                    DType::F32,
                ), // e6
            ],
            stores: vec![Store {
                param: 0,
                index: 0,
                value: 6,
            }],
        }),
    }
}

fn nest(k: &mut Kernel) -> &mut LoopNest {
    match &mut k.body {
        Body::Loop(n) => n,
        Body::Contraction { .. } => unreachable!(),
    }
}

fn reason(k: &Kernel) -> String {
    match k.verify() {
        Err(KernelError::Invalid { reason, .. }) => reason,
        other => panic!("expected an invalid kernel, got {other:?}"),
    }
}

#[test]
fn a_well_formed_kernel_verifies_and_prints() {
    let k = row_sum();
    k.verify().unwrap();
    let text = k.print();
    assert!(text.contains("p1: in f32[4, 8] strides [8, 1]"), "{text}");
    assert!(text.contains("e6: f32 = reduce_sum r0 < 8: e5"), "{text}");
    assert!(text.contains("store p0[e0] = e6"), "{text}");
}

#[test]
fn stores_into_inputs_are_refused() {
    let mut k = row_sum();
    nest(&mut k).stores[0].param = 1;
    assert!(reason(&k).contains("store of e6 into v"), "{}", reason(&k));
}

#[test]
fn forward_references_are_refused() {
    let mut k = row_sum();
    nest(&mut k).nodes[3].expr = Expr::Binary(BinaryOp::Mul, 0, 5);
    assert!(reason(&k).contains("does not precede it"), "{}", reason(&k));
}

#[test]
fn reduction_variables_cannot_escape_their_reduction() {
    let mut k = row_sum();
    nest(&mut k).stores[0].value = 5;
    assert_eq!(reason(&k), "a store uses a reduction variable");
}

#[test]
fn loads_need_i64_indices_and_matching_types() {
    let mut k = row_sum();
    nest(&mut k).nodes[5].dtype = DType::F64;
    assert!(reason(&k).contains("load types disagree"), "{}", reason(&k));
}

#[test]
fn domain_variables_must_exist() {
    let mut k = row_sum();
    nest(&mut k).nodes[0].expr = Expr::Var(2);
    assert!(
        reason(&k).contains("domain variable 2 out of range"),
        "{}",
        reason(&k)
    );
}

#[test]
fn the_verified_kernel_runs_on_the_cpu() {
    let k = row_sum();
    let code = smelt_cpu::compile(&[&k]).unwrap();
    let f = code.function(0).unwrap();
    let input: Vec<f32> = (0..32).map(|i| i as f32).collect();
    let mut out = vec![0f32; 32];
    let args = [
        out.as_mut_ptr().cast::<u8>(),
        input.as_ptr().cast_mut().cast::<u8>(),
    ];
    // SAFETY: the buffers match the kernel's parameters (32 f32 each).
    unsafe { f(args.as_ptr(), 0, 4) };
    let want: Vec<f32> = (0..4)
        .map(|i| (0..8).map(|j| (8 * i + j) as f32).sum())
        .collect();
    assert_eq!(&out[..4], &want[..]);
}
