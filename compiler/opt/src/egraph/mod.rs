//! The e-graph stage: the graph goes into an `egg` e-graph, rules rewrite it within
//! node, iteration and time limits, and the cheapest graph by the cost model comes
//! out, unless it would cost more than the input (then the input stays).

pub mod convert;
pub mod cost;
pub mod lang;
pub mod rules;

use crate::error::OptError;
use crate::pass::{Pass, PassOutcome};
use smelt_ir::Graph;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The e-graph pass and its limits.
#[derive(Debug, Clone)]
pub struct EGraphPass {
    pub node_limit: usize,
    pub iter_limit: usize,
    pub time_limit: Duration,
    /// Largest constant the e-graph folds, in bytes.
    pub fold_budget: usize,
}

impl Default for EGraphPass {
    /// The node and iteration limits bind in practice, so results do not depend on the
    /// machine's speed; the time limit is a safety net.
    fn default() -> Self {
        EGraphPass {
            node_limit: 20_000,
            iter_limit: 12,
            time_limit: Duration::from_secs(10),
            fold_budget: crate::passes::fold::DEFAULT_BUDGET_BYTES,
        }
    }
}

impl Pass for EGraphPass {
    fn name(&self) -> &'static str {
        "egraph"
    }

    fn run(&self, g: &mut Graph) -> Result<PassOutcome, OptError> {
        let mut loaded = convert::load(std::mem::take(g), self.fold_budget);
        let merges = Arc::new(Mutex::new((
            Vec::new(),
            rules::contraction::Merged::default(),
        )));
        let hook_merges = merges.clone();
        let egraph = std::mem::replace(
            &mut loaded.egraph,
            lang::EGraph::new(lang::Analysis::new(vec![], 0)),
        );
        let runner: egg::Runner<lang::ENode, lang::Analysis, ()> =
            egg::Runner::new(lang::Analysis::new(vec![], 0))
                .with_egraph(egraph)
                .with_node_limit(self.node_limit)
                .with_iter_limit(self.iter_limit)
                .with_time_limit(self.time_limit)
                .with_hook(move |runner| {
                    let mut m = hook_merges.lock().map_err(|e| e.to_string())?;
                    let (groups, merged) = &mut *m;
                    groups.extend(rules::contraction::merge_parallel_matmuls(
                        &mut runner.egraph,
                        merged,
                    ));
                    Ok(())
                })
                .run(&rules::all());
        let mut applied: BTreeMap<String, usize> = BTreeMap::new();
        for it in &runner.iterations {
            for (name, n) in &it.applied {
                *applied.entry(name.to_string()).or_insert(0) += n;
            }
        }
        let groups = merges.lock().map(|m| m.0.clone()).unwrap_or_default();
        if !groups.is_empty() {
            applied.insert(rules::contraction::MERGE_RULE.to_string(), groups.len());
        }
        let stop = format!("{:?}", runner.stop_reason.clone().expect("the runner ran"));
        let (nodes, classes, iterations) = (
            runner.egraph.total_number_of_nodes(),
            runner.egraph.number_of_classes(),
            runner.iterations.len(),
        );
        loaded.egraph = runner.egraph;
        let original = convert::original_choice(&loaded);
        let candidate = convert::best_choice(&loaded, &groups);
        let roots = convert::roots(&loaded);
        let (choice, took, before, after) =
            convert::never_worse(&loaded.egraph, &roots, original, candidate);
        *g = convert::build_graph(loaded, &choice);
        g.verify().map_err(|source| OptError::Ir {
            pass: "egraph",
            source,
        })?;
        let mut details = vec![
            ("stop reason".to_string(), stop),
            ("iterations".to_string(), iterations.to_string()),
            (
                "e-graph".to_string(),
                format!("{nodes} nodes in {classes} classes"),
            ),
            (
                "estimated cost".to_string(),
                format!(
                    "{:.3} us -> {:.3} us",
                    before * 1e6,
                    if took { after } else { before } * 1e6
                ),
            ),
        ];
        if !took {
            details.push((
                "extraction".to_string(),
                format!(
                    "kept the input: the extracted graph would cost {:.3} us",
                    after * 1e6
                ),
            ));
        }
        for (rule, n) in &applied {
            details.push((format!("rule {rule}"), n.to_string()));
        }
        Ok(PassOutcome {
            changes: if took { applied.values().sum() } else { 0 },
            details,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lang::{ENode, Head};
    use smelt_ir::text::parse_graph;

    #[test]
    fn never_worse_keeps_the_cheaper_choice() {
        // The output class gets a second, cheaper member: abs(x) beside neg(neg(exp(x))).
        // (Only the choosing is under test here, not the equivalence.)
        let g = parse_graph(
            "graph g (%x: f32[64]) {\n  %a = exp(%x) : f32[64]\n  %b = neg(%a) : f32[64]\n  %y = neg(%b) : f32[64]\n  return %y\n}\n",
        )
        .unwrap();
        let mut loaded = convert::load(g, 1 << 20);
        let x = loaded.class_of[&smelt_ir::ValueId(0)];
        let abs = convert::try_add(
            &mut loaded.egraph,
            smelt_ir::Op::Unary(smelt_ir::op::UnaryOp::Abs),
            vec![x],
        )
        .unwrap();
        let y = convert::roots(&loaded)[0];
        loaded.egraph.union(y, abs);
        loaded.egraph.rebuild();
        let roots = convert::roots(&loaded);
        let costly = convert::original_choice(&loaded);
        let abs_node: ENode = loaded.egraph[roots[0]]
            .nodes
            .iter()
            .find(|n| matches!(n.head, Head::Op("abs", _)))
            .unwrap()
            .clone();
        let mut cheap = costly.clone();
        cheap.insert(roots[0], abs_node);
        let (kept, took, before, after) =
            convert::never_worse(&loaded.egraph, &roots, costly.clone(), cheap.clone());
        assert!(took && after < before, "{before} -> {after}");
        assert_eq!(kept, cheap);
        // With the cheap choice as the input, the costly candidate is refused.
        let (kept, took, _, _) =
            convert::never_worse(&loaded.egraph, &roots, cheap.clone(), costly);
        assert!(!took);
        assert_eq!(kept, cheap);
    }

    /// Q, K and V sharing their input merge once, though a scale folded into Q's weight
    /// gives a new group of the same products at the next iteration.
    #[test]
    fn a_left_operand_is_merged_once() {
        let w = |seed: usize| {
            (0..16)
                .map(|i| format!("{:.2}", ((i * 7 + seed) % 9) as f64 / 4.0 - 1.0))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let text = format!(
            "graph qkv (%x: f32[4, 4]) {{\n  %wq = constant f32[4, 4] [{}]\n  %wk = constant f32[4, 4] [{}]\n  %wv = constant f32[4, 4] [{}]\n  %s = constant f32[] [0.125]\n  %q = matmul(%x, %wq) : f32[4, 4]\n  %qs = mul(%q, %s) : f32[4, 4]\n  %k = matmul(%x, %wk) : f32[4, 4]\n  %v = matmul(%x, %wv) : f32[4, 4]\n  %qk = add(%qs, %k) : f32[4, 4]\n  %y = mul(%qk, %v) : f32[4, 4]\n  return %y\n}}\n",
            w(1),
            w(2),
            w(3)
        );
        let mut g = parse_graph(&text).unwrap();
        let outcome = EGraphPass::default().run(&mut g).unwrap();
        let detail = |name: &str| {
            outcome
                .details
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            detail("rule matmul-scale-into-weights").as_deref(),
            Some("1"),
            "{:?}",
            outcome.details
        );
        assert_eq!(
            detail(&format!("rule {}", rules::contraction::MERGE_RULE)).as_deref(),
            Some("1"),
            "{:?}",
            outcome.details
        );
    }

    /// The facts interned with a constant answer what scanning it would.
    #[test]
    fn constant_facts_match_their_elements() {
        use smelt_ir::{DType, Tensor};
        let mut a = lang::Analysis::new(vec![], 0);
        let f64s = |v: Vec<f64>| Tensor::from_f64(DType::F32, vec![v.len()], v).unwrap();
        let cases = [
            (f64s(vec![1.0, 1.0, 1.0]), true, Some(1.0)),
            (f64s(vec![0.0, 1.0]), true, None),
            (
                f64s(vec![f64::INFINITY, f64::INFINITY]),
                false,
                Some(f64::INFINITY),
            ),
            (f64s(vec![2.0, f64::NAN]), false, None),
            (f64s(vec![]), true, None),
            (
                Tensor::from_i64(DType::I64, vec![2], vec![7, 7]).unwrap(),
                true,
                Some(7.0),
            ),
        ];
        for (t, finite, splat) in cases {
            let k = a.intern_const(t.clone()) as usize;
            assert_eq!(a.facts[k], lang::ConstFacts { finite, splat }, "{t:?}");
        }
        // A NaN splat equals no value, as the element-wise check had it.
        let k = a.intern_const(f64s(vec![f64::NAN, f64::NAN])) as usize;
        assert!(a.facts[k].splat.is_some_and(f64::is_nan) && !a.facts[k].finite);
    }

    #[test]
    fn transpose_pairs_cancel() {
        let mut g = parse_graph(
            "graph g (%x: f32[8, 8]) {\n  %t = transpose<perm=[1, 0]>(%x) : f32[8, 8]\n  %e = exp(%t) : f32[8, 8]\n  %y = transpose<perm=[1, 0]>(%e) : f32[8, 8]\n  return %y\n}\n",
        )
        .unwrap();
        let before = cost::graph_cost(&g);
        EGraphPass::default().run(&mut g).unwrap();
        assert!(cost::graph_cost(&g) <= before);
        assert_eq!(g.nodes.len(), 1, "the transpose pair cancels: {g:?}");
    }
}
