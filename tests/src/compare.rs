//! Tolerance comparison of tensors, as the ONNX backend test runner does it.

use smelt_ir::Tensor;

/// Checks `actual` against `expected`: same dtype and shape; floats within
/// `atol + rtol * |expected|` (NaN matching NaN, infinities exactly); others exactly.
pub fn compare(expected: &Tensor, actual: &Tensor, rtol: f64, atol: f64) -> Result<(), String> {
    if expected.dtype() != actual.dtype() {
        return Err(format!(
            "dtype {} expected, got {}",
            expected.dtype(),
            actual.dtype()
        ));
    }
    if expected.shape() != actual.shape() {
        return Err(format!(
            "shape {:?} expected, got {:?}",
            expected.shape(),
            actual.shape()
        ));
    }
    if expected.dtype().is_float() {
        let (e, a) = (expected.to_f64(), actual.to_f64());
        let mut worst: Option<(usize, f64)> = None;
        let mut bad = 0usize;
        for (i, (&x, &y)) in e.iter().zip(&a).enumerate() {
            let ok = if x.is_nan() || y.is_nan() {
                x.is_nan() && y.is_nan()
            } else if x.is_infinite() || y.is_infinite() {
                x == y
            } else {
                (x - y).abs() <= atol + rtol * x.abs()
            };
            if !ok {
                bad += 1;
                let err = (x - y).abs();
                if worst.is_none_or(|(_, w)| err > w || err.is_nan()) {
                    worst = Some((i, err));
                }
            }
        }
        if let Some((i, _)) = worst {
            return Err(format!(
                "{bad} of {} values differ; worst at {i}: expected {}, got {}",
                e.len(),
                e[i],
                a[i]
            ));
        }
        Ok(())
    } else {
        let (e, a) = (expected.to_i64(), actual.to_i64());
        match e.iter().zip(&a).position(|(x, y)| x != y) {
            Some(i) => Err(format!(
                "{} of {} values differ; first at {i}: expected {}, got {}",
                e.iter().zip(&a).filter(|(x, y)| x != y).count(),
                e.len(),
                e[i],
                a[i]
            )),
            None => Ok(()),
        }
    }
}
