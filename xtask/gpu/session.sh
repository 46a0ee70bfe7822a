#!/usr/bin/env bash
# The whole device call of a GPU session (docs/gpu.md, "On a lent GPU"):
#
#     OUT=DIR bash xtask/gpu/session.sh [BUNDLE]     (BUNDLE: target/gpu-bundle)
#
# with the bundle `cargo xtask gpu-bundle` made carried along. It unpacks the bundle,
# records the environment, runs the conformance cases and the models on the GPU, and
# times the benchmarks beside PyTorch; each step has its own time limit, so that what
# finished comes back when a later step runs out. It writes six files into OUT:
# env.txt, steps.tsv, conformance.tsv, models.tsv, timings.tsv and log.txt, which
# `cargo xtask gpu-results OUT` turns into docs/gpu.md and tests/conformance/cuda.tsv.
#
# SMELT_GPU_RUNTIME=gpu-emulator with SMELT_GPU_QUICK=1 is the dry run `cargo xtask
# test` makes on a machine without a GPU: the same steps and files, on the emulated
# device, on a subset and at small sizes. PYTHON names the Python (default python3).
# The limits keep the whole call under 8 minutes.

set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bundle=$(cd "${1:-target/gpu-bundle}" && pwd) || { echo "no bundle: run cargo xtask gpu-bundle"; exit 2; }
out=${OUT:?OUT must name the folder the results go to}
runtime=${SMELT_GPU_RUNTIME:-cuda}
quick=${SMELT_GPU_QUICK:-0}
python=${PYTHON:-python3}
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/smelt-gpu.XXXXXX")
trap 'rm -rf "$work"' EXIT

exec > >(tee "$out/log.txt") 2>&1
export PYTHONUNBUFFERED=1
printf 'step\tstatus\tseconds\tlimit_s\n' > "$out/steps.tsv"

# step NAME LIMIT_S COMMAND...: runs the command under its own limit and records how it went.
step() {
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit} s): $*"
    local started=$SECONDS
    timeout --kill-after=10 "$limit" "$@"
    local rc=$? status=ok
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        status="timed out"
    elif [ $rc -ne 0 ]; then
        status="failed ($rc)"
    fi
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - started))" "$limit" >> "$out/steps.tsv"
    echo "== $name: $status in $((SECONDS - started)) s"
    return 0
}

if [ "$quick" = 1 ]; then
    limits=(unpack=120 env=30 conformance=300 models=300 timing=300)
    subset=(--every 10)
else
    limits=(unpack=40 env=20 conformance=180 models=60 timing=150)
    subset=()
fi
limit() { local kv; for kv in "${limits[@]}"; do [ "${kv%%=*}" = "$1" ] && echo "${kv#*=}"; done; }

cores=$(nproc)
jobs=$(( cores > 12 ? 12 : cores ))
program="$work/smelt-gpu-check"
libdevice="$bundle/libdevice.10.bc"
target=(--runtime "$runtime" --libdevice "$libdevice")

step unpack "$(limit unpack)" "$python" "$here/pack.py" unpack "$bundle" "$work"

environment() {
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "runtime: $runtime"
    if [ "$runtime" != cuda ]; then
        echo "gpu: the emulated device (this CPU; no GPU used)"
    elif command -v nvidia-smi > /dev/null; then
        echo "gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)"
    else
        echo "gpu: none (nvidia-smi not found)"
    fi
    echo "host: $(uname -srm), $cores cores, $(free -g 2> /dev/null | awk '/Mem:/ {print $2 " GiB"}')"
    "$python" - << 'EOF'
import importlib, platform
print("python:", platform.python_version())
for name in ("torch", "onnxruntime", "onnx", "numpy"):
    try:
        m = importlib.import_module(name)
        extra = ""
        if name == "torch":
            extra = f" (CUDA {m.version.cuda}, cuDNN {m.backends.cudnn.version()}, sees a GPU: {m.cuda.is_available()})"
        print(f"{name}: {m.__version__}{extra}")
    except Exception as e:
        print(f"{name}: not available ({type(e).__name__})")
EOF
    echo "ldd smelt-gpu-check:"
    ldd "$program" 2>&1 | sed 's/^/  /'
    echo "bundle:"
    sed 's/^/  /' "$bundle/MANIFEST.tsv"
    if command -v nvidia-smi > /dev/null; then
        echo "nvidia-smi:"
        nvidia-smi 2>&1 | sed 's/^/  /'
    fi
}
export python runtime cores program bundle
export -f environment
step env "$(limit env)" bash -c 'environment > "$0"' "$out/env.txt"

step conformance "$(limit conformance)" "$program" conformance "${target[@]}" \
    --data "$work/data" --jobs "$jobs" --case-seconds 60 --deadline $(($(limit conformance) - 30)) \
    "${subset[@]}" --out "$out/conformance.tsv"

step models "$(limit models)" "$program" models "${target[@]}" \
    --data "$work/data" --jobs "$jobs" --case-seconds 50 --deadline $(($(limit models) - 50)) \
    --out "$out/models.tsv"

quick_flag=()
[ "$quick" = 1 ] && quick_flag=(--quick)
timing_limit=$(limit timing)
step timing "$timing_limit" "$python" "$bundle/timing.py" --check "$program" \
    "${target[@]}" --models "$work/data/models" --gen-models "$bundle/gen_models.py" \
    --out "$out/timings.tsv" --case-seconds 60 --deadline $((timing_limit - 45)) "${quick_flag[@]}"

echo "== done; results in $out:"
ls -l "$out"
