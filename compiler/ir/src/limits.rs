//! The memory limit: the most bytes one value may take. Shape inference refuses types over
//! it and generators check it before allocating, so a hostile or mistaken model gets an
//! error naming the node instead of exhausting memory. Process-wide; the CLI sets it from
//! `SMELT_MEMORY_LIMIT`.

use crate::dtype::DType;
use std::sync::atomic::{AtomicU64, Ordering};

/// 16 GiB unless set.
pub const DEFAULT_MAX_VALUE_BYTES: u64 = 16 << 30;

static MAX_VALUE_BYTES: AtomicU64 = AtomicU64::new(DEFAULT_MAX_VALUE_BYTES);

/// The most bytes one value (a tensor of the graph, a constant, a buffer) may take.
pub fn max_value_bytes() -> u64 {
    MAX_VALUE_BYTES.load(Ordering::Relaxed)
}

/// Sets [`max_value_bytes`] for the whole process.
pub fn set_max_value_bytes(bytes: u64) {
    MAX_VALUE_BYTES.store(bytes, Ordering::Relaxed);
}

/// Bytes of a `dtype` tensor of `shape`, or why it cannot exist: its element count
/// overflows, or it is over the memory limit. An empty tensor is held to both with its
/// empty axes left out: `[0, 2^62, 8]` holds nothing, but its strides overflow wherever
/// they are computed, and values sized by its other dims (an iota along an axis, a mask
/// over two) would be over the limit.
pub fn value_bytes(shape: &[usize], dtype: DType) -> Result<u64, String> {
    let nonzero = shape
        .iter()
        .filter(|&&d| d != 0)
        .try_fold(dtype.size_bytes() as u64, |acc, &d| {
            acc.checked_mul(d as u64)
        })
        .ok_or_else(|| format!("the element count of {dtype}{shape:?} overflows"))?;
    let limit = max_value_bytes();
    if nonzero > limit {
        let what = if shape.contains(&0) {
            format!("is empty, but its other axes would take {nonzero} bytes")
        } else {
            format!("would take {nonzero} bytes")
        };
        return Err(format!(
            "{dtype}{shape:?} {what}, over the memory limit of {limit} bytes (SMELT_MEMORY_LIMIT)"
        ));
    }
    Ok(if shape.contains(&0) { 0 } else { nonzero })
}

/// Parses a byte count with an optional K, M, G or T suffix (powers of 1024).
pub fn parse_bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    let (digits, shift) = match text.char_indices().last()? {
        (i, 'K' | 'k') => (&text[..i], 10),
        (i, 'M' | 'm') => (&text[..i], 20),
        (i, 'G' | 'g') => (&text[..i], 30),
        (i, 'T' | 't') => (&text[..i], 40),
        _ => (text, 0),
    };
    digits.parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_bytes("4096"), Some(4096));
        assert_eq!(parse_bytes("2G"), Some(2 << 30));
        assert_eq!(parse_bytes("1t"), Some(1 << 40));
        assert_eq!(parse_bytes("x"), None);
        assert_eq!(parse_bytes("99999999999T"), None);
    }

    #[test]
    fn values_over_the_limit_or_overflowing_are_refused() {
        assert_eq!(value_bytes(&[2, 3], DType::F32), Ok(24));
        assert!(
            value_bytes(&[1 << 40, 1 << 40], DType::F32)
                .unwrap_err()
                .contains("overflows")
        );
        assert!(
            value_bytes(&[1 << 20, 1 << 20, 8], DType::F32)
                .unwrap_err()
                .contains("over the memory limit")
        );
        assert!(
            value_bytes(&[0, 1 << 62, 8], DType::F32)
                .unwrap_err()
                .contains("overflows")
        );
        assert_eq!(value_bytes(&[0, 1 << 20], DType::F32), Ok(0));
        assert!(
            value_bytes(&[0, 1 << 20, 1 << 20, 8], DType::F32)
                .unwrap_err()
                .contains("is empty, but its other axes would take 35184372088832 bytes")
        );
    }
}
