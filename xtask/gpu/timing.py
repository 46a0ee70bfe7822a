"""The GPU session's timings: each benchmark on smelt (through `smelt-gpu-check time`,
device time between CUDA events) and on PyTorch in FP32 with TF32 off and with TF32 on
(CUDA events too), every result checked against a float64 or onnxruntime result.

Writes one row per (benchmark, engine) to the TSV given, as soon as it is measured, so
that rows measured before a time limit survive it. Without torch (the CI dry run) the
PyTorch rows say so. `--quick` runs the same benchmarks at small sizes (the dry run on the
emulated device).
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the CI dry run's venv has no torch
    torch = None

COLUMNS = ["bench", "engine", "median_ms", "min_ms", "gflops", "check", "max_err", "note"]
OPSET = 17


def f32(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def save_model(path, nodes, inputs, outputs, inits=()):
    graph = helper.make_graph(nodes, os.path.basename(path), inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


class Bench:
    """A model file, its inputs, its flop count and how its outputs are checked."""

    def __init__(self, name, model, inputs, flops=None, reference=None, rtol=1e-4, atol=1e-5,
                 tf32_atol=None, iterations=20):
        self.name = name
        self.model = model
        self.inputs = inputs  # [(name, array)]
        self.flops = flops
        # reference(inputs) -> [expected float64 array, or (rows, array) for a row sample]
        self.reference = reference
        self.rtol, self.atol = rtol, atol
        self.tf32_atol = tf32_atol if tf32_atol is not None else atol
        self.iterations = iterations


def ort_reference(model):
    def run(inputs):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        s = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        return [o.astype(np.float64) for o in s.run(None, dict(inputs))]

    return run


def matmul(work, n, rng):
    path = save_model(os.path.join(work, f"matmul_{n}.onnx"),
                      [helper.make_node("MatMul", ["a", "b"], ["c"])],
                      [f32("a", [n, n]), f32("b", [n, n])], [f32("c", [n, n])])
    a = rng.uniform(-1, 1, (n, n)).astype(np.float32)
    b = rng.uniform(-1, 1, (n, n)).astype(np.float32)
    rows = np.sort(rng.choice(n, size=min(n, 16), replace=False))

    def reference(inputs):
        # A sample of rows in float64: the whole product would take minutes on the CPU.
        return [(rows, a[rows].astype(np.float64) @ b.astype(np.float64))]

    # FP32 sums over K terms of size <= 1 drift by about sqrt(K) ulps; TF32 rounds each
    # factor to 10 bits first.
    return Bench(f"matmul_{n}", path, [("a", a), ("b", b)], 2 * n**3, reference,
                 rtol=1e-4, atol=1e-6 * n, tf32_atol=2e-3 * np.sqrt(n), iterations=10)


def softmax(work, rows, cols, rng):
    path = save_model(os.path.join(work, f"softmax_{rows}x{cols}.onnx"),
                      [helper.make_node("Softmax", ["x"], ["y"], axis=-1)],
                      [f32("x", [rows, cols])], [f32("y", [rows, cols])])
    x = rng.uniform(-8, 8, (rows, cols)).astype(np.float32)

    def reference(inputs):
        e = np.exp(x.astype(np.float64) - x.max(axis=-1, keepdims=True))
        return [e / e.sum(axis=-1, keepdims=True)]

    return Bench(f"softmax_{rows}x{cols}", path, [("x", x)], None, reference, 1e-4, 1e-6)


def layernorm(work, rows, cols, rng):
    g = rng.uniform(0.5, 1.5, cols).astype(np.float32)
    b = rng.uniform(-0.5, 0.5, cols).astype(np.float32)
    path = save_model(os.path.join(work, f"layernorm_{rows}x{cols}.onnx"),
                      [helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1,
                                        epsilon=1e-5)],
                      [f32("x", [rows, cols])], [f32("y", [rows, cols])],
                      [numpy_helper.from_array(g, "g"), numpy_helper.from_array(b, "b")])
    x = rng.uniform(-2, 2, (rows, cols)).astype(np.float32)

    def reference(inputs):
        x64 = x.astype(np.float64)
        mean = x64.mean(axis=-1, keepdims=True)
        var = ((x64 - mean) ** 2).mean(axis=-1, keepdims=True)
        return [(x64 - mean) / np.sqrt(var + 1e-5) * g + b]

    return Bench(f"layernorm_{rows}x{cols}", path, [("x", x)], None, reference, 1e-4, 1e-4)


def conv(work, batch, channels, size, rng):
    name = f"conv3x3_{channels}_{size}_b{batch}"
    w = (rng.standard_normal((channels, channels, 3, 3)) * 0.1).astype(np.float32)
    bias = rng.uniform(-0.1, 0.1, channels).astype(np.float32)
    path = save_model(os.path.join(work, name + ".onnx"),
                      [helper.make_node("Conv", ["x", "w", "bias"], ["y"], pads=[1, 1, 1, 1])],
                      [f32("x", [batch, channels, size, size])],
                      [f32("y", [batch, channels, size, size])],
                      [numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias, "bias")])
    x = rng.uniform(-1, 1, (batch, channels, size, size)).astype(np.float32)
    flops = 2 * batch * channels * channels * 9 * size * size
    return Bench(name, path, [("x", x)], flops, ort_reference(path), 1e-4, 1e-4,
                 tf32_atol=2e-2)


def resnet50(work, models, batch, rng):
    """The light ResNet-50 of the test data at `batch` (its input and its one Reshape
    batch-sized)."""
    m = onnx.load(os.path.join(models, "light_resnet50", "model.onnx"))
    g = m.graph
    g.input[0].type.tensor_type.shape.dim[0].dim_value = batch
    g.output[0].type.tensor_type.shape.dim[0].dim_value = batch
    inits = {t.name: t for t in g.initializer}
    for node in g.node:
        if node.op_type == "Reshape" and node.input[1] in inits:
            shape = numpy_helper.to_array(inits[node.input[1]]).copy()
            shape[0] = batch
            inits[node.input[1]].CopyFrom(numpy_helper.from_array(shape, node.input[1]))
    del g.value_info[:]
    path = os.path.join(work, f"resnet50_b{batch}.onnx")
    onnx.save(m, path)
    x = rng.uniform(0, 1, (batch, 3, 224, 224)).astype(np.float32)
    return Bench(f"light_resnet50_b{batch}", path, [(g.input[0].name, x)], None,
                 ort_reference(path), 1e-4, 1e-5, tf32_atol=1e-3, iterations=10)


def bert(work, gen_models, quick):
    spec = importlib.util.spec_from_file_location("gen_models", gen_models)
    gm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gm)
    sizes = dict(layers=1, hidden=64, heads=4, ffn=128, seq=16) if quick else {}
    gm.bert(work, **sizes)
    d = os.path.join(work, "bert_encoder")
    x = np.load(os.path.join(d, "input_0.npy"))
    path = os.path.join(d, "model.onnx")
    return Bench("bert_encoder" + ("_quick" if quick else "_4x768_s128"), path, [("x", x)],
                 None, ort_reference(path), 1e-4, 1e-4, tf32_atol=2e-2, iterations=10)


def benchmarks(work, models, gen_models, quick):
    """The benchmarks in order; each is made only when its turn comes (BERT's weights are
    100 MB)."""
    rng = np.random.default_rng(20261206)
    if quick:
        yield lambda: matmul(work, 64, rng)
        yield lambda: matmul(work, 96, rng)
        yield lambda: softmax(work, 64, 256, rng)
        yield lambda: layernorm(work, 64, 256, rng)
        yield lambda: conv(work, 1, 8, 14, rng)
        yield lambda: conv(work, 2, 8, 14, rng)
        yield lambda: resnet50(work, models, 1, rng)
        yield lambda: bert(work, gen_models, True)
        return
    for n in (1024, 2048, 4096, 8192):
        yield lambda n=n: matmul(work, n, rng)
    yield lambda: softmax(work, 4096, 1024, rng)
    yield lambda: layernorm(work, 4096, 1024, rng)
    yield lambda: conv(work, 1, 64, 56, rng)
    yield lambda: conv(work, 32, 64, 56, rng)
    yield lambda: resnet50(work, models, 1, rng)
    yield lambda: resnet50(work, models, 32, rng)
    yield lambda: bert(work, gen_models, False)


def max_error(bench, outputs, expected, atol):
    """The largest |actual - expected| over the outputs, and whether every element is
    within atol + rtol * |expected|."""
    worst, ok = 0.0, True
    if len(outputs) != len(expected):
        return float("inf"), False
    for got, want in zip(outputs, expected):
        if isinstance(want, tuple):
            rows, want = want
            got = np.asarray(got)[rows]
        got = np.asarray(got, dtype=np.float64)
        if got.shape != want.shape or not np.all(np.isfinite(got)):
            return float("inf"), False
        err = np.abs(got - want)
        worst = max(worst, float(err.max(initial=0.0)))
        ok &= bool(np.all(err <= atol + bench.rtol * np.abs(want)))
    return worst, ok


def median(xs):
    return float(np.median(np.asarray(xs))) if xs else float("nan")


def run_smelt(args, bench, work, expected):
    inputs = []
    for name, arr in bench.inputs:
        p = os.path.join(work, f"{bench.name}_{len(inputs)}.npy")
        np.save(p, arr)
        inputs += ["--input", f"{name}={p}"]
    outdir = os.path.join(work, bench.name + "_out")
    iterations = 2 if args.quick else bench.iterations
    cmd = [args.check, "time", "--runtime", args.runtime, "--libdevice", args.libdevice,
           bench.model, *inputs, "--iterations", str(iterations),
           "--warmup", "1" if args.quick else "3", "--outputs", outdir]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.case_seconds)
    if p.returncode != 0:
        said = (p.stderr or p.stdout).strip().splitlines() or [f"exit status {p.returncode}"]
        raise RuntimeError(said[-1][:300])
    line = [l for l in p.stdout.splitlines() if l.startswith("{")][-1]
    t = json.loads(line)
    outputs = [np.load(os.path.join(outdir, f"output_{i}.npy"))
               for i in range(len(expected))]
    err, ok = max_error(bench, outputs, expected, bench.atol)
    note = f"compile {t['compile_ms']:.0f} ms; {t['launches']} launches; with copies {t['wall_median_ms']:.3f} ms"
    return t["median_ms"], t["min_ms"], err, ok, note


class TorchGraph:
    """An ONNX graph run node by node on PyTorch (eager, what PyTorch itself would run),
    its constant part evaluated once."""

    def __init__(self, path, device):
        m = onnx.load(path)
        self.opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 1)
        g = m.graph
        self.device = device
        self.values = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()).to(device)
                       for t in g.initializer}
        self.inputs = [i.name for i in g.input if i.name not in self.values]
        self.outputs = [o.name for o in g.output]
        self.nodes = []
        for node in g.node:
            if all(i == "" or i in self.values for i in node.input):
                for name, v in zip(node.output, self.run_node(node, self.values)):
                    self.values[name] = v
            else:
                self.nodes.append(node)

    def __call__(self, feeds):
        env = dict(self.values)
        env.update(feeds)
        for node in self.nodes:
            for name, v in zip(node.output, self.run_node(node, env)):
                env[name] = v
        return [env[o] for o in self.outputs]

    def run_node(self, node, env):
        a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
        x = [env[i] if i else None for i in node.input]
        op = node.op_type
        if op == "Conv":
            pads = a.get("pads", [0] * 4)
            assert pads[:2] == pads[2:], "symmetric pads only"
            return [F.conv2d(x[0], x[1], x[2] if len(x) > 2 else None, a.get("strides", 1),
                             pads[:2], a.get("dilations", 1), a.get("group", 1))]
        if op == "BatchNormalization":
            return [F.batch_norm(x[0], x[3], x[4], x[1], x[2], False, 0.0, a.get("epsilon", 1e-5))]
        if op == "Relu":
            return [torch.relu(x[0])]
        if op == "MaxPool":
            pads = a.get("pads", [0] * 4)
            return [F.max_pool2d(x[0], a["kernel_shape"], a.get("strides", 1), pads[:2])]
        if op == "AveragePool":
            pads = a.get("pads", [0] * 4)
            return [F.avg_pool2d(x[0], a["kernel_shape"], a.get("strides", 1), pads[:2],
                                 count_include_pad=bool(a.get("count_include_pad", 0)))]
        if op == "GlobalAveragePool":
            return [x[0].mean(dim=(2, 3), keepdim=True)]
        if op in ("Sum", "Add"):
            out = x[0]
            for y in x[1:]:
                out = out + y
            return [out]
        if op == "Mul":
            return [x[0] * x[1]]
        if op == "Sub":
            return [x[0] - x[1]]
        if op == "Div":
            return [x[0] / x[1]]
        if op == "Erf":
            return [torch.erf(x[0])]
        if op in ("Identity", "Dropout"):
            return [x[0]]
        if op == "Reshape":
            shape = [int(s) for s in x[1].tolist()]
            shape = [x[0].shape[i] if s == 0 else s for i, s in enumerate(shape)]
            return [x[0].reshape(shape)]
        if op == "Flatten":
            return [torch.flatten(x[0], a.get("axis", 1))]
        if op == "Transpose":
            return [x[0].permute(*a["perm"]).contiguous()]
        if op == "MatMul":
            return [torch.matmul(x[0], x[1])]
        if op == "Gemm":
            A = x[0].t() if a.get("transA", 0) else x[0]
            B = x[1].t() if a.get("transB", 0) else x[1]
            y = a.get("alpha", 1.0) * (A @ B)
            if len(x) > 2 and x[2] is not None:
                y = y + a.get("beta", 1.0) * x[2]
            return [y]
        if op == "Softmax":
            axis = a.get("axis", -1 if self.opset >= 13 else 1)
            if self.opset < 13:
                shape = x[0].shape
                flat = x[0].reshape(int(np.prod(shape[:axis])), -1)
                return [torch.softmax(flat, dim=1).reshape(shape)]
            return [torch.softmax(x[0], dim=axis)]
        if op == "LayerNormalization":
            axis = a.get("axis", -1) % x[0].dim()
            return [F.layer_norm(x[0], x[0].shape[axis:], x[1], x[2] if len(x) > 2 else None,
                                 a.get("epsilon", 1e-5))]
        if op == "ConstantOfShape":
            value = numpy_helper.to_array(a["value"]) if "value" in a else np.zeros(1, np.float32)
            shape = [int(s) for s in x[0].tolist()]
            return [torch.full(shape, float(value.reshape(-1)[0]),
                               dtype=torch.from_numpy(value).dtype, device=self.device)]
        if op == "Constant":
            return [torch.from_numpy(numpy_helper.to_array(a["value"]).copy()).to(self.device)]
        if op == "Concat":
            return [torch.cat(x, dim=a["axis"])]
        raise NotImplementedError(f"the PyTorch runner has no {op}")


def run_torch(args, bench, expected, tf32):
    if torch is None:
        raise RuntimeError("torch is not installed here")
    if not torch.cuda.is_available():
        raise RuntimeError("torch sees no CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    dev = torch.device("cuda")
    graph = TorchGraph(bench.model, dev)
    feeds = {n: torch.from_numpy(a).to(dev) for n, a in bench.inputs}
    times = []
    with torch.inference_mode():
        for _ in range(3):
            out = graph(feeds)
        torch.cuda.synchronize()
        for _ in range(bench.iterations):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            out = graph(feeds)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    outputs = [o.float().cpu().numpy() for o in out]
    err, ok = max_error(bench, outputs, expected, bench.tf32_atol if tf32 else bench.atol)
    note = f"cuDNN {torch.backends.cudnn.version()}; torch {torch.__version__}"
    return median(times), min(times), err, ok, note


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--check", required=True, help="the smelt-gpu-check program")
    ap.add_argument("--libdevice", required=True)
    ap.add_argument("--runtime", default="cuda", choices=["cuda", "gpu-emulator"])
    ap.add_argument("--models", required=True, help="the test data's models directory")
    ap.add_argument("--gen-models", required=True, help="bench/py/gen_models.py")
    ap.add_argument("--out", required=True, help="the TSV to write")
    ap.add_argument("--quick", action="store_true", help="small sizes (the dry run)")
    ap.add_argument("--case-seconds", type=float, default=90)
    ap.add_argument("--deadline", type=float, default=1e9,
                    help="seconds after which no further benchmark starts")
    args = ap.parse_args()
    started = time.monotonic()
    work = tempfile.mkdtemp(prefix="smelt-timing-")
    with open(args.out, "w") as out:
        out.write("\t".join(COLUMNS) + "\n")

        def row(name, engine, med=None, mn=None, gflops=None, check="", err=None, note=""):
            fmt = lambda v, p: "" if v is None or not np.isfinite(v) else f"{v:.{p}f}"
            out.write("\t".join([name, engine, fmt(med, 4), fmt(mn, 4), fmt(gflops, 1), check,
                                 "" if err is None else f"{err:.3g}",
                                 note.replace("\t", " ").replace("\n", " ")]) + "\n")
            out.flush()
            print(f"{name:24} {engine:11} {fmt(med, 4):>10} ms  {check} {note}", flush=True)

        for make in benchmarks(work, args.models, args.gen_models, args.quick):
            if time.monotonic() - started > args.deadline:
                row("(rest)", "all", check="skipped", note="the step's time ran out")
                break
            try:
                bench = make()
                expected = bench.reference(bench.inputs)
            except Exception as e:  # a benchmark that cannot be made is a row, not a stop
                row("(setup)", "all", check="error", note=f"{type(e).__name__}: {e}")
                continue
            engines = [("smelt", lambda: run_smelt(args, bench, work, expected)),
                       ("torch-fp32", lambda: run_torch(args, bench, expected, False)),
                       ("torch-tf32", lambda: run_torch(args, bench, expected, True))]
            for engine, run in engines:
                try:
                    med, mn, err, ok, note = run()
                    gflops = bench.flops / (med * 1e6) if bench.flops and med > 0 else None
                    row(bench.name, engine, med, mn, gflops, "pass" if ok else "FAIL", err, note)
                except subprocess.TimeoutExpired:
                    row(bench.name, engine, check="error",
                        note=f"over {args.case_seconds:.0f} s")
                except Exception as e:
                    row(bench.name, engine, check="error", note=f"{type(e).__name__}: {e}")


if __name__ == "__main__":
    sys.exit(main())
