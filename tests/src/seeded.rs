//! Property tests run twice: on a fixed seed (the same cases on every run, so CI is
//! reproducible) and on one fresh seed, printed so that any failure can be replayed with
//! `SMELT_PROPTEST_SEED=<hex>`.

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use std::fmt::Debug;

/// The seed of the fixed run.
const FIXED_SEED: [u8; 32] = *b"smelt: property tests fixed seed";

/// The random run's seed: `SMELT_PROPTEST_SEED` (64 hex digits) or a fresh one.
fn random_seed() -> [u8; 32] {
    if let Some(hex) = std::env::var("SMELT_PROPTEST_SEED")
        .ok()
        .filter(|h| !h.is_empty())
    {
        return parse_hex(&hex)
            .unwrap_or_else(|| panic!("SMELT_PROPTEST_SEED must be 64 hex digits, got '{hex}'"));
    }
    use std::hash::{BuildHasher, Hasher};
    let mut seed = [0u8; 32];
    for (i, chunk) in seed.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(i);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    seed
}

fn parse_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut seed = [0u8; 32];
    for (i, byte) in seed.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(seed)
}

fn to_hex(seed: &[u8; 32]) -> String {
    seed.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `test` on `fixed_cases` values of `strategy` drawn from the fixed seed, then on
/// `random_cases` from a fresh seed (printed). Failures shrink as in `proptest!`, replay
/// the regressions saved beside `source_file`, and panic naming the seed.
pub fn run_seeded<S>(
    source_file: &'static str,
    strategy: S,
    fixed_cases: u32,
    random_cases: u32,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S: Strategy,
    S::Value: Debug,
{
    let random = random_seed();
    eprintln!(
        "property test random seed {} (replay: SMELT_PROPTEST_SEED={})",
        to_hex(&random),
        to_hex(&random)
    );
    for (which, seed, cases) in [
        ("fixed", FIXED_SEED, fixed_cases),
        ("random", random, random_cases),
    ] {
        let config = Config {
            cases,
            source_file: Some(source_file),
            ..Config::default()
        };
        let mut runner =
            TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed));
        if let Err(e) = runner.run(&strategy, &test) {
            panic!("{which} seed {}: {e}", to_hex(&seed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_round_trip_through_hex() {
        let seed = random_seed();
        assert_eq!(parse_hex(&to_hex(&seed)), Some(seed));
        assert_eq!(parse_hex("zz"), None);
    }
}
