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
use std::collections::{BTreeMap, HashSet};
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
    fn default() -> Self {
        EGraphPass {
            node_limit: 20_000,
            iter_limit: 12,
            time_limit: Duration::from_millis(500),
            fold_budget: crate::passes::fold::DEFAULT_BUDGET_BYTES,
        }
    }
}

/// Keeps `candidate` only when it costs no more than `original`; returns the graph kept
/// and whether it is the candidate.
pub fn never_worse(original: Graph, candidate: Graph) -> (Graph, bool) {
    if cost::graph_cost(&candidate) <= cost::graph_cost(&original) * (1.0 + 1e-9) {
        (candidate, true)
    } else {
        (original, false)
    }
}

impl Pass for EGraphPass {
    fn name(&self) -> &'static str {
        "egraph"
    }

    fn run(&self, g: &mut Graph) -> Result<PassOutcome, OptError> {
        let cost_before = cost::graph_cost(g);
        let mut loaded = convert::load(g, self.fold_budget);
        let merges = Arc::new(Mutex::new((Vec::new(), HashSet::new())));
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
                    let (count, merged) = &mut *m;
                    count.extend(rules::contraction::merge_parallel_matmuls(
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
        let (nodes, classes) = (
            runner.egraph.total_number_of_nodes(),
            runner.egraph.number_of_classes(),
        );
        loaded.egraph = runner.egraph;
        let extracted = convert::extract(&loaded, g, &groups);
        extracted.verify().map_err(|source| OptError::Ir {
            pass: "egraph",
            source,
        })?;
        let cost_after = cost::graph_cost(&extracted);
        let (kept, took) = never_worse(std::mem::take(g), extracted);
        *g = kept;
        let mut details = vec![
            ("stop reason".to_string(), stop),
            (
                "iterations".to_string(),
                runner.iterations.len().to_string(),
            ),
            (
                "e-graph".to_string(),
                format!("{nodes} nodes in {classes} classes"),
            ),
            (
                "estimated cost".to_string(),
                format!(
                    "{:.3} us -> {:.3} us",
                    cost_before * 1e6,
                    if took { cost_after } else { cost_before } * 1e6
                ),
            ),
        ];
        if !took {
            details.push((
                "extraction".to_string(),
                format!(
                    "kept the input: the extracted graph costs {:.3} us",
                    cost_after * 1e6
                ),
            ));
        }
        for (rule, n) in &applied {
            details.push((format!("rule {rule}"), n.to_string()));
        }
        Ok(PassOutcome {
            changes: applied.values().sum(),
            details,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smelt_ir::text::parse_graph;

    #[test]
    fn never_worse_keeps_the_cheaper_graph() {
        let cheap =
            parse_graph("graph g (%x: f32[64]) {\n  %y = exp(%x) : f32[64]\n  return %y\n}\n")
                .unwrap();
        let costly = parse_graph(
            "graph g (%x: f32[64]) {\n  %a = exp(%x) : f32[64]\n  %b = neg(%a) : f32[64]\n  %y = neg(%b) : f32[64]\n  return %y\n}\n",
        )
        .unwrap();
        let (kept, took) = never_worse(cheap.clone(), costly.clone());
        assert!(!took);
        assert_eq!(kept, cheap);
        let (kept, took) = never_worse(costly, cheap.clone());
        assert!(took);
        assert_eq!(kept, cheap);
    }

    #[test]
    fn extraction_falls_back_when_the_candidate_costs_more() {
        // Whatever the e-graph finds, the pass never returns a costlier graph.
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
