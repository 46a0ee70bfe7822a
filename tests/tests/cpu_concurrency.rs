//! One compiled model run from 8 threads at once gives results bit-identical to a
//! single run, and runs are deterministic at a fixed thread count; runs into reused
//! output tensors give the same results and refuse outputs of the wrong type.

use smelt::{Model, Options, Tensor};

fn input(seed: u32) -> Tensor {
    let data: Vec<f32> = (0..3 * 32 * 32)
        .map(|i| {
            ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 1000) as f32 / 500.0 - 1.0
        })
        .collect();
    Tensor::from_vec(vec![1, 3, 32, 32], data).unwrap()
}

#[test]
fn eight_threads_share_one_compiled_model() {
    let path = smelt_tests::workspace_root().join("docs/examples/lenet5/model.onnx");
    let model = Model::load(&path).unwrap();
    let compiled = model
        .compile(&Options {
            threads: Some(2),
            ..Default::default()
        })
        .unwrap();
    let inputs: Vec<Tensor> = (0..8).map(input).collect();
    let expected: Vec<Vec<Tensor>> = inputs
        .iter()
        .map(|x| compiled.run(std::slice::from_ref(x)).unwrap())
        .collect();
    // Determinism run to run.
    assert_eq!(compiled.run(&inputs[..1]).unwrap(), expected[0]);
    std::thread::scope(|s| {
        for t in 0..8 {
            let (compiled, inputs, expected) = (&compiled, &inputs, &expected);
            s.spawn(move || {
                for i in 0..25 {
                    let k = (t + i) % 8;
                    let got = compiled.run(std::slice::from_ref(&inputs[k])).unwrap();
                    assert_eq!(got, expected[k], "thread {t}, iteration {i}, input {k}");
                }
            });
        }
    });
    // Different inputs give different outputs, so the comparison above can fail.
    assert_ne!(expected[0], expected[1]);
}

#[test]
fn compiled_models_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<smelt::Compiled>();
}

#[test]
fn runs_into_reused_outputs_match_and_check_their_types() {
    let path = smelt_tests::workspace_root().join("docs/examples/lenet5/model.onnx");
    let compiled = Model::load(&path)
        .unwrap()
        .compile(&Options {
            threads: Some(2),
            ..Default::default()
        })
        .unwrap();
    let name = compiled.input_names()[0].clone();
    let feeds = |seed: u32| vec![(name.clone(), input(seed).0)];
    let exe = compiled.prepare(&feeds(0)).unwrap();
    let mut outputs: Vec<_> = compiled
        .run_named(&feeds(0))
        .unwrap()
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    for seed in [1, 2, 3] {
        let fed = feeds(seed);
        let want: Vec<_> = compiled
            .run_named(&fed)
            .unwrap()
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        compiled
            .run_prepared_into(&exe, &[&fed[0].1], &mut outputs, None)
            .unwrap();
        assert_eq!(outputs, want, "seed {seed}");
    }
    outputs[0].shape.push(1);
    let err = compiled
        .run_prepared_into(&exe, &[&feeds(1)[0].1], &mut outputs, None)
        .unwrap_err();
    assert!(err.to_string().contains("output"), "{err}");
}
