"""Measure the target's per-round costs on an accelerator: decode, verify of γ+1 positions,
early exits, and batched verification across sessions, with edgespec's own runtime code.

Timing depends on the architecture and shapes, not on the weight values, so the model is built
from the real target's config.json with random weights (no weights need to travel). Acceptance
rates and hit rates are properties of the real weights and are NOT measured here.

    python scripts/gpu_cost_profile.py --config CONFIG_DIR [--exits DIR] --out costs.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from edgespec.exits.heads import ExitHeads, ExitSpec  # noqa: E402
from edgespec.models.target import ScoreRequest, TargetRuntime  # noqa: E402


def timed(function, repeats: int, device: torch.device) -> float:
    """Median milliseconds of ``function()`` after two warm-up calls."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(2):
        function()
    samples = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        function()
        sync()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="directory holding the target's config.json")
    parser.add_argument("--exits", help="an exits directory (exits.json + exits.safetensors)")
    parser.add_argument("--logit-lens-exits", default="", help="e.g. 24,26: untrained exits (same cost as trained linear ones, less the adapter)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--context", type=int, default=384, help="tokens already in each session's cache")
    parser.add_argument("--gammas", default="1,2,3,4,5,6,8")
    parser.add_argument("--batches", default="1,2,4,8,16,32")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    config = AutoConfig.from_pretrained(args.config)
    torch.manual_seed(0)
    with device:  # random weights made on the device: no minutes of CPU init for a 7B
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    exits = ExitHeads.load(args.exits) if args.exits else None
    if exits is None and args.logit_lens_exits:
        exits = ExitHeads([ExitSpec(int(layer)) for layer in args.logit_lens_exits.split(",")], config.hidden_size)
    runtime = TargetRuntime(model, exits.to(device=device) if exits else None)
    vocab = runtime.vocab_size
    generator = torch.Generator().manual_seed(1)

    def sequence(length: int) -> list[int]:
        return torch.randint(0, vocab, (length,), generator=generator).tolist()

    def session(tail: int, with_exits: bool, argmax_only: bool = True, candidates: bool = False) -> ScoreRequest:
        kv = runtime.new_cache()
        seq = sequence(args.context + tail)
        runtime.score_tail(seq[: args.context], 1, kv=kv)  # prefill; every timed call re-feeds `tail`
        exit_ids = torch.randint(0, vocab, (tail - 1, 8), generator=generator) if candidates and tail > 1 else None
        return ScoreRequest(seq, tail, kv, on_exit=(lambda reading: None) if with_exits else None, exit_candidates=exit_ids, argmax_only=argmax_only)

    def verdicts(requests: list[ScoreRequest]) -> list[list[int]]:
        """A pass as the server consumes it: a greedy verdict needs each row's argmax only (the
        ids themselves with ``argmax_only``; else from the logits copied to the host)."""
        return [r.tolist() if r.dim() == 1 else r.argmax(dim=-1).tolist() for r in runtime.score_batch(requests)]

    results: dict[str, object] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": args.dtype,
        "context": args.context,
        "config": args.config,
        "exit_layers": list(exits.layers) if exits else [],
        "torch": torch.__version__,
    }
    prompt = sequence(args.context)
    results["prefill_ms"] = timed(lambda: runtime.score_tail(prompt, 1, kv=runtime.new_cache()), max(3, args.repeats // 4), device)
    per_gamma: dict[str, dict[str, float]] = {}
    for gamma in (int(g) for g in args.gammas.split(",")):
        row = {}
        for with_exits in (False, True) if exits else (False,):
            request = session(gamma + 1, with_exits)
            row["with_exits_ms" if with_exits else "ms"] = timed(lambda: verdicts([request]), args.repeats, device)
        per_gamma[str(gamma)] = row
        print(f"verify gamma={gamma}: {row}", flush=True)
    decode = session(1, False)
    results["decode_ms"] = timed(lambda: verdicts([decode]), args.repeats, device)
    results["verify"] = per_gamma
    batched: dict[str, dict[str, float]] = {}
    repeats = max(5, args.repeats // 2)
    for size in (int(b) for b in args.batches.split(",")):
        # Sessions without exits, as sd and cloud-ar run; "host" keeps every row's float32 logits
        # copy to the host (what sampled sessions need, and what greedy ones paid before).
        verify = [session(5, False) for _ in range(size)]
        decodes = [session(1, False) for _ in range(size)]
        row = {"verify_gamma4_ms": timed(lambda: verdicts(verify), repeats, device), "decode_ms": timed(lambda: verdicts(decodes), repeats, device)}
        for request in verify + decodes:
            request.argmax_only = False
        row["verify_gamma4_host_logits_ms"] = timed(lambda: verdicts(verify), repeats, device)
        row["decode_host_logits_ms"] = timed(lambda: verdicts(decodes), repeats, device)
        if exits:  # the pre-draft modes: candidate-id exits, as `serve` runs them
            with_exits = [session(5, True, candidates=True) for _ in range(size)]
            row["verify_gamma4_candidate_exits_ms"] = timed(lambda: verdicts(with_exits), repeats, device)
            del with_exits
        batched[str(size)] = row
        print(f"batch {size}: {row}", flush=True)
        del verify, decodes
    results["batched"] = batched
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
