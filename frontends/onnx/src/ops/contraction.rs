//! Contraction ONNX ops: MatMul, Gemm (decomposed), Conv, ConvTranspose, MatMulInteger, Einsum.

use super::{Handler, one};
use crate::error::Result;
use crate::import::{Ctx, Node};
use smelt_ir::Compose as _;
use smelt_ir::op::{BinaryOp, ReduceKind};
use smelt_ir::{DType, Dim, Op, ValueId};

pub(super) const OPS: &[(&str, Handler)] = &[
    ("MatMul", matmul),
    ("Gemm", gemm),
    ("Conv", conv),
    ("ConvTranspose", conv_transpose),
    ("MatMulInteger", matmul_integer),
    ("Einsum", einsum),
];

fn matmul(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    one(cx.op(Op::MATMUL, &[n.input(0)?, n.input(1)?])?)
}

/// `alpha * A' B' + beta * C` as MatMul, scale and bias add.
fn gemm(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let (a, b) = (n.input(0)?, n.input(1)?);
    if cx.rank(a) != 2 || cx.rank(b) != 2 {
        return Err(n.err(format!(
            "A and B must be 2-D, got {} and {}",
            cx.ty(a),
            cx.ty(b)
        )));
    }
    let (trans_a, trans_b) = (n.int("transA", 0)? != 0, n.int("transB", 0)? != 0);
    let mut y = cx.op(Op::MatMul { trans_a, trans_b }, &[a, b])?;
    let alpha = n.float("alpha", 1.0)? as f64;
    if alpha != 1.0 {
        y = cx.binary_scalar(BinaryOp::Mul, y, alpha)?;
    }
    if let Some(c) = n.opt_input(2) {
        let beta = n.float("beta", 1.0)? as f64;
        let c = if beta != 1.0 {
            cx.binary_scalar(BinaryOp::Mul, c, beta)?
        } else {
            c
        };
        y = cx.binary(BinaryOp::Add, y, c)?;
    }
    one(y)
}

/// Explicit begin/end pads from `pads` or `auto_pad`.
pub(super) fn resolve_pads(
    n: &Node,
    in_spatial: &[usize],
    kernel: &[usize],
    strides: &[usize],
    dilations: &[usize],
) -> Result<Vec<usize>> {
    let s = kernel.len();
    let auto = n.string("auto_pad", "NOTSET")?;
    match auto.as_str() {
        "NOTSET" => {
            let pads = n.ints("pads")?.unwrap_or_else(|| vec![0; 2 * s]);
            if pads.len() != 2 * s || pads.iter().any(|&p| p < 0) {
                return Err(n.err(format!(
                    "pads {pads:?} must be {} non-negative values",
                    2 * s
                )));
            }
            Ok(pads.into_iter().map(|p| p as usize).collect())
        }
        "VALID" => Ok(vec![0; 2 * s]),
        "SAME_UPPER" | "SAME_LOWER" => {
            if in_spatial.len() != s || kernel.contains(&0) {
                return Err(n.err(format!(
                    "kernel {kernel:?} does not fit spatial axes {in_spatial:?}"
                )));
            }
            let mut pads = vec![0; 2 * s];
            for d in 0..s {
                let out = in_spatial[d].div_ceil(strides[d]);
                let total = dilations[d]
                    .checked_mul(kernel[d] - 1)
                    .and_then(|v| v.checked_add((out.max(1) - 1).checked_mul(strides[d])?))
                    .and_then(|v| v.checked_add(1))
                    .ok_or_else(|| n.err(format!("the padded size along axis {d} overflows")))?
                    .saturating_sub(in_spatial[d]);
                let (small, big) = (total / 2, total - total / 2);
                (pads[d], pads[s + d]) = if auto == "SAME_UPPER" {
                    (small, big)
                } else {
                    (big, small)
                };
            }
            Ok(pads)
        }
        other => Err(n.err(format!("unknown auto_pad '{other}'"))),
    }
}

/// `strides` and `dilations` attributes with their default of ones.
pub(super) fn window_attr(n: &Node, name: &str, s: usize) -> Result<Vec<usize>> {
    let v = n.ints(name)?.unwrap_or_else(|| vec![1; s]);
    if v.len() != s || v.iter().any(|&x| x <= 0) {
        return Err(n.err(format!("{name} {v:?} must be {s} positive values")));
    }
    Ok(v.into_iter().map(|x| x as usize).collect())
}

fn conv(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let (x, w) = (n.input(0)?, n.input(1)?);
    let mut y = conv_of(cx, n, x, w)?;
    if let Some(b) = n.opt_input(2) {
        y = cx.add_channel_bias(y, b)?;
    }
    one(y)
}

/// Concrete shapes of a convolution's input and weight, of equal rank >= 3.
pub(super) fn conv_shapes(
    cx: &Ctx,
    n: &Node,
    x: ValueId,
    w: ValueId,
) -> Result<(Vec<usize>, Vec<usize>)> {
    let (xs, ws) = (cx.fixed_shape(x)?, cx.fixed_shape(w)?);
    if ws.len() < 3 || xs.len() != ws.len() {
        return Err(n.err(format!(
            "input {xs:?} and weight {ws:?} must have the same rank >= 3"
        )));
    }
    Ok((xs, ws))
}

/// The Conv core op for `x` and `w` with the node's window attributes.
pub(super) fn conv_of(cx: &mut Ctx, n: &Node, x: ValueId, w: ValueId) -> Result<ValueId> {
    let (xs, ws) = conv_shapes(cx, n, x, w)?;
    let s = ws.len() - 2;
    let kernel = ws[2..].to_vec();
    if let Some(k) = n.ints("kernel_shape")?
        && k.iter().map(|&v| v as usize).ne(kernel.iter().copied())
    {
        return Err(n.err(format!(
            "kernel_shape {k:?} differs from the weight's spatial dims {kernel:?}"
        )));
    }
    let strides = window_attr(n, "strides", s)?;
    let dilations = window_attr(n, "dilations", s)?;
    let pads = resolve_pads(n, &xs[2..], &kernel, &strides, &dilations)?;
    let group = n.int("group", 1)?.max(1) as usize;
    cx.op(
        Op::Conv {
            strides,
            pads,
            dilations,
            group,
        },
        &[x, w],
    )
}

fn conv_transpose(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let (x, w) = (n.input(0)?, n.input(1)?);
    let (xs, ws) = conv_shapes(cx, n, x, w)?;
    let s = ws.len() - 2;
    let kernel: Vec<usize> = ws[2..].to_vec();
    let strides = window_attr(n, "strides", s)?;
    let dilations = window_attr(n, "dilations", s)?;
    let group = n.int("group", 1)?.max(1) as usize;
    let op = n.ints("output_padding")?.unwrap_or_else(|| vec![0; s]);
    if op.len() != s || op.iter().any(|&v| v < 0) {
        return Err(n.err(format!(
            "output_padding {op:?} must be {s} non-negative values"
        )));
    }
    let mut output_padding: Vec<usize> = op.into_iter().map(|v| v as usize).collect();
    if xs[2..].contains(&0) || kernel.contains(&0) {
        return Err(n.err(format!(
            "input {xs:?} and weight {ws:?} must have no empty spatial axis"
        )));
    }
    // The size before padding is cut: checked, since strides and dilations are attributes.
    let full_size = |d: usize, extra: usize| -> Result<usize> {
        strides[d]
            .checked_mul(xs[2 + d] - 1)
            .and_then(|v| v.checked_add(extra))
            .and_then(|v| v.checked_add((kernel[d] - 1).checked_mul(dilations[d])?))
            .and_then(|v| v.checked_add(1))
            .ok_or_else(|| n.err(format!("the output size along axis {d} overflows")))
    };
    let auto = n.string("auto_pad", "NOTSET")?;
    let pads = if let Some(out_shape) = n.ints("output_shape")? {
        if out_shape.len() < s || out_shape.iter().any(|&v| v < 0) {
            return Err(n.err(format!(
                "output_shape {out_shape:?} must end with {s} non-negative sizes"
            )));
        }
        let out_sp: Vec<usize> = out_shape
            .iter()
            .rev()
            .take(s)
            .rev()
            .map(|&v| v as usize)
            .collect();
        let mut pads = vec![0; 2 * s];
        for d in 0..s {
            let full = full_size(d, output_padding[d])?;
            let total = full.saturating_sub(out_sp[d]);
            if full < out_sp[d] {
                output_padding[d] += out_sp[d] - full;
            }
            let (small, big) = (total / 2, total - total / 2);
            (pads[d], pads[s + d]) = if auto == "SAME_LOWER" {
                (big, small)
            } else {
                (small, big)
            };
        }
        pads
    } else if auto == "SAME_UPPER" || auto == "SAME_LOWER" {
        let mut pads = vec![0; 2 * s];
        for d in 0..s {
            let full = full_size(d, output_padding[d])?;
            let total = full.saturating_sub(xs[2 + d].saturating_mul(strides[d]));
            let (small, big) = (total / 2, total - total / 2);
            (pads[d], pads[s + d]) = if auto == "SAME_UPPER" {
                (small, big)
            } else {
                (big, small)
            };
        }
        pads
    } else if auto == "VALID" {
        vec![0; 2 * s]
    } else {
        let p = n.ints("pads")?.unwrap_or_else(|| vec![0; 2 * s]);
        if p.len() != 2 * s || p.iter().any(|&v| v < 0) {
            return Err(n.err(format!("pads {p:?} must be {} non-negative values", 2 * s)));
        }
        p.into_iter().map(|v| v as usize).collect()
    };
    let mut y = cx.op(
        Op::ConvTranspose {
            strides,
            pads,
            dilations,
            group,
            output_padding,
        },
        &[x, w],
    )?;
    if let Some(b) = n.opt_input(2) {
        y = cx.add_channel_bias(y, b)?;
    }
    one(y)
}

/// Integer matmul with zero points, accumulated in i32.
fn matmul_integer(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let a = cx.cast(n.input(0)?, DType::I32)?;
    let b = cx.cast(n.input(1)?, DType::I32)?;
    let a = match n.opt_input(2) {
        Some(z) => {
            let z = cx.cast(z, DType::I32)?;
            // A per-row zero point of shape [M] applies along rows.
            let z = if cx.rank(z) == 1 && cx.rank(a) >= 2 {
                let len = cx.ty(z).shape[0].clone();
                cx.reshape(z, vec![len, Dim::Fixed(1)])?
            } else {
                z
            };
            cx.binary(BinaryOp::Sub, a, z)?
        }
        None => a,
    };
    let b = match n.opt_input(3) {
        Some(z) => {
            let z = cx.cast(z, DType::I32)?;
            cx.binary(BinaryOp::Sub, b, z)?
        }
        None => b,
    };
    one(cx.op(Op::MATMUL, &[a, b])?)
}

/// Einsum by transposes, broadcasting multiplies and sums: each operand is
/// aligned to a common axis order (all letters), multiplied, and summed over the
/// letters missing from the output. Simple and exact; fusion recovers speed later.
fn einsum(cx: &mut Ctx, n: &Node) -> Result<Vec<ValueId>> {
    let eq: String = n
        .string("equation", "")?
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let inputs: Vec<ValueId> = n.inputs.iter().flatten().copied().collect();
    let (lhs, rhs) = match eq.split_once("->") {
        Some((l, r)) => (l.to_string(), Some(r.to_string())),
        None => (eq.clone(), None),
    };
    let terms: Vec<&str> = lhs.split(',').collect();
    if terms.len() != inputs.len() {
        return Err(n.err(format!(
            "equation '{eq}' names {} operands, got {}",
            terms.len(),
            inputs.len()
        )));
    }
    if eq.contains("...") {
        return Err(n.err("ellipsis in einsum equations is not supported"));
    }
    let mut letters: Vec<char> = Vec::new();
    for t in &terms {
        for c in t.chars() {
            if !c.is_ascii_alphabetic() {
                return Err(n.err(format!("bad character '{c}' in equation '{eq}'")));
            }
            if !letters.contains(&c) {
                letters.push(c);
            }
        }
    }
    let out: Vec<char> = match rhs {
        Some(r) => r.chars().collect(),
        None => {
            let mut v: Vec<char> = letters
                .iter()
                .copied()
                .filter(|c| lhs.matches(*c).count() == 1)
                .collect();
            v.sort_unstable();
            v
        }
    };
    for (i, c) in out.iter().enumerate() {
        if !letters.contains(c) {
            return Err(n.err(format!(
                "output letter '{c}' of equation '{eq}' appears in no operand"
            )));
        }
        if out[..i].contains(c) {
            return Err(n.err(format!(
                "output letter '{c}' of equation '{eq}' appears twice"
            )));
        }
    }
    // Common order: output letters first, then the summed ones.
    let mut order = out.clone();
    order.extend(letters.iter().filter(|c| !out.contains(c)));
    let mut sizes = std::collections::HashMap::new();
    let mut acc: Option<ValueId> = None;
    for (t, &x) in terms.iter().zip(&inputs) {
        let chars: Vec<char> = t.chars().collect();
        let shape = cx.fixed_shape(x)?;
        if shape.len() != chars.len() {
            return Err(n.err(format!(
                "term '{t}' has {} letters but the operand has rank {}",
                chars.len(),
                shape.len()
            )));
        }
        let mut x = x;
        // A repeated letter within a term takes the diagonal.
        let mut uniq: Vec<char> = Vec::new();
        for (i, &c) in chars.iter().enumerate() {
            if let Some(j) = uniq.iter().position(|&u| u == c) {
                let _ = (i, j);
                return Err(n.err(format!(
                    "repeated letter '{c}' within a term is not supported"
                )));
            }
            uniq.push(c);
            if let Some(&prev) = sizes.get(&c)
                && prev != shape[i]
                && prev != 1
                && shape[i] != 1
            {
                return Err(n.err(format!("letter '{c}' has sizes {prev} and {}", shape[i])));
            }
            let e = sizes.entry(c).or_insert(shape[i]);
            *e = (*e).max(shape[i]);
        }
        let present: Vec<char> = order.iter().copied().filter(|c| uniq.contains(c)).collect();
        let perm: Vec<usize> = present
            .iter()
            .map(|c| uniq.iter().position(|u| u == c).expect("present"))
            .collect();
        x = cx.transpose(x, perm)?;
        let full: Vec<usize> = order
            .iter()
            .map(|c| uniq.iter().position(|u| u == c).map_or(1, |p| shape[p]))
            .collect();
        x = cx.reshape_fixed(x, &full)?;
        acc = Some(match acc {
            None => x,
            Some(a) => cx.binary(BinaryOp::Mul, a, x)?,
        });
    }
    let mut y = acc.ok_or_else(|| n.err("needs at least one operand"))?;
    let summed: Vec<usize> = (out.len()..order.len()).collect();
    if !summed.is_empty() {
        y = cx.reduce(ReduceKind::Sum, y, summed, false)?;
    }
    // Broadcast letters that appeared only with size 1 still need their full size.
    let want: Vec<Dim> = out.iter().map(|c| Dim::Fixed(sizes[c])).collect();
    if cx.ty(y).shape != want {
        y = cx.op(Op::Expand { shape: want }, &[y])?;
    }
    one(y)
}
