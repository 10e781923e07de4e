#!/usr/bin/env bash
# The GPU checks in one short run (7-8 minutes on an H200; give the device call timeout_s 560), for a session lent an accelerator.
#
#   bash scripts/gpu_session.sh prepare    # here: model configs, this host's edge costs, wheels -> .devcarry/, .whl/
#   bash scripts/gpu_session.sh run OUT    # there (carry .devcarry, .whl, out/traces-bench): results under OUT
#
# Random weights in the real shapes: time only (weights cannot travel). What it runs: correctness
# on CUDA (every mode equals generate), the batched cost profile (1-128 sessions), and real
# capacity points (the gRPC verifier on the GPU, N trace-scripted edge clients through the link
# emulator) in both modes at 64 clients, with prefill chunks (serve's GPU default) and without, and
# sd at 128, to set beside `edgespec simulate --hardware h200`. (One server thread and a 0.2 ms GIL
# switch interval, tried on 2026-11-28: no change; `--server-threads`, `--switch-interval-ms`.)
set -uo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
prepare)
    set -e
    mkdir -p .devcarry/qwen1.5b .devcarry/qwen0.5b .whl
    grep -qx '/.devcarry/' .git/info/exclude 2>/dev/null || echo '/.devcarry/' >> .git/info/exclude
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    for model in 1.5b 0.5b; do  # the converted checkpoint's config.json (converting once if needed)
        cp "$(.venv/bin/python -c "from edgespec.models.loading import converted_dir; print(converted_dir('qwen2.5-coder-$model'))")/config.json" .devcarry/qwen$model/
    done
    cp "$(ls -t ~/.cache/edgespec/profiles/host-*llamacpp-bfloat16.json | head -1)" .devcarry/host.json
    # The generated gRPC code needs protobuf >= the version it was made with: carry this venv's;
    # and pytest (with its dependencies) and tqdm for the correctness tests and `edgespec profile`.
    for package in grpcio protobuf grpcio-reflection pytest pluggy iniconfig packaging pygments tqdm; do
        version=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('$package'))")
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "$package==$version"
    done
    ls .devcarry .whl ;;
run)
    out=${2:?usage: gpu_session.sh run OUT}
    export PYTHONUNBUFFERED=1
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/src || exit 1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
    # The capacity points first (what the projection is checked against), then the cost profile, then correctness.
    check="python3 scripts/gpu_capacity_check.py --config .devcarry/qwen1.5b --traces out/traces-bench --edge-profile .devcarry/host.json --clients 64"
    point() { name=$1; limit=$2; shift 2; timeout "$limit" $check "$@" --out "$out/capacity-$name.json" 2>&1 | grep -v Warning | tail -2; }
    point chunks 170 --modes sd,cloud-ar --profile-passes 3  # serve's defaults on a GPU: prefill chunks of 128; 3 passes profiled
    point chunks-128 100 --modes sd --clients 128 --max-batch 64
    point alone 150 --modes sd,cloud-ar --prefill-chunk 0      # each prefill alone, whole (the CPU default)
    timeout 80 python3 -m edgespec.cli profile batched --config .devcarry/qwen1.5b --logit-lens-exits 24,26 --batches 1,32,64,128 \
        --repeats 5 --out "$out/costs-qwen1.5b.json" > "$out/profile.log" 2>&1; echo "profile rc=$?"; grep -E "^batch" "$out/profile.log"
    timeout 60 python3 -m pytest -q tests/server/test_gpu_modes.py > "$out/gpu_check.log" 2>&1; echo "gpu_check rc=$?"; tail -2 "$out/gpu_check.log"
    echo done ;;
*)
    sed -n 2,12p "$0"; exit 2 ;;
esac
