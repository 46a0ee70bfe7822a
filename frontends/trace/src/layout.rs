//! Layout ops on traced tensors: reshapes, transposes, slices, gathers, padding and
//! broadcasting to a shape.

use crate::tensor::{IntoShape, Tensor};
use crate::tracer::Recorder;
use smelt_ir::{Compose, Dim, Op, PadMode, ValueId};

/// One dim standing for `dims` laid end to end, when it can be written without arithmetic
/// on symbols: their product when all are fixed, or the one symbolic dim among sizes 1.
fn merged(dims: &[Dim]) -> Option<Dim> {
    if let Some(fixed) = smelt_ir::shape::fixed_shape(dims) {
        return Some(Dim::Fixed(fixed.iter().product()));
    }
    let mut symbolic = dims.iter().filter(|d| !d.is_one());
    let only = symbolic.next()?;
    symbolic.next().is_none().then(|| only.clone())
}

impl<'t> Tensor<'t> {
    /// The elements in a new shape of sizes; one entry may be -1, inferred from the rest
    /// (which needs a fixed input shape). See [`Tensor::reshape_dims`] for symbolic dims.
    #[track_caller]
    pub fn reshape(self, shape: &[i64]) -> Tensor<'t> {
        self.tracer().record("reshape", &[self], |r, ids| {
            let from = r.ty(ids[0]).shape.clone();
            let show = smelt_ir::infer::show_shape;
            if shape.iter().filter(|&&d| d == -1).count() > 1 || shape.iter().any(|&d| d < -1) {
                return Err(format!(
                    "shape {shape:?} may hold one -1 and sizes, nothing else"
                ));
            }
            let known = shape
                .iter()
                .filter(|&&d| d >= 0)
                .try_fold(1usize, |acc, &d| acc.checked_mul(d as usize))
                .ok_or_else(|| {
                    format!("shape {shape:?} has more elements than memory can address")
                })?;
            let dims = shape
                .iter()
                .map(|&d| {
                    if d >= 0 {
                        return Ok(Dim::Fixed(d as usize));
                    }
                    let total: usize = smelt_ir::shape::fixed_shape(&from)
                        .ok_or_else(|| {
                            format!(
                                "-1 needs a fixed input shape, not {}; use reshape_dims",
                                show(&from)
                            )
                        })?
                        .iter()
                        .product();
                    if known == 0 || !total.is_multiple_of(known) {
                        return Err(format!("cannot reshape {} to {shape:?}", show(&from)));
                    }
                    Ok(Dim::Fixed(total / known))
                })
                .collect::<Result<Vec<_>, String>>()?;
            r.reshape(ids[0], dims)
        })
    }

    /// The elements in a new shape of fixed and symbolic dims.
    #[track_caller]
    pub fn reshape_dims(self, shape: impl IntoShape) -> Tensor<'t> {
        let shape = shape.into_shape();
        self.tracer()
            .record("reshape", &[self], |r, ids| r.reshape(ids[0], shape))
    }

    /// A 2-D view: the axes before `axis` merged into rows, the rest into columns (ONNX
    /// `Flatten`).
    #[track_caller]
    pub fn flatten(self, axis: i64) -> Tensor<'t> {
        self.tracer().record("flatten", &[self], |r, ids| {
            let from = r.ty(ids[0]).shape.clone();
            let axis = if axis == from.len() as i64 {
                from.len()
            } else {
                r.axis(axis, from.len())?
            };
            let cannot = || {
                format!(
                    "cannot merge {} at axis {axis} without arithmetic on symbolic dims",
                    smelt_ir::infer::show_shape(&from)
                )
            };
            let rows = merged(&from[..axis]).ok_or_else(cannot)?;
            let cols = merged(&from[axis..]).ok_or_else(cannot)?;
            r.reshape(ids[0], vec![rows, cols])
        })
    }

    /// The axes permuted: axis `i` of the result is axis `perm[i]` of `self`.
    #[track_caller]
    pub fn transpose(self, perm: &[usize]) -> Tensor<'t> {
        self.tracer().record("transpose", &[self], |r, ids| {
            r.transpose(ids[0], perm.to_vec())
        })
    }

    /// Elements `start, start + step, ...` before `end` along `axis` (Python slice rules:
    /// negative positions count from the end, out-of-range ones are clamped).
    #[track_caller]
    pub fn slice(self, axis: i64, start: i64, end: i64, step: i64) -> Tensor<'t> {
        self.tracer().record("slice", &[self], |r, ids| {
            let rank = r.rank(ids[0]);
            let axis = r.axis(axis, rank)?;
            if step == 0 {
                return Err("step must not be 0".into());
            }
            r.op(Op::slice_along(rank, axis, start, end, step), ids)
        })
    }

    /// Slices of `self` along `axis` picked by integer `indices` (negative count from the end).
    #[track_caller]
    pub fn gather(self, indices: Tensor<'t>, axis: i64) -> Tensor<'t> {
        self.tracer().record("gather", &[self, indices], |r, ids| {
            let axis = r.axis(axis, r.rank(ids[0]))?;
            r.op(Op::Gather { axis }, ids)
        })
    }

    /// Without `axis`, which must have size 1.
    #[track_caller]
    pub fn squeeze(self, axis: i64) -> Tensor<'t> {
        self.tracer().record("squeeze", &[self], |r, ids| {
            let mut shape = r.ty(ids[0]).shape.clone();
            let axis = r.axis(axis, shape.len())?;
            if !shape[axis].is_one() {
                return Err(format!("axis {axis} has size {}, not 1", shape[axis]));
            }
            shape.remove(axis);
            r.reshape(ids[0], shape)
        })
    }

    /// With a new axis of size 1 at `axis` (up to the rank, or negative from the end of
    /// the result).
    #[track_caller]
    pub fn unsqueeze(self, axis: i64) -> Tensor<'t> {
        self.tracer().record("unsqueeze", &[self], |r, ids| {
            let mut shape = r.ty(ids[0]).shape.clone();
            let axis = r.axis(axis, shape.len() + 1)?;
            shape.insert(axis, Dim::Fixed(1));
            r.reshape(ids[0], shape)
        })
    }

    /// Broadcast to `shape` (NumPy rules).
    #[track_caller]
    pub fn expand(self, shape: impl IntoShape) -> Tensor<'t> {
        let shape = shape.into_shape();
        self.tracer()
            .record("expand", &[self], |r, ids| r.op(Op::Expand { shape }, ids))
    }

    /// Padded with `value`: one `(before, after)` pair per axis; negative counts crop.
    #[track_caller]
    pub fn pad(self, pads: &[(i64, i64)], value: f64) -> Tensor<'t> {
        self.tracer()
            .record("pad", &[self], |r, ids| pad(r, ids[0], pads, value))
    }
}

fn pad(
    r: &mut Recorder<'_>,
    x: ValueId,
    pads: &[(i64, i64)],
    value: f64,
) -> Result<ValueId, String> {
    let flat: Vec<i64> = pads
        .iter()
        .map(|p| p.0)
        .chain(pads.iter().map(|p| p.1))
        .collect();
    let v = r.scalar_like(x, value);
    r.op(
        Op::Pad {
            pads: flat,
            mode: PadMode::Constant,
        },
        &[x, v],
    )
}
