"""What one verifier replica is built from, shared by the launcher (`replicas.py`) and the
replica itself (`ray_deployment.py`), which import neither each other's module at load time."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from edgespec.transport.security import resolve_token

DEPLOYMENT_NAME = "Verifier"
# A replica line the operator (and the tests) can grep: which replica holds how many sessions.
SESSION_LOG = "replica %s (pid %d): %s session %s: %d open, %d served"


@dataclass(frozen=True)
class ReplicaSpec:
    """Everything one replica needs to build its verifier: plain values, so a Serve config's
    ``args`` can carry it. ``auth_token`` empty: the token comes from ``auth_token_file``, else
    from $EDGESPEC_AUTH_TOKEN in the replica's environment, else no token is required."""

    target: str
    dtype: str = "auto"
    exits: str = "auto"
    device: str = "cpu"
    threads: int = 1
    max_sessions: int = 64
    max_queued: int = 256
    max_batch: int = 32
    max_batch_rows: int = 512
    prefill_chunk: int = 0
    prefix_cache_tokens: int = 0
    exit_vocab: str = "candidates"
    max_prompt_tokens: int = 8192
    max_new_tokens: int = 4096
    max_block: int = 64
    idle_timeout_s: float = 120.0
    max_lifetime_s: float = 3600.0
    auth_token: str = field(default="", repr=False)
    auth_token_file: str = ""

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> "ReplicaSpec":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(args) - known)
        if unknown:
            raise ValueError(f"unknown replica settings {unknown}; known: {sorted(known)}")
        if "target" not in args:
            raise ValueError("the replica settings need a target (preset name, HF model dir or .gguf file)")
        return cls(**args)

    def as_args(self, with_token: bool = False) -> dict[str, Any]:
        args = asdict(self)
        if not with_token:
            args.pop("auth_token")  # a config file on disk never holds the secret itself
        return args

    def token(self) -> str | None:
        if self.auth_token:
            return resolve_token(self.auth_token, None)
        return resolve_token(None, Path(self.auth_token_file) if self.auth_token_file else None)
