//! Deterministic mutations for CI's fuzz pass (`cargo xtask fuzz --ci`): from a seed, a
//! fixed count of inputs derived from the saved ones, the same on every run. libFuzzer's own
//! loop is guided by coverage, which shifts with hash seeds and timing, so it cannot promise
//! the same executions twice; it stays with the random, time-bounded `cargo xtask fuzz`.
//!
//! ONNX models are mutated through their structure (op types swapped between models,
//! inputs dropped or added, attributes, dims, element types and opsets set to edge values)
//! or as bytes; graph text by lines and tokens, or as bytes.

use prost::Message;
use smelt_onnx::proto::{ModelProto, NodeProto, TensorProto, ValueInfoProto, type_proto};

/// SplitMix64: a small, fixed pseudo-random sequence.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        (!items.is_empty()).then(|| &items[self.below(items.len())])
    }
}

/// What kind of input a target takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    OnnxModel,
    GraphText,
}

/// Integers at the edges: of ranks, of sizes, of the signed and unsigned types.
const EDGE_INTS: [i64; 12] = [
    0,
    1,
    -1,
    2,
    3,
    -2,
    7,
    255,
    1 << 31,
    1 << 40,
    i64::MAX,
    i64::MIN,
];
const EDGE_FLOATS: [f32; 7] = [0.0, -1.0, 0.5, 1e30, f32::NAN, f32::INFINITY, -0.0];

/// `count` mutants of `inputs` (sorted as given), drawn from `seed`: the same on every run.
pub fn mutants(inputs: &[Vec<u8>], kind: InputKind, seed: u64, count: usize) -> Vec<Vec<u8>> {
    if inputs.is_empty() {
        return Vec::new();
    }
    let mut rng = Rng::new(seed);
    let op_types = match kind {
        InputKind::OnnxModel => op_types(inputs),
        InputKind::GraphText => Vec::new(),
    };
    (0..count)
        .map(|_| {
            let mut data = inputs[rng.below(inputs.len())].clone();
            for _ in 0..1 + rng.below(3) {
                let other = &inputs[rng.below(inputs.len())];
                data = match (kind, rng.below(3)) {
                    (InputKind::OnnxModel, 0 | 1) => {
                        mutate_model(&mut rng, &data, &op_types).unwrap_or(data)
                    }
                    (InputKind::GraphText, 0 | 1) => mutate_text(&mut rng, &data),
                    _ => mutate_bytes(&mut rng, data, other),
                };
            }
            data
        })
        .collect()
}

/// Every op type the models use, sorted: a node's op type is swapped for another of them.
fn op_types(inputs: &[Vec<u8>]) -> Vec<String> {
    let mut ops: Vec<String> = inputs
        .iter()
        .filter_map(|d| ModelProto::decode(d.as_slice()).ok())
        .flat_map(|m| m.graph.into_iter().flat_map(|g| g.node))
        .filter_map(|n| n.op_type)
        .collect();
    ops.sort();
    ops.dedup();
    ops
}

/// libFuzzer-style byte mutations: bit flips, edge bytes, erased, repeated or foreign runs.
fn mutate_bytes(rng: &mut Rng, mut data: Vec<u8>, other: &[u8]) -> Vec<u8> {
    if data.is_empty() {
        return other.to_vec();
    }
    let at = rng.below(data.len());
    let run = 1 + rng.below(16.min(data.len() - at));
    match rng.below(6) {
        0 => data[at] ^= 1 << rng.below(8),
        1 => data[at] = [0, 1, 0x7f, 0x80, 0xff][rng.below(5)],
        2 => {
            data.drain(at..at + run);
        }
        3 => {
            let copy = data[at..at + run].to_vec();
            let to = rng.below(data.len() + 1);
            data.splice(to..to, copy);
        }
        4 if !other.is_empty() => {
            let from = rng.below(other.len());
            let len = run.min(other.len() - from);
            data[at..at + len].copy_from_slice(&other[from..from + len]);
        }
        _ => data.truncate(at),
    }
    data
}

/// Graph text mutations: a line dropped, repeated or moved; a number set to an edge value.
fn mutate_text(rng: &mut Rng, data: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(data);
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    if lines.is_empty() {
        return data.to_vec();
    }
    let at = rng.below(lines.len());
    match rng.below(4) {
        0 => {
            lines.remove(at);
        }
        1 => {
            let line = lines[at].clone();
            lines.insert(rng.below(lines.len() + 1), line);
        }
        2 => {
            let line = lines.remove(at);
            lines.insert(rng.below(lines.len() + 1), line);
        }
        _ => {
            let numbers: Vec<(usize, usize)> = number_spans(&lines[at]);
            if let Some(&(start, end)) = rng.pick(&numbers) {
                let edge = EDGE_INTS[rng.below(EDGE_INTS.len())].to_string();
                lines[at].replace_range(start..end, &edge);
            }
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out.into_bytes()
}

/// The byte spans of the decimal numbers in `line`.
fn number_spans(line: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut start = None;
    for (i, c) in line
        .char_indices()
        .chain(std::iter::once((line.len(), ' ')))
    {
        match (c.is_ascii_digit(), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                spans.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    spans
}

/// One structural mutation of a model, or `None` if it does not decode.
fn mutate_model(rng: &mut Rng, data: &[u8], op_types: &[String]) -> Option<Vec<u8>> {
    let mut model = ModelProto::decode(data).ok()?;
    let graph = model.graph.as_mut()?;
    match rng.below(6) {
        0 => {
            let version = 1 + rng.below(30) as i64;
            if let Some(o) = model.opset_import.first_mut() {
                o.version = Some(version);
            }
        }
        1 => {
            if let Some(vi) = pick_mut(rng, &mut graph.input) {
                mutate_value_info(rng, vi);
            }
        }
        2 => {
            if let Some(t) = pick_mut(rng, &mut graph.initializer) {
                mutate_tensor(rng, t);
            }
        }
        3 => {
            let op = rng.pick(op_types).cloned();
            if let (Some(n), Some(op)) = (pick_mut(rng, &mut graph.node), op) {
                n.op_type = Some(op);
            }
        }
        4 => {
            let names: Vec<String> = graph
                .node
                .iter()
                .flat_map(|n| n.input.iter().chain(&n.output).cloned())
                .collect();
            if let Some(n) = pick_mut(rng, &mut graph.node) {
                mutate_node_inputs(rng, n, &names);
            }
        }
        _ => {
            if let Some(n) = pick_mut(rng, &mut graph.node) {
                mutate_attribute(rng, n);
            }
        }
    }
    Some(model.encode_to_vec())
}

fn pick_mut<'a, T>(rng: &mut Rng, items: &'a mut [T]) -> Option<&'a mut T> {
    if items.is_empty() {
        return None;
    }
    let i = rng.below(items.len());
    items.get_mut(i)
}

/// Dims changed, added or removed; the element type set to any code.
fn mutate_dims(rng: &mut Rng, dims: &mut Vec<i64>) {
    match rng.below(3) {
        0 if !dims.is_empty() => {
            let i = rng.below(dims.len());
            dims[i] = EDGE_INTS[rng.below(EDGE_INTS.len())];
        }
        1 => dims.insert(rng.below(dims.len() + 1), [0, 1, 2][rng.below(3)]),
        _ if !dims.is_empty() => {
            dims.remove(rng.below(dims.len()));
        }
        _ => dims.push(1),
    }
}

fn mutate_value_info(rng: &mut Rng, vi: &mut ValueInfoProto) {
    let Some(type_proto::Value::TensorType(t)) = vi.r#type.as_mut().and_then(|t| t.value.as_mut())
    else {
        return;
    };
    if rng.below(3) == 0 {
        t.elem_type = Some(rng.below(24) as i32);
        return;
    }
    let Some(shape) = t.shape.as_mut() else {
        return;
    };
    use smelt_onnx::proto::tensor_shape_proto::{Dimension, dimension::Value};
    let mut dims: Vec<i64> = shape
        .dim
        .iter()
        .map(|d| match d.value {
            Some(Value::DimValue(v)) => v,
            _ => 2,
        })
        .collect();
    mutate_dims(rng, &mut dims);
    shape.dim = dims
        .into_iter()
        .map(|v| Dimension {
            value: Some(Value::DimValue(v)),
            denotation: None,
        })
        .collect();
}

fn mutate_tensor(rng: &mut Rng, t: &mut TensorProto) {
    match rng.below(4) {
        0 => t.data_type = Some(rng.below(24) as i32),
        1 => {
            if let Some(raw) = t.raw_data.as_mut() {
                raw.truncate(rng.below(raw.len() + 1));
            }
        }
        2 => {
            let edge = EDGE_INTS[rng.below(EDGE_INTS.len())];
            if !t.int64_data.is_empty() {
                let at = rng.below(t.int64_data.len());
                t.int64_data[at] = edge;
            } else if let Some(raw) = t.raw_data.as_mut().filter(|r| r.len() >= 8) {
                let at = 8 * rng.below(raw.len() / 8);
                let mut bytes = raw.to_vec();
                bytes[at..at + 8].copy_from_slice(&edge.to_le_bytes());
                *raw = bytes.into();
            }
        }
        _ => mutate_dims(rng, &mut t.dims),
    }
}

/// An input dropped, emptied, repeated or renamed to another value of the graph.
fn mutate_node_inputs(rng: &mut Rng, n: &mut NodeProto, names: &[String]) {
    match rng.below(4) {
        0 if !n.input.is_empty() => {
            n.input.remove(rng.below(n.input.len()));
        }
        1 if !n.input.is_empty() => {
            let i = rng.below(n.input.len());
            n.input[i] = String::new();
        }
        2 => {
            if let Some(name) = rng.pick(names) {
                n.input.push(name.clone());
            }
        }
        _ => {
            if let (false, Some(name)) = (n.input.is_empty(), rng.pick(names)) {
                let i = rng.below(n.input.len());
                n.input[i] = name.clone();
            }
        }
    }
}

/// An attribute's value set to an edge, its type changed, or the attribute dropped.
fn mutate_attribute(rng: &mut Rng, n: &mut NodeProto) {
    let len = n.attribute.len();
    if len == 0 {
        return;
    }
    let i = rng.below(len);
    let a = &mut n.attribute[i];
    match rng.below(6) {
        0 => a.i = Some(EDGE_INTS[rng.below(EDGE_INTS.len())]),
        1 => a.f = Some(EDGE_FLOATS[rng.below(EDGE_FLOATS.len())]),
        2 => {
            if a.ints.is_empty() {
                a.ints.push(EDGE_INTS[rng.below(EDGE_INTS.len())]);
            } else {
                let j = rng.below(a.ints.len());
                a.ints[j] = EDGE_INTS[rng.below(EDGE_INTS.len())];
            }
        }
        3 => {
            if !a.ints.is_empty() && rng.below(2) == 0 {
                a.ints.pop();
            } else {
                a.ints.push([0, 1, -1][rng.below(3)]);
            }
        }
        4 => a.r#type = Some(rng.below(15) as i32),
        _ => {
            n.attribute.remove(i);
        }
    }
}

/// FNV-1a over the inputs in order, each with its length: equal digests mean the same
/// inputs, which is what CI's log shows to tell two fuzz passes apart.
pub fn digest<'a>(inputs: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    for input in inputs {
        (input.len() as u64)
            .to_le_bytes()
            .into_iter()
            .for_each(&mut eat);
        input.iter().copied().for_each(&mut eat);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutants_are_the_same_for_a_seed_and_differ_across_seeds() {
        let inputs = vec![b"graph g(x: f32[2, 3]) {\n  y = relu(x)\n}\n".to_vec()];
        let a = mutants(&inputs, InputKind::GraphText, 7, 50);
        assert_eq!(a, mutants(&inputs, InputKind::GraphText, 7, 50));
        assert_ne!(a, mutants(&inputs, InputKind::GraphText, 8, 50));
        assert!(a.iter().any(|m| m != &inputs[0]));
        assert_ne!(
            digest(a.iter().map(Vec::as_slice)),
            digest(inputs.iter().map(Vec::as_slice))
        );
    }
}
