"""Times one model on a peer runtime (onnxruntime or tract) and prints one JSON object:
median/min/max latency after warm-up, iterations, threads, load time, peak RSS.

usage: peers.py RUNTIME MODEL_DIR THREADS ITERATIONS"""

import json
import os
import resource
import sys
import time

import numpy as np


def inputs(d):
    feeds = []
    for line in open(os.path.join(d, "io.tsv")):
        kind, name, file = line.rstrip("\n").split("\t")
        if kind == "input":
            feeds.append((name, np.load(os.path.join(d, file))))
    return feeds


def main():
    runtime, d, threads, iterations = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    feeds = inputs(d)
    path = os.path.join(d, "model.onnx")
    start = time.perf_counter()
    if runtime == "onnxruntime":
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        feed = dict(feeds)
        run = lambda: sess.run(None, feed)
        version = ort.__version__
    elif runtime == "tract":
        import tract
        model = tract.onnx().load(path)
        runnable = model.into_model().into_runnable()
        arrays = [a for _, a in feeds]
        run = lambda: runnable.run(arrays)
        version = tract.version()
        # The Python bindings expose no thread setting; tract runs on one thread.
        threads = 1
    else:
        raise SystemExit(f"unknown runtime {runtime}")
    load_ms = (time.perf_counter() - start) * 1e3
    for _ in range(min(5, iterations)):
        run()
    times = []
    for _ in range(iterations):
        a = time.perf_counter()
        run()
        times.append((time.perf_counter() - a) * 1e3)
    times.sort()
    n = len(times)
    median = times[n // 2] if n % 2 else (times[n // 2 - 1] + times[n // 2]) / 2
    print(json.dumps({
        "runtime": runtime, "version": version, "median_ms": median, "min_ms": times[0],
        "max_ms": times[-1], "iterations": n, "threads": threads, "load_ms": load_ms,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }))


if __name__ == "__main__":
    main()
