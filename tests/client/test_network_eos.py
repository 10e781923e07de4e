"""EOS over the network: servers that HAVE an end-of-sequence id, chosen from the target's own
greedy continuation so that it lands inside a block. Every lossless mode over gRPC stops exactly
where `generate` (with that eos_token_id) stops; a pre-draft whose assumed verdict ends the
generation is never drafted or shipped; a session resumed with committed text that ends in EOS
decodes nothing more."""

from __future__ import annotations

from functools import lru_cache
from typing import Iterator, Sequence

import grpc
import pytest
import torch

from edgespec.client.edge_client import EdgeClient
from edgespec.core.block import DraftBlock
from edgespec.core.config import GenerationConfig
from edgespec.core.modes import Mode
from edgespec.exits.heads import ExitHeads, ExitSpec
from edgespec.models.draft import DraftRuntime
from edgespec.models.target import TargetRuntime
from edgespec.server.app import RunningServer, ServerConfig
from edgespec.transport import edgespec_pb2 as pb
from tests.support.tiny_models import greedy_reference, layer_skip_copy, tiny_model
from tests.support.watched_server import FirstVerifyHold, WatchedService
from tests.support.wire import RawSession, block_message, open_message

PROMPT = [3, 17, 42, 8, 9, 61]
HORIZON = 24
LOSSLESS_MODES = [Mode.CLOUD_AR, Mode.SD, Mode.SD_EE, Mode.SD_EE_PREDRAFT, Mode.SD_EE_PIPELINED]
# Where EOS sits in the target's greedy continuation: early (inside the first or second block
# for every γ below) and later (after several rounds).
EOS_AT = (4, 10)


@lru_cache(maxsize=None)
def target_model() -> torch.nn.Module:
    return tiny_model("qwen2", seed=0)


@lru_cache(maxsize=None)
def draft_model(kind: str) -> torch.nn.Module:
    if kind == "self":  # always agrees: whole blocks are accepted, so EOS sits mid-block
        return tiny_model("qwen2", seed=0)
    return layer_skip_copy(tiny_model("qwen2", seed=0), keep=3)  # agrees part of the time


def eos_at(reference: Sequence[int], index: int) -> int:
    token = reference[index]
    assert token not in reference[:index], "pick an index where the token appears for the first time"
    return token


@pytest.fixture(scope="module", params=EOS_AT, ids=lambda i: f"eos-at-{i}")
def eos_server(request: pytest.FixtureRequest) -> Iterator[tuple[str, int, list[int]]]:
    """A server whose EOS id is the target's greedy token at position ``param``; with the
    expected output: `generate` with that eos_token_id."""
    eos = eos_at(greedy_reference(target_model(), PROMPT, HORIZON), request.param)
    expected = greedy_reference(target_model(), PROMPT, HORIZON, eos=eos)
    assert expected[-1] == eos and len(expected) == request.param + 1
    exits = ExitHeads([ExitSpec(2), ExitSpec(3)], target_model().config.hidden_size)
    service = WatchedService(
        TargetRuntime(tiny_model("qwen2", seed=0), exits), tokenizer=None, eos_ids=frozenset({eos})
    )
    server = RunningServer(service, ServerConfig(port=0))
    yield f"127.0.0.1:{server.port}", eos, expected
    server.stop()


# cloud-ar uses neither the draft nor γ: one case; every speculative mode with both drafts.
CASES = [(Mode.CLOUD_AR, 3, "self")] + [
    (mode, gamma, draft) for mode in LOSSLESS_MODES[1:] for gamma in (3, 8) for draft in ("self", "layer-skip")
]


@pytest.mark.parametrize(("mode", "gamma", "draft"), CASES, ids=lambda v: v.value if isinstance(v, Mode) else str(v))
def test_every_lossless_mode_stops_right_after_eos_like_generate(
    eos_server: tuple[str, int, list[int]], mode: Mode, gamma: int, draft: str
) -> None:
    address, eos, expected = eos_server
    # The caller's own EOS set is empty: the server's (sent in Opened) must be the one obeyed.
    # Full blocks (no confidence stop), so a block can run past EOS.
    config = GenerationConfig(early_verdicts=True, max_new_tokens=HORIZON, gamma=gamma, draft_stop=0.0)
    result = EdgeClient(address, DraftRuntime(draft_model(draft))).generate(PROMPT, mode, config)
    assert result.tokens == expected
    assert result.stats.finish_reason in ("eos", "done")
    if mode is not Mode.CLOUD_AR:
        assert result.stats.finish_reason == "eos"
        if draft == "self":
            # Whole blocks are accepted, so the block holding EOS had draft tokens after it:
            # they were verified and accepted, and still not committed.
            assert result.stats.accepted == result.stats.drafted
            assert result.stats.drafted > len(expected) - result.stats.rounds


class RecordingDraft(DraftRuntime):
    """A draft runtime that remembers every sequence it was asked to draft after."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(model)
        self.asked: list[list[int]] = []

    def draft(self, sequence: Sequence[int], gamma: int, *args: object, **kwargs: object) -> DraftBlock:  # type: ignore[override]
        self.asked.append(list(sequence))
        return super().draft(sequence, gamma, *args, **kwargs)  # type: ignore[arg-type]


def perfect_exit_target() -> torch.nn.Module:
    """Zeroing the last layer's output projections makes it pass the residual through, so the
    logit lens after layer 3 of 4 *is* the final layer: every early verdict is the final one."""
    model = tiny_model("qwen2", seed=0)
    with torch.no_grad():
        model.model.layers[-1].self_attn.o_proj.weight.zero_()
        model.model.layers[-1].mlp.down_proj.weight.zero_()
    return model


@pytest.mark.parametrize("stop", ["eos", "budget"])
@pytest.mark.parametrize("mode", [Mode.SD_EE_PREDRAFT, Mode.SD_EE_PIPELINED], ids=lambda m: m.value)
def test_no_predraft_when_the_assumed_verdict_ends_the_generation(mode: Mode, stop: str) -> None:
    """The last round's early verdict (right, with a perfect exit) assumes a verdict that ends
    the generation, by EOS or by max_new_tokens: nothing may be drafted or shipped after it."""
    reference_model = perfect_exit_target()
    if stop == "eos":
        eos_ids = frozenset({eos_at(greedy_reference(reference_model, PROMPT, HORIZON), 10)})
        expected = greedy_reference(reference_model, PROMPT, HORIZON, eos=min(eos_ids))
    else:
        eos_ids, expected = frozenset(), greedy_reference(reference_model, PROMPT, 13)
    served_model = perfect_exit_target()
    hold = FirstVerifyHold(served_model)
    service = WatchedService(TargetRuntime(served_model, ExitHeads([ExitSpec(3)], 64)), tokenizer=None, eos_ids=eos_ids)
    server = RunningServer(service, ServerConfig(port=0))
    draft = RecordingDraft(layer_skip_copy(tiny_model("qwen2", seed=0), keep=3))
    if mode is Mode.SD_EE_PIPELINED:
        hold.arm(service)  # round 1's tagged pre-draft reaches the server before round 0's verdict
    try:
        config = GenerationConfig(
            early_verdicts=True, max_new_tokens=HORIZON if stop == "eos" else len(expected), gamma=3
        )
        result = EdgeClient(f"127.0.0.1:{server.port}", draft).generate(PROMPT, mode, config)
    finally:
        server.stop()
    stats = result.stats
    assert result.tokens == expected and stats.finish_reason == ("eos" if stop == "eos" else "length")
    # Every round's branch was right, but the last round has none: its assumed verdict (the
    # exit's, and the guess's) ends the generation, so nothing was pre-drafted on it.
    assert stats.hits == stats.rounds - 1 and stats.misses == 0 and stats.no_hint == 1
    # ... and nothing was ever drafted after that end, nor shipped for a round after it.
    drafted_after = [seq[len(PROMPT) :] for seq in draft.asked]
    assert all(len(after) < len(expected) and not eos_ids & set(after) for after in drafted_after), drafted_after
    assert max(block.round for block in service.blocks) == stats.rounds - 1
    if mode is Mode.SD_EE_PIPELINED:
        assert hold.released_by_predraft and stats.pipelined >= 1, "the pipelined path never ran"


@pytest.fixture(scope="module")
def eos_raw_server() -> Iterator[tuple[grpc.Channel, WatchedService, int, list[int]]]:
    reference = greedy_reference(target_model(), PROMPT, HORIZON)
    eos = eos_at(reference, 4)
    service = WatchedService(TargetRuntime(tiny_model("qwen2", seed=0)), tokenizer=None, eos_ids=frozenset({eos}))
    server = RunningServer(service, ServerConfig(port=0))
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield channel, service, eos, reference[:5]
    channel.close()
    server.stop()


def test_a_resumed_speculative_session_ending_in_eos_verifies_nothing(eos_raw_server) -> None:
    channel, service, eos, committed = eos_raw_server
    assert committed[-1] == eos
    forwards = service.scheduler.stats.forwards
    stream = RawSession(channel, timeout_s=20)
    stream.send(open_message(PROMPT, HORIZON, committed_ids=committed))
    assert stream.receive().WhichOneof("kind") == "opened"
    prefills = service.scheduler.stats.forwards - forwards
    stream.send(block_message(0, [1, 2, 3]))
    reply = stream.receive()
    assert reply.WhichOneof("kind") == "error" and reply.error.code == pb.OUT_OF_ORDER
    assert "finished" in reply.error.message
    assert service.scheduler.stats.forwards - forwards == prefills <= 1, "a block after EOS was verified"


def test_a_resumed_cloud_ar_session_ending_in_eos_reports_finished_without_decoding(eos_raw_server) -> None:
    channel, service, eos, committed = eos_raw_server
    forwards = service.scheduler.stats.forwards
    stream = RawSession(channel, timeout_s=20)
    stream.send(open_message(PROMPT, HORIZON, kind=pb.CLOUD_AR, committed_ids=committed))
    assert stream.receive().WhichOneof("kind") == "opened"
    rest = stream.rest()  # half-close: the server ends the stream once it has nothing more to say
    assert service.scheduler.stats.forwards - forwards <= 1, "decoded past EOS"
    tokens = [m.tokens for m in rest if m.WhichOneof("kind") == "tokens"]
    assert tokens and not any(t.ids for t in tokens) and tokens[-1].finished, f"no finished report: {rest}"
