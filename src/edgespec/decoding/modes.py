"""The decoding modes, named once for the engine, the client, the server and the benchmark."""

from __future__ import annotations

from enum import Enum


class Mode(str, Enum):
    CLOUD_AR = "cloud-ar"  # the target alone, autoregressive: the baseline and the oracle
    EDGE_ONLY = "edge-only"  # the draft alone: a reference, not lossless
    SD = "sd"  # speculative decoding, no exits
    SD_EE = "sd-ee"  # early verdicts computed (and, in process, scored as would-be pre-draft hits)
    SD_EE_PREDRAFT = "sd-ee-predraft"  # pre-draft on the early verdict
    SD_EE_PIPELINED = "sd-ee-pipelined"  # ship the pre-draft before the final verdict

    @classmethod
    def parse(cls, text: str) -> "Mode":
        aliases = {"ar": cls.CLOUD_AR}
        key = text.strip().lower()
        if key in aliases:
            return aliases[key]
        try:
            return cls(key)
        except ValueError:
            names = ", ".join(m.value for m in cls)
            raise ValueError(f"unknown mode {text!r}; choose from: {names} (or 'ar')") from None

    @property
    def uses_draft(self) -> bool:
        return self is not Mode.CLOUD_AR

    @property
    def uses_exits(self) -> bool:
        return self in (Mode.SD_EE, Mode.SD_EE_PREDRAFT, Mode.SD_EE_PIPELINED)
