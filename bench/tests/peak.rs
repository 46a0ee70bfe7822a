//! The peak measurement finds plausible numbers on this machine.

#[test]
fn peak_is_measured() {
    let p = smelt_bench::peak::measure();
    assert!(p.cores >= 1);
    assert!(p.copy_gbs > 0.1, "{p:?}");
    if p.isa != "none" {
        // Even a slow debug-profile loop does better than a GFLOP/s with FMA vectors.
        assert!(p.gflops_one_core > 1.0, "{p:?}");
        assert!(p.gflops_all_cores >= p.gflops_one_core * 0.9, "{p:?}");
    }
    let json = p.to_json();
    assert!(
        json.starts_with("{\"isa\": ") && json.contains("\"copy_gbs\": "),
        "{json}"
    );
}
