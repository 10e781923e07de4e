"""The `host` hardware profile: a short probe of this machine's costs, one thread per side as
the benchmark runs them, cached per target, draft, backend and dtype."""

from __future__ import annotations

import logging
import os
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from edgespec.drivers.cost_profile import HardwareProfile
from edgespec.hostinfo import host_facts

if TYPE_CHECKING:
    from edgespec.models.exit_heads import ExitHeads
    from edgespec.models.target import TargetRuntime

logger = logging.getLogger(__name__)

CONTEXT = 200  # tokens of context the forwards run on (a prompt plus some output)


def cache_path(target: str, draft: str, backend: str, dtype: str) -> Path:
    root = Path(os.environ.get("EDGESPEC_CACHE", Path.home() / ".cache" / "edgespec"))
    slug = "-".join(part.replace("/", "_") for part in (target, draft, backend, dtype))
    return root / "profiles" / f"host-{slug}.json"


def _median_s(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def probe_host(
    target_name: str, draft_name: str, backend: str, dtype: str, exits_spec: str = "auto"
) -> HardwareProfile:
    """Measure: target prefill, a forward over 1..9 new rows, an exit's cost; the draft's prefill
    and per-token cost; a batched verify of 4 sessions. About a minute on a 2-core machine."""
    from edgespec.models.exit_choice import resolve_exits
    from edgespec.models.loading import load_draft, load_model, resolve_dtype
    from edgespec.models.target import TargetRuntime

    torch.set_num_threads(1)
    dtype = resolve_dtype(dtype)
    loaded = load_model(target_name, dtype)
    runtime = TargetRuntime(loaded.model)
    num_layers = int(loaded.model.config.num_hidden_layers)
    context = list(range(1000, 1000 + CONTEXT))

    def forward(rows: int, kv: Any = None) -> None:
        runtime.score_tail(context + list(range(10, 10 + rows)), rows, kv=kv)

    runtime.score_tail(context, 1)  # fill the cache once; every timed forward then adds `rows`
    forward(2)
    for rows in (1, 2, 3, 5, 7, 9):  # each shape's first forward is slow (kernels compiled): not timed
        forward(rows)
    forward_ms = {rows: 1000 * _median_s(lambda r=rows: forward(r), 3) for rows in (1, 2, 3, 5, 7, 9)}
    short, long = 64, 256
    prefill = {}
    for n in (short, long):
        prefill[n] = (
            _median_s(lambda n=n: (runtime.reset(), runtime.score_tail(list(range(2000, 2000 + n)), 1)), 2) * 1000
        )
    per_token = (prefill[long] - prefill[short]) / (long - short)
    exits = resolve_exits(exits_spec, loaded.model, target_name)
    exit_ms = exit_candidates_ms = 0.0
    if exits is not None:
        exit_ms, exit_candidates_ms = _exit_costs(runtime, loaded.model, exits, context, forward_ms[5])
    batch4, decode4 = _batch_costs(runtime, context)
    runtime.reset()

    draft, _ = load_draft(draft_name, backend, dtype, threads=1)
    draft_ms, draft_prefill_ms = _draft_costs(draft)
    del draft
    server_draft = (draft_ms, draft_prefill_ms) if backend == "transformers" else probe_server_draft(draft_name, dtype)
    overhead_ms = measure_message_overhead_ms()
    profile = HardwareProfile(
        name="host",
        forward_ms=forward_ms,
        prefill_ms_per_token=per_token,
        prefill_fixed_ms=max(0.0, prefill[short] - per_token * short),
        exit_ms=exit_ms,
        exit_candidates_ms=exit_candidates_ms,
        num_layers=num_layers,
        batch_factor={1: 1.0, 4: batch4 / forward_ms[5]},
        decode_batch_factor={1: 1.0, 4: decode4 / forward_ms[1]},
        draft_ms_per_token=draft_ms,
        draft_prefill_ms_per_token=draft_prefill_ms,
        message_overhead_ms=overhead_ms,
        server_draft_ms_per_token=server_draft[0],
        server_draft_prefill_ms_per_token=server_draft[1],
        server_draft_source=(
            f"probed: {draft_name} on transformers ({dtype}), one thread, as `serve --cloud-draft` runs it"
        ),
        source=(
            f"probed {time.strftime('%Y-%m-%d %H:%M')}: target {target_name} ({dtype}), "
            f"draft {draft_name} on {backend}, {CONTEXT} tokens of context"
        ),
        host=host_facts() | {"dtype": dtype},
    )
    return profile


def _exit_costs(
    runtime: TargetRuntime, model: Any, exits: ExitHeads, context: list[int], forward5_ms: float
) -> tuple[float, float]:
    """An exit's cost per layer in a 5-row forward (against ``forward5_ms``, the same forward
    without exits), and one candidate-id exit reading timed on its own; the exits are detached
    again after."""
    runtime.score_tail(context, 1)
    runtime.attach_exits(exits)
    with_exits_forward = lambda: runtime.score_tail(context + [10, 11, 12, 13, 14], 5, on_exit=lambda reading: None)  # noqa: E731
    with_exits_forward()  # the exits' own first call is slow (kernels for new shapes): not timed
    with_exits = 1000 * _median_s(with_exits_forward, 5)
    exit_ms = max(0.0, (with_exits - forward5_ms) / len(exits.layers))
    # A candidate-id exit's own work is below a forward's noise: time one reading directly.
    hidden = torch.randn(5, int(model.config.hidden_size), dtype=next(model.parameters()).dtype)
    ids = torch.randint(0, runtime.vocab_size, (4, 8))
    layer = exits.layers[0]
    with torch.inference_mode():  # as the server's forward hook runs it
        exit_candidates_ms = 1000 * _median_s(lambda: runtime.exit_candidate_logits(layer, hidden, ids), 5)
    runtime.detach_exits()
    return exit_ms, exit_candidates_ms


def _batch_costs(runtime: TargetRuntime, context: list[int]) -> tuple[float, float]:
    """ms of a batched verify (5 rows) and of a batched decode (1 row) of 4 sessions, each on its
    own cache; the caches are freed before returning, so the target's memory is back before the
    draft loads."""
    from edgespec.models.target import ScoreRequest

    caches = [runtime.new_cache() for _ in range(4)]
    for kv in caches:
        runtime.score_tail(context, 1, kv=kv)
    batch4 = 1000 * _median_s(
        lambda: runtime.score_batch([ScoreRequest(context + [10, 11, 12, 13, 14], 5, kv) for kv in caches]), 2
    )
    decode4 = 1000 * _median_s(lambda: runtime.score_batch([ScoreRequest(context + [10], 1, kv) for kv in caches]), 2)
    caches.clear()  # free the target's memory before the draft loads
    return batch4, decode4


def _draft_costs(draft: Any) -> tuple[float, float]:
    """A draft runtime's ms per drafted token (after a verdict: a few new tokens, then 4 steps)
    and its prefill ms per prompt token."""
    from edgespec.core.config import GREEDY

    prompt = list(range(3000, 3000 + CONTEXT))
    draft_prefill = _median_s(lambda: (draft.reset(), draft.draft(prompt, 1, GREEDY)), 2) * 1000
    steps = []
    for offset in range(4):
        sequence = prompt + list(range(500, 503 + offset))
        draft.draft(sequence[:-2], 1, GREEDY)
        start = time.perf_counter()
        draft.draft(sequence, 4, GREEDY)
        steps.append((time.perf_counter() - start) * 1000 / 4)
    draft_ms = statistics.median(steps)
    return draft_ms, max(0.0, (draft_prefill - draft_ms) / CONTEXT)


def probe_server_draft(draft_name: str, dtype: str) -> tuple[float, float]:
    """cloud-sd's draft as the server runs it (transformers, the target's dtype, one thread)."""
    from edgespec.models.loading import load_draft

    torch.set_num_threads(1)
    draft, _ = load_draft(draft_name, "transformers", dtype, threads=1)
    return _draft_costs(draft)


def measure_message_overhead_ms(rounds: int = 30, one_way_ms: float = 25.0) -> float:
    """What the protocol costs per message here beyond the link's delay: a real client and server
    on loopback through the link emulator (``one_way_ms``, wan's), with a tiny model so compute is
    negligible; (wait − verify − round trip) per round, over its two messages."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from edgespec.client.edge_client import ClientOptions, EdgeClient
    from edgespec.client.recovery import NO_RECOVERY
    from edgespec.core.config import GenerationConfig
    from edgespec.core.modes import Mode
    from edgespec.link import LinkEmulator, resolve_profile
    from edgespec.models.draft import DraftRuntime
    from edgespec.models.target import TargetRuntime
    from edgespec.server.app import RunningServer, ServerConfig
    from edgespec.server.servicer import VerifierService

    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).float().eval().requires_grad_(False)
    server = RunningServer(
        VerifierService(TargetRuntime(model), tokenizer=None, eos_ids=frozenset()), ServerConfig(port=0)
    )
    try:
        with LinkEmulator(
            "127.0.0.1", server.port, resolve_profile("lan", {"one_way_delay_ms": one_way_ms})
        ).running() as port:
            client = EdgeClient(f"127.0.0.1:{port}", DraftRuntime(model), ClientOptions(recovery=NO_RECOVERY))
            generation = GenerationConfig(max_new_tokens=rounds * 2, gamma=1)
            client.generate([1, 2, 3], Mode.SD, GenerationConfig(max_new_tokens=4, gamma=1))  # warm up
            stats = client.generate([1, 2, 3], Mode.SD, generation).stats
    finally:
        server.stop()
    return max(0.0, (1000 * (stats.wait_s - stats.server_verify_s) / stats.rounds - 2 * one_way_ms) / 2)


def host_profile(target: str, draft: str, backend: str, dtype: str, refresh: bool = False) -> HardwareProfile:
    path = cache_path(target, draft, backend, dtype)
    if path.is_file() and not refresh:
        profile = HardwareProfile.load(path)
        if profile.server_draft_ms_per_token is None:  # cached before cloud-sd: probe just that
            logger.info("probing the server-side draft for cloud-sd (under a minute); updating %s", path)
            profile.server_draft_ms_per_token, profile.server_draft_prefill_ms_per_token = probe_server_draft(
                draft, dtype
            )
            profile.server_draft_source = (
                f"probed: {draft} on transformers ({dtype}), one thread, as `serve --cloud-draft` runs it"
            )
            profile.save(path)
        return profile
    logger.info("probing this host's costs (about a minute); cached at %s", path)
    profile = probe_host(target, draft, backend, dtype)
    profile.save(path)
    return profile


def edge_cache_path(draft: str, backend: str) -> Path:
    return cache_path("edge", draft, backend, "native").with_name(f"edge-{draft.replace('/', '_')}-{backend}.json")


def probe_edge(draft_name: str, backend: str, refresh: bool = False) -> HardwareProfile:
    """This host as an edge device alone: the draft's costs (one thread) and the protocol's per
    message, without loading the target (what `simulate --edge host` needs); cached."""
    from edgespec.models.loading import load_draft

    path = edge_cache_path(draft_name, backend)
    if path.is_file() and not refresh:
        return HardwareProfile.load(path)
    logger.info("probing this host's draft (under a minute); cached at %s", path)
    torch.set_num_threads(1)
    draft, _ = load_draft(draft_name, backend, "auto", threads=1)
    draft_ms, draft_prefill_ms = _draft_costs(draft)
    del draft
    profile = HardwareProfile(
        name="this host's edge",
        forward_ms={1: 0.0},  # no verifier: only the edge half of this profile is read
        prefill_ms_per_token=0.0,
        draft_ms_per_token=draft_ms,
        draft_prefill_ms_per_token=draft_prefill_ms,
        message_overhead_ms=measure_message_overhead_ms(),
        source=f"probed {time.strftime('%Y-%m-%d %H:%M')}: draft {draft_name} on {backend}, one thread",
        host=host_facts(threads_per_process=1),
    )
    profile.save(path)
    return profile
