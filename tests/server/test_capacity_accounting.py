"""What the capacity figures rest on, over real gRPC: every pass the server ran for a session
(its prefill, each verify or decode) is on the client's timeline with the server's own timing,
and the queueing the server reports is kept apart; several concurrent sessions' passes, placed
on one clock, cover no more than the server's wall time."""

from __future__ import annotations

import threading
import time

from edgespec.capacity import CLOUD_TIMELINE_PASSES, point_metrics, server_busy_s
from edgespec.client.edge_client import EdgeClient
from edgespec.core.config import GenerationConfig
from edgespec.core.modes import Mode
from edgespec.models.draft import DraftRuntime
from edgespec.models.target import TargetRuntime
from edgespec.server.app import RunningServer, ServerConfig
from edgespec.server.servicer import VerifierService
from tests.support.tiny_models import layer_skip_copy, tiny_model

PROMPTS = [[3, 17, 42, 8, 9, 61], [5, 6, 7], [90, 1, 2, 3, 4, 5, 6, 7]]
NEW_TOKENS = 16


def test_passes_and_queueing_are_on_each_generation_s_record() -> None:
    service = VerifierService(TargetRuntime(tiny_model("qwen2", seed=0), None), tokenizer=None, eos_ids=frozenset())
    server = RunningServer(service, ServerConfig(port=0))
    try:
        for mode in (Mode.CLOUD_AR, Mode.SD):
            records: list[dict] = []
            lock = threading.Lock()

            def run(index: int, prompt: list[int]) -> None:
                client = EdgeClient(
                    f"127.0.0.1:{server.port}",
                    DraftRuntime(layer_skip_copy(tiny_model("qwen2", seed=0), keep=3)) if mode is Mode.SD else None,
                )
                started = time.time()
                result = client.generate(prompt, mode, GenerationConfig(max_new_tokens=NEW_TOKENS, gamma=3))
                with lock:
                    records.append(
                        {
                            "mode": mode.value,
                            "client_index": index,
                            "started_at": started,
                            "ended_at": time.time(),
                            "tokens": result.tokens,
                            "stats": result.stats.as_dict(),
                        }
                    )

            threads = [threading.Thread(target=run, args=(i, p)) for i, p in enumerate(PROMPTS)]
            wall_start = time.time()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=120)
            wall = time.time() - wall_start
            assert len(records) == len(PROMPTS), "a generation did not finish"
            for record in records:
                stats = record["stats"]
                passes = [e for e in stats["timeline"] if e["actor"] == "cloud" and e["what"] in CLOUD_TIMELINE_PASSES]
                assert sum(1 for e in passes if e["what"] == "prefill (server)") == 1
                assert len(passes) == 1 + stats["target_passes"]  # the prefill, then one pass per round or token
                assert all(0 <= e["end_s"] - e["start_s"] <= stats["total_s"] for e in passes)
                if mode is Mode.SD:
                    assert 0.0 <= stats["server_queued_s"] <= stats["wait_s"]
            busy = server_busy_s(records)
            assert busy is not None and 0 < busy <= wall
            figures = point_metrics(records)
            assert figures["clients"] == len(PROMPTS) and 0 < figures["server_busy_share"] <= 1.0
    finally:
        server.stop()
