"""Checks an ONNX model with onnx's full checker and runs it on onnxruntime (CPU).

usage: ort_run.py MODEL.onnx DIR
Reads DIR/inputs.tsv (lines: input name, .npy file in DIR), writes each output to
DIR/ort_<i>.npy in the model's output order, and prints the opset and output names.
"""
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort


def main():
    model_path, work = sys.argv[1], sys.argv[2]
    model = onnx.load(model_path)
    onnx.checker.check_model(model, full_check=True)
    feeds = {}
    with open(os.path.join(work, "inputs.tsv")) as f:
        for line in f:
            name, file = line.rstrip("\n").split("\t")
            feeds[name] = np.load(os.path.join(work, file))
    opts = ort.SessionOptions()
    # Run the graph as written: the comparison is of semantics, not of ORT's rewrites.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
    outs = sess.run(None, feeds)
    for i, out in enumerate(outs):
        np.save(os.path.join(work, f"ort_{i}.npy"), out)
    opset = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    print("opset", opset[0], "outputs", " ".join(o.name for o in sess.get_outputs()))


if __name__ == "__main__":
    main()
