//! Prints the machine's fp32 FMA peak (one core, all cores) and copy bandwidth as JSON.

fn main() {
    println!("{}", smelt_bench::peak::measure().to_json());
}
