"""Runs exported conformance cases on onnxruntime (CPU) against their expected outputs.

usage: ort_conformance.py EXPORTED_DIR DATA_DIR
EXPORTED_DIR/<case>/model.onnx are the exports; DATA_DIR/{node,suites}/manifest.tsv list
the cases with their tolerances and DATA_DIR/.../<case>/test_data_set_0 their data.
Prints one line per case that fails: "<case>\t<reason>".
"""
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper


def read_pb(path):
    t = onnx.TensorProto()
    with open(path, "rb") as f:
        t.ParseFromString(f.read())
    return numpy_helper.to_array(t)


def run_case(model_path, case_dir, rtol, atol):
    model = onnx.load(model_path)
    onnx.checker.check_model(model, full_check=True)
    original = onnx.load(os.path.join(case_dir, "model.onnx"))
    inits = {t.name for t in original.graph.initializer}
    fed = [i.name for i in original.graph.input if i.name not in inits]
    data = os.path.join(case_dir, "test_data_set_0")
    values = {name: read_pb(os.path.join(data, f"input_{j}.pb")) for j, name in enumerate(fed)}
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
    # Inputs smelt bound to their values at import are constants of the export.
    outs = sess.run(None, {i.name: values[i.name] for i in model.graph.input})
    for j, out in enumerate(outs):
        expected = read_pb(os.path.join(data, f"output_{j}.pb"))
        if expected.shape != out.shape:
            raise ValueError(f"output {j}: shape {out.shape}, expected {expected.shape}")
        if expected.dtype.kind in "fc":
            np.testing.assert_allclose(out.astype(np.float64), expected.astype(np.float64),
                                       rtol=rtol, atol=atol, equal_nan=True, err_msg=f"output {j}")
        elif not np.array_equal(out, expected):
            raise ValueError(f"output {j}: values differ")


def main():
    exported, data_dir = sys.argv[1], sys.argv[2]
    ort.set_default_logger_severity(4)
    for sub in ["node", "suites"]:
        with open(os.path.join(data_dir, sub, "manifest.tsv")) as f:
            for line in f:
                name, _, rtol, atol = line.rstrip("\n").split("\t")
                model_path = os.path.join(exported, name, "model.onnx")
                if not os.path.exists(model_path):
                    continue
                try:
                    run_case(model_path, os.path.join(data_dir, sub, name), float(rtol), float(atol))
                except Exception as e:  # noqa: BLE001 - every failure is reported, none stops the run
                    reason = " ".join(str(e).split())[:300] or type(e).__name__
                    print(f"{name}\t{reason}", flush=True)


if __name__ == "__main__":
    main()
