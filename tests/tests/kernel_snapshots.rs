//! Snapshots of the Kernel IR and the CLIF of the classic models' kernels, so that any
//! change in what fusion and the CPU back end emit shows up in review. (The text
//! classifier is left out: its unrolled LSTM makes hundreds of kernels.)

#[test]
fn classic_model_kernels() {
    let models = smelt_tests::require_data("models");
    for name in smelt_tests::CLASSIC_MODELS
        .into_iter()
        .chain(["worked_check"])
    {
        let dir = models.join(name);
        let model = smelt::Model::load(dir.join("model.onnx")).unwrap();
        let compiled = model.compile(&smelt::Options::default()).unwrap();
        let exe = compiled
            .executable_for_shapes(&smelt_tests::model_input_shapes(&dir))
            .unwrap();
        insta::assert_snapshot!(format!("kernel_ir_{name}"), exe.kernel_text());
        let clif: Vec<String> = exe
            .kernels
            .iter()
            .map(|k| {
                format!(
                    "; {}\n{}",
                    k.kernel.name,
                    smelt_cpu::clif_for(&k.kernel, true).unwrap()
                )
            })
            .collect();
        insta::assert_snapshot!(format!("clif_{name}"), clif.join("\n"));
    }
}

#[test]
fn mnist_cnn_fuses_conv_bias_relu_and_softmax() {
    let dir = smelt_tests::require_data("models").join("mnist_cnn");
    let model = smelt::Model::load(dir.join("model.onnx")).unwrap();
    let compiled = model.compile(&smelt::Options::default()).unwrap();
    let exe = compiled
        .executable_for_shapes(&smelt_tests::model_input_shapes(&dir))
        .unwrap();
    let convs: Vec<&smelt_fuse::Kernel> = exe
        .kernels
        .iter()
        .map(|k| &k.kernel)
        .filter(|k| k.name.contains("conv"))
        .collect();
    assert_eq!(convs.len(), 2);
    for k in convs {
        // Conv with its bias operand, and the ReLU (max with 0) folded into the call.
        let smelt_fuse::Body::Contraction {
            call:
                smelt_fuse::kernel::Contraction::Conv {
                    bias, activation, ..
                },
            epilogue: None,
            ..
        } = &k.body
        else {
            panic!("{} is not a conv without epilogue:\n{}", k.name, k.print());
        };
        assert!(bias.is_some(), "{}", k.print());
        assert_eq!(
            *activation,
            smelt_fuse::kernel::FoldedActivation::Relu,
            "{}",
            k.print()
        );
    }
    // Softmax: the last kernels hold exp and a sum reduction; at most two of them.
    let softmax: Vec<&smelt_fuse::Kernel> = exe
        .kernels
        .iter()
        .map(|k| &k.kernel)
        .filter(|k| {
            k.loop_nest().is_some_and(|n| {
                n.nodes.iter().any(|x| {
                    matches!(
                        x.expr,
                        smelt_fuse::kernel::Expr::Unary(smelt_ir::UnaryOp::Exp, _)
                    )
                })
            })
        })
        .collect();
    assert!(
        !softmax.is_empty() && softmax.len() <= 2,
        "{}",
        exe.kernel_text()
    );
}
