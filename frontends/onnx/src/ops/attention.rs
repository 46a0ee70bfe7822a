//! Attention (opsets 23 to 25) decomposed into MatMul, masks and a guarded softmax,
//! following the ONNX reference: Q and K scaled by sqrt(scale), optional softcap,
//! additive bias from the mask, causal frontier, sliding window and padding, and
//! zero output rows where every key is masked.

use super::Handler;
use crate::error::Result;
use crate::import::{Ctx, Node};
use crate::tensor::dtype_from_onnx;
use smelt_ir::Compose as _;
use smelt_ir::op::{BinaryOp, PadMode, ReduceKind, UnaryOp};
use smelt_ir::{DType, Dim, Op, Tensor, ValueId};

pub(super) const OPS: &[(&str, Handler)] = &[("Attention", attention)];

/// `[B, S, heads*size]` to `[B, heads, S, size]`.
fn split_heads(cx: &mut Ctx, n: &Node, x: ValueId, heads: usize) -> Result<ValueId> {
    let s = cx.fixed_shape(x)?;
    if heads == 0 || s[2] % heads != 0 {
        return Err(n.err(format!(
            "hidden size {} does not divide into {heads} heads",
            s[2]
        )));
    }
    let r = cx.reshape_fixed(x, &[s[0], s[1], heads, s[2] / heads])?;
    cx.transpose(r, vec![0, 2, 1, 3])
}

/// Repeats each head `reps` times in place: `[h0, h0, h1, h1, ...]`.
fn repeat_heads(cx: &mut Ctx, x: ValueId, reps: usize) -> Result<ValueId> {
    if reps == 1 {
        return Ok(x);
    }
    let s = cx.fixed_shape(x)?;
    let r = cx.reshape_fixed(x, &[s[0], s[1], 1, s[2], s[3]])?;
    let e = cx.op(
        Op::Expand {
            shape: [s[0], s[1], reps, s[2], s[3]].map(Dim::Fixed).to_vec(),
        },
        &[r],
    )?;
    cx.reshape_fixed(e, &[s[0], s[1] * reps, s[2], s[3]])
}

/// The import-time part of the bias: causal frontier, sliding window and padding, as
/// 0 / -inf of shape `[batch, 1, q, kv]`; `None` when none applies.
fn static_bias(
    batch: usize,
    q: usize,
    kv: usize,
    causal: bool,
    offsets: &[i64],
    window: (i64, i64),
    nonpad: Option<&[i64]>,
) -> Option<Vec<f64>> {
    if !causal && window == (-1, -1) && nonpad.is_none() {
        return None;
    }
    let mut bias = vec![0.0; batch * q * kv];
    for b in 0..batch {
        let offset = offsets[b.min(offsets.len() - 1)];
        for i in 0..q {
            for j in 0..kv {
                let pos = offset.saturating_add(i as i64);
                let diff = pos.saturating_sub(j as i64);
                let allowed = (!causal || j as i64 <= pos)
                    && (window.0 < 0 || diff <= window.0)
                    && (window.1 < 0 || diff.saturating_neg() <= window.1)
                    && nonpad.is_none_or(|np| (j as i64) < np[b]);
                if !allowed {
                    bias[(b * q + i) * kv + j] = f64::NEG_INFINITY;
                }
            }
        }
    }
    Some(bias)
}

fn attention(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let (mut q, mut k, mut v) = (n.input(0)?, n.input(1)?, n.input(2)?);
    let rank = cx.rank(q);
    if cx.rank(k) != rank || cx.rank(v) != rank || !(rank == 3 || rank == 4) {
        return Err(n.err("Q, K and V must all be 3-D or all 4-D"));
    }
    let dtype = cx.dtype(q);
    let (q_heads_attr, kv_heads_attr) = (n.opt_int("q_num_heads")?, n.opt_int("kv_num_heads")?);
    if rank == 3 {
        let (qh, kvh) = match (q_heads_attr, kv_heads_attr) {
            (Some(a), Some(b)) if a > 0 && b > 0 => (a as usize, b as usize),
            _ => return Err(n.err("3-D inputs need positive q_num_heads and kv_num_heads")),
        };
        q = split_heads(cx, n, q, qh)?;
        k = split_heads(cx, n, k, kvh)?;
        v = split_heads(cx, n, v, kvh)?;
    }
    let (past_k, past_v, nonpad) = (n.opt_input(4), n.opt_input(5), n.opt_input(6));
    if past_k.is_some() != past_v.is_some() {
        return Err(n.err("past_key and past_value must be given together"));
    }
    if nonpad.is_some() && past_k.is_some() {
        return Err(n.err("nonpad_kv_seqlen cannot be combined with past_key/past_value"));
    }
    for past in [past_k, past_v].into_iter().flatten() {
        if cx.rank(past) != 4 {
            return Err(n.err(format!(
                "past_key and past_value must be 4-D, got rank {}",
                cx.rank(past)
            )));
        }
    }
    let past_len = match past_k {
        Some(p) => cx.fixed_shape(p)?[2],
        None => 0,
    };
    if let (Some(pk), Some(pv)) = (past_k, past_v) {
        k = cx.op(Op::Concat { axis: 2 }, &[pk, k])?;
        v = cx.op(Op::Concat { axis: 2 }, &[pv, v])?;
    }
    let (present_k, present_v) = (k, v);
    let qs = cx.fixed_shape(q)?;
    let ks = cx.fixed_shape(k)?;
    let (batch, q_heads, q_len, head_size) = (qs[0], qs[1], qs[2], qs[3]);
    let (kv_heads, kv_len) = (ks[1], ks[2]);
    if kv_heads == 0 || q_heads % kv_heads != 0 {
        return Err(n.err(format!(
            "{q_heads} query heads cannot share {kv_heads} key/value heads"
        )));
    }
    k = repeat_heads(cx, k, q_heads / kv_heads)?;
    v = repeat_heads(cx, v, q_heads / kv_heads)?;
    let scale = match n.opt_float("scale")? {
        Some(s) => s as f64,
        None => 1.0 / (head_size as f64).sqrt(),
    };
    // Scale both sides by sqrt(scale), rounded to the input type as the reference does.
    let root = Tensor::scalar(dtype, scale.sqrt()).to_f64()[0];
    let qs_ = cx.binary_scalar(BinaryOp::Mul, q, root)?;
    let ks_ = cx.binary_scalar(BinaryOp::Mul, k, root)?;
    let kt = cx.transpose(ks_, vec![0, 1, 3, 2])?;
    let mut qk = cx.op(Op::MATMUL, &[qs_, kt])?;
    let softcap = n.float("softcap", 0.0)? as f64;
    if softcap > 0.0 {
        let d = cx.binary_scalar(BinaryOp::Div, qk, softcap)?;
        let t = cx.unary(UnaryOp::Tanh, d)?;
        qk = cx.binary_scalar(BinaryOp::Mul, t, softcap)?;
    }
    let qk_raw = qk;
    // The additive bias: the mask (padded to kv_len), then the import-time frontier.
    let mut bias: Option<ValueId> = None;
    if let Some(mask) = n.opt_input(3) {
        let mrank = cx.rank(mask);
        if mrank == 0 {
            return Err(n.err("attn_mask must have at least one axis"));
        }
        let mlen = cx.fixed_shape(mask)?.last().copied().unwrap_or(0);
        let is_bool = cx.dtype(mask).is_bool();
        let mask = if mlen < kv_len {
            let mut pads = vec![0i64; 2 * mrank];
            pads[2 * mrank - 1] = (kv_len - mlen) as i64;
            let fill = if is_bool {
                cx.scalar(DType::Bool, 0.0)
            } else {
                cx.scalar_like(mask, f64::NEG_INFINITY)
            };
            cx.op(
                Op::Pad {
                    pads,
                    mode: PadMode::Constant,
                },
                &[mask, fill],
            )?
        } else {
            mask
        };
        bias = Some(if is_bool {
            let zero = cx.scalar(dtype, 0.0);
            let ninf = cx.scalar(dtype, f64::NEG_INFINITY);
            cx.op(Op::Select, &[mask, zero, ninf])?
        } else {
            mask
        });
    }
    let causal = n.int("is_causal", 0)? != 0;
    let nonpad_values = match nonpad {
        Some(v) => Some(cx.require_ints(v, "nonpad_kv_seqlen")?),
        None => None,
    };
    if let Some(np) = &nonpad_values
        && np.len() != batch
    {
        return Err(n.err(format!(
            "nonpad_kv_seqlen has {} values, one per batch entry ({batch}) expected",
            np.len()
        )));
    }
    let offsets: Vec<i64> = match &nonpad_values {
        Some(np) => np.iter().map(|&l| l.saturating_sub(q_len as i64)).collect(),
        None => vec![past_len as i64],
    };
    let window = (
        n.int("left_window_size", -1)?,
        n.int("right_window_size", -1)?,
    );
    super::check_constant(n, &[batch, 1, q_len, kv_len], dtype)?;
    if let Some(values) = static_bias(
        batch,
        q_len,
        kv_len,
        causal,
        &offsets,
        window,
        nonpad_values.as_deref(),
    ) {
        let t = Tensor::from_f64(dtype, vec![batch, 1, q_len, kv_len], values)
            .map_err(|e| n.err(e.to_string()))?;
        let c = cx.constant(t);
        bias = Some(match bias {
            Some(b) => cx.binary(BinaryOp::Add, b, c)?,
            None => c,
        });
    }
    let qkb = match bias {
        Some(b) => cx.binary(BinaryOp::Add, qk, b)?,
        None => qk,
    };
    let x = match n.opt_int("softmax_precision")? {
        Some(code) => {
            let d = dtype_from_onnx(code as i32)
                .ok_or_else(|| n.err("unsupported softmax_precision"))?;
            cx.cast(qkb, d)?
        }
        None => qkb,
    };
    // Softmax that maps a row of -inf to zeros rather than NaN.
    let m = cx.reduce(ReduceKind::Max, x, vec![3], true)?;
    let ninf = cx.scalar_like(x, f64::NEG_INFINITY);
    let zero = cx.scalar_like(x, 0.0);
    let one = cx.scalar_like(x, 1.0);
    let all_masked = cx.binary(BinaryOp::Equal, m, ninf)?;
    let safe = cx.op(Op::Select, &[all_masked, zero, m])?;
    let shifted = cx.binary(BinaryOp::Sub, x, safe)?;
    let e = cx.unary(UnaryOp::Exp, shifted)?;
    let s = cx.reduce(ReduceKind::Sum, e, vec![3], true)?;
    let s_zero = cx.binary(BinaryOp::Equal, s, zero)?;
    let s = cx.op(Op::Select, &[s_zero, one, s])?;
    let mut p = cx.binary(BinaryOp::Div, e, s)?;
    if let Some(b) = bias {
        let bm = cx.reduce(ReduceKind::Max, b, vec![cx.rank(b) - 1], true)?;
        let bninf = cx.scalar_like(b, f64::NEG_INFINITY);
        let row_masked = cx.binary(BinaryOp::Equal, bm, bninf)?;
        let pz = cx.scalar_like(p, 0.0);
        p = cx.op(Op::Select, &[row_masked, pz, p])?;
    }
    let p = cx.cast(p, dtype)?;
    let mut y = cx.op(Op::MATMUL, &[p, v])?;
    if rank == 3 {
        let t = cx.transpose(y, vec![0, 2, 1, 3])?;
        let ts = cx.fixed_shape(t)?;
        y = cx.reshape_fixed(t, &[ts[0], ts[1], ts[2] * ts[3]])?;
    }
    let qk_out = match n.int("qk_matmul_output_mode", 0)? {
        0 | 1 => qk_raw,
        2 => qkb,
        3 => p,
        other => return Err(n.err(format!("qk_matmul_output_mode {other} is not defined"))),
    };
    let qk_out = cx.cast(qk_out, dtype)?;
    Ok(vec![y, present_k, present_v, qk_out])
}
