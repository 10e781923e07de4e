#!/usr/bin/env bash
# The GPU checks in one short run (7-8 minutes on an H200; give the device call timeout_s 560), for a session lent an accelerator.
#
#   bash scripts/gpu_session.sh prepare    # here: model configs, this host's edge costs, wheels -> .devcarry/, .whl/
#   bash scripts/gpu_session.sh run OUT    # there (carry .devcarry, .whl, out/traces-bench): results under OUT
#   bash scripts/gpu_session.sh paged OUT  # there, instead of `run`: the paged engine's run (below)
#
# The paged engine's run, as one device call (prepare first; it needs out/traces-bench from
# `edgespec trace` and a host profile from `edgespec simulate --hardware host`, as `run` does):
#   run(command="bash scripts/gpu_session.sh paged $OUT", carry=[".devcarry", ".whl", "out/traces-bench"],
#       timeout_s=560)
# In <= 8 minutes it measures: the graphs' correctness on CUDA (tests/engines/test_paged_gpu.py);
# per-pass costs (prefill, decode, verify of each gamma, decode and verify-5 at 1-128 sessions) on
# the paged engine and on eager transformers, for the 1.5B and the 7B shapes (random weights); the
# h200 profile re-derived from the paged costs; and capacity at 64 clients (cloud-ar, sd,
# sd-ee-pipelined on send-time guesses, cloud-sd) and 128 (cloud-ar, sd) on the paged engine and
# at 64 (cloud-ar, sd) on eager transformers, each point with its passes timed inside the server
# and alone (the in-server slowdown). If the graph check fails, the paged runs go on without graphs.
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
    mkdir -p .devcarry/qwen1.5b .devcarry/qwen0.5b .devcarry/qwen7b .whl
    python=${PYTHON:-.venv/bin/python}
    grep -qx '/.devcarry/' .git/info/exclude 2>/dev/null || echo '/.devcarry/' >> .git/info/exclude
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    for model in 1.5b 0.5b; do  # the converted checkpoint's config.json (converting once if needed)
        cp "$($python -c "from edgespec.models.loading import converted_dir; print(converted_dir('qwen2.5-coder-$model'))")/config.json" .devcarry/qwen$model/
    done
    # Qwen2.5-7B's published shapes on the 1.5B's config (same family, tokenizer and rope): random weights only.
    $python - <<'PY'
import json
config = json.load(open(".devcarry/qwen1.5b/config.json"))
config.update(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
              num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False)
config.pop("layer_types", None)
json.dump(config, open(".devcarry/qwen7b/config.json", "w"), indent=2)
PY
    cp "$(ls -t ~/.cache/edgespec/profiles/host-*llamacpp-bfloat16.json | head -1)" .devcarry/host.json
    # The generated gRPC code needs protobuf >= the version it was made with: carry this venv's;
    # and pytest (with its dependencies) and tqdm for the correctness tests and `edgespec profile`.
    # The paged engine drives transformers' continuous-batching internals of this venv's version
    # (the device image has an older transformers): carry it, with the hub client and kernels it
    # imports, and their own needs in this venv's versions.
    for package in grpcio protobuf grpcio-reflection pytest pluggy iniconfig packaging pygments tqdm \
        transformers huggingface-hub kernels httpx2 httpcore2 truststore tomlkit click idna anyio hf-xet h11 regex filelock; do
        version=$($python -c "import importlib.metadata as m; print(m.version('$package'))")
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
paged)
    # Everything goes to a staging folder, packed into OUT/paged-run.tgz after every step (a device
    # call returns at most 8 files, and a step cut short by its limit still leaves what came before).
    out=${2:?usage: gpu_session.sh paged OUT}; stage=/tmp/paged-run; mkdir -p "$stage"
    snap() { tar czf "$out/paged-run.tgz" -C "$stage" .; }
    export PYTHONUNBUFFERED=1
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/src || exit 1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$stage/gpu.txt"
    python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$stage/gpu.txt"
    timeout 50 python3 -m pytest -q tests/engines/test_paged_gpu.py > "$stage/paged_gpu_check.log" 2>&1; check=$?
    echo "graph check rc=$check"; tail -2 "$stage/paged_gpu_check.log"; snap
    graphs=""; [ "$check" = 0 ] || graphs="--no-cuda-graphs"
    timeout 80 python3 scripts/gpu_paged_costs.py --config .devcarry/qwen1.5b --out "$stage/costs-1.5b" $graphs \
        --profile-out "$stage/h200-paged-profile.json" --edge-profile .devcarry/host.json 2>&1 | grep -v Warning; snap
    timeout 50 python3 scripts/gpu_paged_costs.py --config .devcarry/qwen7b --out "$stage/costs-7b" $graphs \
        --gammas 4 --batches 1,8,32,64,128 --repeats 3 2>&1 | grep -v Warning; snap
    check="python3 scripts/gpu_capacity_check.py --config .devcarry/qwen1.5b --traces out/traces-bench --edge-profile .devcarry/host.json --max-new-tokens 48 --max-batch 64"
    point() { name=$1; limit=$2; shift 2; timeout "$limit" $check "$@" --out "$stage/capacity-$name.json" 2>&1 | grep -v Warning | tail -4; snap; }
    point paged-64 150 --engine paged $graphs --clients 64 --modes cloud-ar,sd,sd-ee-pipelined,cloud-sd --cloud-draft-config .devcarry/qwen0.5b
    point paged-128 60 --engine paged $graphs --clients 128 --modes cloud-ar,sd --max-batch 128
    point eager-64 60 --engine transformers --clients 64 --modes cloud-ar,sd
    echo done ;;
*)
    sed -n 2,26p "$0"; exit 2 ;;
esac
