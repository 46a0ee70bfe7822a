"""Compares smelt's outputs of a benchmark model with onnxruntime's and prints one JSON
object: whether every output matches (rtol 1e-4, and atol 1e-5 times the output's
largest magnitude when that is above 1; NaN matching NaN) and the worst error as a
fraction of its tolerance. The absolute part scales because two correct f32 programs
summing a 1024-deep product in different orders differ by about 1e-6 of the largest
value, which a fixed 1e-5 refuses near zero.

usage: check_outputs.py MODEL_DIR SMELT_OUTPUT_DIR

SMELT_OUTPUT_DIR holds `smelt run --output-dir`'s files: one .npy per output, named as
`smelt::output_file_name` names them (every character outside [A-Za-z0-9_.-] as `_`)."""

import json
import os
import re
import sys

import numpy as np
import onnxruntime as ort

RTOL, ATOL = 1e-4, 1e-5


def main():
    d, out = sys.argv[1], sys.argv[2]
    feeds = {}
    for line in open(os.path.join(d, "io.tsv")):
        kind, name, file = line.rstrip("\n").split("\t")
        if kind == "input":
            feeds[name] = np.load(os.path.join(d, file))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(os.path.join(d, "model.onnx"), so, providers=["CPUExecutionProvider"])
    worst, ok, problems = 0.0, True, []
    for o, want in zip(sess.get_outputs(), sess.run(None, feeds)):
        path = os.path.join(out, re.sub(r"[^A-Za-z0-9_.-]", "_", o.name) + ".npy")
        if not os.path.exists(path):
            ok = False
            problems.append(f"{o.name}: no output file")
            continue
        got = np.load(path)
        if got.shape != want.shape:
            ok = False
            problems.append(f"{o.name}: shape {list(got.shape)}, onnxruntime {list(want.shape)}")
            continue
        g, w = got.astype(np.float64), want.astype(np.float64)
        both_nan = np.isnan(g) & np.isnan(w)
        err = np.where(both_nan, 0.0, np.abs(g - w))
        finite = np.abs(w[np.isfinite(w)])
        scale = max(1.0, float(finite.max())) if finite.size else 1.0
        tol = ATOL * scale + RTOL * np.abs(np.nan_to_num(w))
        ratio = float(np.nanmax(np.where(np.isnan(err), np.inf, err / tol))) if err.size else 0.0
        worst = max(worst, ratio)
        if ratio > 1.0:
            ok = False
            problems.append(f"{o.name}: worst error {ratio:.2f}x the tolerance")
    print(json.dumps({"matches": ok, "worst_error_over_tolerance": worst, "problems": problems}))


if __name__ == "__main__":
    main()
