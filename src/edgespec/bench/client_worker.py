"""The edge side of a benchmark: one process, the draft loaded once, every job of one profile.

Run by the harness as `python -m edgespec.bench.client_worker JOBS.jsonl RESULTS.jsonl`; each job
line names a prompt (token ids), a mode and the generation settings; each result line is the
job plus the generated tokens and the client's stats. Warm-up runs first and is not recorded.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from edgespec.client.edge_client import ClientOptions, ConnectionLost, EdgeClient, ServerError
from edgespec.client.recovery import NO_RECOVERY
from edgespec.core.config import GenerationConfig
from edgespec.core.modes import Mode
from edgespec.models.loading import load_draft
from edgespec.transport.security import ClientSecurity, resolve_token

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("jobs", type=Path)
    parser.add_argument("results", type=Path)
    parser.add_argument("--address", required=True)
    parser.add_argument("--draft", required=True)
    parser.add_argument("--draft-backend", default="transformers")
    parser.add_argument("--dtype", default="auto")
    # Concurrent clients: after warm-up each touches --ready, then waits for --go, so all of them
    # start measuring together (model loading times differ by seconds).
    parser.add_argument("--ready", type=Path)
    parser.add_argument("--go", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the edge device's one core
    draft, _ = load_draft(args.draft, args.draft_backend, args.dtype, threads=1)
    # A benchmark measures the mode: an outage is an error, never a silent reconnect or fallback.
    # A token from $EDGESPEC_AUTH_TOKEN when the server wants one (a replica cluster does).
    security = ClientSecurity(token=resolve_token(None, None))
    client = EdgeClient(args.address, draft, ClientOptions(recovery=NO_RECOVERY, security=security))
    jobs = [json.loads(line) for line in args.jobs.read_text().splitlines() if line.strip()]
    with args.results.open("a") as sink:
        for job in jobs:
            if args.ready and not job.get("warmup") and not args.ready.exists():
                args.ready.touch()
                while args.go and not args.go.exists():
                    time.sleep(0.02)
            config = GenerationConfig(
                max_new_tokens=job["max_new_tokens"],
                gamma=job["gamma"],
                seed=job.get("seed", 0),
                adaptive_gamma=job.get("adaptive_gamma", False),
                max_gamma=job.get("max_gamma", 8),
                branches=job.get("branches", 2),
                guess_verdict=job.get("guess_verdict", True),
                runner_up=job.get("runner_up", GenerationConfig.runner_up),
                draft_stop=job.get("draft_stop", GenerationConfig.draft_stop),
                early_verdicts=GenerationConfig.early_verdicts_from(job.get("early_verdicts", "auto")),
            )
            record = dict(job, started_at=time.time())
            try:
                result = client.generate(job["prompt_ids"], Mode.parse(job["mode"]), config)
                record.update(tokens=result.tokens, stats=result.stats.as_dict())
            except (ConnectionLost, ServerError) as error:
                record.update(error=str(error))
            record["ended_at"] = time.time()
            record.pop("prompt_ids")
            if not job.get("warmup"):
                sink.write(json.dumps(record) + "\n")
                sink.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
