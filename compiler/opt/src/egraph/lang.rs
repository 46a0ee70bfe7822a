//! The e-graph language over the core op set, and its analysis (type, constant value).

use egg::{DidMerge, Id, Language};
use smelt_ir::{Op, Tensor, TensorType};
use std::collections::HashMap;

/// What an e-node computes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Head {
    /// The i-th graph input.
    Input(u32),
    /// A constant from the analysis' table.
    Const(u32),
    /// A result of a node kept outside the e-graph (multi-result ops), by value index.
    Opaque(u32),
    /// A core op from the analysis' table, with its mnemonic for e-matching.
    Op(&'static str, u32),
}

/// An e-node: a head and its operand classes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ENode {
    pub head: Head,
    pub children: Vec<Id>,
}

impl Language for ENode {
    type Discriminant = Head;

    // Ops match by mnemonic alone, so a pattern `(transpose ?x)` matches every
    // transpose; appliers read the attributes from the matched e-nodes.
    fn discriminant(&self) -> Head {
        match self.head {
            Head::Op(m, _) => Head::Op(m, 0),
            ref h => h.clone(),
        }
    }

    fn matches(&self, other: &Self) -> bool {
        self.discriminant() == other.discriminant() && self.children.len() == other.children.len()
    }

    fn children(&self) -> &[Id] {
        &self.children
    }

    fn children_mut(&mut self) -> &mut [Id] {
        &mut self.children
    }
}

impl std::fmt::Display for ENode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.head {
            Head::Input(i) => write!(f, "input{i}"),
            Head::Const(i) => write!(f, "const{i}"),
            Head::Opaque(i) => write!(f, "opaque{i}"),
            Head::Op(m, _) => f.write_str(m),
        }
    }
}

/// Ops without attributes have fixed table slots, so patterns can name them.
pub fn static_ops() -> Vec<Op> {
    use smelt_ir::op::{BinaryOp, UnaryOp};
    let mut v: Vec<Op> = UnaryOp::ALL.iter().map(|&u| Op::Unary(u)).collect();
    v.extend(BinaryOp::ALL.iter().map(|&b| Op::Binary(b)));
    v.extend([Op::Select, Op::MATMUL, Op::Shape]);
    v
}

/// Every op mnemonic; patterns name ops by these (attributes are read by appliers).
fn mnemonics() -> Vec<&'static str> {
    use smelt_ir::op::{ArgKind, BinaryOp, PoolKind, ReduceKind, UnaryOp};
    let mut v: Vec<&'static str> = UnaryOp::ALL.iter().map(|u| u.name()).collect();
    v.extend(BinaryOp::ALL.iter().map(|b| b.name()));
    v.extend(ReduceKind::ALL.iter().map(|k| k.name()));
    v.extend(ArgKind::ALL.iter().map(|k| k.name()));
    v.extend(PoolKind::ALL.iter().map(|k| k.name()));
    v.extend([
        "select",
        "cast",
        "cumsum",
        "topk",
        "matmul",
        "conv",
        "conv_transpose",
        "reshape",
        "transpose",
        "slice",
        "concat",
        "pad",
        "gather",
        "gather_elements",
        "gather_nd",
        "scatter_elements",
        "scatter_nd",
        "expand",
        "shape",
        "resize",
    ]);
    v
}

impl egg::FromOp for ENode {
    type Error = String;

    // Only searchers are parsed: they match by mnemonic, so the table slot is irrelevant.
    fn from_op(op: &str, children: Vec<Id>) -> Result<Self, String> {
        let m = mnemonics()
            .into_iter()
            .find(|m| *m == op)
            .ok_or_else(|| format!("unknown op '{op}' in a pattern"))?;
        Ok(ENode {
            head: Head::Op(m, 0),
            children,
        })
    }
}

/// The analysis: the type of every class, and its value when constant.
#[derive(Debug)]
pub struct Analysis {
    pub ops: Vec<Op>,
    op_index: HashMap<String, u32>,
    pub consts: Vec<Tensor>,
    /// Per constant, what rules ask of its elements, computed once when it is interned:
    /// rules asked again at every match, and a pass over a weight of millions of
    /// elements each time took an eighth of BERT-base's optimization.
    pub facts: Vec<ConstFacts>,
    const_index: HashMap<u64, Vec<u32>>,
    pub input_types: Vec<TensorType>,
    pub opaque_types: HashMap<u32, TensorType>,
    /// Largest constant the analysis folds, in bytes.
    pub fold_budget: usize,
}

/// Per-class facts.
#[derive(Debug, Clone)]
pub struct Data {
    pub ty: TensorType,
    /// Index into [`Analysis::consts`] when the class is a known constant.
    pub konst: Option<u32>,
}

impl Analysis {
    pub fn new(input_types: Vec<TensorType>, fold_budget: usize) -> Analysis {
        let ops = static_ops();
        let op_index = ops
            .iter()
            .enumerate()
            .map(|(i, o)| (op_key(o), i as u32))
            .collect();
        Analysis {
            ops,
            op_index,
            consts: vec![],
            facts: vec![],
            const_index: HashMap::new(),
            input_types,
            opaque_types: HashMap::new(),
            fold_budget,
        }
    }

    /// The table slot of an op (interning it).
    pub fn intern_op(&mut self, op: Op) -> Head {
        let key = op_key(&op);
        let m = op.mnemonic();
        if let Some(&i) = self.op_index.get(&key) {
            return Head::Op(m, i);
        }
        let i = self.ops.len() as u32;
        self.ops.push(op);
        self.op_index.insert(key, i);
        Head::Op(m, i)
    }

    /// The table slot of a constant (deduplicated by content).
    pub fn intern_const(&mut self, t: Tensor) -> u32 {
        let h = t.content_hash();
        if let Some(ids) = self.const_index.get(&h)
            && let Some(&i) = ids.iter().find(|&&i| {
                self.consts[i as usize].bits_eq(&t) && self.consts[i as usize].dtype() == t.dtype()
            })
        {
            return i;
        }
        let i = self.consts.len() as u32;
        self.facts.push(ConstFacts::of(&t));
        self.consts.push(t);
        self.const_index.entry(h).or_default().push(i);
        i
    }

    pub fn op(&self, head: &Head) -> Option<&Op> {
        match head {
            Head::Op(_, i) => Some(&self.ops[*i as usize]),
            _ => None,
        }
    }
}

/// What the rules ask of a constant's elements.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConstFacts {
    /// No element is infinite or NaN (always true for integers and booleans).
    pub finite: bool,
    /// The one value every element holds, for a non-empty numeric constant (NaN included:
    /// it equals nothing, as in the element-wise check).
    pub splat: Option<f64>,
}

impl ConstFacts {
    fn of(t: &Tensor) -> ConstFacts {
        let finite = match t.data() {
            // Weights are most of the constants: a branch-free pass over each block
            // vectorizes, where a short-circuiting f64 test of every element does not.
            smelt_ir::tensor::Data::F32(v) => v
                .chunks(1024)
                .all(|c| c.iter().fold(true, |all, x| all & x.is_finite())),
            _ => !t.dtype().is_float() || t.all_f64(f64::is_finite),
        };
        let mut first: Option<f64> = None;
        let same = t.all_f64(|x| match first {
            None => {
                first = Some(x);
                true
            }
            Some(f) => x == f || (x.is_nan() && f.is_nan()),
        });
        let splat = (t.dtype().is_numeric() && same).then_some(first).flatten();
        ConstFacts { finite, splat }
    }
}

fn op_key(op: &Op) -> String {
    format!("{} {:?}", op.mnemonic(), op.attrs())
}

pub type EGraph = egg::EGraph<ENode, Analysis>;

impl egg::Analysis<ENode> for Analysis {
    type Data = Data;

    fn make(egraph: &mut EGraph, enode: &ENode, _id: Id) -> Data {
        let a = &egraph.analysis;
        match &enode.head {
            Head::Input(i) => Data {
                ty: a.input_types[*i as usize].clone(),
                konst: None,
            },
            Head::Opaque(v) => Data {
                ty: a.opaque_types[v].clone(),
                konst: None,
            },
            Head::Const(c) => Data {
                ty: a.consts[*c as usize].tensor_type(),
                konst: Some(*c),
            },
            head @ Head::Op(..) => {
                let op = a.op(head).expect("op head").clone();
                let types: Vec<TensorType> = enode
                    .children
                    .iter()
                    .map(|&c| egraph[c].data.ty.clone())
                    .collect();
                let refs: Vec<&TensorType> = types.iter().collect();
                // Rules only build well-typed nodes, so inference succeeds.
                let ty = smelt_ir::infer::infer(&op, &refs)
                    .map(|mut v| v.remove(0))
                    .unwrap_or_else(|e| {
                        panic!("e-graph built an ill-typed {} node: {e}", op.mnemonic())
                    });
                // Fold when every operand is constant and the result fits the budget.
                let konsts: Option<Vec<u32>> = enode
                    .children
                    .iter()
                    .map(|&c| egraph[c].data.konst)
                    .collect();
                let bytes = ty.num_elements().map(|n| n * ty.dtype.size_bytes());
                let konst = match (konsts, bytes) {
                    (Some(ks), Some(b)) if b <= egraph.analysis.fold_budget => {
                        let args: Vec<&Tensor> = ks
                            .iter()
                            .map(|&k| &egraph.analysis.consts[k as usize])
                            .collect();
                        smelt_ir::interp::eval_op(&op, &args)
                            .ok()
                            .map(|mut r| r.remove(0))
                    }
                    _ => None,
                }
                .map(|t| egraph.analysis.intern_const(t));
                Data { ty, konst }
            }
        }
    }

    fn merge(&mut self, a: &mut Data, b: Data) -> DidMerge {
        match (a.konst, b.konst) {
            (None, Some(k)) => {
                a.konst = Some(k);
                DidMerge(true, false)
            }
            (Some(_), None) => DidMerge(false, true),
            _ => DidMerge(false, false),
        }
    }

    fn modify(egraph: &mut EGraph, id: Id) {
        if let Some(k) = egraph[id].data.konst {
            let added = egraph.add(ENode {
                head: Head::Const(k),
                children: vec![],
            });
            egraph.union(id, added);
        }
    }
}
