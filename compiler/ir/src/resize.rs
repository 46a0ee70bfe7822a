//! Resize's sampling along one axis, as ONNX's reference defines it: for each output
//! index, the input indices it reads and their weights. The interpreter combines them
//! over all axes; the CPU back end hands the two innermost axes' taps to the runtime's
//! separable resize kernel.

use crate::op::{CoordMode, NearestMode, Op, ResizeMode};

/// The input indices and weights that make up one output index of one axis.
pub type Taps = Vec<(usize, f64)>;

/// How a Resize samples, apart from its sizes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    pub mode: ResizeMode,
    pub coord: CoordMode,
    pub nearest: NearestMode,
    pub cubic_coeff: f64,
    pub exclude_outside: bool,
}

/// One axis of a resize.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResizeAxis {
    pub n_in: usize,
    pub n_out: usize,
    pub scale: f64,
    /// Crop-and-resize's region along the axis, as fractions of the input (start, end).
    pub roi: (f64, f64),
}

impl Sampling {
    /// The sampling of a `Resize` op.
    pub fn of(op: &Op) -> Option<Sampling> {
        match op {
            Op::Resize {
                mode,
                coord,
                nearest,
                cubic_coeff,
                exclude_outside,
                ..
            } => Some(Sampling {
                mode: *mode,
                coord: *coord,
                nearest: *nearest,
                cubic_coeff: *cubic_coeff,
                exclude_outside: *exclude_outside,
            }),
            _ => None,
        }
    }

    /// Per output index of `axis`: its taps, or `None` where crop-and-resize samples
    /// outside the input (the output is the extrapolation value there).
    pub fn taps(&self, axis: ResizeAxis) -> Vec<Option<Taps>> {
        (0..axis.n_out)
            .map(|o| self.taps_at(axis, o as f64))
            .collect()
    }

    fn taps_at(&self, axis: ResizeAxis, of: f64) -> Option<Taps> {
        let ResizeAxis {
            n_in,
            n_out,
            scale,
            roi: (s, e),
        } = axis;
        let src = match self.coord {
            CoordMode::HalfPixel => (of + 0.5) / scale - 0.5,
            CoordMode::HalfPixelSymmetric => {
                let adj = n_out as f64 / (scale * n_in as f64);
                let center = n_in as f64 / 2.0;
                let offset = center * (1.0 - adj);
                offset + (of + 0.5) / scale - 0.5
            }
            CoordMode::PytorchHalfPixel => {
                if n_out > 1 {
                    (of + 0.5) / scale - 0.5
                } else {
                    0.0
                }
            }
            // The output length is the unrounded `n_in * scale`, as the ONNX reference has it.
            CoordMode::AlignCorners => {
                let len = n_in as f64 * scale;
                if len > 1.0 {
                    of * (n_in as f64 - 1.0) / (len - 1.0)
                } else {
                    0.0
                }
            }
            CoordMode::Asymmetric => of / scale,
            CoordMode::TfCropAndResize => {
                if n_out > 1 {
                    s * (n_in as f64 - 1.0)
                        + of * (e - s) * (n_in as f64 - 1.0) / (n_out as f64 - 1.0)
                } else {
                    0.5 * (s + e) * (n_in as f64 - 1.0)
                }
            }
        };
        if self.coord == CoordMode::TfCropAndResize && (src < 0.0 || src > n_in as f64 - 1.0) {
            return None;
        }
        let last = n_in as i64 - 1;
        Some(match self.mode {
            ResizeMode::Nearest => {
                let i = match self.nearest {
                    NearestMode::RoundPreferFloor => {
                        if src.fract() == 0.5 {
                            src.floor()
                        } else {
                            src.round()
                        }
                    }
                    NearestMode::RoundPreferCeil => src.round(),
                    NearestMode::Floor => src.floor(),
                    NearestMode::Ceil => src.ceil(),
                } as i64;
                vec![(i.clamp(0, last) as usize, 1.0)]
            }
            ResizeMode::Linear => {
                let s = src.clamp(0.0, last as f64);
                let lo = s.floor() as i64;
                let hi = (lo + 1).min(last);
                let t = s - lo as f64;
                vec![(lo as usize, 1.0 - t), (hi as usize, t)]
            }
            ResizeMode::Cubic => {
                let base = src.floor() as i64;
                let w = cubic_weights(src - base as f64, self.cubic_coeff);
                let mut v: Vec<(i64, f64)> = (0..4).map(|k| (base - 1 + k as i64, w[k])).collect();
                if self.exclude_outside {
                    v.retain(|(i, _)| *i >= 0 && *i <= last);
                    let total: f64 = v.iter().map(|(_, w)| w).sum();
                    v.iter_mut().for_each(|(_, w)| *w /= total);
                }
                v.into_iter()
                    .map(|(i, w)| (i.clamp(0, last) as usize, w))
                    .collect()
            }
        })
    }
}

/// The cubic convolution kernel (coefficient `a`) at the four taps around a source
/// coordinate `t` past its floor.
fn cubic_weights(t: f64, a: f64) -> [f64; 4] {
    let w = |x: f64| {
        let x = x.abs();
        if x <= 1.0 {
            ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
            ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
        } else {
            0.0
        }
    };
    [w(t + 1.0), w(t), w(1.0 - t), w(2.0 - t)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linear(coord: CoordMode) -> Sampling {
        Sampling {
            mode: ResizeMode::Linear,
            coord,
            nearest: NearestMode::RoundPreferFloor,
            cubic_coeff: -0.75,
            exclude_outside: false,
        }
    }

    #[test]
    fn half_pixel_doubling_weighs_neighbours_a_quarter_and_three_quarters() {
        let axis = ResizeAxis {
            n_in: 2,
            n_out: 4,
            scale: 2.0,
            roi: (0.0, 1.0),
        };
        let taps: Vec<Taps> = linear(CoordMode::HalfPixel)
            .taps(axis)
            .into_iter()
            .map(Option::unwrap)
            .collect();
        // Sources -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to 1).
        assert_eq!(
            taps,
            vec![
                vec![(0, 1.0), (1, 0.0)],
                vec![(0, 0.75), (1, 0.25)],
                vec![(0, 0.25), (1, 0.75)],
                vec![(1, 1.0), (1, 0.0)],
            ]
        );
    }

    #[test]
    fn crop_and_resize_outside_the_input_has_no_taps() {
        let axis = ResizeAxis {
            n_in: 4,
            n_out: 3,
            scale: 0.75,
            roi: (-0.5, 0.5),
        };
        let taps = linear(CoordMode::TfCropAndResize).taps(axis);
        assert!(taps[0].is_none());
        assert!(taps[1].is_some() && taps[2].is_some());
    }
}
