//! The ONNX conformance harness: runs the backend node cases and the models of the
//! `simple`, `pytorch-operator` and `pytorch-converted` suites through a runtime and
//! checks the outcome against the checked-in expectations file.

use crate::compare::compare;
use prost::Message;
use smelt_ir::Tensor;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A runtime the harness can run cases on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// The reference interpreter (after the optimizer).
    Reference,
    /// Compiled code on the CPU, one thread per case (the harness runs cases in parallel).
    Cpu,
    /// The GPU target's kernels on the emulated device (feature `cuda`).
    GpuEmulator,
    /// The GPU target on the first NVIDIA GPU (feature `cuda`, a GPU, its driver).
    Cuda,
}

impl Runtime {
    /// The runtimes every build checks (`cargo xtask conformance`).
    pub const ALL: [Runtime; 2] = [Runtime::Reference, Runtime::Cpu];

    pub fn name(self) -> &'static str {
        match self {
            Runtime::Reference => "reference",
            Runtime::Cpu => "cpu",
            Runtime::GpuEmulator => "gpu-emulator",
            Runtime::Cuda => "cuda",
        }
    }

    pub fn parse(name: &str) -> Option<Runtime> {
        [
            Runtime::Reference,
            Runtime::Cpu,
            Runtime::GpuEmulator,
            Runtime::Cuda,
        ]
        .into_iter()
        .find(|r| r.name() == name)
    }
}

/// One case: a node case, or a model of the model suites.
#[derive(Debug, Clone)]
pub struct CaseInfo {
    /// `test_abs` for node cases, `pytorch-converted/test_AvgPool1d` for suite models.
    pub name: String,
    /// The case's directory (model.onnx and test_data_set_*).
    pub dir: PathBuf,
    /// The ONNX op a node case tests; `suite:NAME` for suite models.
    pub op: String,
    pub rtol: f64,
    pub atol: f64,
}

impl CaseInfo {
    pub fn is_suite(&self) -> bool {
        self.op.starts_with("suite:")
    }
}

/// The status a case is expected to have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Pass,
    Fail(String),
    Skip(String),
}

/// The outcome of running one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub case: CaseInfo,
    pub outcome: Result<(), String>,
}

/// Reads the `manifest.tsv` (case, op, rtol, atol) of a directory of cases.
pub fn load_manifest(cases_dir: &Path) -> Result<Vec<CaseInfo>, String> {
    let path = cases_dir.join("manifest.tsv");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            if f.len() != 4 {
                return Err(format!("bad manifest line '{l}'"));
            }
            Ok(CaseInfo {
                name: f[0].to_string(),
                dir: cases_dir.join(f[0]),
                op: f[1].to_string(),
                rtol: f[2].parse().map_err(|_| format!("bad rtol in '{l}'"))?,
                atol: f[3].parse().map_err(|_| format!("bad atol in '{l}'"))?,
            })
        })
        .collect()
}

/// The expectations file of a runtime.
pub fn expectations_path(runtime: Runtime) -> PathBuf {
    crate::workspace_root()
        .join("tests/conformance")
        .join(format!("{}.tsv", runtime.name()))
}

/// Reads an expectations file: `case<TAB>pass` or `case<TAB>fail|skip<TAB>reason`.
pub fn load_expectations(path: &Path) -> Result<BTreeMap<String, Status>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut f = line.splitn(3, '\t');
        let (name, status, reason) = (
            f.next().unwrap_or(""),
            f.next().unwrap_or(""),
            f.next().unwrap_or("").to_string(),
        );
        let s = match status {
            "pass" => Status::Pass,
            "fail" if !reason.is_empty() => Status::Fail(reason),
            "skip" if !reason.is_empty() => Status::Skip(reason),
            _ => {
                return Err(format!(
                    "{}:{}: expected 'pass', or 'fail'/'skip' with a reason",
                    path.display(),
                    i + 1
                ));
            }
        };
        if out.insert(name.to_string(), s).is_some() {
            return Err(format!(
                "{}:{}: case '{name}' listed twice",
                path.display(),
                i + 1
            ));
        }
    }
    Ok(out)
}

/// Writes an expectations file from a run, failures with their (one-line) reasons.
pub fn write_expectations(
    path: &Path,
    runtime: Runtime,
    results: &[CaseResult],
    keep: &BTreeMap<String, Status>,
) -> Result<(), String> {
    let mut text = format!(
        "# Expected status of each ONNX node case and suite model on the '{}' runtime.\n# Regenerate with `cargo xtask conformance --update`; the test fails when a case marked pass fails.\n",
        runtime.name()
    );
    for r in results {
        let line = match (&r.outcome, keep.get(&r.case.name)) {
            (Ok(()), _) => "pass".to_string(),
            (Err(_), Some(Status::Skip(reason))) => format!("skip\t{reason}"),
            (Err(e), _) => format!("fail\t{}", one_line(e)),
        };
        text.push_str(&format!("{}\t{line}\n", r.case.name));
    }
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// A failure's reason as an expectations file holds it: one line of at most 200
/// characters.
pub fn one_line(s: &str) -> String {
    let s: String = s.replace(['\n', '\t'], " ");
    if s.chars().count() > 200 {
        format!("{}...", s.chars().take(200).collect::<String>())
    } else {
        s
    }
}

fn read_tensor_pb(path: &Path) -> Result<Tensor, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let proto = smelt_onnx::proto::TensorProto::decode(bytes.as_slice())
        .map_err(|e| format!("{} is not a TensorProto: {e}", path.display()))?;
    smelt_onnx::tensor::tensor_from_proto(&proto, None).map_err(|e| e.to_string())
}

/// Names of the graph inputs fed by data sets (initializers excluded), checking that every input and output is a tensor.
fn fed_inputs(model_path: &Path) -> Result<Vec<String>, String> {
    let bytes = std::fs::read(model_path).map_err(|e| e.to_string())?;
    let m = smelt_onnx::proto::ModelProto::decode(bytes.as_slice()).map_err(|e| e.to_string())?;
    let g = m.graph.unwrap_or_default();
    for i in g.input.iter().chain(&g.output) {
        let is_tensor = matches!(
            i.r#type.as_ref().and_then(|t| t.value.as_ref()),
            Some(smelt_onnx::proto::type_proto::Value::TensorType(_))
        );
        if !is_tensor {
            let name = i.name.clone().unwrap_or_default();
            return Err(format!(
                "'{name}' is not a tensor (sequence, map and optional values are not supported)"
            ));
        }
    }
    let inits: Vec<&str> = g
        .initializer
        .iter()
        .filter_map(|t| t.name.as_deref())
        .collect();
    Ok(g.input
        .iter()
        .filter_map(|i| i.name.clone())
        .filter(|n| !inits.contains(&n.as_str()))
        .collect())
}

/// The inputs of a case's first data set, by name.
pub fn first_inputs(case: &CaseInfo) -> Result<Vec<(String, smelt_runtime::HostTensor)>, String> {
    let names = fed_inputs(&case.dir.join("model.onnx"))?;
    let set = case.dir.join("test_data_set_0");
    names
        .iter()
        .enumerate()
        .map(|(j, name)| {
            let t = read_tensor_pb(&set.join(format!("input_{j}.pb")))?;
            Ok((name.clone(), smelt::to_host_tensor(&t)))
        })
        .collect()
}

/// Runs one case (all its data sets) on `runtime`.
pub fn run_case(case: &CaseInfo, runtime: Runtime) -> Result<(), String> {
    run_case_with(case, runtime, &Default::default())
}

/// As [`run_case`], generating GPU code with `gpu` (its architecture and libdevice).
pub fn run_case_with(
    case: &CaseInfo,
    runtime: Runtime,
    gpu: &smelt::GpuOptions,
) -> Result<(), String> {
    let model_path = case.dir.join("model.onnx");
    let model = smelt::Model::load(&model_path).map_err(|e| e.to_string())?;
    let input_names = fed_inputs(&model_path)?;
    let mut sets: Vec<PathBuf> = std::fs::read_dir(&case.dir)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    sets.sort();
    if sets.is_empty() {
        return Err("no test data sets".into());
    }
    let target = match runtime {
        Runtime::Reference => None,
        Runtime::Cpu => Some(smelt::Target::Cpu),
        Runtime::GpuEmulator => Some(smelt::Target::GpuEmulator),
        Runtime::Cuda => Some(smelt::Target::Cuda),
    };
    let compiled = match target {
        Some(target) => Some(
            model
                .compile(&smelt::Options {
                    threads: Some(1),
                    target,
                    gpu: gpu.clone(),
                    ..Default::default()
                })
                .map_err(|e| e.to_string())?,
        ),
        None => None,
    };
    for set in sets {
        let mut inputs = Vec::new();
        for (j, name) in input_names.iter().enumerate() {
            let t = read_tensor_pb(&set.join(format!("input_{j}.pb")))?;
            inputs.push((name.clone(), smelt::to_host_tensor(&t)));
        }
        let results = match runtime {
            Runtime::Reference => model
                .run_reference(&inputs, &Default::default(), &smelt::RunOptions::default())
                .map_err(|e| e.to_string())?,
            _ => compiled
                .as_ref()
                .expect("compiled for the runtime's target")
                .run_named(&inputs)
                .map_err(|e| e.to_string())?,
        };
        for (j, (name, actual)) in results.iter().enumerate() {
            let expected = read_tensor_pb(&set.join(format!("output_{j}.pb")))?;
            let actual = smelt::to_ir_tensor(actual)?;
            compare(&expected, &actual, case.rtol, case.atol)
                .map_err(|e| format!("output '{name}': {e}"))?;
        }
    }
    Ok(())
}

/// Runs every node case and suite model under `data_dir` on `threads` workers; a
/// panicking case fails rather than aborting the run.
pub fn run_all(
    data_dir: &Path,
    runtime: Runtime,
    threads: usize,
) -> Result<Vec<CaseResult>, String> {
    let mut cases = load_manifest(&data_dir.join("node"))?;
    cases.extend(load_manifest(&data_dir.join("suites"))?);
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::with_capacity(cases.len()));
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(case) = cases.get(i) else { break };
                    let outcome = std::panic::catch_unwind(|| run_case(case, runtime))
                        .unwrap_or_else(|p| {
                            let msg = p
                                .downcast_ref::<String>()
                                .cloned()
                                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
                            Err(format!("panic (a bug): {}", msg.unwrap_or_default()))
                        });
                    results
                        .lock()
                        .expect("no poisoning: panics are caught")
                        .push(CaseResult {
                            case: case.clone(),
                            outcome,
                        });
                }
            });
        }
    });
    let mut results = results.into_inner().expect("workers finished");
    results.sort_by(|a, b| a.case.name.cmp(&b.case.name));
    Ok(results)
}

/// Node cases, passing node cases, suite models, passing suite models.
pub fn counts(results: &[CaseResult]) -> (usize, usize, usize, usize) {
    let (suite, node): (Vec<&CaseResult>, Vec<&CaseResult>) =
        results.iter().partition(|r| r.case.is_suite());
    let pass = |v: &[&CaseResult]| v.iter().filter(|r| r.outcome.is_ok()).count();
    (node.len(), pass(&node), suite.len(), pass(&suite))
}

/// Compares a run with its runtime's expectations file, printing the counts and the
/// cases that pass but are not marked pass; an error lists the cases marked pass that
/// failed, or cases the expectations list that the data lacks.
pub fn check_against_expectations(runtime: Runtime, results: &[CaseResult]) -> Result<(), String> {
    let (node, node_pass, suite, suite_pass) = counts(results);
    println!(
        "{}: {node_pass} of {node} node cases pass, {suite_pass} of {suite} suite models",
        runtime.name()
    );
    let expected = load_expectations(&expectations_path(runtime))?;
    let d = check(results, &expected);
    if !d.unexpected_passes.is_empty() {
        println!(
            "{} cases pass but are not marked pass (update the expectations):",
            d.unexpected_passes.len()
        );
        for n in &d.unexpected_passes {
            println!("  {n}");
        }
    }
    if !d.regressions.is_empty() {
        let lines: Vec<String> = d
            .regressions
            .iter()
            .map(|(n, e)| format!("  {n}: {e}"))
            .collect();
        return Err(format!(
            "{} cases marked pass now fail on {}:\n{}",
            lines.len(),
            runtime.name(),
            lines.join("\n")
        ));
    }
    if !d.stale.is_empty() {
        return Err(format!(
            "expectations list cases the data lacks: {:?}",
            d.stale
        ));
    }
    Ok(())
}

/// How a run disagrees with the expectations.
#[derive(Debug, Default)]
pub struct Disagreement {
    /// Marked pass, but failed (with the reason).
    pub regressions: Vec<(String, String)>,
    /// Passed, but not marked pass.
    pub unexpected_passes: Vec<String>,
    /// Listed in the expectations but not in the data.
    pub stale: Vec<String>,
}

impl Disagreement {
    pub fn is_empty(&self) -> bool {
        self.regressions.is_empty() && self.unexpected_passes.is_empty() && self.stale.is_empty()
    }
}

pub fn check(results: &[CaseResult], expected: &BTreeMap<String, Status>) -> Disagreement {
    let mut d = Disagreement::default();
    for r in results {
        match (&r.outcome, expected.get(&r.case.name)) {
            (Err(e), Some(Status::Pass)) => d.regressions.push((r.case.name.clone(), one_line(e))),
            (Ok(()), Some(Status::Pass)) | (Err(_), _) => {}
            (Ok(()), _) => d.unexpected_passes.push(r.case.name.clone()),
        }
    }
    for name in expected.keys() {
        if !results.iter().any(|r| &r.case.name == name) {
            d.stale.push(name.clone());
        }
    }
    d
}

/// The `docs/conformance.md` report: totals, the supported op types, a table per op, failing suite models.
pub fn conformance_markdown(runtime_results: &[(Runtime, Vec<CaseResult>)]) -> String {
    let mut s = String::from(
        "# ONNX conformance\n\nGenerated by `cargo xtask conformance` from the ONNX 1.23.2 backend node cases and model suites.\n\n",
    );
    for (rt, results) in runtime_results {
        let (node, node_pass, suite, suite_pass) = counts(results);
        s.push_str(&format!(
            "- **{}**: {node_pass} of {node} node cases pass; {suite_pass} of {suite} models of the `simple`, `pytorch-operator` and `pytorch-converted` suites pass\n",
            rt.name()
        ));
    }
    let ops = smelt_onnx::ops::supported_ops();
    s.push_str(&format!(
        "\nThe importer handles {} ONNX op types of the default domain (opsets 6 to 28):\n{}\n",
        ops.len(),
        ops.join(", ")
    ));
    s.push_str("\n## Node cases per op\n\n| op | cases |");
    for (rt, _) in runtime_results {
        s.push_str(&format!(" {} passing | status |", rt.name()));
    }
    s.push_str("\n|---|---|");
    for _ in runtime_results {
        s.push_str("---|---|");
    }
    s.push('\n');
    let mut per_op: BTreeMap<&str, usize> = BTreeMap::new();
    for r in runtime_results[0].1.iter().filter(|r| !r.case.is_suite()) {
        *per_op.entry(r.case.op.as_str()).or_insert(0) += 1;
    }
    for (op, count) in per_op {
        s.push_str(&format!("| {op} | {count} |"));
        for (_, results) in runtime_results {
            let pass = results
                .iter()
                .filter(|r| r.case.op == op && r.outcome.is_ok())
                .count();
            let status = if pass == count {
                "full"
            } else if pass == 0 {
                "none"
            } else {
                "partial"
            };
            s.push_str(&format!(" {pass} | {status} |"));
        }
        s.push('\n');
    }
    for (rt, results) in runtime_results {
        s.push_str(&format!("\n## Failing suite models on {}\n\n", rt.name()));
        for r in results.iter().filter(|r| r.case.is_suite()) {
            if let Err(e) = &r.outcome {
                s.push_str(&format!("- `{}`: {}\n", r.case.name, one_line(e)));
            }
        }
    }
    s
}

/// Imports a case specialized to its first data set, writes the graph back as ONNX with
/// `smelt_onnx::export`, imports that and runs it on the reference interpreter: the
/// outputs must match the case's expected ones. Checks the exporter op by op.
pub fn export_round_trip(case: &CaseInfo, write_to: Option<&Path>) -> Result<(), String> {
    let inputs = first_inputs(case)?;
    let model = smelt::Model::load(case.dir.join("model.onnx")).map_err(|e| e.to_string())?;
    let mut options = smelt_onnx::ImportOptions::default();
    for (name, t) in &inputs {
        options.input_shapes.insert(name.clone(), t.shape.clone());
        options
            .input_values
            .insert(name.clone(), smelt::to_ir_tensor(t)?);
    }
    let imported = model.import(&options).map_err(|e| e.to_string())?;
    let bytes = smelt_onnx::export_bytes(&imported.graph).map_err(|e| format!("export: {e}"))?;
    if let Some(dir) = write_to {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("model.onnx"), &bytes).map_err(|e| e.to_string())?;
    }
    let exported = smelt::Model::from_bytes(&bytes).map_err(|e| format!("re-import: {e}"))?;
    // Inputs bound to their values at import are constants of the exported graph.
    let fed: Vec<(String, smelt_runtime::HostTensor)> = inputs
        .into_iter()
        .filter(|(name, _)| imported.input_names.contains(name))
        .collect();
    let results = exported
        .run_reference(&fed, &Default::default(), &smelt::RunOptions::default())
        .map_err(|e| format!("re-imported run: {e}"))?;
    let set = case.dir.join("test_data_set_0");
    for (j, (name, actual)) in results.iter().enumerate() {
        let expected = read_tensor_pb(&set.join(format!("output_{j}.pb")))?;
        compare(
            &expected,
            &smelt::to_ir_tensor(actual)?,
            case.rtol,
            case.atol,
        )
        .map_err(|e| format!("output '{name}': {e}"))?;
    }
    Ok(())
}
