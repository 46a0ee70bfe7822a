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
    pub name: String,
    /// Graph inputs: names and types, in order.
    pub inputs: Vec<(String, TensorType)>,
    /// The class of each graph output and its value name.
    pub outputs: Vec<(Id, String)>,
    /// The class of each original value the e-graph holds.
    pub class_of: HashMap<ValueId, Id>,
    /// Value names of the results of the nodes kept outside.
    pub names: HashMap<ValueId, String>,
    /// Multi-result nodes kept outside the e-graph.
    pub outside: Vec<Node>,
    /// The e-node each original node became, in original order (the input graph, as a choice).
    pub original: Vec<(Id, ENode)>,
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

/// Loads `g` into a fresh e-graph, moving its constants into the analysis.
pub fn load(g: Graph, fold_budget: usize) -> Loaded {
    let mut egraph = EGraph::new(Analysis::new(
        g.inputs.iter().map(|&i| g.ty(i).clone()).collect(),
        fold_budget,
    ));
    let mut class_of = HashMap::new();
    let mut original = Vec::new();
    for (i, &v) in g.inputs.iter().enumerate() {
        let node = ENode {
            head: Head::Input(i as u32),
            children: vec![],
        };
        let id = egraph.add(node.clone());
        class_of.insert(v, id);
        original.push((id, node));
    }
    let mut outside = Vec::new();
    let mut names = HashMap::new();
    let inputs = g
        .inputs
        .iter()
        .map(|&i| (g.value(i).name.clone(), g.ty(i).clone()))
        .collect();
    for n in g.nodes.iter().filter(|n| n.outputs.len() > 1) {
        for &o in &n.outputs {
            names.insert(o, g.value(o).name.clone());
        }
    }
    let output_names: Vec<(ValueId, String)> = g
        .outputs
        .iter()
        .map(|&o| (o, g.value(o).name.clone()))
        .collect();
    for (o, name) in &output_names {
        names.insert(*o, name.clone());
    }
    let opaque_types: Vec<(ValueId, TensorType)> = g
        .nodes
        .iter()
        .filter(|n| n.outputs.len() > 1)
        .flat_map(|n| n.outputs.iter().map(|&o| (o, g.ty(o).clone())))
        .collect();
    for (o, ty) in opaque_types {
        egraph.analysis.opaque_types.insert(o.0, ty);
    }
    let graph_name = g.name.clone();
    for n in g.nodes {
        let children: Vec<Id> = n.inputs.iter().map(|v| class_of[v]).collect();
        let nodes: Vec<(ValueId, ENode)> = match n.op {
            Op::Constant(t) => {
                let k = egraph.analysis.intern_const(t);
                vec![(
                    n.outputs[0],
                    ENode {
                        head: Head::Const(k),
                        children: vec![],
                    },
                )]
            }
            ref op if n.outputs.len() == 1 => {
                let head = egraph.analysis.intern_op(op.clone());
                vec![(n.outputs[0], ENode { head, children })]
            }
            _ => {
                let leaves = n
                    .outputs
                    .iter()
                    .map(|&o| {
                        (
                            o,
                            ENode {
                                head: Head::Opaque(o.0),
                                children: vec![],
                            },
                        )
                    })
                    .collect();
                outside.push(n);
                leaves
            }
        };
        for (v, node) in nodes {
            let id = egraph.add(node.clone());
            class_of.insert(v, id);
            original.push((id, node));
        }
    }
    egraph.rebuild();
    let outputs = output_names
        .into_iter()
        .map(|(o, name)| (class_of[&o], name))
        .collect();
    Loaded {
        egraph,
        name: graph_name,
        inputs,
        outputs,
        class_of,
        names,
        outside,
        original,
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

/// The input graph as a choice: for each class, its earliest original e-node (earlier
/// nodes only use earlier values, so the choice has no cycle even where classes merged).
pub fn original_choice(loaded: &Loaded) -> HashMap<Id, ENode> {
    let eg = &loaded.egraph;
    let mut choice = HashMap::new();
    for (id, node) in &loaded.original {
        choice.entry(eg.find(*id)).or_insert_with(|| node.clone());
    }
    choice
}

/// The cheapest choice: egg's tree-cost optimum, then each merge group switched as a
/// whole when that lowers the DAG cost (a tree cost charges a shared node once per
/// use, so it never would on its own). The same is tried from the input's own choice
/// (new classes taking the tree optimum), and the cheaper of the two is returned: where
/// the tree optimum duplicates a shared product (BERT-base's extraction cost 24% more
/// than its input), the input with its Q/K/V products merged still gains.
pub fn best_choice(
    loaded: &Loaded,
    groups: &[super::rules::contraction::MergeGroup],
) -> HashMap<Id, ENode> {
    let eg = &loaded.egraph;
    let extractor = egg::Extractor::new(eg, CostFn { egraph: eg });
    let tree: HashMap<Id, ENode> = eg
        .classes()
        .map(|c| (c.id, extractor.find_best_node(c.id).clone()))
        .collect();
    let mut from_input = tree.clone();
    from_input.extend(original_choice(loaded));
    let roots = roots(loaded);
    let [a, b] = [tree, from_input].map(|start| with_merges(eg, start, groups, &roots));
    match (dag_cost(eg, &a, &roots), dag_cost(eg, &b, &roots)) {
        (Some(x), Some(y)) if y < x => b,
        (None, Some(_)) => b,
        _ => a,
    }
}

/// `choice` with each merge group switched as a whole where that lowers the DAG cost.
fn with_merges(
    eg: &EGraph,
    mut choice: HashMap<Id, ENode>,
    groups: &[super::rules::contraction::MergeGroup],
    roots: &[Id],
) -> HashMap<Id, ENode> {
    for group in groups {
        let mm = eg.find(group.matmul);
        let mut trial = choice.clone();
        let mut complete = true;
        for &m in &group.members {
            let m = eg.find(m);
            match eg[m]
                .nodes
                .iter()
                .find(|n| matches!(n.head, Head::Op("slice", _)) && eg.find(n.children[0]) == mm)
            {
                Some(n) => {
                    trial.insert(m, n.clone());
                }
                None => complete = false,
            }
        }
        if let (true, Some(now), Some(then)) = (
            complete,
            dag_cost(eg, &choice, roots),
            dag_cost(eg, &trial, roots),
        ) && then < now
        {
            choice = trial;
        }
    }
    choice
}

/// The output classes.
pub fn roots(loaded: &Loaded) -> Vec<Id> {
    loaded
        .outputs
        .iter()
        .map(|(c, _)| loaded.egraph.find(*c))
        .collect()
}

/// Keeps `candidate` only when its DAG cost is no more than `original`'s (never worse
/// than the input); returns the choice kept, whether it is the candidate, and both costs.
pub fn never_worse(
    eg: &EGraph,
    roots: &[Id],
    original: HashMap<Id, ENode>,
    candidate: HashMap<Id, ENode>,
) -> (HashMap<Id, ENode>, bool, f64, f64) {
    let before = dag_cost(eg, &original, roots).unwrap_or(f64::INFINITY);
    let after = dag_cost(eg, &candidate, roots).unwrap_or(f64::INFINITY);
    if after <= before * (1.0 + 1e-9) {
        (candidate, true, before, after)
    } else {
        (original, false, before, after)
    }
}

/// Builds the graph of a choice, moving the constants out of the e-graph.
pub fn build_graph(mut loaded: Loaded, choice: &HashMap<Id, ENode>) -> Graph {
    let mut consts: Vec<Option<smelt_ir::Tensor>> =
        std::mem::take(&mut loaded.egraph.analysis.consts)
            .into_iter()
            .map(Some)
            .collect();
    let mut g = Graph::new(loaded.name.clone());
    for (name, ty) in &loaded.inputs {
        g.add_input(name, ty.clone());
    }
    let mut b = Builder {
        loaded: &loaded,
        choice,
        consts: &mut consts,
        built: HashMap::new(),
        opaque: HashMap::new(),
    };
    let outputs: Vec<ValueId> = roots(b.loaded)
        .into_iter()
        .map(|r| b.build(r, &mut g))
        .collect();
    for (&new, (_, name)) in outputs.iter().zip(&loaded.outputs) {
        if !g.inputs.contains(&new) {
            let _ = g.rename(new, name);
        }
    }
    g.outputs = outputs;
    g
}

struct Builder<'a> {
    loaded: &'a Loaded,
    choice: &'a HashMap<Id, ENode>,
    consts: &'a mut Vec<Option<smelt_ir::Tensor>>,
    built: HashMap<Id, ValueId>,
    opaque: HashMap<u32, ValueId>,
}

impl Builder<'_> {
    fn build(&mut self, class: Id, g: &mut Graph) -> ValueId {
        let eg = &self.loaded.egraph;
        let class = eg.find(class);
        if let Some(&v) = self.built.get(&class) {
            return v;
        }
        let node = self.choice[&class].clone();
        let v = match &node.head {
            Head::Input(i) => g.inputs[*i as usize],
            Head::Const(k) => {
                // Each constant has one class, built once: it can be moved out.
                let t = self.consts[*k as usize]
                    .take()
                    .expect("each constant is built once");
                g.add("", Op::Constant(t), &[])
                    .expect("constants type-check")
            }
            Head::Opaque(o) => match self.opaque.get(o) {
                Some(&v) => v,
                None => {
                    let n = self
                        .loaded
                        .outside
                        .iter()
                        .find(|n| n.outputs.iter().any(|x| x.0 == *o))
                        .expect("opaque node kept");
                    let ins: Vec<ValueId> = n
                        .inputs
                        .iter()
                        .map(|i| self.build(self.loaded.class_of[i], g))
                        .collect();
                    let names: Vec<&str> = n
                        .outputs
                        .iter()
                        .map(|x| self.loaded.names[x].as_str())
                        .collect();
                    let outs = g
                        .add_node(&n.name, n.op.clone(), &ins, &names)
                        .expect("kept node type-checks");
                    for (x, y) in n.outputs.iter().zip(outs) {
                        self.opaque.insert(x.0, y);
                    }
                    self.opaque[o]
                }
            },
            head @ Head::Op(..) => {
                let ins: Vec<ValueId> = node.children.iter().map(|&c| self.build(c, g)).collect();
                let op = eg.analysis.op(head).expect("op head").clone();
                g.add("", op, &ins).expect("extracted nodes type-check")
            }
        };
        self.built.insert(class, v);
        v
    }
}
