//! Reading and writing NumPy `.npy` files (format versions 1 to 3, little-endian, C order).

use crate::tensor::{ElemType, HostTensor};
use std::path::Path;
use thiserror::Error;

/// Why a `.npy` file could not be read or written.
#[derive(Debug, Error)]
pub enum NpyError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a valid .npy file: {reason}")]
    Format { path: String, reason: String },
    #[error("{path}: {reason}")]
    Unsupported { path: String, reason: String },
}

const MAGIC: &[u8] = b"\x93NUMPY";

fn descr(e: ElemType) -> Option<&'static str> {
    Some(match e {
        ElemType::F16 => "<f2",
        ElemType::F32 => "<f4",
        ElemType::F64 => "<f8",
        ElemType::I8 => "|i1",
        ElemType::I16 => "<i2",
        ElemType::I32 => "<i4",
        ElemType::I64 => "<i8",
        ElemType::U8 => "|u1",
        ElemType::U16 => "<u2",
        ElemType::U32 => "<u4",
        ElemType::U64 => "<u8",
        ElemType::Bool => "|b1",
        ElemType::BF16 => return None,
    })
}

fn elem_of(d: &str) -> Option<ElemType> {
    let norm = d.replace('=', "<");
    ElemType::ALL.into_iter().find(|&e| {
        descr(e).is_some_and(|x| x == norm || (x.starts_with('|') && norm[1..] == x[1..]))
    })
}

/// Extracts the value of `'key':` from the header dict text.
fn header_field<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("'{key}'");
    let at = header.find(&pat)? + pat.len();
    let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else if let Some(quoted) = rest.strip_prefix('\'') {
        quoted.find('\'')? + 2
    } else {
        rest.find([',', '}']).unwrap_or(rest.len())
    };
    Some(rest[..end].trim())
}

/// Parses `.npy` bytes; `path` only labels errors.
pub fn parse_npy(bytes: &[u8], path: &str) -> Result<HostTensor, NpyError> {
    let fmt = |reason: &str| NpyError::Format {
        path: path.to_string(),
        reason: reason.to_string(),
    };
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(fmt("missing the \\x93NUMPY magic"));
    }
    let major = bytes[6];
    let (hlen, start): (usize, usize) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(fmt("truncated header"));
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(fmt(&format!("unknown format version {v}"))),
    };
    let header_end = start
        .checked_add(hlen)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| fmt("truncated header"))?;
    let header =
        std::str::from_utf8(&bytes[start..header_end]).map_err(|_| fmt("header is not text"))?;
    let d = header_field(header, "descr")
        .ok_or_else(|| fmt("header has no 'descr'"))?
        .trim_matches('\'');
    let elem = elem_of(d).ok_or_else(|| NpyError::Unsupported {
        path: path.to_string(),
        reason: format!(
            "dtype '{d}' is not supported (little-endian bool, int, uint and float only)"
        ),
    })?;
    if header_field(header, "fortran_order").ok_or_else(|| fmt("header has no 'fortran_order'"))?
        != "False"
    {
        return Err(NpyError::Unsupported {
            path: path.to_string(),
            reason: "Fortran-order arrays are not supported; save with C order".into(),
        });
    }
    let shape_text = header_field(header, "shape").ok_or_else(|| fmt("header has no 'shape'"))?;
    let inner = shape_text.trim_start_matches('(').trim_end_matches(')');
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim_end_matches('L')
                .parse::<usize>()
                .map_err(|_| fmt(&format!("bad shape {shape_text}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| fmt("shape overflows"))?;
    let need = count
        .checked_mul(elem.size_bytes())
        .ok_or_else(|| fmt("shape overflows"))?;
    let data = &bytes[header_end..];
    if data.len() != need {
        return Err(fmt(&format!(
            "data has {} bytes, shape {shape:?} of {} needs {need}",
            data.len(),
            elem.name()
        )));
    }
    Ok(HostTensor {
        elem,
        shape,
        bytes: data.to_vec(),
    })
}

/// Reads a `.npy` file.
pub fn read_npy(path: &Path) -> Result<HostTensor, NpyError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| NpyError::Io {
        path: shown.clone(),
        source,
    })?;
    parse_npy(&bytes, &shown)
}

/// Encodes a tensor as `.npy` (format 1.0).
pub fn encode_npy(t: &HostTensor) -> Result<Vec<u8>, String> {
    let d = descr(t.elem).ok_or_else(|| format!("{} cannot be stored in .npy", t.elem.name()))?;
    let shape = match t.shape.len() {
        0 => "()".to_string(),
        1 => format!("({},)", t.shape[0]),
        _ => format!(
            "({})",
            t.shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '{d}', 'fortran_order': False, 'shape': {shape}, }}");
    // Pad so that the data starts on a 64-byte boundary, the header ending in a newline.
    let total = MAGIC.len() + 4 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + t.bytes.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&t.bytes);
    Ok(out)
}

/// Writes a `.npy` file.
pub fn write_npy(path: &Path, t: &HostTensor) -> Result<(), NpyError> {
    let shown = path.display().to_string();
    let bytes = encode_npy(t).map_err(|reason| NpyError::Unsupported {
        path: shown.clone(),
        reason,
    })?;
    std::fs::write(path, bytes).map_err(|source| NpyError::Io {
        path: shown,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_npy_dtype() {
        for elem in ElemType::ALL.into_iter().filter(|&e| descr(e).is_some()) {
            for shape in [vec![], vec![3], vec![2, 3]] {
                let n: usize = shape.iter().product();
                let bytes: Vec<u8> = (0..n * elem.size_bytes())
                    .map(|i| {
                        if elem == ElemType::Bool {
                            (i % 2) as u8
                        } else {
                            i as u8
                        }
                    })
                    .collect();
                let t = HostTensor {
                    elem,
                    shape: shape.clone(),
                    bytes,
                };
                let back = parse_npy(&encode_npy(&t).unwrap(), "mem").unwrap();
                assert_eq!(back, t);
            }
        }
    }

    #[test]
    fn rejects_truncated_data() {
        let t = HostTensor {
            elem: ElemType::F32,
            shape: vec![4],
            bytes: vec![0; 16],
        };
        let mut b = encode_npy(&t).unwrap();
        b.truncate(b.len() - 1);
        let e = parse_npy(&b, "x.npy").unwrap_err().to_string();
        assert!(e.contains("data has 15 bytes"), "{e}");
    }
}
