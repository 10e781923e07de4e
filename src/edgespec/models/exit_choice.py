"""Which exit heads a target runs with: the ``--exits`` spec (``auto``, ``none``, a heads
directory, ``logit-lens:L1,L2``) turned into `ExitHeads`.

It lives with the models, not with exit training, because the server, the simulator's probe
and the apps all choose exits this way, and none of them may depend on the training code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgespec.models.exit_heads import ExitHeads

# Trained, calibrated heads ship as package data next to the training code that made them.
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "exits" / "shipped"
# Where a target has no shipped heads, `auto` reads these fractions of its depth by logit lens.
LOGIT_LENS_FRACTIONS = (1 / 2, 3 / 4, 6 / 7)


def default_exits_dir(target_name: str) -> Path | None:
    """The exits shipped in the package for a preset target, if any (``exits.json`` present)."""
    directory = SHIPPED_DIR / target_name
    return directory if (directory / "exits.json").is_file() else None


def resolve_exits(spec: str, model: Any, target_name: str = "") -> ExitHeads | None:
    """The heads ``spec`` names for ``model`` (a transformers causal LM); None for ``none``."""
    if spec == "none":
        return None
    hidden_size = int(model.config.hidden_size)
    if spec == "auto":
        shipped = default_exits_dir(target_name) if target_name else None
        if shipped is not None:
            return ExitHeads.load(shipped).streaming_only()
        layers = int(model.config.num_hidden_layers)
        return ExitHeads.logit_lens(
            sorted({max(1, round(layers * f)) for f in LOGIT_LENS_FRACTIONS} - {layers}),
            hidden_size,
        )
    if spec.startswith("logit-lens:"):
        layers = [int(x) for x in spec.split(":", 1)[1].split(",") if x.strip()]
        return ExitHeads.logit_lens(layers, hidden_size)
    return ExitHeads.load(Path(spec))
