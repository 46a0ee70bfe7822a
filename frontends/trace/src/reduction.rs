//! Reductions on traced tensors: sums, means, extremes and products over axes, and the
//! index of the extreme.

use crate::tensor::Tensor;
use smelt_ir::{ArgKind, Compose, Op, ReduceKind};

macro_rules! reductions {
    ($($(#[$doc:meta])* $name:ident => $kind:ident),* $(,)?) => {$(
        $(#[$doc])*
        #[track_caller]
        pub fn $name(self, axes: &[i64], keep_dims: bool) -> Tensor<'t> {
            self.reduce(stringify!($name), ReduceKind::$kind, axes, keep_dims)
        }
    )*};
}

impl<'t> Tensor<'t> {
    reductions!(
        /// The sum over `axes` (negative count from the end).
        reduce_sum => Sum,
        /// The mean over `axes`.
        reduce_mean => Mean,
        /// The maximum over `axes`.
        reduce_max => Max,
        /// The minimum over `axes`.
        reduce_min => Min,
        /// The product over `axes`.
        reduce_prod => Prod,
    );

    #[track_caller]
    fn reduce(self, name: &str, kind: ReduceKind, axes: &[i64], keep_dims: bool) -> Tensor<'t> {
        self.tracer().record(name, &[self], |r, ids| {
            let rank = r.rank(ids[0]);
            let mut resolved = axes
                .iter()
                .map(|&a| r.axis(a, rank))
                .collect::<Result<Vec<_>, _>>()?;
            resolved.sort_unstable();
            if resolved.windows(2).any(|w| w[0] == w[1]) {
                return Err(format!("axes {axes:?} name an axis twice"));
            }
            r.reduce(kind, ids[0], resolved, keep_dims)
        })
    }

    /// The index (i64) of the first maximum along `axis`.
    #[track_caller]
    pub fn argmax(self, axis: i64, keep_dims: bool) -> Tensor<'t> {
        self.arg("argmax", ArgKind::Max, axis, keep_dims)
    }

    /// The index (i64) of the first minimum along `axis`.
    #[track_caller]
    pub fn argmin(self, axis: i64, keep_dims: bool) -> Tensor<'t> {
        self.arg("argmin", ArgKind::Min, axis, keep_dims)
    }

    #[track_caller]
    fn arg(self, name: &str, kind: ArgKind, axis: i64, keep_dims: bool) -> Tensor<'t> {
        self.tracer().record(name, &[self], |r, ids| {
            let axis = r.axis(axis, r.rank(ids[0]))?;
            r.op(
                Op::ArgReduce {
                    kind,
                    axis,
                    keep_dims,
                    select_last: false,
                },
                ids,
            )
        })
    }
}
