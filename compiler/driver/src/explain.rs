//! `smelt explain` as a driver API: the text of every stage (the graph as imported or
//! optimized, the fusion plan with its memory plan, the Kernel IR, CLIF, LLVM IR and
//! PTX), so that the CLI prints what the driver gives and reaches into no crate below it.

use crate::{Model, Result, Stage, Target};
use std::collections::HashMap;
use std::fmt::Write as _;

/// A stage `smelt explain` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExplainStage {
    /// The graph as imported.
    Import,
    /// The graph after the optimizer.
    Opt,
    /// The fusion plan and the memory plan of its intermediates.
    Fuse,
    /// The Kernel IR (for the CPU, or for the GPU with a GPU target).
    Kernel,
    /// The CPU kernels' Cranelift IR.
    Clif,
    /// The GPU kernels' LLVM IR as generated.
    Llvm,
    /// The whole PTX module, exactly as ptxas takes it.
    Ptx,
}

impl ExplainStage {
    pub fn parse(name: &str) -> Option<ExplainStage> {
        Some(match name {
            "import" => ExplainStage::Import,
            "opt" => ExplainStage::Opt,
            "fuse" => ExplainStage::Fuse,
            "kernel" => ExplainStage::Kernel,
            "clif" => ExplainStage::Clif,
            "llvm" => ExplainStage::Llvm,
            "ptx" => ExplainStage::Ptx,
            _ => return None,
        })
    }
}

/// What a stage is explained for.
#[derive(Debug, Clone, Default)]
pub struct ExplainOptions {
    pub input_shapes: HashMap<String, Vec<usize>>,
    /// Print constants in full (the text then parses back).
    pub full_constants: bool,
    /// The target of the Kernel IR stage (the LLVM IR and PTX stages imply `Cuda`).
    pub target: Target,
    pub gpu: crate::GpuOptions,
}

impl Model {
    /// The text `smelt explain --stage STAGE` prints.
    pub fn explain_text(&self, stage: ExplainStage, opts: &ExplainOptions) -> Result<String> {
        let mut out = String::new();
        let shapes = &opts.input_shapes;
        match stage {
            ExplainStage::Llvm | ExplainStage::Ptx => {
                let compiled = self.compile(&crate::Options {
                    gpu: opts.gpu.clone(),
                    ..Default::default()
                })?;
                let module = compiled.gpu_module(shapes)?;
                // The PTX alone, so it pipes into ptxas.
                out.push_str(if stage == ExplainStage::Ptx {
                    &module.ptx
                } else {
                    &module.llvm_ir
                });
                return Ok(out);
            }
            ExplainStage::Kernel if opts.target.is_gpu() => {
                let compiled = self.compile(&crate::Options::default())?;
                let kernels = compiled.kernels_for_shapes(shapes, opts.target)?;
                for k in &kernels {
                    let _ = writeln!(out, "{}", k.kernel.print());
                }
                let _ = writeln!(
                    out,
                    "# {} kernels for {}",
                    kernels.len(),
                    opts.target.name()
                );
                return Ok(out);
            }
            ExplainStage::Kernel | ExplainStage::Clif => {
                let compiled = self.compile(&crate::Options::default())?;
                let exe = compiled.executable_for_shapes(shapes)?;
                for k in &exe.kernels {
                    if stage == ExplainStage::Kernel {
                        let _ = writeln!(out, "{}", k.kernel.print());
                    } else {
                        let text = smelt_cpu::clif(&k.kernel)?;
                        if text.is_empty() {
                            let _ = writeln!(
                                out,
                                "; {}: contraction only, run by the runtime's microkernels\n",
                                k.kernel.name
                            );
                        } else {
                            let _ = writeln!(out, "; {}\n{text}", k.kernel.name);
                        }
                    }
                }
                let _ = writeln!(
                    out,
                    "# {} kernels ({} distinct), {} launches; arena {} bytes ({} bytes of intermediates without reuse); compiled in {:.1} ms",
                    exe.kernels.len(),
                    exe.functions.len(),
                    exe.program.launches.len(),
                    exe.program.arena_bytes,
                    exe.program.intermediate_bytes,
                    exe.compile_time.as_secs_f64() * 1e3
                );
                return Ok(out);
            }
            ExplainStage::Import | ExplainStage::Opt | ExplainStage::Fuse => {}
        }
        let graph_stage = if stage == ExplainStage::Import {
            Stage::Import
        } else {
            Stage::Opt
        };
        let mut e = self.explain(graph_stage, shapes)?;
        if stage == ExplainStage::Fuse {
            // With every shape fixed, the plan, layout and memory plan are those of the
            // program the compiler assembles; otherwise only the plan can be shown.
            let fixed = e.graph.values.iter().all(|v| v.ty.fixed_shape().is_some());
            let lowered = if fixed {
                let names = |ids: &[smelt_ir::ValueId]| -> Vec<String> {
                    ids.iter().map(|&v| e.graph.value(v).name.clone()).collect()
                };
                let (inputs, outputs) = (names(&e.graph.inputs), names(&e.graph.outputs));
                Some(crate::compile::lower_graph(
                    &mut e.graph,
                    &inputs,
                    &outputs,
                    opts.target.lowering(),
                )?)
            } else {
                None
            };
            let planned;
            let plan = match &lowered {
                Some(l) => &l.plan,
                None => {
                    planned = smelt_fuse::plan(&e.graph)?;
                    &planned
                }
            };
            plan.verify(&e.graph)?;
            out.push_str(&plan.print(&e.graph));
            let _ = writeln!(
                out,
                "# {} kernels for {} nodes",
                plan.groups.len(),
                e.graph.nodes.len()
            );
            match &lowered {
                None => {
                    let _ = writeln!(
                        out,
                        "# memory plan: needs every shape fixed; give the inputs' shapes (--input-shape)"
                    );
                }
                Some(lowered) => {
                    for (v, (whole, offset)) in &lowered.layout.views {
                        let _ = writeln!(
                            out,
                            "# view: {} is bytes {offset}.. of {}",
                            e.graph.value(*v).name,
                            e.graph.value(*whole).name
                        );
                    }
                    let program = &lowered.program;
                    let _ = writeln!(
                        out,
                        "# memory plan: {} launches, {} views ({} concatenations written in place); arena {} bytes ({} bytes of intermediates without reuse)",
                        program.launches.len(),
                        lowered.layout.views.len(),
                        lowered.layout.in_place.len(),
                        program.arena_bytes,
                        program.intermediate_bytes
                    );
                }
            }
        } else {
            let print = if opts.full_constants {
                smelt_ir::text::PrintOptions::full()
            } else {
                smelt_ir::text::PrintOptions::default()
            };
            out.push_str(&smelt_ir::text::print_graph(&e.graph, print));
        }
        out.push('\n');
        let _ = writeln!(out, "# nodes by op (import -> opt):");
        let ops: std::collections::BTreeSet<&str> =
            e.before.keys().chain(e.after.keys()).copied().collect();
        for op in ops {
            let _ = writeln!(
                out,
                "#   {op}: {} -> {}",
                e.before.get(op).unwrap_or(&0),
                e.after.get(op).unwrap_or(&0)
            );
        }
        let _ = writeln!(
            out,
            "#   total: {} -> {}",
            e.before.values().sum::<usize>(),
            e.after.values().sum::<usize>()
        );
        let _ = writeln!(out, "# passes:");
        for p in &e.passes {
            let _ = writeln!(
                out,
                "#   {}: {} changes, {} -> {} nodes, {:.3} ms",
                p.name,
                p.changes,
                p.nodes_before,
                p.nodes_after,
                p.time.as_secs_f64() * 1e3
            );
            for (k, v) in &p.details {
                let _ = writeln!(out, "#     {k}: {v}");
            }
        }
        Ok(out)
    }
}
