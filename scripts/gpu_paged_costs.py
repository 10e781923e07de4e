"""Per-pass costs of the target on the paged engine and on the eager transformers engine, in one
run on one device: a prefill, a decode, a verify of each γ, and b sessions' decodes and verify-5
blocks in one pass (b = 1 ... 128), every session holding ``--context`` cached tokens. Random
weights in the shapes of ``--config`` (time depends on the shapes, not the values).

Writes, per engine, a costs file in the format of ``docs/gpu/costs-qwen1.5b.json`` (what
``edgespec simulate --hardware h200`` reads), and with ``--profile-out`` the hardware profile
re-derived from the paged engine's costs (``h200_profile`` applied to them).

    python scripts/gpu_paged_costs.py --config .devcarry/qwen1.5b --device cuda --out OUT/costs-1.5b
    python scripts/gpu_paged_costs.py --config CONFIG_DIR --device cpu --dtype float32 --batches 1,2 --repeats 2 ...

Greedy rows throughout (argmax on the device, ids to the host), as the server asks for greedy rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from edgespec.models.target import ScoreRequest  # noqa: E402


def build_engine(name: str, model: Any, sessions: int, session_tokens: int, graphs: bool) -> Any:
    if name == "paged":
        from edgespec.engines.paged import PagedEngine, PoolSettings

        return PagedEngine(
            model, PoolSettings(sessions=sessions + 2, session_tokens=session_tokens), cuda_graphs=graphs
        )
    from edgespec.engines.transformers_engine import TransformersEngine

    return TransformersEngine(model)


def timed_pass_ms(engine: Any, prefixes: list[list[int]], caches: list[Any], rows: int, repeats: int) -> float:
    """Median ms of one pass feeding ``rows`` tokens after each cached prefix (then rolled back)."""
    times = []
    for repeat in range(repeats + 1):  # the first pass of a shape warms it (a graph's capture)
        requests = [
            ScoreRequest(prefix + [(repeat + j) % 50 + 7 for j in range(rows)], rows, cache, argmax_only=True)
            for prefix, cache in zip(prefixes, caches)
        ]
        started = time.perf_counter()
        engine.score_batch(requests)
        if repeat:
            times.append((time.perf_counter() - started) * 1000)
        for prefix, cache in zip(prefixes, caches):
            engine.rollback(prefix + [0], cache)
    return statistics.median(times)


def measure(engine: Any, args: argparse.Namespace, vocab: int) -> dict[str, Any]:
    """The costs file's fields for one engine. Long because it walks every shape the profile needs,
    printing each as it goes (a run cut short by its time limit still says what it measured)."""
    batches = [int(b) for b in args.batches.split(",")]
    gammas = [int(g) for g in args.gammas.split(",")]
    prefixes = [[(11 * s + j) % (vocab - 100) + 50 for j in range(args.context + s % 7)] for s in range(max(batches))]
    caches = [engine.new_cache() for _ in prefixes]
    prefill = []
    for repeat in range(args.repeats + 1):
        fresh = engine.new_cache()
        started = time.perf_counter()
        engine.score_batch([ScoreRequest(prefixes[0], 1, fresh, argmax_only=True)])
        if repeat:
            prefill.append((time.perf_counter() - started) * 1000)
        del fresh
    for start in range(0, len(prefixes), 16):  # every session's context cached, a few sessions per pass
        chunk = slice(start, start + 16)
        engine.score_batch([ScoreRequest(p, 1, c) for p, c in zip(prefixes[chunk], caches[chunk])])
    result: dict[str, Any] = {"prefill_ms": statistics.median(prefill)}
    result["decode_ms"] = timed_pass_ms(engine, prefixes[:1], caches[:1], 1, args.repeats)
    print(f"  prefill {result['prefill_ms']:.2f} ms, decode {result['decode_ms']:.2f} ms", flush=True)
    result["verify"] = {}
    for gamma in gammas:
        ms = timed_pass_ms(engine, prefixes[:1], caches[:1], gamma + 1, args.repeats)
        result["verify"][str(gamma)] = {"ms": ms, "with_exits_ms": ms}  # no exits: the same pass
    result["batched"] = {}
    for batch in batches:
        verify = timed_pass_ms(engine, prefixes[:batch], caches[:batch], 5, args.repeats)
        decode = timed_pass_ms(engine, prefixes[:batch], caches[:batch], 1, args.repeats)
        result["batched"][str(batch)] = {"verify_gamma4_ms": verify, "decode_ms": decode}
        print(f"  {batch:4d} sessions: verify-5 {verify:8.2f} ms, decode {decode:8.2f} ms", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="directory holding the target's config.json")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--engines", default="paged,transformers")
    parser.add_argument("--context", type=int, default=384, help="tokens cached per session before each pass")
    parser.add_argument("--gammas", default="1,2,4,5,8")
    parser.add_argument("--batches", default="1,2,4,8,16,32,64,128")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-cuda-graphs", action="store_true", help="the paged engine's passes eager")
    parser.add_argument("--out", type=Path, required=True, help="OUT-<engine>.json per engine")
    parser.add_argument("--profile-out", type=Path, help="the hardware profile re-derived from the paged costs")
    parser.add_argument("--edge-profile", type=Path, help="a hardware profile whose edge (draft) costs to keep")
    args = parser.parse_args()

    import torch

    from edgespec.sim.profiling import random_weight_target

    model = random_weight_target(args.config, args.dtype, args.device).requires_grad_(False)
    vocab = int(model.config.vocab_size)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    for name in args.engines.split(","):
        print(f"{name} engine on {device_name}:", flush=True)
        most = max(int(b) for b in args.batches.split(","))
        engine = build_engine(name, model, most, args.context + 64, not args.no_cuda_graphs)
        costs = {
            "device": device_name,
            "dtype": args.dtype,
            "context": args.context,
            "config": f"{Path(args.config).name}/config.json (random weights)",
            "engine": name,
            "cuda_graphs": bool(getattr(engine, "graphs", None)),
            "exit_layers": [],
            "torch": torch.__version__,
            **measure(engine, args, vocab),
        }
        path = args.out.with_name(f"{args.out.name}-{name}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(costs, indent=2) + "\n")
        if name == "paged" and args.profile_out is not None:
            from edgespec.drivers.cost_profile import HardwareProfile, h200_profile

            edge = HardwareProfile.load(args.edge_profile) if args.edge_profile else None
            profile = h200_profile(edge, costs=path)
            profile.name = f"{profile.name}-paged"
            profile.save(args.profile_out)
        del engine
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
