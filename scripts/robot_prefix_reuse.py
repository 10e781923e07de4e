"""Context reuse across a robot's decisions, measured on the target alone: for each decision of
a scripted goal-seeking episode, the prefill (the time to the first token's logits) of the whole
prompt against the prefill of only what follows the prefix the previous decision left in a
PrefixCache — and the first token from both, which must be the same.

    python scripts/robot_prefix_reuse.py --target qwen2.5-coder-1.5b --dtype float32 --steps 4

Not wired into the server (see README, "Robot"): this measures what the hook would buy."""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import time

os.environ.setdefault("MUJOCO_GL", "osmesa")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", default="qwen2.5-coder-1.5b")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--task", default="walk to the red box")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from edgespec.models.kv import TrackedCache, forward_with_cache
    from edgespec.models.loading import load_model
    from edgespec.prompting import render_prompt
    from edgespec.robot.actions import Turn, Walk
    from edgespec.robot.controller import Controller
    from edgespec.robot.observation import observe
    from edgespec.robot.world import Go2World
    from edgespec.server.prefix_cache import PrefixCache

    loaded = load_model(args.target, args.dtype)
    model, tokenizer = loaded.model, loaded.tokenizer
    world = Go2World()
    controller = Controller(world)
    store = PrefixCache(model.config)
    rows = []
    last = None
    for step in range(1, args.steps + 1):
        observation = observe(world, args.task, step, args.steps, last)
        prompt = render_prompt(tokenizer, observation.messages())
        with torch.inference_mode():
            start = time.perf_counter()
            full = TrackedCache(model.config)
            full_logits = forward_with_cache(model, full, full.sync(prompt, 1), 1)
            full_s = time.perf_counter() - start
            start = time.perf_counter()
            reused_kv, reused = store.acquire(prompt)
            pending = reused_kv.sync(prompt, 1)
            reused_logits = forward_with_cache(model, reused_kv, pending, 1)
            reused_s = time.perf_counter() - start
        store.offer(full)
        rows.append(
            {
                "step": step, "prompt_tokens": len(prompt), "reused_tokens": reused, "prefilled_tokens": len(pending),
                "full_prefill_s": round(full_s, 4), "reuse_prefill_s": round(reused_s, 4),
                "same_first_token": int(full_logits[-1].argmax()) == int(reused_logits[-1].argmax()),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        # Move as a goal-seeker would, so the next observation changes.
        goal = re.search(r"- red box: bearing ([+-]?\d+) degrees, distance ([\d.]+) m", observation.text)
        bearing, distance = float(goal.group(1)), float(goal.group(2))
        action = Turn(bearing) if abs(bearing) > 10 else Walk(round(min(3.0, max(0.1, distance - 0.3)), 1))
        last = (action, controller.execute(action))
    later = rows[1:]
    if later:
        ratio = statistics.median(r["full_prefill_s"] / r["reuse_prefill_s"] for r in later)
        print(f"decisions 2..{len(rows)}: prefill {statistics.median(r['full_prefill_s'] for r in later) * 1000:.0f} ms (whole prompt) vs "
              f"{statistics.median(r['reuse_prefill_s'] for r in later) * 1000:.0f} ms (after the cached prefix): {ratio:.1f}x; "
              f"prefilled tokens {statistics.median(r['prompt_tokens'] for r in later):.0f} vs {statistics.median(r['prefilled_tokens'] for r in later):.0f} (medians)")


if __name__ == "__main__":
    main()
