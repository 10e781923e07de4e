"""Exit training on a tiny model: the loss falls, heads round-trip, resume is deterministic,
and trained exits never change the target's final logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edgespec.exits.heads import ExitHeads, ExitSpec
from edgespec.exits.hidden_cache import CacheSource, build_training_cache, load_training_cache, read_manifest
from edgespec.exits.training import (
    CacheData,
    TrainConfig,
    distillation_loss,
    new_heads,
    split_holdout,
    top1_agreement,
    train_exits,
)
from edgespec.models.target import TargetRuntime
from tests.support.tiny_models import VOCAB, tiny_model

LAYERS = (2, 3)


def _sources(count: int, length: int = 40) -> list[CacheSource]:
    def make(i: int) -> list[int]:
        return torch.randint(0, VOCAB, (length,), generator=torch.Generator().manual_seed(i)).tolist()

    return [CacheSource(str(i), "random", lambda i=i: make(i)) for i in range(count)]


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, CacheData, CacheData]:
    model = tiny_model("qwen2", seed=0)
    directory = tmp_path_factory.mktemp("cache")
    # Interrupted caching: a second call resumes after the complete shards.
    build_training_cache(model, iter(_sources(12)), directory, LAYERS, 6, topk=16, sources_per_shard=3)
    manifest = build_training_cache(model, iter(_sources(12)), directory, LAYERS, 12, topk=16, sources_per_shard=3)
    assert len(manifest["shards"]) == 4 and manifest["positions"] == 12 * 40
    assert read_manifest(directory)["layers"] == list(LAYERS)
    data = CacheData.from_tensors(load_training_cache(directory), LAYERS)
    # The cached final top-1 is the model's own argmax.
    with torch.no_grad():
        logits = model(torch.tensor([_sources(1)[0].make()])).logits[0]
    assert torch.equal(data.topk_ids[:40, 0], logits.argmax(-1))
    train, holdout = split_holdout(data, 0.25)
    return model, train, holdout


def _config(kind: str = "linear", steps: int = 12, **extra: object) -> TrainConfig:
    return TrainConfig(
        layers=LAYERS,
        kind=kind,
        rank=8 if kind != "linear" else 0,
        steps=steps,
        batch_size=64,
        sampled_tail=24,
        lr=5e-3,
        warmup_steps=2,
        checkpoint_every=4,
        **extra,
    )  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["linear", "lowrank", "mlp"])
def test_training_a_few_steps_lowers_the_loss(cached, tmp_path: Path, kind: str) -> None:
    model, train, _ = cached
    config = _config(kind, steps=30)
    config.lr = 2e-2
    trained, _ = train_exits(config, train, model.model.norm, model.lm_head.weight, tmp_path, progress=False)

    def loss(heads: ExitHeads, layer: int) -> float:
        # Over every training position with the whole vocabulary as the tail: the exact KL.
        with torch.no_grad():
            value, _ = distillation_loss(
                heads.adapter(layer)(train.hidden[layer]),
                train.final,
                train.topk_ids,
                torch.arange(VOCAB),
                model.model.norm,
                model.lm_head.weight,
            )
        return float(value)

    untrained = new_heads(config, model.config.hidden_size)
    for layer in LAYERS:
        assert loss(trained, layer) < 0.95 * loss(untrained, layer), (kind, layer)


def test_resume_after_interruption_equals_an_uninterrupted_run(cached, tmp_path: Path) -> None:
    model, train, _ = cached
    config = _config(steps=10, ce_weight=0.1)
    whole, whole_history = train_exits(
        config, train, model.model.norm, model.lm_head.weight, tmp_path / "whole", progress=False
    )
    # Interrupted after 6 steps (checkpoint at 4 and at the stop), then resumed in a new call.
    train_exits(
        config, train, model.model.norm, model.lm_head.weight, tmp_path / "resumed", stop_after=6, progress=False
    )
    resumed, resumed_history = train_exits(
        config, train, model.model.norm, model.lm_head.weight, tmp_path / "resumed", progress=False
    )
    assert resumed_history == whole_history
    for name, tensor in whole.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name


def test_trained_heads_round_trip_exactly_and_fp16_storage_is_close(cached, tmp_path: Path) -> None:
    model, train, holdout = cached
    config = TrainConfig(layers=LAYERS, kind="mlp", rank=8, steps=4, batch_size=32, sampled_tail=8, checkpoint_every=4)
    heads, _ = train_exits(config, train, model.model.norm, model.lm_head.weight, tmp_path / "work", progress=False)
    heads = heads.with_thresholds({2: 0.8, 3: 0.55})
    heads.metadata = {"steps": 4}
    heads.save(tmp_path / "exact")
    loaded = ExitHeads.load(tmp_path / "exact")
    assert loaded.specs == heads.specs == (ExitSpec(2, "mlp", 0.8, 8), ExitSpec(3, "mlp", 0.55, 8))
    assert loaded.metadata == {"steps": 4}
    for name, tensor in heads.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    heads.save(tmp_path / "half", dtype=torch.float16)
    half = ExitHeads.load(tmp_path / "half")
    assert all(t.dtype == torch.float32 for t in half.state_dict().values())
    for name, tensor in heads.state_dict().items():
        torch.testing.assert_close(half.state_dict()[name], tensor, rtol=1e-3, atol=1e-3)
    agreement = top1_agreement(loaded, holdout, model.model.norm, model.lm_head.weight)
    assert set(agreement) == set(LAYERS) and all(0.0 <= v <= 1.0 for v in agreement.values())


@pytest.mark.parametrize("kind", ["linear", "lowrank", "mlp"])
def test_final_logits_stay_bit_identical_with_trained_exits(cached, tmp_path: Path, kind: str) -> None:
    model, train, _ = cached
    heads, _ = train_exits(
        _config(kind, steps=5), train, model.model.norm, model.lm_head.weight, tmp_path, progress=False
    )
    sequence = _sources(1)[0].make()[:12]
    plain = TargetRuntime(model).score_tail(sequence, 5)
    readings = []
    runtime = TargetRuntime(model, heads)
    with_exits = runtime.score_tail(sequence, 5, on_exit=readings.append)
    assert torch.equal(plain, with_exits)
    assert [r.layer for r in readings] == list(LAYERS)
    # The online exit equals the adapter -> frozen norm -> frozen head applied offline.
    with torch.no_grad():
        hidden = model(torch.tensor([sequence]), output_hidden_states=True).hidden_states[3][0, -5:]
        expected = model.lm_head(model.model.norm(heads.adapter(3)(hidden)))
    torch.testing.assert_close(readings[1].logits, expected, rtol=1e-5, atol=1e-5)


def test_sharegpt_reader_streams_records_and_stops_at_the_truncation(tmp_path: Path) -> None:
    from edgespec.data.sharegpt import iter_conversations, iter_json_array

    records = [
        {"id": "a", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
        {
            "id": "b",
            "conversations": [{"from": "gpt", "value": "starts with the model"}, {"from": "human", "value": "x"}],
        },
        {
            "id": "c",
            "conversations": [
                {"from": "system", "value": "s"},
                {"from": "human", "value": "q"},
                {"from": "gpt", "value": "a"},
            ],
        },
    ]
    import json

    text = json.dumps(records, indent=2)
    truncated = text[:-2] + ',\n  {"id": "d", "conversations": [{"from": "human", "val'  # cut mid-record
    path = tmp_path / "sharegpt.json"
    path.write_text(truncated)
    assert [r["id"] for r in iter_json_array(path, chunk_chars=16)] == ["a", "b", "c"]
    conversations = list(iter_conversations("all", path))
    assert [c.id for c in conversations] == ["a", "c"]
    assert conversations[0].messages == ({"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"})
    assert conversations[1].messages[0] == {"role": "user", "content": "q"}


def test_shipped_heads_load_for_the_default_target() -> None:
    from edgespec.models.exit_choice import default_exits_dir

    assert default_exits_dir("no-such-target") is None
    directory = default_exits_dir("qwen2.5-coder-1.5b")
    assert directory is not None
    heads = ExitHeads.load(directory)
    assert heads.hidden_size == 1536 and all(1 <= layer < 28 for layer in heads.layers)
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in heads.state_dict().values())
    assert "calibration" in heads.metadata and "rule" in heads.metadata["calibration"]
