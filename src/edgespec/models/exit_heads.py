"""Early-exit heads: small adapters at chosen target layers feeding the target's frozen final
norm and LM head.

An exit never changes what the target computes; it only reads the hidden state after its layer.
The ``identity`` adapter is the untrained "logit lens": the intermediate hidden state goes through
the final norm and LM head as is. Trained adapters (``linear``, ``lowrank``, ``mlp``; see
``ExitAdapter``) start from the identity too. Trained, calibrated heads for preset targets ship
in ``edgespec/exits/shipped/<target>/`` (see ``edgespec.models.exit_choice.default_exits_dir``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

logger = logging.getLogger(__name__)

ADAPTER_KINDS = ("identity", "linear", "lowrank", "mlp")
# Kinds whose size is set by ``ExitSpec.rank``.
RANKED_KINDS = ("lowrank", "mlp")
CONFIG_FILE = "exits.json"
WEIGHTS_FILE = "exits.safetensors"


@dataclass(frozen=True)
class ExitSpec:
    """One exit: after ``layer`` decoder layers (1-based, so 24 of 28 means after the 24th)."""

    layer: int
    kind: str = "identity"
    # An early verdict is streamed only when its confidence reaches this value.
    threshold: float = 0.0
    # Inner width of ``lowrank`` / ``mlp`` adapters (0 for the others).
    rank: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ADAPTER_KINDS:
            raise ValueError(f"unknown exit adapter kind {self.kind!r}; choose from {ADAPTER_KINDS}")
        if self.kind in RANKED_KINDS and self.rank < 1:
            raise ValueError(f"a {self.kind} exit adapter needs rank >= 1")
        if self.layer < 1:
            raise ValueError(f"exit layer must be >= 1, got {self.layer}")


class ExitAdapter(nn.Module):
    """Maps the hidden state after an exit layer towards what the final norm + LM head expect.

    * ``identity``: the logit lens (no parameters);
    * ``linear``: ``W h + b``, a full square map (H*H parameters);
    * ``lowrank``: ``h + U V^T h + b``, a residual rank-``rank`` correction;
    * ``mlp``: ``h + U silu(V^T rmsnorm(h)) + b``, a residual bottleneck MLP with its own norm.
    Every trainable kind starts at the identity, so an untrained adapter is the logit lens.
    """

    def __init__(self, kind: str, hidden_size: int, rank: int = 0) -> None:
        super().__init__()
        self.kind = kind
        if kind == "linear":
            self.proj = nn.Linear(hidden_size, hidden_size, bias=True)
            # Start at the logit lens so an untrained adapter is no worse than none.
            nn.init.eye_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)
        elif kind in RANKED_KINDS:
            if kind == "mlp":
                self.norm_weight = nn.Parameter(torch.ones(hidden_size))
            self.down = nn.Linear(hidden_size, rank, bias=False)
            self.up = nn.Linear(rank, hidden_size, bias=True)
            nn.init.normal_(self.down.weight, std=hidden_size**-0.5)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.kind == "identity":
            return hidden
        if self.kind == "linear":
            return self.proj(hidden.to(self.proj.weight.dtype)).to(hidden.dtype)
        x = hidden.to(self.up.weight.dtype)
        if self.kind == "lowrank":
            return (x + self.up(self.down(x))).to(hidden.dtype)
        normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.norm_weight
        return (x + self.up(nn.functional.silu(self.down(normed)))).to(hidden.dtype)


class ExitHeads(nn.Module):
    """The set of exits attached to one target, ordered by layer."""

    def __init__(self, specs: Iterable[ExitSpec], hidden_size: int, metadata: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.specs = tuple(sorted(specs, key=lambda s: s.layer))
        layers = [s.layer for s in self.specs]
        if len(set(layers)) != len(layers):
            raise ValueError(f"duplicate exit layers: {layers}")
        self.hidden_size = hidden_size
        self.metadata = dict(metadata or {})
        self.adapters = nn.ModuleDict({str(s.layer): ExitAdapter(s.kind, hidden_size, s.rank) for s in self.specs})

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(s.layer for s in self.specs)

    def spec(self, layer: int) -> ExitSpec:
        return next(s for s in self.specs if s.layer == layer)

    def adapter(self, layer: int) -> ExitAdapter:
        return self.adapters[str(layer)]  # type: ignore[return-value]

    @staticmethod
    def logit_lens(layers: Iterable[int], hidden_size: int) -> "ExitHeads":
        return ExitHeads([ExitSpec(layer) for layer in layers], hidden_size, {"source": "logit-lens"})

    def with_thresholds(self, thresholds: dict[int, float]) -> "ExitHeads":
        """The same adapters (shared, not copied) under new thresholds."""
        specs = [replace(s, threshold=float(thresholds.get(s.layer, s.threshold))) for s in self.specs]
        heads = ExitHeads(specs, self.hidden_size, self.metadata)
        heads.adapters = self.adapters
        return heads

    def streaming_only(self) -> "ExitHeads":
        """The exits whose threshold can be reached (<= 1). An exit calibrated never to stream
        would still cost a final norm + LM head every round, for nothing."""
        keep = [spec.layer for spec in self.specs if spec.threshold <= 1.0]
        if len(keep) == len(self.specs):
            return self
        logger.info("dropped never-streaming exits %s", sorted(set(self.layers) - set(keep)))
        return self.subset(keep)

    def subset(self, layers: Iterable[int]) -> "ExitHeads":
        """These exits at ``layers`` only (their adapters' weights copied)."""
        wanted = set(layers)
        keep = [spec for spec in self.specs if spec.layer in wanted]
        subset = ExitHeads(keep, self.hidden_size, self.metadata)
        prefixes = tuple(f"adapters.{spec.layer}." for spec in keep)
        subset.load_state_dict({k: v for k, v in self.state_dict().items() if k.startswith(prefixes)}, strict=True)
        return subset

    def save(self, directory: str | Path, dtype: torch.dtype | None = None) -> None:
        """``exits.json`` + ``exits.safetensors``; ``dtype`` (e.g. float16) stores the weights
        smaller, and loading casts them back to the adapters' float32."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "hidden_size": self.hidden_size,
            "exits": [asdict(s) for s in self.specs],
            "metadata": self.metadata,
        }
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        tensors = {name: t.detach().to(dtype or t.dtype).contiguous() for name, t in self.state_dict().items()}
        if tensors:
            save_file(tensors, str(directory / WEIGHTS_FILE))

    @staticmethod
    def load(directory: str | Path) -> "ExitHeads":
        directory = Path(directory)
        config_path = directory / CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(f"no exit heads at {directory} (missing {CONFIG_FILE})")
        config = json.loads(config_path.read_text())
        heads = ExitHeads(
            [ExitSpec(**e) for e in config["exits"]], int(config["hidden_size"]), config.get("metadata", {})
        )
        weights_path = directory / WEIGHTS_FILE
        if weights_path.is_file():
            heads.load_state_dict(load_file(str(weights_path)), strict=True)
        elif any(True for _ in heads.parameters()):
            raise FileNotFoundError(f"exit heads at {directory} have trainable adapters but no {WEIGHTS_FILE}")
        logger.info("loaded exits %s from %s", heads.layers, directory)
        return heads


@dataclass
class ExitReading:
    """What one exit saw during one forward pass: logits for the requested tail positions."""

    layer: int
    logits: torch.Tensor  # [positions, vocab]; with candidate_ids, [positions, k]
    elapsed_s: float = 0.0  # since the forward pass started
    # Set when only these ids were scored: [positions, k], logits[i, j] is candidate_ids[i, j]'s.
    candidate_ids: torch.Tensor | None = None
