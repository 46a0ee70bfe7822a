//! The op schemas the sweep follows: `schemas.tsv`, which `xtask/py/gen_data.py` writes from
//! `onnx.defs` (one row per op version in force at some opset the importer accepts).

use smelt_onnx::proto::attribute_proto::AttributeType;

/// How often a formal parameter may appear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arity {
    Single,
    Optional,
    Variadic,
}

/// A formal input or output of an op.
#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub arity: Arity,
    /// The type parameter it is bound by (`T`), or its concrete type (`tensor(int64)`):
    /// parameters of one constraint take one element type.
    pub constraint: String,
    /// ONNX element type codes the schema allows (plain tensors only).
    pub elem_types: Vec<i32>,
}

/// An attribute of an op.
#[derive(Debug, Clone)]
pub struct Attr {
    pub name: String,
    pub kind: AttributeType,
    pub required: bool,
}

/// One version of one op.
#[derive(Debug, Clone)]
pub struct Schema {
    pub op_type: String,
    /// The opset this version starts at (raised to the importer's first opset).
    pub since: i64,
    pub inputs: Vec<Param>,
    pub outputs: Vec<Param>,
    pub attrs: Vec<Attr>,
}

impl Schema {
    /// How many inputs the op requires: every input up to its last non-optional one.
    pub fn min_inputs(&self) -> usize {
        self.inputs
            .iter()
            .rposition(|p| p.arity != Arity::Optional)
            .map_or(0, |i| i + 1)
    }

    /// The element types its schema allows for `constraint`, sorted.
    pub fn allowed(&self, constraint: &str) -> Vec<i32> {
        let mut codes: Vec<i32> = self
            .inputs
            .iter()
            .chain(&self.outputs)
            .filter(|p| p.constraint == constraint)
            .flat_map(|p| p.elem_types.iter().copied())
            .collect();
        codes.sort_unstable();
        codes.dedup();
        codes
    }

    /// The type constraints of its inputs, in order of first use.
    pub fn input_constraints(&self) -> Vec<&str> {
        let mut seen: Vec<&str> = Vec::new();
        for p in &self.inputs {
            if !seen.contains(&p.constraint.as_str()) {
                seen.push(&p.constraint);
            }
        }
        seen
    }
}

fn param(text: &str) -> Result<Param, String> {
    let fields: Vec<&str> = text.split('/').collect();
    let [name, arity, constraint, codes] = fields[..] else {
        return Err(format!(
            "parameter '{text}' is not name/arity/constraint/codes"
        ));
    };
    let arity = match arity {
        "single" => Arity::Single,
        "optional" => Arity::Optional,
        "variadic" => Arity::Variadic,
        other => return Err(format!("parameter '{text}': unknown arity '{other}'")),
    };
    let elem_types = codes
        .split(',')
        .filter(|c| !c.is_empty())
        .map(|c| {
            c.parse()
                .map_err(|_| format!("parameter '{text}': bad type code '{c}'"))
        })
        .collect::<Result<_, _>>()?;
    Ok(Param {
        name: name.into(),
        arity,
        constraint: constraint.into(),
        elem_types,
    })
}

fn attr(text: &str) -> Result<Attr, String> {
    let fields: Vec<&str> = text.split('/').collect();
    let [name, kind, required] = fields[..] else {
        return Err(format!("attribute '{text}' is not name/TYPE/required"));
    };
    let kind = AttributeType::from_str_name(kind)
        .ok_or_else(|| format!("attribute '{text}': unknown type '{kind}'"))?;
    Ok(Attr {
        name: name.into(),
        kind,
        required: required == "required",
    })
}

fn list<T>(field: &str, item: fn(&str) -> Result<T, String>) -> Result<Vec<T>, String> {
    field
        .split(';')
        .filter(|s| !s.is_empty())
        .map(item)
        .collect()
}

/// Parses `schemas.tsv`: op, since, inputs, outputs, attributes per row (`#` lines are comments).
pub fn parse(text: &str) -> Result<Vec<Schema>, String> {
    let mut schemas = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        let [op_type, since, inputs, outputs, attrs] = fields[..] else {
            return Err(format!("line {}: expected 5 tab-separated fields", n + 1));
        };
        let at = |e: String| format!("line {} ({op_type}): {e}", n + 1);
        schemas.push(Schema {
            op_type: op_type.into(),
            since: since
                .parse()
                .map_err(|_| at(format!("bad since version '{since}'")))?,
            inputs: list(inputs, param).map_err(at)?,
            outputs: list(outputs, param).map_err(at)?,
            attrs: list(attrs, attr).map_err(at)?,
        });
    }
    Ok(schemas)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_row() {
        let text = "# header\nConv\t11\tX/single/T/1,10;W/single/T/1,10;B/optional/T/1,10\tY/single/T/1,10\tgroup/INT/optional;kernel_shape/INTS/optional\n";
        let s = &parse(text).unwrap()[0];
        assert_eq!((s.op_type.as_str(), s.since), ("Conv", 11));
        assert_eq!(s.inputs.len(), 3);
        assert_eq!(s.min_inputs(), 2);
        assert_eq!(s.allowed("T"), vec![1, 10]);
        assert_eq!(s.attrs[1].kind, AttributeType::Ints);
        assert!(parse("Conv\t11\tX/sometimes/T/1\t\t\n").is_err());
    }
}
