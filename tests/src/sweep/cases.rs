//! The models of the rank and arity sweep: for one op schema, one-node models whose inputs
//! take every rank from 0 to 5 (with dims of 0 and 1 among them), every element type the
//! schema allows and one it does not, optional inputs absent, empty-named and present, one
//! input too many and one too few, and attributes missing, mistyped and out of range.
//! Everything is derived from the schema, so the list is the same on every run.

use super::schema::{Arity, Schema};
use prost::Message;
use smelt_onnx::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto, attribute_proto::AttributeType,
    tensor_shape_proto, type_proto,
};

/// One generated model.
#[derive(Debug, Clone)]
pub struct Case {
    /// `Op@since/variant`, unique within the sweep.
    pub name: String,
    pub model: Vec<u8>,
}

/// Element type codes the sweep prefers as an op's base type, in order.
const PREFERRED: [i32; 4] = [FLOAT, INT64, INT32, BOOL];
const FLOAT: i32 = 1;
const INT64: i32 = 7;
const INT32: i32 = 6;
const BOOL: i32 = 9;
/// Codes tried, in order, as the one element type a constraint does not allow.
const OUTSIDERS: [i32; 6] = [FLOAT, INT64, BOOL, 8, 11, 2];

/// The shapes of one case's inputs.
#[derive(Debug, Clone, Copy)]
enum Shapes {
    /// Every input `dims` of rank `rank`.
    Uniform(Profile, usize),
    /// The first input of rank `rank` (all 2s), the others vectors of `max(rank, 1)` values
    /// (shape operands, axes, pads, per-channel parameters).
    Vectors(usize),
    /// The first input of rank `rank` (all 2s), the others scalars.
    Scalars(usize),
    /// Every input of rank `base` (all 2s) but input `slot`, of rank `rank`.
    OneRank {
        base: usize,
        slot: usize,
        rank: usize,
    },
}

impl Shapes {
    /// The rank of the first input.
    fn lead_rank(self) -> usize {
        match self {
            Shapes::Uniform(_, r) | Shapes::Vectors(r) | Shapes::Scalars(r) => r,
            Shapes::OneRank { slot: 0, rank, .. } => rank,
            Shapes::OneRank { base, .. } => base,
        }
    }
}

/// The dims of a rank: all 2, one of them 0, or some of them 1.
#[derive(Debug, Clone, Copy)]
enum Profile {
    Twos,
    WithZero,
    WithOnes,
}

impl Profile {
    fn dims(self, rank: usize) -> Vec<i64> {
        (0..rank)
            .map(|i| match self {
                Profile::Twos => 2,
                Profile::WithZero if i == rank / 2 => 0,
                Profile::WithZero => 2,
                Profile::WithOnes if i % 2 == 0 => 1,
                Profile::WithOnes => 3,
            })
            .collect()
    }
}

/// Where the inputs come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The first input a graph input, the others initializers (weights, shapes, axes).
    Mixed,
    /// Every input a graph input.
    Dynamic,
    /// Every input an initializer.
    Constant,
}

/// Which inputs the node lists.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Slots {
    /// The required inputs only (a variadic input once).
    Required,
    /// Every declared input (a variadic input twice).
    All,
    /// The required inputs and optional input `i` (those between named empty).
    OnlyOptional(usize),
    /// Every declared input, optional input `i` named empty.
    EmptyNamed(usize),
    /// Every declared input and one more.
    OneTooMany,
    /// One fewer than the op requires.
    OneTooFew,
}

/// Values of the integer and float initializers: small, mixed in sign, or the extremes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Values {
    Small,
    Extreme,
}

/// What is changed about one attribute.
#[derive(Debug, Clone)]
enum AttrChange {
    Missing(usize),
    WrongType(usize),
    /// Attribute `i` set to the `k`-th out-of-range value of its type.
    OutOfRange(usize, usize),
}

/// One variant of the base model.
#[derive(Debug, Clone)]
struct Variant {
    shapes: Shapes,
    source: Source,
    slots: Slots,
    values: Values,
    /// An element type for every input constraint (`None`: the base type).
    elem: Option<(String, i32)>,
    attr: Option<AttrChange>,
}

impl Variant {
    fn new(shapes: Shapes) -> Variant {
        Variant {
            shapes,
            source: Source::Mixed,
            slots: Slots::Required,
            values: Values::Small,
            elem: None,
            attr: None,
        }
    }

    fn label(&self) -> String {
        let mut s = match self.shapes {
            Shapes::Uniform(p, r) => format!("uniform-{p:?}-rank{r}"),
            Shapes::Vectors(r) => format!("vectors-rank{r}"),
            Shapes::Scalars(r) => format!("scalars-rank{r}"),
            Shapes::OneRank { base, slot, rank } => {
                format!("rank{base}-but-input{slot}-rank{rank}")
            }
        };
        s.push_str(&format!("/{:?}/{:?}", self.source, self.slots));
        if self.values == Values::Extreme {
            s.push_str("/extreme");
        }
        if let Some((c, code)) = &self.elem {
            s.push_str(&format!("/{c}={code}"));
        }
        if let Some(a) = &self.attr {
            s.push_str(&format!("/{a:?}"));
        }
        s.to_lowercase()
    }
}

/// Out-of-range values of each attribute type.
fn out_of_range(kind: AttributeType) -> Vec<AttributeProto> {
    let base = |t: AttributeType| AttributeProto {
        r#type: Some(t as i32),
        ..Default::default()
    };
    let ints = |v: Vec<i64>| AttributeProto {
        ints: v,
        ..base(AttributeType::Ints)
    };
    let int = |v: i64| AttributeProto {
        i: Some(v),
        ..base(AttributeType::Int)
    };
    let float = |v: f32| AttributeProto {
        f: Some(v),
        ..base(AttributeType::Float)
    };
    let string = |v: &str| AttributeProto {
        s: Some(v.as_bytes().to_vec()),
        ..base(AttributeType::String)
    };
    match kind {
        AttributeType::Int => vec![int(-7), int(7), int(i64::MIN), int(i64::MAX), int(0)],
        AttributeType::Ints => vec![
            ints(vec![]),
            ints(vec![-7; 3]),
            ints(vec![i64::MIN, i64::MAX]),
            ints(vec![0; 12]),
            ints(vec![1 << 40; 2]),
        ],
        AttributeType::Float => vec![
            float(f32::NAN),
            float(f32::NEG_INFINITY),
            float(-1.0),
            float(1e30),
        ],
        AttributeType::Floats => vec![
            AttributeProto {
                floats: vec![],
                ..base(AttributeType::Floats)
            },
            AttributeProto {
                floats: vec![f32::NAN, f32::INFINITY, -1e30],
                ..base(AttributeType::Floats)
            },
        ],
        AttributeType::String => vec![string(""), string("no-such-mode"), string("ij,jk->")],
        AttributeType::Strings => vec![AttributeProto {
            strings: vec![vec![], b"x".to_vec()],
            ..base(AttributeType::Strings)
        }],
        AttributeType::Tensor => vec![
            AttributeProto {
                t: Some(tensor(INT64, &[2, 2], Values::Extreme, "")),
                ..base(AttributeType::Tensor)
            },
            AttributeProto {
                t: Some(tensor(FLOAT, &[0], Values::Small, "")),
                ..base(AttributeType::Tensor)
            },
        ],
        AttributeType::Graph => vec![AttributeProto {
            g: Some(GraphProto {
                name: Some("body".into()),
                node: vec![NodeProto {
                    op_type: Some("Identity".into()),
                    input: vec!["missing".into()],
                    output: vec!["o".into()],
                    ..Default::default()
                }],
                output: vec![ValueInfoProto {
                    name: Some("o".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..base(AttributeType::Graph)
        }],
        _ => vec![],
    }
}

/// The value a required attribute gets in the base model; lists are as long as an input
/// of rank `rank` wants (`kernel_shape` one per spatial axis, `pads` two per axis).
fn plausible(name: &str, kind: AttributeType, rank: usize) -> AttributeProto {
    let base = AttributeProto {
        r#type: Some(kind as i32),
        ..Default::default()
    };
    match kind {
        AttributeType::Int => AttributeProto { i: Some(1), ..base },
        AttributeType::Ints => {
            let len = match name {
                "kernel_shape" | "pooled_shape" => rank.saturating_sub(2),
                "pads" => 2 * rank,
                _ => rank,
            };
            AttributeProto {
                ints: vec![1; len.max(1)],
                ..base
            }
        }
        AttributeType::Float => AttributeProto {
            f: Some(1.0),
            ..base
        },
        AttributeType::Floats => AttributeProto {
            floats: vec![1.0, 1.0],
            ..base
        },
        AttributeType::String => AttributeProto {
            s: Some(b"ij,jk->ik".to_vec()),
            ..base
        },
        AttributeType::Strings => AttributeProto {
            strings: vec![b"a".to_vec()],
            ..base
        },
        AttributeType::Tensor => AttributeProto {
            t: Some(tensor(FLOAT, &[], Values::Small, "")),
            ..base
        },
        AttributeType::Graph => AttributeProto {
            g: Some(GraphProto {
                name: Some("body".into()),
                ..Default::default()
            }),
            ..base
        },
        _ => base,
    }
}

/// An attribute of another type than `kind`.
fn mistyped(kind: AttributeType) -> AttributeProto {
    if kind == AttributeType::Int {
        AttributeProto {
            r#type: Some(AttributeType::Floats as i32),
            floats: vec![1.5],
            ..Default::default()
        }
    } else {
        AttributeProto {
            r#type: Some(AttributeType::Int as i32),
            i: Some(1),
            ..Default::default()
        }
    }
}

/// Bytes per element of the element types the sweep writes as raw data (0: none).
fn elem_size(code: i32) -> usize {
    match code {
        2 | 3 | 9 => 1,
        4 | 5 | 10 | 16 => 2,
        1 | 6 | 12 => 4,
        7 | 11 | 13 => 8,
        _ => 0,
    }
}

/// The little-endian bytes of `v` as element type `code`.
fn encode(code: i32, v: f64) -> Vec<u8> {
    match code {
        1 => (v as f32).to_le_bytes().to_vec(),
        11 => v.to_le_bytes().to_vec(),
        10 => half::f16::from_f64(v).to_le_bytes().to_vec(),
        16 => half::bf16::from_f64(v).to_le_bytes().to_vec(),
        2 | 9 => vec![if code == 9 {
            (v != 0.0) as u8
        } else {
            v as i64 as u8
        }],
        3 => (v as i64 as i8).to_le_bytes().to_vec(),
        4 => (v as i64 as u16).to_le_bytes().to_vec(),
        5 => (v as i64 as i16).to_le_bytes().to_vec(),
        6 => (v as i64 as i32).to_le_bytes().to_vec(),
        12 => (v as i64 as u32).to_le_bytes().to_vec(),
        7 => (v as i64).to_le_bytes().to_vec(),
        13 => (v as i64 as u64).to_le_bytes().to_vec(),
        _ => vec![],
    }
}

/// A tensor of `dims` filled with a fixed pattern of values.
fn tensor(code: i32, dims: &[i64], values: Values, name: &str) -> TensorProto {
    let count: i64 = dims.iter().product();
    let pattern: &[f64] = match values {
        Values::Small => &[1.0, 0.0, 2.0, -1.0, 3.0, 0.5],
        // i64::MAX and MIN as f64 round to 2^63 and -2^63, which saturate on the way back.
        Values::Extreme => &[9.3e18, -9.3e18, 4.0e9, -1.0, 1e30, 0.0],
    };
    let raw_data = (0..count as usize)
        .flat_map(|i| encode(code, pattern[i % pattern.len()]))
        .collect();
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(code),
        raw_data: (elem_size(code) > 0).then_some(raw_data),
        ..Default::default()
    }
}

fn value_info(name: &str, code: Option<i32>, dims: Option<&[i64]>) -> ValueInfoProto {
    let shape = dims.map(|d| TensorShapeProto {
        dim: d
            .iter()
            .map(|&v| tensor_shape_proto::Dimension {
                value: Some(tensor_shape_proto::dimension::Value::DimValue(v)),
                denotation: None,
            })
            .collect(),
    });
    ValueInfoProto {
        name: Some(name.into()),
        r#type: code.map(|c| TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(c),
                shape,
            })),
            denotation: None,
        }),
        ..Default::default()
    }
}

/// The element type of constraint `c` in the base model.
fn base_type(schema: &Schema, c: &str) -> i32 {
    let allowed = schema.allowed(c);
    PREFERRED
        .into_iter()
        .find(|p| allowed.contains(p))
        .or_else(|| allowed.first().copied())
        .unwrap_or(FLOAT)
}

/// The input slots of a node: for each, the index of its formal parameter, or `None` for
/// an empty name.
fn slots(schema: &Schema, which: &Slots) -> Vec<Option<usize>> {
    let declared = |i: usize| -> Vec<Option<usize>> {
        if schema.inputs[i].arity == Arity::Variadic {
            vec![Some(i), Some(i)]
        } else {
            vec![Some(i)]
        }
    };
    let required: Vec<Option<usize>> = (0..schema.min_inputs())
        .flat_map(|i| match schema.inputs[i].arity {
            Arity::Optional => vec![None],
            Arity::Variadic => vec![Some(i)],
            Arity::Single => vec![Some(i)],
        })
        .collect();
    let all: Vec<Option<usize>> = (0..schema.inputs.len()).flat_map(declared).collect();
    match *which {
        Slots::Required => required,
        Slots::All => all,
        Slots::OnlyOptional(k) => {
            let mut v = required;
            if k >= v.len() {
                v.resize(k + 1, None);
            }
            v[k] = Some(k);
            v
        }
        Slots::EmptyNamed(k) => all.into_iter().map(|s| s.filter(|&i| i != k)).collect(),
        Slots::OneTooMany => {
            let mut v = all;
            v.push(Some(0).filter(|_| !schema.inputs.is_empty()));
            v
        }
        Slots::OneTooFew => {
            let mut v = required;
            v.pop();
            v
        }
    }
}

/// The encoded model of one variant.
fn build(schema: &Schema, v: &Variant) -> Vec<u8> {
    let elem_of = |param: usize| -> i32 {
        let c = schema
            .inputs
            .get(param)
            .map_or("", |p| p.constraint.as_str());
        match &v.elem {
            Some((constraint, code)) if constraint == c => *code,
            _ if c.is_empty() => FLOAT,
            _ => base_type(schema, c),
        }
    };
    let dims_of = |slot: usize| -> Vec<i64> {
        match v.shapes {
            Shapes::Uniform(p, r) => p.dims(r),
            Shapes::OneRank { slot: k, rank, .. } if k == slot => Profile::Twos.dims(rank),
            Shapes::OneRank { base, .. } => Profile::Twos.dims(base),
            Shapes::Vectors(r) | Shapes::Scalars(r) if slot == 0 => Profile::Twos.dims(r),
            Shapes::Vectors(r) => vec![r.max(1) as i64],
            Shapes::Scalars(_) => vec![],
        }
    };
    let mut node = NodeProto {
        op_type: Some(schema.op_type.clone()),
        name: Some("n".into()),
        ..Default::default()
    };
    let (mut inputs, mut inits) = (Vec::new(), Vec::new());
    for (slot, param) in slots(schema, &v.slots).into_iter().enumerate() {
        let Some(param) = param else {
            node.input.push(String::new());
            continue;
        };
        let name = format!("in{slot}");
        let (code, dims) = (elem_of(param), dims_of(slot));
        let constant = match v.source {
            Source::Mixed => slot > 0,
            Source::Dynamic => false,
            Source::Constant => true,
        };
        if constant && elem_size(code) > 0 {
            inits.push(tensor(code, &dims, v.values, &name));
        } else {
            inputs.push(value_info(&name, Some(code), Some(&dims)));
        }
        node.input.push(name);
    }
    let outputs: usize = schema
        .outputs
        .iter()
        .map(|p| if p.arity == Arity::Variadic { 2 } else { 1 })
        .sum();
    node.output = (0..outputs.max(1)).map(|i| format!("out{i}")).collect();
    for (i, a) in schema.attrs.iter().enumerate() {
        let proto = match &v.attr {
            Some(AttrChange::Missing(k)) if *k == i => continue,
            Some(AttrChange::WrongType(k)) if *k == i => mistyped(a.kind),
            Some(AttrChange::OutOfRange(k, j)) if *k == i => out_of_range(a.kind)[*j].clone(),
            _ if a.required => plausible(&a.name, a.kind, v.shapes.lead_rank()),
            _ => continue,
        };
        node.attribute.push(AttributeProto {
            name: Some(a.name.clone()),
            ..proto
        });
    }
    let graph_outputs = node
        .output
        .iter()
        .map(|o| value_info(o, None, None))
        .collect();
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(schema.since),
        }],
        producer_name: Some("smelt-op-sweep".into()),
        graph: Some(GraphProto {
            name: Some("sweep".into()),
            node: vec![node],
            input: inputs,
            output: graph_outputs,
            initializer: inits,
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// The variants of one schema.
fn variants(schema: &Schema) -> Vec<Variant> {
    let mut out = Vec::new();
    // Ranks 0 to 5, with dims of 2, one dim 0, or dims of 1 (and 3).
    for slots in [Slots::Required, Slots::All] {
        for rank in 0..=5 {
            for profile in [Profile::Twos, Profile::WithZero, Profile::WithOnes] {
                if rank == 0 && !matches!(profile, Profile::Twos) {
                    continue;
                }
                out.push(Variant {
                    slots: slots.clone(),
                    ..Variant::new(Shapes::Uniform(profile, rank))
                });
            }
            for shapes in [Shapes::Vectors(rank), Shapes::Scalars(rank)] {
                out.push(Variant {
                    slots: slots.clone(),
                    ..Variant::new(shapes)
                });
            }
        }
    }
    for rank in 0..=5 {
        for source in [Source::Dynamic, Source::Constant] {
            out.push(Variant {
                source,
                ..Variant::new(Shapes::Uniform(Profile::Twos, rank))
            });
        }
        for shapes in [
            Shapes::Uniform(Profile::Twos, rank),
            Shapes::Vectors(rank),
            Shapes::Scalars(rank),
        ] {
            out.push(Variant {
                values: Values::Extreme,
                ..Variant::new(shapes)
            });
        }
    }
    // One input of another rank than the rest (a scalar weight beside a vector zero point).
    let listed = slots(schema, &Slots::All).len();
    for base in [1, 4] {
        for slot in 0..listed {
            for rank in (0..=5).filter(|&r| r != base) {
                out.push(Variant {
                    slots: Slots::All,
                    ..Variant::new(Shapes::OneRank { base, slot, rank })
                });
            }
        }
    }
    // Every element type a constraint allows, and one it does not.
    for c in schema.input_constraints() {
        let allowed = schema.allowed(c);
        let outsider = OUTSIDERS.into_iter().find(|t| !allowed.contains(t));
        for code in allowed.iter().copied().chain(outsider) {
            for shapes in [Shapes::Uniform(Profile::Twos, 2), Shapes::Vectors(3)] {
                out.push(Variant {
                    elem: Some((c.to_string(), code)),
                    ..Variant::new(shapes)
                });
            }
        }
    }
    // Optional inputs alone, and named empty among all the others.
    for (k, p) in schema.inputs.iter().enumerate() {
        if p.arity != Arity::Optional {
            continue;
        }
        for slots in [Slots::OnlyOptional(k), Slots::EmptyNamed(k)] {
            for shapes in [Shapes::Uniform(Profile::Twos, 3), Shapes::Vectors(3)] {
                out.push(Variant {
                    slots: slots.clone(),
                    ..Variant::new(shapes)
                });
            }
        }
    }
    for slots in [Slots::OneTooMany, Slots::OneTooFew] {
        for shapes in [Shapes::Uniform(Profile::Twos, 3), Shapes::Vectors(3)] {
            out.push(Variant {
                slots: slots.clone(),
                ..Variant::new(shapes)
            });
        }
    }
    // Attributes missing (the required ones), mistyped and out of range.
    for (i, a) in schema.attrs.iter().enumerate() {
        let mut changes = vec![AttrChange::WrongType(i)];
        if a.required {
            changes.push(AttrChange::Missing(i));
        }
        changes.extend((0..out_of_range(a.kind).len()).map(|j| AttrChange::OutOfRange(i, j)));
        for change in changes {
            for shapes in [
                Shapes::Uniform(Profile::Twos, 2),
                Shapes::Uniform(Profile::Twos, 4),
                Shapes::Vectors(3),
                Shapes::Scalars(2),
            ] {
                out.push(Variant {
                    attr: Some(change.clone()),
                    ..Variant::new(shapes)
                });
            }
        }
    }
    out
}

/// Every model of the sweep for `schema`.
pub fn cases(schema: &Schema) -> Vec<Case> {
    variants(schema)
        .iter()
        .map(|v| Case {
            name: format!("{}@{}/{}", schema.op_type, schema.since, v.label()),
            model: build(schema, v),
        })
        .collect()
}
