//! Parser of the graph text form (the inverse of the printer).

use crate::dtype::DType;
use crate::error::{IrError, Result};
use crate::graph::{Graph, ValueId};
use crate::op::*;
use crate::shape::{Dim, TensorType};
use crate::tensor::Tensor;
use std::collections::HashMap;

/// An attribute value as written, before the op decides its type.
#[derive(Debug, Clone)]
enum Raw {
    Num(String),
    Word(String),
    Str(String),
    List(Vec<Raw>),
}

struct Parser<'a> {
    src: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn error(&self, reason: impl Into<String>) -> IrError {
        let before = &self.src[..self.pos.min(self.src.len())];
        let line = before.iter().filter(|&&c| c == b'\n').count() + 1;
        let column = before.iter().rev().take_while(|&&c| c != b'\n').count() + 1;
        IrError::Parse {
            line,
            column,
            reason: reason.into(),
        }
    }

    fn skip_ws(&mut self) {
        while let Some(&c) = self.src.get(self.pos) {
            if c == b'#' {
                while self.src.get(self.pos).is_some_and(|&c| c != b'\n') {
                    self.pos += 1;
                }
            } else if c.is_ascii_whitespace() {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.src.get(self.pos).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8) -> Result<()> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(self.error(format!("expected '{}'", c as char)))
        }
    }

    fn word_chars(&mut self, extra: &[u8]) -> String {
        self.skip_ws();
        let start = self.pos;
        while self
            .src
            .get(self.pos)
            .is_some_and(|&c| c.is_ascii_alphanumeric() || c == b'_' || extra.contains(&c))
        {
            self.pos += 1;
        }
        String::from_utf8_lossy(&self.src[start..self.pos]).into_owned()
    }

    fn keyword(&mut self, kw: &str) -> Result<()> {
        let w = self.word_chars(&[]);
        if w == kw {
            Ok(())
        } else {
            Err(self.error(format!("expected '{kw}', found '{w}'")))
        }
    }

    fn string(&mut self) -> Result<String> {
        self.expect(b'"')?;
        let mut out = Vec::new();
        loop {
            let c = *self
                .src
                .get(self.pos)
                .ok_or_else(|| self.error("unterminated string"))?;
            self.pos += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let e = *self
                        .src
                        .get(self.pos)
                        .ok_or_else(|| self.error("unterminated escape"))?;
                    self.pos += 1;
                    match e {
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'r' => out.push(b'\r'),
                        b'0' => out.push(0),
                        b'\\' | b'"' | b'\'' => out.push(e),
                        b'u' => {
                            self.expect(b'{')?;
                            let hex = self.word_chars(&[]);
                            self.expect(b'}')?;
                            let ch = u32::from_str_radix(&hex, 16)
                                .ok()
                                .and_then(char::from_u32)
                                .ok_or_else(|| self.error(format!("bad unicode escape '{hex}'")))?;
                            out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                        }
                        _ => return Err(self.error(format!("unknown escape '\\{}'", e as char))),
                    }
                }
                _ => out.push(c),
            }
        }
        String::from_utf8(out).map_err(|_| self.error("string is not UTF-8"))
    }

    /// A name: plain `[A-Za-z0-9_.]+` or a quoted string.
    fn name(&mut self) -> Result<String> {
        if self.peek() == Some(b'"') {
            return self.string();
        }
        let w = self.word_chars(b".");
        if w.is_empty() {
            Err(self.error("expected a name"))
        } else {
            Ok(w)
        }
    }

    fn value_ref(&mut self) -> Result<String> {
        self.expect(b'%')?;
        self.name()
    }

    fn dim(&mut self) -> Result<Dim> {
        match self.peek() {
            Some(b'"') => Ok(Dim::Sym(self.string()?)),
            Some(c) if c.is_ascii_digit() => {
                let w = self.word_chars(&[]);
                w.parse()
                    .map(Dim::Fixed)
                    .map_err(|_| self.error(format!("bad dim '{w}'")))
            }
            _ => {
                let w = self.word_chars(&[]);
                if w.is_empty() {
                    Err(self.error("expected a dim"))
                } else {
                    Ok(Dim::Sym(w))
                }
            }
        }
    }

    fn tensor_type(&mut self) -> Result<TensorType> {
        let d = self.word_chars(&[]);
        let dtype =
            DType::from_name(&d).ok_or_else(|| self.error(format!("unknown dtype '{d}'")))?;
        self.expect(b'[')?;
        let mut shape = Vec::new();
        if !self.eat(b']') {
            loop {
                shape.push(self.dim()?);
                if self.eat(b']') {
                    break;
                }
                self.expect(b',')?;
            }
        }
        Ok(TensorType::new(dtype, shape))
    }

    fn raw(&mut self) -> Result<Raw> {
        match self.peek() {
            Some(b'[') => {
                self.pos += 1;
                let mut items = Vec::new();
                if !self.eat(b']') {
                    loop {
                        items.push(self.raw()?);
                        if self.eat(b']') {
                            break;
                        }
                        self.expect(b',')?;
                    }
                }
                Ok(Raw::List(items))
            }
            Some(b'"') => Ok(Raw::Str(self.string()?)),
            Some(c) if c.is_ascii_digit() || c == b'-' || c == b'+' => {
                let start = self.pos;
                self.pos += 1;
                while self.src.get(self.pos).is_some_and(|&c| {
                    c.is_ascii_alphanumeric()
                        || c == b'.'
                        || ((c == b'-' || c == b'+')
                            && matches!(self.src[self.pos - 1], b'e' | b'E'))
                }) {
                    self.pos += 1;
                }
                Ok(Raw::Num(
                    String::from_utf8_lossy(&self.src[start..self.pos]).into_owned(),
                ))
            }
            _ => {
                let w = self.word_chars(&[]);
                if w.is_empty() {
                    Err(self.error("expected a value"))
                } else {
                    Ok(Raw::Word(w))
                }
            }
        }
    }
}

fn parse_f64(s: &str) -> Option<f64> {
    match s {
        "inf" | "+inf" => Some(f64::INFINITY),
        "-inf" => Some(f64::NEG_INFINITY),
        "NaN" | "nan" | "-NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// Builds a constant from its type and flat literal values.
fn tensor_from_raw(ty: &TensorType, raw: &Raw) -> std::result::Result<Tensor, String> {
    let shape = ty.fixed_shape().ok_or("constants need a fixed shape")?;
    let Raw::List(items) = raw else {
        return Err("expected a list of values".into());
    };
    let word = |r: &Raw| match r {
        Raw::Num(s) | Raw::Word(s) => Ok(s.clone()),
        _ => Err(format!("bad element {r:?}")),
    };
    let words: Vec<String> = items
        .iter()
        .map(word)
        .collect::<std::result::Result<_, _>>()?;
    let t = if ty.dtype.is_bool() {
        let v = words.iter().map(|w| match w.as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(format!("bad bool '{w}'")),
        });
        Tensor::from_bool(shape, v.collect::<std::result::Result<_, _>>()?)
    } else if ty.dtype.is_float() {
        let v = words
            .iter()
            .map(|w| parse_f64(w).ok_or_else(|| format!("bad float '{w}'")));
        Tensor::from_f64(ty.dtype, shape, v.collect::<std::result::Result<_, _>>()?)
    } else if ty.dtype.is_unsigned_int() {
        let v = words.iter().map(|w| {
            w.parse::<u64>()
                .map(|x| x as i64)
                .map_err(|_| format!("bad integer '{w}'"))
        });
        Tensor::from_i64(ty.dtype, shape, v.collect::<std::result::Result<_, _>>()?)
    } else {
        let v = words
            .iter()
            .map(|w| w.parse::<i64>().map_err(|_| format!("bad integer '{w}'")));
        Tensor::from_i64(ty.dtype, shape, v.collect::<std::result::Result<_, _>>()?)
    };
    t.map_err(|e| e.to_string())
}

/// Typed access to the attributes of one op being parsed.
struct Attrs {
    map: HashMap<String, Raw>,
}

type AResult<T> = std::result::Result<T, String>;

impl Attrs {
    fn take(&mut self, key: &str) -> AResult<Raw> {
        self.map
            .remove(key)
            .ok_or_else(|| format!("missing attribute '{key}'"))
    }
    fn int(&mut self, key: &str) -> AResult<i64> {
        match self.take(key)? {
            Raw::Num(s) => s
                .parse()
                .map_err(|_| format!("attribute '{key}': bad integer '{s}'")),
            r => Err(format!("attribute '{key}': expected an integer, got {r:?}")),
        }
    }
    fn usize(&mut self, key: &str) -> AResult<usize> {
        let v = self.int(key)?;
        usize::try_from(v).map_err(|_| format!("attribute '{key}' must be non-negative, got {v}"))
    }
    fn float(&mut self, key: &str) -> AResult<f64> {
        match self.take(key)? {
            Raw::Num(s) | Raw::Word(s) => {
                parse_f64(&s).ok_or_else(|| format!("attribute '{key}': bad float '{s}'"))
            }
            r => Err(format!("attribute '{key}': expected a float, got {r:?}")),
        }
    }
    fn bool(&mut self, key: &str) -> AResult<bool> {
        match self.take(key)? {
            Raw::Word(w) if w == "true" => Ok(true),
            Raw::Word(w) if w == "false" => Ok(false),
            r => Err(format!(
                "attribute '{key}': expected true or false, got {r:?}"
            )),
        }
    }
    /// A boolean attribute that may be left out (false).
    fn opt_bool(&mut self, key: &str) -> AResult<bool> {
        if self.map.contains_key(key) {
            self.bool(key)
        } else {
            Ok(false)
        }
    }
    fn word(&mut self, key: &str) -> AResult<String> {
        match self.take(key)? {
            Raw::Word(w) => Ok(w),
            r => Err(format!("attribute '{key}': expected a word, got {r:?}")),
        }
    }
    fn list(&mut self, key: &str) -> AResult<Vec<Raw>> {
        match self.take(key)? {
            Raw::List(v) => Ok(v),
            r => Err(format!("attribute '{key}': expected a list, got {r:?}")),
        }
    }
    fn ints(&mut self, key: &str) -> AResult<Vec<i64>> {
        self.list(key)?
            .into_iter()
            .map(|r| match r {
                Raw::Num(s) => s
                    .parse()
                    .map_err(|_| format!("attribute '{key}': bad integer '{s}'")),
                r => Err(format!("attribute '{key}': expected integers, got {r:?}")),
            })
            .collect()
    }
    fn usizes(&mut self, key: &str) -> AResult<Vec<usize>> {
        self.ints(key)?
            .into_iter()
            .map(|v| {
                usize::try_from(v)
                    .map_err(|_| format!("attribute '{key}' must be non-negative, got {v}"))
            })
            .collect()
    }
    fn floats(&mut self, key: &str) -> AResult<Vec<f64>> {
        self.list(key)?
            .into_iter()
            .map(|r| match r {
                Raw::Num(s) | Raw::Word(s) => {
                    parse_f64(&s).ok_or_else(|| format!("attribute '{key}': bad float '{s}'"))
                }
                r => Err(format!("attribute '{key}': expected floats, got {r:?}")),
            })
            .collect()
    }
    fn dims(&mut self, key: &str) -> AResult<Vec<Dim>> {
        self.list(key)?
            .into_iter()
            .map(|r| match r {
                Raw::Num(s) => s
                    .parse()
                    .map(Dim::Fixed)
                    .map_err(|_| format!("attribute '{key}': bad dim '{s}'")),
                Raw::Word(s) | Raw::Str(s) => Ok(Dim::Sym(s)),
                r => Err(format!("attribute '{key}': expected dims, got {r:?}")),
            })
            .collect()
    }
    fn named<T>(&mut self, key: &str, from: impl Fn(&str) -> Option<T>) -> AResult<T> {
        let w = self.word(key)?;
        from(&w).ok_or_else(|| format!("attribute '{key}': unknown value '{w}'"))
    }
}

/// Builds an op from its mnemonic and attributes.
fn build_op(mnemonic: &str, a: &mut Attrs) -> AResult<Op> {
    if let Some(u) = UnaryOp::from_name(mnemonic) {
        return Ok(Op::Unary(u));
    }
    if let Some(b) = BinaryOp::from_name(mnemonic) {
        return Ok(Op::Binary(b));
    }
    if let Some(kind) = ReduceKind::from_name(mnemonic) {
        return Ok(Op::Reduce {
            kind,
            axes: a.usizes("axes")?,
            keep_dims: a.bool("keep_dims")?,
        });
    }
    if let Some(kind) = ArgKind::from_name(mnemonic) {
        return Ok(Op::ArgReduce {
            kind,
            axis: a.usize("axis")?,
            keep_dims: a.bool("keep_dims")?,
            select_last: a.bool("select_last")?,
        });
    }
    if let Some(kind) = PoolKind::from_name(mnemonic) {
        return Ok(Op::Pool {
            kind,
            kernel: a.usizes("kernel")?,
            strides: a.usizes("strides")?,
            pads: a.usizes("pads")?,
            dilations: a.usizes("dilations")?,
        });
    }
    Ok(match mnemonic {
        "select" => Op::Select,
        "matmul" => Op::MatMul {
            trans_a: a.opt_bool("trans_a")?,
            trans_b: a.opt_bool("trans_b")?,
        },
        "shape" => Op::Shape,
        "cast" => Op::Cast {
            to: a.named("to", DType::from_name)?,
        },
        "cumsum" => Op::CumSum {
            axis: a.usize("axis")?,
            exclusive: a.bool("exclusive")?,
            reverse: a.bool("reverse")?,
        },
        "topk" => Op::TopK {
            axis: a.usize("axis")?,
            k: a.usize("k")?,
            largest: a.bool("largest")?,
        },
        "conv" => Op::Conv {
            strides: a.usizes("strides")?,
            pads: a.usizes("pads")?,
            dilations: a.usizes("dilations")?,
            group: a.usize("group")?,
        },
        "conv_transpose" => Op::ConvTranspose {
            strides: a.usizes("strides")?,
            pads: a.usizes("pads")?,
            dilations: a.usizes("dilations")?,
            group: a.usize("group")?,
            output_padding: a.usizes("output_padding")?,
        },
        "reshape" => Op::Reshape {
            shape: a.dims("shape")?,
        },
        "expand" => Op::Expand {
            shape: a.dims("shape")?,
        },
        "transpose" => Op::Transpose {
            perm: a.usizes("perm")?,
        },
        "slice" => Op::Slice {
            starts: a.ints("starts")?,
            ends: a.ints("ends")?,
            steps: a.ints("steps")?,
        },
        "concat" => Op::Concat {
            axis: a.usize("axis")?,
        },
        "pad" => Op::Pad {
            pads: a.ints("pads")?,
            mode: a.named("mode", PadMode::from_name)?,
        },
        "gather" => Op::Gather {
            axis: a.usize("axis")?,
        },
        "gather_elements" => Op::GatherElements {
            axis: a.usize("axis")?,
        },
        "gather_nd" => Op::GatherNd {
            batch_dims: a.usize("batch_dims")?,
        },
        "scatter_elements" => Op::ScatterElements {
            axis: a.usize("axis")?,
            reduction: a.named("reduction", ScatterReduction::from_name)?,
        },
        "scatter_nd" => Op::ScatterNd {
            reduction: a.named("reduction", ScatterReduction::from_name)?,
        },
        "resize" => Op::Resize {
            sizes: a.usizes("sizes")?,
            scales: a.floats("scales")?,
            mode: a.named("mode", ResizeMode::from_name)?,
            coord: a.named("coord", CoordMode::from_name)?,
            nearest: a.named("nearest", NearestMode::from_name)?,
            cubic_coeff: a.float("cubic_coeff")?,
            exclude_outside: a.bool("exclude_outside")?,
            extrapolation: a.float("extrapolation")?,
        },
        other => return Err(format!("unknown op '{other}'")),
    })
}

/// Parses the text form produced by [`crate::text::print_graph`] (with full constants).
pub fn parse_graph(text: &str) -> Result<Graph> {
    let mut p = Parser {
        src: text.as_bytes(),
        pos: 0,
    };
    p.keyword("graph")?;
    let gname = p.name()?;
    let mut g = Graph::new(gname);
    let mut ids: HashMap<String, ValueId> = HashMap::new();
    p.expect(b'(')?;
    if !p.eat(b')') {
        loop {
            let name = p.value_ref()?;
            p.expect(b':')?;
            let ty = p.tensor_type()?;
            if ids.contains_key(&name) {
                return Err(p.error(format!("value %{name} defined twice")));
            }
            let id = g.add_input(&name, ty);
            ids.insert(name, id);
            if p.eat(b')') {
                break;
            }
            p.expect(b',')?;
        }
    }
    p.expect(b'{')?;
    loop {
        if p.peek() == Some(b'r') {
            let save = p.pos;
            if p.word_chars(&[]) == "return" {
                break;
            }
            p.pos = save;
        }
        p.skip_ws();
        let node_start = p.pos;
        let mut results = vec![p.value_ref()?];
        while p.eat(b',') {
            results.push(p.value_ref()?);
        }
        p.expect(b'=')?;
        let op_pos = p.pos;
        let mnemonic = p.word_chars(&[]);
        let (op, operands, types) = if mnemonic == "constant" {
            let ty = p.tensor_type()?;
            if p.peek() == Some(b'.') {
                return Err(
                    p.error("elided constant ('...') cannot be parsed; print with full constants")
                );
            }
            let raw = p.raw()?;
            let t = tensor_from_raw(&ty, &raw).map_err(|e| p.error(e))?;
            (Op::Constant(t), vec![], vec![ty])
        } else {
            let mut attrs = Attrs {
                map: HashMap::new(),
            };
            if p.eat(b'<') {
                loop {
                    let key = p.word_chars(&[]);
                    p.expect(b'=')?;
                    let v = p.raw()?;
                    if attrs.map.insert(key.clone(), v).is_some() {
                        return Err(p.error(format!("attribute '{key}' repeated")));
                    }
                    if p.eat(b'>') {
                        break;
                    }
                    p.expect(b',')?;
                }
            }
            let op = build_op(&mnemonic, &mut attrs).map_err(|e| {
                p.pos = op_pos;
                p.error(e)
            })?;
            if let Some(k) = attrs.map.keys().next() {
                return Err(p.error(format!("op '{mnemonic}' has no attribute '{k}'")));
            }
            p.expect(b'(')?;
            let mut operands = Vec::new();
            if !p.eat(b')') {
                loop {
                    let name = p.value_ref()?;
                    let id = *ids
                        .get(&name)
                        .ok_or_else(|| p.error(format!("undefined value %{name}")))?;
                    operands.push(id);
                    if p.eat(b')') {
                        break;
                    }
                    p.expect(b',')?;
                }
            }
            p.expect(b':')?;
            let mut types = vec![p.tensor_type()?];
            while p.eat(b',') {
                types.push(p.tensor_type()?);
            }
            (op, operands, types)
        };
        let node_name = if p.eat(b'@') {
            p.string()?
        } else {
            String::new()
        };
        let after_node = p.pos;
        p.pos = node_start;
        if results.len() != op.num_outputs() {
            return Err(p.error(format!(
                "'{mnemonic}' defines {} results, {} named",
                op.num_outputs(),
                results.len()
            )));
        }
        for r in &results {
            if ids.contains_key(r) {
                return Err(p.error(format!("value %{r} defined twice")));
            }
        }
        let names: Vec<&str> = results.iter().map(String::as_str).collect();
        let outs = g
            .add_node(&node_name, op, &operands, &names)
            .map_err(|e| p.error(e.to_string()))?;
        for ((r, &id), want) in results.iter().zip(&outs).zip(&types) {
            if g.ty(id) != want {
                return Err(p.error(format!(
                    "%{r} is declared {want} but inference gives {}",
                    g.ty(id)
                )));
            }
            ids.insert(r.clone(), id);
        }
        p.pos = after_node;
    }
    let mut outputs = Vec::new();
    loop {
        let name = p.value_ref()?;
        outputs.push(
            *ids.get(&name)
                .ok_or_else(|| p.error(format!("undefined value %{name}")))?,
        );
        if !p.eat(b',') {
            break;
        }
    }
    p.expect(b'}')?;
    if p.peek().is_some() {
        return Err(p.error("unexpected text after the graph"));
    }
    g.outputs = outputs;
    g.verify()?;
    Ok(g)
}
