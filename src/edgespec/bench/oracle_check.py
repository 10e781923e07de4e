"""`edgespec bench --check-oracle`: every mode's output against fp32 `generate` of the target.

Runs in the benchmark's main process after the timed runs (the server and clients are gone, so
it steals no core from them): the target is loaded once in float32, `generate` runs once per
prompt (cached in OUT/oracle.jsonl across reruns), and each output that differs gets its first
differing position and the fp32 margin between the target's top two logits there.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from edgespec.bench.metrics import first_differences
from edgespec.bench.oracle import OracleCache, explain_difference, oracle_generate

logger = logging.getLogger(__name__)

# (profile, mode) -> one entry per prompt whose output differs from the oracle.
OracleReport = dict[tuple[str, str], list[dict[str, Any]]]


def check_against_oracle(
    target: str,
    max_new_tokens: int,
    jobs: list[dict[str, Any]],
    records: list[dict[str, Any]],
    cache_path: Path,
    model: Any = None,
    eos_ids: frozenset[int] | None = None,
) -> OracleReport:
    """``model`` / ``eos_ids``: an already loaded fp32 target and its EOS set (tests); by default
    the target is loaded here, in float32, with the EOS set the server uses."""
    if model is None:
        from edgespec.models.loading import load_model
        from edgespec.prompting import eos_token_ids

        loaded = load_model(target, dtype="float32")
        model, eos_ids = loaded.model, eos_token_ids(loaded.model, loaded.tokenizer)
    eos = frozenset(eos_ids or ())
    prompts = {job["prompt_id"]: job["prompt_ids"] for job in jobs if not job.get("warmup")}
    cache = OracleCache(cache_path)
    oracle: dict[str, list[int]] = {}
    for prompt_id, prompt_ids in prompts.items():
        key = cache.key(target, prompt_ids, max_new_tokens, eos)
        tokens = cache.get(key)
        if tokens is None:
            logger.info("oracle: fp32 generate for %s", prompt_id)
            tokens = oracle_generate(model, prompt_ids, max_new_tokens, eos)
            cache.put(key, tokens, prompt_id=prompt_id, target=target, max_new_tokens=max_new_tokens)
        oracle[prompt_id] = tokens
    report: OracleReport = {}
    for key, differing in first_differences(records, lambda r: oracle.get(r["prompt_id"])).items():
        report[key] = []
        for prompt_id, _ in differing:
            record = next(r for r in records if (r["profile"], r["mode"], r["prompt_id"]) == (*key, prompt_id))
            difference = explain_difference(model, prompts[prompt_id], oracle[prompt_id], record["tokens"])
            assert difference is not None
            report[key].append(
                {"prompt_id": prompt_id, "position": difference.position, "fp32_margin": difference.fp32_margin}
            )
    return report
