#!/usr/bin/env bash
# The GPU checks in one short run (7-9 minutes on an H200; give the device call timeout_s 560), for a session lent an accelerator.
#
#   bash scripts/gpu_session.sh prepare    # here: model configs, this host's edge costs, wheels -> .devcarry/, .whl/
#   bash scripts/gpu_session.sh run OUT    # there (carry .devcarry, .whl, out/traces-bench): results under OUT
#   bash scripts/gpu_session.sh chunks OUT # there, after it: capacity points with prefill chunks (3-4 minutes)
#
# Random weights in the real shapes: time only (weights cannot travel). What it runs: correctness
# on CUDA (every mode equals generate), the batched cost profile (1-128 sessions), and real
# capacity points (the gRPC verifier on the GPU, N trace-scripted edge clients through the link
# emulator) with torch's default threads and one, Python's GIL switch interval and a short one, with and without prefill chunks, to set beside `edgespec simulate --hardware h200`.
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
    # The generated gRPC code needs protobuf >= the version it was made with: carry this venv's.
    for package in grpcio protobuf grpcio-reflection; do
        version=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('$package'))")
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "$package==$version"
    done
    ls .devcarry .whl ;;
run)
    out=${2:?usage: gpu_session.sh run OUT}
    export PYTHONUNBUFFERED=1
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
    # The capacity points first (what the projection is checked against), then the cost profile, then correctness.
    check="python3 scripts/gpu_capacity_check.py --config .devcarry/qwen1.5b --traces out/traces-bench --edge-profile .devcarry/host.json --clients 64"
    point() { name=$1; limit=$2; shift 2; timeout "$limit" $check "$@" --out "$out/capacity-$name.json" 2>&1 | grep -v Warning | tail -2; }
    point default 150 --modes sd,cloud-ar
    point threads1 75 --modes sd --server-threads 1
    point threads1-switch 75 --modes sd --server-threads 1 --switch-interval-ms 0.2
    point threads1-switch-ar 90 --modes cloud-ar --server-threads 1 --switch-interval-ms 0.2
    point threads1-chunks 75 --modes sd --server-threads 1 --prefill-chunk 128
    timeout 80 python3 scripts/gpu_cost_profile.py --config .devcarry/qwen1.5b --logit-lens-exits 24,26 --batches 1,32,64,128 \
        --repeats 5 --out "$out/costs-qwen1.5b.json" > "$out/profile.log" 2>&1; echo "profile rc=$?"; grep -E "^batch" "$out/profile.log"
    timeout 60 python3 scripts/gpu_check.py > "$out/gpu_check.log" 2>&1; echo "gpu_check rc=$?"; tail -2 "$out/gpu_check.log"
    echo done ;;
chunks)  # the follow-up (3-4 minutes): both modes with prefill chunks and one server thread, where the passes' time goes
    out=${2:?usage: gpu_session.sh chunks OUT}
    export PYTHONUNBUFFERED=1
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
    check="python3 scripts/gpu_capacity_check.py --config .devcarry/qwen1.5b --traces out/traces-bench --edge-profile .devcarry/host.json --server-threads 1 --prefill-chunk 128"
    timeout 75 $check --clients 64 --modes sd --out "$out/capacity-chunks-sd.json" 2>&1 | grep -v Warning | tail -1
    timeout 80 $check --clients 64 --modes cloud-ar --out "$out/capacity-chunks-ar.json" 2>&1 | grep -v Warning | tail -1
    timeout 90 $check --clients 128 --max-batch 64 --modes sd --out "$out/capacity-chunks-sd128.json" 2>&1 | grep -v Warning | tail -1
    echo done ;;
*)
    sed -n 2,9p "$0"; exit 2 ;;
esac
