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
    CLOUD_SD = "cloud-sd"  # speculative decoding entirely on the server (its own draft), streamed

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
        """Whether the *edge* needs a draft model (cloud-sd drafts on the server)."""
        return self not in (Mode.CLOUD_AR, Mode.CLOUD_SD)

    @property
    def edge_rounds(self) -> bool:
        """Whether the edge drafts and sends blocks (the client's round core runs)."""
        return self not in (Mode.CLOUD_AR, Mode.CLOUD_SD, Mode.EDGE_ONLY)

    @property
    def server_drafts(self) -> bool:
        """Whether the server runs a draft model of its own (the co-located baseline)."""
        return self is Mode.CLOUD_SD

    @property
    def predrafts(self) -> bool:
        """Whether the edge pre-drafts the next block on assumed verdicts while the server verifies."""
        return self in (Mode.SD_EE_PREDRAFT, Mode.SD_EE_PIPELINED)

    @property
    def uses_exits(self) -> bool:
        return self in (Mode.SD_EE, Mode.SD_EE_PREDRAFT, Mode.SD_EE_PIPELINED)
