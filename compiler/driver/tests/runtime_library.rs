//! The runtime library embedded for deployables exports every symbol generated code and
//! C callers link against.

use std::collections::HashSet;

#[test]
fn runtime_library_exports_the_c_abi_and_every_math_helper() {
    let archive = object::read::archive::ArchiveFile::parse(smelt::aot::RUNTIME_LIBRARY).unwrap();
    let symbols: HashSet<String> = archive
        .symbols()
        .unwrap()
        .expect("the archive has a symbol index")
        .map(|s| String::from_utf8_lossy(s.unwrap().name()).into_owned())
        .collect();
    let helpers = smelt_runtime::mathfns::symbols();
    assert!(helpers.len() > 30);
    let api = [
        "smelt_exe_main",
        "smelt_last_error",
        "smelt_num_inputs",
        "smelt_num_outputs",
        "smelt_input_name",
        "smelt_output_name",
        "smelt_input_dtype",
        "smelt_output_dtype",
        "smelt_input_shape",
        "smelt_output_shape",
        "smelt_constant_bytes",
        "smelt_scratch_bytes",
        "smelt_create",
        "smelt_run",
        "smelt_run_with_scratch",
        "smelt_destroy",
    ];
    for name in helpers.iter().map(|(n, _)| *n).chain(api) {
        assert!(
            symbols.contains(name),
            "{name} is not exported by the runtime library"
        );
    }
}
