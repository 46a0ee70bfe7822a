//! Recurrent ONNX ops (RNN, GRU, LSTM), unrolled over the (static) sequence length
//! into MatMul and elementwise core ops. The input projection of all time steps is
//! one MatMul; each step adds the recurrent MatMul and the gate arithmetic.

use super::Handler;
use super::layout::slice_axis;
use crate::error::Result;
use crate::import::{Ctx, Node};
use smelt_ir::Compose as _;
use smelt_ir::op::{BinaryOp, UnaryOp};
use smelt_ir::{Dim, Op, ValueId};

pub(super) const OPS: &[(&str, Handler)] = &[("RNN", rnn), ("GRU", gru), ("LSTM", lstm)];

#[derive(Clone, Copy, PartialEq)]
enum Cell {
    Rnn,
    Gru,
    Lstm,
}

impl Cell {
    fn gates(self) -> usize {
        match self {
            Cell::Rnn => 1,
            Cell::Gru => 3,
            Cell::Lstm => 4,
        }
    }
    fn default_activations(self) -> &'static [&'static str] {
        match self {
            Cell::Rnn => &["Tanh"],
            Cell::Gru => &["Sigmoid", "Tanh"],
            Cell::Lstm => &["Sigmoid", "Tanh", "Tanh"],
        }
    }
}

struct Activation {
    name: String,
    alpha: Option<f64>,
    beta: Option<f64>,
}

fn activate(cx: &mut Ctx, n: &Node, a: &Activation, x: ValueId) -> Result<ValueId> {
    match a.name.as_str() {
        "Sigmoid" => cx.unary(UnaryOp::Sigmoid, x),
        "Tanh" => cx.unary(UnaryOp::Tanh, x),
        "Relu" => cx.binary_scalar(BinaryOp::Max, x, 0.0),
        "Affine" => {
            let m = cx.binary_scalar(BinaryOp::Mul, x, a.alpha.unwrap_or(1.0))?;
            cx.binary_scalar(BinaryOp::Add, m, a.beta.unwrap_or(0.0))
        }
        "LeakyRelu" => {
            let m = cx.binary_scalar(BinaryOp::Mul, x, a.alpha.unwrap_or(0.01))?;
            let zero = cx.scalar_like(x, 0.0);
            let neg = cx.binary(BinaryOp::Less, x, zero)?;
            cx.op(Op::Select, &[neg, m, x])
        }
        "HardSigmoid" => {
            let m = cx.binary_scalar(BinaryOp::Mul, x, a.alpha.unwrap_or(0.2))?;
            let m = cx.binary_scalar(BinaryOp::Add, m, a.beta.unwrap_or(0.5))?;
            let m = cx.binary_scalar(BinaryOp::Max, m, 0.0)?;
            cx.binary_scalar(BinaryOp::Min, m, 1.0)
        }
        "ScaledTanh" => {
            let m = cx.binary_scalar(BinaryOp::Mul, x, a.beta.unwrap_or(1.0))?;
            let t = cx.unary(UnaryOp::Tanh, m)?;
            cx.binary_scalar(BinaryOp::Mul, t, a.alpha.unwrap_or(1.0))
        }
        "Softsign" => {
            let ab = cx.unary(UnaryOp::Abs, x)?;
            let d = cx.binary_scalar(BinaryOp::Add, ab, 1.0)?;
            cx.binary(BinaryOp::Div, x, d)
        }
        "Softplus" => {
            let e = cx.unary(UnaryOp::Exp, x)?;
            let e1 = cx.binary_scalar(BinaryOp::Add, e, 1.0)?;
            cx.unary(UnaryOp::Log, e1)
        }
        other => Err(n.err(format!("activation '{other}' is not supported"))),
    }
}

/// Row `d` of a `[D, ...]` tensor without its leading axis.
fn direction_slice(cx: &mut Ctx, v: ValueId, d: usize) -> Result<ValueId> {
    let s = slice_axis(cx, v, 0, d as i64, d as i64 + 1)?;
    let shape: Vec<Dim> = cx.ty(s).shape[1..].to_vec();
    cx.reshape(s, shape)
}

fn gate(cx: &mut Ctx, v: ValueId, i: usize, h: usize) -> Result<ValueId> {
    let axis = cx.rank(v) - 1;
    slice_axis(cx, v, axis, (i * h) as i64, ((i + 1) * h) as i64)
}

fn clip(cx: &mut Ctx, v: ValueId, limit: Option<f64>) -> Result<ValueId> {
    match limit {
        Some(c) => {
            let lo = cx.binary_scalar(BinaryOp::Max, v, -c)?;
            cx.binary_scalar(BinaryOp::Min, lo, c)
        }
        None => Ok(v),
    }
}

fn recurrent(cx: &mut Ctx, n: &Node, cell: Cell) -> Result<Vec<ValueId>> {
    let layout = n.int("layout", 0)?;
    let mut x = n.input(0)?;
    if layout != 0 {
        x = cx.transpose(x, vec![1, 0, 2])?;
    }
    let xs = cx.fixed_shape(x)?;
    if xs.len() != 3 {
        return Err(n.err(format!("X must be 3-D, got {xs:?}")));
    }
    let (seq, batch) = (xs[0], xs[1]);
    let (w, r) = (n.input(1)?, n.input(2)?);
    let ws = cx.fixed_shape(w)?;
    let g = cell.gates();
    let h = match n.opt_int("hidden_size")? {
        Some(h) => usize::try_from(h)
            .ok()
            .filter(|&h| h > 0 && h.checked_mul(2 * g).is_some())
            .ok_or_else(|| n.err(format!("hidden_size {h} must be a positive size")))?,
        None => ws.get(1).copied().unwrap_or(0) / g,
    };
    let dirs = match n.string("direction", "forward")?.as_str() {
        "forward" => vec![false],
        "reverse" => vec![true],
        "bidirectional" => vec![false, true],
        other => return Err(n.err(format!("unknown direction '{other}'"))),
    };
    if ws.len() != 3 || ws[0] != dirs.len() || ws[1] != g * h {
        return Err(n.err(format!(
            "W has shape {ws:?}, expected [{}, {}, input]",
            dirs.len(),
            g * h
        )));
    }
    let rs = cx.fixed_shape(r)?;
    if rs != [dirs.len(), g * h, h] {
        return Err(n.err(format!(
            "R has shape {rs:?}, expected [{}, {}, {h}]",
            dirs.len(),
            g * h
        )));
    }
    if let Some(b) = n.opt_input(3) {
        let bs = cx.fixed_shape(b)?;
        if bs != [dirs.len(), 2 * g * h] {
            return Err(n.err(format!(
                "B has shape {bs:?}, expected [{}, {}]",
                dirs.len(),
                2 * g * h
            )));
        }
    }
    if let Some(sl) = n.opt_input(4) {
        let lens = cx.require_const(sl, "sequence_lens")?.to_i64();
        if lens.iter().any(|&l| l != seq as i64) {
            return Err(n.err(format!(
                "sequence_lens {lens:?} shorter than the sequence ({seq}) are not supported"
            )));
        }
    }
    let names = n.strings("activations")?.unwrap_or_default();
    let alphas = n.floats("activation_alpha")?.unwrap_or_default();
    let betas = n.floats("activation_beta")?.unwrap_or_default();
    let per_dir = cell.default_activations().len();
    let acts: Vec<Activation> = (0..per_dir * dirs.len())
        .map(|i| Activation {
            name: names
                .get(i)
                .cloned()
                .unwrap_or_else(|| cell.default_activations()[i % per_dir].to_string()),
            alpha: alphas.get(i).map(|&v| v as f64),
            beta: betas.get(i).map(|&v| v as f64),
        })
        .collect();
    let clip_limit = n.opt_float("clip")?.map(|c| c as f64);
    let input_forget = n.int("input_forget", 0)? != 0;
    let linear_before_reset = n.int("linear_before_reset", 0)? != 0;
    let initial = |cx: &mut Ctx, idx: usize| -> Result<Option<ValueId>> {
        match n.opt_input(idx) {
            Some(v) if layout != 0 => Ok(Some(cx.transpose(v, vec![1, 0, 2])?)),
            other => Ok(other),
        }
    };
    let (init_h, init_c) = (
        initial(cx, 5)?,
        if cell == Cell::Lstm {
            initial(cx, 6)?
        } else {
            None
        },
    );
    let mut ys_per_dir = Vec::new();
    let mut last_h = Vec::new();
    let mut last_c = Vec::new();
    for (d, &reverse) in dirs.iter().enumerate() {
        let act = &acts[d * per_dir..(d + 1) * per_dir];
        let wd = direction_slice(cx, w, d)?;
        let wt = cx.transpose(wd, vec![1, 0])?;
        let rd = direction_slice(cx, r, d)?;
        let rt = cx.transpose(rd, vec![1, 0])?;
        let xw = cx.op(Op::MATMUL, &[x, wt])?;
        let (wb, rb) = match n.opt_input(3) {
            Some(b) => {
                let bd = direction_slice(cx, b, d)?;
                (
                    Some(slice_axis(cx, bd, 0, 0, (g * h) as i64)?),
                    Some(slice_axis(cx, bd, 0, (g * h) as i64, (2 * g * h) as i64)?),
                )
            }
            None => (None, None),
        };
        // Biases of all gates go into the input projection, except GRU's recurrent
        // candidate bias under linear_before_reset, which multiplies with the reset gate.
        let xw = match (wb, rb) {
            (Some(wb), Some(rb)) if !(cell == Cell::Gru && linear_before_reset) => {
                let b = cx.binary(BinaryOp::Add, wb, rb)?;
                cx.binary(BinaryOp::Add, xw, b)?
            }
            (Some(wb), Some(rb)) => {
                let rb_zr = slice_axis(cx, rb, 0, 0, (2 * h) as i64)?;
                let rb_h = gate(cx, rb, 2, h)?;
                let zeros = cx.binary_scalar(BinaryOp::Mul, rb_h, 0.0)?;
                let rb_adj = cx.op(Op::Concat { axis: 0 }, &[rb_zr, zeros])?;
                let b = cx.binary(BinaryOp::Add, wb, rb_adj)?;
                cx.binary(BinaryOp::Add, xw, b)?
            }
            _ => xw,
        };
        let rbh = match (cell, linear_before_reset, n.opt_input(3)) {
            (Cell::Gru, true, Some(b)) => {
                let bd = direction_slice(cx, b, d)?;
                Some(slice_axis(cx, bd, 0, (5 * h) as i64, (6 * h) as i64)?)
            }
            _ => None,
        };
        let peep = match (cell, n.opt_input(7)) {
            (Cell::Lstm, Some(p)) => {
                let pd = direction_slice(cx, p, d)?;
                Some((
                    gate(cx, pd, 0, h)?,
                    gate(cx, pd, 1, h)?,
                    gate(cx, pd, 2, h)?,
                ))
            }
            _ => None,
        };
        let zeros_state = |cx: &mut Ctx| -> Result<ValueId> {
            let z = cx.constant(
                smelt_ir::Tensor::full(cx.dtype(x), vec![batch, h], 0.0)
                    .map_err(|e| n.err(e.to_string()))?,
            );
            Ok(z)
        };
        let mut hs = match init_h {
            Some(v) => direction_slice(cx, v, d)?,
            None => zeros_state(cx)?,
        };
        let mut cs = match init_c {
            Some(v) => direction_slice(cx, v, d)?,
            None => zeros_state(cx)?,
        };
        let mut outputs = vec![hs; seq];
        let steps: Vec<usize> = if reverse {
            (0..seq).rev().collect()
        } else {
            (0..seq).collect()
        };
        for t in steps {
            let xt = slice_axis(cx, xw, 0, t as i64, t as i64 + 1)?;
            let xt = cx.reshape_fixed(xt, &[batch, g * h])?;
            let hr = cx.op(Op::MATMUL, &[hs, rt])?;
            match cell {
                Cell::Rnn => {
                    let pre = cx.binary(BinaryOp::Add, xt, hr)?;
                    let pre = clip(cx, pre, clip_limit)?;
                    hs = activate(cx, n, &act[0], pre)?;
                }
                Cell::Gru => {
                    let sum = cx.binary(BinaryOp::Add, xt, hr)?;
                    let z = gate(cx, sum, 0, h)?;
                    let z = clip(cx, z, clip_limit)?;
                    let z = activate(cx, n, &act[0], z)?;
                    let rg = gate(cx, sum, 1, h)?;
                    let rg = clip(cx, rg, clip_limit)?;
                    let rg = activate(cx, n, &act[0], rg)?;
                    let xh = gate(cx, xt, 2, h)?;
                    let rh_w = gate(cx, rt, 2, h)?;
                    let cand = if linear_before_reset {
                        let hrh = gate(cx, hr, 2, h)?;
                        let hrh = match rbh {
                            Some(b) => cx.binary(BinaryOp::Add, hrh, b)?,
                            None => hrh,
                        };
                        let gated = cx.binary(BinaryOp::Mul, rg, hrh)?;
                        cx.binary(BinaryOp::Add, xh, gated)?
                    } else {
                        let rhs = cx.binary(BinaryOp::Mul, rg, hs)?;
                        let m = cx.op(Op::MATMUL, &[rhs, rh_w])?;
                        cx.binary(BinaryOp::Add, xh, m)?
                    };
                    let cand = clip(cx, cand, clip_limit)?;
                    let cand = activate(cx, n, &act[1], cand)?;
                    // H = (1 - z) * cand + z * H  =  cand + z * (H - cand)
                    let diff = cx.binary(BinaryOp::Sub, hs, cand)?;
                    let zd = cx.binary(BinaryOp::Mul, z, diff)?;
                    hs = cx.binary(BinaryOp::Add, cand, zd)?;
                }
                Cell::Lstm => {
                    let sum = cx.binary(BinaryOp::Add, xt, hr)?;
                    let mut i = gate(cx, sum, 0, h)?;
                    let o = gate(cx, sum, 1, h)?;
                    let mut f = gate(cx, sum, 2, h)?;
                    let c = gate(cx, sum, 3, h)?;
                    if let Some((pi, _, pf)) = peep {
                        let a = cx.binary(BinaryOp::Mul, pi, cs)?;
                        i = cx.binary(BinaryOp::Add, i, a)?;
                        let b = cx.binary(BinaryOp::Mul, pf, cs)?;
                        f = cx.binary(BinaryOp::Add, f, b)?;
                    }
                    let i = clip(cx, i, clip_limit)?;
                    let i = activate(cx, n, &act[0], i)?;
                    let f = if input_forget {
                        let one = cx.scalar_like(i, 1.0);
                        cx.binary(BinaryOp::Sub, one, i)?
                    } else {
                        let f = clip(cx, f, clip_limit)?;
                        activate(cx, n, &act[0], f)?
                    };
                    let c = clip(cx, c, clip_limit)?;
                    let c = activate(cx, n, &act[1], c)?;
                    let fc = cx.binary(BinaryOp::Mul, f, cs)?;
                    let ic = cx.binary(BinaryOp::Mul, i, c)?;
                    cs = cx.binary(BinaryOp::Add, fc, ic)?;
                    let mut o = o;
                    if let Some((_, po, _)) = peep {
                        let a = cx.binary(BinaryOp::Mul, po, cs)?;
                        o = cx.binary(BinaryOp::Add, o, a)?;
                    }
                    let o = clip(cx, o, clip_limit)?;
                    let o = activate(cx, n, &act[0], o)?;
                    let hc = activate(cx, n, &act[2], cs)?;
                    hs = cx.binary(BinaryOp::Mul, o, hc)?;
                }
            }
            outputs[t] = hs;
        }
        ys_per_dir.push(outputs);
        last_h.push(cx.reshape_fixed(hs, &[1, batch, h])?);
        last_c.push(cx.reshape_fixed(cs, &[1, batch, h])?);
    }
    let mut steps = Vec::with_capacity(seq);
    for t in 0..seq {
        let parts: Vec<ValueId> = ys_per_dir
            .iter()
            .map(|o| cx.reshape_fixed(o[t], &[1, 1, batch, h]))
            .collect::<Result<_>>()?;
        steps.push(if parts.len() == 1 {
            parts[0]
        } else {
            cx.op(Op::Concat { axis: 1 }, &parts)?
        });
    }
    let mut y = if steps.len() == 1 {
        steps[0]
    } else {
        cx.op(Op::Concat { axis: 0 }, &steps)?
    };
    let mut yh = if last_h.len() == 1 {
        last_h[0]
    } else {
        cx.op(Op::Concat { axis: 0 }, &last_h)?
    };
    let mut yc = if last_c.len() == 1 {
        last_c[0]
    } else {
        cx.op(Op::Concat { axis: 0 }, &last_c)?
    };
    if layout != 0 {
        y = cx.transpose(y, vec![2, 0, 1, 3])?;
        yh = cx.transpose(yh, vec![1, 0, 2])?;
        yc = cx.transpose(yc, vec![1, 0, 2])?;
    }
    let mut outs = vec![y, yh];
    if cell == Cell::Lstm {
        outs.push(yc);
    }
    Ok(outs)
}

fn rnn(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    recurrent(cx, n, Cell::Rnn)
}

fn gru(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    recurrent(cx, n, Cell::Gru)
}

fn lstm(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    recurrent(cx, n, Cell::Lstm)
}
