"""Generates the benchmark models that are not test data: a BERT-like encoder and
single-op microbenchmarks, each with an input and an io.tsv, into the directory given."""

import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
rng = np.random.default_rng(0)


def weight(name, shape, scale=0.02):
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def save(out, name, nodes, inputs, outputs, inits, feeds):
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, os.path.join(d, "model.onnx"))
    with open(os.path.join(d, "io.tsv"), "w") as f:
        for i, (n, arr) in enumerate(feeds):
            np.save(os.path.join(d, f"input_{i}.npy"), arr)
            f.write(f"input\t{n}\tinput_{i}.npy\n")


def f32(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def bert(out, layers=4, hidden=768, heads=12, ffn=3072, seq=128):
    nodes, inits = [], []
    head = hidden // heads
    inits += [
        numpy_helper.from_array(np.array([1, seq, heads, head], np.int64), "split_shape"),
        numpy_helper.from_array(np.array([1, seq, hidden], np.int64), "merge_shape"),
        numpy_helper.from_array(np.array(1.0 / np.sqrt(head), np.float32), "scale"),
        numpy_helper.from_array(np.array(1.0 / np.sqrt(2.0), np.float32), "inv_sqrt2"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
    ]
    x = "x"
    for l in range(layers):
        p = f"l{l}_"

        def dense(inp, n_in, n_out, tag):
            inits.extend([weight(p + tag + "_w", (n_in, n_out)), weight(p + tag + "_b", (n_out,))])
            nodes.append(helper.make_node("MatMul", [inp, p + tag + "_w"], [p + tag + "_mm"]))
            nodes.append(helper.make_node("Add", [p + tag + "_mm", p + tag + "_b"], [p + tag]))
            return p + tag

        q, k, v = (dense(x, hidden, hidden, t) for t in ("q", "k", "v"))
        for t in (q, k, v):
            nodes.append(helper.make_node("Reshape", [t, "split_shape"], [t + "_r"]))
        nodes.append(helper.make_node("Transpose", [q + "_r"], [q + "_t"], perm=[0, 2, 1, 3]))
        nodes.append(helper.make_node("Transpose", [k + "_r"], [k + "_t"], perm=[0, 2, 3, 1]))
        nodes.append(helper.make_node("Transpose", [v + "_r"], [v + "_t"], perm=[0, 2, 1, 3]))
        nodes.append(helper.make_node("MatMul", [q + "_t", k + "_t"], [p + "scores"]))
        nodes.append(helper.make_node("Mul", [p + "scores", "scale"], [p + "scaled"]))
        nodes.append(helper.make_node("Softmax", [p + "scaled"], [p + "probs"], axis=-1))
        nodes.append(helper.make_node("MatMul", [p + "probs", v + "_t"], [p + "ctx"]))
        nodes.append(helper.make_node("Transpose", [p + "ctx"], [p + "ctx_t"], perm=[0, 2, 1, 3]))
        nodes.append(helper.make_node("Reshape", [p + "ctx_t", "merge_shape"], [p + "ctx_m"]))
        o = dense(p + "ctx_m", hidden, hidden, "o")
        nodes.append(helper.make_node("Add", [o, x], [p + "res1"]))
        inits += [numpy_helper.from_array(np.ones(hidden, np.float32), p + "ln1_g"),
                  numpy_helper.from_array(np.zeros(hidden, np.float32), p + "ln1_b")]
        nodes.append(helper.make_node("LayerNormalization", [p + "res1", p + "ln1_g", p + "ln1_b"], [p + "ln1"], axis=-1, epsilon=1e-12))
        h = dense(p + "ln1", hidden, ffn, "ff1")
        # GELU(h) = h * 0.5 * (1 + erf(h / sqrt 2))
        nodes.append(helper.make_node("Mul", [h, "inv_sqrt2"], [p + "g1"]))
        nodes.append(helper.make_node("Erf", [p + "g1"], [p + "g2"]))
        nodes.append(helper.make_node("Add", [p + "g2", "one"], [p + "g3"]))
        nodes.append(helper.make_node("Mul", [h, p + "g3"], [p + "g4"]))
        nodes.append(helper.make_node("Mul", [p + "g4", "half"], [p + "gelu"]))
        f = dense(p + "gelu", ffn, hidden, "ff2")
        nodes.append(helper.make_node("Add", [f, p + "ln1"], [p + "res2"]))
        inits += [numpy_helper.from_array(np.ones(hidden, np.float32), p + "ln2_g"),
                  numpy_helper.from_array(np.zeros(hidden, np.float32), p + "ln2_b")]
        nodes.append(helper.make_node("LayerNormalization", [p + "res2", p + "ln2_g", p + "ln2_b"], [p + "out"], axis=-1, epsilon=1e-12))
        x = p + "out"
    nodes.append(helper.make_node("Identity", [x], ["y"]))
    feeds = [("x", rng.uniform(-1, 1, (1, seq, hidden)).astype(np.float32))]
    save(out, "bert_encoder", nodes, [f32("x", [1, seq, hidden])], [f32("y", [1, seq, hidden])], inits, feeds)


def micro(out):
    for n in (256, 1024, 2048):
        save(out, f"matmul_{n}", [helper.make_node("MatMul", ["a", "b"], ["c"])],
             [f32("a", [n, n])], [f32("c", [n, n])], [weight("b", (n, n), 1.0)],
             [("a", rng.uniform(-1, 1, (n, n)).astype(np.float32))])
    save(out, "conv3x3_64_56", [helper.make_node("Conv", ["x", "w", "bias"], ["y"], pads=[1, 1, 1, 1])],
         [f32("x", [1, 64, 56, 56])], [f32("y", [1, 64, 56, 56])],
         [weight("w", (64, 64, 3, 3), 0.1), weight("bias", (64,))],
         [("x", rng.uniform(-1, 1, (1, 64, 56, 56)).astype(np.float32))])
    save(out, "softmax_128x1024", [helper.make_node("Softmax", ["x"], ["y"], axis=-1)],
         [f32("x", [128, 1024])], [f32("y", [128, 1024])], [],
         [("x", rng.uniform(-4, 4, (128, 1024)).astype(np.float32))])
    save(out, "layernorm_128x768",
         [helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1, epsilon=1e-5)],
         [f32("x", [128, 768])], [f32("y", [128, 768])],
         [numpy_helper.from_array(np.ones(768, np.float32), "g"), numpy_helper.from_array(np.zeros(768, np.float32), "b")],
         [("x", rng.uniform(-1, 1, (128, 768)).astype(np.float32))])
    # A CTC head's product: few rows times a large transposed constant weight (Gemm with
    # transB=1), whose floor is the time to stream the 34 MB weight once (issue 23).
    # Last, so that the models above keep their random data.
    save(out, "gemm_skinny_transb_24x1024x8210",
         [helper.make_node("Gemm", ["a", "w", "bias"], ["c"], transB=1)],
         [f32("a", [24, 1024])], [f32("c", [24, 8210])],
         [weight("w", (8210, 1024), 0.05), weight("bias", (8210,))],
         [("a", rng.uniform(-1, 1, (24, 1024)).astype(np.float32))])


if __name__ == "__main__":
    out = sys.argv[1]
    bert(out)
    micro(out)
