//! File-based tests of optimizer passes, in the manner of Cranelift's filetests: each
//! `tests/passes/*.graph` starts with `# passes: a, b, ...`, then a graph in text form.
//! The graph after the passes is pinned with `insta`, and where every input has a fixed
//! shape the interpreter checks that the passes kept the results.

use smelt_ir::text::{PrintOptions, parse_graph, print_graph};
use smelt_ir::{DType, Graph, Tensor};
use smelt_tests::compare::compare;

/// Deterministic inputs: a small ramp per input, cast to its dtype.
fn inputs_for(g: &Graph) -> Option<Vec<Tensor>> {
    g.inputs
        .iter()
        .map(|&i| {
            let ty = g.ty(i);
            let shape = ty.fixed_shape()?;
            let n: usize = shape.iter().product();
            let ramp = (0..n).map(|k| ((k * 7) % 11) as f64 * 0.25 - 1.0).collect();
            Tensor::from_f64(DType::F64, shape, ramp)
                .ok()
                .map(|t| t.cast(ty.dtype))
        })
        .collect()
}

#[test]
fn pass_files() {
    let files = smelt_tests::graph_files("passes");
    assert!(files.len() >= 6, "pass files missing");
    for file in files {
        let name = file.file_stem().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&file).unwrap();
        let header = text.lines().next().unwrap_or("");
        let passes = header
            .strip_prefix("# passes:")
            .unwrap_or_else(|| panic!("{name}: first line must be '# passes: ...'"));
        let mut g = parse_graph(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let before = inputs_for(&g).map(|x| (smelt_ir::interp::run(&g, &x).unwrap(), x));
        for p in passes.split(',').map(str::trim) {
            let pass = smelt_opt::passes::by_name(p).unwrap_or_else(|e| panic!("{name}: {e}"));
            pass.run(&mut g).unwrap_or_else(|e| panic!("{name}: {e}"));
            g.verify()
                .unwrap_or_else(|e| panic!("{name}: after {p}: {e}"));
        }
        if let Some((want, x)) = before {
            let got = smelt_ir::interp::run(&g, &x).unwrap();
            for (w, a) in want.iter().zip(&got) {
                compare(w, a, 1e-6, 1e-6)
                    .unwrap_or_else(|e| panic!("{name}: results changed: {e}"));
            }
        }
        insta::assert_snapshot!(name, print_graph(&g, PrintOptions::full()));
    }
}
