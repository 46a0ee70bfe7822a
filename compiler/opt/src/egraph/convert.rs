//! Graph to e-graph and back: single-result nodes become e-nodes, multi-result nodes
//! stay outside as opaque leaves and are re-emitted on extraction.

use super::cost::node_cost;
use super::lang::{Analysis, EGraph, ENode, Head};
use egg::Id;
use smelt_ir::{Graph, Node, Op, TensorType, ValueId};
use std::collections::HashMap;

/// A graph loaded into an e-graph, with what extraction needs to rebuild it.
#[derive(Debug)]
pub struct Loaded {
    pub egraph: EGraph,
    /// The class of each graph value that the e-graph holds.
    pub class_of: HashMap<ValueId, Id>,
    /// Multi-result nodes kept outside, by the index of their first result.
    pub outside: Vec<Node>,
}

/// Adds an op node after checking that it type-checks; `None` when it does not.
pub fn try_add(egraph: &mut EGraph, op: Op, children: Vec<Id>) -> Option<Id> {
    let types: Vec<TensorType> = children
        .iter()
        .map(|&c| egraph[c].data.ty.clone())
        .collect();
    let refs: Vec<&TensorType> = types.iter().collect();
    if smelt_ir::infer::infer(&op, &refs)
        .map(|v| v.len() != 1)
        .unwrap_or(true)
    {
        return None;
    }
    let head = egraph.analysis.intern_op(op);
    Some(egraph.add(ENode { head, children }))
}

/// Loads `g` into a fresh e-graph.
pub fn load(g: &Graph, fold_budget: usize) -> Loaded {
    let mut egraph = EGraph::new(Analysis::new(
        g.inputs.iter().map(|&i| g.ty(i).clone()).collect(),
        fold_budget,
    ));
    let mut class_of = HashMap::new();
    for (i, &v) in g.inputs.iter().enumerate() {
        class_of.insert(
            v,
            egraph.add(ENode {
                head: Head::Input(i as u32),
                children: vec![],
            }),
        );
    }
    let mut outside = Vec::new();
    for n in &g.nodes {
        let children: Vec<Id> = n.inputs.iter().map(|v| class_of[v]).collect();
        if let Op::Constant(t) = &n.op {
            let k = egraph.analysis.intern_const(t.clone());
            class_of.insert(
                n.outputs[0],
                egraph.add(ENode {
                    head: Head::Const(k),
                    children: vec![],
                }),
            );
        } else if n.outputs.len() == 1 {
            let head = egraph.analysis.intern_op(n.op.clone());
            class_of.insert(n.outputs[0], egraph.add(ENode { head, children }));
        } else {
            for &o in &n.outputs {
                egraph.analysis.opaque_types.insert(o.0, g.ty(o).clone());
                class_of.insert(
                    o,
                    egraph.add(ENode {
                        head: Head::Opaque(o.0),
                        children: vec![],
                    }),
                );
            }
            outside.push(n.clone());
        }
    }
    egraph.rebuild();
    Loaded {
        egraph,
        class_of,
        outside,
    }
}

/// Extraction cost: the node's own estimated time plus its operands'.
#[derive(Debug)]
pub struct CostFn<'a> {
    pub egraph: &'a EGraph,
}

impl egg::CostFunction<ENode> for CostFn<'_> {
    type Cost = f64;

    fn cost<C: FnMut(Id) -> f64>(&mut self, enode: &ENode, mut costs: C) -> f64 {
        enode
            .children
            .iter()
            .fold(own_cost(self.egraph, enode), |acc, &c| acc + costs(c))
    }
}

/// The own cost of an e-node (its operands excluded).
fn own_cost(eg: &EGraph, n: &ENode) -> f64 {
    match &n.head {
        Head::Op(..) => {
            let op = eg.analysis.op(&n.head).expect("op head");
            let types: Vec<&TensorType> = n.children.iter().map(|&c| &eg[c].data.ty).collect();
            match smelt_ir::infer::infer(op, &types) {
                Ok(out) => node_cost(op, &types, &out[0]),
                Err(_) => f64::INFINITY,
            }
        }
        _ => 0.0,
    }
}

/// The cost of a selection as a DAG: every chosen node reachable from `roots`, once.
/// `None` when the selection has a cycle.
fn dag_cost(eg: &EGraph, choice: &HashMap<Id, ENode>, roots: &[Id]) -> Option<f64> {
    let mut state: HashMap<Id, bool> = HashMap::new(); // false: on the stack, true: done
    let mut total = 0.0;
    let mut stack: Vec<(Id, bool)> = roots.iter().map(|&r| (eg.find(r), false)).collect();
    while let Some((c, expanded)) = stack.pop() {
        if expanded {
            state.insert(c, true);
            continue;
        }
        match state.get(&c) {
            Some(true) => continue,
            Some(false) => return None,
            None => {}
        }
        state.insert(c, false);
        let n = &choice[&c];
        total += own_cost(eg, n);
        stack.push((c, true));
        for &ch in &n.children {
            let ch = eg.find(ch);
            match state.get(&ch) {
                Some(false) => return None,
                Some(true) => {}
                None => stack.push((ch, false)),
            }
        }
    }
    Some(total)
}

/// Builds the graph of the cheapest choice in every needed class: the tree-cost optimum
/// from egg's extractor, then each merge group switched as a whole when that lowers
/// the DAG cost (a tree cost charges a shared node once per use, so it never would).
pub fn extract(
    loaded: &Loaded,
    original: &Graph,
    groups: &[super::rules::contraction::MergeGroup],
) -> Graph {
    let eg = &loaded.egraph;
    let extractor = egg::Extractor::new(eg, CostFn { egraph: eg });
    let mut choice: HashMap<Id, ENode> = eg
        .classes()
        .map(|c| (c.id, extractor.find_best_node(c.id).clone()))
        .collect();
    let roots: Vec<Id> = original
        .outputs
        .iter()
        .map(|o| eg.find(loaded.class_of[o]))
        .collect();
    for group in groups {
        let mm = eg.find(group.matmul);
        let mut trial = choice.clone();
        let mut complete = true;
        for &m in &group.members {
            let m = eg.find(m);
            let slice = eg[m]
                .nodes
                .iter()
                .find(|n| matches!(n.head, Head::Op("slice", _)) && eg.find(n.children[0]) == mm);
            match slice {
                Some(n) => {
                    trial.insert(m, n.clone());
                }
                None => complete = false,
            }
        }
        if let (true, Some(now), Some(then)) = (
            complete,
            dag_cost(eg, &choice, &roots),
            dag_cost(eg, &trial, &roots),
        ) && then < now
        {
            choice = trial;
        }
    }
    let mut g = Graph::new(original.name.clone());
    for &i in &original.inputs {
        g.add_input(&original.value(i).name, original.ty(i).clone());
    }
    let mut built: HashMap<Id, ValueId> = HashMap::new();
    let mut opaque: HashMap<u32, ValueId> = HashMap::new();
    let outputs: Vec<ValueId> = roots
        .iter()
        .map(|&r| {
            build(
                eg,
                &choice,
                r,
                &mut g,
                &mut built,
                &mut opaque,
                loaded,
                original,
            )
        })
        .collect();
    g.outputs = outputs;
    for (&o, &new) in original.outputs.iter().zip(&g.outputs.clone()) {
        if !g.inputs.contains(&new) {
            let _ = g.rename(new, &original.value(o).name);
        }
    }
    g
}

#[allow(clippy::too_many_arguments)]
fn build(
    eg: &EGraph,
    choice: &HashMap<Id, ENode>,
    class: Id,
    g: &mut Graph,
    built: &mut HashMap<Id, ValueId>,
    opaque: &mut HashMap<u32, ValueId>,
    loaded: &Loaded,
    original: &Graph,
) -> ValueId {
    let class = eg.find(class);
    if let Some(&v) = built.get(&class) {
        return v;
    }
    let node = choice[&class].clone();
    let v = match &node.head {
        Head::Input(i) => g.inputs[*i as usize],
        Head::Const(k) => g
            .add(
                "",
                Op::Constant(eg.analysis.consts[*k as usize].clone()),
                &[],
            )
            .expect("constants type-check"),
        Head::Opaque(o) => {
            if let Some(&v) = opaque.get(o) {
                v
            } else {
                let n = loaded
                    .outside
                    .iter()
                    .find(|n| n.outputs.iter().any(|x| x.0 == *o))
                    .expect("opaque node kept");
                let ins: Vec<ValueId> = n
                    .inputs
                    .iter()
                    .map(|i| {
                        build(
                            eg,
                            choice,
                            loaded.class_of[i],
                            g,
                            built,
                            opaque,
                            loaded,
                            original,
                        )
                    })
                    .collect();
                let names: Vec<&str> = n
                    .outputs
                    .iter()
                    .map(|&x| original.value(x).name.as_str())
                    .collect();
                let outs = g
                    .add_node(&n.name, n.op.clone(), &ins, &names)
                    .expect("kept node type-checks");
                for (x, y) in n.outputs.iter().zip(outs) {
                    opaque.insert(x.0, y);
                }
                opaque[o]
            }
        }
        head @ Head::Op(..) => {
            let ins: Vec<ValueId> = node
                .children
                .iter()
                .map(|&c| build(eg, choice, c, g, built, opaque, loaded, original))
                .collect();
            let op = eg.analysis.op(head).expect("op head").clone();
            g.add("", op, &ins).expect("extracted nodes type-check")
        }
    };
    built.insert(class, v);
    v
}
