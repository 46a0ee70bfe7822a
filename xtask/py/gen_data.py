"""Writes smelt's test data into a cache directory (run by `cargo xtask onnx-data`).

node/    the ONNX backend node cases, in the layout of onnx.backend.test.cmd_tools,
         plus node/manifest.tsv: case, op type, rtol, atol.
suites/  the model suites shipped in onnx/backend/test/data (simple, pytorch-operator,
         pytorch-converted, light), copied as they are.
models/  the classic models of the design brief and the nine light models, each with
         .npy inputs and onnxruntime's outputs, described by io.tsv.
schemas.tsv  every default-domain op schema of opsets 6 to 28 (onnx.defs), one row per
         version: the rank and arity sweep (tests/tests/op_sweep.rs) builds its models from it.
"""

import os
import shutil
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, defs, helper, numpy_helper
from onnx.backend.test.case import node as node_cases

DATA_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")
OPSET = 17


def write_proto(path, value, vi):
    if vi.type.HasField("sequence_type"):
        proto = numpy_helper.from_list(value, vi.name)
    elif vi.type.HasField("optional_type"):
        proto = numpy_helper.from_optional(value, vi.name)
    elif vi.type.HasField("map_type"):
        proto = numpy_helper.from_dict(value, vi.name)
    elif isinstance(value, TensorProto):
        proto = value
    else:
        proto = numpy_helper.from_array(value, vi.name)
    with open(path, "wb") as f:
        f.write(proto.SerializeToString())


def gen_node(out):
    root = os.path.join(out, "node")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    cases = node_cases.collect_testcases()
    ops = {}
    for case in cases:
        if "_expanded" not in case.name:
            ops[case.name] = case.model.graph.node[0].op_type
    rows = []
    for case in cases:
        d = os.path.join(root, case.name)
        os.makedirs(d)
        with open(os.path.join(d, "model.onnx"), "wb") as f:
            f.write(case.model.SerializeToString())
        for i, (inputs, outputs) in enumerate(case.data_sets):
            ds = os.path.join(d, f"test_data_set_{i}")
            os.makedirs(ds)
            for j, v in enumerate(inputs):
                write_proto(os.path.join(ds, f"input_{j}.pb"), v, case.model.graph.input[j])
            for j, v in enumerate(outputs):
                write_proto(os.path.join(ds, f"output_{j}.pb"), v, case.model.graph.output[j])
        base = case.name.split("_expanded")[0]
        op = ops.get(base, case.model.graph.node[0].op_type if case.model.graph.node else "?")
        rows.append(f"{case.name}\t{op}\t{case.rtol}\t{case.atol}")
    with open(os.path.join(root, "manifest.tsv"), "w") as f:
        f.write("\n".join(sorted(rows)) + "\n")
    print(f"node cases: {len(cases)}")


def gen_suites(out):
    root = os.path.join(out, "suites")
    shutil.rmtree(root, ignore_errors=True)
    rows = []
    for suite in ["simple", "pytorch-operator", "pytorch-converted", "light"]:
        shutil.copytree(os.path.join(DATA_DIR, suite), os.path.join(root, suite))
        if suite == "light":
            continue  # one file per model, no data sets; run as model tests instead
        for case in sorted(os.listdir(os.path.join(root, suite))):
            rows.append(f"{suite}/{case}\tsuite:{suite}\t0.001\t1e-07")
    with open(os.path.join(root, "manifest.tsv"), "w") as f:
        f.write("\n".join(rows) + "\n")
    print(f"suite cases: {len(rows)}")


def save_model_case(root, name, model_or_path, feeds):
    d = os.path.join(root, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    dest = os.path.join(d, "model.onnx")
    if isinstance(model_or_path, str):
        shutil.copy(model_or_path, dest)
    else:
        onnx.checker.check_model(model_or_path)
        onnx.save(model_or_path, dest)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(dest, opts, providers=["CPUExecutionProvider"])
    outs = sess.run(None, feeds)
    rows = []
    for i, (k, v) in enumerate(feeds.items()):
        np.save(os.path.join(d, f"input_{i}.npy"), v)
        rows.append(f"input\t{k}\tinput_{i}.npy")
    for i, (o, v) in enumerate(zip(sess.get_outputs(), outs)):
        np.save(os.path.join(d, f"expected_{i}.npy"), v)
        rows.append(f"output\t{o.name}\texpected_{i}.npy")
    with open(os.path.join(d, "io.tsv"), "w") as f:
        f.write("\n".join(rows) + "\n")


def init(rng, name, shape, scale=None):
    fan_in = shape[0] if len(shape) == 2 else int(np.prod(shape[1:]))
    s = scale if scale is not None else 1.0 / np.sqrt(max(fan_in, 1))
    return numpy_helper.from_array((rng.standard_normal(shape) * s).astype(np.float32), name)


def make(nodes, inputs, outputs, inits, name):
    g = helper.make_graph(nodes, name, inputs, outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_operatorsetid("", OPSET)], producer_name="smelt-gen")
    m.ir_version = 8
    return m


def dense(prefix, x, n_in, n_out, rng, inits):
    inits += [init(rng, f"{prefix}_w", [n_in, n_out]), init(rng, f"{prefix}_b", [n_out], 0.1)]
    return helper.make_node("Gemm", [x, f"{prefix}_w", f"{prefix}_b"], [f"{prefix}_y"], name=prefix)


def mlp(rng, sizes, final, name, batch_dim):
    inits, nodes = [], []
    x = "x"
    for i in range(len(sizes) - 1):
        nodes.append(dense(f"fc{i + 1}", x, sizes[i], sizes[i + 1], rng, inits))
        x = f"fc{i + 1}_y"
        act = "Relu" if i < len(sizes) - 2 else final
        nodes.append(helper.make_node(act, [x], [f"a{i + 1}"], name=f"act{i + 1}", **({"axis": -1} if act == "Softmax" else {})))
        x = f"a{i + 1}"
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch_dim, sizes[0]])
    out = helper.make_tensor_value_info(x, TensorProto.FLOAT, [batch_dim, sizes[-1]])
    return make(nodes, [inp], [out], inits, name)


def conv(prefix, x, c_in, c_out, k, rng, inits, pads=0):
    inits += [init(rng, f"{prefix}_w", [c_out, c_in, k, k]), init(rng, f"{prefix}_b", [c_out], 0.1)]
    return helper.make_node("Conv", [x, f"{prefix}_w", f"{prefix}_b"], [f"{prefix}_y"], name=prefix, kernel_shape=[k, k], pads=[pads] * 4)


def mnist_cnn(rng):
    inits = []
    nodes = [
        conv("conv1", "x", 1, 32, 3, rng, inits),
        helper.make_node("Relu", ["conv1_y"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        conv("conv2", "p1", 32, 64, 3, rng, inits),
        helper.make_node("Relu", ["conv2_y"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p2"], ["flat"], axis=1),
        dense("fc1", "flat", 1600, 128, rng, inits),
        helper.make_node("Relu", ["fc1_y"], ["r3"]),
        dense("fc2", "r3", 128, 10, rng, inits),
        helper.make_node("Softmax", ["fc2_y"], ["probs"], axis=-1),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 28, 28])
    y = helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 10])
    return make(nodes, [x], [y], inits, "mnist_cnn")


def lenet5(rng, batch):
    inits = []
    inits.append(numpy_helper.from_array(np.array([-1, 400], dtype=np.int64), "flat_shape"))
    nodes = [
        conv("conv1", "x", 3, 6, 5, rng, inits),
        helper.make_node("Relu", ["conv1_y"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        conv("conv2", "p1", 6, 16, 5, rng, inits),
        helper.make_node("Relu", ["conv2_y"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Reshape", ["p2", "flat_shape"], ["flat"]),
        dense("fc1", "flat", 400, 120, rng, inits),
        helper.make_node("Relu", ["fc1_y"], ["r3"]),
        dense("fc2", "r3", 120, 84, rng, inits),
        helper.make_node("Relu", ["fc2_y"], ["r4"]),
        dense("fc3", "r4", 84, 10, rng, inits),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 32, 32])
    y = helper.make_tensor_value_info("fc3_y", TensorProto.FLOAT, [batch, 10])
    return make(nodes, [x], [y], inits, f"lenet5_b{batch}")


def text_classifier(rng):
    vocab, emb, hidden, seq = 10000, 128, 64, 100
    inits = [
        init(rng, "embedding", [vocab, emb], 0.1),
        init(rng, "lstm_w", [1, 4 * hidden, emb]),
        init(rng, "lstm_r", [1, 4 * hidden, hidden]),
        init(rng, "lstm_b", [1, 8 * hidden], 0.1),
        numpy_helper.from_array(np.array([1, hidden], dtype=np.int64), "h_shape"),
    ]
    nodes = [
        helper.make_node("Gather", ["embedding", "tokens"], ["embedded"], axis=0),
        helper.make_node("Transpose", ["embedded"], ["seq_major"], perm=[1, 0, 2]),
        helper.make_node("LSTM", ["seq_major", "lstm_w", "lstm_r", "lstm_b"], ["", "h_last"], hidden_size=hidden),
        helper.make_node("Reshape", ["h_last", "h_shape"], ["h"]),
        dense("out", "h", hidden, 1, rng, inits),
        helper.make_node("Sigmoid", ["out_y"], ["score"]),
    ]
    x = helper.make_tensor_value_info("tokens", TensorProto.INT64, [1, seq])
    y = helper.make_tensor_value_info("score", TensorProto.FLOAT, [1, 1])
    return make(nodes, [x], [y], inits, "text_classifier")


def worked_check():
    inits = [
        numpy_helper.from_array(np.array([[1, 2], [3, 4]], dtype=np.float32), "W"),
        numpy_helper.from_array(np.array([1, 2], dtype=np.float32), "b"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    return make(nodes, [x], [y], inits, "worked_check")


def gen_models(out):
    root = os.path.join(out, "models")
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(20261122)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    save_model_case(root, "mlp_784_64_64_1", mlp(rng, [784, 64, 64, 1], "Sigmoid", "mlp_784_64_64_1", "N"), {"x": f32(2, 784)})
    save_model_case(root, "mlp_784_128_10", mlp(rng, [784, 128, 10], "Softmax", "mlp_784_128_10", 1), {"x": f32(1, 784)})
    save_model_case(root, "mnist_cnn", mnist_cnn(rng), {"x": f32(1, 1, 28, 28)})
    save_model_case(root, "lenet5_b1", lenet5(rng, 1), {"x": f32(1, 3, 32, 32)})
    save_model_case(root, "lenet5_b4", lenet5(rng, 4), {"x": f32(4, 3, 32, 32)})
    save_model_case(root, "logistic_regression", mlp(rng, [10, 1], "Sigmoid", "logistic_regression", 1), {"x": f32(1, 10)})
    save_model_case(root, "text_classifier", text_classifier(rng), {"tokens": rng.integers(0, 10000, (1, 100)).astype(np.int64)})
    save_model_case(root, "worked_check", worked_check(), {"x": np.array([[1, 2]], dtype=np.float32)})
    light = os.path.join(DATA_DIR, "light")
    for f in sorted(os.listdir(light)):
        if not f.endswith(".onnx"):
            continue
        m = onnx.load(os.path.join(light, f))
        inits = {t.name for t in m.graph.initializer}
        feeds = {}
        for i in m.graph.input:
            if i.name in inits:
                continue
            dims = [d.dim_value for d in i.type.tensor_type.shape.dim]
            feeds[i.name] = f32(*dims)
        save_model_case(root, f[:-5], os.path.join(light, f), feeds)
    print("models written")


# The opsets the importer accepts (smelt_onnx::import::OPSET_RANGE).
FIRST_OPSET, LAST_OPSET = 6, 28
OPTION = {
    defs.OpSchema.FormalParameterOption.Single: "single",
    defs.OpSchema.FormalParameterOption.Optional: "optional",
    defs.OpSchema.FormalParameterOption.Variadic: "variadic",
}


def element_codes(type_strs):
    """The TensorProto element type codes of the plain tensor types among `type_strs`
    (sequences, optionals and maps are left out: the importer takes tensors only)."""
    codes = set()
    for t in type_strs:
        if t.startswith("tensor(") and t.endswith(")"):
            codes.add(TensorProto.DataType.Value(t[len("tensor("):-1].upper()))
    return sorted(codes)


def formal_parameter(schema, p):
    constraints = {c.type_param_str: c.allowed_type_strs for c in schema.type_constraints}
    codes = element_codes(constraints.get(p.type_str, [p.type_str]))
    return f"{p.name}/{OPTION[p.option]}/{p.type_str}/{','.join(map(str, codes))}"


def gen_schemas(out):
    """schemas.tsv: op type, since version, inputs, outputs and attributes of every version
    of every default-domain op that is in force at some opset from FIRST_OPSET to LAST_OPSET.
    A parameter is name/single|optional|variadic/type constraint/element codes; an
    attribute name/TYPE/required|optional."""
    by_op = {}
    for s in defs.get_all_schemas_with_history():
        if s.domain in ("", "ai.onnx") and s.since_version <= LAST_OPSET:
            by_op.setdefault(s.name, []).append(s)
    rows = []
    for name, versions in sorted(by_op.items()):
        versions.sort(key=lambda s: s.since_version)
        for i, s in enumerate(versions):
            following = versions[i + 1].since_version if i + 1 < len(versions) else LAST_OPSET + 1
            if following <= FIRST_OPSET:
                continue  # replaced before the first opset the importer accepts
            attrs = ";".join(
                f"{a.name}/{a.type.name}/{'required' if a.required else 'optional'}"
                for a in sorted(s.attributes.values(), key=lambda a: a.name)
            )
            rows.append("\t".join([
                name,
                str(max(s.since_version, FIRST_OPSET)),
                ";".join(formal_parameter(s, p) for p in s.inputs),
                ";".join(formal_parameter(s, p) for p in s.outputs),
                attrs,
            ]))
    with open(os.path.join(out, "schemas.tsv"), "w") as f:
        f.write("# op\tsince\tinputs\toutputs\tattributes (written by xtask/py/gen_data.py from onnx.defs)\n")
        f.write("\n".join(rows) + "\n")
    print(f"op schemas: {len(rows)} versions of {len(by_op)} op types")


if __name__ == "__main__":
    out = sys.argv[1]
    parts = sys.argv[2:] or ["node", "suites", "models", "schemas"]
    for p in parts:
        {"node": gen_node, "suites": gen_suites, "models": gen_models, "schemas": gen_schemas}[p](out)
