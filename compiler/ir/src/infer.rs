//! Type and shape inference for every core op, with symbolic dims carried through.

use crate::dtype::DType;
use crate::op::{BinaryOp, Op, UnaryOp};
use crate::shape::{Dim, Shape, TensorType};

/// Inference failure reason; the caller attaches the node and op.
pub type InferResult<T> = std::result::Result<T, String>;

/// NumPy broadcasting of several shapes.
pub fn broadcast(shapes: &[&[Dim]]) -> InferResult<Shape> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = Vec::with_capacity(rank);
    for axis in 0..rank {
        let mut dim = Dim::Fixed(1);
        for s in shapes {
            let Some(d) = (axis + s.len()).checked_sub(rank).map(|i| &s[i]) else {
                continue;
            };
            dim = match (&dim, d) {
                (_, d) if d.is_one() => dim,
                (cur, d) if cur.is_one() => d.clone(),
                (a, b) if a == b => dim,
                (Dim::Sym(_), Dim::Fixed(_)) => d.clone(),
                (Dim::Fixed(_), Dim::Sym(_)) => dim,
                (Dim::Sym(_), Dim::Sym(_)) => dim,
                (a, b) => {
                    let shown: Vec<String> = shapes.iter().map(|s| show_shape(s)).collect();
                    return Err(format!(
                        "cannot broadcast {a} with {b} (shapes {})",
                        shown.join(", ")
                    ));
                }
            };
        }
        out.push(dim);
    }
    Ok(out)
}

/// Formats a shape as `[a, b, c]`.
pub fn show_shape(s: &[Dim]) -> String {
    let dims: Vec<String> = s.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(", "))
}

/// A derived dim: the result of `f` when `d` is fixed, else a symbolic expression.
fn derive(
    d: &Dim,
    f: impl Fn(usize) -> InferResult<usize>,
    expr: impl Fn(&str) -> String,
) -> InferResult<Dim> {
    match d {
        Dim::Fixed(n) => f(*n).map(Dim::Fixed),
        Dim::Sym(s) => Ok(Dim::Sym(expr(s))),
    }
}

fn same_dtype(a: &TensorType, b: &TensorType, what: &str) -> InferResult<()> {
    if a.dtype != b.dtype {
        return Err(format!(
            "{what}: operand dtypes differ ({} vs {})",
            a.dtype, b.dtype
        ));
    }
    Ok(())
}

fn check_axis(axis: usize, rank: usize) -> InferResult<()> {
    if axis >= rank {
        return Err(format!("axis {axis} out of range for rank {rank}"));
    }
    Ok(())
}

fn window_out(
    size: &Dim,
    kernel: usize,
    stride: usize,
    pad: usize,
    dilation: usize,
) -> InferResult<Dim> {
    if stride == 0 || dilation == 0 || kernel == 0 {
        return Err("kernel, stride and dilation must be positive".into());
    }
    let span = window_span(kernel, dilation)?;
    derive(
        size,
        |n| {
            let padded = n
                .checked_add(pad)
                .ok_or_else(|| format!("an axis of {n} padded by {pad} overflows"))?;
            if padded < span {
                return Err(format!(
                    "window of span {span} does not fit input of size {n} padded by {pad}"
                ));
            }
            Ok((padded - span) / stride + 1)
        },
        |s| format!("({s}+{pad}-{span})/{stride}+1"),
    )
}

/// The extent of a window of `kernel` taps `dilation` apart, or why it overflows.
fn window_span(kernel: usize, dilation: usize) -> InferResult<usize> {
    dilation
        .checked_mul(kernel.saturating_sub(1))
        .and_then(|v| v.checked_add(1))
        .ok_or_else(|| format!("a window of {kernel} taps dilated by {dilation} overflows"))
}

/// The sum of an axis's begin and end pads, or why it overflows.
fn pad_sum(pads: &[usize], s: usize, i: usize) -> InferResult<usize> {
    pads[i]
        .checked_add(pads[s + i])
        .ok_or_else(|| format!("pads of axis {i} overflow"))
}

/// Infers the result types of `op` applied to operands of types `inputs`.
pub fn infer(op: &Op, inputs: &[&TensorType]) -> InferResult<Vec<TensorType>> {
    let types = infer_types(op, inputs)?;
    // A result too big to hold is refused here, before anything allocates it.
    for t in &types {
        if let Some(shape) = t.fixed_shape() {
            crate::limits::value_bytes(&shape, t.dtype)?;
        }
    }
    Ok(types)
}

/// The result types of `op` on operands of these types, unchecked against the memory limit.
fn infer_types(op: &Op, inputs: &[&TensorType]) -> InferResult<Vec<TensorType>> {
    let arity = op.arity();
    if !arity.contains(&inputs.len()) {
        let want = match (*arity.start(), *arity.end()) {
            (a, b) if a == b => a.to_string(),
            (a, usize::MAX) => format!("at least {a}"),
            (a, b) => format!("{a} or {b}"),
        };
        return Err(format!("expects {want} operands, got {}", inputs.len()));
    }
    let one = |t: TensorType| Ok(vec![t]);
    match op {
        Op::Constant(t) => one(t.tensor_type()),
        Op::ProgramConstant(ty) => one(ty.clone()),
        Op::Unary(u) => {
            let x = inputs[0];
            match u {
                UnaryOp::Not if !x.dtype.is_bool() => Err(format!("needs bool, got {}", x.dtype)),
                UnaryOp::BitNot if !x.dtype.is_int() => {
                    Err(format!("needs an integer, got {}", x.dtype))
                }
                UnaryOp::IsNan | UnaryOp::IsInf if !x.dtype.is_float() => {
                    Err(format!("needs a float, got {}", x.dtype))
                }
                UnaryOp::IsNan | UnaryOp::IsInf => {
                    one(TensorType::new(DType::Bool, x.shape.clone()))
                }
                UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Sign if x.dtype.is_numeric() => {
                    one(x.clone())
                }
                UnaryOp::Not | UnaryOp::BitNot => one(x.clone()),
                _ if x.dtype.is_float() => one(x.clone()),
                _ => Err(format!("needs a float, got {}", x.dtype)),
            }
        }
        Op::Binary(b) => {
            let (x, y) = (inputs[0], inputs[1]);
            if *b != BinaryOp::Pow {
                same_dtype(x, y, b.name())?;
            }
            let dtype_ok = if b.is_logical() {
                x.dtype.is_bool()
            } else if b.is_bitwise() {
                x.dtype.is_int()
            } else if *b == BinaryOp::Equal {
                true
            } else {
                x.dtype.is_numeric() && y.dtype.is_numeric()
            };
            if !dtype_ok {
                return Err(format!("does not accept {}", x.dtype));
            }
            let shape = broadcast(&[&x.shape, &y.shape])?;
            let dtype = if b.is_comparison() {
                DType::Bool
            } else {
                x.dtype
            };
            one(TensorType::new(dtype, shape))
        }
        Op::Select => {
            let (c, a, b) = (inputs[0], inputs[1], inputs[2]);
            if !c.dtype.is_bool() {
                return Err(format!("condition must be bool, got {}", c.dtype));
            }
            same_dtype(a, b, "select")?;
            one(TensorType::new(
                a.dtype,
                broadcast(&[&c.shape, &a.shape, &b.shape])?,
            ))
        }
        Op::Cast { to } => one(TensorType::new(*to, inputs[0].shape.clone())),
        Op::Reduce {
            axes, keep_dims, ..
        } => {
            let x = inputs[0];
            let mut seen = vec![false; x.rank()];
            for &a in axes {
                check_axis(a, x.rank())?;
                if std::mem::replace(&mut seen[a], true) {
                    return Err(format!("axis {a} repeated"));
                }
            }
            let shape = reduced_shape(&x.shape, &seen, *keep_dims);
            one(TensorType::new(x.dtype, shape))
        }
        Op::ArgReduce {
            axis, keep_dims, ..
        } => {
            let x = inputs[0];
            check_axis(*axis, x.rank())?;
            if x.shape[*axis] == Dim::Fixed(0) {
                return Err("arg-reduction over an empty axis".into());
            }
            let mut mask = vec![false; x.rank()];
            mask[*axis] = true;
            one(TensorType::new(
                DType::I64,
                reduced_shape(&x.shape, &mask, *keep_dims),
            ))
        }
        Op::CumSum { axis, .. } => {
            check_axis(*axis, inputs[0].rank())?;
            one(inputs[0].clone())
        }
        Op::TopK { axis, k, .. } => {
            let x = inputs[0];
            check_axis(*axis, x.rank())?;
            if let Dim::Fixed(n) = x.shape[*axis]
                && *k > n
            {
                return Err(format!("k = {k} exceeds axis size {n}"));
            }
            let mut shape = x.shape.clone();
            shape[*axis] = Dim::Fixed(*k);
            Ok(vec![
                TensorType::new(x.dtype, shape.clone()),
                TensorType::new(DType::I64, shape),
            ])
        }
        Op::MatMul { trans_a, trans_b } => {
            let a = transposed_last_two(inputs[0], *trans_a)?;
            let b = transposed_last_two(inputs[1], *trans_b)?;
            let out = infer_matmul(&a, &b)?;
            if let Some(bias) = inputs.get(2) {
                let n = out[0].shape.last().cloned().unwrap_or(Dim::Fixed(1));
                epilogue_bias(bias, out[0].dtype, &n)?;
            }
            Ok(out)
        }
        Op::Conv {
            strides,
            pads,
            dilations,
            group,
        } => {
            let (x, w) = (inputs[0], inputs[1]);
            let s = conv_operands(x, w, strides, pads, dilations, *group)?;
            if let (Some(c), Some(wc), Some(m)) =
                (x.shape[1].fixed(), w.shape[1].fixed(), w.shape[0].fixed())
                && (wc.checked_mul(*group) != Some(c) || m % group != 0)
            {
                return Err(format!(
                    "channels do not match: input has {c}, weight expects {wc} x group {group}, {m} filters"
                ));
            }
            let mut shape = vec![x.shape[0].clone(), w.shape[0].clone()];
            for i in 0..s {
                let k = w.shape[2 + i].fixed().ok_or("kernel size must be fixed")?;
                shape.push(window_out(
                    &x.shape[2 + i],
                    k,
                    strides[i],
                    pad_sum(pads, s, i)?,
                    dilations[i],
                )?);
            }
            if let Some(bias) = inputs.get(2) {
                epilogue_bias(bias, x.dtype, &w.shape[0])?;
            }
            one(TensorType::new(x.dtype, shape))
        }
        Op::ConvTranspose {
            strides,
            pads,
            dilations,
            group,
            output_padding,
        } => {
            let (x, w) = (inputs[0], inputs[1]);
            let s = conv_operands(x, w, strides, pads, dilations, *group)?;
            if output_padding.len() != s || *group == 0 {
                return Err(
                    "output_padding needs one entry per spatial axis and group must be positive"
                        .into(),
                );
            }
            if let (Some(c), Some(wc)) = (x.shape[1].fixed(), w.shape[0].fixed())
                && c != wc
            {
                return Err(format!("input has {c} channels, weight expects {wc}"));
            }
            let m = derive(
                &w.shape[1],
                |m| {
                    m.checked_mul(*group)
                        .ok_or_else(|| format!("{m} x group {group} filters overflow"))
                },
                |s| format!("{s}*{group}"),
            )?;
            let mut shape = vec![x.shape[0].clone(), m];
            for i in 0..s {
                let k = w.shape[2 + i].fixed().ok_or("kernel size must be fixed")?;
                let span = window_span(k, dilations[i])?;
                let (st, op, pads) = (strides[i], output_padding[i], pad_sum(pads, s, i)?);
                let extra = op
                    .checked_add(span)
                    .ok_or_else(|| format!("output padding {op} of axis {i} overflows"))?;
                shape.push(derive(
                    &x.shape[2 + i],
                    |n| {
                        st.checked_mul(n.max(1) - 1)
                            .and_then(|v| v.checked_add(extra))
                            .ok_or_else(|| format!("the output size of axis {i} overflows"))?
                            .checked_sub(pads)
                            .ok_or_else(|| "padding exceeds the output".to_string())
                    },
                    |s| match extra.checked_sub(pads) {
                        Some(more) => format!("{st}*({s}-1)+{more}"),
                        None => format!("{st}*({s}-1)-{}", pads - extra),
                    },
                )?);
            }
            one(TensorType::new(x.dtype, shape))
        }
        Op::Pool {
            kernel,
            strides,
            pads,
            dilations,
            ..
        } => {
            let x = inputs[0];
            let s = kernel.len();
            if s == 0 || x.rank() < s {
                return Err(format!("{s}-d pooling needs rank >= {s}, got {}", x.rank()));
            }
            check_window_attrs(s, strides, pads, dilations)?;
            let lead = x.rank() - s;
            let mut shape = x.shape[..lead].to_vec();
            for i in 0..s {
                shape.push(window_out(
                    &x.shape[lead + i],
                    kernel[i],
                    strides[i],
                    pad_sum(pads, s, i)?,
                    dilations[i],
                )?);
            }
            one(TensorType::new(x.dtype, shape))
        }
        Op::Reshape { shape } => {
            let x = inputs[0];
            if let (Some(a), Some(b)) = (
                x.num_elements(),
                TensorType::new(x.dtype, shape.clone()).num_elements(),
            ) && a != b
            {
                return Err(format!(
                    "cannot reshape {} ({a} elements) to {} ({b} elements)",
                    show_shape(&x.shape),
                    show_shape(shape)
                ));
            }
            one(TensorType::new(x.dtype, shape.clone()))
        }
        Op::Transpose { perm } => {
            let x = inputs[0];
            let mut seen = vec![false; x.rank()];
            if perm.len() != x.rank()
                || perm
                    .iter()
                    .any(|&p| p >= x.rank() || std::mem::replace(&mut seen[p], true))
            {
                return Err(format!(
                    "perm {perm:?} is not a permutation of rank {}",
                    x.rank()
                ));
            }
            one(TensorType::new(
                x.dtype,
                perm.iter().map(|&p| x.shape[p].clone()).collect(),
            ))
        }
        Op::Slice {
            starts,
            ends,
            steps,
        } => {
            let x = inputs[0];
            if starts.len() != x.rank() || ends.len() != x.rank() || steps.len() != x.rank() {
                return Err(format!(
                    "needs one start, end and step per axis (rank {})",
                    x.rank()
                ));
            }
            let mut shape = Vec::with_capacity(x.rank());
            for (i, d) in x.shape.iter().enumerate() {
                if steps[i] == 0 {
                    return Err(format!("step of axis {i} is zero"));
                }
                shape.push(match d {
                    Dim::Fixed(n) => Dim::Fixed(slice_len(*n, starts[i], ends[i], steps[i])),
                    Dim::Sym(_) if starts[i] == 0 && ends[i] == i64::MAX && steps[i] == 1 => {
                        d.clone()
                    }
                    Dim::Sym(s) => {
                        Dim::Sym(format!("slice({s},{},{},{})", starts[i], ends[i], steps[i]))
                    }
                });
            }
            one(TensorType::new(x.dtype, shape))
        }
        Op::Concat { axis } => {
            let first = inputs[0];
            check_axis(*axis, first.rank())?;
            let mut total = Some(0usize);
            let mut sym_parts = Vec::new();
            for t in inputs {
                same_dtype(first, t, "concat")?;
                if t.rank() != first.rank() {
                    return Err(format!(
                        "operand ranks differ ({} vs {})",
                        t.rank(),
                        first.rank()
                    ));
                }
                for (i, (a, b)) in first.shape.iter().zip(&t.shape).enumerate() {
                    if i != *axis && a != b && a.fixed().is_some() && b.fixed().is_some() {
                        return Err(format!(
                            "dim {i} differs: {} vs {}",
                            show_shape(&first.shape),
                            show_shape(&t.shape)
                        ));
                    }
                }
                match &t.shape[*axis] {
                    Dim::Fixed(n) => total = total.map(|s| s + n),
                    Dim::Sym(s) => sym_parts.push(s.clone()),
                }
                if let Dim::Fixed(n) = t.shape[*axis] {
                    sym_parts.push(n.to_string());
                }
            }
            let mut shape = first.shape.clone();
            shape[*axis] = match total {
                Some(n) if sym_parts.iter().all(|p| p.parse::<usize>().is_ok()) => Dim::Fixed(n),
                _ => Dim::Sym(sym_parts.join("+")),
            };
            one(TensorType::new(first.dtype, shape))
        }
        Op::Pad { pads, .. } => {
            let (x, v) = (inputs[0], inputs[1]);
            same_dtype(x, v, "pad value")?;
            if pads.len() != 2 * x.rank() {
                return Err(format!("needs {} pads, got {}", 2 * x.rank(), pads.len()));
            }
            let r = x.rank();
            let mut shape = Vec::with_capacity(r);
            for (i, d) in x.shape.iter().enumerate() {
                let (b, e) = (pads[i], pads[r + i]);
                shape.push(match d {
                    Dim::Fixed(n) => {
                        let len = (*n as i64)
                            .checked_add(b)
                            .and_then(|v| v.checked_add(e))
                            .ok_or_else(|| format!("pads {b}, {e} of axis {i} overflow"))?;
                        if len < 0 {
                            return Err(format!(
                                "pads {b}, {e} crop more than axis {i} holds ({n})"
                            ));
                        }
                        Dim::Fixed(len as usize)
                    }
                    Dim::Sym(s) if b == 0 && e == 0 => Dim::Sym(s.clone()),
                    Dim::Sym(s) => Dim::Sym(format!("{s}+{}", b + e)),
                });
            }
            one(TensorType::new(x.dtype, shape))
        }
        Op::Gather { axis } => {
            let (x, idx) = (inputs[0], inputs[1]);
            check_axis(*axis, x.rank())?;
            check_index_dtype(idx)?;
            let mut shape = x.shape[..*axis].to_vec();
            shape.extend(idx.shape.iter().cloned());
            shape.extend(x.shape[axis + 1..].iter().cloned());
            one(TensorType::new(x.dtype, shape))
        }
        Op::GatherElements { axis } => {
            let (x, idx) = (inputs[0], inputs[1]);
            check_axis(*axis, x.rank())?;
            check_index_dtype(idx)?;
            if idx.rank() != x.rank() {
                return Err(format!(
                    "indices rank {} differs from data rank {}",
                    idx.rank(),
                    x.rank()
                ));
            }
            one(TensorType::new(x.dtype, idx.shape.clone()))
        }
        Op::GatherNd { batch_dims } => {
            let (x, idx) = (inputs[0], inputs[1]);
            let last = nd_index_depth(idx)?;
            let q = idx.rank();
            if q == 0 || *batch_dims >= q || batch_dims + last > x.rank() {
                return Err(format!(
                    "indices of rank {q} with last dim {last} and batch_dims {batch_dims} do not fit data of rank {}",
                    x.rank()
                ));
            }
            let mut shape = idx.shape[..q - 1].to_vec();
            shape.extend(x.shape[batch_dims + last..].iter().cloned());
            one(TensorType::new(x.dtype, shape))
        }
        Op::ScatterElements { axis, .. } => {
            let (x, idx, upd) = (inputs[0], inputs[1], inputs[2]);
            check_axis(*axis, x.rank())?;
            check_index_dtype(idx)?;
            same_dtype(x, upd, "scatter updates")?;
            if idx.shape != upd.shape || idx.rank() != x.rank() {
                return Err(
                    "indices and updates must have the same shape and the data's rank".into(),
                );
            }
            one(x.clone())
        }
        Op::ScatterNd { .. } => {
            let (x, idx, upd) = (inputs[0], inputs[1], inputs[2]);
            let last = nd_index_depth(idx)?;
            same_dtype(x, upd, "scatter updates")?;
            let q = idx.rank();
            if last > x.rank() {
                return Err(format!(
                    "indices with last dim {last} do not fit data of rank {}",
                    x.rank()
                ));
            }
            // One update slice per index tuple: the indices' leading axes, then the data
            // axes the tuples do not address.
            let mut slices = idx.shape[..q - 1].to_vec();
            slices.extend(x.shape[last..].iter().cloned());
            let expected = TensorType::new(upd.dtype, slices);
            if upd.shape != expected.shape {
                return Err(format!("updates must be {expected}, got {upd}"));
            }
            one(x.clone())
        }
        Op::Expand { shape } => {
            let x = inputs[0];
            one(TensorType::new(x.dtype, broadcast(&[&x.shape, shape])?))
        }
        Op::Shape => one(TensorType::new(
            DType::I64,
            vec![Dim::Fixed(inputs[0].rank())],
        )),
        Op::Resize { sizes, scales, .. } => {
            let x = inputs[0];
            if sizes.len() != x.rank() || scales.len() != x.rank() {
                return Err(format!(
                    "needs {} sizes and scales, got {} and {}",
                    x.rank(),
                    sizes.len(),
                    scales.len()
                ));
            }
            if !x.dtype.is_numeric() {
                return Err(format!("does not accept {}", x.dtype));
            }
            one(TensorType::new(
                x.dtype,
                sizes.iter().map(|&n| Dim::Fixed(n)).collect(),
            ))
        }
    }
}

/// Number of elements a slice `start:end:step` takes from an axis of size `n`, ONNX clamping rules.
pub fn slice_len(n: usize, start: i64, end: i64, step: i64) -> usize {
    let (s, e) = slice_bounds(n, start, end, step);
    // ceil(span / |step|) as (span - 1) / |step| + 1: no overflow for a step near the
    // ends of i64 (a span is at most the axis size).
    let span = if step > 0 { e - s } else { s - e };
    if span > 0 {
        ((span - 1) as u64 / step.unsigned_abs() + 1) as usize
    } else {
        0
    }
}

/// Clamped start and end of a slice on an axis of size `n`.
pub fn slice_bounds(n: usize, start: i64, end: i64, step: i64) -> (i64, i64) {
    let n = n as i64;
    let norm = |v: i64| if v < 0 { v.saturating_add(n) } else { v };
    let (s, e) = (norm(start), norm(end));
    if step > 0 {
        (s.clamp(0, n), e.clamp(0, n))
    } else {
        (s.clamp(-1, n - 1), e.clamp(-1, n - 1))
    }
}

/// The length of GatherND/ScatterND index tuples: the indices' last dim, which must be
/// fixed, after checking their dtype.
fn nd_index_depth(idx: &TensorType) -> InferResult<usize> {
    check_index_dtype(idx)?;
    idx.shape
        .last()
        .and_then(Dim::fixed)
        .ok_or_else(|| "indices need a fixed last dim".to_string())
}

fn check_index_dtype(idx: &TensorType) -> InferResult<()> {
    if matches!(idx.dtype, DType::I32 | DType::I64) {
        Ok(())
    } else {
        Err(format!("indices must be i32 or i64, got {}", idx.dtype))
    }
}

/// Shared checks of convolution operands; returns the number of spatial axes.
fn conv_operands(
    x: &TensorType,
    w: &TensorType,
    strides: &[usize],
    pads: &[usize],
    dilations: &[usize],
    group: usize,
) -> InferResult<usize> {
    same_dtype(x, w, "conv")?;
    let s = x
        .rank()
        .checked_sub(2)
        .filter(|&s| s >= 1)
        .ok_or("input must have rank >= 3")?;
    if w.rank() != x.rank() {
        return Err(format!(
            "weight rank {} differs from input rank {}",
            w.rank(),
            x.rank()
        ));
    }
    check_window_attrs(s, strides, pads, dilations)?;
    if group == 0 {
        return Err("group must be positive".into());
    }
    Ok(s)
}

fn check_window_attrs(
    s: usize,
    strides: &[usize],
    pads: &[usize],
    dilations: &[usize],
) -> InferResult<()> {
    if strides.len() != s || dilations.len() != s || pads.len() != 2 * s {
        return Err(format!(
            "needs {s} strides and dilations and {} pads",
            2 * s
        ));
    }
    Ok(())
}

fn reduced_shape(shape: &[Dim], mask: &[bool], keep_dims: bool) -> Shape {
    shape
        .iter()
        .zip(mask)
        .filter_map(|(d, &m)| match (m, keep_dims) {
            (false, _) => Some(d.clone()),
            (true, true) => Some(Dim::Fixed(1)),
            (true, false) => None,
        })
        .collect()
}

/// Checks an epilogue bias: one value per output channel (`[n]`), of the output's dtype.
fn epilogue_bias(bias: &TensorType, dtype: DType, n: &Dim) -> InferResult<()> {
    if bias.dtype != dtype
        || bias.rank() != 1
        || (bias.shape[0] != *n && n.fixed().is_some() && bias.shape[0].fixed().is_some())
    {
        return Err(format!("bias must be {dtype}[{n}], got {bias}"));
    }
    Ok(())
}

/// The type with its last two axes swapped when `swap` (which needs rank >= 2).
fn transposed_last_two(t: &TensorType, swap: bool) -> InferResult<TensorType> {
    if !swap {
        return Ok(t.clone());
    }
    let r = t.rank();
    if r < 2 {
        return Err(format!("a transposed operand needs rank >= 2, got {t}"));
    }
    let mut shape = t.shape.clone();
    shape.swap(r - 2, r - 1);
    Ok(TensorType::new(t.dtype, shape))
}

fn infer_matmul(a: &TensorType, b: &TensorType) -> InferResult<Vec<TensorType>> {
    same_dtype(a, b, "matmul")?;
    if !a.dtype.is_numeric() {
        return Err(format!("does not accept {}", a.dtype));
    }
    if a.rank() == 0 || b.rank() == 0 {
        return Err("operands must have rank >= 1".into());
    }
    let a_shape: Shape = if a.rank() == 1 {
        vec![Dim::Fixed(1), a.shape[0].clone()]
    } else {
        a.shape.clone()
    };
    let b_shape: Shape = if b.rank() == 1 {
        vec![b.shape[0].clone(), Dim::Fixed(1)]
    } else {
        b.shape.clone()
    };
    let (ra, rb) = (a_shape.len(), b_shape.len());
    let (k1, k2) = (&a_shape[ra - 1], &b_shape[rb - 2]);
    if k1 != k2 && k1.fixed().is_some() && k2.fixed().is_some() {
        return Err(format!(
            "inner dims differ: {} x {}",
            show_shape(&a.shape),
            show_shape(&b.shape)
        ));
    }
    let mut shape = broadcast(&[&a_shape[..ra - 2], &b_shape[..rb - 2]])?;
    if a.rank() > 1 {
        shape.push(a_shape[ra - 2].clone());
    }
    if b.rank() > 1 {
        shape.push(b_shape[rb - 1].clone());
    }
    Ok(vec![TensorType::new(a.dtype, shape)])
}
