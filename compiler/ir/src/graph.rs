//! The SSA dataflow graph: values with tensor types, nodes with an op and operands.

use crate::error::{IrError, Result};
use crate::infer::infer;
use crate::op::Op;
use crate::shape::TensorType;
use std::collections::HashMap;

/// Index of a value in [`Graph::values`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub u32);

impl ValueId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A named, typed SSA value.
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    pub name: String,
    pub ty: TensorType,
}

/// One operation applied to operand values, defining its result values.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Where the node came from (the ONNX node name, say); may be empty.
    pub name: String,
    pub op: Op,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
}

/// A graph: nodes in topological order over SSA values.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Graph {
    pub name: String,
    pub values: Vec<Value>,
    pub nodes: Vec<Node>,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
    names: HashMap<String, ValueId>,
}

impl Graph {
    pub fn new(name: impl Into<String>) -> Graph {
        Graph {
            name: name.into(),
            ..Graph::default()
        }
    }

    pub fn value(&self, id: ValueId) -> &Value {
        &self.values[id.index()]
    }

    pub fn ty(&self, id: ValueId) -> &TensorType {
        &self.values[id.index()].ty
    }

    /// Looks a value up by name.
    pub fn find(&self, name: &str) -> Option<ValueId> {
        self.names.get(name).copied()
    }

    /// A name not yet used in the graph, `base` itself when free.
    pub fn fresh_name(&self, base: &str) -> String {
        if !self.names.contains_key(base) {
            return base.to_string();
        }
        (1..)
            .map(|i| format!("{base}.{i}"))
            .find(|n| !self.names.contains_key(n))
            .expect("unbounded")
    }

    /// Adds a value with a unique name (made unique with a suffix if taken).
    pub fn add_value(&mut self, name: &str, ty: TensorType) -> ValueId {
        let name = self.fresh_name(name);
        let id = ValueId(self.values.len() as u32);
        self.names.insert(name.clone(), id);
        self.values.push(Value { name, ty });
        id
    }

    /// Adds a graph input.
    pub fn add_input(&mut self, name: &str, ty: TensorType) -> ValueId {
        let id = self.add_value(name, ty);
        self.inputs.push(id);
        id
    }

    /// Appends a node, inferring its result types; `output_names` may be shorter than the results.
    pub fn add_node(
        &mut self,
        name: &str,
        op: Op,
        inputs: &[ValueId],
        output_names: &[&str],
    ) -> Result<Vec<ValueId>> {
        let types: Vec<&TensorType> = inputs.iter().map(|&v| self.ty(v)).collect();
        let out_types =
            infer(&op, &types).map_err(|reason| IrError::invalid(name, op.mnemonic(), reason))?;
        let outputs = out_types
            .into_iter()
            .enumerate()
            .map(|(i, ty)| {
                let vname = match output_names.get(i) {
                    Some(n) => n.to_string(),
                    None if name.is_empty() => format!("v{}", self.values.len()),
                    None => format!("{name}:{i}"),
                };
                self.add_value(&vname, ty)
            })
            .collect::<Vec<_>>();
        self.nodes.push(Node {
            name: name.to_string(),
            op,
            inputs: inputs.to_vec(),
            outputs: outputs.clone(),
        });
        Ok(outputs)
    }

    /// Appends a single-result node and returns its value.
    pub fn add(&mut self, name: &str, op: Op, inputs: &[ValueId]) -> Result<ValueId> {
        Ok(self.add_node(name, op, inputs, &[])?[0])
    }

    /// Renames a value; fails when the name is taken by another value.
    pub fn rename(&mut self, id: ValueId, name: &str) -> Result<()> {
        if let Some(&other) = self.names.get(name) {
            if other == id {
                return Ok(());
            }
            return Err(IrError::Graph {
                graph: self.name.clone(),
                reason: format!("value name '{name}' is already used"),
            });
        }
        let old = std::mem::replace(&mut self.values[id.index()].name, name.to_string());
        self.names.remove(&old);
        self.names.insert(name.to_string(), id);
        Ok(())
    }

    /// Index of the node defining each value (`None` for graph inputs).
    pub fn producers(&self) -> Vec<Option<usize>> {
        let mut p = vec![None; self.values.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            for o in &n.outputs {
                p[o.index()] = Some(i);
            }
        }
        p
    }

    /// Turns a graph input into a constant with the given value (specialization).
    pub fn bind_input(&mut self, id: ValueId, value: crate::tensor::Tensor) -> Result<()> {
        let pos = self
            .inputs
            .iter()
            .position(|&v| v == id)
            .ok_or_else(|| IrError::Graph {
                graph: self.name.clone(),
                reason: format!("'{}' is not a graph input", self.value(id).name),
            })?;
        self.inputs.remove(pos);
        self.values[id.index()].ty = value.tensor_type();
        let name = self.value(id).name.clone();
        self.nodes.insert(
            0,
            Node {
                name,
                op: Op::Constant(value),
                inputs: vec![],
                outputs: vec![id],
            },
        );
        Ok(())
    }

    /// Checks SSA form, topological order, unique names, arity and that stored types match inference.
    pub fn verify(&self) -> Result<()> {
        let err = |reason: String| IrError::Graph {
            graph: self.name.clone(),
            reason,
        };
        let mut defined = vec![false; self.values.len()];
        let mut seen_names = HashMap::new();
        for (i, v) in self.values.iter().enumerate() {
            if let Some(j) = seen_names.insert(v.name.as_str(), i) {
                return Err(err(format!(
                    "values {j} and {i} share the name '{}'",
                    v.name
                )));
            }
        }
        let in_range = |id: ValueId| id.index() < self.values.len();
        for &i in &self.inputs {
            if !in_range(i) || std::mem::replace(&mut defined[i.index()], true) {
                return Err(err(format!("graph input {} is invalid or repeated", i.0)));
            }
        }
        for node in &self.nodes {
            let invalid = |reason: String| IrError::invalid(&node.name, node.op.mnemonic(), reason);
            for &i in &node.inputs {
                if !in_range(i) || !defined[i.index()] {
                    return Err(invalid(format!(
                        "operand %{} is used before it is defined",
                        self.value_name_or(i)
                    )));
                }
            }
            let types: Vec<&TensorType> = node.inputs.iter().map(|&v| self.ty(v)).collect();
            let expected = infer(&node.op, &types).map_err(invalid)?;
            if expected.len() != node.outputs.len() {
                return Err(invalid(format!(
                    "defines {} results, the op has {}",
                    node.outputs.len(),
                    expected.len()
                )));
            }
            for (&o, want) in node.outputs.iter().zip(&expected) {
                if !in_range(o) || std::mem::replace(&mut defined[o.index()], true) {
                    return Err(invalid(format!(
                        "result %{} is defined twice",
                        self.value_name_or(o)
                    )));
                }
                if self.ty(o) != want {
                    return Err(invalid(format!(
                        "result %{} has type {} but inference gives {want}",
                        self.value(o).name,
                        self.ty(o)
                    )));
                }
            }
        }
        for &o in &self.outputs {
            if !in_range(o) || !defined[o.index()] {
                return Err(err(format!(
                    "graph output {} is never defined",
                    self.value_name_or(o)
                )));
            }
        }
        Ok(())
    }

    fn value_name_or(&self, id: ValueId) -> String {
        self.values
            .get(id.index())
            .map(|v| v.name.clone())
            .unwrap_or_else(|| format!("#{}", id.0))
    }

    /// Rebuilds the name index after values were edited in place.
    pub fn reindex_names(&mut self) {
        self.names = self
            .values
            .iter()
            .enumerate()
            .map(|(i, v)| (v.name.clone(), ValueId(i as u32)))
            .collect();
    }
}

impl Graph {
    /// Makes every use of `old` (operands and graph outputs) use `new` instead.
    pub fn replace_uses(&mut self, old: ValueId, new: ValueId) {
        for n in &mut self.nodes {
            for i in &mut n.inputs {
                if *i == old {
                    *i = new;
                }
            }
        }
        for o in &mut self.outputs {
            if *o == old {
                *o = new;
            }
        }
    }

    /// Drops nodes that no graph output depends on, and values no node or
    /// input defines, renumbering the rest in order. Returns the nodes removed.
    pub fn compact(&mut self) -> usize {
        let mut live = vec![false; self.values.len()];
        for o in &self.outputs {
            live[o.index()] = true;
        }
        let mut keep = vec![false; self.nodes.len()];
        for (i, n) in self.nodes.iter().enumerate().rev() {
            if n.outputs.iter().any(|o| live[o.index()]) {
                keep[i] = true;
                for v in &n.inputs {
                    live[v.index()] = true;
                }
            }
        }
        let removed = keep.iter().filter(|k| !**k).count();
        let nodes: Vec<Node> = std::mem::take(&mut self.nodes)
            .into_iter()
            .zip(&keep)
            .filter(|(_, k)| **k)
            .map(|(n, _)| n)
            .collect();
        // Renumber: inputs first, then node results in order; unused results of kept nodes stay.
        let mut map = vec![None; self.values.len()];
        let mut values = Vec::new();
        let take = |id: ValueId, values: &mut Vec<Value>, map: &mut Vec<Option<ValueId>>| {
            if map[id.index()].is_none() {
                map[id.index()] = Some(ValueId(values.len() as u32));
                values.push(self.values[id.index()].clone());
            }
        };
        for &i in &self.inputs {
            take(i, &mut values, &mut map);
        }
        for n in &nodes {
            for &o in &n.outputs {
                take(o, &mut values, &mut map);
            }
        }
        let m = |id: ValueId| {
            map[id.index()].expect("every used value is defined by an input or a kept node")
        };
        self.nodes = nodes
            .into_iter()
            .map(|n| Node {
                inputs: n.inputs.iter().map(|&v| m(v)).collect(),
                outputs: n.outputs.iter().map(|&v| m(v)).collect(),
                ..n
            })
            .collect();
        self.inputs = self.inputs.iter().map(|&v| m(v)).collect();
        self.outputs = self.outputs.iter().map(|&v| m(v)).collect();
        self.values = values;
        self.reindex_names();
        removed
    }

    /// Node counts by op mnemonic, sorted by name.
    pub fn op_histogram(&self) -> std::collections::BTreeMap<&'static str, usize> {
        let mut h = std::collections::BTreeMap::new();
        for n in &self.nodes {
            *h.entry(n.op.mnemonic()).or_insert(0) += 1;
        }
        h
    }
}
