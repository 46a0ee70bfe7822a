//! The parser of Kernel IR's text form ([`Kernel::print`]), so that a kernel can be
//! written by hand and given to a back end alone (`tests/lower/*.kernel`).
//!
//! The form is line-based. Expression ids are kept as written: an id the text skips (the
//! printer leaves out expressions nothing uses) is filled with an unused constant, so
//! printing a parsed kernel gives its text back.

use super::{
    Body, Combine, Const, Contraction, Expr, ExprId, FoldedActivation, Kernel, LoopNest, Node,
    Param, Role, Store, contiguous_strides,
};
use smelt_ir::{BinaryOp, CoordMode, DType, NearestMode, PoolKind, ResizeMode, Sampling, UnaryOp};

/// Why a kernel's text does not parse: the line (1-based) and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    pub line: usize,
    pub reason: String,
}

impl Kernel {
    /// Parses the text form [`Kernel::print`] writes, and checks the kernel
    /// ([`Kernel::verify`]); a verification failure is reported at the closing line.
    pub fn parse(text: &str) -> Result<Kernel, ParseError> {
        let mut lines = Lines::new(text);
        let kernel = parse_kernel(&mut lines)?;
        if let Some((n, rest)) = lines.next_nonblank() {
            return Err(err(n, format!("text after the kernel: '{rest}'")));
        }
        kernel
            .verify()
            .map_err(|e| err(lines.last, e.to_string()))?;
        Ok(kernel)
    }
}

fn err(line: usize, reason: impl Into<String>) -> ParseError {
    ParseError {
        line,
        reason: reason.into(),
    }
}

/// The text's lines with their numbers, blank lines and `#` comment lines skipped.
struct Lines<'a> {
    lines: std::iter::Peekable<std::iter::Enumerate<std::str::Lines<'a>>>,
    /// The number of the last line taken.
    last: usize,
}

impl<'a> Lines<'a> {
    fn new(text: &'a str) -> Lines<'a> {
        Lines {
            lines: text.lines().enumerate().peekable(),
            last: 0,
        }
    }

    fn skip_blank(&mut self) {
        while let Some((_, l)) = self.lines.peek() {
            let t = l.trim();
            if t.is_empty() || t.starts_with('#') {
                self.lines.next();
            } else {
                break;
            }
        }
    }

    fn next_nonblank(&mut self) -> Option<(usize, &'a str)> {
        self.skip_blank();
        let (i, l) = self.lines.next()?;
        self.last = i + 1;
        Some((i + 1, l.trim()))
    }

    fn peek_nonblank(&mut self) -> Option<&'a str> {
        self.skip_blank();
        self.lines.peek().map(|(_, l)| l.trim())
    }

    fn expect(&mut self, what: &str) -> Result<(usize, &'a str), ParseError> {
        self.next_nonblank()
            .ok_or_else(|| err(self.last + 1, format!("expected {what}, found the end")))
    }
}

fn parse_kernel(lines: &mut Lines) -> Result<Kernel, ParseError> {
    let (n, head) = lines.expect("'kernel NAME {'")?;
    let name = head
        .strip_prefix("kernel ")
        .and_then(|r| r.strip_suffix(" {"))
        .ok_or_else(|| err(n, format!("expected 'kernel NAME {{', found '{head}'")))?;
    let mut params = Vec::new();
    while lines
        .peek_nonblank()
        .is_some_and(|l| l.starts_with('p') && l.contains(": "))
    {
        let (n, line) = lines.expect("a parameter")?;
        params.push(parse_param(n, line, params.len())?);
    }
    let (n, line) = lines.expect("the body")?;
    let body = if line.starts_with("for ") {
        Body::Loop(parse_nest(lines, n, line)?)
    } else {
        let (out, call) = parse_call(n, line)?;
        let epilogue = if lines.peek_nonblank() == Some("epilogue:") {
            lines.next_nonblank();
            let (n, line) = lines.expect("the epilogue's 'for [...] {'")?;
            Some(parse_nest(lines, n, line)?)
        } else {
            None
        };
        Body::Contraction {
            call,
            out,
            epilogue,
        }
    };
    let (n, close) = lines.expect("'}'")?;
    if close != "}" {
        return Err(err(
            n,
            format!("expected '}}' closing the kernel, found '{close}'"),
        ));
    }
    Ok(Kernel {
        name: name.to_string(),
        params,
        body,
    })
}

/// `pI: in|out DTYPE[DIMS] strides [STRIDES]  // VALUE`
fn parse_param(n: usize, line: &str, index: usize) -> Result<Param, ParseError> {
    let (decl, value) = line.split_once("  // ").unwrap_or((line, ""));
    let (id, rest) = decl
        .split_once(": ")
        .ok_or_else(|| err(n, "expected 'pI: ROLE TYPE'"))?;
    if parse_ref(n, id, 'p')? as usize != index {
        return Err(err(
            n,
            format!("parameter {id} out of order; expected p{index}"),
        ));
    }
    let (role, rest) = rest
        .split_once(' ')
        .ok_or_else(|| err(n, "expected a role (in or out)"))?;
    let role = match role {
        "in" => Role::Input,
        "out" => Role::Output,
        r => return Err(err(n, format!("unknown role '{r}' (in or out)"))),
    };
    let (ty, strides) = match rest.split_once(" strides ") {
        Some((ty, s)) => (ty, Some(s)),
        None => (rest.trim(), None),
    };
    let (dtype, dims) = ty
        .split_once('[')
        .ok_or_else(|| err(n, format!("expected TYPE[DIMS], found '{ty}'")))?;
    let dtype = parse_dtype(n, dtype)?;
    let shape = parse_list(n, &format!("[{dims}"))?;
    if let Some(s) = strides {
        let given = parse_list(n, s.trim())?;
        if given != contiguous_strides(&shape) {
            return Err(err(
                n,
                format!("strides {given:?} are not the row-major strides of {shape:?}"),
            ));
        }
    }
    Ok(Param {
        value: value.to_string(),
        dtype,
        shape,
        role,
    })
}

/// `pO = matmul(...)`, `pO = conv(...) ...` or `pO = KIND(pX) ...`.
fn parse_call(n: usize, line: &str) -> Result<(u32, Contraction), ParseError> {
    let (out, rhs) = line.split_once(" = ").ok_or_else(|| {
        err(
            n,
            format!("expected 'for [...] {{' or 'pO = CALL(...)', found '{line}'"),
        )
    })?;
    let out = parse_ref(n, out, 'p')?;
    let (callee, rest) = rhs
        .split_once('(')
        .ok_or_else(|| err(n, "expected CALL(OPERANDS)"))?;
    let (operands, attrs) = rest
        .split_once(')')
        .ok_or_else(|| err(n, "expected ')' after the operands"))?;
    let operands: Vec<&str> = operands.split(", ").collect();
    let mut attrs = Attrs::new(n, attrs);
    let bias = |ops: &[&str]| -> Result<Option<u32>, ParseError> {
        match ops {
            [] => Ok(None),
            [b] => b
                .strip_prefix("bias ")
                .ok_or_else(|| err(n, format!("expected 'bias pB', found '{b}'")))
                .and_then(|b| parse_ref(n, b, 'p'))
                .map(Some),
            _ => Err(err(n, "too many operands")),
        }
    };
    let call = match callee {
        "matmul" => {
            let [a, b, rest @ ..] = operands.as_slice() else {
                return Err(err(n, "matmul takes two operands and an optional bias"));
            };
            let factor = |f: &str| -> Result<(u32, bool), ParseError> {
                match f.strip_suffix('ᵀ') {
                    Some(f) => Ok((parse_ref(n, f, 'p')?, true)),
                    None => Ok((parse_ref(n, f, 'p')?, false)),
                }
            };
            let ((a, trans_a), (b, trans_b)) = (factor(a)?, factor(b)?);
            Contraction::MatMul {
                a,
                b,
                bias: bias(rest)?,
                trans_a,
                trans_b,
                activation: attrs.activation()?,
            }
        }
        "conv" => {
            let [x, w, rest @ ..] = operands.as_slice() else {
                return Err(err(n, "conv takes two operands and an optional bias"));
            };
            Contraction::Conv {
                x: parse_ref(n, x, 'p')?,
                w: parse_ref(n, w, 'p')?,
                bias: bias(rest)?,
                strides: attrs.list("strides")?,
                pads: attrs.list("pads")?,
                dilations: attrs.list("dilations")?,
                group: attrs.number("group")?,
                activation: attrs.activation()?,
            }
        }
        "resize" => {
            let [x] = operands.as_slice() else {
                return Err(err(n, "resize takes one operand"));
            };
            Contraction::Resize {
                x: parse_ref(n, x, 'p')?,
                sampling: Sampling {
                    mode: attrs.word("mode", ResizeMode::from_name)?,
                    coord: attrs.word("coord", CoordMode::from_name)?,
                    nearest: attrs.word("nearest", NearestMode::from_name)?,
                    cubic_coeff: attrs.float("cubic_coeff")?,
                    exclude_outside: attrs.flag("exclude_outside"),
                },
                scales: attrs.floats("scales")?,
                sizes: attrs.list("sizes")?,
            }
        }
        kind => {
            let kind = PoolKind::from_name(kind)
                .ok_or_else(|| err(n, format!("unknown call '{kind}'")))?;
            let [x] = operands.as_slice() else {
                return Err(err(n, "pooling takes one operand"));
            };
            Contraction::Pool {
                x: parse_ref(n, x, 'p')?,
                kind,
                kernel: attrs.list("kernel")?,
                strides: attrs.list("strides")?,
                pads: attrs.list("pads")?,
            }
        }
    };
    attrs.finish()?;
    Ok((out, call))
}

/// The attributes after a call's operands, in the printer's order: `NAME [LIST]`,
/// `NAME NUMBER` or a bare flag.
struct Attrs<'a> {
    line: usize,
    /// The text not yet taken.
    rest: &'a str,
}

impl<'a> Attrs<'a> {
    fn new(line: usize, text: &'a str) -> Attrs<'a> {
        Attrs {
            line,
            rest: text.trim(),
        }
    }

    fn name(&mut self, name: &str) -> Result<(), ParseError> {
        let rest = self
            .rest
            .strip_prefix(name)
            .and_then(|r| r.strip_prefix(' '))
            .ok_or_else(|| err(self.line, format!("expected '{name}' in '{}'", self.rest)))?;
        self.rest = rest.trim_start();
        Ok(())
    }

    fn list(&mut self, name: &str) -> Result<Vec<usize>, ParseError> {
        self.name(name)?;
        let end = self
            .rest
            .find(']')
            .ok_or_else(|| err(self.line, format!("expected '[...]' after '{name}'")))?;
        let list = parse_list(self.line, &self.rest[..=end])?;
        self.rest = self.rest[end + 1..].trim_start();
        Ok(list)
    }

    fn number(&mut self, name: &str) -> Result<usize, ParseError> {
        self.name(name)?;
        let (word, rest) = self.rest.split_once(' ').unwrap_or((self.rest, ""));
        let v = word.parse().map_err(|_| {
            err(
                self.line,
                format!("'{name}' takes a number, found '{word}'"),
            )
        })?;
        self.rest = rest.trim_start();
        Ok(v)
    }

    /// The next word, parsed by `parse`.
    fn word<T>(
        &mut self,
        name: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<T, ParseError> {
        self.name(name)?;
        let (word, rest) = self.rest.split_once(' ').unwrap_or((self.rest, ""));
        let v = parse(word)
            .ok_or_else(|| err(self.line, format!("'{name}' does not take '{word}'")))?;
        self.rest = rest.trim_start();
        Ok(v)
    }

    fn float(&mut self, name: &str) -> Result<f64, ParseError> {
        self.word(name, |w| w.parse().ok())
    }

    /// `NAME [F, F, ...]`.
    fn floats(&mut self, name: &str) -> Result<Vec<f64>, ParseError> {
        self.name(name)?;
        let end = self
            .rest
            .find(']')
            .ok_or_else(|| err(self.line, format!("expected '[...]' after '{name}'")))?;
        let inner = self.rest[..end]
            .strip_prefix('[')
            .ok_or_else(|| err(self.line, format!("expected '[' after '{name}'")))?;
        let list = inner
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| {
                t.parse()
                    .map_err(|_| err(self.line, format!("'{name}' holds '{t}', not a number")))
            })
            .collect::<Result<_, _>>()?;
        self.rest = self.rest[end + 1..].trim_start();
        Ok(list)
    }

    /// A folded activation's flag, if any: `relu`, `silu`, `gelu` or `clip(low, high)`.
    fn activation(&mut self) -> Result<FoldedActivation, ParseError> {
        if let Some(a) = [
            FoldedActivation::Relu,
            FoldedActivation::Silu,
            FoldedActivation::Gelu,
        ]
        .into_iter()
        .find(|a| a.text().is_some_and(|name| self.flag(&name)))
        {
            return Ok(a);
        }
        let Some(rest) = self.rest.strip_prefix("clip(") else {
            return Ok(FoldedActivation::None);
        };
        let end = rest
            .find(')')
            .ok_or_else(|| err(self.line, "'clip(' without ')'".to_string()))?;
        let bounds: Vec<f32> = rest[..end]
            .split(',')
            .map(|t| {
                t.trim().parse().map_err(|_| {
                    err(
                        self.line,
                        format!("clip bound '{}' is not a number", t.trim()),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        let &[low, high] = &bounds[..] else {
            return Err(err(
                self.line,
                format!("clip takes 2 bounds, not {}", bounds.len()),
            ));
        };
        if low.is_nan() || high.is_nan() || low > high {
            return Err(err(self.line, format!("clip bounds {low} > {high}")));
        }
        self.rest = rest[end + 1..].trim_start();
        Ok(FoldedActivation::Clip { low, high })
    }

    fn flag(&mut self, name: &str) -> bool {
        if self.rest == name || self.rest.starts_with(&format!("{name} ")) {
            self.rest = self.rest[name.len()..].trim_start();
            true
        } else {
            false
        }
    }

    fn finish(&self) -> Result<(), ParseError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(err(self.line, format!("unexpected '{}'", self.rest)))
        }
    }
}

/// `for [DIMS] {`, expression lines, store lines, `}`.
fn parse_nest(lines: &mut Lines, n: usize, head: &str) -> Result<LoopNest, ParseError> {
    let dims = head
        .strip_prefix("for ")
        .and_then(|r| r.strip_suffix(" {"))
        .ok_or_else(|| err(n, format!("expected 'for [DIMS] {{', found '{head}'")))?;
    let domain = parse_list(n, dims)?;
    let mut nodes: Vec<Node> = Vec::new();
    let mut stores = Vec::new();
    loop {
        let (n, line) = lines.expect("an expression, a store or '}'")?;
        if line == "}" {
            break;
        }
        if let Some(store) = line.strip_prefix("store ") {
            stores.push(parse_store(n, store, nodes.len())?);
            continue;
        }
        if !stores.is_empty() {
            return Err(err(n, "expressions come before the stores"));
        }
        let (id, rest) = line
            .split_once(": ")
            .ok_or_else(|| err(n, format!("expected 'eN: TYPE = EXPR', found '{line}'")))?;
        let id = parse_ref(n, id, 'e')? as usize;
        if id < nodes.len() {
            return Err(err(n, format!("e{id} is not after e{}", nodes.len() - 1)));
        }
        // Skipped ids were expressions nothing used: fill them with unused constants.
        while nodes.len() < id {
            nodes.push(Node {
                expr: Expr::Const(Const::Int(0)),
                dtype: DType::I64,
            });
        }
        let (ty, expr) = rest
            .split_once(" = ")
            .ok_or_else(|| err(n, "expected 'TYPE = EXPR'"))?;
        let dtype = parse_dtype(n, ty)?;
        let expr = parse_expr(n, expr, id as ExprId)?;
        nodes.push(Node { expr, dtype });
    }
    Ok(LoopNest {
        domain,
        nodes,
        stores,
    })
}

/// `pP[eI] = eV` (after `store `).
fn parse_store(n: usize, text: &str, count: usize) -> Result<Store, ParseError> {
    let (target, value) = text
        .split_once(" = ")
        .ok_or_else(|| err(n, "expected 'store pP[eI] = eV'"))?;
    let (param, index) = target
        .strip_suffix(']')
        .and_then(|t| t.split_once('['))
        .ok_or_else(|| err(n, "expected 'pP[eI]'"))?;
    let store = Store {
        param: parse_ref(n, param, 'p')?,
        index: parse_ref(n, index, 'e')?,
        value: parse_ref(n, value, 'e')?,
    };
    if store.index as usize >= count || store.value as usize >= count {
        return Err(err(n, "a store names an expression that does not exist"));
    }
    Ok(store)
}

/// The right-hand side of an expression line; operands must precede `id`.
fn parse_expr(n: usize, text: &str, id: ExprId) -> Result<Expr, ParseError> {
    let operand = |t: &str| -> Result<ExprId, ParseError> {
        let e = parse_ref(n, t, 'e')?;
        if e >= id {
            return Err(err(
                n,
                format!("e{id} uses e{e}, which does not precede it"),
            ));
        }
        Ok(e)
    };
    let operands = |t: &str| -> Result<Vec<ExprId>, ParseError> {
        t.split(", ").map(|o| operand(o.trim())).collect()
    };
    if let Some(rest) = text.strip_prefix("load ") {
        let (param, index) = rest
            .strip_suffix(']')
            .and_then(|t| t.split_once('['))
            .ok_or_else(|| err(n, "expected 'load pP[eI]'"))?;
        return Ok(Expr::Load {
            param: parse_ref(n, param, 'p')?,
            index: operand(index)?,
        });
    }
    if let Some(rest) = text.strip_prefix("reduce_") {
        // reduce_COMBINE rV < EXTENT: eB
        let (combine, rest) = rest
            .split_once(' ')
            .ok_or_else(|| err(n, "expected 'reduce_KIND rV < EXTENT: eB'"))?;
        let combine = [
            Combine::Sum,
            Combine::Prod,
            Combine::Max,
            Combine::Min,
            Combine::ArgMax { last: false },
            Combine::ArgMax { last: true },
            Combine::ArgMin { last: false },
            Combine::ArgMin { last: true },
        ]
        .into_iter()
        .find(|c| c.name() == combine)
        .ok_or_else(|| err(n, format!("unknown reduction '{combine}'")))?;
        let (var, rest) = rest
            .split_once(" < ")
            .ok_or_else(|| err(n, "expected 'rV < EXTENT'"))?;
        let (extent, body) = rest
            .split_once(": ")
            .ok_or_else(|| err(n, "expected 'EXTENT: eB'"))?;
        return Ok(Expr::Reduce {
            combine,
            extent: extent
                .parse()
                .map_err(|_| err(n, format!("bad extent '{extent}'")))?,
            var: parse_ref(n, var, 'r')?,
            body: operand(body)?,
        });
    }
    let (head, rest) = text.split_once(' ').unwrap_or((text, ""));
    match head {
        "select" => {
            let [c, a, b] = operands(rest)?[..] else {
                return Err(err(n, "select takes three operands"));
            };
            return Ok(Expr::Select(c, a, b));
        }
        "cast" => return Ok(Expr::Cast(operand(rest)?)),
        _ => {}
    }
    if !rest.is_empty() {
        let ops = operands(rest)?;
        return match ops[..] {
            [a] => UnaryOp::from_name(head)
                .map(|op| Expr::Unary(op, a))
                .ok_or_else(|| err(n, format!("unknown unary op '{head}'"))),
            [a, b] => BinaryOp::from_name(head)
                .map(|op| Expr::Binary(op, a, b))
                .ok_or_else(|| err(n, format!("unknown binary op '{head}'"))),
            _ => Err(err(n, format!("'{head}' with {} operands", ops.len()))),
        };
    }
    parse_leaf(n, text)
}

/// A variable (`iK`, `rV`) or a constant: an integer literal, or a float as Rust's
/// `{:?}` writes it (with a `.` or an exponent, or `NaN`, `inf`, `-inf`).
fn parse_leaf(n: usize, text: &str) -> Result<Expr, ParseError> {
    let index = |t: &str| t.parse::<u32>().ok();
    if let Some(k) = text.strip_prefix('i').and_then(index) {
        return Ok(Expr::Var(k));
    }
    if let Some(v) = text.strip_prefix('r').and_then(index) {
        return Ok(Expr::RVar(v));
    }
    let floaty = text.contains(['.', 'e', 'E']) || text.contains("NaN") || text.contains("inf");
    if !floaty && let Ok(i) = text.parse::<i64>() {
        return Ok(Expr::Const(Const::Int(i)));
    }
    text.parse::<f64>()
        .map(|f| Expr::Const(Const::float(f)))
        .map_err(|_| err(n, format!("unknown expression '{text}'")))
}

/// `pN`, `eN` or `rN`: the number after the letter.
fn parse_ref(n: usize, text: &str, letter: char) -> Result<u32, ParseError> {
    text.trim()
        .strip_prefix(letter)
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| err(n, format!("expected {letter}N, found '{text}'")))
}

fn parse_dtype(n: usize, name: &str) -> Result<DType, ParseError> {
    DType::from_name(name.trim()).ok_or_else(|| err(n, format!("unknown type '{name}'")))
}

/// `[a, b, c]` (or `[]`).
fn parse_list(n: usize, text: &str) -> Result<Vec<usize>, ParseError> {
    let inner = text
        .trim()
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .ok_or_else(|| err(n, format!("expected [NUMBERS], found '{text}'")))?;
    if inner.trim().is_empty() {
        return Ok(Vec::new());
    }
    inner
        .split(',')
        .map(|d| {
            d.trim()
                .parse()
                .map_err(|_| err(n, format!("'{}' is not a size", d.trim())))
        })
        .collect()
}
