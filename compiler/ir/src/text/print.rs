//! Printer of the graph text form.

use crate::graph::Graph;
use crate::op::{Attr, Op};
use crate::shape::is_plain_ident;
use crate::tensor::{Data, Tensor};
use std::fmt::Write;

/// Printer settings.
#[derive(Debug, Clone, Copy)]
pub struct PrintOptions {
    /// Constants with more elements than this print as `...` (which does not parse back).
    pub max_constant_elements: usize,
}

impl PrintOptions {
    /// Prints every constant in full, so the text parses back to the same graph.
    pub fn full() -> Self {
        PrintOptions {
            max_constant_elements: usize::MAX,
        }
    }
}

impl Default for PrintOptions {
    fn default() -> Self {
        PrintOptions {
            max_constant_elements: 16,
        }
    }
}

/// Quotes a name unless it is made of `[A-Za-z0-9_.]` only.
pub(crate) fn name_token(name: &str) -> String {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    {
        name.to_string()
    } else {
        format!("{name:?}")
    }
}

fn attr_text(a: &Attr) -> String {
    match a {
        Attr::Int(v) => v.to_string(),
        Attr::Float(v) => format!("{v:?}"),
        Attr::Bool(v) => v.to_string(),
        Attr::Ints(v) => format!(
            "[{}]",
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Attr::Floats(v) => format!(
            "[{}]",
            v.iter()
                .map(|x| format!("{x:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Attr::Dims(v) => format!(
            "[{}]",
            v.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Attr::DType(d) => d.name().to_string(),
        Attr::Word(w) => w.to_string(),
    }
}

/// The elements of a tensor as text, `[a, b, ...]` flat.
pub fn tensor_values(t: &Tensor) -> String {
    fn join<T>(v: &[T], f: impl Fn(&T) -> String) -> String {
        format!("[{}]", v.iter().map(f).collect::<Vec<_>>().join(", "))
    }
    match t.data() {
        Data::F16(v) => join(v, |x| format!("{:?}", x.to_f32())),
        Data::BF16(v) => join(v, |x| format!("{:?}", x.to_f32())),
        Data::F32(v) => join(v, |x| format!("{x:?}")),
        Data::F64(v) => join(v, |x| format!("{x:?}")),
        Data::Bool(v) => join(v, |x| x.to_string()),
        _ if t.dtype().is_unsigned_int() => join(&t.to_i64(), |&x| (x as u64).to_string()),
        _ => join(&t.to_i64(), |x| x.to_string()),
    }
}

/// Prints a graph in the text form.
pub fn print_graph(g: &Graph, opts: PrintOptions) -> String {
    let mut s = String::new();
    let val = |id: crate::graph::ValueId| format!("%{}", name_token(&g.value(id).name));
    let params: Vec<String> = g
        .inputs
        .iter()
        .map(|&i| format!("{}: {}", val(i), g.ty(i)))
        .collect();
    let _ = writeln!(
        s,
        "graph {} ({}) {{",
        name_token_always_quoted(&g.name),
        params.join(", ")
    );
    for node in &g.nodes {
        let results: Vec<String> = node.outputs.iter().map(|&o| val(o)).collect();
        let _ = write!(s, "  {} = ", results.join(", "));
        if let Op::Constant(t) = &node.op {
            let _ = write!(s, "constant {} ", t.tensor_type());
            if t.len() <= opts.max_constant_elements {
                s.push_str(&tensor_values(t));
            } else {
                s.push_str("...");
            }
        } else if let Op::ProgramConstant(ty) = &node.op {
            // Like an elided constant, this does not parse back: the values are elsewhere.
            let _ = write!(s, "program_constant {ty}");
        } else {
            s.push_str(node.op.mnemonic());
            let attrs = node.op.attrs();
            if !attrs.is_empty() {
                let parts: Vec<String> = attrs
                    .iter()
                    .map(|(k, v)| format!("{k}={}", attr_text(v)))
                    .collect();
                let _ = write!(s, "<{}>", parts.join(", "));
            }
            let operands: Vec<String> = node.inputs.iter().map(|&i| val(i)).collect();
            let types: Vec<String> = node.outputs.iter().map(|&o| g.ty(o).to_string()).collect();
            let _ = write!(s, "({}) : {}", operands.join(", "), types.join(", "));
        }
        if !node.name.is_empty() {
            let _ = write!(s, " @{:?}", node.name);
        }
        s.push('\n');
    }
    let outs: Vec<String> = g.outputs.iter().map(|&o| val(o)).collect();
    let _ = writeln!(s, "  return {}", outs.join(", "));
    s.push_str("}\n");
    s
}

fn name_token_always_quoted(name: &str) -> String {
    if is_plain_ident(name) {
        name.to_string()
    } else {
        format!("{name:?}")
    }
}
