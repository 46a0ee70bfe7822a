"""SGEMM throughput sweep on a GPU: smelt's `--target cuda` MatMul kernel beside
torch.matmul (fp32, TF32 off) on the same GPU. Run by `cargo xtask gpu-check`.

usage: gpu_sgemm.py SMELT_BINARY WORK_DIR OUT_MARKDOWN
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

SIZES = [1024, 2048, 4096, 8192]


def matmul_model(n: int, path: Path) -> None:
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n])
    c = helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], f"sgemm{n}", [a, b], [c])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)


def smelt_kernel_ms(smelt: str, model: Path, n: int) -> float:
    """Mean time of the MatMul launch (synchronized after each launch) over timed runs."""
    iterations = 20 if n <= 2048 else 5
    out = subprocess.run(
        [smelt, "bench", str(model), "--target", "cuda", "--iterations", str(iterations), "--warmup", "2", "--profile"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    after = out.split("profile", 1)[1]
    return float(re.search(r"([0-9.]+) ms", after).group(1))


def torch_ms(n: int) -> float:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    a = torch.randn(n, n, device="cuda")
    b = torch.randn(n, n, device="cuda")
    for _ in range(3):
        torch.matmul(a, b)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    reps = 20 if n <= 2048 else 5
    start.record()
    for _ in range(reps):
        torch.matmul(a, b)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def main() -> None:
    smelt, work, out_md = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in SIZES:
        model = work / f"sgemm_{n}.onnx"
        matmul_model(n, model)
        flops = 2.0 * n**3
        ms = smelt_kernel_ms(smelt, model, n)
        try:
            t_ms = torch_ms(n)
        except Exception as e:  # PyTorch absent or without CUDA: the column says so.
            print(f"torch.matmul unavailable: {e}", file=sys.stderr)
            t_ms = float("nan")
        rows.append((n, ms, flops / ms / 1e9, t_ms, flops / t_ms / 1e9 if t_ms == t_ms else float("nan")))
    lines = [
        "| N | smelt ms | smelt TFLOP/s | torch.matmul ms | torch TFLOP/s | smelt/torch time |",
        "|---|---|---|---|---|---|",
    ]
    for n, ms, tf, t_ms, t_tf in rows:
        lines.append(f"| {n} | {ms:.3f} | {tf:.2f} | {t_ms:.3f} | {t_tf:.2f} | {ms / t_ms:.2f} |")
    table = "\n".join(lines)
    print(table)
    out_md.write_text(table + "\n")
    print(json.dumps({"sgemm": [dict(zip(["n", "smelt_ms", "smelt_tflops", "torch_ms", "torch_tflops"], r)) for r in rows]}))


if __name__ == "__main__":
    np.random.seed(0)
    main()
