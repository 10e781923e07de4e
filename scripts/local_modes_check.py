"""Every speculative mode in process on the real pair (fp32), each equal to `transformers`
`generate`: the in-process engine runs the round core on a virtual clock that charges each side
its measured cost, with an emulated link's delay, so pre-drafts, pipelined blocks and their hits
and misses are counted as over the network. Writes results.jsonl and table.md under --out."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from edgespec.models.exit_choice import resolve_exits
from edgespec.data.prompt_sets import load_prompts
from edgespec.drivers.local_engine import LocalEngine
from edgespec.drivers.virtual_clock import Link
from edgespec.models.draft import DraftRuntime
from edgespec.models.loading import load_model
from edgespec.models.target import TargetRuntime
from edgespec.link import resolve_profile
from edgespec.prompting import eos_token_ids, render_prompt

MODES = (Mode.SD, Mode.SD_EE, Mode.SD_EE_PREDRAFT, Mode.SD_EE_PIPELINED)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", default="qwen2.5-coder-1.5b")
    parser.add_argument("--draft", default="qwen2.5-coder-0.5b")
    parser.add_argument("--per-set", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--link", default="wan")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("out/local-modes"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    target, draft = load_model(args.target, "float32"), load_model(args.draft, "float32")
    exits = resolve_exits("auto", target.model, args.target)
    profile = resolve_profile(args.link, {})
    engine = LocalEngine(TargetRuntime(target.model, exits), DraftRuntime(draft.model), Link(one_way_s=profile.one_way_delay_ms / 1000))
    eos = eos_token_ids(target.model, target.tokenizer)
    rows = []
    with (args.out / "results.jsonl").open("w") as sink:
        for record in [p for name in ("mtbench", "humaneval") for p in load_prompts(name, args.per_set)]:
            prompt_ids = render_prompt(target.tokenizer, record.messages)
            reference = target.model.generate(
                torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                max_new_tokens=args.max_new_tokens, do_sample=False, eos_token_id=sorted(eos) or None, pad_token_id=0,
            )[0, len(prompt_ids):].tolist()
            for mode in MODES:
                for early in ((True, None) if mode in (Mode.SD_EE_PREDRAFT, Mode.SD_EE_PIPELINED) else (None,)):
                    config = GenerationConfig(max_new_tokens=args.max_new_tokens, gamma=4, eos_ids=eos, early_verdicts=early)
                    result = engine.generate(prompt_ids, mode, config)
                    s = result.stats
                    row = {
                        "id": record.id, "mode": mode.value, "early_verdicts": "on" if early else "auto",
                        "equals_generate": result.tokens == reference, "tokens": s.new_tokens, "rounds": s.rounds,
                        "hits": s.hits, "misses": s.misses, "no_hint": s.no_hint, "hits_by_source": s.hits_by_source,
                        "branches": s.branches, "shipped": s.branches_shipped, "pipelined": s.pipelined, "dropped": s.dropped,
                        "virtual_s": round(s.total_s, 2),
                    }
                    rows.append(row)
                    sink.write(json.dumps(row) + "\n")
                    sink.flush()
                    print(json.dumps(row), flush=True)
    table = ["| prompt | mode | exits | == generate (fp32) | rounds | hits / misses / no hint | hits by source | branches / shipped / pipelined / dropped | virtual s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sources = ", ".join(f"{k}: {v}" for k, v in sorted(r["hits_by_source"].items())) or "–"
        table.append(f"| {r['id']} | {r['mode']} | {r['early_verdicts']} | {'yes' if r['equals_generate'] else '**no**'} | {r['rounds']} | "
                     f"{r['hits']} / {r['misses']} / {r['no_hint']} | {sources} | {r['branches']} / {r['shipped']} / {r['pipelined']} / {r['dropped']} | {r['virtual_s']} |")
    (args.out / "table.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
